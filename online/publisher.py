"""The DAQ's monitoring publisher: ZeroMQ PUB, lossy by design (docs/protocols.md section 4.2).

- One PUB socket, bound (127.0.0.1 by default; any other host needs ``endpoints.zmq_curve`` and a CURVE
  server key, see :func:`check_bind_address`).
- Topics and their content are the contract of :mod:`detector.monitoring`; an unknown topic is refused.
- One sequence number per topic (:class:`detector.monitoring.TopicSequence`), taken under a lock at the
  moment of sending, so the numbers of a topic on the wire always increase; a message that could not be
  sent still consumes its number, so subscribers (of any subset of topics) see the gap and count it as
  missed for that topic.
- Sends never block: ``SNDHWM`` bounds the queue of every subscriber and every send is ``zmq.NOBLOCK``.
  A PUB socket drops a message for a subscriber whose queue is full without telling the sender (so one
  stalled subscriber never starves the others, and never slows the DAQ); those losses show up as gaps in
  the subscriber's sequence numbers. Messages the socket refused outright (``zmq.Again``, or an error)
  are counted in :attr:`Publisher.dropped`. ``nodrop=True`` (``XPUB_NODROP``) would make every full
  queue visible here as a drop, at the price of starving all subscribers while one is stalled.
- A byte budget bounds what is queued (:class:`ByteBudget`, a token bucket: ``max_bytes_per_s``
  sustained, ``burst_bytes`` at once). A message the budget cannot take is not handed to ZeroMQ: it is
  dropped here and counted (:attr:`Publisher.dropped`, ``dropped_bytes``, ``dropped_by_topic``; the DAQ's
  ``status`` reports it as ``monitor_dropped``) and its sequence number is gone, so every subscriber counts
  it missed too. ``status`` and ``log`` (small, and what tells an operator what is going on) always go out
  and only consume budget.
- Frames come from :mod:`detector.framing` (JSON header, raw numpy buffers, zero-copy). Arrays handed
  to :meth:`Publisher.publish` must not be modified afterwards (ZeroMQ may still be reading them).
- :class:`Heartbeat` publishes ``status`` every ``daq.heartbeat_s`` from its own thread.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import numpy as np
import zmq

from detector.framing import encode
from detector.monitoring import TOPICS, TopicSequence

log = logging.getLogger("online.publisher")


class PublisherError(RuntimeError):
    """The monitoring endpoint cannot be bound as asked."""


def _is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind_address(address: str, zmq_curve: bool = False) -> None:
    """Refuse a non-loopback TCP bind unless CURVE is enabled (binding beyond loopback must be asked for
    explicitly and then uses CURVE keys). ``ipc://`` and ``inproc://`` are local."""
    u = urllib.parse.urlsplit(address)
    if u.scheme in ("ipc", "inproc"):
        return
    if u.scheme != "tcp" or not u.netloc:
        raise PublisherError(f"monitor address {address!r} is not tcp://host:port, ipc:// or inproc://")
    host = u.netloc.rsplit(":", 1)[0]
    if not _is_loopback(host) and not zmq_curve:
        raise PublisherError(
            f"monitor address {address!r} binds beyond loopback: set endpoints.zmq_curve = true "
            "and give a CURVE server key"
        )


DEFAULT_MAX_BYTES_PER_S = 200e6  #: sustained monitoring output the DAQ allows itself (bytes/s)
DEFAULT_BURST_BYTES = 1 << 30  #: bytes that may go out at once (a spill's messages) before the rate limits
ALWAYS_SENT = frozenset({"status", "log"})


class ByteBudget:
    """Token bucket of bytes: refilled at ``rate`` bytes/s up to ``burst`` bytes. Not thread-safe (the
    publisher calls it under its lock). ``now`` is ``time.monotonic`` unless given (tests)."""

    def __init__(self, rate: float, burst: float, now: Callable[[], float] = time.monotonic) -> None:
        if not rate > 0 or not burst > 0:
            raise ValueError(f"byte budget needs rate > 0 and burst > 0, got {rate!r}, {burst!r}")
        self.rate = float(rate)
        self.burst = float(burst)
        self._now = now
        self._tokens = float(burst)
        self._t = now()

    def _refill(self) -> None:
        t = self._now()
        self._tokens = min(self.burst, self._tokens + (t - self._t) * self.rate)
        self._t = t

    def take(self, nbytes: int, force: bool = False) -> bool:
        """Take ``nbytes`` if the bucket holds them (with ``force`` always, possibly going below zero)."""
        self._refill()
        if force or nbytes <= self._tokens:
            self._tokens -= nbytes
            return True
        return False

    @property
    def available(self) -> float:
        self._refill()
        return self._tokens


class Publisher:
    """PUB socket with per-topic sequence counters, non-blocking sends, a byte budget and drop counting.

    ``curve_secret_key``/``curve_public_key`` (z85 bytes) make it a CURVE server (required off loopback)."""

    def __init__(
        self,
        address: str,
        *,
        run: int | None = None,
        sndhwm: int = 64,
        zmq_curve: bool = False,
        curve_public_key: bytes | None = None,
        curve_secret_key: bytes | None = None,
        context: zmq.Context | None = None,
        nodrop: bool = False,
        max_bytes_per_s: float = DEFAULT_MAX_BYTES_PER_S,
        burst_bytes: float = DEFAULT_BURST_BYTES,
    ) -> None:
        check_bind_address(address, zmq_curve)
        self.address = address
        self.run = run
        self._ctx = context or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.PUB)
        self._sock.setsockopt(zmq.SNDHWM, int(sndhwm))
        self._sock.setsockopt(zmq.LINGER, 0)
        if nodrop:
            self._sock.setsockopt(zmq.XPUB_NODROP, 1)
        if zmq_curve:
            if not (curve_public_key and curve_secret_key):
                self._sock.close(0)
                raise PublisherError("endpoints.zmq_curve is set but no CURVE server key pair was given")
            self._sock.curve_server = True
            self._sock.curve_publickey = curve_public_key
            self._sock.curve_secretkey = curve_secret_key
        try:
            self._sock.bind(address)
        except zmq.ZMQError as exc:
            self._sock.close(0)
            raise PublisherError(f"cannot bind the monitoring publisher to {address}: {exc}") from None
        self.endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._lock = threading.Lock()
        self.sequence = TopicSequence()  #: next sequence number per topic
        self.sent = 0
        self.dropped = 0  #: messages not sent: over the byte budget, or refused by the socket
        self.sent_bytes = 0
        self.dropped_bytes = 0
        self.dropped_by_topic: dict[str, int] = {}
        self.budget = ByteBudget(max_bytes_per_s, burst_bytes)
        self.by_topic: dict[str, int] = {}
        self._closed = False

    def publish(
        self,
        topic: str,
        arrays: dict[str, np.ndarray] | None = None,
        meta: dict[str, Any] | None = None,
        spill: int | None = None,
    ) -> bool:
        """Send one message without blocking; False if it was dropped (high-water mark or closed)."""
        if topic not in TOPICS:
            raise ValueError(f"unknown monitoring topic {topic!r}; topics: {', '.join(TOPICS)}")
        with self._lock:
            if self._closed:
                return False
            seq = self.sequence.take(topic)
            frames = encode(topic, seq, arrays, meta, self.run, spill)
            nbytes = sum(memoryview(f).nbytes for f in frames)
            if not self.budget.take(nbytes, force=topic in ALWAYS_SENT):
                self._drop(topic, nbytes)
                return False
            try:
                self._sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                self._drop(topic, nbytes)
                return False
            except zmq.ZMQError as exc:
                self._drop(topic, nbytes)
                log.warning("monitoring message %s #%d not sent: %s", topic, seq, exc)
                return False
            self.sent += 1
            self.sent_bytes += nbytes
            self.by_topic[topic] = self.by_topic.get(topic, 0) + 1
            return True

    def _drop(self, topic: str, nbytes: int) -> None:
        self.dropped += 1
        self.dropped_bytes += nbytes
        self.dropped_by_topic[topic] = self.dropped_by_topic.get(topic, 0) + 1

    @property
    def seq(self) -> int:
        """Messages numbered so far, all topics together (sent + dropped)."""
        with self._lock:
            return self.sequence.total()

    def log(self, level: str, text: str, spill: int | None = None) -> bool:
        return self.publish("log", meta={"level": level, "text": text}, spill=spill)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "seq": dict(self.sequence.next),
                "sent": self.sent,
                "dropped": self.dropped,
                "sent_bytes": self.sent_bytes,
                "dropped_bytes": self.dropped_bytes,
                "dropped_by_topic": dict(self.dropped_by_topic),
                "by_topic": dict(self.by_topic),
            }

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._sock.close(0)

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Heartbeat(threading.Thread):
    """Publishes ``status`` (from ``status()``, a dict of meta) every ``period_s`` until :meth:`stop`."""

    def __init__(
        self, publisher: Publisher, status: Callable[[], tuple[dict[str, Any], int | None]], period_s: float = 1.0
    ) -> None:
        super().__init__(name="daq-heartbeat", daemon=True)
        self.publisher = publisher
        self.status = status
        self.period_s = float(period_s)
        self._stop_evt = threading.Event()
        self.beats = 0

    def run(self) -> None:
        next_t = time.monotonic()
        while not self._stop_evt.is_set():
            try:
                meta, spill = self.status()
                self.publisher.publish("status", meta=meta, spill=spill)
                self.beats += 1
            except Exception:  # never let the heartbeat die silently: log and go on
                log.exception("heartbeat failed")
            next_t += self.period_s
            self._stop_evt.wait(max(0.0, next_t - time.monotonic()))

    def stop(self) -> None:
        self._stop_evt.set()
        if self.is_alive():
            self.join(timeout=5)
