"""A program for tests/test_launcher.py, started by tests/launcher.py: ``main([report, mode])`` writes what it
finds about its own process to the JSON file ``report``, then behaves as ``mode`` says."""

from __future__ import annotations

import atexit
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path


def main(argv: Sequence[str]) -> int:
    report, mode = Path(argv[0]), argv[1]
    import launch_preload
    from numba.np.ufunc import parallel

    facts = {
        "pid": os.getpid(),
        "sid": os.getsid(0),
        "pgid": os.getpgid(0),
        "cwd": os.getcwd(),
        "argv": sys.argv,
        "probe_env": os.environ.get("NA64_PROBE"),
        "stdin": os.readlink("/proc/self/fd/0"),
        "preload": launch_preload.STATE,
        "daq_loaded": "online.daq" in sys.modules and "sim_frontend.emulator" in sys.modules,
        "numba_threads_started": parallel._is_initialized,
    }
    if mode == "big-file":
        try:
            (report.parent / "big").write_bytes(b"x" * 100_000)
            facts["big_file"] = "written"
        except OSError as exc:
            facts["big_file"] = exc.errno
    report.write_text(json.dumps(facts))
    atexit.register(lambda: print("atexit ran", flush=True))
    print("to stdout", flush=True)
    print("to stderr", file=sys.stderr, flush=True)
    if mode == "raise":
        raise RuntimeError("the probe fails")
    if mode == "sleep":
        while True:
            time.sleep(1)
    return int(mode) if mode.isdigit() else 0
