"""Tracker benchmark: simulated 100 GeV electrons of the configured beam (with the pile-up of the configured
intensity) through the beam line, Micromegas hits and the track reconstruction (detector.tracking).

Prints one JSON line: ``dp_over_p`` (sigma of p_reco / p_true - 1 from the Gaussian core, 1.4826 x MAD, of
electrons that radiated less than 1% in the beam line; p_true = beam energy at generation),
``dp_over_p_rms`` (RMS of the same within +/- 5 core sigma), ``angle_resolution_mrad`` (core sigma of the
reconstructed x slope minus the true incoming slope at the first station), ``efficiency`` (events with exactly
one reconstructed track of finite momentum and angle and one incoming particle), ``events_per_s``
(reconstruction on one core).

    python bench/tracker_bench.py [--events N] [--config FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detector.config import load_config
from detector.records import PARTICLE_CODES
from detector.tracking import Spectrometer, reconstruct_tracks
from sim_frontend import beamline, mmhits
from sim_frontend.beam import generate_spill


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--config", default=None)
    a = ap.parse_args(argv)
    cfg = load_config(a.config)
    rate = cfg.beam.particles_per_spill / cfg.spill.length_s
    n = int(a.events / (1.0 - cfg.beam.frac_halo - 0.01)) + 100
    c = cfg.with_overrides({"aprime": {"enabled": False}})
    import dataclasses

    c = dataclasses.replace(c, spill=dataclasses.replace(c.spill, length_s=n / rate))
    spill = generate_spill(c, 4242, n_particles=n, start_unix=0.0)
    e0 = spill.truth["e_beam"].copy()
    tr = beamline.transport(spill, c)
    ev = np.flatnonzero(spill.truth["ptype"] == PARTICLE_CODES["e-"])[: a.events]
    strips = mmhits.event_strips(spill, c, ev)
    spec = Spectrometer.from_config(c)
    reconstruct_tracks(strips, spec)  # compile / warm
    t0 = time.perf_counter()
    rec = reconstruct_tracks(strips, spec)
    dt = time.perf_counter() - t0
    clean = (tr.e_front[ev] > 0.99 * e0[ev]) & (spill.truth["flags"][ev] == 0)
    ok = np.isfinite(rec["p_gev"]) & np.isfinite(rec["angle_mrad"]) & (rec["n_tracks"] == 1) & (rec["n_incoming"] == 1)
    r = rec["p_gev"][clean & ok] / e0[ev][clean & ok] - 1.0
    core = 1.4826 * np.median(np.abs(r - np.median(r)))
    rms = float(np.std(r[np.abs(r - np.median(r)) < 5 * core]))
    pos = beamline.station_positions(spill, c, ev)
    true_slope = (pos[:, 1, 0] - pos[:, 0, 0]) / (spec.z_m[1] - spec.z_m[0])  # mm/m = mrad
    fit_slope = rec["slope_x_mrad"]
    d = (fit_slope - true_slope)[clean & ok & np.isfinite(fit_slope)]
    ang = 1.4826 * np.median(np.abs(d - np.median(d)))
    out = {
        "dp_over_p": float(core),
        "dp_over_p_rms": rms,
        "angle_resolution_mrad": float(ang),
        "efficiency": float(ok.mean()),
        "events_per_s": float(ev.size / dt),
        "events": int(ev.size),
        "bend_mrad": spec.bend_mrad,
        "material_x0": beamline.line_from_config(c).budget(),
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
