"""The MSADC driver (online/msadc.py) against the emulated crate (na64-emulator subprocess), over
pyvisa + pyvisa-py and a real TCP socket, including the crate's injected faults."""

from __future__ import annotations

import numpy as np
import pytest
from emulator_fixture import start_emulator

from detector import mmblock
from detector.records import TRUTH_DTYPE
from online.msadc import MSADC, MSADCConnectionError, MSADCCrateError, MSADCSpillLost, MSADCTimeout, resource_manager

pytestmark = pytest.mark.slow

SMALL = {
    "spill": {"length_s": 0.3, "supercycle_s": 1.0},
    "beam": {"particles_per_spill": 5e3},
    "emulator": {"spill_buffer": 8},
}


@pytest.fixture(scope="module")
def _emulator(tmp_path_factory):
    with start_emulator(tmp_path_factory.mktemp("emu"), SMALL, ["--no-pty"]) as e:
        e.wait_for_spills(1)
        yield e


@pytest.fixture
def emu(_emulator):
    """One emulator for the module, faults cleared before and after every test."""
    _emulator.control({"cmd": "clear_faults"})
    yield _emulator
    _emulator.control({"cmd": "clear_faults"})


def _crate(emu, **kw) -> MSADC:
    kw.setdefault("timeout_ms", 800)
    kw.setdefault("retries", 2)
    d = MSADC(emu.msadc, **kw).open()
    d.configure()
    return d


def _latest(d: MSADC) -> int:
    st = d.spill_status()
    assert st.last_complete >= 0
    d.select_spill(st.last_complete)
    return st.last_complete


def test_full_readout_matches_the_reference_reader(emu):
    d = _crate(emu)
    sid = _latest(d)
    info = d.spill_info()
    n = d.prim_count()
    assert info["spill"] == sid and info["particles"] == n > 1000
    # chunked, fast path == one pyvisa query_binary_values of the whole spill (the portable reference)
    prims = np.empty((n, 6, 32), np.int16)
    times = np.empty(n)
    step = 1500
    for first in range(0, n, step):
        c = min(step, n - first)
        d.read_primitives(first, c, out=prims[first : first + c])
        d.read_times(first, c, out=times[first : first + c])
    ref = resource_manager().open_resource(emu.msadc, read_termination="\n", write_termination="\n", timeout=5000)
    try:
        ref.write(f"SPIL:SEL {sid}")
        whole = ref.query_binary_values("PRIM:DATA?", datatype="h", is_big_endian=False, container=np.ndarray)
    finally:
        ref.close()
    assert np.array_equal(whole.reshape(n, 6, 32), prims)
    assert (np.diff(times) >= 0).all()
    acc = np.arange(3, n, max(1, n // 50))
    d.upload_accepted(acc)
    assert d.accepted_count() == acc.size == d.event_count()
    ev = d.read_events(0, acc.size)
    assert ev.shape == (acc.size, 121, 32) and ev.max() > 0
    assert d.truth_supported()
    tr = d.read_truth(0, acc.size)
    assert tr.dtype == TRUTH_DTYPE and (tr["index"] == acc).all()
    assert d.spill_truth()["particles"] == n
    # Micromegas strips: in blocks == at once == the raw block of a plain pyvisa client, decoded by hand
    assert d.mm_supported()
    k = acc.size // 3
    parts = mmblock.concat([d.read_mm(0, k), d.read_mm(k, acc.size - k)])
    mm = d.read_mm(0, acc.size)
    for name in ("event_ptr", "plane", "strip", "charge", "time_ns"):
        assert np.array_equal(getattr(parts, name), getattr(mm, name), equal_nan=True), name
    assert mm.n_events == acc.size and np.median(np.diff(mm.event_ptr)) >= 8
    ref = resource_manager().open_resource(emu.msadc, read_termination="\n", write_termination="\n", timeout=5000)
    try:
        ref.write("SYST:OBS ON")  # read-only observer: the driver's selection and accepted list are untouched
        raw = ref.query_binary_values(f"MM:DATA? 0,{acc.size}", datatype="B", container=bytes)
    finally:
        ref.close()
    ptr = np.frombuffer(raw[: 4 * (acc.size + 1)], "<u4")
    assert np.array_equal(ptr, mm.event_ptr)
    rec = np.frombuffer(raw[4 * (acc.size + 1) :], np.uint8).reshape(-1, 10)
    assert np.array_equal(rec[:, 0], mm.plane) and np.array_equal(rec[:, 2:4].copy().view("<u2")[:, 0], mm.strip)
    charge, time = mmblock.strip_charge_time(rec[:, 4:].copy().view("<i2"))
    assert np.array_equal(charge, mm.charge) and np.array_equal(time, mm.time_ns, equal_nan=True)
    with pytest.raises(MSADCCrateError) as ei:  # index beyond N: -222, previous list kept
        d.upload_accepted(np.array([n + 5]))
    assert -222 in ei.value.codes and d.accepted_count() == acc.size
    assert d.take_incidents() == []
    d.close()


@pytest.mark.parametrize(
    "kind,incident",
    [("drop", "reconnected"), ("truncate", "truncated_block"), ("corrupt", "corrupt_block"), ("no_reply", "timeout")],
)
def test_faults_are_survived(emu, kind, incident):
    d = _crate(emu)
    _latest(d)
    n = min(d.prim_count(), 2000)
    good = d.read_primitives(0, n)
    spec = {"cmd": "fault", "endpoint": "msadc", "kind": kind}
    if kind == "no_reply":
        spec["count"] = 1
    assert emu.control(spec)["ok"]
    again = d.read_primitives(0, n)  # retried after a reconnect, spill re-selected
    assert np.array_equal(good, again)
    inc = d.take_incidents()
    assert incident in inc and "retried" in inc, inc
    assert d.stats["reconnects"] >= 1
    d.close()


def test_slow_replies_within_the_timeout_and_beyond(emu):
    d = _crate(emu, timeout_ms=600, retries=1)
    _latest(d)
    emu.control({"cmd": "fault", "endpoint": "msadc", "kind": "delay", "seconds": 0.2})
    assert d.prim_count() > 0  # slow, but inside the timeout
    emu.control({"cmd": "fault", "endpoint": "msadc", "kind": "delay", "seconds": 1.5})
    with pytest.raises((MSADCTimeout, MSADCConnectionError)) as ei:  # the reconnect's *IDN? is slow too
        d.prim_count()
    assert ei.value.flag == "timeout"
    emu.control({"cmd": "clear_faults"})
    assert d.prim_count() > 0
    d.close()


def test_spill_gone_from_the_ring(emu):
    d = _crate(emu)
    st = d.spill_status()
    with pytest.raises(MSADCSpillLost) as ei:
        d.select_spill(st.last_complete + 1000)
    assert ei.value.flag == "spill_lost" and -230 in ei.value.codes
    d.close()
