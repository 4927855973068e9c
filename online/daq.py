"""Run control: the spill loop of ``na64-daq`` (docs/architecture.md "Processes and the loop").

The DAQ is built of rooms, one job each; a spill passes through them in this order:

- :mod:`online.spill_state`: the spill state machine (:class:`State`, :data:`TRANSITIONS`,
  :class:`SpillStateMachine`); every change is published on the ``status`` topic;
- this module, the run control (:class:`DAQ`): polls ``SPIL:STAT?`` until a new completed spill (crate
  spills that were dropped from the crate's ring before the DAQ got to them are recorded as empty spills
  flagged ``spill_lost``), has the spill read, retries a failed readout once, records the spill, keeps the
  run's bookkeeping, stops before the disk is full, prints the progress line and, after a restart, picks
  up the interrupted spill (restart recovery);
- :mod:`online.readout`: crate spill -> :class:`~online.readout.SpillOutcome` (primitives and the trigger
  overlapped, the accepted list, the events, the truth), through the recycled buffers of
  :mod:`online.buffers`;
- :mod:`online.record_content`: the outcome -> the spill file's content and the run record's entry, which
  :mod:`online.recorder` writes (the spill file atomically);
- the workers, off the loop: :mod:`online.monitor_worker` (reconstruction for the calo maps, histograms,
  waveforms, amplitudes: a lossy path with a queue of 1 that never holds up the loop) and
  :mod:`online.hv_readback` (the HV read-back).

Faults: the driver retries every transaction after a reconnect (``daq.retries``); a spill whose
readout still fails is retried once as a whole, and otherwise recorded with what was read and flagged
with the reason (``detector.records.SPILL_FLAGS``). The run goes on. Stop with SIGINT/SIGTERM: the spill
in hand is finished, then the DAQ exits 0.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from detector.config import Calibration, Config, dump_toml
from detector.records import INCOMPLETE_SPILL_FLAGS
from detector.spillfile import estimated_size

from .buffers import EventPool
from .calibration_filter import CellFilter
from .hv_readback import HVReader
from .kernels import prepare_kernels
from .monitor_messages import led_message, scalers_message
from .monitor_worker import MonitorWorker
from .msadc import MSADC, MSADCCrateError, MSADCError, MSADCLockedError, MSADCSpillLost
from .publisher import Heartbeat, Publisher
from .readout import CrateReadout, SpillOutcome
from .record_content import build_spill, calibration_summary, run_thresholds, spill_flags
from .recorder import RunRecorder
from .recovery import RECOVERABLE_FLAGS, buffered_spills, ids_outside, resume_point, still_holds, unwritten
from .spill_report import print_line, progress_line
from .spill_state import TRANSITIONS, IllegalTransition, SpillStateMachine, State
from .spill_stream import SpillStreamer

if TYPE_CHECKING:
    from detector.led import LedEvents

__all__ = [
    "DAQ",
    "TRANSITIONS",
    "HVReader",
    "IllegalTransition",
    "MonitorWorker",
    "SpillOutcome",
    "SpillStateMachine",
    "State",
    "prepare_kernels",
]

log = logging.getLogger("online.daq")

ANY_SPILL = -1  #: "the first spill the crate completes" (the crate had none at start)
#: more missing crate spill ids than this between two reads are a numbering jump (one gap note), not
#: that many spills lost from the ring: no ring holds so many
MAX_LOST_PER_TAKE = 64
MAX_SKIPPED_RANGES = 256  #: skipped-id ranges remembered (oldest forgotten)


class DAQ:
    """One ``na64-daq`` session. ``endpoints`` is the emulator's / the setup's endpoints dict (``msadc``
    VISA resource, ``hv`` serial address)."""

    def __init__(
        self,
        cfg: Config,
        calibration: Calibration,
        endpoints: dict[str, Any],
        out: str,
        *,
        run: int,
        monitor: str | None = None,
        calibration_mode: bool | None = None,
        max_spills: int | None = None,
        console: Any = None,
        argv: list[str] | None = None,
        hv: bool = True,
        curve_keys: tuple[bytes, bytes] | None = None,
        calibration_request: str | None = None,
    ) -> None:
        from trigger.menu import TriggerMenu

        self.calibration_mode = bool(cfg.daq.calibration_mode if calibration_mode is None else calibration_mode)
        if self.calibration_mode:
            cfg = cfg.with_overrides(
                {"daq": {"calibration_mode": True}, "trigger": {"menu": {"beam": {"enabled": True, "prescale": 1}}}}
            )
        self.cfg = cfg
        self.daq_cfg = self.cfg.daq
        self.calibration = calibration
        self.menu = TriggerMenu.from_config(self.cfg, calibration)
        self.endpoints = dict(endpoints)
        self.out = out
        self.run_number = int(run)
        self.monitor_address = monitor or self.cfg.endpoints.monitor
        self.max_spills = max_spills
        self.console = console
        self.argv = argv
        self.use_hv = hv
        self.curve_keys = curve_keys
        #: calibration mode with a campaign's request file: only spills on the requested cell are read out
        self.cell_filter = CellFilter(calibration_request) if self.calibration_mode and calibration_request else None
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
        self.readout: CrateReadout | None = None
        self.streamer: SpillStreamer | None = None  #: streams each spill's events to its file during the readout
        self.events = EventPool()  #: event buffers: taken by the readout, given back by the monitor worker
        self.ready = False  #: kernels compiled, crate configured: spills are taken from now on
        self._pending_flags: list[str] = []
        self._errors_in_a_row = 0
        #: ranges (first, last) of crate spill ids seen to be skipped (never completed), oldest first
        self._skipped: list[tuple[int, int]] = []
        self._exit_reason = "stopped"
        self._exit_status = 0  #: 1 once the run had to stop because nothing more could be recorded

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
        meta = {
            "state": self.sm.state.value,
            "run": self.run_number,
            "spill": self.current_spill,
            "last_spill_unix": self.last_spill_unix,
            "spills_done": int(tot.get("spills", 0)),
            "events_recorded": int(tot.get("events_recorded", 0)),
            "lost_spills": int(tot.get("lost_spills", 0)),
            "message": self.sm.message,
            "calibration_mode": self.calibration_mode,
            "ready": self.ready,
            "monitor_dropped": self.publisher.dropped if self.publisher else 0,
        }
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
        self.publisher = Publisher(
            self.monitor_address,
            run=self.run_number,
            zmq_curve=self.cfg.endpoints.zmq_curve,
            curve_public_key=self.curve_keys[0] if self.curve_keys else None,
            curve_secret_key=self.curve_keys[1] if self.curve_keys else None,
        )
        self.heartbeat = Heartbeat(self.publisher, self._status_meta, self.daq_cfg.heartbeat_s)
        self.heartbeat.start()
        owner = f"na64-daq:{socket.gethostname()[:32]}:{os.getpid()}"
        self.crate = MSADC.from_config(self.cfg, self.endpoints["msadc"], owner=owner)
        self._claim_crate()  # before anything is recorded: a second DAQ on this crate stops here
        self.recorder = RunRecorder(
            self.out,
            self.run_number,
            config_toml=dump_toml(self.cfg),
            trigger_menu=self.menu.to_dict(),
            thresholds=run_thresholds(self.menu),
            calibration=calibration_summary(self.calibration),
            argv=self.argv,
            extra={"endpoints": {k: v for k, v in self.endpoints.items() if isinstance(v, (str, int))}},
            min_free_bytes=float(self.daq_cfg.min_free_mb) * 1e6,
        )
        self.recorder.open()
        self.streamer = SpillStreamer(self.recorder)
        for problem in self.recorder.session["journal_problems"] + self.recorder.session["journal_repaired"]:
            self._log(logging.WARNING, f"run record: {problem}")
        if self.recorder.restarted:
            self._log(
                logging.WARNING,
                f"run {self.run_number} continues at spill {self.recorder.next_spill}"
                + (
                    f"; spill {self.recorder.interrupted['spill']} was interrupted" if self.recorder.interrupted else ""
                ),
            )
        self._log(
            logging.INFO,
            "preparing the trigger and reconstruction kernels (numba: loaded from its cache, "
            "or compiled once after an install: `python3 tasks.py setup` does that)",
        )
        self._log(logging.INFO, f"kernels ready in {prepare_kernels(self.menu):.1f} s")
        self.readout = CrateReadout(
            self.crate,
            self.menu,
            chunk_records=self.daq_cfg.chunk_records,
            record_truth=self.daq_cfg.record_truth,
            events=self.events,
            max_events=self.daq_cfg.max_events_per_spill,
            spill_filter=self.cell_filter.refuse if self.cell_filter is not None else None,
            read_led=self.cfg.led.enabled,
            sink=self.streamer,
        )
        # the primitive pool, faulted in now, sized for the expected intensity (it grows if needed); a
        # calibration DAQ reads only calibration-beam spills (the others are skipped unread)
        beam = self.cfg.beam
        expected = beam.calibration_particles_per_spill if self.cell_filter else beam.particles_per_spill
        self.readout.prepare(int(min(self.daq_cfg.chunk_records, max(expected, 1))))
        self._connect_crate()
        if self.use_hv and self.endpoints.get("hv"):
            self.hv_reader = HVReader(self.cfg, self.calibration, str(self.endpoints["hv"]), self.publisher)
            self.hv_reader.start()
        self.monitor_worker = MonitorWorker(
            self.publisher,
            self.gev_per_count,
            sample_waveforms=self.daq_cfg.sample_waveforms,
            calibration_mode=self.calibration_mode,
            release=self.events.release,
            spectrometer=MonitorWorker.geometry(self.cfg),
            gate=MonitorWorker.event_gate(self.cfg, self.calibration),
        )
        self.monitor_worker.start()

    def _claim_crate(self) -> None:
        """Open the crate and take its data commands (``SYST:LOCK``). A refusal is retried for ``daq.lock_wait_s`` (the
        lock of a DAQ that died expires in the crate), then raised (:class:`MSADCLockedError`: na64-daq exits naming the
        owner). A crate not reachable yet is left to :meth:`_connect_crate`."""
        assert self.crate is not None
        deadline = time.monotonic() + self.daq_cfg.lock_wait_s
        while True:
            try:
                self.crate.open()
                return
            except MSADCLockedError as exc:
                if time.monotonic() > deadline or self.stopping:
                    raise
                log.warning("%s; waiting for it to be released", exc)
                time.sleep(0.5)
            except MSADCError:
                return

    def _connect_crate(self) -> None:
        assert self.crate is not None and self.recorder is not None
        deadline = time.monotonic() + max(5.0, 3 * self.daq_cfg.timeout_ms / 1000.0)
        while True:
            try:
                self.crate.open()
                info = self.crate.configure()
                break
            except (MSADCCrateError, MSADCLockedError):
                raise
            except MSADCError as exc:
                if time.monotonic() > deadline or self.stopping:
                    raise
                log.warning("crate not reachable yet (%s); retrying", exc)
                self.crate.close()
                time.sleep(0.5)
        self.crate.take_incidents()
        before = dict(self.recorder.record.get("crate") or {})  # a continued run: the previous session's
        info["restarts"] = list(before.get("restarts", []))
        if before.get("boot_id") and before["boot_id"] != info["boot_id"]:
            self.crate.restarts.append((str(before["boot_id"]), str(info["boot_id"])))
        self.recorder.set("crate", info, save=True)
        self._note_restarts()
        self._log(logging.INFO, f"crate {info['idn']} configured; run {self.run_number} -> {self.recorder.rdir}")
        self.ready = True

    def close(self) -> None:
        if self.streamer is not None:
            self.streamer.abort()
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
            except OSError as exc:  # e.g. a full disk: the previous run.json stays intact
                log.critical("run record not updated at the end of the run: %s", exc)
                self._exit_status = 1
        if self.recorder is not None and self.recorder.record:  # on stderr and the monitor's log: how the run ended
            self._log(logging.INFO, f"end of run ({self._exit_reason}): {self.recorder.summary()}")
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
        poll = self.daq_cfg.poll_interval_s
        stall_s = self.daq_cfg.spill_timeout_s
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
        observed: int | None = None  # last_complete of the previous status poll
        busy = True  # something other than polling happened since that poll
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
                self._note_skipped(observed + 1, st.last_complete - 1)
            observed, busy = st.last_complete, False
            self._note_restarts()
            if next_crate is None:  # first status after a fresh start: wait for the next spill
                next_crate = st.last_complete + 1 if st.last_complete >= 0 else ANY_SPILL
            if st.last_complete < next_crate - 1 and st.last_complete >= -1 and rec.spills:
                self._log(
                    logging.WARNING,
                    f"crate spill counter went back ({st.last_complete} < {next_crate - 1}): "
                    "the crate was restarted; following its numbering",
                )
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
                self._log(
                    logging.WARNING,
                    f"no spill for {stall_s:g} s: the beam feed stalled (crate state "
                    f"{st.state}, last spill {st.last_complete})",
                )
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
        assert self.crate is not None
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
            if still_holds(self.crate, cs, float(intr.get("detected_unix", 0.0))):
                self._log(logging.WARNING, f"re-reading interrupted spill {intr['spill']} (crate spill {cs})")
                self._process(
                    int(intr["spill"]),
                    cs,
                    extra_flags=["retried"],
                    note=f"interrupted by the death of DAQ pid {intr.get('pid')}; re-read after restart",
                )
            else:
                self.sm.to(State.ERROR, f"interrupted spill {intr['spill']} is no longer in the crate")
                rec.record_empty(
                    int(intr["spill"]),
                    cs,
                    ["spill_lost", "readout_incomplete"],
                    f"interrupted by the death of DAQ pid {intr.get('pid')}; the crate no longer held it at restart",
                    start_unix=float(intr.get("start_unix", 0.0)),
                )
                self._log(logging.ERROR, f"interrupted spill {intr['spill']} (crate spill {cs}) is lost: flagged")
                self.spills_this_session += 1
                self.sm.to(State.RECORDED)
            last = max(last if last is not None else -1, cs)
        for e in unwritten(rec.spills):
            if self.stopping or self._done():
                break
            self._recover(e)
        first, gap = resume_point(self.crate, last, st.last_complete)
        if gap is not None:
            rec.note_gap(gap[0], gap[1], "completed while no DAQ was running; no longer in the crate")
            self._log(
                logging.WARNING,
                f"crate spills {gap[0]}..{gap[1]} passed while no DAQ was running (noted as a gap in the run record)",
            )
        return first

    def _note_skipped(self, first: int, last: int) -> None:
        """Crate spill ids ``first..last`` never completed (one range, however many ids)."""
        self._skipped.append((first, last))
        del self._skipped[:-MAX_SKIPPED_RANGES]

    def _skipped_in(self, first: int, last: int) -> list[tuple[int, int]]:
        """The parts of ``first..last`` seen to be skipped, as ranges."""
        return [(max(a, first), min(b, last)) for a, b in self._skipped if a <= last and b >= first]

    def _recover(self, entry: dict[str, Any]) -> None:
        """A spill a previous session could not write (``disk_full``, ``write_failed``) is read again from
        the crate's buffer and recorded as a new DAQ spill (flag ``retried``, ``recovers``: its spill),
        if the crate still holds it; the flagged entry stays as it is (the run record is append-only)."""
        assert self.recorder is not None and self.crate is not None
        cs = int(entry["crate_spill"])
        why = ",".join(f for f in entry.get("flags", []) if f in RECOVERABLE_FLAGS)
        if not still_holds(self.crate, cs, float(entry.get("recorded_unix") or 0.0)):
            self._log(
                logging.ERROR,
                f"spill {entry['spill']} (crate spill {cs}) was not written ({why}) and the crate no longer "
                "holds it: its events are lost",
            )
            return
        spill = self.recorder.next_spill
        self._log(
            logging.WARNING, f"recovering spill {entry['spill']} ({why}) from the crate's buffer as spill {spill}"
        )
        self._process(
            spill,
            cs,
            extra_flags=["retried"],
            note=f"spill {entry['spill']} was not written ({why}); re-read from the crate's buffer after restart",
            recovers=int(entry["spill"]),
        )

    def _note_restarts(self) -> None:
        """Report the crate restarts the driver noticed (a new boot id: the crate's ring, selection and
        configuration were lost) in the log, the monitoring log and the run record's crate entry."""
        assert self.crate is not None and self.recorder is not None
        for old, new in self.crate.take_restarts():
            self._log(
                logging.WARNING,
                f"the MSADC crate restarted (boot id {old} -> {new}): spills it held unread are lost; "
                "the configuration was restored",
            )
            crate_info = dict(self.recorder.record.get("crate") or {})
            crate_info["boot_id"] = new
            crate_info["restarts"] = [*crate_info.get("restarts", []), {"from": old, "to": new, "unix": time.time()}]
            self.recorder.set("crate", crate_info, save=True)

    def _take_spill(self, next_crate: int, last_complete: int) -> int:
        """Read the oldest unread spill; crate spills that left the ring unread are recorded as lost.
        If the crate's ring cannot be listed, nothing is recorded and ``next_crate`` is returned (the
        loop asks again)."""
        assert self.crate is not None and self.recorder is not None
        try:
            listed = buffered_spills(self.crate, stopping=lambda: self.stopping)
        except MSADCError as exc:
            self._error(f"the crate's spill list is unreadable ({exc}); nothing is taken for lost, asking again")
            self._wait(max(self.daq_cfg.poll_interval_s, 0.5))
            return next_crate
        self._note_restarts()
        buffered = [s for s in listed if s >= next_crate]
        target = min(buffered) if buffered else last_complete
        if next_crate == ANY_SPILL:  # the crate had no spill when we started: take the first one
            next_crate = target
        skipped = self._skipped_in(next_crate, target - 1)
        for a, b in skipped:
            self.recorder.note_gap(
                a, b, "crate spill ids skipped: these spills never completed in the crate (feed stall or numbering gap)"
            )
            self._log(logging.WARNING, f"crate spill ids {a}..{b} never completed (skipped)")
        n_skipped = sum(b - a + 1 for a, b in skipped)
        if target - next_crate - n_skipped > MAX_LOST_PER_TAKE:
            # far more ids than any ring holds: a jump of the crate's numbering, not lost spills
            self.recorder.note_gap(
                next_crate,
                target - 1,
                f"crate spill id jumped from {next_crate - 1} to {target}: "
                f"{target - next_crate} ids never read (numbering jump or crate restart)",
            )
            self._log(logging.WARNING, f"crate spill id jumped from {next_crate - 1} to {target} (noted as one gap)")
            self._process(self.recorder.next_spill, target)
            return target + 1
        for lost in ids_outside(next_crate, target - 1, skipped):
            if self.stopping:
                return lost
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
    def _process(
        self,
        spill: int,
        crate_spill: int,
        extra_flags: list[str] | None = None,
        note: str = "",
        recovers: int | None = None,
    ) -> None:
        """Read, trigger, read out and record one crate spill as DAQ spill ``spill`` (``recovers``: the DAQ
        spill, not written before, whose crate spill this is)."""
        rec = self.recorder
        assert rec is not None and self.crate is not None and self.readout is not None and self.streamer is not None
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
        self.streamer.arm(spill)
        out = self._read_with_retry(spill, crate_spill, flags)
        incidents = self.crate.take_incidents()
        if out.skipped:
            self.streamer.abort()
            self._record_skipped(spill, out, flags, incidents)
            return
        flags = spill_flags(flags, incidents, out.flags)
        if set(flags) & INCOMPLETE_SPILL_FLAGS - {"truncated"}:  # a cut at the event cap is no error
            self.sm.to(State.ERROR, f"spill {spill}: {', '.join(out.errors) or ', '.join(flags)}")
        self._record(spill, out, flags, incidents, note, t0, recovers)

    def _record_skipped(self, spill: int, out: SpillOutcome, flags: list[str], incidents: list[str]) -> None:
        """Calibration mode, the table was not on the wanted cell: an empty spill flagged
        ``skipped_off_cell`` with its accounting; the crate's copy is released."""
        assert self.recorder is not None and self.crate is not None
        info = out.info
        particles = info.get("particles", 0)
        self.recorder.record_empty(
            spill,
            out.crate_spill,
            ["skipped_off_cell", *[f for f in flags if f != "skipped_off_cell"]],
            f"not read out: {out.skipped}",
            start_unix=float(info.get("start_unix", 0.0)),
            length_s=float(info.get("length_s", 0.0)),
            n_particles=int(particles) if isinstance(particles, int) and particles >= 0 else 0,
            table=info.get("table") if isinstance(info.get("table"), dict) else {},
            incidents=incidents,
        )
        self.crate.release_spill()
        self.spills_this_session += 1
        self.sm.to(State.READOUT, f"crate spill {out.crate_spill}: not read out")
        self.sm.to(State.RECORDED, f"spill {spill} skipped: {out.skipped}")
        self._log(logging.INFO, f"spill {spill} (crate spill {out.crate_spill}) skipped: {out.skipped}")

    def _read_with_retry(self, spill: int, crate_spill: int, flags: list[str]) -> SpillOutcome:
        """Read the spill; a readout that failed (not because the spill is gone) is retried once after a
        reconnect, and ``retried`` is appended to ``flags``."""
        assert self.crate is not None and self.readout is not None
        out = None
        max_attempts = 2
        for attempt in range(max_attempts):
            if out is not None:
                self.events.release(out.events_base)
            out = self.readout.read_spill(crate_spill, on_selected=self._reading)
            hard = [f for f in out.flags if f in INCOMPLETE_SPILL_FLAGS and f != "truncated"]
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
        return out

    def _reading(self, out: SpillOutcome) -> None:
        """The readout selected the spill: the state goes to READOUT."""
        self.sm.to(State.READOUT, f"crate spill {out.crate_spill}: {out.n_particles} particles")

    def _record(
        self,
        spill: int,
        out: SpillOutcome,
        flags: list[str],
        incidents: list[str],
        note: str,
        t0: float,
        recovers: int | None = None,
    ) -> None:
        """Write the spill file and the run record (or flag the spill and stop the run when the disk cannot
        take it), then publish the scalers, print the progress line and hand the events to the monitor
        worker. ``t0``: ``time.perf_counter()`` when the spill was detected."""
        rec = self.recorder
        assert rec is not None and self.crate is not None and self.streamer is not None
        t_rec = time.perf_counter()
        hv = self.hv_reader.snapshot() if self.hv_reader is not None else None
        content, entry = build_spill(
            self.run_number,
            spill,
            out,
            flags,
            incidents,
            note,
            trigger_menu=self.menu.to_dict(),
            hv=hv,
            crate_errors=self.crate.crate_errors,
            calibration_mode=self.calibration_mode,
        )
        self.crate.crate_errors.clear()
        entry["timing"] = out.timing
        if recovers is not None:
            entry["recovers"] = int(recovers)
        rec.session["crate_stats"] = dict(self.crate.stats)
        out.timing["daq_s_before_write"] = time.perf_counter() - t0
        stream = self.streamer.take()  # the spill file the events went to while they were read out
        problem = rec.space_problem(estimated_size(content) - (stream.bytes_put if stream is not None else 0))
        flag = "disk_full"
        if problem is None:
            try:
                rec.record_spill(content, entry, stream=stream)
            except OSError as exc:  # SpillWriteError (disk full, I/O error) or the run record
                problem, flag = str(exc), "write_failed"
        if stream is not None:
            stream.abort()  # nothing left to do after a finished file; a partial one is removed
        if problem is not None:
            self._not_recorded(spill, out, entry, flag, problem)
            return
        entry = rec.spills[-1]
        done = {"record_s": time.perf_counter() - t_rec, "total_s": time.perf_counter() - t0}
        out.timing.update(done)
        rec.note_timing(spill, done)
        self.crate.release_spill()
        self.spills_this_session += 1
        self.last_spill_unix = float(out.info.get("start_unix", 0.0)) + float(out.info.get("length_s", 0.0))
        self.sm.to(State.RECORDED, f"spill {spill}: {content.event_id.shape[0]} events recorded")
        self._publish_scalers(spill, entry, content.led)
        self._progress(spill, entry, out.timing.get("total_s", 0.0))
        if self.monitor_worker is not None and content.event_id.shape[0]:
            self.monitor_worker.submit(spill, content, out.info, out.events_base)
        else:
            self.events.release(out.events_base)
        size = (rec.rdir / entry["file"]).stat().st_size
        problem = rec.space_problem(size)
        if problem is not None:  # the next spill would not fit: stop now, before anything is lost
            self._stop_for_disk(
                f"the next spill may not fit ({problem}); the run stops after spill {spill}, "
                f"nothing lost: free disk space, then restart na64-daq with --run {self.run_number}"
            )

    def _not_recorded(self, spill: int, out: SpillOutcome, entry: dict[str, Any], flag: str, problem: str) -> None:
        """The spill could not be written: flag it (an empty spill file keeps its accounting, if even that
        can be written), keep the crate's copy (not released), and stop the run."""
        assert self.recorder is not None
        rec = self.recorder
        n = int(entry.get("n_accepted", 0))
        self.events.release(out.events_base)
        keep = {
            k: entry[k]
            for k in (
                "start_unix",
                "length_s",
                "n_particles",
                "n_seen",
                "n_accepted",
                "n_read_out",
                "eot",
                "scalers",
                "triggers",
                "errors",
                "incidents",
                "note",
            )
            if k in entry
        }
        flags = [flag] + [f for f in entry.get("flags", []) if f != flag]
        try:
            rec.record_empty(spill, int(out.crate_spill), flags, f"{n} accepted events not recorded: {problem}", **keep)
            noted = "the spill is flagged " + flag
        except OSError as exc:
            noted = f"not even its flag could be written ({exc}); the run record marks it in flight"
        self._publish_scalers(spill, rec.spills[-1] if rec.spills and rec.spills[-1]["spill"] == spill else entry)
        self._stop_for_disk(
            f"spill {spill}: {n:,} accepted events NOT recorded: {problem}; {noted}. "
            f"Free disk space, then restart na64-daq with --run {self.run_number}"
        )

    def _stop_for_disk(self, message: str) -> None:
        self._log(logging.CRITICAL, message)
        self.sm.to(State.ERROR, message)
        self._exit_status = 1
        self.stop("disk_full")

    # --------------------------------------------------------------------------- reporting
    def _publish_scalers(self, spill: int, entry: dict[str, Any], led: LedEvents | None = None) -> None:
        if self.publisher is not None:
            totals = self.recorder.totals if self.recorder else {}
            m = scalers_message(entry, int(entry.get("n_recorded", 0)), int(totals.get("eot", 0)))
            self.publisher.publish(m.topic, meta=m.meta, spill=spill)
            if led is not None and led.n:  # small (out of spill), published with the scalers: never dropped
                m = led_message(led, self.last_spill_unix)
                self.publisher.publish(m.topic, m.arrays, m.meta, spill=spill)

    def _progress(self, spill: int, entry: dict[str, Any], seconds: float) -> None:
        totals = self.recorder.totals if self.recorder else {}
        line, style = progress_line(spill, entry, seconds, int(totals.get("lost_spills", 0)))
        if self.console is None:
            log.info("%s", line)
            return
        problem = print_line(self.console, line, style)
        if problem is not None:
            self.console = None
            log.info("%s", line)
            self._log(logging.WARNING, f"console output failed ({problem}); progress lines go to the log from now on")
