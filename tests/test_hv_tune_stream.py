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


class Publisher:
    """A PUB socket fed by one thread at a time (ZeroMQ sockets are not thread-safe): a new
    :meth:`publish_for` stops the previous feed first, and :meth:`close` joins the feed before the
    socket is closed."""

    def __init__(self) -> None:
        self.sock = zmq.Context.instance().socket(zmq.PUB)
        self.address = f"tcp://127.0.0.1:{self.sock.bind_to_random_port('tcp://127.0.0.1')}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def publish_for(self, seconds: float, messages) -> None:
        self._join()

        def run():
            end, seq = time.monotonic() + seconds, 0
            while time.monotonic() < end and not self._stop.is_set():
                for topic, meta, arrays in messages:
                    send_message(self.sock, topic, seq, arrays, meta)
                    seq += 1
                self._stop.wait(0.05)

        self._stop.clear()
        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def _join(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(5)
            assert not self._thread.is_alive()
            self._thread = None

    def close(self) -> None:
        self._join()
        self.sock.close(0)


@pytest.fixture
def pub():
    p = Publisher()
    yield p
    p.close()


def test_a_live_but_not_ready_daq_is_not_taken_for_ready(pub):
    src = StreamAmplitudes(pub.address)
    try:
        pub.publish_for(2.0, [("status", {"state": "IDLE", "ready": False}, None)])
        with pytest.raises(BeamLossError, match=r"not ready.*IDLE"):
            src.wait_for_daq(1.2)
        pub.publish_for(2.0, [("status", {"state": "IDLE", "ready": True}, None)])
        assert src.wait_for_daq(1.5)["ready"] is True
    finally:
        src.close()


def test_only_spills_on_the_cell_after_the_settle_time_count(pub):
    src = StreamAmplitudes(pub.address)
    since = time.time()
    amps = np.zeros((50, 108), np.float32)
    amps[:, 80] = 2500.0
    wrong = amps.copy()
    wrong[:, 80] = 1000.0
    try:
        pub.publish_for(
            3.0,
            [
                ("amplitudes", {"table": {"cell": "0-1-3"}, "start_unix": since + 1}, {"amplitudes": wrong}),
                ("amplitudes", {"table": {"cell": "2-2-0"}, "start_unix": since - 5}, {"amplitudes": wrong}),
                ("amplitudes", {"table": {"cell": "2-2-0"}, "start_unix": since + 1}, {"amplitudes": amps}),
            ],
        )
        got = src.collect(80, "2-2-0", since, min_events=100, max_spills=5, timeout_s=2.5)
        assert got.size >= 100 and np.all(got == 2500.0)
    finally:
        src.close()


def test_missed_messages_are_counted_per_subscribed_topic():
    """The DAQ's real publisher interleaves every topic; hv-tune subscribes to two of them and counts
    only their gaps (it used to count every message of the other topics as missed)."""
    from online.publisher import Publisher as DAQPublisher

    daq = DAQPublisher("tcp://127.0.0.1:0", run=3)
    src = StreamAmplitudes(daq.endpoint)
    try:
        deadline = time.monotonic() + 10
        while src.seq.received == 0 and time.monotonic() < deadline:  # the subscription is up
            daq.publish("status", meta={"state": "IDLE", "ready": False})
            src._next(0.05)
        assert src.seq.received > 0
        amps = np.zeros((4, 108), np.float32)
        for _ in range(20):
            daq.publish("calo", meta={"events": 0})
            daq.publish("log", meta={"level": "INFO", "text": "x"})
            daq.publish("amplitudes", {"amplitudes": amps}, {"table": {"cell": "A"}, "start_unix": 1.0})
            daq.publish("status", meta={"state": "RECORDED"})
        daq.sequence.take("amplitudes")  # one amplitudes message lost on the way
        daq.publish("amplitudes", {"amplitudes": amps}, {"table": {"cell": "A"}, "start_unix": 1.0})
        got = 0
        while got < 21:
            msg = src._next(5.0)
            assert msg is not None, "stream went quiet"
            got += bool(msg) and msg.topic == "amplitudes"
        assert src.seq.missed_by_topic() == {"status": 0, "amplitudes": 1}
        assert src.seq.missed == 1 and src.malformed == 0
    finally:
        src.close()
        daq.close()
