"""Replay of a recorded run through the monitor: every spill file becomes the SAME messages the live
stream carries (docs/protocols.md 4.2), framed and decoded with :mod:`detector.framing`, so the views
have one code path.

Per spill (:class:`ReplayBuilder`):

- ``scalers`` from the spill attributes (``scalers``, ``triggers``, ``eot``, ``n_*``, ``flags``,
  ``length_s``, ``start_unix``); a trigger without a recorded raw count gets raw = accepted = the
  number of recorded events with its ``trigger_mask`` bit;
- ``calo``, ``ecal_hcal``, ``amplitudes`` from :func:`detector.reco.reconstruct` of the recorded
  waveforms with the calibration of :func:`detector.config.load_calibration` (energy summed per cell;
  occupancy = cells above the zero-suppression threshold; E_ECAL = PS + main, E_HCAL = four modules;
  amplitudes of the events with the ``beam`` trigger bit);
- ``waveforms``: the first ``daq.sample_waveforms`` events;
- ``hv`` when the spill attributes carry arrays ``vset``/``vmon``/``imon``/``status``/``channel_ids``
  (or a table per channel name);
- ``status`` RECORDED after every spill (spill flags travel in ``scalers`` and are logged by the model).

A missing or corrupt spill file is reported as a ``log`` ERROR line and skipped.
"""
from __future__ import annotations

import logging
import pathlib
import time
from typing import Any, Iterator

import numpy as np

from detector import channels as ch
from detector.framing import Message, decode, encode
from detector.records import SCALER_NAMES, TRIGGER_BITS
from detector.spillfile import SpillData, SpillFileError, list_spills, read_run_record, read_spill

log = logging.getLogger("online.monitor.replay")

ECAL_EDGES = (0.0, 150.0, 150)     #: GeV, bins of the replayed E_ECAL vs E_HCAL increments (as online.daq)
HCAL_EDGES = (0.0, 150.0, 150)
RECO_CHUNK = 4096                  #: events reconstructed at a time (bounds the memory of one spill)


class ReplayBuilder:
    """Turns spill files of one run into monitoring messages with a running sequence number."""

    def __init__(self, cfg: dict[str, Any] | None = None, calibration: Any = None, n_waveforms: int | None = None,
                 ecal_edges: tuple[float, float, int] = ECAL_EDGES,
                 hcal_edges: tuple[float, float, int] = HCAL_EDGES) -> None:
        from detector.config import load_calibration, load_config

        self.cfg = cfg if cfg is not None else load_config(None)
        self.calibration = calibration if calibration is not None else load_calibration(self.cfg)
        self.n_waveforms = int(self.cfg.get("daq", {}).get("sample_waveforms", 8) if n_waveforms is None
                               else n_waveforms)
        self.ecal_edges, self.hcal_edges = ecal_edges, hcal_edges
        self.seq = 0
        self.eot_total = 0.0
        self.events_total = 0
        self.spills_done = 0
        self.run: int | None = None

    def message(self, topic: str, arrays: dict[str, np.ndarray] | None = None, meta: dict[str, Any] | None = None,
                spill: int | None = None, now: float | None = None) -> Message:
        frames = encode(topic, self.seq, arrays, meta, self.run, spill, time.time() if now is None else now)
        self.seq += 1
        return decode(frames)

    def log_message(self, text: str, level: str = "INFO", spill: int | None = None) -> Message:
        return self.message("log", meta={"level": level, "text": text}, spill=spill)

    def status(self, state: str, spill: int | None, message: str = "", now: float | None = None) -> Message:
        now = time.time() if now is None else now
        return self.message("status", meta={"state": state, "run": self.run, "spill": spill,
                                            "last_spill_unix": now, "spills_done": self.spills_done,
                                            "events_recorded": self.events_total, "lost_spills": 0,
                                            "message": message}, spill=spill, now=now)

    # ---------------------------------------------------------------------------------------------
    def _scalers_meta(self, sd: SpillData) -> dict[str, Any]:
        a = sd.attrs
        sc = a.get("scalers", {})
        if isinstance(sc, list) and len(sc) == len(SCALER_NAMES):
            sc = dict(zip(SCALER_NAMES, sc))
        if not isinstance(sc, dict):
            sc = {}
        num = lambda v: float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None  # noqa: E731
        eot = num(a.get("eot"))
        eot = eot if eot is not None else (num(sc.get("eot")) or 0.0)
        self.eot_total += eot
        mask = np.asarray(sd.trigger_mask)
        trig_attr = a.get("triggers", {})
        triggers: dict[str, dict[str, float]] = {}
        for name, bit in TRIGGER_BITS.items():
            n_bit = float(np.count_nonzero(mask & bit))
            t = trig_attr.get(name) if isinstance(trig_attr, dict) else None
            if isinstance(t, dict) and num(t.get("raw")) is not None:
                acc = num(t.get("accepted"))
                triggers[name] = {"raw": num(t["raw"]), "accepted": acc if acc is not None else n_bit}
            elif num(t) is not None:
                triggers[name] = {"raw": num(t), "accepted": n_bit}
            else:
                triggers[name] = {"raw": n_bit, "accepted": n_bit}
        n = sd.n_events
        s1 = num(sc.get("S1"))
        s1 = s1 if s1 is not None else num(sc.get("crate_S1"))
        return {"S0": num(sc.get("S0")) or 0.0, "S1": s1 or 0.0, "V0": num(sc.get("V0")) or 0.0,
                "eot": eot, "eot_total": self.eot_total, "particles": num(a.get("n_particles")) or 0.0,
                "triggers": triggers, "accepted": num(a.get("n_accepted")) or float(n),
                "read_out": num(a.get("n_read_out")) or float(n), "recorded": float(n),
                "flags": [str(f) for f in sd.flags], "spill_length_s": num(a.get("length_s")) or 0.0,
                "start_unix": num(a.get("start_unix")) or 0.0}

    def _reconstructed(self, sd: SpillData) -> dict[str, np.ndarray]:
        from detector.reco import reconstruct

        g = np.asarray(self.calibration.gev_per_count)
        cell_e = np.zeros(ch.N_CALO)
        cell_occ = np.zeros(ch.N_CALO, dtype=np.int64)
        e_ecal_parts, e_hcal_parts, amps = [], [], []
        beam = (np.asarray(sd.trigger_mask) & TRIGGER_BITS["beam"]) != 0
        for lo in range(0, sd.n_events, RECO_CHUNK):
            r = reconstruct(sd.waveforms[lo:lo + RECO_CHUNK], g)
            e = r.energy_gev[:, :ch.N_CALO].astype(np.float64)
            cell_e += e.sum(axis=0)
            cell_occ += (r.amplitude[:, :ch.N_CALO] > 0).sum(axis=0)
            e_ecal_parts.append(e[:, :ch.N_ECAL].sum(axis=1))
            e_hcal_parts.append(e[:, ch.N_ECAL:ch.N_CALO].sum(axis=1))
            b = beam[lo:lo + RECO_CHUNK]
            if b.any():
                amps.append(r.amplitude[b, :ch.N_CALO].astype(np.float32))
        e_ecal = np.concatenate(e_ecal_parts) if e_ecal_parts else np.zeros(0)
        e_hcal = np.concatenate(e_hcal_parts) if e_hcal_parts else np.zeros(0)
        (elo, ehi, en), (hlo, hhi, hn) = self.ecal_edges, self.hcal_edges
        counts, _, _ = np.histogram2d(e_ecal, e_hcal, bins=(en, hn), range=((elo, ehi), (hlo, hhi)))
        return {"ecal_energy": ch.ecal_map(cell_e), "ecal_occupancy": ch.ecal_map(cell_occ),
                "hcal_energy": ch.hcal_map(cell_e), "hcal_occupancy": ch.hcal_map(cell_occ), "counts": counts,
                "amplitudes": np.concatenate(amps) if amps else np.zeros((0, ch.N_CALO), np.float32)}

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
                    return {"vset": np.array([v["vset"] for _, v in rows], np.float32),
                            "vmon": np.array([v["vmon"] for _, v in rows], np.float32),
                            "imon": np.array([v["imon"] for _, v in rows], np.float32),
                            "status": np.array([v["status"] for _, v in rows], np.int32),
                            "channel_ids": np.array([i for i, _ in rows], np.int64)}
        except (KeyError, TypeError, ValueError):
            return None
        return None

    def messages(self, sd: SpillData, now: float | None = None) -> list[Message]:
        """The monitoring messages of one recorded spill, in publishing order."""
        now = time.time() if now is None else now
        run = sd.attrs.get("run")
        self.run = int(run) if isinstance(run, int) else self.run
        spill = int(sd.attrs.get("spill", self.spills_done))
        out = [self.message("scalers", meta=self._scalers_meta(sd), spill=spill, now=now)]
        r = self._reconstructed(sd)
        out.append(self.message("calo", {k: r[k] for k in ("ecal_energy", "ecal_occupancy", "hcal_energy",
                                                           "hcal_occupancy")},
                                meta={"events": sd.n_events}, spill=spill, now=now))
        out.append(self.message("ecal_hcal", {"counts": r["counts"]},
                                meta={"ecal_edges": list(self.ecal_edges), "hcal_edges": list(self.hcal_edges)},
                                spill=spill, now=now))
        k = min(self.n_waveforms, sd.n_events)
        out.append(self.message("waveforms", {"waveforms": np.ascontiguousarray(sd.waveforms[:k]),
                                              "event_ids": np.asarray(sd.event_id[:k], dtype=np.int64)},
                                spill=spill, now=now))
        table = sd.attrs.get("table")
        out.append(self.message("amplitudes", {"amplitudes": r["amplitudes"]},
                                meta={"table": table if isinstance(table, dict) else {},
                                      "start_unix": sd.attrs.get("start_unix", 0.0)}, spill=spill, now=now))
        hv = self._hv_arrays(sd.attrs.get("hv"))
        if hv is not None:
            out.append(self.message("hv", hv, spill=spill, now=now))
        self.spills_done += 1
        self.events_total += sd.n_events
        out.append(self.status("RECORDED", spill, f"replay of {sd.path.name}", now))
        return out


def replay_batches(run_dir: str | pathlib.Path, cfg: dict[str, Any] | None = None,
                   builder: ReplayBuilder | None = None) -> Iterator[list[Message]]:
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
    yield [b.status("IDLE", None, head), b.log_message(f"{head}: {len(spills)} spill files")]
    for path in spills:
        try:
            sd = read_spill(path)
        except SpillFileError as exc:
            log.error("%s", exc)
            yield [b.log_message(f"skipped: {exc}", "ERROR")]
            continue
        yield b.messages(sd)
    yield [b.status("IDLE", None, "replay finished"),
           b.log_message(f"replay finished: {b.spills_done} spills, {b.events_total} events, EOT {b.eot_total:.4g}")]
