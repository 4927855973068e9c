"""The monitor's pure model (no Qt): accumulation, rate history, alarms (rate drop, no beam, HV trip,
DAQ stall/ERROR, missed and malformed messages), the latest-wins inbox and the sensitivity estimate."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from detector import channels as ch
from detector.framing import decode, encode
from detector.monitoring import TopicSequence
from online.monitor import model as M
from online.monitor.stream import Inbox
from online.monitor.synthetic import SyntheticDAQ, write_example_yields

T0 = 1_700_000_000.0


def make_model(**kw) -> M.MonitorModel:
    s = M.MonitorSettings(**kw)
    return M.MonitorModel(s, now=T0)


def feed(model: M.MonitorModel, msgs, now: float = T0) -> None:
    inbox = Inbox()
    for m in msgs:
        inbox.put(m, now)
    model.apply(*inbox.drain(), now=now)


def test_accumulation_of_calo_ecal_hcal_and_history():
    daq = SyntheticDAQ(seed=3)
    model = make_model()
    ee = np.zeros((2, 6, 6))
    ho = np.zeros((4, 3, 3))
    eh = None
    s1, eot = [], []
    for i in range(4):
        msgs = daq.spill_messages(now=T0 + 20 * i)
        for m in msgs:
            if m.topic == "calo":
                ee += m.arrays["ecal_energy"]
                ho += m.arrays["hcal_occupancy"]
            elif m.topic == "ecal_hcal":
                eh = m.arrays["counts"].copy() if eh is None else eh + m.arrays["counts"]
            elif m.topic == "scalers":
                s1.append(m.meta["S1"])
                eot.append(m.meta["eot"])
        feed(model, msgs, T0 + 20 * i)
    np.testing.assert_allclose(model.ecal_energy, ee)
    np.testing.assert_allclose(model.hcal_occupancy, ho)
    np.testing.assert_allclose(model.eh_counts, eh)
    assert model.calo_spills == 4 and model.eh_spills == 4
    np.testing.assert_array_equal(model.history.column("S1"), s1)
    np.testing.assert_array_equal(model.history.column("spill"), [1, 2, 3, 4])
    assert model.eot_total == pytest.approx(sum(eot))
    np.testing.assert_allclose(model.history.column("eot_total"), np.cumsum(eot))
    assert set(model.trigger_names) == {"physics", "beam", "random", "dimuon"}
    assert model.history.last("trig:beam:raw") == pytest.approx(eot[-1])
    assert model.run == 1 and model.spill == 4 and model.state == "RECORDED"
    assert model.waveforms.shape == (8, ch.N_CHANNELS, ch.N_SAMPLES)
    assert model.hv_ids.size == 119


def test_new_run_resets_accumulators():
    daq = SyntheticDAQ(seed=1)
    model = make_model()
    feed(model, daq.spill_messages(now=T0))
    assert model.ecal_energy.sum() > 0
    daq2 = SyntheticDAQ(run=2, seed=2)
    msgs = daq2.spill_messages(now=T0 + 30)
    calo = next(m for m in msgs if m.topic == "calo")
    feed(model, msgs, T0 + 30)
    assert model.run == 2
    np.testing.assert_allclose(model.ecal_energy, calo.arrays["ecal_energy"])
    assert len(model.history) == 1
    assert any("new run 2" in e.text for e in model.log)


def test_history_capacity_is_bounded():
    h = M.History(10)
    for i in range(57):
        h.append({"spill": i, "S1": 2.0 * i})
    assert len(h.column("S1")) == 10
    np.testing.assert_array_equal(h.column("spill"), np.arange(47, 57))
    assert h._buf.shape == (20, 2)
    h.append({"spill": 57, "S1": 1.0, "trig:new:raw": 5.0})  # a column added late reads NaN before
    col = h.column("trig:new:raw")
    assert np.isnan(col[:-1]).all() and col[-1] == 5.0


def test_rate_drop_and_no_beam_alarms():
    daq = SyntheticDAQ(seed=5)
    model = make_model(rate_drop_fraction=0.5)
    t = T0
    for _ in range(6):
        t += 20
        feed(model, daq.spill_messages(now=t), t)
    model.evaluate(t)
    assert model.alarms["beam"].level == M.OK
    daq.beam_factor = 0.3  # S1 at 30% of the running mean
    t += 20
    feed(model, daq.spill_messages(now=t), t)
    model.evaluate(t)
    assert model.alarms["beam"].level == M.ALARM
    assert "RATE DROP" in model.alarms["beam"].text
    assert any("BEAM ALARM" in e.text for e in model.log)
    daq.beam_factor = 0.0
    t += 20
    feed(model, daq.spill_messages(now=t), t)
    model.evaluate(t)
    assert model.alarms["beam"].level == M.ALARM and "NO BEAM" in model.alarms["beam"].text
    daq.beam_factor = 1.0
    t += 20
    feed(model, daq.spill_messages(now=t), t)
    model.evaluate(t)
    assert model.alarms["beam"].level == M.OK
    assert any("BEAM cleared" in e.text for e in model.log)


@pytest.mark.parametrize("last_s1, level", [(439_500.0, M.OK), (438_000.0, M.ALARM)])
def test_rate_drop_threshold_against_running_mean(last_s1, level):
    # running mean of the spills before the last: (3 x 1e6 + 0.51e6) / 4 = 877 500; x 0.5 = 438 750
    model = make_model(rate_drop_fraction=0.5)
    base = {"S0": 1e6, "V0": 1e5, "eot": 1e6, "triggers": {}}
    msgs = [
        decode(encode("scalers", i, meta=dict(base, S1=s1), run=1, spill=i + 1))
        for i, s1 in enumerate([1e6, 1e6, 1e6, 0.51e6, last_s1])
    ]
    feed(model, msgs)
    assert model.s1_running_mean() == pytest.approx(877_500.0)
    model.evaluate(T0)
    assert model.alarms["beam"].level == level


def test_hv_trip_and_deviation():
    daq = SyntheticDAQ(seed=2)
    model = make_model(hv_deviation_v=5.0)
    feed(model, [daq.hv()])
    model.evaluate(T0)
    assert model.alarms["hv"].level == M.OK
    dev_id = ch.by_name("ECAL1-3-3").id
    daq.deviate = {dev_id: -12.0}
    feed(model, [daq.hv()])
    model.evaluate(T0)
    assert model.alarms["hv"].level == M.WARN and "ECAL1-3-3" in model.alarms["hv"].text
    trip_id = ch.by_name("HCAL-1-1-0").id
    daq.trip = {trip_id}
    feed(model, [daq.hv()])
    model.evaluate(T0)
    a = model.alarms["hv"]
    assert a.level == M.ALARM and "TRIPPED" in a.text and "HCAL-1-1-0" in a.text
    i = int(np.flatnonzero(model.hv_ids == trip_id)[0])
    assert model.hv_condition[i] == M.HV_TRIPPED


def test_hv_conditions_from_status_bits():
    vset = np.array([900, 900, 900, 900, 900, 900], np.float32)
    vmon = np.array([900, 880, 880, 0, 900, 900], np.float32)
    status = np.array([1, 1, 1 | 2, 0, 1 | (1 << 7), 1 | (1 << 3)])
    cond = M.hv_conditions(vset, vmon, status, 5.0)
    assert list(cond) == [M.HV_OK, M.HV_DEVIATION, M.HV_RAMPING, M.HV_OFF, M.HV_TRIPPED, M.HV_FAULTED]


def test_daq_stall_and_error():
    daq = SyntheticDAQ()
    model = make_model(stall_s=60.0)
    model.evaluate(T0 + 1)
    assert model.alarms["daq"].level == M.NONE  # waiting for the first status
    model.evaluate(T0 + 61)
    assert model.alarms["daq"].level == M.ALARM  # never heard from the DAQ
    feed(model, [daq.status("IDLE")], T0 + 100)
    model.evaluate(T0 + 100)
    assert model.alarms["daq"].level == M.OK
    model.evaluate(T0 + 159)
    assert model.alarms["daq"].level == M.OK
    model.evaluate(T0 + 161)
    assert model.alarms["daq"].level == M.ALARM and "STALLED" in model.alarms["daq"].text
    daq.error = "crate timeout"
    feed(model, [daq.status()], T0 + 170)
    model.evaluate(T0 + 170)
    assert model.alarms["daq"].level == M.ALARM and "crate timeout" in model.alarms["daq"].text
    assert model.state == "ERROR"


def test_missed_count_from_sequence_gaps():
    daq = SyntheticDAQ()
    inbox = Inbox()
    model = make_model(stall_s=60.0)
    for _ in range(3):
        inbox.put(daq.status("IDLE"), T0)  # seq 0, 1, 2
    daq.skip_seq = 4
    inbox.put(daq.status("IDLE"), T0)  # seq 7: 3..6 missed
    inbox.put(daq.status("IDLE"), T0)  # seq 8
    model.apply(*inbox.drain(), now=T0)
    model.evaluate(T0)
    assert model.link.missed == 4 and model.missed_total == 4
    assert model.link.received == 5
    assert model.alarms["missed"].level == M.WARN and "4 missed" in model.alarms["missed"].text
    model.evaluate(T0 + 61)
    assert model.alarms["missed"].level == M.OK and model.missed_total == 4  # still shown
    daq.seq = TopicSequence()  # publisher restart: not a gap
    inbox.put(daq.status("IDLE"), T0 + 62)
    model.apply(*inbox.drain(), now=T0 + 62)
    assert model.link.restarts == 1 and model.link.missed == 4


def test_sequence_numbers_count_per_topic():
    """Each topic is numbered on its own: interleaved topics are no gap, a gap in one topic is counted
    for that topic only."""
    daq = SyntheticDAQ()
    inbox = Inbox()
    msgs = [daq.status("IDLE"), daq.hv(), daq.status("IDLE"), daq.hv(), daq.log("a")]
    assert [(m.topic, m.seq) for m in msgs] == [("status", 0), ("hv", 0), ("status", 1), ("hv", 1), ("log", 0)]
    for m in msgs:
        inbox.put(m, T0)
    daq.skip_seq = 3
    inbox.put(daq.hv(), T0)  # hv seq 5: hv 2..4 missed
    inbox.put(daq.status("IDLE"), T0)  # status seq 2: nothing missed
    stats = inbox.stats()
    assert stats.received == 7 and stats.missed == 3
    assert stats.missed_by_topic == {"status": 0, "hv": 3, "log": 0}


def test_inbox_latest_wins_and_counted_drops():
    daq = SyntheticDAQ()
    inbox = Inbox(max_pending=3)
    hv = [daq.hv() for _ in range(5)]
    msgs = daq.spill_messages()
    calos = [m for m in msgs if m.topic == "calo"]
    extra = [daq.calo(T0) for _ in range(4)]  # 5 calo messages, FIFO of 3
    for m in hv + calos + extra:
        inbox.put(m)
    got, stats = inbox.drain()
    assert [m.topic for m in got].count("hv") == 1 and got[0].seq == hv[-1].seq
    assert [m.seq for m in got if m.topic == "calo"] == [m.seq for m in extra[-3:]]
    assert stats.superseded["hv"] == 4 and stats.dropped["calo"] == 2
    model = make_model()
    model.apply(got, stats, T0)
    model.evaluate(T0)
    assert model.missed_total == stats.missed + 2 and model.alarms["missed"].level == M.WARN
    assert inbox.drain()[0] == []


def test_malformed_and_bad_content_are_counted_not_raised():
    inbox = Inbox()
    inbox.put_malformed("header is not UTF-8 JSON")
    bad = decode(encode("calo", 0, {"ecal_energy": np.zeros((6, 6))}, run=1, spill=1))
    unknown = decode(encode("weather", 1, meta={"t": 3}))
    bad_status = decode(encode("status", 2, meta={"state": "DANCING"}))
    for m in (bad, unknown, bad_status):
        inbox.put(m)
    model = make_model()
    model.apply(*inbox.drain(), now=T0)
    model.evaluate(T0)
    assert model.link.malformed == 1 and model.content_errors == 2 and model.link.unknown == 1
    assert model.malformed_total == 3
    assert model.alarms["data"].level == M.WARN
    assert model.state == "UNKNOWN" and model.calo_spills == 0


def test_log_topic_lines_reach_the_log():
    daq = SyntheticDAQ()
    model = make_model()
    feed(model, [daq.log("HV board 3 reconnected", "WARNING")])
    e = model.log[-1]
    assert e.text == "HV board 3 reconnected" and e.source == "daq" and e.level == 30


def test_sensitivity_hand_computation(tmp_path):
    path = write_example_yields(str(tmp_path / "y.json"))
    sens = M.Sensitivity(path, efficiency=0.5)
    assert sens.ok and sens.model_name == "IWW"
    # at a table mass: eps = sqrt(2.3 / (EOT * eff * yield))
    assert sens.reach(1e10, [16.7])[0][1] == pytest.approx(math.sqrt(2.3 / (1e10 * 0.5 * 6.30e-3)), rel=1e-9)
    # between table masses: log-log interpolation of the yield (2 MeV is a node, 3 MeV is not)
    y3 = math.exp(np.interp(math.log(3.0), np.log([2.0, 5.0]), np.log([9.89e-2, 3.50e-2])))
    assert sens.yield_at(3.0) == pytest.approx(y3, rel=1e-12)
    assert math.isnan(sens.reach(0.0, [16.7])[0][1])
    assert math.isnan(sens.yield_at(5000.0))
    # the model updates the reach with the accumulated EOT
    model = M.MonitorModel(M.MonitorSettings(yields_file=path), now=T0)
    daq = SyntheticDAQ()
    feed(model, daq.spill_messages(now=T0))
    eps = dict(model.reach)[100.0]
    assert eps == pytest.approx(math.sqrt(2.3 / (daq.eot_total * 0.5 * 2.57e-4)), rel=1e-9)


def test_sensitivity_missing_or_bad_file(tmp_path):
    assert "no yields file" in M.Sensitivity("").error
    assert "not found" in M.Sensitivity(str(tmp_path / "nope.json")).error
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"yields": [{"mass_mev": 1.0}]}))
    assert "unusable" in M.Sensitivity(str(bad)).error
    # each wrong shape says what is expected (they gave "'yields'" or "list indices must be integers")
    for content, says in (
        ({"garbage": 1}, "expected an object with a 'yields' list"),
        ([{"mass_mev": 16.7, "yield_per_eot_eps1": 1e-9}], "expected an object with a 'yields' list"),
        ({"yields": [{"mass_mev": 1.0}]}, "yields row 0 is not an object with 'mass_mev' and 'yield_per_eot_eps1'"),
        ({"yields": [3]}, "yields row 0 is not an object"),
    ):
        bad.write_text(json.dumps(content))
        sens = M.Sensitivity(str(bad))
        assert says in sens.error and not sens.ok and sens.masses.size == 0


def test_settings_from_config():
    from detector.config import load_config

    cfg = load_config(None)
    s = M.MonitorSettings.from_config(cfg)
    assert s.repaint_hz == cfg.monitor.repaint_hz <= 10
    assert s.stall_s == cfg.monitor.stall_s and s.efficiency == 0.5
    assert s.ecal_box_max_gev == 50.0 and s.hcal_box_max_gev == 1.0
    assert s.supercycle_s == cfg.spill.supercycle_s and s.yields_file == ""


def test_settings_from_config_file_resolves_the_yields_file_next_to_it(tmp_path):
    from detector.config import load_config

    p = tmp_path / "m.toml"
    p.write_text('[monitor]\nyields_file = "y.json"\nrepaint_hz = 8.0\n[spill]\nsupercycle_s = 20.0\n')
    s = M.MonitorSettings.from_config(load_config(p))
    assert s.yields_file == str(tmp_path.resolve() / "y.json")
    assert s.repaint_hz == 8.0 and s.supercycle_s == 20.0
    absolute = load_config(None).with_overrides({"monitor": {"yields_file": "/abs/y.json"}})
    assert M.MonitorSettings.from_config(absolute).yields_file == "/abs/y.json"
