"""Byte-exact protocol tests of the MSADC driver (online/msadc.py), no emulator.

A tiny scripted TCP server (tests/scripted_server.py) plays the crate: for every connection it holds a
script of (expected request bytes -> reply) steps. The driver talks to it through pyvisa + pyvisa-py over
a real socket, in the spirit of pymeasure's ``expected_protocol``.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from scripted_server import DROP, SILENT, ScriptedCrate, block

from detector.records import TRUTH_DTYPE
from online import msadc
from online.msadc import (
    MSADC,
    MSADCBlockError,
    MSADCConfigError,
    MSADCConnectionError,
    MSADCCrateError,
    MSADCSpillLost,
    MSADCTimeout,
)

IDN = b"NA64-HIL,MSADC-CRATE,EMU-0001,0.1\n"
NOERR = b'0,"No error"\n'


#: a reply that must arrive gets this long (generous on a loaded machine)
REPLY_TIMEOUT_MS = 30000
#: the timeout of tests in which a timeout must expire AND the scripted crate's replies must arrive within
#: it: long for a scheduler (the crate is a thread of this process on loopback: its replies take
#: milliseconds, even next to a busy core), short for the test (every expired timeout is waited out)
EXPIRE_MS = 1000


def _open(crate: ScriptedCrate, **kw) -> MSADC:
    kw.setdefault("timeout_ms", REPLY_TIMEOUT_MS)
    kw.setdefault("retries", 2)
    return MSADC(crate.resource, **kw).open()


BOOT = b"0123456789abcdef\n"
HELLO = [(b"*IDN?\n", IDN), (b"SYST:BOOT?\n", BOOT)]
CONFIG_OK = [
    (b"*CLS\n", SILENT),
    (b"CONF:SAMP 32\n", SILENT),
    (b"CONF:SAMP?\n", b"32\n"),
    (b"CONF:CHAN?\n", b"121\n"),
    (b"CONF:TRIG:CHAN?\n", b"S1,S2,S3,V1,PS_SUM,ECAL_SUM\n"),
    (b"CONF:SPILL:BUFF?\n", b"2\n"),
    (b"SYST:ERR?\n", NOERR),
]
# after a reconnect: *IDN?, drain of the error queue, re-selection of the spill
RECONNECT_SEL3 = HELLO + [(b"SYST:ERR?\n", NOERR), (b"SPIL:SEL 3\n", SILENT), (b"SYST:ERR?\n", NOERR)]


def test_open_and_configure_bytes():
    crate = ScriptedCrate(HELLO + CONFIG_OK)
    d = _open(crate)
    info = d.configure()
    d.close()
    crate.check()
    assert info["idn"] == IDN.decode().strip()
    assert info["trigger_channels"] == ["S1", "S2", "S3", "V1", "PS_SUM", "ECAL_SUM"]
    assert info["spill_buffer"] == 2


def test_configure_reports_crate_errors():
    script = (
        HELLO
        + CONFIG_OK[:-1]
        + [
            (b"SYST:ERR?\n", b'-222,"Data out of range; samples must be 32"\n'),
            (b"SYST:ERR?\n", b'-113,"Undefined header"\n'),
            (b"SYST:ERR?\n", NOERR),
        ]
    )
    crate = ScriptedCrate(script)
    d = _open(crate)
    with pytest.raises(MSADCCrateError) as ei:
        d.configure()
    d.close()
    crate.check()
    assert ei.value.codes == [-222, -113]
    assert "samples must be 32" in str(ei.value) and "configuration" in str(ei.value)


@pytest.mark.parametrize(
    "chan,trig,needle",
    [
        (b"120\n", b"S1,S2,S3,V1,PS_SUM,ECAL_SUM\n", "CONF:CHAN?"),
        (b"121\n", b"S2,S1,S3,V1,PS_SUM,ECAL_SUM\n", "CONF:TRIG:CHAN?"),
    ],
)
def test_configure_checks_channels_and_primitive_order(chan, trig, needle):
    script = HELLO + CONFIG_OK[:3] + [(b"CONF:CHAN?\n", chan), (b"CONF:TRIG:CHAN?\n", trig)] + CONFIG_OK[5:]
    crate = ScriptedCrate(script)
    d = _open(crate)
    with pytest.raises(MSADCConfigError, match=needle.replace("?", r"\?")):
        d.configure()
    d.close()
    crate.check()


def test_not_an_msadc_is_refused_and_session_closed():
    crate = ScriptedCrate([(b"*IDN?\n", b"ACME,SCOPE,1,2\n")])
    with pytest.raises(MSADCConfigError, match="not an MSADC"):
        MSADC(crate.resource, timeout_ms=REPLY_TIMEOUT_MS).open()
    crate.check()
    assert crate.eof_seen.wait(60), "the half-open session was not closed"


def test_half_open_session_is_closed_on_timeout():
    crate = ScriptedCrate([(b"*IDN?\n", SILENT)])
    d = MSADC(crate.resource, timeout_ms=200)  # must expire: *IDN? is never answered
    with pytest.raises(MSADCConnectionError):
        d.open()
    assert not d.is_open
    crate.check()
    assert crate.eof_seen.wait(60)


def test_status_list_info_counts():
    script = HELLO + [
        (b"SPIL:STAT?\n", b"GAP,17\n"),
        (b"SPIL:LIST?\n", b"16,17\n"),
        (b"SPIL:LIST?\n", b"\n"),
        (b"SPIL:SEL 17\n", SILENT),
        (b"SYST:ERR?\n", NOERR),
        (b"SPIL:INFO?\n", b'{"spill": 17, "particles": 5, "table": {"x_mm": 0}, "scalers": {"S0": 5}}\n'),
        (b"PRIM:COUN?\n", b"5\n"),
        (b"ACC:COUN?\n", b"2\n"),
        (b"EVT:COUN?\n", b"2\n"),
    ]
    crate = ScriptedCrate(script)
    d = _open(crate)
    st = d.spill_status()
    assert (st.state, st.last_complete) == ("GAP", 17)
    assert d.spill_list() == [16, 17]
    assert d.spill_list() == []
    d.select_spill(17)
    assert d.selected_spill == 17
    assert d.spill_info()["scalers"]["S0"] == 5
    assert (d.prim_count(), d.accepted_count(), d.event_count()) == (5, 2, 2)
    d.close()
    crate.check()


def test_select_lost_spill_raises_spill_lost():
    script = HELLO + [
        (b"SPIL:SEL 4\n", SILENT),
        (b"SYST:ERR?\n", b'-230,"Data corrupt or stale; spill 4"\n'),
        (b"SYST:ERR?\n", NOERR),
    ]
    crate = ScriptedCrate(script)
    d = _open(crate)
    with pytest.raises(MSADCSpillLost) as ei:
        d.select_spill(4)
    assert ei.value.flag == "spill_lost" and d.selected_spill is None
    d.close()
    crate.check()


def _prims(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(-100, 4095, (n, 6, 32)).astype("<i2")


def test_read_primitives_times_events_bytes():
    p = _prims(3)
    t = np.array([1.5, 20.25, 1e6], "<f8")
    ev = np.random.default_rng(2).integers(0, 4095, (2, 121, 32)).astype("<i2")
    script = HELLO + [
        (b"PRIM:DATA? 10,3\n", block(p.tobytes())),
        (b"PRIM:TIME? 10,3\n", block(t.tobytes())),
        (b"EVT:DATA? 0,2\n", block(ev.tobytes())),
    ]
    crate = ScriptedCrate(script)
    d = _open(crate)
    assert d._session.fast  # pyvisa-py TCPIP SOCKET: the socket fast path is taken
    out = np.empty((3, 6, 32), np.int16)
    got = d.read_primitives(10, 3, out=out)
    assert got is out and np.array_equal(out, p)
    assert np.array_equal(d.read_times(10, 3), t)
    assert np.array_equal(d.read_events(0, 2), ev)
    d.close()
    crate.check()
    assert d.take_incidents() == []


def test_portable_read_bytes_path_is_byte_identical():
    p = _prims(4, seed=5)
    crate = ScriptedCrate(HELLO + [(b"PRIM:DATA? 0,4\n", block(p.tobytes())), (b"ACC:COUN?\n", b"0\n")])
    d = _open(crate, fast_read=False)
    assert not d._session.fast
    assert np.array_equal(d.read_primitives(0, 4), p)
    assert d.accepted_count() == 0
    d.close()
    crate.check()


def test_upload_accepted_bytes():
    idx = np.array([0, 7, 4_000_000], np.int64)
    payload = np.array(idx, "<u4").tobytes()
    script = HELLO + [
        (b"ACC:DATA #212" + payload + b"\n", SILENT),
        (b"SYST:ERR?\n", NOERR),
        (b"ACC:DATA #10\n", SILENT),
        (b"SYST:ERR?\n", NOERR),
    ]
    crate = ScriptedCrate(script)
    d = _open(crate)
    d.upload_accepted(idx)
    d.upload_accepted(np.array([], np.uint32))
    with pytest.raises(ValueError):
        d.upload_accepted(np.array([3, 3]))
    d.close()
    crate.check()


def test_upload_rejected_by_crate():
    payload = np.array([5], "<u4").tobytes()
    script = HELLO + [
        (b"ACC:DATA #14" + payload + b"\n", SILENT),
        (b"SYST:ERR?\n", b'-222,"Data out of range; index 5 >= 5"\n'),
        (b"SYST:ERR?\n", NOERR),
    ]
    crate = ScriptedCrate(script)
    d = _open(crate)
    with pytest.raises(MSADCCrateError) as ei:
        d.upload_accepted(np.array([5]))
    assert ei.value.codes == [-222]
    d.close()
    crate.check()


def _select3(d: MSADC) -> None:
    d.select_spill(3)


SEL3 = [(b"SPIL:SEL 3\n", SILENT), (b"SYST:ERR?\n", NOERR)]


@pytest.mark.parametrize(
    "bad,kind",
    [
        (b"X3768", "corrupt_block"),  # not a block
        (b"#0", "corrupt_block"),  # indefinite length
        (b"#4999", "truncated_block"),  # header digits missing, then nothing
        (block(b"\0" * 1000), "corrupt_block"),  # length mismatch (1000 != 768)
        (b"#3768" + b"\0" * 768 + b"Z", "corrupt_block"),  # no terminator
        (b"#3768" + b"\0" * 100, "truncated_block"),  # cut short, then silence
    ],
)
def test_bad_block_is_detected_and_reread_after_reconnect(bad, kind):
    p = _prims(2, seed=3)
    first = HELLO + SEL3 + [(b"PRIM:DATA? 0,2\n", bad)]
    second = RECONNECT_SEL3 + [(b"PRIM:DATA? 0,2\n", block(p.tobytes()))]
    crate = ScriptedCrate(first, second)
    d = _open(crate, timeout_ms=EXPIRE_MS)
    _select3(d)
    assert np.array_equal(d.read_primitives(0, 2), p)
    d.close()
    crate.check()
    inc = d.take_incidents()
    assert "retried" in inc and "reconnected" in inc
    assert kind in inc or (kind == "corrupt_block" and "timeout" in inc), inc


def test_dropped_connection_is_reopened_and_spill_reselected():
    t = np.arange(4, dtype="<f8")
    first = HELLO + SEL3 + [(b"PRIM:TIME? 0,4\n", DROP)]
    second = RECONNECT_SEL3 + [(b"PRIM:TIME? 0,4\n", block(t.tobytes()))]
    crate = ScriptedCrate(first, second)
    d = _open(crate, timeout_ms=60_000)
    _select3(d)
    t0 = time.monotonic()
    assert np.array_equal(d.read_times(0, 4), t)
    # a dropped connection is seen at once: a missed drop would wait the whole 60 s timeout (the bound
    # is half of it, far beyond any scheduling delay)
    assert time.monotonic() - t0 < 30.0
    d.close()
    crate.check()
    assert {"reconnected", "retried"} <= set(d.take_incidents())
    assert d.stats["reconnects"] == 1


def test_reconnect_restores_configuration_and_selection():
    first = HELLO + CONFIG_OK + SEL3 + [(b"PRIM:COUN?\n", DROP)]
    second = HELLO + [
        (b"SYST:ERR?\n", b'-350,"Queue overflow"\n'),
        (b"SYST:ERR?\n", NOERR),
        (b"CONF:SAMP 32\n", SILENT),
        (b"SPIL:SEL 3\n", SILENT),
        (b"SYST:ERR?\n", NOERR),
        (b"PRIM:COUN?\n", b"77\n"),
    ]
    crate = ScriptedCrate(first, second)
    d = _open(crate)
    d.configure()
    _select3(d)
    assert d.prim_count() == 77
    assert d.crate_errors == [(-350, "Queue overflow")]
    d.close()
    crate.check()


def test_no_reply_times_out_and_retries():
    first = HELLO + [(b"SPIL:STAT?\n", SILENT)]
    second = HELLO + [(b"SYST:ERR?\n", NOERR), (b"SPIL:STAT?\n", b"SPILL,2\n")]
    crate = ScriptedCrate(first, second)
    d = _open(crate, timeout_ms=EXPIRE_MS)
    assert d.spill_status().state == "SPILL"
    d.close()
    crate.check()
    assert "timeout" in d.take_incidents()


def test_retries_exhausted_raise_timeout():
    crate = ScriptedCrate(
        HELLO + [(b"PRIM:COUN?\n", SILENT)], HELLO + [(b"SYST:ERR?\n", NOERR), (b"PRIM:COUN?\n", SILENT)]
    )
    d = _open(crate, timeout_ms=EXPIRE_MS, retries=1)
    with pytest.raises(MSADCTimeout) as ei:
        d.prim_count()
    assert ei.value.flag == "timeout"
    d.close()
    crate.check()


def test_reconnect_finds_spill_gone():
    first = HELLO + SEL3 + [(b"EVT:DATA? 0,1\n", DROP)]
    second = HELLO + [
        (b"SYST:ERR?\n", NOERR),
        (b"SPIL:SEL 3\n", SILENT),
        (b"SYST:ERR?\n", b'-230,"Data corrupt or stale"\n'),
        (b"SYST:ERR?\n", NOERR),
    ]
    crate = ScriptedCrate(first, second)
    d = _open(crate)
    _select3(d)
    with pytest.raises(MSADCSpillLost):
        d.read_events(0, 1)
    d.close()
    crate.check()


def test_truth_probe_supported_and_read():
    tr = np.zeros(1, TRUTH_DTYPE)
    tr["index"] = 9
    script = HELLO + [
        (b"EVT:TRUT? 0,1\n*OPC?\n", block(tr.tobytes()) + b"1\n"),
        (b"EVT:TRUT? 0,1\n", block(tr.tobytes())),
    ]
    crate = ScriptedCrate(script)
    d = _open(crate)
    assert d.truth_supported() is True
    assert d.truth_supported() is True  # cached
    assert d.read_truth(0, 1)["index"][0] == 9
    d.close()
    crate.check()


@pytest.mark.parametrize("probe,method", [(b"EVT:TRUT? 0,1", "truth_supported"), (b"MM:DATA? 0,0", "mm_supported")])
def test_block_probe_unsupported(probe, method):
    script = HELLO + [
        (probe + b"\n*OPC?\n", b"1\n"),
        (b"SYST:ERR?\n", b'-113,"Undefined header"\n'),
        (b"SYST:ERR?\n", NOERR),
    ]
    crate = ScriptedCrate(script)
    d = _open(crate)
    assert getattr(d, method)() is False
    d.close()
    crate.check()


def test_one_resource_manager_per_process():
    a = ScriptedCrate(HELLO + [(b"PRIM:COUN?\n", b"1\n")])
    b = ScriptedCrate(HELLO + [(b"PRIM:COUN?\n", b"2\n")])
    da, db = _open(a), _open(b)
    assert da._rm is db._rm is msadc.resource_manager("@py")
    assert da.prim_count() == 1
    da.close()  # must not close the shared manager (pymeasure #894)
    assert db.prim_count() == 2
    db.close()
    d2 = _open(ScriptedCrate(HELLO))
    d2.close()
    a.check()
    b.check()


def test_parse_helpers():
    assert msadc.parse_error_line('-230,"Data corrupt or stale; spill 3"') == (-230, "Data corrupt or stale; spill 3")
    assert msadc.parse_block_header(b"#3012") == 12
    for bad in (b"#", b"#0", b"#3a12", b"X312", b"#312"):
        with pytest.raises(MSADCBlockError):
            msadc.parse_block_header(bad)


def _mm_payload(ptr: list[int], recs: list[tuple[int, int, tuple[int, int, int]]]) -> bytes:
    """An MM:DATA? payload written by hand from the documented layout (docs/protocols.md 1.x, MM:DATA?)."""
    out = b"".join(int(p).to_bytes(4, "little") for p in ptr)
    for plane, strip, adc in recs:
        out += (
            bytes([plane, 0])
            + strip.to_bytes(2, "little")
            + b"".join(a.to_bytes(2, "little", signed=True) for a in adc)
        )
    return out


def test_micromegas_probe_and_block_bytes():
    recs = [(0, 160, (247, 300, 273)), (1, 161, (20, 30, 25)), (6, 5, (100, 180, 150))]
    payload = _mm_payload([0, 2, 2, 3], recs)
    script = HELLO + [
        (b"MM:DATA? 0,0\n*OPC?\n", block(b"\0\0\0\0") + b"1\n"),
        (b"MM:DATA? 4,3\n", block(payload)),
    ]
    crate = ScriptedCrate(script)
    d = _open(crate)
    assert d.mm_supported() is True
    assert d.mm_supported() is True  # cached: no second probe
    s = d.read_mm(4, 3)
    d.close()
    crate.check()
    assert s.event_ptr.tolist() == [0, 2, 2, 3]
    assert s.plane.tolist() == [0, 1, 6] and s.strip.tolist() == [160, 161, 5]
    # the pulse height and time from the samples (detector.mmblock): in time at 300; 4 ns late at 26.8 (the
    # middle sample within the rounding); (100, 180, 150) is not one CR-RC pulse: no time, the largest sample
    assert s.charge.tolist() == pytest.approx([299.96, 26.77, 180.0], abs=0.01)
    assert s.time_ns[:2].tolist() == pytest.approx([0.06, 4.15], abs=0.01) and np.isnan(s.time_ns[2])


@pytest.mark.parametrize(
    "bad",
    [
        _mm_payload([0, 2], [(0, 1, (1, 2, 1))]),  # last offset 2, one strip follows
        _mm_payload([1, 1], [(0, 1, (1, 2, 1))]),  # first offset not 0
        _mm_payload([0, 1], [(0, 1, (1, 2, 1))]) + b"\0\0\0",  # not whole strip records
        b"\0\0",  # shorter than the offsets
        b"\0" * (8 + 10 * (msadc.MAX_MM_STRIPS_PER_EVENT + 1)),  # more strips than any event can have
    ],
)
def test_bad_micromegas_block_is_reread(bad):
    good = _mm_payload([0, 1], [(2, 7, (1, 2, 1))])
    crate = ScriptedCrate(
        HELLO + SEL3 + [(b"MM:DATA? 0,1\n", block(bad))], RECONNECT_SEL3 + [(b"MM:DATA? 0,1\n", block(good))]
    )
    d = _open(crate, timeout_ms=EXPIRE_MS)
    _select3(d)
    s = d.read_mm(0, 1)
    d.close()
    crate.check()
    assert s.plane.tolist() == [2] and s.strip.tolist() == [7] and s.charge.tolist() == pytest.approx([1.13], abs=0.01)
    inc = d.take_incidents()
    assert "retried" in inc and "corrupt_block" in inc, inc
