"""Emulated CAEN N1470-style HV mainframe (docs/protocols.md section 2), a time-dynamic model.

The shape follows caproto's ``thermo_sim``: a set-point handler records *when* a new value arrived, and
every read-back is computed from the elapsed time since then. Each channel's monitored voltage VMON
moves linearly toward its target (VSET when ON, 0 V when OFF) at RUP / RDW (V/s); its current is the
divider current ``IMON = VMON / R`` (R = 6 MOhm, so ~150 uA at 900 V) plus a small constant load (uA).
Over-current (IMON > ISET) lasting longer than TRIP seconds latches a trip: the channel goes OFF, VMON
discharges fast (``KILL_DISCHARGE_V_PER_S``), status bit 7 is set and ``ON`` is refused until ``CLR``
(or ``BDCLR``). Trips are evaluated analytically on every access (VMON is piecewise linear and monotone
between two set-point changes), so the model needs no background thread and is exact under an injected
clock.

The whole N1470/DT1470 serial command set is served: every channel MON parameter (the value, its
range VMIN/VMAX, IMIN/IMAX, MVMIN/MVMAX, RUPMIN/RUPMAX, RDWMIN/RDWMAX, TRIPMIN/TRIPMAX and number of
decimals), the settable ones (VSET, ISET, MAXV, RUP, RDW, TRIP, PDWN RAMP/KILL, IMRANGE HIGH/LOW, ON,
OFF), the board parameters (BDNAME, BDNCH, BDFREL, BDSNUM, BDILK, BDILKM, BDCTR, BDTERM, BDALARM, and
SET BDILKM, BDCLR) and the error replies CMD:ERR, CH:ERR, PAR:ERR, VAL:ERR and LOC:ERR (a SET while the
board is in LOCAL control). The inputs a real module has on its front panel (KILL, interlock, the
channel enable switch, LOCAL/REMOTE) and a regulation or calibration fault are driven by methods
(:meth:`HVMainframe.kill`, :meth:`set_interlock_input`, :meth:`set_enabled`, :meth:`set_control`,
:meth:`set_regulation_error`, :meth:`set_calibration_error`).

Every SET request is kept in :meth:`HVMainframe.set_log` (accepted or refused), so a test can prove that
no set point beyond a limit was ever applied. :meth:`HVMainframe.handle` is the line handler served by
``sim_frontend.serial_server``; it never raises.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from detector import channels as chmap
from detector.config import Calibration, Config, load_calibration, load_config
from detector.hwstatus import HVStatus, hv_channel_alarm_bit

log = logging.getLogger(__name__)

HVMAX_V = 2000.0  #: hardware maximum of every channel (VSET and MAXV range), V
R_DIVIDER_MOHM = 6.0  #: divider resistance, MOhm (V / MOhm = uA)
DEFAULT_ISET_UA = 500.0  #: current limit at power-up, uA
DEFAULT_TRIP_S = 1.0  #: over-current time before a trip, s
DEFAULT_LOAD_UA = 0.5  #: small constant load current while VMON > 0, uA
KILL_DISCHARGE_V_PER_S = 2000.0  #: VMON fall rate after a trip, a KILL or OFF with PDWN = KILL, V/s
TRIP_DISCHARGE_V_PER_S = KILL_DISCHARGE_V_PER_S
SETTLED_BAND_V = 0.5  #: |VMON - target| below which a channel is not "ramping", V
REGULATION_WINDOW_V = 2.5  #: OVV / UNV when a settled VMON is more than this above / below VSET, V
IMON_LOW_RANGE_UA = 100.0  #: full scale of IMON in the LOW range (IMRANGE LOW), uA

# status word bits (docs/protocols.md section 2)
ST_ON, ST_RUP, ST_RDW, ST_OVC, ST_MAXV, ST_TRIP = (
    HVStatus.ON,
    HVStatus.RUP,
    HVStatus.RDW,
    HVStatus.OVC,
    HVStatus.MAXV,
    HVStatus.TRIP,
)


@dataclass(frozen=True)
class _Numeric:
    """A numeric channel parameter: accepted SET range, decimals on the wire, state attribute."""

    lo: float
    hi: float
    dec: int
    attr: str


#: settable numeric per-channel parameters (docs/protocols.md section 2); VSET is also capped by MAXV
NUMERIC: dict[str, _Numeric] = {
    "VSET": _Numeric(0.0, HVMAX_V, 1, "vset"),
    "ISET": _Numeric(0.0, 1000.0, 2, "iset"),
    "MAXV": _Numeric(0.0, HVMAX_V, 1, "maxv"),
    "RUP": _Numeric(1.0, 500.0, 1, "rup"),
    "RDW": _Numeric(1.0, 500.0, 1, "rdw"),
    "TRIP": _Numeric(0.0, 1000.0, 1, "trip_s"),
}
SET_RANGES: dict[str, tuple[float, float]] = {p: (n.lo, n.hi) for p, n in NUMERIC.items()}
#: the range / decimals read-outs: MON name -> (parameter, "lo" | "hi" | "dec")
RANGE_PARS: dict[str, tuple[str, str]] = {
    "VMIN": ("VSET", "lo"),
    "VMAX": ("VSET", "hi"),
    "VDEC": ("VSET", "dec"),
    "IMIN": ("ISET", "lo"),
    "IMAX": ("ISET", "hi"),
    "ISDEC": ("ISET", "dec"),
    "MVMIN": ("MAXV", "lo"),
    "MVMAX": ("MAXV", "hi"),
    "MVDEC": ("MAXV", "dec"),
    "RUPMIN": ("RUP", "lo"),
    "RUPMAX": ("RUP", "hi"),
    "RUPDEC": ("RUP", "dec"),
    "RDWMIN": ("RDW", "lo"),
    "RDWMAX": ("RDW", "hi"),
    "RDWDEC": ("RDW", "dec"),
    "TRIPMIN": ("TRIP", "lo"),
    "TRIPMAX": ("TRIP", "hi"),
    "TRIPDEC": ("TRIP", "dec"),
}
#: settable enumerated per-channel parameters -> accepted values
CHOICES: dict[str, tuple[str, ...]] = {"PDWN": ("RAMP", "KILL"), "IMRANGE": ("HIGH", "LOW")}
SWITCHES = ("ON", "OFF", "CLR")  #: SET without VAL (CLR: this emulator's per-channel trip clear)
MON_CHANNEL_PARS = (
    ("VSET", "VMON", "ISET", "IMON", "IMRANGE", "IMDEC", "MAXV", "RUP", "RDW", "TRIP", "PDWN", "POL", "STAT")
    + tuple(RANGE_PARS)
    + ("HVMAX",)
)
BOARD_MON_PARS = ("BDNAME", "BDNCH", "BDFREL", "BDSNUM", "BDILK", "BDILKM", "BDCTR", "BDTERM", "BDALARM")
BOARD_PARS = BOARD_MON_PARS
BOARD_SET_PARS = ("BDILKM", "BDCLR")
BOARD_CHOICES: dict[str, tuple[str, ...]] = {"BDILKM": ("OPEN", "CLOSED"), "BDCTR": ("LOCAL", "REMOTE")}
_NUMBER = re.compile(r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]{1,3})?$")
_FIELD_KEYS = ("BD", "CMD", "CH", "PAR", "VAL")


@dataclass
class HVChannelState:
    """One channel of the model. Voltages V, currents uA, rates V/s, times s (model clock)."""

    board: int
    ch: int
    channel_id: int
    name: str
    vset: float
    maxv: float
    iset: float
    rup: float
    rdw: float
    trip_s: float
    load_ua: float
    on: bool = True
    tripped: bool = False
    killed: bool = False  #: switched off by the KILL input (latched until BDCLR)
    interlocked: bool = False  #: switched off by the interlock (latched until BDCLR)
    disabled: bool = False  #: the channel's enable switch is off
    nocal: bool = False  #: calibration error (injected)
    offset_v: float = 0.0  #: regulation error: the output sits this far from the ramp model (V, injected)
    pdwn: str = "RAMP"
    imrange: str = "HIGH"
    # the current linear segment of VMON: starts at v0 at time t0, moves toward target at rate
    t0: float = 0.0
    v0: float = 0.0
    target: float = 0.0
    rate: float = 1.0
    last_eval: float = 0.0
    oc_since: float | None = None  #: start of the present over-current period, or None

    def v_at(self, t: float) -> float:
        """VMON (V) of the ramp model at model time ``t`` on the current segment."""
        dv = self.target - self.v0
        step = self.rate * max(0.0, t - self.t0)
        return self.target if abs(dv) <= step else self.v0 + math.copysign(step, dv)

    def out_at(self, t: float) -> float:
        """The output voltage (V): the ramp model plus an injected regulation error while ON."""
        v = self.v_at(t)
        return max(0.0, v + self.offset_v) if self.on and v > 0.0 else v

    def imon_of(self, v: float) -> float:
        """IMON (uA) at monitored voltage ``v`` (V)."""
        return v / R_DIVIDER_MOHM + self.load_ua if v > 0.0 else 0.0

    @property
    def alarm(self) -> bool:
        """The channel's bit in BDALARM: a trip, a KILL or an interlock is latched."""
        return self.tripped or self.killed or self.interlocked


@dataclass
class HVBoardState:
    """Board-level state: control mode, interlock mode and input, bus termination."""

    control: str = "REMOTE"  #: LOCAL refuses every SET with LOC:ERR
    ilk_mode: str = "CLOSED"  #: the interlock acts when the input is CLOSED (or OPEN)
    ilk_input_closed: bool = False  #: nothing plugged in: open
    term: str = "OFF"

    @property
    def interlock_active(self) -> bool:
        return self.ilk_input_closed == (self.ilk_mode == "CLOSED")


@dataclass
class _Request:
    board_text: str
    cmd: str | None = None
    ch_text: str | None = None
    par: str | None = None
    val: str | None = None
    extra: list[str] = field(default_factory=list)


class _Reply(Exception):
    """Internal: carries an error reply out of the parser."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class HVMainframe:
    """The 9-board HV mainframe: boards 0..3 HCAL modules, 4..7 ECAL quadrants, 8 counters/vetoes/SRD.

    Parameters
    ----------
    cfg, calib:
        Configuration (``detector.config.load_config``) and calibration; the initial VSET of every
        channel is ``calib.hv_set`` (V), ramp rates come from ``cfg.emulator.hv_rup_v_per_s`` and
        ``hv_rdw_v_per_s`` (V/s) unless given explicitly.
    maxv:
        MAXV per channel (V): None = the hardware ``HVMAX_V`` (2000 V); a number for all channels; or an
        array indexed by channel id (length ``N_CHANNELS``), e.g. ``calib.hv_limit``.
    iset_ua, trip_s, load_ua:
        Power-up current limit (uA), trip time (s) and constant load current (uA) of every channel.
    clock:
        Model time source in s (``time.monotonic``; tests inject a fake clock).

    At construction every channel is ON and settled at VSET, i.e. the apparatus is in its physics state.
    All methods are thread-safe (one lock).
    """

    OVERLONG_REPLY = "#CMD:ERR"

    def __init__(
        self,
        cfg: Config | None = None,
        calib: Calibration | None = None,
        *,
        rup_v_per_s: float | None = None,
        rdw_v_per_s: float | None = None,
        maxv: float | np.ndarray | None = None,
        iset_ua: float = DEFAULT_ISET_UA,
        trip_s: float = DEFAULT_TRIP_S,
        load_ua: float = DEFAULT_LOAD_UA,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        cfg = load_config(None) if cfg is None else cfg
        calib = load_calibration(cfg) if calib is None else calib
        rup = float(rup_v_per_s if rup_v_per_s is not None else cfg.emulator.hv_rup_v_per_s)
        rdw = float(rdw_v_per_s if rdw_v_per_s is not None else cfg.emulator.hv_rdw_v_per_s)
        self._lock = threading.RLock()
        self._clock = clock
        self._log: list[dict[str, Any]] = []
        self._init: dict[str, Any] = dict(
            calib=calib, rup=rup, rdw=rdw, maxv=maxv, iset=iset_ua, trip=trip_s, load=load_ua
        )
        self.boards: list[list[HVChannelState]] = []
        self.board_state: list[HVBoardState] = []
        self.reset()

    # ------------------------------------------------------------------ set-up
    def reset(self) -> None:
        """Back to the power-up state (VSET = calibration, ON, settled, REMOTE, no interlock); the SET log
        is kept."""
        p = self._init
        calib: Calibration = p["calib"]
        maxv_arr = (
            np.full(chmap.N_CHANNELS, HVMAX_V)
            if p["maxv"] is None
            else (np.broadcast_to(np.asarray(p["maxv"], dtype=float), (chmap.N_CHANNELS,)))
        )
        with self._lock:
            now = self._clock()
            self.boards = []
            self.board_state = [HVBoardState() for _ in range(chmap.N_HV_BOARDS)]
            for b in range(chmap.N_HV_BOARDS):
                chans = []
                for c in range(chmap.hv_board_size(b)):
                    info = chmap.by_hv_address(b, c)
                    maxv = float(min(HVMAX_V, maxv_arr[info.id]))
                    vset = float(calib.hv_set[info.id])
                    st = HVChannelState(
                        b,
                        c,
                        info.id,
                        info.name,
                        vset,
                        maxv,
                        float(p["iset"]),
                        p["rup"],
                        p["rdw"],
                        float(p["trip"]),
                        float(p["load"]),
                    )
                    st.t0 = st.last_eval = now
                    st.v0 = st.target = min(vset, maxv)
                    st.rate = p["rup"]
                    chans.append(st)
                self.boards.append(chans)

    def _channel(self, channel_id: int) -> HVChannelState:
        info = chmap.CHANNELS[channel_id]
        if info.hv_board is None or info.hv_channel is None:
            raise KeyError(f"channel {info.name} (id {channel_id}) has no HV supply")
        return self.boards[info.hv_board][info.hv_channel]

    # ------------------------------------------------------------------ dynamics
    def _rebase(self, st: HVChannelState, now: float) -> None:
        """Start a new linear segment at ``now`` from the present VMON toward the present target."""
        v = st.v_at(now)
        st.t0, st.v0, st.last_eval = now, v, now
        if st.tripped or st.killed or st.interlocked:
            st.target, st.rate = 0.0, KILL_DISCHARGE_V_PER_S
        elif st.on:
            st.target = min(st.vset, st.maxv)
            st.rate = st.rup if st.target >= v else st.rdw
        else:
            st.target = 0.0
            st.rate = st.rdw if st.pdwn == "RAMP" else KILL_DISCHARGE_V_PER_S

    def _advance(self, st: HVChannelState, now: float) -> None:
        """Evaluate the over-current / trip logic on the segment from ``st.last_eval`` to ``now``."""
        ta = st.last_eval
        if now <= ta:
            return
        if st.on and not st.tripped:
            # over-current iff v > vth (VMON is monotone on one segment, so each crossing is unique)
            vth = max(0.0, (st.iset - st.load_ua) * R_DIVIDER_MOHM)
            if st.oc_since is None:
                st.oc_since = self._first_time(st, ta, now, lambda v: v > vth, vth)
            if st.oc_since is not None:
                t_end = self._first_time(st, max(ta, st.oc_since), now, lambda v: v <= vth, vth)
                t_trip = st.oc_since + st.trip_s
                if t_trip <= (now if t_end is None else t_end):
                    self._latch_trip(st, max(t_trip, ta))
                    return
                if t_end is not None:
                    st.oc_since = None
        st.last_eval = now

    @staticmethod
    def _first_time(
        st: HVChannelState, ta: float, tb: float, cond: Callable[[float], bool], vth: float
    ) -> float | None:
        """First time in [ta, tb] where ``cond(VMON)`` holds, for a monotone segment crossing ``vth``."""
        if cond(st.v_at(ta)):
            return ta
        if not cond(st.v_at(tb)):
            return None
        t_cross = st.t0 + abs(vth - st.v0) / st.rate
        return min(tb, max(ta, t_cross))

    def _latch_trip(self, st: HVChannelState, t: float) -> None:
        st.tripped, st.on, st.oc_since = True, False, None
        self._rebase(st, t)

    def _switch_off(self, st: HVChannelState, now: float, *, killed: bool = False, interlocked: bool = False) -> None:
        """OFF by a command (at RDW or fast, after PDWN), by KILL or by the interlock (fast, latched)."""
        self._advance(st, now)
        st.on, st.oc_since = False, None
        st.killed = st.killed or killed
        st.interlocked = st.interlocked or interlocked
        self._rebase(st, now)

    def _status(self, st: HVChannelState, now: float) -> int:
        model, v = st.v_at(now), st.out_at(now)
        word = 0
        ramping_up = model < st.target - SETTLED_BAND_V
        ramping_down = model > st.target + SETTLED_BAND_V
        if st.on:
            word |= ST_ON
            if ramping_up:
                word |= ST_RUP
            if st.vset >= st.maxv:
                word |= ST_MAXV
            if st.imon_of(v) > st.iset:
                word |= ST_OVC
            if not (ramping_up or ramping_down):  # the +/- 2.5 V window applies once settled
                if v > st.vset + REGULATION_WINDOW_V:
                    word |= HVStatus.OVV
                elif v < st.vset - REGULATION_WINDOW_V:
                    word |= HVStatus.UNV
        if ramping_down:
            word |= ST_RDW
        if st.tripped:
            word |= ST_TRIP
        if st.disabled:
            word |= HVStatus.DIS
        if st.killed:
            word |= HVStatus.KILL
        if st.interlocked:
            word |= HVStatus.ILK
        if st.nocal:
            word |= HVStatus.NOCAL
        return int(word)

    def _value(self, st: HVChannelState, par: str, now: float) -> str:
        if par in RANGE_PARS:
            name, what = RANGE_PARS[par]
            n = NUMERIC[name]
            return str(n.dec) if what == "dec" else f"{getattr(n, what):.{n.dec}f}"
        if par in NUMERIC:
            n = NUMERIC[par]
            return f"{getattr(st, n.attr):.{n.dec}f}"
        v = st.out_at(now)
        if par == "VMON":
            return f"{v:.1f}"
        if par == "IMON":
            i = st.imon_of(v)
            return f"{min(i, IMON_LOW_RANGE_UA):.3f}" if st.imrange == "LOW" else f"{i:.2f}"
        values = {
            "IMRANGE": st.imrange,
            "IMDEC": "3" if st.imrange == "LOW" else "2",
            "PDWN": st.pdwn,
            "POL": "+",
            "HVMAX": f"{HVMAX_V:.1f}",
            "STAT": str(self._status(st, now)),
        }
        return values[par]

    def _board_value(self, board: int, par: str, now: float) -> str:
        bs = self.board_state[board]
        chans = self.boards[board]
        if par == "BDALARM":
            word = 0
            for st in chans:
                self._advance(st, now)
                if st.alarm:
                    word |= hv_channel_alarm_bit(st.ch)
            return str(word)
        name = "HCAL" + str(board) if board < 4 else "ECAL" + str(board - 4) if board < 8 else "COUNTERS"
        return {
            "BDNAME": name,
            "BDNCH": str(len(chans)),
            "BDFREL": "1.00",
            "BDSNUM": f"EMU-HV-{board:02d}",
            "BDILK": "YES" if bs.interlock_active else "NO",
            "BDILKM": bs.ilk_mode,
            "BDCTR": bs.control,
            "BDTERM": bs.term,
        }[par]

    # ------------------------------------------------------------------ protocol
    def handle(self, line: str) -> str:
        """Answer one request line (without CR LF) with one reply line (without CR LF). Never raises."""
        try:
            with self._lock:
                return self._handle(line)
        except _Reply as r:
            return r.text
        except Exception:  # a model bug must not kill the serial server
            log.exception("HV emulator failed on request %r", line)
            return "#CMD:ERR"

    def _handle(self, line: str) -> str:
        start = line.rfind("$")  # noise bytes before the '$' are discarded
        if start < 0:
            return "#CMD:ERR"
        req = self._parse(line[start + 1 :].strip())
        prefix = f"#BD:{int(req.board_text):02d}"
        board = int(req.board_text)
        now = self._clock()
        if req.cmd == "SET":
            reply = self._set(req, board, prefix, now)
            self._record(req, board, reply, now)
            return reply
        if req.extra or req.cmd != "MON" or req.par is None or board >= chmap.N_HV_BOARDS:
            return prefix + ",CMD:ERR"
        return self._mon(req, board, prefix, now)

    @staticmethod
    def _parse(body: str) -> _Request:
        parts = body.split(",")
        key, sep, value = parts[0].partition(":")
        if key != "BD" or not sep or not re.fullmatch(r"[0-9]{1,2}", value):
            raise _Reply("#CMD:ERR")
        req = _Request(value)
        seen: set[str] = set()
        for part in parts[1:]:
            key, sep, value = part.partition(":")
            if not sep or key not in _FIELD_KEYS[1:] or key in seen:
                req.extra.append(part)
                continue
            seen.add(key)
            setattr(req, {"CMD": "cmd", "CH": "ch_text", "PAR": "par", "VAL": "val"}[key], value)
        return req

    def _channels_of(self, board: int, ch_text: str | None, prefix: str, allow_all: bool) -> list[HVChannelState]:
        n = len(self.boards[board])
        if ch_text is None or not re.fullmatch(r"[0-9]{1,3}", ch_text):
            raise _Reply(prefix + ",CH:ERR")
        c = int(ch_text)
        if c < n:
            return [self.boards[board][c]]
        if c == n and allow_all:
            return list(self.boards[board])
        raise _Reply(prefix + ",CH:ERR")

    def _mon(self, req: _Request, board: int, prefix: str, now: float) -> str:
        par = req.par or ""
        if req.val is not None:
            return prefix + ",CMD:ERR"
        if par in BOARD_MON_PARS:  # CH is not needed (and ignored if given)
            return f"{prefix},CMD:OK,VAL:{self._board_value(board, par, now)}"
        if par not in MON_CHANNEL_PARS:
            return prefix + ",PAR:ERR"
        chans = self._channels_of(board, req.ch_text, prefix, allow_all=True)
        for st in chans:
            self._advance(st, now)
        return f"{prefix},CMD:OK,VAL:" + ";".join(self._value(st, par, now) for st in chans)

    def _set(self, req: _Request, board: int, prefix: str, now: float) -> str:
        par = req.par or ""
        if req.extra or req.par is None or board >= chmap.N_HV_BOARDS:
            return prefix + ",CMD:ERR"
        if par not in NUMERIC and par not in CHOICES and par not in SWITCHES and par not in BOARD_SET_PARS:
            return prefix + ",PAR:ERR"
        if par in BOARD_SET_PARS:
            return self._set_board(req, board, prefix, now)
        (st,) = self._channels_of(board, req.ch_text, prefix, allow_all=False)
        if self.board_state[board].control == "LOCAL":
            return prefix + ",LOC:ERR"
        self._advance(st, now)
        if par in SWITCHES:
            if req.val is not None:
                return prefix + ",VAL:ERR"
            if par == "ON":
                if st.tripped or st.killed or st.interlocked or st.disabled:
                    return prefix + ",VAL:ERR"
                if self.board_state[board].interlock_active:
                    return prefix + ",VAL:ERR"
                st.on = True
                self._rebase(st, now)
            elif par == "OFF":
                self._switch_off(st, now)
            else:
                st.tripped = False
                self._rebase(st, now)
            return prefix + ",CMD:OK"
        if par in CHOICES:
            if req.val not in CHOICES[par]:
                return prefix + ",VAL:ERR"
            setattr(st, par.lower(), req.val)
            self._rebase(st, now)
            return prefix + ",CMD:OK"
        value = _parse_number(req.val)
        n = NUMERIC[par]
        hi = min(n.hi, st.maxv) if par == "VSET" else n.hi
        if value is None or not n.lo <= value <= hi:
            return prefix + ",VAL:ERR"
        setattr(st, n.attr, round(value, n.dec))
        self._rebase(st, now)
        return prefix + ",CMD:OK"

    def _set_board(self, req: _Request, board: int, prefix: str, now: float) -> str:
        bs = self.board_state[board]
        if bs.control == "LOCAL":
            return prefix + ",LOC:ERR"
        if req.par == "BDCLR":
            if req.val is not None:
                return prefix + ",VAL:ERR"
            for st in self.boards[board]:
                self._advance(st, now)
                st.tripped = st.killed = False
                st.interlocked = st.interlocked and bs.interlock_active  # an active interlock stays
                self._rebase(st, now)
            return prefix + ",CMD:OK"
        if req.val not in BOARD_CHOICES["BDILKM"]:
            return prefix + ",VAL:ERR"
        bs.ilk_mode = req.val
        self._apply_interlock(board, now)
        return prefix + ",CMD:OK"

    def _apply_interlock(self, board: int, now: float) -> None:
        if self.board_state[board].interlock_active:
            for st in self.boards[board]:
                self._switch_off(st, now, interlocked=True)

    def _record(self, req: _Request, board: int, reply: str, now: float) -> None:
        ch: int | None = int(req.ch_text) if req.ch_text and re.fullmatch(r"[0-9]{1,3}", req.ch_text) else None
        try:
            cid: int | None = chmap.by_hv_address(board, ch).id if ch is not None else None
        except KeyError:
            cid = None
        self._log.append(
            {
                "time": time.time(),
                "t_model": now,
                "board": board,
                "ch": ch,
                "channel_id": cid,
                "par": req.par,
                "value": _parse_number(req.val),
                "raw": req.val,
                "accepted": reply.endswith("CMD:OK"),
                "reply": reply,
            }
        )

    # ------------------------------------------------------------------ front-panel inputs and faults
    def kill(self, board: int) -> None:
        """The board's KILL input: every channel OFF at once (fast discharge), KILL latched until BDCLR."""
        with self._lock:
            now = self._clock()
            for st in self.boards[board]:
                self._switch_off(st, now, killed=True)

    def set_interlock_input(self, board: int, closed: bool) -> None:
        """Open or close the board's interlock input; when it matches BDILKM the channels go OFF (ILK)."""
        with self._lock:
            self.board_state[board].ilk_input_closed = bool(closed)
            self._apply_interlock(board, self._clock())

    def set_control(self, board: int, mode: str) -> None:
        """``"LOCAL"`` (front panel: every SET answered LOC:ERR) or ``"REMOTE"``."""
        if mode not in BOARD_CHOICES["BDCTR"]:
            raise ValueError(f"control mode must be LOCAL or REMOTE, got {mode!r}")
        with self._lock:
            self.board_state[board].control = mode

    def set_enabled(self, channel_id: int, enabled: bool) -> None:
        """The channel's enable switch: disabled means OFF (at RDW / PDWN), DIS set, ON refused."""
        with self._lock:
            st = self._channel(channel_id)
            st.disabled = not enabled
            if st.disabled:
                self._switch_off(st, self._clock())

    def set_regulation_error(self, channel_id: int, offset_v: float) -> None:
        """Make the output of an ON channel sit ``offset_v`` (V) off its ramp model (OVV / UNV beyond
        +/- ``REGULATION_WINDOW_V`` around VSET)."""
        with self._lock:
            self._channel(channel_id).offset_v = float(offset_v)

    def set_calibration_error(self, channel_id: int, error: bool = True) -> None:
        """Set or clear the NOCAL status bit of a channel."""
        with self._lock:
            self._channel(channel_id).nocal = bool(error)

    # ------------------------------------------------------------------ direct access
    def vmon_by_channel_id(self) -> np.ndarray:
        """VMON (V) of every channel, indexed by channel id, shape (N_CHANNELS,); 0 without a PMT."""
        out = np.zeros(chmap.N_CHANNELS, dtype=np.float64)
        with self._lock:
            now = self._clock()
            for chans in self.boards:
                for st in chans:
                    self._advance(st, now)
                    out[st.channel_id] = st.out_at(now)
        return out

    def inject_trip(self, channel_id: int) -> None:
        """Trip ``channel_id`` now (as an over-current would): OFF, fast discharge, status bit 7."""
        with self._lock:
            st = self._channel(channel_id)
            now = self._clock()
            self._advance(st, now)
            self._latch_trip(st, now)

    def set_load(self, channel_id: int, load_ua: float) -> None:
        """Set the constant load current (uA) of one channel, e.g. to provoke an over-current trip."""
        with self._lock:
            st = self._channel(channel_id)
            now = self._clock()
            self._advance(st, now)
            st.load_ua = float(load_ua)
            self._rebase(st, now)

    def set_log(self) -> list[dict[str, Any]]:
        """Every SET request ever received, oldest first: ``time`` (unix s), ``t_model`` (s), ``board``,
        ``ch``, ``channel_id`` (None if unknown), ``par``, ``value`` (float or None), ``raw`` (VAL text),
        ``accepted`` (bool) and ``reply``."""
        with self._lock:
            return [dict(e) for e in self._log]

    def state(self) -> dict[str, Any]:
        """JSON-able snapshot: per channel id, name, board, ch, vset, vmon (V), imon (uA), status word,
        on, tripped, maxv (V), iset (uA), rup, rdw (V/s), trip_s (s), pdwn, imrange; per board its
        control mode, interlock mode and input."""
        with self._lock:
            now = self._clock()
            chans = []
            for board in self.boards:
                for st in board:
                    self._advance(st, now)
                    v = st.out_at(now)
                    chans.append(
                        {
                            "channel_id": st.channel_id,
                            "name": st.name,
                            "board": st.board,
                            "ch": st.ch,
                            "vset": st.vset,
                            "vmon": v,
                            "imon": st.imon_of(v),
                            "status": self._status(st, now),
                            "on": st.on,
                            "tripped": st.tripped,
                            "maxv": st.maxv,
                            "iset": st.iset,
                            "rup": st.rup,
                            "rdw": st.rdw,
                            "trip_s": st.trip_s,
                            "pdwn": st.pdwn,
                            "imrange": st.imrange,
                        }
                    )
            return {
                "hvmax": HVMAX_V,
                "boards": [len(b) for b in self.boards],
                "board_state": [
                    {"control": b.control, "ilk_mode": b.ilk_mode, "ilk_input_closed": b.ilk_input_closed}
                    for b in self.board_state
                ],
                "channels": chans,
                "set_requests": len(self._log),
            }


def _parse_number(text: str | None) -> float | None:
    """A finite decimal number, or None (missing, malformed, nan, inf)."""
    if text is None or not _NUMBER.match(text.strip()):
        return None
    value = float(text)
    return value if math.isfinite(value) else None
