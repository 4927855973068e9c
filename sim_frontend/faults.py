"""Fault state shared by the emulator's endpoints (docs/protocols.md section 5): a reply delay in
seconds and counted faults (each pending count is consumed by one request). Thread-safe. Every fault
that takes effect is counted (:meth:`CountedFaults.fired`: replies delayed, counts consumed), so that a
test can require an injected fault to have fired.

Each endpoint declares its counted kinds (``COUNTED``) and decides how it consumes them
(:class:`MSADCFaults`, :class:`sim_frontend.serial_server.FaultState`)."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

MAX_DELAY_S = 600.0
MAX_COUNT = 10**6


class CountedFaults:
    """``delay`` (``seconds``) plus the counted kinds of ``COUNTED`` (``count``, default 1)."""

    ENDPOINT = "emulator"
    COUNTED: tuple[str, ...] = ()
    EXTRA: tuple[str, ...] = ()  #: further kinds a subclass handles in :meth:`apply` itself

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._delay = 0.0
        self._counts = dict.fromkeys(self.COUNTED, 0)
        self._fired = dict.fromkeys(self.KINDS, 0)

    KINDS: tuple[str, ...] = ("delay",)

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        cls.KINDS = ("delay", *cls.COUNTED, *cls.EXTRA)  #: every kind the endpoint accepts

    def set(self, kind: str, *, seconds: float | None = None, count: int | None = None) -> None:
        """Activate ``kind``; ValueError names the problem. ``count = 0`` / ``seconds = 0`` clears it."""
        with self._lock:
            if kind == "delay":
                if (
                    seconds is None
                    or isinstance(seconds, bool)
                    or not isinstance(seconds, (int, float))
                    or not math.isfinite(seconds)
                    or not 0.0 <= seconds <= MAX_DELAY_S
                ):
                    raise ValueError(f"fault 'delay' needs seconds in [0, {MAX_DELAY_S:.0f}], got {seconds!r}")
                self._delay = float(seconds)
            elif kind in self._counts:
                count = 1 if count is None else count
                if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_COUNT:
                    raise ValueError(f"fault {kind!r} needs an integer count in [0, {MAX_COUNT}], got {count!r}")
                self._counts[kind] = count
            else:
                raise ValueError(f"unknown {self.ENDPOINT} fault {kind!r}; known: {', '.join(self.KINDS)}")

    def apply(self, spec: Mapping[str, Any]) -> None:
        """Activate a fault given as a table ``{"kind": ..., "seconds"|"count": ...}`` (``endpoint`` ignored)."""
        extra = set(spec) - {"kind", "seconds", "count", "endpoint"}
        if extra:
            raise ValueError(f"unknown fault parameter(s) {sorted(extra)} in {dict(spec)!r}")
        self.set(str(spec.get("kind")), seconds=spec.get("seconds"), count=spec.get("count"))

    def clear(self) -> None:
        """Clear every fault."""
        with self._lock:
            self._delay = 0.0
            for k in self._counts:
                self._counts[k] = 0

    def snapshot(self) -> dict[str, Any]:
        """The active faults: the delay (s) and every pending count."""
        with self._lock:
            return {"delay": self._delay, **self._counts}

    @property
    def delay_s(self) -> float:
        with self._lock:
            return self._delay

    def take(self, kind: str) -> bool:
        """Consume one count of ``kind`` if it is pending."""
        with self._lock:
            return self._take_locked(kind)

    def _take_locked(self, kind: str) -> bool:
        if self._counts.get(kind, 0) > 0:
            self._counts[kind] -= 1
            self._fired[kind] += 1
            return True
        return False

    def _delay_locked(self) -> float:
        """The reply delay (s) for one reply about to be sent; a non-zero delay counts as fired."""
        if self._delay > 0:
            self._fired["delay"] += 1
        return self._delay

    def take_delay(self) -> float:
        """:meth:`_delay_locked` under the lock: call once per reply that is delayed by it."""
        with self._lock:
            return self._delay_locked()

    def fired(self) -> dict[str, int]:
        """How often each kind took effect since the start (replies delayed, counts consumed)."""
        with self._lock:
            return dict(self._fired)


class MSADCFaults(CountedFaults):
    """Injected faults of the crate (docs/protocols.md section 5), thread-safe.

    ``delay`` (``seconds``: every reply waits), ``no_reply`` (``count``: the next queries get no reply),
    ``drop`` (``count``, default 1: the connection is closed at the next data query), ``truncate``
    (``count``, default 1: the next binary block is cut short, the header announcing more bytes than
    follow), ``corrupt`` (``count``, default 1: the next binary block has a bad header: ``#<n>`` followed
    by ``n`` question marks instead of the length digits, then the payload and the terminator).

    ``restart`` (``count``, default 1: at the next command the crate reboots: its ring, selection, lock
    and error queue are gone, ``SYST:BOOT?`` reports a new boot id and every connection is dropped).

    ``pause`` (``at``: a command header such as ``EVT:DATA?``, ``count``: N, default 1) is a hook for
    deterministic tests: the N-th command ``at`` received from now on (observer connections excepted)
    blocks before it is executed, and :meth:`snapshot` reports ``pause.paused`` with the spill selected
    at that moment, until the pause is released (``count = 0``, ``clear_faults`` or the server stopping);
    then the command runs normally. ``resolve`` (set by the server) maps a header to its command."""

    ENDPOINT = "msadc"
    COUNTED = ("no_reply", "drop", "truncate", "corrupt", "restart")
    EXTRA = ("pause",)

    def __init__(self) -> None:
        super().__init__()
        self.resolve: Callable[[str], Any] | None = None
        self._pause_at: str | None = None
        self._pause_cmd: Any = None
        self._pause_left = 0
        self._paused: dict[str, Any] | None = None
        self._release = threading.Event()

    def apply(self, spec: Mapping[str, Any]) -> None:
        if spec.get("kind") != "pause":
            super().apply(spec)
            return
        extra = set(spec) - {"kind", "at", "count", "endpoint"}
        if extra:
            raise ValueError(f"unknown fault parameter(s) {sorted(extra)} in {dict(spec)!r}")
        self.set_pause(spec.get("at"), spec.get("count", 1))

    def set_pause(self, at: Any, count: Any = 1) -> None:
        """Arm the pause at the ``count``-th command ``at``; ``count = 0`` releases (and disarms) it."""
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_COUNT:
            raise ValueError(f"fault 'pause' needs an integer count in [0, {MAX_COUNT}], got {count!r}")
        if count == 0:
            self._release_pause()
            return
        cmd = self.resolve(at) if self.resolve is not None and isinstance(at, str) else None
        if not isinstance(at, str) or (self.resolve is not None and cmd is None):
            raise ValueError(f"fault 'pause' needs 'at', a command header of the crate such as 'EVT:DATA?', got {at!r}")
        with self._lock:
            if self._paused is not None:
                raise ValueError(f"a command is paused already at {self._pause_at}: release it first (count 0)")
            self._pause_at, self._pause_cmd, self._pause_left = at, cmd, count
            self._release = threading.Event()

    def _release_pause(self) -> None:
        with self._lock:
            self._pause_at, self._pause_cmd, self._pause_left = None, None, 0
            self._release.set()

    def clear(self) -> None:
        super().clear()
        self._release_pause()

    def maybe_pause(self, cmd: Any, where: Callable[[], dict[str, Any]], stop: threading.Event) -> bool:
        """Called by a connection before it executes ``cmd``: block here if this is the armed N-th
        command (until released or ``stop``). ``where()`` describes the crate state for the report.
        Returns whether it paused."""
        with self._lock:
            if self._pause_cmd is None or cmd is not self._pause_cmd:
                return False
            self._pause_left -= 1
            if self._pause_left > 0:
                return False
            self._paused = {"at": self._pause_at, "unix": time.time(), **where()}
            self._pause_cmd = None
            self._fired["pause"] += 1
            release = self._release
        try:
            while not release.wait(0.05) and not stop.is_set():
                pass
        finally:
            with self._lock:
                self._paused = None
        return True

    def snapshot(self) -> dict[str, Any]:
        """The active faults, and ``pause``: ``at``, ``remaining`` (commands until it blocks), ``paused``
        (None, or where it blocks: ``at``, ``unix``, ``selected`` spill)."""
        out = super().snapshot()
        with self._lock:
            out["pause"] = {
                "at": self._pause_at,
                "remaining": self._pause_left,
                "paused": dict(self._paused) if self._paused else None,
            }
        return out
