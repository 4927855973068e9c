"""HVSupply + CAENMainframe + transports against the emulated mainframe served over a REAL pty and a
REAL TCP socket, through pyserial and through a pyvisa (pyvisa-py) ASRL resource. Fast ramp rates
keep it quick; the emulator's SET log shows what actually reached the 'hardware'."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from detector import channels as chmap
from detector.config import load_calibration, load_config
from hv_control.caen import CAENMainframe
from hv_control.supply import HVError, HVLimitError, HVReadbackError, HVStateError, HVSupply, HVTripError
from hv_control.transport import (
    ConnectionLostError,
    SerialTransport,
    TransportTimeoutError,
    VisaTransport,
    open_transport,
    resource_manager,
)
from sim_frontend.emu_hv import HVMainframe
from sim_frontend.serial_server import LineServers, serve_line_handlers

CFG = load_config(None).with_overrides(
    {  # generous timeouts: replies must come
        "hv": dict(
            ramp_step_v=50.0,
            ramp_up_v_per_s=500.0,
            ramp_down_v_per_s=500.0,
            settle_tolerance_v=1.0,
            settle_timeout_s=60.0,
            timeout_s=30.0,
            retries=2,
            safe_v=0.0,
        ),
        "emulator": dict(hv_rup_v_per_s=500.0, hv_rdw_v_per_s=500.0),
    }
)
CAL = load_calibration(CFG)
CID = chmap.hcal_id(0, 2, 3)  # HCAL-0-2-3: board 3 ch 6, 942 V, limit 1300 V
PATHS = [("serial", "pty"), ("serial", "tcp"), ("visa", "pty"), ("visa", "tcp")]


class Rig:
    """Emulator + line servers + one supply connected over the chosen path."""

    def __init__(self, backend: str, kind: str) -> None:
        # 2000 V/s: faster than the protocol's RUP/RDW range allows, set by the constructor for test speed
        self.emu = HVMainframe(CFG, CAL, rup_v_per_s=2000.0, rdw_v_per_s=2000.0)
        self.servers: LineServers = serve_line_handlers({"hv": self.emu.handle}, pty=kind == "pty", tcp=kind == "tcp")
        addr = self.servers.addresses()["hv"]
        self.address = addr["pty"] if kind == "pty" else addr["url"]
        self.faults = self.servers.faults["hv"]
        self.server = self.servers.servers["hv"][0]
        self.supply = HVSupply.connect(self.address, CFG, CAL, backend=backend, poll_s=0.01)

    @property
    def transport(self) -> Any:
        return self.supply.mainframe.transport

    def sent_voltages(self, par: str = "VSET") -> list[tuple[int, float]]:
        return [(e["channel_id"], e["value"]) for e in self.emu.set_log() if e["par"] == par]

    def close(self) -> None:
        self.supply.close()
        self.servers.stop()


@pytest.fixture(params=PATHS, ids=["-".join(p) for p in PATHS])
def rig(request: pytest.FixtureRequest) -> Iterator[Rig]:
    r = Rig(*request.param)
    yield r
    r.close()


@pytest.fixture
def pty_rig() -> Iterator[Rig]:
    r = Rig("serial", "pty")
    yield r
    r.close()


@pytest.fixture
def tcp_rig(request: pytest.FixtureRequest) -> Iterator[Rig]:
    r = Rig(getattr(request, "param", "serial"), "tcp")
    yield r
    r.close()


def assert_never_above_limit(rig: Rig) -> None:
    for par in ("VSET", "MAXV"):
        for cid, value in rig.sent_voltages(par):
            assert value is not None and 0.0 <= value <= rig.supply.limit(cid), (par, cid, value)


# -------------------------------------------------------------------------------------------- basic
def test_set_ramp_and_verify(rig: Rig) -> None:
    vmon = rig.supply.set_voltage(CID, 1092.0)
    assert abs(vmon - 1092.0) <= CFG.hv.settle_tolerance_v
    assert rig.emu.vmon_by_channel_id()[CID] == pytest.approx(1092.0, abs=1.0)
    # software ramp from the read-back 942 V in 50 V steps, every step verified
    assert [v for c, v in rig.sent_voltages() if c == CID] == [992.0, 1042.0, 1092.0]
    r = rig.supply.read_all()
    i = int(np.flatnonzero(r["channel_ids"] == CID)[0])
    assert r["vset"][i] == 1092.0 and r["status"][i] == 1 and r["imon"][i] > 150.0
    assert len(r["channel_ids"]) == sum(c.hv_board is not None for c in chmap.CHANNELS)
    assert_never_above_limit(rig)


def test_refuse_above_limit_sends_nothing(rig: Rig) -> None:
    limit = rig.supply.limit(CID)
    assert limit == 1300.0
    for bad in (limit + 0.1, 2000.0, 1e12, -5.0, math.nan, math.inf):
        with pytest.raises(HVLimitError):
            rig.supply.set_voltage(CID, bad)
    with pytest.raises(HVLimitError, match="max_step"):
        rig.supply.set_voltage(CID, 1100.0, max_step=50.0)
    assert rig.emu.set_log() == []  # nothing reached the mainframe
    rig.supply.set_voltage(CID, limit)  # exactly at the limit is allowed
    assert_never_above_limit(rig)
    assert max(v for _, v in rig.sent_voltages()) == limit


def test_ensure_max_v_programs_the_configured_limits(pty_rig: Rig) -> None:
    sent = pty_rig.supply.ensure_max_v()
    assert sent[CID] == 1300.0 and sent[chmap.by_name("S1").id] == 1400.0
    assert_never_above_limit(pty_rig)
    assert pty_rig.emu.handle("$BD:03,CMD:SET,CH:6,PAR:VSET,VAL:1300.1") == "#BD:03,VAL:ERR"  # now enforced


def test_ensure_max_v_refuses_limit_above_hardware_maximum(pty_rig: Rig) -> None:
    real = pty_rig.emu.handle

    def low_voltage_board(line: str) -> str:  # a mainframe whose boards only reach 1200 V
        reply = real(line)
        return reply.replace("2000.0", "1200.0") if line.endswith("PAR:MVMAX") else reply

    pty_rig.server.handler = low_voltage_board
    with pytest.raises(
        HVLimitError, match=r"HCAL-0-0-0: the limit .* = 1300 V is outside the hardware range of MAXV \[0, 1200\] V"
    ):
        pty_rig.supply.ensure_max_v([chmap.hcal_id(0, 0, 0), CID])
    assert pty_rig.emu.set_log() == []


def test_trip_during_ramp_raises_with_channel_name(rig: Rig) -> None:
    # ISET 160 uA: over-current above (160 - 0.5) * 6 = 957 V; the ramp to 1100 V crosses it
    assert rig.emu.handle("$BD:03,CMD:SET,CH:6,PAR:ISET,VAL:160") == "#BD:03,CMD:OK"
    assert rig.emu.handle("$BD:03,CMD:SET,CH:6,PAR:TRIP,VAL:0.0") == "#BD:03,CMD:OK"
    with pytest.raises(HVTripError, match="HCAL-0-2-3") as info:
        rig.supply.set_voltage(CID, 1100.0)
    assert info.value.channel_ids == [CID]
    with pytest.raises(HVTripError):
        rig.supply.check_trips()
    with pytest.raises(HVTripError, match="clear_trip"):
        rig.supply.switch_on(CID)
    rig.supply.clear_trip(CID)
    rig.emu.handle("$BD:03,CMD:SET,CH:6,PAR:ISET,VAL:500")
    rig.supply.switch_on(CID)  # at safe_v, then a software ramp (to at least hv.min_v = 500 V)
    assert rig.supply.set_voltage(CID, 600.0) == pytest.approx(600.0, abs=1.0)


def test_injected_trip_is_detected_before_setting(pty_rig: Rig) -> None:
    pty_rig.emu.inject_trip(CID)
    with pytest.raises(HVTripError, match="HCAL-0-2-3"):
        pty_rig.supply.set_voltage(CID, 950.0)
    assert pty_rig.emu.set_log() == []


def test_off_channel_is_refused(pty_rig: Rig) -> None:
    pty_rig.emu.handle("$BD:03,CMD:SET,CH:6,PAR:OFF")
    with pytest.raises(HVStateError, match="OFF"):
        pty_rig.supply.set_voltage(CID, 950.0)


def test_power_up_from_off(pty_rig: Rig) -> None:
    pty_rig.supply.shutdown([CID])
    final = pty_rig.supply.power_up({CID: 600.0})
    assert final[CID] == pytest.approx(600.0, abs=1.0)
    vsets = [v for c, v in pty_rig.sent_voltages() if c == CID]
    assert vsets[-13:] == [50.0 * k for k in range(13)]  # ON at 0 V, then ramped in 50 V steps through min_v


def test_shutdown_reaches_the_safe_state(pty_rig: Rig) -> None:
    cfg = CFG.with_overrides({"hv": {"ramp_step_v": 250.0}})
    supply = HVSupply(pty_rig.supply.mainframe, cfg, CAL, poll_s=0.01)
    pty_rig.emu.inject_trip(chmap.by_name("S2").id)  # a tripped channel must not stop the shutdown
    r = supply.shutdown()
    assert np.all(r["vmon"] <= 1.0) and np.all(r["status"] & 1 == 0)
    assert np.all(r["vset"] == 0.0)
    st = pty_rig.emu.state()["channels"]
    assert all(not c["on"] and c["vmon"] <= 1.0 for c in st)
    assert_never_above_limit(pty_rig)


# -------------------------------------------------------------------------------------------- faults
def test_noise_bytes_are_survived(rig: Rig) -> None:
    rig.faults.set("noise", count=30)
    for _ in range(3):
        r = rig.supply.read_all([CID, chmap.by_name("S1").id])
        assert r["vmon"][0] == pytest.approx(942.0)
    rig.supply.set_voltage(CID, 992.0)
    assert rig.server.stats["noise"] == 30
    assert rig.transport.stats["timeouts"] == 0


@pytest.mark.parametrize("tcp_rig", ["serial", "visa"], indirect=True)
def test_dropped_socket_is_survived(tcp_rig: Rig) -> None:
    tcp_rig.faults.set("drop")
    assert tcp_rig.supply.read_channel(CID)["vmon"] == pytest.approx(942.0)
    assert tcp_rig.transport.stats["reconnects"] == 1
    assert tcp_rig.server.connections == 2
    assert tcp_rig.supply.set_voltage(CID, 992.0) == pytest.approx(992.0, abs=1.0)


def test_no_reply_gives_a_clear_timeout(pty_rig: Rig) -> None:
    pty_rig.supply.close()
    cfg = CFG.with_overrides({"hv": {"timeout_s": 0.1, "retries": 1}})
    supply = HVSupply.connect(pty_rig.address, cfg, CAL)
    pty_rig.faults.set("no_reply", count=100)
    with pytest.raises(
        TransportTimeoutError,
        match=r"no reply from /dev/pts/\d+ to '\$BD:03,CMD:MON,CH:6,"
        r"PAR:VMON' within 0.1 s \(2 attempt",
    ):
        supply.mainframe.vmon.get(3, 6)
    with pytest.raises(HVReadbackError, match="no reply") as info:
        supply.set_voltage(CID, 950.0)
    supply.close()
    assert isinstance(info.value.__cause__, TransportTimeoutError)
    assert not any(e["par"] == "VSET" for e in pty_rig.emu.set_log())  # refused: no read-back


def test_a_lost_reply_is_retried(pty_rig: Rig) -> None:
    pty_rig.supply.close()
    # the lost reply's timeout must expire, the retry's reply must arrive within the same timeout (the
    # mainframe is a thread of this process behind a pty: milliseconds); the test waits out that timeout and
    # the next request's resynchronisation (at most two timeouts: the lost reply never comes)
    cfg = CFG.with_overrides({"hv": {"timeout_s": 1.0}})
    supply = HVSupply.connect(pty_rig.address, cfg, CAL, poll_s=0.01)
    pty_rig.faults.set("no_reply", count=1)
    try:
        assert supply.read_channel(CID)["vmon"] == pytest.approx(942.0)
        assert supply.mainframe.transport.stats["timeouts"] == 1 and pty_rig.server.stats["no_reply"] == 1
    finally:
        supply.close()


def test_delay_fault_is_tolerated_within_timeout(pty_rig: Rig) -> None:
    pty_rig.faults.set("delay", seconds=0.05)
    assert pty_rig.supply.read_channel(CID)["vset"] == 942.0


def test_server_gone_raises_connection_lost() -> None:
    emu = HVMainframe(CFG, CAL)
    servers = serve_line_handlers({"hv": emu.handle}, pty=False)
    t = SerialTransport(servers.addresses()["hv"]["url"], timeout_s=0.3, retries=1, reconnect_delay_s=0.01)
    t.open()
    servers.stop()
    with pytest.raises((ConnectionLostError, TransportTimeoutError), match=r"127\.0\.0\.1"):
        t.query("$BD:00,CMD:MON,CH:0,PAR:VMON")
    t.close()


def test_one_resource_manager_survives_closing_a_resource(tcp_rig: Rig) -> None:
    tcp_rig.supply.close()  # one owner per line: the rig's own connection gives the line up
    rm = resource_manager()
    t1 = open_transport(tcp_rig.address, backend="visa", timeout_s=30.0)
    assert isinstance(t1, VisaTransport) and t1.address.startswith("ASRLsocket://")
    t1.close()  # closes its resource only (pymeasure #894)
    assert resource_manager() is rm
    t2 = open_transport(tcp_rig.address, backend="visa", timeout_s=30.0)
    assert CAENMainframe(t2).bdnch.get(0) == 9
    t2.close()


def test_concurrent_callers_do_not_interleave(pty_rig: Rig) -> None:
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            for _ in range(20):
                assert pty_rig.supply.mainframe.bdnch.get(4) == 18
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for th in threads:
        th.start()
    pty_rig.supply.set_voltage(CID, 992.0)
    for th in threads:
        th.join()
    assert errors == []


def test_shutdown_reports_a_channel_that_does_not_switch_off(pty_rig: Rig) -> None:
    real = pty_rig.emu.handle

    def stuck(line: str) -> str:  # a broken channel that ignores OFF
        return "#BD:03,CMD:OK" if line.endswith("CH:6,PAR:OFF") else real(line)

    pty_rig.server.handler = stuck
    with pytest.raises(HVError, match="HCAL-0-2-3 not off"):
        cfg = CFG.with_overrides({"hv": {"settle_timeout_s": 0.3}})
        HVSupply(pty_rig.supply.mainframe, cfg, CAL, poll_s=0.01).shutdown([CID])


# -------------------------------------------------------------------------------------------- stock client
def test_stock_pyserial_client_sets_and_reads_hv(pty_rig: Rig) -> None:
    pty_rig.supply.close()
    script = textwrap.dedent(f"""
        import serial, time
        port = serial.Serial({pty_rig.address!r}, 9600, timeout=30)
        def ask(line):
            port.write(line.encode() + b"\\r\\n")
            return port.readline().decode().strip()
        print(ask("$BD:03,CMD:SET,CH:6,PAR:VSET,VAL:1000.0"))
        deadline = time.monotonic() + 60                   # until the ramp reached the set point
        while (
            vmon := ask("$BD:03,CMD:MON,CH:6,PAR:VMON")
        ) != "#BD:03,CMD:OK,VAL:1000.0" and time.monotonic() < deadline:
            time.sleep(0.01)
        print(vmon)
        print(ask("$BD:03,CMD:SET,CH:6,PAR:VSET,VAL:2500"))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd="/")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["#BD:03,CMD:OK", "#BD:03,CMD:OK,VAL:1000.0", "#BD:03,VAL:ERR"]
