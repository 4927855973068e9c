"""CAEN desktop-style HV mainframe protocol (docs/protocols.md section 2), transport-agnostic.

The whole protocol is declared at class level in :class:`CAENMainframe`, pymeasure style: each
parameter has its PAR string, unit, parser and - when it can be set - a *strict* validator (a value out
of range raises, it is never clamped) and a wire format. Requests look like
``$BD:00,CMD:SET,CH:3,PAR:VSET,VAL:900.0``; replies ``#BD:00,CMD:OK[,VAL:...]`` or one of the error
replies, each mapped to an :class:`HVProtocolError` subclass carrying the request::

    hv = CAENMainframe(transport)
    hv.vset.set(0, 3, 900.0)          # board 0, channel 3, V
    hv.vmon.get(0, 3)                 # -> 874.5 (V)
    hv.vmon.get_all(0)                # -> [v0, ..., v8] via CH:9 (VAL:a;b;c)
    hv.on(0, 3); hv.clear_trip(0, 3)
"""

from __future__ import annotations

import builtins
import math
import numbers
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from detector import channels as chmap
from detector.hwstatus import HVStatus, hv_flag_names

from .instrument import InstrumentProtocolError
from .transport import LineTransport

T = TypeVar("T")

_REPLY = re.compile(r"#(?:BD:([0-9]{2}),(CMD:OK(?:,VAL:([ -~]*))?|CMD:ERR|CH:ERR|PAR:ERR|VAL:ERR)|(CMD:ERR))")


# --------------------------------------------------------------------------------------------------
class HVProtocolError(InstrumentProtocolError):
    """The mainframe refused a request or answered something unexpected; ``request`` and ``reply``
    are kept for the operator. (Timeouts and lost connections are the transport's errors.)"""

    code = "ERR"

    def __init__(self, message: str, request: str = "", reply: str = "") -> None:
        super().__init__(message)
        self.request = request
        self.reply = reply


class HVCommandError(HVProtocolError):
    """``CMD:ERR``: unknown command, malformed request or no such board."""

    code = "CMD:ERR"


class HVChannelError(HVProtocolError):
    """``CH:ERR``: no such channel on the board."""

    code = "CH:ERR"


class HVParameterError(HVProtocolError):
    """``PAR:ERR``: unknown parameter (or not settable / not readable)."""

    code = "PAR:ERR"


class HVValueError(HVProtocolError):
    """``VAL:ERR``: value missing, unparsable or out of range (e.g. VSET above MAXV, ON while tripped)."""

    code = "VAL:ERR"


class HVReplyError(HVProtocolError):
    """The reply does not fit the request (wrong board echo, missing or unparsable VAL, wrong count)."""


_ERRORS: dict[str, type[HVProtocolError]] = {
    "CMD:ERR": HVCommandError,
    "CH:ERR": HVChannelError,
    "PAR:ERR": HVParameterError,
    "VAL:ERR": HVValueError,
}

_MEANING = {
    "CMD:ERR": "unknown command, malformed request or no such board",
    "CH:ERR": "no such channel",
    "PAR:ERR": "unknown or read-only parameter",
    "VAL:ERR": "value missing, unparsable or out of range",
}


def extract_reply(text: str) -> str | None:
    """The HV reply inside one received line: from the last ``#`` (noise before it is dropped), if it
    has the reply grammar; else None (a garbage line)."""
    i = text.rfind("#")
    if i < 0:
        return None
    reply = text[i:].strip()
    return reply if _REPLY.fullmatch(reply) else None


# --------------------------------------------------------------------------------------------------
def strict_range(lo: float, hi: float) -> Callable[[float], float]:
    """Validator: a finite number in [lo, hi] passes unchanged; anything else raises ValueError.
    (pymeasure's ``truncated_range`` clamps; for a high voltage only the strict kind is acceptable.)"""

    def check(value: float) -> float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"{value!r} is not a number")
        v = float(value)
        if not math.isfinite(v) or not lo <= v <= hi:
            raise ValueError(f"{value!r} is outside the allowed range [{lo:g}, {hi:g}]")
        return v

    return check


def _int_value(text: str) -> int:
    return int(text)


@dataclass(frozen=True)
class Parameter(Generic[T]):
    """One protocol parameter: PAR string, unit, reply parser, and for settable ones the strict
    validator and the wire format of VAL. ``board_level`` parameters ignore CH (MON only)."""

    par: str
    unit: str
    parser: Callable[[str], T]
    validator: Callable[[float], float] | None = None
    fmt: str = "{:.1f}"
    board_level: bool = False
    doc: str = ""

    @property
    def settable(self) -> bool:
        return self.validator is not None

    def __set_name__(self, owner: type, name: str) -> None:
        object.__setattr__(self, "_attr", name)

    def __get__(self, obj: CAENMainframe | None, owner: type) -> Any:
        return self if obj is None else BoundParameter(self, obj)


class BoundParameter(Generic[T]):
    """A :class:`Parameter` bound to one mainframe: ``get(board, ch)``, ``get_all(board)``,
    ``set(board, ch, value)``."""

    def __init__(self, param: Parameter[T], hv: CAENMainframe) -> None:
        self.param = param
        self.hv = hv

    def get(self, board: int, ch: int = 0) -> T:
        """MON one channel (or the board, for board-level parameters)."""
        return self.param.parser(self.hv.mon(board, ch, self.param.par))

    def get_all(self, board: int) -> list[T]:
        """MON every channel of ``board`` in one request (``CH:<n>``, reply ``VAL:a;b;...``)."""
        if self.param.board_level:
            raise ValueError(f"{self.param.par} is a board parameter; use get(board)")
        values = self.hv.mon_all(board, self.param.par)
        return [self.param.parser(v) for v in values]

    def set(self, board: int, ch: int, value: float) -> None:
        """SET one channel; the strict validator raises ValueError before anything is sent."""
        p = self.param
        if p.validator is None:
            raise ValueError(f"{p.par} is read-only")
        try:
            v = p.validator(value)
        except ValueError as exc:
            raise ValueError(f"refusing to send {p.par} = {value!r} {p.unit} to board {board} ch {ch}: {exc}") from None
        self.hv.set(board, ch, p.par, p.fmt.format(v))


def _str(text: str) -> str:
    return text


class CAENMainframe:
    """The HV mainframe protocol over any :class:`~hv_control.transport.LineTransport`.

    Units: V for voltages, uA for currents, V/s for ramp rates, s for the trip time.
    """

    HVMAX_HARDWARE = 2000.0  #: no set point above this is ever formatted (V)

    # ---- the protocol on one screen -------------------------------------------------------------
    vset = Parameter("VSET", "V", float, strict_range(0.0, HVMAX_HARDWARE), "{:.1f}", doc="set point")
    vmon = Parameter("VMON", "V", float, doc="monitored voltage (ramps toward VSET at RUP/RDW)")
    iset = Parameter("ISET", "uA", float, strict_range(0.0, 1000.0), "{:.2f}", doc="current limit")
    imon = Parameter("IMON", "uA", float, doc="monitored current")
    rup = Parameter("RUP", "V/s", float, strict_range(1.0, 500.0), "{:.1f}", doc="ramp-up rate")
    rdw = Parameter("RDW", "V/s", float, strict_range(1.0, 500.0), "{:.1f}", doc="ramp-down rate")
    maxv = Parameter("MAXV", "V", float, strict_range(0.0, HVMAX_HARDWARE), "{:.1f}", doc="software limit")
    hvmax = Parameter("HVMAX", "V", float, doc="hardware maximum (read-only)")
    trip = Parameter("TRIP", "s", float, strict_range(0.0, 1000.0), "{:.1f}", doc="over-current time to trip")
    stat = Parameter("STAT", "", _int_value, doc="status word, see detector.hwstatus.HVStatus")
    bdname = Parameter("BDNAME", "", _str, board_level=True, doc="board name")
    bdnch = Parameter("BDNCH", "", _int_value, board_level=True, doc="number of channels")
    bdsnum = Parameter("BDSNUM", "", _str, board_level=True, doc="serial number")
    bdfrel = Parameter("BDFREL", "", _str, board_level=True, doc="firmware release")
    SWITCHES = ("ON", "OFF", "CLR")  #: SET without VAL

    STATUS = HVStatus

    def __init__(self, transport: LineTransport, board_size: Callable[[int], int] = chmap.hv_board_size) -> None:
        self.transport = transport
        self.board_size = board_size

    # ---- raw requests ---------------------------------------------------------------------------
    @staticmethod
    def request(board: int, cmd: str, ch: int | None, par: str, val: str | None = None) -> str:
        """The request line (without CR LF)."""
        if not (isinstance(board, int) and 0 <= board <= 99):
            raise ValueError(f"board must be an integer 0..99, got {board!r}")
        text = f"$BD:{board:02d},CMD:{cmd}"
        if ch is not None:
            if not (isinstance(ch, int) and 0 <= ch <= 999):
                raise ValueError(f"channel must be an integer 0..999, got {ch!r}")
            text += f",CH:{ch}"
        text += f",PAR:{par}"
        return text if val is None else f"{text},VAL:{val}"

    def exchange(self, board: int, cmd: str, ch: int | None, par: str, val: str | None = None) -> str | None:
        """Send one request, check the reply and return its VAL text (None if the reply has none)."""
        req = self.request(board, cmd, ch, par, val)
        reply = self.transport.query(req, extract_reply)
        m = _REPLY.fullmatch(reply)
        if m is None:  # pragma: no cover - extract_reply already guarantees the grammar
            raise HVReplyError(f"malformed reply {reply!r} to {req!r}", req, reply)
        if m.group(4):
            raise HVCommandError(f"mainframe answered {reply!r} to {req!r}: line not understood", req, reply)
        if int(m.group(1)) != board:
            raise HVReplyError(f"reply {reply!r} to {req!r} comes from board {m.group(1)}, not {board:02d}", req, reply)
        status = m.group(2)
        if status in _ERRORS:
            raise _ERRORS[status](f"{status} ({_MEANING[status]}) for request {req!r}", req, reply)
        value = m.group(3)
        if cmd == "MON" and value is None:
            raise HVReplyError(f"reply {reply!r} to {req!r} carries no VAL", req, reply)
        return value

    def mon(self, board: int, ch: int, par: str) -> str:
        """MON one parameter of one channel; returns the VAL text."""
        value = self.exchange(board, "MON", ch, par)
        assert value is not None
        return value

    def mon_all(self, board: int, par: str) -> list[str]:
        """MON one parameter of every channel of ``board`` (``CH:<n>``); list of VAL texts."""
        n = self.board_size(board)
        value = self.exchange(board, "MON", n, par)
        assert value is not None
        parts = value.split(";")
        if len(parts) != n:
            req = self.request(board, "MON", n, par)
            raise HVReplyError(
                f"{par} of board {board:02d}: expected {n} values, got {len(parts)} ({value!r}) for request {req!r}",
                req,
                value,
            )
        return parts

    def set(self, board: int, ch: int, par: str, val: str | None = None) -> None:
        """SET one parameter (VAL text already formatted) or switch (ON/OFF/CLR, no VAL)."""
        self.exchange(board, "SET", ch, par, val)

    # ---- switches -------------------------------------------------------------------------------
    def on(self, board: int, ch: int) -> None:
        """Switch a channel on (refused with VAL:ERR while a trip is latched)."""
        self.set(board, ch, "ON")

    def off(self, board: int, ch: int) -> None:
        """Switch a channel off (VMON ramps down at RDW)."""
        self.set(board, ch, "OFF")

    def clear_trip(self, board: int, ch: int) -> None:
        """Clear a latched trip; the channel stays off."""
        self.set(board, ch, "CLR")

    @classmethod
    def status_flags(cls, word: int) -> builtins.set[str]:  # builtins: the class has a set() method
        """Names of the bits set in a status word."""
        return hv_flag_names(word)

    @classmethod
    def parameters(cls) -> dict[str, Parameter[Any]]:
        """Every declared parameter by attribute name."""
        return {k: v for k, v in vars(cls).items() if isinstance(v, Parameter)}
