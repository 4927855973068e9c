"""One producer of monitoring messages: the replay of a recorded run gives, topic by topic and array by
array, the messages the live DAQ published for it (na64-emulator + na64-daq as subprocesses, the DAQ's
real ZeroMQ stream, the spill files it wrote)."""
from __future__ import annotations

import numpy as np
import pytest

from daq_helpers import _no_daq_left_behind  # noqa: F401  (autouse fixture)
from daq_helpers import DAQ_TEST_CONFIG, Subscriber, free_port, start_daq, wait_until
from detector import monitoring as mon
from detector.config import load_config
from detector.spillfile import list_spills, read_spill
from emulator_fixture import start_emulator
from online.monitor.replay import ReplayBuilder

SPILL_TOPICS = ("scalers", "calo", "ecal_hcal", "waveforms", "amplitudes")


@pytest.mark.slow
def test_replay_gives_the_messages_the_live_daq_published(tmp_path):
    address = f"tcp://127.0.0.1:{free_port()}"
    sub = Subscriber(address)
    sub.start()
    sub.ready.wait(5)
    try:
        with start_emulator(tmp_path, DAQ_TEST_CONFIG, ["--no-pty"]) as emu:
            daq = start_daq(tmp_path, emu.config_path, emu.endpoints_path, tmp_path / "data", spills=3,
                            monitor=address, extra=["--calibration-mode"])
            assert daq.wait(240) == 0, daq.log()[-4000:]
            # the monitor worker publishes after the spill is recorded: wait for the last spill's messages
            wait_until(lambda: any(m.spill == 3 for m in sub.of("amplitudes")), 30, "amplitudes of spill 3")
            cfg = load_config(emu.config_path)
    finally:
        sub.stop()
    assert not sub.malformed
    live = {(m.topic, m.spill): m for m in sub.messages if m.topic in SPILL_TOPICS}
    builder = ReplayBuilder(cfg)
    compared = 0
    for path in list_spills(daq.rdir):
        sd = read_spill(path)
        replayed = {m.topic: m for m in builder.messages(sd) if m.topic in SPILL_TOPICS}
        spill = int(sd.attrs["spill"])
        assert sd.n_events > 0
        assert set(replayed) == set(SPILL_TOPICS)
        for topic in SPILL_TOPICS:
            lm, rm = live.get((topic, spill)), replayed[topic]
            assert lm is not None, f"the DAQ published no {topic} for spill {spill}"
            assert (rm.run, rm.spill) == (lm.run, lm.spill)
            assert rm.meta == lm.meta, topic
            assert list(rm.arrays) == list(lm.arrays), topic
            for name, a in lm.arrays.items():
                b = rm.arrays[name]
                assert (b.dtype, b.shape) == (a.dtype, a.shape), (topic, name)
                assert np.array_equal(b, a), (topic, name)
            mon.check(rm, strict=True)
            compared += 1
    assert compared == 3 * len(SPILL_TOPICS)
    # the samples are spread over the spill: first and last recorded events included
    wf = live[("waveforms", 3)]
    ids = np.asarray(read_spill(list_spills(daq.rdir)[-1]).event_id)
    assert wf.arrays["event_ids"][0] == ids[0] and wf.arrays["event_ids"][-1] == ids[-1]
