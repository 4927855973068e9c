"""The DAQ's monitoring worker: reconstructs the recorded events of a spill and publishes the monitoring
topics built from them, off the spill loop (lossy: it never holds the loop up)."""
from __future__ import annotations

import logging
import queue
import threading
from typing import Any, Callable

import numpy as np

from detector import channels as ch
from detector.records import TRIGGER_BITS
from detector.reco import reconstruct
from detector.spillfile import SpillContent

from .publisher import Publisher

log = logging.getLogger("online.daq")

ECAL_EDGES = [0.0, 150.0, 150]        #: GeV, E_ECAL axis of the ecal_hcal histogram [lo, hi, n]
HCAL_EDGES = [0.0, 150.0, 150]        #: GeV, E_HCAL axis


class MonitorWorker(threading.Thread):
    """Reconstructs the recorded events of a spill and publishes ``calo``, ``ecal_hcal``, ``waveforms`` and
    (calibration mode) ``amplitudes``. Lossy: while it is busy a newer spill replaces a waiting one.

    ``publisher``: where the topics go (``None``: nothing is published); ``gev_per_count``: the calibration
    (GeV per ADC count, per channel); ``sample_waveforms``: waveforms published per spill; ``calibration_mode``:
    publish ``amplitudes`` too; ``release(base)``: gives a spill's event buffer back once it is done with
    (or skipped)."""

    def __init__(self, publisher: Publisher | None, gev_per_count: np.ndarray, *, sample_waveforms: int,
                 calibration_mode: bool, release: Callable[[np.ndarray | None], None]) -> None:
        super().__init__(name="monitor-worker", daemon=True)
        self.publisher = publisher
        self.gev_per_count = gev_per_count
        self.sample_waveforms = int(sample_waveforms)
        self.calibration_mode = bool(calibration_mode)
        self.release = release
        self._q: queue.Queue[Any] = queue.Queue(maxsize=1)
        self.skipped = 0
        self.done = 0

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
            except Exception:       # the monitoring thread outlives any bug in the buffer recycling
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
        wf = content.waveforms
        r = reconstruct(wf, self.gev_per_count, parallel=True)
        e = r.energy_gev
        amp = r.amplitude
        hit = amp > 0
        ecal = slice(ch.ECAL_FIRST, ch.ECAL_FIRST + ch.N_ECAL)
        hcal = slice(ch.HCAL_FIRST, ch.HCAL_FIRST + ch.N_HCAL)
        shape_e = (ch.N_ECAL_SECTIONS, ch.N_ECAL_X, ch.N_ECAL_Y)
        shape_h = (ch.N_HCAL_MODULES, ch.N_HCAL_Y, ch.N_HCAL_X)
        pub.publish("calo", arrays={
            "ecal_energy": e[:, ecal].sum(axis=0, dtype=np.float64).reshape(shape_e),
            "ecal_occupancy": hit[:, ecal].sum(axis=0).astype(np.int64).reshape(shape_e),
            "hcal_energy": e[:, hcal].sum(axis=0, dtype=np.float64).reshape(shape_h),
            "hcal_occupancy": hit[:, hcal].sum(axis=0).astype(np.int64).reshape(shape_h)},
            meta={"events": int(wf.shape[0]), "ecal_axes": ["section", "x", "y"], "hcal_axes": ["module", "y", "x"]},
            spill=spill)
        e_ecal = e[:, ecal].sum(axis=1, dtype=np.float64)
        e_hcal = e[:, hcal].sum(axis=1, dtype=np.float64)
        counts, _, _ = np.histogram2d(e_ecal, e_hcal, bins=[ECAL_EDGES[2], HCAL_EDGES[2]],
                                      range=[ECAL_EDGES[:2], HCAL_EDGES[:2]])
        pub.publish("ecal_hcal", arrays={"counts": counts.astype(np.float64)},
                    meta={"ecal_edges": ECAL_EDGES, "hcal_edges": HCAL_EDGES, "events": int(wf.shape[0])}, spill=spill)
        k = self.sample_waveforms
        if k > 0:
            pick = np.unique(np.linspace(0, wf.shape[0] - 1, min(k, wf.shape[0])).astype(np.int64))
            pub.publish("waveforms", arrays={"waveforms": np.ascontiguousarray(wf[pick]),
                                             "event_ids": content.event_id[pick].astype(np.int64)}, spill=spill)
        if self.calibration_mode:
            beam = (content.trigger_mask & TRIGGER_BITS["beam"]) != 0
            table = info.get("table", {}) if isinstance(info.get("table"), dict) else {}
            pub.publish("amplitudes", arrays={"amplitudes": np.ascontiguousarray(amp[beam][:, :ch.N_CALO], np.float32)},
                        meta={"table": table, "start_unix": float(info.get("start_unix", 0.0)),
                              "events": int(beam.sum())}, spill=spill)
