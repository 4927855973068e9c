"""Beam feed over real ZeroMQ PUSH/PULL sockets on loopback (sim_frontend.feed)."""

import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import zmq

from detector import framing, spillfile
from detector.channels import N_CHANNELS, N_SAMPLES
from detector.config import load_config
from detector.records import TRUTH_DTYPE
from sim_frontend import beam
from sim_frontend.feed import FeedReceiver, FeedSender, spill_frames

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def cfg():
    return load_config(None).with_overrides({"spill": {"length_s": 0.05, "supercycle_s": 0.4}})


@pytest.fixture
def receiver():
    r = FeedReceiver("tcp://127.0.0.1:0")
    yield r
    r.close()


def test_spills_arrive_intact(cfg, receiver):
    assert receiver.endpoint.startswith("tcp://127.0.0.1:") and not receiver.endpoint.endswith(":0")
    spills = [beam.generate_spill(cfg, k, n_particles=3000) for k in (1, 2)]
    with FeedSender(cfg, receiver.endpoint) as tx:
        for sp in spills:
            tx.send_spill(sp)
        tx.send_end()
        got = [receiver.recv(timeout_s=10) for _ in spills]
        assert receiver.recv(timeout_s=10) is None and receiver.ended
    for a, b in zip(spills, got):
        assert b is not None
        assert (b.spill, b.start_unix, b.length_s, b.seed) == (a.spill, a.start_unix, a.length_s, a.seed)
        assert b.truth.dtype == TRUTH_DTYPE and b.truth.tobytes() == a.truth.tobytes()
        assert b.truth.flags.writeable  # the emulator fills the deposits
    assert receiver.stats() == {"received": 2, "malformed": 0, "missed": 0, "ended": True, "last_error": None}


def test_timeout_returns_none(receiver):
    t = time.monotonic()
    assert receiver.recv(timeout_s=0.2) is None
    # the wait itself is the behaviour: nothing is sent, so recv cannot return before its timeout
    assert time.monotonic() - t >= 0.19 and not receiver.ended
    assert receiver.stats() == {"received": 0, "malformed": 0, "missed": 0, "ended": False, "last_error": None}


def test_malformed_messages_are_counted_and_the_receiver_keeps_working(cfg, receiver):
    ctx = zmq.Context.instance()
    raw = ctx.socket(zmq.PUSH)
    raw.setsockopt(zmq.LINGER, 1000)
    raw.connect(receiver.endpoint)
    try:
        sp = beam.generate_spill(cfg, 3, n_particles=500)
        good = spill_frames(sp, 5)
        unsorted = sp.truth.copy()
        unsorted["time_ns"] = unsorted["time_ns"][::-1]
        bad = [
            [b"spill"],  # too few frames
            [b"spill", b"{not json"],  # bad header
            framing.encode(
                "spill",
                0,
                {"waveforms": np.zeros((2, 3), np.int16)},
                meta={"spill": 1, "start_unix": 0.0, "length_s": 4.8, "seed": 1},
            ),  # wrong array
            framing.encode(
                "spill",
                1,
                {"truth": np.zeros(3, np.float64)},
                meta={"spill": 1, "start_unix": 0.0, "length_s": 4.8, "seed": 1},
            ),  # wrong dtype
            framing.encode(
                "spill", 2, {"truth": unsorted}, meta={"spill": 1, "start_unix": 0.0, "length_s": 4.8, "seed": 1}
            ),  # unsorted
            framing.encode("spill", 3, {"truth": sp.truth}, meta={"spill": "x", "seed": 1}),  # bad meta
            good[:2] + [bytes(good[2])[:-57]],  # truncated payload
        ]
        for frames in bad:
            raw.send_multipart(frames)
        raw.send_multipart(good)
        got = receiver.recv(timeout_s=10)
        assert receiver.malformed == len(bad) and receiver.last_error
        assert got is not None and got.truth.tobytes() == sp.truth.tobytes()
        assert receiver.received == 1
        # nothing else pending: everything was sent before the good message, on the same connection
        assert receiver.recv(timeout_s=0.2) is None and receiver.received == 1
    finally:
        raw.close()


def test_run_follows_the_sps_cycle(cfg, receiver):
    stop = threading.Event()
    with FeedSender(cfg, receiver.endpoint) as tx:
        th = threading.Thread(target=tx.run, kwargs=dict(n_spills=3, n_particles=400, realtime=True, stop=stop))
        th.start()
        got, arrival = [], []
        for _ in range(3):
            sp = receiver.recv(timeout_s=10)
            assert sp is not None
            got.append(sp)
            arrival.append(time.time())
        assert receiver.recv(timeout_s=10) is None and receiver.ended
        th.join(10)
    assert [s.spill for s in got] == [1, 2, 3]
    starts = np.array([s.start_unix for s in got])
    # paced: a spill starts no earlier than one supercycle after the previous one (load can only delay)
    assert np.all(np.diff(starts) >= cfg.spill.supercycle_s - 1e-6), np.diff(starts)
    # sent at the start of its flat top: never received before its own start
    assert np.all(np.array(arrival) >= starts), (arrival, starts)


def test_replay_of_a_recorded_run(cfg, receiver, tmp_path):
    rdir = spillfile.run_dir(tmp_path, 4)
    sp = beam.generate_spill(cfg, 1, n_particles=2000)
    sel = np.array([3, 50, 700, 1999])
    for k in (1, 2):
        content = spillfile.SpillContent(
            run=4,
            spill=k,
            event_id=sel.astype(np.uint32),
            trigger_mask=np.ones(4, np.uint8),
            time_ns=sp.truth["time_ns"][sel],
            waveforms=np.zeros((4, N_CHANNELS, N_SAMPLES), np.int16),
            truth=sp.truth[sel],
            attrs={"length_s": 4.8},
        )
        spillfile.write_spill(rdir, content)
    with FeedSender(cfg, receiver.endpoint) as tx:
        assert tx.replay(rdir) == 2
        a = receiver.recv(timeout_s=10)
        b = receiver.recv(timeout_s=10)
        assert receiver.recv(timeout_s=10) is None and receiver.ended
    assert (a.spill, b.spill) == (1, 2) and a.seed != b.seed
    assert a.truth.tobytes() == sp.truth[sel].tobytes()


def test_cli_process_feeds_spills(receiver):
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sim_frontend.feed",
            "--endpoint",
            receiver.endpoint,
            "--spills",
            "2",
            "--particles",
            "1000",
            "--fast",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["spills_sent"] == 2
    got = [receiver.recv(timeout_s=10) for _ in range(2)]
    assert [g.spill for g in got] == [1, 2] and all(g.n == 1000 for g in got)
    assert receiver.recv(timeout_s=10) is None and receiver.ended
    bad = subprocess.run(
        [sys.executable, "-m", "sim_frontend.feed", "--endpoint", receiver.endpoint, "--config", "/nonexistent.toml"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "cannot read config" in bad.stderr
