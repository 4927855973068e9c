"""``na64-offline report``, ``export`` and ``simulate`` through the command line (offline.cli.main)."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import offline_fixtures as fx
import pytest

from detector.runrecord import read_run_record
from detector.spillfile import list_spills, read_spill
from offline import dask_select as ds
from offline import events as ev
from offline import limits as lim
from offline import selection as sel
from offline.cli import main


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.getbasetemp() / "offline_runs"
    return fx.injected_run(base), fx.plain_run(base)


def test_report_writes_plots_limits_and_summary(runs, tmp_path):
    _, plain = runs
    out = tmp_path / "report"
    rc = main(["report", str(plain), "--out", str(out), "--serial", "--masses", "16.7,100", "--signal-events", "600"])
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    files = [pathlib.Path(f) for f in s["files"]]
    for name in (
        "exclusion.png",
        "y_vs_mchi.png",
        "ecal_vs_hcal.png",
        "cutflow.png",
        "summary.txt",
        "limits.json",
        "background.json",
        "runs.json",
    ):
        assert out / name in files
    for f in files:
        assert f.exists() and f.stat().st_size > 0, f
        if f.suffix == ".png":
            assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    txt = (out / "summary.txt").read_text()
    assert all(str(f) in txt for f in files)
    # the limit uses the run's EOT, the box count and the side-band background
    record = read_run_record(plain)
    assert s["eot"] == record["totals"]["eot"]
    limits = s["limits"]
    assert limits["n_obs"] == s["n_obs"] == s["cut_flow"]["box"]
    assert limits["background"] == pytest.approx(s["background"]["n_b"])
    assert [p["mass_mev"] for p in limits["points"]] == [16.7, 100.0]
    for p in limits["points"]:
        assert 0 < p["efficiency"] < 1 and np.isfinite(p["eps_90"]) and p["eps_90"] > 0
        # eps_90 = sqrt(N_90 / (EOT x efficiency x yield))
        assert p["eps_90"] == pytest.approx(
            np.sqrt(limits["n90"] / (s["eot"] * p["efficiency"] * p["yield_per_eot_eps1"])), rel=1e-6
        )
    assert limits["points"][1]["eps_90"] > limits["points"][0]["eps_90"]  # fewer A' at 100 MeV
    # runs.json is the input format of `limits --runs`
    runs_list, syst = lim.load_runs(out / "runs.json")
    assert runs_list[0].n_eot == s["eot"] and runs_list[0].n_obs == s["n_obs"] and syst is not None


def test_export_round_trips_through_uproot(runs, tmp_path):
    import uproot

    inj, _ = runs
    out = tmp_path / "run.root"
    assert main(["export", str(inj), "--out", str(out)]) == 0
    before = out.read_bytes()
    assert main(["export", str(inj), "--out", str(out)]) == 2  # an existing file is not overwritten ...
    assert out.read_bytes() == before
    assert main(["export", str(inj), "--out", str(out), "--force"]) == 0  # ... unless asked for
    cfg, calib = ds.run_setup(inj)
    tables = [ev.event_table(read_spill(p), calib, cfg) for p in list_spills(inj)]
    t = ev.concat(tables)
    s = sel.select(t, sel.Cuts.from_config(cfg))
    with uproot.open(out) as f:
        tree = f["events"]
        assert tree.num_entries == ev.n_rows(t)
        arrays = tree.arrays(library="np")
        for col in (
            "run",
            "spill",
            "event_id",
            "trigger_mask",
            "e_ecal",
            "e_ps",
            "e_hcal",
            "v2_mip",
            "ecal_chi2",
            "srd0",
            "n_cells_pileup",
            "truth_flags",
            "truth_e_invisible",
        ):
            np.testing.assert_array_equal(arrays[col], t[col], err_msg=col)
            assert arrays[col].dtype == t[col].dtype
        np.testing.assert_array_equal(arrays["in_box"], s.in_box)
        for i, name in enumerate(sel.CUT_NAMES):
            np.testing.assert_array_equal((arrays["cut_bits"] >> i) & 1, s.masks[name].astype(np.uint16))
        np.testing.assert_array_equal(f["cutflow"].values(), list(s.cut_flow().values()))
        h = f["ecal_vs_hcal_trigger"].to_hist()
        # every triggered event, the overflow included (E_ECAL or E_HCAL above the 150 GeV range)
        assert h.sum(flow=True).value == s.masks["trigger"].sum()
        sp = f["spills"].arrays(library="np")
        assert sp["eot"].sum() == read_run_record(inj)["totals"]["eot"]
        assert sp["n_events"].sum() == ev.n_rows(t)


def test_simulate_command_json(tmp_path):
    out = tmp_path / "sig.json"
    assert main(["simulate", "--mass", "16.7,100", "--events", "300", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert [r["mass_mev"] for r in res] == [16.7, 100.0]
    for r in res:
        assert {"mass_mev", "events", "triggered", "selected", "efficiency", "efficiency_err", "cut_flow"} <= set(r)
        assert r["events"] == 300 and r["selected"] <= r["triggered"] <= 300
        assert r["efficiency"] == pytest.approx(r["selected"] / 300)


def test_bad_input_gives_a_clear_error(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nope"), "--out", str(tmp_path / "x.root")]) == 2
    assert "no such run directory" in " ".join(capsys.readouterr().err.split())
    with pytest.raises(SystemExit):
        main(["simulate", "--mass", "-3"])
