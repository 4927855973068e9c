"""How often hadron photoproduction in the beam-line material behind the dipoles would fake a signal-box event.

A calculation (docs/physics.md 1.10, "Hadron production in the line material"), not part of the simulation:
Pythia events e- N -> e- X (``gen.cc``; energy transfer nu > ~49 GeV) are placed at every step of the configured
beam line behind the last dipole and their final-state particles are followed in straight lines to the
configured calorimeters. An event counts as box-like when the electromagnetic energy entering the ECAL face is
between 0.5 GeV and the box's E_ECAL edge (the scattered electron and photons: the trigger's PS and ECAL
conditions and the box) and no particle above the box's E_HCAL edge would be seen by the HCAL veto (a hadron or
muon entering the ECAL or the HCAL face, an electron or photon on the HCAL face beside the ECAL). Nothing else
of the selection is applied (tracker, SRD, shower shape, V2, pile-up), and an optional square V1 with a square
hole vetoes charged particles crossing it: V1's size is not in the configuration (docs/physics.md 1.2).

Usage: python docs/calc/line_photoproduction/score.py EVENTS.txt [EVENTS.txt ...] [--v1 HOLE_M HALF_M]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from detector.config import Config, load_config
from sim_frontend import beamline, geometry, processes

AVOGADRO = 6.022e23
#: carbon-like line material (Mylar, Kapton, plastic scintillator, air are within ~15% of it per X0): X0 in g/cm^2, A
X0_G_CM2, A_NUCLEUS = 42.7, 12.0
#: photoproduction on nuclei ~ A^0.91 x that on a nucleon at these energies (UNSURE: shadowing, recalled)
SHADOWING_POWER = 0.91
E_ECAL_MIN_GEV = 0.5  #: below it the trigger's preshower and ECAL conditions are taken as failed
NEUTRINOS = (12, 14, 16)
N_ROTATIONS = 16


def read_events(paths: list[Path]) -> tuple[np.ndarray, float, int]:
    """Particles (event, pdg, E, tx, ty, charge) of the files, the mean cross-section per nucleon [mb] and the
    number of events."""
    rows: list[list[float]] = []
    sigmas: list[float] = []
    n_events = 0
    for path in paths:
        index: dict[int, int] = {}  # the generator's event numbers skip the events Pythia failed to make
        for line in path.read_text().splitlines():
            if line.startswith("# sigmaGen_mb"):
                sigmas.append(float(line.split()[2]))
                continue
            fields = line.split()
            if len(fields) != 7 or not line[0].isdigit():
                continue
            event, pdg, e, px, py, pz, charge = (float(f) for f in fields)
            k = index.setdefault(int(event), n_events + len(index))
            if abs(int(pdg)) in NEUTRINOS or pz <= 0.0:
                continue
            rows.append([k, pdg, e, px / pz, py / pz, charge])
        n_events += len(index)
    if not sigmas:
        raise SystemExit("no '# sigmaGen_mb' line: the generator did not finish")
    return np.array(rows), float(np.mean(sigmas)), n_events


def interaction_points(cfg_path: str | None) -> list[tuple[str, float, float]]:
    """(what, z [m], X0) of the material behind the last dipole; gas gaps cut into 0.25 m slices."""
    cfg = load_config(cfg_path)
    line = beamline.line_from_config(cfg)
    z_last = max(cfg.beamline.magnet_z_m) + 0.5 * max(cfg.beamline.magnet_length_m)
    names = dict(zip(cfg.beamline.layer_z_m, cfg.beamline.layer_names, strict=True))
    points: list[tuple[str, float, float]] = []
    for kind, z, t in zip(line.kind, line.z_m, line.t_x0, strict=True):
        if z <= z_last or t <= 0.0:
            continue
        if kind == beamline.STEP_GAS:
            length = t * cfg.beamline.gap_x0_m
            n = max(1, math.ceil(length / 0.25))
            for k in range(n):
                points.append(("gas", z - 0.5 * length + (k + 0.5) * length / n, t / n))
        else:
            points.append((names.get(float(z), "window"), float(z), float(t)))
    return points


def box_fraction(
    p: np.ndarray, n_events: int, z: float, cfg: Config, v1: tuple[float, float] | None, rng: np.random.Generator
) -> float:
    """Fraction of the events, produced at z [m], that look like a box event (module docstring)."""
    ev = p[:, 0].astype(np.int64)
    pdg, e, tx, ty, charge = np.abs(p[:, 1]).astype(np.int64), p[:, 2], p[:, 3], p[:, 4], p[:, 5]
    em = np.isin(pdg, (11, 22))
    ecal_z = cfg.beamline.ecal_z_m
    e_box, e_veto = cfg.offline.ecal_box_max_gev, cfg.offline.hcal_box_max_gev
    hcal_z = ecal_z + processes.ECAL_LENGTH_M + processes.HCAL_DIST_M
    half_h = geometry.HCAL_HALF_MM * 1e-3
    total = 0.0
    for _ in range(N_ROTATIONS):  # the events are symmetric in azimuth, the detectors are not
        phi = rng.uniform(0.0, 2.0 * np.pi, n_events)[ev]
        rx, ry = np.cos(phi) * tx - np.sin(phi) * ty, np.sin(phi) * tx + np.cos(phi) * ty
        xe, ye = rx * (ecal_z - z) * 1e3, ry * (ecal_z - z) * 1e3
        in_ecal = (
            (xe > geometry.ECAL_LO_X)
            & (xe < geometry.ECAL_HI_X)
            & (ye > geometry.ECAL_LO_Y)
            & (ye < geometry.ECAL_HI_Y)
        )
        in_hcal = (np.abs(rx * (hcal_z - z)) < half_h) & (np.abs(ry * (hcal_z - z)) < half_h)
        seen = np.where(em, ~in_ecal & in_hcal, in_ecal | in_hcal) & (e > e_veto)
        if v1 is not None:
            hole, half = v1
            ax, ay = np.abs(rx * (ecal_z - z)), np.abs(ry * (ecal_z - z))
            seen |= (charge != 0) & (ax < half) & (ay < half) & ~((ax < hole) & (ay < hole))
        e_ecal = np.bincount(ev, weights=np.where(em & in_ecal, e, 0.0), minlength=n_events)
        vetoed = np.bincount(ev, weights=seen.astype(float), minlength=n_events) > 0
        total += float(np.mean((e_ecal > E_ECAL_MIN_GEV) & (e_ecal < e_box) & ~vetoed))
    return total / N_ROTATIONS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("events", nargs="+", type=Path)
    ap.add_argument("--config", default=None, help="configuration file (default: the project's)")
    ap.add_argument("--v1", nargs=2, type=float, metavar=("HOLE_HALF_M", "HALF_M"), default=None)
    ap.add_argument("--eot", type=float, default=4.3e10)
    args = ap.parse_args()
    particles, sigma_mb, n_events = read_events(args.events)
    per_x0 = AVOGADRO * X0_G_CM2 / A_NUCLEUS * A_NUCLEUS**SHADOWING_POWER * sigma_mb * 1e-27
    cfg = load_config(args.config)
    rng = np.random.default_rng(1)
    print(
        f"{n_events} events, sigma(e N -> e X, W > 9.6 GeV) = {sigma_mb * 1e3:.3f} ub per nucleon, "
        f"{per_x0:.3e} interactions per X0"
    )
    print(f"{'what':8s} {'z [m]':>7s} {'X0':>9s} {'P(box)':>9s} {'events':>10s}")
    total = 0.0
    for what, z, t in interaction_points(args.config):
        f = box_fraction(particles, n_events, z, cfg, args.v1, rng)
        n = args.eot * t * per_x0 * f
        total += n
        print(f"{what:8s} {z:7.2f} {t:9.2e} {f:9.2e} {n:10.3g}")
    print(f"total for {args.eot:.3g} EOT: {total:.3g} events (V1: {args.v1 or 'none'})")


if __name__ == "__main__":
    main()
