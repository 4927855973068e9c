"""``na64-offline``: offline physics commands.

Subcommands registered here: ``dimuon``, ``yields``, ``limits``, ``background``. Each writes its result as
JSON to ``--json PATH`` (and prints a table) or, without ``--json``, prints the JSON to stdout. Progress of
long work goes to stderr.

Subcommands are registered in :data:`SUBCOMMANDS` (name -> (parser builder, handler)). ``simulate``,
``select``, ``report`` and ``export`` belong to other modules and are added there by their owners.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from detector.cli_types import nonnegative_float, positive_float, positive_int, random_seed
from offline import limits as lim
from offline import paper2016
from sim_frontend import dimuon, yields

from .argtypes import float_list, float_pair

_err = Console(stderr=True)
_out = Console()

DEFAULT_LIMIT_MASSES_MEV = "1.1,2,5,16.7,20,100,200,500,950"


# ----------------------------------------------------------------------------- helpers


def _emit(result: object, json_path: Path | None, table: Table | None) -> None:
    """Write ``result`` as JSON to ``json_path`` and print ``table``; without a path print the JSON."""
    text = json.dumps(result, indent=2)
    if json_path is None:
        print(text)
        return
    json_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = json_path.with_name(json_path.name + ".tmp")
    tmp.write_text(text + "\n")
    tmp.replace(json_path)
    if table is not None:
        _out.print(table)
    _err.print(f"wrote {json_path}")


@contextmanager
def _progress() -> Iterator[Progress]:
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=_err,
        transient=True,
    ) as progress:
        yield progress


def _table(title: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> Table:
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row))
    return table


def _add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", type=Path, metavar="PATH", help="write the result as JSON to PATH (default: print JSON)"
    )


# ----------------------------------------------------------------------------- dimuon
def _dimuon_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "dimuon",
        help="Bethe-Heitler gamma Pb -> mu+ mu- cross-section",
        description="Total Bethe-Heitler muon-pair cross-section on lead (docs/physics.md section 4) at the given "
        "photon energies. Output: list of {energy_gev, sigma_ub}.",
    )
    parser.add_argument(
        "--energies",
        type=float_list,
        default=[1.0, 10.0, 100.0],
        metavar="E1,E2,...",
        help="photon energies in GeV (default 1,10,100)",
    )
    _add_json(parser)
    return parser


def _run_dimuon(args: argparse.Namespace) -> int:
    sigma = dimuon.sigma_total_ub(np.array(args.energies))
    result = [{"energy_gev": e, "sigma_ub": float(s)} for e, s in zip(args.energies, sigma)]
    rows = [(r["energy_gev"], r["sigma_ub"]) for r in result]
    _emit(result, args.json, _table("gamma Pb -> mu mu", ["E_gamma [GeV]", "sigma [ub]"], rows))
    return 0


# ----------------------------------------------------------------------------- yields
def _add_yield_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--e0", type=positive_float, default=100.0, help="beam energy in GeV (default 100)")
    parser.add_argument(
        "--emiss-min",
        type=float,
        default=50.0,
        help="missing-energy cut E_A' > EMISS_MIN in GeV (default 50: E_ECAL < 50 GeV box)",
    )
    parser.add_argument(
        "--etl", action="store_true", help="exact-tree-level model: divide the IWW cross-section by the K-factor"
    )
    parser.add_argument(
        "--n-showers",
        type=positive_int,
        default=yields.DEFAULT_N_SHOWERS,
        help=f"cascades for the track-length table (default {yields.DEFAULT_N_SHOWERS})",
    )
    parser.add_argument("--seed", type=random_seed, default=yields.DEFAULT_SEED, help="cascade random seed")


def _yields_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "yields",
        help="A' yield per EOT (eps = 1) in the lead ECAL",
        description="A' yield per electron on target for eps = 1, E_A' > EMISS_MIN (PAPER Eq. 8: 1D cascade "
        "track length x IWW cross-section). Output: {e0_gev, emiss_min_gev, model, "
        "yields: [{mass_mev, yield_per_eot_eps1}], spectra (with --spectra)}. The control-room "
        "monitor reads this file.",
    )
    parser.add_argument(
        "--masses",
        type=float_list,
        default=[1.0, 16.7, 100.0],
        metavar="M1,M2,...",
        help="A' masses in MeV (default 1,16.7,100)",
    )
    _add_yield_options(parser)
    parser.add_argument(
        "--spectra", action="store_true", help="also write the A' energy spectra dn/dE_A' (1/GeV per EOT, eps = 1)"
    )
    parser.add_argument("--spectrum-bins", type=positive_int, default=50, help="E_A' bins from 0 to E0 (default 50)")
    _add_json(parser)
    return parser


def _compute_yields(masses_mev: Sequence[float], args: argparse.Namespace, progress: Progress) -> list[float]:
    """Per-EOT yields at eps = 1 for each mass [MeV], with a progress bar."""
    model: Literal["IWW", "ETL"] = "ETL" if args.etl else "IWW"
    task = progress.add_task("cascade track-length table", total=None)
    table = yields.track_length_table(args.e0, yields.table_e_cut_gev(args.emiss_min), args.n_showers, args.seed)
    progress.update(task, description="A' yields", total=len(masses_mev), completed=0)
    out = []
    for mass in masses_mev:
        out.append(yields.yield_per_eot(mass * 1e-3, args.e0, args.emiss_min, model, table=table))
        progress.advance(task)
    return out


def _run_yields(args: argparse.Namespace) -> int:
    model: Literal["IWW", "ETL"] = "ETL" if args.etl else "IWW"
    with _progress() as progress:
        values = _compute_yields(args.masses, args, progress)
        result: dict = {
            "e0_gev": args.e0,
            "emiss_min_gev": args.emiss_min,
            "model": model,
            "yields": [{"mass_mev": m, "yield_per_eot_eps1": y} for m, y in zip(args.masses, values)],
        }
        if args.spectra:
            edges = np.linspace(0.0, args.e0, args.spectrum_bins + 1)
            table = yields.track_length_table(
                args.e0, yields.table_e_cut_gev(args.emiss_min), args.n_showers, args.seed
            )
            task = progress.add_task("A' spectra", total=len(args.masses))
            result["spectra"] = {}
            for mass in args.masses:
                spectrum = yields.aprime_energy_spectrum(mass * 1e-3, edges, args.e0, model, table=table)
                result["spectra"][f"{mass:g}"] = {
                    "e_aprime_edges_gev": edges.tolist(),
                    "dn_de_per_gev_per_eot_eps1": spectrum.tolist(),
                }
                progress.advance(task)
    rows = [(r["mass_mev"], r["yield_per_eot_eps1"]) for r in result["yields"]]
    _emit(result, args.json, _table(f"A' yield per EOT, eps = 1 ({model})", ["m_A' [MeV]", "n_A'/eps^2"], rows))
    return 0


# ----------------------------------------------------------------------------- limits
def _limits_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "limits",
        help="90%% CL CLs limits eps_90(m_A') and y_90",
        description="CLs 90%% CL upper limits on eps for each A' mass, and y = eps^2 alpha_D/81 for alpha_D = 0.5 "
        "and 0.005 (m_A' = 3 m_chi). Defaults reproduce the 2016 configuration: 4.3e10 EOT split in the "
        "three intensity bins, efficiency 0.50, background 0.12 +/- 0.04, 0 observed. Output: list of "
        "{mass_mev, eps_90, n90, y90_alphaD_0.5, y90_alphaD_0.005}.",
    )
    parser.add_argument(
        "--masses",
        type=float_list,
        default=float_list(DEFAULT_LIMIT_MASSES_MEV),
        metavar="M1,M2,...",
        help=f"A' masses in MeV (default {DEFAULT_LIMIT_MASSES_MEV})",
    )
    parser.add_argument(
        "--eot",
        type=positive_float,
        default=paper2016.TOTAL_EOT_2016,
        help="electrons on target, split over the 2016 intensity bins (default 4.3e10)",
    )
    parser.add_argument("--efficiency", type=float, default=0.50, help="signal efficiency (default 0.50, Table II)")
    parser.add_argument(
        "--background",
        type=nonnegative_float,
        default=paper2016.TABLE_III_TOTAL[0],
        help="expected background events (default 0.12, Table III)",
    )
    parser.add_argument(
        "--background-err",
        type=nonnegative_float,
        default=paper2016.TABLE_III_TOTAL[1],
        help="absolute background uncertainty (default 0.04)",
    )
    parser.add_argument("--observed", type=int, default=paper2016.OBSERVED_2016, help="observed events (default 0)")
    parser.add_argument(
        "--runs",
        type=Path,
        metavar="RESULTS_JSON",
        help="per-run results ({'runs': [{name, n_eot, efficiency, n_obs, background, "
        "background_err}], 'systematics': {...}}); replaces --eot/--efficiency/--background/--observed",
    )
    parser.add_argument(
        "--eot-syst", type=nonnegative_float, default=0.02, help="relative n_EOT systematic (default 0.02)"
    )
    parser.add_argument(
        "--efficiency-syst",
        type=nonnegative_float,
        default=0.15,
        help="relative efficiency systematic (default 0.15, paper: 10-20%%)",
    )
    parser.add_argument(
        "--yield-syst",
        type=nonnegative_float,
        default=paper2016.A_PRIME_YIELD_REL_SYST,
        help="relative A' yield systematic (default 0.10)",
    )
    parser.add_argument(
        "--method",
        choices=["fast", "pyhf-toys", "pyhf-asymptotic"],
        default="fast",
        help="fast: counting model with log-normal smearing (default); pyhf-toys: pyhf multi-bin "
        "model with toys (~20 s); pyhf-asymptotic: wrong at near-zero background",
    )
    parser.add_argument("--ntoys", type=positive_int, default=20_000, help="toys per CLs evaluation for pyhf-toys")
    parser.add_argument(
        "--plot", type=Path, metavar="PNG", help="write the exclusion plot there (and the y plot next to it, *_y.png)"
    )
    _add_yield_options(parser)
    _add_json(parser)
    return parser


def _runs_from_args(args: argparse.Namespace) -> tuple[list[lim.RunExposure], lim.SignalSystematics]:
    syst = lim.SignalSystematics(args.eot_syst, args.efficiency_syst, args.yield_syst)
    if args.runs is not None:
        runs, file_syst = lim.load_runs(args.runs)
        return runs, file_syst or syst
    if args.background < 0 or args.background_err < 0 or args.observed < 0:
        raise ValueError("background, its error and the observed count must be >= 0")
    rel = args.background_err / args.background if args.background > 0 else 0.0
    runs = lim.paper_2016_runs(args.eot, args.efficiency, args.background, rel, args.observed)
    return runs, syst


def _run_limits(args: argparse.Namespace) -> int:
    runs, syst = _runs_from_args(args)
    if args.method == "pyhf-asymptotic":
        _err.print(
            "[yellow]warning:[/] pyhf asymptotic CLs is wrong at near-zero background "
            "(about 1.4-1.5 instead of 2.3 events for 0 observed); use fast or pyhf-toys for small counts"
        )
    with _progress() as progress:
        task = progress.add_task(f"N_90 ({args.method})", total=None)
        n90 = lim.n90_for_runs(runs, syst, args.method, **({"ntoys": args.ntoys} if args.method == "pyhf-toys" else {}))
        progress.remove_task(task)
        per_eot = _compute_yields(args.masses, args, progress)
    points = lim.limit_points(args.masses, per_eot, runs, n90)
    result = [p.as_json() for p in points]
    if args.plot is not None:
        from offline import plots

        plots.plot_exclusion([p.mass_mev for p in points], [p.eps_90 for p in points], args.plot)
        m_chi = [p.mass_mev / 3.0 for p in points]
        y_by_alpha = {a: [float(lim.y90(p.eps_90, a)) for p in points] for a in (0.5, 0.1)}
        plots.plot_y_vs_mchi(m_chi, y_by_alpha, args.plot.with_name(args.plot.stem + "_y" + args.plot.suffix))
    rows = [(p.mass_mev, p.eps_90, p.n90, p.y90[0.5], p.y90[0.005]) for p in points]
    columns = ["m_A' [MeV]", "eps_90", "N_90", "y_90 (aD=0.5)", "y_90 (aD=0.005)"]
    _emit(result, args.json, _table(f"90% CL limits ({args.method})", columns, rows))
    return 0


# ----------------------------------------------------------------------------- background
def _background_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "background",
        help="background in the signal box: side-band fit, or per source from biased simulation (--sources)",
        description="Without --sources: fit exp(p0 + p1 E) to the side-band energies (binned extended likelihood) "
        "and integrate it over the signal-box range; systematic from alternative shapes and fit ranges. With "
        "--sources: predict each background source (offline/background_sources.py registry) for --eot EOT at "
        "--intensity e-/spill by biased simulation through the same simulation, reconstruction, trigger and "
        "selection (one Dask task per source; --serial: in this process, the same numbers); JSON {total: {n, err}, "
        "sources: {name: {n, err, mc, seconds}}}.",
    )
    parser.add_argument("--sideband", type=Path, metavar="FILE.npy", help="1D numpy array of side-band energies in GeV")
    parser.add_argument("--fit-range", type=float_pair, metavar="LO,HI", help="fit range in GeV")
    parser.add_argument("--box", type=float_pair, metavar="LO,HI", help="signal-box range in GeV")
    parser.add_argument("--bins", type=positive_int, default=40, help="histogram bins in the fit range (default 40)")
    parser.add_argument("--sources", action="store_true", help="predict per source from biased simulation")
    parser.add_argument("--source", action="append", default=None, metavar="NAME", help="only this source (repeatable)")
    parser.add_argument(
        "--eot", type=positive_float, default=4.3e10, help="electrons on target to predict for (default 4.3e10)"
    )
    parser.add_argument("--intensity", type=positive_float, default=5.1e6, help="e-/spill (default 5.1e6)")
    parser.add_argument(
        "--events", type=positive_int, default=20000, help="simulated beam electrons per source (default 2e4)"
    )
    parser.add_argument("--seed", type=random_seed, default=1, help="simulation seed (default 1)")
    parser.add_argument("--config", type=Path, default=None, help="configuration file (default: the built-in defaults)")
    from offline.commands import add_dask_options

    add_dask_options(parser)  # --sources: one Dask task per source
    _add_json(parser)
    return parser


def _run_background_sources(args: argparse.Namespace) -> int:
    from detector.config import load_config
    from offline import background_sources as bs

    cfg = load_config(args.config)
    with _progress() as progress:
        tasks: dict[str, Any] = {}

        def report(name: str, done: int, total: int) -> None:
            if name not in tasks:
                tasks[name] = progress.add_task(f"background source {name}", total=total)
            progress.update(tasks[name], completed=done)

        what = (cfg, args.eot, args.intensity, args.events, args.source)
        if args.serial:
            result = bs.predict(*what, seed=args.seed, progress=report)
        else:
            from offline.commands import dask_workers
            from offline.dask_background import predict_dask

            n_workers = dask_workers(args, cfg)
            result = predict_dask(*what, seed=args.seed, progress=report, scheduler=args.scheduler, n_workers=n_workers)
    rows = [(name, r["n"], r["err"], r["mc"]["events"], r["mc"]["box_events"]) for name, r in result["sources"].items()]
    rows.append(("total", result["total"]["n"], result["total"]["err"], "", ""))
    columns = ["source", "n", "err", "MC events", "MC box events"]
    _emit(
        result, args.json, _table(f"background for {args.eot:.3g} EOT at {args.intensity:.3g} e-/spill", columns, rows)
    )
    return 0


def _run_background(args: argparse.Namespace) -> int:
    from offline import background

    if args.sources:
        return _run_background_sources(args)
    if args.sideband is None or args.fit_range is None or args.box is None:
        raise ValueError("the side-band fit needs --sideband, --fit-range and --box (or use --sources)")
    try:
        energies = np.load(args.sideband, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {args.sideband}: {exc}") from exc
    estimate = background.estimate_background(energies, args.fit_range, args.box, args.bins)
    row = [(estimate.n_b, estimate.stat_err, estimate.syst_err, estimate.chi2_ndf)]
    _emit(estimate.as_json(), args.json, _table("background in the box", ["n_b", "stat", "syst", "chi2/ndf"], row))
    return 0


# ----------------------------------------------------------------------------- registry
ParserBuilder = Callable[[argparse._SubParsersAction], argparse.ArgumentParser]
Handler = Callable[[argparse.Namespace], int]

SUBCOMMANDS: dict[str, tuple[ParserBuilder, Handler]] = {
    "dimuon": (_dimuon_parser, _run_dimuon),
    "yields": (_yields_parser, _run_yields),
    "limits": (_limits_parser, _run_limits),
    "background": (_background_parser, _run_background),
}

# simulate, select, report, export: offline/commands.py (signal MC, Dask selection, full report, ROOT export)
from offline import commands as _commands  # noqa: E402

SUBCOMMANDS.update(_commands.SUBCOMMANDS)
# efficiency (Table II factors), dimuons (control sample): offline/physics_commands.py
from offline import physics_commands as _physics  # noqa: E402

SUBCOMMANDS.update(_physics.SUBCOMMANDS)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="na64-offline", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for builder, handler in SUBCOMMANDS.values():
        builder(sub).set_defaults(handler=handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``na64-offline``; returns the exit status (2 for bad input)."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except ValueError as exc:
        _err.print(f"[red]error:[/] {exc}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
