"""The DAQ's monitoring worker: reconstructs the recorded events of a spill and publishes the monitoring
topics built from them, off the spill loop (lossy: it never holds the loop up)."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from detector.config import Calibration
from detector.gate import in_time_gate
from detector.settings import Config
from detector.spillfile import SpillContent
from detector.tracking import Spectrometer

from .monitor_messages import event_messages
from .publisher import Publisher

log = logging.getLogger("online.daq")


class MonitorWorker(threading.Thread):
    """Reconstructs the recorded events of a spill and publishes ``calo``, ``ecal_hcal``, ``waveforms``,
    (calibration mode) ``amplitudes`` and ``tracker``. Lossy: while it is busy a newer spill replaces a waiting one.

    ``publisher``: where the topics go (``None``: nothing is published); ``gev_per_count``: the calibration
    (GeV per ADC count, per channel); ``sample_waveforms``: waveforms published per spill; ``calibration_mode``:
    publish ``amplitudes`` too; ``release(base)``: gives a spill's event buffer back once it is done with
    (or skipped); ``spectrometer``: the tracker geometry (``tracker`` is published for spills with Micromegas
    strips); ``gate``: each channel's samples of the event's own pulse (:func:`detector.gate.in_time_gate`,
    as offline reconstructs them; None: the whole record)."""

    def __init__(
        self,
        publisher: Publisher | None,
        gev_per_count: np.ndarray,
        *,
        sample_waveforms: int,
        calibration_mode: bool,
        release: Callable[[np.ndarray | None], None],
        spectrometer: Spectrometer | None = None,
        gate: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        super().__init__(name="monitor-worker", daemon=True)
        self.publisher = publisher
        self.gev_per_count = gev_per_count
        self.sample_waveforms = int(sample_waveforms)
        self.calibration_mode = bool(calibration_mode)
        self.release = release
        self.spectrometer = spectrometer
        self.gate = gate
        self._q: queue.Queue[Any] = queue.Queue(maxsize=1)
        self.skipped = 0
        self.done = 0

    @staticmethod
    def geometry(cfg: Config) -> Spectrometer:
        """The tracker geometry of a configuration (the ``spectrometer`` argument)."""
        return Spectrometer.from_config(cfg)

    @staticmethod
    def event_gate(cfg: Config, calibration: Calibration) -> tuple[np.ndarray, np.ndarray]:
        """Each channel's samples of the event's own pulse (the ``gate`` argument): the offline event gate."""
        return in_time_gate(calibration, cfg)

    def submit(self, spill: int, content: SpillContent, info: dict[str, Any], base: np.ndarray | None = None) -> None:
        """Queue a spill for monitoring; a spill still waiting is replaced (and counted as skipped).
        ``base`` (the event buffer) goes back through ``release`` once the spill is done with."""
        item = (spill, content, info, base)
        try:
            self._q.put_nowait(item)
            return
        except queue.Full:
            pass
        try:
            old = self._q.get_nowait()
            self.skipped += 1
            if old is not None:
                self.release(old[3])
        except queue.Empty:
            pass
        try:
            self._q.put_nowait(item)
        except queue.Full:
            self.skipped += 1
            self.release(base)

    def run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            try:
                self.publish(*item[:3])
                self.done += 1
            except Exception:
                log.exception("monitoring of spill %s failed", item[0])
            try:
                self.release(item[3])
            except Exception:  # the monitoring thread outlives any bug in the buffer recycling
                log.exception("event buffer of spill %s not recycled", item[0])

    def stop(self) -> None:
        try:
            self._q.put(None, timeout=10)
        except queue.Full:
            pass
        self.join(timeout=30)

    def publish(self, spill: int, content: SpillContent, info: dict[str, Any]) -> None:
        pub = self.publisher
        if pub is None:
            return
        for m in event_messages(
            content.waveforms,
            content.event_id,
            content.trigger_mask,
            self.gev_per_count,
            n_waveforms=self.sample_waveforms,
            amplitudes=self.calibration_mode,
            table=info.get("table"),
            start_unix=float(info.get("start_unix", 0.0)),
            mm=content.mm,
            spectrometer=self.spectrometer,
            gate=self.gate,
        ):
            pub.publish(m.topic, m.arrays, m.meta, spill=spill)
