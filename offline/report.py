"""The analysis of recorded runs end to end (``na64-offline report RUN_DIR... --out DIR``).

1. selection (:func:`offline.dask_select.select_runs`, Dask) -> ``DIR/selection/``;
2. background in the box from side band C (``offline/background.py``): E_ECAL of the preselected events
   with no V2/HCAL activity above the box, fitted with exp(p0 + p1 E) in [box edge, physics-trigger
   E_ECAL threshold - ``TRIGGER_EDGE_MARGIN_GEV``] (the upper edge stays clear of the trigger's turn-on) and
   integrated over the box [0, box edge]. With too few side-band events the fit is impossible: n_b = 0 is
   used and the reason is reported;
3. signal efficiency per A' mass from the signal simulation (:mod:`offline.signal`, the same simulation,
   reconstruction, trigger and selection), or from ``simulate --json`` files;
4. limits (``offline/limits.py``): one :class:`~offline.limits.RunExposure` per run with its EOT (spill
   attribute ``eot`` = PiSi AND NOT V1), the simulated efficiency, the observed events in the box and its
   share (by EOT) of the background; N_90 by the counting CLs; eps_90 and y_90 per mass with the A' yield per
   EOT of ``sim_frontend.yields`` (IWW, E_A' > E0 - box edge);
5. plots (``offline/plots.py``): exclusion, y vs m_chi, E_ECAL vs E_HCAL with the box, cut flow, and per
   run the incoming-momentum spectrum of the beam- and physics-trigger events (``momentum_run<N>.png``);
6. ``summary.json`` and ``summary.txt`` listing every file written, plus ``runs.json`` (input of
   ``na64-offline limits --runs``, efficiency of the reference mass). Per run they give the tagged-electron
   efficiency: the fraction of the SRD-tagged beam-trigger electrons with a good single track in the
   momentum window (:func:`offline.selection.tagged_electrons`).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from detector.settings import Config
from detector.spillfile import json_default

from . import dask_select as ds
from .led_correction import led_summary

TRIGGER_EDGE_MARGIN_GEV = 10.0
BACKGROUND_BINS = 10
DEFAULT_MASSES_MEV = (1.0, 16.7, 100.0, 500.0)
DEFAULT_SIGNAL_EVENTS = 2000
#: A' masses of the exclusion scan (MeV): log-spaced over the plot's 1 MeV - 1 GeV
SCAN_MASSES_MEV: tuple[float, ...] = tuple(float(m) for m in np.geomspace(1.0, 1000.0, 31))
#: alpha_D values of the (m_chi, y) plot (the paper's two)
PLOT_ALPHA_D: tuple[float, ...] = (0.5, 0.1)


def background_estimate(
    sideband_e_ecal: np.ndarray, cfg: Config, fit_range: tuple[float, float] | None = None, bins: int = BACKGROUND_BINS
) -> dict[str, Any]:
    """Side-band C extrapolation into the box (see the module docstring); always returns a dict with
    ``n_b``, ``stat_err``, ``syst_err``, ``error`` (None when the fit worked)."""
    from . import background

    box_hi = float(cfg.offline.ecal_box_max_gev)
    if fit_range is None:
        fit_range = (box_hi, float(cfg.trigger.menu["physics"].ecal_max_gev) - TRIGGER_EDGE_MARGIN_GEV)
    e = np.asarray(sideband_e_ecal, dtype=float)
    base = {
        "sideband": "C",
        "fit_range_gev": list(fit_range),
        "box_range_gev": [0.0, box_hi],
        "n_sideband": int(e.size),
        "n_in_fit_range": int(((e >= fit_range[0]) & (e < fit_range[1])).sum()),
    }
    try:
        est = background.estimate_background(e, fit_range, (0.0, box_hi), bins)
    except (ValueError, RuntimeError) as exc:
        return {**base, "n_b": 0.0, "stat_err": 0.0, "syst_err": 0.0, "error": str(exc)}
    out = {**base, **est.as_json(), "error": None}
    if not all(math.isfinite(out[k]) for k in ("n_b", "stat_err", "syst_err")):
        out.update(n_b=0.0, stat_err=0.0, syst_err=0.0, error="side-band fit gave a non-finite estimate")
    return out


def signal_efficiencies(
    cfg: Config, calib, masses_mev: Sequence[float], n_events: int, pileup: bool = False, seed: int = 1
) -> list[dict[str, Any]]:
    from .signal import simulate_signal

    return [simulate_signal(cfg, m, n_events, calib, seed, pileup).as_json() for m in masses_mev]


def load_signal_json(paths: Sequence[str | os.PathLike]) -> list[dict[str, Any]]:
    """Efficiencies written by ``simulate --json`` (one object or a list per file)."""
    out = []
    for p in paths:
        data = json.loads(pathlib.Path(p).read_text())
        for d in data if isinstance(data, list) else [data]:
            if not {"mass_mev", "efficiency"} <= set(d):
                raise ValueError(f"{p}: not a simulate result (needs mass_mev and efficiency)")
            out.append(d)
    return out


def compute_limits(
    by_run: dict[str, dict[str, Any]], background: dict[str, Any], signal: list[dict[str, Any]], cfg: Config
) -> dict[str, Any]:
    """eps_90 and y_90 per mass (see the module docstring)."""
    from sim_frontend import yields

    from . import limits as lim

    runs_in = [(name, r) for name, r in by_run.items() if r.get("eot", 0) > 0]
    if not runs_in:
        raise ValueError("no run with EOT > 0: no limit can be computed")
    eot_total = sum(r["eot"] for _, r in runs_in)
    b, b_err = background["n_b"], math.hypot(background["stat_err"], background["syst_err"])
    syst = lim.SignalSystematics()

    def exposures(eff: float) -> list:
        return [
            lim.RunExposure(
                name=pathlib.Path(name).name,
                n_eot=float(r["eot"]),
                efficiency=eff,
                n_obs=int(r["n_obs"]),
                background=b * r["eot"] / eot_total,
                background_err=b_err * r["eot"] / eot_total,
            )
            for name, r in runs_in
        ]

    n90 = lim.n90_for_runs(exposures(1.0), syst, "fast")
    e0 = float(cfg.beam.energy_gev)
    emiss = e0 - float(cfg.offline.ecal_box_max_gev)
    table = yields.track_length_table(e0, yields.table_e_cut_gev(emiss))
    points: list[dict[str, Any]] = []
    for s in signal:
        m, eff = float(s["mass_mev"]), float(s["efficiency"])
        yld = yields.yield_per_eot(m * 1e-3, e0, emiss, "IWW", table=table)
        if eff <= 0.0:
            points.append(
                {
                    "mass_mev": m,
                    "efficiency": eff,
                    "yield_per_eot_eps1": yld,
                    "eps_90": math.inf,
                    "n90": n90,
                    "y90_alphaD_0.5": math.inf,
                    "y90_alphaD_0.005": math.inf,
                }
            )
            continue
        p = lim.limit_points([m], [yld], exposures(min(eff, 1.0)), n90)[0]
        points.append(
            {
                **p.as_json(),
                "efficiency": eff,
                "efficiency_err": s.get("efficiency_err"),
                "yield_per_eot_eps1": yld,
                "n_aprime_eps1": p.n_aprime_eps1,
            }
        )
    scan = mass_scan(signal, exposures, n90, e0, emiss, table)
    return {
        "n90": n90,
        "n_obs": int(sum(r["n_obs"] for _, r in runs_in)),
        "eot": eot_total,
        "background": b,
        "background_err": b_err,
        "systematics": syst.as_dict(),
        "method": "fast",
        "points": points,
        "scan": scan,
        "runs": [{"name": pathlib.Path(n).name, "n_eot": r["eot"], "n_obs": r["n_obs"]} for n, r in runs_in],
    }


def scan_efficiency(signal: list[dict[str, Any]], masses_mev: Sequence[float]) -> np.ndarray:
    """Signal efficiency at ``masses_mev``: linear in log(m_A') between the simulated masses, held at the
    nearest simulated value outside them (one simulated mass: that efficiency everywhere)."""
    sim = sorted((float(s["mass_mev"]), float(s["efficiency"])) for s in signal)
    if not sim:
        raise ValueError("no simulated signal efficiency to scan with")
    m_sim, e_sim = np.log([m for m, _ in sim]), np.array([e for _, e in sim])
    return np.interp(np.log(np.asarray(masses_mev, dtype=float)), m_sim, e_sim)


def mass_scan(
    signal: list[dict[str, Any]],
    exposures,
    n90: float,
    e0_gev: float,
    emiss_gev: float,
    table,
    masses_mev: Sequence[float] = SCAN_MASSES_MEV,
) -> list[dict[str, Any]]:
    """eps_90 and y_90 (``PLOT_ALPHA_D``) over the mass scan, the efficiency from :func:`scan_efficiency`
    (``efficiency_interpolated`` says which masses were not simulated)."""
    from sim_frontend import yields

    from . import limits as lim

    simulated = {float(s["mass_mev"]) for s in signal}
    masses = sorted(set(map(float, masses_mev)) | simulated)
    out = []
    for m, eff in zip(masses, scan_efficiency(signal, masses)):
        if eff <= 0.0:
            continue
        yld = yields.yield_per_eot(m * 1e-3, e0_gev, emiss_gev, "IWW", table=table)
        p = lim.limit_points([m], [yld], exposures(min(float(eff), 1.0)), n90, PLOT_ALPHA_D)[0]
        out.append({**p.as_json(), "efficiency": float(eff), "efficiency_interpolated": m not in simulated})
    return out


def _ecal_hcal_samples(h) -> tuple[np.ndarray, np.ndarray]:
    """Bin centres repeated by the (integer) bin contents: offline/plots.plot_ecal_vs_hcal takes events."""
    counts = np.rint(h.values()).astype(np.int64)
    cx, cy = h.axes[0].centers, h.axes[1].centers
    ix, iy = np.nonzero(counts)
    n = counts[ix, iy]
    return np.repeat(cx[ix], n), np.repeat(cy[iy], n)


def make_plots(
    merged: ds.MergedSelection, lim_result: dict[str, Any] | None, cfg: Config, out: pathlib.Path
) -> list[pathlib.Path]:
    from . import plots

    files = []
    ex, hy = _ecal_hcal_samples(merged.hists["ecal_vs_hcal"])
    files.append(
        plots.plot_ecal_vs_hcal(
            ex,
            hy,
            out / "ecal_vs_hcal.png",
            float(cfg.offline.ecal_box_max_gev),
            float(cfg.offline.hcal_box_max_gev),
            bins=(150, 150),
            ranges=((0.0, 150.0), (0.0, 150.0)),
        )
    )
    files.append(plots.plot_cutflow(dict(merged.cut_flow), out / "cutflow.png"))
    window = (float(cfg.offline.p_min_gev), float(cfg.offline.p_max_gev))
    for rd, h in merged.run_hists.items():
        spectra = {f"{t} trigger": h[f"momentum_{t}"].values() for t in ("beam", "physics")}
        if sum(float(c.sum()) for c in spectra.values()) <= 0:
            continue  # recorded without the Micromegas block: no tracks
        run = merged.by_run.get(rd, {}).get("run", 0)
        edges = h["momentum_beam"].axes[0].edges
        files.append(plots.plot_momentum(edges, spectra, window, out / f"momentum_run{run}.png", f"run {run}"))
    if lim_result:
        pts = [p for p in lim_result.get("scan") or lim_result["points"] if math.isfinite(p["eps_90"])]
        if len(pts) >= 1:
            m = [p["mass_mev"] for p in pts]
            info = f"{lim_result['eot']:.3g} EOT, {lim_result['n_obs']} observed"
            simulated = [p["mass_mev"] for p in pts if not p.get("efficiency_interpolated", False)]
            files.append(
                plots.plot_exclusion(
                    m, [p["eps_90"] for p in pts], out / "exclusion.png", info=info, simulated_mev=simulated
                )
            )
            alphas = [a for a in PLOT_ALPHA_D if f"y90_alphaD_{a:g}" in pts[0]]
            files.append(
                plots.plot_y_vs_mchi(
                    [x / 3.0 for x in m],
                    {a: [p[f"y90_alphaD_{a:g}"] for p in pts] for a in alphas},
                    out / "y_vs_mchi.png",
                    info=info,
                )
            )
    return files


def make_report(
    run_dirs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    scheduler: str | None = None,
    n_workers: int = 2,
    config: Config | None = None,
    masses_mev: Sequence[float] = DEFAULT_MASSES_MEV,
    signal_events: int = DEFAULT_SIGNAL_EVENTS,
    signal_json: Sequence[str | os.PathLike] = (),
    pileup: bool = False,
    fit_range: tuple[float, float] | None = None,
    serial: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the whole chain and write the report into ``out_dir``; returns the summary dict."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg, calib = ds.run_setup(run_dirs[0], config)
    merged = ds.select_runs(
        run_dirs,
        out / "selection",
        scheduler,
        n_workers,
        config=cfg,
        calibration=calib,
        serial=serial,
        progress=progress,
    )
    files = [pathlib.Path(p) for p in json.loads((out / "selection" / "selection.json").read_text())["files"]]
    bkg = background_estimate(merged.sidebands["C"]["e_ecal"], cfg, fit_range)
    signal = (
        load_signal_json(signal_json)
        if signal_json
        else signal_efficiencies(cfg, calib, masses_mev, signal_events, pileup)
    )
    lim_result, lim_error = None, None
    try:
        lim_result = compute_limits(merged.by_run, bkg, signal, cfg)
    except ValueError as exc:
        lim_error = str(exc)
    files += make_plots(merged, lim_result, cfg, out)
    for name, obj in (("background.json", bkg), ("signal.json", signal), ("limits.json", lim_result)):
        if obj is not None:
            p = out / name
            p.write_text(json.dumps(obj, indent=1, default=json_default) + "\n")
            files.append(p)
    if lim_result is not None:
        ref = signal[0]
        runs_file = {
            "runs": [
                {
                    "name": r["name"],
                    "n_eot": r["n_eot"],
                    "efficiency": max(min(ref["efficiency"], 1.0), 1e-9),
                    "n_obs": r["n_obs"],
                    "background": bkg["n_b"] * r["n_eot"] / lim_result["eot"],
                    "background_err": lim_result["background_err"] * r["n_eot"] / lim_result["eot"],
                }
                for r in lim_result["runs"]
            ],
            "systematics": lim_result["systematics"],
            "efficiency_mass_mev": ref["mass_mev"],
        }
        p = out / "runs.json"
        p.write_text(json.dumps(runs_file, indent=1) + "\n")
        files.append(p)
    summary = {
        "runs": [str(r) for r in run_dirs],
        "eot": merged.eot,
        "n_spills": merged.n_spills,
        "n_events": merged.n_events,
        "cut_flow": dict(merged.cut_flow),
        "n_obs": merged.n_obs,
        "background": bkg,
        "signal": [{k: s[k] for k in ("mass_mev", "events", "efficiency", "efficiency_err") if k in s} for s in signal],
        "limits": lim_result,
        "limits_error": lim_error,
        "truth": merged.truth,
        "tagged_electrons": {
            rd: {"run": r.get("run"), **r["tagged_electrons"]}
            for rd, r in merged.by_run.items()
            if "tagged_electrons" in r
        },
        "errors": merged.errors,
        "excluded_spills": merged.excluded_spills,
        "led_correction": {k: v for k, v in led_summary(merged.led).items() if k != "spills"},
    }
    p_json, p_txt = out / "summary.json", out / "summary.txt"
    files += [p_json, p_txt]
    summary["files"] = [str(f) for f in files]
    p_json.write_text(json.dumps(summary, indent=1, default=json_default) + "\n")
    p_txt.write_text(summary_text(summary))
    return summary


def summary_text(s: dict[str, Any]) -> str:
    lines = [f"NA64-like invisible-mode analysis of {len(s['runs'])} run(s)", ""]
    lines += [f"  run: {r}" for r in s["runs"]]
    lines += ["", f"spills {s['n_spills']}, events {s['n_events']}, EOT {s['eot']:.6g}", "", "cut flow:"]
    prev = None
    for name, n in s["cut_flow"].items():
        frac = f"  ({n / prev:.3f})" if prev else ""
        lines.append(f"  {name:<10s} {n:>10d}{frac}")
        prev = n
    tagged = s.get("tagged_electrons") or {}
    if tagged:
        lines += ["", "tagged-electron efficiency (SRD-tagged beam triggers with a good single track in the window):"]
    for t in tagged.values():
        eff = (
            f"{t['efficiency']:.4f} +/- {t['efficiency_err']:.4f}"
            if t.get("efficiency") is not None
            else "no tagged electrons"
        )
        lines.append(f"  run {t['run']}: {t['good_track']} / {t['beam_electrons']} = {eff}")
    b = s["background"]
    lines += [
        "",
        f"observed in the box: {s['n_obs']}",
        f"background (side band C, fit {b['fit_range_gev']}): {b['n_b']:.3g} +/- {b['stat_err']:.3g} (stat) "
        f"+/- {b['syst_err']:.3g} (syst)" + (f"  [{b['error']}]" if b.get("error") else ""),
        "",
        "signal efficiency:",
    ]
    for e in s["signal"]:
        lines.append(f"  m_A' = {e['mass_mev']:g} MeV: {e['efficiency']:.4f} +/- {e.get('efficiency_err') or 0:.4f}")
    if s["limits"]:
        lines += ["", f"N_90 = {s['limits']['n90']:.4g}", "90% CL limits:"]
        for p in s["limits"]["points"]:
            lines.append(
                f"  m_A' = {p['mass_mev']:g} MeV: eps_90 = {p['eps_90']:.3g}, y_90(alpha_D = 0.5) = "
                f"{p['y90_alphaD_0.5']:.3g}"
            )
    elif s.get("limits_error"):
        lines += ["", f"no limits: {s['limits_error']}"]
    if s["truth"]:
        t = s["truth"]
        lines += [
            "",
            (
                f"truth: A' recorded {t['aprime_recorded']}, in the box {t['aprime_in_box']}, "
                f"box events without A' {t['box_not_aprime']}"
            ),
        ]
    if s.get("excluded_spills"):
        lines += ["", "incomplete spills left out (events and EOT):"] + [
            f"  {x['run_dir']} spill {x['spill']}: {', '.join(x['flags'])}, EOT {x['eot']:.6g}"
            for x in s["excluded_spills"]
        ]
    led = s.get("led_correction") or {}
    if led:
        big = led.get("largest")
        lines += [
            "",
            f"LED correction: {led.get('spills_corrected', 0)} spills corrected"
            + "".join(f", {n} not ({why})" for why, n in (led.get("spills_not_corrected") or {}).items())
            + (f"; largest {big['change_pct']:+.2f}% ({big['cell']}, spill {big['spill']})" if big else ""),
        ]
    if s["errors"]:
        lines += ["", "unreadable spill files:"] + [f"  {e}" for e in s["errors"]]
    lines += ["", "files written:"] + [f"  {f}" for f in s["files"]]
    return "\n".join(lines) + "\n"
