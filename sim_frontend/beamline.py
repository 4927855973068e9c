"""Transport of every beam particle through the beam line upstream of the ECAL (``[beamline]``, docs/physics.md
1.10): multiple scattering, bremsstrahlung, the dipoles, synchrotron radiation into the SRD, Micromegas hits.

Coordinates as in :mod:`detector.tracking`: z (m) from the vacuum exit window, x/y (mm) and slopes (mrad)
relative to the nominal trajectory of a ``beam.energy_gev`` electron. The generator's impact point
(``truth x_mm, y_mm``) is the particle's position at z = 0; :func:`transport` replaces it by the centre of
what reaches the ECAL face. Halo muons pass outside the magnets and chambers and are not transported.

Per particle, along the line (thin layers and the beam pipes' end windows at their z, the gas between them
as slabs at the gap centres: air, or what fills a pipe (vacuum: nothing), thin-lens dipoles), grouped into
segments that end at an action (a station, a dipole, the ECAL face):

- multiple scattering, Highland (PDG 34.15) for the summed thickness t of the segment: theta0 = 13.6 MeV / p
  sqrt(t) (1 + 0.038 ln t), Gaussian per plane, once at the segment's X0-weighted centre, for every charged
  particle;
- bremsstrahlung of electrons (complete screening, PDG 34.29: dN/dy = (4/3 - 4/3 y + y^2) / y per X0 for
  photon energy fraction y > ``brem_y_min``): a Poisson number per segment, y from the spectrum; the electron
  goes on with (1 - y) of its energy, the photon straight on (not bent by the dipoles); hadrons and muons
  radiate (m_e/m)^2 less and are not given any;
- dipoles: kick K_i / p towards -x (K_i = 0.2998 B L GeV); relative to the nominal frame a photon gets
  +K_i / p0;
- synchrotron radiation in each dipole (Jackson 14.6; Sands): photon number Poisson with mean
  5 alpha gamma theta / (2 sqrt 3), energies from the spectrum dN/dx ~ Integral_x^inf K_5/3 (x = eps / E_c,
  E_c = 3/2 hbar c gamma^3 / rho); a photon is detected in the SRD when above ``srd_photon_min_kev`` and
  within ``srd_acceptance``. Electrons draw the summed detected energy from a per-dipole quantile table made
  with that photon-by-photon simulation (one draw per dipole, :func:`sr_table`); muons and hadrons get the
  mean, which carries (m_e/m)^4 and is below any photon threshold;
- decays in flight (:mod:`sim_frontend.decays`, docs/physics.md 1.11): a mu-, pi- or K- decays at the z of
  the exponential decay law (decay length p/m c tau) into a channel with an electron, with its branching
  ratio (other channels: no decay); from there the electron goes on as any electron (scattering,
  bremsstrahlung, its own kick and SR), the photons of a Ke3 pi0 straight on, the neutrinos are lost. MC
  samples may force a channel inside the line (``force_decay``), the weight then P(decay before the
  ECAL face) x BR; the decay's randomness is its own stream (``STREAM_DECAY``);
- Micromegas: the position at every station (:func:`station_positions`) for the hits of
  :mod:`sim_frontend.mmhits`;
- at the ECAL face: photons and the electron inside the ECAL matrix make the shower (energy ``e_front`` at
  the energy-weighted centre); what lands outside it but on the HCAL face (``e_side``) showers in HCAL
  module 0; the rest is lost.

All randomness is counter based (stream 3 of :func:`sim_frontend.beam.rng_state`, keyed by the particle
index), so any subset of particles is transported identically. A :class:`Bias` with ``factor`` b > 1 multiplies the
rate of hard photons (y > ``y_min``), in the segments ending at or before ``z_max_m``, and gives each particle
the likelihood-ratio weight ``b^-n_hard exp((b - 1) Lambda_hard)``.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass
from functools import lru_cache

import numba as nb
import numpy as np
from scipy.special import kv

from detector.records import PARTICLE_CODES, TRUTH_BEAMLINE, TRUTH_DECAY
from detector.settings import Config
from detector.tracking import C_GEV_PER_TM, Spectrometer
from sim_frontend import decays as dk
from sim_frontend import geometry as g
from sim_frontend.beam import (
    E_MINUS,
    HALO,
    KAON,
    MUON,
    PION,
    BeamSpill,
    normal_ppf,
    poisson_inverse,
    rng_next,
    rng_state,
)
from sim_frontend.bremsstrahlung import brem_quantiles, brem_rate_per_x0

ELECTRON_MASS_GEV = 0.51099895e-3
MUON_MASS_GEV = 0.1056583755
PION_MASS_GEV = 0.13957039
KAON_MASS_GEV = 0.493677
ALPHA = 1.0 / 137.035999
HBARC_GEV_M = 1.973269804e-16
SR_MEAN_X = 8.0 / (15.0 * math.sqrt(3.0))  #: mean SR photon energy / E_c
HIGHLAND_GEV = 0.0136
BEAMLINE_FLAG_FRACTION = 0.05  #: TRUTH_BEAMLINE when more than this energy fraction was radiated
MAX_PHOTONS = 16  #: photon slots per particle (further photons merge into the last)
STREAM = 3  #: counter-RNG stream of the transport
STREAM_DECAY = 9  #: counter-RNG stream of the decays in flight (the other draws of a particle keep theirs)

STEP_LAYER, STEP_GAS, STEP_MAGNET = 0, 1, 2


# ------------------------------------------------------------------------------ spectra
@lru_cache(maxsize=1)
def sr_spectrum() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x grid, photon-number CDF, fraction of the energy above x) of the synchrotron spectrum,
    dN/dx ~ Integral_x^inf K_5/3(t) dt, x = eps / E_c."""
    lx = np.linspace(math.log(1e-9), math.log(60.0), 40001)
    x = np.exp(lx)
    k53 = kv(5.0 / 3.0, x)
    # G(x) = Integral_x^inf K_5/3, integrated in ln t from the top
    f = k53 * x
    seg = 0.5 * (f[1:] + f[:-1]) * np.diff(lx)
    gx = np.concatenate([np.cumsum(seg[::-1])[::-1], [0.0]])
    num = gx * x  # dN/d ln x
    cn = np.concatenate([[0.0], np.cumsum(0.5 * (num[1:] + num[:-1]) * np.diff(lx))])
    cn += 3.0 * gx[0] * x[0]  # below the grid: G ~ x^(-2/3)
    cn /= cn[-1]
    en = num * x
    ce = np.concatenate([[0.0], np.cumsum(0.5 * (en[1:] + en[:-1]) * np.diff(lx))])
    above = 1.0 - ce / ce[-1]
    return x, cn, above


@lru_cache(maxsize=1)
def sr_photon_log_quantiles(n: int = 65536) -> np.ndarray:
    """Quantile table of ln x, x = eps / E_c, of single SR photons (n + 1 nodes; interpolated in ln x). The
    last node is the quantile at 1 - 1/(4 n), not the end of the grid, so that the exponential tail is not
    stretched by the interpolation."""
    x, cn, _ = sr_spectrum()
    u = np.linspace(0.0, 1.0, n + 1)
    u[-1] = 1.0 - 0.25 / n
    return np.interp(u, cn, np.log(x))


def critical_energy_gev(p_gev: float, field_t: float, mass_gev: float = ELECTRON_MASS_GEV) -> float:
    """E_c = 3/2 hbar c gamma^3 / rho, rho = p / (C B)."""
    gamma = math.hypot(p_gev, mass_gev) / mass_gev
    rho = p_gev / (C_GEV_PER_TM * field_t)
    return 1.5 * HBARC_GEV_M * gamma**3 / rho


def sr_photons_per_bend(p_gev: float, kick_gev: float, mass_gev: float = ELECTRON_MASS_GEV) -> float:
    """Mean photon number 5 alpha gamma theta / (2 sqrt 3) for a bend theta = K / p."""
    gamma = math.hypot(p_gev, mass_gev) / mass_gev
    return 5.0 * ALPHA * gamma * (kick_gev / p_gev) / (2.0 * math.sqrt(3.0))


@nb.njit(cache=True, nogil=True)
def _sr_sample(n_mean, ec_per_gev2, e_nodes, lxq, thr, acc, n_samples, out):
    nq = out.shape[1] - 1
    buf = np.empty(n_samples)
    for j in range(e_nodes.shape[0]):
        e = e_nodes[j]
        ec = ec_per_gev2 * e * e
        for s in range(n_samples):
            st = rng_state(np.uint64(0x5EC7), np.uint64(j * n_samples + s), np.uint64(STREAM))
            st, u = rng_next(st)
            n = poisson_inverse(u, n_mean, math.exp(-n_mean), 1000)
            tot = 0.0
            for _ in range(n):
                st, u = rng_next(st)
                pos = u * (lxq.shape[0] - 1)
                i = int(pos)
                eps = math.exp(lxq[i] + (lxq[i + 1] - lxq[i]) * (pos - i)) * ec
                st, u = rng_next(st)
                if eps > thr and u < acc:
                    tot += eps
            buf[s] = tot
        buf.sort()
        for q in range(nq + 1):
            out[j, q] = buf[min(int(q / nq * (n_samples - 1) + 0.5), n_samples - 1)]


@lru_cache(maxsize=16)
def sr_table(
    kick_gev: float, field_t: float, thr_gev: float, acceptance: float, e_max_gev: float
) -> tuple[np.ndarray, np.ndarray]:
    """(ln E nodes, quantiles (n_nodes, 257)) of the SRD energy (GeV) detected from one dipole crossed by an
    electron of energy E, from the photon-by-photon simulation of the spectrum."""
    nodes = np.geomspace(0.5, max(e_max_gev, 1.0), 48)
    # the photon number 5 alpha gamma theta / (2 sqrt 3) = 5 alpha K / (2 sqrt 3 m_e) does not depend on E
    n_mean = sr_photons_per_bend(1.0, kick_gev)
    ec2 = 1.5 * HBARC_GEV_M * C_GEV_PER_TM * field_t / ELECTRON_MASS_GEV**3  # E_c / E^2
    out = np.zeros((nodes.size, 257))
    _sr_sample(n_mean, ec2, nodes, sr_photon_log_quantiles(), thr_gev, acceptance, 6000, out)
    return np.log(nodes), out


# ------------------------------------------------------------------------------ the line
@dataclass(frozen=True)
class Line:
    """Ordered steps of the beam line (numpy arrays for the kernel) and the spectrometer geometry."""

    kind: np.ndarray  #: STEP_*
    z_m: np.ndarray
    t_x0: np.ndarray  #: material of the step, radiation lengths
    kick_gev: np.ndarray  #: dipole kick (STEP_MAGNET)
    field_t: np.ndarray
    station: np.ndarray  #: station index of a layer, else -1
    ecal_z_m: float
    spec: Spectrometer

    @property
    def total_x0(self) -> float:
        return float(self.t_x0.sum())

    def budget(self) -> dict[str, float]:
        """Radiation lengths upstream of the first dipole, between and after the dipoles, and in total."""
        zm = self.spec.magnet_z_m
        up = float(self.t_x0[self.z_m < zm[0]].sum())
        mid = float(self.t_x0[(self.z_m >= zm[0]) & (self.z_m <= zm[-1])].sum())
        return {
            "before_magnets_x0": up,
            "between_magnets_x0": mid,
            "after_magnets_x0": self.total_x0 - up - mid,
            "total_x0": self.total_x0,
        }


def line_from_config(cfg: Config) -> Line:
    bl = cfg.beamline
    spec = Spectrometer.from_config(cfg)
    steps: list[tuple[float, int, float, float, float, int]] = []
    for name, z, t in zip(bl.layer_names, bl.layer_z_m, bl.layer_x0, strict=True):
        st = spec.names.index(name) if name in spec.names else -1
        steps.append((float(z), STEP_LAYER, float(t), 0.0, 0.0, st))
    pipes = list(zip(bl.pipe_from_m, bl.pipe_to_m, strict=True))
    for ends in pipes:  # the windows that close each pipe
        steps += [(float(z), STEP_LAYER, float(bl.pipe_window_x0), 0.0, 0.0, -1) for z in ends]
    for z, length, b in zip(bl.magnet_z_m, bl.magnet_length_m, bl.magnet_field_t, strict=True):
        steps.append((float(z), STEP_MAGNET, 0.0, C_GEV_PER_TM * b * length, float(b), -1))
    edges = sorted({0.0, float(bl.ecal_z_m), *(s[0] for s in steps)})
    for a, b in itertools.pairwise(edges):
        if b > a:  # the pipe ends are edges: a gap is wholly inside a pipe or wholly outside
            inside = any(lo <= 0.5 * (a + b) <= hi for lo, hi in pipes)
            x0 = bl.pipe_gas_x0_m if inside else bl.gap_x0_m
            steps.append((0.5 * (a + b), STEP_GAS, (b - a) / x0 if x0 > 0.0 else 0.0, 0.0, 0.0, -1))
    steps.sort(key=lambda s: (s[0], s[1]))
    arr = list(zip(*steps, strict=True))
    return Line(
        kind=np.array(arr[1], np.int64),
        z_m=np.array(arr[0], np.float64),
        t_x0=np.array(arr[2], np.float64),
        kick_gev=np.array(arr[3], np.float64),
        field_t=np.array(arr[4], np.float64),
        station=np.array(arr[5], np.int64),
        ecal_z_m=float(bl.ecal_z_m),
        spec=spec,
    )


# ------------------------------------------------------------------------------ kernel
@nb.njit(cache=True, nogil=True, inline="always")
def _normal(st):
    st, u = rng_next(st)
    return st, normal_ppf(u)


@nb.njit(cache=True, nogil=True, inline="always")
def _drift(dz, x, y, tx, ty, gx, gy, gtx, gty, ng):
    """Move the particle (returned x, y) and its ``ng`` photons (in place) by ``dz`` m (slopes in mrad)."""
    for j in range(ng):
        gx[j] += gtx[j] * dz
        gy[j] += gty[j] * dz
    return x + tx * dz, y + ty * dz


@nb.njit(cache=True, nogil=True)
def _sr_draw(lnodes, q, e, u):
    le = math.log(e)
    nn = lnodes.shape[0]
    if le <= lnodes[0]:
        j = 0
        f = 0.0
    elif le >= lnodes[nn - 1]:
        j = nn - 2
        f = 1.0
    else:
        j = int((le - lnodes[0]) / (lnodes[nn - 1] - lnodes[0]) * (nn - 1))
        if j > nn - 2:
            j = nn - 2
        f = (le - lnodes[j]) / (lnodes[j + 1] - lnodes[j])
    nq = q.shape[1] - 1
    pos = u * nq
    i = int(pos)
    if i >= nq:
        i = nq - 1
    fq = pos - i
    a = q[j, i] + (q[j, i + 1] - q[j, i]) * fq
    b = q[j + 1, i] + (q[j + 1, i + 1] - q[j + 1, i]) * fq
    return a + (b - a) * f


@nb.njit(cache=True, nogil=True)
def _decay_point(s, pidx, pt, p, force, dk_parent, ecal_z, w):
    """(decay RNG state, channel, decay z (m), weight) of a particle of type ``pt`` and momentum ``p``: the
    exponential decay law, channel by branching ratio, no decay (0, inf) when it decays beyond the ECAL face
    or into a channel without an electron; ``force`` > 0: that channel forced inside the line, the weight
    multiplied by its probability (decay before the ECAL face) x BR."""
    sd = rng_state(s, np.uint64(pidx), np.uint64(STREAM_DECAY))
    if force > 0:
        force = np.int64(force)
        if dk_parent[force] != pt:
            return sd, 0, math.inf, w
        lam = p / dk.PARENT_MASS[force] * dk.PARENT_CTAU[force]
        prob = -math.expm1(-ecal_z / lam)
        sd, u = rng_next(sd)
        return sd, force, -lam * math.log1p(-u * prob), w * prob * dk.BR[force]
    sd, u = rng_next(sd)
    sd, v = rng_next(sd)
    c = 0.0
    for k in range(1, dk_parent.shape[0]):
        if dk_parent[k] == pt:
            c += dk.BR[k]
            if v < c:
                zd = -p / dk.PARENT_MASS[k] * dk.PARENT_CTAU[k] * math.log1p(-u)
                return (sd, k, zd, w) if zd < ecal_z else (sd, 0, math.inf, w)
    return sd, 0, math.inf, w


@nb.njit(cache=True, nogil=True)
def _decay_at(dz, x, y, tx, ty, p, sd, ch, prod, gx, gy, gtx, gty, ge, ng):
    """Move on by ``dz`` to the decay point and decay: the electron goes on with the parent's slopes plus its
    decay angle (returned: x, y, slopes, momentum, RNG state, photon count), the photons join the photon
    slots, the neutrinos leave."""
    x, y = _drift(dz, x, y, tx, ty, gx, gy, gtx, gty, ng)
    sd = dk.decay_products(sd, ch, p, prod)
    for k in range(1, prod.shape[0]):
        if prod[k, 0] > 0.0:
            j = ng if ng < MAX_PHOTONS else MAX_PHOTONS - 1
            if ng < MAX_PHOTONS:
                gx[j] = x
                gy[j] = y
                gtx[j] = tx + prod[k, 1] / max(prod[k, 3], 1e-9) * 1e3
                gty[j] = ty + prod[k, 2] / max(prod[k, 3], 1e-9) * 1e3
                ge[j] = prod[k, 0]
                ng += 1
            else:
                ge[j] += prod[k, 0]
    pz = max(prod[0, 3], 1e-9)
    return x, y, tx + prod[0, 1] / pz * 1e3, ty + prod[0, 2] / pz * 1e3, max(prod[0, 0], 1e-4), sd, ng


@nb.njit(cache=True, nogil=True)
def _transport_kernel(
    seed, idx, pindex, ptype, e_beam, x_mm, y_mm,
    seg_t, seg_zc, seg_ms, seg_lam, seg_pnone, seg_wfac,
    seg_end_z, seg_end_kind, seg_end_kick, seg_end_magnet, seg_end_station, ecal_z, p0, div_mrad,
    yq_soft, yq_hard, seg_bias, seg_fhard,
    sr_lnodes, sr_q, sr_mean_other,
    ecal_lo_x, ecal_hi_x, ecal_lo_y, ecal_hi_y, hcal_half,
    force_dk, dk_parent,
    e_front, e_side, x_out, y_out, e_sr, w_out, fl_out, e_el, st_pos, dk_out, zd_out,
):  # fmt: skip
    s = np.uint64(seed)
    record = st_pos.shape[0] > 0
    gx = np.zeros(MAX_PHOTONS)
    gy = np.zeros(MAX_PHOTONS)
    gtx = np.zeros(MAX_PHOTONS)
    gty = np.zeros(MAX_PHOTONS)
    ge = np.zeros(MAX_PHOTONS)
    prod = np.zeros((3, 4))
    for n in range(idx.shape[0]):
        i = idx[n]
        pt = ptype[i]
        e0 = np.float64(e_beam[i])
        if pt == HALO:
            e_front[n] = 0.0
            e_side[n] = 0.0
            x_out[n] = x_mm[i]
            y_out[n] = y_mm[i]
            e_sr[n] = 0.0
            w_out[n] = 1.0
            fl_out[n] = 0
            e_el[n] = e0
            dk_out[n] = 0
            zd_out[n] = np.nan
            if record:
                for k in range(st_pos.shape[1]):
                    st_pos[n, k, 0] = np.nan
                    st_pos[n, k, 1] = np.nan
            continue
        st = rng_state(s, np.uint64(pindex[i]), np.uint64(STREAM))  # keyed by the particle: subsets agree
        x = np.float64(x_mm[i])
        y = np.float64(y_mm[i])
        st, zz = _normal(st)
        tx = div_mrad * zz
        st, zz = _normal(st)
        ty = div_mrad * zz
        p = e0
        z = 0.0
        ng = 0
        w = 1.0
        sr = 0.0
        is_e = pt == E_MINUS
        sd, ch, zd, w = _decay_point(s, pindex[i], pt, p, force_dk[i], dk_parent, ecal_z, w)
        z_dec = zd
        e_dec = e0  # the electron's energy where it starts (after a decay: at the decay)
        for g_ in range(seg_t.shape[0]):
            if zd < seg_zc[g_] and seg_t[g_] > 0.0:  # the decay before the segment's material
                x, y, tx, ty, p, sd, ng = _decay_at(zd - z, x, y, tx, ty, p, sd, ch, prod, gx, gy, gtx, gty, ge, ng)
                z, zd, e_dec, is_e = z_dec, math.inf, p, True
            if seg_t[g_] > 0.0:
                # the segment's material: one scattering at its X0-weighted centre (Highland for the summed
                # thickness) and its bremsstrahlung
                x, y = _drift(seg_zc[g_] - z, x, y, tx, ty, gx, gy, gtx, gty, ng)
                z = seg_zc[g_]
                th0 = HIGHLAND_GEV / p * seg_ms[g_]  # mrad
                st, zz = _normal(st)
                tx += th0 * zz
                st, zz = _normal(st)
                ty += th0 * zz
                if is_e:
                    w *= seg_wfac[g_]
                    st, u = rng_next(st)
                    nb_ = poisson_inverse(u, seg_lam[g_], seg_pnone[g_], 50)
                    for _m in range(nb_):
                        st, u = rng_next(st)
                        if u < seg_fhard[g_]:
                            yq = yq_hard
                            w /= seg_bias[g_]
                        else:
                            yq = yq_soft
                        st, u = rng_next(st)
                        pos = u * (yq.shape[0] - 1)
                        jj = int(pos)
                        yy = yq[jj] + (yq[jj + 1] - yq[jj]) * (pos - jj)
                        eg = yy * p
                        p -= eg
                        # the photon goes on along the electron's line (the emission angle ~ m/E is
                        # negligible), so where in the segment it was emitted does not matter
                        j = ng if ng < MAX_PHOTONS else MAX_PHOTONS - 1
                        if ng < MAX_PHOTONS:
                            gx[j] = x
                            gy[j] = y
                            gtx[j] = tx
                            gty[j] = ty
                            ge[j] = eg
                            ng += 1
                        else:
                            ge[j] += eg
            if zd < seg_end_z[g_]:  # the decay before the segment's end
                x, y, tx, ty, p, sd, ng = _decay_at(zd - z, x, y, tx, ty, p, sd, ch, prod, gx, gy, gtx, gty, ge, ng)
                z, zd, e_dec, is_e = z_dec, math.inf, p, True
            # the segment's end: a station, a dipole or the ECAL face
            x, y = _drift(seg_end_z[g_] - z, x, y, tx, ty, gx, gy, gtx, gty, ng)
            z = seg_end_z[g_]
            kd = seg_end_kind[g_]
            if kd == STEP_MAGNET:
                kk = seg_end_kick[g_]
                tx -= kk * (1.0 / p - 1.0 / p0) * 1e3
                for j in range(ng):
                    gtx[j] += kk / p0 * 1e3
                st, u = rng_next(st)
                m_ = seg_end_magnet[g_]
                if is_e:
                    sr += _sr_draw(sr_lnodes, sr_q[m_], p, u)
                else:
                    sr += sr_mean_other[m_, pt]  # the mean at p0: (m_e/m)^4 of an electron's, below threshold
            elif kd == STEP_LAYER and record:
                st_pos[n, seg_end_station[g_], 0] = x
                st_pos[n, seg_end_station[g_], 1] = y
        dz = ecal_z - z
        x += tx * dz
        y += ty * dz
        ef = 0.0
        es = 0.0
        cx = 0.0
        cy = 0.0
        sx = 0.0
        sy = 0.0
        if ecal_lo_x <= x < ecal_hi_x and ecal_lo_y <= y < ecal_hi_y:
            ef += p
            cx += p * x
            cy += p * y
        elif is_e and abs(x) < hcal_half and abs(y) < hcal_half:
            es += p
            sx += p * x
            sy += p * y
        for j in range(ng):
            xg = gx[j] + gtx[j] * dz
            yg = gy[j] + gty[j] * dz
            if ecal_lo_x <= xg < ecal_hi_x and ecal_lo_y <= yg < ecal_hi_y:
                ef += ge[j]
                cx += ge[j] * xg
                cy += ge[j] * yg
            elif abs(xg) < hcal_half and abs(yg) < hcal_half:
                es += ge[j]
                sx += ge[j] * xg
                sy += ge[j] * yg
        if ef > 0.0:  # the shower centre in the ECAL
            x_out[n] = cx / ef
            y_out[n] = cy / ef
        elif es > 0.0:  # nothing in the ECAL: the centre of what showers in the HCAL
            x_out[n] = sx / es
            y_out[n] = sy / es
        else:
            x_out[n] = x
            y_out[n] = y
        if not is_e:
            ef = p  # muons and hadrons: the response models them from the impact point
        e_front[n] = ef
        e_side[n] = es
        e_el[n] = p
        e_sr[n] = sr
        w_out[n] = w
        fl_out[n] = TRUTH_BEAMLINE if is_e and p < (1.0 - BEAMLINE_FLAG_FRACTION) * e_dec else 0
        dk_out[n] = ch
        zd_out[n] = z_dec if ch > 0 else np.nan


@dataclass
class Transported:
    """What the beam line hands to the detector response, per particle (GeV, mm)."""

    e_front: np.ndarray  #: energy entering the ECAL matrix (e-: electron + photons inside; others: p)
    e_side: np.ndarray  #: e.m. energy landing outside the ECAL on the HCAL face (showers in HCAL module 0)
    x_mm: np.ndarray  #: energy-weighted impact point at the ECAL face (of e_front; without it, of e_side)
    y_mm: np.ndarray
    e_sr: np.ndarray  #: synchrotron-radiation energy detected in the SRD
    weight: np.ndarray  #: bias weight (1 without brem_bias)
    flags: np.ndarray  #: TRUTH_BEAMLINE bits
    e_particle: np.ndarray  #: energy of the particle itself at the ECAL face (after its bremsstrahlung)
    decay: np.ndarray  #: channel of a decay in flight (sim_frontend.decays codes; 0: none)
    z_decay: np.ndarray  #: where it decayed, m (NaN: no decay)
    parent: np.ndarray  #: particle type at z = 0 (a decayed one arrives as an e-)
    forced: np.ndarray  #: the decay channel forced (MC only; 0: natural)

    def subset(self, idx: np.ndarray) -> Transported:
        """The entries of the particles ``idx``."""
        return Transported(*(getattr(self, f.name)[idx] for f in dataclasses.fields(self)))


@dataclass(frozen=True)
class Bias:
    """Hard-bremsstrahlung biasing: photons with y > ``y_min`` are made ``factor`` times more likely in the
    material of the segments that end at or before ``z_max_m`` (m; default: the whole line), for the particles
    whose truth ``index`` is in ``only`` (default: all; the others, e.g. the pile-up around biased MC events,
    are transported unbiased)."""

    factor: float = 1.0
    y_min: float = 0.3
    z_max_m: float = math.inf
    only: np.ndarray | None = dataclasses.field(default=None, compare=False)


STEP_ECAL = 3  #: the end of the last segment


def _segments(line: Line) -> dict[str, np.ndarray]:
    """The steps grouped into segments that end at an action (a station, a dipole, the ECAL face): the
    material of a segment scatters once at its X0-weighted centre with the Highland angle of its summed
    thickness (PDG 34.15 applies to the whole thickness), and radiates."""
    t_acc, tz_acc = 0.0, 0.0
    rows: list[tuple[float, float, float, int, float, int, int]] = []
    magnet = 0
    for kind, z, t, kick, st in zip(line.kind, line.z_m, line.t_x0, line.kick_gev, line.station, strict=True):
        if kind == STEP_MAGNET or (kind == STEP_LAYER and st >= 0):
            zc = tz_acc / t_acc if t_acc > 0 else z
            rows.append((t_acc, zc, float(z), int(kind), float(kick), magnet, int(st)))
            t_acc, tz_acc = 0.0, 0.0
            magnet += int(kind == STEP_MAGNET)
        t_acc += float(t)
        tz_acc += float(t) * float(z)
    zc = tz_acc / t_acc if t_acc > 0 else line.ecal_z_m
    rows.append((t_acc, zc, line.ecal_z_m, STEP_ECAL, 0.0, 0, -1))
    cols = list(zip(*rows, strict=True))
    t = np.array(cols[0], np.float64)
    return {
        "t": t,
        "zc": np.array(cols[1], np.float64),
        "ms": np.where(t > 0, np.sqrt(np.maximum(t, 1e-30)) * (1 + 0.038 * np.log(np.maximum(t, 1e-30))) * 1e3, 0.0),
        "end_z": np.array(cols[2], np.float64),
        "end_kind": np.array(cols[3], np.int64),
        "end_kick": np.array(cols[4], np.float64),
        "end_magnet": np.array(cols[5], np.int64),
        "end_station": np.array(cols[6], np.int64),
    }


def _kernel_args(cfg: Config, line: Line, bias: Bias) -> tuple:
    bl = cfg.beamline
    p0 = float(cfg.beam.energy_gev)
    y_lo = float(bl.brem_y_min)
    y_split = max(min(bias.y_min, 0.999), y_lo * 1.0001)
    thr = bl.srd_photon_min_kev * 1e-6
    mags = np.flatnonzero(line.kind == STEP_MAGNET)
    sr_q = np.zeros((mags.size, 48, 257))
    ln = np.zeros(48)
    sr_other = np.zeros((mags.size, 8))
    masses = {PION: PION_MASS_GEV, KAON: KAON_MASS_GEV, MUON: MUON_MASS_GEV}
    x, _, above = sr_spectrum()
    for m_, k in enumerate(mags):
        ln, q = sr_table(float(line.kick_gev[k]), float(line.field_t[k]), thr, float(bl.srd_acceptance), 4.0 * p0)
        sr_q[m_] = q
        for code in (PION, KAON, MUON):
            m = masses[code]
            ec = critical_energy_gev(p0, float(line.field_t[k]), m)
            frac = float(np.interp(math.log(thr / ec), np.log(x), above, left=1.0, right=0.0)) if thr > 0 else 1.0
            sr_other[m_, code] = (
                bl.srd_acceptance * sr_photons_per_bend(p0, float(line.kick_gev[k]), m) * SR_MEAN_X * ec * frac
            )
    sg = _segments(line)
    r_soft, r_hard = brem_rate_per_x0(y_lo, y_split), brem_rate_per_x0(y_split, 1.0)
    b = np.where(sg["end_z"] <= bias.z_max_m, float(bias.factor), 1.0)  # per segment
    lam = sg["t"] * (r_soft + r_hard * b)
    f_h = r_hard * b / (r_soft + r_hard * b)
    wfac = np.exp((b - 1.0) * sg["t"] * r_hard)
    return (
        sg["t"], sg["zc"], sg["ms"], lam, np.exp(-lam), wfac,
        sg["end_z"], sg["end_kind"], sg["end_kick"], sg["end_magnet"], sg["end_station"],
        line.ecal_z_m, p0, float(bl.divergence_mrad),
        brem_quantiles(y_lo, y_split), brem_quantiles(y_split, 1.0), b, f_h,
        ln, sr_q, sr_other,
        float(g.ECAL_LO_X), float(g.ECAL_HI_X), float(g.ECAL_LO_Y), float(g.ECAL_HI_Y), float(g.HCAL_HALF_MM),
    )  # fmt: skip


def _run(
    spill: BeamSpill, cfg: Config, idx: np.ndarray, n_st: int, bias: Bias, x0: np.ndarray, y0: np.ndarray,
    ptype: np.ndarray, force: np.ndarray,
) -> tuple[Transported, np.ndarray]:  # fmt: skip
    if bias.only is not None and bias.factor != 1.0:  # the biased particles, then the others, merged
        on = np.isin(spill.truth["index"][idx], bias.only)
        runs = [
            _run(spill, cfg, idx[on], n_st, dataclasses.replace(bias, only=None), x0, y0, ptype, force),
            _run(spill, cfg, idx[~on], n_st, Bias(), x0, y0, ptype, force),
        ]
        order = np.argsort(np.concatenate([np.flatnonzero(on), np.flatnonzero(~on)]), kind="stable")
        fields = [f.name for f in dataclasses.fields(Transported)]
        out = Transported(*(np.concatenate([getattr(r[0], f) for r in runs])[order] for f in fields))
        return out, (np.concatenate([runs[0][1], runs[1][1]])[order] if n_st else runs[0][1])
    line = line_from_config(cfg)
    m = idx.shape[0]
    out = Transported(
        e_front=np.empty(m, np.float32),
        e_side=np.empty(m, np.float32),
        x_mm=np.empty(m, np.float32),
        y_mm=np.empty(m, np.float32),
        e_sr=np.empty(m, np.float32),
        weight=np.empty(m, np.float32),
        flags=np.empty(m, np.uint8),
        e_particle=np.empty(m, np.float32),
        decay=np.empty(m, np.uint8),
        z_decay=np.empty(m, np.float32),
        parent=ptype[idx].copy(),
        forced=force[idx].copy(),
    )
    st_pos = np.full((m if n_st else 0, max(n_st, 1), 2), np.nan, np.float32)
    t = spill.truth
    args = (
        np.uint64(spill.seed), idx, t["index"], ptype, t["e_beam"], x0, y0,
        *_kernel_args(cfg, line, bias), force, dk.channel_parents(PARTICLE_CODES),
        out.e_front, out.e_side, out.x_mm, out.y_mm, out.e_sr, out.weight, out.flags, out.e_particle, st_pos,
        out.decay, out.z_decay,
    )  # fmt: skip
    _transport_kernel(*args)
    return out, st_pos


def transport(
    spill: BeamSpill, cfg: Config, bias: Bias | None = None, force_decay: np.ndarray | None = None
) -> Transported:
    """Transport every particle of ``spill`` (see the module docstring); the result is also kept as
    ``spill.beamline``. The truth impact point (x_mm, y_mm) becomes the centre at the ECAL face, the truth
    weight is multiplied by the bias weight and TRUTH_BEAMLINE is set. A mu-, pi- or K- that decayed in
    flight into an electron arrives as an e- (truth ptype; its type at z = 0 is ``parent``), flagged
    TRUTH_DECAY. ``force_decay`` (MC only): per particle, a :mod:`sim_frontend.decays` channel forced
    inside the line (0: natural), the truth weight multiplied by its probability."""
    b = bias or Bias()
    idx = np.arange(spill.n, dtype=np.int64)
    t = spill.truth
    spill.z0_xy = (t["x_mm"].copy(), t["y_mm"].copy())
    force = np.zeros(spill.n, np.uint8) if force_decay is None else np.asarray(force_decay, np.uint8)
    out, _ = _run(spill, cfg, idx, 0, b, *spill.z0_xy, t["ptype"].copy(), force)
    t["x_mm"] = out.x_mm
    t["y_mm"] = out.y_mm
    t["flags"] |= out.flags
    decayed = out.decay > 0
    t["flags"][decayed] |= TRUTH_DECAY
    t["ptype"][decayed] = E_MINUS
    if b.factor != 1.0 or force.any():
        t["weight"] *= out.weight
    spill.beamline = out
    spill.bias = b
    return out


def station_positions(spill: BeamSpill, cfg: Config, indices: np.ndarray) -> np.ndarray:
    """(len(indices), n_stations, 2) float32 positions (mm) of the particles at the Micromegas stations
    (NaN for halo muons), identical to those of :func:`transport`."""
    idx = np.asarray(indices, dtype=np.int64)
    z0 = spill.z0_xy
    if z0 is None:
        raise ValueError("station_positions needs a spill that went through beamline.transport")
    n_st = len(cfg.tracker.stations)
    bl = spill.beamline
    _, pos = _run(spill, cfg, idx, n_st, spill.bias or Bias(), *z0, bl.parent, bl.forced)
    return pos
