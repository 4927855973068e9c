"""``na64-emulator``: the hardware of the bench, emulated, on loopback.

Run ``na64-emulator --help`` for the description of the bench and the options.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DESCRIPTION = """\
Stand-in for the NA64 hardware, for development and CI. One process serves:

  MSADC crate    SCPI over a raw TCP socket: VISA resource TCPIP::127.0.0.1::<port>::SOCKET
                 (read/write termination "\\n"; docs/protocols.md section 1). Buffers the last
                 emulator.spill_buffer completed spills: trigger primitives, accepted list, events.
  HV mainframe   CAEN-style ASCII over a pty and over socket://127.0.0.1:<port> (section 2).
                 Channel gains follow VMON (PMT gain law), so HV changes show in the data.
  HCAL table     ASCII over a pty and over socket://127.0.0.1:<port> (section 3).
  beam feed      ZeroMQ PULL (bound) receiving simulated spills (section 4.1). Unless
                 --external-feed, a child process simulates one spill per SPS supercycle
                 (spill.length_s of beam every spill.supercycle_s) and feeds it.
  control        ZeroMQ REP, JSON (section 4.3): ping, state, fault, clear_faults, trip,
                 hv_log, truth.

All servers bind 127.0.0.1 on free ports unless endpoints.*_port say otherwise. Once every server
listens, the addresses are written as JSON to --endpoints-file (atomically) with the keys
msadc, msadc_port, hv, hv_pty, table, table_pty, feed, control, pid (removed again at a clean exit).
Before that, the spill chain (numba kernels) is run once, so the first start after a code change may
take a while. Runs until SIGINT or SIGTERM, then closes every socket, pty and child process.
"""

EPILOG = """\
faults (docs/protocols.md section 5), --fault endpoint:kind[:value], repeatable:
  msadc:delay:<s>  msadc:no_reply[:<n>]  msadc:drop  msadc:truncate  msadc:corrupt
  hv|table:delay:<s>  hv|table:no_reply[:<n>]  hv|table:drop  hv|table:noise[:<n>]
  hv:trip:<channel id or name>  feed:stall:<s>

examples:
  na64-emulator --endpoints-file /tmp/bench.json
  na64-emulator --particles 2e4 --spills 10 --fault msadc:delay:0.2
  na64-emulator --external-feed --endpoints-file /tmp/bench.json   # you push spills yourself
"""

log = logging.getLogger("na64-emulator")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="na64-emulator",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--config", metavar="FILE", help="TOML configuration (default: the built-in defaults, config/default.toml)"
    )
    p.add_argument(
        "--endpoints-file", metavar="PATH", help="write the addresses of all servers here as JSON once they listen"
    )
    p.add_argument(
        "--external-feed",
        action="store_true",
        help="do not simulate the beam; wait for spills pushed to the feed endpoint",
    )
    p.add_argument(
        "--spills",
        type=int,
        metavar="N",
        help="spills to simulate, then stop the feed (overrides spill.count; 0 = forever)",
    )
    p.add_argument(
        "--particles",
        type=float,
        metavar="N",
        help="particles per spill (overrides beam.particles_per_spill; e.g. 2e4 for tests)",
    )
    p.add_argument("--seed", type=int, metavar="S", help="beam seed (overrides beam.seed)")
    p.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="ENDPOINT:KIND[:VALUE]",
        help="inject a fault at start (repeatable; see below)",
    )
    p.add_argument("--no-pty", action="store_true", help="serve HV and table over TCP only (no ptys)")
    p.add_argument(
        "--digitise-on-demand",
        action="store_true",
        help="digitise a spill's trigger primitives when they are first read, not at completion "
        "(a spill nobody reads costs no digitisation)",
    )
    p.add_argument(
        "--block-timeout",
        type=float,
        default=1.0,
        metavar="S",
        help="silence after which an incomplete binary upload to the crate is truncated (-160); default 1.0 s",
    )
    p.add_argument(
        "--parent-pid",
        type=int,
        metavar="PID",
        help="shut down when process PID ends (test fixtures pass their own pid)",
    )
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return p


def write_endpoints(path: str | os.PathLike[str], endpoints: dict[str, Any]) -> None:
    """Write the endpoints JSON atomically (temporary file in the same directory, fsync, rename)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(endpoints, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        stream=sys.stderr,
        format="%(asctime)s na64-emulator[%(process)d] %(levelname)s %(name)s: %(message)s",
    )
    from detector.config import ConfigError, load_calibration, load_config

    from .emulator import Emulator, override_config, parse_fault

    try:
        cfg = load_config(args.config)
        cfg = override_config(
            cfg,
            spills=args.spills,
            particles=args.particles,
            seed=args.seed,
            external_feed=True if args.external_feed else None,
        )
        faults = [parse_fault(f) for f in args.fault]
        calibration = load_calibration(cfg)
    except (ConfigError, ValueError, KeyError) as exc:
        print(f"na64-emulator: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2

    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %s: shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    try:
        emu = Emulator(
            cfg,
            calibration,
            pty=not args.no_pty,
            faults=faults,
            block_timeout_s=args.block_timeout,
            digitise_on_demand=args.digitise_on_demand,
        )
    except (ValueError, KeyError) as exc:
        print(f"na64-emulator: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    try:
        endpoints = emu.start()  # forks the beam-feed child while no other thread runs (Emulator._fork_child)
    except OSError as exc:
        print(f"na64-emulator: cannot start the servers: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # a fault with a bad parameter
        print(f"na64-emulator: {exc}", file=sys.stderr)
        return 2
    if args.parent_pid:
        threading.Thread(target=_watch_parent, args=(args.parent_pid, stop), daemon=True).start()
    try:
        if args.endpoints_file:
            write_endpoints(args.endpoints_file, endpoints)
        log.info("serving: %s", json.dumps(endpoints))
        while not stop.wait(0.5):
            pass
    finally:
        emu.stop()
        if args.endpoints_file:
            _remove_own_endpoints(args.endpoints_file)
        log.info("stopped")
    return 0


def _watch_parent(pid: int, stop: threading.Event) -> None:
    """Set ``stop`` once process ``pid`` no longer exists."""
    while not stop.wait(0.5):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            log.warning("parent process %d is gone: shutting down", pid)
            stop.set()
        except PermissionError:
            pass


def _remove_own_endpoints(path: str) -> None:
    """Remove the endpoints file at exit if it is still ours (another emulator may have replaced it)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if data.get("pid") == os.getpid():
            os.unlink(path)
    except (OSError, ValueError, AttributeError):
        pass


if __name__ == "__main__":
    sys.exit(main())
