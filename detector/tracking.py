"""The spectrometer: Micromegas strip data, its geometry, and the track reconstruction (written once; used by
the simulation's truth checks, offline and the benchmark).

Geometry (:class:`Spectrometer`, from ``[beamline]`` and ``[tracker]``; docs/physics.md 1.10): stations at
``z`` (m) along the nominal beam, each an X and a Y strip plane (plane ``2 k`` = X of station k, ``2 k + 1`` =
Y); strips of ``pitch_mm`` numbered from the low edge ``-half_size_mm``; thin-lens dipoles at ``magnet_z`` with
kicks ``K_i = C B_i L_i`` (GeV, C = 0.299792458 GeV / (T m)) that bend a negative particle of momentum p by
``K_i / p`` towards -x. Transverse coordinates are relative to the nominal trajectory of a ``p0`` =
``beam.energy_gev`` electron, so a nominal track is x = y = 0 everywhere.

Strip data of a block of events (:class:`StripData`): flat arrays ``plane`` (u1), ``strip`` (u2), ``charge``
(f4, ADC counts, zero-suppressed) and ``time_ns`` (f4: the strip's hit time relative to the event's trigger,
ns, from the APV25 samples, :mod:`detector.mmblock`; 0 = in time, NaN = no time: never in time) with
``event_ptr`` (n + 1) delimiting the events; strips of an event in any order.

Reconstruction (:func:`reconstruct_tracks`, numba, one pass per event):

1. clustering: per plane, the strips in time (|time| <= ``hit_time_cut_ns``) and the others (later or
   earlier beam particles of the readout window: pile-up; no time) apart, sorted by number, adjacent strips
   (gap of at most one strip) form a cluster, so a pile-up particle's strips beside or on the event's own
   particle's do not move its cluster; position = charge-weighted centroid, time = charge-weighted mean of
   its strips' times (NaN when none has one); at most ``MAX_CLUSTERS`` per plane (largest charge kept);
   only clusters of charge >= ``HIT_MIN_CHARGE`` (noise strips are not) and of |time| <= ``hit_time_cut_ns``
   are hit candidates of the fits;
2. x: every combination of one cluster per X plane that has any (when none of them makes a track: one
   cluster or none per plane) is fitted with the linear
   model ``x(z) = a + b (z - z_up) - kappa sum_i K_i (z - z_i)_+``, ``kappa = 1/p - 1/p0`` (least squares,
   equal weights ``resolution_mm``), needing ``min_hits_x`` hits (at least 3) with at least one on each side
   of the magnets (with 3 hits the momentum has no check: any third point fits);
   ``p = 1 / (1/p0 + kappa)``; y: straight lines through the Y planes (at least 2 hits);
3. best track: of the candidates with chi2 < ``chi2_max`` (per view: a larger chi2 means hits of different
   particles or noise that do not line up, no track; ``p_gev`` NaN when x has none), most hits, then smallest
   chi2; track multiplicity: hit-disjoint x candidates with chi2 < ``chi2_max`` taken best first
   (``n_tracks``), and the number of incoming particles seen before the
   magnets, the most in-time clusters of charge >= ``PARTICLE_CLUSTER_CHARGE`` in any upstream plane
   (``n_incoming``: a particle bent out of the downstream chambers still counts there); incoming angle =
   sqrt(b_x^2 + b_y^2) (relative to the nominal axis), mrad.

Outputs one :data:`TRACK_DTYPE` record per event (``p_gev`` NaN when no x track) and, on request, from the
same clustering pass, a :class:`PlaneSummary` per event and plane (strips, clusters, the largest cluster; in
time or not).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, overload

import numba as nb
import numpy as np

from .settings import Config

C_GEV_PER_TM = 0.299792458  #: momentum kick (GeV) of a field integral of 1 T m on a unit charge, per rad
MAX_CLUSTERS = 6  #: clusters kept per plane (largest charge first)
#: a cluster with at least this charge (ADC counts) counts as a particle in ``n_incoming`` (a noise strip is
#: a single strip of a few tens of counts; a particle's cluster a few hundred)
PARTICLE_CLUSTER_CHARGE = 150.0
#: clusters with less charge (ADC counts) are not hit candidates of the track fits: noise strips (the
#: zero-suppression threshold plus an exponential of a few tens of counts) fall below it, a particle's cluster
#: (a Landau of most probable value a few hundred counts) almost never does. Lower than
#: :data:`PARTICLE_CLUSTER_CHARGE` because the costs differ: a particle cluster lost here loses the track (it
#: needs every X plane), a noise cluster counted there loses the event as two incoming particles. Without it,
#: with one degree of freedom in x, a combination of noise clusters often fits better than the particle's own
#: hits and gives a wrong momentum.
HIT_MIN_CHARGE = 100.0

#: one record per event: the reconstructed incoming track
TRACK_DTYPE = np.dtype(
    [
        ("p_gev", "<f4"),  # momentum from the deflection, GeV (NaN: no x track)
        ("angle_mrad", "<f4"),  # incoming angle to the nominal axis, mrad (NaN: no x or y track)
        ("slope_x_mrad", "<f4"),  # incoming slopes (upstream of the magnets) relative to the nominal axis
        ("slope_y_mrad", "<f4"),
        ("x_mm", "<f4"),  # track position at the first station, mm
        ("y_mm", "<f4"),
        ("chi2", "<f4"),  # x chi2 + y chi2 of the best track
        ("ndf", "u1"),
        ("n_tracks", "u1"),  # hit-disjoint x candidates with chi2 < chi2_max
        ("n_hits", "u1"),  # planes with a hit on the best track (x and y)
        ("n_incoming", "u1"),  # most in-time particle-like clusters in any plane upstream of the magnets
    ]
)


@dataclass(frozen=True)
class Spectrometer:
    """Geometry of the stations and magnets (see the module docstring)."""

    names: tuple[str, ...]
    z_m: np.ndarray  #: (n_st,) station positions, m
    n_upstream: int
    magnet_z_m: np.ndarray  #: (n_mag,) dipole centres, m
    kick_gev: np.ndarray  #: (n_mag,) K_i = C B_i L_i, GeV
    p0_gev: float
    pitch_mm: float
    half_size_mm: float
    resolution_mm: float
    chi2_max: float
    min_hits_x: int = 4
    hit_time_cut_ns: float = np.inf  #: clusters with a larger |time| (or none) are not hit candidates, ns

    @property
    def n_stations(self) -> int:
        return int(self.z_m.shape[0])

    @property
    def n_planes(self) -> int:
        return 2 * self.n_stations

    @property
    def n_strips(self) -> int:
        return int(round(2.0 * self.half_size_mm / self.pitch_mm))

    @property
    def bend_mrad(self) -> float:
        """Total deflection of a nominal electron, mrad."""
        return float(self.kick_gev.sum() / self.p0_gev * 1e3)

    @classmethod
    def from_config(cls, cfg: Config) -> Spectrometer:
        bl, tr = cfg.beamline, cfg.tracker
        z = np.array([bl.layer_z_m[bl.layer_names.index(s)] for s in tr.stations], dtype=np.float64)
        return cls(
            names=tuple(tr.stations),
            z_m=z,
            n_upstream=int(np.count_nonzero(z < bl.magnet_z_m[0])),
            magnet_z_m=np.asarray(bl.magnet_z_m, dtype=np.float64),
            kick_gev=C_GEV_PER_TM * np.asarray(bl.magnet_field_t, np.float64) * np.asarray(bl.magnet_length_m),
            p0_gev=float(cfg.beam.energy_gev),
            pitch_mm=float(tr.pitch_mm),
            half_size_mm=float(tr.half_size_mm),
            resolution_mm=float(tr.resolution_mm),
            chi2_max=float(tr.chi2_max),
            min_hits_x=int(tr.min_hits_x),
            hit_time_cut_ns=float(tr.hit_time_cut_ns),
        )

    def bend_lever_m(self) -> np.ndarray:
        """(n_st,) g(z) = sum_i K_i (z - z_i)_+ / p0: the x offset (m per unit kappa * p0) of each station."""
        d = np.clip(self.z_m[:, None] - self.magnet_z_m[None, :], 0.0, None)
        return (d * self.kick_gev[None, :]).sum(axis=1)

    def fit_matrices(self) -> tuple[np.ndarray, np.ndarray]:
        """Least-squares solution matrices per hit mask (bit k = station k has a hit): x (2^n, 3, n_st) for
        (a [mm], b [mrad], kappa [1/GeV]) and y (2^n, 2, n_st) for (a, b); zero where the mask cannot be fitted."""
        n = self.n_stations
        dz = (self.z_m - self.z_m[0]) * 1e3  # mm
        g = -self.bend_lever_m() * 1e3  # mm per (1/GeV) of kappa
        mx = np.zeros((1 << n, 3, n))
        my = np.zeros((1 << n, 2, n))
        for mask in range(1 << n):
            sel = np.array([(mask >> k) & 1 for k in range(n)], bool)
            up = sel[: self.n_upstream].sum()
            if sel.sum() >= max(3, self.min_hits_x) and up >= 1 and sel.sum() - up >= 1:
                a = np.stack([np.ones(n), dz * 1e-3, g], axis=1)[sel]  # slope in mrad: dz in m
                mx[mask][:, sel] = np.linalg.pinv(a)
            if sel.sum() >= 2:
                a = np.stack([np.ones(n), dz * 1e-3], axis=1)[sel]
                my[mask][:, sel] = np.linalg.pinv(a)
        return mx, my


@dataclass
class StripData:
    """Zero-suppressed Micromegas strips of a block of events (see the module docstring)."""

    event_ptr: np.ndarray  #: (n + 1,) int64: strips of event e are [event_ptr[e], event_ptr[e + 1])
    plane: np.ndarray  #: u1: 2 * station + (0 = X, 1 = Y)
    strip: np.ndarray  #: u2
    charge: np.ndarray  #: f4, ADC counts
    time_ns: np.ndarray  #: f4, hit time relative to the event's trigger, ns (0: in time; NaN: none)

    @classmethod
    def empty(cls, n_events: int) -> StripData:
        """``n_events`` events without strips (what a kernel warm-up reconstructs)."""
        ptr = np.zeros(n_events + 1, np.int64)
        return cls(ptr, np.zeros(0, np.uint8), np.zeros(0, np.uint16), np.zeros(0, np.float32), np.zeros(0, np.float32))

    @property
    def n_events(self) -> int:
        return int(self.event_ptr.shape[0] - 1)

    def event(self, e: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(plane, strip, charge, time_ns) of event ``e``."""
        s = slice(int(self.event_ptr[e]), int(self.event_ptr[e + 1]))
        return self.plane[s], self.strip[s], self.charge[s], self.time_ns[s]


# ------------------------------------------------------------------------------------------ kernels
@nb.njit(cache=True, nogil=True)
def _clusters(plane, strip, charge, time, t_cut, n_planes, pitch, half, pos, qsum, tcl, ncl, nall, nstr):
    """Cluster the strips of one event, those of |time| <= ``t_cut`` (ns) apart from the others: per plane at
    most MAX_CLUSTERS positions (mm), charges and times (ns, charge-weighted over the strips that have one;
    NaN when none has); ``nall`` counts every cluster of a plane, ``nstr`` its strips."""
    for p in range(n_planes):
        ncl[p] = 0
        nall[p] = 0
        nstr[p] = 0
    m = plane.shape[0]
    key = np.empty(m, np.int64)
    for k in range(m):
        late = 0 if abs(time[k]) <= t_cut else 1  # NaN: not in time
        key[k] = (np.int64(plane[k]) * 2 + late) * 65536 + np.int64(strip[k])
    order = np.argsort(key)
    i = 0
    while i < m:
        k = order[i]
        p = plane[k]
        group = key[k] // 65536
        last = np.int64(strip[k])
        q = 0.0
        qs = 0.0
        qt = 0.0
        qtw = 0.0
        j = i
        while j < m:
            kk = order[j]
            if key[kk] // 65536 != group or np.int64(strip[kk]) - last > 2:
                break
            last = np.int64(strip[kk])
            q += charge[kk]
            qs += charge[kk] * (strip[kk] + 0.5)
            if np.isfinite(time[kk]):
                qt += charge[kk] * time[kk]
                qtw += charge[kk]
            j += 1
        if q <= 0.0 or p >= n_planes:
            i = j
            continue
        nall[p] += 1
        nstr[p] += j - i
        i = j
        x = qs / q * pitch - half
        tc = qt / qtw if qtw > 0.0 else np.nan
        c = ncl[p]
        if c < MAX_CLUSTERS:
            pos[p, c] = x
            qsum[p, c] = q
            tcl[p, c] = tc
            ncl[p] = c + 1
        else:  # replace the smallest cluster if this one is larger
            jmin = 0
            for jj in range(1, MAX_CLUSTERS):
                if qsum[p, jj] < qsum[p, jmin]:
                    jmin = jj
            if q > qsum[p, jmin]:
                pos[p, jmin] = x
                qsum[p, jmin] = q
                tcl[p, jmin] = tc


@nb.njit(cache=True, nogil=True)
def _keep_hits(pos, qsum, tcl, ncl, n_planes, t_cut):
    """Keep, per plane and in order, the clusters of charge >= HIT_MIN_CHARGE and |time| <= ``t_cut`` (ns; a
    NaN time fails) (the fits' hit candidates)."""
    for p in range(n_planes):
        c = 0
        for j in range(ncl[p]):
            if qsum[p, j] >= HIT_MIN_CHARGE and abs(tcl[p, j]) <= t_cut:
                pos[p, c] = pos[p, j]
                qsum[p, c] = qsum[p, j]
                tcl[p, c] = tcl[p, j]
                c += 1
        ncl[p] = c


@nb.njit(cache=True, nogil=True)
def _fit_view(pos, ncl, view, n_st, mats, ok, npar, dz_m, glev, sigma, chi2_max, used_best, best, skip):
    """All cluster combinations of one view (0 = x, 1 = y), one cluster per plane that has any (``skip``:
    one or none, so a missed hit beside a noise cluster can be left out): best fit into ``best`` (params...,
    chi2, nhit, ndf; nhit 0 when no candidate has chi2 < chi2_max); returns the number of hit-disjoint
    candidates below chi2_max (x only; y returns 0)."""
    choice = np.zeros(n_st, np.int64)
    nopt = np.zeros(n_st, np.int64)
    total = 1
    for k in range(n_st):
        c = ncl[2 * k + view]
        nopt[k] = c + 1 if skip else max(c, 1)
        total *= nopt[k]
    ncand = 0
    cand_chi2 = np.empty(total)
    cand_hits = np.empty((total, n_st), np.int64)
    best[npar] = np.inf
    best[npar + 1] = 0.0
    found = False
    for t in range(total):
        r = t
        mask = 0
        for k in range(n_st):
            choice[k] = r % nopt[k]
            r //= nopt[k]
            if choice[k] < ncl[2 * k + view]:
                mask |= 1 << k
        if not ok[mask]:
            continue
        mat = mats[mask]
        par = np.zeros(npar)
        for q in range(npar):
            acc = 0.0
            for k in range(n_st):
                if (mask >> k) & 1:
                    acc += mat[q, k] * pos[2 * k + view, choice[k]]
            par[q] = acc
        chi2 = 0.0
        nh = 0
        for k in range(n_st):
            if (mask >> k) & 1:
                model = par[0] + par[1] * dz_m[k]
                if npar == 3:
                    model += par[2] * glev[k]
                d = (pos[2 * k + view, choice[k]] - model) / sigma
                chi2 += d * d
                nh += 1
        cand_chi2[ncand] = chi2
        for k in range(n_st):
            cand_hits[ncand, k] = choice[k] if (mask >> k) & 1 else -1
        ncand += 1
        if chi2 >= chi2_max:  # not a track: hits of different particles (or noise) do not line up
            continue
        if nh > best[npar + 1] or (nh == best[npar + 1] and chi2 < best[npar]):
            for q in range(npar):
                best[q] = par[q]
            best[npar] = chi2
            best[npar + 1] = nh
            best[npar + 2] = nh - npar
            found = True
    if not found or npar == 2:
        return 0
    # hit-disjoint candidates below chi2_max, best first
    order = np.argsort(cand_chi2[:ncand])
    for k in range(n_st):
        for c in range(MAX_CLUSTERS):
            used_best[k, c] = False
    n_tr = 0
    for o in order:
        if cand_chi2[o] >= chi2_max:
            break
        free = True
        nh = 0
        for k in range(n_st):
            c = cand_hits[o, k]
            if c >= 0:
                nh += 1
                if used_best[k, c]:
                    free = False
        if not free or nh < 3:
            continue
        for k in range(n_st):
            c = cand_hits[o, k]
            if c >= 0:
                used_best[k, c] = True
        n_tr += 1
    return n_tr


@nb.njit(cache=True, nogil=True)
def _reco_kernel(
    event_ptr, plane, strip, charge, time, n_st, n_up, pitch, half, sigma, chi2_max, t_cut, mx, my, okx, oky, dz_m,
    glev, p0, out, pl_strips, pl_clusters, pl_lead_mm, pl_lead_q,
):  # fmt: skip
    n_planes = 2 * n_st
    pos = np.zeros((n_planes, MAX_CLUSTERS))
    qsum = np.zeros((n_planes, MAX_CLUSTERS))
    tcl = np.zeros((n_planes, MAX_CLUSTERS))
    ncl = np.zeros(n_planes, np.int64)
    nall = np.zeros(n_planes, np.int64)
    nstr = np.zeros(n_planes, np.int64)
    with_planes = pl_strips.shape[0] > 0
    used = np.zeros((n_st, MAX_CLUSTERS), np.bool_)
    bx = np.zeros(6)  # _fit_view's best: npar parameters, chi2, hits, ndf
    by = np.zeros(5)
    for e in range(event_ptr.shape[0] - 1):
        a, b = event_ptr[e], event_ptr[e + 1]
        _clusters(
            plane[a:b], strip[a:b], charge[a:b], time[a:b], t_cut, n_planes, pitch, half, pos, qsum, tcl, ncl, nall,
            nstr,
        )  # fmt: skip
        if with_planes:
            for pl in range(n_planes):
                pl_strips[e, pl] = min(nstr[pl], 65535)
                pl_clusters[e, pl] = min(nall[pl], 65535)
                jl = -1
                for j in range(ncl[pl]):
                    if jl < 0 or qsum[pl, j] > qsum[pl, jl]:
                        jl = j
                pl_lead_mm[e, pl] = pos[pl, jl] if jl >= 0 else np.nan
                pl_lead_q[e, pl] = qsum[pl, jl] if jl >= 0 else 0.0
        _keep_hits(pos, qsum, tcl, ncl, n_planes, t_cut)
        ntr = 0
        # view and pass are loop variables, not literals: numba compiles one _fit_view, not one per constant
        for view in range(2):
            mats, ok, best = (mx, okx, bx) if view == 0 else (my, oky, by)
            npar = 3 - view
            for second in range(2):  # second pass: no track through a cluster of every plane, leave planes out
                skip = second == 1
                n = _fit_view(pos, ncl, view, n_st, mats, ok, npar, dz_m, glev, sigma, chi2_max, used, best, skip)
                if view == 0:
                    ntr = n
                if best[npar + 1] > 0:
                    break
        rec = out[e]
        if bx[4] > 0 and np.isfinite(bx[3]):
            inv = 1.0 / p0 + bx[2]
            rec["p_gev"] = 1.0 / inv if inv > 0.0 else np.inf
            rec["x_mm"] = bx[0]
            rec["slope_x_mrad"] = bx[1]
        else:
            rec["p_gev"] = np.nan
            rec["x_mm"] = np.nan
            rec["slope_x_mrad"] = np.nan
        if by[3] > 0 and np.isfinite(by[2]):
            rec["y_mm"] = by[0]
            rec["slope_y_mrad"] = by[1]
        else:
            rec["y_mm"] = np.nan
            rec["slope_y_mrad"] = np.nan
        if bx[4] > 0 and by[3] > 0 and np.isfinite(bx[3]) and np.isfinite(by[2]):
            rec["angle_mrad"] = np.sqrt(bx[1] * bx[1] + by[1] * by[1])
            rec["chi2"] = bx[3] + by[2]
            rec["ndf"] = np.uint8(bx[4] + by[3])
        else:
            rec["angle_mrad"] = np.nan
            rec["chi2"] = np.nan
            rec["ndf"] = 0
        rec["n_tracks"] = np.uint8(min(ntr, 255))
        ninc = 0
        for pl in range(2 * n_up):
            c = 0
            for j in range(ncl[pl]):
                if qsum[pl, j] >= PARTICLE_CLUSTER_CHARGE:
                    c += 1
            if c > ninc:
                ninc = c
        rec["n_incoming"] = np.uint8(ninc)
        nh = 0
        if np.isfinite(bx[3]):
            nh += int(bx[4])
        if np.isfinite(by[2]):
            nh += int(by[3])
        rec["n_hits"] = np.uint8(nh)


@dataclass
class PlaneSummary:
    """Per event and plane (arrays (n_events, n_planes)) what the clustering saw: the monitor's beam
    profiles, plane efficiencies and noise (:func:`reconstruct_tracks` with ``planes=True``)."""

    n_strips: np.ndarray  #: u2, strips read out
    n_clusters: np.ndarray  #: u2, clusters (every one, not only the MAX_CLUSTERS kept for the fit)
    lead_mm: np.ndarray  #: f4, position of the largest-charge cluster, mm (NaN: no cluster)
    lead_charge: np.ndarray  #: f4, its charge, ADC counts (0: no cluster)

    @classmethod
    def zeros(cls, n_events: int, n_planes: int) -> PlaneSummary:
        shape = (n_events, n_planes)
        return cls(
            np.zeros(shape, np.uint16), np.zeros(shape, np.uint16), np.full(shape, np.nan, np.float32),
            np.zeros(shape, np.float32),
        )  # fmt: skip

    @property
    def particle(self) -> np.ndarray:
        """bool: the plane has a particle-like cluster (charge >= :data:`PARTICLE_CLUSTER_CHARGE`)."""
        return self.lead_charge >= PARTICLE_CLUSTER_CHARGE


@overload
def reconstruct_tracks(strips: StripData, spec: Spectrometer) -> np.ndarray: ...
@overload
def reconstruct_tracks(
    strips: StripData, spec: Spectrometer, planes: Literal[True]
) -> tuple[np.ndarray, PlaneSummary]: ...


def reconstruct_tracks(
    strips: StripData, spec: Spectrometer, planes: bool = False
) -> np.ndarray | tuple[np.ndarray, PlaneSummary]:
    """One :data:`TRACK_DTYPE` record per event of ``strips`` (see the module docstring); with ``planes``
    also the :class:`PlaneSummary` of the same pass."""
    out = np.zeros(strips.n_events, TRACK_DTYPE)
    summ = PlaneSummary.zeros(strips.n_events if planes else 0, spec.n_planes)
    if strips.n_events == 0:
        return (out, summ) if planes else out
    mx, my = _matrices(spec)
    dz = spec.z_m - spec.z_m[0]
    glev = -spec.bend_lever_m() * 1e3
    _reco_kernel(
        np.ascontiguousarray(strips.event_ptr, dtype=np.int64),
        np.ascontiguousarray(strips.plane, dtype=np.uint8),
        np.ascontiguousarray(strips.strip, dtype=np.uint16),
        np.ascontiguousarray(strips.charge, dtype=np.float32),
        np.ascontiguousarray(strips.time_ns, dtype=np.float32),
        spec.n_stations,
        spec.n_upstream,
        spec.pitch_mm,
        spec.half_size_mm,
        spec.resolution_mm,
        spec.chi2_max,
        float(spec.hit_time_cut_ns),
        mx,
        my,
        np.abs(mx).sum(axis=(1, 2)) > 0,
        np.abs(my).sum(axis=(1, 2)) > 0,
        dz,
        glev,
        spec.p0_gev,
        out,
        summ.n_strips,
        summ.n_clusters,
        summ.lead_mm,
        summ.lead_charge,
    )
    return (out, summ) if planes else out


_MATRIX_CACHE: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}


def _matrices(spec: Spectrometer) -> tuple[np.ndarray, np.ndarray]:
    k = (tuple(spec.z_m), spec.n_upstream, tuple(spec.magnet_z_m), tuple(spec.kick_gev), spec.min_hits_x)
    if k not in _MATRIX_CACHE:
        _MATRIX_CACHE[k] = spec.fit_matrices()
    return _MATRIX_CACHE[k]
