"""Fault state shared by the emulator's endpoints (docs/protocols.md section 5): a reply delay in
seconds and counted faults (each pending count is consumed by one request). Thread-safe.

Each endpoint declares its counted kinds (``COUNTED``) and decides how it consumes them
(:class:`sim_frontend.emu_msadc.MSADCFaults`, :class:`sim_frontend.serial_server.FaultState`)."""
from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from typing import Any

MAX_DELAY_S = 600.0
MAX_COUNT = 10**6


class CountedFaults:
    """``delay`` (``seconds``) plus the counted kinds of ``COUNTED`` (``count``, default 1)."""

    ENDPOINT = "emulator"
    COUNTED: tuple[str, ...] = ()

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._delay = 0.0
        self._counts = {k: 0 for k in self.COUNTED}

    KINDS: tuple[str, ...] = ("delay",)

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        cls.KINDS = ("delay", *cls.COUNTED)      #: every kind the endpoint accepts

    def set(self, kind: str, *, seconds: float | None = None, count: int | None = None) -> None:
        """Activate ``kind``; ValueError names the problem. ``count = 0`` / ``seconds = 0`` clears it."""
        with self._lock:
            if kind == "delay":
                if seconds is None or isinstance(seconds, bool) or not isinstance(seconds, (int, float)) \
                        or not math.isfinite(seconds) or not 0.0 <= seconds <= MAX_DELAY_S:
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
            return True
        return False
