"""The monitoring contract (detector/monitoring.py): docs generated from it, checks of message content,
the producer's messages exactly as declared, the status words declared once."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from detector import channels as ch
from detector import monitoring as mon
from detector.framing import decode, encode
from detector.hwstatus import HV_FAULT, CrateState, HVStatus, hv_flag_names
from detector.records import TRIGGER_BITS
from online.monitor_messages import event_messages, sample_indices, scalers_message

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_protocols_doc_table_is_generated_from_the_contract():
    text = (ROOT / "docs" / "protocols.md").read_text(encoding="utf-8")
    assert mon.markdown_table() in text, "run: python -m detector.monitoring --update-docs docs/protocols.md"
    for name in mon.TOPICS:
        assert f"| `{name}` |" in text


def test_every_topic_is_accumulating_or_latest_wins():
    assert set(mon.TOPICS) == mon.ACCUMULATING | mon.LATEST_WINS
    assert not mon.ACCUMULATING & mon.LATEST_WINS
    assert {"scalers", "calo", "ecal_hcal", "tracker", "log", "led"} == mon.ACCUMULATING


def _msg(topic, arrays=None, meta=None):
    return decode(encode(topic, 0, arrays, meta))


def test_check_names_what_is_wrong():
    good = {
        "ecal_energy": np.zeros((2, 6, 6)),
        "ecal_occupancy": np.zeros((2, 6, 6), np.int64),
        "hcal_energy": np.zeros((4, 3, 3)),
        "hcal_occupancy": np.zeros((4, 3, 3), np.int64),
    }
    assert mon.check(_msg("calo", good, {"events": 1}), strict=True).name == "calo"
    with pytest.raises(mon.ContentError, match="meta key 'events' missing"):
        mon.check(_msg("calo", good))
    with pytest.raises(mon.ContentError, match="array 'hcal_energy' has shape"):
        mon.check(_msg("calo", {**good, "hcal_energy": np.zeros((4, 3, 4))}, {"events": 1}))
    with pytest.raises(mon.ContentError, match="dtype"):
        mon.check(_msg("calo", {**good, "ecal_occupancy": np.zeros((2, 6, 6))}, {"events": 1}), strict=True)
    wf = {"waveforms": np.zeros((3, ch.N_CHANNELS, ch.N_SAMPLES), np.int16), "event_ids": np.zeros(2, np.int64)}
    with pytest.raises(mon.ContentError, match="dimension k = 2"):
        mon.check(_msg("waveforms", wf))
    with pytest.raises(mon.ContentError, match="unknown topic"):
        mon.check(_msg("nonsense"))


@pytest.mark.parametrize(
    "n,k,expected", [(12, 8, [0, 1, 3, 4, 6, 7, 9, 11]), (3, 8, [0, 1, 2]), (100, 1, [0]), (5, 0, []), (0, 4, [])]
)
def test_sample_indices_are_evenly_spread(n, k, expected):
    assert sample_indices(n, k).tolist() == expected


def test_monitor_takes_each_cell_in_its_own_time_as_offline():
    """The monitoring (and the amplitudes hv-tune equalises on) reconstructs each channel in the event gate
    offline uses (detector.gate.in_time_gate): a larger pulse of a later beam particle in the same record,
    beyond the pulse length, leaves the event's HCAL amplitude and calorimeter energy as they were; over the
    whole record it would replace them."""
    from detector.config import load_calibration, load_config
    from detector.gate import in_time_gate
    from detector.pulse import pulse_samples, synthesize

    cfg = load_config(None)
    calib = load_calibration(cfg)
    cell = ch.hcal_id(1, 1, 0)
    n = 6
    amp = np.zeros((n, ch.N_CHANNELS))
    amp[:, cell] = 400.0
    wf = synthesize(amp, np.broadcast_to(calib.t0_ns, amp.shape), 150.0, 156.0, noise_rms=0.0, seed=2)
    late = np.rint(pulse_samples(1500.0, float(calib.t0_ns[cell]) + 200.0))
    wf[:, cell] = np.clip(wf[:, cell] + late, 0, ch.ADC_MAX).astype(np.int16)
    mask = np.full(n, TRIGGER_BITS["beam"], np.uint8)
    g = np.asarray(calib.gev_per_count)

    def published(gate):
        msgs = event_messages(wf, np.arange(n, dtype=np.uint32), mask, g, n_waveforms=0, amplitudes=True, gate=gate)
        by = {m.topic: m for m in msgs}
        where = tuple(np.argwhere(ch.hcal_map(np.arange(ch.N_CHANNELS)) == cell)[0])
        return by["amplitudes"].arrays["amplitudes"][:, cell], by["calo"].arrays["hcal_energy"][where]

    a_gated, e_gated = published(in_time_gate(calib, cfg))
    a_whole, e_whole = published(None)
    np.testing.assert_allclose(a_gated, 400.0, rtol=0.02)
    assert np.all(a_whole > 1400.0)  # the later particle's pulse
    assert e_gated == pytest.approx(n * 400.0 * g[cell], rel=0.02) and e_whole > 3 * e_gated


def test_producer_messages_are_exactly_as_declared():
    from detector.pulse import synthesize

    n = 10
    amp = np.zeros((n, ch.N_CHANNELS))
    amp[:, ch.ecal_id(1, 2, 3)] = 900.0
    amp[:, ch.hcal_id(1, 1, 0)] = 400.0
    wf = synthesize(amp, np.full(amp.shape, 100.0), 150.0, 156.0, noise_rms=0.0, seed=1)
    mask = np.where(np.arange(n) % 2 == 0, TRIGGER_BITS["beam"], TRIGGER_BITS["physics"]).astype(np.uint8)
    g = np.full(ch.N_CHANNELS, 0.01)
    msgs = event_messages(
        wf,
        np.arange(n, dtype=np.uint32) * 3,
        mask,
        g,
        n_waveforms=4,
        amplitudes=True,
        table={"cell": "A"},
        start_unix=5.0,
    )
    assert [m.topic for m in msgs] == ["calo", "ecal_hcal", "waveforms", "amplitudes"]
    for m in msgs:
        spec = mon.check(_msg(m.topic, m.arrays, m.meta), strict=True)
        assert set(m.meta) <= set(spec.meta) | set(spec.optional)
    calo, eh, w, a = (m for m in msgs)
    assert calo.arrays["ecal_occupancy"][1, 2, 3] == n and calo.arrays["ecal_occupancy"].sum() == n
    assert calo.arrays["ecal_energy"][1, 2, 3] == pytest.approx(n * 9.0, rel=2e-3)
    assert eh.arrays["counts"].sum() == n and eh.meta["ecal_edges"] == list(mon.ECAL_EDGES)
    assert w.arrays["event_ids"].tolist() == [0, 9, 18, 27]
    assert a.arrays["amplitudes"].shape == (5, ch.N_CALO) and a.meta == {
        "table": {"cell": "A"},
        "start_unix": 5.0,
        "events": 5,
    }
    sc = scalers_message(
        {
            "scalers": {"S0": 7, "S1": np.int64(6), "V0": 1},
            "eot": 4,
            "n_particles": 9,
            "triggers": {"physics": {"raw": 3, "accepted": 2}},
            "flags": ["retried"],
        },
        n,
        11,
    )
    assert sc.meta["S1"] == 6 and type(sc.meta["S1"]) is int and sc.meta["eot_total"] == 11
    assert sc.meta["triggers"] == {"physics": {"raw": 3, "accepted": 2}} and sc.meta["recorded"] == n
    mon.check(_msg("scalers", meta=sc.meta), strict=True)


def test_hv_status_bits_match_the_wire_protocol():
    # docs/protocols.md section 2: bit 0 ON ... 7 tripped ... 13 no calibration
    assert [int(b).bit_length() - 1 for b in HVStatus] == list(range(14))
    assert HVStatus.TRIP == 1 << 7 and HVStatus.DIS == 1 << 10 and HVStatus.ILK == 1 << 12
    assert hv_flag_names(0x88) == {"tripped", "over_current"}
    assert HV_FAULT & HVStatus.TRIP == 0
    assert CrateState.names() == ("IDLE", "SPILL", "GAP")


def test_driver_emulator_and_monitor_read_the_same_bits():
    from hv_control.caen import CAENMainframe
    from hv_control.supply import ST_ON, ST_TRIP
    from online.monitor.model import HV_FAULTED, HV_OFF, HV_RAMPING, HV_TRIPPED, hv_conditions
    from sim_frontend import emu_hv

    assert (ST_ON, ST_TRIP) == (HVStatus.ON, HVStatus.TRIP)
    assert (emu_hv.ST_ON, emu_hv.ST_RUP, emu_hv.ST_TRIP) == (HVStatus.ON, HVStatus.RUP, HVStatus.TRIP)
    assert CAENMainframe.status_flags(HVStatus.ON | HVStatus.RUP) == {"on", "ramp_up"}
    st = np.array([HVStatus.ON | HVStatus.TRIP, 0, HVStatus.ON | HVStatus.RDW, HVStatus.ON | HVStatus.ILK])
    cond = hv_conditions(np.full(4, 900.0), np.full(4, 900.0), st, 5.0)
    assert cond.tolist() == [HV_TRIPPED, HV_OFF, HV_RAMPING, HV_FAULTED]
