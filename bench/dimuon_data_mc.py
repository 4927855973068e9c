"""Dimuon data/MC per intensity from recorded emulator runs: the paper's Table I (docs/physics.md 6.4).

1. The MC prediction without pile-up (``na64-offline dimuons --mc --no-pileup``, ``--mc-events`` electrons):
   the selected dimuons per EOT.
2. Per intensity (default 1.8, 3.2, 4.6e6 e-/spill): ``na64-emulator`` and ``na64-daq`` record one run of
   4.8 s spills (the paper's spill length, so the pile-up is the paper's at that intensity), the spills pushed
   one at a time and each waited for (:func:`bench.daq_bench.run_point`, so no spill is lost to a busy
   machine). Spills per run: ``--spills``, else enough for ``--precision`` on data/MC (from the MC per EOT,
   data/MC ~ ``EXPECTED_RATIO`` and the EOT per particle ``EOT_PER_PARTICLE``).
3. ``na64-offline dimuons RUN_DIRS --mc-json MC`` and the comparison with Table I.

Progress on stderr; the result (the command's JSON plus the table) on stdout. With ``--out DIR`` the recorded
runs and JSON files are kept there; without it they go in a temporary directory removed at the end.
Run: ``.venv/bin/python bench/dimuon_data_mc.py [--spills N] [--mc-events N] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from daq_bench import _env, run_point  # noqa: E402

INTENSITIES = (1.8e6, 3.2e6, 4.6e6)  #: e-/spill of the paper's three runs (Table I)
EXPECTED_RATIO = 0.85  #: data/MC assumed when sizing the runs (Table I's middle row)
EOT_PER_PARTICLE = 0.85  #: EOT (PiSi, not V1) per beam particle of the default beam, to size the runs (6.4.1)


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _offline(*args: str) -> None:
    cmd = [sys.executable, "-m", "offline.cli", *args]
    _log("$ na64-offline " + " ".join(args))
    subprocess.run(cmd, cwd=REPO, env=_env(), check=True)


def spills_needed(per_eot: float, intensity: float, precision: float, mc_rel_err: float) -> int:
    """Spills for a statistical error ``precision`` on data/MC ~ EXPECTED_RATIO, the MC's relative error
    ``mc_rel_err`` included (at least 1)."""
    rel = precision / EXPECTED_RATIO
    rel_data = math.sqrt(max(rel**2 - mc_rel_err**2, (rel / 3) ** 2))
    n_events = 1.0 / rel_data**2
    return max(1, math.ceil(n_events / (EXPECTED_RATIO * per_eot * EOT_PER_PARTICLE * intensity)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--intensities", default=",".join(f"{i:g}" for i in INTENSITIES), help="e-/spill, commas")
    ap.add_argument("--spills", type=int, default=None, help="spills per run (default: from --precision)")
    ap.add_argument("--precision", type=float, default=0.03, help="statistical error on data/MC to aim for")
    ap.add_argument("--mc-events", type=int, default=200000, help="MC electrons of the prediction")
    ap.add_argument("--out", type=Path, default=None, help="work directory, kept (default: temporary, removed)")
    ap.add_argument("--timeout-per-spill", type=float, default=900.0)
    args = ap.parse_args(argv)
    out = (args.out or Path(tempfile.mkdtemp(prefix="dimuon_data_mc_"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _measure(args, out)
    finally:
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)  # gigabytes of recorded spills


def _measure(args: argparse.Namespace, out: Path) -> int:
    """The three steps of the module docstring in ``out``; prints the table and the summary."""
    intensities = [float(x) for x in args.intensities.split(",") if x.strip()]
    t0 = time.monotonic()

    mc_json = out / "mc.json"
    _log(f"1/3 MC without pile-up, {args.mc_events} electrons")
    _offline(
        "dimuons", "--mc", "--no-pileup", "--eot", "1", "--intensity", "1", "--events", str(args.mc_events),
        "--json", str(mc_json),
    )  # fmt: skip
    mc = json.loads(mc_json.read_text())
    mc_rel = mc["selected_per_eot_err"] / mc["selected_per_eot"] if mc["selected_per_eot"] > 0 else 1.0
    _log(f"MC: {mc['selected_per_eot']:.3g} +/- {mc['selected_per_eot_err']:.2g} selected per EOT")

    runs = []
    for n, intensity in enumerate(intensities):
        spills = args.spills or spills_needed(mc["selected_per_eot"], intensity, args.precision, mc_rel)
        work = out / f"i{intensity:g}"
        _log(f"2/3 run at {intensity:.3g} e-/spill: {spills} spills of 4.8 s (emulator + na64-daq)")

        def progress(k: int, total: int, intensity: float = intensity, t: float = time.monotonic()) -> None:
            _log(f"    {intensity:.3g}: spill {k}/{total} recorded ({(time.monotonic() - t) / k:.1f} s per spill)")

        pt = run_point(intensity, spills, work, args.timeout_per_spill, seed=1000 + n, on_spill=progress)
        if any(pt["flags"]):
            _log(f"    flagged spills (left out with their EOT by the command): {pt['flags']}")
        runs.append(work / "data" / "run-000001")

    table = out / "dimuons.json"
    _log("3/3 the dimuon selection on the recorded runs")
    _offline("dimuons", *map(str, runs), "--mc-json", str(mc_json), "--json", str(table))
    res = json.loads(table.read_text())
    print(f"{'intensity':>10} {'spills':>6} {'EOT':>10} {'selected':>8} {'data/MC':>16} {'paper':>6} {'diff':>6}")
    for r in res["runs"]:
        paper = r["paper"]["data_mc"] if r["paper"] else math.nan
        print(
            f"{r['intensity']:10.3g} {r['n_spills']:6d} {r['eot']:10.4g} {r['selected']:8d} "
            f"{r['data_mc']:7.3f} +/- {r['data_mc_err']:.3f} {paper:6.2f} {r['data_mc'] - paper:+6.3f}"
        )
    keys = ("intensity", "n_spills", "eot", "selected", "selected_per_eot", "selected_per_eot_err", "data_mc")
    summary = {
        "runs": [{k: r[k] for k in (*keys, "data_mc_err", "paper")} for r in res["runs"]],
        "mc": {k: mc[k] for k in ("mc_events", "selected_mc_events", "selected_per_eot", "selected_per_eot_err")},
        "seconds": round(time.monotonic() - t0),
        "out": str(out) if args.out else None,
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
