"""Bad input over real sockets (issue 15, point 4): a ZeroMQ frame whose shape overflows int64, NaN and
Infinity in a header, a feed spill with ``length_s = Infinity``, meta of the wrong type for hv-tune's reader.
Each bad thing is sent to the real receiver, and the receiver is shown to go on serving: the monitor's
receiver thread, the emulator's spill worker (a subprocess) and hv-tune's stream reader. Plus the
publisher's byte budget: drops counted where they happen and seen as per-topic gaps by the subscriber."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import pyvisa
import zmq

from detector import framing as fr
from detector.monitoring import TopicSeqTracker
from detector.records import TRUTH_DTYPE
from hv_control.stream import StreamAmplitudes
from online.monitor.stream import Inbox, StreamReceiver
from online.publisher import ByteBudget, Publisher

DEADLINE_S = 60.0


def frames_with(header_changes: dict, payload: bytes = b"\0" * 8, topic: str = "calo") -> list[bytes]:
    head = {"schema": fr.SCHEMA_VERSION, "topic": topic, "seq": 0, "time": 1.0, "run": 1, "spill": 1, "meta": {}}
    head["arrays"] = [{"name": "a", "dtype": "<f8", "shape": [1]}]
    head.update(header_changes)
    return [topic.encode(), json.dumps(head).encode(), payload]


BAD_FRAMES = {
    "shape overflows int64": frames_with({"arrays": [{"name": "a", "dtype": "<f8", "shape": [2**62, 2**62, 4]}]}),
    "shape product wraps to 8 bytes": frames_with(
        {"arrays": [{"name": "a", "dtype": "<u1", "shape": [2**32, 2**32, 8]}]}  # int64 product wraps to 0
    ),
    "dimension beyond int64": frames_with({"arrays": [{"name": "a", "dtype": "<f8", "shape": [2**70]}]}),
    "too many dimensions": frames_with({"arrays": [{"name": "a", "dtype": "<f8", "shape": [1] * 40}]}),
    "bool dimension": frames_with({"arrays": [{"name": "a", "dtype": "<f8", "shape": [True]}]}),
    "float dimension": frames_with({"arrays": [{"name": "a", "dtype": "<f8", "shape": [1.0]}]}),
    "empty struct dtype": frames_with({"arrays": [{"name": "a", "dtype": [], "shape": [2**40]}]}, b""),
    "struct dtype with junk": frames_with({"arrays": [{"name": "a", "dtype": [[1, 2, 3, 4, 5]], "shape": [1]}]}),
    "name not a string": frames_with({"arrays": [{"name": ["x"], "dtype": "<f8", "shape": [1]}]}),
    "run not an integer": frames_with({"run": "1"}),
    "payload frame not bytes-like": [b"calo", frames_with({})[1], 12345],
}


@pytest.mark.parametrize("name", list(BAD_FRAMES))
def test_every_decode_failure_is_a_framing_error(name):
    with pytest.raises(fr.FramingError):
        fr.decode(BAD_FRAMES[name])


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_header_numbers_are_refused(constant):
    head = json.dumps({"schema": fr.SCHEMA_VERSION, "topic": "calo", "seq": 0, "arrays": [], "meta": {}})
    head = head[:-1] + f', "time": {constant}}}'
    with pytest.raises(fr.FramingError, match=constant):
        fr.decode([b"calo", head.encode()])


def test_monitor_receiver_thread_survives_every_bad_frame():
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    inbox = Inbox()
    rx = StreamReceiver(f"tcp://127.0.0.1:{port}", inbox)
    rx.start()
    try:
        seq = 0
        deadline = time.monotonic() + DEADLINE_S
        while inbox.stats().received == 0:  # the subscription is up
            assert time.monotonic() < deadline, "the receiver never got a message"
            fr.send_message(pub, "status", seq, meta={"state": "IDLE"})
            seq += 1
            time.sleep(0.02)
        sendable = {k: v for k, v in BAD_FRAMES.items() if k != "payload frame not bytes-like"}
        for frames in sendable.values():
            pub.send_multipart(frames)
        fr.send_message(pub, "calo", 0, {"a": np.ones(3)}, {"events": 3})
        deadline = time.monotonic() + DEADLINE_S
        while inbox.stats().malformed < len(sendable) or not any(m.topic == "calo" for m in inbox.drain()[0]):
            assert time.monotonic() < deadline, f"receiver stats {inbox.stats()}, error {rx.error!r}"
            time.sleep(0.02)
        assert rx.running and not rx.error
        assert inbox.stats().malformed == len(sendable)
    finally:
        rx.close()
        pub.close(0)


def test_hv_tune_reader_skips_bad_meta_and_goes_on():
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    address = f"tcp://127.0.0.1:{pub.bind_to_random_port('tcp://127.0.0.1')}"
    src = StreamAmplitudes(address)
    amps = np.zeros((50, 108), np.float32)
    amps[:, 5] = 2500.0
    bad = [
        ("amplitudes", {"start_unix": "soon", "table": {"cell": "0-0-0"}}, {"amplitudes": amps}),
        ("amplitudes", {"start_unix": 2e9, "table": ["0-0-0"]}, {"amplitudes": amps}),
        ("amplitudes", {"start_unix": 2e9, "table": {"cell": 7}}, {"amplitudes": amps}),
        ("amplitudes", {"start_unix": 2e9, "table": {"cell": "0-0-0"}}, {"amplitudes": amps.astype("<u1")[:, :3]}),
        ("status", {"ready": "yes", "state": "IDLE"}, None),
        ("status", {"ready": True, "state": 3}, None),
    ]
    good = ("amplitudes", {"start_unix": 2e9, "table": {"cell": "0-0-0"}}, {"amplitudes": amps})
    try:
        seq = {"amplitudes": 0, "status": 0}
        deadline = time.monotonic() + DEADLINE_S
        while src.seq.received == 0:
            assert time.monotonic() < deadline
            fr.send_message(pub, "status", seq["status"], meta={"state": "IDLE", "ready": False})
            seq["status"] += 1
            src._next(0.05)
        for _ in range(3):
            for topic, meta, arrays in bad + [good]:
                fr.send_message(pub, topic, seq[topic], arrays, meta)
                seq[topic] += 1
        got = src.collect(5, "0-0-0", 1e9, min_events=150, max_spills=3, timeout_s=DEADLINE_S)
        assert got.size == 150 and np.all(got == 2500.0)
        assert src.malformed >= 3 * 3  # the wrong types of the amplitudes messages, each round
        assert src.seq.missed == 0
    finally:
        src.close()
        pub.close(0)


def _raw_spill_frames(spill: int, length_s: str, n: int = 200) -> list[bytes]:
    truth = np.zeros(n, TRUTH_DTYPE)
    truth["index"] = np.arange(n)
    truth["time_ns"] = np.arange(n) * 1000.0
    truth["e_beam"] = 100.0
    meta = {"spill": spill, "start_unix": time.time(), "length_s": 0.1, "seed": spill, "n_particles": n}
    frames = fr.encode("spill", spill, {"truth": truth}, meta, spill=spill)
    head = frames[1].decode().replace('"length_s":0.1', f'"length_s":{length_s}')
    return [frames[0], head.encode(), bytes(frames[2])]


@pytest.mark.slow
def test_emulator_spill_worker_survives_bad_feed_meta(tmp_path):
    """``length_s = Infinity`` (and 1e300) used to kill the emulator's spill worker silently: now the feed
    refuses the message (counted malformed) and the next good spill completes in the crate."""
    from emulator_fixture import start_emulator

    over = {"spill": {"length_s": 0.1, "supercycle_s": 0.5}}
    with start_emulator(tmp_path, over, ["--external-feed", "--no-pty"]) as h:
        push = zmq.Context.instance().socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 1000)
        push.connect(h.feed)
        try:
            for k, bad in enumerate(("Infinity", "1e300", "-1", '"0.1"', "NaN"), start=1):
                push.send_multipart(_raw_spill_frames(k, bad))
            push.send_multipart(_raw_spill_frames(7, "0.1"))
            # a first spill after an edit of sim_frontend/ compiles the response kernels (minutes on 2 cores)
            h.wait_for(lambda s: s["last_spill"] >= 1, 600, "the good spill to complete")
        finally:
            push.close()
        st = h.state()
        assert st["state"] in ("GAP", "IDLE", "SPILL")
        rm = pyvisa.ResourceManager("@py")
        res = rm.open_resource(h.msadc, read_termination="\n", write_termination="\n", timeout=30000)
        try:
            listed = [int(x) for x in res.query("SPIL:LIST?").split(",") if x]
            assert len(listed) == 1  # only the good spill reached the crate
            res.write(f"SPIL:SEL {listed[0]}")
            assert res.query("PRIM:COUN?") == "200"
        finally:
            res.close()
            rm.close()
        h.check_alive()


# ------------------------------------------------------------------------------------------ drops (point 6)
def test_byte_budget_refills_at_its_rate():
    t = [0.0]
    b = ByteBudget(rate=100.0, burst=1000.0, now=lambda: t[0])
    assert b.take(800) and not b.take(300)  # 200 left
    t[0] = 1.0  # +100
    assert b.take(300) and b.available == 0.0
    assert b.take(50, force=True) and b.available == -50.0
    t[0] = 100.0
    assert b.available == 1000.0  # never above the burst
    with pytest.raises(ValueError):
        ByteBudget(rate=0.0, burst=1.0)


def test_publisher_byte_budget_drops_are_counted_and_seen_as_gaps():
    rate, burst = 1e6, 4 << 20
    pub = Publisher("tcp://127.0.0.1:0", max_bytes_per_s=rate, burst_bytes=burst)
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, 10000)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(pub.endpoint)
    try:
        deadline = time.monotonic() + DEADLINE_S
        while not sub.poll(20):
            assert time.monotonic() < deadline
            pub.publish("status", meta={"state": "IDLE"})
        while sub.poll(100):
            sub.recv_multipart()
        big = np.zeros(1 << 19, np.int16)  # 1 MiB
        t0 = time.monotonic()
        results = [pub.publish("waveforms", arrays={"waveforms": big}) for _ in range(20)]
        elapsed = time.monotonic() - t0
        assert pub.publish("status", meta={"state": "IDLE"})  # status always goes out
        sent = sum(results)
        allowed = (burst + elapsed * rate) / big.nbytes
        assert 3 <= sent <= allowed + 1 and sent < 20
        st = pub.stats()
        assert st["dropped_by_topic"] == {"waveforms": 20 - sent} and pub.dropped == 20 - sent
        assert st["dropped_bytes"] >= (20 - sent) * big.nbytes
        tr = TopicSeqTracker()
        received = 0
        while received < sent:
            assert sub.poll(int(DEADLINE_S * 1000)), "messages within the budget never arrived"
            m = fr.recv_message(sub)
            if m.topic == "waveforms":
                tr.update(m.topic, m.seq)
                received += 1
        # the subscriber sees the dropped ones as gaps of that topic (those after the last received)
        last = tr.topics["waveforms"].last
        assert tr.missed + (19 - last) == 20 - sent
    finally:
        sub.close(0)
        pub.close()
