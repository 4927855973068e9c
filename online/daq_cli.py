"""``na64-daq``: run control of the NA64 bench (the spill loop of :mod:`online.daq`).

Exit status: 0 after a normal stop (N spills, SIGINT or SIGTERM: the spill in hand is finished first),
1 when the run cannot go on (crate unreachable at start, run directory locked or unreadable), 2 for bad
command-line arguments or configuration.
"""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

from detector.cli_types import nonnegative_float

DESCRIPTION = """\
Run control of the NA64 bench. Connects to the MSADC crate (VISA) and the HV supplies (read-back only),
then per spill: waits for the end of the spill, reads the trigger primitives, runs the trigger, uploads
the accepted list, reads the events out (at most daq.max_events_per_spill), writes
DIR/run-<number>/spill-<n>.h5 atomically, appends to the run record DIR/run-<number>/spills.jsonl (summary:
run.json) and publishes monitoring data on ZeroMQ PUB (--monitor).
"""

EPILOG = """\
examples:
  na64-emulator --endpoints-file /tmp/bench.json &
  na64-daq run --endpoints-file /tmp/bench.json --out data --spills 10
  na64-daq run --config my.toml --endpoints-file /tmp/bench.json --out data --run 7   # continue run 7
  na64-daq run --endpoints-file /tmp/bench.json --out data --calibration-mode --monitor tcp://127.0.0.1:5560
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="na64-daq", description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser(
        "run",
        help="run the spill loop",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument("--config", metavar="FILE", help="TOML configuration (default: the built-in defaults)")
    r.add_argument(
        "--endpoints-file",
        metavar="PATH",
        required=True,
        help="JSON with the addresses of the hardware (written by na64-emulator --endpoints-file)",
    )
    r.add_argument("--out", metavar="DIR", required=True, help="data directory (runs go to DIR/run-<number>/)")
    r.add_argument(
        "--spills",
        type=int,
        metavar="N",
        help="stop after N spills, recorded or flagged lost (default: until SIGINT/SIGTERM)",
    )
    r.add_argument(
        "--run",
        type=int,
        metavar="NUMBER",
        help="run number (default: one above the highest in DIR); an existing run is continued",
    )
    r.add_argument(
        "--monitor",
        metavar="ADDRESS",
        help="ZeroMQ PUB address of the monitoring stream (default: endpoints.monitor of the config)",
    )
    r.add_argument(
        "--calibration-mode",
        action="store_true",
        help="beam trigger unprescaled; publish the amplitudes topic for hv-tune",
    )
    r.add_argument(
        "--calibration-request",
        metavar="PATH",
        help='calibration mode: JSON file naming the cell a campaign wants ({"cell": ...}); only spills '
        "with the table on that cell are read out, the others are recorded as skipped_off_cell (default: every spill)",
    )
    r.add_argument("--no-hv", action="store_true", help="do not read the HV back")
    r.add_argument(
        "--curve-secret",
        metavar="FILE",
        help="ZeroMQ CURVE server certificate (needed with endpoints.zmq_curve for a non-loopback --monitor)",
    )
    r.add_argument(
        "--wait-endpoints",
        type=nonnegative_float,
        default=10.0,
        metavar="SECONDS",
        help="wait this long for the endpoints file to appear (default 10)",
    )
    r.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    r.add_argument("--quiet", action="store_true", help="no per-spill progress lines")
    e = sub.add_parser(
        "export",
        help="convert a recorded run's raw data (waveforms, truth) to ROOT",
        description="Write the raw events of a recorded run (waveforms, trigger masks, times, "
        "truth) and a per-spill tree to one ROOT file with uproot. For the "
        "reconstructed analysis ntuple use `na64-offline export`.",
    )
    e.add_argument("run_dir", metavar="RUN_DIR")
    e.add_argument("--out", metavar="FILE.root", required=True)
    e.add_argument("--force", action="store_true", help="replace FILE.root if it exists")
    e.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return p


def _export(args: argparse.Namespace) -> int:
    from detector.spillfile import SpillFileError

    from .export import export_run

    try:
        export_run(args.run_dir, args.out, overwrite=args.force)
    except (SpillFileError, OSError, ValueError) as exc:
        print(f"na64-daq export: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}")
    return 0


def _read_endpoints(path: str, wait_s: float) -> dict[str, Any]:
    p = pathlib.Path(path)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
            break
        except FileNotFoundError:
            if time.monotonic() > deadline:
                raise ValueError(
                    f"{p}: endpoints file not found (is na64-emulator running with --endpoints-file {p}?)"
                ) from None
            time.sleep(0.1)
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{p}: cannot read the endpoints file ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("msadc"), str):
        raise ValueError(f"{p}: endpoints file has no 'msadc' VISA resource")
    return data


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        stream=sys.stderr,
        format="%(asctime)s na64-daq[%(process)d] %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "export":
        return _export(args)
    from detector.config import ConfigError, load_calibration, load_config

    from .publisher import PublisherError
    from .recorder import RecorderError, next_run_number

    if args.spills is not None and args.spills < 1:
        print("na64-daq: --spills must be at least 1", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.config)
        calibration = load_calibration(cfg)
        endpoints = _read_endpoints(args.endpoints_file, args.wait_endpoints)
    except (ConfigError, ValueError) as exc:
        print(f"na64-daq: {exc}", file=sys.stderr)
        return 2
    keys = None
    if args.curve_secret:
        import zmq.auth

        try:
            pub, sec = zmq.auth.load_certificate(args.curve_secret)
        except (OSError, ValueError) as exc:
            print(f"na64-daq: cannot load CURVE certificate {args.curve_secret}: {exc}", file=sys.stderr)
            return 2
        if sec is None:
            print(f"na64-daq: {args.curve_secret} holds no secret key", file=sys.stderr)
            return 2
        keys = (pub, sec)
    run = args.run if args.run is not None else next_run_number(args.out)
    if run < 0:
        print("na64-daq: --run must be >= 0", file=sys.stderr)
        return 2

    from .daq import DAQ
    from .msadc import MSADCError
    from .spill_report import OperatorConsole

    console = None if args.quiet else OperatorConsole(highlight=False, soft_wrap=True)
    try:
        daq = DAQ(
            cfg,
            calibration,
            endpoints,
            args.out,
            run=run,
            monitor=args.monitor,
            calibration_mode=True if args.calibration_mode else None,
            max_spills=args.spills,
            console=console,
            argv=list(sys.argv if argv is None else ["na64-daq", *argv]),
            hv=not args.no_hv,
            curve_keys=keys,
            calibration_request=args.calibration_request,
        )
    except (ConfigError, ValueError) as exc:
        print(f"na64-daq: {exc}", file=sys.stderr)
        return 2

    def on_signal(signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if daq.stopping:
            logging.getLogger("na64-daq").warning("%s again: still finishing the spill in hand", name)
        else:
            logging.getLogger("na64-daq").info("%s: finishing the spill in hand, then stopping", name)
        daq.stop(name)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        status = daq.run()
    except (RecorderError, PublisherError, MSADCError) as exc:
        print(f"na64-daq: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # e.g. the data disk is full: nothing more can be recorded
        print(f"na64-daq: cannot record: {exc}", file=sys.stderr)
        return 1
    return status  # the run's summary is the DAQ's last log line (DAQ.close)


if __name__ == "__main__":
    sys.exit(main())
