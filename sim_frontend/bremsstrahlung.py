"""Bremsstrahlung spectrum of an electron in a thin radiator, complete screening (PDG 34.29): per radiation
length dN/dy = (4/3 - 4/3 y + y^2) / y for the photon energy fraction y = k / E. Used by the beam-line
transport (:mod:`sim_frontend.beamline`) and by the beam's low-energy tail (:mod:`sim_frontend.beam`:
electrons that radiated upstream of the simulated line)."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np


def _brem_density(y: np.ndarray) -> np.ndarray:
    return (4.0 / 3.0 - 4.0 / 3.0 * y + y * y) / y


def brem_rate_per_x0(y_lo: float, y_hi: float) -> float:
    """Photons per radiation length with energy fraction in [y_lo, y_hi] (complete screening)."""
    return 4.0 / 3.0 * math.log(y_hi / y_lo) - 4.0 / 3.0 * (y_hi - y_lo) + 0.5 * (y_hi**2 - y_lo**2)


@lru_cache(maxsize=16)
def brem_quantiles(y_lo: float, y_hi: float, n: int = 4096) -> np.ndarray:
    """Quantile table (n + 1 nodes at u = j/n) of y in [y_lo, y_hi] with density (4/3 - 4/3 y + y^2)/y."""
    ly = np.linspace(math.log(y_lo), math.log(y_hi), 20001)
    y = np.exp(ly)
    f = _brem_density(y) * y  # density in ln y
    c = np.concatenate([[0.0], np.cumsum(0.5 * (f[1:] + f[:-1]) * np.diff(ly))])
    c /= c[-1]
    return np.exp(np.interp(np.linspace(0.0, 1.0, n + 1), c, ly))
