"""Imported once by the tests' fork server (tests/launcher.py), before it forks any emulator or DAQ: the modules
of ``na64-emulator`` and ``na64-daq`` and their numba kernels, loaded as each program loads them at start-up.

Nothing here binds a socket, opens a pty, starts a thread or a ZeroMQ context, or starts numba's threading
layer (a forked child could not use any of them). A failure is kept in :data:`STATE` instead of raised (an
exception would end the fork server): every launched program then imports and loads what it needs itself, and
the launcher's own test (tests/test_launcher.py) fails on it.
"""

from __future__ import annotations

import threading
import traceback

#: "ok", or what went wrong (the programs still start, only slower)
STATE = "not run"


def _preload() -> None:
    import sim_frontend.cli  # noqa: F401 - the emulator's entry point and what it imports at start
    from detector.config import load_calibration, load_config
    from online import daq_cli, export, publisher, recorder, spill_report  # noqa: F401 - the DAQ's lazy imports
    from online.daq import DAQ  # noqa: F401
    from online.kernels import prepare_kernels
    from online.msadc import MSADCError  # noqa: F401
    from sim_frontend.emulator import Emulator

    prepare_kernels()  # the DAQ's kernels
    cfg = load_config(None)
    Emulator(cfg, load_calibration(cfg), pty=False).warm_up()  # the emulator's spill chain; no server bound


try:
    _preload()
    from numba.np.ufunc import parallel as _nb_parallel

    if threading.active_count() != 1:
        STATE = f"the preload left {threading.active_count() - 1} thread(s) running"
    elif getattr(_nb_parallel, "_is_initialized", True):
        STATE = "the preload started numba's threading layer (a forked child could not run a parallel region)"
    else:
        STATE = "ok"
except Exception:  # noqa: BLE001 - kept for the launcher's test; the fork server must go on
    STATE = "failed:\n" + traceback.format_exc()
