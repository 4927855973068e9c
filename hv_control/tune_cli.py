"""``hv-tune``: the HCAL PMT high-voltage equalisation campaign (see hv_control/tune.py)."""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from rich.console import Console
from rich.table import Table

from detector.cli_types import positive_float
from detector.config import ConfigError, load_calibration, load_config

from .campaign import CampaignInterrupted, CampaignPaused, MappingMismatch
from .campaign_cli import campaign_session, cell_progress, report_stop
from .supply import HVError
from .table import TableError
from .tune import BeamLossError, Campaign, CellState, cells_of_modules, validate_target

EXIT_OK, EXIT_NOT_CONVERGED, EXIT_USAGE, EXIT_PAUSED = 0, 1, 2, 3

DESCRIPTION = """\
Equalise the HCAL photomultiplier gains: for every cell of the chosen modules, move the HCAL table so the
calibration beam hits the cell centre, measure the amplitude peak from the DAQ's monitoring stream, set
HV_new = HV_old (target/A)^(1/gamma) (gamma learnt per cell), ramp, verify, and repeat until the cell is
within tolerance. Writes logbook lines like '0-2-3   A=2445 HV=942.0', a campaign file (JSON, also the
resume state) and a summary table.

Without --stream, hv-tune starts na64-daq in calibration mode as a child process and stops it at the end.
No HV beyond a configured limit is ever requested; steps larger than hv.max_step_v are taken as explicit
max-size steps. A trip, a beam loss or a failed fit pauses the campaign safely (exit code 3); so do
SIGTERM and SIGHUP (the child DAQ is stopped, the table homed, every channel left at a verified value);
resume with --resume CAMPAIGN_FILE. Exit code 1: some cell did not converge or needs a voltage beyond its
limit.
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="hv-tune", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--config", help="config TOML (default: built-in defaults = emulator on loopback)")
    ap.add_argument("--endpoints-file", required=True, help="JSON with the 'hv' and 'table' serial addresses")
    ap.add_argument("--modules", default="0,1,2,3", help="HCAL modules to tune, e.g. 0,1,2,3 (default all)")
    ap.add_argument("--cells", help="only these cells, e.g. 0-2-3,1-1-3 (overrides --modules)")
    ap.add_argument("--target", type=float, help="target amplitude, ADC counts (default hv_tune.target)")
    ap.add_argument("--tolerance", type=float, help="relative tolerance (default hv_tune.tolerance)")
    ap.add_argument("--max-iterations", type=int, help="HV changes per cell (default hv_tune.max_iterations)")
    ap.add_argument("--logbook", required=True, help="logbook file (lines are appended)")
    ap.add_argument("--campaign-file", help="campaign/state JSON (default: LOGBOOK.campaign.json)")
    ap.add_argument("--resume", metavar="STATE", help="continue an interrupted campaign from its campaign file")
    ap.add_argument(
        "--dry-run",
        action="store_true",
        help="measure and show the planned HV changes; set no HV (the table still moves)",
    )
    ap.add_argument("--stream", help="monitoring stream of a running na64-daq (tcp://127.0.0.1:PORT)")
    ap.add_argument(
        "--daq-out", help="where the child na64-daq records the calibration run (default: beside the logbook)"
    )
    ap.add_argument("--backend", choices=("serial", "visa"), help="serial transport (default: pyserial)")
    ap.add_argument("--measure-timeout", type=positive_float, default=60.0, help="seconds to wait for beam per point")
    return ap.parse_args(argv)


def summary_table(states: dict[str, CellState], target: float) -> Table:
    t = Table(title=f"hv-tune summary (target {target:.0f} counts)")
    for col in ("cell", "HV start [V]", "HV final [V]", "A final", "deviation", "iterations", "status"):
        t.add_column(col)
    for cell, st in states.items():
        last = st.last
        t.add_row(
            cell,
            f"{st.hv_start:.1f}" if st.hv_start is not None else "-",
            f"{last.hv:.1f}" if last else "-",
            f"{last.amp:.0f}" if last else "-",
            f"{last.amp / target - 1:+.1%}" if last else "-",
            str(st.iterations),
            f"{st.status} {st.message}".strip(),
        )
    return t


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(stderr=False)
    try:
        cfg = load_config(args.config)
        # the command line overrides [hv_tune] through the config, so its ranges apply to both
        given = {"target": args.target, "tolerance": args.tolerance, "max_iterations": args.max_iterations}
        overrides = {k: v for k, v in given.items() if v is not None}
        if overrides:
            cfg = cfg.with_overrides({"hv_tune": overrides})
        calib = load_calibration(cfg)
        target, tolerance, iterations = cfg.hv_tune.target, cfg.hv_tune.tolerance, cfg.hv_tune.max_iterations
        validate_target(target)
        cells = args.cells.split(",") if args.cells else cells_of_modules(int(m) for m in args.modules.split(","))
        endpoints = json.loads(pathlib.Path(args.endpoints_file).read_text())
        missing = [k for k in ("hv", "table") if k not in endpoints]
        if missing:
            raise KeyError(f"{args.endpoints_file} has no {' and no '.join(missing)} address")
    except (ConfigError, ValueError, OSError, KeyError) as exc:
        print(f"hv-tune: {exc}", file=sys.stderr)
        return EXIT_USAGE
    logbook = pathlib.Path(args.logbook)
    logbook.parent.mkdir(parents=True, exist_ok=True)
    state_path = pathlib.Path(args.resume or args.campaign_file or f"{logbook}.campaign.json")
    states = None
    if args.resume:
        try:
            states = Campaign.load_states(args.resume)
        except ValueError as exc:
            print(f"hv-tune: {exc}", file=sys.stderr)
            return EXIT_USAGE
    try:
        daq_out = pathlib.Path(args.daq_out) if args.daq_out else logbook.parent / "calibration-runs"
        with campaign_session(args, cfg, calib, endpoints, daq_out) as session:

            def describe(st: CellState) -> str:
                return f" (A={st.last.amp:.0f}, HV={st.last.hv:.1f})" if st.last else ""

            with cell_progress(console, "hv-tune", len(cells), describe) as (set_completed, report):
                campaign = Campaign(
                    hv=session.hv,
                    table=session.table,
                    source=session.source,
                    cfg=cfg,
                    cells=cells,
                    target=target,
                    tolerance=tolerance,
                    max_iterations=iterations,
                    logbook=logbook,
                    state_path=state_path,
                    dry_run=args.dry_run,
                    measure_timeout_s=args.measure_timeout,
                    progress=report,
                    states=states,
                    request_path=session.request_path,
                )
                session.campaign = campaign
                set_completed(sum(1 for c in cells if campaign.states[c].status in campaign.FINISHED))
                states = campaign.run()
    except (MappingMismatch, CampaignPaused, CampaignInterrupted) as exc:
        return report_stop(console, "hv-tune", exc, state_path)
    except KeyboardInterrupt:
        console.print(
            f"[bold red]interrupted[/]: channels left at their last verified voltage; resume with --resume {state_path}"
        )
        return EXIT_PAUSED
    except (HVError, TableError, BeamLossError, OSError) as exc:
        console.print(f"[bold red]hv-tune stopped[/]: {type(exc).__name__}: {exc}")
        return EXIT_PAUSED
    console.print(summary_table(states, target))
    console.print(f"logbook: {logbook}\ncampaign file: {state_path}")
    bad = [c for c, s in states.items() if s.status not in ("done", "planned")]
    return EXIT_NOT_CONVERGED if bad else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
