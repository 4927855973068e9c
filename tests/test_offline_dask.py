"""Dask scale-out of the selection: a real LocalCluster with 2 worker processes, and an existing scheduler
given by address, give exactly the serial result; unreadable spill files are reported, not fatal."""

from __future__ import annotations

import json
import shutil

import numpy as np
import offline_fixtures as fx
import pytest

from detector.spillfile import list_spills
from offline import dask_select as ds


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.getbasetemp() / "offline_runs"
    return [fx.injected_run(base), fx.plain_run(base)]


@pytest.fixture(scope="module")
def serial(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("serial")
    return out, ds.select_runs(runs, out, serial=True, progress=False)


def _assert_same(a: ds.MergedSelection, b: ds.MergedSelection) -> None:
    sa, sb = a.summary(), b.summary()
    assert sa == sb
    for name in a.hists:
        np.testing.assert_array_equal(a.hists[name].values(flow=True), b.hists[name].values(flow=True))
        np.testing.assert_array_equal(a.hists[name].variances(flow=True), b.hists[name].variances(flow=True))
    for band in a.sidebands:
        for col in a.sidebands[band]:
            np.testing.assert_array_equal(a.sidebands[band][col], b.sidebands[band][col])


def _assert_same_files(dir_a, dir_b) -> None:
    ja = json.loads((dir_a / "selection.json").read_text())
    jb = json.loads((dir_b / "selection.json").read_text())
    ja.pop("files"), jb.pop("files")
    assert ja == jb
    for name in ("sideband_A.npy", "sideband_C.npy", "sideband_A_hcal.npy", "sideband_C_hcal.npy"):
        np.testing.assert_array_equal(np.load(dir_a / name), np.load(dir_b / name))
    za, zb = np.load(dir_a / "histograms.npz"), np.load(dir_b / "histograms.npz")
    assert sorted(za.files) == sorted(zb.files)
    for k in za.files:
        np.testing.assert_array_equal(za[k], zb[k])


def test_local_cluster_two_workers_equals_serial(runs, serial, tmp_path):
    out_s, m_s = serial
    m_d = ds.select_runs(runs, tmp_path, n_workers=2, progress=False)
    assert m_d.n_spills == 6 and m_d.n_events > 0 and m_d.n_obs > 0
    _assert_same(m_s, m_d)
    _assert_same_files(out_s, tmp_path)
    # the outputs are there: JSON, side bands, histograms, ROOT file with the histograms
    js = json.loads((tmp_path / "selection.json").read_text())
    assert js["box"]["n_obs"] == len(js["box"]["events"]) == m_d.n_obs
    assert {"run", "spill", "event_id"} <= set(js["box"]["events"][0])
    assert js["truth"]["aprime_in_box"] > 0 and js["eot"] == m_d.eot
    # recorded data are unbiased: every truth weight is 1, the weighted counts are the counts
    assert js["truth"]["dimuon_recorded_weighted"] == js["truth"]["dimuon_recorded"]
    assert js["truth"]["aprime_in_box_weighted"] == js["truth"]["aprime_in_box"]
    assert set(js["by_run"]) == {str(r) for r in runs}
    import uproot

    with uproot.open(tmp_path / "histograms.root") as f:
        np.testing.assert_array_equal(f["cutflow"].values(), list(m_d.cut_flow.values()))
        assert f["ecal_vs_hcal"].values().shape == (150, 150)
        assert f["box_events"].num_entries == m_d.n_obs


def test_existing_scheduler_by_address_equals_serial(runs, serial, tmp_path):
    from dask.distributed import LocalCluster

    _, m_s = serial
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=ds.DASHBOARD_ADDRESS
    ) as cluster:
        m_d = ds.select_runs(runs, tmp_path, scheduler=cluster.scheduler_address, progress=False)
    _assert_same(m_s, m_d)


def test_unreadable_spill_file_is_reported_and_skipped(runs, serial, tmp_path):
    _, m_s = serial
    rd = tmp_path / runs[1].name
    shutil.copytree(runs[1], rd)
    victim = list_spills(rd)[1]
    victim.write_bytes(victim.read_bytes()[:5000])  # truncated: not a valid HDF5 file any more
    m = ds.select_runs([rd], tmp_path / "out", serial=True, progress=False)
    assert m.n_spills == 2 and len(m.errors) == 1 and victim.name in m.errors[0]
    assert 0 < m.eot < m_s.by_run[str(runs[1])]["eot"]
    js = json.loads((tmp_path / "out" / "selection.json").read_text())
    assert js["errors"] == m.errors


def test_incomplete_spill_is_left_out_with_its_eot(runs, serial, tmp_path):
    """A spill the DAQ flagged as incomplete (here: readout_incomplete, as after a readout failure) counts
    neither its events nor its EOT; a spill with a harmless flag (retried) counts in full."""
    import h5py

    from detector.spillfile import read_spill

    _, m_s = serial
    rd = tmp_path / runs[0].name
    shutil.copytree(runs[0], rd)
    files = list_spills(rd)
    for path, flags in ((files[1], ["readout_incomplete"]), (files[2], ["retried"])):
        with h5py.File(path, "r+") as f:
            f.attrs["flags"] = json.dumps(flags)
    victim = read_spill(files[1], waveforms=False)
    whole = m_s.by_run[str(runs[0])]
    m = ds.select_runs([rd], tmp_path / "out", serial=True, progress=False)
    assert m.n_spills == whole["n_spills"] - 1
    assert m.eot == pytest.approx(whole["eot"] - victim.attrs["eot"]) and victim.attrs["eot"] > 0
    assert m.n_events == whole["n_events"] - victim.n_events
    assert m.cut_flow["all"] == whole["cut_flow"]["all"] - victim.n_events
    assert m.excluded_spills == [
        {
            "run_dir": str(rd),
            "spill": victim.attrs["spill"],
            "flags": ["readout_incomplete"],
            "n_events": victim.n_events,
            "eot": float(victim.attrs["eot"]),
        }
    ]
    assert [x["flags"] for x in m.flagged_spills] == [["readout_incomplete"], ["retried"]]
    js = json.loads((tmp_path / "out" / "selection.json").read_text())
    assert js["excluded_spills"] == m.excluded_spills
