"""Driver of the MSADC crate: SCPI over VISA (docs/protocols.md section 1).

The whole protocol on one screen:

=====================================  =========================================================
configure (:meth:`MSADC.configure`)    ``*CLS``, ``CONF:SAMP 32``, ``CONF:SAMP?`` == 32, ``CONF:CHAN?`` == 121,
                                       ``CONF:TRIG:CHAN?`` == S1,S2,S3,V1,PS_SUM,ECAL_SUM, then ``SYST:ERR?``
                                       until ``0``; any entry raises :class:`MSADCCrateError`
spill status                           ``SPIL:STAT?`` -> ``<STATE>,<last>``; ``SPIL:LIST?`` -> ids
select / describe                      ``SPIL:SEL <id>`` (+ ``SYST:ERR?``: ``-230`` = spill no longer buffered),
                                       ``SPIL:INFO?`` -> JSON
trigger primitives                     ``PRIM:COUN?``; ``PRIM:DATA? f,n`` -> int16 (n, 6, 32);
                                       ``PRIM:TIME? f,n`` -> float64 (n,)
accepted list                          ``ACC:DATA <uint32 block>`` (+ ``SYST:ERR?``), ``ACC:COUN?``
events                                 ``EVT:DATA? f,n`` -> int16 (n, 121, 32); ``EVT:TRUT? f,n`` (emulator)
Micromegas strips                      ``MM:DATA? f,n`` -> offsets + strip records (:mod:`detector.mmblock`)
=====================================  =========================================================

Transport rules, learnt from QCoDeS and pymeasure; the transport, the retry loop, the error kinds and the
ResourceManager are the shared instrument layer's (:mod:`hv_control.instrument`, used by the HV drivers too):

- ONE :class:`pyvisa.ResourceManager` per process and backend (:func:`resource_manager`); closing a crate
  session never closes it (pymeasure #894).
- A half-open session (opened, but setting it up failed) is closed before the error is re-raised.
- A write/read pair is never split by Ctrl-C: SIGINT is deferred until the transaction is complete.
- Every transaction has an explicit timeout (``daq.timeout_ms``, an inactivity timeout: the longest
  wait for the next byte) and is retried at most ``daq.retries`` times. Before a retry the session is
  closed and reopened (a late reply to a timed-out query would otherwise be read as the reply to the
  next one), the terminations and timeout are restored, the error queue is drained and the selected
  spill is selected again. Every recovery is noted in :attr:`MSADC.incidents` (the DAQ turns them into
  spill flags).
- Binary blocks are parsed by hand (``#<n><len><bytes>\\n``): the header is checked against the expected
  length, the payload is received straight into a preallocated numpy buffer, the terminator is checked.
  With the pyvisa-py backend the bytes are taken from the session's socket with ``recv_into`` (no
  intermediate copies; :mod:`hv_control.instrument.readers`); ``fast_read=False`` or any other backend
  goes through public pyvisa calls. A bad header, a length mismatch, a missing terminator or a block cut
  short raise :class:`MSADCBlockError` and the block is re-read.
- One thread owns the driver at a time; a re-entrant lock serialises transactions anyway.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from detector.channels import N_CHANNELS, N_SAMPLES, N_TRIGGER_CHANNELS, TRIGGER_CHANNEL_NAMES
from detector.hwstatus import CrateState
from detector.mmblock import MM_STRIP_DTYPE, PTR_DTYPE, MMBlockError, decode_block, strip_data
from detector.records import TRUTH_DTYPE
from detector.settings import Config
from detector.tracking import StripData
from hv_control.instrument import (
    ErrorKinds,
    InstrumentConnectionError,
    InstrumentError,
    InstrumentProtocolError,
    InstrumentTimeoutError,
    VisaSession,
    deferred_sigint,
    resource_manager,
    run_with_retries,
)

from . import crate_replies

T = TypeVar("T")

PRIM_DTYPE = np.dtype("<i2")
TIME_DTYPE = np.dtype("<f8")
EVT_DTYPE = np.dtype("<i2")
PRIM_RECORD_BYTES = N_TRIGGER_CHANNELS * N_SAMPLES * PRIM_DTYPE.itemsize  # 384
EVENT_RECORD_BYTES = N_CHANNELS * N_SAMPLES * EVT_DTYPE.itemsize  # 7744
#: bound on the mean Micromegas strips per event of an ``MM:DATA?`` block (above every strip of 8 planes of 1024)
MAX_MM_STRIPS_PER_EVENT = 8192
SPILL_STATES = CrateState.names()  #: SPIL:STAT? states
#: the PRIM:COUN? bound is this many times the configured particles per spill (Poisson fluctuations
#: and a crate configured for more intensity stay far below it; a corrupt count does not)
RECORDS_PER_SPILL_FACTOR = 4
MIN_RECORDS_BOUND = 1 << 20


# ------------------------------------------------------------------------------------------ errors
class MSADCError(InstrumentError, RuntimeError):
    """Base class of every MSADC driver error."""

    flag = "crate_error"  #: the detector.records.SPILL_FLAGS entry a spill gets when this is not cured


class MSADCConnectionError(MSADCError, InstrumentConnectionError):
    """The crate could not be reached or the connection was dropped."""

    flag = "timeout"


class MSADCTimeout(MSADCError, InstrumentTimeoutError):
    """No (complete) reply within the timeout."""

    flag = "timeout"


class MSADCBlockError(MSADCError, InstrumentProtocolError):
    """A binary block was malformed (bad header, length mismatch, missing terminator) or cut short."""

    flag = "truncated_block"

    def __init__(self, message: str, kind: str = "corrupt") -> None:
        super().__init__(message)
        self.kind = kind  #: "corrupt" or "truncated"


class MSADCCrateError(MSADCError, InstrumentProtocolError):
    """The crate's SCPI error queue reported errors: ``errors`` is a list of (code, text)."""

    flag = "crate_error"

    def __init__(self, context: str, errors: list[tuple[int, str]]) -> None:
        listed = "; ".join(f'{c},"{t}"' for c, t in errors)
        super().__init__(f"MSADC crate reported {len(errors)} error(s) after {context}: {listed}")
        self.context = context
        self.errors = errors

    @property
    def codes(self) -> list[int]:
        return [c for c, _ in self.errors]


class MSADCSpillLost(MSADCCrateError):
    """The selected spill is no longer buffered by the crate (``-230``): the DAQ was too slow."""

    flag = "spill_lost"


class MSADCConfigError(MSADCError, InstrumentProtocolError):
    """The crate's configuration does not match what the DAQ needs (channels, samples, primitive order)."""


class MSADCLockedError(MSADCConfigError):
    """Another client owns the crate's data commands (``SYST:LOCK``): ``owner`` names it."""

    def __init__(self, message: str, owner: str) -> None:
        super().__init__(message)
        self.owner = owner


class MSADCReplyError(MSADCError, InstrumentProtocolError):
    """A text reply of the crate had the wrong type or was out of bounds (a NaN, a string for a number, a
    count of -1 or 1e12, an id beyond 2^31): the reply is not used, the spill is flagged ``crate_error``."""

    flag = "crate_error"


#: the classes the shared VISA session raises for this driver
_KINDS = ErrorKinds(timeout=MSADCTimeout, connection=MSADCConnectionError, protocol=MSADCBlockError)
#: failures a reconnect and a retry may cure (crate errors and configuration mismatches are final)
_RETRYABLE = (MSADCBlockError, MSADCTimeout, MSADCConnectionError)

__all__ = [
    "MSADC",
    "MSADCBlockError",
    "MSADCConfigError",
    "MSADCConnectionError",
    "MSADCCrateError",
    "MSADCError",
    "MSADCLockedError",
    "MSADCReplyError",
    "MSADCSpillLost",
    "MSADCTimeout",
    "SpillStatus",
    "parse_block_header",
    "parse_error_line",
    "resource_manager",
]


def parse_error_line(line: str) -> tuple[int, str]:
    """``-230,"Data corrupt or stale; spill 3"`` -> (-230, 'Data corrupt or stale; spill 3')."""
    head, _, text = line.strip().partition(",")
    try:
        code = int(head)
    except ValueError:
        raise MSADCError(f"malformed SYST:ERR? reply {line!r}") from None
    return code, text.strip().strip('"')


def parse_block_header(head: bytes) -> int:
    """Length announced by an IEEE 488.2 definite-length block header ``#<n><len>`` (bytes, complete).
    Raises MSADCBlockError for anything else (indefinite ``#0`` blocks included)."""
    if len(head) < 2 or head[:1] != b"#" or not head[1:2].isdigit() or head[1:2] == b"0":
        raise MSADCBlockError(f"bad block header {bytes(head[:16])!r} (expected '#<1-9><length>')")
    nd = int(head[1:2])
    digits = head[2 : 2 + nd]
    if len(digits) != nd or not digits.isdigit():
        raise MSADCBlockError(f"bad block header {bytes(head[: 2 + nd])!r}: length field is not {nd} digits")
    return int(digits)


@dataclass(frozen=True)
class SpillStatus:
    state: str  #: IDLE, SPILL or GAP
    last_complete: int  #: id of the last complete spill, -1 if none


# ------------------------------------------------------------------------------------------ driver
class MSADC:
    """The MSADC crate at VISA resource ``resource`` (``TCPIP::127.0.0.1::<port>::SOCKET``).

    ``timeout_ms`` bounds every wait for a reply byte; a failed transaction is retried ``retries``
    times after a reconnect. ``fast_read=False`` forces the public-pyvisa read path (no pyvisa-py internals)."""

    def __init__(
        self,
        resource: str,
        *,
        visa_library: str = "@py",
        timeout_ms: int = 10000,
        retries: int = 3,
        fast_read: bool = True,
        open_timeout_ms: int | None = None,
        owner: str | None = None,
        max_records: int = 1 << 24,
    ) -> None:
        self.resource = resource
        self.owner = owner  #: ``SYST:LOCK`` owner name taken at every open (None: no lock taken)
        self.max_records = int(max_records)  #: largest PRIM:COUN? accepted (records per spill)
        self.max_list = crate_replies.MAX_LIST_IDS  #: most ids SPIL:LIST? may list (the crate's ring size)
        self.boot_id: str | None = None  #: SYST:BOOT? at the last open
        #: (old, new) boot ids of the crate restarts noticed since the last :meth:`take_restarts`
        self.restarts: list[tuple[str, str]] = []
        self.visa_library = visa_library
        self.timeout_ms = int(timeout_ms)
        self.retries = int(retries)
        self.fast_read = fast_read
        self.open_timeout_ms = int(open_timeout_ms if open_timeout_ms is not None else min(self.timeout_ms, 5000))
        self._session = VisaSession(resource, library=visa_library, fast=fast_read, kinds=_KINDS)
        self._lock = threading.RLock()
        self._selected: int | None = None
        self._samples: int | None = None  #: CONF:SAMP value once configure() succeeded
        self._truth_supported: bool | None = None
        self._mm_supported: bool | None = None
        self.idn = ""
        #: recoveries and errors since the last :meth:`take_incidents`: "timeout", "reconnected",
        #: "truncated_block", "corrupt_block", "crate_error", "retried"
        self.incidents: list[str] = []
        #: drained SCPI error-queue entries noticed during recoveries (code, text)
        self.crate_errors: list[tuple[int, str]] = []
        self.stats = {"reconnects": 0, "retries": 0, "timeouts": 0, "block_errors": 0, "bytes": 0}

    @classmethod
    def from_config(cls, cfg: Config, resource: str, **kw: Any) -> MSADC:
        """A driver with the DAQ's transport settings; ``max_records`` (the PRIM:COUN? bound) is
        :data:`RECORDS_PER_SPILL_FACTOR` times the configured beam intensity (at least
        :data:`MIN_RECORDS_BOUND`) unless given."""
        d = cfg.daq
        kw.setdefault(
            "max_records",
            int(max(MIN_RECORDS_BOUND, RECORDS_PER_SPILL_FACTOR * float(cfg.beam.particles_per_spill))),
        )
        return cls(resource, visa_library=d.visa_library, timeout_ms=d.timeout_ms, retries=d.retries, **kw)

    # ----------------------------------------------------------------------------- session
    @property
    def _rm(self) -> Any:
        """The process-wide ResourceManager the session opens through (shared with the HV drivers)."""
        return resource_manager(self.visa_library)

    @property
    def _timeout_s(self) -> float:
        return self.timeout_ms / 1000.0

    @property
    def is_open(self) -> bool:
        return self._session.is_open

    def open(self) -> MSADC:
        """Open the session (terminations ``\\n``, timeout) and read ``*IDN?``. A half-open session is closed
        before the error is raised."""
        with self._lock:
            if self._session.is_open:
                return self
            self._session.open(timeout_s=self._timeout_s, open_timeout_s=self.open_timeout_ms / 1000.0)
            try:
                idn = self._query_raw("*IDN?")
                if "MSADC" not in idn.upper():
                    raise MSADCConfigError(f"{self.resource} is not an MSADC crate (*IDN? -> {idn!r})")
                self.idn = idn
                self._check_boot(self._query_raw("SYST:BOOT?"))
                if self.owner is not None:
                    self._lock_crate()
            except BaseException as exc:
                self._session.close()
                if isinstance(exc, MSADCConfigError):
                    raise
                if isinstance(exc, MSADCError):
                    raise MSADCConnectionError(
                        f"cannot reach the MSADC crate at {self.resource} (no answer to *IDN?): {exc}"
                    ) from exc
                raise
            return self

    def _check_boot(self, reply: str) -> None:
        """Note the crate's boot id (``SYST:BOOT?``); a new one means the crate restarted since the last
        open: its ring, selection and configuration are gone (noted in :attr:`restarts`, incident
        ``crate_restart``)."""
        boot = reply.strip()
        if not boot or len(boot) > 64 or not boot.isprintable():
            raise MSADCReplyError(f"SYST:BOOT?: {boot[:60]!r} is not a boot id")
        if self.boot_id is not None and boot != self.boot_id:
            self.restarts.append((self.boot_id, boot))
            self.incidents.append("crate_restart")
        self.boot_id = boot

    def _lock_crate(self) -> None:
        """``SYST:LOCK <owner>``: take the crate's data commands; :class:`MSADCLockedError` if another
        client owns them."""
        self._write(f"SYST:LOCK {self.owner}")
        errs = self._drain_errors()
        if errs:
            holder = self._query_raw("SYST:LOCK?")
            raise MSADCLockedError(
                f"the MSADC crate at {self.resource} is owned by {holder!r} (SYST:LOCK refused: "
                + "; ".join(f"{c},{t}" for c, t in errs)
                + "): another DAQ is reading it; stop that one first",
                holder,
            )

    def take_restarts(self) -> list[tuple[str, str]]:
        """Return and clear the (old, new) boot ids of the crate restarts noticed since the last call."""
        with self._lock:
            out, self.restarts = self.restarts, []
            return out

    def close(self) -> None:
        """Close the session (the process-wide ResourceManager stays open); a lock this driver holds is
        given back first (best effort)."""
        with self._lock:
            if self.owner is not None and self._session.is_open:
                try:
                    with deferred_sigint():
                        self._write("SYST:LOCK:REL")
                except MSADCError:
                    pass
            self._session.close()

    def __enter__(self) -> MSADC:
        return self.open()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def reconnect(self) -> None:
        """Close the (possibly half-open) session, reopen it (terminations, timeout), drain the error queue
        into :attr:`crate_errors`, restore the configuration (``CONF:SAMP``) and select the previously
        selected spill again."""
        with self._lock:
            self._session.close()  # not close(): the lock is kept (it is re-taken at once by open())
            self.stats["reconnects"] += 1
            self.incidents.append("reconnected")
            self.open()
            errs = self._drain_errors()
            if errs:
                self.crate_errors.extend(errs)
            if self._samples is not None:  # restore the configuration (the crate may have rebooted)
                self._write(f"CONF:SAMP {self._samples}")
            if self._selected is not None:
                self._select(self._selected)
            elif self._samples is not None:
                self._raise_errors("CONF:SAMP after a reconnect")

    def take_incidents(self) -> list[str]:
        """Return and clear the incidents noted since the last call."""
        with self._lock:
            out, self.incidents = self.incidents, []
            return out

    # --------------------------------------------------------------------------- primitives
    def _write(self, text: str) -> None:
        self._session.write((text + "\n").encode("ascii"), text)

    def _read_line(self, what: str) -> str:
        return self._session.read_line(self._timeout_s, what).decode("ascii", errors="replace").rstrip("\r")

    def _query_raw(self, cmd: str) -> str:
        with deferred_sigint():
            self._write(cmd)
            return self._read_line(cmd).strip()

    def _read_into(self, view: memoryview, what: str, *, reply_start: bool = False) -> None:
        """Fill ``view`` (a writable byte memoryview) from the stream. Silence inside a block is a block cut
        short (:class:`MSADCBlockError`); silence at the start of a reply (``reply_start``) is :class:`MSADCTimeout`."""
        try:
            self._session.read_into(view, self._timeout_s, what)
        except MSADCTimeout as exc:
            if reply_start:
                raise MSADCTimeout(f"no reply to {what} from {self.resource} within {self.timeout_ms} ms") from exc
            raise MSADCBlockError(f"block cut short: {exc}", "truncated") from exc
        self.stats["bytes"] += view.nbytes

    def _read_exact(self, n: int, what: str, *, reply_start: bool = False) -> bytes:
        buf = bytearray(n)
        self._read_into(memoryview(buf), what, reply_start=reply_start)
        return bytes(buf)

    def _read_block_header(self, what: str) -> int:
        head = self._read_exact(2, what, reply_start=True)
        if head[:1] != b"#" or not head[1:2].isdigit() or head[1:2] == b"0":
            raise MSADCBlockError(f"{what}: bad block header {head!r} (expected '#<1-9><length>')", "corrupt")
        nd = int(head[1:2])
        digits = self._read_exact(nd, what)
        return parse_block_header(head + digits)

    def _query_block_into(self, cmd: str, out: np.ndarray) -> np.ndarray:
        """Send ``cmd`` and receive its block into ``out`` (C-contiguous); its byte length must match."""
        with deferred_sigint():
            self._write(cmd)
            length = self._read_block_header(cmd)
            if length != out.nbytes:
                raise MSADCBlockError(f"{cmd}: block announces {length} bytes, expected {out.nbytes}", "corrupt")
            self._read_into(out.reshape(-1).view(np.uint8).data, cmd)
            self._read_terminator(cmd, length)
        return out

    def _read_terminator(self, cmd: str, length: int) -> None:
        term = self._read_exact(1, cmd + " terminator")
        if term != b"\n":
            raise MSADCBlockError(
                f"{cmd}: block of {length} bytes is not followed by '\\n' (got {term!r}): "
                "the header lied about its length",
                "corrupt",
            )

    def _drain_errors(self, limit: int = 40) -> list[tuple[int, str]]:
        errs: list[tuple[int, str]] = []
        for _ in range(limit):
            code, text = parse_error_line(self._query_raw("SYST:ERR?"))
            if code == 0:
                return errs
            errs.append((code, text))
        return errs

    # ----------------------------------------------------------------------------- retries
    def _transact(self, what: str, fn: Callable[[], T], retry: bool = True) -> T:
        """Run ``fn`` (one complete transaction, ``what``) under the lock; on a timeout, dropped connection or
        bad block reconnect and retry, at most ``retries`` times; then raise the last error."""

        def attempt() -> T:
            if not self._session.is_open:
                self.open()
            return fn()

        with self._lock:
            return run_with_retries(
                attempt,
                retries=self.retries if retry else 0,
                retryable=_RETRYABLE,
                recover=self._recover,
                on_failure=self._note_failure,
            )

    def _note_failure(self, exc: BaseException, attempt: int) -> None:
        if isinstance(exc, MSADCBlockError):
            self.stats["block_errors"] += 1
            self.incidents.append("truncated_block" if exc.kind == "truncated" else "corrupt_block")
            return
        if isinstance(exc, MSADCTimeout):
            self.stats["timeouts"] += 1
        self.incidents.append("timeout")

    def _recover(self, attempt: int) -> None:
        """Before retry ``attempt``: reconnect (restoring configuration and selection). A crate error is
        final; any other failure backs off and counts as a failed attempt."""
        self.stats["retries"] += 1
        self.incidents.append("retried")
        try:
            self.reconnect()
        except MSADCCrateError:
            raise
        except MSADCError as exc:
            time.sleep(min(0.05 * attempt, 0.5))
            if isinstance(exc, _RETRYABLE):
                raise
            raise MSADCConnectionError(f"reconnecting to {self.resource} failed: {exc}") from exc

    def query(self, cmd: str) -> str:
        """One text query (retried)."""
        return self._transact(cmd, lambda: self._query_raw(cmd))

    def command(self, cmd: str, check: bool = True) -> None:
        """One command without reply; with ``check`` the error queue is read and any entry raised."""

        def run() -> None:
            with deferred_sigint():
                self._write(cmd)
                if check:
                    self._raise_errors(cmd)

        self._transact(cmd, run)

    def _raise_errors(self, context: str) -> None:
        errs = self._drain_errors()
        if errs:
            if any(c == -230 for c, _ in errs):
                raise MSADCSpillLost(context, errs)
            raise MSADCCrateError(context, errs)

    def check_errors(self, context: str = "the last commands") -> None:
        """Read ``SYST:ERR?`` until ``0``; raise :class:`MSADCCrateError` if the crate reported anything."""
        self._transact("SYST:ERR?", lambda: self._raise_errors(context))

    def errors(self) -> list[tuple[int, str]]:
        """Drain and return the error queue."""
        return self._transact("SYST:ERR?", self._drain_errors)

    # ------------------------------------------------------------------------ configuration
    def configure(self, samples: int = N_SAMPLES) -> dict[str, Any]:
        """Clear the error queue and set up the crate; check channels and primitive order; raise
        :class:`MSADCCrateError` if the crate reported an error, :class:`MSADCConfigError` on a mismatch."""

        def run() -> dict[str, Any]:
            with deferred_sigint():
                self._write("*CLS")
                self._write(f"CONF:SAMP {int(samples)}")
            samp = self._query_raw("CONF:SAMP?")
            chans = self._query_raw("CONF:CHAN?")
            trig = self._query_raw("CONF:TRIG:CHAN?")
            try:
                buff = crate_replies.parse_int(
                    self._query_raw("CONF:SPILL:BUFF?"), "CONF:SPIL:BUFF?", 1, crate_replies.MAX_LIST_IDS
                )
            except (MSADCTimeout, ValueError):
                buff = -1
            self._raise_errors("configuration")
            return {"samples": samp, "channels": chans, "trigger_channels": trig, "spill_buffer": buff}

        got = self._transact("configure", run)
        order = tuple(s.strip() for s in got["trigger_channels"].split(","))
        problems = []
        if got["samples"] != str(samples):
            problems.append(f"CONF:SAMP? = {got['samples']!r}, expected {samples}")
        if got["channels"] != str(N_CHANNELS):
            problems.append(f"CONF:CHAN? = {got['channels']!r}, expected {N_CHANNELS}")
        if order != TRIGGER_CHANNEL_NAMES:
            problems.append(
                f"CONF:TRIG:CHAN? = {got['trigger_channels']!r}, expected {','.join(TRIGGER_CHANNEL_NAMES)}"
            )
        if problems:
            raise MSADCConfigError(f"MSADC crate at {self.resource}: " + "; ".join(problems))
        self._samples = int(samples)
        if got["spill_buffer"] > 0:
            self.max_list = min(crate_replies.MAX_LIST_IDS, int(got["spill_buffer"]))
        return {
            "idn": self.idn,
            "boot_id": self.boot_id,
            "samples": samples,
            "channels": N_CHANNELS,
            "trigger_channels": list(order),
            "spill_buffer": got["spill_buffer"],
        }

    # ------------------------------------------------------------------------------- spills
    def _checked(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except crate_replies.ReplyError as exc:
            raise MSADCReplyError(f"MSADC crate at {self.resource}: bad reply: {exc}") from None

    def spill_status(self) -> SpillStatus:
        """``SPIL:STAT?``: the state and the last completed spill id (-1..2^31-1)."""
        reply = self.query("SPIL:STAT?")
        state, last = self._checked(lambda: crate_replies.parse_status(reply, SPILL_STATES))
        return SpillStatus(state, last)

    def spill_list(self) -> list[int]:
        """``SPIL:LIST?``: the buffered spill ids (at most the crate's ring size, strictly increasing)."""
        reply = self.query("SPIL:LIST?")
        return self._checked(lambda: crate_replies.parse_list(reply, max(self.max_list, 1)))

    def selected_on_crate(self) -> int:
        """``SPIL:SEL?``: the spill the crate has selected now (-1: none), whoever selected it."""
        reply = self.query("SPIL:SEL?")
        return self._checked(lambda: crate_replies.parse_int(reply, "SPIL:SEL?", -1, crate_replies.MAX_SPILL_ID))

    def _select(self, spill: int) -> None:
        with deferred_sigint():
            self._write(f"SPIL:SEL {int(spill)}")
            self._raise_errors(f"SPIL:SEL {int(spill)}")

    def select_spill(self, spill: int) -> None:
        """Select a buffered spill for the data commands; :class:`MSADCSpillLost` if it is gone."""
        self._selected = None
        self._transact(f"SPIL:SEL {spill}", lambda: self._select(spill))
        self._selected = int(spill)

    def release_spill(self) -> None:
        """Forget the selected spill (a reconnect will not select it again)."""
        self._selected = None

    @property
    def selected_spill(self) -> int | None:
        return self._selected

    def spill_info(self) -> dict[str, Any]:
        """``SPIL:INFO?`` of the selected spill, validated (:func:`online.crate_replies.parse_info`)."""
        reply = self.query("SPIL:INFO?")
        return self._checked(lambda: crate_replies.parse_info(reply, self._selected, self.max_records))

    def spill_truth(self) -> dict[str, Any]:
        """*emulator only*: ``SPIL:TRUT?`` of the selected spill."""
        return json.loads(self.query("SPIL:TRUT?"))

    def _count(self, cmd: str) -> int:
        """A count query, 0..``max_records`` (anything else: :class:`MSADCReplyError`)."""
        reply = self.query(cmd)
        return self._checked(lambda: crate_replies.parse_int(reply, cmd, 0, self.max_records))

    def prim_count(self) -> int:
        return self._count("PRIM:COUN?")

    def accepted_count(self) -> int:
        return self._count("ACC:COUN?")

    def event_count(self) -> int:
        return self._count("EVT:COUN?")

    # --------------------------------------------------------------------------------- data
    def read_primitives(self, first: int, count: int, out: np.ndarray | None = None) -> np.ndarray:
        """Trigger primitives ``first..first+count-1``: int16 (count, 6, 32), into ``out`` if given."""
        if out is None:
            out = np.empty((count, N_TRIGGER_CHANNELS, N_SAMPLES), PRIM_DTYPE)
        _check_out(out, (count, N_TRIGGER_CHANNELS, N_SAMPLES), PRIM_DTYPE)
        cmd = f"PRIM:DATA? {int(first)},{int(count)}"
        return self._transact(cmd, lambda: self._query_block_into(cmd, out))

    def read_times(self, first: int, count: int, out: np.ndarray | None = None) -> np.ndarray:
        """Arrival times (ns since spill start) of primitives ``first..first+count-1``: float64 (count,)."""
        if out is None:
            out = np.empty(count, TIME_DTYPE)
        _check_out(out, (count,), TIME_DTYPE)
        cmd = f"PRIM:TIME? {int(first)},{int(count)}"
        return self._transact(cmd, lambda: self._query_block_into(cmd, out))

    def read_events(self, first: int, count: int, out: np.ndarray | None = None) -> np.ndarray:
        """Waveforms of accepted events ``first..first+count-1`` (accepted-list order): int16 (count, 121, 32)."""
        if out is None:
            out = np.empty((count, N_CHANNELS, N_SAMPLES), EVT_DTYPE)
        _check_out(out, (count, N_CHANNELS, N_SAMPLES), EVT_DTYPE)
        cmd = f"EVT:DATA? {int(first)},{int(count)}"
        return self._transact(cmd, lambda: self._query_block_into(cmd, out))

    def read_led(self, first: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Waveforms int16 (count, 121, 32) and times float64 (count,) (ns since the spill start) of the LED
        pulses ``first..first+count-1`` fired after the selected spill (``LED:DATA?``, ``LED:TIME?``)."""
        wf = np.empty((count, N_CHANNELS, N_SAMPLES), EVT_DTYPE)
        times = np.empty(count, TIME_DTYPE)
        data, when = f"LED:DATA? {int(first)},{int(count)}", f"LED:TIME? {int(first)},{int(count)}"
        self._transact(data, lambda: self._query_block_into(data, wf))
        self._transact(when, lambda: self._query_block_into(when, times))
        return wf, times

    def read_truth(self, first: int, count: int, out: np.ndarray | None = None) -> np.ndarray:
        """*emulator only*: simulation truth of accepted events (detector.records.TRUTH_DTYPE)."""
        if out is None:
            out = np.empty(count, TRUTH_DTYPE)
        _check_out(out, (count,), TRUTH_DTYPE)
        cmd = f"EVT:TRUT? {int(first)},{int(count)}"
        return self._transact(cmd, lambda: self._query_block_into(cmd, out))

    def read_mm(self, first: int, count: int) -> StripData:
        """Micromegas strips of accepted events ``first..first+count-1`` (accepted-list order), ``MM:DATA?``.
        The block must have the layout of :mod:`detector.mmblock` (at most :data:`MAX_MM_STRIPS_PER_EVENT`
        strips per event on average): anything else raises :class:`MSADCBlockError` and is re-read."""
        cmd = f"MM:DATA? {int(first)},{int(count)}"
        head = (int(count) + 1) * PTR_DTYPE.itemsize
        limit = head + int(count) * MAX_MM_STRIPS_PER_EVENT * MM_STRIP_DTYPE.itemsize

        def run() -> StripData:
            with deferred_sigint():
                self._write(cmd)
                length = self._read_block_header(cmd)
                if not head <= length <= limit:
                    raise MSADCBlockError(f"{cmd}: block announces {length} bytes, expected {head}..{limit}", "corrupt")
                buf = np.empty(length, np.uint8)
                self._read_into(buf.data, cmd)
                self._read_terminator(cmd, length)
            try:
                ptr, rec = decode_block(buf, int(count))
            except MMBlockError as exc:
                raise MSADCBlockError(f"{cmd}: {exc}", "corrupt") from None
            return strip_data(ptr, rec)

        return self._transact(cmd, run)

    def _probe(self, cmd: str) -> bool:
        """Whether the crate answers the block query ``cmd``: sent with ``*OPC?``; a block first means yes,
        ``1`` first means no (the failed query's error is then drained)."""

        def run() -> bool:
            with deferred_sigint():
                self._write(cmd)
                self._write("*OPC?")
                first = self._read_exact(1, f"{cmd} probe")
                if first == b"#":
                    nd = self._read_exact(1, f"{cmd} probe")
                    digits = self._read_exact(int(nd), f"{cmd} probe") if nd.isdigit() else b""
                    length = parse_block_header(b"#" + nd + digits)
                    self._read_exact(length + 1, f"{cmd} probe")
                    self._read_line("*OPC?")
                    return True
                self._read_line("*OPC?")
                self._drain_errors()
                return False

        return self._transact(f"{cmd} probe", run)

    def mm_supported(self) -> bool:
        """Whether the crate has the Micromegas readout (``MM:DATA? 0,0`` answers a block). Probed once per
        driver; needs a selected spill."""
        if self._mm_supported is None:
            self._mm_supported = self._probe("MM:DATA? 0,0")
        return self._mm_supported

    def truth_supported(self) -> bool:
        """Whether the crate answers ``EVT:TRUT?`` (the emulator does, real hardware does not). Probed once
        per driver with ``EVT:TRUT? 0,1`` (:meth:`_probe`). Needs a selected spill with an accepted event."""
        if self._truth_supported is None:
            self._truth_supported = self._probe("EVT:TRUT? 0,1")
        return self._truth_supported

    def upload_accepted(self, indices: np.ndarray) -> None:
        """Upload the accepted record indices (strictly increasing, uint32) of the selected spill and check
        the error queue (``-160``/``-222`` raise :class:`MSADCCrateError`)."""
        idx = np.ascontiguousarray(indices, dtype="<u4")
        if idx.size > 1 and not np.all(np.diff(idx.astype(np.int64)) > 0):
            raise ValueError("accepted indices must be strictly increasing")

        payload = idx.tobytes()
        size = str(len(payload)).encode()
        message = b"ACC:DATA #" + str(len(size)).encode() + size + payload + b"\n"  # IEEE 488.2 definite block

        def run() -> None:
            with deferred_sigint():
                self._session.write(message, f"ACC:DATA ({idx.size} indices)")
                self._raise_errors(f"ACC:DATA ({idx.size} indices)")

        self._transact("ACC:DATA", run)


def _check_out(out: np.ndarray, shape: tuple[int, ...], dtype: np.dtype) -> None:
    if out.shape != shape or out.dtype != dtype or not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(
            f"output buffer must be a writable C-contiguous {dtype} array of shape {shape}; got {out.dtype} {out.shape}"
        )
