"""The emulated HV mainframe (sim_frontend.emu_hv) and the serial line server (sim_frontend.serial_server):
ramp timing, trips, CLR, every error reply, and fuzzing of the line handler and of the pty server."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
import serial
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detector import channels as chmap
from detector.config import load_calibration, load_config
from sim_frontend.emu_hv import HVMAX_V, R_DIVIDER_MOHM, TRIP_DISCHARGE_V_PER_S, HVMainframe
from sim_frontend.serial_server import FaultState, LineFramer, PtyLineServer, TcpLineServer

CFG = load_config(None)
CAL = load_calibration(CFG)
REPLY_TIMEOUT_S = 30.0  #: a reply that must arrive gets this long (generous on a loaded machine)


class FakeClock:
    """Model time that moves only when told to (s)."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def emu(clock: FakeClock) -> HVMainframe:
    return HVMainframe(CFG, CAL, rup_v_per_s=50.0, rdw_v_per_s=25.0, load_ua=0.5, clock=clock)


def q(emu: HVMainframe, board: int, ch: int, par: str, val: str | None = None) -> str:
    cmd = "MON" if val is None and par not in ("ON", "OFF", "CLR") else "SET"
    req = f"$BD:{board:02d},CMD:{cmd},CH:{ch},PAR:{par}" + ("" if val is None else f",VAL:{val}")
    return emu.handle(req)


def mon(emu: HVMainframe, board: int, ch: int, par: str) -> float:
    reply = q(emu, board, ch, par)
    assert reply.startswith(f"#BD:{board:02d},CMD:OK,VAL:"), reply
    return float(reply.rsplit(":", 1)[1])


# -------------------------------------------------------------------------------------------- model
def test_fresh_emulator_is_in_the_physics_state(emu: HVMainframe) -> None:
    v = emu.vmon_by_channel_id()
    assert v.shape == (chmap.N_CHANNELS,) and v.dtype == np.float64
    has_hv = np.array([c.hv_board is not None for c in chmap.CHANNELS])
    np.testing.assert_allclose(v[has_hv], CAL.hv_set[has_hv])
    assert np.all(v[~has_hv] == 0.0)
    assert mon(emu, 3, 6, "VMON") == 942.0  # HCAL-0-2-3 from the 2017 logbook
    assert int(mon(emu, 3, 6, "STAT")) == 1  # ON, settled


def test_ramp_up_and_down_follow_the_rates(emu: HVMainframe, clock: FakeClock) -> None:
    # HCAL-0-0-0 is board 0 ch 0 at 850 V; RUP 50 V/s, RDW 25 V/s
    assert q(emu, 0, 0, "VSET", "950.0") == "#BD:00,CMD:OK"
    clock.advance(1.0)
    assert mon(emu, 0, 0, "VMON") == pytest.approx(900.0)
    assert int(mon(emu, 0, 0, "STAT")) & 0b10  # ramping up
    clock.advance(1.5)
    assert mon(emu, 0, 0, "VMON") == pytest.approx(950.0)
    assert int(mon(emu, 0, 0, "STAT")) == 1
    q(emu, 0, 0, "VSET", "900")
    clock.advance(1.0)
    assert mon(emu, 0, 0, "VMON") == pytest.approx(925.0)
    assert int(mon(emu, 0, 0, "STAT")) & 0b100  # ramping down
    assert mon(emu, 0, 0, "IMON") == pytest.approx(925.0 / R_DIVIDER_MOHM + 0.5, abs=0.006)


def test_ramp_from_mid_ramp_value_and_rate_change(emu: HVMainframe, clock: FakeClock) -> None:
    q(emu, 0, 1, "VSET", "1050")
    clock.advance(2.0)  # 850 -> 950
    assert q(emu, 0, 1, "RUP", "100") == "#BD:00,CMD:OK"
    clock.advance(0.5)  # 950 -> 1000 at the new rate
    assert mon(emu, 0, 1, "VMON") == pytest.approx(1000.0)


def test_ramp_in_real_time() -> None:
    e = HVMainframe(CFG, CAL, rup_v_per_s=200.0, rdw_v_per_s=200.0)
    t0 = time.monotonic()  # before the SET: elapsed bounds the ramp time
    e.handle("$BD:00,CMD:SET,CH:2,PAR:VSET,VAL:1250.0")
    time.sleep(0.25)  # real time passing IS the behaviour under test (lower bound below)
    v = float(e.handle("$BD:00,CMD:MON,CH:2,PAR:VMON").rsplit(":", 1)[1])
    elapsed = time.monotonic() - t0
    # load can only lengthen the ramp time, and elapsed includes it: both bounds hold on any machine
    assert 850.0 + 200.0 * 0.25 - 0.1 <= v <= min(1250.0, 850.0 + 200.0 * elapsed + 0.1)


def test_over_current_trips_after_trip_time(emu: HVMainframe, clock: FakeClock) -> None:
    # 850 V / 6 MOhm + 0.5 uA = 142.2 uA; ISET 100 uA -> over-current at once, trip 0.5 s later
    assert q(emu, 0, 4, "TRIP", "0.5") == "#BD:00,CMD:OK"
    assert q(emu, 0, 4, "ISET", "100") == "#BD:00,CMD:OK"
    clock.advance(0.4)
    stat = int(mon(emu, 0, 4, "STAT"))
    assert stat & (1 << 3) and not stat & (1 << 7)  # over-current, not yet tripped
    clock.advance(0.2)  # trip at +0.5 s, now +0.6 s
    stat = int(mon(emu, 0, 4, "STAT"))
    assert stat & (1 << 7) and not stat & 1  # tripped and OFF
    assert mon(emu, 0, 4, "VMON") == pytest.approx(850.0 - TRIP_DISCHARGE_V_PER_S * 0.1)


def test_short_over_current_does_not_trip(emu: HVMainframe, clock: FakeClock) -> None:
    q(emu, 0, 5, "TRIP", "1.0")
    q(emu, 0, 5, "ISET", "100")
    clock.advance(0.9)
    q(emu, 0, 5, "ISET", "500")
    clock.advance(5.0)
    assert int(mon(emu, 0, 5, "STAT")) == 1


def test_trip_time_counts_from_the_threshold_crossing(emu: HVMainframe, clock: FakeClock) -> None:
    # ISET 150 uA -> threshold (150 - 0.5) * 6 = 897 V; ramp 850 -> 1000 at 50 V/s crosses at +0.94 s
    q(emu, 0, 6, "TRIP", "1.0")
    q(emu, 0, 6, "ISET", "150")
    q(emu, 0, 6, "VSET", "1000")
    clock.advance(1.9)
    assert not int(mon(emu, 0, 6, "STAT")) & (1 << 7)
    clock.advance(0.1)  # +2.0 s > 0.94 + 1.0
    assert int(mon(emu, 0, 6, "STAT")) & (1 << 7)


def test_injected_trip_clear_and_on_again(emu: HVMainframe, clock: FakeClock) -> None:
    cid = chmap.by_name("S1").id
    b, c = chmap.CHANNELS[cid].hv_board, chmap.CHANNELS[cid].hv_channel
    assert b is not None and c is not None
    emu.inject_trip(cid)
    assert int(mon(emu, b, c, "STAT")) & (1 << 7)
    assert q(emu, b, c, "ON") == f"#BD:{b:02d},VAL:ERR"  # refused while latched
    clock.advance(1.0)
    assert mon(emu, b, c, "VMON") == 0.0
    assert q(emu, b, c, "CLR") == f"#BD:{b:02d},CMD:OK"
    assert int(mon(emu, b, c, "STAT")) == 0  # cleared, still OFF
    assert q(emu, b, c, "ON") == f"#BD:{b:02d},CMD:OK"
    clock.advance(2.0)
    assert mon(emu, b, c, "VMON") == pytest.approx(100.0)  # ramps from 0 at RUP 50 V/s
    assert emu.vmon_by_channel_id()[cid] == pytest.approx(100.0)


def test_off_ramps_down_at_rdw(emu: HVMainframe, clock: FakeClock) -> None:
    q(emu, 1, 0, "OFF")
    clock.advance(2.0)
    assert mon(emu, 1, 0, "VMON") == pytest.approx(850.0 - 50.0)
    assert int(mon(emu, 1, 0, "STAT")) == 0b100


def test_value_errors(emu: HVMainframe) -> None:
    assert q(emu, 0, 3, "VSET", f"{HVMAX_V + 0.1:.1f}") == "#BD:00,VAL:ERR"  # above MAXV (= HVMAX)
    assert q(emu, 0, 3, "VSET", "-1") == "#BD:00,VAL:ERR"
    for bad in ("nan", "inf", "1e9", "abc", "", "9 00"):
        assert q(emu, 0, 3, "VSET", bad) == "#BD:00,VAL:ERR", bad
    assert emu.handle("$BD:00,CMD:SET,CH:3,PAR:VSET") == "#BD:00,VAL:ERR"  # missing value
    assert q(emu, 0, 3, "MAXV", "2000.1") == "#BD:00,VAL:ERR"  # above HVMAX
    assert q(emu, 0, 3, "MAXV", "1200") == "#BD:00,CMD:OK"
    assert q(emu, 0, 3, "VSET", "1200.1") == "#BD:00,VAL:ERR"
    assert q(emu, 0, 3, "VSET", "1200.0") == "#BD:00,CMD:OK"
    assert q(emu, 0, 3, "ISET", "1000.01") == "#BD:00,VAL:ERR"
    assert q(emu, 0, 3, "RUP", "0.5") == "#BD:00,VAL:ERR"
    assert q(emu, 0, 3, "RDW", "501") == "#BD:00,VAL:ERR"
    assert emu.handle("$BD:00,CMD:SET,CH:3,PAR:ON,VAL:1") == "#BD:00,VAL:ERR"


def test_channel_parameter_and_command_errors(emu: HVMainframe) -> None:
    assert q(emu, 0, 10, "VMON") == "#BD:00,CH:ERR"
    assert q(emu, 0, 9, "VSET", "900") == "#BD:00,CH:ERR"  # CH:n is MON only
    assert q(emu, 4, 19, "VMON") == "#BD:04,CH:ERR"
    assert emu.handle("$BD:00,CMD:MON,CH:x,PAR:VMON") == "#BD:00,CH:ERR"
    assert emu.handle("$BD:00,CMD:MON,PAR:VMON") == "#BD:00,CH:ERR"
    assert q(emu, 0, 3, "FOO") == "#BD:00,PAR:ERR"
    assert q(emu, 0, 3, "VMON", "900") == "#BD:00,PAR:ERR"  # read-only
    assert q(emu, 0, 3, "HVMAX", "1000") == "#BD:00,PAR:ERR"
    assert emu.handle("$BD:00,CMD:SET,CH:3,PAR:BDNAME,VAL:x") == "#BD:00,PAR:ERR"
    assert emu.handle("$BD:00,CMD:GET,CH:3,PAR:VMON") == "#BD:00,CMD:ERR"
    assert emu.handle("$BD:09,CMD:MON,CH:0,PAR:VMON") == "#BD:09,CMD:ERR"  # no such board
    assert emu.handle("$BD:00,CMD:MON,CH:3,PAR:VMON,VAL:1") == "#BD:00,CMD:ERR"
    assert emu.handle("$BD:00,CMD:MON,CH:3,PAR:VMON,XYZ") == "#BD:00,CMD:ERR"
    assert emu.handle("BD:00,CMD:MON,CH:3,PAR:VMON") == "#CMD:ERR"  # no '$'
    assert emu.handle("$XX:00") == "#CMD:ERR"
    assert emu.handle("") == "#CMD:ERR"


def test_noise_before_dollar_is_discarded(emu: HVMainframe) -> None:
    assert emu.handle("\ufffd\x07zz$BD:00,CMD:MON,CH:3,PAR:BDNCH") == "#BD:00,CMD:OK,VAL:9"


def test_multi_channel_and_board_parameters(emu: HVMainframe) -> None:
    reply = emu.handle("$BD:04,CMD:MON,CH:18,PAR:VMON")
    values = reply.split("VAL:")[1].split(";")
    assert len(values) == 18 and all(v == "1000.0" for v in values)
    reply = emu.handle("$BD:08,CMD:MON,CH:11,PAR:IMON")
    assert len(reply.split("VAL:")[1].split(";")) == 11
    assert emu.handle("$BD:08,CMD:MON,CH:0,PAR:BDNCH") == "#BD:08,CMD:OK,VAL:11"
    assert emu.handle("$BD:02,CMD:MON,PAR:BDNAME") == "#BD:02,CMD:OK,VAL:HCAL2"
    assert emu.handle("$BD:00,CMD:MON,CH:0,PAR:HVMAX") == "#BD:00,CMD:OK,VAL:2000.0"


def test_set_log_records_every_set(emu: HVMainframe) -> None:
    q(emu, 0, 3, "VSET", "900")
    q(emu, 0, 3, "VSET", "2500")
    q(emu, 0, 3, "VMON")
    log = emu.set_log()
    assert [(e["par"], e["value"], e["accepted"], e["channel_id"]) for e in log] == [
        ("VSET", 900.0, True, chmap.hcal_id(0, 1, 0)),
        ("VSET", 2500.0, False, chmap.hcal_id(0, 1, 0)),
    ]
    json.dumps(emu.state())
    json.dumps(log)


def test_maxv_from_calibration_limits(clock: FakeClock) -> None:
    e = HVMainframe(CFG, CAL, maxv=CAL.hv_limit, clock=clock)
    assert e.handle("$BD:00,CMD:SET,CH:0,PAR:VSET,VAL:1300.1") == "#BD:00,VAL:ERR"
    assert e.handle("$BD:00,CMD:SET,CH:0,PAR:VSET,VAL:1300.0") == "#BD:00,CMD:OK"


def test_inject_trip_on_channel_without_hv_is_refused(emu: HVMainframe) -> None:
    with pytest.raises(KeyError, match="no HV"):
        emu.inject_trip(chmap.by_name("PS_SUM").id)


# -------------------------------------------------------------------------------------------- fuzz
@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(max_size=200),
        st.binary(max_size=200).map(lambda b: b.decode("utf-8", errors="replace")),
        st.builds(
            lambda *p: "$" + ",".join(p),
            st.sampled_from(["BD:00", "BD:8", "BD:99", "BD:", "BD:-1", "XX:1"]),
            st.sampled_from(["CMD:MON", "CMD:SET", "CMD:", "CMD:ON"]),
            st.sampled_from(["CH:0", "CH:9", "CH:18", "CH:-1", "CH:", "CH:999999", "CH:٣"]),
            st.sampled_from(["PAR:VSET", "PAR:ON", "PAR:CLR", "PAR:STAT", "PAR:BDNAME", "PAR:"]),
            st.text(max_size=12),
        ),
    )
)
def test_handle_never_raises(line: str) -> None:
    e = HVMainframe(CFG, CAL)
    reply = e.handle(line)
    assert isinstance(reply, str) and reply.startswith("#") and "\r" not in reply and "\n" not in reply
    assert e.handle("$BD:00,CMD:MON,CH:0,PAR:BDNCH") == "#BD:00,CMD:OK,VAL:9"


def _read_until(port: serial.Serial, expected: bytes, timeout_s: float = 30.0) -> bytes:
    """Read lines until ``expected`` arrives (replies to earlier garbage lines may come first)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = port.readline()
        if line.endswith(expected):
            return line
    raise AssertionError(f"{expected!r} never arrived")


def test_pty_server_survives_fuzzing() -> None:
    e = HVMainframe(CFG, CAL)
    with PtyLineServer(e.handle, max_line=256) as srv:
        port = serial.serial_for_url(srv.device, timeout=0.5)

        @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(st.binary(min_size=1, max_size=600))
        def fuzz(garbage: bytes) -> None:
            port.write(garbage + b"\r\n")
            port.write(b"$BD:01,CMD:MON,CH:0,PAR:BDNAME\r\n")
            _read_until(port, b"#BD:01,CMD:OK,VAL:HCAL1\r\n")

        fuzz()
        assert srv._thread is not None and srv._thread.is_alive()
        port.close()


# -------------------------------------------------------------------------------------------- server
def test_framer_splits_and_bounds_lines() -> None:
    f = LineFramer(max_line=8)
    assert f.feed(b"ab\r\ncd\rxy") == [b"ab", b"cd"]
    assert f.feed(b"z\n\r\n") == [b"xyz"]
    assert f.feed(b"0123456789abcdef") == []  # discarded while it arrives
    assert f.feed(b"gh\r\nok\n") == [None, b"ok"]


def test_overlong_line_gets_protocol_error_and_server_continues() -> None:
    e = HVMainframe(CFG, CAL)
    with TcpLineServer(e.handle, max_line=64) as srv:
        port = serial.serial_for_url(srv.url, timeout=REPLY_TIMEOUT_S)
        port.write(b"$" + b"A" * 5000 + b"\r\n")
        assert port.readline() == b"#CMD:ERR\r\n"
        port.write(b"$BD:00,CMD:MON,CH:0,PAR:BDNCH\r\n")
        assert port.readline() == b"#BD:00,CMD:OK,VAL:9\r\n"
        port.close()


def test_fault_state_validation_and_snapshot() -> None:
    fs = FaultState()
    fs.apply({"endpoint": "hv", "kind": "delay", "seconds": 0.1})
    fs.set("no_reply", count=2)
    fs.set("noise", count=3)
    fs.set("drop")
    assert fs.snapshot() == {"delay": 0.1, "no_reply": 2, "noise": 3, "drop": 1}
    for bad in ({"kind": "melt"}, {"kind": "delay"}, {"kind": "noise", "count": -1}, {"kind": "drop", "x": 1}):
        with pytest.raises(ValueError):
            fs.apply(bad)
    fs.clear()
    assert fs.snapshot() == {"delay": 0.0, "no_reply": 0, "noise": 0, "drop": 0}


def test_pty_drop_stops_answering_until_cleared() -> None:
    e = HVMainframe(CFG, CAL)
    with PtyLineServer(e.handle) as srv:
        port = serial.serial_for_url(srv.device, timeout=REPLY_TIMEOUT_S)
        srv.faults.set("drop")
        port.write(b"$BD:00,CMD:MON,CH:0,PAR:BDNCH\r\n")
        port.write(b"$BD:01,CMD:MON,CH:0,PAR:BDNCH\r\n")
        deadline = time.monotonic() + 60  # both requests read and discarded
        while srv.stats["dropped"] < 2:
            assert time.monotonic() < deadline, srv.stats
            time.sleep(0.01)
        srv.faults.clear()
        port.write(b"$BD:04,CMD:MON,CH:0,PAR:BDNCH\r\n")
        assert port.readline() == b"#BD:04,CMD:OK,VAL:18\r\n"  # the first reply is the one after the clear
        while srv.stats["replies"] < 1:  # the server counts a reply after writing it
            assert time.monotonic() < deadline, srv.stats
            time.sleep(0.01)
        assert srv.stats["replies"] == 1 and srv.stats["requests"] == 1
        port.close()


def test_tcp_first_client_owns_the_line_a_second_is_refused_and_stop_releases_everything() -> None:
    e = HVMainframe(CFG, CAL)
    srv = TcpLineServer(e.handle).start()
    a = serial.serial_for_url(srv.url, timeout=REPLY_TIMEOUT_S)
    a.write(b"$BD:00,CMD:MON,CH:0,PAR:BDNCH\r\n")
    assert a.readline() == b"#BD:00,CMD:OK,VAL:9\r\n"  # a owns the line
    b = serial.serial_for_url(srv.url, timeout=REPLY_TIMEOUT_S)
    b.write(b"$BD:00,CMD:SET,CH:0,PAR:VSET,VAL:900.0\r\n")
    assert b.readline() == b"LINE OWNED BY ANOTHER CLIENT\r\n"  # refused, never served
    with pytest.raises(serial.SerialException, match="disconnected"):
        b.read(1)  # and closed by the server
    b.close()
    assert e.set_log() == [] and srv.stats["refused"] == 1
    a.write(b"$BD:01,CMD:MON,CH:0,PAR:BDNCH\r\n")
    assert a.readline() == b"#BD:01,CMD:OK,VAL:9\r\n"  # the owner is not disturbed
    a.close()
    c = serial.serial_for_url(srv.url, timeout=REPLY_TIMEOUT_S)  # the owner left: the next one owns it
    c.write(b"$BD:04,CMD:MON,CH:0,PAR:BDNCH\r\n")
    assert c.readline() == b"#BD:04,CMD:OK,VAL:18\r\n"
    c.close()
    fds_before = len(os.listdir("/proc/self/fd"))
    srv.stop()
    assert srv._thread is None and len(os.listdir("/proc/self/fd")) < fds_before
