"""Property: whatever the configuration, the limits, the requests and the measurements, no call sequence
on HVSupply ever puts a VSET (or MAXV) above a channel's limit (or below 0 V) on the wire.

Two 'hardwares' receive the traffic: a hostile fake whose read-backs are random (garbage, NaN,
errors, silence, trips), and the real emulator model under a fake clock with injected trips. Both
record what reached them; the property is checked on those records, not on what the driver believes.
"""

from __future__ import annotations

import dataclasses
import math
import random
import re
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detector import channels as chmap
from detector.config import load_calibration, validate
from hv_control.caen import CAENMainframe, HVProtocolError
from hv_control.supply import HVError, HVLimitError, HVSupply
from hv_control.transport import HandlerTransport, TransportError
from sim_frontend.emu_hv import HVMainframe

IDS = [
    chmap.hcal_id(0, 0, 0),
    chmap.hcal_id(0, 2, 3),
    chmap.hcal_id(2, 2, 3),
    chmap.ecal_id(0, 0, 0),
    chmap.ecal_id(1, 5, 5),
    chmap.by_name("S1").id,
    chmap.by_name("SRD2").id,
]
BASE_CFG = validate({})
BASE_CAL = load_calibration(BASE_CFG)
_REQ = re.compile(r"\$BD:([0-9]{2}),CMD:(MON|SET),CH:([0-9]+),PAR:([A-Z]+)(?:,VAL:(.*))?")
EXPECTED = (HVError, HVProtocolError, TransportError, ValueError)

plausible = st.floats(0.0, 1400.0)
volts = st.one_of(
    plausible,
    plausible,
    plausible,
    st.floats(-100.0, 2500.0),
    st.integers(-10, 3000),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e300, -0.0, -1e-9]),
)
good_limit = st.floats(0.0, 2000.0)
limits = st.lists(
    st.one_of(good_limit, good_limit, good_limit, st.just(math.nan), st.floats(-10.0, -0.1)),
    min_size=len(IDS),
    max_size=len(IDS),
)


def hv_cfgs(settle_timeout_s: st.SearchStrategy[float]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "max_v": st.one_of(st.floats(800.0, 2000.0), st.floats(0.0, 2000.0)),
            "ramp_step_v": st.floats(20.0, 500.0),
            "settle_tolerance_v": st.floats(0.01, 50.0),
            "settle_timeout_s": settle_timeout_s,
            "ramp_down_v_per_s": st.floats(1.0, 500.0),
            "timeout_s": st.just(0.01),
            "retries": st.integers(0, 2),
            "safe_v": st.just(0.0),
            "min_v": st.just(0.0),
        }
    )


ops = st.lists(
    st.one_of(
        st.tuples(st.just("set"), st.integers(0, len(IDS) - 1), volts, st.none() | st.none() | st.floats(-5.0, 600.0)),
        st.tuples(st.just("set_many"), st.lists(st.tuples(st.integers(0, len(IDS) - 1), volts), max_size=4)),
        st.tuples(st.just("shutdown"), st.lists(st.integers(0, len(IDS) - 1), max_size=3)),
        st.tuples(st.just("ensure_max_v"), st.lists(st.integers(0, len(IDS) - 1), max_size=3)),
        st.tuples(st.just("configure"), st.lists(st.integers(0, len(IDS) - 1), max_size=2)),
        st.tuples(st.just("switch_on"), st.integers(0, len(IDS) - 1)),
        st.tuples(st.just("power_up"), st.integers(0, len(IDS) - 1), volts),
        st.tuples(st.just("clear_trip"), st.integers(0, len(IDS) - 1)),
        st.tuples(st.just("trip"), st.integers(0, len(IDS) - 1)),
        st.tuples(st.just("wait"), st.floats(0.0, 5.0)),
        st.tuples(st.just("read_all")),
    ),
    max_size=8,
)


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, dt: float) -> None:
        self.t += max(0.0, dt)


def build(hv_cfg: dict[str, Any], lims: list[float], handler: Any, clock: FakeClock) -> HVSupply:
    cfg = validate({"hv": hv_cfg})
    limit_arr = BASE_CAL.hv_limit.copy()
    limit_arr[IDS] = lims
    cal = dataclasses.replace(BASE_CAL, hv_limit=limit_arr)
    transport = HandlerTransport(handler, timeout_s=cfg.hv.timeout_s, retries=cfg.hv.retries)
    return HVSupply(CAENMainframe(transport), cfg, cal, poll_s=0.05, sleep=clock.sleep, clock=clock)


def run(supply: HVSupply, sequence: list[tuple[Any, ...]], clock: FakeClock, trip: Any = None) -> None:
    for op in sequence:
        name = op[0]
        try:
            if name == "set":
                supply.set_voltage(IDS[op[1]], op[2], max_step=op[3])
            elif name == "set_many":
                supply.set_voltages({IDS[i]: v for i, v in op[1]})
            elif name == "shutdown":
                supply.shutdown([IDS[i] for i in op[1]] or None)
            elif name == "ensure_max_v":
                supply.ensure_max_v([IDS[i] for i in op[1]])
            elif name == "configure":
                supply.configure([IDS[i] for i in op[1]])
            elif name == "switch_on":
                supply.switch_on(IDS[op[1]])
            elif name == "power_up":
                supply.power_up({IDS[op[1]]: op[2]})
            elif name == "clear_trip":
                supply.clear_trip(IDS[op[1]])
            elif name == "trip" and trip is not None:
                trip(IDS[op[1]])
            elif name == "wait":
                clock.sleep(op[1])
            elif name == "read_all":
                supply.read_all(IDS)
        except EXPECTED:
            pass


def assert_within_limits(supply: HVSupply, sent: list[tuple[int, str, float | None]]) -> None:
    for cid, par, value in sent:
        limit = supply.limit(cid)
        assert value is not None and math.isfinite(value), (cid, par, value)
        assert math.isfinite(limit) and limit >= 0, f"{par} {value} sent to {cid} whose limit is {limit}"
        assert 0.0 <= value <= limit, f"{par} {value} V sent to {chmap.CHANNELS[cid].name}, limit {limit} V"


class HostileMainframe:
    """Answers with random read-backs: often plausible (echo of the last set point), sometimes garbage,
    NaN, out-of-range numbers, error replies, silence or a trip. Records every VSET/MAXV it receives."""

    def __init__(self, rnd: random.Random) -> None:
        self.rnd = rnd
        self.last: dict[tuple[int, int], float] = {}
        self.sent: list[tuple[int, str, float | None]] = []

    def handle(self, line: str) -> str:
        m = _REQ.fullmatch(line)
        assert m, f"the driver sent a malformed request {line!r}"
        board, cmd, ch, par, val = int(m.group(1)), m.group(2), int(m.group(3)), m.group(4), m.group(5)
        r = self.rnd
        if cmd == "SET":
            if par in ("VSET", "MAXV"):
                cid = chmap.by_hv_address(board, ch).id
                value = float(val) if val is not None else None
                self.sent.append((cid, par, value))
                if par == "VSET" and value is not None:
                    self.last[(board, ch)] = value
            return r.choice([f"#BD:{board:02d},CMD:OK"] * 8 + [f"#BD:{board:02d},VAL:ERR", "", "#CMD:ERR"])
        n = chmap.hv_board_size(board)
        chans = range(n) if ch == n else [ch]
        if r.random() < 0.03:
            return r.choice(["", "#BD:77,CMD:OK,VAL:1", f"#BD:{board:02d},CMD:OK,VAL:1.0"])
        return f"#BD:{board:02d},CMD:OK,VAL:" + ";".join(self.value(board, c, par) for c in chans)

    def value(self, board: int, ch: int, par: str) -> str:
        r = self.rnd
        if par == "STAT":
            return str(r.choice([1] * 12 + [3, 5, 0, 129, 128, 9]))
        if par in ("VSET", "VMON") and r.random() < 0.85:
            return f"{self.last.get((board, ch), 900.0):.1f}"
        return r.choice([f"{r.uniform(-100.0, 2600.0):.1f}", "nan", "inf", "abc", "2000.0", "0.0", "-5.0"])


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hv_cfgs(st.floats(0.1, 2.0)), limits, ops, st.randoms(use_true_random=False))
def test_no_vset_above_limit_with_hostile_read_backs(
    hv_cfg: dict[str, Any], lims: list[float], sequence: list[tuple[Any, ...]], rnd: random.Random
) -> None:
    fake = HostileMainframe(rnd)
    clock = FakeClock()
    supply = build(hv_cfg, lims, fake.handle, clock)
    run(supply, sequence, clock)
    assert_within_limits(supply, fake.sent)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hv_cfgs(st.floats(0.5, 5.0)), limits, ops, st.floats(200.0, 2000.0))
def test_no_vset_above_limit_against_the_emulator(
    hv_cfg: dict[str, Any], lims: list[float], sequence: list[tuple[Any, ...]], rate: float
) -> None:
    clock = FakeClock()
    emu = HVMainframe(BASE_CFG, BASE_CAL, rup_v_per_s=rate, rdw_v_per_s=rate, clock=clock)
    supply = build(hv_cfg, lims, emu.handle, clock)
    run(supply, sequence, clock, trip=emu.inject_trip)
    log = emu.set_log()
    assert_within_limits(supply, [(e["channel_id"], e["par"], e["value"]) for e in log if e["par"] in ("VSET", "MAXV")])
    assert all(e["accepted"] for e in log if e["par"] in ("VSET", "MAXV")), "the driver sent a refused set point"


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(IDS), volts, st.one_of(st.floats(0.0, 2000.0), st.just(math.nan)), st.floats(0.0, 2000.0))
def test_check_voltage_is_the_gate(cid: int, v: float, lim: float, max_v: float) -> None:
    limit_arr = BASE_CAL.hv_limit.copy()
    limit_arr[cid] = lim
    cfg = validate({"hv": {"max_v": max_v, "min_v": 0.0}})
    supply = HVSupply(
        CAENMainframe(HandlerTransport(lambda line: "")), cfg, dataclasses.replace(BASE_CAL, hv_limit=limit_arr)
    )
    effective = min(lim, max_v)
    try:
        wire = supply.check_voltage(cid, v)
    except HVLimitError:
        assert not (math.isfinite(v) and not math.isnan(effective) and 0.0 <= v <= effective - 0.1)
        return
    assert not math.isnan(effective) and 0.0 <= wire <= effective
    assert abs(wire - v) <= 0.1 + 1e-9 and float(f"{wire:.1f}") == wire
    assert np.isfinite(wire)


min_v_ops = st.lists(
    st.one_of(
        st.tuples(st.just("set"), st.integers(0, len(IDS) - 1), volts),
        st.tuples(
            st.just("set_many"), st.lists(st.tuples(st.integers(0, len(IDS) - 1), volts), min_size=1, max_size=3)
        ),
        st.tuples(st.just("power_up"), st.integers(0, len(IDS) - 1), volts),
        st.tuples(st.just("shutdown"), st.lists(st.integers(0, len(IDS) - 1), max_size=2)),
        st.tuples(st.just("trip"), st.integers(0, len(IDS) - 1)),
    ),
    max_size=6,
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.floats(0.0, 1400.0), min_v_ops)
def test_no_operating_set_point_below_min_v(min_v: float, sequence: list[tuple[Any, ...]]) -> None:
    """hv.min_v is enforced by the supply layer: a set request with a target below it raises HVLimitError
    and puts no VSET on the wire; a set request that succeeds leaves every target channel's last VSET at
    or above it. Only shutdown (the safe state) goes below."""
    clock = FakeClock()
    emu = HVMainframe(BASE_CFG, BASE_CAL, rup_v_per_s=500.0, rdw_v_per_s=500.0, clock=clock)
    hv_cfg = {
        "min_v": min_v,
        "ramp_step_v": 100.0,
        "settle_timeout_s": 5.0,
        "timeout_s": 0.01,
        "retries": 0,
        "safe_v": 0.0,
    }
    supply = build(hv_cfg, [float(BASE_CAL.hv_limit[c]) for c in IDS], emu.handle, clock)
    for op in sequence:
        n0 = len(emu.set_log())
        if op[0] == "shutdown":
            try:
                supply.shutdown([IDS[i] for i in op[1]] or None)
            except EXPECTED:
                pass
            continue
        if op[0] == "trip":
            emu.inject_trip(IDS[op[1]])
            continue
        targets = {IDS[op[1]]: op[2]} if op[0] in ("set", "power_up") else {IDS[i]: v for i, v in op[1]}
        below = any(isinstance(v, (int, float)) and not math.isnan(v) and v < min_v for v in targets.values())
        refused = False
        try:
            if op[0] == "power_up":
                supply.power_up(targets)
            else:
                supply.set_voltages(targets)
        except HVLimitError:
            refused = True
        except EXPECTED:
            continue
        new = [e for e in emu.set_log()[n0:] if e["par"] == "VSET"]
        if below:
            assert refused and new == [], f"target below min_v {min_v} was not refused: {targets}, sent {new}"
        if not refused:
            last = {e["channel_id"]: e["value"] for e in new}
            for c in targets:
                assert last[c] >= min_v, (c, last[c], min_v)
