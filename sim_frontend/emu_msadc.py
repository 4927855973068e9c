"""The emulated MSADC crate: SCPI over a raw TCP socket (VISA ``TCPIP::127.0.0.1::<port>::SOCKET``).

This module implements docs/protocols.md section 1 (the contract) in two layers:

- :class:`MSADCCrate` holds the instrument state and the command semantics, with no transport: the
  ring of the last ``k`` completed spills (:class:`SpillRecord`), the spill state (IDLE / SPILL / GAP),
  the selected spill, the accepted lists, the configuration and the SCPI error queue.
  :meth:`MSADCCrate.execute` runs one command and returns its reply (text, or a
  :class:`BinaryReply` sent as an IEEE 488.2 definite-length block); a failing command adds an
  entry to the error queue and returns no reply.
- :class:`sim_frontend.msadc_server.MSADCServer` serves a crate on TCP (the transport; its own module).

Full event waveforms are not stored: ``EVT:DATA?`` digitises the accepted events on demand with the
digitiser's ``events(spill, deposits, indices, hv_vmon)`` and the HV snapshot of that spill, so the
crate's memory is the primitive blocks plus the deposits of ``k`` spills.

Nothing in here raises into the server loop: every exception of a command becomes an SCPI error
(``-200`` for an unexpected one, logged with its traceback).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from detector import channels as chmap
from detector.hwstatus import CrateState
from detector.records import TRUTH_DTYPE

from .crate_spill import SpillRecord, truth_summary
from .emu_mm import MMReadout
from .scpi import (
    ESR_OPC,
    BinaryReply,
    CommandTable,
    ErrorQueue,
    Reply,
    ScpiError,
    parse_float,
    parse_int,
    split_args,
    split_header,
)

log = logging.getLogger(__name__)

MANUFACTURER = "NA64-HIL"
MODEL = "MSADC-CRATE"
VERSION = "0.1"
DEFAULT_LATENCY_NS = 800.0
MAX_LATENCY_NS = 4000.0
MAX_EVENTS_PER_QUERY = 1 << 16  #: EVT:DATA? / EVT:TRUT? records per query (-223 above)
MAX_UPLOAD_BYTES = 128 << 20  #: largest accepted binary upload (ACC:DATA), bytes
MAX_LINE_BYTES = 1 << 16  #: longest accepted command line, bytes
MAX_HELD = 64  #: spills kept for holding observers beyond the ring (oldest dropped)
SCALER_THRESHOLD_MIP = 0.5  #: the crate's hardware scalers count deposits above this
STATES = CrateState.names()


# --------------------------------------------------------------------------------------------------
class DigitizerLike(Protocol):
    def events(self, spill: Any, dep: Any, indices: np.ndarray, hv_vmon: np.ndarray) -> np.ndarray: ...


@dataclass
class Session:
    """Per-connection state. An observer connection (``SYST:OBS ON``, emulator only) is read-only, has an
    error queue of its own and is exempt from injected faults (a test's independent client). A holding
    observer (``SYST:OBS:HOLD ON``) keeps evicted spills readable for itself until it releases them."""

    observer: bool = False
    hold: bool = False
    errors: ErrorQueue = field(default_factory=ErrorQueue)
    owner: str | None = None  #: the owner name this connection presented with ``SYST:LOCK``


#: commands that change the crate state shared by all connections (refused on an observer connection, and
#: on any connection but the owner's while the crate is locked)
MUTATING = frozenset({"*RST", "SPILl:SELect", "ACCepted:DATA", "CONFigure:SAMPles", "CONFigure:LATency"})
LOCK_GRACE_S = 3.0  #: a lock whose owner has no open connection left expires after this (s)
MAX_OWNER_CHARS = 64


def new_boot_id() -> str:
    """A fresh boot id (16 hex digits): the crate draws one at every start (``SYST:BOOT?``)."""
    return os.urandom(8).hex()


# --------------------------------------------------------------------------------------------------
class Lookahead:
    """The next block of a block query (``EVT:DATA?``, ``MM:DATA?``), made in a background thread while the
    server sends the previous one (a readout reads the accepted events block after block). A block is taken
    only by the query with the same key (spill record, accepted list, first, count: compared by identity and
    value); anything else discards it."""

    def __init__(self, name: str) -> None:
        self.name = name  #: the thread's name
        self._lock = threading.Lock()
        self._key: tuple[Any, ...] | None = None
        self._thread: threading.Thread | None = None
        self._result: list[Any] = []

    @staticmethod
    def _same(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
        return a[0] is b[0] and a[1] is b[1] and a[2:] == b[2:]

    def take(self, key: tuple[Any, ...]) -> Any:
        """The block of ``key`` if it was started (waits for it); None otherwise or if it failed."""
        with self._lock:
            th, k, res = self._thread, self._key, self._result
            self._thread, self._key, self._result = None, None, []
        if th is None or k is None:
            return None
        th.join()
        return res[0] if res and self._same(k, key) else None

    def pending(self, key: tuple[Any, ...]) -> bool:
        """Whether the block of ``key`` is being made (or made and not yet taken)."""
        with self._lock:
            return self._thread is not None and self._key is not None and self._same(self._key, key)

    def start(self, key: tuple[Any, ...], compute: Any) -> None:
        """Compute ``compute()`` for ``key`` in a background thread (after the previous one ended)."""
        self.take(("", "", None))  # wait for and drop any block still in flight
        res: list[Any] = []

        def run() -> None:
            try:
                res.append(compute())
            except Exception:  # the query recomputes it and reports the error itself
                log.debug("%s failed", self.name, exc_info=True)

        th = threading.Thread(target=run, name=self.name, daemon=True)
        with self._lock:
            self._thread, self._key, self._result = th, key, res
        th.start()


class MSADCCrate:
    """State and SCPI semantics of the crate (thread-safe; no transport).

    Parameters
    ----------
    digitizer:
        Object with ``events(spill, deposits, indices, hv_vmon) -> int16 (n, 121, 32)``; used by ``EVT:DATA?``.
    buffer:
        How many completed spills are kept (``emulator.spill_buffer``).
    mm:
        The Micromegas readout module (``MM:`` commands), None for a crate without one.
    serial:
        Serial number reported by ``*IDN?``.
    """

    def __init__(
        self, digitizer: DigitizerLike | None, buffer: int = 2, serial: str = "EMU-0001", mm: MMReadout | None = None
    ) -> None:
        if not 1 <= int(buffer) <= 1024:
            raise ValueError(f"spill buffer must hold 1..1024 spills, got {buffer!r}")
        self.digitizer = digitizer
        self.buffer = int(buffer)
        self.serial = serial
        self.boot_id = new_boot_id()
        self.errors = ErrorQueue(power_on=True)
        self._owner: str | None = None  #: the ``SYST:LOCK`` owner name, None = not locked
        self._owner_sessions = 0  #: open connections that presented the owner name
        self._owner_gone: float | None = None  #: monotonic time the owner's last connection closed
        self._lock = threading.RLock()
        self._ring: OrderedDict[int, SpillRecord] = OrderedDict()
        self._held: OrderedDict[int, SpillRecord] = OrderedDict()  # evicted, kept for holding observers
        self._holders = 0
        self._released: set[int] = set()  # buffered spills the holders are done with
        self._state = "IDLE"
        self._in_progress: dict[int, float] = {}  # spill id -> start (unix)
        self._last_complete = -1
        self._selected: int | None = None
        self._latency_ns = DEFAULT_LATENCY_NS
        self._samples = chmap.N_SAMPLES
        self.commands = self._build_table()
        self.mm = mm
        if mm is not None:  # the Micromegas readout module (sim_frontend.emu_mm)
            mm.register(self.commands, self._selected_record, self._range, self._noargs, Lookahead("mm-lookahead"))
        self._local = threading.local()
        self._lookahead = Lookahead("evt-lookahead")
        self.counters = {
            "commands": 0,
            "queries": 0,
            "errors": 0,
            "spills_completed": 0,
            "spills_evicted": 0,
            "held_dropped": 0,
            "restarts": 0,
        }

    # ---------------------------------------------------------------- spill flow (called by the emulator)
    def spill_started(self, spill_id: int, start_unix: float | None = None) -> None:
        """The beam of ``spill_id`` is on: the state becomes SPILL until it completes."""
        with self._lock:
            self._in_progress[int(spill_id)] = time.time() if start_unix is None else float(start_unix)
            self._state = "SPILL"

    def spill_abandoned(self, spill_id: int) -> None:
        """A started spill will never complete (e.g. feed stall): back to GAP (or IDLE) if none is on."""
        with self._lock:
            self._in_progress.pop(int(spill_id), None)
            if not self._in_progress:
                self._state = "GAP" if self._state != "IDLE" or self._ring else "IDLE"

    def spill_completed(self, record: SpillRecord) -> None:
        """Push a completed spill into the ring (evicting the oldest beyond ``buffer``); state GAP unless
        another spill is still on."""
        with self._lock:
            sid = record.spill_id
            self._in_progress.pop(sid, None)
            self._ring.pop(sid, None)
            self._ring[sid] = record
            while len(self._ring) > self.buffer:
                old_id, old = self._ring.popitem(last=False)
                self.counters["spills_evicted"] += 1
                if self._holders and old_id not in self._released:
                    self._held[old_id] = old
                    while len(self._held) > MAX_HELD:
                        self._held.popitem(last=False)
                        self.counters["held_dropped"] += 1
                self._released.discard(old_id)
            self._last_complete = sid
            self.counters["spills_completed"] += 1
            self._state = "SPILL" if self._in_progress else "GAP"

    def restart(self) -> None:
        """Simulate a reboot of the crate: the ring, the selection, the configuration, the lock and the
        error queue are gone, the power-on bit is set and a new boot id is drawn (the spill numbering is
        the emulator's and continues). The server drops every connection with it."""
        with self._lock:
            if self._holders:  # observers are exempt from faults: what they hold stays readable for them
                for sid, rec in self._ring.items():
                    if sid not in self._released:
                        self._held[sid] = rec
            self._ring.clear()
            self._released.clear()
            self._in_progress.clear()
            self._state = "IDLE"
            self._selected = None
            self._latency_ns = DEFAULT_LATENCY_NS
            self._samples = chmap.N_SAMPLES
            self._owner, self._owner_sessions, self._owner_gone = None, 0, None
            self.boot_id = new_boot_id()
            self.errors = ErrorQueue(power_on=True)
            self.counters["restarts"] += 1

    def status(self) -> tuple[str, int]:
        with self._lock:
            return self._state, self._last_complete

    def buffered(self) -> list[int]:
        with self._lock:
            return sorted(self._ring)

    def record(self, spill_id: int) -> SpillRecord | None:
        with self._lock:
            return self._ring.get(int(spill_id))

    def snapshot(self) -> dict[str, Any]:
        """JSON-able state for the control endpoint."""
        with self._lock:
            return {
                "state": self._state,
                "last_complete": self._last_complete,
                "buffered": sorted(self._ring),
                "in_progress": sorted(self._in_progress),
                "selected": self._selected,
                "held": sorted(self._held),
                "holders": self._holders,
                "latency_ns": self._latency_ns,
                "errors_queued": len(self.errors),
                "errors_total": self.errors.total,
                "boot_id": self.boot_id,
                "owner": self._owner,
                **self.counters,
            }

    # ---------------------------------------------------------------- command execution
    def execute(
        self, text: str, block: bytes | None = None, session: Session | None = None
    ) -> tuple[Any, Reply | None]:
        """Run one command (``text`` = header and arguments; ``block`` = payload of a trailing IEEE
        block) for the connection ``session``. Returns (the matched :class:`sim_frontend.scpi.Command` or
        None, the reply or None). Never raises: errors go to the error queue."""
        cmd = None
        self._local.session = session
        try:
            header, args = split_header(text)
            if not header:
                if block is None:
                    return None, None  # empty command (e.g. a blank line): ignored
                raise ScpiError(-102, "block data without a command header")
            cmd = self.commands.lookup(header)
            if cmd is None:
                raise ScpiError(-113, header[:40])
            if session is not None and session.observer and cmd.pattern in MUTATING:
                raise ScpiError(-221, f"{header} refused: an observer connection is read-only")
            if cmd.pattern in MUTATING and not self._is_owner(session):
                raise ScpiError(-221, f"{header} refused: the crate is locked by {self._owner} (SYST:LOCK)")
            self.counters["commands"] += 1
            if cmd.query:
                self.counters["queries"] += 1
            if cmd.block:
                if block is None:
                    if not args:
                        raise ScpiError(-109, "an IEEE 488.2 block (#<n><len><bytes>) is expected")
                    raise ScpiError(-160, "expected an IEEE 488.2 definite-length block, got text data")
                if args:
                    raise ScpiError(-102, f"unexpected data before the block: {args[:40]!r}")
                return cmd, cmd.handler(block)
            if block is not None:
                raise ScpiError(-102, f"{header} takes no block data")
            return cmd, cmd.handler(split_args(args))
        except ScpiError as exc:
            self.counters["errors"] += 1
            self._errq().push(exc.code, exc.detail)
        except Exception as exc:  # a model bug must never kill the crate
            log.exception("MSADC crate failed on %r", text[:80])
            self.counters["errors"] += 1
            self._errq().push(-200, f"internal error: {type(exc).__name__}: {exc}")
        return cmd, None

    def _errq(self) -> ErrorQueue:
        """The error queue of the connection executing a command (:meth:`error_queue`)."""
        return self.error_queue(getattr(self._local, "session", None))

    def error_queue(self, session: Session | None) -> ErrorQueue:
        """The error queue (and status registers) of connection ``session``: an observer's own, and while
        the crate is locked by another owner its own (until that holds nothing more: its errors are read
        there, not lost, if the lock expires meanwhile); else the shared one."""
        if session is not None and (session.observer or len(session.errors) or not self._is_owner(session)):
            return session.errors
        return self.errors

    # ---------------------------------------------------------------- ownership (SYST:LOCK)
    def _expire_lock(self) -> None:
        """Drop a lock whose owner has had no open connection for :data:`LOCK_GRACE_S` (caller holds the lock)."""
        gone = self._owner_gone
        if self._owner is not None and gone is not None and time.monotonic() - gone > LOCK_GRACE_S:
            log.info("MSADC lock of %s expired (no connection for %.0f s)", self._owner, LOCK_GRACE_S)
            self._owner, self._owner_sessions, self._owner_gone = None, 0, None

    def _is_owner(self, session: Session | None) -> bool:
        """Whether ``session`` may use the shared state: the crate is not locked, or it is its owner's."""
        with self._lock:
            self._expire_lock()
            return self._owner is None or (session is not None and session.owner == self._owner)

    def _sys_lock(self, args: list[str]) -> None:
        """``SYST:LOCK <owner>``: take the crate's data commands for ``owner`` (a name, unique per client
        process). Granted if the crate is free, already this owner's, or its owner has had no connection
        for :data:`LOCK_GRACE_S`; else ``-221`` naming the owner."""
        session = getattr(self._local, "session", None)
        if session is None or session.observer:
            raise ScpiError(-221, "SYST:LOCK needs a non-observer connection")
        name = self._one_arg(args, "SYST:LOCK").strip().strip('"')
        if not name or len(name) > MAX_OWNER_CHARS or not name.isprintable():
            raise ScpiError(-222, f"owner name must be 1..{MAX_OWNER_CHARS} printable characters")
        with self._lock:
            self._expire_lock()
            if self._owner is not None and self._owner != name:
                raise ScpiError(-221, f"crate locked by {self._owner}")
            if session.owner != name:
                self._owner = name
                session.owner = name
                self._owner_sessions += 1
                self._owner_gone = None

    def _sys_lock_release(self, args: list[str]) -> None:
        """``SYST:LOCK:REL``: the owner gives the crate up (a no-op on any other connection)."""
        self._noargs(args, "SYST:LOCK:REL")
        session = getattr(self._local, "session", None)
        with self._lock:
            if session is not None and session.owner is not None and session.owner == self._owner:
                self._owner, self._owner_sessions, self._owner_gone = None, 0, None
            if session is not None:
                session.owner = None

    def _sys_lock_query(self, args: list[str]) -> str:
        """``SYST:LOCK?``: the owner's name, or ``NONE``."""
        self._noargs(args, "SYST:LOCK?")
        with self._lock:
            self._expire_lock()
            return self._owner or "NONE"

    def _observer(self, args: list[str]) -> None:
        session = getattr(self._local, "session", None)
        if session is None:
            raise ScpiError(-221, "SYST:OBS needs a connection")
        on = self._one_arg(args, "SYST:OBS").upper() in ("ON", "1")
        if not on:
            self._set_hold(session, False)
        session.observer = on

    def _observer_session(self, name: str) -> Session:
        session = getattr(self._local, "session", None)
        if session is None or not session.observer:
            raise ScpiError(-221, f"{name} is for observer connections only (SYST:OBS ON)")
        return session

    def _observer_hold(self, args: list[str]) -> None:
        """``SYST:OBS:HOLD ON|OFF``: while any observer holds, a spill evicted from the ring (and not
        released) stays readable by observers (spill-argument forms) until released or the last holder
        leaves; what the crate's other clients see is unchanged."""
        session = self._observer_session("SYST:OBS:HOLD")
        self._set_hold(session, self._one_arg(args, "SYST:OBS:HOLD").upper() in ("ON", "1"))

    def _set_hold(self, session: Session, on: bool) -> None:
        with self._lock:
            if on == session.hold:
                return
            session.hold = on
            self._holders += 1 if on else -1
            if not self._holders:
                self._held.clear()
                self._released.clear()

    def session_closed(self, session: Session) -> None:
        """A connection ended: its hold (if any) ends with it; if it was the owner's last connection the
        lock expires after :data:`LOCK_GRACE_S` unless the owner reconnects."""
        self._set_hold(session, False)
        with self._lock:
            if session.owner is not None and session.owner == self._owner:
                self._owner_sessions -= 1
                if self._owner_sessions <= 0:
                    self._owner_sessions = 0
                    self._owner_gone = time.monotonic()
            session.owner = None

    def _spill_release(self, args: list[str]) -> None:
        """``SPIL:REL <spill>[,<spill>...]`` (observer): the holders are done with these spills."""
        self._observer_session("SPIL:REL")
        if not args:
            raise ScpiError(-109, "SPIL:REL needs <spill>[,<spill>...]")
        ids = [parse_int(a, "spill id") for a in args]
        with self._lock:
            for sid in ids:
                if self._held.pop(sid, None) is None and sid in self._ring:
                    self._released.add(sid)

    def _spill_list(self, args: list[str]) -> str:
        """``SPIL:LIST?``: the buffered spills; on a holding observer connection the held ones too."""
        self._noargs(args, "SPIL:LIST?")
        session = getattr(self._local, "session", None)
        with self._lock:
            ids = sorted({*self._ring, *self._held}) if session is not None and session.hold else sorted(self._ring)
        return ",".join(str(i) for i in ids)

    # ---------------------------------------------------------------- helpers of the handlers
    def _build_table(self) -> CommandTable:
        t = CommandTable()
        add = t.add
        # IEEE 488.2 mandatory common commands (10.x; docs/protocols.md 1.9). Commands run in order, one
        # at a time, so every operation is complete when the next command is parsed: *OPC sets the OPC
        # bit at once, *OPC? answers 1 at once, *WAI returns at once.
        add("*IDN?", self._idn)
        add("*RST", self._rst)
        add("*CLS", self._cls)
        add("*OPC?", lambda a: self._noargs(a, "*OPC?") or "1")
        add("*OPC", self._opc)
        add("*WAI", lambda a: self._noargs(a, "*WAI"))
        add("*TST?", lambda a: self._noargs(a, "*TST?") or "0")
        add("*ESE", lambda a: self._set_register(a, "*ESE", "ese"))
        add("*ESE?", lambda a: self._noargs(a, "*ESE?") or str(self._errq().ese))
        add("*ESR?", lambda a: self._noargs(a, "*ESR?") or str(self._errq().read_esr()))
        add("*SRE", lambda a: self._set_register(a, "*SRE", "sre"))
        add("*SRE?", lambda a: self._noargs(a, "*SRE?") or str(self._errq().sre))
        add("*STB?", lambda a: self._noargs(a, "*STB?") or str(self._errq().status_byte()))
        add("SYSTem:BOOT?", lambda a: self._noargs(a, "SYST:BOOT?") or self.boot_id)
        add("SYSTem:LOCK", self._sys_lock)
        add("SYSTem:LOCK?", self._sys_lock_query)
        add("SYSTem:LOCK:RELease", self._sys_lock_release)
        add("SYSTem:ERRor[:NEXT]?", lambda a: self._noargs(a, "SYST:ERR?") or self._errq().pop())
        add("SYSTem:ERRor:COUNt?", lambda a: self._noargs(a, "SYST:ERR:COUN?") or str(len(self._errq())))
        add("SYSTem:OBServer", self._observer)
        add("SYSTem:OBServer:HOLD", self._observer_hold)
        add("CONFigure:SAMPles", self._conf_samples)
        add("CONFigure:SAMPles?", lambda a: self._noargs(a, "CONF:SAMP?") or str(self._samples))
        add("CONFigure:CHANnels?", lambda a: self._noargs(a, "CONF:CHAN?") or str(chmap.N_CHANNELS))
        add(
            "CONFigure:TRIGger:CHANnels?",
            lambda a: self._noargs(a, "CONF:TRIG:CHAN?") or ",".join(chmap.TRIGGER_CHANNEL_NAMES),
        )
        add("CONFigure:LATency", self._conf_latency)
        add("CONFigure:LATency?", lambda a: self._noargs(a, "CONF:LAT?") or _fmt_num(self._latency_ns))
        add("CONFigure:SPILl:BUFFer?", lambda a: self._noargs(a, "CONF:SPIL:BUFF?") or str(self.buffer))
        add("SPILl:STATus?", self._spill_status)
        add("SPILl:LIST?", self._spill_list)
        add("SPILl:RELease", self._spill_release)
        add("SPILl:SELect", self._spill_select)
        add("SPILl:SELect?", self._spill_selected)
        add("SPILl:INFOrmation?", self._spill_info)
        add("SPILl:TRUTh?", self._spill_truth)
        add("PRIMitives:COUNt?", lambda a: str(self._spill_arg(a, 0, "PRIM:COUN?")[0].particles))
        add("PRIMitives:DATA?", self._prim_data, data=True)
        add("PRIMitives:TIME?", self._prim_time, data=True)
        add("ACCepted:DATA", self._acc_data, block=True)
        add("ACCepted:COUNt?", self._acc_count)
        add(
            "ACCepted:DATA?",
            lambda a: BinaryReply(np.ascontiguousarray(self._spill_arg(a, 0, "ACC:DATA?")[0].accepted, dtype="<u4")),
            data=True,
        )
        add("EVT|EVENT:COUNt?", self._acc_count)
        add("EVT|EVENT:DATA?", self._evt_data, data=True)
        add("EVT|EVENT:TRUTh?", self._evt_truth, data=True)
        add("EVT|EVENT:INDex:DATA?", self._evt_index_data, data=True)
        add("LED:COUNt?", lambda a: str(self._spill_arg(a, 0, "LED:COUN?")[0].n_led))
        add("LED:DATA?", self._led_data, data=True)
        add("LED:TIME?", self._led_time, data=True)
        return t

    @staticmethod
    def _noargs(args: list[str], name: str) -> None:
        if args:
            raise ScpiError(-102, f"{name} takes no parameters")

    def _idn(self, args: list[str]) -> str:
        self._noargs(args, "*IDN?")
        return f"{MANUFACTURER},{MODEL},{self.serial},{VERSION}"

    def _rst(self, args: list[str]) -> None:
        """``*RST``: the device settings to their defaults (latency, samples, no selection, no accepted
        lists). As IEEE 488.2 10.32 prescribes, the status registers and the error queue are not touched."""
        self._noargs(args, "*RST")
        with self._lock:
            self._latency_ns = DEFAULT_LATENCY_NS
            self._samples = chmap.N_SAMPLES
            self._selected = None
            for rec in self._ring.values():
                rec.accepted = np.empty(0, dtype=np.uint32)

    def _cls(self, args: list[str]) -> None:
        """``*CLS``: clears the error queue and the standard event status register (not the enables)."""
        self._noargs(args, "*CLS")
        self._errq().clear_status()

    def _opc(self, args: list[str]) -> None:
        """``*OPC``: every operation is complete at once: the OPC bit of the event register is set."""
        self._noargs(args, "*OPC")
        self._errq().set_event(ESR_OPC)

    def _set_register(self, args: list[str], name: str, register: str) -> None:
        """``*ESE <n>`` / ``*SRE <n>``: an enable register, 0..255 (bit 6 of ``*SRE`` is ignored)."""
        v = parse_int(self._one_arg(args, name), "register value")
        if not 0 <= v <= 255:
            raise ScpiError(-222, f"{name} value {v} is outside 0..255")
        setattr(self._errq(), register, v & ~0x40 if register == "sre" else v)

    def _one_arg(self, args: list[str], name: str) -> str:
        if not args or not args[0]:
            raise ScpiError(-109, f"{name} needs a value")
        if len(args) > 1:
            raise ScpiError(-102, f"{name} takes one value, got {len(args)}")
        return args[0]

    def _conf_samples(self, args: list[str]) -> None:
        n = parse_int(self._one_arg(args, "CONF:SAMP"), "samples")
        if n != chmap.N_SAMPLES:
            raise ScpiError(-222, f"only {chmap.N_SAMPLES} samples per window are supported, got {n}")
        self._samples = n

    def _conf_latency(self, args: list[str]) -> None:
        v = parse_float(self._one_arg(args, "CONF:LAT"), "latency")
        if not 0.0 <= v <= MAX_LATENCY_NS:
            raise ScpiError(-222, f"latency {v:g} ns is outside 0..{MAX_LATENCY_NS:g} ns")
        with self._lock:
            self._latency_ns = v

    def _spill_status(self, args: list[str]) -> str:
        self._noargs(args, "SPIL:STAT?")
        state, last = self.status()
        return f"{state},{last}"

    def _spill_select(self, args: list[str]) -> None:
        sid = parse_int(self._one_arg(args, "SPIL:SEL"), "spill id")
        with self._lock:
            if sid not in self._ring:
                have = ",".join(str(i) for i in self._ring) or "none"
                raise ScpiError(-230, f"spill {sid} is not buffered (buffered: {have})")
            self._selected = sid

    def _spill_selected(self, args: list[str]) -> str:
        self._noargs(args, "SPIL:SEL?")
        with self._lock:
            return str(-1 if self._selected is None else self._selected)

    def _selected_record(self) -> SpillRecord:
        with self._lock:
            if self._selected is None:
                raise ScpiError(-221, "no spill selected (SPIL:SEL <id>)")
            rec = self._ring.get(self._selected)
            if rec is None:
                raise ScpiError(-230, f"spill {self._selected} is no longer buffered")
            return rec

    def _buffered_record(self, text: str) -> SpillRecord:
        """The record of a buffered spill (for an observer also a held one), else -230."""
        sid = parse_int(text, "spill id")
        session = getattr(self._local, "session", None)
        with self._lock:
            rec = self._ring.get(sid)
            if rec is None and session is not None and session.observer:
                rec = self._held.get(sid)
        if rec is None:
            raise ScpiError(-230, f"spill {sid} is not buffered")
        return rec

    def _spill_arg(self, args: list[str], n: int, name: str) -> tuple[SpillRecord, list[str]]:
        """The record a query reads: a trailing ``<spill>`` after ``n`` arguments names a buffered spill
        (read-only, the selection is not touched), else the selected spill. Returns (record, the rest)."""
        if len(args) == n + 1:
            return self._buffered_record(args[n]), args[:n]
        if len(args) > n + 1:
            raise ScpiError(-102, f"{name} takes at most {n + 1} values, got {len(args)}")
        return self._selected_record(), args

    def _spill_info(self, args: list[str]) -> str:
        rec, _ = self._spill_arg(args, 0, "SPIL:INFO?")
        return json.dumps(rec.info(), separators=(",", ":"))

    def _spill_truth(self, args: list[str]) -> str:
        self._noargs(args, "SPIL:TRUT?")
        rec = self._selected_record()
        return json.dumps(truth_summary(rec.spill_id, rec.spill.truth, rec.accepted.size), separators=(",", ":"))

    @staticmethod
    def _range(args: list[str], n: int, name: str, max_count: int | None = None) -> tuple[int, int]:
        """(first, count) of ``[<first>,<count>]`` within ``n`` records."""
        if not args:
            first, count = 0, n
        elif len(args) == 1:
            raise ScpiError(-109, f"{name} needs <first>,<count> (or no parameter for all)")
        elif len(args) > 2:
            raise ScpiError(-102, f"{name} takes <first>,<count>, got {len(args)} values")
        else:
            first = parse_int(args[0], "first")
            count = parse_int(args[1], "count")
        if first < 0 or count < 0 or first + count > n:
            raise ScpiError(-222, f"records {first}..{first + count - 1} requested, {n} available")
        if max_count is not None and count > max_count:
            raise ScpiError(-223, f"{count} records requested, at most {max_count} per query")
        return first, count

    def _prim_data(self, args: list[str]) -> BinaryReply:
        rec, args = self._spill_arg(args, 2, "PRIM:DATA?")
        first, count = self._range(args, rec.particles, "PRIM:DATA?")
        return BinaryReply(rec.trigger_primitives()[0][first : first + count])

    def _prim_time(self, args: list[str]) -> BinaryReply:
        rec, args = self._spill_arg(args, 2, "PRIM:TIME?")
        first, count = self._range(args, rec.particles, "PRIM:TIME?")
        return BinaryReply(np.ascontiguousarray(rec.trigger_primitives()[1][first : first + count], dtype="<f8"))

    def _acc_data(self, payload: bytes) -> None:
        rec = self._selected_record()
        if len(payload) % 4:
            raise ScpiError(-160, f"accepted list of {len(payload)} bytes is not a whole number of uint32")
        idx = np.frombuffer(payload, dtype="<u4")
        if idx.size > rec.particles:
            raise ScpiError(-223, f"{idx.size} accepted indices for a spill of {rec.particles} records")
        if idx.size:
            if int(idx[-1]) >= rec.particles or int(idx.max()) >= rec.particles:
                raise ScpiError(-222, f"accepted index {int(idx.max())} is not below N = {rec.particles}")
            if idx.size > 1 and not bool(np.all(np.diff(idx.astype(np.int64)) > 0)):
                raise ScpiError(-222, "accepted indices must be strictly increasing")
        with self._lock:
            rec.accepted = idx.astype(np.uint32, copy=True)

    def _acc_count(self, args: list[str]) -> str:
        self._noargs(args, "ACC:COUN?")
        return str(self._selected_record().accepted.size)

    def _evt_data(self, args: list[str]) -> BinaryReply:
        rec = self._selected_record()
        acc = rec.accepted
        first, count = self._range(args, acc.size, "EVT:DATA?", MAX_EVENTS_PER_QUERY)
        if self.digitizer is None:
            raise ScpiError(-200, "this crate has no digitiser")
        if count == 0:
            return BinaryReply(np.empty((0, chmap.N_CHANNELS, chmap.N_SAMPLES), dtype="<i2"))
        digitizer = self.digitizer

        def block(lo: int, n: int) -> np.ndarray:
            idx = np.ascontiguousarray(acc[lo : lo + n], dtype=np.int64)
            return np.ascontiguousarray(digitizer.events(rec.spill, rec.deposits, idx, rec.vmon), dtype="<i2")

        if self.mm is not None:  # the readout asks for these events' strips next: make them meanwhile
            self.mm.prefetch(rec, first, count)
        wf = self._lookahead.take((rec, acc, first, count))
        if wf is None:
            wf = block(first, count)
        nxt = first + count
        if nxt < acc.size:  # the readout goes on with the next block: digitise it while this one is sent
            n_next = min(count, acc.size - nxt)
            self._lookahead.start((rec, acc, nxt, n_next), lambda: block(nxt, n_next))
        if wf.shape != (count, chmap.N_CHANNELS, chmap.N_SAMPLES):
            raise ScpiError(-200, f"digitiser returned shape {wf.shape}")
        return BinaryReply(wf)

    def _evt_index_data(self, args: list[str]) -> BinaryReply:
        """``EVT:IND:DATA? <spill>,<index>[,<index>...]``: the full waveforms of those records of a
        buffered spill, whatever the accepted list (read-only: for an independent check of a readout)."""
        if len(args) < 2:
            raise ScpiError(-109, "EVT:IND:DATA? needs <spill>,<index>[,<index>...]")
        if len(args) - 1 > MAX_EVENTS_PER_QUERY:
            raise ScpiError(-223, f"{len(args) - 1} records requested, at most {MAX_EVENTS_PER_QUERY} per query")
        rec = self._buffered_record(args[0])
        idx = np.array([parse_int(a, "index") for a in args[1:]], dtype=np.int64)
        if idx.min() < 0 or idx.max() >= rec.particles:
            raise ScpiError(-222, f"record index {int(idx.max())} is not below N = {rec.particles}")
        if self.digitizer is None:
            raise ScpiError(-200, "this crate has no digitiser")
        return BinaryReply(
            np.ascontiguousarray(self.digitizer.events(rec.spill, rec.deposits, idx, rec.vmon), dtype="<i2")
        )

    def _led_block(self, args: list[str], name: str) -> tuple[Any, int, int]:
        rec, args = self._spill_arg(args, 2, name)
        first, count = self._range(args, rec.n_led, name, MAX_EVENTS_PER_QUERY)
        return rec.led, first, count

    def _led_data(self, args: list[str]) -> BinaryReply:
        """``LED:DATA? [<first>,<count>[,<spill>]]``: waveforms (count, 121, 32) int16 of the LED pulses fired
        in the gap after the spill (docs/protocols.md 1.5)."""
        led, first, count = self._led_block(args, "LED:DATA?")
        if led is None:
            return BinaryReply(np.empty((0, chmap.N_CHANNELS, chmap.N_SAMPLES), dtype="<i2"))
        return BinaryReply(np.ascontiguousarray(led.waveforms[first : first + count], dtype="<i2"))

    def _led_time(self, args: list[str]) -> BinaryReply:
        """``LED:TIME? [<first>,<count>[,<spill>]]``: the LED pulses' times (float64 ns since the spill start)."""
        led, first, count = self._led_block(args, "LED:TIME?")
        times = np.empty(0) if led is None else led.time_ns[first : first + count]
        return BinaryReply(np.ascontiguousarray(times, dtype="<f8"))

    def _evt_truth(self, args: list[str]) -> BinaryReply:
        rec = self._selected_record()
        acc = rec.accepted
        first, count = self._range(args, acc.size, "EVT:TRUT?", MAX_EVENTS_PER_QUERY)
        truth = np.asarray(rec.spill.truth)
        sel = truth[acc[first : first + count].astype(np.int64)]
        return BinaryReply(np.ascontiguousarray(sel.astype(TRUTH_DTYPE, copy=False)))


def _fmt_num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))
