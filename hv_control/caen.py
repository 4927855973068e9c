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
from detector.hwstatus import HVBoardAlarm, HVStatus, hv_channel_alarm_bit, hv_flag_names

from .instrument import InstrumentProtocolError
from .transport import LineTransport

T = TypeVar("T")

_REPLY = re.compile(r"#(?:BD:([0-9]{2}),(CMD:OK(?:,VAL:([ -~]*))?|CMD:ERR|CH:ERR|PAR:ERR|VAL:ERR|LOC:ERR)|(CMD:ERR))")


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


class HVLocalError(HVProtocolError):
    """``LOC:ERR``: a SET while the module is in LOCAL control (front panel); switch it to REMOTE."""

    code = "LOC:ERR"


class HVReplyError(HVProtocolError):
    """The reply does not fit the request (wrong board echo, missing or unparsable VAL, wrong count)."""


_ERRORS: dict[str, type[HVProtocolError]] = {
    "CMD:ERR": HVCommandError,
    "CH:ERR": HVChannelError,
    "PAR:ERR": HVParameterError,
    "VAL:ERR": HVValueError,
    "LOC:ERR": HVLocalError,
}

_MEANING = {
    "CMD:ERR": "unknown command, malformed request or no such board",
    "CH:ERR": "no such channel",
    "PAR:ERR": "unknown or read-only parameter",
    "VAL:ERR": "value missing, unparsable or out of range",
    "LOC:ERR": "SET refused: the module is in LOCAL control",
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
    """One protocol parameter: PAR string, unit, reply parser, and for settable ones either the strict
    numeric validator and the wire format of VAL, or the accepted words (``choices``). ``board_level``
    parameters are sent without CH (``$BD:xx,CMD:MON,PAR:BDNAME``)."""

    par: str
    unit: str
    parser: Callable[[str], T]
    validator: Callable[[float], float] | None = None
    fmt: str = "{:.1f}"
    board_level: bool = False
    doc: str = ""
    choices: tuple[str, ...] | None = None

    @property
    def settable(self) -> bool:
        return self.validator is not None or self.choices is not None

    def __set_name__(self, owner: type, name: str) -> None:
        object.__setattr__(self, "_attr", name)

    def __get__(self, obj: CAENMainframe | None, owner: type) -> Any:
        return self if obj is None else BoundParameter(self, obj)


class BoundParameter(Generic[T]):
    """A :class:`Parameter` bound to one mainframe: ``get(board, ch)``, ``get_all(board)``,
    ``set(board, ch, value)``; for board parameters ``get(board)`` and ``set_board(board, value)``."""

    def __init__(self, param: Parameter[T], hv: CAENMainframe) -> None:
        self.param = param
        self.hv = hv

    def get(self, board: int, ch: int = 0) -> T:
        """MON one channel (or the board, for board-level parameters: no CH is sent)."""
        if self.param.board_level:
            value = self.hv.exchange(board, "MON", None, self.param.par)
            if value is None:  # pragma: no cover - exchange refuses a MON reply without VAL
                raise HVReplyError(f"no VAL for {self.param.par}")
            return self.param.parser(value)
        return self.param.parser(self.hv.mon(board, ch, self.param.par))

    def get_all(self, board: int) -> list[T]:
        """MON every channel of ``board`` in one request (``CH:<n>``, reply ``VAL:a;b;...``)."""
        if self.param.board_level:
            raise ValueError(f"{self.param.par} is a board parameter; use get(board)")
        values = self.hv.mon_all(board, self.param.par)
        return [self.param.parser(v) for v in values]

    def _wire(self, value: Any, where: str) -> str:
        p = self.param
        if p.choices is not None:
            if value not in p.choices:
                raise ValueError(f"refusing to send {p.par} = {value!r} to {where}: not one of {', '.join(p.choices)}")
            return str(value)
        if p.validator is None:
            raise ValueError(f"{p.par} is read-only")
        try:
            v = p.validator(value)
        except ValueError as exc:
            raise ValueError(f"refusing to send {p.par} = {value!r} {p.unit} to {where}: {exc}") from None
        return p.fmt.format(v)

    def set(self, board: int, ch: int, value: Any) -> None:
        """SET one channel; the strict validator (or the list of words) raises ValueError before
        anything is sent."""
        if self.param.board_level:
            raise ValueError(f"{self.param.par} is a board parameter; use set_board(board, value)")
        self.hv.set(board, ch, self.param.par, self._wire(value, f"board {board} ch {ch}"))

    def set_board(self, board: int, value: Any) -> None:
        """SET a board parameter (no CH is sent)."""
        if not self.param.board_level:
            raise ValueError(f"{self.param.par} is a channel parameter; use set(board, ch, value)")
        self.hv.exchange(board, "SET", None, self.param.par, self._wire(value, f"board {board}"))


def _str(text: str) -> str:
    return text


def _range(name: str, unit: str, doc: str) -> Parameter[float]:
    return Parameter(name, unit, float, doc=doc)


class CAENMainframe:
    """The HV mainframe protocol (CAEN N1470/DT1470 command set) over any
    :class:`~hv_control.transport.LineTransport`.

    Units: V for voltages, uA for currents, V/s for ramp rates, s for the trip time.
    """

    HVMAX_HARDWARE = 2000.0  #: no set point above this is ever formatted (V)

    # ---- the protocol on one screen -------------------------------------------------------------
    vset = Parameter("VSET", "V", float, strict_range(0.0, HVMAX_HARDWARE), "{:.1f}", doc="set point")
    vmin = _range("VMIN", "V", "lowest VSET the hardware accepts")
    vmax = _range("VMAX", "V", "highest VSET the hardware accepts")
    vdec = Parameter("VDEC", "", _int_value, doc="decimals of VSET")
    vmon = Parameter("VMON", "V", float, doc="monitored voltage (ramps toward VSET at RUP/RDW)")
    iset = Parameter("ISET", "uA", float, strict_range(0.0, 1000.0), "{:.2f}", doc="current limit")
    imin = _range("IMIN", "uA", "lowest ISET the hardware accepts")
    imax = _range("IMAX", "uA", "highest ISET the hardware accepts")
    isdec = Parameter("ISDEC", "", _int_value, doc="decimals of ISET")
    imon = Parameter("IMON", "uA", float, doc="monitored current")
    imrange = Parameter("IMRANGE", "", _str, choices=("HIGH", "LOW"), doc="IMON range")
    imdec = Parameter("IMDEC", "", _int_value, doc="decimals of IMON (2 in HIGH, 3 in LOW range)")
    maxv = Parameter("MAXV", "V", float, strict_range(0.0, HVMAX_HARDWARE), "{:.1f}", doc="software limit")
    mvmin = _range("MVMIN", "V", "lowest MAXV the hardware accepts")
    mvmax = _range("MVMAX", "V", "highest MAXV the hardware accepts")
    mvdec = Parameter("MVDEC", "", _int_value, doc="decimals of MAXV")
    rup = Parameter("RUP", "V/s", float, strict_range(1.0, 500.0), "{:.1f}", doc="ramp-up rate")
    rupmin = _range("RUPMIN", "V/s", "lowest RUP")
    rupmax = _range("RUPMAX", "V/s", "highest RUP")
    rupdec = Parameter("RUPDEC", "", _int_value, doc="decimals of RUP")
    rdw = Parameter("RDW", "V/s", float, strict_range(1.0, 500.0), "{:.1f}", doc="ramp-down rate")
    rdwmin = _range("RDWMIN", "V/s", "lowest RDW")
    rdwmax = _range("RDWMAX", "V/s", "highest RDW")
    rdwdec = Parameter("RDWDEC", "", _int_value, doc="decimals of RDW")
    trip = Parameter("TRIP", "s", float, strict_range(0.0, 1000.0), "{:.1f}", doc="over-current time to trip")
    tripmin = _range("TRIPMIN", "s", "lowest TRIP")
    tripmax = _range("TRIPMAX", "s", "highest TRIP")
    tripdec = Parameter("TRIPDEC", "", _int_value, doc="decimals of TRIP")
    pdwn = Parameter("PDWN", "", _str, choices=("RAMP", "KILL"), doc="power down: at RDW or at once")
    pol = Parameter("POL", "", _str, doc="polarity, + or -")
    stat = Parameter("STAT", "", _int_value, doc="status word, see detector.hwstatus.HVStatus")
    hvmax = Parameter("HVMAX", "V", float, doc="hardware maximum (emulator only; the manual's MVMAX)")
    bdname = Parameter("BDNAME", "", _str, board_level=True, doc="board name")
    bdnch = Parameter("BDNCH", "", _int_value, board_level=True, doc="number of channels")
    bdsnum = Parameter("BDSNUM", "", _str, board_level=True, doc="serial number")
    bdfrel = Parameter("BDFREL", "", _str, board_level=True, doc="firmware release")
    bdilk = Parameter("BDILK", "", _str, board_level=True, doc="interlock active, YES or NO")
    bdilkm = Parameter(
        "BDILKM", "", _str, board_level=True, choices=("OPEN", "CLOSED"), doc="interlock acts on an OPEN/CLOSED input"
    )
    bdctr = Parameter("BDCTR", "", _str, board_level=True, doc="control mode, LOCAL or REMOTE")
    bdterm = Parameter("BDTERM", "", _str, board_level=True, doc="local bus termination, ON or OFF")
    bdalarm = Parameter("BDALARM", "", _int_value, board_level=True, doc="alarm word, see HVBoardAlarm")
    SWITCHES = ("ON", "OFF", "CLR")  #: SET without VAL (CLR: the emulator's per-channel trip clear)

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
        """Clear a latched trip of one channel (``CLR``, an extension of the emulator); the channel
        stays off. On an N1470 use :meth:`clear_alarm`."""
        self.set(board, ch, "CLR")

    def clear_alarm(self, board: int) -> None:
        """``BDCLR``: clear the board alarm and the latched TRIP/KILL/interlock of its channels (they
        stay off)."""
        self.exchange(board, "SET", None, "BDCLR")

    @classmethod
    def alarm_flags(cls, word: int) -> builtins.set[str]:
        """Names of the board alarm bits (``BDALARM``) set in ``word``: ``CH<n>``, PWFAIL, OVP, HVCKFAIL."""
        out = {f.name for f in HVBoardAlarm if f.name and int(word) & f and not f.name.startswith("CH")}
        out |= {f"CH{ch}" for ch in range(51) if int(word) & hv_channel_alarm_bit(ch)}
        return out

    @classmethod
    def status_flags(cls, word: int) -> builtins.set[str]:  # builtins: the class has a set() method
        """Names of the bits set in a status word."""
        return hv_flag_names(word)

    @classmethod
    def parameters(cls) -> dict[str, Parameter[Any]]:
        """Every declared parameter by attribute name."""
        return {k: v for k, v in vars(cls).items() if isinstance(v, Parameter)}
