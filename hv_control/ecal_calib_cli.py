"""``ecal-calib``: the ECAL calibration campaign (see hv_control/ecal_calib.py)."""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from detector import channels as chmap
from detector.cli_types import positive_float
from detector.config import ConfigError, load_calibration, load_config

from .campaign import CampaignInterrupted, CampaignPaused, MappingMismatch, write_json_atomic
from .campaign_cli import campaign_session, cell_progress, report_stop
from .ecal_calib import EcalCalibration, EcalCellState, all_ecal_cells
from .table import TableError

EXIT_OK, EXIT_NOT_CALIBRATED, EXIT_USAGE, EXIT_PAUSED = 0, 1, 2, 3

DESCRIPTION = """\
Calibrate the ECAL with the beam electrons: the table moves the calorimeter platform so that the beam hits
each ECAL cell in turn (ECAL-x-y), the beam events taken there are collected (the child na64-daq in
calibration mode reads out only the spills taken on the requested cell), and the constants of all cells
(GeV per ADC count, PS and main) are solved together from the showers they share, so that a beam electron
on any cell reconstructs at the beam energy. A new calibration file is written (--out; the old one is kept
and the change recorded in OUT.changes.jsonl), then every cell is measured again with the new constants
(verification). Writes REPORT.json (per cell: peak, beam energy, resolution, old and new constants) and a
map PNG of the constants and their change (REPORT.png).

A table error, a beam loss or a failed fit pauses the campaign safely (exit code 3); so do SIGTERM and
SIGHUP (the child DAQ is stopped and the table homed); resume with --resume STATE. Exit code 1: some cell's
verified peak is off by more than --tolerance.
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="ecal-calib", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--config", help="config TOML (default: built-in defaults = emulator on loopback)")
    ap.add_argument("--endpoints-file", required=True, help="JSON with the 'table' serial address")
    ap.add_argument("--out", required=True, metavar="CALIB.toml", help="the new calibration file")
    ap.add_argument("--report", required=True, metavar="REPORT.json", help="the campaign report")
    ap.add_argument("--cells", help="only these cells, e.g. ECAL-2-3,ECAL-3-3 (default all 36)")
    ap.add_argument("--dry-run", action="store_true", help="collect and solve; write no calibration file")
    ap.add_argument("--resume", metavar="STATE", help="continue an interrupted campaign from its state file")
    ap.add_argument("--state", help="campaign state JSON (default: REPORT.state.json)")
    ap.add_argument("--logbook", help="logbook file (default: REPORT.logbook.txt)")
    ap.add_argument("--events", type=int, default=2000, help="beam events per cell and pass (default 2000)")
    ap.add_argument("--tolerance", type=float, default=0.01, help="verified peak tolerance (default 0.01)")
    ap.add_argument("--stream", help="monitoring stream of a running calibration na64-daq")
    ap.add_argument("--daq-out", help="where the child na64-daq records (default: beside the report)")
    ap.add_argument("--backend", choices=("serial", "visa"), help="serial transport (default: pyserial)")
    ap.add_argument("--measure-timeout", type=positive_float, default=60.0, help="seconds to wait for beam per cell")
    return ap.parse_args(argv)


def report_data(c: EcalCalibration) -> dict[str, Any]:
    """REPORT.json: ``verification`` (per cell: cell, peak_gev, beam_gev, resolution) and ``change`` (per
    channel: old and new GeV per count and the relative change)."""
    old = np.asarray(c.calibration.gev_per_count, dtype=np.float64)
    new = c.constants()
    change = [
        {
            "channel": chmap.CHANNELS[i].name,
            "cell": chmap.ecal_cell_name(chmap.CHANNELS[i].x, chmap.CHANNELS[i].y),
            "old_gev_per_count": float(old[i]),
            "new_gev_per_count": float(new[i]),
            "change": float(new[i] / old[i] - 1) if old[i] else None,
        }
        for i in range(len(new))
    ]
    verification = [
        {"cell": st.cell, "beam_gev": c.beam_gev, **st.verification, "status": st.status}
        for st in c.states.values()
        if st.verification
    ]
    return {
        "tool": "ecal-calib",
        "run": c.run_label,
        "beam_gev": c.beam_gev,
        "calibration_in": c.calibration.source,
        "calibration_out": c.solution.get("written"),
        "old_file_kept_as": c.solution.get("old_file_kept_as"),
        "solve": {k: v for k, v in c.solution.items() if k != "constants"},
        "verification": verification,
        "change": change,
        "cells": {
            cell: {"status": st.status, "message": st.message, "events": st.events} for cell, st in c.states.items()
        },
    }


def map_png(c: EcalCalibration, path: pathlib.Path) -> None:
    """Maps (6 x 6, x to the right, y up) of the new constants and of their relative change, PS and main."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    old = chmap.ecal_map(np.asarray(c.calibration.gev_per_count, dtype=np.float64))
    new = chmap.ecal_map(c.constants())
    fig, axes = plt.subplots(2, 2, figsize=(10, 9), constrained_layout=True)
    for k, sec in enumerate(("PS", "main")):
        for row, (what, data, cmap) in enumerate(
            (("constant [MeV/count]", new[k] * 1e3, "viridis"), ("change [%]", (new[k] / old[k] - 1) * 100, "RdBu_r"))
        ):
            ax = axes[row, k]
            lim = np.nanmax(np.abs(data)) if row else None
            im = ax.imshow(data.T, origin="lower", cmap=cmap, vmin=-lim if lim else None, vmax=lim)
            for x in range(data.shape[0]):
                for y in range(data.shape[1]):
                    ax.text(
                        x,
                        y,
                        f"{data[x, y]:.2f}" if row == 0 else f"{data[x, y]:+.1f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="w" if row == 0 else "k",
                    )
            ax.set_title(f"ECAL {sec}: {what}")
            ax.set_xlabel("x (cell column)")
            ax.set_ylabel("y (cell row)")
            fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle(
        f"ecal-calib run {c.run_label}: new constants and change against {pathlib.Path(c.calibration.source).name}"
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary_table(c: EcalCalibration, tolerance: float) -> Table:
    t = Table(title=f"ecal-calib verification (beam {c.beam_gev:.0f} GeV, tolerance {tolerance:.1%})")
    for col in ("cell", "events", "peak [GeV]", "deviation", "resolution", "status"):
        t.add_column(col)
    for cell, st in c.states.items():
        v = st.verification
        t.add_row(
            cell,
            str(st.events),
            f"{v['peak_gev']:.2f}" if v else "-",
            f"{v['peak_gev'] / c.beam_gev - 1:+.2%}" if v else "-",
            f"{v['resolution']:.2%}" if v else "-",
            f"{st.status} {st.message}".strip(),
        )
    return t


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(stderr=False)
    report = pathlib.Path(args.report)
    state_path = pathlib.Path(args.resume or args.state or report.with_name(report.stem + ".state.json"))
    logbook = pathlib.Path(args.logbook or report.with_name(report.stem + ".logbook.txt"))
    try:
        cfg = load_config(args.config)
        calib = load_calibration(cfg)
        cells = args.cells.split(",") if args.cells else all_ecal_cells()
        for cell in cells:
            chmap.parse_ecal_cell(cell)
        if args.events < 200:
            raise ValueError(f"--events {args.events}: at least 200 beam events per cell are needed")
        if not 0.0 < args.tolerance < 1.0:  # NaN fails too: with it every verified peak would pass
            raise ValueError(f"--tolerance {args.tolerance}: a relative tolerance in (0, 1) is needed")
        endpoints = json.loads(pathlib.Path(args.endpoints_file).read_text())
        if "table" not in endpoints:
            raise KeyError(f"{args.endpoints_file} has no table address")
        states = solution = None
        if args.resume:
            states, solution = EcalCalibration.load(args.resume)
    except (ConfigError, ValueError, OSError, KeyError) as exc:
        print(f"ecal-calib: {exc}", file=sys.stderr)
        return EXIT_USAGE
    report.parent.mkdir(parents=True, exist_ok=True)
    campaign = None
    try:
        daq_out = pathlib.Path(args.daq_out) if args.daq_out else report.parent / "calibration-runs"
        with campaign_session(args, cfg, calib, endpoints, daq_out, with_hv=False) as session:

            def describe(st: EcalCellState) -> str:
                v = st.verification
                return f" (peak {v['peak_gev']:.2f} GeV)" if v else (f" ({st.events} events)" if st.events else "")

            passes = 1 if args.dry_run else 2
            with cell_progress(console, "ecal-calib", passes * len(cells), describe) as (set_completed, report_cb):
                campaign = EcalCalibration(
                    table=session.table,
                    source=session.source,
                    cfg=cfg,
                    calibration=calib,
                    cells=cells,
                    out=args.out,
                    logbook=logbook,
                    state_path=state_path,
                    events_per_cell=args.events,
                    measure_timeout_s=args.measure_timeout,
                    dry_run=args.dry_run,
                    progress=report_cb,
                    states=states,
                    solution=solution,
                    request_path=session.request_path,
                )
                session.campaign = campaign
                st = campaign.states
                set_completed(
                    sum(st[c].status in ("collected", "done") for c in cells)
                    + sum(st[c].status == "done" for c in cells)
                )
                campaign.run()
    except (MappingMismatch, CampaignPaused, CampaignInterrupted) as exc:
        return report_stop(console, "ecal-calib", exc, state_path)
    except (TableError, OSError, ValueError) as exc:
        console.print(f"[bold red]ecal-calib stopped[/]: {type(exc).__name__}: {exc}")
        return EXIT_PAUSED
    data = report_data(campaign)
    write_json_atomic(report, data)
    png = report.with_suffix(".png")
    map_png(campaign, png)
    console.print(summary_table(campaign, args.tolerance))
    console.print(f"calibration: {args.out}\nreport: {report}\nmap: {png}\nlogbook: {logbook}")
    bad = [v for v in data["verification"] if abs(v["peak_gev"] / v["beam_gev"] - 1) > args.tolerance]
    if args.dry_run:
        return EXIT_OK
    return EXIT_NOT_CALIBRATED if bad or len(data["verification"]) < len(cells) else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
