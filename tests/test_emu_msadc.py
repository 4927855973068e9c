"""The emulated MSADC crate in-process: SCPI toolkit, stream parser, and the crate server over a real
TCP socket with a stock pyvisa '@py' client (docs/protocols.md section 1).

Spills here are built directly (no feed): a small hand-made record with a stand-in digitiser for the
protocol tests, and one real spill (beam + response + Digitizer) for the bit-identity check.
"""

from __future__ import annotations

import json
import socket
import time
from types import SimpleNamespace

import numpy as np
import pytest
import pyvisa

from detector import channels as chmap
from detector.records import TRUTH_DTYPE
from sim_frontend import scpi
from sim_frontend.emu_msadc import MSADCCrate, SpillRecord, truth_summary
from sim_frontend.msadc_server import MSADCServer

N_REC = 1000
REPLY_TIMEOUT_MS = 30000  #: a reply that must arrive gets this long (generous on a loaded machine)


# ------------------------------------------------------------------------------------------ helpers
class StandInDigitizer:
    """Test stand-in: event waveforms are a pure function of the record index."""

    def events(self, spill, dep, indices, hv_vmon):
        idx = np.asarray(indices, dtype=np.int64)
        out = np.empty((idx.size, chmap.N_CHANNELS, chmap.N_SAMPLES), dtype=np.int16)
        out[:] = (idx % 4000)[:, None, None]
        out[:, :, 1] = np.arange(chmap.N_CHANNELS, dtype=np.int16)[None, :]
        return out


def make_record(spill_id: int, n: int = N_REC) -> SpillRecord:
    truth = np.zeros(n, TRUTH_DTYPE)
    truth["index"] = np.arange(n)
    truth["time_ns"] = np.arange(n) * 1000.0
    truth["ptype"][::10] = 1
    truth["flags"][::100] = 2
    spill = SimpleNamespace(spill=spill_id, start_unix=1.7e9 + spill_id, length_s=0.3, truth=truth, seed=spill_id)
    prim = ((np.arange(n * 6 * 32) + spill_id) % 4096).astype(np.int16).reshape(n, 6, 32)
    return SpillRecord(
        spill=spill,
        deposits=None,
        primitives=prim,
        times=truth["time_ns"].copy(),
        table={"x_mm": 0.0, "y_mm": 0.0, "module": -1, "cell": "PHYSICS"},
        vmon=np.zeros(chmap.N_CHANNELS),
        scalers={"S0": n, "S1": n - 1, "S2": 5, "S3": 4, "V0": 3, "V1": 2},
    )


@pytest.fixture
def crate_server():
    crate = MSADCCrate(StandInDigitizer(), buffer=2)
    server = MSADCServer(crate, idle_timeout_s=0.3).start()
    yield crate, server
    server.stop()


@pytest.fixture(scope="module")
def rm():
    manager = pyvisa.ResourceManager("@py")
    yield manager
    manager.close()


def open_crate(rm, server, timeout_ms=REPLY_TIMEOUT_MS):
    res = rm.open_resource(server.resource, read_termination="\n", write_termination="\n", timeout=timeout_ms)
    return res


def read_block(res) -> bytes:
    """Read one IEEE definite-length block and its terminator with plain pyvisa calls."""
    head = res.read_bytes(2)
    assert head[:1] == b"#"
    n = int(res.read_bytes(int(head[1:2])))
    data = res.read_bytes(n + 1)
    assert data[-1:] == b"\n"
    return bytes(data[:-1])


def raw_conn(server) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", server.port), timeout=REPLY_TIMEOUT_MS / 1000)
    return s


def raw_query(s: socket.socket, data: bytes) -> bytes:
    s.sendall(data)
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    return buf


# ------------------------------------------------------------------------------------------ scpi
def test_header_spellings():
    forms = scpi.expand_pattern("SYSTem:ERRor[:NEXT]?")
    assert {"SYST:ERR?", "SYSTEM:ERROR?", "SYST:ERROR:NEXT?"} <= set(forms)
    assert scpi.expand_pattern("EVT|EVENT:DATA?") == ["EVT:DATA?", "EVENT:DATA?"]
    table = scpi.CommandTable()
    table.add("SPILl:STATus?", lambda a: "x")
    assert table.lookup("spil:stat?") is not None
    assert table.lookup(":Spill:Status?") is not None
    assert table.lookup("SPI:STAT?") is None  # neither the short nor the long form
    assert table.lookup("SPIL:STAT") is None  # the query only


def test_error_queue_overflow_keeps_oldest_and_marks_loss():
    q = scpi.ErrorQueue()
    for i in range(40):
        q.push(-113, f"cmd{i}")
    entries = [q.pop() for _ in range(33)]
    assert entries[0].startswith('-113,"Undefined header; cmd0')
    assert entries[30].startswith('-113,"Undefined header; cmd30')
    assert entries[31] == '-350,"Queue overflow"'
    assert entries[32] == '0,"No error"'


def test_stream_parser_block_with_newlines_and_split_delivery():
    p = scpi.StreamParser()
    payload = bytes([10, 0, 0, 0, 13, 10, 35, 10])  # contains \n, \r, '#'
    msg = b"ACC:DATA #18" + payload + b"\n*IDN?\n"
    items = []
    for i in range(len(msg)):  # one byte at a time
        items += p.feed(msg[i : i + 1])
    assert items == [scpi.Block(b"ACC:DATA ", payload), scpi.Line(b"*IDN?")]


def test_stream_parser_resynchronises():
    p = scpi.StreamParser(max_line=64, max_block=16)
    out = p.feed(b"ACC:DATA #x123\n*IDN?\n")  # bad header
    assert isinstance(out[0], scpi.ParseError) and out[0].code == -160 and out[1] == scpi.Line(b"*IDN?")
    out = p.feed(b"ACC:DATA #0abc\n*OPC?\n")  # indefinite block unsupported
    assert out[0].code == -160 and out[1] == scpi.Line(b"*OPC?")
    out = p.feed(b"ACC:DATA #220" + b"y" * 20 + b"\nA?\n")  # too big: counted off, not stored
    assert out[0].code == -223 and out[1] == scpi.Line(b"A?")
    out = p.feed(b"ACC:DATA #12abc\nB?\n")  # longer than announced
    assert out[0].code == -160 and out[1] == scpi.Line(b"B?")
    out = p.feed(b"x" * 100 + b"\nC?\n")  # overlong line
    assert out[0].code == -100 and out[1] == scpi.Line(b"C?")
    out = p.feed(b"ACC:DATA #15ab")  # truncated: nothing until idle
    assert out == [] and p.mid_block
    out = p.idle()
    assert out[0].code == -160 and "truncated" in out[0].detail
    assert p.feed(b"D?\n") == [scpi.Line(b"D?")]
    assert p.buffered() < 64


# ------------------------------------------------------------------------------------------ crate
def test_stock_pyvisa_session(crate_server, rm):
    crate, server = crate_server
    res = open_crate(rm, server)
    try:
        assert "MSADC" in res.query("*IDN?").split(",")[1]
        assert res.query("SYST:ERR?") == '0,"No error"'
        assert res.query("SPIL:STAT?") == "IDLE,-1"
        assert res.query("SPIL:LIST?") == ""
        crate.spill_started(5)
        assert res.query("spil:stat?") == "SPILL,-1"
        crate.spill_completed(make_record(5))
        assert res.query("SPILl:STATus?") == "GAP,5"
        res.write("PRIM:COUN?")  # nothing selected: no reply, -221
        with pytest.raises(pyvisa.errors.VisaIOError):
            res.timeout = 300  # must expire: no reply is sent
            res.read()
        res.timeout = REPLY_TIMEOUT_MS
        assert res.query("SYST:ERR?").startswith("-221,")
        res.write("SPIL:SEL 5")
        assert res.query("SPIL:SEL?") == "5"
        assert res.query("SYSTem:ERRor:NEXT?") == '0,"No error"'
        assert res.query("PRIM:COUN?") == str(N_REC)
        info = json.loads(res.query("SPIL:INFO?"))
        assert (
            info["spill"] == 5
            and info["particles"] == N_REC
            and set(info["table"]) == {"x_mm", "y_mm", "module", "cell"}
        )
        assert set(info["scalers"]) >= {"S0", "S1", "S2", "S3", "V0", "V1"}
        prim = res.query_binary_values("PRIM:DATA? 0,10", datatype="h", container=np.ndarray)
        rec = crate.record(5)
        np.testing.assert_array_equal(prim.reshape(10, 6, 32), rec.primitives[:10])
        whole = res.query_binary_values("PRIM:DATA?", datatype="h", container=np.ndarray)
        assert whole.size == N_REC * 6 * 32
        t = res.query_binary_values("PRIM:TIME? 995,5", datatype="d", container=np.ndarray)
        np.testing.assert_array_equal(t, rec.times[995:])
        assert res.query("CONF:TRIG:CHAN?") == "S1,S2,S3,V1,PS_SUM,ECAL_SUM"
        assert res.query("CONF:CHAN?") == "121" and res.query("CONF:SAMP?") == "32"
        assert res.query("CONF:SPILL:BUFF?") == "2"
        res.write("CONF:LAT 1200")
        assert res.query("CONF:LAT?") == "1200"
        res.write("CONF:SAMP 16")
        res.write("CONF:LAT 5000")
        assert res.query("SYST:ERR?").startswith("-222,")
        assert res.query("SYST:ERR?").startswith("-222,")
        assert res.query("*OPC?") == "1"
    finally:
        res.close()


def test_accepted_upload_and_event_readout(crate_server, rm):
    crate, server = crate_server
    crate.spill_completed(make_record(7))
    res = open_crate(rm, server)
    try:
        res.write("SPIL:SEL 7")
        idx = np.array([3, 10, 266, 522, 999], dtype=np.uint32)  # 10 = 0x0A, 266 = 0x010A: '\n' bytes
        res.write_binary_values("ACC:DATA ", idx, datatype="I")
        assert res.query("SYST:ERR?") == '0,"No error"'
        assert res.query("ACC:COUN?") == "5" and res.query("EVT:COUN?") == "5"
        ev = res.query_binary_values("EVT:DATA?", datatype="h", container=np.ndarray).reshape(5, 121, 32)
        assert list(ev[:, 0, 0]) == [3, 10, 266, 522, 999]
        assert list(ev[0, :, 1]) == list(range(121))
        part = res.query_binary_values("EVENT:DATA? 1,2", datatype="h", container=np.ndarray).reshape(2, 121, 32)
        assert list(part[:, 0, 0]) == [10, 266]
        res.write("EVT:TRUT? 0,5")
        truth = np.frombuffer(read_block(res), dtype=TRUTH_DTYPE)
        assert list(truth["index"]) == list(idx)
        summary = json.loads(res.query("SPIL:TRUT?"))
        assert summary == truth_summary(7, crate.record(7).spill.truth, 5)
        assert summary["by_type"] == {"e-": 900, "pi-": 100} and summary["dimuon"] == 10
        # violations leave the previous list and add an error
        for bad, code in (([5, 5], "-222"), ([2, 1], "-222"), ([N_REC], "-222")):
            res.write_binary_values("ACC:DATA ", np.array(bad, dtype=np.uint32), datatype="I")
            assert res.query("SYST:ERR?").startswith(code + ",")
            assert res.query("ACC:COUN?") == "5"
        res.write_raw(b"ACC:DATA #13abc\n")  # 3 bytes: not whole uint32
        assert res.query("SYST:ERR?").startswith("-160,")
        res.write("ACC:DATA 1,2,3")  # text instead of a block
        assert res.query("SYST:ERR?").startswith("-160,")
        res.write("ACC:DATA")
        assert res.query("SYST:ERR?").startswith("-109,")
        res.write("EVT:DATA? 4,2")  # beyond the accepted list
        assert res.query("SYST:ERR?").startswith("-222,")
        res.write_binary_values("ACC:DATA ", np.array([], dtype=np.uint32), datatype="I")
        assert res.query("ACC:COUN?") == "0"
        assert res.query_binary_values("EVT:DATA?", datatype="h", container=np.ndarray).size == 0
    finally:
        res.close()


def test_truncated_upload_gives_160_and_server_resyncs(crate_server, rm):
    crate, server = crate_server
    crate.spill_completed(make_record(1))
    res = open_crate(rm, server)
    try:
        res.write("SPIL:SEL 1")
        errors0 = crate.counters["errors"]
        res.write_raw(b"ACC:DATA #240" + b"\x01\x00\x00\x00" * 3)  # 12 of 40 bytes, then silence
        deadline = time.monotonic() + 60  # until the idle timeout (0.3 s) hit
        while crate.counters["errors"] == errors0:
            assert time.monotonic() < deadline, "the unfinished upload was never abandoned"
            time.sleep(0.01)
        err = res.query("SYST:ERR?")
        assert err.startswith("-160,") and "truncated" in err
        assert res.query("ACC:COUN?") == "0"
        assert "MSADC" in res.query("*IDN?")
    finally:
        res.close()


def test_ring_eviction_and_stale_selection(crate_server, rm):
    crate, server = crate_server
    res = open_crate(rm, server)
    try:
        for sid in (1, 2):
            crate.spill_completed(make_record(sid))
        res.write("SPIL:SEL 1")
        assert res.query("SPIL:LIST?") == "1,2"
        crate.spill_completed(make_record(3))  # evicts 1, the selected spill
        assert res.query("SPIL:LIST?") == "2,3"
        res.write("PRIM:DATA? 0,1")
        res.write("SPIL:SEL 1")
        assert res.query("SYST:ERR?").startswith("-230,")
        assert res.query("SYST:ERR?").startswith("-230,")
        res.write("SPIL:SEL 3")
        assert res.query("PRIM:COUN?") == str(N_REC)
        res.write("SPIL:SEL abc")
        assert res.query("SYST:ERR?").startswith("-102,")
    finally:
        res.close()


def test_error_queue_overflow_over_the_wire(crate_server, rm):
    crate, server = crate_server
    res = open_crate(rm, server)
    try:
        for i in range(40):
            res.write(f"BOGUS{i}")
        errors = [res.query("SYST:ERR?") for _ in range(33)]
        assert errors[0].startswith('-113,"Undefined header') and "BOGUS0" in errors[0]
        assert errors[31] == '-350,"Queue overflow"' and errors[32] == '0,"No error"'
        res.write("BOGUS")
        res.write("*CLS")
        assert res.query("SYST:ERR?") == '0,"No error"'
        crate.spill_completed(make_record(4))
        res.write("SPIL:SEL 4")
        res.write_binary_values("ACC:DATA ", np.array([1, 2], dtype=np.uint32), datatype="I")
        res.write("NOPE")
        res.write("*RST")  # clears the accepted lists; the error queue is kept (IEEE 488.2 10.32)
        assert res.query("SYST:ERR?") == '-113,"Undefined header; NOPE"'
        assert res.query("SYST:ERR?") == '0,"No error"'
        assert res.query("SPIL:SEL?") == "-1"
        res.write("SPIL:SEL 4")
        assert res.query("ACC:COUN?") == "0"
    finally:
        res.close()


def test_reconnect_and_two_clients(crate_server, rm):
    _crate, server = crate_server
    a = open_crate(rm, server)
    b = open_crate(rm, server)
    try:
        assert "MSADC" in a.query("*IDN?") and "MSADC" in b.query("*IDN?")
        a.close()
        a = open_crate(rm, server)
        assert "MSADC" in a.query("*IDN?")
        s = raw_conn(server)
        s.sendall(b"*IDN?")  # half a command, then the client vanishes
        s.close()
        assert "MSADC" in b.query("*IDN?")
        # several queries on one line: replies joined with ';'
        s = raw_conn(server)
        assert raw_query(s, b"*IDN?;*OPC?;CONF:CHAN?\r\n").endswith(b";1;121\n")
        s.close()
    finally:
        a.close()
        b.close()


def test_faults_on_the_crate(crate_server, rm):
    crate, server = crate_server
    crate.spill_completed(make_record(9))
    res = open_crate(rm, server)
    expire = 500  # ms; for replies that never come
    try:
        res.write("SPIL:SEL 9")
        server.faults.set("delay", seconds=0.3)
        t0 = time.monotonic()
        assert "MSADC" in res.query("*IDN?")
        # the wait is the behaviour under test; load can only lengthen it (a broken delay passes only if
        # this one query happened to stall 0.3 s by itself)
        assert time.monotonic() - t0 >= 0.3
        server.faults.set("delay", seconds=0)
        server.faults.set("no_reply", count=1)
        res.timeout = expire
        with pytest.raises(pyvisa.errors.VisaIOError):
            res.query("*IDN?")
        res.timeout = REPLY_TIMEOUT_MS
        assert server.stats["no_reply"] == 1
        assert "MSADC" in res.query("*IDN?")  # recovered
        server.faults.set("truncate")
        res.timeout = expire
        with pytest.raises(pyvisa.errors.VisaIOError):  # the block never completes
            res.query_binary_values("PRIM:DATA? 0,100", datatype="h", container=np.ndarray)
        res.timeout = REPLY_TIMEOUT_MS
        res.clear()
        assert "MSADC" in res.query("*IDN?")
        server.faults.set("corrupt")
        with pytest.raises((ValueError, pyvisa.errors.InvalidBinaryFormat)):
            res.query_binary_values("PRIM:DATA? 0,10", datatype="h", container=np.ndarray)
        res.clear()
        assert "MSADC" in res.query("*IDN?")
        server.faults.set("drop")
        assert res.query("PRIM:COUN?") == str(N_REC)  # not a data query: served
        res.timeout = expire  # the connection is closed: nothing comes
        with pytest.raises(pyvisa.errors.VisaIOError):
            res.query_binary_values("PRIM:DATA? 0,10", datatype="h", container=np.ndarray)
    finally:
        res.close()
    res = open_crate(rm, server)
    try:
        assert "MSADC" in res.query("*IDN?")
        res.write("SPIL:SEL 9")
        assert res.query_binary_values("PRIM:DATA? 0,10", datatype="h", container=np.ndarray).size == 10 * 6 * 32
    finally:
        res.close()
    assert server.stats["dropped"] == 1 and server.stats["truncated"] == 1 and server.stats["corrupted"] == 1


def test_garbage_never_kills_the_server(crate_server, rm):
    _crate, server = crate_server
    s = raw_conn(server)
    s.sendall(bytes(range(256)) * 4 + b"\n\xff\xfe#9\x00\n" + b"#" * 100 + b"\n")
    s.sendall(b"\n" * 10 + b"*IDN?\n")
    assert b"MSADC" in raw_query(s, b"")
    s.close()
    res = open_crate(rm, server)
    try:
        assert "MSADC" in res.query("*IDN?")
    finally:
        res.close()


# ------------------------------------------------------------------------------------------ real chain
def test_real_digitizer_events_match_primitives(rm):
    """With the real beam, response and digitiser, EVT:DATA? trigger channels equal PRIM:DATA? bit for bit."""
    from detector.config import load_calibration, load_config
    from sim_frontend.beam import generate_spill
    from sim_frontend.digitizer import Digitizer
    from sim_frontend.response import apply_response, hardware_scalers

    cfg = load_config(None)
    cal = load_calibration(cfg)
    spill = generate_spill(cfg, 3, n_particles=3000)
    dep = apply_response(spill, cfg, None)
    dig = Digitizer(cfg, cal)
    vmon = dig.nominal_vmon()
    prim, times = dig.primitives(spill, dep, vmon)
    crate = MSADCCrate(dig, buffer=1)
    crate.spill_completed(
        SpillRecord(
            spill,
            dep,
            prim,
            times,
            {"x_mm": 0, "y_mm": 0, "module": -1, "cell": "PHYSICS"},
            vmon,
            hardware_scalers(dep),
        )
    )
    with MSADCServer(crate) as server:
        res = open_crate(rm, server, timeout_ms=10000)
        try:
            res.write("SPIL:SEL 3")
            idx = np.array([0, 10, 1500, 2999], dtype=np.uint32)
            res.write_binary_values("ACC:DATA ", idx, datatype="I")
            ev = res.query_binary_values("EVT:DATA?", datatype="h", container=np.ndarray).reshape(-1, 121, 32)
            p = res.query_binary_values("PRIM:DATA?", datatype="h", container=np.ndarray).reshape(-1, 6, 32)
            np.testing.assert_array_equal(ev[:, chmap.trigger_channel_ids()], p[idx.astype(np.int64)])
            info = json.loads(res.query("SPIL:INFO?"))
            assert info["scalers"]["S1"] > 0.9 * 3000
            assert res.query("SYST:ERR?") == '0,"No error"'
        finally:
            res.close()


def test_micromegas_block_bytes(rm):
    """MM:DATA? over the wire with stock pyvisa: the documented layout, byte for byte (uint32 offsets, then
    10-byte strip records with 3 samples), equal to the strips mmhits makes for those accepted events."""
    from detector.config import load_calibration, load_config
    from detector.mmblock import SAMPLE_SHAPE, strip_samples
    from sim_frontend import mmhits
    from sim_frontend.beam import generate_spill
    from sim_frontend.digitizer import Digitizer
    from sim_frontend.emu_mm import MMReadout
    from sim_frontend.response import apply_response, hardware_scalers

    cfg = load_config(None)
    spill = generate_spill(cfg, 4, n_particles=2000)
    dep = apply_response(spill, cfg, None)
    dig = Digitizer(cfg, load_calibration(cfg))
    prim, times = dig.primitives(spill, dep, dig.nominal_vmon())
    crate = MSADCCrate(dig, buffer=1, mm=MMReadout(cfg))
    crate.spill_completed(SpillRecord(spill, dep, prim, times, {}, dig.nominal_vmon(), hardware_scalers(dep)))
    idx = np.array([3, 17, 500, 1999], dtype=np.uint32)
    with MSADCServer(crate) as server:
        res = open_crate(rm, server)
        try:
            assert res.query("MM:PLAN?") == str(2 * len(cfg.tracker.stations))
            assert res.query("MM:SAMP?") == "3"
            res.write("SPIL:SEL 4")
            res.write_binary_values("ACC:DATA ", idx, datatype="I")
            res.write("MM:DATA? 1,3")
            raw = read_block(res)
            res.write("MM:DATA? 0,0")
            assert read_block(res) == b"\x00\x00\x00\x00"  # no events: the single offset 0
            res.write("MM:DATA? 2,3")  # beyond the 4 accepted events
            res.write("*OPC?")
            assert res.read() == "1"
            assert res.query("SYST:ERR?").startswith("-222,")
            assert res.query("SYST:ERR?") == '0,"No error"'
        finally:
            res.close()
    ptr = np.frombuffer(raw[:16], "<u4")
    want = mmhits.event_strips(spill, cfg, idx[1:].astype(np.int64))
    np.testing.assert_array_equal(ptr, want.event_ptr)
    assert ptr[-1] > 3 * 8  # every beam electron leaves a cluster in most of the 8 planes
    body = raw[16:]
    assert len(body) == 10 * int(ptr[-1])
    for k in (0, int(ptr[-1]) // 2, int(ptr[-1]) - 1):  # plane u1, reserved u1, strip <u2, 3 x <i2
        rec = body[10 * k : 10 * k + 10]
        assert rec[0] == want.plane[k] and rec[1] == 0
        assert int.from_bytes(rec[2:4], "little") == want.strip[k]
        adc = [int.from_bytes(rec[4 + 2 * j : 6 + 2 * j], "little", signed=True) for j in range(3)]
        assert adc == strip_samples(want.charge[k : k + 1], want.time_ns[k : k + 1])[0].tolist()
    # the strips of the events' own particles are in time: the second sample at the pulse peak, q x SAMPLE_SHAPE
    k = int(np.argmin(np.abs(want.time_ns)))
    assert abs(want.time_ns[k]) < 3.0
    adc = [int.from_bytes(body[10 * k + 4 + 2 * j : 10 * k + 6 + 2 * j], "little", signed=True) for j in range(3)]
    assert adc == pytest.approx([float(want.charge[k]) * s for s in SAMPLE_SHAPE], abs=0.6 + 0.05 * max(adc))
    assert adc[1] == max(adc)


def test_crate_without_micromegas_refuses_mm_queries(crate_server, rm):
    _, server = crate_server
    res = open_crate(rm, server)
    try:
        res.write("MM:DATA? 0,0")
        assert res.query("SYST:ERR?").startswith("-113,")
    finally:
        res.close()
