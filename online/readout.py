"""Crate readout: one completed crate spill in, one :class:`SpillOutcome` out (:meth:`CrateReadout.read_spill`).

The steps, in the order the data flows:

1. select the spill on the crate: ``SPIL:SEL``, ``SPIL:INFO?``, ``PRIM:COUN?``;
2. primitives and arrival times in chunks of ``chunk_records``: a reader thread fills the recycled chunk
   buffers (a pool of 3, a queue of at most 2 full chunks) while this thread runs the numba trigger on
   the previous chunk, so transfer and trigger overlap;
3. upload the accepted list and verify it with ``ACC:COUN?``;
4. read ``EVT:DATA?`` in chunks straight into a recycled event buffer, each chunk followed by its Micromegas
   strips (``MM:DATA?``, when the crate has the Micromegas module); then the LED events the pulser fired
   after the flat top (``LED:DATA?``, ``LED:TIME?``; ``SPIL:INFO?`` says how many), kept apart from them;
5. check that the crate still has this spill selected with this accepted list (``SPIL:SEL?``,
   ``ACC:COUN?``): otherwise another client interfered and the events are discarded;
6. read ``EVT:TRUT?`` when ``record_truth`` is asked for and the crate offers it.

Every text reply is validated by the driver (:mod:`online.crate_replies`); a bad one ends the readout
with ``crate_error``.

A readout never raises a crate error: a step that fails after the driver's own retries ends the readout,
and its flag (``timeout``, ``truncated_block``, ``crate_error``, ``spill_lost``) plus ``readout_incomplete``
and the reason go into the outcome together with whatever was read. Retrying the spill, recording it
and the state of the run are the run control's business (:mod:`online.daq`).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from detector import channels as ch
from detector import mmblock
from detector.led import LedEvents
from detector.records import TRUTH_DTYPE
from detector.tracking import StripData

from .buffers import ChunkPool, EventPool, TimesBuffer
from .msadc import EVENT_RECORD_BYTES, MSADC, PRIM_RECORD_BYTES, MSADCCrateError, MSADCError, MSADCReplyError

if TYPE_CHECKING:
    from trigger.menu import TriggerMenu

log = logging.getLogger("online.daq")

MAX_EVENTS_PER_QUERY = 1 << 15  #: EVT:DATA? events per query (the crate refuses more than 2^16)
#: EVT:DATA? events per query of the event readout: a crate that prepares the next block while it sends one
#: (the emulator digitises it) overlaps all but the first block with the transfer
EVENT_BLOCK = 1 << 14


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
    mm: StripData | None = None  #: Micromegas strips of the events read out (None: the crate has no MM module)
    led: LedEvents | None = None  #: the LED events fired after the flat top (None: none read)
    events_base: np.ndarray | None = None  #: the pooled buffer ``events`` is a view of
    scalers: dict[str, int] = field(default_factory=dict)
    triggers: dict[str, dict[str, int]] = field(default_factory=dict)
    eot: int = 0
    flags: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    timing: dict[str, float] = field(default_factory=dict)
    triggered: bool = False
    max_events: int | None = None  #: the cap that cut the accepted list (``daq.max_events_per_spill``)
    n_cut: int = 0  #: accepted events not read out because of the cap
    skipped: str = ""  #: why the spill was not read out (calibration mode: the table was not on the cell)

    @property
    def n_accepted(self) -> int:
        """Events the trigger accepted (``accepted`` holds those read out: fewer when capped)."""
        return int(self.accepted.size) + self.n_cut


class EventSink(Protocol):
    """Takes a spill's events while they are read out (the DAQ streams them into the spill file)."""

    def open(self, out: SpillOutcome) -> None:
        """The events of ``out`` (``out.accepted.size`` of them, into ``out.events``) are about to be read;
        a second call for the same outcome starts over (the readout was retried)."""

    def rows(self, out: SpillOutcome, first: int, count: int) -> None:
        """Events ``first .. first + count - 1`` of ``out.events`` are read; they stay untouched until the
        spill is recorded."""


class _ReaderFailed(Exception):
    def __init__(self, exc: BaseException, first: int) -> None:
        super().__init__(str(exc))
        self.exc = exc
        self.first = first


def parallel_trigger_default() -> bool:
    """Whether the readout runs the trigger's parallel kernels by default: with at least 4 cores (the reader
    thread and the crate need cores too)."""
    return (os.cpu_count() or 1) >= 4


class CrateReadout:
    """Reads completed spills of ``crate`` and triggers them with ``menu``. ``chunk_records``: primitive
    records per transfer chunk; ``record_truth``: also read the crate's truth records; ``parallel_trigger``
    (default: with at least 4 cores, since the reader thread and the crate need cores too) runs the
    parallel trigger kernel. ``events`` is the pool the event buffers come from; whoever holds an
    outcome last gives ``outcome.events_base`` back to it. ``max_events``: most events read out per spill
    (None: all); a spill whose trigger accepted more is flagged ``truncated`` and only its first
    ``max_events`` accepted events are asked of the crate. ``spill_filter(info)`` (calibration mode) says
    why a spill is not to be read out (its ``SPIL:INFO?``): then nothing more is read and the outcome's
    ``skipped`` holds the reason. ``sink`` gets each block of events as soon as it is read."""

    def __init__(
        self,
        crate: MSADC,
        menu: TriggerMenu,
        *,
        chunk_records: int,
        record_truth: bool,
        parallel_trigger: bool | None = None,
        events: EventPool | None = None,
        max_events: int | None = None,
        spill_filter: Callable[[dict[str, Any]], str | None] | None = None,
        read_led: bool = True,
        sink: EventSink | None = None,
    ) -> None:
        self.crate = crate
        self.sink = sink
        self.read_led = bool(read_led)
        self.menu = menu
        self.chunk_records = int(chunk_records)
        self.record_truth = bool(record_truth)
        self.parallel_trigger = parallel_trigger_default() if parallel_trigger is None else bool(parallel_trigger)
        self.events = events if events is not None else EventPool()
        self.max_events = None if max_events is None else int(max_events)
        self.spill_filter = spill_filter
        self.chunks = ChunkPool(self.chunk_records)
        self.times = TimesBuffer()

    def prepare(self, n_records: int) -> None:
        """Allocate and fault in the chunk buffers for spills of about ``n_records`` primitives."""
        self.chunks.buffers(int(n_records))

    def read_spill(self, crate_spill: int, on_selected: Callable[[SpillOutcome], None] | None = None) -> SpillOutcome:
        """One readout attempt of crate spill ``crate_spill``; never raises a crate error (see the module
        docstring). ``on_selected(outcome)`` runs once the spill is selected and its particle count known,
        before the primitives are read."""
        out = SpillOutcome(crate_spill)
        if not self._select(out):
            return out
        if on_selected is not None:
            on_selected(out)
        self._trigger(out)
        if not out.triggered:
            return out
        self._cap(out)
        if not self._upload_accepted(out):
            return out
        if not self._read_events(out):
            return out
        if self.read_led and int(out.info.get("led", 0)) > 0:
            self._read_led(out)
        if not self._verify_selection(out):
            return out
        if self.record_truth and out.accepted.size:
            self._read_truth(out)
        return out

    # -------------------------------------------------------------------------- the steps
    def _select(self, out: SpillOutcome) -> bool:
        t = time.perf_counter()
        try:
            self.crate.select_spill(out.crate_spill)
            out.info = self.crate.spill_info()
            if self.spill_filter is not None:
                out.skipped = self.spill_filter(out.info) or ""
                if out.skipped:
                    out.timing["select_s"] = time.perf_counter() - t
                    return False
            out.n_particles = self.crate.prim_count()
            declared = out.info.get("particles", out.n_particles)
            if declared != out.n_particles:
                raise MSADCReplyError(f"SPIL:INFO? declares {declared} particles, PRIM:COUN? {out.n_particles}")
        except MSADCError as exc:
            self._fail(out, exc, "select")
            return False
        out.timing["select_s"] = time.perf_counter() - t
        return True

    def _trigger(self, out: SpillOutcome) -> None:
        """Primitives in chunks (reader thread) -> trigger (this thread), overlapped. Sets ``triggered``
        when every record was seen by the trigger."""
        from trigger.kernels import SpillTrigger

        crate = self.crate
        n = out.n_particles
        chunk = self.chunk_records
        out.times = self.times.view(n)
        pool = self.chunks.buffers(n)
        free: queue.Queue[np.ndarray] = queue.Queue()
        for b in pool:
            free.put(b)
        full: queue.Queue[Any] = queue.Queue(maxsize=2)
        abort = threading.Event()
        trig = SpillTrigger(self.menu, parallel=self.parallel_trigger)
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
                    crate.read_times(first, c, out=out.times[first : first + c])
                    full.put((first, c, buf))
                    first += c
                full.put(None)
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which raises it
                full.put(_ReaderFailed(exc, first))

        t0 = time.perf_counter()
        th = threading.Thread(target=reader, name="prim-reader", daemon=True)
        th.start()
        failure: BaseException | None = None
        n_acc = 0
        try:
            while True:
                tw = time.perf_counter()
                item = self._next_chunk(full, out, n_acc)
                t_wait += time.perf_counter() - tw
                if item is None:
                    break
                if isinstance(item, _ReaderFailed):
                    failure = item.exc
                    break
                first, c, buf = item
                tt = time.perf_counter()
                try:
                    n_acc += trig.process(buf[:c], out.times[first : first + c], first)[0].size
                except ValueError as exc:  # e.g. arrival times not increasing: corrupt data
                    failure = exc
                    break
                t_trig += time.perf_counter() - tt
                out.n_seen = first + c
                free.put(buf)
        finally:
            abort.set()
            while th.is_alive():  # unblock the reader if it waits for a buffer or a slot
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
        out.timing.update(
            primitives_s=time.perf_counter() - t0,
            trigger_s=t_trig,
            trigger_wait_s=t_wait,
            primitive_bytes=float(n * (PRIM_RECORD_BYTES + 8)),
        )
        if failure is not None:
            if not isinstance(failure, (MSADCError, ValueError)):
                raise failure
            # the spill is flagged; the whole spill is retried once by the caller
            self._fail(out, failure, f"primitive readout/trigger ({out.n_seen} of {n} records)")
            return
        out.triggered = True

    def _next_chunk(self, full: queue.Queue[Any], out: SpillOutcome, n_acc: int) -> Any:
        """The reader's next item; while it is not there, the event buffer for the accepted events expected
        (those so far, scaled to the whole spill, after a quarter of it) is faulted in."""
        n, seen = out.n_particles, out.n_seen
        expect = int(n_acc * n / seen) if seen >= n // 4 and seen else 0
        if self.max_events is not None:
            expect = min(expect, self.max_events)
        while expect:
            try:
                return full.get_nowait()
            except queue.Empty:
                if not self.events.prefault(expect):
                    break
        return full.get()

    def _cap(self, out: SpillOutcome) -> None:
        """Keep the first ``max_events`` accepted events for the readout; the rest are counted in ``n_cut``
        and the spill is flagged ``truncated``."""
        cap = self.max_events
        if cap is None or out.accepted.size <= cap:
            return
        out.n_cut = int(out.accepted.size) - cap
        out.max_events = cap
        out.accepted, out.mask = out.accepted[:cap], out.mask[:cap]
        out.flags.append("truncated")
        log.warning(
            "crate spill %d: %d events accepted, only the first %d read out", out.crate_spill, out.n_accepted, cap
        )

    def _upload_accepted(self, out: SpillOutcome) -> bool:
        t = time.perf_counter()
        n_acc = int(out.accepted.size)
        try:
            self.crate.upload_accepted(out.accepted)
            got = self.crate.accepted_count()
            if got != n_acc:
                self.crate.upload_accepted(out.accepted)
                got = self.crate.accepted_count()
                if got != n_acc:
                    raise MSADCCrateError("ACC:COUN? check", [(0, f"crate holds {got} accepted, {n_acc} uploaded")])
        except MSADCError as exc:
            self._fail(out, exc, "accepted-list upload")
            return False
        out.timing["upload_s"] = time.perf_counter() - t
        return True

    def _read_events(self, out: SpillOutcome) -> bool:
        t = time.perf_counter()
        n_acc = int(out.accepted.size)
        out.events_base = self.events.take(n_acc)
        out.events = out.events_base[:n_acc]
        step = max(1, min(EVENT_BLOCK, self.chunk_records * PRIM_RECORD_BYTES // EVENT_RECORD_BYTES))
        mm: list[StripData] = []
        t_mm = 0.0
        if self.sink is not None:
            self.sink.open(out)
        try:
            with_mm = n_acc > 0 and self.crate.mm_supported()
            for first in range(0, n_acc, step):
                c = min(step, n_acc - first)
                self.crate.read_events(first, c, out=out.events[first : first + c])
                if self.sink is not None:
                    self.sink.rows(out, first, c)
                if with_mm:
                    tm = time.perf_counter()
                    mm.append(self.crate.read_mm(first, c))
                    t_mm += time.perf_counter() - tm
                out.n_read_out = first + c
        except MSADCError as exc:
            self._fail(out, exc, f"event readout ({out.n_read_out} of {n_acc})")
            out.events = out.events[: out.n_read_out]
            out.mm = mmblock.concat(mm) if mm else None
            return False
        out.mm = mmblock.concat(mm) if with_mm else None
        out.timing["events_s"] = time.perf_counter() - t
        out.timing["event_bytes"] = float(out.events.nbytes)
        out.timing["mm_s"] = t_mm
        return True

    def _read_led(self, out: SpillOutcome) -> None:
        """The LED events fired after the spill's flat top (``SPIL:INFO?`` ``led`` of them): a failure costs
        the LED events only (noted in ``errors``), never the physics events."""
        t = time.perf_counter()
        n = int(out.info["led"])
        try:
            wf, times = self.crate.read_led(0, n)
            out.led = LedEvents(np.arange(n, dtype=np.uint32), times, wf)
        except MSADCError as exc:
            out.errors.append(f"LED events not recorded: {exc}")
            log.warning("crate spill %d: LED events not recorded (%s)", out.crate_spill, exc)
        out.timing["led_s"] = time.perf_counter() - t

    def _verify_selection(self, out: SpillOutcome) -> bool:
        """After the events: the crate still has this spill selected and holds this accepted list
        (``SPIL:SEL?``, ``ACC:COUN?``). If another client changed either during the readout, the events
        may not belong to the ids: none is kept (``crate_error``, ``readout_incomplete``)."""
        n_acc = int(out.accepted.size)
        try:
            sel = self.crate.selected_on_crate()
            got = self.crate.accepted_count()
            if sel != out.crate_spill or got != n_acc:
                what = f"crate has spill {sel} selected with {got} accepted, read spill {out.crate_spill} with {n_acc}"
                raise MSADCCrateError("the readout check", [(0, what)])
        except MSADCError as exc:
            self._fail(out, exc, "selection check after the event readout (events discarded)")
            out.n_read_out = 0
            out.events = out.events[:0]
            out.mm = None if out.mm is None else mmblock.empty()
            out.led = None  # read under the same selection: not trusted either
            return False
        return True

    def _read_truth(self, out: SpillOutcome) -> None:
        """The truth records of the accepted events; a failure costs the truth only (noted in ``errors``)."""
        t = time.perf_counter()
        n_acc = int(out.accepted.size)
        try:
            if self.crate.truth_supported():
                truth = np.empty(n_acc, TRUTH_DTYPE)
                for first in range(0, n_acc, MAX_EVENTS_PER_QUERY):
                    c = min(MAX_EVENTS_PER_QUERY, n_acc - first)
                    self.crate.read_truth(first, c, out=truth[first : first + c])
                out.truth = truth
        except MSADCError as exc:
            out.errors.append(f"truth not recorded: {exc}")
            log.warning("spill of crate spill %d: truth not recorded (%s)", out.crate_spill, exc)
        out.timing["truth_s"] = time.perf_counter() - t

    @staticmethod
    def _fail(out: SpillOutcome, exc: BaseException, stage: str) -> None:
        """Note a failure that retries did not cure: its flag (timeout, truncated_block, crate_error,
        spill_lost) plus readout_incomplete."""
        out.flags += [getattr(exc, "flag", "crate_error"), "readout_incomplete"]
        out.errors.append(f"{stage}: {exc}")
        log.error("crate spill %d: %s failed: %s", out.crate_spill, stage, exc)
