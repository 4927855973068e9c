"""The readout's recycled buffers: allocated and pre-faulted once, then reused spill after spill (page
faults of fresh memory would otherwise cost more than the transfer of a spill's first chunks).

- :class:`ChunkPool`: the primitive chunk buffers the reader thread fills while the trigger runs;
- :class:`TimesBuffer`: the arrival times of a spill's primitives;
- :class:`EventPool`: event buffers, handed out by the readout and given back by whoever is done with the
  spill last (the monitor worker); thread-safe.
"""

from __future__ import annotations

import threading

import numpy as np

from detector import channels as ch


class ChunkPool:
    """``count`` primitive buffers of up to ``chunk_records`` records each (int16, trigger channels x
    samples)."""

    def __init__(self, chunk_records: int, count: int = 3) -> None:
        self.chunk_records = int(chunk_records)
        self.count = int(count)
        self._pool: list[np.ndarray] = []

    def buffers(self, n: int) -> list[np.ndarray]:
        """The pool, sized for a spill of ``n`` records (grown, never shrunk; at most one chunk each)."""
        size = min(self.chunk_records, max(n, 1))
        if not self._pool or self._pool[0].shape[0] < size:
            self._pool = []
            for _ in range(self.count):
                b = np.empty((size, ch.N_TRIGGER_CHANNELS, ch.N_SAMPLES), np.int16)
                b.fill(0)
                self._pool.append(b)
        return self._pool


class TimesBuffer:
    """A reusable arrival-time buffer (float64, ns), grown by at least a quarter when too small."""

    def __init__(self) -> None:
        self._buf = np.zeros(0, np.float64)

    def view(self, n: int) -> np.ndarray:
        """The first ``n`` entries (pre-faulted)."""
        if self._buf.shape[0] < n:
            self._buf = np.zeros(max(n, int(1.25 * self._buf.shape[0])), np.float64)
        return self._buf[:n]


def _with_headroom(n: int) -> int:
    """Events of a new event buffer for ``n`` events: 10 % more, at least 16 more."""
    return max(int(n * 1.1) + 16, 1)


class EventPool:
    """Event buffers (int16, events x channels x samples): at most ``keep`` idle ones are kept, the
    largest."""

    def __init__(self, keep: int = 2) -> None:
        self.keep = int(keep)
        self._pool: list[np.ndarray] = []
        self._lock = threading.Lock()
        self._filling: np.ndarray | None = None  #: the buffer :meth:`prefault` is faulting in
        self._filled = 0  #: its elements faulted in so far

    def take(self, n: int) -> np.ndarray:
        """A buffer for at least ``n`` events: the smallest recycled one that fits (already faulted in), the
        one :meth:`prefault` prepared, or a new one with 10 % headroom."""
        with self._lock:
            fits = [i for i, b in enumerate(self._pool) if b.shape[0] >= n]
            if fits:
                return self._pool.pop(min(fits, key=lambda i: self._pool[i].shape[0]))
            if self._filling is not None and self._filling.shape[0] >= n:
                buf, self._filling = self._filling, None
                return buf
        return np.empty((_with_headroom(n), ch.N_CHANNELS, ch.N_SAMPLES), np.int16)

    def prefault(self, n: int, step_bytes: int = 8 << 20) -> bool:
        """Fault in (a step of ``step_bytes`` at a time) a buffer for ``n`` events unless the pool has one:
        the readout calls it while it waits for the primitives, so that the event readout does not pay the
        page faults of fresh memory. True if it did some work, False once nothing is left to do."""
        with self._lock:
            if any(b.shape[0] >= n for b in self._pool):
                return False
            if self._filling is None or self._filling.shape[0] < n:
                self._filling = np.empty((_with_headroom(n), ch.N_CHANNELS, ch.N_SAMPLES), np.int16)
                self._filled = 0
            flat = self._filling.reshape(-1)
            if self._filled >= flat.size:
                return False
            end = min(flat.size, self._filled + step_bytes // flat.itemsize)
            flat[self._filled : end] = 0
            self._filled = end
            return True

    def release(self, base: np.ndarray | None) -> None:
        """Give a buffer back once nothing uses it any more; a second release of the same buffer and
        ``None`` are ignored."""
        if base is None:
            return
        with self._lock:
            pool = self._pool
            if any(b is base for b in pool):
                return
            pool.append(base)
            if len(pool) > self.keep:  # drop the smallest, by position (list.remove would compare arrays with ==)
                del pool[min(range(len(pool)), key=lambda i: pool[i].shape[0])]
