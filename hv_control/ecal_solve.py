"""ECAL calibration constants from beam-electron showers (issue 19; docs/physics.md section 7).

The beam electrons put on each ECAL cell in turn share their shower with the neighbouring cells, so the
constants are solved for all cells together: with ``A`` the amplitudes (ADC counts) of the 72 ECAL
channels (PS and main of the 36 cells) of every selected event, the constants ``c`` (GeV per count)
minimise ``sum_events (A c - T_cell)^2`` (linear least squares over events). The selection is iterated:
with the constants of the previous step, the beam-electron peak of each cell's energy is measured (the
Gaussian core fit of :func:`hv_control.peak.fit_core`: peak ``P`` and core width ``S``) and an event is
kept when its energy lies within ``window_sigma`` S of P (hadrons, muons, upstream-interacted electrons and
pile-up fall outside), then the constants are solved again.

The beam electrons radiate in the beam-line material upstream of the ECAL, so a cell's energy distribution
has a low tail, which reaches into the window: the mean ``M`` of the kept events lies below the peak. The
calibration puts the peak, not that mean, at the beam energy: each cell's target is
``T_cell = E_beam M / P``, the mean its kept events have when their peak sits at ``E_beam``. The least
squares does not put each cell's mean exactly at its target (the constants are shared between cells), so
the targets are then corrected by the peaks' misses, ``T_cell *= E_beam / P``, and the constants solved
again until every cell's peak is at the beam energy within ``tol``. Channels that no selected event
reaches keep their old constant.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detector import channels as ch

from .peak import PeakFitError, fit_core

N_ECAL = ch.N_ECAL  #: ECAL channels (ids 0..71: ``36*k + 6*x + y``)
MIN_SIGNAL_EVENTS = 20  #: events with signal a channel needs for its constant to be solved
MIN_PEAK_EVENTS = 100  #: events a cell block needs for its peak to be measured


@dataclass
class Solution:
    """Constants ``c`` (GeV per ADC count, by ECAL channel id), which channels were solved, the events
    kept in the last step and the iterations made."""

    c: np.ndarray
    solved: np.ndarray
    kept: int
    total: int
    iterations: int


def select(
    blocks: list[np.ndarray], c: np.ndarray, window_sigma: float
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Per cell block (events x 72 amplitudes): the mask of events whose energy ``A c`` (GeV) lies within
    ``window_sigma`` core widths of the block's beam-electron peak, the peak (GeV) and the mean energy of
    the kept events (GeV; both NaN for an empty block). ValueError when a block's peak cannot be measured."""
    masks, peak, mean = [], np.full(len(blocks), np.nan), np.full(len(blocks), np.nan)
    for i, a in enumerate(blocks):
        if a.shape[0] == 0:
            masks.append(np.zeros(0, bool))
            continue
        e = a @ c
        try:
            fit = fit_core(e, min_events=min(MIN_PEAK_EVENTS, a.shape[0]))
        except PeakFitError as exc:
            raise ValueError(f"cell block {i} ({a.shape[0]} events): no beam-electron peak ({exc})") from None
        m = np.abs(e - fit.mean) <= window_sigma * fit.sigma
        masks.append(m)
        peak[i], mean[i] = fit.mean, float(np.mean(e[m]))
    return masks, peak, mean


def solve_constants(
    blocks: list[np.ndarray],
    c0: np.ndarray,
    beam_gev: float,
    *,
    iterations: int = 12,
    window_sigma: float = 3.0,
    tol: float = 1e-3,
) -> Solution:
    """Constants (72,) GeV/count from the event blocks (one per cell, events x 72 amplitudes in counts),
    starting from ``c0`` (the present constants); see the module docstring. Stops when every block's peak
    lies within ``tol`` (relative) of ``beam_gev`` or after ``iterations`` solves."""
    c = np.asarray(c0, dtype=np.float64).copy()
    if c.shape != (N_ECAL,):
        raise ValueError(f"c0 must have shape ({N_ECAL},), got {c.shape}")
    if not all(b.ndim == 2 and b.shape[1] == N_ECAL for b in blocks):
        raise ValueError(f"every block must be (events, {N_ECAL}) amplitudes")
    total = sum(b.shape[0] for b in blocks)
    if total < N_ECAL:
        raise ValueError(f"only {total} events: too few to solve {N_ECAL} constants")
    solved = np.zeros(N_ECAL, bool)
    kept = 0
    it = 0
    beam = float(beam_gev)
    goal = np.full(len(blocks), np.nan)  # per block: the mean energy its kept events are solved to
    for step in range(iterations + 1):
        masks, peak, mean = select(blocks, c, window_sigma)
        if step == 0:
            goal = beam * mean / peak
        else:
            if np.nanmax(np.abs(peak / beam - 1)) < tol or step == iterations:
                break
            # the least squares puts a block's mean, not its peak, at the goal: move the goal by the peak's miss
            goal = goal * beam / peak
        it = step + 1
        a = np.concatenate([b[m] for b, m in zip(blocks, masks)])
        target = np.concatenate([np.full(int(m.sum()), g) for m, g in zip(masks, goal)])
        kept = a.shape[0]
        if kept < N_ECAL:
            raise ValueError(f"only {kept} events selected: too few to solve {N_ECAL} constants")
        solved = (a > 0).sum(axis=0) >= MIN_SIGNAL_EVENTS
        rhs = target - a[:, ~solved] @ c[~solved]
        # columns scaled to unit norm: PS and main amplitudes differ by an order of magnitude
        sub = a[:, solved]
        norm = np.linalg.norm(sub, axis=0)
        x, *_ = np.linalg.lstsq(sub / norm, rhs, rcond=None)
        new = c.copy()
        new[solved] = x / norm
        if np.any(new[solved] <= 0):
            bad = [ch.CHANNELS[i].name for i in np.flatnonzero(solved)[new[solved] <= 0]]
            raise ValueError(f"the fit gives non-positive constants for {bad}: the data do not constrain them")
        c = new
    return Solution(c=c, solved=solved, kept=kept, total=total, iterations=it)
