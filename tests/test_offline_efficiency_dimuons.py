"""``na64-offline efficiency`` (Table II factors, the A' at a sampled shower depth) and ``na64-offline dimuons
--mc`` (the dimuon control sample) through the command line, on small MC samples."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from offline import aprime_depth, efficiency
from offline.cli import main

FACTORS = ("eps_e", "eps_ecal", "eps_v", "eps_hcal")


def test_factor_table_is_sequential_and_multiplies_to_the_total():
    n = 10
    m = {c: np.ones(n, dtype=bool) for cuts in efficiency.FACTORS.values() for c in cuts}
    m["srd"][:4] = False  # eps_e = 6/10
    m["trigger"][4:6] = False  # eps_ecal = 4/6
    m["v2"][6] = False  # eps_v = 3/4
    m["hcal"][:7] = False  # already gone: eps_hcal = 3/3
    t = efficiency.factor_table(m)
    assert [t[f] for f in FACTORS] == pytest.approx([0.6, 4 / 6, 0.75, 1.0])
    assert t["total"] == pytest.approx(0.3) and t["selected"] == 3 and t["events"] == 10
    assert t["eps_ecal_events"] == [4, 6] and t["eps_ecal_err"] == pytest.approx(math.sqrt(4 / 6 * 2 / 6 / 6))
    assert t["eps_hcal_err"] == 0.0


def test_depth_follows_the_primary_track_length_above_e_aprime():
    u = (np.arange(4000) + 0.5) / 4000
    shallow = aprime_depth.sample_depth(np.full(u.size, 0.05), u)  # E_A' = 95% of E: the primary at once
    deep = aprime_depth.sample_depth(np.full(u.size, math.log(2.0)), u)  # E_A' = E/2
    assert np.all((shallow >= 0) & (shallow <= 40.0)) and np.all((deep >= 0) & (deep <= 40.0))
    # mean of t under P(b t, L): Integral t P / Integral P over t (numerically, b = 4/3)
    from scipy import integrate, special

    for lr, sample in ((0.05, shallow), (math.log(2.0), deep)):

        def p(t: float, lr: float = lr) -> float:
            return special.gammainc(4.0 / 3.0 * t, lr) if t > 0 else 1.0

        num = integrate.quad(lambda t, p=p: t * p(t), 0, 40, limit=200)[0]
        mean = num / integrate.quad(p, 0, 40, limit=200)[0]
        assert sample.mean() == pytest.approx(mean, rel=0.02)
    assert deep.mean() > 2 * shallow.mean()
    e = aprime_depth.sample_emitter_energy(np.full(u.size, 100.0), np.full(u.size, 60.0), deep, u)
    assert np.all((e >= 60.0) & (e <= 100.0)) and e.mean() < 95.0


def test_emission_inside_the_shower_conserves_energy_and_stays_above_emiss():
    rng = np.random.default_rng(3)
    e = np.full(3000, 100.0)
    t, e_e, e_a = aprime_depth.sample_emission(0.0167, e, 50.0, rng)
    assert np.all((e_a >= 50.0) & (e_a <= e_e) & (e_e <= e)) and np.all(t >= 0)
    assert np.mean(e_a > 50.0) > 0.99
    # the emitter has lost energy before radiating: E_e < E for most events, the deeper the softer
    assert np.mean(e_e < 99.0) > 0.3 and np.corrcoef(t, e_e)[0, 1] < -0.3
    # a light A' takes nearly all of the emitter's energy
    assert np.median(e_a / e_e) > 0.9


def test_ps_threshold_correction_is_the_ratio_of_fractions_above_threshold():
    face = np.array([0.5, 0.5, 0.5, 0.5, 0.1])  # 4 of 5 above 0.3
    depth = np.array([0.5, 0.2, 0.5, 0.3, 0.4])  # 3 of 5 (0.3 is not above)
    assert aprime_depth.ps_threshold_correction(face, depth, 0.3) == pytest.approx(0.75)


def _efficiency(tmp_path, *extra):
    out = tmp_path / "eff.json"
    args = ["efficiency", "--mass", "16.7", "--intensity", "5.1e6", "--events", "400", "--json", str(out)]
    assert main([*args, *extra]) == 0
    return json.loads(out.read_text())


def test_efficiency_command_writes_the_factor_table(tmp_path, capsys):
    r = _efficiency(tmp_path)
    printed = capsys.readouterr().out
    assert "eps_ecal" in printed and "PS-threshold correction" in printed
    assert r["events"] == 400 and r["intensity"] == 5.1e6 and r["tracker_applied"] is True
    assert math.prod(r[f] for f in FACTORS) == pytest.approx(r["total"], rel=1e-12)
    assert r["selected"] == r["cut_flow"]["box"]
    for f in (*FACTORS, "total"):
        k, n = r[f"{f}_events"] if f != "total" else (r["selected"], r["events"])
        assert 0 < r[f] <= 1 and r[f] == pytest.approx(k / n)
        assert r[f"{f}_err"] == pytest.approx(math.sqrt(r[f] * (1 - r[f]) / n))
    # the A' radiated after the primary has showered part of its energy: more events above the PS threshold
    assert r["at_depth"] is True and 0.0 < r["depth_x0_mean"] < 2.0
    assert 1.1 < r["ps_threshold_correction"] < 2.0
    assert r["paper"]["total"] == 0.50 and r["paper"]["eps_e"] == [0.58, 0.03]
    face = _efficiency(tmp_path, "--face")
    assert face["ps_threshold_correction"] == 1.0 and face["depth_x0_mean"] == 0.0
    assert face["eps_e"] == r["eps_e"]  # the same electrons: only the ECAL side moves


def test_efficiency_rejects_bad_input():
    with pytest.raises(SystemExit):
        main(["efficiency", "--mass", "16.7", "--intensity", "-1"])
    with pytest.raises(SystemExit):
        main(["efficiency", "--mass", "0", "--intensity", "1e6"])


def test_dimuons_mc_writes_selected_per_eot(tmp_path, capsys):
    out = tmp_path / "dimu.json"
    args = ["dimuons", "--mc", "--eot", "1.71e8", "--intensity", "1.8e6", "--events", "1500", "--json", str(out)]
    assert main(args) == 0
    r = json.loads(out.read_text())
    assert "selected per EOT" in capsys.readouterr().out
    flow = list(r["cut_flow"].values())
    assert flow[0] == 1500 and flow == sorted(flow, reverse=True) and flow[-1] == r["selected_mc_events"] > 0
    # every MC event carries the gamma -> mu mu probability per electron as its weight
    assert r["selected_per_eot"] == pytest.approx(
        r["selected_mc_events"] * r["dimuon_probability_per_eot"] / 1500, rel=1e-5
    )
    assert r["selected"] == pytest.approx(r["selected_per_eot"] * 1.71e8)
    assert r["selected_per_eot_err"] == pytest.approx(
        r["selected_per_eot"] / math.sqrt(r["selected_mc_events"]), rel=1e-5
    )
    # E_ECAL < 60 GeV needs a hard pair (k > 40 GeV): a few per cent of the pairs
    assert 0.005 < r["selection_efficiency"] < 0.2
    assert main([*args[:-1], str(tmp_path / "again.json")]) == 0  # seeded: the same prediction again
    assert json.loads((tmp_path / "again.json").read_text())["selected_per_eot"] == r["selected_per_eot"]
