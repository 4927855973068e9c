"""The upstream background source (offline/background_sources.py, docs/physics.md 1.10): the forced
bremsstrahlung and the downstream splitting estimate the same expectation as the plain simulation."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from detector.config import load_calibration, load_config
from detector.records import PARTICLE_CODES, TRUTH_BEAMLINE
from offline import background_sources as bs
from offline import selection as sel
from sim_frontend import beamline
from sim_frontend.beam import generate_spill
from sim_frontend.response import apply_response

INTENSITY = 5.1e6


@pytest.fixture(scope="module")
def cfg():
    return load_config(None).with_overrides({"beam": {"dimuon_bias": 1.0}})


@pytest.fixture(scope="module")
def calib(cfg):
    return load_calibration(cfg)


def _quiet(done: int, total: int) -> None:
    pass


def test_forced_bremsstrahlung_estimates_the_unbiased_rates(cfg, calib):
    # the same quantities from the plain simulation (no bias) and from the forced one, on independent samples:
    # electrons that radiated in the beam line, those of them bent off the ECAL (below the prefilter energy:
    # the forced population) and those of these that pass the tracker cuts (the split set: about 3e-5 of the
    # electrons, a mismeasured momentum, so the plain sample is large)
    n = 1_000_000
    plain = bs.upstream_prediction(cfg, calib, 1e10, INTENSITY, n, 11, _quiet, split_k=1, bias=beamline.Bias())
    forced = bs.upstream_prediction(cfg, calib, 1e10, INTENSITY, n, 12, _quiet, split_k=1)
    p, f = plain["mc"], forced["mc"]
    assert f["bias"] == bs.FORCE_FACTOR and f["bias_z_max_m"] == pytest.approx(min(cfg.beamline.magnet_z_m))
    assert p["bias"] == 1.0 and p["bias_z_max_m"] is None
    # the forcing makes the split set much more frequent per simulated electron ...
    assert f["split_events"] > 8 * p["split_events"] >= 8 * 5
    # ... with weights that give back the plain rates (errors: Poisson of the plain counts; the forced weights
    # of one hard photon are nearly equal, so the forced relative error is 1/sqrt(count))
    pairs = (("beamline_weight", "beamline_events"), ("prefilter_weight", "prefilter_events"))
    for key, count in (*pairs, ("split_weight", "split_events")):
        rate_p, rate_f = p[key] / n, f[key] / n
        err = math.hypot(rate_p / math.sqrt(p[count]), 1.5 * rate_f / math.sqrt(f[count]))
        assert abs(rate_p - rate_f) < 3.5 * err, (key, rate_p, rate_f, err)


def test_splitting_replicates_downstream_only_and_keeps_the_weight(cfg, calib):
    bias = bs.upstream_bias(cfg)
    one, n1, s1 = bs.simulate_tables(cfg, calib, 150_000, 5, INTENSITY, bias, _quiet, split_k=1)
    k = 6
    many, nk, sk = bs.simulate_tables(cfg, calib, 150_000, 5, INTENSITY, bias, _quiet, split_k=k)
    # 25 split events (68 before the Micromegas hit times: those that took their track from a pile-up
    # particle out of time no longer pass the tracker cuts)
    assert n1 == nk and s1["split_events"] == sk["split_events"] > 20
    assert sk["digitised"] == k * s1["digitised"]
    ids = many["split_id"]
    m = s1["split_events"]
    # every split event k times; its replicas' weights add up to its weight
    assert np.array_equal(np.bincount(ids, minlength=m), np.full(m, k))
    w_sum = np.bincount(ids, weights=many["truth_weight"].astype(np.float64), minlength=m)
    np.testing.assert_allclose(w_sum, one["truth_weight"][np.argsort(one["split_id"])], rtol=1e-5)
    assert np.all((many["truth_flags"] & TRUTH_BEAMLINE) != 0)
    # replica 0 is the event itself; the tracker (upstream) is the same in every replica; downstream differs
    order = np.lexsort((np.arange(ids.size), ids))  # per split event, replicas in order
    first = order[::k]
    for col in ("e_ecal", "e_ps_sum", "trigger_mask", "srd0"):
        np.testing.assert_array_equal(many[col][first], one[col][np.argsort(one["split_id"])])
    for col in sel.TRACK_COLUMNS:
        a = many[col][order].reshape(m, k)
        np.testing.assert_array_equal(a, np.repeat(a[:, :1], k, axis=1))
    ps = many["e_ps_sum"][order].reshape(m, k)
    seen = ps.max(axis=1) > 0.1  # something in the PS in some replica (most primaries are lost: nothing)
    assert seen.sum() >= 10 and np.mean(np.ptp(ps[seen], axis=1) > 0.01) > 0.8
    # the replicas are draws from the same distribution as the event itself: the SRD sum and the PS energy of
    # replica 0 agree with those of the others within their errors
    for col in ("e_ps_sum", "srd1"):
        v = many[col][order].reshape(m, k).astype(np.float64)
        a, b = v[:, 0], v[:, 1:].mean(axis=1)
        d = a - b
        assert abs(d.mean()) < 4 * d.std(ddof=1) / math.sqrt(m) + 1e-9, col


def test_prediction_json_keys_and_zero_bound(cfg, calib):
    r = bs.predict(cfg, 4.3e10, INTENSITY, 20_000, ["upstream"], calib=calib, seed=3)
    up = json.loads(json.dumps(r, default=float))["sources"]["upstream"]
    mc = up["mc"]
    assert {"n", "err", "mc"} <= set(up)
    assert {
        "events", "box_events", "cut_flow", "mechanism", "bias", "bias_y_min", "bias_z_max_m", "split_k",
        "split_events", "split_weight", "beamline_events", "beamline_weight", "digitised", "material",
        "bound_per_event",
    } <= set(mc)  # fmt: skip
    assert mc["split_k"] == bs.SPLIT_K and mc["digitised"] == bs.SPLIT_K * mc["split_events"] > 0
    assert list(mc["cut_flow"]) == ["all", *sel.CUT_NAMES]
    assert set(mc["mechanism"]) == set(bs.MECHANISMS)
    for c in sel.CUT_NAMES:  # the mechanisms add up to the cut flow
        total = sum(mc["mechanism"][name][c] for name in bs.MECHANISMS)
        assert total == pytest.approx(mc["cut_flow"][c]["weighted"], rel=1e-9, abs=1e-12)
    if mc["box_events"] == 0:
        # the 68% bound of zero events at the weight of one replica of a split event
        zero_w = mc["split_weight"] / mc["split_events"] / mc["split_k"]
        assert up["n"] == 0.0 and up["err"] == pytest.approx(1.14 * 4.3e10 / 20_000 * zero_w)
        assert mc["bound_per_event"] == pytest.approx(mc["split_k"] * up["err"])
        # the 90% CL bound: 2.303 events at the mean weight of one split event
        assert mc["n_upper_90"] == pytest.approx(2.303 * 4.3e10 / 20_000 * mc["split_weight"] / mc["split_events"])
    else:
        assert up["n"] > 0 and up["err"] > 0


def test_only_the_mc_events_are_biased_and_they_are_isolated(cfg):
    # the pile-up around the biased MC events is transported as without bias; the MC events as with it
    n = 20_000
    c = dataclasses.replace(cfg, spill=dataclasses.replace(cfg.spill, length_s=n * cfg.spill.length_s / INTENSITY))

    def spill():
        return generate_spill(c, 4242, n_particles=n, start_unix=0.0)

    s_mix, s_plain, s_all = spill(), spill(), spill()
    t = s_mix.truth
    electrons = np.flatnonzero(t["ptype"] == PARTICLE_CODES["e-"])
    prim = bs.isolated(t["time_ns"], electrons)
    assert 0.3 * electrons.size < prim.size < 0.9 * electrons.size  # at the beam's rate some are too close
    assert np.all(np.diff(t["time_ns"][prim]) >= bs.ISOLATION_NS)
    dropped = np.setdiff1d(electrons, prim)  # each one close after a kept one
    assert np.all(t["time_ns"][dropped] - t["time_ns"][prim[np.searchsorted(prim, dropped) - 1]] < bs.ISOLATION_NS)
    forced = bs.upstream_bias(cfg)
    mix = beamline.transport(s_mix, c, dataclasses.replace(forced, only=t["index"][prim]))
    plain = beamline.transport(s_plain, c, beamline.Bias())
    full = beamline.transport(s_all, c, forced)
    rest = np.setdiff1d(np.arange(s_mix.n), prim)
    for f in ("e_front", "e_side", "x_mm", "e_sr", "weight", "e_particle"):
        np.testing.assert_array_equal(getattr(mix, f)[rest], getattr(plain, f)[rest])
        np.testing.assert_array_equal(getattr(mix, f)[prim], getattr(full, f)[prim])
    assert np.all(mix.weight[rest] == 1.0) and np.mean(mix.weight[prim] < 0.5) > 0.4
    pick = np.concatenate([prim[:50], rest[:50]])
    np.testing.assert_array_equal(
        beamline.station_positions(s_mix, c, pick[50:]), beamline.station_positions(s_plain, c, pick[50:])
    )
    np.testing.assert_array_equal(
        beamline.station_positions(s_mix, c, pick[:50]), beamline.station_positions(s_all, c, pick[:50])
    )


def test_replica_starts_from_the_transported_truth(cfg):
    spill = generate_spill(cfg, 77, n_particles=5000, start_unix=0.0)
    beamline.transport(spill, cfg, bs.upstream_bias(cfg))
    transported = spill.truth.copy()
    apply_response(spill, cfg)  # replica 0: the spill itself, its truth filled (and flagged) by the response
    assert bs.replica_spill(spill, 0, transported) is spill
    rep = bs.replica_spill(spill, 1, transported)
    assert np.array_equal(rep.truth, transported) and rep.truth is not transported
    assert rep.seed != spill.seed and rep.seed == bs.replica_spill(spill, 1, transported).seed
    assert rep.beamline is spill.beamline and rep.z0_xy is spill.z0_xy and rep.bias is spill.bias
    assert bs.replica_spill(spill, 2, transported).seed not in (spill.seed, rep.seed)
