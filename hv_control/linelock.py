"""One owner per serial line on this host: an exclusive ``fcntl.flock`` on a lock file keyed by the
endpoint (docs/protocols.md section 2).

A pty cannot tell its clients apart, and a TCP server can only refuse a second connection; the lock
stops a second tool on the same host (the DAQ's HV read-back next to hv-tune) before it opens the line
at all, with a message naming the owner. The lock files live in ``$NA64_LOCK_DIR`` (default
``<tmp>/na64-hil-locks``); the kernel drops a lock when its process dies, so a crash never leaves the
line locked.
"""

from __future__ import annotations

import fcntl
import os
import pathlib
import re
import sys
import tempfile

LOCK_DIR_ENV = "NA64_LOCK_DIR"


class LineBusy(Exception):
    """The line is locked by another process; ``holder`` says which (pid and program), if known."""

    def __init__(self, key: str, holder: str) -> None:
        super().__init__(f"{key} is owned by {holder or 'another process'}")
        self.key = key
        self.holder = holder


def lock_dir() -> pathlib.Path:
    """Directory of the lock files (``$NA64_LOCK_DIR`` or ``<tmp>/na64-hil-locks``)."""
    return pathlib.Path(os.environ.get(LOCK_DIR_ENV) or pathlib.Path(tempfile.gettempdir()) / "na64-hil-locks")


def endpoint_key(address: str) -> str:
    """The same key for every spelling of one endpoint: ``socket://localhost:5000``,
    ``ASRLsocket://127.0.0.1:5000::INSTR`` -> ``socket-127.0.0.1-5000``; ``/dev/pts/3``,
    ``ASRL/dev/pts/3::INSTR`` -> ``dev-pts-3`` (symbolic links resolved)."""
    a = address.strip()
    if a.upper().startswith("ASRL"):
        a = a[4:]
    if a.upper().endswith("::INSTR"):
        a = a[: -len("::INSTR")]
    if a.startswith("socket://"):
        hostport = a[len("socket://") :].split("?", 1)[0]
        host, _, port = hostport.rpartition(":")
        host = "127.0.0.1" if host in ("localhost", "") else host
        a = f"socket-{host}-{port}"
    elif a.startswith("/"):
        a = os.path.realpath(a)
    key = re.sub(r"[^A-Za-z0-9._-]+", "-", a).strip("-")
    return key or "line"


class LineLock:
    """The exclusive lock of one endpoint, held from :meth:`acquire` to :meth:`release`."""

    def __init__(self, address: str) -> None:
        self.key = endpoint_key(address)
        self.path = lock_dir() / f"{self.key}.lock"
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock without waiting; :class:`LineBusy` naming the holder if another process (or
        another open of this process) holds it."""
        if self._fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
            finally:
                os.close(fd)
            raise LineBusy(self.key, holder) from None
        except OSError:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} ({pathlib.Path(sys.argv[0]).name or 'python'})\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Give the lock up (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
