"""What the command-line tools of a calibration campaign (``hv-tune``, ``ecal-calib``) share: the hardware
session (HV supply, table, the child calibration DAQ and its monitoring stream; table homed and DAQ stopped
at the end, whatever happened), SIGTERM/SIGHUP handling and the per-cell progress bar (rich)."""

from __future__ import annotations

import contextlib
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from detector.config import Calibration
from detector.settings import Config

from .campaign import (
    CampaignInterrupted,
    CellCampaign,
    MappingMismatch,
    signals_interrupt,
    start_daq,
    stop_daq,
)
from .stream import StreamAmplitudes
from .supply import HVSupply
from .table import HCALTableDriver, TableError

DAQ_READY_TIMEOUT_S = 300.0  #: a first DAQ start compiles the numba kernels (cold cache)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def daq_command(
    endpoints_file: str, out: pathlib.Path, address: str, config: str | None, request: pathlib.Path
) -> list[str]:
    """``na64-daq run --calibration-mode`` reading out only spills on the requested cell (``request``)."""
    exe = shutil.which("na64-daq", path=str(pathlib.Path(sys.executable).parent)) or shutil.which("na64-daq")
    cmd = [exe] if exe else [sys.executable, "-m", "online.daq_cli"]
    # the HV serial line has one owner, the campaign: the child DAQ must not read the HV back over it
    cmd += [
        "run",
        "--endpoints-file",
        endpoints_file,
        "--out",
        str(out),
        "--calibration-mode",
        "--calibration-request",
        str(request),
        "--no-hv",
        "--monitor",
        address,
    ]
    if config:
        cmd += ["--config", config]
    return cmd


def launch_daq(
    endpoints_file: str, out: pathlib.Path, config: str | None, request: pathlib.Path
) -> tuple[subprocess.Popen, str]:
    """Start the child calibration DAQ; returns it and its monitoring stream address."""
    out.mkdir(parents=True, exist_ok=True)
    address = f"tcp://127.0.0.1:{free_port()}"
    return start_daq(daq_command(endpoints_file, out, address, config, request), out / "na64-daq.log"), address


EXIT_USAGE, EXIT_PAUSED = 2, 3  #: exit codes of a campaign tool: bad arguments; paused or stopped safely


def stopped_message(signame: str, state_path: pathlib.Path) -> str:
    return (
        f"interrupted by {signame}: child DAQ stopped, table homed, channels left at their last verified values, "
        f"campaign journalled; resume with --resume {state_path}"
    )


def report_stop(console: Console, prog: str, exc: BaseException, state_path: pathlib.Path) -> int:
    """Say why a campaign stopped (a refused --resume, a pause, a signal) and return the exit code."""
    if isinstance(exc, MappingMismatch):
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    signal_cause = exc if isinstance(exc, CampaignInterrupted) else exc.__cause__
    if isinstance(signal_cause, CampaignInterrupted):  # journalled by the campaign; the session closed
        console.print(f"[bold red]stopped[/]: {stopped_message(signal_cause.signame, state_path)}")
    else:
        console.print(f"[bold red]PAUSED[/]: {exc}")
    return EXIT_PAUSED


@dataclass
class Session:
    """The hardware a campaign runs on; ``request_path`` is where the wanted cell is announced to the DAQ."""

    hv: HVSupply | None
    table: HCALTableDriver
    source: StreamAmplitudes
    daq: subprocess.Popen | None
    request_path: pathlib.Path | None
    campaign: CellCampaign | None = None


@contextlib.contextmanager
def campaign_session(
    args: Any, cfg: Config, calib: Calibration, endpoints: dict[str, Any], daq_out: pathlib.Path, with_hv: bool = True
) -> Iterator[Session]:
    """Open the HV supply (``with_hv``), the table and the amplitude source (the child calibration DAQ
    recording into ``daq_out``, unless ``args.stream`` names a running one), with SIGTERM/SIGHUP turned
    into a safe stop of the session's campaign (:func:`hv_control.campaign.signals_interrupt`). ``args``:
    the tool's options ``config``, ``endpoints_file``, ``stream`` and ``backend``. At exit, whatever
    happened: the table is homed, the child DAQ and its process group stopped, every connection closed
    (signals are ignored while this happens)."""
    holder: dict[str, Session] = {}
    hv = table = source = daq = None
    with signals_interrupt(lambda: holder["s"].campaign if "s" in holder else None):
        try:
            if with_hv:
                hv = HVSupply.connect(endpoints["hv"], cfg, calib, backend=args.backend)
            table = HCALTableDriver.connect(endpoints["table"], backend=args.backend, timeout_s=cfg.hv.timeout_s)
            request = None
            if args.stream:
                source = StreamAmplitudes(args.stream)
            else:
                daq_out.mkdir(parents=True, exist_ok=True)
                request = daq_out / "calibration-request.json"
                daq, address = launch_daq(args.endpoints_file, daq_out, args.config, request)
                source = StreamAmplitudes(address)
            source.wait_for_daq(DAQ_READY_TIMEOUT_S)
            holder["s"] = Session(hv, table, source, daq, request)
            yield holder["s"]
        finally:
            old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGTERM, signal.SIGHUP)}
            try:
                if table is not None:
                    with contextlib.suppress(TableError, OSError):
                        table.home()
                stop_daq(daq)
                for thing in (source, hv, table):
                    if thing is not None:
                        thing.close()
            finally:
                for s, h in old.items():
                    signal.signal(s, h)


@contextlib.contextmanager
def cell_progress(
    console: Console, title: str, total: int, describe: Callable[[Any], str]
) -> Iterator[tuple[Callable[[int], None], Callable[[str, Any], None]]]:
    """A rich progress bar over ``total`` cells and the campaign's progress callback: the description shows
    the cell, the step and ``describe(state)``; a ``cell_done`` advances the bar. Yields
    ``(set_completed(n), report)``."""
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        bar = progress.add_task(title, total=total)

        def report(what: str, st: Any) -> None:
            progress.update(bar, description=f"{st.cell}: {what}{describe(st)}")
            if what == "cell_done":
                progress.advance(bar)

        yield (lambda n: progress.update(bar, completed=n)), report
