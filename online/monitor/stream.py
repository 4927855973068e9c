"""Receiving end of the monitoring stream: a thread-safe latest-wins :class:`Inbox` and the ZeroMQ SUB
worker thread :class:`StreamReceiver` that fills it. No Qt in here and no widget is ever touched: the
GUI thread drains the inbox on its repaint timer (EXtra-foam's latest-wins; karabo-bridge's Qt client:
socket in a worker thread, bounded hand-off, inproc control socket for an instant stop).

Why not ``zmq.CONFLATE``: it does not support multipart messages. Instead the worker drains the socket
as fast as it can and the inbox keeps, per topic:

- ``status``, ``hv``, ``waveforms``, ``amplitudes`` (state): only the newest message; a replaced one is
  counted in ``LinkStats.superseded`` (lossy by design, nothing is wrong);
- ``scalers``, ``calo``, ``ecal_hcal``, ``log`` (per-spill increments): a FIFO of at most
  ``max_pending`` per topic; if the GUI falls that far behind the oldest is dropped and counted in
  ``LinkStats.dropped``, which the monitor shows as missed.

The inbox also runs the :class:`~detector.monitoring.TopicSeqTracker` on every message in arrival
order (the publisher numbers each topic in its own sequence), so gaps on the wire show up as ``missed``
(per topic in ``LinkStats.missed_by_topic``), and counts malformed messages
(:class:`~detector.framing.FramingError`): logged and counted, never fatal.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from typing import Any

from detector.framing import FramingError, Message, recv_message
from detector.monitoring import ACCUMULATING, LATEST_WINS, TOPICS, TopicSeqTracker

from .model import LinkStats

log = logging.getLogger("online.monitor.stream")


class Inbox:
    """Bounded, latest-wins hand-off from any producer thread to the GUI thread."""

    def __init__(self, max_pending: int = 256) -> None:
        self.max_pending = int(max_pending)
        self._lock = threading.Lock()
        self._tracker = TopicSeqTracker()
        self._stats = LinkStats()
        self._pending: dict[int, Message] = {}  # arrival index -> message, in arrival order
        self._latest: dict[str, int] = {}  # latest-wins topic -> arrival index
        self._fifo: dict[str, deque[int]] = {t: deque() for t in ACCUMULATING}
        self._counter = itertools.count()

    def put(self, msg: Message, now: float | None = None) -> None:
        """Hand over one decoded message (any thread)."""
        with self._lock:
            st = self._stats
            before = self._tracker.restarts
            self._tracker.update(msg.topic, msg.seq)
            st.received = self._tracker.received
            st.missed = self._tracker.missed
            st.missed_by_topic = self._tracker.missed_by_topic()
            st.restarts = self._tracker.restarts
            st.last_rx = time.time() if now is None else now
            if self._tracker.restarts != before:
                log.info("publisher restarted: sequence number of %s went back to %d", msg.topic, msg.seq)
            topic = msg.topic
            if topic not in TOPICS:
                st.unknown += 1
                return
            idx = next(self._counter)
            if topic in LATEST_WINS:
                old = self._latest.get(topic)
                if old is not None and self._pending.pop(old, None) is not None:
                    st.superseded[topic] = st.superseded.get(topic, 0) + 1
                self._latest[topic] = idx
            else:
                fifo = self._fifo[topic]
                if len(fifo) >= self.max_pending:
                    self._pending.pop(fifo.popleft(), None)
                    st.dropped[topic] = st.dropped.get(topic, 0) + 1
                fifo.append(idx)
            self._pending[idx] = msg

    def put_malformed(self, reason: str) -> None:
        """Count a message that failed framing (any thread)."""
        with self._lock:
            self._stats.malformed += 1
            self._stats.last_malformed = str(reason)[:300]

    def drain(self) -> tuple[list[Message], LinkStats]:
        """Everything pending, in arrival order, and a snapshot of the counters (GUI thread)."""
        with self._lock:
            msgs = list(self._pending.values())
            self._pending.clear()
            self._latest.clear()
            for f in self._fifo.values():
                f.clear()
            return msgs, self._stats.copy()

    def stats(self) -> LinkStats:
        with self._lock:
            return self._stats.copy()

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)


class StreamReceiver:
    """ZeroMQ SUB on ``endpoint`` in a worker thread, feeding an :class:`Inbox`.

    ``start()`` returns at once; ``stop()`` wakes the worker through an inproc PAIR socket and joins it
    (no polling timeout to wait out). The SUB socket subscribes to every topic (sequence numbers run
    per topic, so a partial subscription would count correctly too)."""

    def __init__(self, endpoint: str, inbox: Inbox, rcvhwm: int = 10000, max_burst: int = 5000) -> None:
        import zmq  # local: the model and the inbox do not need ZeroMQ

        self.endpoint = endpoint
        self.inbox = inbox
        self.rcvhwm = int(rcvhwm)
        self.max_burst = int(max_burst)
        self._zmq = zmq
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self._ctrl_addr = f"inproc://na64-monitor-ctrl-{id(self):x}"
        self._ctrl = self._ctx.socket(zmq.PAIR)
        self._ctrl.setsockopt(zmq.LINGER, 0)
        self._ctrl.bind(self._ctrl_addr)
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self.error: str = ""

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, timeout: float = 5.0) -> None:
        if self.running:
            return
        self._ready.clear()
        self._thread = threading.Thread(target=self._run, name="na64-monitor-sub", daemon=True)
        self._thread.start()
        self._ready.wait(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread is None:
            return
        try:
            self._ctrl.send(b"stop", flags=self._zmq.NOBLOCK)
        except self._zmq.ZMQError:
            pass
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("monitor receiver thread did not stop within %.1f s", timeout)
        self._thread = None

    def close(self) -> None:
        self.stop()
        self._ctrl.close(0)

    def _run(self) -> None:
        zmq = self._zmq
        sub = self._ctx.socket(zmq.SUB)
        ctrl = self._ctx.socket(zmq.PAIR)
        try:
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.RCVHWM, self.rcvhwm)
            sub.setsockopt(zmq.SUBSCRIBE, b"")
            ctrl.setsockopt(zmq.LINGER, 0)
            ctrl.connect(self._ctrl_addr)
            try:
                sub.connect(self.endpoint)
            except zmq.ZMQError as exc:
                self.error = f"cannot connect to {self.endpoint}: {exc}"
                log.error("%s", self.error)
                self._ready.set()
                ctrl.recv()  # wait for stop
                return
            poller = zmq.Poller()
            poller.register(sub, zmq.POLLIN)
            poller.register(ctrl, zmq.POLLIN)
            self._ready.set()
            while True:
                events = dict(poller.poll())
                if ctrl in events:
                    ctrl.recv()
                    return
                if sub in events:
                    self._drain_socket(sub)
        except Exception:  # the worker must never die silently
            log.exception("monitor receiver thread failed")
            self.error = "receiver thread failed (see log)"
        finally:
            self._ready.set()
            sub.close(0)
            ctrl.close(0)

    def _drain_socket(self, sub: Any) -> None:
        zmq = self._zmq
        for _ in range(self.max_burst):
            try:
                msg = recv_message(sub, flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            except FramingError as exc:
                log.warning("malformed monitoring message: %s", exc)
                self.inbox.put_malformed(str(exc))
                continue
            self.inbox.put(msg)


class FeederThread:
    """Runs an iterator of message batches (one batch per spill: replay, synthetic data) in a worker
    thread and puts every message into the inbox, waiting ``interval_s`` between batches. ``stop()``
    interrupts the wait at once. ``finished`` turns true when the iterator is exhausted."""

    def __init__(
        self, batches: Any, inbox: Inbox, interval_s: float = 0.5, name: str = "na64-monitor-feed", on_error: Any = None
    ) -> None:
        self.batches = batches
        self.inbox = inbox
        self.interval_s = float(interval_s)
        self.on_error = on_error
        self.finished = False
        self.batches_done = 0
        self.error = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        try:
            for batch in self.batches:
                if self._stop.is_set():
                    return
                for msg in batch:
                    self.inbox.put(msg)
                self.batches_done += 1
                if self._stop.wait(self.interval_s):
                    return
        except Exception as exc:  # a bad file must not kill the GUI; it is shown and logged
            log.exception("feeder %s failed", self._thread.name)
            self.error = f"{type(exc).__name__}: {exc}"
            if self.on_error is not None:
                self.on_error(self.error)
        finally:
            self.finished = True
