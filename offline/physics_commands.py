"""``na64-offline efficiency`` (signal efficiency factor by factor, :mod:`offline.efficiency`) and
``na64-offline dimuons --mc`` (the MC dimuon control sample, :mod:`offline.dimuons`); registered in
:data:`offline.cli.SUBCOMMANDS`. Results go to ``--json``; the tables to stdout; bad input raises ValueError
(exit status 2 in ``offline.cli.main``)."""

from __future__ import annotations

import argparse
import math
import pathlib
from typing import Any

from rich.console import Console
from rich.table import Table

from .commands import Handler, ParserBuilder, _config, _positive_int, _write_json

_err = Console(stderr=True)
_out = Console()


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from exc
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return v


def _common(p: argparse.ArgumentParser, events: int) -> None:
    p.add_argument(
        "--intensity", type=_positive_float, required=True, help="beam particles per spill (sets the pile-up)"
    )
    p.add_argument("--events", type=_positive_int, default=events, help=f"MC events (default {events})")
    p.add_argument("--config", type=pathlib.Path, help="configuration TOML (default: built-in defaults)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
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
    p.add_argument("--mass", type=_positive_float, required=True, help="A' mass in MeV")
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
        help="dimuon control sample: the MC prediction of the paper's selection (--mc)",
        description="Beam electrons at --intensity (pile-up) producing gamma -> mu+ mu- in the ECAL, weighted "
        "with the probability per electron, through the full chain; selection: physics trigger, incoming "
        "electron cuts, E_ECAL < 60 GeV, MIP-like energy in HCAL modules 1 and 4. Output: {selected_per_eot, "
        "selected_per_eot_err, selected (for --eot), cut_flow}.",
    )
    p.add_argument("--mc", action="store_true", required=True, help="the MC prediction (the only mode here)")
    p.add_argument("--eot", type=_positive_float, required=True, help="electrons on target to predict for")
    _common(p, 4000)
    return p


def dimuons_run(args: argparse.Namespace) -> int:
    from detector.config import load_config

    from .dimuons import mc_dimuons

    cfg = _config(args.config) or load_config(None)
    with _err.status(f"simulating {args.events} dimuon events at {args.intensity:.3g} per spill"):
        r = mc_dimuons(cfg, args.intensity, args.events, args.eot, seed=args.seed)
    if args.json is not None:
        _write_json(args.json, r)
    _print_cut_flow(f"dimuon selection (MC), {args.intensity:.3g} per spill", "step", "MC events", r["cut_flow"])
    _out.print(
        f"selected per EOT: {r['selected_per_eot']:.3g} +/- {r['selected_per_eot_err']:.2g}; "
        f"for {r['eot']:.3g} EOT: {r['selected']:.4g} +/- {r['selected_err']:.3g}"
    )
    return 0


SUBCOMMANDS: dict[str, tuple[ParserBuilder, Handler]] = {
    "efficiency": (efficiency_parser, efficiency_run),
    "dimuons": (dimuons_parser, dimuons_run),
}
