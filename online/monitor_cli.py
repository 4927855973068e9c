"""``na64-monitor``: the control-room monitor of the NA64 DAQ (docs/protocols.md 4.2).

Examples::

    na64-monitor                                      # subscribe to endpoints.monitor of the default config
    na64-monitor --connect tcp://127.0.0.1:5556
    na64-monitor --replay data/run-000007 --replay-interval 0.5
    na64-monitor --synthetic                          # built-in synthetic DAQ, no socket
    na64-monitor --synthetic --screenshot /tmp/m.png --exit-after 3
"""

from __future__ import annotations

import argparse
import logging
import os
import pathlib
import sys
from typing import cast

from detector.cli_types import nonnegative_float

DESCRIPTION = """\
Control-room monitor of the NA64 DAQ. Shows run/spill/DAQ state, rates per spill (S0, S1, V0, every
trigger raw and accepted, EOT), ECAL and HCAL maps (energy or occupancy; click a cell for its
waveforms), E_ECAL vs E_HCAL with the signal box, HV channels, alarms (rate drop / no beam, HV trip,
DAQ stalled or in ERROR, missed or malformed messages) with a log pane, and the expected epsilon reach
for the EOT accumulated so far.

Data come live from the DAQ's ZeroMQ PUB stream (--connect, default: endpoints.monitor of the config),
from a recorded run (--replay), or from a built-in synthetic DAQ (--synthetic). The sensitivity view
reads the JSON written by `na64-offline yields --json` (monitor.yields_file or --yields):
eps_90 = sqrt(2.3 / (EOT x efficiency x yield_per_eot_eps1)), efficiency from config
monitor.signal_efficiency if present, else 0.5 (--efficiency overrides)."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="na64-monitor", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", metavar="FILE", help="TOML config (default: built-in defaults, config/default.toml)")
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--connect",
        metavar="ENDPOINT",
        help="ZeroMQ PUB address of the DAQ's monitoring stream, e.g. tcp://127.0.0.1:5556 "
        "(default: endpoints.monitor of the config)",
    )
    src.add_argument("--replay", metavar="RUN_DIR", help="replay a recorded run directory through the same views")
    src.add_argument("--synthetic", action="store_true", help="show a built-in synthetic DAQ stream (no socket)")
    p.add_argument(
        "--replay-interval",
        type=nonnegative_float,
        default=0.5,
        metavar="S",
        help="seconds between replayed (or synthetic) spills (default %(default)s)",
    )
    p.add_argument(
        "--yields", metavar="FILE", help="yields JSON for the sensitivity view (overrides monitor.yields_file)"
    )
    p.add_argument("--efficiency", type=float, metavar="X", help="signal efficiency for the sensitivity (default 0.5)")
    p.add_argument(
        "--screenshot",
        metavar="PNG",
        help="write a PNG of the whole window after --exit-after seconds (default 3 s) and exit",
    )
    p.add_argument("--exit-after", type=nonnegative_float, metavar="S", help="quit after S seconds (exit status 0)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def _need_offscreen(args: argparse.Namespace) -> bool:
    if os.environ.get("QT_QPA_PLATFORM"):
        return False
    return not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logger = logging.getLogger("online.monitor")
    if args.efficiency is not None and not 0 < args.efficiency <= 1:
        print("na64-monitor: --efficiency must be in (0, 1]", file=sys.stderr)
        return 2
    if args.replay and not pathlib.Path(args.replay).is_dir():
        print(f"na64-monitor: --replay {args.replay}: no such run directory", file=sys.stderr)
        return 2
    if _need_offscreen(args):
        # must happen before Qt is imported (docs/stack.md)
        if not args.screenshot and args.exit_after is None:
            logger.warning("no display: using the offscreen Qt platform")
        os.environ["QT_QPA_PLATFORM"] = "offscreen"

    from detector.config import ConfigError, load_config

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"na64-monitor: {exc}", file=sys.stderr)
        return 2

    from PyQt5 import QtCore, QtWidgets

    from .monitor import model as M
    from .monitor.views import apply_dark_theme
    from .monitor.window import MonitorWindow

    settings = M.MonitorSettings.from_config(cfg)
    if args.yields:
        settings.yields_file = args.yields
    if args.efficiency is not None:
        settings.efficiency = args.efficiency
    app = cast(QtWidgets.QApplication, QtWidgets.QApplication.instance() or QtWidgets.QApplication(sys.argv[:1]))
    apply_dark_theme(app)
    win = MonitorWindow(settings)
    if win.model.sensitivity.error:  # a file given but unusable is worth a warning; none configured is not
        log = logger.warning if win.model.sensitivity.path else logger.info
        log("sensitivity view: %s", win.model.sensitivity.error)
    if args.replay:
        win.start_replay(args.replay, cfg, args.replay_interval)
    elif args.synthetic:
        win.start_synthetic(args.replay_interval)
    else:
        win.connect_stream(args.connect or cfg.endpoints.monitor)
    win.show()
    win.start_timer()
    status = {"code": 0}
    exit_after = args.exit_after if args.exit_after is not None else (3.0 if args.screenshot else None)

    def finish() -> None:
        if args.screenshot:
            if win.screenshot(args.screenshot):
                logger.info("screenshot written to %s", args.screenshot)
            else:
                logger.error("could not write the screenshot %s", args.screenshot)
                status["code"] = 1
        win.close()
        app.quit()

    if exit_after is not None:
        QtCore.QTimer.singleShot(int(exit_after * 1000), finish)
    app.exec_()
    win.close()
    win.stop_sources()
    return status["code"]


if __name__ == "__main__":
    sys.exit(main())
