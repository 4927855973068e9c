"""A fixed-capacity table of per-spill values (rates, EOT, trigger counts) for the monitor's time-series
views: named columns of float64, NaN where a spill had no value; memory bounded by ``capacity`` rows."""

from __future__ import annotations

import math

import numpy as np


class History:
    """Per-spill history with a fixed capacity (memory stays flat): named float columns, appended
    together; columns can be added later (earlier rows read NaN). Storage is a (2*cap, ncols) block:
    appending is O(1) amortised and every column is a contiguous view in spill order."""

    def __init__(self, capacity: int) -> None:
        self.capacity = int(capacity)
        self._cols: dict[str, int] = {}
        self._buf = np.full((2 * self.capacity, 0), np.nan)
        self._n = 0

    def __len__(self) -> int:
        return min(self._n, self.capacity)

    def names(self) -> list[str]:
        return list(self._cols)

    def _ensure(self, name: str) -> int:
        j = self._cols.get(name)
        if j is None:
            j = self._buf.shape[1]
            self._buf = np.concatenate([self._buf, np.full((self._buf.shape[0], 1), np.nan)], axis=1)
            self._cols[name] = j
        return j

    def append(self, values: dict[str, float]) -> None:
        for name in values:
            self._ensure(name)
        if self._n == self._buf.shape[0]:
            keep = self.capacity - 1
            self._buf[:keep] = self._buf[self._n - keep : self._n]
            self._buf[keep:] = np.nan
            self._n = keep
        row = self._buf[self._n]
        row[:] = np.nan
        for name, v in values.items():
            row[self._cols[name]] = v
        self._n += 1

    def replace_last(self, values: dict[str, float]) -> None:
        for name in values:
            self._ensure(name)
        row = self._buf[self._n - 1]
        row[:] = np.nan
        for name, v in values.items():
            row[self._cols[name]] = v

    def column(self, name: str) -> np.ndarray:
        """The last ``min(n, capacity)`` values of a column (a view; NaN where not given)."""
        j = self._cols.get(name)
        lo = max(0, self._n - self.capacity)
        if j is None:
            return np.full(self._n - lo, np.nan)
        return self._buf[lo : self._n, j]

    def last(self, name: str, default: float = math.nan) -> float:
        j = self._cols.get(name)
        return default if j is None or self._n == 0 else float(self._buf[self._n - 1, j])

    def clear(self) -> None:
        self._cols.clear()
        self._buf = np.full((2 * self.capacity, 0), np.nan)
        self._n = 0


# --------------------------------------------------------------------------------------------------
