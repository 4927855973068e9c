"""The numba cache directory is keyed by the sources of the packages whose code jitted functions inline
(detector.jitcache): an edit of an inlined module (e.g. trigger/simd.py) cannot leave stale machine code."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numba

import detector
from detector import jitcache


def _copy_packages(dst: Path) -> None:
    for pkg in jitcache.JIT_PACKAGES:
        shutil.copytree(jitcache.ROOT / pkg, dst / pkg, ignore=shutil.ignore_patterns("__pycache__"))


def test_the_key_follows_every_inlined_source(tmp_path: Path) -> None:
    _copy_packages(tmp_path)
    k0 = jitcache.source_key(tmp_path)
    assert k0 == jitcache.source_key(tmp_path) and len(k0) == 16
    simd = tmp_path / "trigger" / "simd.py"
    simd.write_text(simd.read_text() + "\n# edited\n")
    k1 = jitcache.source_key(tmp_path)
    pulse = tmp_path / "detector" / "pulse.py"
    pulse.write_text(pulse.read_text().replace("\n", "\n\n", 1))
    k2 = jitcache.source_key(tmp_path)
    (tmp_path / "sim_frontend" / "new_module.py").write_text("X = 1\n")
    k3 = jitcache.source_key(tmp_path)
    assert len({k0, k1, k2, k3}) == 4
    (tmp_path / "README.md").write_text("not a source")  # outside the packages: same key
    assert jitcache.source_key(tmp_path) == k3


def test_configure_uses_the_keyed_directory_and_removes_old_keys(tmp_path: Path, monkeypatch) -> None:
    _copy_packages(tmp_path)
    old = tmp_path / ".numba_cache" / "0123456789abcdef"
    old.mkdir(parents=True)
    (old / "trigger_x").mkdir()
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.delenv(jitcache.MARK, raising=False)
    monkeypatch.setattr(numba.config, "CACHE_DIR", numba.config.CACHE_DIR)  # restored after the test
    used = jitcache.configure(tmp_path)
    assert used == str(tmp_path / ".numba_cache" / jitcache.source_key(tmp_path))
    assert used == numba.config.CACHE_DIR and os.environ["NUMBA_CACHE_DIR"] == used  # live and for children
    assert not old.exists()
    # set by configure (another checkout, or sources changed since): recomputed
    assert jitcache.configure(tmp_path) == used
    # set by the user: left alone
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "mine"))
    monkeypatch.delenv(jitcache.MARK)
    numba.config.CACHE_DIR = "unchanged"
    assert jitcache.configure(tmp_path) is None and numba.config.CACHE_DIR == "unchanged"


def test_a_fresh_interpreter_uses_the_current_key_and_detector_does_not_import_numba() -> None:
    assert detector.jitcache is jitcache
    want = str(jitcache.ROOT / ".numba_cache" / jitcache.source_key())
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", jitcache.MARK)}
    code = (
        "import sys, detector.channels; no_numba = 'numba' not in sys.modules; "
        "import numba; print(no_numba, numba.config.CACHE_DIR)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env, cwd=jitcache.ROOT
    )
    assert out.stdout.split() == ["True", want]


def test_numba_installs_the_entry_locks_and_the_function_ids_through_the_entry_point() -> None:
    """The project registers detector.jitcache.numba_init as numba's ``init`` extension: a fresh interpreter
    that compiles anything has numba's reads and writes of a cache entry holding that entry's file lock, and
    numbers its functions from a block of its own (two interpreters and a forked child of each: four blocks),
    with no import of ours (numba runs the entry point before it compiles)."""
    from importlib.metadata import entry_points

    eps = [e.value for e in entry_points(group="numba_extensions", name="init")]
    assert "detector.jitcache:numba_init" in eps
    code = (
        "import numba\n"
        "from numba.core import bytecode, caching\n"
        "before = getattr(caching.IndexDataCacheFile, '_na64_entry_locks', False)\n"
        "numba.njit(lambda x: x + 1)(1)\n"
        "uid = next(bytecode.FunctionIdentity._unique_ids)\n"
        "import os\n"
        "r, w = os.pipe()\n"
        "if os.fork() == 0:\n"
        "    os.write(w, str(next(bytecode.FunctionIdentity._unique_ids)).encode())\n"
        "    os._exit(0)\n"
        "os.close(w)\n"
        "child = int(os.read(r, 64))\n"
        "print(before, caching.IndexDataCacheFile._na64_entry_locks, uid, child)\n"
    )
    runs = [
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
        for _ in range(2)
    ]
    outs = [r.stdout.split() for r in runs]
    assert [o[:2] for o in outs] == [["False", "True"]] * 2
    uids = [int(u) for o in outs for u in o[2:]]  # interpreter 1, its forked child, interpreter 2, its child
    assert all(u >= 2**jitcache.UID_BLOCK_BITS for u in uids)  # not numba's count from 1
    assert len({u >> jitcache.UID_BLOCK_BITS for u in uids}) == 4


def _blocked_on_flock(pid: int) -> bool:
    """Does /proc/locks show ``pid`` waiting for an flock (a ``->`` line)?"""
    for line in Path("/proc/locks").read_text().splitlines():
        f = line.split()
        if len(f) > 5 and f[1] == "->" and f[2] == "FLOCK" and f[5] == str(pid):
            return True
    return False


#: two cached kernels in one module; the cache of the test below
_KERN = (
    "import numba\n\n@numba.njit(cache=True)\ndef twice(x):\n    return 2 * x\n\n"
    "@numba.njit(cache=True)\ndef thrice(x):\n    return 3 * x\n"
)


def test_processes_compile_in_parallel_and_take_turns_on_one_functions_cache_entry(tmp_path: Path) -> None:
    """Three processes on one kernel cache: while A holds the entry lock of ``twice``, B (compiling
    ``twice``) blocks on that lock file before it reads or writes the entry (seen in /proc/locks, not timed),
    while C compiles and saves ``thrice`` without waiting; once A lets go, B finishes, and both entries load
    in a fourth process."""
    import time

    cache = tmp_path / "cache"
    (tmp_path / "kern.py").write_text(_KERN, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != jitcache.MARK}
    env.update(NUMBA_CACHE_DIR=str(cache), PYTHONPATH=f"{tmp_path}{os.pathsep}{jitcache.ROOT}")
    where = "import kern\nprint(kern.twice._cache._cache_file._index_path)"  # numba's FunctionCache of twice
    index = subprocess.run(
        [sys.executable, "-c", where], capture_output=True, text=True, check=True, env=env, cwd=tmp_path, timeout=300
    ).stdout.strip()
    assert index.startswith(str(cache)) and index.endswith(".nbi")
    holder = subprocess.Popen(
        [sys.executable, "-c", (
            f"import sys\nfrom detector.jitcache import entry_lock\nwith entry_lock({index!r}):\n"
            "    print('held', flush=True)\n    sys.stdin.readline()\nprint('released', flush=True)\n"
        )],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    compiler = None
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline().strip() == "held"
        compiler = subprocess.Popen(
            [sys.executable, "-c", "import kern; print(kern.twice(21), flush=True)"],
            stdout=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
        )  # fmt: skip
        other = subprocess.run(
            [sys.executable, "-c", "import kern; print(kern.thrice(14), sum(kern.thrice.stats.cache_misses.values()))"],
            capture_output=True, text=True, check=True, env=env, cwd=tmp_path, timeout=300,
        )  # fmt: skip
        assert other.stdout.split() == ["42", "1"]  # compiled (a miss) and saved while the lock of twice was held
        deadline = time.monotonic() + 120
        while not _blocked_on_flock(compiler.pid):
            assert compiler.poll() is None, "the process compiling twice touched its entry while it was locked"
            assert time.monotonic() < deadline, "the process compiling twice never waited for the entry lock"
            time.sleep(0.05)
        holder.stdin.write("go\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "released"
        out, _ = compiler.communicate(timeout=300)
        assert compiler.returncode == 0 and out.strip() == "42"
    finally:
        for p in (holder, compiler):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    again = subprocess.run(
        [sys.executable, "-c", (
            "import kern\nprint(kern.twice(4), kern.thrice(4), sum(kern.twice.stats.cache_hits.values()),"
            " sum(kern.thrice.stats.cache_hits.values()))"
        )],
        capture_output=True, text=True, check=True, env=env, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert again.stdout.split() == ["8", "12", "1", "1"]


#: a process that runs its arguments in order: "sort" loads or compiles sim_frontend.beamline._sr_sample, whose
#: ``buf.sort()`` makes numba compile its quicksort of a float64 array, and prints its cache hits and whether
#: the quantiles it returns are in order; "tracker" reconstructs two parallel nominal tracks with
#: detector.tracking, whose _fit_view sorts its candidates with ``np.argsort`` of a float64 array.
#: ``ADVANCE``: first draw that many function ids from numba's counter, what compiling as many functions would do
_SORT_AND_TRACKER = """
import sys
import numpy as np
from numba.core import bytecode, entrypoints
from detector.config import load_config
from detector.tracking import Spectrometer, StripData, reconstruct_tracks
from sim_frontend.beamline import _sr_sample, sr_photon_log_quantiles

def sort():
    out = np.zeros((2, 9))
    _sr_sample(3.0, 1e-2, np.array([50.0, 100.0]), sr_photon_log_quantiles(), 0.0, 1.0, 64, out)
    in_order = bool(np.all(np.diff(out, axis=1) >= 0.0) and out[:, -1].min() > 0.0)
    print("sort", sum(_sr_sample.stats.cache_hits.values()), in_order, flush=True)

def tracker():
    spec = Spectrometer.from_config(load_config(None))
    plane, strip, charge = [], [], []
    for p in range(spec.n_planes):
        for c in (160, 260):
            plane += [p, p, p]
            strip += [c - 1, c, c + 1]
            charge += [100.0, 200.0, 100.0]
    sd = StripData(np.array([0, len(plane)]), np.array(plane, np.uint8), np.array(strip, np.uint16),
                   np.array(charge, np.float32), np.zeros(len(plane), np.float32))
    rec = reconstruct_tracks(sd, spec)[0]
    print("tracks", int(rec["n_tracks"]), float(rec["p_gev"]) / spec.p0_gev, flush=True)

entrypoints.init_all()  # numba's own start (the project's init extension), as at its first compile
for _ in range(ADVANCE):
    next(bytecode.FunctionIdentity._unique_ids)
for step in sys.argv[1:]:
    {"sort": sort, "tracker": tracker}[step]()
"""

#: numba's quicksort (or argsort) in a mangled name: its function id tag ``v<id>`` and its second abi tag (the
#: flags), each an Itanium abi tag ``B<length><text>``; the argument types follow
_QUICKSORT = re.compile(rb"run_quicksort1B\d+v(\d+)B(\d+)")


def _quicksort_ids(cache: Path, entry: str) -> set[int]:
    """The function ids of numba's quicksort of a float64 array (sort or argsort) in the cache entries of
    ``entry`` (their object code and bitcode hold the mangled names)."""
    found = set()
    for f in cache.rglob(f"{entry}-*.nbc"):
        data = f.read_bytes()
        for m in _QUICKSORT.finditer(data):
            after = m.end() + int(m.group(2))
            if data[after : after + 15] == b"E5ArrayIdLi1E1C":
                found.add(int(m.group(1)))
    assert found, f"no float64 quicksort in the cache entries of {entry}"
    return found


def test_cache_entries_of_two_processes_cannot_bind_to_each_others_functions(tmp_path: Path) -> None:
    """Issue 14, the tracker's cache entry that segfaulted every process that loaded it (detector/jitcache.py):
    numba names a function by its name, argument types and a per-process count; numba's sort and argsort of a
    float64 array differ only by that count, and a cache entry keeps such callees as weak symbols. Process A
    compiles the tracker (argsort in _fit_view) into a cache; process B, fresh like A, compiles _sr_sample
    (a sort) into the same cache after as many other functions as make its count of the sort equal A's count
    of the argsort, if a number of prior compilations can do that; process C loads both entries and
    reconstructs, and D loads them the other way round. With numba's counts from 1 in every process, C's
    tracker bound the sort and crashed, and D's sort bound the tracker's argsort and left the synchrotron
    radiation quantiles out of order; with a block of ids per process no number of prior compilations makes
    the two names equal. (A and B's probe write separate caches, C and D only load: each pair runs at once.)"""
    cache, probe = tmp_path / "cache", tmp_path / "probe"
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", jitcache.MARK)}
    env["PYTHONFAULTHANDLER"] = "1"

    def start(where: Path, advance: int, *args: str) -> subprocess.Popen[str]:
        code = _SORT_AND_TRACKER.replace("ADVANCE", str(advance))
        return subprocess.Popen(
            [sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            cwd=jitcache.ROOT, env=dict(env, NUMBA_CACHE_DIR=str(where)),
        )  # fmt: skip

    def finish(*procs: subprocess.Popen[str]) -> list[subprocess.CompletedProcess[str]]:
        """Wait for every process (none is left running, whatever happens)."""
        try:
            outs = [p.communicate(timeout=300) for p in procs]
            return [subprocess.CompletedProcess(p.args, p.returncode, *o) for p, o in zip(procs, outs, strict=True)]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()

    def run(where: Path, advance: int, *args: str) -> subprocess.CompletedProcess[str]:
        return finish(start(where, advance, *args))[0]

    # A: the tracker alone (its entry is sound on its own); beside it, B's twin on a scratch cache: the count
    # at which a fresh process compiles the sort
    a, probed = finish(start(cache, 0, "tracker"), start(probe, 0, "sort"))
    assert a.returncode == 0 and a.stdout.split() == ["tracks", "2", "1.0"], a.stderr[-3000:]
    (argsort_id,) = _quicksort_ids(cache, "tracking._fit_view")
    assert probed.returncode == 0 and probed.stdout.split() == ["sort", "0", "True"], probed.stderr[-3000:]
    (sort_id_fresh,) = _quicksort_ids(probe, "beamline._sr_sample")
    advance = argsort_id - sort_id_fresh
    aligned = 0 <= advance < 1_000_000  # numba 0.68 alone: both count from 1, so always
    b = run(cache, advance if aligned else 0, "sort")
    assert b.returncode == 0 and b.stdout.split() == ["sort", "0", "True"], b.stderr[-3000:]
    (sort_id,) = _quicksort_ids(cache, "beamline._sr_sample")
    # C: loads the sort's entry, then the tracker's, and reconstructs (the tracker bound the sort: segfault);
    # D: the other order (the sort bound the tracker's argsort: no crash, but the quantiles out of order)
    c, d = finish(start(cache, 0, "sort", "tracker"), start(cache, 0, "tracker", "sort"))
    assert c.returncode == 0, f"exit status {c.returncode}\n{c.stderr[-3000:]}"
    assert c.stdout.split() == ["sort", "1", "True", "tracks", "2", "1.0"]
    assert d.returncode == 0, f"exit status {d.returncode}\n{d.stderr[-3000:]}"
    assert d.stdout.split() == ["tracks", "2", "1.0", "sort", "1", "True"]
    assert sort_id != argsort_id and not aligned
