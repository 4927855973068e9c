"""Hidden ECAL gain changes with time in the emulator (issue 19 point 3): a slow linear drift per channel
and injected jumps, so that a calibration is needed again after a while and its ageing shows.

``factor(t)`` multiplies the digitiser's hidden gains (:class:`sim_frontend.digitizer.Digitizer`): for
every ECAL channel ``1 + rate * max(0, t - t_ref) / 3600`` (``rate`` drawn once per channel, RMS
``emulator.ecal_drift_per_hour``; no drift before :meth:`GainDrift.start` set ``t_ref``, so that a
digitiser used outside the running emulator stays deterministic), times every jump injected at or before
``t`` (control endpoint ``gain_jump``); 1 for all other channels. Times are unix seconds; a spill's gains
are those at its start.
"""

from __future__ import annotations

import math
import threading
import time

import numpy as np

from detector import channels as ch

MAX_JUMPS = 10_000  #: injected jumps kept (a control client cannot grow the list without bound)


class GainDrift:
    """Time-dependent multiplicative factors (N_CHANNELS,) of the hidden gains. ``rate_per_hour``: RMS of
    the per-channel drift rate (fraction per hour); ``seed``: the hidden seed; ``t_ref``: unix s at which
    the drift starts (None: not started)."""

    def __init__(self, rate_per_hour: float, seed: int, t_ref: float | None = None) -> None:
        rng = np.random.default_rng([int(seed), 0xD81F7])
        self.ecal_ids = ch.ids_of_kind("ecal")
        self.rate = np.zeros(ch.N_CHANNELS)
        self.rate[self.ecal_ids] = rng.normal(0.0, float(rate_per_hour), self.ecal_ids.size)
        self.t_ref = t_ref
        self._jumps: list[tuple[float, int, float]] = []
        self._lock = threading.Lock()

    def start(self, t_ref: float | None = None) -> None:
        """Let the gains drift from ``t_ref`` (unix s, default now) on."""
        self.t_ref = time.time() if t_ref is None else float(t_ref)

    def jump(self, channel_id: int, factor: float, t_unix: float | None = None) -> dict[str, float]:
        """Multiply channel ``channel_id``'s gain by ``factor`` from ``t_unix`` on (default now); ValueError
        for a non-ECAL channel or a factor outside (0.1, 10)."""
        cid = int(channel_id)
        if cid not in set(self.ecal_ids.tolist()):
            raise ValueError(f"channel {channel_id!r} is no ECAL channel (ids 0..{ch.N_ECAL - 1})")
        f = float(factor)
        if not (math.isfinite(f) and 0.1 < f < 10.0):
            raise ValueError(f"gain jump factor {factor!r} must be a number in (0.1, 10)")
        t = time.time() if t_unix is None else float(t_unix)
        with self._lock:
            if len(self._jumps) >= MAX_JUMPS:
                raise ValueError(f"at most {MAX_JUMPS} gain jumps")
            self._jumps.append((t, cid, f))
        return {"channel_id": cid, "factor": f, "unix": t}

    def factor(self, t_unix: float) -> np.ndarray:
        """Gain factors (N_CHANNELS,) at unix time ``t_unix``."""
        dt = 0.0 if self.t_ref is None else max(0.0, float(t_unix) - self.t_ref)
        out = 1.0 + self.rate * (dt / 3600.0)
        with self._lock:
            for t, cid, f in self._jumps:
                if t <= t_unix:
                    out[cid] *= f
        return out
