"""``na64-offline efficiency`` (signal efficiency factor by factor, :mod:`offline.efficiency`) and
``na64-offline dimuons`` (the dimuon control sample, data/MC per recorded run, :mod:`offline.dimuons`); registered in
:data:`offline.cli.SUBCOMMANDS`. Results go to ``--json``; the tables to stdout; bad input raises ValueError
(exit status 2 in ``offline.cli.main``)."""

from __future__ import annotations

import argparse
import pathlib
from typing import Any

from rich.console import Console
from rich.table import Table

from detector.cli_types import positive_float, positive_int, random_seed

from .commands import Handler, ParserBuilder, _config, _write_json

_err = Console(stderr=True)
_out = Console()


def _common(p: argparse.ArgumentParser, events: int) -> None:
    p.add_argument(
        "--intensity", type=positive_float, required=True, help="beam particles per spill (sets the pile-up)"
    )
    p.add_argument("--events", type=positive_int, default=events, help=f"MC events (default {events})")
    p.add_argument("--config", type=pathlib.Path, help="configuration TOML (default: built-in defaults)")
    p.add_argument("--seed", type=random_seed, default=1, help="random seed (default 1)")
    p.add_argument("--json", type=pathlib.Path, metavar="PATH", help="write the result there")


# ------------------------------------------------------------------------------------------ efficiency
def efficiency_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "efficiency",
        help="A' signal efficiency factor by factor (Table II) at a beam intensity, with pile-up",
        description="A' signal events in the beam at --intensity (pile-up), the A' emitted at a depth of the "
        "shower the primary's track length implies, through the response, tracking, digitisation, "
        "reconstruction, trigger and selection. Output: {eps_e, eps_ecal, eps_v, eps_hcal, total, each with "
        "*_err, factor_cut_flow, ps_threshold_correction, cut_flow, paper}.",
    )
    p.add_argument("--mass", type=positive_float, required=True, help="A' mass in MeV")
    p.add_argument("--face", action="store_true", help="emit the A' at the ECAL face instead (comparison)")
    _common(p, 2000)
    return p


def _factor_rows(r: dict[str, Any]) -> list[tuple[str, ...]]:
    paper = r.get("paper") or {}
    rows: list[tuple[str, ...]] = []
    for name in ("eps_e", "eps_ecal", "eps_v", "eps_hcal", "total"):
        ref = paper.get(name)
        if name == "total" and paper:
            ref = (paper["total"], paper["total_err"])
        ev = r.get(f"{name}_events")
        rows.append(
            (
                name,
                f"{r[name]:.3f} +/- {r[f'{name}_err']:.3f}",
                "" if ev is None else f"{ev[0]} / {ev[1]}",
                "" if ref is None else f"{ref[0]:.2f} +/- {ref[1]:.2f}",
            )
        )
    return rows


def efficiency_run(args: argparse.Namespace) -> int:
    from detector.config import load_config

    from .efficiency import signal_efficiency

    cfg = _config(args.config) or load_config(None)
    with _err.status(f"simulating {args.events} A' events at {args.mass:g} MeV, {args.intensity:.3g} per spill"):
        r = signal_efficiency(cfg, args.mass, args.intensity, args.events, seed=args.seed, at_depth=not args.face)
    if args.json is not None:
        _write_json(args.json, r)
    paper = r.get("paper")
    t = Table(
        title=f"signal efficiency, m_A' = {args.mass:g} MeV, {args.intensity:.3g} per spill"
        + (" (A' at the ECAL face)" if args.face else "")
    )
    for c in ("factor", "value", "passed / tried", f"paper ({paper['intensity']:.2g})" if paper else "paper"):
        t.add_column(c, justify="right")
    for row in _factor_rows(r):
        t.add_row(*row)
    _out.print(t)
    _print_cut_flow("cut flow (factors' order)", "cut", "events", r["factor_cut_flow"])
    _out.print(
        f"PS-threshold correction (A' at depth / at the ECAL face): {r['ps_threshold_correction']:.3f}; "
        f"mean emission depth {r['depth_x0_mean']:.2f} X0; tracker cuts applied: {r['tracker_applied']}"
    )
    return 0


def _print_cut_flow(title: str, step: str, count: str, flow: dict[str, int]) -> None:
    """Print a cut flow (events left after each step, in order) as a two-column table."""
    t = Table(title=title)
    for c in (step, count):
        t.add_column(c, justify="right")
    for k, v in flow.items():
        t.add_row(k, str(v))
    _out.print(t)


# ------------------------------------------------------------------------------------------ dimuons
def dimuons_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "dimuons",
        help="dimuon control sample: data/MC on recorded runs, or the MC prediction alone (--mc)",
        description="Selection: physics trigger, incoming electron cuts, E_ECAL < 60 GeV, MIP-like energy in "
        "HCAL modules 1 and 4 (offline.dimuons.dimuon_mask, the same for data and MC). With RUN_DIRs: the "
        "selection on each recorded run, its EOT from the spill scalers, and data/MC against the MC "
        "prediction WITHOUT pile-up (the paper's Table I): --mc simulates it with the run's configuration, "
        "--mc-json reads one written by `dimuons --mc --no-pileup --json`. Output: {runs: [{intensity, eot, "
        "selected, selected_per_eot(_err), data_mc(_err), paper, cut_flow, selected_events}], mc}. Without "
        "RUN_DIR (--mc --eot --intensity): beam electrons producing gamma -> mu+ mu- in the ECAL, weighted "
        "with the probability per electron, through the full chain with pile-up at --intensity (--no-pileup: "
        "without). Output: {selected_per_eot, selected_per_eot_err, selected (for --eot), cut_flow}.",
    )
    p.add_argument("run_dirs", nargs="*", type=pathlib.Path, metavar="RUN_DIR", help="recorded runs (na64-daq)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--mc", action="store_true", help="simulate the MC prediction")
    src.add_argument(
        "--mc-json", type=pathlib.Path, metavar="FILE", help="the MC prediction (no pile-up) to compare with"
    )
    p.add_argument("--eot", type=positive_float, help="electrons on target to predict for (MC alone)")
    p.add_argument("--intensity", type=positive_float, help="beam particles per spill (MC alone: sets the pile-up)")
    p.add_argument("--no-pileup", action="store_true", help="MC alone: the electrons without pile-up")
    p.add_argument("--events", type=positive_int, default=4000, help="MC events (default 4000)")
    p.add_argument(
        "--config", type=pathlib.Path, help="configuration TOML (default: the run's own, else built-in defaults)"
    )
    p.add_argument("--seed", type=random_seed, default=1, help="random seed of the MC (default 1)")
    p.add_argument("--json", type=pathlib.Path, metavar="PATH", help="write the result there")
    return p


def dimuons_run(args: argparse.Namespace) -> int:
    if args.run_dirs:
        return _dimuons_data(args)
    if not args.mc or args.eot is None or args.intensity is None:
        raise ValueError("without RUN_DIR, give --mc, --eot and --intensity (the MC prediction alone)")
    from detector.config import load_config

    from .dimuons import mc_dimuons

    cfg = _config(args.config) or load_config(None)
    pileup = not args.no_pileup
    how = f"at {args.intensity:.3g} per spill" if pileup else "without pile-up"
    with _err.status(f"simulating {args.events} dimuon events {how}"):
        r = mc_dimuons(cfg, args.intensity, args.events, args.eot, seed=args.seed, pileup=pileup)
    if args.json is not None:
        _write_json(args.json, r)
    _print_cut_flow(f"dimuon selection (MC), {how}", "step", "MC events", r["cut_flow"])
    _out.print(
        f"selected per EOT: {r['selected_per_eot']:.3g} +/- {r['selected_per_eot_err']:.2g}; "
        f"for {r['eot']:.3g} EOT: {r['selected']:.4g} +/- {r['selected_err']:.3g}"
    )
    return 0


def _dimuon_mc_file(path: pathlib.Path) -> dict[str, Any]:
    import json

    try:
        mc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable MC prediction ({exc})") from exc
    if not isinstance(mc, dict) or "selected_per_eot" not in mc or "selected_per_eot_err" not in mc:
        raise ValueError(f"{path}: no selected_per_eot in it (write it with `dimuons --mc --no-pileup --json`)")
    if mc.get("pileup", True):
        raise ValueError(f"{path}: an MC prediction with pile-up; data/MC takes it without (--no-pileup)")
    return mc


def _dimuons_data(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from .commands import _run_dirs
    from .dask_select import run_setup
    from .dimuons import data_over_mc, mc_dimuons, paper_table_i, run_dimuons

    dirs = _run_dirs(args.run_dirs)
    cfg = _config(args.config)
    mc = _dimuon_mc_file(args.mc_json) if args.mc_json is not None else None
    if args.mc:
        mc_cfg, mc_calib = run_setup(dirs[0], cfg)
        with _err.status(f"simulating {args.events} dimuon events without pile-up (the MC of data/MC)"):
            mc = mc_dimuons(
                mc_cfg, float(mc_cfg.beam.particles_per_spill), args.events, 1.0, mc_calib, args.seed, False
            )
    runs = []
    with Progress(console=_err, transient=True) as prog:
        for d in dirs:
            task = prog.add_task(f"dimuons in {d.name}", total=None)

            def advance(k: int, n: int, task: Any = task) -> None:
                prog.update(task, completed=k, total=n)

            r = run_dimuons(d, cfg, progress=advance)
            if mc is not None:
                r["data_mc"], r["data_mc_err"] = data_over_mc(r, mc)
            r["paper"] = paper_table_i(r["intensity"])
            runs.append(r)
    result = {"runs": runs, "mc": mc, "mc_pileup": False if mc is not None else None}
    if args.json is not None:
        _write_json(args.json, result)
    t = Table(title="dimuons in recorded runs" + ("" if mc is None else " / MC without pile-up"))
    for c in ("run", "e-/spill", "spills", "EOT", "selected", "per EOT", "data/MC", "paper"):
        t.add_column(c, justify="right")
    for r in runs:
        t.add_row(
            pathlib.Path(r["run_dir"]).name.removeprefix("run-").lstrip("0") or "0",
            f"{r['intensity']:.3g}",
            str(r["n_spills"]),
            f"{r['eot']:.3g}",
            str(r["selected"]),
            f"{r['selected_per_eot']:.3g} +/- {r['selected_per_eot_err']:.2g}",
            f"{r['data_mc']:.3f} +/- {r['data_mc_err']:.3f}" if "data_mc" in r else "",
            "" if r["paper"] is None else f"{r['paper']['data_mc']:.2f}",
        )
    Console(width=max(_out.width, 112)).print(t)  # not cut to a pipe's 80 columns
    if mc is not None:
        _out.print(f"MC (no pile-up): {mc['selected_per_eot']:.3g} +/- {mc['selected_per_eot_err']:.2g} per EOT")
    for r in runs:
        if r["excluded_spills"] or r["errors"]:
            _err.print(
                f"[yellow]{r['run_dir']}: {len(r['excluded_spills'])} incomplete spill(s) left out with their "
                f"EOT, {len(r['errors'])} unreadable[/]"
            )
    return 0


SUBCOMMANDS: dict[str, tuple[ParserBuilder, Handler]] = {
    "efficiency": (efficiency_parser, efficiency_run),
    "dimuons": (dimuons_parser, dimuons_run),
}
