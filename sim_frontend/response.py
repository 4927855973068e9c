"""Fast detector response: per-particle energy deposits (GeV) of every detector element, compact.

:func:`apply_response` turns the truth of a :class:`~sim_frontend.beam.BeamSpill` into :class:`Deposits`
(a few floats per particle, never a dense (N, 121) array) and fills the truth deposit fields (e_ps, e_ecal,
e_hcal, e_v2, e_srd). :func:`channel_deposits` expands any subset of particles into the full per-channel
deposits (N_sub, 121), deterministically and consistently with the compact arrays (the ECAL PS cells sum
to the PS total, PS + main cells to the ECAL total, the HCAL cells of a module to its total).

Models (constants in :mod:`sim_frontend.geometry` and :mod:`sim_frontend.processes`; shower functions in
:mod:`sim_frontend.showers`; docs/physics.md sections 1.3, 1.4, 1.6, 4, 10):

- the beam line (:mod:`sim_frontend.beamline`, run here unless the spill already went through it) decides
  what reaches the ECAL: an electron's shower is made of the energy that enters the ECAL matrix (the
  electron and its bremsstrahlung photons that land on it, ``e_front``); e.m. energy landing beside the
  ECAL on the HCAL face showers in HCAL module 0 (HCAL resolution); the SRD sees the synchrotron radiation
  detected from the dipoles (``e_sr``, a third per section with ``SRD_REL_WIDTH`` sampling fluctuation;
  (m_e/m)^4 of it for muons and hadrons);
- e- (beam, A' recoil, dimuon): e.m. shower of the visible energy in the ECAL with a
  Gamma longitudinal profile ``t^(a-1) e^(-b t)``, ``b = 0.5``, ``a = 1 + b (ln(E/E_c) - 0.5)`` (E_c = 11 MeV
  effective), shower-to-shower log-normal fluctuation of ``a`` (10%); PS = the first 4 X0 (3-8% of 100 GeV);
  sampling fluctuations 10%/sqrt(E) split over PS and main, 1% constant term; an exponential leakage of
  mean 0.2% into HCAL module 0; lateral e.m. profile (75% in the central cell); SRD: 50 MeV per section of a
  MIPs in S0..S4; nothing in V2. A beam e- produces a leading hadron (1e-4, docs/physics.md 10.5) that
  takes its energy out of the shower.
- A': emitted inside the ECAL shower at a depth the primary's path implies (:mod:`sim_frontend.aprime_depth`,
  :class:`~sim_frontend.aprime_depth.AprimeEmission`: the beam generator's A' by default): the PS and ECAL
  see the primary's photons radiated before it and the recoil shower from there; nothing else changes.
- dimuon: photon energy k from ``0.572 E0/k^2 sigma_BH(k)`` and x+ from ``dsigma/dx+`` of
  :mod:`sim_frontend.dimuon`; the shower keeps ``E - k``, each muon loses 0.3 GeV (visible) in the ECAL, then
  is transported behind it (:func:`sim_frontend.processes.muon_downstream`: production angle, multiple
  scattering, V2 and the HCAL modules with photoelectron statistics, 2.5 GeV e-equivalent and 1.5 GeV true
  loss per module, geometric losses).
- pi-, K-: first interaction at an exponential depth (lambda units): in the PS (0.15 lambda, ~14%: PS gets
  1-15% of E, above the 0.3 GeV PS threshold), in the ECAL main section (1.5 lambda in all), else a MIP
  through the ECAL (0.3 GeV, 30 MeV in the PS) and an interaction in the HCAL. Longitudinal hadronic Gamma
  profile (a = 1.6, scale 1.2 lambda, 30% log-normal fluctuation) shares the energy between the ECAL and the
  HCAL modules (7 lambda each); what passes 4 modules is lost (punch-through); resolution 65%/sqrt(E) (+)
  5% on the HCAL part; hadronic lateral profiles; V2 sees ~1 + E_HCAL/10 GeV MIPs. A fraction of the ECAL
  interactions is charge exchange: a forward pi0 shower, a slow neutron, nothing in V2 (docs/physics.md 10.3).
- mu-: MIPs (ECAL 0.3 GeV), rarely a hard interaction in the ECAL (an e.m. shower of the energy transfer,
  docs/physics.md 10.4), then the transport behind the ECAL as for dimuon muons; no SRD.
- halo: muons off axis: S0, S1, V0 (and V1 for a fraction ``frac_halo_v1``), MIPs in the ECAL / V2 / HCAL
  only where the track crosses them.
- calibration beam (table on an HCAL cell): every non-halo particle becomes the calibration particle
  (``beam.calibration_particle`` at its energy), flagged TRUTH_CALIBRATION; it fires the counters (and the
  SRD for e-) and deposits in the commanded module only, around the table position (80% in the cell for
  e-), with the HCAL resolution; the ECAL, V2 and the other modules see nothing.

Counters and vetoes: Landau-like (Moyal) MIPs of 1 MeV (8 MeV in the 4 cm V2), most probable value fixed,
12% width; V2 and the HCAL modules add photoelectron statistics (60 and 175 p.e. per MIP).

MC samples may force rare processes per particle (``force``, bits ``sim_frontend.processes.FORCE_*``); the
truth weight then carries their probability. Recorded data never force anything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numba as nb
import numpy as np

from detector import channels as ch
from detector.records import PARTICLE_CODES, TRUTH_APRIME, TRUTH_CALIBRATION, TRUTH_DIMUON, TRUTH_HADRONIC, TRUTH_PILEUP
from detector.settings import Config
from sim_frontend import geometry as g
from sim_frontend import physics_constants as pc
from sim_frontend import processes as pr
from sim_frontend.aprime_depth import AprimeEmission, emit_at_depth
from sim_frontend.beam import (
    E_MINUS,
    HALO,
    MUON,
    PHOTON_TRACK_LENGTH_A,
    BeamSpill,
    normal_ppf,
    rng_next,
    rng_state,
    table_draw,
)
from sim_frontend.showers import PS_FRACTION_TABLE, _mip, em_shower, hadron_deposit

#: columns of Deposits.trigger (the primitive channels, detector.channels.TRIGGER_CHANNEL_NAMES)
TRIGGER_COLUMNS = ch.TRIGGER_CHANNEL_NAMES
#: columns of Deposits.other
OTHER_COLUMNS = ("S0", "S4", "V0", "V2", "SRD0", "SRD1", "SRD2")

_COUNTER_COL = {name: ("trigger", i) for i, name in enumerate(TRIGGER_COLUMNS)}
_COUNTER_COL.update({name: ("other", i) for i, name in enumerate(OTHER_COLUMNS)})


@dataclass
class Deposits:
    """Compact per-particle deposits (GeV, float32) of one spill.

    - ``trigger`` (N, 6): S1, S2, S3, V1, PS_SUM (= total PS), ECAL_SUM (= total ECAL, PS + main);
    - ``other`` (N, 7): S0, S4, V0, V2, SRD0, SRD1, SRD2;
    - ``hcal`` (N, 4): per HCAL module;
    - ``shape`` (N, 2) uint8: lateral shape code (geometry.SHAPE_*) in the ECAL and in the HCAL;
    - the ECAL shower centre is the truth impact point (x_mm, y_mm); the HCAL centre is the impact point
      plus ``hcal_shift_mm`` (zero at the physics position; the table offset in calibration mode);
    - ``calibration_module``: -1 at the physics position, else the HCAL module in the calibration beam.
    """

    trigger: np.ndarray
    other: np.ndarray
    hcal: np.ndarray
    shape: np.ndarray
    hcal_shift_mm: tuple[float, float] = (0.0, 0.0)
    calibration_module: int = -1
    table: dict = field(default_factory=dict)
    #: the A' emissions placed inside the shower (:func:`sim_frontend.aprime_depth.emit_at_depth`'s result,
    #: ``index`` = the particles); empty when there is none
    aprime: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.trigger.shape[0])

    def counter(self, name: str) -> np.ndarray:
        """Deposit (N,) GeV of a counter, veto, SRD section or analogue sum by channel name."""
        try:
            where, col = _COUNTER_COL[name]
        except KeyError:
            raise KeyError(f"no compact deposit column {name!r}; known: {', '.join(_COUNTER_COL)}") from None
        return getattr(self, where)[:, col]


def mip_gev(name: str) -> float:
    """Most probable MIP deposit (GeV) of a counter or veto channel."""
    return g.V2_MIP_GEV if name == "V2" else g.COUNTER_MIP_GEV


def hardware_scalers(
    dep: Deposits, threshold_mip: float = 0.5, names: tuple[str, ...] = ("S0", "S1", "S2", "S3", "V0", "V1")
) -> dict[str, int]:
    """Counts of particles whose deposit in each counter is above ``threshold_mip`` MIPs (the crate's
    discriminator scalers)."""
    return {n: int(np.count_nonzero(dep.counter(n) > threshold_mip * mip_gev(n))) for n in names}


# ------------------------------------------------------------------------------ dimuon tables
_N_KBINS = 48
_N_XQ = 512


@lru_cache(maxsize=8)
def dimuon_tables(e0_gev: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quantile tables of the dimuon kinematics for electrons of ``e0_gev``: photon energy k (GeV) with
    density 0.572 E0/k^2 sigma_BH(k) (length 4097), log-spaced k-bin edges (_N_KBINS + 1) and, per bin,
    the quantiles of x+ from dsigma/dx+ at the bin centre (_N_KBINS, _N_XQ + 1). All from
    sim_frontend.dimuon."""
    from sim_frontend import dimuon

    lo = dimuon.THRESHOLD_GEV * 1.0001
    e0 = max(float(e0_gev), lo * 1.01)
    k = np.geomspace(lo, e0, 8001)
    dens = PHOTON_TRACK_LENGTH_A * e0 / k**2 * dimuon.sigma_total_cm2(k)
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (dens[1:] + dens[:-1]) * np.diff(k))])
    cdf /= cdf[-1]
    u = np.linspace(0.0, 1.0, 4097)
    k_q = np.interp(u, cdf, k)
    edges = np.geomspace(lo, e0, _N_KBINS + 1)
    centres = np.sqrt(edges[1:] * edges[:-1])
    xq = np.empty((_N_KBINS, _N_XQ + 1))
    uq = np.linspace(0.0, 1.0, _N_XQ + 1)
    for b, kc in enumerate(centres):
        x_lo, x_hi = (float(v) for v in dimuon.x_plus_limits(kc))
        x = np.linspace(x_lo, x_hi, 2049)
        d = dimuon.dsigma_dx_plus(x, kc)
        c = np.concatenate([[0.0], np.cumsum(0.5 * (d[1:] + d[:-1]))])
        if c[-1] <= 0:
            xq[b] = 0.5
            continue
        xq[b] = np.interp(uq, c / c[-1], x)
    return k_q, np.log(edges), xq


# ------------------------------------------------------------------------------ the response kernel


@nb.njit(cache=True, nogil=True)
def _response_kernel(
    seed,
    index,
    ptype,
    flags,
    e_beam,
    x_mm,
    y_mm,
    e_inv,
    ps_tab,
    k_q,
    log_kedges,
    xq,
    halo_v1,
    cal_module,
    cal_ptype,
    cal_dx,
    cal_dy,
    force,
    v2_nmax,
    dimuon_u_min,
    weight,
    e_front,
    e_side,
    e_sr,
    trig,
    other,
    hcal,
    shape,
    t_ps,
    t_ecal,
    t_hcal,
    t_v2,
    t_srd,
):
    s = np.uint64(seed)
    n = ptype.shape[0]
    n_kb = log_kedges.shape[0] - 1
    nxq = xq.shape[1] - 1
    for i in range(n):
        st = rng_state(s, np.uint64(index[i]), np.uint64(2))  # keyed by the particle index: subsets agree
        pt = ptype[i]
        fl = flags[i]
        e = np.float64(e_beam[i])
        x = np.float64(x_mm[i])
        y = np.float64(y_mm[i])
        s0 = 0.0
        s1 = 0.0
        s2 = 0.0
        s3 = 0.0
        s4 = 0.0
        v0 = 0.0
        v1 = 0.0
        v2 = 0.0
        srd0 = 0.0
        srd1 = 0.0
        srd2 = 0.0
        ps = 0.0
        ecal = 0.0
        h0 = 0.0
        h1 = 0.0
        h2 = 0.0
        h3 = 0.0
        esh = g.SHAPE_NONE
        hsh = g.SHAPE_NONE
        w = 1.0
        frc = force[i]
        if cal_module >= 0 and pt != HALO:
            # ---------------------------------------------------------- calibration beam on an HCAL cell
            pt = cal_ptype
            ptype[i] = pt
            fl = (fl & TRUTH_PILEUP) | TRUTH_CALIBRATION
            if pt == E_MINUS:  # what the beam line lets through to the calorimeters
                e = np.float64(e_front[i] + e_side[i])
            e_inv[i] = 0.0
            st, s0 = _mip(st, g.COUNTER_MIP_GEV, g.LANDAU_WIDTH)
            st, s1 = _mip(st, g.COUNTER_MIP_GEV, g.LANDAU_WIDTH)
            st, s2 = _mip(st, g.COUNTER_MIP_GEV, g.LANDAU_WIDTH)
            st, s3 = _mip(st, g.COUNTER_MIP_GEV, g.LANDAU_WIDTH)
            st, s4 = _mip(st, g.COUNTER_MIP_GEV, g.LANDAU_WIDTH)
            if pt == MUON:
                st, hm = pr.pe_mip(st, g.HCAL_MIP_GEV, pr.HCAL_PE_PER_MIP, pr.HCAL_LANDAU_WIDTH, 1.0)
                hsh = g.SHAPE_MIP
            else:
                st, u = rng_next(st)
                z = normal_ppf(u)
                res = math.sqrt(g.HCAL_STOCH * g.HCAL_STOCH / max(e, 0.1) + g.HCAL_CONST * g.HCAL_CONST)
                hm = e * (1.0 + res * z)
                if hm < 0.0:
                    hm = 0.0
                hsh = g.SHAPE_EM if pt == E_MINUS else g.SHAPE_HAD
                if pt == E_MINUS:
                    sr = e_sr[i] / 3.0
                    st, u = rng_next(st)
                    srd0 = max(0.0, sr * (1.0 + g.SRD_REL_WIDTH * normal_ppf(u)))
                    st, u = rng_next(st)
                    srd1 = max(0.0, sr * (1.0 + g.SRD_REL_WIDTH * normal_ppf(u)))
                    st, u = rng_next(st)
                    srd2 = max(0.0, sr * (1.0 + g.SRD_REL_WIDTH * normal_ppf(u)))
            hx = x + cal_dx
            hy = y + cal_dy
            if hsh == g.SHAPE_MIP:
                if not (-g.HCAL_HALF_MM <= hx < g.HCAL_HALF_MM and -g.HCAL_HALF_MM <= hy < g.HCAL_HALF_MM):
                    hm = 0.0
                    hsh = g.SHAPE_NONE
            else:
                p = g.HCAL_PROFILES[hsh]
                hm *= g.containment(
                    hx, hy, -g.HCAL_HALF_MM, g.HCAL_HALF_MM, -g.HCAL_HALF_MM, g.HCAL_HALF_MM, p[0], p[1], p[2]
                )
            if cal_module == 0:
                h0 = hm
            elif cal_module == 1:
                h1 = hm
            elif cal_module == 2:
                h2 = hm
            else:
                h3 = hm
        elif pt == HALO:
            st, s0 = _mip(st, g.COUNTER_MIP_GEV, g.LANDAU_WIDTH)
            st, s1 = _mip(st, g.COUNTER_MIP_GEV, g.LANDAU_WIDTH)
            st, v0 = _mip(st, g.COUNTER_MIP_GEV, g.LANDAU_WIDTH)
            st, u = rng_next(st)
            if u < halo_v1:
                st, v1 = _mip(st, g.COUNTER_MIP_GEV, g.LANDAU_WIDTH)
            if cal_module < 0:
                if g.ECAL_LO_X <= x < g.ECAL_HI_X and g.ECAL_LO_Y <= y < g.ECAL_HI_Y:
                    st, lf = _mip(st, 1.0, g.LANDAU_WIDTH)
                    ps = g.PS_MIP_GEV * lf
                    ecal = g.ECAL_MIP_GEV * lf
                    esh = g.SHAPE_MIP
                # straight through V2 and the HCAL where it crosses them (photoelectron statistics)
                st, v2, h0, h1, h2, h3, wm = pr.muon_downstream(
                    st, e - g.MU_LOSS_ECAL_GEV, x, y, 0.0, 0.0, frc, v2_nmax
                )
                w *= wm
                if h0 > 0.0:
                    hsh = g.SHAPE_MIP
        else:
            st, s0 = _mip(st, g.COUNTER_MIP_GEV, g.LANDAU_WIDTH)
            st, s1 = _mip(st, g.COUNTER_MIP_GEV, g.LANDAU_WIDTH)
            st, s2 = _mip(st, g.COUNTER_MIP_GEV, g.LANDAU_WIDTH)
            st, s3 = _mip(st, g.COUNTER_MIP_GEV, g.LANDAU_WIDTH)
            st, s4 = _mip(st, g.COUNTER_MIP_GEV, g.LANDAU_WIDTH)
            # rare downstream processes draw from their own stream (the common ones keep theirs)
            sr_ = rng_state(s, np.uint64(index[i]), np.uint64(3))
            inside = g.ECAL_LO_X <= x < g.ECAL_HI_X and g.ECAL_LO_Y <= y < g.ECAL_HI_Y
            sr = e_sr[i] / 3.0
            if pt == E_MINUS:
                # ------------------------------------------------------------------ e.m. shower
                e = np.float64(e_front[i])
                esh_e = e
                if (fl & TRUTH_APRIME) != 0:
                    esh_e = e - e_inv[i] if e > e_inv[i] else 0.0
                mu_e0 = 0.0
                mu_e1 = 0.0
                if (fl & TRUTH_DIMUON) != 0:
                    st, u = rng_next(st)
                    if (frc & pr.FORCE_DIMUON_HARD) != 0:
                        u = dimuon_u_min + (1.0 - dimuon_u_min) * u
                        w *= 1.0 - dimuon_u_min
                    k = table_draw(k_q, u)
                    if k > e:
                        k = e
                    kb = int((math.log(k) - log_kedges[0]) / (log_kedges[n_kb] - log_kedges[0]) * n_kb)
                    if kb < 0:
                        kb = 0
                    elif kb >= n_kb:
                        kb = n_kb - 1
                    st, u = rng_next(st)
                    pos = u * nxq
                    j = int(pos)
                    xp = xq[kb, j] + (xq[kb, j + 1] - xq[kb, j]) * (pos - j)
                    mu_e0 = xp * k
                    mu_e1 = (1.0 - xp) * k
                    esh_e = e - k
                    if esh_e < 0.0:
                        esh_e = 0.0
                # leading-hadron electroproduction, or (forced MC only) a hard photon punching through
                had_e = 0.0
                pt_k = 0.0
                if pt == E_MINUS and (fl & (TRUTH_APRIME | TRUTH_DIMUON)) == 0:
                    sr_, u = rng_next(sr_)
                    ep = u < pr.EP_PROB
                    if (frc & pr.FORCE_ELECTROPRODUCTION) != 0:
                        ep = True
                        w *= pr.EP_PROB
                    if ep:
                        fl |= TRUTH_HADRONIC
                        sr_, v = pr.one_over_v(sr_, pr.EP_V_MIN)
                        had_e = v * e
                        esh_e -= had_e
                    elif (frc & pr.FORCE_PUNCHTHROUGH) != 0:
                        sr_, v = pr.one_over_v(sr_, pr.PT_V_MIN)
                        sr_, u = rng_next(sr_)
                        w *= pr.punchthrough_weight(pr.PT_DEPTH_X0 * u)
                        pt_k = v * e
                        esh_e -= pt_k
                # SRD
                st, u = rng_next(st)
                srd0 = max(0.0, sr * (1.0 + g.SRD_REL_WIDTH * normal_ppf(u)))
                st, u = rng_next(st)
                srd1 = max(0.0, sr * (1.0 + g.SRD_REL_WIDTH * normal_ppf(u)))
                st, u = rng_next(st)
                srd2 = max(0.0, sr * (1.0 + g.SRD_REL_WIDTH * normal_ppf(u)))
                if esh_e > 0.0:
                    st, ps, ecal, h0 = em_shower(st, esh_e, x, y, ps_tab, 0.0)
                    esh = g.SHAPE_EM
                    hsh = g.SHAPE_EM
                if pt_k > 0.0:  # the photon showers in HCAL module 0
                    sr_, u = rng_next(sr_)
                    res = math.sqrt(g.HCAL_STOCH * g.HCAL_STOCH / pt_k + g.HCAL_CONST * g.HCAL_CONST)
                    h0 += max(0.0, pt_k * (1.0 + res * normal_ppf(u)))
                    hsh = g.SHAPE_EM
                if had_e > 0.0:
                    sr_, u = rng_next(sr_)
                    charged = u >= pr.EP_NEUTRAL_FRACTION
                    sr_, u = rng_next(sr_)
                    lam0 = pr.EP_DEPTH_X0 * u * pr.HADRON_LAMBDA_PER_X0
                    if (frc & pr.FORCE_PUNCHTHROUGH) != 0:
                        sr_, zz, p = pr.exp_depth(sr_, g.ECAL_LAMBDA - lam0 + pr.HCAL_LAMBDA_TOTAL, math.inf)
                        w *= p
                    else:
                        sr_, zz, p = pr.exp_depth(sr_, 0.0, math.inf)
                    sr_, u = rng_next(sr_)
                    a = g.HAD_A * math.exp(g.HAD_A_SIGMA * normal_ppf(u))
                    v2f = v2_nmax if (frc & pr.FORCE_V2_MISS) != 0 else -1
                    sr_, he, d0, d1, d2, d3, hv, wv = hadron_deposit(sr_, had_e, lam0 + zz, a, charged, v2f)
                    w *= wv
                    ecal += he
                    v2 += hv
                    h0, h1, h2, h3 = h0 + d0, h1 + d1, h2 + d2, h3 + d3
                    if d0 + d1 + d2 + d3 > 0.0:
                        hsh = g.SHAPE_HAD
                if e_side[i] > 0.0:
                    # e.m. energy beside the ECAL on the HCAL face: a shower in HCAL module 0
                    st, u = rng_next(st)
                    es = np.float64(e_side[i])
                    res = math.sqrt(g.HCAL_STOCH * g.HCAL_STOCH / max(es, 0.1) + g.HCAL_CONST * g.HCAL_CONST)
                    h0 += max(0.0, es * (1.0 + res * normal_ppf(u)))
                    hsh = g.SHAPE_EM
                for mu in range(2):
                    em = mu_e0 if mu == 0 else mu_e1
                    if em <= 0.0:
                        continue
                    st, lf = _mip(st, 1.0, g.LANDAU_WIDTH)
                    vis = g.MU_LOSS_ECAL_GEV if em > g.MU_LOSS_ECAL_GEV else em
                    ecal += vis * lf
                    ps += g.PS_MIP_GEV * lf * (vis / g.MU_LOSS_ECAL_GEV)
                    # production angle ~ m_mu/E_mu per projection, then transport behind the ECAL
                    st, u = rng_next(st)
                    tx = pc.M_MU_GEV / em * normal_ppf(u)
                    st, u = rng_next(st)
                    ty = pc.M_MU_GEV / em * normal_ppf(u)
                    st, vv, d0, d1, d2, d3, wm = pr.muon_downstream(
                        st, em - g.MU_LOSS_ECAL_GEV, x, y, tx, ty, frc, v2_nmax
                    )
                    w *= wm
                    v2 += vv
                    h0, h1, h2, h3 = h0 + d0, h1 + d1, h2 + d2, h3 + d3
                    if esh == g.SHAPE_NONE:
                        esh = g.SHAPE_MIP
                    hsh = g.SHAPE_MIP
            elif pt == MUON:
                st, lf = _mip(st, 1.0, g.LANDAU_WIDTH)
                if inside:
                    ps = g.PS_MIP_GEV * lf
                    ecal = g.ECAL_MIP_GEV * lf
                    esh = g.SHAPE_MIP
                el = e - g.MU_LOSS_ECAL_GEV
                # hard interaction in the ECAL (bremsstrahlung, pairs, photonuclear): an e.m. shower of nu
                sr_, u = rng_next(sr_)
                hard = u < pr.MU_HARD_PROB
                if (frc & pr.FORCE_MU_HARD) != 0:
                    hard = True
                    w *= pr.MU_HARD_PROB
                if hard and inside:
                    fl |= TRUTH_HADRONIC
                    sr_, v = pr.one_over_v(sr_, pr.MU_V_MIN)
                    sr_, u = rng_next(sr_)
                    nu = v * e
                    sr_, eps_, eec, lk = em_shower(sr_, nu, x, y, ps_tab, g.ECAL_X0 * u)
                    ps += eps_
                    ecal += eec
                    h0 += lk
                    el -= nu
                    esh = g.SHAPE_EM
                st, vv, d0, d1, d2, d3, wm = pr.muon_downstream(st, el, x, y, 0.0, 0.0, frc, v2_nmax)
                w *= wm
                v2 = vv
                h0 += d0
                h1 = d1
                h2 = d2
                h3 = d3
                hsh = g.SHAPE_MIP
            else:
                # ------------------------------------------------------------------ hadron (pi-, K-)
                st, u = rng_next(st)
                z = -math.log(1.0 - u)  # first-interaction depth, lambda
                if (frc & pr.FORCE_HADRON_ECAL) != 0:
                    st, z, p = pr.exp_depth(st, 0.0, g.ECAL_LAMBDA)
                    w *= p
                st, u = rng_next(st)
                a = g.HAD_A * math.exp(g.HAD_A_SIGMA * normal_ppf(u))
                st, lf = _mip(st, 1.0, g.LANDAU_WIDTH)
                cex = False
                if z < g.ECAL_LAMBDA:
                    fl |= TRUTH_HADRONIC
                    sr_, u = rng_next(sr_)
                    cex = u < pr.CEX_FRACTION
                    if (frc & pr.FORCE_CEX) != 0:
                        cex = True
                        w *= pr.CEX_FRACTION
                    elif (frc & pr.FORCE_NO_CEX) != 0:
                        cex = False
                        w *= 1.0 - pr.CEX_FRACTION
                if cex:
                    # charge exchange: a forward pi0 (eta) shower from depth z, a slow recoil neutron
                    sr_, tn = pr.cex_neutron_energy(sr_)
                    t0 = z / pr.HADRON_LAMBDA_PER_X0
                    st, ps, ecal, h0 = em_shower(st, e - tn, x, y, ps_tab, t0)
                    before = min(t0, g.PS_X0) / g.PS_X0
                    ps += g.PS_MIP_GEV * lf * before
                    ecal += g.PS_MIP_GEV * lf * before + g.ECAL_MIP_GEV * lf * z / g.ECAL_LAMBDA + tn
                    esh = g.SHAPE_EM
                    hsh = g.SHAPE_EM
                else:
                    v2f = v2_nmax if (frc & pr.FORCE_V2_MISS) != 0 else -1
                    st, ecal, h0, h1, h2, h3, v2, wv = hadron_deposit(st, e, z, a, True, v2f)
                    w *= wv
                    if z < g.ECAL_LAMBDA:
                        esh = g.SHAPE_HAD
                        if z < g.PS_LAMBDA:
                            st, u = rng_next(st)
                            ps = e * (0.01 + 0.14 * u) * (1.0 - z / g.PS_LAMBDA) + g.PS_MIP_GEV * z / g.PS_LAMBDA * lf
                            if ps > 0.9 * ecal:
                                ps = 0.9 * ecal
                        else:
                            ps = g.PS_MIP_GEV * lf
                        if ecal < ps:
                            ecal = ps
                    else:
                        ps = g.PS_MIP_GEV * lf
                        esh = g.SHAPE_MIP
                        if z - g.ECAL_LAMBDA >= g.HCAL_MODULE_LAMBDA:  # punch-through a module as a MIP
                            fl |= TRUTH_HADRONIC
                    if h0 + h1 + h2 + h3 > 0.0:
                        hsh = g.SHAPE_HAD
                if not inside and esh == g.SHAPE_MIP:
                    ps = 0.0
                    ecal = 0.0
                    esh = g.SHAPE_NONE
        if cal_module < 0 and pt != E_MINUS and pt != HALO:  # muons and hadrons
            srd0 = srd1 = srd2 = e_sr[i] / 3.0  # (m_e/m)^4 of an electron's: nothing above the photon threshold
        trig[i, 0] = s1
        trig[i, 1] = s2
        trig[i, 2] = s3
        trig[i, 3] = v1
        trig[i, 4] = ps
        trig[i, 5] = ecal
        other[i, 0] = s0
        other[i, 1] = s4
        other[i, 2] = v0
        other[i, 3] = v2
        other[i, 4] = srd0
        other[i, 5] = srd1
        other[i, 6] = srd2
        hcal[i, 0] = h0
        hcal[i, 1] = h1
        hcal[i, 2] = h2
        hcal[i, 3] = h3
        shape[i, 0] = esh
        shape[i, 1] = hsh
        flags[i] = fl
        weight[i] *= w
        # truth: sums of the float32-rounded compact values (so that the truth equals the channel sums)
        t_ps[i] = trig[i, 4]
        t_ecal[i] = trig[i, 5]
        t_hcal[i] = np.float32(hcal[i, 0]) + np.float32(hcal[i, 1]) + np.float32(hcal[i, 2]) + np.float32(hcal[i, 3])
        t_v2[i] = other[i, 3]
        t_srd[i] = np.float32(other[i, 4]) + np.float32(other[i, 5]) + np.float32(other[i, 6])


def _table_info(cfg: Config, table: dict | None) -> tuple[int, float, float, dict]:
    if not table:
        return -1, 0.0, 0.0, {}
    module = int(table.get("module", -1))
    if module < 0:
        return -1, 0.0, 0.0, dict(table)
    if module >= ch.N_HCAL_MODULES:
        raise ValueError(f"table module {module} does not exist (0..{ch.N_HCAL_MODULES - 1} or -1)")
    tx, ty = float(table.get("x_mm", 0.0)), float(table.get("y_mm", 0.0))
    return module, tx - float(cfg.beam.x_mm), ty - float(cfg.beam.y_mm), dict(table)


def v2_pe_max(cfg: Config) -> int:
    """Largest V2 photoelectron count below the offline veto threshold ``offline.v2_max_mip``."""
    return int(math.ceil(float(cfg.offline.v2_max_mip) * pr.V2_PE_PER_MIP)) - 1


def apply_response(
    spill: BeamSpill,
    cfg: Config,
    table: dict | None = None,
    force: int | np.ndarray = 0,
    aprime: AprimeEmission | None = None,
) -> Deposits:
    """Detector response of every particle of ``spill``: returns the compact :class:`Deposits` and fills
    the truth fields e_ps, e_ecal, e_hcal, e_v2, e_srd (and, in calibration mode, ptype/flags) in place.

    ``table`` = {"x_mm", "y_mm", "module", "cell"} of the HCAL table; None or module -1 = physics position.
    ``force``: forced processes of a biased MC sample (bits ``sim_frontend.processes.FORCE_*``, for every
    particle or per particle as a uint8 array; 0 for recorded data); the truth weight of a forced particle is
    multiplied by the probability of what was forced.
    ``aprime``: where the A' of the TRUTH_APRIME electrons is emitted (default: the beam generator's A',
    ``AprimeEmission.from_config(cfg)``, at its depth in the shower; never in calibration mode).
    Deterministic: the same spill (seed, truth) gives the same deposits."""
    from sim_frontend import beamline

    bl = spill.beamline if spill.beamline is not None else beamline.transport(spill, cfg)
    truth = spill.truth
    n = truth.shape[0]
    module, dx, dy, tinfo = _table_info(cfg, table)
    e0 = float(cfg.beam.energy_gev)
    k_q, log_kedges, xq = dimuon_tables(e0)
    cal_ptype = PARTICLE_CODES[cfg.beam.calibration_particle]
    dep = Deposits(
        trigger=np.empty((n, 6), np.float32),
        other=np.empty((n, 7), np.float32),
        hcal=np.empty((n, 4), np.float32),
        shape=np.empty((n, 2), np.uint8),
        hcal_shift_mm=(dx, dy),
        calibration_module=module,
        table=tinfo,
    )
    _response_kernel(
        np.uint64(spill.seed),
        truth["index"],
        truth["ptype"],
        truth["flags"],
        truth["e_beam"],
        truth["x_mm"],
        truth["y_mm"],
        truth["e_invisible"],
        PS_FRACTION_TABLE,
        k_q,
        log_kedges,
        xq,
        float(cfg.beam.frac_halo_v1),
        module,
        cal_ptype,
        dx,
        dy,
        np.broadcast_to(np.asarray(force, dtype=np.uint8), (n,)).copy(),
        v2_pe_max(cfg),
        float(np.interp(e0 - float(cfg.offline.ecal_box_max_gev), k_q, np.linspace(0.0, 1.0, k_q.size))),
        truth["weight"],
        bl.e_front,
        bl.e_side,
        bl.e_sr,
        dep.trigger,
        dep.other,
        dep.hcal,
        dep.shape,
        truth["e_ps"],
        truth["e_ecal"],
        truth["e_hcal"],
        truth["e_v2"],
        truth["e_srd"],
    )
    if module >= 0:
        truth["weight"][truth["ptype"] != PARTICLE_CODES["halo"]] = 1.0
    else:
        em = AprimeEmission.from_config(cfg) if aprime is None else aprime
        pick = np.flatnonzero((truth["flags"] & TRUTH_APRIME) != 0)
        if pick.size and not em.at_face:
            dep.aprime = emit_at_depth(spill, dep, pick, em.seed, em.mass_mev, em.emiss_min_fraction)
    return dep


# ------------------------------------------------------------------------------ per-channel expansion
_ECAL_PS = slice(0, 36)
_ECAL_MAIN = slice(36, 72)


def channel_deposits(spill: BeamSpill, dep: Deposits, indices: np.ndarray) -> np.ndarray:
    """Full per-channel deposits (len(indices), N_CHANNELS) float32 GeV of the particles ``indices``.

    ECAL cells share the PS and main totals with the lateral profile of the particle (normalised over the
    matrix, so the PS cells sum to PS_SUM and all 72 cells to ECAL_SUM); HCAL cells share each module's
    deposit around the HCAL centre; counters, vetoes, SRD and sums are copied from the compact arrays.
    Deterministic (no randomness)."""
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= dep.n):
        raise IndexError(f"particle indices must be in 0..{dep.n - 1}")
    m = idx.size
    out = np.zeros((m, ch.N_CHANNELS), dtype=np.float32)
    if m == 0:
        return out
    tr = spill.truth[idx]
    trig = dep.trigger[idx]
    x = tr["x_mm"].astype(np.float64)
    y = tr["y_mm"].astype(np.float64)
    fe = g.cell_fractions(x, y, dep.shape[idx, 0], g.ECAL_EDGES_X, g.ECAL_EDGES_Y, g.ECAL_PROFILES).reshape(m, 36)
    ps = trig[:, 4].astype(np.float64)
    main = trig[:, 5].astype(np.float64) - ps
    out[:, _ECAL_PS] = ps[:, None] * fe
    out[:, _ECAL_MAIN] = main[:, None] * fe
    fh = g.cell_fractions(
        x + dep.hcal_shift_mm[0],
        y + dep.hcal_shift_mm[1],
        dep.shape[idx, 1],
        g.HCAL_EDGES,
        g.HCAL_EDGES,
        g.HCAL_PROFILES,
    )  # (m, x, y)
    fh = np.transpose(fh, (0, 2, 1)).reshape(m, 1, 9)  # index 3*y + x
    h = dep.hcal[idx].astype(np.float64)[:, :, None] * fh  # (m, 4, 9)
    out[:, ch.HCAL_FIRST : ch.HCAL_FIRST + ch.N_HCAL] = h.reshape(m, 36)
    for name in ch.COUNTER_NAMES + ch.VETO_NAMES + ch.SRD_NAMES + ch.SUM_NAMES:
        out[:, ch.by_name(name).id] = dep.counter(name)[idx]
    return out
