"""Small "recorded runs" for the offline tests, made WITHOUT the emulator process.

The chain is the one the DAQ runs against the emulator, called in-process: beam truth
(``sim_frontend.beam.generate_spill``) -> detector response -> the crate's digitiser (trigger primitives of
every particle) -> the numba trigger (``trigger.kernels.trigger_waveforms``) -> full events of the accepted
records -> ``detector.spillfile.write_spill`` with the attributes the DAQ writes (``online/record_content.py`` +
``online/recorder.py``: crate_spill, start_unix, length_s, eot, scalers, triggers, trigger_menu, hv, table,
extra, flags, n_particles, n_seen, n_accepted, n_read_out) and a run record like the recorder's
(``config_toml``, ``trigger_menu``, ``calibration``, ``spills``, ``totals``).

Runs are cached per test session under the session's base temporary directory.
"""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np

from detector.config import Config, dump_toml, load_calibration, load_config
from detector.records import TRUTH_APRIME
from detector.runrecord import write_run_record
from detector.spillfile import SpillContent, run_dir, write_spill
from sim_frontend.beam import generate_spill
from sim_frontend.digitizer import Digitizer
from sim_frontend.response import apply_response, hardware_scalers
from trigger.kernels import trigger_waveforms
from trigger.menu import TriggerMenu

#: the visible test A' of the injected runs: m = 16.7 MeV, eps = 1 at its physical rate (recorded data are
#: never biased), about 6e-3 A' per beam electron
APRIME = {"enabled": True, "mass_mev": 16.7, "epsilon": 1.0}
PARTICLES = 30_000
START_UNIX = 1.7e9


def make_config(aprime: dict[str, Any] | None = None, seed: int = 4242, **offline: Any) -> Config:
    # a loose SRD tag (the default rejects soft upstream electrons) and the beam line without its vacuum pipes
    # (air all the way, 0.135 X0: docs/physics.md 1.10): these small runs then keep enough upstream-interacted
    # electrons in the box and the side bands to exercise the box count and the background fit
    return load_config(None).with_overrides(
        {
            "beam": {"seed": seed},
            "beamline": {"pipe_from_m": [], "pipe_to_m": []},
            "aprime": aprime or {},
            "offline": {"srd_min_gev": 0.001, **offline},
            "emulator": {"ecal_gain_spread": 0.02},  # an ECAL as calibrated as the calibration file says
        }
    )


def record_spill(
    rdir: pathlib.Path, cfg: Config, calib, menu: TriggerMenu, run: int, spill: int, n_particles: int
) -> dict[str, Any]:
    """Simulate, trigger and record one spill; returns the run-record entry."""
    start = START_UNIX + spill * cfg.spill.supercycle_s
    beam = generate_spill(cfg, spill, n_particles=n_particles, start_unix=start)
    dep = apply_response(beam, cfg)
    digi = Digitizer(cfg, calib)
    hv = digi.nominal_vmon()
    prims, times = digi.primitives(beam, dep, hv)
    res = trigger_waveforms(menu, prims, times)
    acc = res.accepted
    events = digi.events(beam, dep, acc, hv)
    scalers = res.scalers_with(hardware_scalers(dep, cfg.trigger.counter_threshold_mip))
    n = int(acc.size)
    attrs = {
        "crate_spill": spill,
        "start_unix": start,
        "length_s": float(cfg.spill.length_s),
        "eot": int(res.eot),
        "scalers": scalers,
        "triggers": res.triggers(),
        "trigger_menu": menu.to_dict(),
        "hv": {},
        "table": {},
        "extra": {"note": "tests/offline_fixtures.py"},
        "flags": [],
        "n_particles": beam.n,
        "n_seen": beam.n,
        "n_accepted": n,
        "n_read_out": n,
    }
    content = SpillContent(
        run,
        spill,
        acc.astype(np.uint32),
        res.mask.astype(np.uint8),
        times[acc].astype(np.float64),
        events,
        beam.truth[acc].copy(),
        attrs,
    )
    path = write_spill(rdir, content)
    return {
        "spill": spill,
        "crate_spill": spill,
        "start_unix": start,
        "length_s": attrs["length_s"],
        "n_particles": beam.n,
        "n_seen": beam.n,
        "n_accepted": n,
        "n_read_out": n,
        "n_recorded": n,
        "eot": int(res.eot),
        "flags": [],
        "scalers": scalers,
        "triggers": res.triggers(),
        "file": path.name,
        "truth": True,
        "truth_counts": {"particles": beam.n, "aprime": int(((beam.truth["flags"] & TRUTH_APRIME) != 0).sum())},
    }


def make_run(
    out: str | pathlib.Path, run: int, cfg: Config, n_spills: int = 3, n_particles: int = PARTICLES
) -> pathlib.Path:
    """A recorded run directory ``out/run-<run>`` with ``n_spills`` spill files and a run record."""
    calib = load_calibration(cfg)
    menu = TriggerMenu.from_config(cfg, calib)
    rdir = run_dir(out, run)
    rdir.mkdir(parents=True, exist_ok=True)
    entries = [record_spill(rdir, cfg, calib, menu, run, s, n_particles) for s in range(1, n_spills + 1)]
    record = {
        "schema_version": 1,
        "run": run,
        "config_toml": dump_toml(cfg),
        "trigger_menu": menu.to_dict(),
        "calibration": {"source": calib.source, "t0_ns": np.asarray(calib.t0_ns).tolist()},
        "spills": entries,
        "in_flight": None,
        "flags": [],
        "totals": {
            "spills": len(entries),
            "eot": sum(e["eot"] for e in entries),
            "events_recorded": sum(e["n_recorded"] for e in entries),
            "particles": sum(e["n_particles"] for e in entries),
        },
    }
    write_run_record(rdir, record)
    return rdir


def cached_run(
    base: pathlib.Path, name: str, run: int, cfg: Config, n_spills: int = 3, n_particles: int = PARTICLES
) -> pathlib.Path:
    """:func:`make_run` once per session (the run record is written last: its presence marks a finished run)."""
    out = pathlib.Path(base) / name
    rdir = run_dir(out, run)
    if (rdir / "run.json").exists():
        return rdir
    return make_run(out, run, cfg, n_spills, n_particles)


def injected_run(base: pathlib.Path) -> pathlib.Path:
    """3 spills x 3e4 particles with the visible test A' (about 100 A' per spill)."""
    return cached_run(base, "injected", 1, make_config(APRIME, seed=1001))


def plain_run(base: pathlib.Path) -> pathlib.Path:
    """3 spills x 3e4 particles, no A'."""
    return cached_run(base, "plain", 2, make_config(None, seed=2002))
