"""ECAL calibration constants from beam-electron showers (issue 19; docs/physics.md section 7).

The beam electrons put on each ECAL cell in turn share their shower with the neighbouring cells, so the
constants are solved for all cells together: with ``A`` the amplitudes (ADC counts) of the 72 ECAL
channels (PS and main of the 36 cells) of every selected event, the constants ``c`` (GeV per count)
minimise ``sum_events (A c - E_beam)^2`` (linear least squares over events). The selection is iterated:
with the constants of the previous step, an event is kept when its energy lies within ``window_sigma``
robust standard deviations of its cell's peak (hadrons, muons, upstream-interacted electrons and pile-up
fall outside), then the constants are solved again. Channels that no selected event reaches keep their
old constant.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detector import channels as ch

N_ECAL = ch.N_ECAL  #: ECAL channels (ids 0..71: ``36*k + 6*x + y``)
MIN_SIGNAL_EVENTS = 20  #: events with signal a channel needs for its constant to be solved


@dataclass
class Solution:
    """Constants ``c`` (GeV per ADC count, by ECAL channel id), which channels were solved, the events
    kept in the last step and the iterations made."""

    c: np.ndarray
    solved: np.ndarray
    kept: int
    total: int
    iterations: int


def robust_peak(e: np.ndarray) -> tuple[float, float]:
    """Median and a robust standard deviation (1.4826 MAD) of ``e``."""
    m = float(np.median(e))
    return m, 1.4826 * float(np.median(np.abs(e - m)))


def select(blocks: list[np.ndarray], c: np.ndarray, window_sigma: float) -> list[np.ndarray]:
    """Per cell block (events x 72 amplitudes): the mask of events whose energy ``A c`` lies within
    ``window_sigma`` robust sigmas (at least 1% of the peak) of the block's median energy."""
    out = []
    for a in blocks:
        if a.shape[0] == 0:
            out.append(np.zeros(0, bool))
            continue
        e = a @ c
        m, s = robust_peak(e)
        half = window_sigma * max(s, 0.01 * abs(m))
        out.append(np.abs(e - m) <= half)
    return out


def solve_constants(
    blocks: list[np.ndarray],
    c0: np.ndarray,
    beam_gev: float,
    *,
    iterations: int = 6,
    window_sigma: float = 3.0,
    tol: float = 1e-4,
) -> Solution:
    """Constants (72,) GeV/count from the event blocks (one per cell, events x 72 amplitudes in counts),
    starting from ``c0`` (the present constants); see the module docstring. Stops when no constant
    changes by more than ``tol`` (relative) or after ``iterations`` steps."""
    c = np.asarray(c0, dtype=np.float64).copy()
    if c.shape != (N_ECAL,):
        raise ValueError(f"c0 must have shape ({N_ECAL},), got {c.shape}")
    if not all(b.ndim == 2 and b.shape[1] == N_ECAL for b in blocks):
        raise ValueError(f"every block must be (events, {N_ECAL}) amplitudes")
    total = sum(b.shape[0] for b in blocks)
    solved = np.zeros(N_ECAL, bool)
    kept = 0
    it = 0
    for it in range(1, iterations + 1):  # noqa: B007 - the count is reported
        masks = select(blocks, c, window_sigma)
        a = np.concatenate([b[m] for b, m in zip(blocks, masks)]) if blocks else np.zeros((0, N_ECAL))
        kept = a.shape[0]
        if kept < N_ECAL:
            raise ValueError(f"only {kept} events selected: too few to solve {N_ECAL} constants")
        solved = (a > 0).sum(axis=0) >= MIN_SIGNAL_EVENTS
        rhs = np.full(kept, float(beam_gev)) - a[:, ~solved] @ c[~solved]
        # columns scaled to unit norm: PS and main amplitudes differ by an order of magnitude
        sub = a[:, solved]
        norm = np.linalg.norm(sub, axis=0)
        x, *_ = np.linalg.lstsq(sub / norm, rhs, rcond=None)
        new = c.copy()
        new[solved] = x / norm
        if np.any(new[solved] <= 0):
            bad = [ch.CHANNELS[i].name for i in np.flatnonzero(solved)[new[solved] <= 0]]
            raise ValueError(f"the fit gives non-positive constants for {bad}: the data do not constrain them")
        change = np.max(np.abs(new / c - 1))
        c = new
        if change < tol:
            break
    return Solution(c=c, solved=solved, kept=kept, total=total, iterations=it)
