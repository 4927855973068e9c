"""The explicit-vector record summary of the waveform trigger (trigger.simd) against its numpy definition:
exact peaks (4x value above the given pedestal sums), first peak samples of S1..S3 and saturation bits, on
hypothesis-generated int16 records (any value, ties, flat records, full scale, extremes of int16) and
pedestal sums (any in the allowed range), with every channel's samples taken in any gate (two or more
samples) or the whole record."""

from __future__ import annotations

import numba as nb
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from detector.channels import ADC_MAX
from trigger import simd


@nb.njit(cache=True)
def _summaries(p: np.ndarray, first: int, lanes: np.ndarray, caps: np.ndarray) -> np.ndarray:
    out = np.empty((p.shape[0] - first, simd.N_CHANNELS + simd.N_COUNTERS + 1), np.int64)
    for i in range(first, p.shape[0]):
        t = simd.record_summary(p, i, lanes, caps)
        for k in range(out.shape[1]):
            out[i - first, k] = t[k]
    return out


@nb.njit(cache=True)
def _prefetch_all(p: np.ndarray, ahead: int) -> int:
    for i in range(p.shape[0]):
        simd.prefetch_record_l2(p, i + ahead)  # beyond the end too: a prefetch never faults
    return p.shape[0]


#: the calibrated pedestal sums of config/calibration.toml's trigger channels (4x 120/125, ..., 160/152)
CALIB = (np.array([480, 480, 480, 480, 640, 640]), np.array([500, 500, 500, 472, 608, 608]))
#: the whole record for every channel, and the default menu's gates (samples 9..11 of the counters, 8..11
#: of the sums)
WHOLE = (np.zeros(6, np.int64), np.full(6, 31))
GATE = (np.array([9, 9, 9, 9, 8, 8]), np.array([11, 11, 11, 11, 11, 11]))
FULL_CAPS = simd.gate_caps(*WHOLE)


def check(prims: np.ndarray, se: np.ndarray = CALIB[0], so: np.ndarray = CALIB[1], gate: tuple = WHOLE) -> None:
    got = _summaries(prims, 0, simd.ped_lanes(se, so), simd.gate_caps(*gate))
    want = simd.record_summary_numpy(prims, se, so, *gate)
    bad = np.flatnonzero((got != want).any(axis=1))
    assert bad.size == 0, f"record {bad[0]}: {got[bad[0]].tolist()} != {want[bad[0]].tolist()}"


@st.composite
def gates(draw) -> tuple:
    """Any gates of the six channels with an even and an odd sample."""
    first, last = WHOLE[0].copy(), WHOLE[1].copy()
    for c in simd.GATED:
        first[c] = draw(st.integers(0, 30))
        last[c] = draw(st.integers(int(first[c]) + 1, 31))
    return first, last


sample_values = st.one_of(
    st.integers(-32768, 32767),
    st.sampled_from([-32768, 32767, 0, 1, ADC_MAX - 1, ADC_MAX, ADC_MAX + 1]),
    st.integers(-3, 3),
)


@settings(max_examples=300, deadline=None)
@given(arrays(np.int16, st.tuples(st.integers(1, 40), st.just(6), st.just(32)), elements=sample_values))
@example(np.zeros((1, 6, 32), np.int16))
@example(np.full((2, 6, 32), -32768, np.int16))
@example(np.full((2, 6, 32), 32767, np.int16))
@example(np.full((2, 6, 32), ADC_MAX, np.int16))
def test_summary_is_the_definition(prims: np.ndarray) -> None:
    check(prims)
    check(prims, gate=GATE)


ped_sums = arrays(
    np.int64,
    6,
    elements=st.one_of(
        st.integers(-simd.PED_BOUND, simd.PED_BOUND), st.sampled_from([-simd.PED_BOUND, 0, 1, simd.PED_BOUND])
    ),
)


@settings(max_examples=200, deadline=None)
@given(
    arrays(np.int16, st.tuples(st.integers(1, 20), st.just(6), st.just(32)), elements=sample_values),
    ped_sums,
    ped_sums,
    gates(),
)
def test_summary_is_the_definition_for_any_pedestals_and_gates(
    prims: np.ndarray, se: np.ndarray, so: np.ndarray, gate: tuple
) -> None:
    check(prims, se, so, gate)


def test_gate_caps_refuse_one_sample_gates() -> None:
    with pytest.raises(ValueError, match="an even and an odd"):
        simd.gate_caps([0, 0, 0, 0, 8, 9], [31, 31, 31, 31, 11, 9])
    with pytest.raises(ValueError, match="an even and an odd"):
        simd.gate_caps([5, 0, 0, 0, 8, 8], [5, 31, 31, 31, 11, 11])  # a counter's too


def test_summary_counter_gate_takes_the_in_time_pulse() -> None:
    """A larger counter pulse later in the record: its peak (value, sample, saturation) outside the
    counter gate 9..11 is not the counter's; a record of int16-min samples: the peak sample is searched in
    the gate only (the samples clamped outside it equal int16 min too)."""
    p = np.full((2, 6, 32), 150, np.int16)
    p[0, :4, 10] = 400  # the in-time pulse
    p[0, :4, 26] = ADC_MAX  # a later particle, saturated
    p[1, :3, :] = -32768  # every sample at int16 min: the peak is the first even sample (se < so) in the gate
    whole = _summaries(p, 0, simd.ped_lanes(*CALIB), FULL_CAPS)
    gated = _summaries(p, 0, simd.ped_lanes(*CALIB), simd.gate_caps(*GATE))
    assert whole[0, :3].tolist() == [4 * ADC_MAX - 480] * 3 and whole[0, 6:9].tolist() == [26] * 3
    assert whole[0, 9] == 0b1111
    assert gated[0, :3].tolist() == [4 * 400 - 480] * 3 and gated[0, 6:9].tolist() == [10] * 3
    assert gated[0, 9] == 0
    assert gated[1, 6:9].tolist() == [10] * 3 and whole[1, 6:9].tolist() == [0] * 3
    check(p, gate=GATE)


def test_summary_gate_excludes_a_later_pulse_and_its_saturation() -> None:
    p = np.full((1, 6, 32), 150, np.int16)
    p[0, 4:, 10] = 1000  # in the gate 8..11
    p[0, 4:, 20] = ADC_MAX  # a later particle, saturated, outside it
    whole = _summaries(p, 0, simd.ped_lanes(*CALIB), FULL_CAPS)[0]
    gated = _summaries(p, 0, simd.ped_lanes(*CALIB), simd.gate_caps(*GATE))[0]
    assert whole[4] == 4 * ADC_MAX - 640 and whole[9] == 0b110000
    assert gated[4] == 4 * 1000 - 640 and gated[5] == 4 * 1000 - 640 and gated[9] == 0


def test_pedestal_lanes_refuse_sums_beyond_the_bound() -> None:
    with pytest.raises(ValueError, match="pedestal sums"):
        simd.ped_lanes([simd.PED_BOUND + 1] + [0] * 5, [0] * 6)


def test_summary_on_pulses_noise_and_ties() -> None:
    rng = np.random.default_rng(11)
    pulses = rng.normal(100.0, 3.0, (5000, 6, 32))
    pulses[:, :, 10:14] += rng.uniform(0, 5000, (5000, 6, 1)) * np.array([0.3, 1.0, 0.8, 0.5])
    prims = np.clip(np.rint(pulses), -32768, 32767).astype(np.int16)
    ties = rng.integers(0, 3, (5000, 6, 32)).astype(np.int16)  # many equal maxima, both parities
    for p in (prims, ties):
        check(p)
        check(p, gate=GATE)
        got = _summaries(p, 0, simd.ped_lanes(*CALIB), FULL_CAPS)
        # the properties the trigger relies on, stated directly
        se, so = CALIB[0][None, :3], CALIB[1][None, :3]
        k = got[:, 6:9]
        w = np.take_along_axis(p[:, :3].astype(np.int64), k[:, :, None], axis=2)[:, :, 0]
        assert (4 * w - np.where(k % 2 == 0, se, so) == got[:, :3]).all()
        sat = ((p.max(axis=2) >= ADC_MAX) << np.arange(6)).sum(axis=1)
        assert (got[:, 9] == sat).all()


def test_summary_on_an_unaligned_view_and_the_last_record() -> None:
    rng = np.random.default_rng(5)
    raw = np.empty(7 * 384 + 2, np.uint8)
    p = raw[2:].view(np.int16).reshape(7, 6, 32)  # 2-byte aligned records
    p[:] = rng.integers(-500, 5000, p.shape)
    check(p)
    lanes = simd.ped_lanes(*CALIB)
    assert (_summaries(p, 6, lanes, FULL_CAPS) == simd.record_summary_numpy(p[6:], *CALIB)).all()
    assert _prefetch_all(p, 1000) == 7


def test_summary_refuses_other_layouts() -> None:
    p = np.zeros((4, 6, 64), np.int16)[:, :, ::2]
    with pytest.raises(nb.core.errors.TypingError):
        _summaries(p, 0, simd.ped_lanes(*CALIB), FULL_CAPS)


@nb.njit(cache=True)
def _trailing_zeros_all(x: np.ndarray) -> np.ndarray:
    out = np.empty(x.size, np.int64)
    for i in range(x.size):
        out[i] = simd.trailing_zeros(x[i])
    return out


def test_trailing_zeros_is_the_lowest_set_bit() -> None:
    """trigger.simd.trailing_zeros: the index of the lowest set bit of a uint64 (64 for 0), every bit
    position alone and under random higher bits."""
    rng = np.random.default_rng(4)
    pos = np.arange(64, dtype=np.uint64)
    high = rng.integers(0, 2**63, 64, dtype=np.uint64) << np.uint64(1)
    x = np.concatenate([np.uint64(1) << pos, (high | np.uint64(1)) << pos, np.zeros(1, np.uint64)])
    want = np.concatenate([pos, pos, [64]]).astype(np.int64)
    assert np.array_equal(_trailing_zeros_all(x), want)
