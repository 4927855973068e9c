"""hv-tune's stream source: it waits for a DAQ that is ready (kernels compiled, crate configured), not
merely alive, and takes amplitudes only from spills on the wanted cell that started after the HV settled."""
import threading
import time

import numpy as np
import pytest
import zmq

from detector.framing import send_message
from hv_control.stream import StreamAmplitudes
from hv_control.tune import BeamLossError


@pytest.fixture
def pub():
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.PUB)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    yield sock, f"tcp://127.0.0.1:{port}"
    sock.close(0)


def publish_for(sock, seconds, messages):
    def run():
        end, seq = time.monotonic() + seconds, 0
        while time.monotonic() < end:
            for topic, meta, arrays in messages:
                send_message(sock, topic, seq, arrays, meta)
                seq += 1
            time.sleep(0.05)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_a_live_but_not_ready_daq_is_not_taken_for_ready(pub):
    sock, address = pub
    src = StreamAmplitudes(address)
    try:
        publish_for(sock, 2.0, [("status", {"state": "IDLE", "ready": False}, None)])
        with pytest.raises(BeamLossError, match="not ready.*IDLE"):
            src.wait_for_daq(1.2)
        publish_for(sock, 2.0, [("status", {"state": "IDLE", "ready": True}, None)])
        assert src.wait_for_daq(1.5)["ready"] is True
    finally:
        src.close()


def test_only_spills_on_the_cell_after_the_settle_time_count(pub):
    sock, address = pub
    src = StreamAmplitudes(address)
    since = time.time()
    amps = np.zeros((50, 108), np.float32)
    amps[:, 80] = 2500.0
    wrong = amps.copy()
    wrong[:, 80] = 1000.0
    try:
        publish_for(sock, 3.0, [
            ("amplitudes", {"table": {"cell": "0-1-3"}, "start_unix": since + 1}, {"amplitudes": wrong}),
            ("amplitudes", {"table": {"cell": "2-2-0"}, "start_unix": since - 5}, {"amplitudes": wrong}),
            ("amplitudes", {"table": {"cell": "2-2-0"}, "start_unix": since + 1}, {"amplitudes": amps}),
        ])
        got = src.collect(80, "2-2-0", since, min_events=100, max_spills=5, timeout_s=2.5)
        assert got.size >= 100 and np.all(got == 2500.0)
    finally:
        src.close()
