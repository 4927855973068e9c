"""Replay of a recorded run through the monitor: every spill file becomes the SAME messages the live
stream carried for it (:mod:`detector.monitoring`), made by the same producer as live
(:mod:`online.monitor_messages`), framed and decoded with :mod:`detector.framing`, so the views have
one code path.

Per spill (:class:`ReplayBuilder`):

- ``scalers`` from the spill attributes (:func:`online.monitor_messages.scalers_message`);
- ``led`` from the spill's LED events (:func:`online.monitor_messages.led_message`);
- ``calo``, ``ecal_hcal``, ``waveforms``, ``amplitudes`` from :func:`online.monitor_messages.event_messages`
  with the calibration of :func:`detector.config.load_calibration`; ``amplitudes`` when the run was
  taken in calibration mode (spill attribute ``extra.calibration_mode``; a spill file without it gets
  them too); ``tracker`` when the spill file has the Micromegas strips (``/mm``), with the tracker geometry
  of the configuration;
- ``hv`` when the spill attributes carry arrays ``vset``/``vmon``/``imon``/``status``/``channel_ids``
  (or a table per channel name);
- ``status`` RECORDED after every spill (spill flags travel in ``scalers`` and are logged by the model).

A missing or corrupt spill file is reported as a ``log`` ERROR line and skipped.
"""

from __future__ import annotations

import logging
import pathlib
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from detector import channels as ch
from detector.framing import Message, as_received
from detector.gate import in_time_gate
from detector.monitoring import DAQState, TopicSequence
from detector.runrecord import read_run_record
from detector.settings import Config
from detector.spillfile import SpillData, SpillFileError, list_spills, read_spill

from ..monitor_messages import event_messages, led_message, scalers_message

log = logging.getLogger("online.monitor.replay")


class ReplayBuilder:
    """Turns spill files of one run into monitoring messages with a running sequence number."""

    def __init__(self, cfg: Config | None = None, calibration: Any = None, n_waveforms: int | None = None) -> None:
        from detector.config import load_calibration, load_config

        self.cfg = cfg if cfg is not None else load_config(None)
        self.calibration = calibration if calibration is not None else load_calibration(self.cfg)
        self.n_waveforms = int(self.cfg.daq.sample_waveforms if n_waveforms is None else n_waveforms)
        from detector.tracking import Spectrometer

        self.spectrometer = Spectrometer.from_config(self.cfg)
        self.gate = in_time_gate(self.calibration, self.cfg)
        self.seq = TopicSequence()
        self.eot_total: int | float = 0
        self.events_total = 0
        self.spills_done = 0
        self.run: int | None = None

    def message(
        self,
        topic: str,
        arrays: dict[str, np.ndarray] | None = None,
        meta: dict[str, Any] | None = None,
        spill: int | None = None,
        now: float | None = None,
    ) -> Message:
        return as_received(topic, self.seq.take(topic), arrays, meta, self.run, spill, now)

    def log_message(self, text: str, level: str = "INFO", spill: int | None = None) -> Message:
        return self.message("log", meta={"level": level, "text": text}, spill=spill)

    def status(self, state: str, spill: int | None, message: str = "", now: float | None = None) -> Message:
        now = time.time() if now is None else now
        return self.message(
            "status",
            meta={
                "state": state,
                "run": self.run,
                "spill": spill,
                "last_spill_unix": now,
                "spills_done": self.spills_done,
                "events_recorded": self.events_total,
                "lost_spills": 0,
                "message": message,
            },
            spill=spill,
            now=now,
        )

    @staticmethod
    def _hv_arrays(hv: Any) -> dict[str, np.ndarray] | None:
        keys = ("vset", "vmon", "imon", "status")
        try:
            if isinstance(hv, dict) and all(k in hv for k in keys + ("channel_ids",)):
                out = {k: np.asarray(hv[k], dtype=np.float32) for k in ("vset", "vmon", "imon")}
                out["status"] = np.asarray(hv["status"], dtype=np.int32)
                out["channel_ids"] = np.asarray(hv["channel_ids"], dtype=np.int64)
                return out
            if isinstance(hv, dict) and hv and all(isinstance(v, dict) for v in hv.values()):
                rows = [(ch.by_name(name).id, v) for name, v in hv.items() if all(k in v for k in keys)]
                if rows:
                    return {
                        "vset": np.array([v["vset"] for _, v in rows], np.float32),
                        "vmon": np.array([v["vmon"] for _, v in rows], np.float32),
                        "imon": np.array([v["imon"] for _, v in rows], np.float32),
                        "status": np.array([v["status"] for _, v in rows], np.int32),
                        "channel_ids": np.array([i for i, _ in rows], np.int64),
                    }
        except (KeyError, TypeError, ValueError):
            return None
        return None

    def messages(self, sd: SpillData, now: float | None = None) -> list[Message]:
        """The monitoring messages of one recorded spill, in publishing order."""
        now = time.time() if now is None else now
        run = sd.attrs.get("run")
        self.run = int(run) if isinstance(run, int) else self.run
        spill = int(sd.attrs.get("spill", self.spills_done))
        sc = scalers_message(sd.attrs, sd.n_events, 0, sd.trigger_mask)
        self.eot_total += sc.meta["eot"]
        sc.meta["eot_total"] = self.eot_total
        out = [self.message(sc.topic, meta=sc.meta, spill=spill, now=now)]
        if sd.led is not None and sd.led.n:  # as live: right after the scalers
            end = float(sd.attrs.get("start_unix", 0.0)) + float(sd.attrs.get("length_s", 0.0))
            m = led_message(sd.led, end)
            out.append(self.message(m.topic, m.arrays, m.meta, spill=spill, now=now))
        extra = sd.attrs.get("extra")
        calib = extra.get("calibration_mode", True) if isinstance(extra, dict) else True
        if sd.n_events:
            for m in event_messages(
                sd.waveforms,
                sd.event_id,
                sd.trigger_mask,
                self.calibration.gev_per_count,
                n_waveforms=self.n_waveforms,
                amplitudes=bool(calib),
                table=sd.attrs.get("table"),
                start_unix=float(sd.attrs.get("start_unix", 0.0)),
                mm=sd.mm,
                spectrometer=self.spectrometer,
                gate=self.gate,
            ):
                out.append(self.message(m.topic, m.arrays, m.meta, spill=spill, now=now))
        hv = self._hv_arrays(sd.attrs.get("hv"))
        if hv is not None:
            out.append(self.message("hv", hv, spill=spill, now=now))
        self.spills_done += 1
        self.events_total += sd.n_events
        out.append(self.status(DAQState.RECORDED.value, spill, f"replay of {sd.path.name}", now))
        return out


def replay_batches(
    run_dir: str | pathlib.Path, cfg: Config | None = None, builder: ReplayBuilder | None = None
) -> Iterator[list[Message]]:
    """One batch of messages per spill file of ``run_dir`` (run in the replay worker thread)."""
    rdir = pathlib.Path(run_dir)
    b = builder or ReplayBuilder(cfg)
    try:
        rec = read_run_record(rdir)
        if isinstance(rec.get("run"), int):
            b.run = rec["run"]
        head = f"replay of run {b.run} from {rdir}"
    except SpillFileError as exc:
        rec = {}
        head = f"replay of {rdir} without run record ({exc})"
    spills = list_spills(rdir)
    yield [b.status(DAQState.IDLE.value, None, head), b.log_message(f"{head}: {len(spills)} spill files")]
    for path in spills:
        try:
            sd = read_spill(path)
        except SpillFileError as exc:
            log.error("%s", exc)
            yield [b.log_message(f"skipped: {exc}", "ERROR")]
            continue
        yield b.messages(sd)
    yield [
        b.status(DAQState.IDLE.value, None, "replay finished"),
        b.log_message(f"replay finished: {b.spills_done} spills, {b.events_total} events, EOT {b.eot_total:.4g}"),
    ]
