"""The monitoring publisher (online/publisher.py): real ZeroMQ sockets."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import zmq

from detector.framing import SeqTracker, recv_message
from detector.monitoring import TopicSeqTracker
from online.publisher import Heartbeat, Publisher, PublisherError, check_bind_address


def _sub(endpoint: str, rcvhwm: int = 1000) -> zmq.Socket:
    s = zmq.Context.instance().socket(zmq.SUB)
    s.setsockopt(zmq.RCVHWM, rcvhwm)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.SUBSCRIBE, b"")
    s.connect(endpoint)
    return s


JOIN_DEADLINE_S = 60.0


def _join(pub: Publisher, sub: zmq.Socket, topic: str = "log") -> int:
    """Handshake instead of a slow-joiner sleep: publish ``topic`` probes until ``sub`` receives one, then a
    marker, and read up to the marker (one connection keeps order), so nothing of the handshake is left
    unread. Returns how many messages of ``topic`` the handshake numbered."""
    deadline = time.monotonic() + JOIN_DEADLINE_S
    poller = zmq.Poller()
    poller.register(sub, zmq.POLLIN)
    meta = {"state": "IDLE"} if topic == "status" else {"level": "INFO", "text": "probe"}
    while True:
        pub.publish(topic, meta=meta)
        if poller.poll(50):
            break
        assert time.monotonic() < deadline, "the subscriber never joined"
    pub.publish(topic, meta={**meta, "marker": True})
    sub.setsockopt(zmq.RCVTIMEO, int(JOIN_DEADLINE_S * 1000))
    while not recv_message(sub).meta.get("marker"):
        pass
    return int(pub.stats()["seq"][topic])


def test_topics_sequence_and_zero_copy_arrays():
    pub = Publisher("tcp://127.0.0.1:0", run=5)
    sub = _sub(pub.endpoint)
    n_log = _join(pub, sub)
    a = np.arange(72, dtype=np.float64).reshape(2, 6, 6)
    assert pub.publish("calo", arrays={"ecal_energy": a}, meta={"events": 3}, spill=2)
    assert pub.publish("status", meta={"state": "IDLE"})
    with pytest.raises(ValueError, match="unknown monitoring topic"):
        pub.publish("nonsense")
    m1, m2 = recv_message(sub), recv_message(sub)
    assert (m1.topic, m1.seq, m1.run, m1.spill, m1.meta["events"]) == ("calo", 0, 5, 2, 3)
    assert np.array_equal(m1.arrays["ecal_energy"], a)
    assert (m2.topic, m2.seq) == ("status", 0)  # sequence numbers count per topic (log has n_log)
    assert pub.stats()["sent"] == n_log + 2 and pub.dropped == 0 and pub.stats()["seq"]["log"] == n_log
    sub.close()
    pub.close()
    assert not pub.publish("status", meta={})


@pytest.mark.parametrize("nodrop", [False, True])
def test_slow_subscriber_never_blocks_and_losses_are_counted(nodrop):
    pub = Publisher("tcp://127.0.0.1:0", sndhwm=4, nodrop=nodrop)
    sub = _sub(pub.endpoint, rcvhwm=4)  # connected, after the handshake never reads
    n_log = _join(pub, sub)
    big = np.zeros(1 << 20, np.int16)  # 2 MiB per message
    publishing = threading.Thread(
        target=lambda: [pub.publish("waveforms", arrays={"waveforms": big}) for _ in range(300)], daemon=True
    )
    publishing.start()
    publishing.join(JOIN_DEADLINE_S)
    assert not publishing.is_alive(), "a slow subscriber blocked the publisher"
    assert pub.stats()["seq"]["waveforms"] == 300 and pub.sent + pub.dropped == 300 + n_log
    assert (pub.dropped > 0) == nodrop  # plain PUB drops per subscriber, silently
    sub.setsockopt(zmq.RCVTIMEO, 500)
    tr = SeqTracker()
    try:
        while True:
            tr.update(recv_message(sub).seq)
    except zmq.Again:
        pass
    assert tr.received < 300
    if nodrop:
        assert tr.received + pub.dropped == 300  # nothing lost silently
    else:
        # the subscriber sees the losses as gaps in the sequence: those inside the burst at once, those at its
        # end (all of them, when the burst outran zmq's I/O threads) with the next message that reaches it
        poller = zmq.Poller()
        poller.register(sub, zmq.POLLIN)
        deadline = time.monotonic() + JOIN_DEADLINE_S
        while True:
            pub.publish("waveforms", arrays={"waveforms": big[:8]})
            if poller.poll(50):
                break
            assert time.monotonic() < deadline, "no message reached the subscriber after the burst"
        tr.update(recv_message(sub).seq)
        assert tr.missed > 0
    sub.close()
    pub.close()


def test_a_subscriber_of_some_topics_counts_only_their_gaps():
    """Per-topic sequence numbers: a subscriber of ``status`` alone sees 0, 1, 2, ... although other
    topics are published in between, and a message the publisher could not send shows as a gap of its
    own topic only."""
    pub = Publisher("tcp://127.0.0.1:0")
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"status")
    sub.connect(pub.endpoint)
    base = _join(pub, sub, "status")  # status messages 0 .. base - 1 were the handshake
    for i in range(5):
        assert pub.publish("log", meta={"level": "INFO", "text": f"line {i}"})
        assert pub.publish("status", meta={"state": "IDLE"})
    pub.sequence.take("status")  # one status message numbered but never sent
    assert pub.publish("status", meta={"state": "IDLE"})
    tr = TopicSeqTracker()
    tr.update("status", base - 1)  # the marker
    seqs = []
    for _ in range(6):
        m = recv_message(sub)
        seqs.append(m.seq - base)
        tr.update(m.topic, m.seq)
    assert seqs == [0, 1, 2, 3, 4, 6]
    assert tr.missed_by_topic() == {"status": 1} and tr.received == 7
    assert pub.stats()["seq"] == {"log": 5, "status": base + 7} and pub.seq == base + 12
    sub.close()
    pub.close()


def test_heartbeat_publishes_status_periodically():
    pub = Publisher("tcp://127.0.0.1:0", run=1)
    sub = _sub(pub.endpoint)
    _join(pub, sub)
    hb = Heartbeat(pub, lambda: ({"state": "IDLE", "run": 1}, None), period_s=0.05)
    hb.start()
    seqs = []
    try:
        while len(seqs) < 4:  # RCVTIMEO of the handshake: a generous deadline
            m = recv_message(sub)
            assert m.topic == "status" and m.meta["state"] == "IDLE"
            seqs.append(m.seq)
    finally:
        hb.stop()
    assert seqs == list(range(seqs[0], seqs[0] + 4))  # periodic, numbered per topic, none missed
    sub.close()
    pub.close()


def test_binding_beyond_loopback_needs_curve():
    check_bind_address("tcp://127.0.0.1:5556")
    check_bind_address("tcp://localhost:5556")
    check_bind_address("ipc:///tmp/x")
    with pytest.raises(PublisherError, match="beyond loopback"):
        check_bind_address("tcp://0.0.0.0:5556")
    with pytest.raises(PublisherError, match="beyond loopback"):
        Publisher("tcp://10.1.2.3:5556")
    with pytest.raises(PublisherError, match="no CURVE server key"):
        Publisher("tcp://127.0.0.1:0", zmq_curve=True)
    with pytest.raises(PublisherError, match="not tcp"):
        check_bind_address("udp://127.0.0.1:1")


def test_curve_publisher_talks_to_a_curve_subscriber():
    spub, ssec = zmq.curve_keypair()
    cpub, csec = zmq.curve_keypair()
    pub = Publisher("tcp://127.0.0.1:0", zmq_curve=True, curve_public_key=spub, curve_secret_key=ssec)
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.curve_serverkey, sub.curve_publickey, sub.curve_secretkey = spub, cpub, csec
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.LINGER, 0)
    sub.connect(pub.endpoint)
    _join(pub, sub)
    pub.publish("log", meta={"level": "INFO", "text": "hello"})
    assert recv_message(sub).meta["text"] == "hello"
    sub.close()
    pub.close()
