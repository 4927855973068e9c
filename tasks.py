#!/usr/bin/env python3
"""The project's entry points, with nothing but python3 (stdlib only):

    python3 tasks.py demo    set up .venv if needed, then run the full emulated beam time
    python3 tasks.py test    set up .venv if needed, then ruff, mypy and the whole test suite
    python3 tasks.py bench   set up .venv if needed, then run every benchmark (bench/run_all)
    python3 tasks.py setup   only set up .venv

Setup creates ``.venv`` beside this file and installs the project with its test extras (``pip install
-e '.[test]'``); it is redone when pyproject.toml changes. On a slim Linux image PyQt5 needs a few system
libraries; when they are missing and we are root, they are installed with apt-get.
Extra arguments after the task go to the program (e.g. ``python3 tasks.py test -k trigger``).
"""

from __future__ import annotations

import ctypes.util
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
import venv
from collections.abc import Iterable

ROOT = pathlib.Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PY = VENV / "bin" / "python"
STAMP = VENV / ".na64-installed"
QT_SYSTEM_LIBS = {
    "GL": "libgl1",
    "glib-2.0": "libglib2.0-0",
    "fontconfig": "libfontconfig1",
    "X11": "libx11-6",
    "xkbcommon": "libxkbcommon0",
    "dbus-1": "libdbus-1-3",
    "EGL": "libegl1",
}


#: the static checks the test task runs before pytest (configured in pyproject.toml)
STATIC_CHECKS = (
    ("ruff check", ["ruff", "check", "."]),
    ("ruff format --check", ["ruff", "format", "--check", "."]),
    ("mypy", ["mypy"]),
)


def say(text: str) -> None:
    print(f"[tasks] {text}", flush=True)


def ensure_system_libs() -> None:
    missing = [pkg for lib, pkg in QT_SYSTEM_LIBS.items() if ctypes.util.find_library(lib) is None]
    if not shutil.which("fc-list") or not subprocess.run(["fc-list"], capture_output=True, text=True).stdout.strip():
        missing.append("fonts-dejavu-core")
    if not missing:
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        say(f"installing system libraries for Qt: {' '.join(missing)}")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing, "fontconfig"], check=True, env=env
        )
    else:
        say(f"warning: Qt may need these system packages: {' '.join(missing)} (install them as root)")


def ensure_venv() -> None:
    ensure_system_libs()
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if PY.exists() and STAMP.exists() and STAMP.read_text().strip() == digest:
        return
    if not PY.exists():
        say(f"creating {VENV}")
        venv.EnvBuilder(with_pip=True, clear=False).create(VENV)
    say("installing na64-hil and its dependencies into .venv (about a minute)")
    subprocess.run([str(PY), "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
    # pip byte-compiles what it installs on one core; compileall does the same on every core (half the time here).
    # Its exit status is not checked: like pip, it leaves alone the few files of packages that do not compile
    pip = [str(PY), "-m", "pip", "install", "-q", "--no-compile", "-e", f"{ROOT}[test]"]
    subprocess.run(pip, check=True, cwd=ROOT)
    where = "import sysconfig; print(sysconfig.get_path('purelib'))"
    site = subprocess.run([str(PY), "-c", where], check=True, capture_output=True, text=True).stdout.strip()
    subprocess.run([str(PY), "-m", "compileall", "-q", "-j", "0", site], stdout=subprocess.DEVNULL)
    STAMP.write_text(digest)


#: compiles (or loads from numba's on-disk cache) the kernels of the DAQ (tracker, trigger, reconstruction) and of
#: the emulator's spill chain, so that neither the tests nor the demo wait for a cold compile: two groups, each in
#: its own process, compiling in parallel (detector.jitcache); every step prints one line "what ...
#: seconds". The tracker is here because the DAQ compiles it lazily, in its monitor worker (docs/performance.md
#: 2026-12-06). The order of the kernels does not matter: the tracker's cache entry that once segfaulted every
#: process loading it came from numba's per-process function names, not from an order (detector.jitcache)
WARM_KERNELS = {
    "daq": """
import time
import numpy as np
from detector.config import load_config
from detector.tracking import Spectrometer, StripData, reconstruct_tracks
t0 = time.perf_counter()
reconstruct_tracks(StripData.empty(1), Spectrometer.from_config(load_config(None)), planes=True)
from detector.mmblock import strip_charge_time
strip_charge_time(np.zeros((1, 3), np.int16))
print(f"the tracker's reconstruction and strip decoding ... {time.perf_counter() - t0:.1f} s", flush=True)
from online.daq import prepare_kernels
from trigger.menu import TriggerMenu
steps = {}
prepare_kernels(TriggerMenu.from_config(load_config(None)), timings=steps)
print("the DAQ's trigger and reconstruction ...", ", ".join(f"{k} {v:.1f} s" for k, v in steps.items()), flush=True)
""",
    "emulator": """
from detector.config import load_config
from sim_frontend.emulator import Emulator
print(f"the emulator's spill chain ... {Emulator(load_config(None), pty=False).warm_up():.1f} s", flush=True)
""",
}
#: for the tests, a third group: the trigger's amplitude entry and the kernel of menus with further energy lines
#: that the trigger tests call (tests/warm_kernels.py), compiled once here rather than by the first trigger test
#: of each pytest worker at the same time. The suite does not wait for it: the files that call these kernels come
#: last (tests/conftest.py, CALLS_THE_TESTS_KERNELS), so this group compiles beside the first, long real-time files
WARM_TEST_KERNELS = """
import runpy
runpy.run_path("tests/warm_kernels.py", run_name="__main__")
"""


class KernelWarmUp:
    """The kernel groups of :data:`WARM_KERNELS` (with ``tests``, :data:`WARM_TEST_KERNELS` too) compiling
    or loading in parallel child processes; the caller may do other work (the static checks, the
    tests) until it :meth:`wait` s for them."""

    def __init__(self, env: dict[str, str], tests: bool = False) -> None:
        more = "; the tests' own go on beside the first tests" if tests else ""
        say(f"preparing the numba kernels (loaded from the cache, or compiled once: about a minute on 2 cores{more})")
        self.t0 = time.perf_counter()
        codes = dict(WARM_KERNELS)
        if tests:
            codes["tests"] = WARM_TEST_KERNELS
        self.procs = {
            name: subprocess.Popen(
                [str(PY), "-c", code],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for name, code in codes.items()
        }

    def wait(self, names: Iterable[str] | None = None, announce: bool = True) -> bool:
        """Wait for the groups ``names`` (None: all still unreported) and print their lines (their error output
        too if one failed), then, with ``announce``, the time since the start; True if all of them succeeded."""
        ok = True
        for name in list(self.procs if names is None else names):
            proc = self.procs.pop(name)
            out, err = proc.communicate()
            for line in out.splitlines():
                say(f"kernels: {line}")
            if proc.returncode != 0:
                ok = False
                say(f"kernels: the {name} group failed (exit status {proc.returncode}):\n{err}")
        if ok and announce:
            rest = " (the tests' own still compiling)" if self.procs else ""
            say(f"kernels ready in {time.perf_counter() - self.t0:.1f} s{rest}")
        return ok

    def stop(self) -> None:
        """Stop the groups still running (the task failed before it needed them)."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
            proc.communicate()
        self.procs.clear()


#: GiB the test suite needs free in the temporary directory: its DAQ, calibration and offline tests record
#: spill files there (the directories of passed tests are removed at the end: pyproject's retention policy)
TEST_DISK_GIB = 8.0
#: pytest workers: one more than the cores, because most of the suite's time is real time (spill cycles, ramps,
#: table moves) in which a worker waits on its emulator and DAQ processes: on 2 cores, 2 workers use about one
#: core on average (docs/performance.md)
TEST_WORKERS = max(2, len(os.sched_getaffinity(0)) + 1)


def enough_disk(where: pathlib.Path, need_gib: float, what: str) -> bool:
    """Is there ``need_gib`` GiB free at ``where``? If not, say so plainly (a full disk otherwise shows as
    dozens of unrelated test failures and hung recorders)."""
    free = shutil.disk_usage(where).free / 2**30
    if free < need_gib:
        say(f"only {free:.1f} GiB free in {where}: {what} needs {need_gib:g} GiB; free some space first")
        return False
    return True


def run(argv: list[str], env: dict[str, str] | None = None) -> int:
    return subprocess.run(argv, cwd=ROOT, env=env).returncode


def main(args: list[str]) -> int:
    if not args or args[0] in ("-h", "--help", "help"):
        print(__doc__)
        return 0 if args else 2
    task, rest = args[0], args[1:]
    if task not in ("demo", "test", "bench", "setup"):
        print(f"unknown task {task!r}; one of: demo, test, bench, setup", file=sys.stderr)
        return 2
    ensure_venv()
    env = dict(os.environ, PATH=f"{VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    if task == "bench":
        return run([str(PY), str(ROOT / "bench" / "run_all"), *rest], env)
    if task == "test" and not enough_disk(pathlib.Path(tempfile.gettempdir()), TEST_DISK_GIB, "the test suite"):
        return 1
    kernels = KernelWarmUp(env, tests=task == "test")
    if task == "test" and not rest:  # the whole suite: lint, format and types first (while the kernels compile)
        for name, argv in STATIC_CHECKS:
            say(name)
            if run([str(PY), "-m", *argv], env) != 0:
                say(f"{name} failed")
                kernels.stop()
                return 1
    if not kernels.wait(WARM_KERNELS):
        kernels.stop()
        return 1
    if task == "setup":
        return 0
    if task == "demo":
        return run([str(PY), "-m", "demo.beamtime", *rest], env)
    env["QT_QPA_PLATFORM"] = "offscreen"
    # one test file per worker at a time (module fixtures stay in one process); TEST_WORKERS workers
    code = run([str(PY), "-m", "pytest", "-m", "not soak", "-n", str(TEST_WORKERS), "--dist", "loadfile", *rest], env)
    warmed = kernels.wait(announce=False)  # the tests' own kernels, long done by now; a failure fails the task
    return 1 if code == 5 or (code == 0 and not warmed) else code  # "no tests ran" is a failure too


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
