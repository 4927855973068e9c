"""One-dimensional electromagnetic cascade Monte Carlo and the Tsai primary track length (docs/physics.md 3.2-3.4).

The cascade follows e+/e- and photons along the beam axis in a thick target, in units of the radiation
length X0 (approximation A: complete-screening bremsstrahlung and pair production, no ionisation, no LPM):

- e+/e-: bremsstrahlung emissions with rate R_b per X0 (photon fraction y >= y_min), the photon energy
  fraction drawn from f(y) = [(4/3)(1 - y) + y^2]/y; the energy is constant between emissions;
- photons: conversion with rate 7/9 per X0, electron fraction drawn from 1 - (4/3) x (1 - x);
- a particle is dropped when its energy falls below E_cut, and leaves when it reaches the depth T.

The result is the differential track length dT/dE of charged particles per incident electron, in X0/GeV,
for all particles and for the primary electron only, with per-shower energy bookkeeping
(energy dropped below E_cut + energy leaving at T == E0).

``simulate_cascade`` runs the numba kernel (``cache=True``); ``simulate_cascade_numpy`` is a vectorised
numpy implementation of the same physics, kept as a reference and as the benchmark baseline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np
from numpy.typing import NDArray
from scipy import integrate, special

PHOTON_CONVERSION_RATE_PER_X0: float = 7.0 / 9.0
"""Pair-production probability per radiation length for a high-energy photon."""

TSAI_B: float = 4.0 / 3.0
"""Energy-loss parameter b of the Tsai/Rossi primary-electron distribution (complete screening)."""


def brems_rate_per_x0(y_min: float) -> float:
    """Bremsstrahlung emission rate R_b per X0 for photon fractions y in [y_min, 1] (complete screening):
    R_b = (4/3) ln(1/y_min) - (4/3)(1 - y_min) + (1 - y_min^2)/2."""
    if not 0.0 < y_min < 1.0:
        raise ValueError(f"y_min must be in (0, 1), got {y_min}")
    return 4.0 / 3.0 * math.log(1.0 / y_min) - 4.0 / 3.0 * (1.0 - y_min) + 0.5 * (1.0 - y_min * y_min)


@dataclass(frozen=True)
class TrackLengthTable:
    """Differential track length of a cascade, per incident electron.

    ``track_all_x0[i]`` / ``track_primary_x0[i]``: track length [X0] of all charged particles / of the
    primary electron with energy in the bin ``[edges_gev[i], edges_gev[i+1])`` (the last bin includes E0).
    ``energy_dropped_gev`` / ``energy_leaving_gev``: per shower, the energy dropped below E_cut and the
    energy carried out at depth T [GeV]."""

    e0_gev: float
    e_cut_gev: float
    t_max_x0: float
    y_min: float
    n_showers: int
    seed: int
    edges_gev: NDArray[np.float64]
    track_all_x0: NDArray[np.float64]
    track_primary_x0: NDArray[np.float64]
    energy_dropped_gev: NDArray[np.float64]
    energy_leaving_gev: NDArray[np.float64]

    @property
    def centres_gev(self) -> NDArray[np.float64]:
        """Bin centres [GeV]."""
        return 0.5 * (self.edges_gev[1:] + self.edges_gev[:-1])

    @property
    def widths_gev(self) -> NDArray[np.float64]:
        """Bin widths [GeV]."""
        return np.diff(self.edges_gev)

    def dtde(self, primary_only: bool = False) -> NDArray[np.float64]:
        """dT/dE per incident electron [X0/GeV] in each bin."""
        track = self.track_primary_x0 if primary_only else self.track_all_x0
        return track / self.widths_gev

    def track_length_above(self, e_min_gev: float, primary_only: bool = False) -> float:
        """Track length [X0] per incident electron with E >= e_min_gev (which must be a bin edge)."""
        index = int(np.searchsorted(self.edges_gev, e_min_gev))
        if index >= len(self.edges_gev) or not math.isclose(self.edges_gev[index], e_min_gev, rel_tol=1e-12):
            raise ValueError(f"{e_min_gev} GeV is not a bin edge of this table")
        track = self.track_primary_x0 if primary_only else self.track_all_x0
        return float(track[index:].sum())

    def max_energy_imbalance(self) -> float:
        """max over showers of |dropped + leaving - E0| / E0 (0 up to rounding for brems + pair only)."""
        total = self.energy_dropped_gev + self.energy_leaving_gev
        return float(np.max(np.abs(total - self.e0_gev)) / self.e0_gev)


def default_edges(
    e0_gev: float, e_cut_gev: float, n_log: int = 400, top_width_gev: float | None = None
) -> NDArray[np.float64]:
    """Histogram edges [GeV]: ``n_log`` log-spaced bins from E_cut to E0/2, then linear bins of width
    ``top_width_gev`` (default E0/1000) up to E0, so that E0/2 is an edge and the region near E0, which
    dominates the A' yield, is finely binned."""
    if not 0.0 < e_cut_gev < 0.5 * e0_gev:
        raise ValueError(f"need 0 < E_cut < E0/2, got E_cut = {e_cut_gev} GeV, E0 = {e0_gev} GeV")
    width = e0_gev / 1000.0 if top_width_gev is None else top_width_gev
    n_lin = max(1, int(round(0.5 * e0_gev / width)))
    low = np.geomspace(e_cut_gev, 0.5 * e0_gev, n_log + 1)
    high = np.linspace(0.5 * e0_gev, e0_gev, n_lin + 1)
    return np.concatenate([low, high[1:]])


def _validate(e0_gev: float, n_showers: int, e_cut_gev: float, t_max_x0: float, edges: NDArray) -> None:
    if not (np.isfinite(e0_gev) and e0_gev > 0):
        raise ValueError(f"E0 must be > 0 GeV, got {e0_gev}")
    if n_showers < 1:
        raise ValueError(f"n_showers must be >= 1, got {n_showers}")
    if not 0.0 < e_cut_gev < e0_gev:
        raise ValueError(f"E_cut must be in (0, E0), got {e_cut_gev} GeV")
    if not t_max_x0 > 0:
        raise ValueError(f"target depth must be > 0 X0, got {t_max_x0}")
    if edges.ndim != 1 or len(edges) < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError("edges must be a strictly increasing 1D array with at least 2 entries")
    if edges[-1] < e0_gev:
        raise ValueError(f"the last edge ({edges[-1]} GeV) must be >= E0 ({e0_gev} GeV)")


# ----------------------------------------------------------------------------- numba kernel
@numba.njit(cache=True)
def _sample_brems_y(y_min: float) -> float:
    """y from [(4/3)(1-y) + y^2]/y on [y_min, 1]: propose from 1/y, accept with (1 - y + 3y^2/4)."""
    log_range = math.log(1.0 / y_min)
    while True:
        y = y_min * math.exp(log_range * np.random.random())
        if np.random.random() < 1.0 - y + 0.75 * y * y:
            return y


@numba.njit(cache=True)
def _sample_pair_x() -> float:
    """Electron energy fraction from 1 - (4/3) x (1 - x) on [0, 1] (maximum 1 at the edges)."""
    while True:
        x = np.random.random()
        if np.random.random() < 1.0 - 4.0 / 3.0 * x * (1.0 - x):
            return x


def _bin_lookup(edges: NDArray[np.float64]) -> tuple[NDArray[np.int64], float]:
    """Uniform cells over [edges[0], edges[-1]] holding the index of the bin that contains each cell start,
    so the kernel finds a bin in O(1) (cell lookup + a short forward scan) instead of a binary search."""
    n_cells = 16 * (len(edges) - 1)
    inv_cell = n_cells / (edges[-1] - edges[0])
    starts = edges[0] + np.arange(n_cells + 1) / inv_cell
    lookup = np.clip(np.searchsorted(edges, starts, side="right") - 1, 0, len(edges) - 2)
    return lookup.astype(np.int64), float(inv_cell)


@numba.njit(cache=True)
def _record(
    hist: np.ndarray, edges: np.ndarray, lookup: np.ndarray, inv_cell: float, energy: float, length: float
) -> None:
    """Add ``length`` to the bin of ``energy`` (the last bin includes the upper edge; outside: ignored)."""
    if energy < edges[0] or energy > edges[-1]:
        return
    index = lookup[int((energy - edges[0]) * inv_cell)]
    while index + 2 < len(edges) and edges[index + 1] <= energy:
        index += 1
    hist[index] += length


@numba.njit(cache=True)
def _cascade_kernel(
    e0: float,
    n_showers: int,
    seed: int,
    e_cut: float,
    t_max: float,
    y_min: float,
    edges: np.ndarray,
    lookup: np.ndarray,
    inv_cell: float,
    hist_all: np.ndarray,
    hist_primary: np.ndarray,
    dropped: np.ndarray,
    leaving: np.ndarray,
) -> None:
    """Run ``n_showers`` cascades; accumulate track lengths [X0] into the histograms (summed over showers)."""
    np.random.seed(seed)
    rate_b = (4.0 / 3.0) * math.log(1.0 / y_min) - (4.0 / 3.0) * (1.0 - y_min) + 0.5 * (1.0 - y_min * y_min)
    rate_g = 7.0 / 9.0
    capacity = int(e0 / e_cut) + 16
    st_energy = np.empty(capacity)
    st_depth = np.empty(capacity)
    st_photon = np.empty(capacity, dtype=np.bool_)
    st_primary = np.empty(capacity, dtype=np.bool_)
    for shower in range(n_showers):
        e_drop = 0.0
        e_leave = 0.0
        st_energy[0] = e0
        st_depth[0] = 0.0
        st_photon[0] = False
        st_primary[0] = True
        top = 1
        while top > 0:
            top -= 1
            energy = st_energy[top]
            depth = st_depth[top]
            primary = st_primary[top]
            if st_photon[top]:
                depth += -math.log(1.0 - np.random.random()) / rate_g
                if depth >= t_max:
                    e_leave += energy
                    continue
                e_minus = _sample_pair_x() * energy
                for e_child in (e_minus, energy - e_minus):
                    if e_child >= e_cut:
                        st_energy[top] = e_child
                        st_depth[top] = depth
                        st_photon[top] = False
                        st_primary[top] = False
                        top += 1
                    else:
                        e_drop += e_child
                continue
            # charged particle: emit photons until it drops below E_cut or leaves the target
            while True:
                step = -math.log(1.0 - np.random.random()) / rate_b
                length = min(step, t_max - depth)
                _record(hist_all, edges, lookup, inv_cell, energy, length)
                if primary:
                    _record(hist_primary, edges, lookup, inv_cell, energy, length)
                if depth + step >= t_max:
                    e_leave += energy
                    break
                depth += step
                k = _sample_brems_y(y_min) * energy
                energy -= k
                if k >= e_cut:
                    st_energy[top] = k
                    st_depth[top] = depth
                    st_photon[top] = True
                    st_primary[top] = False
                    top += 1
                else:
                    e_drop += k
                if energy < e_cut:
                    e_drop += energy
                    break
        dropped[shower] = e_drop
        leaving[shower] = e_leave


def simulate_cascade(
    e0_gev: float,
    n_showers: int,
    seed: int = 1,
    e_cut_gev: float = 1.0,
    t_max_x0: float = 40.0,
    y_min: float = 1e-4,
    edges_gev: NDArray[np.float64] | None = None,
) -> TrackLengthTable:
    """Run the numba 1D cascade for ``n_showers`` electrons of energy ``e0_gev`` [GeV] in a target of
    ``t_max_x0`` radiation lengths; reproducible for a given ``seed``. Returns per-electron track lengths."""
    edges = default_edges(e0_gev, e_cut_gev) if edges_gev is None else np.asarray(edges_gev, dtype=float)
    _validate(e0_gev, n_showers, e_cut_gev, t_max_x0, edges)
    brems_rate_per_x0(y_min)
    hist_all = np.zeros(len(edges) - 1)
    hist_primary = np.zeros(len(edges) - 1)
    dropped = np.zeros(n_showers)
    leaving = np.zeros(n_showers)
    lookup, inv_cell = _bin_lookup(edges)
    _cascade_kernel(
        float(e0_gev),
        int(n_showers),
        int(seed),
        float(e_cut_gev),
        float(t_max_x0),
        float(y_min),
        edges,
        lookup,
        inv_cell,
        hist_all,
        hist_primary,
        dropped,
        leaving,
    )
    return TrackLengthTable(
        float(e0_gev),
        float(e_cut_gev),
        float(t_max_x0),
        float(y_min),
        int(n_showers),
        int(seed),
        edges,
        hist_all / n_showers,
        hist_primary / n_showers,
        dropped,
        leaving,
    )


# ----------------------------------------------------------------------------- numpy reference
def _sample_brems_y_numpy(n: int, y_min: float, rng: np.random.Generator) -> NDArray[np.float64]:
    y = np.empty(n)
    todo = np.arange(n)
    while todo.size:
        trial = y_min ** (1.0 - rng.random(todo.size))
        ok = rng.random(todo.size) < 1.0 - trial + 0.75 * trial * trial
        y[todo[ok]] = trial[ok]
        todo = todo[~ok]
    return y


def _sample_pair_x_numpy(n: int, rng: np.random.Generator) -> NDArray[np.float64]:
    x = np.empty(n)
    todo = np.arange(n)
    while todo.size:
        trial = rng.random(todo.size)
        ok = rng.random(todo.size) < 1.0 - 4.0 / 3.0 * trial * (1.0 - trial)
        x[todo[ok]] = trial[ok]
        todo = todo[~ok]
    return x


def simulate_cascade_numpy(
    e0_gev: float,
    n_showers: int,
    seed: int = 1,
    e_cut_gev: float = 1.0,
    t_max_x0: float = 40.0,
    y_min: float = 1e-4,
    edges_gev: NDArray[np.float64] | None = None,
) -> TrackLengthTable:
    """Vectorised numpy version of :func:`simulate_cascade` (same physics, different random stream):
    all live particles advance one interaction per iteration."""
    edges = default_edges(e0_gev, e_cut_gev) if edges_gev is None else np.asarray(edges_gev, dtype=float)
    _validate(e0_gev, n_showers, e_cut_gev, t_max_x0, edges)
    rng = np.random.default_rng(seed)
    rate_b = brems_rate_per_x0(y_min)
    n_bins = len(edges) - 1
    hist_all = np.zeros(n_bins)
    hist_primary = np.zeros(n_bins)
    dropped = np.zeros(n_showers)
    leaving = np.zeros(n_showers)

    def record(energy: NDArray, length: NDArray, primary: NDArray) -> None:
        index = np.clip(np.searchsorted(edges, energy, side="right") - 1, 0, n_bins - 1)
        hist_all[:] += np.bincount(index, weights=length, minlength=n_bins)
        hist_primary[:] += np.bincount(index, weights=np.where(primary, length, 0.0), minlength=n_bins)

    # charged: energy, depth, shower, primary; photons: energy, depth, shower
    e_en, e_dep = np.full(n_showers, float(e0_gev)), np.zeros(n_showers)
    e_sh, e_pr = np.arange(n_showers), np.ones(n_showers, dtype=bool)
    g_en, g_dep, g_sh = np.empty(0), np.empty(0), np.empty(0, dtype=np.intp)
    while e_en.size or g_en.size:
        # charged particles: one emission each
        step = rng.exponential(1.0 / rate_b, e_en.size)
        out = e_dep + step >= t_max_x0
        record(e_en[out], t_max_x0 - e_dep[out], e_pr[out])
        np.add.at(leaving, e_sh[out], e_en[out])
        stay = ~out
        e_en, e_dep, e_sh, e_pr, step = e_en[stay], e_dep[stay] + step[stay], e_sh[stay], e_pr[stay], step[stay]
        record(e_en, step, e_pr)
        k = _sample_brems_y_numpy(e_en.size, y_min, rng) * e_en
        e_en = e_en - k
        soft = k < e_cut_gev
        np.add.at(dropped, e_sh[soft], k[soft])
        new_g = (k[~soft], e_dep[~soft], e_sh[~soft])
        low = e_en < e_cut_gev
        np.add.at(dropped, e_sh[low], e_en[low])
        e_en, e_dep, e_sh, e_pr = e_en[~low], e_dep[~low], e_sh[~low], e_pr[~low]
        # photons: one conversion each
        g_dep = g_dep + rng.exponential(1.0 / PHOTON_CONVERSION_RATE_PER_X0, g_en.size)
        out = g_dep >= t_max_x0
        np.add.at(leaving, g_sh[out], g_en[out])
        g_en, g_dep, g_sh = g_en[~out], g_dep[~out], g_sh[~out]
        e_minus = _sample_pair_x_numpy(g_en.size, rng) * g_en
        kids_en = np.concatenate([e_minus, g_en - e_minus])
        kids_dep, kids_sh = np.tile(g_dep, 2), np.tile(g_sh, 2)
        soft = kids_en < e_cut_gev
        np.add.at(dropped, kids_sh[soft], kids_en[soft])
        e_en = np.concatenate([e_en, kids_en[~soft]])
        e_dep = np.concatenate([e_dep, kids_dep[~soft]])
        e_sh = np.concatenate([e_sh, kids_sh[~soft]])
        e_pr = np.concatenate([e_pr, np.zeros(int((~soft).sum()), dtype=bool)])
        g_en, g_dep, g_sh = new_g
    return TrackLengthTable(
        float(e0_gev),
        float(e_cut_gev),
        float(t_max_x0),
        float(y_min),
        int(n_showers),
        int(seed),
        edges,
        hist_all / n_showers,
        hist_primary / n_showers,
        dropped,
        leaving,
    )


# ----------------------------------------------------------------------------- Tsai primary
def _check_tsai(e0_gev: float, e_gev: float, t_max_x0: float) -> None:
    if not 0.0 < e_gev < e0_gev:
        raise ValueError(f"need 0 < E < E0, got E = {e_gev} GeV, E0 = {e0_gev} GeV")
    if not t_max_x0 > 0:
        raise ValueError(f"target depth must be > 0 X0, got {t_max_x0}")


def tsai_primary_dtde(e0_gev: float, e_gev: float, t_max_x0: float = 40.0, b: float = TSAI_B) -> float:
    """Primary-electron differential track length [X0/GeV] at energy E (Tsai-Whitis form, TSAI74):
    dT/dE = Integral_0^T dt (1/E0) [ln(E0/E)]^(b t - 1) / Gamma(b t)."""
    _check_tsai(e0_gev, e_gev, t_max_x0)
    log_ratio = math.log(e0_gev / e_gev)

    def integrand(t: float) -> float:
        s = b * t
        return math.exp((s - 1.0) * math.log(log_ratio) - special.gammaln(s)) / e0_gev if s > 0 else 0.0

    value, _ = integrate.quad(integrand, 0.0, t_max_x0, limit=200)
    return value


def tsai_primary_track_length(e0_gev: float, e_min_gev: float, t_max_x0: float = math.inf, b: float = TSAI_B) -> float:
    """Track length [X0] of the primary electron with energy above ``e_min_gev`` in a target of
    ``t_max_x0`` X0 (default: infinitely thick). ln(E0/E) is Gamma-distributed with shape b t, so the
    energy integral is the regularised incomplete gamma function P(b t, ln(E0/E_min))."""
    _check_tsai(e0_gev, e_min_gev, t_max_x0)
    log_ratio = math.log(e0_gev / e_min_gev)
    value, _ = integrate.quad(lambda t: special.gammainc(b * t, log_ratio) if t > 0 else 1.0, 0.0, t_max_x0, limit=200)
    return value
