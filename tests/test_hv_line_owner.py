"""One owner per HV line, and a quiet, resynchronised line after a timeout (docs/protocols.md section 2).

- client side: the serial and VISA transports hold an exclusive lock keyed by the endpoint, so a second
  tool on this host (another process, or a second open in this one) is refused with the holder named;
- server side: the emulator's TCP line refuses a second client with a refusal line and closes it; our
  transport recognises the line (no retry, no stolen replies);
- the DAQ's HV read-back reports "HV line owned by another tool" and resumes when the line is free;
- after a timeout the late reply is drained, and the next command gets ITS reply.
Real ptys, real sockets, a real second process."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator

import pytest
import serial

from detector import channels as chmap
from detector.config import load_calibration, load_config
from hv_control.caen import CAENMainframe
from hv_control.linelock import LineLock, endpoint_key
from hv_control.supply import HVReadbackError, HVSupply
from hv_control.transport import LineOwnedError, SerialTransport, TransportTimeoutError, VisaTransport
from online.hv_readback import HVReader
from sim_frontend.emu_hv import HVMainframe
from sim_frontend.serial_server import PtyLineServer, TcpLineServer

CFG = load_config(None)
CAL = load_calibration(CFG)
REPLY_TIMEOUT_S = 30.0


def wait_until(cond: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture
def emu() -> HVMainframe:
    return HVMainframe(CFG, CAL)


@pytest.fixture
def pty(emu: HVMainframe) -> Iterator[PtyLineServer]:
    srv = PtyLineServer(emu.handle).start()
    yield srv
    srv.stop()


@pytest.fixture
def tcp(emu: HVMainframe) -> Iterator[TcpLineServer]:
    srv = TcpLineServer(emu.handle).start()
    yield srv
    srv.stop()


# ------------------------------------------------------------------------------------ the lock
def test_endpoint_keys_are_the_same_for_every_spelling() -> None:
    assert endpoint_key("socket://localhost:5000") == endpoint_key("ASRLsocket://127.0.0.1:5000::INSTR")
    assert endpoint_key("socket://127.0.0.1:5000") == "socket-127.0.0.1-5000"
    assert endpoint_key("/dev/pts/3") == endpoint_key("ASRL/dev/pts/3::INSTR") == "dev-pts-3"
    assert endpoint_key("socket://127.0.0.1:5000") != endpoint_key("socket://127.0.0.1:5001")


def test_a_second_open_of_the_same_line_is_refused_until_the_first_closes(pty: PtyLineServer) -> None:
    first = SerialTransport(pty.device, timeout_s=REPLY_TIMEOUT_S)
    first.open()
    second = VisaTransport(pty.device, timeout_s=REPLY_TIMEOUT_S)  # another spelling of the same line
    with pytest.raises(LineOwnedError, match=r"owned by another tool \(pid \d+"):
        second.open()
    assert CAENMainframe(first).bdnch.get(0) == 9  # the owner is undisturbed
    first.close()
    second.open()
    assert CAENMainframe(second).bdnch.get(4) == 18
    second.close()


def test_another_process_owning_the_line_is_named(pty: PtyLineServer) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys
                from hv_control.transport import SerialTransport
                t = SerialTransport({pty.device!r})
                t.open()
                print("owned", flush=True)
                sys.stdin.read()  # hold the line until the test closes our stdin
                t.close()
                """
            ),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "owned"
        with pytest.raises(LineOwnedError, match=rf"owned by another tool \(pid {holder.pid} "):
            HVSupply.connect(pty.device, CFG, CAL)
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=60)
    supply = HVSupply.connect(pty.device, CFG, CAL)  # the holder exited: the line is free again
    assert supply.read_channel(chmap.hcal_id(0, 0, 0))["vset"] == 850.0
    supply.close()


def test_a_crashed_owner_never_leaves_the_line_locked(pty: PtyLineServer) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import os\nfrom hv_control.linelock import LineLock\nLineLock({pty.device!r}).acquire()\nos._exit(3)",
        ],
        timeout=60,
    )
    assert proc.returncode == 3
    lock = LineLock(pty.device)
    lock.acquire()  # the kernel released the dead process's lock
    lock.release()


# ------------------------------------------------------------------------------------ the TCP server
def test_the_server_refuses_a_second_client_and_our_transport_says_so(tcp: TcpLineServer, emu: HVMainframe) -> None:
    owner = serial.serial_for_url(tcp.url, timeout=REPLY_TIMEOUT_S)  # a stock client (no lock) owns the line
    owner.write(b"$BD:00,CMD:MON,CH:0,PAR:BDNCH\r\n")
    assert owner.readline() == b"#BD:00,CMD:OK,VAL:9\r\n"
    t = SerialTransport(tcp.url, timeout_s=REPLY_TIMEOUT_S, retries=2)
    with pytest.raises(LineOwnedError, match="line owned by another client"):
        CAENMainframe(t).vset.set(0, 0, 900.0)
    assert tcp.stats["refused"] == 1  # refused once: not retried
    t.close()
    assert emu.set_log() == []  # nothing of ours reached the mainframe
    owner.write(b"$BD:01,CMD:MON,CH:0,PAR:BDNCH\r\n")
    assert owner.readline() == b"#BD:01,CMD:OK,VAL:9\r\n"
    owner.close()
    t2 = SerialTransport(tcp.url, timeout_s=REPLY_TIMEOUT_S)  # the owner left: ours now
    assert CAENMainframe(t2).bdnch.get(8) == 11
    t2.close()


def test_the_daq_read_back_reports_the_owner_and_resumes(tcp: TcpLineServer, caplog: pytest.LogCaptureFixture) -> None:
    owner = serial.serial_for_url(tcp.url, timeout=REPLY_TIMEOUT_S)  # another tool (e.g. hv-tune) owns it
    owner.write(b"$BD:00,CMD:MON,CH:0,PAR:BDNCH\r\n")
    assert owner.readline() == b"#BD:00,CMD:OK,VAL:9\r\n"
    reader = HVReader(CFG, CAL, tcp.url, None)
    with caplog.at_level(logging.WARNING, logger="online.daq"):
        reader.start()
        try:
            wait_until(lambda: reader.line_owned is not None, 60, "the read-back to report the owner")
            assert "line owned by another client" in str(reader.line_owned)
            assert reader.snapshot() is None and reader.supply is None and reader.errors == 0
            assert any("HV line owned by another tool" in r.getMessage() for r in caplog.records)
            owner.write(b"$BD:02,CMD:MON,CH:0,PAR:BDNCH\r\n")
            assert owner.readline() == b"#BD:02,CMD:OK,VAL:9\r\n"  # no reply was stolen from the owner
            owner.close()
            reader.poke()
            wait_until(lambda: reader.snapshot() is not None, 60, "the read-back to resume")
            assert reader.line_owned is None
            snap = reader.snapshot()
            assert snap is not None and len(snap["vmon"]) == sum(c.hv_board is not None for c in chmap.CHANNELS)
        finally:
            reader.stop()


# ------------------------------------------------------------------------------------ resync after a timeout
def test_after_a_timeout_the_next_command_gets_its_own_reply(pty: PtyLineServer) -> None:
    t = SerialTransport(pty.device, timeout_s=0.3, retries=0)  # quiet period: the timeout, 0.3 s
    hv = CAENMainframe(t)
    try:
        pty.faults.set("delay", seconds=0.5)  # the reply to BDNCH ("9") comes 0.2 s too late
        with pytest.raises(TransportTimeoutError):
            hv.bdnch.get(0)
        pty.faults.clear()
        # without the resync the late "#BD:00,CMD:OK,VAL:9" would be taken for this VSET
        assert hv.vset.get(0, 0) == 850.0
        assert t.stats["resyncs"] == 1 and t.stats["late_bytes"] == len(b"#BD:00,CMD:OK,VAL:9\r\n")
        assert hv.vmon.get(0, 0) == 850.0 and t.stats["resyncs"] == 1  # a clean line is not drained again
    finally:
        t.close()


def test_the_supply_layer_reads_the_right_values_after_a_late_reply(pty: PtyLineServer) -> None:
    cfg = CFG.with_overrides({"hv": {"timeout_s": 0.3, "retries": 0}})
    supply = HVSupply.connect(pty.device, cfg, CAL)
    try:
        pty.faults.set("delay", seconds=0.5)
        with pytest.raises(HVReadbackError, match="no reply"):
            supply.read_all()
        pty.faults.clear()
        r = supply.read_all()
        assert set(r["status"].tolist()) == {1} and r["vset"][0] == r["vmon"][0] > 0  # STAT words, not voltages
    finally:
        supply.close()


def test_a_retry_takes_the_late_reply_and_the_next_command_still_gets_its_own(pty: PtyLineServer) -> None:
    t = SerialTransport(pty.device, timeout_s=0.3, retries=1)
    hv = CAENMainframe(t)
    try:
        pty.faults.set("delay", seconds=0.45)  # each reply 0.15 s later than the timeout
        assert hv.vset.get(0, 0) == 850.0  # the retry is answered by the first attempt's late reply
        pty.faults.clear()
        assert t.stats["timeouts"] == 1 and t.stats["resyncs"] == 0
        # the retry's own reply ("850.0") is still on its way: it is drained, not taken for BDNCH
        assert hv.bdnch.get(0) == 9
        assert t.stats["resyncs"] == 1 and t.stats["late_bytes"] == len(b"#BD:00,CMD:OK,VAL:850.0\r\n")
    finally:
        t.close()
