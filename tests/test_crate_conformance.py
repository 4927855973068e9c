"""The emulated MSADC crate speaks IEEE 488.2 (docs/protocols.md 1.9): every mandatory common command with
its standard meaning, the status byte and the standard event status register, byte-level over a real TCP
socket with a stock pyvisa '@py' client; plus the crate's boot id (``SYST:BOOT?``), its ownership lock
(``SYST:LOCK``) and the ``restart`` fault, and what the project's driver makes of them."""

from __future__ import annotations

import socket
import time

import pytest
from test_emu_msadc import StandInDigitizer, make_record, open_crate, rm  # noqa: F401  (rm: fixture)

from online.msadc import MSADC, MSADCLockedError, MSADCSpillLost
from sim_frontend import emu_msadc
from sim_frontend.emu_msadc import MSADCCrate
from sim_frontend.msadc_server import MSADCServer

REPLY_TIMEOUT_MS = 30000


@pytest.fixture
def server():
    crate = MSADCCrate(StandInDigitizer(), buffer=2)
    srv = MSADCServer(crate, idle_timeout_s=0.3).start()
    yield srv
    srv.stop()


@pytest.fixture
def res(server, rm):  # noqa: F811  (rm: the fixture of test_emu_msadc)
    """A stock pyvisa '@py' session of the crate."""
    r = open_crate(rm, server)
    yield r
    r.close()


def raw(srv) -> socket.socket:
    return socket.create_connection(("127.0.0.1", srv.port), timeout=REPLY_TIMEOUT_MS / 1000)


def ask(s: socket.socket, line: bytes) -> bytes:
    s.sendall(line)
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = s.recv(4096)
        assert chunk, "connection closed"
        buf += chunk
    return buf


# ------------------------------------------------------------------------------ IEEE 488.2 common commands
def test_power_on_bit_then_esr_reads_and_clears(res):
    assert res.query("*ESR?") == "128"  # PON: the crate was just switched on
    assert res.query("*ESR?") == "0"  # reading cleared it


@pytest.mark.parametrize(
    "bad, bit, code",
    [
        ("BOGUS", 0x20, -113),  # command error -> CME (bit 5)
        ("CONF:SAMP 16", 0x10, -222),  # execution error (data out of range) -> EXE (bit 4)
        ("SPIL:SEL 99", 0x10, -230),  # execution error (data stale) -> EXE
    ],
)
def test_errors_set_their_esr_bit_and_the_status_byte(res, bad, bit, code):
    res.query("*ESR?")  # clear PON
    res.write("*ESE 255")
    assert res.query("*ESE?") == "255"
    assert res.query("*STB?") == "0"
    res.write(bad)
    stb = int(res.query("*STB?"))
    assert stb & 0x04  # EAV: the error queue holds an entry
    assert stb & 0x20  # ESB: an enabled event bit is set
    assert not stb & 0x40  # MSS: nothing enabled in *SRE
    res.write("*SRE 32")
    assert res.query("*SRE?") == "32"
    assert int(res.query("*STB?")) & 0x40  # MSS now: ESB is enabled for service requests
    assert int(res.query("*STB?")) & 0x40  # *STB? clears nothing
    assert res.query("SYST:ERR?").startswith(f"{code},")
    assert res.query("*ESR?") == str(bit)
    assert int(res.query("*STB?")) == 0  # queue empty, ESR read: no EAV, no ESB, no MSS


def test_cls_clears_queue_and_event_register_but_not_the_enables(res):
    res.write("*ESE 36")
    res.write("*SRE 4")
    res.write("NOPE")
    res.write("*CLS")
    assert res.query("SYST:ERR?") == '0,"No error"'
    assert res.query("*ESR?") == "0"
    assert (res.query("*ESE?"), res.query("*SRE?")) == ("36", "4")


def test_opc_wai_tst_idn_rst(res):
    res.query("*ESR?")
    res.write("*OPC")
    assert res.query("*ESR?") == "1"  # OPC: every operation is complete at once
    assert res.query("*OPC?") == "1"
    res.write("*WAI")
    assert res.query("*TST?") == "0"  # self-test passed
    idn = res.query("*IDN?").split(",")
    assert len(idn) == 4 and idn[0] == emu_msadc.MANUFACTURER and idn[1] == emu_msadc.MODEL
    res.write("*ESE 8")
    res.write("CONF:LAT 100")
    res.write("*RST")  # device settings to defaults; status and enables untouched
    assert res.query("CONF:LAT?") == "800"
    assert res.query("*ESE?") == "8"
    assert res.query("SYST:ERR?") == '0,"No error"'


@pytest.mark.parametrize("cmd", [b"*ESE 256", b"*SRE -1", b"*ESE", b"*ESE x"])
def test_register_values_are_checked(server, cmd):
    s = raw(server)
    try:
        s.sendall(cmd + b"\n")
        code = int(ask(s, b"SYST:ERR?\n").split(b",")[0])
        assert code in (-102, -109, -222)
        assert ask(s, b"*ESE?\n") == b"0\n"
        assert ask(s, b"*SRE?\n") == b"0\n"
    finally:
        s.close()


def test_sre_bit_6_is_ignored(server):
    s = raw(server)
    try:
        s.sendall(b"*SRE 255\n")
        assert ask(s, b"*SRE?\n") == b"191\n"
    finally:
        s.close()


# ------------------------------------------------------------------------------ boot id, lock, restart
def test_boot_id_changes_with_a_restart_and_the_driver_reports_it(server):
    crate = server.crate
    crate.spill_completed(make_record(3))
    d = MSADC(server.resource, timeout_ms=REPLY_TIMEOUT_MS, retries=2, owner="daq-a").open()
    try:
        first = d.boot_id
        assert first == crate.boot_id and len(first) == 16
        d.select_spill(3)
        server.faults.set("restart")
        with pytest.raises(MSADCSpillLost):  # the reboot dropped the connection and emptied the ring
            d.prim_count()
        assert d.boot_id == crate.boot_id != first
        assert d.take_restarts() == [(first, d.boot_id)]
        assert "crate_restart" in d.take_incidents()
        assert server.stats["restarts"] == 1 and crate.counters["restarts"] == 1
        assert crate.snapshot()["owner"] == "daq-a"  # the lock was taken again at the reconnect
        assert d.spill_list() == []
    finally:
        d.close()


def test_one_owner_second_refused_observer_allowed(server, rm):  # noqa: F811
    server.crate.spill_completed(make_record(5))
    a = MSADC(server.resource, timeout_ms=REPLY_TIMEOUT_MS, retries=0, owner="daq-a").open()
    try:
        a.select_spill(5)
        with pytest.raises(MSADCLockedError) as ei:
            MSADC(server.resource, timeout_ms=REPLY_TIMEOUT_MS, retries=0, owner="daq-b").open()
        assert ei.value.owner == "daq-a" and "daq-a" in str(ei.value)
        # a stock client without the lock cannot change the selection; its error goes to its own queue
        other = open_crate(rm, server)
        obs = open_crate(rm, server)
        try:
            other.write("SPIL:SEL 5")
            assert other.query("SYST:ERR?").startswith('-221,"Settings conflict; SPIL:SEL refused: the crate is locked')
            obs.write("SYST:OBS ON")
            assert obs.query("SPIL:INFO? 5").startswith('{"spill":5')  # an observer reads, read-only
            assert obs.query("SYST:LOCK?") == "daq-a"
        finally:
            other.close()
            obs.close()
        a.check_errors("after the foreign client")  # the owner's queue saw none of it
        assert a.selected_on_crate() == 5
    finally:
        a.close()
    deadline = time.monotonic() + 30
    while server.crate.snapshot()["owner"] is not None:  # close() gave the lock back (SYST:LOCK:REL)
        assert time.monotonic() < deadline, "the lock was not given back"
        time.sleep(0.01)
    b = MSADC(server.resource, timeout_ms=REPLY_TIMEOUT_MS, retries=0, owner="daq-b").open()
    b.close()


def test_lock_of_a_vanished_owner_expires(server, monkeypatch):
    monkeypatch.setattr(emu_msadc, "LOCK_GRACE_S", 0.3)
    s = raw(server)
    s.sendall(b"SYST:LOCK dead-daq\n")
    assert ask(s, b"SYST:LOCK?\n") == b"dead-daq\n"
    s.close()  # the owner dies without SYST:LOCK:REL
    s2 = raw(server)
    try:
        s2.sendall(b"SYST:LOCK new-daq\n")
        assert ask(s2, b"SYST:ERR?\n").startswith(b'-221,"Settings conflict; crate locked by dead-daq')
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            s2.sendall(b"SYST:LOCK new-daq\n")
            if ask(s2, b"SYST:ERR?\n") == b'0,"No error"\n':
                break
        assert ask(s2, b"SYST:LOCK?\n") == b"new-daq\n"
    finally:
        s2.close()
