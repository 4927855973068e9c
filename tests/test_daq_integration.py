"""Acceptance: na64-emulator and na64-daq as real subprocesses record spills that agree exactly with an
independent oracle (tests/oracle.py: the reference trigger on the crate's primitives, the crate's
waveforms), and a SUB socket receives every monitoring topic with increasing sequence numbers; the
published waveforms are the crate's waveforms of their records."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import numpy as np
import pytest
from daq_helpers import (
    DAQ_TEST_CONFIG,
    Subscriber,
    _no_daq_left_behind,  # noqa: F401  (autouse fixture)
    check_run,
    first_spill_after_subscription,
    free_port,
    spills_recorded,
    start_daq,
    wait_until,
)
from emulator_fixture import EmulatorHandle, deep_merge, start_emulator
from oracle import start_oracle
from short_cycle import SHORT_CYCLE

from detector.records import TRIGGER_BITS
from detector.spillfile import list_spills, read_spill, run_dir

pytestmark = pytest.mark.slow

#: the DAQ test settings on the short cycle (tests/short_cycle.py) with a ring of 12 spills (6 s)
INTEGRATION_CONFIG = deep_merge(
    DAQ_TEST_CONFIG,
    {**SHORT_CYCLE, "emulator": {"spill_buffer": 12}},
)


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorHandle]:
    """One emulator for the module's runs (no test injects a fault; each run has its own directory)."""
    with start_emulator(tmp_path_factory.mktemp("daq_integration"), INTEGRATION_CONFIG, ["--no-pty"]) as emu:
        yield emu


@pytest.fixture
def monitor() -> Iterator[tuple[str, Subscriber]]:
    """A monitoring endpoint for the DAQ and a subscriber to it, connected (stopped at the end)."""
    mon = f"tcp://127.0.0.1:{free_port()}"
    sub = Subscriber(mon)
    sub.start()
    assert sub.ready.wait(30)
    yield mon, sub
    sub.stop()


def test_three_spills_recorded_and_published(tmp_path, emulator, monitor):
    emu = emulator
    emu.check_alive()
    mon, sub = monitor
    with start_oracle(emu.endpoints_path, emu.config_path, run_dir(tmp_path / "data", 12)) as oracle:
        with first_spill_after_subscription(emu, sub):
            daq = start_daq(
                tmp_path, emu.config_path, emu.endpoints_path, tmp_path / "data", run=12, spills=3, monitor=mon
            )
        rc = daq.wait(120)
        assert rc == 0, daq.log()[-6000:]
        # published in the spill loop, before the DAQ exits: the scalers of its last spill
        wait_until(lambda: [m.spill for m in sub.of("scalers")][-1:] == [3], 30, "the scalers of spill 3")
        sub.stop()
        rec = check_run(daq.rdir, emu, oracle)
        published = oracle.check_published(daq.rdir, sub.of("waveforms"))
    assert not published, published

    files = list_spills(daq.rdir)
    assert [p.name for p in files] == ["spill-000001.h5", "spill-000002.h5", "spill-000003.h5"]
    assert rec["run"] == 12 and rec["totals"]["spills"] == 3
    assert rec["totals"]["complete_spills"] == 3, [e["flags"] for e in rec["spills"]]
    assert rec["totals"]["events_recorded"] == rec["totals"]["events_accepted"] > 0
    crate = [e["crate_spill"] for e in rec["spills"]]
    assert crate == list(range(crate[0], crate[0] + 3)), "consecutive crate spills, none skipped"
    for e in rec["spills"]:
        assert e["n_particles"] == e["n_seen"] > 1e4
        assert e["eot"] > 0 and e["scalers"]["S0"] > 0 and e["truth"] is True
        assert e["triggers"]["physics"]["accepted"] + e["triggers"]["beam"]["accepted"] > 0
        assert e["hv"] is None or len(e["hv"]["vmon"]) == len(e["hv"]["channel_ids"]) > 100
    assert "trigger_menu" in rec and rec["thresholds"]["physics"]["ecal_max_gev"] == 80.0
    assert "[daq]" in rec["config_toml"] and rec["crate"]["trigger_channels"][0] == "S1"
    assert rec["totals"]["eot"] == sum(e["eot"] for e in rec["spills"])
    d = read_spill(files[0])
    assert d.waveforms.shape == (d.n_events, 121, 32) and d.truth is not None
    # the Micromegas strips of every recorded event (MM:DATA?): each beam event leaves clusters in the chambers
    assert all(e["mm"] is True for e in rec["spills"])
    assert d.mm is not None and d.mm.n_events == d.n_events > 0
    per_event = np.diff(d.mm.event_ptr)
    assert np.median(per_event) >= 8 and d.mm.plane.max() == 7 and d.mm.charge.min() >= 0.0
    # strips above the 20-count threshold, their charge decoded from the samples within the rounding (15%,
    # tests/test_mmblock.py) when in time; a strip of a later particle may be sampled before its pulse
    in_time = np.abs(d.mm.time_ns) <= 40.0
    assert in_time.mean() > 0.5 and d.mm.charge[in_time].min() >= 17.0
    assert set(np.unique(d.trigger_mask)) <= set(range(1, 16))
    assert d.attrs["trigger_menu"]["triggers"]["beam"]["prescale"] == 1000

    # the monitoring stream: every topic (amplitudes only in calibration mode), an increasing sequence per topic
    assert not sub.malformed
    assert {"status", "scalers", "calo", "ecal_hcal", "waveforms", "tracker", "hv", "log"} <= sub.topics()
    assert sub.of("log")[-1].meta["text"].startswith(f"end of run (stopped): run 12 in {daq.rdir}: 3 spills (0 flagged")
    for topic in sub.topics():
        seqs = [m.seq for m in sub.of(topic)]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    states = [m.meta["state"] for m in sub.of("status")]
    assert {"END_OF_SPILL", "READOUT", "RECORDED"} <= set(states)
    sc = sub.of("scalers")
    assert [m.spill for m in sc] == [1, 2, 3]
    by_spill = {e["spill"]: e for e in rec["spills"]}
    for m in sc:
        e = by_spill[m.spill]
        assert m.meta["accepted"] == m.meta["recorded"] == e["n_accepted"]
        assert m.meta["eot"] == e["eot"] and m.meta["particles"] == e["n_particles"] and m.meta["flags"] == []
        assert set(m.meta["triggers"]) == set(TRIGGER_BITS)
    calo = sub.of("calo")[0]
    assert calo.arrays["ecal_energy"].shape == (2, 6, 6) and calo.arrays["hcal_occupancy"].shape == (4, 3, 3)
    assert calo.arrays["ecal_energy"].sum() > 0
    eh = sub.of("ecal_hcal")[0]
    assert eh.arrays["counts"].shape == (eh.meta["ecal_edges"][2], eh.meta["hcal_edges"][2])
    wf = sub.of("waveforms")[0]
    n_wf = wf.arrays["waveforms"].shape[0]
    assert wf.arrays["waveforms"].shape[1:] == (121, 32) and wf.arrays["event_ids"].shape == (n_wf,)
    hv = sub.of("hv")[0]
    assert hv.arrays["vmon"].dtype == np.float32 and hv.arrays["channel_ids"].shape == hv.arrays["vset"].shape


def test_calibration_mode_publishes_amplitudes_and_sigterm_stops_cleanly(tmp_path, emulator, monitor):
    emu = emulator
    emu.check_alive()
    mon, sub = monitor
    with start_oracle(
        emu.endpoints_path, emu.config_path, run_dir(tmp_path / "data", 3), calibration_mode=True
    ) as oracle:
        daq = start_daq(
            tmp_path,
            emu.config_path,
            emu.endpoints_path,
            tmp_path / "data",
            run=3,
            spills=None,
            monitor=mon,
            extra=["--calibration-mode", "--no-hv"],
        )
        # the amplitudes go out on the monitor's lossy path (a newer spill replaces a waiting one): wait for
        # the first one while the DAQ keeps taking spills, not for a spill count that a loaded machine may
        # reach before the monitor worker has published anything
        wait_until(
            lambda: (spills_recorded(daq) >= 2 and bool(sub.of("amplitudes"))) or daq.proc.poll() is not None,
            180,
            "two spills and an amplitudes message",
        )
        daq.proc.send_signal(signal.SIGTERM)
        rc = daq.wait(60)
        assert rc == 0, daq.log()[-6000:]
        wait_until(
            lambda: sub.of("status") and sub.of("status")[-1].meta["message"].startswith("stopped"),
            30,
            "the final status message",
        )
        sub.stop()
        rec = check_run(daq.rdir, emu, oracle)
        published = oracle.check_published(daq.rdir, sub.of("waveforms"))
    assert not published, published
    assert rec["trigger_menu"]["triggers"]["beam"]["prescale"] == 1
    assert rec["sessions"][-1]["stop_reason"] == "SIGTERM"
    amps = sub.of("amplitudes")
    assert amps, sub.topics()
    a = amps[0]
    assert a.arrays["amplitudes"].shape[1] == 108 and a.arrays["amplitudes"].dtype == np.float32
    assert a.arrays["amplitudes"].shape[0] > 0 and {"x_mm", "y_mm"} <= set(a.meta["table"])
    e = {x["spill"]: x for x in rec["spills"]}[a.spill]
    # one row per recorded beam-trigger event of the spill (other triggers' events are recorded too)
    n_amp, accepted = a.arrays["amplitudes"].shape[0], e["triggers"]["beam"]["accepted"]
    if "retried" not in e["flags"]:
        if "readout_incomplete" in e["flags"]:  # the crate lost mid-readout: the spill keeps what it read
            assert 0 < n_amp <= min(accepted, e["n_recorded"])
        else:
            assert n_amp == accepted
    assert sub.of("status")[-1].meta["message"].startswith("stopped")
