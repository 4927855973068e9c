"""A' yield per electron on target in a thick lead target (docs/physics.md 3.1, PAPER Eq. 8).

    n_A'(eps, m, E0) = N_X0 * Integral dE (dT/dE)(E0, E) * sigma_cut(E)

with N_X0 = 1.851e22 Pb atoms/cm^2 per X0, dT/dE the differential track length of e+ e- per incident
electron [X0/GeV] from the 1D cascade (:mod:`sim_frontend.cascade`), and sigma_cut(E) the IWW
cross-section [cm^2] for E_A' = x E above the missing-energy cut. The ETL model divides the cross-section
by the K-factor K(m, E) at the radiating electron's energy. All yields are per EOT; they scale with eps^2.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from sim_frontend import aprime
from sim_frontend import physics_constants as pc
from sim_frontend.cascade import TrackLengthTable, simulate_cascade

YieldModel = Literal["IWW", "ETL"]

DEFAULT_N_SHOWERS: int = 20_000
"""Cascades simulated for a track-length table: statistical error on the > 50 GeV yield ~0.5%."""

DEFAULT_SEED: int = 20_161_102
"""Seed of the cached track-length tables (fixed: yields are reproducible run to run)."""

MIN_E_CUT_GEV: float = 0.1
"""Lowest E_cut used for a yield table. The 1D cascade has no ionisation loss, so production by
electrons below ~0.1 GeV is neglected (it only matters for E_miss,min < 0.1 GeV)."""


def table_e_cut_gev(emiss_min_gev: float) -> float:
    """E_cut [GeV] of the track-length table needed for a missing-energy cut E_miss,min [GeV]:
    only electrons above E_miss,min can emit such an A', so E_cut = clip(E_miss,min, 0.1, 1.0) GeV."""
    return float(np.clip(emiss_min_gev, MIN_E_CUT_GEV, 1.0))


@lru_cache(maxsize=16)
def track_length_table(
    e0_gev: float, e_cut_gev: float = 1.0, n_showers: int = DEFAULT_N_SHOWERS, seed: int = DEFAULT_SEED
) -> TrackLengthTable:
    """Cached cascade track-length table for electrons of ``e0_gev`` [GeV] in 40 X0 of lead
    (computed once per process and argument set)."""
    if not (np.isfinite(e0_gev) and e0_gev > 2.0 * e_cut_gev):
        raise ValueError(
            f"beam energy {e0_gev} GeV is too low for a track-length table with "
            f"E_cut = {e_cut_gev} GeV (needs E0 > {2.0 * e_cut_gev} GeV)"
        )
    return simulate_cascade(float(e0_gev), int(n_showers), seed=int(seed), e_cut_gev=float(e_cut_gev))


def _check_inputs(mass_gev: float, e0_gev: float, emiss_min_gev: float, model: str, eps: float) -> None:
    if not (np.isfinite(mass_gev) and mass_gev > 0):
        raise ValueError(f"A' mass must be > 0 GeV, got {mass_gev}")
    if not (np.isfinite(e0_gev) and e0_gev > 0):
        raise ValueError(f"beam energy must be > 0 GeV, got {e0_gev}")
    if not 0.0 <= emiss_min_gev < e0_gev:
        raise ValueError(f"missing-energy cut must be in [0, E0), got {emiss_min_gev} GeV")
    if model not in ("IWW", "ETL"):
        raise ValueError(f"unknown yield model {model!r}; use 'IWW' or 'ETL'")
    if not (np.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be > 0, got {eps}")


def _table_for(e0_gev: float, emiss_min_gev: float, table: TrackLengthTable | None) -> TrackLengthTable:
    if table is None:
        return track_length_table(float(e0_gev), table_e_cut_gev(emiss_min_gev))
    if not np.isclose(table.e0_gev, e0_gev):
        raise ValueError(f"track-length table is for E0 = {table.e0_gev} GeV, not {e0_gev} GeV")
    return table


def _radiating_bins(table: TrackLengthTable, mass_gev: float, e_min_gev: float) -> tuple[NDArray, NDArray]:
    """Centres [GeV] and track lengths [X0] of the bins whose electrons can emit the A' with E_A' > e_min."""
    energy = table.centres_gev
    usable = (table.track_all_x0 > 0) & (
        energy > max(float(aprime.kinematic_threshold_gev(mass_gev)), mass_gev + pc.M_E_GEV, e_min_gev)
    )
    return energy[usable], table.track_all_x0[usable]


def yield_per_eot(
    mass_gev: float,
    e0_gev: float = pc.BEAM_ENERGY_GEV,
    emiss_min_gev: float = 50.0,
    model: YieldModel = "IWW",
    eps: float = 1.0,
    table: TrackLengthTable | None = None,
) -> float:
    """Number of A' produced per electron on target with E_A' > ``emiss_min_gev`` [GeV], for an A' of mass
    ``mass_gev`` [GeV], beam energy ``e0_gev`` [GeV] and mixing ``eps`` (default 1: scale by eps^2)."""
    _check_inputs(mass_gev, e0_gev, emiss_min_gev, model, eps)
    mass = float(mass_gev)
    table = _table_for(e0_gev, emiss_min_gev, table)
    energy, track = _radiating_bins(table, mass, emiss_min_gev)
    if energy.size == 0:
        return 0.0
    sigma_pb = aprime.sigma_x_range(mass, energy, x_lo=emiss_min_gev / energy, eps=eps)
    if model == "ETL":
        sigma_pb = sigma_pb / aprime.k_factor(mass, energy)
    return float(pc.PB_N_X0_PER_CM2 * np.sum(track * sigma_pb) * pc.PB_TO_CM2)


def yields_per_eot(
    masses_gev: ArrayLike,
    e0_gev: float = pc.BEAM_ENERGY_GEV,
    emiss_min_gev: float = 50.0,
    model: YieldModel = "IWW",
    eps: float = 1.0,
    table: TrackLengthTable | None = None,
) -> NDArray[np.float64]:
    """:func:`yield_per_eot` for each mass in ``masses_gev`` [GeV], sharing one track-length table."""
    table = _table_for(e0_gev, emiss_min_gev, table)
    return np.array([yield_per_eot(m, e0_gev, emiss_min_gev, model, eps, table) for m in np.ravel(masses_gev)])


def aprime_energy_spectrum(
    mass_gev: float,
    edges_gev: ArrayLike,
    e0_gev: float = pc.BEAM_ENERGY_GEV,
    model: YieldModel = "IWW",
    eps: float = 1.0,
    e_cut_gev: float = 1.0,
    table: TrackLengthTable | None = None,
    n_grid: int = 1025,
) -> NDArray[np.float64]:
    """A' energy spectrum dn/dE_A' per EOT [1/GeV], averaged over the E_A' bins ``edges_gev`` [GeV], with
    no missing-energy cut. Only electrons above the table's E_cut (``e_cut_gev`` [GeV] for the cached
    table) radiate, so the spectrum below E_cut is underestimated."""
    edges = np.asarray(edges_gev, dtype=float)
    if edges.ndim != 1 or len(edges) < 2 or np.any(np.diff(edges) <= 0) or edges[0] < 0:
        raise ValueError("edges_gev must be a strictly increasing 1D array of energies >= 0")
    _check_inputs(mass_gev, e0_gev, 0.0, model, eps)
    mass = float(mass_gev)
    table = _table_for(e0_gev, e_cut_gev, table)
    energy, track = _radiating_bins(table, mass, 0.0)
    counts = np.zeros(len(edges) - 1)
    for e, length in zip(energy, track):
        x, cumulative_pb = aprime.cumulative_sigma_grid(mass, e, eps=eps, n_grid=n_grid)
        if model == "ETL":
            cumulative_pb = cumulative_pb / aprime.k_factor(mass, e)
        counts += length * np.diff(np.interp(edges / e, x, cumulative_pb))
    return pc.PB_N_X0_PER_CM2 * pc.PB_TO_CM2 * counts / np.diff(edges)
