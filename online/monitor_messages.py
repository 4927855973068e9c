"""The one producer of monitoring messages: a spill (just read by the DAQ, or recorded and read back from
its spill file) -> the messages of the contract in :mod:`detector.monitoring`.

The live DAQ (``online.daq``: its monitor worker and its scalers) and the replay
(:mod:`online.monitor.replay`) both call these functions, so a replayed run shows exactly what the
live stream showed for it:

- :func:`scalers_message`: ``scalers`` from the spill's accounting (the run-record entry live, the spill
  file's attributes in replay: both carry the same keys);
- :func:`led_message`: ``led`` from the spill's LED events;
- :func:`event_messages`: ``calo``, ``ecal_hcal``, ``waveforms`` and (calibration mode) ``amplitudes`` from
  :func:`detector.reco.reconstruct` of the recorded waveforms, and ``tracker`` (:func:`tracker_message`) from
  :func:`detector.tracking.reconstruct_tracks` of the recorded Micromegas strips.

Waveform sampling rule (deterministic, so live and replay agree): :func:`sample_indices`, ``k`` events
evenly spaced over the spill, first and last included. Reconstruction runs in chunks of
:data:`RECO_CHUNK` events (bounded memory; the sums are added chunk by chunk in the same order live
and in replay).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from detector import channels as ch
from detector import monitoring as mon
from detector.led import LedEvents, cell_means
from detector.records import SCALER_NAMES, TRIGGER_BITS

if TYPE_CHECKING:  # detector.tracking loads numba: imported where the tracks are reconstructed
    from detector.tracking import PlaneSummary, Spectrometer, StripData

PROFILE_BIN_MM = 0.5  #: bin width of the ``tracker`` beam profiles, mm

RECO_CHUNK = 16384  #: events reconstructed at a time


@dataclass
class Outgoing:
    """One message before framing: the publisher (or the replay's framer) adds run, spill and seq."""

    topic: str
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


def sample_indices(n_events: int, k: int) -> np.ndarray:
    """Indices of the ``min(k, n_events)`` sample events of a spill: evenly spaced, first and last
    included (int64, ascending, unique)."""
    if k <= 0 or n_events <= 0:
        return np.zeros(0, np.int64)
    return np.unique(np.linspace(0, n_events - 1, min(k, n_events)).astype(np.int64))


def _num(v: Any) -> int | float | None:
    """A count as a Python int or float (numpy scalars converted); None for anything else."""
    if isinstance(v, (np.integer, np.floating)):
        return v.item()
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _triggers(given: Any, trigger_mask: np.ndarray | None) -> dict[str, dict[str, int | float]]:
    """``{name: {raw, accepted}}`` as recorded; a recorded bare number is the raw count. Without any
    recorded table, the counts of the recorded events' trigger bits (raw = accepted)."""
    out: dict[str, dict[str, int | float]] = {}
    mask = None if trigger_mask is None else np.asarray(trigger_mask)

    def n_bit(name: str) -> int:
        return int(np.count_nonzero(mask & TRIGGER_BITS[name])) if mask is not None and name in TRIGGER_BITS else 0

    if isinstance(given, dict) and given:
        for name, t in given.items():
            raw = _num(t.get("raw")) if isinstance(t, dict) else _num(t)
            if raw is None:
                continue
            acc = _num(t.get("accepted")) if isinstance(t, dict) else None
            out[str(name)] = {"raw": raw, "accepted": acc if acc is not None else n_bit(name)}
        return out
    if mask is not None:
        for name in TRIGGER_BITS:
            out[name] = {"raw": n_bit(name), "accepted": n_bit(name)}
    return out


def scalers_message(
    attrs: dict[str, Any], n_recorded: int, eot_total: int | float, trigger_mask: np.ndarray | None = None
) -> Outgoing:
    """``scalers`` of one spill from its accounting ``attrs`` (keys of the run-record entry / spill-file
    attributes: ``scalers``, ``triggers``, ``eot``, ``n_particles``, ``n_accepted``, ``n_read_out``,
    ``flags``, ``length_s`` (s), ``start_unix`` (unix s), ``crate_spill``); ``eot_total`` is the run's
    EOT including this spill. ``trigger_mask`` (recorded events) fills in a missing trigger table."""
    sc = attrs.get("scalers") or {}
    if isinstance(sc, list) and len(sc) == len(SCALER_NAMES):
        sc = dict(zip(SCALER_NAMES, sc))
    sc = {str(k): (v if _num(v) is None else _num(v)) for k, v in sc.items()} if isinstance(sc, dict) else {}

    def count(v: Any, default: int | float) -> int | float:
        n = _num(v)
        return default if n is None else n

    s1 = sc.get("S1") if _num(sc.get("S1")) is not None else sc.get("crate_S1")
    eot = count(attrs.get("eot"), count(sc.get("eot"), 0))
    meta = {
        "S0": count(sc.get("S0"), 0),
        "S1": count(s1, 0),
        "V0": count(sc.get("V0"), 0),
        "eot": eot,
        "eot_total": eot_total,
        "particles": count(attrs.get("n_particles"), 0),
        "triggers": _triggers(attrs.get("triggers"), trigger_mask),
        "accepted": count(attrs.get("n_accepted"), n_recorded),
        "read_out": count(attrs.get("n_read_out"), n_recorded),
        "recorded": int(n_recorded),
        "flags": [str(f) for f in attrs.get("flags", []) or []],
        "spill_length_s": float(count(attrs.get("length_s"), 0.0)),
        "start_unix": float(count(attrs.get("start_unix"), 0.0)),
        "crate_spill": int(count(attrs.get("crate_spill"), -1)),
        "scalers": sc,
    }
    return Outgoing("scalers", meta=meta)


def led_message(led: LedEvents, unix: float) -> Outgoing:
    """``led`` of one spill: the cell means of its LED events (:func:`detector.led.cell_means`); ``unix``
    the end of its flat top (s)."""
    mean, rms = cell_means(led.waveforms)
    return Outgoing("led", {"amplitude": mean, "rms": rms}, {"pulses": led.n, "unix": float(unix)})


def event_messages(
    waveforms: np.ndarray,
    event_id: np.ndarray,
    trigger_mask: np.ndarray,
    gev_per_count: np.ndarray,
    *,
    n_waveforms: int,
    amplitudes: bool,
    table: dict[str, Any] | None = None,
    start_unix: float = 0.0,
    mm: StripData | None = None,
    spectrometer: Spectrometer | None = None,
    gate: tuple[np.ndarray, np.ndarray] | None = None,
) -> list[Outgoing]:
    """``calo``, ``ecal_hcal``, ``waveforms`` (if ``n_waveforms`` > 0), ``amplitudes`` (if
    ``amplitudes``: calibration mode) and ``tracker`` (if the spill has Micromegas strips ``mm`` and a
    ``spectrometer`` is given) of one spill's recorded events. ``waveforms`` int16 (events, channels,
    samples); ``gev_per_count`` GeV per ADC count per channel; ``table`` the HCAL-table position of the spill;
    ``start_unix`` its start (unix s); ``gate`` each channel's (first, last) sample, the event's own pulse as
    offline takes it (:func:`detector.gate.in_time_gate`; None: the whole record)."""
    from detector.reco import reconstruct

    n = int(waveforms.shape[0])
    g = np.asarray(gev_per_count)
    ecal = slice(ch.ECAL_FIRST, ch.ECAL_FIRST + ch.N_ECAL)
    hcal = slice(ch.HCAL_FIRST, ch.HCAL_FIRST + ch.N_HCAL)
    cell_e = np.zeros(ch.N_CHANNELS)
    cell_occ = np.zeros(ch.N_CHANNELS, np.int64)
    (elo, ehi, en), (hlo, hhi, hn) = mon.ECAL_EDGES, mon.HCAL_EDGES
    counts = np.zeros((en, hn))
    beam = (np.asarray(trigger_mask) & TRIGGER_BITS["beam"]) != 0
    amps: list[np.ndarray] = []
    for lo in range(0, n, RECO_CHUNK):
        r = reconstruct(waveforms[lo : lo + RECO_CHUNK], g, parallel=True, gate=gate)
        e = r.energy_gev
        cell_e += e.sum(axis=0, dtype=np.float64)
        cell_occ += (r.amplitude > 0).sum(axis=0)
        c, _, _ = np.histogram2d(
            e[:, ecal].sum(axis=1, dtype=np.float64),
            e[:, hcal].sum(axis=1, dtype=np.float64),
            bins=[en, hn],
            range=[(elo, ehi), (hlo, hhi)],
        )
        counts += c
        if amplitudes:
            amps.append(np.asarray(r.amplitude[beam[lo : lo + RECO_CHUNK]][:, : ch.N_CALO], np.float32))
    out = [
        Outgoing(
            "calo",
            {
                "ecal_energy": ch.ecal_map(cell_e),
                "ecal_occupancy": ch.ecal_map(cell_occ),
                "hcal_energy": ch.hcal_map(cell_e),
                "hcal_occupancy": ch.hcal_map(cell_occ),
            },
            {"events": n, "ecal_axes": ["section", "x", "y"], "hcal_axes": ["module", "y", "x"]},
        ),
        Outgoing(
            "ecal_hcal",
            {"counts": counts},
            {"ecal_edges": list(mon.ECAL_EDGES), "hcal_edges": list(mon.HCAL_EDGES), "events": n},
        ),
    ]
    if n_waveforms > 0:
        pick = sample_indices(n, n_waveforms)
        out.append(
            Outgoing(
                "waveforms",
                {
                    "waveforms": np.ascontiguousarray(waveforms[pick]),
                    "event_ids": np.asarray(event_id)[pick].astype(np.int64),
                },
            )
        )
    if amplitudes:
        a = np.concatenate(amps) if amps else np.zeros((0, ch.N_CALO), np.float32)
        out.append(
            Outgoing(
                "amplitudes",
                {"amplitudes": np.ascontiguousarray(a)},
                {
                    "table": table if isinstance(table, dict) else {},
                    "start_unix": float(start_unix),
                    "events": int(a.shape[0]),
                },
            )
        )
    if mm is not None and spectrometer is not None:
        out.append(tracker_message(mm, spectrometer))
    return out


def tracker_message(mm: StripData, spec: Spectrometer) -> Outgoing:
    """``tracker`` of one spill: its recorded Micromegas strips reconstructed once
    (:func:`detector.tracking.reconstruct_tracks`) and histogrammed (:func:`tracker_histograms`)."""
    from detector.tracking import reconstruct_tracks

    tracks, planes = reconstruct_tracks(mm, spec, planes=True)
    return tracker_histograms(tracks, planes, spec)


def _hist(x: np.ndarray, edges: tuple[float, float, int]) -> np.ndarray:
    lo, hi, n = edges
    x = x[np.isfinite(x)]
    return np.histogram(x, bins=n, range=(lo, hi))[0].astype(np.int64)


def tracker_histograms(tracks: np.ndarray, planes: PlaneSummary, spec: Spectrometer) -> Outgoing:
    """``tracker`` from per-event tracks (:data:`detector.tracking.TRACK_DTYPE`) and their
    :class:`~detector.tracking.PlaneSummary`. Plane efficiency (tag and probe): among the events with a
    particle-like cluster in every other plane (``eff_ref``), those with one in this plane too (``eff_hit``).
    Beam profile: the position of each plane's largest cluster when it is particle-like."""
    n_pl = spec.n_planes
    half = spec.half_size_mm
    pe = (-half, half, max(1, int(round(2.0 * half / PROFILE_BIN_MM))))
    part = planes.particle
    n_part = part.sum(axis=1)
    full = n_part == n_pl
    eff_hit = np.full(n_pl, int(full.sum()), np.int64)
    eff_ref = eff_hit + (~part & (n_part == n_pl - 1)[:, None]).sum(axis=0)
    profile = np.zeros((n_pl, pe[2]), np.int64)
    for p in range(n_pl):
        profile[p] = _hist(planes.lead_mm[part[:, p], p].astype(np.float64), pe)
    mult = np.bincount(np.minimum(tracks["n_tracks"], mon.N_MULTIPLICITY - 1), minlength=mon.N_MULTIPLICITY)
    names = [f"{st}{v}" for st in spec.names for v in ("X", "Y")]
    return Outgoing(
        "tracker",
        {
            "momentum": _hist(tracks["p_gev"].astype(np.float64), mon.MOMENTUM_EDGES),
            "angle": _hist(tracks["angle_mrad"].astype(np.float64), mon.ANGLE_EDGES),
            "multiplicity": mult.astype(np.int64),
            "profile": profile,
            "strips": planes.n_strips.sum(axis=0, dtype=np.int64),
            "clusters": planes.n_clusters.sum(axis=0, dtype=np.int64),
            "eff_ref": eff_ref.astype(np.int64),
            "eff_hit": eff_hit,
        },
        {
            "events": int(tracks.shape[0]),
            "planes": names,
            "p0_gev": float(spec.p0_gev),
            "momentum_edges": list(mon.MOMENTUM_EDGES),
            "angle_edges": list(mon.ANGLE_EDGES),
            "profile_edges": [float(pe[0]), float(pe[1]), int(pe[2])],
        },
    )
