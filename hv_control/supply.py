"""HV safety layer: channel map, limits, software ramps with read-back, trips, safe shutdown.

:class:`HVSupply` sits on :class:`~hv_control.caen.CAENMainframe` and speaks in channel ids
(``detector.channels``) and volts. Rules it enforces (QCoDeS #2125, ophyd #886):

- The limit of a channel is ``min(calibration hv_limit, hv.max_v)``; an unset, NaN or negative limit
  denies every set point of that channel. Values above the limit, negative, NaN or
  infinite are refused with :class:`HVLimitError` - never clamped. A step larger than ``max_step``
  (from the read-back) is refused too.
- Every voltage that leaves this module (VSET, MAXV) goes through ONE function,
  :meth:`HVSupply._send_voltage`, which calls :meth:`HVSupply.check_voltage` on the exact value that
  is put on the wire (``%.1f``; a value whose rounding would exceed the limit is quantised down by at
  most 0.1 V of wire resolution, never up).
- A ramp starts from the READ-BACK VMON; if it cannot be read, nothing is sent (HVReadbackError).
  Steps of ``hv.ramp_step_v``; after every step the VSET echo is checked and VMON must settle within
  ``hv.settle_tolerance_v`` before ``hv.settle_timeout_s``. A trip (status bit 7) during a ramp stops
  it with :class:`HVTripError` naming the channels.
- Ramping down from above a (since lowered) limit goes straight to the limit first: no intermediate
  set point is ever above the limit.
- ``hv.min_v`` is the lowest operating set point: :meth:`HVSupply.check_voltage` refuses below it. Only
  the safe state (``hv.safe_v`` at switch-on and in :meth:`HVSupply.shutdown`) and the steps of a
  software ramp between two checked points go below it.
- :meth:`HVSupply.configure` programs RUP/RDW, ISET, TRIP and MAXV from the configuration, checked
  against the ranges the hardware reports before anything is sent, and verified by read-back; every
  tool that owns the HV line calls it once at start.
"""

from __future__ import annotations

import logging
import math
import numbers
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from detector import channels as chmap
from detector.config import Calibration, Config, load_calibration, load_config
from detector.hwstatus import HVStatus

from .caen import CAENMainframe, HVParameterError, HVProtocolError
from .transport import TransportError, open_transport

log = logging.getLogger(__name__)

ST_ON = HVStatus.ON
ST_TRIP = HVStatus.TRIP
WIRE_RESOLUTION_V = 0.1  #: VSET / MAXV are sent as %.1f
ECHO_TOLERANCE_V = 0.051  #: |VSET echo - sent| allowed (formatting), V


class HVError(Exception):
    """Base of the HV safety-layer errors."""


class HVLimitError(HVError, ValueError):
    """A set point (or step, or limit) is refused; nothing was sent for it."""


class HVTripError(HVError):
    """One or more channels tripped; ``channel_ids`` and ``names`` list them."""

    def __init__(self, message: str, channel_ids: Iterable[int] = ()) -> None:
        super().__init__(message)
        self.channel_ids = list(channel_ids)
        self.names = [chmap.CHANNELS[c].name for c in self.channel_ids]


class HVReadbackError(HVError):
    """A read-back failed or disagrees with what was set."""


class HVSettleError(HVReadbackError):
    """VMON did not settle at the set point within the settle timeout."""


class HVStateError(HVError):
    """The channel is not in a state that allows the operation (off, no HV supply)."""


class HVCommunicationError(HVError):
    """A command was refused by the mainframe or the line failed (the cause is chained)."""


@contextmanager
def _command(what: str) -> Iterator[None]:
    """Turn protocol and transport failures of one command into HVCommunicationError naming ``what``."""
    try:
        yield
    except (HVProtocolError, TransportError) as exc:
        raise HVCommunicationError(f"{what} failed: {exc}") from exc


@dataclass(frozen=True)
class HVAddress:
    """Where a channel's PMT is powered."""

    channel_id: int
    name: str
    board: int
    ch: int


def _finite_or_nan(x: Any) -> float:
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        return math.nan
    v = float(x)
    return v if math.isfinite(v) else math.nan


class HVSupply:
    """The HV supply as the rest of the project sees it (units: V, uA, V/s, s).

    ``cfg`` is the validated configuration (section ``hv``), ``calib`` gives ``hv_limit`` per channel.
    ``poll_s`` is the read-back polling period during a ramp; ``sleep``/``clock`` are injectable for
    tests under a fake clock.
    """

    def __init__(
        self,
        mainframe: CAENMainframe,
        cfg: Config | None = None,
        calib: Calibration | None = None,
        *,
        poll_s: float = 0.05,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        cfg = load_config(None) if cfg is None else cfg
        calib = load_calibration(cfg) if calib is None else calib
        self.mainframe = mainframe
        self.hv = cfg.hv
        self.poll_s = float(poll_s)
        self._sleep = sleep
        self._clock = clock
        self._lock = threading.RLock()
        max_v = _finite_or_nan(self.hv.max_v)
        per_channel = np.array([_finite_or_nan(x) for x in np.asarray(calib.hv_limit, dtype=float)])
        if per_channel.shape != (chmap.N_CHANNELS,):
            raise ValueError(f"calibration hv_limit must have {chmap.N_CHANNELS} entries, got {per_channel.shape}")
        self._limits = np.minimum(per_channel, max_v)  # NaN anywhere -> NaN -> denied
        self._addr = {
            c.id: HVAddress(c.id, c.name, c.hv_board, c.hv_channel)
            for c in chmap.CHANNELS
            if c.hv_board is not None and c.hv_channel is not None
        }
        self.channel_ids = np.array(sorted(self._addr), dtype=np.int64)  #: every channel with HV

    @classmethod
    def connect(
        cls,
        address: str,
        cfg: Config | None = None,
        calib: Calibration | None = None,
        *,
        backend: str | None = None,
        **kw: Any,
    ) -> HVSupply:
        """Open ``address`` (``/dev/pts/N``, ``socket://host:port`` or a VISA ``ASRL...::INSTR`` name)
        with the timeout and retries of ``cfg.hv``."""
        cfg = load_config(None) if cfg is None else cfg
        transport = open_transport(address, backend=backend, timeout_s=cfg.hv.timeout_s, retries=cfg.hv.retries)
        return cls(CAENMainframe(transport), cfg, calib, **kw)

    def close(self) -> None:
        """Close the connection (the HV stays as it is)."""
        self.mainframe.transport.close()

    # ------------------------------------------------------------------ channel map and limits
    def address(self, channel_id: int) -> HVAddress:
        """HV address of a channel id; HVStateError if it has no HV supply."""
        try:
            return self._addr[int(channel_id)]
        except (KeyError, TypeError, ValueError):
            raise HVStateError(f"channel id {channel_id!r} has no HV supply") from None

    def limit(self, channel_id: int) -> float:
        """Voltage limit (V) of a channel: min(hv_limit, hv.max_v); NaN means 'unset' and denies."""
        self.address(channel_id)
        return float(self._limits[int(channel_id)])

    def check_voltage(self, channel_id: int, volts: float) -> float:
        """The operating set point as it will be sent (V, wire resolution 0.1 V), or HVLimitError.

        Refuses non-numbers, NaN/inf, negative values, values above the limit, values below
        ``hv.min_v`` (the lowest operating set point) and any value for a channel whose limit is unset
        (NaN/negative). Only the safe-state paths (:meth:`switch_on` at ``hv.safe_v``, :meth:`shutdown`
        and the steps of a software ramp between two checked points) go below ``hv.min_v``.
        """
        return self._check(channel_id, volts, _finite_or_nan(self.hv.min_v))

    def _check(self, channel_id: int, volts: float, floor_v: float) -> float:
        """:meth:`check_voltage` with the lowest allowed value ``floor_v`` (V; NaN denies everything)."""
        a = self.address(channel_id)
        lim = float(self._limits[a.channel_id])
        v = _finite_or_nan(volts)
        if math.isnan(lim) or lim < 0:
            raise HVLimitError(f"{a.name}: no valid HV limit is configured (unset or NaN); refusing {volts!r} V")
        if math.isnan(v):
            raise HVLimitError(f"{a.name}: set point {volts!r} is not a finite number of volts; refused")
        if v < 0:
            raise HVLimitError(f"{a.name}: set point {v:g} V is negative; refused")
        if v > lim:
            raise HVLimitError(f"{a.name}: set point {v:g} V is above the limit {lim:g} V; refused")
        if not v >= floor_v:
            raise HVLimitError(
                f"{a.name}: set point {v:g} V is below hv.min_v = {floor_v:g} V (lowest operating set point); "
                "refused (use shutdown() for the safe state)"
            )
        wire = float(f"{v:.1f}") + 0.0  # + 0.0: never "-0.0" on the wire
        if wire > lim:  # rounding up would cross the limit: quantise down
            wire = float(f"{math.floor(v / WIRE_RESOLUTION_V) * WIRE_RESOLUTION_V:.1f}")
        if not 0.0 <= wire <= lim or not wire >= floor_v:
            raise HVLimitError(
                f"{a.name}: wire value {wire:.1f} V of {v:g} V is outside [{max(floor_v, 0.0):g}, {lim:g}] V; refused"
            )
        return wire

    def _limit_valid(self, channel_id: int) -> bool:
        lim = self.limit(channel_id)
        return not math.isnan(lim) and lim >= 0.0

    def _send_voltage(self, channel_id: int, par: str, volts: float, *, safe_path: bool = False) -> float:
        """THE path by which a voltage leaves this module (VSET or MAXV); returns the value sent (V).
        ``safe_path``: a safe-state set point, a ramp step between checked points or a limit (MAXV),
        exempt from ``hv.min_v`` (never from the limit)."""
        wire = self._check(channel_id, volts, 0.0) if safe_path else self.check_voltage(channel_id, volts)
        a = self.address(channel_id)
        param = {"VSET": self.mainframe.vset, "MAXV": self.mainframe.maxv}[par]
        with _command(f"{a.name}: {par} = {wire:.1f} V"):
            param.set(a.board, a.ch, wire)
        return wire

    # ------------------------------------------------------------------ read-back
    def _boards(self, ids: Iterable[int]) -> dict[int, list[HVAddress]]:
        out: dict[int, list[HVAddress]] = {}
        for cid in ids:
            a = self.address(cid)
            out.setdefault(a.board, []).append(a)
        return out

    def _read(self, ids: Iterable[int], pars: Iterable[str], what: str) -> dict[str, dict[int, float]]:
        """Read parameters (``vset``, ``vmon``, ``imon``, ``stat``, ``maxv``, ``hvmax``) of channels,
        one request per board and parameter; failures raise HVReadbackError naming ``what``."""
        ids = list(ids)
        out: dict[str, dict[int, float]] = {p: {} for p in pars}
        try:
            for board, addrs in self._boards(ids).items():
                for p in out:
                    values = getattr(self.mainframe, p).get_all(board)
                    for a in addrs:
                        out[p][a.channel_id] = values[a.ch]
        except (TransportError, HVProtocolError, ValueError) as exc:
            names = ", ".join(chmap.CHANNELS[c].name for c in ids[:4]) + (" ..." if len(ids) > 4 else "")
            raise HVReadbackError(f"cannot read back {'/'.join(out)} of {names} {what}: {exc}") from exc
        for p, values in out.items():
            bad = [c for c, v in values.items() if not math.isfinite(v)]
            if bad:
                raise HVReadbackError(f"read-back {p} of {chmap.CHANNELS[bad[0]].name} is {values[bad[0]]!r} {what}")
        return out

    def read_channel(self, channel_id: int) -> dict[str, Any]:
        """One channel: ``vset``, ``vmon`` (V), ``imon`` (uA), ``status`` (int), ``on``, ``tripped``."""
        a = self.address(channel_id)
        try:
            vals = {p: getattr(self.mainframe, p).get(a.board, a.ch) for p in ("vset", "vmon", "imon", "stat")}
        except (TransportError, HVProtocolError, ValueError) as exc:
            raise HVReadbackError(f"cannot read {a.name} (board {a.board:02d} ch {a.ch}): {exc}") from exc
        st = int(vals.pop("stat"))
        return {**vals, "status": st, "on": bool(st & ST_ON), "tripped": bool(st & ST_TRIP)}

    def read_all(self, channel_ids: Iterable[int] | None = None) -> dict[str, np.ndarray]:
        """``channel_ids`` (int64), ``vset``, ``vmon`` (V), ``imon`` (uA) (float64), ``status`` (int64),
        in ascending channel id; one MON request per board and parameter."""
        ids = sorted(self.channel_ids.tolist() if channel_ids is None else {int(c) for c in channel_ids})
        r = self._read(ids, ("vset", "vmon", "imon", "stat"), "for read_all")
        return {
            "channel_ids": np.array(ids, dtype=np.int64),
            "vset": np.array([r["vset"][c] for c in ids], dtype=np.float64),
            "vmon": np.array([r["vmon"][c] for c in ids], dtype=np.float64),
            "imon": np.array([r["imon"][c] for c in ids], dtype=np.float64),
            "status": np.array([r["stat"][c] for c in ids], dtype=np.int64),
        }

    def check_trips(self, channel_ids: Iterable[int] | None = None) -> None:
        """HVTripError if any of the channels (default: all) has a latched trip."""
        ids = self.channel_ids.tolist() if channel_ids is None else list(channel_ids)
        stat = self._read(ids, ("stat",), "for the trip check")["stat"]
        self._raise_trips(stat)

    @staticmethod
    def _raise_trips(stat: Mapping[int, float]) -> None:
        tripped = sorted(c for c, s in stat.items() if int(s) & ST_TRIP)
        if tripped:
            names = ", ".join(chmap.CHANNELS[c].name for c in tripped)
            raise HVTripError(
                f"HV trip on {names} (status bit 7 set); clear it with clear_trip() after finding the cause", tripped
            )

    # ------------------------------------------------------------------ setting voltages
    def set_voltage(self, channel_id: int, volts: float, *, max_step: float | None = None) -> float:
        """Ramp one channel to ``volts`` (V) and verify it; returns the settled VMON (V).
        See :meth:`set_voltages`."""
        return self.set_voltages({channel_id: volts}, max_step=max_step)[int(channel_id)]

    def set_voltages(self, targets: Mapping[int, float], *, max_step: float | None = None) -> dict[int, float]:
        """Ramp several channels together to their targets (V); returns the settled VMON per channel.

        Everything is checked before anything is sent: every target against its limit, the channels
        must be ON and not tripped, and with ``max_step`` (V) no target may be further than that from
        the read-back VMON. Raises HVLimitError, HVStateError, HVTripError, HVReadbackError/HVSettleError.
        """
        with self._lock:
            plan = {int(c): self.check_voltage(c, v) for c, v in targets.items()}
            if not plan:
                return {}
            if max_step is not None and not (_finite_or_nan(max_step) > 0):
                raise HVLimitError(f"max_step must be a positive number of volts, got {max_step!r}")
            now = self._read(plan, ("vmon", "stat"), "before ramping; refusing to set")
            self._raise_trips(now["stat"])
            off = [c for c in plan if not int(now["stat"][c]) & ST_ON]
            if off:
                raise HVStateError(
                    f"{', '.join(chmap.CHANNELS[c].name for c in off)} is/are OFF; "
                    "switch on first (switch_on / power_up)"
                )
            if max_step is not None:
                for c, v in plan.items():
                    if abs(v - now["vmon"][c]) > float(max_step):
                        raise HVLimitError(
                            f"{chmap.CHANNELS[c].name}: step from {now['vmon'][c]:.1f} V to "
                            f"{v:.1f} V is larger than max_step = {float(max_step):g} V; refused"
                        )
            return self._ramp(plan, now["vmon"])

    def _ramp(self, plan: Mapping[int, float], start: Mapping[int, float]) -> dict[int, float]:
        """Lock-step software ramp from the read-back ``start`` to ``plan`` (V, wire values)."""
        step = _finite_or_nan(self.hv.ramp_step_v)
        if not step > 0:
            raise HVLimitError(f"hv.ramp_step_v = {self.hv.ramp_step_v!r} is not a positive voltage")
        pos = {c: float(start[c]) for c in plan}
        pending = dict(plan)
        max_iter = int(max(abs(plan[c] - pos[c]) for c in plan) / step) + 3
        settled: dict[int, float] = {}
        for _ in range(max_iter + 1):
            if not pending:
                return settled
            sent: dict[int, float] = {}
            for c, target in pending.items():
                here = pos[c]
                nxt = target if abs(target - here) <= step else here + math.copysign(step, target - here)
                nxt = min(nxt, self.limit(c))  # from above a lowered limit: go to the limit
                sent[c] = self._send_voltage(c, "VSET", nxt, safe_path=True)  # between checked points
            vmon = self._verify(sent)
            for c, v in sent.items():
                pos[c] = v
                if v == pending[c]:
                    del pending[c]
                    settled[c] = vmon[c]
        raise HVError(f"software ramp did not converge for {sorted(pending)} (internal error)")

    def _verify(self, sent: Mapping[int, float]) -> dict[int, float]:
        """Check the VSET echo, then wait until VMON is within tolerance of ``sent``; returns VMON (V)."""
        echo = self._read(sent, ("vset",), "after setting VSET")["vset"]
        wrong = [c for c, v in sent.items() if abs(echo[c] - v) > ECHO_TOLERANCE_V]
        if wrong:
            c = wrong[0]
            raise HVReadbackError(
                f"{chmap.CHANNELS[c].name}: VSET echo {echo[c]:.1f} V differs from the {sent[c]:.1f} V sent"
            )
        tol = float(self.hv.settle_tolerance_v)
        deadline = self._clock() + float(self.hv.settle_timeout_s)
        while True:
            r = self._read(sent, ("vmon", "stat"), "while ramping")
            self._raise_trips(r["stat"])
            off = [c for c in sent if not int(r["stat"][c]) & ST_ON]
            if off:
                raise HVStateError(f"{', '.join(chmap.CHANNELS[c].name for c in off)} switched OFF while ramping")
            late = [c for c, v in sent.items() if abs(r["vmon"][c] - v) > tol]
            if not late:
                return r["vmon"]
            if self._clock() >= deadline:
                c = late[0]
                raise HVSettleError(
                    f"{chmap.CHANNELS[c].name}: VMON {r['vmon'][c]:.1f} V did not settle at "
                    f"{sent[c]:.1f} V +/- {tol:g} V within {self.hv.settle_timeout_s:g} s "
                    f"({len(late)} channel(s) late)"
                )
            self._sleep(self.poll_s)

    # ------------------------------------------------------------------ switching
    def switch_on(self, channel_id: int) -> None:
        """Switch a channel on at the safe voltage (VSET = hv.safe_v first, so ON never jumps to an old
        set point); a channel already ON is left as it is. HVTripError while a trip is latched."""
        with self._lock:
            a = self.address(channel_id)
            st = self.read_channel(channel_id)
            if st["tripped"]:
                raise HVTripError(f"{a.name} has a latched trip; clear_trip() first", [a.channel_id])
            if st["on"]:
                return
            self._send_voltage(channel_id, "VSET", self.hv.safe_v, safe_path=True)
            with _command(f"{a.name}: ON"):
                self.mainframe.on(a.board, a.ch)
            if not self.read_channel(channel_id)["on"]:
                raise HVStateError(f"{a.name} did not switch on")

    def power_up(self, targets: Mapping[int, float], *, max_step: float | None = None) -> dict[int, float]:
        """Switch the channels on at the safe voltage and ramp them to ``targets`` (V)."""
        for c, v in targets.items():
            self.check_voltage(c, v)
        for c in targets:
            self.switch_on(c)
        return self.set_voltages(targets, max_step=max_step)

    def clear_trip(self, channel_id: int) -> None:
        """Clear a latched trip (the channel stays OFF); HVReadbackError if it does not clear.

        Sends the per-channel ``CLR`` (the emulator's); a module without it (a real N1470 answers
        PAR:ERR) gets ``BDCLR``, which clears the latched alarms of the whole board (channels stay OFF).
        """
        with self._lock:
            a = self.address(channel_id)
            with _command(f"{a.name}: CLR / BDCLR"):
                try:
                    self.mainframe.clear_trip(a.board, a.ch)
                except HVParameterError:
                    self.mainframe.clear_alarm(a.board)
            if self.read_channel(channel_id)["tripped"]:
                raise HVReadbackError(f"{a.name}: trip did not clear")

    def shutdown(self, channel_ids: Iterable[int] | None = None) -> dict[str, np.ndarray]:
        """Ramp the channels (default: all) down to ``hv.safe_v``, set VSET = safe_v and switch them
        OFF; waits until they are OFF and discharged. Returns :meth:`read_all` of those channels.

        If the software ramp is interrupted (trip, settle failure), the remaining channels are set to
        safe_v and switched off directly (the hardware ramps down at RDW). HVError if a channel is not
        OFF at the end; HVReadbackError (nothing sent) if the initial read-back fails.
        """
        with self._lock:
            ids = sorted(self.channel_ids.tolist() if channel_ids is None else {int(c) for c in channel_ids})
            if not ids:
                return self.read_all([])
            safe = float(self.hv.safe_v)
            now = self._read(ids, ("vmon", "stat"), "before shutdown")
            ramp = {
                c: safe for c in ids if int(now["stat"][c]) & ST_ON and now["vmon"][c] > safe and self._limit_valid(c)
            }
            try:
                if ramp:
                    self._ramp({c: self._check(c, v, 0.0) for c, v in ramp.items()}, {c: now["vmon"][c] for c in ramp})
            except HVError as exc:
                log.error("shutdown: software ramp interrupted (%s); switching off directly", exc)
            problems: list[str] = []
            for c in ids:
                a = self.address(c)
                if self._limit_valid(c):  # an unset limit denies even the safe set point
                    try:
                        self._send_voltage(c, "VSET", safe, safe_path=True)
                    except HVError as exc:
                        problems.append(str(exc))
                try:  # OFF is not a voltage: always sent
                    with _command(f"{a.name}: OFF"):
                        self.mainframe.off(a.board, a.ch)
                except HVError as exc:
                    problems.append(str(exc))
            self._wait_off(ids, problems)
            if problems:
                raise HVError("shutdown incomplete: " + "; ".join(problems))
            return self.read_all(ids)

    def _wait_off(self, ids: list[int], problems: list[str]) -> None:
        """Wait until the channels are OFF and VMON <= tolerance: at most the time to ramp down from
        the highest VMON at ``hv.ramp_down_v_per_s`` plus ``hv.settle_timeout_s``."""
        tol = float(self.hv.settle_tolerance_v)
        deadline: float | None = None
        while True:
            r = self._read(ids, ("vmon", "stat"), "after switching off")
            if deadline is None:
                discharge_s = max(r["vmon"].values()) / float(self.hv.ramp_down_v_per_s)
                deadline = self._clock() + max(0.0, discharge_s) + float(self.hv.settle_timeout_s)
            late = [c for c in ids if int(r["stat"][c]) & ST_ON or r["vmon"][c] > tol]
            if not late:
                return
            if self._clock() >= deadline:
                problems.extend(
                    f"{chmap.CHANNELS[c].name} not off/discharged (VMON {r['vmon'][c]:.1f} V, "
                    f"status {int(r['stat'][c])})"
                    for c in late
                )
                return
            self._sleep(self.poll_s)

    # ------------------------------------------------------------------ configuration of the hardware
    def _wanted(self, channel_id: int, attr: str) -> float:
        """The configured value of a hardware setting (see :data:`SETTINGS`) for one channel."""
        if attr == "maxv":
            return self.limit(channel_id)
        return _finite_or_nan(getattr(self.hv, SETTINGS[attr].key.removeprefix("hv.")))

    def _program(self, ids: list[int], attrs: tuple[str, ...]) -> dict[int, dict[str, float]]:
        """Check every setting of ``attrs`` against the hardware's own range (read from the mainframe)
        and the driver's validator, refusing with HVLimitError before anything is sent; then send them
        and verify each by read-back (HVReadbackError). Returns the values sent per channel."""
        settings = [SETTINGS[x] for x in attrs]
        rng = self._read(ids, tuple(p for st in settings for p in (st.lo, st.hi)), "(hardware ranges)")
        problems: list[str] = []
        for c in ids:
            name = chmap.CHANNELS[c].name
            for st in settings:
                v = self._wanted(c, st.attr)
                par = getattr(self.mainframe, st.attr).param
                lo, hi = rng[st.lo][c], rng[st.hi][c]
                if st.attr == "maxv" and not self._limit_valid(c):
                    problems.append(f"{name}: no valid HV limit configured; MAXV not set")
                elif not lo <= v <= hi:
                    problems.append(
                        f"{name}: {st.key} = {v:g} {st.unit} is outside the hardware range of {par.par} "
                        f"[{lo:g}, {hi:g}] {st.unit} ({par.par} limits {st.lo.upper()}/{st.hi.upper()})"
                    )
                else:
                    try:
                        par.validator(v)
                    except ValueError as exc:
                        problems.append(f"{name}: {st.key} = {v:g} {st.unit}: {exc}")
        if problems:
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            raise HVLimitError("refusing to configure the HV, nothing sent: " + "; ".join(problems[:3]) + more)
        sent: dict[int, dict[str, float]] = {c: {} for c in ids}
        for c in ids:
            a = self.address(c)
            for st in settings:
                v = self._wanted(c, st.attr)
                if st.attr == "maxv":
                    sent[c]["maxv"] = self._send_voltage(c, "MAXV", v, safe_path=True)  # a limit, not a set point
                    continue
                param = getattr(self.mainframe, st.attr)
                with _command(f"{a.name}: {param.param.par} = {v:g} {st.unit}"):
                    param.set(a.board, a.ch, v)
                sent[c][st.attr] = float(param.param.fmt.format(v))
        echo = self._read(ids, attrs, "after configuring")
        for c in ids:
            for st in settings:
                if abs(echo[st.attr][c] - sent[c][st.attr]) > st.tolerance:
                    par = getattr(self.mainframe, st.attr).param.par
                    raise HVReadbackError(
                        f"{chmap.CHANNELS[c].name}: {par} echo {echo[st.attr][c]:g} {st.unit} "
                        f"differs from {sent[c][st.attr]:g} {st.unit} sent"
                    )
        return sent

    def _ids(self, channel_ids: Iterable[int] | None) -> list[int]:
        return sorted(self.channel_ids.tolist() if channel_ids is None else {int(c) for c in channel_ids})

    def ensure_max_v(self, channel_ids: Iterable[int] | None = None) -> dict[int, float]:
        """Program MAXV of the channels (default: all) to their configured limit (V) and verify it.

        Reads the hardware's MAXV range (MVMIN/MVMAX) first and refuses (HVLimitError, nothing sent)
        when a configured limit is outside it or unset. Returns the MAXV programmed per channel.
        """
        with self._lock:
            return {c: v["maxv"] for c, v in self._program(self._ids(channel_ids), ("maxv",)).items()}

    def configure(self, channel_ids: Iterable[int] | None = None) -> dict[int, dict[str, float]]:
        """Program and verify by read-back, for the channels (default: all): RUP/RDW
        (``hv.ramp_up_v_per_s``/``ramp_down_v_per_s``, V/s), ISET (``hv.max_current_ua``, uA), TRIP
        (``hv.trip_s``, s) and MAXV (the channel's limit, V).

        Every value is checked against the range the hardware reports (RUPMIN/RUPMAX, RDWMIN/RDWMAX,
        IMIN/IMAX, TRIPMIN/TRIPMAX, MVMIN/MVMAX) before anything is sent: one outside it refuses the
        whole configuration with HVLimitError (never clamped). A read-back that differs from what was
        sent raises HVReadbackError. Returns ``{channel_id: {"rup", "rdw", "iset", "trip", "maxv"}}``
        as sent. Every tool that owns the HV line calls this once at start.
        """
        with self._lock:
            return self._program(self._ids(channel_ids), tuple(SETTINGS))


@dataclass(frozen=True)
class HardwareSetting:
    """A per-channel hardware setting programmed from the configuration: driver parameter ``attr``, its
    range parameters ``lo``/``hi``, the config key it comes from, unit and read-back tolerance."""

    attr: str
    lo: str
    hi: str
    key: str
    unit: str
    tolerance: float


#: the settings :meth:`HVSupply.configure` programs and verifies, in the order they are sent
SETTINGS: dict[str, HardwareSetting] = {
    "rup": HardwareSetting("rup", "rupmin", "rupmax", "hv.ramp_up_v_per_s", "V/s", ECHO_TOLERANCE_V),
    "rdw": HardwareSetting("rdw", "rdwmin", "rdwmax", "hv.ramp_down_v_per_s", "V/s", ECHO_TOLERANCE_V),
    "iset": HardwareSetting("iset", "imin", "imax", "hv.max_current_ua", "uA", 0.0051),
    "trip": HardwareSetting("trip", "tripmin", "tripmax", "hv.trip_s", "s", ECHO_TOLERANCE_V),
    "maxv": HardwareSetting("maxv", "mvmin", "mvmax", "the limit min(hv_limit, hv.max_v)", "V", ECHO_TOLERANCE_V),
}
