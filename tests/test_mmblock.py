"""The Micromegas readout block (detector/mmblock.py): the APV25 samples of a strip are its CR-RC pulse at the
hit time, and the decoder recovers the charge and the time from them (issue 16/18: the hit time against
pile-up)."""

from __future__ import annotations

import numpy as np
import pytest

from detector import mmblock
from detector.tracking import StripData


def _round_trip(q_lo: float, t_lo: float, t_hi: float, n: int = 50_000, seed: int = 1):
    rng = np.random.default_rng(seed)
    q = np.exp(rng.uniform(np.log(q_lo), np.log(3000.0), n))
    t = rng.uniform(t_lo, t_hi, n)
    charge, time = mmblock.strip_charge_time(mmblock.strip_samples(q, t))
    return q, t, charge.astype(np.float64), time.astype(np.float64)


def test_an_in_time_strip_is_sampled_as_before():
    """t = 0: the samples are q x SAMPLE_SHAPE, the second one at the peak, and the charge is q."""
    np.testing.assert_allclose(mmblock.SAMPLE_SHAPE, [0.8244, 1.0, 0.9098], atol=1e-4)
    s = mmblock.strip_samples(np.array([300.0]), np.array([0.0]))
    assert s.tolist() == [[247, 300, 273]]
    charge, time = mmblock.strip_charge_time(s)
    assert charge[0] == pytest.approx(300.0, abs=0.5) and time[0] == pytest.approx(0.0, abs=0.5)


@pytest.mark.parametrize(
    ("q_lo", "t_lo", "t_hi", "dt_max", "dq_max"),
    [
        (100.0, -50.0, 48.0, 3.0, 0.03),  # around the hit time cut: a few ns, a few percent
        (100.0, -100.0, -50.0, 12.0, 0.15),  # early: the samples on the pulse's slow tail
        (20.0, -50.0, 48.0, 15.0, 0.15),  # down to the zero-suppression threshold
        (20.0, -100.0, -50.0, 80.0, 2.0),  # small and early: the rounding to whole counts dominates
    ],
)
def test_round_trip_recovers_time_and_charge(q_lo, t_lo, t_hi, dt_max, dq_max):
    """encode -> decode over the readout window: every strip of charge >= q_lo (ADC counts) hit at t_lo..t_hi
    (ns) gets a time within dt_max and a charge within dq_max (relative); the bounds are the rounding of the
    samples to whole counts through the closed form."""
    q, t, charge, time = _round_trip(q_lo, t_lo, t_hi)
    assert np.isfinite(time).all()
    assert np.abs(time - t).max() < dt_max and np.abs(charge / q - 1.0).max() < dq_max


def test_round_trip_near_the_cut_is_much_better_than_the_resolution():
    """|t| <= 45 ns and q >= 100 counts (a particle's strips): 99% within 1 ns, against the 10 ns resolution."""
    q, t, charge, time = _round_trip(100.0, -45.0, 45.0)
    assert np.percentile(np.abs(time - t), 99) < 1.0 and np.percentile(np.abs(charge / q - 1), 99) < 0.01


def test_late_pulses_and_samples_of_no_pulse_have_no_time():
    """A pulse starting after the second sample (>= 50 ns late) has one sample or none: time NaN (never in
    time), charge the largest sample; samples that are not one CR-RC pulse: NaN too."""
    q = np.full(200, 500.0)
    t = np.linspace(51.0, 100.0, 200)
    s = mmblock.strip_samples(q, t)
    charge, time = mmblock.strip_charge_time(s)
    assert np.isnan(time).all() and np.array_equal(charge, s.max(axis=1).astype(np.float32))
    assert (s[t >= 75.0] == 0).all() and (charge[t >= 75.0] == 0).all()
    bad = np.array([[100, 20, 100], [300, 0, 0], [0, 300, 0], [300, 300, 300], [0, 0, 0]], np.int16)
    charge, time = mmblock.strip_charge_time(bad)
    assert np.isnan(time).all() and charge.tolist() == [100.0, 300.0, 300.0, 300.0, 0.0]
    empty_c, empty_t = mmblock.strip_charge_time(np.zeros((0, 3), np.int16))
    assert empty_c.shape == empty_t.shape == (0,) and empty_t.dtype == np.float32


def test_block_round_trip_carries_the_times():
    """encode_block -> decode_block -> strip_data: the strips, and their charges and times as above."""
    q = np.array([300.0, 150.0, 40.0, 800.0, 500.0], np.float32)
    t = np.array([0.0, -35.0, 20.0, -90.0, 70.0], np.float32)
    sd = StripData(np.array([0, 2, 2, 5]), np.array([0, 1, 6, 7, 3], np.uint8), np.array([160, 161, 5, 9, 300],
                   np.uint16), q, t)  # fmt: skip
    ptr, rec = mmblock.decode_block(mmblock.encode_block(sd), 3)
    out = mmblock.strip_data(ptr, rec)
    assert out.event_ptr.tolist() == [0, 2, 2, 5] and out.plane.tolist() == [0, 1, 6, 7, 3]
    assert out.time_ns.dtype == np.float32 and out.charge.dtype == np.float32
    assert out.time_ns[:4] == pytest.approx(t[:4], abs=6.0) and out.charge[:4] == pytest.approx(q[:4], rel=0.1)
    assert np.isnan(out.time_ns[4])  # 70 ns late: only the last sample
    both = mmblock.concat([out, mmblock.empty(2)])
    assert both.n_events == 5 and np.array_equal(both.time_ns, out.time_ns, equal_nan=True)
