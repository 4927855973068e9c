"""The emulator process: every instrument of the bench, fed by the beam simulation.

:class:`Emulator` composes

- the MSADC crate (:mod:`sim_frontend.emu_msadc`) on a VISA TCPIP SOCKET port,
- the HV mainframe (:class:`sim_frontend.emu_hv.HVMainframe`) and the HCAL table
  (:class:`sim_frontend.emu_table.HCALTable`), each served by :mod:`sim_frontend.serial_server` over a pty
  and over ``socket://127.0.0.1:<port>``,
- the beam feed receiver (ZeroMQ PULL, bound; :class:`sim_frontend.feed.FeedReceiver`),
- unless ``emulator.wait_for_feed`` (``--external-feed``), a child process running the beam simulation
  that pushes one spill per SPS supercycle into that feed (:class:`sim_frontend.feed.FeedSender`),
- the control endpoint (ZeroMQ REP, JSON; :mod:`sim_frontend.control`, docs/protocols.md 4.3).

Spill flow. When a spill arrives on the feed, the emulator takes a snapshot of the table position and of
every HV VMON (the "spill time" state the detector response and the gains depend on), tells the crate
the beam is on (``SPIL:STAT?`` = ``SPILL``) and hands the spill to a worker thread, which runs the
detector response (``response.apply_response``), the trigger-primitive digitisation
(``Digitizer.primitives``; with ``digitise_on_demand`` only when a reader first asks for the primitives)
and the hardware scalers. The spill completes ``length_s`` after its arrival
(or when the work is done, if later): it is pushed into the crate's ring of ``emulator.spill_buffer``
spills and the state becomes ``GAP``. The SCPI, serial and control servers run in their own threads and
stay responsive while a large spill is processed.

Calibration beam: when the spill arrives with the table on an HCAL module or an ECAL cell (not at the
physics position), the spill is thinned to ``beam.calibration_particles_per_spill`` particles (the
low-intensity beam of a calibration; :meth:`Emulator.calibration_beam`). On an HCAL module the response
model turns them into the calibration particle aimed at the table position; on an ECAL cell the beam
particles hit that cell (the ECAL and HCAL sit on one platform, docs/protocols.md section 3).

Faults (docs/protocols.md section 5) come from ``[emulator] faults`` at start and from the control
endpoint at run time; ``feed: stall (seconds)`` discards every spill that arrives, or would complete,
within that time, so no spill completes.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import multiprocessing as mp
import os
import queue
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq

from detector import channels as chmap
from detector.config import Calibration, Config, load_calibration

from . import control as ctl
from .emu_hv import HVMainframe
from .emu_mm import MMReadout
from .emu_msadc import SCALER_THRESHOLD_MIP, MSADCCrate, SpillRecord, truth_summary
from .emu_table import HCALTable
from .faults import MSADCFaults
from .led_pulser import LedPulser
from .msadc_server import MSADCServer
from .serial_server import FaultState, LineServers, serve_line_handlers

log = logging.getLogger(__name__)

ENDPOINT_NAMES = ("msadc", "hv", "table", "feed")
#: fault kinds of every endpoint (docs/protocols.md section 5)
FAULT_KINDS = {
    "msadc": MSADCFaults.KINDS,
    "hv": FaultState.KINDS + ("trip",),
    "table": FaultState.KINDS,
    "feed": ("stall",),
}
TRUTH_HISTORY = 1024  #: spills whose truth summary the control endpoint keeps
MAX_PENDING_SPILLS = 4  #: spills waiting for the worker; beyond, arriving spills are dropped


def override_config(
    cfg: Config,
    *,
    spills: int | None = None,
    particles: float | None = None,
    seed: int | None = None,
    external_feed: bool | None = None,
) -> Config:
    """``cfg`` with the command-line overrides applied (``spill.count``, ``beam.particles_per_spill``,
    ``beam.seed``, ``emulator.wait_for_feed``); ValueError on bad values."""
    over: dict[str, dict[str, Any]] = {"spill": {}, "beam": {}, "emulator": {}}
    if spills is not None:
        if spills < 0:
            raise ValueError(f"--spills must be >= 0, got {spills}")
        over["spill"]["count"] = int(spills)
    if particles is not None:
        if not (math.isfinite(particles) and 0 <= particles <= 2e7):
            raise ValueError(f"--particles must be in [0, 2e7], got {particles}")
        over["beam"]["particles_per_spill"] = float(particles)
    if seed is not None:
        if not 0 <= seed < 2**63:
            raise ValueError(f"--seed must be in [0, 2^63), got {seed}")
        over["beam"]["seed"] = int(seed)
    if external_feed is not None:
        over["emulator"]["wait_for_feed"] = bool(external_feed)
    return cfg.with_overrides(over)


def parse_fault(text: str) -> dict[str, Any]:
    """``endpoint:kind[:value]`` (the ``--fault`` option) -> a fault table. The value is the kind's
    parameter: seconds for ``delay`` and ``stall``, count for ``no_reply``/``noise``/``drop``/``truncate``/
    ``corrupt``, the channel id (or name) for ``trip``."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise ValueError(f"bad fault {text!r}: expected endpoint:kind[:value], e.g. msadc:delay:0.5")
    endpoint, kind = parts[0].strip().lower(), parts[1].strip().lower()
    spec: dict[str, Any] = {"endpoint": endpoint, "kind": kind}
    if len(parts) == 3:
        value = parts[2].strip()
        if kind in ("delay", "stall"):
            try:
                spec["seconds"] = float(value)
            except ValueError:
                raise ValueError(f"bad fault {text!r}: {kind} needs a number of seconds") from None
        elif kind == "trip":
            spec["channel_id"] = int(value) if value.lstrip("-").isdigit() else chmap.by_name(value).id
        else:
            try:
                spec["count"] = int(value)
            except ValueError:
                raise ValueError(f"bad fault {text!r}: {kind} needs an integer count") from None
    return spec


@dataclass
class _Job:
    spill: Any
    table: dict[str, Any]
    vmon: np.ndarray
    arrival: float  # monotonic


def _feed_child(cfg: Config, endpoint: str, parent_pid: int, stop: Any, calibration: Any = None) -> None:
    """Child process: run the beam simulation and push spills into the emulator's feed. ``calibration``
    (a shared flag, ``.value``): the table is on a calibration position, the beam line delivers the
    calibration intensity (``beam.calibration_particles_per_spill``)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop

    def watchdog() -> None:
        while not stop.is_set():
            if os.getppid() != parent_pid:
                os._exit(0)  # the emulator died: never linger as an orphan
            time.sleep(0.5)

    threading.Thread(target=watchdog, daemon=True).start()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s feed[%(process)d] %(levelname)s %(message)s")
    from .feed import FeedError, FeedSender

    sender = FeedSender(cfg, endpoint, send_timeout_s=60.0)
    try:
        m = max(1, int(round(cfg.beam.calibration_particles_per_spill)))

        def intensity() -> int | None:
            return m if calibration is not None and calibration.value else None

        n = sender.run(stop=stop, intensity=intensity)
        logging.getLogger(__name__).info("beam feed done: %d spills sent", n)
    except FeedError as exc:
        logging.getLogger(__name__).error("beam feed stopped: %s", exc)
    finally:
        sender.sock.setsockopt(zmq.LINGER, 0 if stop.is_set() else 2000)
        sender.close()


def _forked_feed_child(conn: Any, cfg: Config, parent_pid: int, stop: Any, calibration: Any) -> None:
    """The beam-feed child forked by :meth:`Emulator._fork_child`: the default SIGTERM (not the handler
    inherited from the emulator's command line), then the feed address from ``conn`` (EOF: the emulator
    stopped before its servers started), then :func:`_feed_child`."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        endpoint = conn.recv()
    except EOFError:
        return
    finally:
        conn.close()
    _feed_child(cfg, endpoint, parent_pid, stop, calibration)


class Emulator:
    """All emulated instruments of the bench in one object (see the module docstring).

    Parameters
    ----------
    cfg:
        Validated configuration (``detector.config.load_config``); apply command-line overrides with
        :func:`override_config` first.
    calibration:
        Per-channel constants; default: the file named by the config.
    pty:
        Also serve HV and table over ptys (the socket servers are always started).
    faults:
        Fault tables activated at start, in addition to ``cfg.emulator.faults``.
    block_timeout_s:
        Silence (s) after which an incomplete binary upload to the crate counts as truncated (``-160``).
    digitise_on_demand:
        Digitise a spill's trigger primitives when a reader first asks for them (``PRIM:DATA?``,
        ``PRIM:TIME?``), not when it completes: a spill nobody reads (a calibration DAQ skips the
        full-intensity ones) costs no digitisation. Deposits, scalers and ``SPIL:INFO?`` are unchanged.

    ``start()`` binds every server and returns :meth:`endpoints`; ``stop()`` closes everything
    (threads joined, sockets and pty fds closed, the feed child process ended). Also a context manager.
    """

    def __init__(
        self,
        cfg: Config,
        calibration: Calibration | None = None,
        *,
        pty: bool = True,
        faults: Sequence[Mapping[str, Any]] = (),
        block_timeout_s: float = 1.0,
        digitise_on_demand: bool = False,
    ) -> None:
        self.cfg = cfg
        self.digitise_on_demand = bool(digitise_on_demand)
        self.calibration = calibration if calibration is not None else load_calibration(cfg)
        self.host = cfg.endpoints.host
        if not (self.host.startswith("127.") or self.host == "localhost"):
            raise ValueError(
                f"endpoints.host = {self.host!r}: the emulator serves loopback only (its VISA and "
                "serial sockets have no authentication); run it on the DAQ host"
            )
        self.pty = pty
        self.external_feed = bool(cfg.emulator.wait_for_feed)
        self._initial_faults = [dict(f) for f in cfg.emulator.faults] + [dict(f) for f in faults]
        for f in self._initial_faults:
            self._check_fault(f)

        from .digitizer import Digitizer

        self.digitizer = Digitizer(cfg, self.calibration, hidden_seed=cfg.emulator.hidden_seed)
        self.led = (
            LedPulser(cfg.led, self.calibration.gev_per_count, self.digitizer.hidden_seed) if cfg.led.enabled else None
        )
        self.hv = HVMainframe(cfg, self.calibration)
        self.table = HCALTable(cfg, on_move=self._table_moved)
        self._calibration_beam_wanted: Any = None  #: shared with the feed child (set in _start_child)
        self.mm = MMReadout(cfg)
        self.crate = MSADCCrate(self.digitizer, buffer=cfg.emulator.spill_buffer, mm=self.mm)
        self.msadc_faults = MSADCFaults()
        if not 0.01 <= block_timeout_s <= 60:
            raise ValueError(f"block timeout must be in [0.01, 60] s, got {block_timeout_s}")
        self.msadc_server = MSADCServer(
            self.crate, self.host, cfg.endpoints.msadc_port, faults=self.msadc_faults, idle_timeout_s=block_timeout_s
        )
        self.serial: LineServers | None = None
        self.receiver: Any = None
        self.control: ctl.ControlServer | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._jobs: queue.Queue[_Job | None] = queue.Queue(maxsize=MAX_PENDING_SPILLS)
        self._stall_until = 0.0
        self._lock = threading.Lock()
        self._truth: collections.OrderedDict[int, dict[str, Any]] = collections.OrderedDict()
        self._child: Any = None
        self._child_stop: Any = None
        self._child_conn: Any = None  #: the forked feed child's pipe until it has the feed address
        self._child_start: str | None = None  #: how the feed child was started: "fork" or "spawn"
        self._started_unix = 0.0
        self._endpoints: dict[str, Any] = {}
        self.stats = {
            "spills_received": 0,
            "spills_completed": 0,
            "spills_stalled": 0,
            "spills_overrun": 0,
            "spills_failed": 0,
            "feed_ended": False,
            "last_processing_s": 0.0,
        }

    # ------------------------------------------------------------------ life cycle
    def start(self) -> dict[str, Any]:
        """Bind all servers, start the threads (and the feed child); returns the endpoints."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self.endpoints()

    def _start(self) -> None:
        from .feed import FeedReceiver

        ep = self.cfg.endpoints
        self._started_unix = time.time()
        self.digitizer.drift.start(self._started_unix)  # the hidden ECAL gains drift from now on
        if self.led is not None:
            self.led.start(self._started_unix)
        self.warm_up()
        self._fork_child()
        self.msadc_server.start()
        self.serial = serve_line_handlers(
            {"hv": self.hv.handle, "table": self.table.handle},
            pty=self.pty,
            tcp=True,
            host=self.host,
            ports={"hv": ep.hv_port, "table": ep.table_port},
        )
        self.receiver = FeedReceiver(_zmq_bind_address(self.host, ep.feed_port))
        feed_addr = self.receiver.endpoint
        self.control = ctl.ControlServer(self._handlers(), _zmq_bind_address(self.host, ep.control_port)).start()
        for f in self._initial_faults:
            self.apply_fault(f)
        self._endpoints = self._make_endpoints(feed_addr)
        for target, name in ((self._feed_loop, "emulator-feed"), (self._worker, "emulator-spill-worker")):
            th = threading.Thread(target=target, name=name, daemon=True)
            th.start()
            self._threads.append(th)
        if not self.external_feed:
            self._start_child(feed_addr)
        log.info("emulator started: %s", self._endpoints)

    def warm_up(self) -> float:
        """Run the whole spill chain once on a tiny spill, so that the numba kernels are compiled (or
        loaded from their cache) before the servers listen and the first real spill is processed in
        time. Returns the seconds it took."""
        from .beam import generate_spill

        t0 = time.monotonic()
        spill = generate_spill(self.cfg, 0, n_particles=16, start_unix=time.time())
        record = self.process_spill(
            spill, {"x_mm": 0.0, "y_mm": 0.0, "module": -1, "cell": "PHYSICS"}, self.digitizer.nominal_vmon()
        )
        record.trigger_primitives()
        self.digitizer.events(spill, record.deposits, np.arange(2), record.vmon)
        record.accepted = np.arange(2, dtype=np.uint32)
        self.mm.block(record, 0, 2)  # the Micromegas strip kernels
        dt = time.monotonic() - t0
        log.info("spill chain ready in %.2f s", dt)
        return dt

    def _table_moved(self, module: int, cell: str) -> None:
        """The table goes to a calibration position (HCAL module or ECAL cell) or back: the internal beam
        feed generates the calibration intensity or the full one from its next spill on (spills already
        generated are thinned on arrival, :meth:`calibration_beam`)."""
        flag = self._calibration_beam_wanted
        if flag is not None:
            flag.value = module >= 0 or str(cell).startswith("ECAL-")

    def _fork_child(self) -> None:
        """Start the beam-feed child by ``fork`` while this process has no other thread and no socket yet: it
        shares the modules and kernels loaded here, where a spawned child imports and loads them again
        (about a second of CPU and of waiting for the first spill). It waits for the feed address, which
        :meth:`_start_child` sends once the receiver is bound. With other threads running (an emulator
        inside a bigger program), nothing is forked here and :meth:`_start_child` spawns the child."""
        if self.external_feed or threading.active_count() != 1 or "fork" not in mp.get_all_start_methods():
            return
        ctx = mp.get_context("fork")
        self._new_child_flags(ctx)
        child_end, self._child_conn = ctx.Pipe(duplex=False)  # (the reading end, the writing end)
        self._child = ctx.Process(
            target=_forked_feed_child,
            args=(child_end, self.cfg, os.getpid(), self._child_stop, self._calibration_beam_wanted),
            name="na64-emulator-feed",
            daemon=True,
        )
        self._child_start = "fork"
        self._child.start()
        child_end.close()

    def _new_child_flags(self, ctx: Any) -> None:
        self._child_stop = ctx.Event()
        self._calibration_beam_wanted = ctx.Value("b", False, lock=False)
        pos = self.table.position()
        self._table_moved(int(pos["module"]), str(pos["cell"]))

    def _start_child(self, feed_addr: str) -> None:
        if self._child_conn is not None:  # forked before the servers started: tell it where to send
            self._child_conn.send(_connect_address(feed_addr))
            self._child_conn.close()
            self._child_conn = None
            return
        ctx = mp.get_context("spawn")
        self._new_child_flags(ctx)
        self._child = ctx.Process(
            target=_feed_child,
            args=(self.cfg, _connect_address(feed_addr), os.getpid(), self._child_stop, self._calibration_beam_wanted),
            name="na64-emulator-feed",
            daemon=True,
        )
        self._child_start = "spawn"
        self._child.start()

    def stop(self) -> None:
        """Stop everything; idempotent."""
        self._stop.set()
        if self._child is not None:
            self._stop_child()
        try:
            self._jobs.put_nowait(None)
        except queue.Full:
            pass
        for th in self._threads:
            th.join(timeout=5.0)
        self._threads = []
        if self.control is not None:
            self.control.stop()
            self.control = None
        if self.receiver is not None:
            close = getattr(self.receiver, "close", None)
            if close is not None:
                close()
            self.receiver = None
        if self.serial is not None:
            self.serial.stop()
            self.serial = None
        self.msadc_server.stop()

    def _stop_child(self) -> None:
        child, self._child = self._child, None
        self._child_stop.set()
        if self._child_conn is not None:  # a forked child still waiting for the address: it reads EOF and ends
            self._child_conn.close()
            self._child_conn = None
        if child.pid is None:  # never started
            return
        child.join(timeout=3.0)
        if child.is_alive():
            log.warning("the beam-feed child %d did not stop; terminating it", child.pid)
            child.terminate()
            child.join(timeout=2.0)
        if child.is_alive():
            child.kill()
            child.join(timeout=2.0)

    def __enter__(self) -> Emulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until :meth:`stop` was called (True) or ``timeout`` s passed (False)."""
        return self._stop.wait(timeout)

    @property
    def child_alive(self) -> bool:
        return self._child is not None and self._child.is_alive()

    # ------------------------------------------------------------------ endpoints
    def _make_endpoints(self, feed_addr: str) -> dict[str, Any]:
        assert self.serial is not None and self.control is not None
        addrs = self.serial.addresses()
        out: dict[str, Any] = {
            "msadc": self.msadc_server.resource,
            "msadc_port": self.msadc_server.port,
            "hv": addrs["hv"]["url"],
            "table": addrs["table"]["url"],
            "feed": _connect_address(feed_addr),
            "control": _connect_address(self.control.address),
            "pid": os.getpid(),
            "host": self.host,
            "external_feed": self.external_feed,
            "started_unix": self._started_unix,
        }
        if "pty" in addrs.get("hv", {}):
            out["hv_pty"] = addrs["hv"]["pty"]
        if "pty" in addrs.get("table", {}):
            out["table_pty"] = addrs["table"]["pty"]
        return out

    def endpoints(self) -> dict[str, Any]:
        """Addresses of every server: ``msadc`` (VISA resource), ``hv``/``table`` (``socket://`` URLs),
        ``hv_pty``/``table_pty`` (device paths), ``feed``/``control`` (ZeroMQ), ``pid``."""
        return dict(self._endpoints)

    # ------------------------------------------------------------------ spill flow
    def _feed_loop(self) -> None:
        rx = self.receiver
        while not self._stop.is_set():
            try:
                spill = rx.recv(timeout_s=0.2)
            except Exception:  # a feed problem must not stop the emulator
                log.exception("feed receive failed")
                self._stop.wait(0.2)
                continue
            if spill is None:
                if getattr(rx, "ended", False) and not self.stats["feed_ended"]:
                    self.stats["feed_ended"] = True
                    log.info("the beam feed ended")
                continue
            self._on_spill(spill)

    def _on_spill(self, spill: Any) -> None:
        self.stats["spills_received"] += 1
        # the crate counts spills itself, like the hardware: a restarted or second feed (whose generator
        # numbers from 1 again) must not reuse ids the DAQ has already seen
        with self._lock:
            self._spill_counter = max(getattr(self, "_spill_counter", 0) + 1, int(spill.spill))
            if self._spill_counter != int(spill.spill):
                log.info("feed spill %s becomes crate spill %s", spill.spill, self._spill_counter)
            spill.spill = self._spill_counter
        if self._stalled():
            self.stats["spills_stalled"] += 1
            log.info("feed stall: spill %s discarded", spill.spill)
            return
        table = self.table.position()
        vmon = self.hv.vmon_by_channel_id()
        spill = self.calibration_beam(spill, table)
        job = _Job(spill, table, vmon, time.monotonic())
        self.crate.spill_started(int(spill.spill), float(spill.start_unix))
        try:
            self._jobs.put_nowait(job)
        except queue.Full:
            self.stats["spills_overrun"] += 1
            self.crate.spill_abandoned(int(spill.spill))
            log.warning("spill %s dropped: %d spills already wait for processing", spill.spill, MAX_PENDING_SPILLS)

    def calibration_beam(self, spill: Any, table: Mapping[str, Any]) -> Any:
        """With the table on a calibration position (an HCAL module, ``module >= 0``, or an ECAL cell, cell
        ``ECAL-x-y``) the beam is the low-intensity calibration beam: the spill is thinned uniformly in time
        to ``beam.calibration_particles_per_spill`` particles (record indices renumbered 0..m-1). On an ECAL
        cell the platform offset moves the impact points in the detector frame (truth ``x_mm``/``y_mm``: the
        beam hits that cell; the HCAL behind moves along). At the physics position the spill is unchanged."""
        m = int(round(self.cfg.beam.calibration_particles_per_spill))
        n = int(spill.truth.shape[0])
        on_ecal = str(table.get("cell", "")).startswith("ECAL-")
        if int(table.get("module", -1)) < 0 and not on_ecal:
            return spill
        if n > m:
            keep = np.unique(np.linspace(0, n - 1, m).round().astype(np.int64)) if m > 0 else np.empty(0, np.int64)
            truth = spill.truth[keep].copy()
            truth["index"] = np.arange(truth.shape[0], dtype=truth.dtype["index"])
        else:
            truth = spill.truth.copy()
        if on_ecal:
            truth["x_mm"] += np.float32(table.get("x_mm", 0.0))
            truth["y_mm"] += np.float32(table.get("y_mm", 0.0))
        return dataclasses.replace(spill, truth=truth)

    def _worker(self) -> None:
        while not self._stop.is_set():
            try:
                job = self._jobs.get(timeout=0.2)
            except queue.Empty:
                continue
            if job is None:
                return
            try:
                record = self.process_spill(job.spill, job.table, job.vmon)
            except Exception:
                log.exception("processing spill %s failed", getattr(job.spill, "spill", "?"))
                self.stats["spills_failed"] += 1
                self.crate.spill_abandoned(int(job.spill.spill))
                continue
            end = job.arrival + float(job.spill.length_s)
            if self._stop.wait(max(0.0, end - time.monotonic())):
                return
            if self._stalled():
                self.stats["spills_stalled"] += 1
                log.info("feed stall: spill %s does not complete", job.spill.spill)
                self.crate.spill_abandoned(int(job.spill.spill))
                continue
            record.complete_unix = time.time()
            self.fire_led(record)
            self.crate.spill_completed(record)
            self.stats["spills_completed"] += 1
            with self._lock:
                self._truth[record.spill_id] = truth_summary(record.spill_id, record.spill.truth)
                while len(self._truth) > TRUTH_HISTORY:
                    self._truth.popitem(last=False)

    def process_spill(self, spill: Any, table: dict[str, Any], vmon: np.ndarray) -> SpillRecord:
        """Detector response, trigger primitives and scalers of one spill (no waiting)."""
        from .response import apply_response

        t0 = time.monotonic()
        tab = {k: table[k] for k in ("x_mm", "y_mm", "module", "cell") if k in table}
        dep = apply_response(spill, self.cfg, tab)
        vmon = np.asarray(vmon, dtype=np.float64).copy()
        record = SpillRecord(
            spill=spill,
            deposits=dep,
            primitives=None,
            times=None,
            table=dict(table),
            vmon=vmon,
            scalers=self.scalers(spill, dep),
            digitise=lambda: self.digitizer.primitives(spill, dep, vmon),
        )
        if not self.digitise_on_demand:
            record.trigger_primitives()
        self.stats["last_processing_s"] = time.monotonic() - t0
        return record

    def fire_led(self, record: SpillRecord) -> None:
        """The LED pulses of the gap after the flat top of ``record`` (none without the pulser), with the
        gains at the end of the flat top (``record.complete_unix``): a gain jump injected between two spills
        shows in the LED pulses after the next one, as in its beam events."""
        if self.led is None:
            return
        t = float(record.complete_unix)

        def digitise(light: np.ndarray, times: np.ndarray) -> np.ndarray:
            seed = int(getattr(record.spill, "seed", 0)) ^ 0x1ED1ED
            return self.digitizer.led_events(light, times, record.vmon, t, seed & 0xFFFFFFFFFFFFFFFF)

        try:
            record.led = self.led.fire(record.spill_id, float(record.spill.length_s), t, digitise)
        except Exception:  # the LED must never stop the spills from completing
            log.exception("LED pulses of spill %s failed", record.spill_id)

    def scalers(self, spill: Any, dep: Any) -> dict[str, int]:
        """Hardware scalers S0..S3, V0, V1 of a spill: particles depositing above 0.5 MIP."""
        from .response import hardware_scalers

        return hardware_scalers(dep, SCALER_THRESHOLD_MIP)

    def _stalled(self) -> bool:
        with self._lock:
            return time.monotonic() < self._stall_until

    # ------------------------------------------------------------------ faults
    @staticmethod
    def _check_fault(spec: Mapping[str, Any]) -> None:
        if not isinstance(spec, Mapping):
            raise ValueError(f"a fault must be a table {{endpoint, kind, ...}}, got {spec!r}")
        ep = spec.get("endpoint")
        if ep not in ENDPOINT_NAMES:
            raise ValueError(f"fault endpoint {ep!r} is not one of {', '.join(ENDPOINT_NAMES)}")
        kinds = FAULT_KINDS[ep]
        if spec.get("kind") not in kinds:
            raise ValueError(f"unknown {ep} fault kind {spec.get('kind')!r}; known: {', '.join(kinds)}")

    def apply_fault(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        """Activate one fault (docs/protocols.md section 5); ValueError names a bad one."""
        self._check_fault(spec)
        ep, kind = spec["endpoint"], spec.get("kind")
        if ep == "msadc":
            self.msadc_faults.apply(dict(spec))
        elif ep == "hv" and kind == "trip":
            extra = set(spec) - {"endpoint", "kind", "channel_id"}
            if extra:
                raise ValueError(f"unknown fault parameter(s) {sorted(extra)}")
            cid = spec.get("channel_id")
            if isinstance(cid, str):
                cid = chmap.by_name(cid).id
            if (
                isinstance(cid, bool)
                or not isinstance(cid, int)
                or not 0 <= cid < chmap.N_CHANNELS
                or chmap.CHANNELS[cid].hv_board is None
            ):
                raise ValueError(f"hv trip needs the channel_id of a channel with a PMT, got {cid!r}")
            self.hv.inject_trip(cid)
        elif ep in ("hv", "table"):
            assert self.serial is not None
            self.serial.faults[ep].apply(dict(spec))
        elif ep == "feed":
            if kind != "stall":
                raise ValueError(f"unknown feed fault {kind!r}; known: stall")
            extra = set(spec) - {"endpoint", "kind", "seconds"}
            if extra:
                raise ValueError(f"unknown fault parameter(s) {sorted(extra)}")
            s = spec.get("seconds")
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 <= s <= 3600:
                raise ValueError(f"feed stall needs seconds in [0, 3600], got {s!r}")
            with self._lock:
                self._stall_until = time.monotonic() + float(s)
        log.info("fault injected: %s", dict(spec))
        return self.faults()

    def clear_faults(self) -> None:
        self.msadc_faults.clear()
        if self.serial is not None:
            for fs in self.serial.faults.values():
                fs.clear()
        with self._lock:
            self._stall_until = 0.0

    def faults(self) -> dict[str, Any]:
        with self._lock:
            stall = max(0.0, self._stall_until - time.monotonic())
        out: dict[str, Any] = {"msadc": self.msadc_faults.snapshot(), "feed": {"stall_s": stall}}
        if self.serial is not None:
            for name, fs in self.serial.faults.items():
                out[name] = fs.snapshot()
        return out

    # ------------------------------------------------------------------ control endpoint
    def _handlers(self) -> dict[str, ctl.Handler]:
        return {
            "ping": self._c_ping,
            "fault": self._c_fault,
            "clear_faults": self._c_clear,
            "hv_log": self._c_hv_log,
            "truth": self._c_truth,
            "state": self._c_state,
            "trip": self._c_trip,
            "gain_jump": self._c_gain_jump,
            "gains": self._c_gains,
        }

    def _c_ping(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "pong": True, "pid": os.getpid(), "time": time.time()}

    def _c_fault(self, req: dict[str, Any]) -> dict[str, Any]:
        spec = {k: v for k, v in req.items() if k != "cmd"}
        return {"ok": True, "faults": self.apply_fault(spec)}

    def _c_clear(self, req: dict[str, Any]) -> dict[str, Any]:
        self.clear_faults()
        return {"ok": True, "faults": self.faults()}

    def _c_hv_log(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "log": self.hv.set_log()}

    def _c_trip(self, req: dict[str, Any]) -> dict[str, Any]:
        spec = {"endpoint": "hv", "kind": "trip", "channel_id": req.get("channel_id")}
        return {"ok": True, "faults": self.apply_fault(spec)}

    def _c_gain_jump(self, req: dict[str, Any]) -> dict[str, Any]:
        """``{"cmd": "gain_jump", "channel": "ECAL1-2-3", "factor": 1.03}``: the ECAL channel's hidden gain
        jumps by ``factor`` for every spill that starts from now on."""
        name = req.get("channel")
        if not isinstance(name, str):
            raise ValueError(f"gain_jump needs a channel name, got {name!r}")
        factor = req.get("factor")
        if isinstance(factor, bool) or not isinstance(factor, (int, float)):
            raise ValueError(f"gain_jump needs a numeric 'factor', got {factor!r}")
        return {"ok": True, **self.digitizer.drift.jump(chmap.by_name(name).id, float(factor))}

    def _c_gains(self, req: dict[str, Any]) -> dict[str, Any]:
        """The hidden ECAL gains now (relative to the nominal calibration), by channel name: the truth a
        calibration is checked against."""
        g = self.digitizer.hidden_gain * self.digitizer.drift.factor(time.time())
        return {"ok": True, "ecal": {chmap.CHANNELS[c].name: float(g[c]) for c in chmap.ids_of_kind("ecal")}}

    def _c_truth(self, req: dict[str, Any]) -> dict[str, Any]:
        sid = req.get("spill")
        if isinstance(sid, bool) or not isinstance(sid, int):
            raise ValueError(f"truth needs an integer 'spill', got {sid!r}")
        rec = self.crate.record(sid)
        if rec is not None:
            return {"ok": True, "buffered": True, **truth_summary(sid, rec.spill.truth, rec.accepted.size)}
        with self._lock:
            summary = self._truth.get(sid)
        if summary is None:
            return {"ok": False, "error": f"spill {sid} is unknown (the emulator keeps the last {TRUTH_HISTORY})"}
        return {"ok": True, "buffered": False, **summary}

    def _c_state(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, **self.state(full=bool(req.get("hv", False)))}

    def state(self, full: bool = False) -> dict[str, Any]:
        """JSON-able state: crate, spill counters, faults, table, and (``full``) the whole HV state."""
        crate = self.crate.snapshot()
        out: dict[str, Any] = {
            "state": crate["state"],
            "last_spill": crate["last_complete"],
            "crate": crate,
            "spills": dict(self.stats),
            "faults": self.faults(),
            "table": self.table.position(),
            "endpoints": self.endpoints(),
            "uptime_s": time.time() - self._started_unix,
            "feed": {
                "external": self.external_feed,
                "child_alive": self.child_alive,
                "child_start": self._child_start,
                "malformed": int(getattr(self.receiver, "malformed", 0) or 0),
            },
            "msadc_server": dict(self.msadc_server.stats),
            "faults_fired": {
                "msadc": self.msadc_faults.fired(),
                **{n: fs.fired() for n, fs in (self.serial.faults.items() if self.serial else ())},
            },
        }
        if full:
            out["hv"] = self.hv.state()
        return out


# ----------------------------------------------------------------------------------------------------
def _zmq_bind_address(host: str, port: int) -> str:
    return f"tcp://{host}:{port if port else '*'}"


def _connect_address(addr: str) -> str:
    """A bound ZeroMQ address as clients should connect to it (``0.0.0.0`` -> ``127.0.0.1``)."""
    return addr.replace("tcp://0.0.0.0:", "tcp://127.0.0.1:")
