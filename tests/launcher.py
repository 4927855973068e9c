"""Start ``na64-emulator`` and ``na64-daq`` for the tests as forks of one warm process.

Most of what an emulator or a DAQ costs a test is its start: the interpreter, the imports (about 0.6 s of CPU)
and the numba kernels loaded from the cache (about 1 s); the suite starts about a hundred of them on two cores.
:func:`launch` starts the program instead as a fork of a ``multiprocessing`` fork server that imported both
programs and loaded their kernels once (tests/launch_preload.py), one server per test process. The child is a
process of its own, as with ``subprocess.Popen(start_new_session=True)``:

- its own pid; with ``new_session`` (the emulator's) its own session and process group (signals to its group
  reach it and its children), else the caller's process group, as a plain ``Popen`` would leave it;
- stdin from /dev/null; stdout and stderr appended to the log file (unbuffered, as ``PYTHONUNBUFFERED=1``);
- the given working directory, environment (``os.environ``, inherited by its own children) and argv;
- it runs the program's ``main(argv)`` as ``python -m <module>`` would, and exits with its return value; an
  uncaught exception is printed to the log and exits 1; death by a signal reads as ``-signum``;
- at its end the ``atexit`` handlers run (the child then leaves with ``os._exit``: no interpreter finalisation).

As with multiprocessing's other start methods than ``fork``, the child imports the caller's main module (as
``__mp_main__``) if it has one (a pytest-xdist worker has none): a script that launches programs must keep its
code under ``if __name__ == "__main__":`` (bench/hvtune_bench.py does).

What a fork does not exercise, and where the tests that need it start a fresh interpreter (``fresh=True`` of
``start_emulator`` and ``start_daq``, or ``NA64_TEST_FRESH_PROCESSES=1`` for the whole suite): the interpreter's
own start (the ``-m`` entry, import errors, a cold kernel cache), its finalisation ("Exception ignored"
messages), an environment read at import (``env=``), and a stdout that is a pipe.

:class:`LaunchedProcess` has the part of ``subprocess.Popen``'s interface the tests use (``pid``,
``returncode``, ``poll``, ``wait``, ``send_signal``, ``terminate``, ``kill``, ``args``).
"""

from __future__ import annotations

import atexit
import importlib
import io
import multiprocessing
import multiprocessing.forkserver
import multiprocessing.util  # its exit handler (joins the children) is registered before ours below
import os
import resource
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent

#: set to 1 to start every emulator and DAQ of the suite as a fresh interpreter (subprocess), as before
FRESH_ENV = "NA64_TEST_FRESH_PROCESSES"

_LAUNCHED: list[multiprocessing.process.BaseProcess] = []
_CONTEXT: Any = None


def fresh_processes() -> bool:
    """Does the environment ask for fresh interpreters instead of forks (:data:`FRESH_ENV`)?"""
    return os.environ.get(FRESH_ENV, "") not in ("", "0")


def _context() -> Any:
    """The forkserver context; starts its server (which imports tests/launch_preload.py) on first use."""
    global _CONTEXT
    if _CONTEXT is None:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["launch_preload"])
        # Python 3.11's fork server does not take over sys.path (its ``sys_path`` argument is unused): it finds
        # the preload module through PYTHONPATH, set only while the server is started
        old = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS_DIR), str(REPO_ROOT), old) if p)
        # the server and multiprocessing's resource tracker (started with it) inherit stdout and stderr, and
        # would hold them open for as long as they live: a caller reading this process's output to its end
        # would wait for them. They get /dev/null (fds 1 and 2 are this process's for these milliseconds)
        sys.stdout.flush()
        sys.stderr.flush()
        saved = (os.dup(1), os.dup(2))
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, 1)
            os.dup2(null, 2)
            multiprocessing.forkserver.ensure_running()
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in (*saved, null):
                os.close(fd)
            if old is None:
                del os.environ["PYTHONPATH"]
            else:
                os.environ["PYTHONPATH"] = old
        _CONTEXT = ctx
    return _CONTEXT


def _stream(fd: int) -> io.TextIOWrapper:
    return io.TextIOWrapper(
        io.FileIO(fd, "w", closefd=False), encoding="utf-8", errors="backslashreplace", write_through=True
    )


def _child(
    module: str,
    argv: list[str],
    log_path: str,
    cwd: str,
    env: dict[str, str],
    file_size_limit: int | None,
    new_session: bool,
) -> None:
    """The launched process (runs in the fork): become what ``subprocess.Popen`` would have started, then run
    ``module.main(argv)``. Without ``new_session`` it stays in the fork server's process group, the caller's."""
    if new_session:
        os.setsid()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    sys.stdout, sys.stderr = _stream(1), _stream(2)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    sys.argv = [module, *argv]
    if file_size_limit is not None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))
    import launch_preload

    if launch_preload.STATE != "ok":
        print(f"[tests/launcher] the fork server's preload: {launch_preload.STATE}", file=sys.stderr)
    try:
        code = importlib.import_module(module).main(argv)
    finally:
        atexit._run_exitfuncs()
    sys.exit(code)


class LaunchedProcess:
    """A launched program, with the part of ``subprocess.Popen``'s interface the tests use."""

    def __init__(self, process: multiprocessing.process.BaseProcess, args: list[str]) -> None:
        self._process = process
        self.args = args
        self.stdin = self.stdout = self.stderr = None

    @property
    def pid(self) -> int:
        pid = self._process.pid
        assert pid is not None
        return pid

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        code = self._process.exitcode
        if code is None:
            raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
        return code

    def send_signal(self, sig: int) -> None:
        if self._process.exitcode is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def launch(
    module: str,
    argv: Sequence[str],
    *,
    log_path: Path,
    cwd: Path = REPO_ROOT,
    env: Mapping[str, str] | None = None,
    file_size_limit: int | None = None,
    new_session: bool = True,
) -> LaunchedProcess:
    """Start ``python -m <module> <argv...>`` as a fork of the warm server (module docstring); ``env``: its whole
    environment (default: this process's); ``file_size_limit``: RLIMIT_FSIZE in bytes, SIGXFSZ ignored;
    ``new_session``: ``Popen(start_new_session=True)``'s own session and process group."""
    ctx = _context()
    environ = dict(os.environ if env is None else env)
    process = ctx.Process(
        target=_child,
        args=(module, list(argv), str(log_path), str(cwd), environ, file_size_limit, new_session),
        name=f"launched {module}",
    )
    process.start()
    _LAUNCHED[:] = [p for p in _LAUNCHED if p.exitcode is None]  # the ended ones' handles keep what they need
    _LAUNCHED.append(process)
    return LaunchedProcess(process, [sys.executable, "-m", module, *argv])


@atexit.register
def _kill_forgotten() -> None:
    """At this process's exit, before multiprocessing joins its children: SIGKILL what is still alive."""
    for process in _LAUNCHED:
        if process.exitcode is None and process.pid is not None:
            try:
                if os.getpgid(process.pid) == process.pid:  # its own group: its children too
                    os.killpg(process.pid, signal.SIGKILL)
                else:
                    os.kill(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            process.join(10)
