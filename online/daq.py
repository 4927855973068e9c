"""Run control: the spill loop of ``na64-daq`` (ARCHITECTURE.md "Processes and the loop").

The spill state machine is explicit (H4DAQ's FSM): :class:`State`, the transition table
:data:`TRANSITIONS`, and :class:`SpillStateMachine`, which refuses any other transition and publishes
every change on the ``status`` topic::

    IDLE ──> SPILL ──> END_OF_SPILL ──> READOUT ──> RECORDED ──> IDLE | SPILL | END_OF_SPILL
      └──────────────────^                 │
     any state ──> ERROR ──> IDLE | SPILL | END_OF_SPILL | READOUT | RECORDED

Per spill (:meth:`DAQ.read_spill`):

1. poll ``SPIL:STAT?`` until a new completed spill; crate spills that were dropped from the crate's ring
   before the DAQ got to them are recorded as empty spills flagged ``spill_lost``;
2. ``SPIL:SEL``, ``SPIL:INFO?``, ``PRIM:COUN?``;
3. primitives and times in chunks of ``daq.chunk_records``: a reader thread fills preallocated buffers
   (a pool of 3, a queue of at most 2 full chunks) while the main thread runs the numba trigger on the
   previous chunk, so transfer and trigger overlap;
4. upload the accepted list, verify ``ACC:COUN?``; read ``EVT:DATA?`` (and ``EVT:TRUT?`` when
   ``daq.record_truth`` and the crate offers it) in chunks straight into the event array;
5. build the events and write the spill file atomically; update the run record (accounting, scalers,
   EOT, HV read-back, flags);
6. hand the spill to the monitoring worker (reconstruction for the calo maps, histograms, waveforms,
   amplitudes) - a lossy path with a queue of 1 that never holds up the loop.

Faults: the driver retries every transaction after a reconnect (``daq.retries``); a spill whose
readout still fails is retried once as a whole, and otherwise recorded with what was read and flagged
with the reason (``detector.records.SPILL_FLAGS``). The run goes on. Stop with SIGINT/SIGTERM: the spill
in hand is finished, then the DAQ exits 0.
"""
from __future__ import annotations

import enum
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from detector import channels as ch
from detector.config import Calibration, dump_toml
from detector.records import INCOMPLETE_SPILL_FLAGS, TRIGGER_BITS, TRUTH_DTYPE
from detector.reco import reconstruct
from detector.spillfile import SpillContent, estimated_size

from .msadc import (EVENT_RECORD_BYTES, MSADC, PRIM_RECORD_BYTES, MSADCCrateError, MSADCError, MSADCSpillLost)
from .publisher import Heartbeat, Publisher
from .recorder import RunRecorder

log = logging.getLogger("online.daq")

MAX_EVENTS_PER_QUERY = 1 << 15        #: EVT:DATA? events per query (the crate refuses more than 2^16)
ECAL_EDGES = [0.0, 150.0, 150]        #: GeV, E_ECAL axis of the ecal_hcal histogram [lo, hi, n]
HCAL_EDGES = [0.0, 150.0, 150]        #: GeV, E_HCAL axis
HV_PERIOD_S = 5.0                     #: hv topic period between spills
ANY_SPILL = -1                        #: "the first spill the crate completes" (the crate had none at start)


class State(enum.Enum):
    IDLE = "IDLE"
    SPILL = "SPILL"
    END_OF_SPILL = "END_OF_SPILL"
    READOUT = "READOUT"
    RECORDED = "RECORDED"
    ERROR = "ERROR"


S = State
#: allowed transitions (a state may always be re-entered, which is not a change)
TRANSITIONS: dict[State, frozenset[State]] = {
    S.IDLE: frozenset({S.SPILL, S.END_OF_SPILL, S.ERROR}),
    S.SPILL: frozenset({S.IDLE, S.END_OF_SPILL, S.ERROR}),
    S.END_OF_SPILL: frozenset({S.READOUT, S.ERROR}),
    S.READOUT: frozenset({S.RECORDED, S.ERROR}),
    S.RECORDED: frozenset({S.IDLE, S.SPILL, S.END_OF_SPILL, S.ERROR}),
    S.ERROR: frozenset({S.IDLE, S.SPILL, S.END_OF_SPILL, S.READOUT, S.RECORDED}),
}


class IllegalTransition(RuntimeError):
    """A transition the table does not allow (a bug in the loop, never a hardware condition)."""


class SpillStateMachine:
    """The DAQ state with its transition table; ``on_change(old, new, message)`` runs on every change."""

    def __init__(self, on_change: Callable[[State, State, str], None] | None = None) -> None:
        self.state = State.IDLE
        self.message = ""
        self.since = time.time()
        self.history: list[tuple[float, str, str]] = []
        self._on_change = on_change
        self._lock = threading.Lock()

    def to(self, new: State, message: str = "") -> None:
        with self._lock:
            old = self.state
            if new == old:
                if message:
                    self.message = message
                return
            if new not in TRANSITIONS[old]:
                raise IllegalTransition(f"DAQ state {old.value} -> {new.value} is not allowed")
            self.state, self.message, self.since = new, message, time.time()
            self.history.append((self.since, new.value, message))
            del self.history[:-200]
        if self._on_change is not None:
            self._on_change(old, new, message)


def prepare_kernels() -> float:
    """Compile (or load from numba's on-disk cache) every kernel the spill loop calls (the trigger, serial
    and parallel, and the parallel pulse reconstruction) with the real dtypes on tiny arrays, so that the
    first spill is not spent compiling. Returns the seconds it took: about 90 s cold on 2 cores, about
    1 s from the cache."""
    from trigger.kernels import warm_up

    t = time.perf_counter()
    warm_up()
    reconstruct(np.zeros((1, ch.N_CHANNELS, ch.N_SAMPLES), np.int16), np.ones(ch.N_CHANNELS, np.float32),
                parallel=True)
    return time.perf_counter() - t


@dataclass
class SpillOutcome:
    """What one spill readout produced (the accounting the recorder stores)."""

    crate_spill: int
    info: dict[str, Any] = field(default_factory=dict)
    n_particles: int = 0
    n_seen: int = 0
    accepted: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    mask: np.ndarray = field(default_factory=lambda: np.empty(0, np.uint8))
    times: np.ndarray = field(default_factory=lambda: np.empty(0, np.float64))
    events: np.ndarray = field(default_factory=lambda: np.empty((0, ch.N_CHANNELS, ch.N_SAMPLES), np.int16))
    n_read_out: int = 0
    truth: np.ndarray | None = None
    events_base: np.ndarray | None = None     #: the pooled buffer ``events`` is a view of
    scalers: dict[str, int] = field(default_factory=dict)
    triggers: dict[str, dict[str, int]] = field(default_factory=dict)
    eot: int = 0
    flags: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    timing: dict[str, float] = field(default_factory=dict)
    triggered: bool = False


class _ReaderFailed(Exception):
    def __init__(self, exc: BaseException, first: int) -> None:
        super().__init__(str(exc))
        self.exc = exc
        self.first = first


class DAQ:
    """One ``na64-daq`` session. ``endpoints`` is the emulator's / the setup's endpoints dict (``msadc``
    VISA resource, ``hv`` serial address). ``trigger_factory(menu)`` makes the per-spill trigger (default
    ``trigger.kernels.SpillTrigger``)."""

    def __init__(self, cfg: dict[str, Any], calibration: Calibration, endpoints: dict[str, Any], out: str, *,
                 run: int, monitor: str | None = None, calibration_mode: bool | None = None,
                 max_spills: int | None = None, console: Any = None, argv: list[str] | None = None,
                 hv: bool = True, curve_keys: tuple[bytes, bytes] | None = None) -> None:
        from trigger.menu import TriggerMenu

        self.calibration_mode = bool(cfg.daq.calibration_mode if calibration_mode is None else calibration_mode)
        if self.calibration_mode:
            cfg = cfg.with_overrides({"daq": {"calibration_mode": True},
                                      "trigger": {"menu": {"beam": {"enabled": True, "prescale": 1}}}})
        self.cfg = cfg
        self.daq_cfg = self.cfg["daq"]
        self.calibration = calibration
        self.menu = TriggerMenu.from_config(self.cfg, calibration)
        self.endpoints = dict(endpoints)
        self.out = out
        self.run_number = int(run)
        self.monitor_address = monitor or self.cfg["endpoints"]["monitor"]
        self.max_spills = max_spills
        self.console = console
        self.argv = argv
        self.use_hv = hv
        self.curve_keys = curve_keys
        self.gev_per_count = np.asarray(calibration.gev_per_count, dtype=np.float32)
        self._stop = threading.Event()
        self.sm = SpillStateMachine(self._on_state)
        self.publisher: Publisher | None = None
        self.heartbeat: Heartbeat | None = None
        self.crate: MSADC | None = None
        self.recorder: RunRecorder | None = None
        self.hv_reader: HVReader | None = None
        self.monitor_worker: MonitorWorker | None = None
        self.current_spill: int | None = None
        self.last_spill_unix = 0.0
        self.spills_this_session = 0
        self._pool: list[np.ndarray] = []
        self._times_buf = np.zeros(0, np.float64)
        #: the reader thread and the crate need cores too: a parallel trigger only pays with >= 4 of them
        self._parallel_trigger = (os.cpu_count() or 1) >= 4
        self._event_pool: list[np.ndarray] = []
        self._event_lock = threading.Lock()
        self._pending_flags: list[str] = []
        self._errors_in_a_row = 0
        self._skipped: set[int] = set()      #: crate spill ids seen to be skipped (never completed)
        self._exit_reason = "stopped"
        self._exit_status = 0           #: 1 once the run had to stop because nothing more could be recorded

    # ------------------------------------------------------------------------------ control
    def stop(self, reason: str = "signal") -> None:
        """Ask the loop to finish the spill in hand and exit (signal-safe: only sets an event)."""
        self._exit_reason = reason
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _status_meta(self) -> tuple[dict[str, Any], int | None]:
        tot = self.recorder.totals if self.recorder else {}
        meta = {"state": self.sm.state.value, "run": self.run_number, "spill": self.current_spill,
                "last_spill_unix": self.last_spill_unix, "spills_done": int(tot.get("spills", 0)),
                "events_recorded": int(tot.get("events_recorded", 0)), "lost_spills": int(tot.get("lost_spills", 0)),
                "message": self.sm.message, "calibration_mode": self.calibration_mode,
                "ready": bool(getattr(self, "ready", False)),
                "monitor_dropped": self.publisher.dropped if self.publisher else 0}
        return meta, self.current_spill

    def _on_state(self, old: State, new: State, message: str) -> None:
        log.debug("state %s -> %s %s", old.value, new.value, message)
        if self.publisher is not None:
            meta, spill = self._status_meta()
            self.publisher.publish("status", meta=meta, spill=spill)

    def _log(self, level: int, text: str) -> None:
        log.log(level, "%s", text)
        if self.publisher is not None and level >= logging.INFO:
            self.publisher.log(logging.getLevelName(level), text, spill=self.current_spill)

    # ---------------------------------------------------------------------------- start-up
    def start(self) -> None:
        """Open the publisher, the recorder, the crate, the HV read-back and the workers."""
        self.publisher = Publisher(self.monitor_address, run=self.run_number,
                                   zmq_curve=self.cfg["endpoints"]["zmq_curve"],
                                   curve_public_key=self.curve_keys[0] if self.curve_keys else None,
                                   curve_secret_key=self.curve_keys[1] if self.curve_keys else None)
        self.heartbeat = Heartbeat(self.publisher, self._status_meta, self.daq_cfg["heartbeat_s"])
        self.heartbeat.start()
        self.recorder = RunRecorder(
            self.out, self.run_number, config_toml=dump_toml(self.cfg), trigger_menu=self.menu.to_dict(),
            thresholds=self._thresholds(), calibration=self._calibration_summary(), argv=self.argv,
            extra={"endpoints": {k: v for k, v in self.endpoints.items() if isinstance(v, (str, int))}},
            min_free_bytes=float(self.daq_cfg["min_free_mb"]) * 1e6)
        self.recorder.open()
        if self.recorder.restarted:
            self._log(logging.WARNING, f"run {self.run_number} continues at spill {self.recorder.next_spill}"
                      + (f"; spill {self.recorder.interrupted['spill']} was interrupted"
                         if self.recorder.interrupted else ""))
        self._log(logging.INFO, "preparing the trigger and reconstruction kernels (numba: loaded from its cache, "
                  "or compiled once after an install, about 1.5 min on 2 cores)")
        self._log(logging.INFO, f"kernels ready in {prepare_kernels():.1f} s")
        # the primitive pool, faulted in now, sized for the expected intensity (it grows if needed)
        self._buffers(int(min(self.daq_cfg["chunk_records"], max(self.cfg["beam"]["particles_per_spill"], 1))))
        self.crate = MSADC.from_config(self.cfg, self.endpoints["msadc"])
        self._connect_crate()
        if self.use_hv and self.endpoints.get("hv"):
            self.hv_reader = HVReader(self.cfg, self.calibration, str(self.endpoints["hv"]), self.publisher)
            self.hv_reader.start()
        self.monitor_worker = MonitorWorker(self)
        self.monitor_worker.start()

    def _connect_crate(self) -> None:
        assert self.crate is not None
        deadline = time.monotonic() + max(5.0, 3 * self.daq_cfg["timeout_ms"] / 1000.0)
        while True:
            try:
                self.crate.open()
                info = self.crate.configure()
                break
            except MSADCCrateError:
                raise
            except MSADCError as exc:
                if time.monotonic() > deadline or self.stopping:
                    raise
                log.warning("crate not reachable yet (%s); retrying", exc)
                self.crate.close()
                time.sleep(0.5)
        self.crate.take_incidents()
        self.recorder.set("crate", info, save=True)
        self._log(logging.INFO, f"crate {info['idn']} configured; run {self.run_number} -> {self.recorder.rdir}")
        self.ready = True              # kernels compiled, crate configured: spills will be taken from now on

    def _thresholds(self) -> dict[str, Any]:
        m = self.menu
        return {"counter_threshold_adc": m.counter_threshold_adc, "counter_threshold_mip": m.counter_threshold_mip,
                "window_ns": m.window_ns, "zs_threshold_adc": m.zs_threshold_adc,
                "physics": {"ps_min_gev": m.physics.ps_min_gev, "ecal_max_gev": m.physics.ecal_max_gev,
                            "prescale": m.physics.prescale},
                "dimuon": {"ps_min_gev": m.dimuon.ps_min_gev, "ecal_max_gev": m.dimuon.ecal_max_gev,
                           "prescale": m.dimuon.prescale},
                "beam": {"prescale": m.beam.prescale}, "random": {"rate_hz": m.random.rate_hz}}

    def _calibration_summary(self) -> dict[str, Any]:
        c = self.calibration
        return {"source": c.source, "gev_per_count": np.asarray(c.gev_per_count).tolist(),
                "hv_set": np.asarray(c.hv_set).tolist(), "t0_ns": np.asarray(c.t0_ns).tolist()}

    def close(self) -> None:
        for worker in (self.monitor_worker, self.hv_reader):
            if worker is not None:
                worker.stop()
        if self.crate is not None:
            self.crate.close()
            if self.recorder is not None and self.recorder.record:
                self.recorder.session["crate_stats"] = dict(self.crate.stats)
        if self.recorder is not None:
            if self.publisher is not None:
                self.recorder.set("monitoring", self.publisher.stats())
            try:
                self.recorder.close(self._exit_reason)
            except OSError as exc:      # e.g. a full disk: the previous run.json stays intact
                log.critical("run record not updated at the end of the run: %s", exc)
                self._exit_status = 1
        if self.heartbeat is not None:
            self.heartbeat.stop()
        if self.publisher is not None:
            meta, spill = self._status_meta()
            meta["message"] = f"stopped ({self._exit_reason})"
            self.publisher.publish("status", meta=meta, spill=spill)
            time.sleep(0.05)
            self.publisher.close()

    # ------------------------------------------------------------------------------ the loop
    def run(self) -> int:
        """Run until ``max_spills`` spills are recorded or :meth:`stop`; returns the exit status: 0, or 1 when
        the run had to stop because nothing more could be recorded (disk full, write error)."""
        try:
            self.start()
            self._loop()
        finally:
            self.close()
        return self._exit_status

    def _loop(self) -> None:
        assert self.crate is not None and self.recorder is not None
        rec = self.recorder
        poll = self.daq_cfg["poll_interval_s"]
        stall_s = self.daq_cfg["spill_timeout_s"]
        while True:
            try:
                next_crate = self._initial_crate_spill()
                break
            except MSADCError as exc:
                self._error(f"crate status unreadable at start: {exc}")
                if self.stopping:
                    return
                self._wait(max(poll, 0.5))
        last_progress = time.monotonic()
        stall_since: float | None = None
        observed: int | None = None      # last_complete of the previous status poll
        busy = True                      # something other than polling happened since that poll
        while not self.stopping and not self._done():
            t_poll = time.monotonic()
            try:
                st = self.crate.spill_status()
            except MSADCError as exc:
                self._error(f"crate status unreadable: {exc}")
                self._wait(max(poll, 0.5))
                busy = True
                continue
            if time.monotonic() - t_poll > max(0.25, 2 * poll):
                busy = True
            if observed is not None and not busy and st.last_complete > observed + 1:
                # two quick polls in a row and the id jumped: those ids never completed in the crate
                # (the emulator's feed discards spills during a stall); they are not lost spills
                self._skipped.update(range(observed + 1, st.last_complete))
            observed, busy = st.last_complete, False
            if next_crate is None:            # first status after a fresh start: wait for the next spill
                next_crate = st.last_complete + 1 if st.last_complete >= 0 else ANY_SPILL
            if st.last_complete < next_crate - 1 and st.last_complete >= -1 and rec.spills:
                self._log(logging.WARNING, f"crate spill counter went back ({st.last_complete} < {next_crate - 1}): "
                          "the crate was restarted; following its numbering")
                next_crate = st.last_complete + 1 if st.last_complete >= 0 else ANY_SPILL
            if st.last_complete >= max(next_crate, 0):
                if stall_since is not None:
                    rec.note_stall(stall_since, time.time())
                    stall_since = None
                next_crate = self._take_spill(next_crate, st.last_complete)
                last_progress = time.monotonic()
                busy = True
                continue
            self.sm.to(State.SPILL if st.state == "SPILL" else State.IDLE)
            if time.monotonic() - last_progress > stall_s and stall_since is None:
                stall_since = time.time()
                self._pending_flags.append("feed_stall")
                self._log(logging.WARNING, f"no spill for {stall_s:g} s: the beam feed stalled (crate state "
                          f"{st.state}, last spill {st.last_complete})")
                self.sm.to(State.IDLE, f"feed stalled: no spill for {stall_s:g} s")
            self._wait(poll)

    def _done(self) -> bool:
        return self.max_spills is not None and self.spills_this_session >= self.max_spills

    def _wait(self, seconds: float) -> None:
        self._stop.wait(seconds)

    def _error(self, message: str) -> None:
        """A crate problem outside a spill readout: ERROR state, log (throttled), try to reconnect."""
        self._errors_in_a_row += 1
        n = self._errors_in_a_row
        if n <= 3 or n % 50 == 0:
            self._log(logging.ERROR, message + (f" (failure {n} in a row)" if n > 1 else ""))
        self.sm.to(State.ERROR, message)
        try:
            self.crate.close()
            self.crate.open()
            self.crate.take_incidents()
            self._log(logging.WARNING, f"crate reconnected after {n} failure(s)")
            self._errors_in_a_row = 0
        except MSADCError as exc:
            if n <= 3:
                log.warning("reconnect failed: %s", exc)

    def _initial_crate_spill(self) -> int | None:
        """The first crate spill to read: after a restart, the interrupted spill (re-read if the crate
        still holds it) and then the one after the last recorded; on a fresh run the next one to complete."""
        rec = self.recorder
        assert rec is not None and self.crate is not None
        st = self.crate.spill_status()
        last = rec.last_crate_spill
        if rec.interrupted:
            intr = rec.interrupted
            cs = int(intr.get("crate_spill", -1))
            buffered = self._buffered()
            if cs in buffered and self._same_spill(cs, float(intr.get("detected_unix", 0.0))):
                self._log(logging.WARNING, f"re-reading interrupted spill {intr['spill']} (crate spill {cs})")
                self._process(int(intr["spill"]), cs, extra_flags=["retried"],
                              note=f"interrupted by the death of DAQ pid {intr.get('pid')}; re-read after restart")
            else:
                self.sm.to(State.ERROR, f"interrupted spill {intr['spill']} is no longer in the crate")
                rec.record_empty(int(intr["spill"]), cs, ["spill_lost", "readout_incomplete"],
                                 f"interrupted by the death of DAQ pid {intr.get('pid')}; the crate no longer "
                                 "held it at restart", start_unix=float(intr.get("start_unix", 0.0)))
                self._log(logging.ERROR, f"interrupted spill {intr['spill']} (crate spill {cs}) is lost: flagged")
                self.spills_this_session += 1
                self.sm.to(State.RECORDED)
            last = max(last if last is not None else -1, cs)
        if last is None:
            return None
        if last > st.last_complete:
            return None     # the crate was restarted since: start with its next spill
        first_buffered = min([s for s in self._buffered() if s > last], default=st.last_complete + 1)
        if first_buffered > last + 1:
            rec.note_gap(last + 1, first_buffered - 1, "completed while no DAQ was running; no longer in the crate")
            self._log(logging.WARNING, f"crate spills {last + 1}..{first_buffered - 1} passed while no DAQ was "
                      "running (noted as a gap in the run record)")
        return first_buffered

    def _same_spill(self, crate_spill: int, detected_unix: float) -> bool:
        """Is crate spill ``crate_spill`` still the one a previous DAQ saw complete at ``detected_unix``
        (and not a new spill of a restarted crate that reuses the number)?"""
        try:
            self.crate.select_spill(crate_spill)
            info = self.crate.spill_info()
        except MSADCError:
            return False
        finally:
            self.crate.release_spill()
        start = info.get("start_unix")
        return not isinstance(start, (int, float)) or detected_unix <= 0 or float(start) <= detected_unix

    def _buffered(self) -> list[int]:
        try:
            return self.crate.spill_list()
        except MSADCError:
            return []

    def _take_spill(self, next_crate: int, last_complete: int) -> int:
        """Read the oldest unread spill; crate spills that left the ring unread are recorded as lost."""
        buffered = [s for s in self._buffered() if s >= next_crate]
        target = min(buffered) if buffered else last_complete
        if next_crate == ANY_SPILL:           # the crate had no spill when we started: take the first one
            next_crate = target
        skipped = [i for i in range(next_crate, target) if i in self._skipped]
        if skipped:
            self.recorder.note_gap(skipped[0], skipped[-1], "crate spill ids skipped: these spills never completed "
                                   "in the crate (feed stall or numbering gap)")
            self._log(logging.WARNING, f"crate spill ids {skipped[0]}..{skipped[-1]} never completed (skipped)")
        for lost in range(next_crate, target):
            if lost in self._skipped:
                continue
            self.sm.to(State.END_OF_SPILL, f"crate spill {lost} left the crate unread")
            self.sm.to(State.ERROR, f"crate spill {lost} lost: the DAQ was too slow")
            spill = self.recorder.next_spill
            self.current_spill = spill
            self.recorder.record_empty(spill, lost, ["spill_lost"], "the crate dropped it before the DAQ read it")
            self._log(logging.ERROR, f"spill {spill} (crate spill {lost}) lost: dropped from the crate's buffer unread")
            self.spills_this_session += 1
            self.sm.to(State.RECORDED)
            if self._done():
                return lost + 1
        self._process(self.recorder.next_spill, target)
        return target + 1

    # ------------------------------------------------------------------------- one spill
    def _process(self, spill: int, crate_spill: int, extra_flags: list[str] | None = None, note: str = "") -> None:
        """Read, trigger, read out and record one crate spill as DAQ spill ``spill``."""
        rec = self.recorder
        assert rec is not None and self.crate is not None
        t_detect = time.time()
        t0 = time.perf_counter()
        self.current_spill = spill
        self.sm.to(State.END_OF_SPILL, f"crate spill {crate_spill} complete")
        if self.hv_reader is not None:
            self.hv_reader.poke()
        self.crate.take_incidents()
        flags = list(extra_flags or []) + self._pending_flags
        self._pending_flags = []
        rec.begin_spill(spill, crate_spill, detected_unix=t_detect)
        out = None
        max_attempts = 2
        for attempt in range(max_attempts):
            if out is not None:
                self.release_events(out.events_base)
            out = self.read_spill(crate_spill)
            hard = [f for f in out.flags if f in INCOMPLETE_SPILL_FLAGS]
            if not hard or "spill_lost" in hard or attempt == max_attempts - 1 or self.stopping:
                break
            self.sm.to(State.ERROR, f"spill {spill} readout failed ({', '.join(out.errors)}); retrying the spill")
            self._log(logging.WARNING, f"spill {spill}: readout failed ({'; '.join(out.errors)}); retrying it once")
            flags.append("retried")
            try:
                self.crate.reconnect()
            except MSADCSpillLost:
                out.flags.append("spill_lost")
                break
            except MSADCError as exc:
                out.errors.append(f"reconnect: {exc}")
                break
            self.sm.to(State.READOUT, f"retrying spill {spill}")
        assert out is not None
        incidents = self.crate.take_incidents()
        if "reconnected" in incidents:
            flags.append("reconnected")
        if "retried" in incidents:
            flags.append("retried")
        flags += out.flags
        if set(flags) & INCOMPLETE_SPILL_FLAGS:     # "retried" means: retried and succeeded
            flags = [f for f in flags if f != "retried"]
        flags = list(dict.fromkeys(flags))
        if set(flags) & INCOMPLETE_SPILL_FLAGS:
            self.sm.to(State.ERROR, f"spill {spill}: {', '.join(out.errors) or ', '.join(flags)}")
        t_rec = time.perf_counter()
        content, entry = self._build(spill, out, flags, incidents, note)
        entry["timing"] = out.timing
        rec.session["crate_stats"] = dict(self.crate.stats)
        out.timing["daq_s_before_write"] = time.perf_counter() - t0
        problem = rec.space_problem(estimated_size(content))
        flag = "disk_full"
        if problem is None:
            try:
                rec.record_spill(content, entry)
            except OSError as exc:          # SpillWriteError (disk full, I/O error) or the run record
                problem, flag = str(exc), "write_failed"
        if problem is not None:
            self._not_recorded(spill, out, entry, flag, problem)
            return
        entry = rec.spills[-1]
        out.timing["record_s"] = time.perf_counter() - t_rec
        out.timing["total_s"] = time.perf_counter() - t0      # saved with the next run-record update
        self.crate.release_spill()
        self.spills_this_session += 1
        self.last_spill_unix = float(out.info.get("start_unix", 0.0)) + float(out.info.get("length_s", 0.0))
        self.sm.to(State.RECORDED, f"spill {spill}: {content.event_id.shape[0]} events recorded")
        self._publish_scalers(spill, entry)
        self._progress(spill, entry, out)
        if self.monitor_worker is not None and content.event_id.shape[0]:
            self.monitor_worker.submit(spill, content, out.info, out.events_base)
        else:
            self.release_events(out.events_base)
        size = (rec.rdir / entry["file"]).stat().st_size
        problem = rec.space_problem(size)
        if problem is not None:         # the next spill would not fit: stop now, before anything is lost
            self._stop_for_disk(f"the next spill may not fit ({problem}); the run stops after spill {spill}, "
                                f"nothing lost: free disk space, then restart na64-daq with --run {self.run_number}")

    def _not_recorded(self, spill: int, out: SpillOutcome, entry: dict[str, Any], flag: str, problem: str) -> None:
        """The spill could not be written: flag it (an empty spill file keeps its accounting, if even that
        can be written), keep the crate's copy (not released), and stop the run."""
        assert self.recorder is not None
        rec = self.recorder
        n = int(entry.get("n_accepted", 0))
        self.release_events(out.events_base)
        keep = {k: entry[k] for k in ("start_unix", "length_s", "n_particles", "n_seen", "n_accepted", "n_read_out",
                                      "eot", "scalers", "triggers", "errors", "incidents", "note") if k in entry}
        flags = [flag] + [f for f in entry.get("flags", []) if f != flag]
        try:
            rec.record_empty(spill, int(out.crate_spill), flags, f"{n} accepted events not recorded: {problem}",
                             **keep)
            noted = "the spill is flagged " + flag
        except OSError as exc:
            noted = f"not even its flag could be written ({exc}); the run record marks it in flight"
        self._publish_scalers(spill, rec.spills[-1] if rec.spills and rec.spills[-1]["spill"] == spill else entry)
        self._stop_for_disk(f"spill {spill}: {n:,} accepted events NOT recorded: {problem}; {noted}. "
                            f"Free disk space, then restart na64-daq with --run {self.run_number}")

    def _stop_for_disk(self, message: str) -> None:
        self._log(logging.CRITICAL, message)
        self.sm.to(State.ERROR, message)
        self._exit_status = 1
        self.stop("disk_full")

    def read_spill(self, crate_spill: int) -> SpillOutcome:
        """One readout attempt of a crate spill; never raises a crate error: failures end up in
        ``flags``/``errors`` of the outcome together with whatever was read."""
        crate = self.crate
        assert crate is not None
        out = SpillOutcome(crate_spill)
        t = time.perf_counter()
        try:
            crate.select_spill(crate_spill)
            out.info = crate.spill_info()
            out.n_particles = crate.prim_count()
        except MSADCError as exc:
            self._fail(out, exc, "select")
            return out
        out.timing["select_s"] = time.perf_counter() - t
        self.sm.to(State.READOUT, f"crate spill {crate_spill}: {out.n_particles} particles")
        self._trigger_spill(out)
        if not out.triggered:
            return out
        t = time.perf_counter()
        n_acc = int(out.accepted.size)
        try:
            crate.upload_accepted(out.accepted)
            got = crate.accepted_count()
            if got != n_acc:
                crate.upload_accepted(out.accepted)
                got = crate.accepted_count()
                if got != n_acc:
                    raise MSADCCrateError("ACC:COUN? check", [(0, f"crate holds {got} accepted, {n_acc} uploaded")])
        except MSADCError as exc:
            self._fail(out, exc, "accepted-list upload")
            return out
        out.timing["upload_s"] = time.perf_counter() - t
        t = time.perf_counter()
        out.events_base = self._event_buffer(n_acc)
        out.events = out.events_base[:n_acc]
        step = max(1, min(MAX_EVENTS_PER_QUERY, self.daq_cfg["chunk_records"] * PRIM_RECORD_BYTES // EVENT_RECORD_BYTES))
        try:
            for first in range(0, n_acc, step):
                c = min(step, n_acc - first)
                crate.read_events(first, c, out=out.events[first:first + c])
                out.n_read_out = first + c
        except MSADCError as exc:
            self._fail(out, exc, f"event readout ({out.n_read_out} of {n_acc})")
            out.events = out.events[:out.n_read_out]
            return out
        out.timing["events_s"] = time.perf_counter() - t
        out.timing["event_bytes"] = float(out.events.nbytes)
        if self.daq_cfg["record_truth"] and n_acc:
            t = time.perf_counter()
            try:
                if crate.truth_supported():
                    truth = np.empty(n_acc, TRUTH_DTYPE)
                    for first in range(0, n_acc, MAX_EVENTS_PER_QUERY):
                        c = min(MAX_EVENTS_PER_QUERY, n_acc - first)
                        crate.read_truth(first, c, out=truth[first:first + c])
                    out.truth = truth
            except MSADCError as exc:
                out.errors.append(f"truth not recorded: {exc}")
                log.warning("spill of crate spill %d: truth not recorded (%s)", crate_spill, exc)
            out.timing["truth_s"] = time.perf_counter() - t
        return out

    def _fail(self, out: SpillOutcome, exc: BaseException, stage: str) -> None:
        """Note a failure that retries did not cure: its flag (timeout, truncated_block, crate_error,
        spill_lost) plus readout_incomplete."""
        out.flags += [getattr(exc, "flag", "crate_error"), "readout_incomplete"]
        out.errors.append(f"{stage}: {exc}")
        log.error("crate spill %d: %s failed: %s", out.crate_spill, stage, exc)

    def _buffers(self, n: int) -> list[np.ndarray]:
        """The pool of 3 primitive chunk buffers, allocated and pre-faulted once (page faults of fresh
        memory would otherwise cost more than the transfer of the first spill) and reused."""
        chunk = int(self.daq_cfg["chunk_records"])
        size = min(chunk, max(n, 1))
        if not self._pool or self._pool[0].shape[0] < size:
            self._pool = []
            for _ in range(3):
                b = np.empty((size, ch.N_TRIGGER_CHANNELS, ch.N_SAMPLES), np.int16)
                b.fill(0)
                self._pool.append(b)
        return self._pool

    def _event_buffer(self, n: int) -> np.ndarray:
        """A buffer for at least ``n`` events: a recycled one (already faulted in: fresh memory costs
        0.1-0.5 s per 600 MB in page faults) or a new one."""
        with self._event_lock:
            fits = [i for i, b in enumerate(self._event_pool) if b.shape[0] >= n]
            if fits:
                return self._event_pool.pop(min(fits, key=lambda i: self._event_pool[i].shape[0]))
        return np.empty((max(int(n * 1.1) + 16, 1), ch.N_CHANNELS, ch.N_SAMPLES), np.int16)

    def release_events(self, base: np.ndarray | None) -> None:
        """Give an event buffer back once nothing uses it any more (the monitor worker calls this)."""
        if base is None:
            return
        with self._event_lock:
            pool = self._event_pool
            if any(b is base for b in pool):
                return
            pool.append(base)
            if len(pool) > 2:      # drop the smallest, by position (list.remove would compare arrays with ==)
                del pool[min(range(len(pool)), key=lambda i: pool[i].shape[0])]

    def _times(self, n: int) -> np.ndarray:
        """A reusable arrival-time buffer of at least ``n`` records (pre-faulted)."""
        if self._times_buf.shape[0] < n:
            self._times_buf = np.zeros(max(n, int(1.25 * self._times_buf.shape[0])), np.float64)
        return self._times_buf[:n]

    def _trigger_spill(self, out: SpillOutcome) -> None:
        """Primitives in chunks (reader thread) -> trigger (this thread), overlapped."""
        from trigger.kernels import SpillTrigger

        crate = self.crate
        n = out.n_particles
        chunk = int(self.daq_cfg["chunk_records"])
        out.times = self._times(n)
        pool = self._buffers(n)
        free: queue.Queue[np.ndarray] = queue.Queue()
        for b in pool:
            free.put(b)
        full: queue.Queue[Any] = queue.Queue(maxsize=2)
        abort = threading.Event()
        trig = SpillTrigger(self.menu, parallel=self._parallel_trigger)
        t_wait = 0.0
        t_trig = 0.0

        def reader() -> None:
            first = 0
            try:
                while first < n and not abort.is_set():
                    c = min(chunk, n - first)
                    buf = free.get()
                    view = buf[:c]
                    crate.read_primitives(first, c, out=view)
                    crate.read_times(first, c, out=out.times[first:first + c])
                    full.put((first, c, buf))
                    first += c
                full.put(None)
            except BaseException as exc:      # handed to the main thread
                full.put(_ReaderFailed(exc, first))

        t0 = time.perf_counter()
        th = threading.Thread(target=reader, name="prim-reader", daemon=True)
        th.start()
        failure: BaseException | None = None
        try:
            while True:
                tw = time.perf_counter()
                item = full.get()
                t_wait += time.perf_counter() - tw
                if item is None:
                    break
                if isinstance(item, _ReaderFailed):
                    failure = item.exc
                    break
                first, c, buf = item
                tt = time.perf_counter()
                try:
                    trig.process(buf[:c], out.times[first:first + c], first)
                except ValueError as exc:        # e.g. arrival times not increasing: corrupt data
                    failure = exc
                    break
                t_trig += time.perf_counter() - tt
                out.n_seen = first + c
                free.put(buf)
        finally:
            abort.set()
            while th.is_alive():                 # unblock the reader if it waits for a buffer or a slot
                try:
                    full.get_nowait()
                except queue.Empty:
                    pass
                free.put(pool[0])
                th.join(timeout=0.05)
        res = trig.finish()
        out.accepted, out.mask = res.accepted, res.mask
        out.eot = int(res.eot)
        crate_sc = out.info.get("scalers", {}) if isinstance(out.info.get("scalers"), dict) else {}
        try:
            out.scalers = res.scalers_with(crate_sc)
        except ValueError as exc:
            log.warning("crate scalers ignored: %s", exc)
            out.scalers = dict(res.scalers)
        out.triggers = res.triggers()
        out.timing.update(primitives_s=time.perf_counter() - t0, trigger_s=t_trig, trigger_wait_s=t_wait,
                          primitive_bytes=float(n * (PRIM_RECORD_BYTES + 8)))
        if failure is not None:
            if not isinstance(failure, (MSADCError, ValueError)):
                raise failure
            # the spill is flagged; the whole spill is retried once by the caller
            self._fail(out, failure, f"primitive readout/trigger ({out.n_seen} of {n} records)")
            return
        out.triggered = True

    # --------------------------------------------------------------------------- recording
    def _build(self, spill: int, out: SpillOutcome, flags: list[str], incidents: list[str],
               note: str) -> tuple[SpillContent, dict[str, Any]]:
        n = int(out.events.shape[0])
        acc = out.accepted[:n]
        times = out.times[acc] if out.times.size and n else np.zeros(n, np.float64)
        hv = self.hv_reader.snapshot() if self.hv_reader is not None else None
        info = out.info
        table = info.get("table", {}) if isinstance(info.get("table"), dict) else {}
        truth = out.truth[:n] if out.truth is not None and out.truth.shape[0] >= n else None
        extra = {"timing": out.timing, "errors": out.errors, "incidents": incidents, "note": note,
                 "crate_errors": [list(e) for e in (self.crate.crate_errors if self.crate else [])][-10:],
                 "calibration_mode": self.calibration_mode}
        if self.crate is not None:
            self.crate.crate_errors.clear()
        attrs = {"crate_spill": int(out.crate_spill), "start_unix": float(info.get("start_unix", 0.0)),
                 "length_s": float(info.get("length_s", 0.0)), "eot": int(out.eot), "scalers": out.scalers,
                 "triggers": out.triggers, "trigger_menu": self.menu.to_dict(), "hv": hv or {}, "table": table,
                 "extra": extra}
        content = SpillContent(self.run_number, spill, acc.astype(np.uint32), out.mask[:n].astype(np.uint8),
                               np.ascontiguousarray(times, np.float64), out.events, truth, attrs)
        entry = {"crate_spill": int(out.crate_spill), "start_unix": attrs["start_unix"], "length_s": attrs["length_s"],
                 "n_particles": int(out.n_particles), "n_seen": int(out.n_seen), "n_accepted": int(out.accepted.size),
                 "n_read_out": int(out.n_read_out), "eot": int(out.eot), "flags": flags, "scalers": out.scalers,
                 "triggers": out.triggers, "table": table, "hv": hv, "errors": out.errors, "incidents": incidents,
                 "truth": truth is not None, "note": note}
        return content, entry

    def _publish_scalers(self, spill: int, entry: dict[str, Any]) -> None:
        if self.publisher is None:
            return
        sc = entry.get("scalers") or {}
        tot = self.recorder.totals if self.recorder else {}
        meta = {"S0": int(sc.get("S0", 0)), "S1": int(sc.get("S1", sc.get("crate_S1", 0))), "V0": int(sc.get("V0", 0)),
                "eot": int(entry.get("eot", 0)), "eot_total": int(tot.get("eot", 0)),
                "particles": int(entry.get("n_particles", 0)), "triggers": entry.get("triggers") or {},
                "accepted": int(entry.get("n_accepted", 0)), "read_out": int(entry.get("n_read_out", 0)),
                "recorded": int(entry.get("n_recorded", 0)), "flags": list(entry.get("flags", [])),
                "spill_length_s": float(entry.get("length_s", 0.0)), "start_unix": float(entry.get("start_unix", 0.0)),
                "crate_spill": int(entry.get("crate_spill", -1)), "scalers": sc}
        self.publisher.publish("scalers", meta=meta, spill=spill)

    def _progress(self, spill: int, entry: dict[str, Any], out: SpillOutcome) -> None:
        tot = self.recorder.totals if self.recorder else {}
        dt = out.timing.get("total_s", 0.0)
        length = float(entry.get("length_s") or 0.0)
        rate = entry["n_accepted"] / length if length > 0 else 0.0
        flags = ",".join(entry.get("flags", [])) or "ok"
        line = (f"spill {spill:>5} (crate {entry['crate_spill']}): {entry['n_particles']:>9,} particles  "
                f"{entry['n_accepted']:>7,} accepted  {entry.get('n_recorded', 0):>7,} recorded  "
                f"{rate:8.1f} Hz  EOT {entry['eot']:,}  {dt:6.2f} s  lost spills {tot.get('lost_spills', 0)}  [{flags}]")
        if self.console is not None:
            style = "green" if flags == "ok" else ("yellow" if not set(entry.get("flags", [])) & INCOMPLETE_SPILL_FLAGS
                                                   else "bold red")
            self.console.print(line, style=style, highlight=False, markup=False)
        else:
            log.info("%s", line)


# ------------------------------------------------------------------------------------ workers
class HVReader(threading.Thread):
    """Reads the HV back (never sets it) every :data:`HV_PERIOD_S` and when poked at the end of a spill;
    publishes ``hv`` and keeps the latest reading for the run record. A failing supply is retried."""

    def __init__(self, cfg: dict[str, Any], calibration: Calibration, address: str, publisher: Publisher | None) -> None:
        super().__init__(name="hv-reader", daemon=True)
        self.cfg, self.calibration, self.address, self.publisher = cfg, calibration, address, publisher
        self._stop_evt = threading.Event()
        self._poke = threading.Event()
        self._lock = threading.Lock()
        self._latest: dict[str, Any] | None = None
        self.supply: Any = None
        self.errors = 0

    def poke(self) -> None:
        self._poke.set()

    def snapshot(self) -> dict[str, Any] | None:
        with self._lock:
            return self._latest

    def _read(self) -> None:
        from hv_control.supply import HVSupply

        if self.supply is None:
            self.supply = HVSupply.connect(self.address, self.cfg, self.calibration)
        r = self.supply.read_all()
        now = time.time()
        snap = {"unix": now, "channel_ids": r["channel_ids"].tolist(),
                "vset": np.round(r["vset"], 1).tolist(), "vmon": np.round(r["vmon"], 1).tolist(),
                "imon": np.round(r["imon"], 2).tolist(), "status": r["status"].astype(int).tolist()}
        with self._lock:
            self._latest = snap
        if self.publisher is not None:
            self.publisher.publish("hv", arrays={
                "vset": r["vset"].astype(np.float32), "vmon": r["vmon"].astype(np.float32),
                "imon": r["imon"].astype(np.float32), "status": r["status"].astype(np.int32),
                "channel_ids": r["channel_ids"].astype(np.int64)}, meta={"unix": now})

    def run(self) -> None:
        while not self._stop_evt.is_set():
            try:
                self._read()
            except Exception as exc:              # HV problems never stop the DAQ; they are logged
                self.errors += 1
                if self.errors in (1, 10) or self.errors % 100 == 0:
                    log.warning("HV read-back from %s failed (%d times): %s", self.address, self.errors, exc)
                if self.supply is not None:
                    try:
                        self.supply.close()
                    except Exception:
                        pass
                    self.supply = None
            self._poke.wait(HV_PERIOD_S)
            self._poke.clear()

    def stop(self) -> None:
        self._stop_evt.set()
        self._poke.set()
        self.join(timeout=5)
        if self.supply is not None:
            try:
                self.supply.close()
            except Exception:
                pass


class MonitorWorker(threading.Thread):
    """Reconstructs the recorded events of a spill and publishes ``calo``, ``ecal_hcal``, ``waveforms`` and
    (calibration mode) ``amplitudes``. Lossy: while it is busy a newer spill replaces a waiting one."""

    def __init__(self, daq: DAQ) -> None:
        super().__init__(name="monitor-worker", daemon=True)
        self.daq = daq
        self._q: queue.Queue[Any] = queue.Queue(maxsize=1)
        self.skipped = 0
        self.done = 0

    def submit(self, spill: int, content: SpillContent, info: dict[str, Any], base: np.ndarray | None = None) -> None:
        """Queue a spill for monitoring; a spill still waiting is replaced (and counted as skipped).
        ``base`` (the event buffer) goes back to the DAQ once the spill is done with."""
        item = (spill, content, info, base)
        try:
            self._q.put_nowait(item)
            return
        except queue.Full:
            pass
        try:
            old = self._q.get_nowait()
            self.skipped += 1
            if old is not None:
                self.daq.release_events(old[3])
        except queue.Empty:
            pass
        try:
            self._q.put_nowait(item)
        except queue.Full:
            self.skipped += 1
            self.daq.release_events(base)

    def run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            try:
                self.publish(*item[:3])
                self.done += 1
            except Exception:
                log.exception("monitoring of spill %s failed", item[0])
            try:
                self.daq.release_events(item[3])
            except Exception:       # the monitoring thread outlives any bug in the buffer recycling
                log.exception("event buffer of spill %s not recycled", item[0])

    def stop(self) -> None:
        try:
            self._q.put(None, timeout=10)
        except queue.Full:
            pass
        self.join(timeout=30)

    def publish(self, spill: int, content: SpillContent, info: dict[str, Any]) -> None:
        pub = self.daq.publisher
        if pub is None:
            return
        wf = content.waveforms
        r = reconstruct(wf, self.daq.gev_per_count, parallel=True)
        e = r.energy_gev
        amp = r.amplitude
        hit = amp > 0
        ecal = slice(ch.ECAL_FIRST, ch.ECAL_FIRST + ch.N_ECAL)
        hcal = slice(ch.HCAL_FIRST, ch.HCAL_FIRST + ch.N_HCAL)
        shape_e = (ch.N_ECAL_SECTIONS, ch.N_ECAL_X, ch.N_ECAL_Y)
        shape_h = (ch.N_HCAL_MODULES, ch.N_HCAL_Y, ch.N_HCAL_X)
        pub.publish("calo", arrays={
            "ecal_energy": e[:, ecal].sum(axis=0, dtype=np.float64).reshape(shape_e),
            "ecal_occupancy": hit[:, ecal].sum(axis=0).astype(np.int64).reshape(shape_e),
            "hcal_energy": e[:, hcal].sum(axis=0, dtype=np.float64).reshape(shape_h),
            "hcal_occupancy": hit[:, hcal].sum(axis=0).astype(np.int64).reshape(shape_h)},
            meta={"events": int(wf.shape[0]), "ecal_axes": ["section", "x", "y"], "hcal_axes": ["module", "y", "x"]},
            spill=spill)
        e_ecal = e[:, ecal].sum(axis=1, dtype=np.float64)
        e_hcal = e[:, hcal].sum(axis=1, dtype=np.float64)
        counts, _, _ = np.histogram2d(e_ecal, e_hcal, bins=[ECAL_EDGES[2], HCAL_EDGES[2]],
                                      range=[ECAL_EDGES[:2], HCAL_EDGES[:2]])
        pub.publish("ecal_hcal", arrays={"counts": counts.astype(np.float64)},
                    meta={"ecal_edges": ECAL_EDGES, "hcal_edges": HCAL_EDGES, "events": int(wf.shape[0])}, spill=spill)
        k = int(self.daq.daq_cfg["sample_waveforms"])
        if k > 0:
            pick = np.unique(np.linspace(0, wf.shape[0] - 1, min(k, wf.shape[0])).astype(np.int64))
            pub.publish("waveforms", arrays={"waveforms": np.ascontiguousarray(wf[pick]),
                                             "event_ids": content.event_id[pick].astype(np.int64)}, spill=spill)
        if self.daq.calibration_mode:
            beam = (content.trigger_mask & TRIGGER_BITS["beam"]) != 0
            table = info.get("table", {}) if isinstance(info.get("table"), dict) else {}
            pub.publish("amplitudes", arrays={"amplitudes": np.ascontiguousarray(amp[beam][:, :ch.N_CALO], np.float32)},
                        meta={"table": table, "start_unix": float(info.get("start_unix", 0.0)),
                              "events": int(beam.sum())}, spill=spill)
