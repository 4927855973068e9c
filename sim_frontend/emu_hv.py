"""Emulated CAEN-style HV mainframe (docs/protocols.md section 2), a time-dynamic model.

The shape follows caproto's ``thermo_sim``: a set-point handler records *when* a new value arrived, and
every read-back is computed from the elapsed time since then. Each channel's monitored voltage VMON
moves linearly toward its target (VSET when ON, 0 V when OFF) at RUP / RDW (V/s); its current is the
divider current ``IMON = VMON / R`` (R = 6 MOhm, so ~150 uA at 900 V) plus a small constant load (uA).
Over-current (IMON > ISET) lasting longer than TRIP seconds latches a trip: the channel goes OFF, VMON
discharges fast (``TRIP_DISCHARGE_V_PER_S``), status bit 7 is set and ``ON`` is refused until ``CLR``.
Trips are evaluated analytically on every access (VMON is piecewise linear and monotone between two
set-point changes), so the model needs no background thread and is exact under an injected clock.

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
from detector.hwstatus import HVStatus

log = logging.getLogger(__name__)

HVMAX_V = 2000.0  #: hardware maximum of every channel, V
R_DIVIDER_MOHM = 6.0  #: divider resistance, MOhm (V / MOhm = uA)
DEFAULT_ISET_UA = 500.0  #: current limit at power-up, uA
DEFAULT_TRIP_S = 1.0  #: over-current time before a trip, s
DEFAULT_LOAD_UA = 0.5  #: small constant load current while VMON > 0, uA
TRIP_DISCHARGE_V_PER_S = 2000.0  #: VMON fall rate of a tripped channel, V/s
SETTLED_BAND_V = 0.5  #: |VMON - target| below which a channel is not "ramping", V

# status word bits (docs/protocols.md section 2)
ST_ON, ST_RUP, ST_RDW, ST_OVC, ST_MAXV, ST_TRIP = (
    HVStatus.ON,
    HVStatus.RUP,
    HVStatus.RDW,
    HVStatus.OVC,
    HVStatus.MAXV,
    HVStatus.TRIP,
)

#: settable per-channel parameters -> (low, high) accepted range of VAL
SET_RANGES: dict[str, tuple[float, float]] = {
    "VSET": (0.0, HVMAX_V),  # upper bound is the channel's MAXV, checked separately
    "ISET": (0.0, 1000.0),
    "RUP": (1.0, 500.0),
    "RDW": (1.0, 500.0),
    "MAXV": (0.0, HVMAX_V),
    "TRIP": (0.0, 1000.0),
}
SWITCHES = ("ON", "OFF", "CLR")
MON_CHANNEL_PARS = ("VSET", "VMON", "ISET", "IMON", "RUP", "RDW", "MAXV", "HVMAX", "TRIP", "STAT")
BOARD_PARS = ("BDNAME", "BDNCH", "BDSNUM", "BDFREL")
_FORMATS = {
    "VSET": "{:.1f}",
    "VMON": "{:.1f}",
    "MAXV": "{:.1f}",
    "HVMAX": "{:.1f}",
    "RUP": "{:.1f}",
    "RDW": "{:.1f}",
    "TRIP": "{:.1f}",
    "ISET": "{:.2f}",
    "IMON": "{:.2f}",
    "STAT": "{:d}",
}
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
    # the current linear segment of VMON: starts at v0 at time t0, moves toward target at rate
    t0: float = 0.0
    v0: float = 0.0
    target: float = 0.0
    rate: float = 1.0
    last_eval: float = 0.0
    oc_since: float | None = None  #: start of the present over-current period, or None

    def v_at(self, t: float) -> float:
        """VMON (V) at model time ``t`` on the current segment."""
        dv = self.target - self.v0
        step = self.rate * max(0.0, t - self.t0)
        return self.target if abs(dv) <= step else self.v0 + math.copysign(step, dv)

    def imon_of(self, v: float) -> float:
        """IMON (uA) at monitored voltage ``v`` (V)."""
        return v / R_DIVIDER_MOHM + self.load_ua if v > 0.0 else 0.0


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
        self.reset()

    # ------------------------------------------------------------------ set-up
    def reset(self) -> None:
        """Back to the power-up state (VSET = calibration, ON, settled); the SET log is kept."""
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
        if st.tripped:
            st.target, st.rate = 0.0, TRIP_DISCHARGE_V_PER_S
        elif st.on:
            st.target = min(st.vset, st.maxv)
            st.rate = st.rup if st.target >= v else st.rdw
        else:
            st.target, st.rate = 0.0, st.rdw

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

    def _status(self, st: HVChannelState, now: float) -> int:
        v = st.v_at(now)
        word = 0
        if st.on:
            word |= ST_ON
            if v < st.target - SETTLED_BAND_V:
                word |= ST_RUP
            if st.vset >= st.maxv:
                word |= ST_MAXV
            if st.imon_of(v) > st.iset:
                word |= ST_OVC
        if v > st.target + SETTLED_BAND_V:
            word |= ST_RDW
        if st.tripped:
            word |= ST_TRIP
        return int(word)

    def _value(self, st: HVChannelState, par: str, now: float) -> str:
        v = st.v_at(now)
        values: dict[str, float | int] = {
            "VSET": st.vset,
            "VMON": v,
            "ISET": st.iset,
            "IMON": st.imon_of(v),
            "RUP": st.rup,
            "RDW": st.rdw,
            "MAXV": st.maxv,
            "HVMAX": HVMAX_V,
            "TRIP": st.trip_s,
            "STAT": self._status(st, now),
        }
        return _FORMATS[par].format(values[par])

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
        if par in BOARD_PARS:
            n = len(self.boards[board])
            name = "HCAL" + str(board) if board < 4 else "ECAL" + str(board - 4) if board < 8 else "COUNTERS"
            value = {"BDNAME": name, "BDNCH": str(n), "BDSNUM": f"EMU-HV-{board:02d}", "BDFREL": "1.00"}[par]
            return f"{prefix},CMD:OK,VAL:{value}"
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
        if par not in SET_RANGES and par not in SWITCHES:
            return prefix + ",PAR:ERR"
        (st,) = self._channels_of(board, req.ch_text, prefix, allow_all=False)
        self._advance(st, now)
        if par in SWITCHES:
            if req.val is not None:
                return prefix + ",VAL:ERR"
            if par == "ON":
                if st.tripped:
                    return prefix + ",VAL:ERR"
                st.on = True
            elif par == "OFF":
                st.on, st.oc_since = False, None
            else:
                st.tripped = False
            self._rebase(st, now)
            return prefix + ",CMD:OK"
        value = _parse_number(req.val)
        lo, hi = SET_RANGES[par]
        if par == "VSET":
            hi = min(hi, st.maxv)
        if value is None or not lo <= value <= hi:
            return prefix + ",VAL:ERR"
        attr = {"VSET": "vset", "ISET": "iset", "RUP": "rup", "RDW": "rdw", "MAXV": "maxv", "TRIP": "trip_s"}[par]
        setattr(st, attr, round(value, 2) if par in ("ISET",) else round(value, 1))
        self._rebase(st, now)
        return prefix + ",CMD:OK"

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

    # ------------------------------------------------------------------ direct access
    def vmon_by_channel_id(self) -> np.ndarray:
        """VMON (V) of every channel, indexed by channel id, shape (N_CHANNELS,); 0 without a PMT."""
        out = np.zeros(chmap.N_CHANNELS, dtype=np.float64)
        with self._lock:
            now = self._clock()
            for chans in self.boards:
                for st in chans:
                    self._advance(st, now)
                    out[st.channel_id] = st.v_at(now)
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
        on, tripped, maxv (V), iset (uA), rup, rdw (V/s), trip_s (s)."""
        with self._lock:
            now = self._clock()
            chans = []
            for board in self.boards:
                for st in board:
                    self._advance(st, now)
                    v = st.v_at(now)
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
                        }
                    )
            return {
                "hvmax": HVMAX_V,
                "boards": [len(b) for b in self.boards],
                "channels": chans,
                "set_requests": len(self._log),
            }


def _parse_number(text: str | None) -> float | None:
    """A finite decimal number, or None (missing, malformed, nan, inf)."""
    if text is None or not _NUMBER.match(text.strip()):
        return None
    value = float(text)
    return value if math.isfinite(value) else None
