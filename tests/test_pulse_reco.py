"""MSADC signal chain both ways: synthesis -> reconstruction round trip, flags, numpy == numba."""

import math

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from detector import gate, pulse, reco
from detector.channels import ADC_MAX, N_SAMPLES, SAMPLE_NS
from detector.gain import gamma_from_points, hv_for_amplitude, relative_gain


def test_template_peaks_at_n_tau_with_unit_value():  # docs/physics.md check 31
    d = np.linspace(0, 200, 200001)
    v = pulse.template(d)
    assert d[v.argmax()] == pytest.approx(24.0, abs=1e-3)
    assert v.max() == pytest.approx(1.0, abs=1e-12)
    assert pulse.template(100.0) == pytest.approx((100 / 24) ** 2 * math.exp(2 - 100 / 12))
    assert pulse.template(-1.0) == 0.0


def test_samples_12p5ns_32_and_12bit_clip():  # docs/physics.md check 31
    t = pulse.sample_times_ns()
    assert t.shape == (32,) and np.all(np.diff(t) == SAMPLE_NS)
    wf = pulse.synthesize([[10000.0]], [[100.0]], 150, 150, 0.0)
    assert wf.dtype == np.int16 and wf.shape == (1, 1, N_SAMPLES)
    assert wf.max() == ADC_MAX and wf.min() == 150


def test_even_odd_pedestals_are_separate():
    wf = pulse.synthesize(np.zeros((200, 1)), np.zeros((200, 1)), 140.0, 170.0, 1.5, seed=2)
    r = reco.reconstruct(wf, np.ones(1))
    assert abs(r.pedestal_even.mean() - 140.0) < 0.2 and abs(r.pedestal_odd.mean() - 170.0) < 0.2
    assert np.all(r.flags == reco.FLAG_NO_SIGNAL) and np.all(r.energy_gev == 0) and np.all(np.isnan(r.time_ns))


@given(
    amp=st.floats(100, 3700),
    t0=st.floats(88, 260),
    pe=st.floats(50, 300),
    po=st.floats(50, 300),
    seed=st.integers(0, 2**31),
)
@example(amp=100.0, t0=207.0, pe=50.0, po=50.0, seed=1901)  # a 0.8 ns timing error on the steep edge: not pile-up
@example(amp=100.0, t0=97.0, pe=50.0, po=50.0, seed=177)  # noise: 1.19 ns (4 sigma), amplitude 6.8 counts (3.9)
def test_round_trip_single_pulse(amp, t0, pe, po, seed):
    wf = pulse.synthesize([[amp]], [[t0]], pe, po, 1.5, seed=seed)
    if wf.max() >= ADC_MAX:  # a high pedestal plus a large pulse saturates: checked below
        return
    r = reco.reconstruct(wf, np.array([0.03]))
    assert r.flags[0, 0] == 0
    # five standard deviations of the noise-limited estimate (1.5 counts of noise per sample: the amplitude
    # scatters by ~1.75 counts at any amplitude, the time by ~29 ns / amplitude in counts, measured over
    # thousands of seeds), plus 1% / 0.05 ns for the template; a 3.4-sigma bound was found broken by a seed
    assert abs(r.amplitude[0, 0] - amp) < 9.0 + 0.01 * amp
    assert abs(r.time_ns[0, 0] - t0) < 0.05 + 150.0 / amp
    assert r.energy_gev[0, 0] == pytest.approx(r.amplitude[0, 0] * 0.03, rel=1e-6)


def test_time_resolution_better_than_1ns_above_100_counts():
    rng = np.random.default_rng(7)
    n = 5000
    amp = rng.uniform(100, 400, (n, 1))
    t0 = rng.uniform(90, 250, (n, 1))
    r = reco.reconstruct(pulse.synthesize(amp, t0, 150, 156, 1.5, seed=11), np.ones(1))
    dt = r.time_ns[:, 0] - t0[:, 0]
    assert np.std(dt) < 1.0 and abs(np.mean(dt)) < 0.1
    assert np.std(r.amplitude[:, 0] / amp[:, 0] - 1) < 0.02


def test_saturation_flag_and_recovery():
    rng = np.random.default_rng(3)
    amp = rng.uniform(4200, 9000, (500, 1))
    t0 = rng.uniform(90, 250, (500, 1))
    r = reco.reconstruct(pulse.synthesize(amp, t0, 150, 156, 1.5, seed=4), np.ones(1))
    assert np.all(r.flags[:, 0] & reco.FLAG_SATURATED)
    assert not np.any(r.flags[:, 0] & reco.FLAG_PILEUP)
    assert np.std(r.amplitude[:, 0] / amp[:, 0] - 1) < 0.03
    assert np.std(r.time_ns[:, 0] - t0[:, 0]) < 1.0


def _two_pulses(n, a1, t1, a2, t2, seed=5):
    analog = np.zeros((n, N_SAMPLES), np.float32)
    idx = np.arange(n)
    pulse.add_pulses(analog, idx, np.full(n, a1), np.full(n, t1))
    pulse.add_pulses(analog, idx, np.full(n, a2), np.asarray(t2, float) * np.ones(n))
    out = np.empty((n, 1, N_SAMPLES), np.int16)
    pulse.digitize(
        analog.reshape(n, 1, N_SAMPLES),
        np.array([150.0], np.float32),
        np.array([156.0], np.float32),
        1.5,
        pulse.make_noise_bank(seed),
        seed,
        out,
    )
    return out


@pytest.mark.parametrize("a2, dt", [(200.0, 60.0), (100.0, 120.0), (300.0, -50.0), (800.0, 15.0)])
def test_pileup_flag_for_a_second_pulse(a2, dt):
    wf = _two_pulses(300, 1000.0, 120.0, a2, 120.0 + dt)
    r = reco.reconstruct(wf, np.ones(1))
    assert np.mean(r.flags[:, 0] & reco.FLAG_PILEUP > 0) > 0.99


def test_no_pileup_flag_on_clean_pulses():
    rng = np.random.default_rng(9)
    n = 20000
    wf = pulse.synthesize(rng.uniform(12, 3800, (n, 1)), rng.uniform(90, 250, (n, 1)), 150, 156, 1.5, seed=12)
    r = reco.reconstruct(wf, np.ones(1))
    assert np.mean(r.flags[:, 0] & reco.FLAG_PILEUP > 0) < 1e-3


def test_numba_equals_numpy_reference_on_a_mixed_sample():
    rng = np.random.default_rng(21)
    n, c = 3000, 8
    amp = rng.choice([0.0, 5.0, 50.0, 500.0, 3000.0, 6000.0], size=(n, c)) * rng.uniform(0.8, 1.2, (n, c))
    t0 = rng.uniform(60, 300, (n, c))
    wf = pulse.synthesize(amp, t0, rng.uniform(100, 200, c), rng.uniform(100, 200, c), 1.5, seed=8)
    g = rng.uniform(0.01, 0.05, c)
    a, b = reco.reconstruct(wf, g), reco.reconstruct_numpy(wf, g)
    p = reco.reconstruct(wf, g, parallel=True)
    for name in ("pedestal_even", "pedestal_odd", "amplitude", "time_ns", "energy_gev", "flags"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-5, atol=1e-3, err_msg=name)
        np.testing.assert_array_equal(getattr(a, name), getattr(p, name), err_msg=name)
    assert set(np.unique(a.flags)) >= {0, int(reco.FLAG_NO_SIGNAL), int(reco.FLAG_SATURATED)}


def _pulses_on_channels(amp1, t1, amp2, t2, pe, po, seed):
    """(n, c, 32) int16 waveforms with two pulses per channel (amplitudes, onsets ns: (n, c) each) on the
    pedestals pe, po (c,), 1.5 counts of noise."""
    n, c = amp1.shape
    analog = np.zeros((n * c, N_SAMPLES), np.float32)
    idx = np.arange(n * c)
    for a, t in ((amp1, t1), (amp2, t2)):
        pulse.add_pulses(analog, idx, a.ravel().astype(np.float64), t.ravel().astype(np.float64))
    out = np.empty((n, c, N_SAMPLES), np.int16)
    bank = pulse.make_noise_bank(seed)
    pulse.digitize(analog.reshape(n, c, N_SAMPLES), pe.astype(np.float32), po.astype(np.float32), 1.5, bank, seed, out)
    return out


def test_numba_gate_equals_numpy_gate_with_pulses_outside_the_gate():
    """Gated channels (a 40 ns gate around each channel's own nominal peak, one channel over the whole
    record, one with a gate at the record's start and one at its end) with an in-time pulse (none, below
    threshold, small, large, saturating) and a second pulse anywhere in the record, often larger."""
    rng = np.random.default_rng(41)
    n, c = 4000, 10
    t_nom = rng.uniform(60, 280, c)
    t_nom[-2:] = (-10.0, 350.0)
    first, last = gate.peak_gate(t_nom, 40.0)
    first[0], last[0] = 0, N_SAMPLES - 1
    assert np.all(first <= last) and first[-2] == 0 and last[-1] == N_SAMPLES - 1
    amp1 = rng.choice([0.0, 5.0, 50.0, 500.0, 3000.0, 6000.0], size=(n, c)) * rng.uniform(0.8, 1.2, (n, c))
    t1 = t_nom[None, :] + rng.uniform(-12, 12, (n, c))
    amp2 = rng.choice([0.0, 200.0, 2000.0, 8000.0], size=(n, c)) * rng.uniform(0.8, 1.2, (n, c))
    t2 = rng.uniform(-60, 400, (n, c))
    pe, po = rng.uniform(100, 200, c), rng.uniform(100, 200, c)
    wf = _pulses_on_channels(amp1, t1, amp2, t2, pe, po, seed=9)
    g = rng.uniform(0.01, 0.05, c)
    a = reco.reconstruct(wf, g, gate=(first, last))
    b = reco.reconstruct_numpy(wf, g, gate=(first, last))
    p = reco.reconstruct(wf, g, parallel=True, gate=(first, last))
    whole = reco.reconstruct(wf, g)
    for name in ("pedestal_even", "pedestal_odd", "amplitude", "time_ns", "energy_gev", "flags"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-5, atol=1e-3, err_msg=name)
        np.testing.assert_array_equal(getattr(a, name), getattr(p, name), err_msg=name)
        # the channel gated over the whole record is the ungated reconstruction, bit for bit
        np.testing.assert_array_equal(getattr(a, name)[:, 0], getattr(whole, name)[:, 0], err_msg=name)
    flags = set(np.unique(a.flags[:, 1:]))
    assert flags >= {0, int(reco.FLAG_NO_SIGNAL), int(reco.FLAG_SATURATED), int(reco.FLAG_PILEUP)}
    # the gate matters: a larger unsaturated pulse outside it (and inside the record) is what the whole
    # record takes
    far = (t2 > t_nom + 60) | (t2 < t_nom - 60)
    outside = (amp2 > 2 * amp1 + 100) & (amp2 < 4000) & far & (t2 > 20) & (t2 < 300)
    outside[:, 0] = False
    assert outside.sum() > 500
    assert np.all(a.amplitude[outside] < whole.amplitude[outside])


def test_gate_takes_the_in_time_pulse_and_ignores_the_later_one():
    """A larger pulse 150 ns after the in-time one: outside a 40 ns gate it neither replaces the in-time
    pulse nor flags PILEUP (step 5 reads the gate only); the whole record takes it."""
    n = 500
    amp1 = np.full((n, 1), 300.0)
    t1 = np.full((n, 1), 100.0)
    amp2 = np.full((n, 1), 1500.0)
    t2 = np.full((n, 1), 250.0)
    ped = np.array([150.0])
    wf = _pulses_on_channels(amp1, t1, amp2, t2, ped, ped + 6, seed=3)
    first, last = gate.peak_gate(100.0, 40.0)
    assert (int(first), int(last)) == (9, 11)  # 112.5 .. 137.5 ns around the peak at 124 ns
    r = reco.reconstruct(wf, np.ones(1), gate=(np.atleast_1d(first), np.atleast_1d(last)))
    assert np.all(np.abs(r.amplitude[:, 0] - 300.0) < 9.0 + 3.0)
    assert np.all(np.abs(r.time_ns[:, 0] - 100.0) < 0.05 + 150.0 / 300.0)
    assert np.all(r.flags[:, 0] == 0)
    whole = reco.reconstruct(wf, np.ones(1))
    assert np.all(np.abs(whole.time_ns[:, 0] - 250.0) < 1.0)
    assert np.all(whole.flags[:, 0] == reco.FLAG_PILEUP)


@pytest.mark.parametrize("amp2", [50.0, 300.0, 1500.0, 8000.0])
def test_pileup_inside_the_gate_flags_and_outside_does_not_numba_equals_numpy(amp2):
    """The calorimeter's pile-up range (+/-100 ns around the nominal peak, a 200 ns gate): a second pulse
    50 ns after the event's own (inside) flags PILEUP, one 200 ns after (outside) leaves the cell as
    without it; numba == numpy, and the ungated reconstruction (the DAQ's) still flags both."""
    n = 400
    amp1 = np.full((n, 1), 400.0)
    t1 = np.full((n, 1), 100.0)
    ped = np.array([150.0])
    first, last = gate.peak_gate(100.0, 200.0)
    assert (int(first), int(last)) == (2, 17)  # 25 .. 212.5 ns around the peak at 124 ns
    g = (np.atleast_1d(first), np.atleast_1d(last))
    alone = reco.reconstruct(_pulses_on_channels(amp1, t1, 0 * amp1, t1, ped, ped + 6, seed=5), np.ones(1), gate=g)
    assert np.all(alone.flags[:, 0] == 0)
    for dt, flagged in ((50.0, True), (200.0, False)):
        wf = _pulses_on_channels(amp1, t1, np.full((n, 1), amp2), t1 + dt, ped, ped + 6, seed=5)
        a = reco.reconstruct(wf, np.ones(1), gate=g)
        b = reco.reconstruct_numpy(wf, np.ones(1), gate=g)
        for name in ("amplitude", "time_ns", "energy_gev", "flags"):
            np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-5, atol=1e-3, err_msg=name)
        pile = (a.flags[:, 0] & reco.FLAG_PILEUP) != 0
        if flagged:
            assert pile.all(), dt
        else:
            assert not pile.any(), dt
            np.testing.assert_array_equal(a.amplitude, alone.amplitude)  # same noise seed: the same samples
            np.testing.assert_array_equal(a.time_ns, alone.time_ns)
        whole = reco.reconstruct(wf, np.ones(1))
        assert np.all((whole.flags[:, 0] & reco.FLAG_PILEUP) != 0), dt


def test_reconstruct_rejects_a_bad_gate():
    wf = np.zeros((2, 3, 32), np.int16)
    for bad in (([0, 0, -1], [31, 31, 31]), ([0, 0, 0], [31, 31, 32]), ([5, 0, 0], [4, 31, 31])):
        with pytest.raises(ValueError, match="gate"):
            reco.reconstruct(wf, np.ones(3), gate=(np.array(bad[0]), np.array(bad[1])))


def test_reconstruct_rejects_bad_input():
    with pytest.raises(ValueError, match="int16"):
        reco.reconstruct(np.zeros((2, 3, 32), np.float32), np.ones(3))
    with pytest.raises(ValueError, match="one value per channel"):
        reco.reconstruct(np.zeros((2, 3, 32), np.int16), np.ones(2))


def test_gain_law_hv_update_logbook_example():  # docs/physics.md checks 24, 25
    assert hv_for_amplitude(942.0, 2445.0, 2500.0, 7.5) == pytest.approx(944.8, abs=0.2)
    assert hv_for_amplitude(990.0, 2380.0, 2500.0, 7.5) == pytest.approx(996.5, abs=0.2)
    assert hv_for_amplitude(900.0, 2500.0, 2500.0, 7.5) == 900.0
    assert hv_for_amplitude(900.0, 2000.0, 2500.0, 1e12) == pytest.approx(900.0, abs=1e-6)
    assert gamma_from_points(900.0, 1000.0, 950.0, 1000.0 * (950 / 900) ** 7.2) == pytest.approx(7.2)
    assert relative_gain(1000.0, 900.0, 7.5) == pytest.approx((1000 / 900) ** 7.5)
    assert relative_gain(0.0, 900.0, 7.5) == 0.0
    for bad in (0.0, -5.0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            hv_for_amplitude(900.0, bad, 2500.0, 7.5)
        with pytest.raises(ValueError):
            hv_for_amplitude(900.0, 2500.0, 2500.0, bad)
