"""End to end: ``na64-daq`` records a run from ``na64-emulator`` (both real subprocesses), then
``na64-offline select`` (the real command line) selects it. Its numbers are checked against the spill files
themselves: the EOT is the sum of the recorded spills' EOT scalers, the event count the sum of the files'
events, and the cut flow what the cuts, written out by hand here with numpy on the recorded events, give.

The reconstruction (``offline.events``: waveforms -> energies, times, shower shape) is shared with the
command; everything after it (the cuts, their order, the per-spill partial results, the merge, the EOT
bookkeeping, the JSON output) is recomputed independently."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pytest
from daq_helpers import (
    DAQ_TEST_CONFIG,
    REPO_ROOT,
    _no_daq_left_behind,  # noqa: F401  (autouse fixture)
    check_run,
    start_daq,
)
from emulator_fixture import deep_merge, start_emulator
from oracle import start_oracle
from short_cycle import SHORT_CYCLE

from detector.config import load_calibration, load_config
from detector.records import PARTICLE_CODES, TRIGGER_BITS, TRUTH_BEAMLINE
from detector.runrecord import read_run_record
from detector.spillfile import list_spills, read_spill, run_dir
from detector.tracking import Spectrometer, reconstruct_tracks
from offline.events import event_table_from_arrays

pytestmark = pytest.mark.slow

SPILLS = 3
#: a loose SRD tag, as in tests/offline_fixtures.py: these small runs then keep events past every cut; a spill
#: every 0.5 s
RUN_CONFIG = deep_merge(deep_merge(DAQ_TEST_CONFIG, SHORT_CYCLE), {"offline": {"srd_min_gev": 0.001}})


def cut_flow_by_hand(cfg: dict, calib, path) -> tuple[dict[str, int], set[tuple[int, int]], tuple[int, int]]:
    """The selection of one spill file, the cuts written out here (docs of offline/selection.py), applied in
    order: the cut flow, the (spill, event id) of the events in the box, and the tagged electrons (beam
    triggers with both SRD cuts) with those of them that pass the three tracker cuts."""
    d = read_spill(path)
    t = event_table_from_arrays(
        d.waveforms,
        calib,
        cfg,
        event_id=d.event_id,
        trigger_mask=d.trigger_mask,
        time_ns=d.time_ns,
        truth=d.truth,
        run=int(d.attrs["run"]),
        spill=int(d.attrs["spill"]),
        mm=d.mm,
    )
    assert d.mm is not None and d.mm.n_events == d.n_events  # the DAQ recorded the Micromegas block
    off, window = cfg.offline, cfg.trigger.window_ns
    chi2_ndf = t["ecal_chi2"] / np.maximum(t["ecal_ndf"], 1)
    srd = np.ones(d.n_events, bool)
    srd_time = np.ones(d.n_events, bool)
    for i in range(3):
        srd &= t[f"srd{i}"] > off.srd_min_gev
        srd_time &= np.abs(t[f"srd{i}_dt"]) < window
    with np.errstate(invalid="ignore"):  # NaN (no energy) fails the comparisons, as it must
        cuts = [
            ("trigger", (d.trigger_mask & TRIGGER_BITS["physics"]) != 0),  # the RECORDED mask, not a column
            ("srd", srd),  # the SRD energy tag and, on its own line, the SRD timing
            ("srd_time", srd_time),
            # the tracker cuts on the tracks reconstructed from the recorded Micromegas strips
            ("momentum", (t["trk_p_gev"] >= off.p_min_gev) & (t["trk_p_gev"] <= off.p_max_gev)),
            ("angle", t["trk_angle_mrad"] < off.angle_max_mrad),
            (
                "tracks",
                (t["trk_n_tracks"] >= 1)
                & (t["trk_n_tracks"] <= off.max_tracks)
                & (t["trk_n_incoming"] <= off.max_tracks),
            ),
            (
                "shower",
                (chi2_ndf < off.shape_chi2_ndf_max)
                & (np.abs(t["ecal_x_mm"]) < off.centre_max_mm)
                & (np.abs(t["ecal_y_mm"]) < off.centre_max_mm),
            ),
            ("ps", t["e_ps_sum"] > cfg.trigger.menu["physics"].ps_min_gev),
            ("v2", t["v2_mip"] < off.v2_max_mip),
            ("hcal", t["e_hcal"] < off.hcal_box_max_gev),
            ("pileup", t["n_cells_pileup"] == 0),
            ("box", t["e_ecal"] < off.ecal_box_max_gev),
        ]
    flow = {"all": d.n_events}
    passed = np.ones(d.n_events, bool)
    for name, mask in cuts:
        passed &= mask
        flow[name] = int(passed.sum())
    spill = int(d.attrs["spill"])
    c = dict(cuts)
    tagged = ((d.trigger_mask & TRIGGER_BITS["beam"]) != 0) & c["srd"] & c["srd_time"]
    good = tagged & c["momentum"] & c["angle"] & c["tracks"]
    return flow, {(spill, int(e)) for e in d.event_id[passed]}, (int(tagged.sum()), int(good.sum()))


def start_offline_cli(*args: str) -> subprocess.Popen[str]:
    """Start ``na64-offline ARGS`` (the real command line, a subprocess); :func:`finish_offline_cli` waits."""
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    )
    return subprocess.Popen(
        [sys.executable, "-m", "offline.cli", *args],
        cwd=str(REPO_ROOT),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish_offline_cli(proc: subprocess.Popen[str]) -> None:
    """Wait for a command of :func:`start_offline_cli` and require success."""
    try:
        _, err = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-4000:]


def offline_cli(*args: str) -> None:
    """Run ``na64-offline ARGS`` (the real command line, a subprocess) and require success."""
    finish_offline_cli(start_offline_cli(*args))


@contextlib.contextmanager
def offline_clis(*commands: tuple[str, ...]) -> Iterator[list[subprocess.Popen[str]]]:
    """The commands ``na64-offline ARGS`` running beside each other (and beside the test, which waits for each
    with :func:`finish_offline_cli`); none is left running at the exit."""
    procs: list[subprocess.Popen[str]] = []
    try:
        procs += [start_offline_cli(*args) for args in commands]
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def test_offline_select_on_a_run_recorded_by_the_daq(tmp_path):
    out, rep = tmp_path / "selection", tmp_path / "report"
    sig = tmp_path / "signal.json"
    sig.write_text(json.dumps({"mass_mev": 16.7, "events": 1000, "efficiency": 0.5, "efficiency_err": 0.02}))
    with contextlib.ExitStack() as stack:
        emu = stack.enter_context(start_emulator(tmp_path, RUN_CONFIG, ["--no-pty"]))
        oracle = stack.enter_context(start_oracle(emu.endpoints_path, emu.config_path, run_dir(tmp_path / "data", 21)))
        daq = start_daq(tmp_path, emu.config_path, emu.endpoints_path, tmp_path / "data", run=21, spills=SPILLS)
        rc = daq.wait(300)
        assert rc == 0, daq.log()[-6000:]
        # the two commands on the finished run (the real command lines), beside the oracle's check and the checks
        # by hand below
        select, report = stack.enter_context(
            offline_clis(
                ("select", str(daq.rdir), "--out", str(out), "--serial"),
                ("report", str(daq.rdir), "--out", str(rep), "--serial", "--signal-json", str(sig)),
            )
        )
        rec = check_run(daq.rdir, emu, oracle)  # the recorded events are the reference trigger's
        cfg = load_config(emu.config_path)
        oracle.stop()
        emu.stop()  # done with the crate: its beam no longer takes a core from the commands

        files = list_spills(daq.rdir)
        assert len(files) == SPILLS and rec["totals"]["complete_spills"] == SPILLS, [e["flags"] for e in rec["spills"]]
        heads = [read_spill(p, waveforms=False) for p in files]

        # the cut flow and the events in the box: the cuts applied by hand, spill by spill, summed here
        calib = load_calibration(cfg)
        flow: dict[str, int] = {}
        box: set[tuple[int, int]] = set()
        tagged = [0, 0]
        for p in files:
            f, b, tg = cut_flow_by_hand(cfg, calib, p)
            flow = {k: flow.get(k, 0) + v for k, v in f.items()}
            box |= b
            tagged = [tagged[0] + tg[0], tagged[1] + tg[1]]
        # the recorded Micromegas strips: the track momentum of every recorded beam electron
        p_e, radiated = [], []
        for p in files:
            d = read_spill(p, waveforms=False)
            tracks = reconstruct_tracks(d.mm, Spectrometer.from_config(cfg))
            e = d.truth["ptype"] == PARTICLE_CODES["e-"]
            p_e.append(tracks["p_gev"][e])
            # radiated in the beam line, or before it (the beam's low-energy tail)
            soft = d.truth["e_beam"][e] < 0.95 * cfg.beam.energy_gev
            radiated.append(((d.truth["flags"][e] & TRUTH_BEAMLINE) != 0) | soft)
        finish_offline_cli(select)
        finish_offline_cli(report)
    sel = json.loads((out / "selection.json").read_text())

    # bookkeeping: every spill in, none excluded or flagged, no read error
    assert sel["errors"] == [] and sel["excluded_spills"] == [] and sel["flagged_spills"] == []
    assert sel["n_spills"] == SPILLS
    # EOT: the sum of the recorded spills' EOT scalers (and what the DAQ's run record says)
    eot = sum(int(h.attrs["scalers"]["EOT"]) for h in heads)
    assert eot > 0 and all(int(h.attrs["eot"]) == int(h.attrs["scalers"]["EOT"]) for h in heads)
    assert sel["eot"] == eot == rec["totals"]["eot"]
    # events: every recorded event of every file
    n_events = sum(h.n_events for h in heads)
    assert sel["n_events"] == n_events == rec["totals"]["events_recorded"] > 0
    by_run = sel["by_run"][str(daq.rdir)]
    assert (by_run["n_spills"], by_run["eot"], by_run["n_events"]) == (SPILLS, eot, n_events)

    # the cut flow and the events in the box against the cuts applied by hand
    assert sel["cut_order"] == [k for k in flow if k != "all"]
    assert sel["cut_flow"] == flow
    assert flow["trigger"] > 0 and flow["srd"] > 0, flow  # a selection that selects something
    assert sel["box"]["n_obs"] == flow["box"] == len(box)
    assert {(e["spill"], e["event_id"]) for e in sel["box"]["events"]} == box
    assert all(e["run"] == 21 for e in sel["box"]["events"])
    # the side-band files hold one entry per side-band event
    for name in ("A", "C"):
        assert np.load(out / f"sideband_{name}.npy").shape == (sel["sidebands"][name]["n"],)
    assert read_run_record(daq.rdir)["totals"]["spills"] == SPILLS

    # the track momentum of the beam electrons peaks at the beam energy
    p_e, radiated = np.concatenate(p_e), np.concatenate(radiated)
    # (recorded events are triggered ones, mostly by the physics trigger, E_ECAL < 80 GeV: many electrons
    # radiated upstream (in the line or before it) and were bent out of MM3/MM4, where their hits and a pile-up
    # particle's do not line up: no track; the electrons that crossed it without radiating are measured)
    fin = p_e[np.isfinite(p_e)]
    assert (~radiated).sum() > 20 and np.isfinite(p_e[~radiated]).mean() > 0.75, (~radiated).sum()
    assert radiated.sum() > 50 and np.isfinite(p_e[radiated]).mean() < 0.5
    counts, edges = np.histogram(fin, bins=np.arange(50.0, 150.5, 2.0))
    peak = 0.5 * (edges[counts.argmax()] + edges[counts.argmax() + 1])
    assert abs(peak - cfg.beam.energy_gev) <= 3.0, peak
    near = np.abs(fin / cfg.beam.energy_gev - 1) < 0.05
    assert near.sum() > 50 and abs(np.median(fin[near]) / cfg.beam.energy_gev - 1) < 0.01, (near.sum(), np.median(fin))

    # the run report: the tagged-electron efficiency and the momentum spectrum of the run
    summary = json.loads((rep / "summary.json").read_text())
    assert summary["cut_flow"] == flow
    te = summary["tagged_electrons"][str(daq.rdir)]
    assert (te["run"], te["beam_electrons"], te["good_track"]) == (21, *tagged)
    assert tagged[0] > 0 and te["efficiency"] == pytest.approx(tagged[1] / tagged[0])
    assert te["efficiency_err"] == pytest.approx(np.sqrt(te["efficiency"] * (1 - te["efficiency"]) / tagged[0]))
    txt = (rep / "summary.txt").read_text()
    assert f"run 21: {tagged[1]} / {tagged[0]} = {te['efficiency']:.4f}" in txt
    png = rep / "momentum_run21.png"
    assert str(png) in summary["files"] and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
