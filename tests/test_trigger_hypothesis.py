"""Property tests of the online trigger: on hypothesis-generated spills (S1, S2, S3, V1, PS, ECAL
waveforms from detector.pulse with random energies and times, V1 hits, pile-up, out-of-time counters,
saturation; energy and counter gates from the narrowest allowed to the whole record, so that later pulses
fall inside and outside them) and menus, numba == numpy reference exactly (accepted indices, masks, scalers), for the
waveform and the amplitude entry, serial, parallel and in random chunks; spills of several kernel blocks
(:data:`trigger.accept.BLOCK` records) cut at and around block boundaries, with prescale counters and random
ticks that carry across blocks and chunks, and menus with further energy lines."""

from __future__ import annotations

import dataclasses

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trigger import kernels as K
from trigger import reference as R
from trigger.accept import BLOCK
from trigger.menu import BeamTrigger, EnergyTrigger, RandomTrigger, TriggerMenu, TriggerResult

BASE = TriggerMenu.from_config()


def assert_same(a: TriggerResult, b: TriggerResult) -> None:
    assert a.same_as(b), a.difference(b)


def chunked(menu: TriggerMenu, prims: np.ndarray, tau: np.ndarray, cuts: list[int], parallel: bool) -> TriggerResult:
    """The waveform entry fed in consecutive chunks of the sizes ``cuts`` (cycled)."""
    trig = K.SpillTrigger(menu, parallel=parallel)
    start, i = 0, 0
    while start < tau.size:
        stop = min(start + cuts[i % len(cuts)], tau.size)
        trig.process(prims[start:stop], tau[start:stop], start)
        start, i = stop, i + 1
    return trig.finish()


@st.composite
def menus(draw) -> TriggerMenu:
    ps = draw(st.sampled_from([0.0, 0.1, 0.3, 0.5, 2.0]))
    ec = draw(st.sampled_from([20.0, 60.0, 80.0, 100.0]))
    on = draw(st.lists(st.booleans(), min_size=4, max_size=4))
    on[1] = on[1] or not any(on)  # a menu must enable something
    window = draw(st.sampled_from([2.0, 5.0, 10.0, 25.0]))
    return BASE.replace(
        window_ns=window,
        energy_gate_ns=draw(st.sampled_from([25.0, 37.5, 50.0, 100.0, 800.0])),
        # the narrowest counter gate the window allows, a little and much wider, the whole record
        counter_gate_ns=2.0 * (window + 10.0) + draw(st.sampled_from([0.0, 12.5, 60.0, 800.0])),
        counter_threshold_mip=draw(st.sampled_from([0.2, 0.5, 0.75, 1.0])),
        t0_ns=tuple(draw(st.sampled_from([95.0, 100.0, 104.3])) for _ in range(6)),
        physics=EnergyTrigger(on[0], draw(st.integers(1, 4)), ps, ec),
        beam=BeamTrigger(on[1], draw(st.integers(1, 9))),
        random=RandomTrigger(on[2], draw(st.sampled_from([1e3, 2e4, 1e5]))),
        dimuon=EnergyTrigger(on[3], draw(st.integers(1, 3)), ps, ec * 0.75),
    )


@st.composite
def spills(draw, max_records: int = 160) -> tuple:
    """(menu, amplitudes (n, 6) ADC counts, onsets (n, 6) ns, extra pulses (record, channel, amplitude,
    onset), arrival times (n,) ns, noise RMS (ADC counts), seed)."""
    menu = draw(menus())
    n = draw(st.integers(0, max_records))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    mip = menu.mip_adc
    g = np.asarray(menu.gev_per_count)
    kind = rng.choice(4, n, p=[0.6, 0.2, 0.1, 0.1])  # electron, halo, V1 hit, junk
    amp = np.zeros((n, 6))
    ons = np.asarray(menu.t0_ns)[None, :] + rng.normal(0.0, draw(st.sampled_from([0.5, 3.0, 10.0])), (n, 6))
    amp[:, :3] = mip * rng.gamma(4.0, 0.25, (n, 3))  # many near the counter thresholds
    amp[kind == 1, rng.integers(0, 3)] = 0.0
    ons[kind == 1, :3] += rng.choice([-40.0, -12.0, 11.0, 30.0], (int((kind == 1).sum()), 3))
    amp[kind == 2, 3] = mip * rng.uniform(0.1, 3.0, int((kind == 2).sum()))
    e_ps = np.where(rng.random(n) < 0.5, rng.uniform(0.0, 1.0, n), rng.exponential(3.0, n))
    e_ecal = np.where(rng.random(n) < 0.5, rng.uniform(0.0, 120.0, n), rng.normal(100.0, 10.0, n))
    amp[:, 4] = np.clip(e_ps, 0, None) / g[4]
    amp[:, 5] = np.clip(e_ecal, 0, None) / g[5]
    junk = kind == 3
    amp[junk] = rng.uniform(0.0, 6000.0, (int(junk.sum()), 6))  # incl. saturated pulses
    ons[junk] = rng.uniform(-60.0, 420.0, (int(junk.sum()), 6))
    m = int(draw(st.integers(0, max(n // 4, 0)))) if n else 0
    extra = (
        rng.integers(0, max(n, 1), m),
        rng.integers(0, 6, m),
        rng.uniform(5.0, 2000.0, m),
        rng.uniform(-80.0, 400.0, m),
    )
    span = draw(st.sampled_from([1e5, 1e7, menu.spill_length_s * 1e9]))
    tau = np.sort(rng.uniform(-1e3, span, n))
    if n > 3 and draw(st.booleans()):
        tau[1:3] = tau[0]  # equal arrival times
    noise = draw(st.sampled_from([0.0, 1.5, 4.0]))
    return menu, amp, ons, extra, tau, noise, seed


@given(spills())
def test_waveform_entry_matches_reference(s) -> None:
    menu, amp, ons, extra, tau, noise, seed = s
    prims = R.synthesize_primitives(amp, ons, extra, noise_rms=noise, seed=seed % 1000)
    ref = R.waveform_trigger(menu, prims, tau)
    assert_same(K.trigger_waveforms(menu, prims, tau), ref)
    assert_same(K.trigger_waveforms(menu, prims, tau, parallel=True), ref)
    # the amplitude entry on the reconstructed amplitudes: the same decisions
    a, t = R.reconstruct_trigger_channels(menu, prims)
    assert_same(K.trigger_amplitudes(menu, np.asfortranarray(a), np.asfortranarray(t), tau), ref)


@given(spills(max_records=120), st.lists(st.integers(1, 60), min_size=1, max_size=6), st.booleans())
def test_chunked_matches_whole(s, cuts, parallel) -> None:
    menu, amp, ons, extra, tau, noise, seed = s
    prims = R.synthesize_primitives(amp, ons, extra, noise_rms=noise, seed=seed % 1000)
    whole = R.waveform_trigger(menu, prims, tau)
    assert_same(chunked(menu, prims, tau, cuts, parallel), whole)


@given(spills(max_records=200), st.sampled_from([np.float32, np.float64]), st.booleans())
def test_amplitude_entry_matches_reference(s, dtype, fortran) -> None:
    """Amplitudes and onsets straight from the generator (not reconstructed), some exactly at the cuts."""
    menu, amp, ons, _, tau, _, seed = s
    rng = np.random.default_rng(seed)
    a = amp.astype(dtype)
    t = ons.astype(dtype)
    if a.shape[0]:
        pick = rng.random(a.shape[0]) < 0.2
        a[pick, :4] = menu.counter_threshold_adc
        lo, hi = menu.counter_window_ns(0)
        t[rng.random(a.shape[0]) < 0.1, 0] = rng.choice([lo, hi])
        a[rng.random(a.shape[0]) < 0.1, 3] = 0.0
        t[a[:, 3] == 0.0, 3] = np.nan
    if fortran:
        a, t = np.asfortranarray(a), np.asfortranarray(t)
    ref = R.amplitude_trigger(menu, a, t, tau)
    assert_same(K.trigger_amplitudes(menu, a, t, tau), ref)
    assert_same(K.trigger_amplitudes(menu, a, t, tau, parallel=True), ref)
    # offline re-trigger with other thresholds: the same code, the same agreement
    other = menu.replace(physics=dataclasses.replace(menu.physics, enabled=True, ecal_max_gev=50.0))
    assert_same(K.trigger_amplitudes(other, a, t, tau), R.amplitude_trigger(other, a, t, tau))


@st.composite
def lines(draw) -> tuple:
    """0-2 further energy lines (some without the veto, some with the optional cuts)."""
    out = []
    for k in range(draw(st.integers(0, 2))):
        ps = draw(st.sampled_from([0.0, 0.5, 2.0]))
        ec = draw(st.sampled_from([30.0, 90.0, 105.0]))
        out.append(
            (
                f"extra{k}",
                EnergyTrigger(
                    draw(st.booleans()),
                    draw(st.integers(1, 7)),
                    ps,
                    ec,
                    draw(st.sampled_from([None, ps + 3.0])),
                    draw(st.sampled_from([None, ec - 25.0])),
                    draw(st.booleans()),
                ),
            )
        )
    return tuple(out)


@st.composite
def big_spills(draw) -> tuple:
    """(menu, primitives, arrival times, chunk sizes): 1-5 blocks of records; prescales of 1-7 so that the
    counters wrap inside blocks and carry over their ends; a random rate of 0.2-3 ticks per block's time
    span; chunk sizes at, around and between block sizes."""
    menu, _amp, _ons, _extra, _, _noise, seed = draw(spills(max_records=0))
    n = draw(
        st.one_of(
            st.integers(BLOCK + 1, 5 * BLOCK),
            st.sampled_from([BLOCK - 1, BLOCK, BLOCK + 1, 2 * BLOCK, 3 * BLOCK - 1, 4 * BLOCK + 7]),
        )
    )
    rng = np.random.default_rng(seed)
    prims, _ = R.electron_spill(menu, n, seed=seed % 1000, low_ecal_fraction=draw(st.sampled_from([0.1, 0.5])))
    junk = rng.random(n) < 0.05  # noise-only and saturated records among them
    prims[junk] = rng.integers(0, 4096, (int(junk.sum()), 6, 32), dtype=np.int16)
    span_ns = draw(st.sampled_from([1e6, 1e8]))
    tau = np.sort(rng.uniform(0.0, span_ns, n))
    same = np.flatnonzero(rng.random(n - 1) < 0.02) + 1
    tau[same] = tau[same - 1]  # equal arrival times (still sorted)
    ticks_per_block = draw(st.sampled_from([0.2, 1.0, 3.0]))
    rate = min(1e9 / (span_ns * BLOCK / n) * ticks_per_block, 1e9)
    menu = menu.replace(
        random=RandomTrigger(draw(st.booleans()), rate),
        beam=BeamTrigger(True, draw(st.integers(1, 7))),  # a menu must enable something
        physics=dataclasses.replace(menu.physics, prescale=draw(st.integers(1, 7))),
        dimuon=dataclasses.replace(menu.dimuon, prescale=draw(st.integers(1, 7))),
        spill_length_s=span_ns * 1e-9 * draw(st.sampled_from([0.5, 1.0])),
        further_lines=draw(lines()),
    )
    cuts = draw(
        st.lists(
            st.one_of(st.sampled_from([1, 7, 8, BLOCK - 1, BLOCK, BLOCK + 1, 2 * BLOCK]), st.integers(1, 3 * BLOCK)),
            min_size=1,
            max_size=5,
        )
    )
    return menu, prims, tau, cuts


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(big_spills(), st.booleans())
def test_blocks_and_chunks_match_reference(s, parallel) -> None:
    """Several blocks, chunked across block boundaries: the waveform entry (chunked, serial or parallel) and
    the amplitude entry equal the reference on the whole spill."""
    menu, prims, tau, cuts = s
    ref = R.waveform_trigger(menu, prims, tau)
    assert_same(chunked(menu, prims, tau, cuts, parallel), ref)
    a, t = R.reconstruct_trigger_channels(menu, prims)
    amp = K.SpillTrigger(menu, parallel=not parallel)
    for s0 in range(0, tau.size, cuts[0]):
        amp.process_amplitudes(a[s0 : s0 + cuts[0]], t[s0 : s0 + cuts[0]], tau[s0 : s0 + cuts[0]], s0)
    assert_same(amp.finish(), ref)
