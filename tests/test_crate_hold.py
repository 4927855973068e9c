"""The emulated crate's holding observers (docs/protocols.md 1.8): a spill that leaves the ring stays
readable for a holding observer until released, and nothing else about the crate changes."""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import pytest
import pyvisa

from detector import channels as chmap
from detector.records import TRUTH_DTYPE
from sim_frontend.emu_msadc import MSADCCrate, SpillRecord
from sim_frontend.msadc_server import MSADCServer


class IndexDigitizer:
    """Event waveforms that are a pure function of the record index."""

    def events(self, spill, dep, indices, hv_vmon):
        idx = np.asarray(indices, dtype=np.int64)
        out = np.empty((idx.size, chmap.N_CHANNELS, chmap.N_SAMPLES), dtype=np.int16)
        out[:] = (idx % 4000 + int(spill.spill))[:, None, None]
        return out


def record(spill_id: int, n: int = 50) -> SpillRecord:
    truth = np.zeros(n, TRUTH_DTYPE)
    truth["index"] = np.arange(n)
    spill = SimpleNamespace(spill=spill_id, start_unix=1.7e9, length_s=0.3, truth=truth, seed=spill_id)
    prim = np.full((n, 6, 32), spill_id, np.int16)
    return SpillRecord(
        spill=spill,
        deposits=None,
        primitives=prim,
        times=np.arange(n) * 1000.0,
        table={},
        vmon=np.zeros(chmap.N_CHANNELS),
        scalers={"S0": n},
    )


@pytest.fixture
def served():
    crate = MSADCCrate(IndexDigitizer(), buffer=2)
    server = MSADCServer(crate).start()
    rm = pyvisa.ResourceManager("@py")
    conns = []

    def connect(observer: bool, hold: bool = False):
        r = rm.open_resource(server.resource, read_termination="\n", write_termination="\n", timeout=10000)
        if observer:
            r.write("SYST:OBS ON")
        if hold:
            r.write("SYST:OBS:HOLD ON")
        assert r.query("*OPC?") == "1"  # the commands before it have run
        conns.append(r)
        return r

    yield crate, server, connect
    for r in conns:
        r.close()
    rm.close()
    server.stop()


def test_a_holding_observer_keeps_evicted_spills_until_released(served):
    crate, _server, connect = served
    daq, obs = connect(False), connect(True, hold=True)
    for sid in (1, 2, 3, 4):
        crate.spill_completed(record(sid))
    # the DAQ's view: a ring of two
    assert daq.query("SPIL:LIST?") == "3,4"
    daq.write("SPIL:SEL 1")
    assert daq.query("SYST:ERR?").startswith("-230")
    # the holder's view: the evicted spills too, with their data
    assert obs.query("SPIL:LIST?") == "1,2,3,4"
    prims = obs.query_binary_values("PRIM:DATA? 0,50,1", datatype="h", container=np.ndarray)
    assert prims.size == 50 * 6 * 32 and (prims == 1).all()
    wf = obs.query_binary_values("EVT:IND:DATA? 2,7,9", datatype="h", container=np.ndarray).reshape(2, 121, 32)
    assert (wf[0] == 9).all() and (wf[1] == 11).all()
    assert crate.snapshot()["held"] == [1, 2] and crate.snapshot()["holders"] == 1
    # released: gone for the holder too; a buffered spill released is not held when evicted
    obs.write("SPIL:REL 1,3")
    crate.spill_completed(record(5))
    assert obs.query("SPIL:LIST?") == "2,4,5"
    obs.write("SPIL:INFO? 1")  # no reply: an error
    assert obs.query("SYST:ERR?").startswith("-230")
    assert daq.query("SYST:ERR?").startswith("0")  # the observer's errors are its own
    # SPIL:REL and the hold are for observers only
    daq.write("SPIL:REL 2")
    assert daq.query("SYST:ERR?").startswith("-221")
    daq.write("SYST:OBS:HOLD ON")
    assert daq.query("SYST:ERR?").startswith("-221")
    assert crate.snapshot()["holders"] == 1


def test_the_hold_ends_with_the_holder(served):
    crate, _server, connect = served
    obs = connect(True, hold=True)
    plain = connect(True)
    for sid in (1, 2, 3):
        crate.spill_completed(record(sid))
    assert crate.snapshot()["held"] == [1]
    assert plain.query("SPIL:LIST?") == "2,3"  # an observer that does not hold sees the ring
    assert plain.query("PRIM:COUN? 1") == "50"  # but may read what is held
    obs.close()
    deadline = time.monotonic() + 30  # until the server notices the closed connection
    while crate.snapshot()["holders"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert crate.snapshot()["holders"] == 0 and crate.snapshot()["held"] == []
    crate.spill_completed(record(4))
    assert crate.snapshot()["held"] == []
