"""Physics-trigger rate per spill of recorded (unbiased) data and its composition by true particle type and
process: the emulator's chain run in-process -- beam truth (:func:`sim_frontend.beam.generate_spill`,
unbiased as the emulator feeds it), detector response, the crate's digitiser primitives and the numba
trigger (:func:`trigger.kernels.trigger_waveforms`) -- with the truth of every accepted record.

``python -m offline.trigger_rate --particles 5e6 [--config FILE] [--spill N] [--json FILE]``
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from typing import Any

import numpy as np

from detector import records as rc
from detector.config import Config, load_calibration, load_config
from detector.records import PARTICLE_NAMES, TRIGGER_BITS

_PROCESSES = (
    (rc.TRUTH_APRIME, "aprime"),
    (rc.TRUTH_DIMUON, "dimuon"),
    (rc.TRUTH_HADRONIC, "interaction"),
    (rc.TRUTH_BEAMLINE, "beamline"),
)


def process_label(ptype: int, flags: int) -> str:
    """``<particle>[:<process>]`` of one record: dimuon, A', hadronic interaction (or hard muon
    interaction, electroproduction), bremsstrahlung in the beam-line material (more than 5% radiated),
    pile-up; the first that applies."""
    name = PARTICLE_NAMES.get(int(ptype), f"type{int(ptype)}")
    for bit, label in _PROCESSES:
        if flags & bit:
            return f"{name}:{label}"
    return f"{name}:pileup" if flags & rc.TRUTH_PILEUP else name


def physics_trigger_composition(cfg: Config, n_particles: int, spill: int = 1) -> dict[str, Any]:
    """Trigger counts of one unbiased spill of ``n_particles`` and the composition of its physics triggers."""
    from sim_frontend.beam import generate_spill
    from sim_frontend.digitizer import Digitizer
    from sim_frontend.response import apply_response
    from trigger.kernels import trigger_waveforms
    from trigger.menu import TriggerMenu

    calib = load_calibration(cfg)
    beam = generate_spill(cfg, spill, n_particles=n_particles, start_unix=0.0)
    dep = apply_response(beam, cfg)
    digi = Digitizer(cfg, calib)
    prims, times = digi.primitives(beam, dep, digi.nominal_vmon())
    res = trigger_waveforms(TriggerMenu.from_config(cfg, calib), prims, times)
    phys = res.accepted[(res.mask & TRIGGER_BITS["physics"]) != 0]
    truth = beam.truth[phys]
    labels = Counter(process_label(p, f) for p, f in zip(truth["ptype"], truth["flags"]))
    return {
        "particles": int(beam.n),
        "eot": int(res.eot),
        "triggers": {k: {kk: int(vv) for kk, vv in v.items()} for k, v in res.triggers().items()},
        "physics": int(phys.size),
        "physics_by_type": {
            PARTICLE_NAMES[int(c)]: int(n) for c, n in zip(*np.unique(truth["ptype"], return_counts=True))
        },
        "physics_by_process": dict(labels.most_common()),
        "weights": sorted({float(w) for w in np.unique(beam.truth["weight"])}),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m offline.trigger_rate", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=None, help="configuration TOML (default: the built-in defaults)")
    p.add_argument(
        "--particles", type=float, default=None, help="particles per spill (default beam.particles_per_spill)"
    )
    p.add_argument("--spill", type=int, default=1)
    p.add_argument("--json", default=None, help="write the result here (default: stdout)")
    a = p.parse_args(argv)
    cfg = load_config(a.config)
    n = int(cfg.beam.particles_per_spill if a.particles is None else a.particles)
    out = json.dumps(physics_trigger_composition(cfg, n, a.spill), indent=2)
    if a.json:
        with open(a.json, "w") as f:
            f.write(out + "\n")
    else:
        print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
