"""The HCAL HV equalisation campaign behind ``hv-tune`` (docs/physics.md section 7).

For every cell: steer the beam onto it with the table, measure the amplitude peak from the DAQ's
monitoring stream (topic ``amplitudes``, spills that started after the HV settled and with the table on
that cell), compute ``HV_new = HV_old (A_target / A)^(1/gamma)`` with gamma learnt per cell from the
points seen so far (ln A against ln V; the configured default before two points exist), ramp through
:class:`~hv_control.supply.HVSupply` (which refuses anything beyond a limit), verify, and iterate until the
cell is within tolerance or the iteration limit. The last logbook line of each cell is the verification
measurement at its final HV.

Steps larger than ``hv.max_step_v`` are not sent: the campaign takes an explicit step of max_step_v
toward the target and says so in the logbook (docs/physics.md: at most 50 V per step). A set point beyond a
cell's limit is never requested: the cell is marked failed with the reason.

A trip, a beam loss or a failed fit pauses the campaign (:class:`CampaignPaused`): the state file
records every cell, every channel stays at its last verified voltage (a tripped channel is switched
off at ``hv.safe_v``), and ``--resume STATE`` continues where it stopped. The table moves, the wait for
beam on the cell, the journal, the logbook, pause/resume and SIGTERM/SIGHUP are the campaign engine's
(:mod:`hv_control.campaign`), shared with ``ecal-calib``; an HV ramp and its verification are a critical
section a signal waits for.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from detector import channels as chmap
from detector.gain import hv_for_amplitude
from detector.settings import Config

from .campaign import STATE_VERSION, BeamLossError, CampaignPaused, CellCampaign, channel_mapping
from .peak import PeakFit, fit_peak

__all__ = [
    "STATE_VERSION",
    "BeamLossError",
    "Campaign",
    "CampaignPaused",
    "CellState",
    "Point",
    "cells_of_modules",
    "learn_gamma",
    "propose_hv",
    "validate_target",
]


class AmplitudeSource(Protocol):
    def collect(
        self, channel_id: int, cell: str, since_unix: float, min_events: int, max_spills: int, timeout_s: float
    ) -> np.ndarray:
        """Amplitudes (ADC counts) of ``channel_id`` from spills with the beam on ``cell`` that started
        after ``since_unix``; BeamLossError if not enough arrive within ``timeout_s``."""
        ...


@dataclass
class Point:
    """One measurement of a cell: HV (V), amplitude peak and its error (ADC counts), events, time."""

    hv: float
    amp: float
    err: float
    sigma: float
    n: int
    unix: float


@dataclass
class CellState:
    cell: str
    channel_id: int
    points: list[Point] = field(default_factory=list)
    status: str = "pending"  #: pending, done, failed, not_converged, planned
    message: str = ""
    iterations: int = 0  #: HV changes made
    hv_start: float | None = None
    planned_hv: float | None = None  #: --dry-run: the HV the campaign would set

    @property
    def last(self) -> Point | None:
        return self.points[-1] if self.points else None


def learn_gamma(points: Iterable[Point], default: float) -> float:
    """Gain-law exponent from the points (least-squares slope of ln A vs ln V over distinct voltages);
    ``default`` with fewer than two distinct voltages. ValueError if the result is absurd (<= 1 or > 20)."""
    pts = [p for p in points if p.amp > 0 and p.hv > 0]
    v = np.log([p.hv for p in pts]) if pts else np.empty(0)
    if len(pts) < 2 or np.ptp(v) < 1e-4:
        return float(default)
    a = np.log([p.amp for p in pts])
    slope = float(np.polyfit(v, a, 1)[0])
    if not (1.0 < slope <= 20.0):
        raise ValueError(
            f"learnt gain-law exponent {slope:.2f} is not plausible (expected 1-20): "
            "the measurements do not follow the PMT gain law"
        )
    return slope


def propose_hv(hv_now: float, amp: float, target: float, gamma: float, max_step: float) -> tuple[float, bool]:
    """Next HV (V) and whether the step was limited to ``max_step`` (V)."""
    want = hv_for_amplitude(hv_now, amp, target, gamma)
    step = want - hv_now
    if abs(step) > max_step:
        return hv_now + math.copysign(max_step, step), True
    return want, False


def validate_target(target: float, pedestal: float = 200.0, adc_max: int = chmap.ADC_MAX) -> None:
    """Refuse a target beyond the ADC range (docs/physics.md: keep A_target + 5 sigma below 4095 - pedestal)."""
    if not math.isfinite(target) or target <= 0:
        raise ValueError(f"target amplitude {target!r} must be a positive number of ADC counts")
    if target > 0.9 * (adc_max - pedestal):
        raise ValueError(
            f"target amplitude {target:.0f} counts leaves no headroom below the ADC range "
            f"({adc_max} - pedestal ~{pedestal:.0f}); use at most {0.9 * (adc_max - pedestal):.0f}"
        )


class Campaign(CellCampaign):
    """One HV equalisation campaign over ``cells`` (logbook names ``x-y-module``) on the campaign engine
    (:class:`hv_control.campaign.CellCampaign`)."""

    tool = "hv-tune"

    def __init__(
        self,
        *,
        hv: Any,
        table: Any,
        source: AmplitudeSource,
        cfg: Config,
        cells: list[str],
        target: float,
        tolerance: float,
        max_iterations: int,
        logbook: str | os.PathLike,
        state_path: str | os.PathLike,
        dry_run: bool = False,
        measure_timeout_s: float = 60.0,
        progress: Callable[[str, CellState], None] | None = None,
        states: dict[str, CellState] | None = None,
        request_path: str | os.PathLike | None = None,
    ) -> None:
        validate_target(target)
        if not 0 < tolerance < 0.5:
            raise ValueError(f"tolerance {tolerance!r} must be in (0, 0.5)")
        if max_iterations < 1:
            raise ValueError(f"max_iterations {max_iterations!r} must be >= 1")
        self.source = source
        self.cfg = cfg
        self.tune_cfg, self.hv_cfg = cfg.hv_tune, cfg.hv
        self.target, self.tolerance, self.max_iterations = float(target), float(tolerance), int(max_iterations)
        self.dry_run = dry_run
        self.measure_timeout_s = measure_timeout_s
        states = states or {}
        for cell in cells:
            x, y, m = chmap.parse_hcal_cell(cell)
            states.setdefault(cell, CellState(cell, chmap.hcal_id(x, y, m)))
        super().__init__(
            hv=hv,
            table=table,
            cells=cells,
            logbook=logbook,
            state_path=state_path,
            states=states,
            progress=progress,
            request_path=request_path,
        )

    # ------------------------------------------------------------------ engine hooks
    @classmethod
    def mapping(cls, cell: str) -> dict[str, Any]:
        return channel_mapping(chmap.hcal_id(*chmap.parse_hcal_cell(cell)))

    def stored_mapping(self, st: CellState) -> dict[str, Any]:
        return channel_mapping(st.channel_id)

    def params(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "tolerance": self.tolerance,
            "max_iterations": self.max_iterations,
            "dry_run": self.dry_run,
        }

    def header(self) -> str:
        return (
            f"# hv-tune {time.strftime('%Y-%m-%d %H:%M:%S')} target {self.target:.0f} tolerance "
            f"{self.tolerance:.1%}{' DRY RUN' if self.dry_run else ''}"
        )

    @staticmethod
    def load_states(path: str | os.PathLike) -> dict[str, CellState]:
        """Cell states of an interrupted campaign (``--resume``); ValueError if the file is not one."""
        data = Campaign.load_journal(path)
        try:
            out = {}
            for cell, s in data["cells"].items():
                s = dict(s)
                pts = [Point(**pt) for pt in s.pop("points")]
                out[cell] = CellState(points=pts, **s)
            return out
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{path}: not a readable hv-tune state file ({exc})") from None

    def _log(self, st: CellState, p: Point, note: str) -> None:
        self.log(
            f"{st.cell}   A={p.amp:.0f} HV={p.hv:.1f}   # +/-{p.err:.0f}, {p.n} events{', ' + note if note else ''}"
        )

    # ------------------------------------------------------------------ measurement
    def _measure(self, st: CellState, note: str) -> Point:
        hv_now = float(self.hv.read_channel(st.channel_id)["vmon"])
        since = time.time()
        amps = self.source.collect(
            st.channel_id,
            st.cell,
            since,
            int(self.tune_cfg.min_events),
            int(self.tune_cfg.max_spills_per_point),
            self.measure_timeout_s,
        )
        fit: PeakFit = fit_peak(amps, min_events=min(100, int(self.tune_cfg.min_events)))
        p = Point(hv=hv_now, amp=fit.mean, err=fit.error, sigma=fit.sigma, n=fit.n_events, unix=since)
        st.points.append(p)
        self._log(st, p, note)
        self.save_state()
        return p

    def _within(self, p: Point) -> bool:
        return abs(p.amp / self.target - 1.0) < self.tolerance

    def process_cell(self, st: CellState) -> None:
        self.move_to(st)
        if st.hv_start is None:
            st.hv_start = float(self.hv.read_channel(st.channel_id)["vmon"])
        p = self._measure(st, "start" if not st.points else "resumed")
        max_step = float(self.hv_cfg.max_step_v)
        limit = float(self.hv.limit(st.channel_id))
        while not self._within(p):
            if st.iterations >= self.max_iterations:
                st.status, st.message = (
                    "not_converged",
                    f"{abs(p.amp / self.target - 1):.1%} off after {st.iterations} iterations",
                )
                return
            try:
                gamma = learn_gamma(st.points, float(self.tune_cfg.gamma_default))
            except ValueError as exc:
                raise CampaignPaused(f"cell {st.cell}: {exc}") from None
            hv_new, limited = propose_hv(p.hv, p.amp, self.target, gamma, max_step)
            if not hv_new <= limit or hv_new < float(self.hv_cfg.min_v):
                st.status = "failed"
                st.message = (
                    f"needs {hv_new:.1f} V, outside [{self.hv_cfg.min_v:.0f}, {limit:.0f}] V: not set; check the PMT"
                )
                self.save_state()
                return
            if self.dry_run:
                st.status, st.planned_hv = "planned", hv_new
                st.message = f"would set {hv_new:.1f} V (gamma {gamma:.2f}{', step limited' if limited else ''})"
                self.save_state()
                return
            self.progress("ramp", st)
            with self.critical():  # a signal waits until the channel is at a verified value
                self.hv.set_voltage(st.channel_id, hv_new, max_step=max_step)
                st.iterations += 1
                self.save_state()
            note = f"iteration {st.iterations}, gamma {gamma:.2f}" + (
                f", step limited to {max_step:.0f} V" if limited else ""
            )
            self.progress("measure", st)
            p = self._measure(st, note)
        st.status, st.message = "done", f"{p.amp / self.target - 1:+.1%} at {p.hv:.1f} V"


def cells_of_modules(modules: Iterable[int]) -> list[str]:
    """Logbook names of all cells of the given HCAL modules, module by module, row by row."""
    out = []
    for m in modules:
        if not 0 <= m < chmap.N_HCAL_MODULES:
            raise ValueError(f"no HCAL module {m} (0..{chmap.N_HCAL_MODULES - 1})")
        out += [chmap.hcal_cell_name(x, y, m) for y in range(chmap.N_HCAL_Y) for x in range(chmap.N_HCAL_X)]
    return out
