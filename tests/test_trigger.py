"""The online trigger (issue 4): menu validation, docs/physics.md check 30, edge cases, prescale and random
trigger, chunked == whole spill, parallel == serial, numba == numpy reference, warm-up and cache."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from detector import channels as ch
from detector.config import ConfigError, load_calibration, load_config, validate
from detector.pulse import PEAK_DELAY_NS
from detector.reco import peak_delta, reconstruct_numpy, saturated_amp_low, saturated_fit
from detector.records import TRIGGER_BITS
from trigger import amp as A
from trigger import bounds as B
from trigger import kernels as K
from trigger import reference as R
from trigger.menu import (
    SCALER_KEYS,
    BeamTrigger,
    EnergyTrigger,
    MenuError,
    RandomTrigger,
    TriggerMenu,
    TriggerResult,
    load_menu,
)

PHYS, BEAM, RAND, DIM = (int(TRIGGER_BITS[n]) for n in ("physics", "beam", "random", "dimuon"))


@pytest.fixture(scope="module")
def menu() -> TriggerMenu:
    return TriggerMenu.from_config()


def assert_same(a: TriggerResult, b: TriggerResult) -> None:
    assert a.same_as(b), a.difference(b)


def amp_record(
    menu: TriggerMenu, e_ps: float, e_ecal: float, v1: bool = False, mip: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """One record of amplitudes (ADC counts) and onsets (ns): S1..S3 at ``mip`` MIP in time, V1 in time
    if ``v1``, the sums at the given energies (GeV)."""
    g = menu.gev_per_count
    a = np.array([mip * menu.mip_adc] * 3 + [menu.mip_adc if v1 else 0.0, e_ps / g[4], e_ecal / g[5]])
    t = np.array(menu.t0_ns, dtype=np.float64)
    t[3] = t[3] if v1 else np.nan
    return a, t


# ---------------------------------------------------------------------- menu
def test_menu_from_default_config(menu: TriggerMenu) -> None:
    cal = load_calibration()
    ids = ch.trigger_channel_ids()
    assert menu.gev_per_count == tuple(cal.gev_per_count[ids])
    assert menu.t0_ns == tuple(cal.t0_ns[ids])
    assert menu.pedestal_even == tuple(cal.pedestal_even[ids]) and menu.pedestal_odd == tuple(cal.pedestal_odd[ids])
    assert menu.pedestal_sums == ((480,) * 4 + (640, 640), (500, 500, 500, 472, 608, 608))
    assert menu.counter_threshold_adc == 100.0
    assert (menu.physics.ps_min_gev, menu.physics.ecal_max_gev, menu.beam.prescale) == (0.3, 80.0, 1000)
    assert menu.n_random_ticks == 49  # 10 Hz over 4.8 s: floor(48) + 1 (tick 0)
    d = menu.to_dict()
    json.dumps(d)
    assert d["triggers"]["physics"]["bit"] == PHYS and d["eot_definition"].startswith("PiSi AND NOT V1")
    assert TriggerMenu.from_dict(d) == menu
    assert load_menu(None) == menu


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(beam=BeamTrigger(True, 0)), "prescale"),
        (dict(physics=EnergyTrigger(True, 1, 0.3, 0.2)), "must be below"),
        (dict(dimuon=EnergyTrigger(True, 1, 150.0, 200.0)), "beam energy"),
        (dict(random=RandomTrigger(True, 0.0)), "never fire"),
        (dict(counter_threshold_mip=30.0), "12-bit range"),
        (dict(counter_threshold_mip=0.01), "zero-suppression"),
        (dict(t0_ns=(1000.0,) + (100.0,) * 5), "never be in time"),
        (dict(gev_per_count=(5e-6,) * 4 + (0.0, 0.04)), "never fire"),
        (dict(pedestal_odd=(125.0,) * 5 + (5000.0,)), r"pedestal_odd\[ECAL_SUM\] = 5000.0 must be <= 4095"),
        (dict(pedestal_even=(120.0,) * 5), "one value per trigger channel"),
        (
            dict(
                physics=EnergyTrigger(False),
                beam=BeamTrigger(False),
                random=RandomTrigger(False),
                dimuon=EnergyTrigger(False),
            ),
            "enables no trigger",
        ),
        (dict(window_ns=-1.0), "window_ns"),
        (dict(mip_adc=float("nan")), "finite"),
        (dict(beam=BeamTrigger(True, 2.5)), "integer"),
    ],
)
def test_bad_menus_refused(menu: TriggerMenu, change: dict, match: str) -> None:
    with pytest.raises(MenuError, match=match):
        menu.replace(**change)


def test_bad_config_refused() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'trigger\.menu\.calib'"):
        validate({"trigger": {"menu": {"calib": {"enabled": True}}}})
    with pytest.raises(ConfigError, match="prescale"):
        validate({"trigger": {"menu": {"beam": {"prescale": 0}}}})
    cfg = load_config(None).with_overrides({"trigger": {"menu": {"random": {"rate_hz": 0.0}}}})
    with pytest.raises(MenuError, match="never fire"):
        TriggerMenu.from_config(cfg)
    with pytest.raises(ConfigError, match=r"unknown key 'trigger\.menu\.muon'"):
        load_config(None).with_overrides({"trigger": {"menu": {"muon": {"enabled": True}}}})
    with pytest.raises(MenuError, match="unknown key"):
        TriggerMenu.from_dict({"window_ns": 10.0, "thresholds": 3})


def test_an_earlier_pulse_tail_adds_to_the_trigger_sums(menu: TriggerMenu) -> None:
    """A 100 GeV electron whose sums carry the pulse of another 100 GeV electron 40-200 ns earlier: the
    trigger's ECAL amplitude is at least the electron's (the tail adds, as in the analogue sum; calibrated
    pedestals), so the physics line (E_ECAL < 80 GeV) never fires while PiSi and EOT do. A baseline from
    the record's first samples would read 58-85 GeV for most of these spacings."""
    g = menu.gev_per_count
    dts = np.linspace(40.0, 200.0, 33)
    n = dts.size
    amp = np.tile([menu.mip_adc] * 3 + [0.0, 1.0 / g[4], 100.0 / g[5]], (n, 1))
    ons = np.tile(np.array(menu.t0_ns), (n, 1))
    rec = np.repeat(np.arange(n), 2)
    chan = np.tile([4, 5], n)
    extra = (rec, chan, np.tile([1.0 / g[4], 100.0 / g[5]], n), np.repeat(menu.t0_ns[5] - dts, 2))
    prims = R.synthesize_primitives(amp, ons, extra)
    tau = np.arange(n) * 1e4 + 1.0
    m = menu.replace(beam=BeamTrigger(True, 1))
    got = K.trigger_waveforms(m, prims, tau)
    assert_same(got, R.waveform_trigger(m, prims, tau))
    assert got.scalers["EOT"] == n and got.scalers["physics_raw"] == 0
    a, _ = R.reconstruct_trigger_channels(m, prims)
    assert (a[:, 5] * g[5] > 99.0).all(), a[:, 5] * g[5]
    # the per-record baseline (detector.reco's offline pedestals) on the same records: the flaw this avoids
    low = reconstruct_numpy(prims, np.asarray(g, np.float32)).amplitude[:, 5] * g[5] < 80.0
    assert low.sum() >= n // 2


# ---------------------------------------------------------------------- docs/physics.md check 30
@pytest.mark.parametrize(
    "e_ps, e_ecal, v1, fires",
    [
        (0.5, 40.0, False, True),
        (0.5, 95.0, False, False),
        (0.5, 40.0, True, False),
        (0.2, 40.0, False, False),
    ],
)
def test_check30_amplitude_entry(menu: TriggerMenu, e_ps: float, e_ecal: float, v1: bool, fires: bool) -> None:
    a, t = amp_record(menu, e_ps, e_ecal, v1)
    m = menu.replace(dimuon=dataclasses.replace(menu.dimuon, enabled=False))
    for dt in (np.float32, np.float64):
        r = K.trigger_amplitudes(m, a[None].astype(dt), t[None].astype(dt), np.array([1e6]))
        assert bool(r.scalers["physics_raw"]) is fires
        assert r.scalers["EOT"] == (0 if v1 else 1)
        assert_same(r, R.amplitude_trigger(m, a[None].astype(dt), t[None].astype(dt), np.array([1e6])))


def test_check30_waveform_entry(menu: TriggerMenu) -> None:
    cases = [(0.5, 40.0, False, True), (0.5, 95.0, False, False), (0.5, 40.0, True, False)]
    amps, ons = zip(*(amp_record(menu, e, E, v) for e, E, v, _ in cases))
    prims = R.synthesize_primitives(np.array(amps), np.nan_to_num(np.array(ons), nan=100.0), noise_rms=0.0)
    tau = np.arange(len(cases), dtype=np.float64) * 1e6 + 5e5
    r = K.trigger_waveforms(menu, prims, tau)
    assert_same(r, R.waveform_trigger(menu, prims, tau))
    fired = {int(i) for i, m in zip(r.accepted, r.mask) if m & PHYS}
    assert fired == {i for i, c in enumerate(cases) if c[3]}


# ---------------------------------------------------------------------- edge cases
def test_empty_spill(menu: TriggerMenu) -> None:
    for par in (False, True):
        r = K.trigger_waveforms(menu, np.zeros((0, 6, 32), np.int16), np.zeros(0), parallel=par)
        assert r.accepted.size == 0 and r.accepted.dtype == np.int64 and r.mask.dtype == np.uint8
        assert r.scalers == {**dict.fromkeys(SCALER_KEYS, 0), "random_raw": 49}
        assert_same(r, R.waveform_trigger(menu, np.zeros((0, 6, 32), np.int16), np.zeros(0)))
        ra = K.trigger_amplitudes(menu, np.zeros((0, 6)), np.zeros((0, 6)), np.zeros(0), parallel=par)
        assert_same(ra, r)


def test_all_saturated(menu: TriggerMenu) -> None:
    prims = np.full((40, 6, 32), ch.ADC_MAX, np.int16)
    prims[20:, :, :8] = 150  # pedestals present, the pulse saturates the rest
    prims[30:, :, 28:] = 3000
    tau = np.linspace(0.0, 4.7e9, 40)
    for par in (False, True):
        assert_same(K.trigger_waveforms(menu, prims, tau, parallel=par), R.waveform_trigger(menu, prims, tau))


def test_thresholds_exactly_at_value(menu: TriggerMenu) -> None:
    """Amplitude entry: counter amplitudes and onsets exactly at / one ulp beyond the cuts, sums at the
    smallest float32 amplitude that passes and the one below."""
    thr = menu.counter_threshold_adc
    lo, hi = menu.counter_window_ns(0)
    tha, _ = A.amp_thresholds(menu, np.dtype(np.float32), np.dtype(np.float32))
    ps_at, ec_at = float(tha[1]), float(tha[3])  # physics: ps, ps_not, ec, ec_min (amp_thresholds)
    below = lambda x: float(np.nextafter(np.float32(x), np.float32(-np.inf)))  # noqa: E731
    above = lambda x: float(np.nextafter(np.float32(x), np.float32(np.inf)))  # noqa: E731
    rows, expect = [], []
    for a_s, t_s, a_ps, a_ec, phys in [
        (thr, lo, ps_at, below(ec_at), True),
        (thr, hi, ps_at, 0.0, True),
        (below(thr), 100.0, 50.0, 100.0, False),
        (thr, below(lo), 50.0, 100.0, False),
        (thr, above(hi), 50.0, 100.0, False),
        (thr, 100.0, below(ps_at), 100.0, False),
        (thr, 100.0, 50.0, ec_at, False),
    ]:
        rows.append(([a_s] * 3 + [0.0, a_ps, a_ec], [t_s] * 3 + [np.nan, 100.0, 100.0]))
        expect.append(phys)
    a = np.array([r[0] for r in rows], np.float32)
    t = np.array([r[1] for r in rows], np.float32)
    tau = np.arange(len(rows)) * 1e3 + 1.0
    m = menu.replace(beam=BeamTrigger(True, 1))
    got = K.trigger_amplitudes(m, a, t, tau)
    assert_same(got, R.amplitude_trigger(m, a, t, tau))
    phys = np.zeros(len(rows), bool)
    phys[got.accepted[(got.mask & PHYS) != 0]] = True
    assert phys.tolist() == expect
    # exactly at the cut in float64: E_PS = ps_min is not > ps_min; E_ECAL = ecal_max is not < ecal_max
    g = menu.gev_per_count
    a64 = np.array([[thr] * 3 + [0.0, 0.3 / g[4], 80.0 / g[5]]])
    t64 = np.array([[lo, hi, 100.0, np.nan, 0.0, 0.0]])
    assert_same(K.trigger_amplitudes(m, a64, t64, np.ones(1)), R.amplitude_trigger(m, a64, t64, np.ones(1)))


def test_window_edges_waveform(menu: TriggerMenu) -> None:
    """Noise-free S1..S3 pulses with onsets swept finely across both window edges (and V1 across its
    own): the waveform entry agrees with the numpy reference record by record."""
    lo, hi = menu.counter_window_ns(0)
    t = np.concatenate([np.linspace(lo - 1.5, lo + 1.5, 151), np.linspace(hi - 1.5, hi + 1.5, 151)])
    n = t.size
    amp = np.tile([200.0, 200.0, 200.0, 0.0, 200.0, 1000.0], (n, 1))
    ons = np.tile(np.array(menu.t0_ns), (n, 1))
    ons[:, 0] = t
    ons[::3, 1] = t[::3]
    amp[1::2, 3] = 150.0
    ons[1::2, 3] = t[1::2]
    prims = R.synthesize_primitives(amp, ons, noise_rms=0.0)
    tau = np.arange(n) * 1e4 + 1.0
    m = menu.replace(beam=BeamTrigger(True, 1))
    r = K.trigger_waveforms(m, prims, tau)
    assert_same(r, R.waveform_trigger(m, prims, tau))
    assert 0 < r.scalers["PiSi"] < n


def test_counter_band_waveform(menu: TriggerMenu) -> None:
    """S1..S3 peaks swept across the counter threshold's band (amplitude bounds [best, AMP_BOUND best]
    straddling it: :func:`trigger.wave._decide_sub` decides them on the neighbour ratio), all three counters
    in the band in whole sub-blocks and peaks at both edges of the band and beyond: the waveform entry
    agrees with the numpy reference record by record."""
    from trigger import simd
    from trigger import wave as W
    from trigger.params import pack

    thr = menu.counter_threshold_adc
    rng = np.random.default_rng(5)
    n = 4000
    amp = np.tile([0.0, 0.0, 0.0, 0.0, 200.0, 1000.0], (n, 1))
    amp[:, :3] = rng.uniform(0.7 * thr, 1.35 * thr, (n, 3))
    ons = np.tile(np.array(menu.t0_ns), (n, 1))
    ons[:, :3] += rng.uniform(-2.0, 2.0, (n, 3))
    prims = R.synthesize_primitives(amp, ons, seed=3)
    se, so = menu.pedestal_sums
    gate = np.array(menu.gate_samples)
    q = simd.record_summary_numpy(prims, np.array(se), np.array(so), gate[:, 0], gate[:, 1])[:, :3]
    qt = W._q_thresholds(pack(menu))
    band = (q >= qt[W.T_ZS]) & (q < qt[W.T_THR]) & (q >= qt[W.T_BAND])
    # whole sub-blocks with all three counters in the band first
    order = np.argsort(~band.all(axis=1), kind="stable")
    prims, band, q = prims[order], band[order], q[order]
    assert band[: 2 * W.SUB_BLOCK].all()
    # peaks at the band's edges (the 4x peak's steps are 4: within one step of each edge) and beyond them
    assert q[band].min() < qt[W.T_BAND] + 4 and q[band].max() >= qt[W.T_THR] - 4
    assert (q < qt[W.T_BAND]).any() and (q >= qt[W.T_THR]).any()
    tau = np.arange(n) * 1e3 + 1.0
    m = menu.replace(beam=BeamTrigger(True, 1))
    r = K.trigger_waveforms(m, prims, tau)
    assert_same(r, R.waveform_trigger(m, prims, tau))
    # the band decides both ways for every counter
    for c, name in enumerate(("S1", "S2", "S3")):
        assert 0 < r.scalers[name] - int((q[:, c] >= qt[W.T_THR]).sum()) < int(band[:, c].sum())


def test_line_range_tests_equal_the_bounds_verdict(menu: TriggerMenu) -> None:
    """trigger.wave._inside_q (two range tests on the integer thresholds, a sum below zs as the peak 0)
    gives _inside's verdict on the amplitude bounds for every 4x peak within 12 of each
    threshold and of zs, saturated or not, for cuts above, below and around 0 GeV and absent ones; a gain
    that is not finite is refused."""
    from trigger import wave as W
    from trigger.params import pack

    zs = menu.zs_threshold_adc
    cuts = [(0.3, math.inf), (-math.inf, 80.0), (-math.inf, 60.0), (2.0, 6.0), (-1.0, 5.0), (-2.0, -1.0), (20.0, 95.0)]
    params = pack(menu).copy()
    n_checked = 0
    for g in (0.008, 0.04, 1e-5):
        for gt, lt in cuts:
            params["gev_ps"] = g
            ln = params["lines"][0, 0]
            ln["ps_gt"], ln["ps_lt"] = gt, lt
            qt = W._q_thresholds(params)
            t = [int(x) for x in qt[W.T_LINE0 : W.T_LINE0 + 4]]
            w1, w3 = W._q_widths(*t)
            tzs = int(qt[W.T_ZS])
            edges = [tzs] + [x for x in t if abs(x) < 1 << 20]
            for q in sorted({e + d for e in edges for d in range(-12, 13)}):
                lo, hi = B._amp_bounds(q, zs)
                want = W._inside(lo, hi, g, gt, lt)
                for sat in (False, True):
                    one, und, zero = W._inside_q(np.int32(q), sat, tzs, t[0], w1, t[2], w3)
                    got = 2 if und else (1 if one else (0 if zero else -1))
                    assert got == (2 if sat else want), (g, gt, lt, q, sat)
                    n_checked += 1
    assert n_checked > 2000
    params["gev_ps"] = math.inf
    with pytest.raises(ValueError, match="amplitude 0"):
        W._q_thresholds(params)


def test_v1_band_waveform(menu: TriggerMenu) -> None:
    """V1's peak swept across the counter threshold's band in PiSi records (trigger.wave._decide_sub decides
    it on the neighbour ratio at V1's peak sample, found there), in time and out of its window: V1's scaler
    and EOT agree with the numpy reference record by record, and the band decides both ways."""
    from trigger import simd
    from trigger import wave as W
    from trigger.params import pack

    thr = menu.counter_threshold_adc
    rng = np.random.default_rng(6)
    n = 3000
    amp = np.tile([300.0, 300.0, 300.0, 0.0, 200.0, 1000.0], (n, 1))
    amp[:, 3] = rng.uniform(0.7 * thr, 1.35 * thr, n)
    ons = np.tile(np.array(menu.t0_ns), (n, 1))
    ons[:, 3] += np.where(rng.random(n) < 0.3, rng.uniform(-40.0, 40.0, n), rng.uniform(-2.0, 2.0, n))
    prims = R.synthesize_primitives(amp, ons, seed=4)
    se, so = menu.pedestal_sums
    gate = np.array(menu.gate_samples)
    q = simd.record_summary_numpy(prims, np.array(se), np.array(so), gate[:, 0], gate[:, 1])[:, 3]
    qt = W._q_thresholds(pack(menu))
    band = (q >= qt[W.T_ZS]) & (q < qt[W.T_THR]) & (q >= qt[W.T_BAND])
    assert band.sum() > 1000
    # peaks at the band's edges (the 4x peak's steps are 4: within one step of each edge) and beyond them
    assert q[band].min() < qt[W.T_BAND] + 4 and q[band].max() >= qt[W.T_THR] - 4
    assert (q < qt[W.T_BAND]).any() and (q >= qt[W.T_THR]).any()
    tau = np.arange(n) * 1e3 + 1.0
    m = menu.replace(beam=BeamTrigger(True, 1))
    ref = R.waveform_trigger(m, prims, tau)
    assert_same(K.trigger_waveforms(m, prims, tau), ref)
    assert 0 < ref.scalers["V1"] - int((q >= qt[W.T_THR]).sum()) < int(band.sum())
    assert 0 < ref.scalers["PiSi"] - ref.scalers["EOT"] < ref.scalers["V1"]


def test_window_table_decisions(menu: TriggerMenu) -> None:
    """The per-(counter, peak sample) ratio bounds, compared as ``diff`` against ``best * r`` (no
    division), decide the window exactly like the onset computed from ``diff / best``, also for integer
    differences one count either side of every crossing."""
    tab = B.window_table(menu)
    rng = np.random.default_rng(0)
    for c in range(3):
        lo, hi = menu.counter_window_ns(c)
        for k in range(1, ch.N_SAMPLES - 1):
            best = rng.integers(40, 4 * 4095, 400) * 0.25  # pedestal-subtracted peaks: quarter counts
            diff = [np.rint(rng.uniform(B.XP[0] - 0.1, B.XP[-1] + 0.1, best.size) * best)]
            bb = [best]
            for x in tab[c, k]:
                if np.isfinite(x):
                    for step in (-1.0, 0.0, 1.0, 2.0):
                        diff.append(np.floor(x * best) + step)
                        bb.append(best)
            diff, bb = np.concatenate(diff), np.concatenate(bb)
            onset = B._onset32(np.full(diff.size, k), diff / bb)
            inside = (onset >= lo) & (onset <= hi)
            d = np.array([B._window(tab, c, k, x, b) for x, b in zip(diff, bb)])
            assert np.all((d == 2) | ((d == 1) == inside)), (c, k)
            assert np.mean(d == 2) < 0.01


def test_amplitude_range_contains_the_reconstructed_amplitude() -> None:
    """``_amp_range`` (the neighbour-ratio table) bounds the float32 amplitude of the template fit, for
    every peak sample, ratios across and beyond the peak table, and peaks from the zero-suppression
    threshold to full scale; its bounds are within 0.05% of each other."""
    rng = np.random.default_rng(4)
    n = 4000
    p = np.zeros((n, 6, ch.N_SAMPLES), np.int16)
    k = rng.integers(0, ch.N_SAMPLES, n)
    peak = rng.integers(10, 4000, n)
    ped = rng.integers(0, 60, n)
    p[:, 0, :] = ped[:, None]
    r = rng.uniform(B.XP[0] - 0.3, B.XP[-1] + 0.3, n)  # (w[k+1] - w[k-1]) / best
    side = np.clip(rng.uniform(0.2, 0.9, n) * peak, 0, None)
    wm = np.rint(ped + side - 0.5 * r * peak)
    wp = np.rint(ped + side + 0.5 * r * peak)
    ok = (wm - ped < peak) & (wp - ped < peak)  # the peak stays the maximum
    rows = np.arange(n)
    p[rows, 0, k] = ped + peak
    p[rows[k > 0], 0, k[k > 0] - 1] = np.where(ok, wm, ped)[k > 0]
    p[rows[k < ch.N_SAMPLES - 1], 0, k[k < ch.N_SAMPLES - 1] + 1] = np.where(ok, wp, ped)[k < ch.N_SAMPLES - 1]
    width = []
    for i in range(n):
        se = so = 4 * int(ped[i])  # the record's pedestal, as the trigger's calibrated one
        kk, s4 = B._keymax(p, i, 0, se, so, 0, ch.N_SAMPLES - 1)
        if s4 * 0.25 < 10.0:
            continue
        lo, hi = B._amp_range(p, i, 0, kk, s4)
        wmm, wpp = B._neighbours(p, i, 0, kk)
        _, amp = B._time_amp(kk, s4, se * 0.25, so * 0.25, wmm, wpp, True)
        assert lo <= amp <= hi, (i, lo, amp, hi)
        width.append(hi / lo - 1.0)
    assert len(width) > n // 2 and max(width) < 5e-4


def test_interp_is_numpy_interp() -> None:
    rng = np.random.default_rng(1)
    xp = B.XP
    x = np.concatenate(
        [
            rng.uniform(xp[0] - 0.2, xp[-1] + 0.2, 20000),
            xp,
            np.nextafter(xp, -np.inf),
            np.nextafter(xp, np.inf),
            [np.inf, -np.inf],
        ]
    )
    got = np.array([peak_delta(v) for v in x])
    assert np.array_equal(got, np.interp(x, B.XP, B.FP))


# ---------------------------------------------------------------------- prescale, random trigger
def test_prescale_counts_exact(menu: TriggerMenu) -> None:
    n = 5000
    rng = np.random.default_rng(3)
    a = np.tile([200.0, 200.0, 200.0, 0.0, 100.0, 500.0], (n, 1))  # PiSi, E_PS 0.8, E_ECAL 20 GeV
    a[rng.random(n) < 0.3, 0] = 0.0  # 30% no PiSi
    t = np.tile(np.array(menu.t0_ns), (n, 1))
    tau = np.sort(rng.uniform(0, 4e9, n))
    m = menu.replace(
        beam=BeamTrigger(True, 7),
        physics=EnergyTrigger(True, 13, 0.3, 80.0),
        dimuon=EnergyTrigger(True, 1, 0.3, 60.0),
        random=RandomTrigger(False, 10.0),
    )
    r = K.trigger_amplitudes(m, a, t, tau)
    assert_same(r, R.amplitude_trigger(m, a, t, tau))
    pisi = np.flatnonzero(a[:, 0] > 0)
    s = r.scalers
    assert s["beam_raw"] == s["physics_raw"] == s["dimuon_raw"] == s["PiSi"] == s["EOT"] == pisi.size
    assert s["beam_accepted"] == pisi.size // 7 and s["physics_accepted"] == pisi.size // 13
    assert s["dimuon_accepted"] == pisi.size
    assert np.array_equal(r.accepted[(r.mask & BEAM) != 0], pisi[6::7])
    assert np.array_equal(r.accepted[(r.mask & PHYS) != 0], pisi[12::13])


@pytest.mark.parametrize("rate, length", [(10.0, 4.8), (3.0, 4.8), (7.0, 1.0)])
def test_random_tick_count(menu: TriggerMenu, rate: float, length: float) -> None:
    m = menu.replace(random=RandomTrigger(True, rate), spill_length_s=length)
    n_ticks = math.floor(rate * length) + 1
    assert m.n_random_ticks == n_ticks
    ticks = np.array([m.random_tick_ns(j) for j in range(n_ticks + 2)])
    # three records after every tick (also beyond the last tick's window): one accept per tick
    tau = np.sort(np.concatenate([ticks, ticks + 1.0, ticks + 2e6]))
    n = tau.size
    a = np.zeros((n, 6))  # no counter fires
    t = np.full((n, 6), np.nan)
    r = K.trigger_amplitudes(m, a, t, tau)
    assert_same(r, R.amplitude_trigger(m, a, t, tau))
    assert r.scalers["random_raw"] == n_ticks and r.scalers["random_accepted"] == n_ticks
    assert np.array_equal(tau[r.accepted], ticks[:n_ticks])
    # a tick whose first record comes after the next tick accepts nothing: ticks 0, 1, 2 -> 2 accepts
    period = m.random_tick_ns(1)
    late = np.array([0.5, 2.6]) * period
    r = K.trigger_amplitudes(m, np.zeros((2, 6)), np.full((2, 6), np.nan), late)
    assert_same(r, R.amplitude_trigger(m, np.zeros((2, 6)), np.full((2, 6), np.nan), late))
    assert r.accepted.tolist() == [0, 1] and r.scalers["random_accepted"] == 2


# ---------------------------------------------------------------------- numba == numpy, chunked, parallel
@pytest.fixture(scope="module")
def spill(menu: TriggerMenu) -> tuple[np.ndarray, np.ndarray]:
    return R.electron_spill(menu, 6000, seed=11, spill_ns=6000 * 960.0)


def test_waveform_numba_equals_numpy(menu: TriggerMenu, spill: tuple[np.ndarray, np.ndarray]) -> None:
    prims, tau = spill
    m = menu.replace(beam=BeamTrigger(True, 17), random=RandomTrigger(True, 2000.0))
    ref = R.waveform_trigger(m, prims, tau)
    assert ref.scalers["physics_accepted"] > 50 and ref.scalers["V1"] > 100 and ref.scalers["random_accepted"] > 5
    assert_same(K.trigger_waveforms(m, prims, tau), ref)
    # the amplitude entry on the reference reconstruction: the same decisions, any layout / dtype
    amp, ons = R.reconstruct_trigger_channels(m, prims)
    assert_same(K.trigger_amplitudes(m, amp, ons, tau), ref)
    assert_same(K.trigger_amplitudes(m, np.asfortranarray(amp), np.asfortranarray(ons), tau), ref)
    assert_same(K.trigger_amplitudes(m, amp.astype(np.float64), ons.astype(np.float64), tau), ref)
    assert_same(
        K.trigger_amplitudes(m, amp.astype(">f4"), ons, tau.astype(np.float32).astype(np.float64)),
        R.amplitude_trigger(m, amp, ons, tau.astype(np.float32).astype(np.float64)),
    )


@pytest.mark.parametrize("chunk", [1, 7, 1000, 1024, 2500])
def test_chunked_equals_whole(menu: TriggerMenu, spill: tuple[np.ndarray, np.ndarray], chunk: int) -> None:
    prims, tau = spill
    n = 3000 if chunk > 1 else 1100
    prims, tau = prims[:n], tau[:n]
    m = menu.replace(beam=BeamTrigger(True, 5), random=RandomTrigger(True, 3000.0))
    whole = K.trigger_waveforms(m, prims, tau)
    amp, ons = R.reconstruct_trigger_channels(m, prims)
    for par in (False, True):
        st, sa = K.SpillTrigger(m, parallel=par), K.SpillTrigger(m, parallel=par)
        parts = []
        for s in range(0, n, chunk):
            parts.append(st.process(prims[s : s + chunk], tau[s : s + chunk], s)[0])
            sa.process_amplitudes(amp[s : s + chunk], ons[s : s + chunk], tau[s : s + chunk], s)
        r = st.finish()
        assert_same(r, whole)
        assert_same(sa.finish(), whole)
        assert np.array_equal(np.concatenate(parts), whole.accepted)


def test_parallel_equals_serial(menu: TriggerMenu, spill: tuple[np.ndarray, np.ndarray]) -> None:
    prims, tau = spill
    m = menu.replace(beam=BeamTrigger(True, 3))
    assert_same(K.trigger_waveforms(m, prims, tau, parallel=True), K.trigger_waveforms(m, prims, tau))
    amp, ons = R.reconstruct_trigger_channels(m, prims)
    assert_same(K.trigger_amplitudes(m, amp, ons, tau, parallel=True), K.trigger_amplitudes(m, amp, ons, tau))


def _garbage_scratch(records: int) -> None:
    """Leave one work-array set (trigger.kernels._Scratch) of every byte 0xFF, for ``records`` records of
    up to two bit planes, as the only free one: whatever a chunk does not write itself shows."""
    K._SCRATCH.clear()
    s = K._Scratch()
    s.views(2, records, records // 1024 + 1, 8 * 2 + 1, 16)
    for a in (s.bits, s.amask, s.cnt, s.acc):
        a.view(np.uint8)[:] = 0xFF
    K._SCRATCH.append(s)


def test_reused_work_arrays_give_the_results_of_fresh_ones(
    menu: TriggerMenu, spill: tuple[np.ndarray, np.ndarray]
) -> None:
    """The work arrays of passes A and B are reused across calls (grow-only, shared by every SpillTrigger):
    calls on other records, a smaller call after a larger one, a menu with two bit planes after one with
    one, the amplitude entry after the waveform entry, and two spills whose chunks alternate all give the
    results of calls into new arrays (here left full of 0xFF bytes), and a later call changes no array an
    earlier one returned."""
    from trigger.params import n_planes

    prims, tau = spill
    m1 = menu.replace(beam=BeamTrigger(True, 1), random=RandomTrigger(True, 3000.0))
    line = dataclasses.replace(menu.energy_lines[0][1], prescale=3)
    m2 = menu.replace(beam=BeamTrigger(True, 7), further_lines=(("x1", line),))
    assert n_planes(m1) == 1 and n_planes(m2) == 2
    cases = [
        (m1, prims, tau),
        (m2, prims[1000:2500], tau[1000:2500] - tau[1000]),  # smaller, other records, two planes
        (m1, prims[4000:4100], tau[4000:4100]),
        (m2, prims, tau),
    ]
    fresh = []
    for m, p, t in cases:
        _garbage_scratch(p.shape[0])
        fresh.append(K.trigger_waveforms(m, p, t))
    assert fresh[0].scalers["beam_accepted"] > 1000 and fresh[3].scalers["x1_accepted"] > 0
    K._SCRATCH.clear()
    got = [K.trigger_waveforms(m, p, t) for m, p, t in cases]
    kept = [(r.accepted.copy(), r.mask.copy()) for r in got]
    for r, f in zip(got, fresh):
        assert_same(r, f)
    amp, ons = R.reconstruct_trigger_channels(m2, prims)
    assert_same(K.trigger_amplitudes(m2, amp, ons, tau), fresh[3])
    # two spills, their chunks in turn (the one free work-array set goes back and forth)
    sa, sb = K.SpillTrigger(m1), K.SpillTrigger(m2)
    for s in range(0, 3000, 600):
        sa.process(prims[s : s + 600], tau[s : s + 600], s)
        sb.process(prims[s + 3000 : s + 3600], tau[s + 3000 : s + 3600], s)
    assert_same(sa.finish(), K.trigger_waveforms(m1, prims[:3000], tau[:3000]))
    assert_same(sb.finish(), K.trigger_waveforms(m2, prims[3000:], tau[3000:]))
    for r, (idx, mask) in zip(got, kept):
        assert np.array_equal(r.accepted, idx) and np.array_equal(r.mask, mask)


def test_rare_records_at_every_position_of_a_sub_block(menu: TriggerMenu) -> None:
    """The records the common path leaves to a scalar loop (a saturated counter: the general path) are
    taken from the set bits of a word per sub-block: at each of its 64 positions alone, in full
    sub-blocks, at the first and last one, and in a short last sub-block: the decisions of the numpy
    reference, record by record."""
    from trigger import wave as W

    base, _ = R.electron_spill(menu, 4 * W.SUB_BLOCK + 5, seed=21, spill_ns=3e6)
    n = base.shape[0]
    sat = np.zeros(n, bool)
    sat[np.arange(W.SUB_BLOCK) * (W.SUB_BLOCK + 1) % (2 * W.SUB_BLOCK)] = True  # each position once
    sat[2 * W.SUB_BLOCK : 3 * W.SUB_BLOCK] = True  # a whole sub-block
    sat[[3 * W.SUB_BLOCK, 4 * W.SUB_BLOCK - 1, n - 1]] = True
    prims = base.copy()
    prims[sat, 0, 10] = ch.ADC_MAX  # S1 saturates in its gate
    tau = np.arange(n) * 1e3 + 1.0
    m = menu.replace(beam=BeamTrigger(True, 1))
    ref = R.waveform_trigger(m, prims, tau)
    assert 0 < ref.scalers["PiSi"] < n and ref.scalers["S1"] >= sat.sum()
    assert_same(K.trigger_waveforms(m, prims, tau), ref)


def test_energy_lines_in_their_bands_and_saturated_sums(menu: TriggerMenu) -> None:
    """PiSi records decided but for an energy line (trigger.wave._line_path): the ECAL sum swept across both
    lines' cuts within AMP_BOUND (44-88 GeV against 60 and 80), the PS sum across its 0.3 GeV cut, saturated
    sums (large pulses, and small ones with one saturated sample, whose peak bounds nothing), with and
    without V1 (the lines' veto): the decisions of the numpy reference, record by record, both ways for both
    lines."""
    rng = np.random.default_rng(8)
    n = 3000
    g = menu.gev_per_count
    amp = np.zeros((n, 6))
    amp[:, :3] = 300.0
    amp[:, 3] = np.where(rng.random(n) < 0.3, 300.0, 0.0)
    amp[:, 4] = np.where(rng.random(n) < 0.3, rng.uniform(0.2, 0.4, n), 0.5) / g[4]
    amp[:, 5] = rng.uniform(44.0, 88.0, n) / g[5]
    amp[rng.random(n) < 0.1, 5] = 6000.0  # saturates
    amp[rng.random(n) < 0.05, 4] = 6000.0
    spike = rng.random(n) < 0.05  # a 30 GeV pulse with one saturated sample in the gate: its peak says
    amp[spike, 5] = 30.0 / g[5]  # 157 GeV, the saturated fit about 30
    ons = np.tile(np.array(menu.t0_ns), (n, 1))
    prims = R.synthesize_primitives(amp, ons, seed=9)
    gate = menu.gate_samples[5]
    prims[spike, 5, rng.integers(gate[0], gate[1] + 1, int(spike.sum()))] = ch.ADC_MAX
    assert (R.reconstruct_trigger_channels(menu, prims[spike])[0][:, 5] * g[5] < 40.0).mean() > 0.7
    tau = np.arange(n) * 1e3 + 1.0
    ref = R.waveform_trigger(menu, prims, tau)
    for name in ("physics", "dimuon"):
        assert 300 < ref.scalers[f"{name}_raw"] < ref.scalers["EOT"] - 300
    assert ref.scalers["physics_raw"] - ref.scalers["dimuon_raw"] > 300  # ECAL 60-80 GeV
    assert_same(K.trigger_waveforms(menu, prims, tau), ref)


def test_saturated_sum_lower_bound_at_the_ecal_cuts(menu: TriggerMenu) -> None:
    """A saturated ECAL sum decided on its lower bound (trigger.bounds._sat_amp_low: the saturated fit's
    amplitude v1 / template(d) is at least v1, the first sample of its closed form's pair): v1 swept in
    counts across each line's ECAL cut (80 and 60 GeV), the next sample putting the fitted onset where v1
    is the template's peak (amplitude = v1 to 1e-6), so that the records one count below a cut fire the line
    and those at or above it do not, record by record as the numpy reference decides them (a bound one
    count higher decides the first wrongly). The bound is v1 on these records and never exceeds the fit."""
    rng = np.random.default_rng(12)
    g = menu.gev_per_count
    ecal = 5
    j_lo, j1 = menu.gate_samples[ecal]
    se, so = (x[ecal] * 0.25 for x in menu.pedestal_sums)
    ped = np.where(np.arange(ch.N_SAMPLES) % 2 == 0, se, so)
    ratio = (1.0 + ch.SAMPLE_NS / PEAK_DELAY_NS) ** 2 * math.exp(-ch.SAMPLE_NS / 12.0)  # d = 24 ns
    cuts = [menu.physics.ecal_max_gev / g[ecal], menu.dimuon.ecal_max_gev / g[ecal]]  # counts
    steps = np.arange(-6, 7)
    reps = 8
    n = len(cuts) * steps.size * reps
    amp = np.zeros((n, 6))
    amp[:, :3] = menu.mip_adc
    amp[:, 4] = 1.0 / g[4]  # PS above its cut
    ons = np.tile(np.array(menu.t0_ns), (n, 1))
    prims = R.synthesize_primitives(amp, ons, seed=13)
    v1 = np.floor(np.repeat(cuts, steps.size * reps) + ped[j1]) + np.tile(np.repeat(steps, reps), len(cuts))
    v1 = v1 - ped[j1]
    w = prims[:, ecal]
    w[:, j1 - 1] = ch.ADC_MAX  # the plateau: one sample in the gate, its last one next
    w[:, j1] = v1 + ped[j1]
    w[:, j1 + 1] = np.rint(ratio * v1 + ped[j1 + 1])
    w[:, j_lo : j1 - 1] = np.minimum(w[:, j_lo : j1 - 1], ch.ADC_MAX - 1)
    w[:, j1 + 2 :] += rng.integers(-1, 2, (n, ch.N_SAMPLES - j1 - 2)).astype(np.int16)
    a = R.reconstruct_trigger_channels(menu, prims)[0][:, ecal].astype(np.float64)
    low = np.array([B._sat_amp_low(prims, i, ecal, menu.zs_threshold_adc, 4 * se, 4 * so, j_lo, j1,
                                   int(np.max(4 * (prims[i, ecal, j_lo : j1 + 1] - ped[j_lo : j1 + 1]))))
                    for i in range(n)])  # fmt: skip
    assert np.array_equal(low, v1) and np.all(a >= low) and np.all(a - v1 < 1e-6 * v1)
    tau = np.arange(n) * 1e3 + 1.0
    ref = R.waveform_trigger(menu, prims, tau)
    mask = np.zeros(n, np.int64)
    mask[ref.accepted] = ref.mask.astype(np.int64)  # prescale 1: accepted = fired
    for cut, bit in zip(cuts, (PHYS, DIM)):
        near = np.abs(v1 - cut) <= 6.5
        fired = (mask & bit) != 0
        assert np.array_equal(fired[near], v1[near] < cut)  # the reference: v1 below the cut fires
        assert ((v1 < cut) & (v1 >= cut - 1) & near).sum() >= reps  # one count below the cut
    assert_same(K.trigger_waveforms(menu, prims, tau), ref)


def test_saturated_amp_low_never_exceeds_the_fit() -> None:
    """detector.reco.saturated_amp_low against saturated_fit's float32 amplitude, on a grid of the closed
    form's pair (v1 from below zs to 4000 counts, v2 / v1 from -0.1 to 3: onsets on both sides of the
    template's peak, where 1 / template = 1, and the cases where the closed form does not apply), with the
    plateau before and after the pair: the bound holds everywhere, and is v1 where the fit applies."""
    pe, po, zs = 100.25, 97.5, 10.0
    ped = np.where(np.arange(ch.N_SAMPLES) % 2 == 0, pe, po)
    ratio_peak = (1.0 + ch.SAMPLE_NS / PEAK_DELAY_NS) ** 2 * math.exp(-ch.SAMPLE_NS / 12.0)
    ratios = np.concatenate([np.linspace(-0.1, 3.0, 157), ratio_peak * (1.0 + np.linspace(-1e-3, 1e-3, 41))])
    n_fit = 0
    for v1_raw in (105, 110, 111, 150, 700, 1999, 2100, 3999):
        for r in ratios:
            for after in (True, False):
                w = np.rint(ped).astype(np.int16)
                if after:  # plateau 9..10, the pair 11, 12
                    j1, j_lo, j_hi = 11, 8, 11
                    w[9:11] = ch.ADC_MAX
                else:  # plateau to the end: the pair before it, 27, 28
                    j1, j_lo, j_hi = 27, 26, 31
                    w[29:] = ch.ADC_MAX
                w[j1] = v1_raw
                w[j1 + 1] = min(int(np.rint(r * (v1_raw - ped[j1]) + ped[j1 + 1])), ch.ADC_MAX - 1)
                best = float(np.max(w[j_lo : j_hi + 1] - ped[j_lo : j_hi + 1]))
                a = float(np.float32(saturated_fit(w, pe, po, zs, best, 0.0, j_lo, j_hi)[0]))
                low = saturated_amp_low(w, pe, po, zs, best, j_lo, j_hi)
                assert low <= a, (v1_raw, r, after)
                v1 = v1_raw - ped[j1]
                if a != best:  # the closed form applied
                    n_fit += 1
                    assert low == min(v1, best)
    assert n_fit > 2000


# ---------------------------------------------------------------------- API behaviour
def test_bad_input_refused(menu: TriggerMenu, spill: tuple[np.ndarray, np.ndarray]) -> None:
    prims, tau = spill[0][:50], spill[1][:50]
    with pytest.raises(ValueError, match="int16"):
        K.trigger_waveforms(menu, prims.astype(np.int32), tau)
    with pytest.raises(ValueError, match="arrival times"):
        K.trigger_waveforms(menu, prims, tau[:-1])
    with pytest.raises(ValueError, match="shape"):
        K.trigger_amplitudes(menu, np.zeros((5, 5)), np.zeros((5, 5)), np.zeros(5))
    with pytest.raises(ValueError, match="float"):
        K.trigger_amplitudes(menu, np.zeros((5, 6), int), np.zeros((5, 6)), np.zeros(5))
    bad = tau.copy()
    bad[20] = bad[19] - 1.0
    for fn in (lambda: K.trigger_waveforms(menu, prims, bad), lambda: R.waveform_trigger(menu, prims, bad)):
        with pytest.raises(ValueError, match="record 20"):
            fn()
    bad[20] = np.nan
    with pytest.raises(ValueError, match="non-decreasing and not NaN"):
        K.trigger_waveforms(menu, prims, bad, parallel=True)
    st = K.SpillTrigger(menu)
    st.process(prims[:10], tau[:10], 0)
    with pytest.raises(ValueError, match="expected 10"):
        st.process(prims[20:30], tau[20:30], 20)
    with pytest.raises(ValueError, match="record 10"):  # a chunk going back in time
        st.process(prims[10:20], tau[:10], 10)
    st.process(prims[10:20], tau[10:20], 10)  # the failed chunk left no trace
    r = st.finish()
    assert_same(r, K.trigger_waveforms(menu, prims[:20], tau[:20]))
    with pytest.raises(RuntimeError, match="finish"):
        st.process(prims[20:30], tau[20:30], 20)


def test_scalers_with_crate(menu: TriggerMenu) -> None:
    a, t = amp_record(menu, 0.5, 40.0)
    r = K.trigger_amplitudes(menu, a[None], t[None], np.ones(1))
    merged = r.scalers_with({"S0": 3080000, "S1": 3100000, "V0": 390000.0})
    assert merged["S0"] == 3080000 and merged["V0"] == 390000
    assert merged["S1"] == 1 and merged["crate_S1"] == 3100000
    assert merged["EOT"] == r.eot == 1
    assert r.triggers()["physics"] == {"raw": 1, "accepted": 1}
    for bad in ({"S0": -1}, {"V0": 1.5}, {"S0": "many"}, {"S0": float("nan")}):
        with pytest.raises(ValueError, match="crate scaler"):
            r.scalers_with(bad)


def test_warm_up_and_cache() -> None:
    K.warm_up()  # compiles (or loads) every kernel and fills the cache
    code = (
        "import json; from numba.core.dispatcher import Dispatcher; import trigger.kernels as K; K.warm_up(); "
        "d = [v for v in vars(K).values() if isinstance(v, Dispatcher)]; "
        "print(json.dumps([sum(sum(v.stats.cache_hits.values()) for v in d), "
        "sum(sum(v.stats.cache_misses.values()) for v in d)]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=600)
    hits, misses = json.loads(out.stdout.strip().splitlines()[-1])
    # loaded from the on-disk cache: no compilation in a fresh process
    assert misses == 0 and hits > 0, out.stdout


# ---------------------------------------------------------------------- the energy gate (issue 18)
def _one_event(menu: TriggerMenu, later_ns: float, later_ecal_gev: float, seed: int = 3) -> np.ndarray:
    """One record: an in-time electron (S1..S3 1 MIP, E_PS 2 GeV, E_ECAL 30 GeV at the nominal onsets)
    and a second particle ``later_ns`` after it (3 GeV in the PS, ``later_ecal_gev`` in the ECAL sum, 0.8 MIP
    in the counters when it is more than 50 ns away: closer, it would move their onsets)."""
    g = np.asarray(menu.gev_per_count)
    t0 = np.asarray(menu.t0_ns)
    amp = np.array([[menu.mip_adc] * 3 + [0.0, 2.0 / g[4], 30.0 / g[5]]])
    mip = 0.8 * menu.mip_adc if abs(later_ns) > 50.0 else 0.0
    later = np.array([mip] * 3 + [0.0, 3.0 / g[4], later_ecal_gev / g[5]])
    extra = (np.zeros(6, np.int64), np.arange(6), later, t0 + later_ns)
    return R.synthesize_primitives(amp, t0[None, :], extra, seed=seed)


@pytest.mark.parametrize(
    "later_ns, gate_ns, physics",
    [
        (200.0, 50.0, 1),  # a 100 GeV particle 200 ns later: outside the gate, the electron triggers
        (200.0, 800.0, 0),  # the gate is the whole record: its ECAL peak (> 80 GeV) vetoes the event
        (10.0, 50.0, 0),  # 10 ns later: inside the gate, the analogue sums add up
        (-200.0, 50.0, 1),  # 200 ns earlier: only its tail (< 1e-3 of it) reaches the gate
    ],
)
def test_energy_gate_second_particle(menu: TriggerMenu, later_ns: float, gate_ns: float, physics: int) -> None:
    m = menu.replace(energy_gate_ns=gate_ns)
    prims = _one_event(m, later_ns, 100.0)
    tau = np.zeros(1)
    ref = R.waveform_trigger(m, prims, tau)
    assert ref.scalers["EOT"] == 1
    assert ref.scalers["physics_raw"] == physics
    assert K.trigger_waveforms(m, prims, tau).same_as(ref)
    assert K.trigger_waveforms(m, prims, tau, parallel=True).same_as(ref)
    a, t = R.reconstruct_trigger_channels(m, prims)
    assert K.trigger_amplitudes(m, a, t, tau).same_as(ref)
    e_ecal = float(a[0, 5]) * m.gev_per_count[5]
    assert (e_ecal < 80.0) == bool(physics)
    if physics:  # the electron's own energy, within the noise
        assert e_ecal == pytest.approx(30.0, abs=0.3)


def test_energy_gate_samples_and_validation(menu: TriggerMenu) -> None:
    # default: nominal peak 100 + 24 ns, +/- 25 ns -> samples 8 (100 ns) .. 11 (137.5 ns); counters +/- 20 ns
    # -> 9 (112.5 ns) .. 11
    assert menu.energy_gate_ns == load_config(None).trigger.energy_gate_ns
    assert menu.gate_samples == ((9, 11),) * 4 + ((8, 11),) * 2
    assert menu.replace(energy_gate_ns=25.0).gate_samples[4:] == ((9, 10),) * 2  # 111.5 .. 136.5 ns
    assert menu.replace(energy_gate_ns=1000.0, counter_gate_ns=1000.0).gate_samples == ((0, 31),) * 6
    assert TriggerMenu.from_dict(menu.to_dict()) == menu
    with pytest.raises(MenuError, match="energy gate of PS_SUM"):
        menu.replace(energy_gate_ns=10.0, t0_ns=(100.0,) * 4 + (101.0, 100.0))  # 120 .. 130 ns: sample 10 only
    with pytest.raises(MenuError, match="energy_gate_ns"):
        menu.replace(energy_gate_ns=0.0)
    with pytest.raises(ConfigError, match="energy_gate_ns"):
        validate({"trigger": {"energy_gate_ns": 12.0}}, "test")


# ---------------------------------------------------------------------- the counter gate (issue 18)
@pytest.mark.parametrize("ecal_gev, physics", [(30.0, 1), (100.0, 0)])
@pytest.mark.parametrize("gate_ns, in_time", [(40.0, 1), (800.0, 0)])
def test_counter_gate_later_larger_counter_pulse(
    menu: TriggerMenu, ecal_gev: float, physics: int, gate_ns: float, in_time: int
) -> None:
    """A 100 GeV beam electron in time (S1..S3 1 MIP, 2 GeV in the PS, ``ecal_gev`` in the ECAL: 30 GeV is
    an A' candidate, 100 GeV a clean electron) and a second particle 200 ns later with LARGER counter
    pulses (3 MIP) and 100 GeV in the ECAL. With the counter gate the in-time pulses make PiSi, EOT and
    (for 30 GeV) the physics trigger; with a gate spanning the whole record the later pulses are the
    counters' peaks, their onsets outside the coincidence window: nothing in time. The counter scalers
    count the record either way. Reference and kernels agree."""
    m = menu.replace(counter_gate_ns=gate_ns)
    g = np.asarray(m.gev_per_count)
    t0 = np.asarray(m.t0_ns)
    amp = np.array([[m.mip_adc] * 3 + [0.0, 2.0 / g[4], ecal_gev / g[5]]])
    later = np.array([3.0 * m.mip_adc] * 3 + [0.0, 3.0 / g[4], 100.0 / g[5]])
    prims = R.synthesize_primitives(amp, t0[None, :], (np.zeros(6, np.int64), np.arange(6), later, t0 + 200.0), seed=5)
    tau = np.zeros(1)
    ref = R.waveform_trigger(m, prims, tau)
    assert [ref.scalers[k] for k in ("S1", "S2", "S3", "V1")] == [1, 1, 1, 0]
    assert ref.scalers["PiSi"] == in_time and ref.scalers["EOT"] == in_time
    assert ref.scalers["physics_raw"] == physics * in_time
    assert ref.scalers["beam_raw"] == in_time
    assert K.trigger_waveforms(m, prims, tau).same_as(ref), K.trigger_waveforms(m, prims, tau).difference(ref)
    assert K.trigger_waveforms(m, prims, tau, parallel=True).same_as(ref)
    a, t = R.reconstruct_trigger_channels(m, prims)
    assert K.trigger_amplitudes(m, a, t, tau).same_as(ref)
    if in_time:  # the in-time pulse's own amplitude and onset
        assert a[0, :3] == pytest.approx([m.mip_adc] * 3, rel=0.05)
        assert t[0, :3] == pytest.approx(t0[:3], abs=2.0)
    else:  # the later particle's
        assert a[0, :3] == pytest.approx([3.0 * m.mip_adc] * 3, rel=0.05)
        assert t[0, :3] == pytest.approx(t0[:3] + 200.0, abs=2.0)


def test_counter_gate_samples_and_validation(menu: TriggerMenu) -> None:
    assert menu.counter_gate_ns == load_config(None).trigger.counter_gate_ns == 40.0
    # onsets 90..110 ns: from peak samples 9 ((9 + 0.8) * 12.5 - 24 = 98.5 ns) .. 11 (11 - 0.8: 103.5 ns)
    assert [menu.window_samples(c) for c in range(4)] == [(9, 11)] * 4
    assert TriggerMenu.from_dict(menu.to_dict()) == menu
    assert menu.to_dict()["counter_gate_ns"] == 40.0
    wide = menu.replace(window_ns=25.0, counter_gate_ns=70.0)  # 75..125 ns: samples 8..12
    assert wide.window_samples(0) == (8, 12) and wide.gate_samples[:4] == ((8, 12),) * 4
    with pytest.raises(MenuError, match=r"widen counter_gate_ns to at least 2 x .* = 70 ns"):
        menu.replace(window_ns=25.0)  # the default 40 ns gate holds samples 9..11 only
    # checked on the samples: 30 ns (109..139 ns) still holds 9..11 for S1; S2 5 ns later (peak at 129 ns)
    # holds 10..11, but an onset at 95 ns can come from sample 9
    assert menu.replace(counter_gate_ns=30.0).gate_samples[0] == (9, 11)
    with pytest.raises(MenuError, match=r"counter gate of S2 .* holds samples 10\.\.11 .* samples 9\.\.11"):
        menu.replace(t0_ns=(100.0, 105.0, 100.0, 100.0, 100.0, 100.0), counter_gate_ns=30.0)
    with pytest.raises(MenuError, match="counter_gate_ns"):
        menu.replace(counter_gate_ns=0.0)
    with pytest.raises(ConfigError, match="counter_gate_ns"):
        validate({"trigger": {"counter_gate_ns": 10.0}}, "test")
