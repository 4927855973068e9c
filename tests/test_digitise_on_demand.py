"""The emulator's ``--digitise-on-demand``: a completed spill keeps no trigger primitives until a reader asks
for them; then they are the very numbers the crate would have digitised at completion, and what the crate
reports without them (``SPIL:INFO?``: particles, scalers, table) is the same."""

from __future__ import annotations

import numpy as np

from detector.config import load_config
from sim_frontend.beam import generate_spill
from sim_frontend.emulator import Emulator

TABLE = {"x_mm": 0.0, "y_mm": 0.0, "module": -1, "cell": "PHYSICS"}


def test_on_demand_primitives_equal_the_eager_ones():
    cfg = load_config(None)
    eager, lazy = Emulator(cfg, pty=False), Emulator(cfg, pty=False, digitise_on_demand=True)
    spill = generate_spill(cfg, 7, n_particles=3000, start_unix=1.8e9)
    vmon = eager.digitizer.nominal_vmon()
    vmon[5] += 40.0  # an HV snapshot that differs from the nominal one: the lazy record must keep it
    a = eager.process_spill(spill, TABLE, vmon)
    b = lazy.process_spill(spill, TABLE, vmon)
    vmon[5] -= 80.0  # the caller's array changes afterwards: the record digitises with its own snapshot
    assert a.primitives is not None and b.primitives is None and b.times is None
    assert b.info() == {**a.info(), "complete_unix": b.info()["complete_unix"]}
    prim, times = b.trigger_primitives()
    np.testing.assert_array_equal(prim, a.primitives)
    np.testing.assert_array_equal(times, a.times)
    assert prim.dtype == np.dtype("<i2") and times.dtype == np.dtype("<f8")
    assert b.trigger_primitives()[0] is prim  # digitised once
