"""Spill file -> columnar event table (offline reconstruction, issue 8 part 3).

Every channel of every event is reconstructed with the SAME numba code as online
(:func:`detector.reco.reconstruct`) and the per-channel calibration (:func:`reconstruct_events`); the
per-event quantities below are then computed with vectorised numpy and returned as a dict of equal-length
1D arrays (a "table"), ready for the selection (:mod:`offline.selection`), for Dask partial results and for
the ROOT export.

In-time channels (:func:`detector.gate.in_time_gate`, :data:`detector.gate.IN_TIME_CHANNELS`): the fast
scintillators -- the SRD sections, V2 and the counters S0..S4, V0, V1 -- are reconstructed from their pulse in
time with the trigger: their peak is searched in the counter gate (``trigger.counter_gate_ns`` full width
around each channel's own nominal peak, the calibration ``t0_ns`` + the template's peak delay), the same gate
the trigger takes S1..S3 and V1 in (:mod:`trigger.menu`). A later (or earlier) beam particle in the same 400
ns record is its own event: its pulse in these channels does not replace the event's own (docs/physics.md
6.3.1). The gate holds every peak sample of an onset within ``trigger.window_ns`` of t0 (the trigger menu
checks it), so an in-time pulse is reconstructed as over the whole record.

Calorimeter cells (ECAL and HCAL, :data:`detector.gate.CALO_KINDS`) are reconstructed in their pile-up range:
the samples within ``offline.pileup_range_ns`` of each cell's nominal peak (the shaper pulse's length,
docs/physics.md 1.3). Their peak (energy, time) and their pile-up flag (a second pulse or a residual against
the template: :mod:`detector.reco`, step 5) come from those samples only, so the ECAL pile-up criterion
(``n_cells_pileup``, the paper's) counts a particle whose pulse overlaps the event's own, and a particle later
in the 400 ns record, beyond the pulse length, neither flags a cell nor replaces its pulse. The HCAL by the
same argument: its energy (the veto, the dimuon MIP modules) is the event's own pulse, not a later particle's.
The analogue sums PS_SUM and ECAL_SUM stay over the whole record.

Columns (units in the name or below):

=====================  ======================================================================================
``run, spill``         run and spill number (from the spill-file attributes)
``event_id``           record index in the spill's trigger primitives (the DAQ's event id)
``time_ns``            arrival time since the start of the spill
``trigger_mask``       :data:`detector.records.TRIGGER_BITS`
``e_ecal``             PS + main ECAL energy, GeV;  ``e_ps`` preshower, ``e_ecal_main`` main section
``e_ps_sum, e_ecal_sum``  the analogue sums PS_SUM and ECAL_SUM (what the trigger cuts on), GeV. The cell
                       sums are lower near threshold: every cell is zero-suppressed (10 ADC counts = 0.05 GeV
                       in a PS cell), so the ~3% tails around a small shower are lost
``ecal_cx, ecal_cy``   column/row of the hottest cell of the PS + main map (-1 without energy)
``ecal_max_frac``      energy fraction of the hottest cell
``ecal_x_mm, ecal_y_mm``  shower centre fitted with the e-m lateral profile (mm, beam axis = 0)
``ecal_chi2``          shower-shape chi2 of the 6x6 PS + main map against the e-m expectation at the fitted
                       centre; ``ecal_ndf`` its degrees of freedom (36 - 3)
``ecal_spread_mm``     RMS lateral spread of the energy about the fitted centre, mm
``e_hcal``             HCAL energy (4 modules), GeV;  ``e_hcal0 .. e_hcal3`` per module
``v2_mip``             V2 amplitude in MIP (amplitude / ``trigger.mip_adc``); ``e_v2`` in GeV
``srd0..2``            SRD section energies, GeV; ``srd0_dt .. srd2_dt`` their time minus the nominal t0, ns
                       (NaN without signal)
``S0..S4, V0, V1``     counter and veto amplitudes in MIP
``n_cells_pileup_check``  ECAL cells with E > ``offline.cell_pileup_min_gev``
``n_cells_pileup``     of those, cells with a second pulse (FLAG_PILEUP, within ``offline.pileup_range_ns`` of
                       the nominal peak) or a time more than ``offline.pileup_window_ns`` from the calibration t0
``max_cell_dt_ns``     largest |t - t0| over the checked cells (0 when none)
``truth_*``            every field of :data:`detector.records.TRUTH_DTYPE` when the file has truth
``trk_*``              the incoming track (:func:`track_columns`) when the file has Micromegas strips (``/mm``)
=====================  ======================================================================================

The shower-shape variable complements the incoming-track cuts (and stands in for them on files without
Micromegas data): an e-m
shower of a beam electron is compact (~75% in one cell) and centred near the beam axis, a hadron showering
in the PS is wide and a soft upstream electron enters off axis. The expectation is the lateral profile of
:mod:`sim_frontend.geometry` (the detector description shared with the simulation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numba as nb
import numpy as np

from detector import channels as ch
from detector.config import Calibration, Config
from detector.gate import in_time_gate
from detector.reco import FLAG_NO_SIGNAL, FLAG_PILEUP, RecoResult, reconstruct
from detector.records import TRUTH_DTYPE
from detector.spillfile import SpillData
from detector.tracking import Spectrometer, StripData, reconstruct_tracks
from sim_frontend import geometry as geo

Table = dict[str, np.ndarray]

#: shower-shape error model per cell of the 6x6 map (GeV^2): stochastic x E_expected + (constant x E)^2 +
#: noise^2. With it, recorded beam and upstream electrons give chi2/ndf 0.65 (median), 1.8 (99%), hadrons
#: showering in the ECAL 70 (median), > 25 (99%) in the simulation; offline.selection cuts at 4.
SHAPE_STOCH_GEV = 0.15  #: GeV^(1/2): sampling fluctuation of a cell
SHAPE_CONST = 0.03  #: relative shower-to-shower fluctuation of a cell fraction
SHAPE_NOISE_GEV = 0.05  #: GeV: noise and threshold effects
SHAPE_GRID_STEP_MM = 0.5  #: step of the 1D centre scan
_PIX = ch.N_ECAL_X * ch.N_ECAL_Y

_ID = {name: ch.by_name(name).id for name in (*ch.COUNTER_NAMES, *ch.VETO_NAMES, *ch.SRD_NAMES, *ch.SUM_NAMES)}
COUNTER_COLUMNS = ("S0", "S1", "S2", "S3", "S4", "V0", "V1")
SRD_COLUMNS = ("srd0", "srd1", "srd2")


def reconstruct_events(waveforms: np.ndarray, calib: Calibration, cfg: Config, parallel: bool = False) -> RecoResult:
    """The offline reconstruction of full-event waveforms (int16 (n, 121, 32)): :func:`detector.reco.reconstruct`
    with the calibration's GeV per count and :func:`detector.gate.in_time_gate`."""
    return reconstruct(waveforms, calib.gev_per_count, parallel=parallel, gate=in_time_gate(calib, cfg))


@dataclass(frozen=True)
class EventParams:
    """Offline reconstruction parameters (from the config's ``[offline]`` and ``[trigger]`` sections)."""

    cell_pileup_min_gev: float = 1.0
    pileup_window_ns: float = 2.0
    mip_adc: float = 200.0

    @classmethod
    def from_config(cls, cfg: Config) -> EventParams:
        off = cfg.offline
        return cls(float(off.cell_pileup_min_gev), float(off.pileup_window_ns), float(cfg.trigger.mip_adc))


# ------------------------------------------------------------------------------------ shower shape
@lru_cache(maxsize=4)
def _profile_tables(step_mm: float = SHAPE_GRID_STEP_MM) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre grid (g,) in mm and the expected column (x) and row (y) fractions (g, 6) of an e-m shower,
    normalised over the matrix (the separable profile of sim_frontend.geometry)."""
    lo = min(geo.ECAL_EDGES_X[0], geo.ECAL_EDGES_Y[0])
    hi = max(geo.ECAL_EDGES_X[-1], geo.ECAL_EDGES_Y[-1])
    grid = np.arange(lo, hi + 0.5 * step_mm, step_mm)
    w, b1, b2 = geo.ECAL_PROFILES[geo.SHAPE_EM]

    def fractions(edges: np.ndarray) -> np.ndarray:
        d = edges[None, :] - grid[:, None]
        cdf = np.where(
            d < 0,
            w * 0.5 * np.exp(np.minimum(d, 0) / b1) + (1 - w) * 0.5 * np.exp(np.minimum(d, 0) / b2),
            w * (1 - 0.5 * np.exp(-np.maximum(d, 0) / b1)) + (1 - w) * (1 - 0.5 * np.exp(-np.maximum(d, 0) / b2)),
        )
        f = np.diff(cdf, axis=1)
        return f / f.sum(axis=1, keepdims=True)

    return grid, fractions(geo.ECAL_EDGES_X), fractions(geo.ECAL_EDGES_Y)


@nb.njit(cache=True, nogil=True, inline="always")
def _var(e: float) -> float:
    if e < 0.0:
        e = 0.0
    return SHAPE_STOCH_GEV * SHAPE_STOCH_GEV * e + (SHAPE_CONST * e) ** 2 + SHAPE_NOISE_GEV * SHAPE_NOISE_GEV


@nb.njit(cache=True, nogil=True, inline="always")
def _best_position(proj: np.ndarray, total: float, table: np.ndarray) -> int:
    """Grid index minimising the chi2 of a 1D projection (6,) against total x table[g] (g, 6)."""
    best = 1e300
    ib = 0
    for g in range(table.shape[0]):
        c2 = 0.0
        for i in range(table.shape[1]):
            e = total * table[g, i]
            d = proj[i] - e
            c2 += d * d / _var(e)
        if c2 < best:
            best = c2
            ib = g
    return ib


@nb.njit(cache=True, nogil=True)
def _shape_kernel(m, grid, tx, ty, cx_mm, cy_mm, x_out, y_out, chi2_out, spread_out):
    """Per event of the (n, 6, 6) PS + main maps: centre from the two 1D projections, then the chi2 of the
    whole map and the RMS lateral spread about that centre. Events without energy get NaN."""
    nx, ny = m.shape[1], m.shape[2]
    px = np.empty(nx)
    py = np.empty(ny)
    for k in range(m.shape[0]):
        total = 0.0
        for i in range(nx):
            px[i] = 0.0
        for j in range(ny):
            py[j] = 0.0
        for i in range(nx):
            for j in range(ny):
                v = m[k, i, j]
                px[i] += v
                py[j] += v
                total += v
        if total <= 0.0:
            x_out[k] = np.nan
            y_out[k] = np.nan
            chi2_out[k] = np.nan
            spread_out[k] = np.nan
            continue
        gx = _best_position(px, total, tx)
        gy = _best_position(py, total, ty)
        xc = grid[gx]
        yc = grid[gy]
        c2 = 0.0
        s2 = 0.0
        for i in range(nx):
            for j in range(ny):
                e = total * tx[gx, i] * ty[gy, j]
                d = m[k, i, j] - e
                c2 += d * d / _var(e)
                s2 += m[k, i, j] * ((cx_mm[i] - xc) ** 2 + (cy_mm[j] - yc) ** 2)
        x_out[k] = xc
        y_out[k] = yc
        chi2_out[k] = c2
        spread_out[k] = math.sqrt(max(s2, 0.0) / total)


def shower_shape(cell_map: np.ndarray) -> dict[str, np.ndarray]:
    """Shower-shape variables of PS + main energy maps ``cell_map`` (n, 6, 6) GeV ([x][y]): hottest cell,
    its energy fraction, the centre fitted with the e-m lateral profile (a 1D chi2 scan of each projection on
    a 0.5 mm grid), the chi2 of the whole map at that centre (36 - 3 degrees of freedom) and the RMS spread."""
    m = np.ascontiguousarray(cell_map, dtype=np.float64)
    n = m.shape[0]
    total = m.sum(axis=(1, 2))
    flat = m.reshape(n, _PIX)
    imax = np.argmax(flat, axis=1) if n else np.zeros(0, np.int64)
    has = total > 0
    max_frac = np.divide(flat[np.arange(n), imax], total, out=np.zeros(n), where=has)
    grid, tx, ty = _profile_tables()
    x, y, chi2, spread = (np.empty(n) for _ in range(4))
    _shape_kernel(m, grid, tx, ty, _CENTRES_X, _CENTRES_Y, x, y, chi2, spread)
    return {
        "ecal_cx": np.where(has, imax // ch.N_ECAL_Y, -1).astype(np.int8),
        "ecal_cy": np.where(has, imax % ch.N_ECAL_Y, -1).astype(np.int8),
        "ecal_max_frac": max_frac.astype(np.float32),
        "ecal_x_mm": x.astype(np.float32),
        "ecal_y_mm": y.astype(np.float32),
        "ecal_chi2": chi2.astype(np.float32),
        "ecal_ndf": np.full(n, _PIX - 3, dtype=np.int16),
        "ecal_spread_mm": spread.astype(np.float32),
    }


_CENTRES_X = 0.5 * (geo.ECAL_EDGES_X[1:] + geo.ECAL_EDGES_X[:-1])
_CENTRES_Y = 0.5 * (geo.ECAL_EDGES_Y[1:] + geo.ECAL_EDGES_Y[:-1])


# ------------------------------------------------------------------------------------ event table
def reco_columns(reco: RecoResult, calib: Calibration, params: EventParams) -> Table:
    """Per-event columns from a reconstruction of all 121 channels (arrays (n, 121))."""
    e = reco.energy_gev
    n = e.shape[0]
    ecal = ch.ecal_map(e).astype(np.float64)  # (n, 2, 6, 6)
    hcal = ch.hcal_map(e).astype(np.float64)  # (n, 4, 3, 3)
    e_ps = ecal[:, 0].sum(axis=(1, 2))
    e_main = ecal[:, 1].sum(axis=(1, 2))
    e_mod = hcal.sum(axis=(2, 3))
    t: Table = {
        "e_ecal": (e_ps + e_main).astype(np.float32),
        "e_ps": e_ps.astype(np.float32),
        "e_ecal_main": e_main.astype(np.float32),
    }
    t["e_ps_sum"] = e[:, _ID["PS_SUM"]].astype(np.float32)
    t["e_ecal_sum"] = e[:, _ID["ECAL_SUM"]].astype(np.float32)
    t.update(shower_shape(ecal[:, 0] + ecal[:, 1]))
    t["e_hcal"] = e_mod.sum(axis=1).astype(np.float32)
    for mod in range(ch.N_HCAL_MODULES):
        t[f"e_hcal{mod}"] = e_mod[:, mod].astype(np.float32)
    amp = reco.amplitude
    v2 = _ID["V2"]
    t["v2_mip"] = (amp[:, v2] / params.mip_adc).astype(np.float32)
    t["e_v2"] = e[:, v2].astype(np.float32)
    for i, name in enumerate(ch.SRD_NAMES):
        cid = _ID[name]
        t[f"srd{i}"] = e[:, cid].astype(np.float32)
        t[f"srd{i}_dt"] = (reco.time_ns[:, cid] - calib.t0_ns[cid]).astype(np.float32)
    for name in COUNTER_COLUMNS:
        t[name] = (amp[:, _ID[name]] / params.mip_adc).astype(np.float32)
    # pile-up: every ECAL cell above the threshold must show one pulse at the nominal time
    ecal_ids = slice(ch.ECAL_FIRST, ch.ECAL_FIRST + ch.N_ECAL)
    e_cells = e[:, ecal_ids]
    checked = e_cells > params.cell_pileup_min_gev
    dt = np.abs(reco.time_ns[:, ecal_ids] - calib.t0_ns[ecal_ids].astype(np.float32)[None, :])
    dt = np.where(checked, np.nan_to_num(dt, nan=np.inf), 0.0)
    flags = reco.flags[:, ecal_ids]
    bad = checked & (((flags & FLAG_PILEUP) != 0) | ((flags & FLAG_NO_SIGNAL) != 0) | (dt > params.pileup_window_ns))
    t["n_cells_pileup_check"] = checked.sum(axis=1).astype(np.int16)
    t["n_cells_pileup"] = bad.sum(axis=1).astype(np.int16)
    t["max_cell_dt_ns"] = (dt.max(axis=1) if n else np.zeros(0)).astype(np.float32)
    return t


def truth_columns(truth: np.ndarray) -> Table:
    """``truth_<field>`` columns of a TRUTH_DTYPE array."""
    return {f"truth_{name}": np.ascontiguousarray(truth[name]) for name in TRUTH_DTYPE.names or ()}


def track_columns(tracks: np.ndarray) -> dict[str, np.ndarray]:
    """Event-table columns ``trk_*`` (:data:`offline.selection.TRACK_COLUMNS`) from
    :data:`detector.tracking.TRACK_DTYPE` records."""
    return {
        "trk_p_gev": tracks["p_gev"].astype(np.float64),
        "trk_angle_mrad": tracks["angle_mrad"].astype(np.float64),
        "trk_n_tracks": tracks["n_tracks"].astype(np.int64),
        "trk_n_incoming": tracks["n_incoming"].astype(np.int64),
        "trk_chi2": tracks["chi2"].astype(np.float64),
        "trk_ndf": tracks["ndf"].astype(np.int64),
        "trk_n_hits": tracks["n_hits"].astype(np.int64),
    }


def event_table_from_arrays(
    waveforms: np.ndarray,
    calib: Calibration,
    cfg: Config,
    *,
    event_id: np.ndarray | None = None,
    trigger_mask: np.ndarray | None = None,
    time_ns: np.ndarray | None = None,
    truth: np.ndarray | None = None,
    run: int = 0,
    spill: int = 0,
    reco: RecoResult | None = None,
    mm: StripData | None = None,
) -> Table:
    """Event table of full-event waveforms (int16 (n, 121, 32)), e.g. straight from the digitizer
    (the signal simulation) or from a spill file. ``reco`` may pass a reconstruction already done (by
    :func:`reconstruct_events`, e.g. LED-corrected after it); ``mm``
    (the events' Micromegas strips) adds the track columns (:func:`detector.tracking.reconstruct_tracks`)."""
    n = waveforms.shape[0]
    if reco is None:
        reco = reconstruct_events(waveforms, calib, cfg)
    t: Table = {
        "run": np.full(n, run, dtype=np.int32),
        "spill": np.full(n, spill, dtype=np.int32),
        "event_id": (np.arange(n, dtype=np.uint32) if event_id is None else np.asarray(event_id, np.uint32)),
        "time_ns": (np.zeros(n) if time_ns is None else np.asarray(time_ns, np.float64)),
        "trigger_mask": (np.zeros(n, np.uint8) if trigger_mask is None else np.asarray(trigger_mask, np.uint8)),
    }
    t.update(reco_columns(reco, calib, EventParams.from_config(cfg)))
    if truth is not None:
        if truth.shape != (n,):
            raise ValueError(f"truth has shape {truth.shape}, expected ({n},)")
        t.update(truth_columns(truth))
    if mm is not None:
        if mm.n_events != n:
            raise ValueError(f"mm holds {mm.n_events} events, expected {n}")
        t.update(track_columns(reconstruct_tracks(mm, Spectrometer.from_config(cfg))))
    return t


def event_table(data: SpillData, calib: Calibration, cfg: Config, reco: RecoResult | None = None) -> Table:
    """Event table of one spill file read with :func:`detector.spillfile.read_spill` (its ``/events`` only:
    the LED events are never in it); ``reco`` may pass its reconstruction (e.g. LED-corrected:
    :mod:`offline.led_correction`)."""
    return event_table_from_arrays(
        data.waveforms,
        calib,
        cfg,
        event_id=data.event_id,
        trigger_mask=data.trigger_mask,
        time_ns=data.time_ns,
        truth=data.truth,
        mm=data.mm,
        run=int(data.attrs.get("run", 0)),
        spill=int(data.attrs.get("spill", 0)),
        reco=reco,
    )


def n_rows(table: Table) -> int:
    return int(next(iter(table.values())).shape[0]) if table else 0


def take(table: Table, mask_or_index: np.ndarray) -> Table:
    """Rows of a table selected by a boolean mask or an index array."""
    return {k: v[mask_or_index] for k, v in table.items()}


def concat(tables: list[Table]) -> Table:
    """Row-wise concatenation of tables with the same columns (truth columns only if all have them)."""
    tables = [t for t in tables if t]
    if not tables:
        return {}
    keys = [k for k in tables[0] if all(k in t for t in tables)]
    return {k: np.concatenate([t[k] for t in tables]) for k in keys}
