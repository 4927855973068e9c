"""ZeroMQ framing: round trip over real sockets, zero-copy decode, malformed messages rejected."""

import json

import numpy as np
import pytest
import zmq

from detector import framing as fr
from detector.records import TRUTH_DTYPE


@pytest.fixture
def push_pull():
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    push = ctx.socket(zmq.PUSH)
    push.connect(f"tcp://127.0.0.1:{port}")
    pull.setsockopt(zmq.RCVTIMEO, 5000)
    yield push, pull
    push.close(0), pull.close(0)
    ctx.term()


def test_round_trip_over_tcp(push_pull):
    push, pull = push_pull
    wf = np.arange(3 * 121 * 32, dtype=np.int16).reshape(3, 121, 32)
    truth = np.zeros(3, TRUTH_DTYPE)
    truth["e_beam"] = [100.0, 99.0, 98.0]
    fr.send_message(push, "spill", 7, {"wf": wf, "truth": truth, "empty": np.zeros((0, 4))}, {"a": 1}, run=2, spill=5)
    m = fr.recv_message(pull)
    assert (m.topic, m.seq, m.run, m.spill, m.meta) == ("spill", 7, 2, 5, {"a": 1})
    np.testing.assert_array_equal(m.arrays["wf"], wf)
    assert m.arrays["truth"].dtype == TRUTH_DTYPE and list(m.arrays["truth"]["e_beam"]) == [100.0, 99.0, 98.0]
    assert m.arrays["empty"].shape == (0, 4)
    assert not m.arrays["wf"].flags.owndata  # a view on the received frame, not a copy


def test_encode_is_zero_copy():
    a = np.arange(1000, dtype=np.float64)
    frames = fr.encode("x", 0, {"a": a})
    assert isinstance(frames[2], memoryview) and np.shares_memory(np.frombuffer(frames[2], np.float64), a)


def good_frames():
    return fr.encode("calo", 3, {"a": np.arange(6, dtype="<f8").reshape(2, 3)}, {"k": 1})


def mutate_header(frames, **changes):
    h = json.loads(bytes(frames[1]))
    h.update(changes)
    return [frames[0], json.dumps(h).encode(), *frames[2:]]


@pytest.mark.parametrize(
    "frames, reason",
    [
        ([b"calo"], "at least 2 frames"),
        ([b"calo", b"{not json"], "not UTF-8 JSON"),
        ([b"calo", b"[1,2]"], "not a JSON object"),
        ([b"\xff\xfe", b"{}"], "not ASCII"),
    ],
)
def test_malformed_frames_are_rejected(frames, reason):
    with pytest.raises(fr.FramingError, match=reason):
        fr.decode(frames)


@pytest.mark.parametrize(
    "changes, reason",
    [
        ({"schema": 99}, "schema version"),
        ({"topic": "other"}, "does not match"),
        ({"seq": -1}, "sequence number"),
        ({"seq": "3"}, "sequence number"),
        ({"arrays": []}, "announces 0 arrays but 1"),
        ({"arrays": [{"name": "a", "dtype": "<f8", "shape": [4, 3]}]}, "needs 96"),
        ({"arrays": [{"name": "a", "dtype": "O", "shape": [6]}]}, "not allowed"),
        ({"arrays": [{"name": "a", "dtype": "<f8", "shape": [-6]}]}, "bad shape"),
        ({"arrays": [{"name": "a", "dtype": "nonsense", "shape": [6]}]}, "bad dtype"),
        ({"meta": [1]}, "meta is not"),
    ],
)
def test_mismatched_headers_are_rejected(changes, reason):
    with pytest.raises(fr.FramingError, match=reason):
        fr.decode(mutate_header(good_frames(), **changes))


def test_receiver_survives_garbage_between_good_messages(push_pull):
    push, pull = push_pull
    push.send_multipart([b"x"])
    push.send_multipart([b"calo", b"\x00\x01garbage", b"123"])
    fr.send_message(push, "calo", 1, {"a": np.ones(3)})
    errors, got = 0, []
    for _ in range(3):
        try:
            got.append(fr.recv_message(pull))
        except fr.FramingError:
            errors += 1
    assert errors == 2 and len(got) == 1 and got[0].arrays["a"].sum() == 3


def test_unserialisable_header_and_bad_topic_raise():
    with pytest.raises(fr.FramingError, match="JSON-serialisable"):
        fr.encode("x", 0, meta={"v": float("nan")})
    with pytest.raises(fr.FramingError, match="topic"):
        fr.encode("", 0)


def test_sequence_tracker_counts_missed_and_restarts():
    t = fr.SeqTracker()
    for s in (0, 1, 2, 5, 6, 10):
        t.update(s)
    assert t.missed == 2 + 3 and t.received == 6
    t.update(0)
    assert t.restarts == 1 and t.missed == 5
