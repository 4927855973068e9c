"""The beam feed: simulated spills over ZeroMQ PUSH/PULL from the beam simulation to the emulator.

Sockets: the emulator BINDS a PULL socket at its feed endpoint (:class:`FeedReceiver`, ``bind=True`` by
default); the simulation CONNECTS a PUSH socket to it (:class:`FeedSender`, ``bind=False`` by default).
PUSH/PULL is lossless (a full queue blocks the sender, it never drops; docs/stack.md).

Messages (detector.framing, docs/protocols.md section 4.1):

- topic ``spill``: array ``truth`` (N,) detector.records.TRUTH_DTYPE sorted by time_ns; meta ``spill``
  (int), ``start_unix`` (float), ``length_s`` (float), ``seed`` (int), ``n_particles`` (int); the header's
  ``spill`` repeats the spill number;
- topic ``end``: the feed ends (no arrays; meta ``spills_sent``).

Timing: :meth:`FeedSender.run` sends each spill at the start of its flat top, on the SPS cycle: a spill,
then ``spill.supercycle_s`` later the next one (the emulator treats a spill as in progress for
``length_s`` after it arrives, so its ``SPIL:STAT?`` shows SPILL, then GAP). The next spill is simulated
during the gap. ``realtime=False`` sends back to back (tests, offline production).

CLI: ``python -m sim_frontend.feed --config FILE --endpoint tcp://127.0.0.1:PORT [--spills N]
[--particles N] [--fast] [--replay RUN_DIR]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import pathlib
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import zmq

from detector import framing
from detector.records import TRUTH_DTYPE
from detector.settings import Config
from sim_frontend.beam import BeamSpill, generate_spill, mix64_py

log = logging.getLogger("sim_frontend.feed")

TOPIC_SPILL = "spill"
TOPIC_END = "end"
SNDHWM = 4  #: spills queued in the sender before send blocks (each may be ~285 MB)


#: bounds of the numbers in a spill message's meta (inclusive): spill id (the crate numbers below 2^31),
#: start (unix s, 1970..2286), flat-top length (s; the configuration allows 0.01..60), seed (uint64)
META_BOUNDS: dict[str, tuple[float, float]] = {
    "spill": (0, 2**31 - 1),
    "start_unix": (0.0, 1e10),
    "length_s": (0.0, 60.0),
    "seed": (0, 2**64 - 1),
}


class FeedError(RuntimeError):
    """The feed could not send (peer gone, send timeout)."""


# ------------------------------------------------------------------------------------ encoding
def spill_frames(spill: BeamSpill, seq: int) -> list[Any]:
    """Frames of one ``spill`` message (zero-copy on the truth array)."""
    truth = np.ascontiguousarray(spill.truth)
    if truth.dtype != TRUTH_DTYPE:
        raise ValueError(f"truth must have detector.records.TRUTH_DTYPE, got {truth.dtype}")
    meta = {
        "spill": int(spill.spill),
        "start_unix": float(spill.start_unix),
        "length_s": float(spill.length_s),
        "seed": int(spill.seed),
        "n_particles": int(truth.shape[0]),
    }
    return framing.encode(TOPIC_SPILL, seq, {"truth": truth}, meta=meta, spill=int(spill.spill))


def spill_from_message(msg: framing.Message, copy: bool = True) -> BeamSpill:
    """A :class:`BeamSpill` from a decoded ``spill`` message; FramingError if its content is wrong.
    ``copy=True`` (default) returns a writable truth array independent of the received frames."""
    if msg.topic != TOPIC_SPILL:
        raise framing.FramingError(f"expected topic {TOPIC_SPILL!r}, got {msg.topic!r}")
    if set(msg.arrays) != {"truth"}:
        raise framing.FramingError(f"a spill message carries exactly the array 'truth'; got {sorted(msg.arrays)}")
    truth = msg.arrays["truth"]
    if truth.dtype != TRUTH_DTYPE or truth.ndim != 1:
        raise framing.FramingError(f"truth must be 1-D detector.records.TRUTH_DTYPE; got {truth.dtype} {truth.shape}")
    meta = msg.meta
    for key, types in (("spill", (int,)), ("start_unix", (int, float)), ("length_s", (int, float)), ("seed", (int,))):
        v = meta.get(key)
        if not isinstance(v, types) or isinstance(v, bool):
            raise framing.FramingError(f"spill message meta {key!r} = {str(v)[:40]!r} is missing or has the wrong type")
        lo, hi = META_BOUNDS[key]
        if not (math.isfinite(v) and lo <= v <= hi):  # NaN and +/-Infinity fail here too
            raise framing.FramingError(f"spill message meta {key!r} = {v!r} is outside [{lo:g}, {hi:g}]")
    if not meta["length_s"] > 0:
        raise framing.FramingError(f"spill message length_s = {meta['length_s']!r} must be > 0")
    n_meta = meta.get("n_particles", truth.shape[0])
    if not isinstance(n_meta, int) or isinstance(n_meta, bool) or n_meta != truth.shape[0]:
        raise framing.FramingError(
            f"meta n_particles = {meta.get('n_particles')} but truth has {truth.shape[0]} records"
        )
    t = truth["time_ns"]
    if t.size > 1 and not np.all(t[1:] >= t[:-1]):
        raise framing.FramingError("truth is not sorted by time_ns")
    return BeamSpill(
        spill=int(meta["spill"]),
        start_unix=float(meta["start_unix"]),
        length_s=float(meta["length_s"]),
        truth=truth.copy() if copy else truth,
        seed=int(meta["seed"]),
    )


# ------------------------------------------------------------------------------------ sender
class FeedSender:
    """PUSH side of the beam feed. CONNECTS to ``endpoint`` by default (``bind=True`` to bind instead).

    ``send_timeout_s``: how long a send may block while the receiver is absent or its queue is full
    (FeedError afterwards; None = block forever)."""

    def __init__(
        self,
        cfg: Config,
        endpoint: str,
        bind: bool = False,
        send_timeout_s: float | None = 30.0,
        context: zmq.Context | None = None,
    ):
        self.cfg = cfg
        self.endpoint = endpoint
        self._own_ctx = context is None
        self.ctx = context or zmq.Context()
        self.sock = self.ctx.socket(zmq.PUSH)
        self.sock.setsockopt(zmq.SNDHWM, SNDHWM)
        self.sock.setsockopt(zmq.LINGER, 5000)
        if send_timeout_s is not None:
            self.sock.setsockopt(zmq.SNDTIMEO, int(send_timeout_s * 1000))
        if bind:
            self.sock.bind(endpoint)
            self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        else:
            self.sock.connect(endpoint)
        self.seq = 0
        self.spills_sent = 0

    def _send(self, frames: list[Any]) -> None:
        try:
            self.sock.send_multipart(frames, copy=False)
        except zmq.Again:
            raise FeedError(f"feed send to {self.endpoint} timed out (no receiver, or its queue is full)") from None
        self.seq += 1

    def send_spill(self, spill: BeamSpill) -> None:
        """Send one spill now (one ``spill`` message)."""
        self._send(spill_frames(spill, self.seq))
        self.spills_sent += 1
        log.info("sent spill %d (%d particles, seq %d)", spill.spill, spill.n, self.seq - 1)

    def send_end(self) -> None:
        """Send the ``end`` message."""
        self._send(framing.encode(TOPIC_END, self.seq, meta={"spills_sent": self.spills_sent}))

    def run(
        self,
        n_spills: int | None = None,
        n_particles: int | None = None,
        realtime: bool = True,
        first_spill: int = 1,
        stop: Any = None,
        send_end: bool = True,
        intensity: Callable[[], int | None] | None = None,
    ) -> int:
        """Simulate and send ``n_spills`` spills (None: ``spill.count``, 0 = until ``stop`` is set).
        ``realtime``: one spill per ``spill.supercycle_s``, each sent at the start of its flat top;
        else back to back. ``stop``: an object with ``is_set()`` (threading.Event). ``intensity()``, asked
        before each spill, may give its particle count (None: ``n_particles``; the emulator's calibration
        beam). Returns spills sent."""
        n_total = self.cfg.spill.count if n_spills is None else int(n_spills)
        period = float(self.cfg.spill.supercycle_s)
        k = 0
        next_start = time.time()
        while n_total == 0 or k < n_total:
            if stop is not None and stop.is_set():
                break
            spill_no = first_spill + k
            start = max(next_start, time.time()) if realtime else time.time()
            n_now = intensity() if intensity is not None else None
            sp = generate_spill(
                self.cfg, spill_no, n_particles=n_particles if n_now is None else n_now, start_unix=start
            )
            if realtime:
                if not _sleep_until(start, stop):
                    break
                sp.start_unix = time.time()
            self.send_spill(sp)
            k += 1
            next_start = sp.start_unix + period
        if send_end:
            self.send_end()
        return k

    def replay(
        self, run_dir: str | pathlib.Path, realtime: bool = False, stop: Any = None, send_end: bool = True
    ) -> int:
        """Send the truth of a recorded run (detector.spillfile, files with a ``/truth`` dataset) as spills,
        in spill order. A recorded spill holds the truth of its recorded events only, so the replayed spill
        contains those particles (their arrival times kept); the seed is derived from the run and spill
        numbers. Spill files without truth are skipped with a warning. Returns spills sent."""
        from detector import spillfile

        period = float(self.cfg.spill.supercycle_s)
        sent = 0
        next_start = time.time()
        for path in spillfile.list_spills(run_dir):
            data = spillfile.read_spill(path, waveforms=False)
            if data.truth is None:
                log.warning("%s has no truth; skipped", path)
                continue
            truth = np.sort(np.asarray(data.truth, dtype=TRUTH_DTYPE), order="time_ns")
            run = int(data.attrs.get("run", 0))
            spill_no = int(data.attrs.get("spill", sent + 1))
            if realtime and not _sleep_until(next_start, stop):
                break
            if stop is not None and stop.is_set():
                break
            sp = BeamSpill(
                spill=spill_no,
                start_unix=time.time(),
                length_s=float(data.attrs.get("length_s", self.cfg.spill.length_s)),
                truth=truth,
                seed=mix64_py((run << 32) ^ spill_no) & ((1 << 63) - 1),
            )
            self.send_spill(sp)
            sent += 1
            next_start = sp.start_unix + period
        if send_end:
            self.send_end()
        return sent

    def close(self) -> None:
        self.sock.close()
        if self._own_ctx:
            self.ctx.term()

    def __enter__(self) -> FeedSender:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _sleep_until(t: float, stop: Any) -> bool:
    """Sleep until unix time ``t``; False if ``stop`` was set meanwhile."""
    while True:
        dt = t - time.time()
        if stop is not None and stop.is_set():
            return False
        if dt <= 0:
            return True
        time.sleep(min(dt, 0.1))


# ------------------------------------------------------------------------------------ receiver
class FeedReceiver:
    """PULL side of the beam feed. BINDS ``endpoint`` by default (the emulator); ``tcp://127.0.0.1:0``
    picks a free port, see :attr:`endpoint`.

    :meth:`recv` returns a :class:`BeamSpill`, or None on timeout or at the ``end`` message (then
    :attr:`ended` is True). Malformed messages are logged and counted in :attr:`malformed` (the last reason
    in :attr:`last_error`), never raised; gaps in the sender's sequence numbers are counted in
    :attr:`seq` (detector.framing.SeqTracker)."""

    def __init__(self, endpoint: str, bind: bool = True, context: zmq.Context | None = None, rcvhwm: int = 4):
        self._own_ctx = context is None
        self.ctx = context or zmq.Context()
        self.sock = self.ctx.socket(zmq.PULL)
        self.sock.setsockopt(zmq.RCVHWM, rcvhwm)
        self.sock.setsockopt(zmq.LINGER, 0)
        if bind:
            self.sock.bind(endpoint)
            self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        else:
            self.sock.connect(endpoint)
            self.endpoint = endpoint
        self.poller = zmq.Poller()
        self.poller.register(self.sock, zmq.POLLIN)
        self.seq = framing.SeqTracker()
        self.received = 0
        self.malformed = 0
        self.last_error: str | None = None
        self.ended = False
        self.last_receive_unix: float | None = None

    def recv(self, timeout_s: float | None = 1.0) -> BeamSpill | None:
        """Wait up to ``timeout_s`` seconds (None: forever) for the next spill. Returns None on timeout or
        at ``end``; malformed messages are skipped (counted) while the time remains."""
        deadline = None if timeout_s is None else time.monotonic() + max(0.0, timeout_s)
        while True:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            events = dict(self.poller.poll(None if wait is None else int(wait * 1000)))
            if self.sock not in events:
                return None
            frames = self.sock.recv_multipart(copy=False)
            self.last_receive_unix = time.time()
            try:
                msg = framing.decode(frames)
                self.seq.update(msg.seq)
                if msg.topic == TOPIC_END:
                    self.ended = True
                    return None
                spill = spill_from_message(msg)
            except framing.FramingError as exc:
                self.malformed += 1
                self.last_error = str(exc)
                log.warning("malformed feed message (%d so far): %s", self.malformed, exc)
                if deadline is not None and time.monotonic() >= deadline:
                    return None
                continue
            self.received += 1
            self.ended = False
            return spill

    def __iter__(self) -> Iterable[BeamSpill]:
        """Spills until ``end`` (blocking)."""
        while True:
            sp = self.recv(timeout_s=None)
            if sp is None:
                if self.ended:
                    return
                continue
            yield sp

    def stats(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "malformed": self.malformed,
            "missed": self.seq.missed,
            "ended": self.ended,
            "last_error": self.last_error,
        }

    def close(self) -> None:
        self.sock.close()
        if self._own_ctx:
            self.ctx.term()

    def __enter__(self) -> FeedReceiver:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ------------------------------------------------------------------------------------ CLI
def main(argv: list[str] | None = None) -> int:
    from detector.config import ConfigError, load_config

    ap = argparse.ArgumentParser(
        prog="python -m sim_frontend.feed",
        description="Run the beam simulation as its own process and push spills to "
        "the emulator's feed endpoint (PUSH, connects).",
    )
    ap.add_argument("--config", default=None, help="TOML config (default: built-in defaults)")
    ap.add_argument("--endpoint", required=True, help="feed endpoint of the emulator, e.g. tcp://127.0.0.1:5560")
    ap.add_argument("--spills", type=int, default=None, help="spills to send (default spill.count; 0 = forever)")
    ap.add_argument(
        "--particles", type=int, default=None, help="particles per spill (default beam.particles_per_spill)"
    )
    ap.add_argument("--first-spill", type=int, default=1)
    ap.add_argument("--fast", action="store_true", help="send back to back instead of on the SPS cycle")
    ap.add_argument("--replay", default=None, help="replay the truth of a recorded run directory instead")
    ap.add_argument("--send-timeout", type=float, default=60.0, help="s a send may block (no receiver)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        with FeedSender(cfg, args.endpoint, send_timeout_s=args.send_timeout) as sender:
            if args.replay:
                n = sender.replay(args.replay, realtime=not args.fast)
            else:
                n = sender.run(
                    args.spills, n_particles=args.particles, realtime=not args.fast, first_spill=args.first_spill
                )
    except FeedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print(json.dumps({"spills_sent": n, "endpoint": args.endpoint}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
