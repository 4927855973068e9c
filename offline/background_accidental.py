"""The ``accidental_sr`` background source (Table III "accidental SR tag and e- from mu, pi, K decays",
docs/physics.md 6.5, 1.9, 10.7): a beam muon, pion or kaon carries no synchrotron light of its own (its SR is
(m_e/m)^4 of an electron's, below the SRD photon threshold), so it passes the electron tag only when an
electron of the beam's low-energy tail (:mod:`sim_frontend.beam`, ``beam.tail_x0``) arrives within the SRD
window, is bent by the dipoles out of the ECAL (and past V2 and the HCAL) and still leaves SR above the SRD
threshold in every section.

Each MC event is a beam mu-, pi- or K- (in their beam proportions) of an unbiased spill at the intensity I
with its natural processes -- nothing forced -- run through the simulation, digitisation, reconstruction,
trigger and the selection's ECAL-side cuts (:func:`offline.background_downstream.run_sample`); the SRD tag is
the probability ``p_sr`` that :func:`offline.background_downstream.accidental_tag` measures on simulated tail
electrons with the same selection's SRD cuts (one definition, shared with ``target_interactions``, which
forces the hadrons' and muons' interactions in the ECAL). n = N_EOT x (particles per EOT) x p_sr x sum(w in
box) / N_MC; err_stat from the MC weights and the statistical error of p_sr; err_syst from the tail's size
(``TAIL_SYST_REL``); with an empty box, ``n_upper_90`` is 2.30 events at the mean generated weight.

Electrons from mu, pi, K decays in flight behind the dipoles (no SR of their own either) enter the same
samples once the transport decays particles in flight; this source forces no decay.
"""

from __future__ import annotations

from typing import Any

from detector.config import Calibration, Config, load_calibration
from detector.records import PARTICLE_CODES

from . import background_downstream as bd

SOURCE = "accidental_sr"


def accidental_sr(
    cfg: Config,
    n_eot: float,
    intensity: float,
    n_mc: int = bd.N_MC_DEFAULT,
    seed: int = 1,
    calib: Calibration | None = None,
) -> dict[str, Any]:
    """Beam mu, pi, K with an accidental SR tag from an in-time tail electron, in the signal box for ``n_eot``
    EOT at ``intensity`` e-/spill (see the module docstring); ``n_mc`` MC events per sample (two samples:
    pi-/K-, mu-). Keys as the estimators of :mod:`offline.background_downstream`, plus ``inputs`` (the
    accidental tag: tail probability, in-time probability, tag fraction, p_sr and its MC statistics) and a
    ``cut_flow`` per sample."""
    cal = load_calibration(cfg) if calib is None else calib
    b = cfg.beam
    pi, k, mu = PARTICLE_CODES["pi-"], PARTICLE_CODES["K-"], PARTICLE_CODES["mu-"]
    samples = [
        bd.Sample("tail_tag_hadron", ((pi, b.frac_pion), (k, b.frac_kaon)), 0, accidental_sr=True),
        bd.Sample("tail_tag_muon", ((mu, 1.0),), 0, accidental_sr=True),
    ]
    tag = bd.accidental_tag(cfg, cal, intensity, seed=seed)
    p_sr = float(tag["p_sr"])
    fe = bd.electron_fraction(cfg)
    per = [(b.frac_pion + b.frac_kaon) / fe, b.frac_muon / fe]
    runs = [bd.run_sample(cfg, cal, s, n_mc, seed, intensity) for s in samples]
    parts = [bd.combine(SOURCE, [r], q, n_eot, p_sr) for r, q in zip(runs, per, strict=True)]
    out = bd._sum_parts(SOURCE, parts)
    bd.add_tag_error(out, tag)
    out["inputs"] = {"p_sr_accidental": p_sr, "accidental_tag": tag}
    return out
