"""``na64-offline`` subcommands on recorded runs and the signal simulation: ``simulate``, ``select``,
``report``, ``export`` (registered in :data:`offline.cli.SUBCOMMANDS`). Results go to files; progress to
stderr; bad input raises ValueError (exit status 2 in ``offline.cli.main``)."""

from __future__ import annotations

import argparse
import json
import pathlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from detector.cli_types import positive_int, random_seed

from .argtypes import float_list, float_pair

if TYPE_CHECKING:
    from detector.settings import Config

_err = Console(stderr=True)
_out = Console()


def _config(path: pathlib.Path | None) -> Config | None:
    from detector.config import load_config

    return None if path is None else load_config(path)


def _run_dirs(paths: list[pathlib.Path]) -> list[pathlib.Path]:
    for p in paths:
        if not p.is_dir():
            raise ValueError(f"{p}: no such run directory")
    return paths


def _write_json(path: pathlib.Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)
    _err.print(f"wrote {path}")


def _cutflow_table(title: str, flow: dict[str, int]) -> Table:
    t = Table(title=title)
    for c in ("cut", "events", "fraction"):
        t.add_column(c, justify="right")
    prev = None
    for name, n in flow.items():
        t.add_row(name, str(n), f"{n / prev:.4f}" if prev else "")
        prev = n
    return t


# ------------------------------------------------------------------------------------------ simulate
def simulate_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "simulate",
        help="A' signal efficiency through the full simulation, trigger and selection",
        description="Simulate A' -> invisible signal events (every beam electron emits an A' with E_A' > E0 - "
        "offline.ecal_box_max_gev), through the detector response, the digitiser at nominal HV, the "
        "reconstruction, the online trigger code and the offline selection. Output: {mass_mev, events, "
        "triggered, selected, efficiency, efficiency_err, cut_flow} (a list for several masses).",
    )
    p.add_argument("--mass", type=float_list, required=True, metavar="M[,M2,...]", help="A' mass(es) in MeV")
    p.add_argument("--events", type=positive_int, default=2000, help="signal events per mass (default 2000)")
    p.add_argument("--config", type=pathlib.Path, help="configuration TOML (default: built-in defaults)")
    p.add_argument(
        "--pileup", action="store_true", help="embed the signal in the beam at the configured intensity (pile-up)"
    )
    p.add_argument("--seed", type=random_seed, default=1, help="random seed (default 1)")
    p.add_argument("--json", type=pathlib.Path, metavar="PATH", help="write the result there (default: print JSON)")
    return p


def simulate_run(args: argparse.Namespace) -> int:
    from detector.config import load_calibration, load_config

    from .signal import simulate_signal

    cfg = load_config(args.config)
    calib = load_calibration(cfg)
    results = []
    for m in args.mass:
        with _err.status(f"simulating {args.events} A' events at {m:g} MeV"):
            results.append(simulate_signal(cfg, m, args.events, calib, args.seed, args.pileup).as_json())
    out: Any = results[0] if len(results) == 1 else results
    if args.json is None:
        print(json.dumps(out, indent=2))
        return 0
    _write_json(args.json, out)
    t = Table(title="A' signal efficiency" + (" (pile-up)" if args.pileup else ""))
    for c in ("m_A' [MeV]", "events", "triggered", "selected", "efficiency"):
        t.add_column(c, justify="right")
    for r in results:
        t.add_row(
            f"{r['mass_mev']:g}",
            str(r["events"]),
            str(r["triggered"]),
            str(r["selected"]),
            f"{r['efficiency']:.4f} +/- {r['efficiency_err']:.4f}",
        )
    _out.print(t)
    return 0


# ------------------------------------------------------------------------------------------ select
def add_dask_options(p: argparse.ArgumentParser) -> None:
    """``--scheduler``, ``--workers``, ``--serial`` of a subcommand that runs on Dask (read by :func:`dask_workers`)."""
    p.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="address of a running Dask scheduler (default: a LocalCluster on this machine)",
    )
    p.add_argument(
        "--workers",
        type=positive_int,
        default=None,
        help="LocalCluster worker processes (default offline.dask_workers)",
    )
    p.add_argument("--serial", action="store_true", help="no Dask: do the work in this process")


def _add_dask(p: argparse.ArgumentParser) -> None:
    add_dask_options(p)
    p.add_argument("--config", type=pathlib.Path, help="configuration TOML (default: the one stored in the run record)")


def dask_workers(args: argparse.Namespace, cfg: Config | None) -> int:
    """``--workers``, else the configuration's ``offline.dask_workers``."""
    if args.workers is not None:
        return args.workers
    from detector.config import load_config

    return int((cfg or load_config(None)).offline.dask_workers)


def select_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "select",
        help="event selection on recorded runs (one Dask task per spill file)",
        description="Reconstruct and select every spill file of the runs. Writes DIR/selection.json (cut flow, EOT, "
        "events in the box, side bands, truth summary), DIR/sideband_{A,C}[_hcal].npy, "
        "DIR/histograms.npz and DIR/histograms.root.",
    )
    p.add_argument("run_dirs", nargs="+", type=pathlib.Path, metavar="RUN_DIR")
    p.add_argument("--out", type=pathlib.Path, required=True, metavar="DIR")
    _add_dask(p)
    return p


def select_run(args: argparse.Namespace) -> int:
    from .dask_select import select_runs

    cfg = _config(args.config)
    m = select_runs(
        _run_dirs(args.run_dirs), args.out, args.scheduler, dask_workers(args, cfg), config=cfg, serial=args.serial
    )
    _out.print(_cutflow_table(f"cut flow: {m.n_spills} spills, EOT {m.eot:.4g}", dict(m.cut_flow)))
    if m.excluded_spills:
        _err.print(
            f"[yellow]{len(m.excluded_spills)} incomplete spill(s) left out with their EOT:[/] "
            + ", ".join(
                f"{pathlib.Path(x['run_dir']).name}/{x['spill']} ({','.join(x['flags'])})" for x in m.excluded_spills
            )
        )
    if m.errors:
        _err.print(f"[yellow]{len(m.errors)} spill file(s) could not be read:[/]")
        for e in m.errors:
            _err.print(f"  {e}")
    _err.print(f"wrote {args.out / 'selection.json'}")
    return 0


# ------------------------------------------------------------------------------------------ report
def report_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "report",
        help="selection -> background -> signal efficiency -> limits -> plots",
        description="Full analysis of recorded runs: selection (Dask), side-band background estimate, A' signal "
        "efficiency (simulated, or from simulate --json files), CLs limits with the runs' EOT and the "
        "observed box events, plots; writes DIR/summary.json and DIR/summary.txt listing every file.",
    )
    p.add_argument("run_dirs", nargs="+", type=pathlib.Path, metavar="RUN_DIR")
    p.add_argument("--out", type=pathlib.Path, required=True, metavar="DIR")
    _add_dask(p)
    p.add_argument(
        "--masses",
        type=float_list,
        default=[1.0, 16.7, 100.0, 500.0],
        metavar="M1,M2,...",
        help="A' masses in MeV for the efficiency and limits (default 1,16.7,100,500)",
    )
    p.add_argument("--signal-events", type=positive_int, default=2000, help="simulated signal events per mass")
    p.add_argument(
        "--signal-json",
        type=pathlib.Path,
        nargs="+",
        default=[],
        metavar="JSON",
        help="use these simulate --json results instead of simulating",
    )
    p.add_argument("--pileup", action="store_true", help="simulate the signal with pile-up")
    p.add_argument(
        "--fit-range",
        type=float_pair,
        metavar="LO,HI",
        help="side-band C fit range in GeV (default: box edge .. physics E_ECAL threshold - 10)",
    )
    return p


def report_run(args: argparse.Namespace) -> int:
    from .report import make_report

    cfg = _config(args.config)
    s = make_report(
        _run_dirs(args.run_dirs),
        args.out,
        scheduler=args.scheduler,
        n_workers=dask_workers(args, cfg),
        config=cfg,
        masses_mev=args.masses,
        signal_events=args.signal_events,
        signal_json=args.signal_json,
        pileup=args.pileup,
        fit_range=args.fit_range,
        serial=args.serial,
    )
    _out.print((args.out / "summary.txt").read_text())
    return 0 if s["limits"] is not None else 1


# ------------------------------------------------------------------------------------------ export
def export_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "export",
        help="spill files (HDF5) -> ROOT file (TTree of events + histograms), via uproot",
        description="Write a ROOT file with a TTree 'events' of the event-level reconstructed quantities (and truth), "
        "a TTree 'spills' and the selection histograms.",
    )
    p.add_argument("run_dir", type=pathlib.Path, metavar="RUN_DIR")
    p.add_argument("--out", type=pathlib.Path, required=True, metavar="FILE.root")
    p.add_argument("--config", type=pathlib.Path, help="configuration TOML (default: the one in the run record)")
    p.add_argument("--force", action="store_true", help="replace FILE.root if it exists")
    return p


def export_run(args: argparse.Namespace) -> int:
    from .export import export_run as do_export

    _run_dirs([args.run_dir])
    with _err.status(f"exporting {args.run_dir}"):
        try:
            s = do_export(args.run_dir, args.out, _config(args.config), overwrite=args.force)
        except FileExistsError as exc:  # bad input: exit status 2 with the message
            raise ValueError(str(exc)) from None
    _err.print(f"wrote {s['file']}: {s['events']} events from {s['spills']} spills")
    for e in s["skipped"]:
        _err.print(f"[yellow]skipped[/] {e}")
    return 0


ParserBuilder = Callable[[argparse._SubParsersAction], argparse.ArgumentParser]
Handler = Callable[[argparse.Namespace], int]

SUBCOMMANDS: dict[str, tuple[ParserBuilder, Handler]] = {
    "simulate": (simulate_parser, simulate_run),
    "select": (select_parser, select_run),
    "report": (report_parser, report_run),
    "export": (export_parser, export_run),
}
