"""Cell amplitudes from the DAQ's monitoring stream (ZeroMQ SUB, topic ``amplitudes``,
docs/protocols.md 4.2): the measurement input of ``hv-tune``.

Only spills that started after the HV settled (``meta.start_unix > since``) and with the table on the
wanted cell (``meta.table.cell``) count. The stream is lossy by design; missed messages are counted per
topic from the per-topic sequence numbers (:class:`detector.monitoring.TopicSeqTracker`: only the two
subscribed topics count) and malformed ones are counted and skipped, never fatal.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import numpy as np
import zmq

from detector.framing import FramingError, Message, recv_message
from detector.monitoring import TopicSeqTracker

from .campaign import BeamLossError

log = logging.getLogger(__name__)


def _finite(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _meta_problem(msg: Message) -> str:
    """Why the meta of a ``status`` / ``amplitudes`` message cannot be used ("" if it can): the fields this
    reader uses must have their types (``ready``: bool; ``state``: str; ``start_unix``: a finite number, unix
    s; ``table``: an object whose ``cell``, if given, is a str)."""
    meta = msg.meta
    if msg.topic == "status":
        if "ready" in meta and not isinstance(meta["ready"], bool):
            return f"status ready {str(meta['ready'])[:40]!r} is not true/false"
        if "state" in meta and not isinstance(meta["state"], str):
            return f"status state {str(meta['state'])[:40]!r} is not a string"
        return ""
    if not _finite(meta.get("start_unix")):
        return f"start_unix {str(meta.get('start_unix'))[:40]!r} is not a finite number"
    table = meta.get("table", {})
    if not isinstance(table, dict) or not isinstance(table.get("cell", ""), str):
        return f"table {str(table)[:80]!r} is not an object with a cell name"
    return ""


class StreamAmplitudes:
    """Subscriber to the ``amplitudes`` (and ``status``) topics of a running ``na64-daq``."""

    TOPICS = ("amplitudes", "status")

    def __init__(self, address: str, context: zmq.Context | None = None) -> None:
        self.address = address
        self._ctx = context or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.RCVHWM, 1000)
        self._sock.setsockopt(zmq.LINGER, 0)
        for topic in self.TOPICS:
            self._sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
        self._sock.connect(address)
        self.seq = TopicSeqTracker()
        self.malformed = 0
        self.last_status: dict | None = None

    def close(self) -> None:
        self._sock.close(0)

    @property
    def missed(self) -> dict[str, int]:
        """Messages missed so far, per subscribed topic (sequence gaps on the receiving side)."""
        return self.seq.missed_by_topic()

    def link_report(self) -> str:
        """One line: messages received, missed per topic, malformed."""
        missed = ", ".join(f"{t} {n}" for t, n in sorted(self.missed.items()) if n) or "none"
        return f"{self.seq.received} received, missed {missed}, {self.malformed} malformed"

    def _next(self, timeout_s: float):
        if not self._sock.poll(int(max(timeout_s, 0.0) * 1000)):
            return None
        try:
            msg = recv_message(self._sock)
        except FramingError as exc:
            self.malformed += 1
            log.warning("malformed message on %s: %s", self.address, exc)
            return False
        if msg.topic not in self.TOPICS:  # a SUBSCRIBE prefix also matches longer topic names
            return False
        gap = self.seq.update(msg.topic, msg.seq)
        if gap:
            log.warning("%d %s message(s) missed on %s (sequence gap before %d)", gap, msg.topic, self.address, msg.seq)
        problem = _meta_problem(msg)
        if problem:
            self.malformed += 1
            log.warning("%s message on %s skipped: %s", msg.topic, self.address, problem)
            return False
        if msg.topic == "status":
            self.last_status = msg.meta
        return msg

    def wait_for_daq(self, timeout_s: float) -> dict:
        """Block until the DAQ says it is ready (``status`` with ``ready`` true: kernels compiled, crate
        configured); returns that status meta. BeamLossError on timeout, naming what was last heard."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            msg = self._next(end - time.monotonic())
            if msg and msg.topic == "status" and msg.meta.get("ready"):
                return msg.meta
        heard = f"last status {self.last_status}" if self.last_status else "no heartbeat at all"
        raise BeamLossError(f"the DAQ at {self.address} was not ready within {timeout_s:.0f} s ({heard})")

    def collect(
        self, channel_id: int, cell: str, since_unix: float, min_events: int, max_spills: int, timeout_s: float
    ) -> np.ndarray:
        """Amplitudes (ADC counts, > 0 only) of calorimeter channel ``channel_id`` from spills with the beam
        on ``cell`` that started after ``since_unix``, until ``min_events`` or ``max_spills`` spills.
        BeamLossError if fewer than ``min_events // 5`` events arrive within ``timeout_s`` seconds."""
        return self._gather(
            lambda a: a[:, channel_id][a[:, channel_id] > 0],
            channel_id,
            cell,
            since_unix,
            min_events,
            max_spills,
            timeout_s,
        )

    def collect_events(
        self, channel_ids: np.ndarray, cell: str, since_unix: float, min_events: int, max_spills: int, timeout_s: float
    ) -> np.ndarray:
        """Amplitudes (ADC counts) of the calorimeter channels ``channel_ids``, one row per beam event, from
        spills with the beam on ``cell`` that started after ``since_unix`` (rows without any signal in
        those channels dropped); otherwise as :meth:`collect`."""
        ids = np.asarray(channel_ids, dtype=np.int64)

        def rows(a: np.ndarray) -> np.ndarray:
            sub = np.asarray(a[:, ids], dtype=np.float64)
            return sub[(sub > 0).any(axis=1)]

        return self._gather(rows, int(ids.max()), cell, since_unix, min_events, max_spills, timeout_s)

    def _gather(
        self,
        pick: Callable[[np.ndarray], np.ndarray],
        max_channel: int,
        cell: str,
        since_unix: float,
        min_events: int,
        max_spills: int,
        timeout_s: float,
    ) -> np.ndarray:
        end = time.monotonic() + timeout_s
        parts: list[np.ndarray] = []
        n = spills = 0
        while time.monotonic() < end and n < min_events and spills < max_spills:
            msg = self._next(min(0.5, end - time.monotonic()))
            if not msg or msg.topic != "amplitudes":
                continue
            table = msg.meta.get("table")
            start = msg.meta.get("start_unix")
            if not isinstance(table, dict) or not isinstance(start, (int, float)) or isinstance(start, bool):
                self.malformed += 1
                continue
            if not start > since_unix or table.get("cell") != cell:
                continue
            amps = msg.arrays.get("amplitudes")
            if amps is None or amps.ndim != 2 or amps.shape[1] <= max_channel or amps.dtype.kind not in "iuf":
                self.malformed += 1
                continue
            a = pick(np.asarray(amps, dtype=np.float64))
            parts.append(a)
            n += a.shape[0]
            spills += 1
        if n < max(1, min_events // 5):
            raise BeamLossError(
                f"beam loss: {n} events on cell {cell} in {spills} spill(s) within "
                f"{timeout_s:.0f} s (need {min_events}); DAQ state "
                f"{(self.last_status or {}).get('state', 'unknown')}; stream: {self.link_report()}"
            )
        return np.concatenate(parts) if parts else np.empty(0)
