"""The crate counts spills itself: a second feed whose generator numbers from 1 again must not make the
crate reuse spill ids the DAQ has already seen (found by the demo: the DAQ ignored the whole run)."""

from emulator_fixture import start_emulator

from detector.config import load_config
from sim_frontend.feed import FeedSender


def test_a_restarted_feed_does_not_reuse_crate_spill_ids(tmp_path):
    with start_emulator(tmp_path, {"beam": {"particles_per_spill": 2000}}, ["--external-feed"]) as emu:
        cfg = load_config(emu.config_path)
        for feed_round in (1, 2):
            sender = FeedSender(cfg, emu.feed)
            try:
                sender.run(n_spills=2, n_particles=2000, realtime=False)
            finally:
                sender.close()
            emu.wait_for_spills(2 * feed_round, timeout_s=90)
        st = emu.wait_for(lambda s: s["last_spill"] == 4, 60, "crate spill 4")
        assert st["last_spill"] == 4
        assert emu.control({"cmd": "truth", "spill": 3})["ok"]
