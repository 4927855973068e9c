"""The numba cache directory is keyed by the sources of the packages whose code jitted functions inline
(detector.jitcache): an edit of an inlined module (e.g. trigger/simd.py) cannot leave stale machine code."""

from __future__ import annotations

import os
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


def test_numba_installs_the_compile_lock_through_the_entry_point() -> None:
    """The project registers detector.jitcache.install_compile_lock as numba's ``init`` extension: a fresh
    interpreter that compiles anything has numba's compiler lock holding the file lock, with no import of
    ours (numba runs the entry point before it compiles)."""
    from importlib.metadata import entry_points

    eps = [e.value for e in entry_points(group="numba_extensions", name="init")]
    assert "detector.jitcache:install_compile_lock" in eps
    code = (
        "import numba\n"
        "from numba.core import compiler_lock\n"
        "before = getattr(compiler_lock._CompilerLock, '_na64_file_lock', False)\n"
        "numba.njit(lambda x: x + 1)(1)\n"
        "print(before, compiler_lock._CompilerLock._na64_file_lock)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.split() == ["False", "True"]


def _blocked_on_flock(pid: int) -> bool:
    """Does /proc/locks show ``pid`` waiting for an flock (a ``->`` line)?"""
    for line in Path("/proc/locks").read_text().splitlines():
        f = line.split()
        if len(f) > 5 and f[1] == "->" and f[2] == "FLOCK" and f[5] == str(pid):
            return True
    return False


def test_a_second_process_waits_while_one_holds_the_compiler_lock(tmp_path: Path) -> None:
    """Two processes on one kernel cache: while A holds numba's compiler lock, B's compilation of a cached
    function blocks on the lock file (seen in /proc/locks, not timed) and finishes once A lets go, and the cache
    entry it wrote loads in a third process."""
    import time

    cache = tmp_path / "cache"
    (tmp_path / "kern.py").write_text(
        "import numba\n\n@numba.njit(cache=True)\ndef twice(x):\n    return 2 * x\n", encoding="utf-8"
    )
    env = {k: v for k, v in os.environ.items() if k != jitcache.MARK}
    env.update(NUMBA_CACHE_DIR=str(cache), PYTHONPATH=f"{tmp_path}{os.pathsep}{jitcache.ROOT}")
    holder = subprocess.Popen(
        [sys.executable, "-c", (
            "import sys\nfrom detector.jitcache import install_compile_lock\ninstall_compile_lock()\n"
            "from numba.core.compiler_lock import global_compiler_lock as g\n"
            "with g:\n    print('held', flush=True)\n    sys.stdin.readline()\nprint('released', flush=True)\n"
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
        deadline = time.monotonic() + 120
        while not _blocked_on_flock(compiler.pid):
            assert compiler.poll() is None, "the second process compiled while the first held the lock"
            assert time.monotonic() < deadline, "the second process never waited for the lock file"
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
    assert list(cache.rglob("kern.twice-*.nbi"))  # B saved its entry, and it loads:
    again = subprocess.run(
        [sys.executable, "-c", "import kern; print(kern.twice(4), sum(kern.twice.stats.cache_hits.values()))"],
        capture_output=True, text=True, check=True, env=env, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert again.stdout.split() == ["8", "1"]


def test_the_warm_up_takes_the_trackers_kernel_first() -> None:
    """tasks.py's warm-up of the DAQ's kernels loads or compiles the tracker's kernel before any other kernel of
    the project: its cache entry, compiled in a process after many other kernels, once crashed every process
    that loaded it (detector/jitcache.py). Every cached kernel passes through numba's Cache.load_overload, on
    a load and before a compile alike: its order is recorded."""
    import tasks

    code = (
        """
import numba.core.caching as caching
order = []
_load = caching.Cache.load_overload
def load_overload(self, sig, target_context):
    f = self._py_func
    order.append(f.__module__ + "." + f.__qualname__)
    return _load(self, sig, target_context)
caching.Cache.load_overload = load_overload
"""
        + tasks.WARM_KERNELS["daq"]
        + """
ours = [o for o in order if o.split(".")[0] in ("detector", "trigger", "sim_frontend", "online")]
print("ORDER", ours[0], len(ours))
"""
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=jitcache.ROOT)
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith("ORDER"))
    _, first, n = line.split()
    assert first == "detector.tracking._reco_kernel" and int(n) > 3
