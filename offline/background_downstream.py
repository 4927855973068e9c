"""Downstream background sources of the signal box (docs/physics.md 6.5, 10): one estimator per source, each
a biased MC sample -- the source's process forced in every MC event, the event weight carrying its
probability (``sim_frontend.processes.FORCE_*``) -- run through the simulation, digitisation, reconstruction,
trigger and selection of recorded data (:func:`offline.signal.mc_event_table`, :mod:`offline.selection`) and
scaled to ``n_eot`` electrons on target at ``intensity`` e-/spill.

==========================  ======================================================================================
``target_interactions``     beam pi-, K- interacting in the ECAL (charge exchange: a forward pi0 shower and a slow
                            neutron; ordinary inelastic) and beam mu- interacting hard in the ECAL with the muon
                            lost (V2 photoelectron inefficiency, range, geometry). These particles carry no
                            synchrotron radiation: they pass the SRD tag only with an accidental tag from an
                            in-time electron of the beam's low-energy tail bent out of the acceptance, whose
                            probability :func:`p_sr_accidental` measures on simulated tail electrons
``dimuon_loss``             beam e- with gamma -> mu+ mu- in the shower and both muons missed by V2 (photoelectron
                            statistics) and by the HCAL (range, leaving sideways)
``punchthrough``            a hard primary bremsstrahlung photon that crosses the whole ECAL without converting
``hadron_electroproduction`` a leading hadron electroproduced in the ECAL (1e-4 per e-), its interaction forced
                            beyond the HCAL (punch-through of a neutral) and, apart, where it happens naturally
==========================  ======================================================================================

Every estimator returns ``{"n", "err_stat", "err_syst", "mc_events", ...}``: n = N_EOT x (particles of the
source per EOT) x sum of the weights of the MC events in the box / MC events; err_stat from the sum of the
squared weights; err_syst from the relative uncertainty of the source's dominant input (:data:`SYST_REL`);
``n_upper_90``: 90% CL upper bound when no MC event of the source reaches the box (2.30 events x the mean
forced weight of each sample, summed; per sample in ``samples``, where an unforced sample's bound is only
as good as its MC statistics).
The accidental SR tag (:func:`accidental_tag`): tail electrons of the simulated beam (``beam.tail_x0``,
:mod:`sim_frontend.beam`) through the beam line, the detector response, digitisation, reconstruction and the
selection's SRD cuts; P_SR = P(a tail electron within the SRD window) x P(its SRD tag passes and it leaves
nothing in the ECAL, V2 and HCAL). Decays in flight need the beam line and are not estimated here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from detector.config import Calibration, Config, load_calibration
from detector.records import PARTICLE_CODES, TRUTH_APRIME, TRUTH_BEAMLINE, TRUTH_DIMUON, TRUTH_PILEUP
from sim_frontend import processes as pr
from sim_frontend.beam import BeamSpill, Bias, dimuon_probability, generate_spill, tail_probability
from sim_frontend.response import apply_response

from . import selection as sel
from .signal import electron_only, mc_beam, mc_event_table

SEED_OFFSET = 0xB6D0  #: spill-number offset of the background MC (independent of data and signal spills)
N_MC_DEFAULT = 4000  #: MC events per sample
N_TAIL_DEFAULT = 4000  #: simulated tail electrons behind :func:`accidental_tag`
TAG_BIN_GEV = 5.0  #: energy bins of the tail electrons in :func:`accidental_tag`'s ``by_energy``
#: relative uncertainty of the low-energy tail's size (``beam.tail_x0``, DEFAULT: docs/physics.md 1.1)
TAIL_SYST_REL = 1.0
#: relative systematic uncertainty of each source from its dominant input (docs/physics.md 10.7)
SYST_REL = {
    "target_interactions": math.hypot(0.3, TAIL_SYST_REL),  # charge exchange on Pb 30% (PAPER) (+) the tail's size
    "dimuon_loss": 0.5,  # V2 photoelectrons per MIP (DEFAULT 60, +/- 20%) in the forced miss probability
    "punchthrough": 0.3,  # photon track length of approximation A near E0
    "hadron_electroproduction": 1.0,  # the 1e-4 per e- of the paper is an order of magnitude
    "accidental_sr": TAIL_SYST_REL,  # the tail's size (offline/background_accidental.py)
}
_ECAL_CUTS = tuple(c for c in sel.CUT_NAMES if c not in sel.SRD_CUTS)


@dataclass(frozen=True)
class Sample:
    """One biased MC sample: the beam particles it turns the MC events into (code -> fraction), the forced
    processes, whether each event carries a forced gamma -> mu mu, and whether the SRD tag is replaced by the
    accidental-tag probability."""

    name: str
    particles: tuple[tuple[int, float], ...]
    force: int
    dimuon: bool = False
    accidental_sr: bool = False


def accidental_tag(
    cfg: Config, calib: Calibration, intensity: float, n_tail: int = N_TAIL_DEFAULT, seed: int = 1
) -> dict[str, Any]:
    """The accidental SR tag of a particle without synchrotron light (docs/physics.md 1.9, 10.7): ``n_tail``
    electrons of the beam's low-energy tail (every electron made a tail electron by the generator's tail bias),
    one per event and far apart in time, through the beam line, the response, digitisation, reconstruction and
    the selection. A tail electron gives the tag when it passes the SRD cuts (``srd``, ``srd_time``) of its own
    event while nothing of it enters the ECAL (the transport's geometry) and it passes the V2 and HCAL cuts.
    Returns ``p_sr`` = P(a tail electron within +/- ``trigger.window_ns``) x ``p_tag_given_tail``, its
    statistical error, the tail electrons' rate, the MC statistics and, per ``TAG_BIN_GEV`` of the tail
    electron's energy, how many passed the SRD cuts, missed the ECAL and gave the tag (``by_energy``)."""
    p_tail = tail_probability(cfg)
    window_s = 2.0 * float(cfg.trigger.window_ns) * 1e-9
    rate = float(intensity) * electron_fraction(cfg) / float(cfg.spill.length_s) * p_tail  # tail e- per s
    p_in_time = -math.expm1(-rate * window_s)
    out: dict[str, Any] = {"p_tail": p_tail, "tail_rate_hz": rate, "p_in_time": p_in_time, "n_tail": 0}
    if p_tail <= 0.0 or n_tail < 1:
        return {**out, "p_tag_given_tail": 0.0, "p_sr": 0.0, "p_sr_err": 0.0, "tagged": 0}
    c = electron_only(cfg)
    spill = generate_spill(c, SEED_OFFSET + 0x7A11 + int(seed), n_particles=int(n_tail), bias=Bias(tail=1.0 / p_tail))
    dep = apply_response(spill, c)
    pick = np.arange(spill.n)
    table = mc_event_table(c, calib, spill, dep, pick)
    m = sel.cut_masks(table, sel.Cuts.from_config(c))
    srd = m["srd"] & m["srd_time"]
    out_ecal = spill.beamline.e_front[pick] == 0.0
    tag = srd & out_ecal & m["v2"] & m["hcal"]
    w = np.asarray(table["truth_weight"], dtype=np.float64)
    e = spill.truth["e_beam"][pick]
    edges = np.arange(0.0, float(c.beam.energy_gev) + TAG_BIN_GEV, TAG_BIN_GEV)
    by_energy = [
        {"e_lo": float(lo), "e_hi": float(lo + TAG_BIN_GEV), "n": int(b.sum()), "srd": int((b & srd).sum()),
         "out_of_ecal": int((b & out_ecal).sum()), "tagged": int((b & tag).sum())}
        for lo in edges[:-1]
        if (b := (e >= lo) & (e < lo + TAG_BIN_GEV)).any()
    ]  # fmt: skip
    f = float(w[tag].sum() / w.sum())
    f_err = math.sqrt(max(f * (1.0 - f), 1.0 / n_tail**2) / n_tail)  # binomial (equal weights)
    return {
        **out,
        "n_tail": int(n_tail),
        "tagged": int(tag.sum()),
        "p_tag_given_tail": f,
        "p_sr": p_in_time * f,
        "p_sr_err": p_in_time * f_err,
        "by_energy": by_energy,
    }


def p_sr_accidental(
    cfg: Config, intensity: float, calib: Calibration | None = None, n_tail: int = N_TAIL_DEFAULT, seed: int = 1
) -> float:
    """Probability that a beam hadron or muon carries an in-time SR tag from a beam-tail electron bent out of
    the acceptance (``p_sr`` of :func:`accidental_tag`)."""
    return float(accidental_tag(cfg, _calib(cfg, calib), intensity, n_tail, seed)["p_sr"])


def add_tag_error(out: dict[str, Any], tag: dict[str, Any]) -> None:
    """Add the statistical error of the accidental tag (``tag["p_sr_err"]``, relative to ``p_sr``) to the
    estimate ``out``'s ``err_stat`` in quadrature."""
    p, dp = float(tag["p_sr"]), float(tag.get("p_sr_err", 0.0))
    out["err_stat"] = math.hypot(out["err_stat"], out["n"] * dp / p if p > 0 else 0.0)


def electron_fraction(cfg: Config) -> float:
    """Beam electrons per beam particle (the EOT): 1 - every other fraction of ``[beam]``."""
    b = cfg.beam
    return 1.0 - (b.frac_pion + b.frac_kaon + b.frac_muon + b.frac_halo)


def sample_spill(c: Config, sample: Sample, n_mc: int, seed: int) -> tuple[BeamSpill, np.ndarray]:
    """The MC spill of ``sample`` (configuration ``c`` at the sample's intensity): an unbiased beam whose
    ``n_mc`` picked electrons become the sample's particles (unforced weights 1, or the dimuon's)."""
    spill_no = SEED_OFFSET + 97 * seed + sum(map(ord, sample.name)) % 97
    spill, pick = mc_beam(c, n_mc, spill_no, pileup=True)
    t = spill.truth
    rng = np.random.default_rng([seed, spill_no, 0xB6])
    codes = np.array([p for p, _ in sample.particles], dtype=np.uint8)
    frac = np.array([f for _, f in sample.particles], dtype=np.float64)
    t["ptype"][pick] = codes[rng.choice(codes.size, size=pick.size, p=frac / frac.sum())]
    if np.any(codes != PARTICLE_CODES["e-"]):
        # muons and hadrons have no low-energy tail (electrons radiated it): their energies are the same
        # spill's without the tail (the tail's own random stream leaves every other draw unchanged)
        core, _ = mc_beam(c.with_overrides({"beam": {"tail_x0": 0.0}}), n_mc, spill_no, pileup=True)
        other = t["ptype"][pick] != PARTICLE_CODES["e-"]
        t["e_beam"][pick[other]] = core.truth["e_beam"][pick[other]]
    t["flags"][pick] &= np.uint8(TRUTH_PILEUP)
    t["weight"][pick] = 1.0
    if sample.dimuon:
        t["flags"][pick] |= TRUTH_DIMUON
        t["weight"][pick] = dimuon_probability(float(c.beam.energy_gev))
    return spill, pick


def run_sample(
    cfg: Config, calib: Calibration, sample: Sample, n_mc: int, seed: int, intensity: float
) -> dict[str, Any]:
    """Simulate one sample at ``intensity`` (pile-up of the physical beam included) and select it. Returns
    the weight sums of the MC events in the box, the generated weight sum and the timing."""
    t0 = time.perf_counter()
    c = cfg.with_overrides({"beam": {"particles_per_spill": float(intensity)}, "aprime": {"enabled": False}})
    spill, pick = sample_spill(c, sample, n_mc, seed)
    t = spill.truth
    force = np.zeros(spill.n, dtype=np.uint8)
    force[pick] = sample.force
    dep = apply_response(spill, c, force=force)
    # an electron that radiated in the beam line belongs to the ``upstream`` source (offline/background_sources.py):
    # not counted here, neither in the box nor in the weight an empty box's bound is made of
    own = (t["flags"][pick] & TRUTH_BEAMLINE) == 0
    w_gen = np.where(own, t["weight"][pick].astype(np.float64), 0.0)
    table = mc_event_table(c, calib, spill, dep, pick)
    s = sel.select(table, sel.Cuts.from_config(c))
    # the SRD tag of an accidental sample is the probability its estimator multiplies by, not a cut
    passed = sel.cumulative(s.masks, _ECAL_CUTS if sample.accidental_sr else sel.CUT_NAMES)
    mine = (table["truth_flags"] & TRUTH_BEAMLINE) == 0
    w_all = np.asarray(table["truth_weight"], dtype=np.float64)
    flow = {k: {"events": int((m & mine).sum()), "weighted": float(w_all[m & mine].sum())} for k, m in passed.items()}
    box = passed["box"] & mine
    w = w_all[box]
    assert not np.any((table["truth_flags"][box] & TRUTH_APRIME) != 0)
    return {
        "name": sample.name,
        "mc_events": int(pick.size),
        "mc_own": int(own.sum()),  # MC events of this source (not radiated in the beam line)
        "selected": int(box.sum()),
        "sum_w": float(w.sum()),
        "sum_w2": float((w * w).sum()),
        "mean_w_generated": float(w_gen.mean()) if w_gen.size else 0.0,
        "cut_flow": flow,
        "seconds": time.perf_counter() - t0,
    }


def combine(
    source: str, runs: list[dict[str, Any]], per_eot: float, n_eot: float, extra_factor: float = 1.0
) -> dict[str, Any]:
    """The estimate of a source from its samples (each normalised to its own MC events, then summed)."""
    n = 0.0
    var = 0.0
    upper = 0.0
    for r in runs:
        scale = float(n_eot) * per_eot * extra_factor / max(r["mc_events"], 1)
        n += scale * r["sum_w"]
        var += scale * scale * r["sum_w2"]
        upper += scale * (r["sum_w"] if r["selected"] else 2.303 * r["mean_w_generated"])
    return {
        "n": n,
        "err_stat": math.sqrt(var),
        "err_syst": SYST_REL[source] * n,
        "mc_events": int(sum(r["mc_events"] for r in runs)),
        "mc_selected": int(sum(r["selected"] for r in runs)),
        "n_upper_90": upper if not all(r["selected"] for r in runs) else None,
        "seconds": float(sum(r["seconds"] for r in runs)),
        "samples": runs,
    }


def _calib(cfg: Config, calib: Calibration | None) -> Calibration:
    return load_calibration(cfg) if calib is None else calib


def target_interactions(
    cfg: Config,
    n_eot: float,
    intensity: float,
    n_mc: int = N_MC_DEFAULT,
    seed: int = 1,
    calib: Calibration | None = None,
    p_sr: float | None = None,
) -> dict[str, Any]:
    """mu, pi, K interactions in the ECAL (see the module docstring); ``p_sr``: probability of an accidental
    SR tag (default: :func:`accidental_tag`'s, measured at ``intensity``)."""
    calib = _calib(cfg, calib)
    b = cfg.beam
    pi, k, mu = PARTICLE_CODES["pi-"], PARTICLE_CODES["K-"], PARTICLE_CODES["mu-"]
    hadrons = ((pi, b.frac_pion), (k, b.frac_kaon))
    samples = [
        Sample("cex", hadrons, pr.FORCE_HADRON_ECAL | pr.FORCE_CEX, accidental_sr=True),
        Sample("inelastic", hadrons, pr.FORCE_HADRON_ECAL | pr.FORCE_NO_CEX | pr.FORCE_V2_MISS, accidental_sr=True),
        Sample("muon_hard", ((mu, 1.0),), pr.FORCE_MU_HARD | pr.FORCE_V2_MISS, accidental_sr=True),
    ]
    tag = accidental_tag(cfg, calib, intensity, seed=seed) if p_sr is None else {"p_sr": float(p_sr)}
    p_sr = float(tag["p_sr"])
    fe = electron_fraction(cfg)
    per = [(b.frac_pion + b.frac_kaon) / fe, (b.frac_pion + b.frac_kaon) / fe, b.frac_muon / fe]
    runs = [run_sample(cfg, calib, s, n_mc, seed, intensity) for s in samples]
    parts = [combine("target_interactions", [r], q, n_eot, p_sr) for r, q in zip(runs, per)]
    out = _sum_parts("target_interactions", parts)
    add_tag_error(out, tag)
    out["inputs"] = {"p_sr_accidental": p_sr, "cex_fraction": pr.CEX_FRACTION, "mu_hard_prob": pr.MU_HARD_PROB}
    out["inputs"]["accidental_tag"] = tag
    return out


def _sum_parts(source: str, parts: list[dict[str, Any]]) -> dict[str, Any]:
    n = sum(p["n"] for p in parts)
    ups = [p["n_upper_90"] if p["n_upper_90"] is not None else p["n"] for p in parts]
    for p in parts:
        p["samples"][0]["n"] = p["n"]
        p["samples"][0]["n_upper_90"] = p["n_upper_90"]
    return {
        "n": n,
        "err_stat": math.sqrt(sum(p["err_stat"] ** 2 for p in parts)),
        "err_syst": SYST_REL[source] * n,
        "mc_events": int(sum(p["mc_events"] for p in parts)),
        "mc_selected": int(sum(p["mc_selected"] for p in parts)),
        # only when no MC event reaches the box; else the per-sample bounds are in "samples"
        "n_upper_90": sum(ups) if n == 0 else None,
        "seconds": float(sum(p["seconds"] for p in parts)),
        "samples": [s for p in parts for s in p["samples"]],
    }


def _electron_estimator(source: str, samples: tuple[Sample, ...], doc: str) -> Callable[..., dict[str, Any]]:
    """An estimator of a source made of beam electrons: ``f(cfg, n_eot, intensity, n_mc=N_MC_DEFAULT, seed=1,
    calib=None)``, the signature of :func:`target_interactions` without ``p_sr``."""

    def estimate(
        cfg: Config,
        n_eot: float,
        intensity: float,
        n_mc: int = N_MC_DEFAULT,
        seed: int = 1,
        calib: Calibration | None = None,
    ) -> dict[str, Any]:
        cal = _calib(cfg, calib)
        runs = [run_sample(cfg, cal, s, n_mc, seed, intensity) for s in samples]
        return _sum_parts(source, [combine(source, [r], 1.0, n_eot) for r in runs])

    estimate.__name__ = estimate.__qualname__ = source
    estimate.__doc__ = doc
    return estimate


_E = ((PARTICLE_CODES["e-"], 1.0),)

dimuon_loss = _electron_estimator(
    "dimuon_loss",
    (Sample("dimuon_v2_miss", _E, pr.FORCE_DIMUON_HARD | pr.FORCE_V2_MISS, dimuon=True),),
    """gamma -> mu+ mu- in the shower with both muons lost (every MC event a dimuon with the photon above
    E0 - the box edge, weight P(mu mu) x P(k above it) per e-; V2 misses forced with their probability).""",
)
punchthrough = _electron_estimator(
    "punchthrough",
    (Sample("photon_punchthrough", _E, pr.FORCE_PUNCHTHROUGH),),
    """A hard primary photon crossing the whole ECAL unconverted (forced, weight = expected photons x
    survival); it showers in the HCAL.""",
)
hadron_electroproduction = _electron_estimator(
    "hadron_electroproduction",
    (
        Sample("ep_punchthrough", _E, pr.FORCE_ELECTROPRODUCTION | pr.FORCE_PUNCHTHROUGH),
        Sample("ep_natural", _E, pr.FORCE_ELECTROPRODUCTION),
    ),
    """Leading-hadron electroproduction in the ECAL: forced in every event; its first interaction forced
    beyond the HCAL in one sample (weight exp(-depth)), natural in the other.""",
)


#: the estimators, by registry key
ESTIMATORS = {
    "target_interactions": target_interactions,
    "dimuon_loss": dimuon_loss,
    "punchthrough": punchthrough,
    "hadron_electroproduction": hadron_electroproduction,
}
