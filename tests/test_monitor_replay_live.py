"""One producer of monitoring messages: the replay of a recorded run gives, topic by topic and array by
array, the messages the live DAQ published for it (na64-emulator + na64-daq as subprocesses, the DAQ's
real ZeroMQ stream, the spill files it wrote)."""

from __future__ import annotations

import numpy as np
import pytest
from daq_helpers import (
    DAQ_TEST_CONFIG,
    Subscriber,
    _no_daq_left_behind,  # noqa: F401  (autouse fixture)
    free_port,
    start_daq,
    wait_until,
)
from emulator_fixture import deep_merge, start_emulator
from short_cycle import SHORT_CYCLE

from detector import monitoring as mon
from detector.config import load_config
from detector.spillfile import list_spills, read_spill
from online.monitor.replay import ReplayBuilder

SPILL_TOPICS = ("scalers", "led", "calo", "ecal_hcal", "waveforms", "amplitudes", "tracker")
#: the calibration mode accepts ~85% of the particles: 1.2e4 per spill (two primitive chunks of DAQ_TEST_CONFIG's
#: 8192, some 25 event chunks; the replay is compared message by message, not statistically), a spill every
#: 0.5 s, and the crate keeps 16 spills (8 s) so that a DAQ slowed by a loaded machine still reads every spill
#: whole (with 6 spills of 3e4 particles, 4.8 s, it once lost spill 3 mid-readout)
CONFIG = deep_merge(
    deep_merge(DAQ_TEST_CONFIG, SHORT_CYCLE), {"beam": {"particles_per_spill": 1.2e4}, "emulator": {"spill_buffer": 16}}
)


@pytest.mark.slow
def test_replay_gives_the_messages_the_live_daq_published(tmp_path):
    address = f"tcp://127.0.0.1:{free_port()}"
    sub = Subscriber(address)
    sub.start()
    sub.ready.wait(5)
    try:
        with start_emulator(tmp_path, CONFIG, ["--no-pty"]) as emu:
            daq = start_daq(
                tmp_path,
                emu.config_path,
                emu.endpoints_path,
                tmp_path / "data",
                spills=3,
                monitor=address,
                extra=["--calibration-mode"],
            )
            assert daq.wait(240) == 0, daq.log()[-4000:]
            # the monitor worker publishes after the spill is recorded: wait for the last spill's messages
            # the DAQ's last message (status "stopped") comes after the monitor worker is done
            wait_until(
                lambda: any(str(m.meta.get("message", "")).startswith("stopped") for m in sub.of("status")),
                30,
                "the DAQ's final status",
            )
            cfg = load_config(emu.config_path)
    finally:
        sub.stop()
    assert not sub.malformed
    live = {(m.topic, m.spill): m for m in sub.messages if m.topic in SPILL_TOPICS}
    builder = ReplayBuilder(cfg)
    compared = with_events = needed = 0
    for path in list_spills(daq.rdir):
        sd = read_spill(path)
        spill = int(sd.attrs["spill"])
        replayed = {m.topic: m for m in builder.messages(sd) if m.topic in SPILL_TOPICS}
        published = {t for t, s in live if s == spill}
        # a spill with events: every topic, live and replayed (a spill whose readout broke off keeps the events
        # read, never its LED events); a lost (empty) spill: no event topics at all
        if sd.n_events:
            with_events += 1
            expected = set(SPILL_TOPICS) - ({"led"} if "readout_incomplete" in sd.flags else set())
            assert set(replayed) == published == expected, (spill, sd.flags, set(replayed), published)
            needed += len(expected)
        else:
            assert set(replayed) == {"scalers"} and published <= {"scalers"}
        for topic in published:
            lm, rm = live[(topic, spill)], replayed[topic]
            assert (rm.run, rm.spill) == (lm.run, lm.spill)
            assert rm.meta == lm.meta, topic
            assert list(rm.arrays) == list(lm.arrays), topic
            for name, a in lm.arrays.items():
                b = rm.arrays[name]
                assert (b.dtype, b.shape) == (a.dtype, a.shape), (topic, name)
                assert np.array_equal(b, a), (topic, name)
            mon.check(rm, strict=True)
            compared += 1
    assert with_events >= 1 and compared >= needed
    # the samples are spread over the spill: first and last recorded events included
    spill, wf = max((s, m) for (t, s), m in live.items() if t == "waveforms")
    sd = read_spill(next(p for p in list_spills(daq.rdir) if int(read_spill(p).attrs["spill"]) == spill))
    ids = np.asarray(sd.event_id)
    assert wf.arrays["event_ids"][0] == ids[0] and wf.arrays["event_ids"][-1] == ids[-1]
