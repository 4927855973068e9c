"""The ECAL calibration campaign behind ``ecal-calib`` (issue 19), on the campaign engine
(:class:`hv_control.campaign.CellCampaign`).

Pass ``collect``: the table puts the beam electrons on each of the 36 ECAL cells in turn (``ECAL-x-y``);
the amplitudes of all 72 ECAL channels of every beam event taken there are kept (``<state>.events/``).
After it, the constants of all cells are solved together (:mod:`hv_control.ecal_solve`: the shower is
shared with the neighbours) and a new calibration file is written (:mod:`hv_control.calib_file`: the old
one kept, the change recorded). Pass ``verify``: the beam is put on every cell again and the energy peak of
the beam electrons, with the new constants, is measured (peak and resolution per cell). No HV is changed;
the HV supply is not needed.
"""

from __future__ import annotations

import os
import pathlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from detector import channels as chmap
from detector.config import Calibration
from detector.settings import Config

from .calib_file import write_calibration
from .campaign import BeamLossError, CellCampaign, channel_mapping
from .ecal_solve import N_ECAL, solve_constants
from .peak import fit_core

TOOL = "ecal-calib"
ECAL_IDS = np.arange(N_ECAL)


def all_ecal_cells() -> list[str]:
    """The 36 ECAL cells, row by row."""
    return [chmap.ecal_cell_name(x, y) for y in range(chmap.N_ECAL_Y) for x in range(chmap.N_ECAL_X)]


@dataclass
class EcalCellState:
    """One ECAL cell: its PS and main channel ids, status (pending, collected, done, failed, paused), the
    events collected, and the verification (``peak_gev``, ``sigma_gev``, ``resolution``, ``events``)."""

    cell: str
    ps_id: int
    main_id: int
    status: str = "pending"
    message: str = ""
    events: int = 0
    verification: dict[str, float] = field(default_factory=dict)


class EcalCalibration(CellCampaign):
    """The ECAL calibration campaign. ``source`` gives per-event amplitudes (``collect_events``);
    ``calibration``: the present constants (their file is the base of the new one); ``out``: the new
    calibration file; ``events_per_cell``: beam events per cell and pass; ``run``: the label of the
    calibration run in the change record."""

    tool = TOOL
    FINISHED = frozenset({"done", "failed"})

    def __init__(
        self,
        *,
        table: Any,
        source: Any,
        cfg: Config,
        calibration: Calibration,
        cells: list[str],
        out: str | os.PathLike,
        logbook: str | os.PathLike,
        state_path: str | os.PathLike,
        events_per_cell: int = 2000,
        max_spills: int = 5,
        measure_timeout_s: float = 60.0,
        run: str = "",
        dry_run: bool = False,
        progress: Callable[[str, Any], None] | None = None,
        states: dict[str, EcalCellState] | None = None,
        solution: dict[str, Any] | None = None,
        request_path: str | os.PathLike | None = None,
    ) -> None:
        self.source, self.cfg, self.calibration = source, cfg, calibration
        self.out = pathlib.Path(out)
        self.beam_gev = float(cfg.beam.energy_gev)
        self.events_per_cell, self.max_spills = int(events_per_cell), int(max_spills)
        self.measure_timeout_s = float(measure_timeout_s)
        self.run_label = run or time.strftime("%Y%m%dT%H%M%S")
        self.dry_run = dry_run
        self.solution: dict[str, Any] = solution or {}
        states = states or {}
        for cell in cells:
            x, y = chmap.parse_ecal_cell(cell)
            states.setdefault(cell, EcalCellState(cell, chmap.ecal_id(0, x, y), chmap.ecal_id(1, x, y)))
        super().__init__(
            hv=None,
            table=table,
            cells=cells,
            logbook=logbook,
            state_path=state_path,
            states=states,
            progress=progress,
            request_path=request_path,
        )
        self.events_dir = self.state_path.with_name(self.state_path.name + ".events")

    # ------------------------------------------------------------------ engine hooks
    @classmethod
    def mapping(cls, cell: str) -> dict[str, Any]:
        x, y = chmap.parse_ecal_cell(cell)
        return {"ps": channel_mapping(chmap.ecal_id(0, x, y)), "main": channel_mapping(chmap.ecal_id(1, x, y))}

    def stored_mapping(self, st: EcalCellState) -> dict[str, Any]:
        return {"ps": channel_mapping(st.ps_id), "main": channel_mapping(st.main_id)}

    def params(self) -> dict[str, Any]:
        return {
            "beam_gev": self.beam_gev,
            "events_per_cell": self.events_per_cell,
            "calibration_in": self.calibration.source,
            "out": str(self.out),
            "run": self.run_label,
            "dry_run": self.dry_run,
            "solution": self.solution,
        }

    def header(self) -> str:
        return (
            f"# ecal-calib {time.strftime('%Y-%m-%d %H:%M:%S')} run {self.run_label} beam {self.beam_gev:.0f} GeV "
            f"{self.events_per_cell} events per cell{' DRY RUN' if self.dry_run else ''}"
        )

    @staticmethod
    def load(path: str | os.PathLike) -> tuple[dict[str, EcalCellState], dict[str, Any]]:
        """Cell states and solution of an interrupted campaign (``--resume``); ValueError if unreadable."""
        data = EcalCalibration.load_journal(path)
        try:
            return {c: EcalCellState(**s) for c, s in data["cells"].items()}, dict(data.get("solution") or {})
        except TypeError as exc:
            raise ValueError(f"{path}: not a readable ecal-calib state file ({exc})") from None

    def passes(self) -> list[tuple[str, frozenset[str], Callable[[Any], None]]]:
        out: list[tuple[str, frozenset[str], Callable[[Any], None]]] = [
            ("collect", frozenset({"collected", "done", "failed"}), self.collect_cell)
        ]
        if not self.dry_run:
            out.append(("verify", self.FINISHED, self.verify_cell))
        return out

    def after_pass(self, name: str) -> None:
        if name == "collect" and not self.solution.get("written"):
            self.solve_and_write()

    # ------------------------------------------------------------------ measurement
    def _events(self, st: EcalCellState) -> np.ndarray:
        since = self.move_to(st)
        self.progress("collect", st)
        a = self.source.collect_events(
            ECAL_IDS, st.cell, since, self.events_per_cell, self.max_spills, self.measure_timeout_s
        )
        if a.ndim != 2 or a.shape[1] != N_ECAL:
            raise BeamLossError(f"cell {st.cell}: no usable events (got an array of shape {a.shape})")
        return a

    def _file(self, cell: str) -> pathlib.Path:
        return self.events_dir / f"{cell}.npy"

    def collect_cell(self, st: EcalCellState) -> None:
        a = self._events(st)
        self.events_dir.mkdir(parents=True, exist_ok=True)
        np.save(self._file(st.cell), a.astype(np.float32))
        c = np.asarray(self.calibration.gev_per_count[:N_ECAL], dtype=np.float64)
        e = a @ c
        st.events, st.status = int(a.shape[0]), "collected"
        st.message = f"{a.shape[0]} events, median {np.median(e):.1f} GeV with the old constants"
        self.log(f"{st.cell}   collected {a.shape[0]} events   # median {np.median(e):.1f} GeV (old constants)")

    def constants(self) -> np.ndarray:
        """The new constants (72,) GeV/count (the old ones before the solve)."""
        c = np.asarray(self.calibration.gev_per_count[:N_ECAL], dtype=np.float64).copy()
        for name, v in self.solution.get("constants", {}).items():
            c[chmap.by_name(name).id] = float(v)
        return c

    def solve_and_write(self) -> None:
        """Solve all constants together from the collected events and write the new calibration file."""
        self.progress("solve", self.states[self.cells[0]])
        blocks = [np.load(self._file(c)).astype(np.float64) for c in self.cells]
        c0 = np.asarray(self.calibration.gev_per_count[:N_ECAL], dtype=np.float64)
        sol = solve_constants(blocks, c0, self.beam_gev)
        names = [chmap.CHANNELS[i].name for i in np.flatnonzero(sol.solved)]
        new = {n: float(sol.c[chmap.by_name(n).id]) for n in names}
        self.solution = {"constants": new, "kept_events": sol.kept, "events": sol.total, "iterations": sol.iterations}
        self.log(f"# solved {len(new)} constants from {sol.kept} of {sol.total} events in {sol.iterations} iterations")
        if not self.dry_run:
            record = write_calibration(
                self.calibration, self.out, new, tool=TOOL, run=self.run_label, extra={"events": sol.kept}
            )
            self.solution["written"] = record["file"]
            self.solution["old_file_kept_as"] = record["old_file_kept_as"]
            self.log(f"# new calibration {self.out} (old kept: {record['old_file_kept_as']})")
        self.save_state()

    def verify_cell(self, st: EcalCellState) -> None:
        a = self._events(st)
        e = a @ self.constants()
        fit = fit_core(e, min_events=min(100, self.events_per_cell))
        st.verification = {
            "peak_gev": float(fit.mean),
            "peak_error_gev": float(fit.error),
            "sigma_gev": float(fit.sigma),
            "resolution": float(fit.sigma / fit.mean),
            "events": int(fit.n_events),
        }
        dev = fit.mean / self.beam_gev - 1
        st.status = "done"
        st.message = f"peak {fit.mean:.2f} GeV ({dev:+.2%}), resolution {fit.sigma / fit.mean:.2%}"
        self.log(
            f"{st.cell}   E={fit.mean:.2f} GeV sigma={fit.sigma:.2f} GeV   # +/-{fit.error:.2f}, {fit.n_events} events"
        )
