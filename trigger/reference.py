"""Plain-numpy reference of the trigger (no numba): the exact oracle of :mod:`trigger.kernels` and the
benchmark baseline. Definitions are in :mod:`trigger.menu`.

- :func:`amplitude_trigger`: amplitudes (ADC counts) and onset times (ns) per trigger channel ->
  :class:`~trigger.menu.TriggerResult`;
- :func:`waveform_trigger`: trigger primitives (int16 waveforms) -> ``detector.reco.reconstruct_numpy``
  on the six channels with the menu's calibrated pedestals, each channel's peak taken in its gate (the
  counter gate, the sums' energy gate: :attr:`~trigger.menu.TriggerMenu.gate_samples`) ->
  :func:`amplitude_trigger` on its float32 amplitudes and times;
- :func:`synthesize_primitives` and :func:`electron_spill`: reference inputs (waveforms built with
  ``detector.pulse``) for tests and benchmarks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from detector import channels as ch
from detector import pulse
from detector.reco import reconstruct_numpy
from detector.records import TRIGGER_MASK_DTYPE

from .menu import COUNTER_NAMES, ECAL_INDEX, PS_INDEX, TriggerMenu, TriggerResult

#: records per call of ``reconstruct_numpy`` (its temporaries are ~30 float64 copies of the block)
RECO_CHUNK = 1 << 14


def check_inputs(
    amplitudes: np.ndarray, onsets_ns: np.ndarray, arrival_ns: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate the amplitude-entry arrays: (N, 6) floating amplitudes (ADC counts) and onsets (ns),
    (N,) arrival times (ns, converted to float64). Raises ValueError."""
    a, t = _native_float(amplitudes), _native_float(onsets_ns)
    n6 = ch.N_TRIGGER_CHANNELS
    for name, x in (("amplitudes", a), ("onsets_ns", t)):
        if x.ndim != 2 or x.shape[1] != n6:
            raise ValueError(f"{name} must be a float array of shape (records, {n6}); got {x.dtype} {x.shape}")
    if a.shape != t.shape:
        raise ValueError(f"amplitudes {a.shape} and onsets_ns {t.shape} differ in shape")
    return a, t, check_times(arrival_ns, a.shape[0])


def _native_float(x: np.ndarray) -> np.ndarray:
    """float32/float64 in native byte order as is (any memory layout); other float dtypes as float64
    (exact: the reference computes in float64 anyway). ValueError for non-float data."""
    x = np.asarray(x)
    if x.dtype.kind != "f":
        raise ValueError(f"expected a float array, got {x.dtype}")
    if x.dtype in (np.float32, np.float64) and x.dtype.isnative:
        return x
    return x.astype(np.float64)


def check_primitives(prims: np.ndarray, arrival_ns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate a primitive block: int16 (N, 6, 32) and (N,) arrival times (ns). Raises ValueError."""
    p = np.asarray(prims)
    shape = (ch.N_TRIGGER_CHANNELS, ch.N_SAMPLES)
    if p.dtype != np.int16 or p.ndim != 3 or p.shape[1:] != shape:
        raise ValueError(
            f"trigger primitives must be int16 of shape (records, {shape[0]}, {shape[1]}); got {p.dtype} {p.shape}"
        )
    return p, check_times(arrival_ns, p.shape[0])


def check_times(arrival_ns: np.ndarray, n: int) -> np.ndarray:
    """(n,) arrival times as float64 (ns); ValueError on a wrong shape or a non-float dtype."""
    t = np.asarray(arrival_ns)
    if t.shape != (n,) or t.dtype.kind != "f":
        raise ValueError(f"arrival times must be a float array of shape ({n},); got {t.dtype} {t.shape}")
    return np.ascontiguousarray(t, dtype=np.float64)


def unsorted_error(where: int) -> ValueError:
    """The error both implementations raise for decreasing or NaN arrival times."""
    return ValueError(
        f"arrival times must be non-decreasing and not NaN (record {where} breaks it): "
        "the random trigger and the chunking rely on time order"
    )


def _bracket(menu: TriggerMenu, tau: np.ndarray) -> np.ndarray:
    """Index j of the random tick with ``t_j <= tau < t_(j+1)`` (-1 before tick 0, n_ticks beyond the
    last tick's window)."""
    n = menu.n_random_ticks
    rate = menu.random.rate_hz
    tick = lambda j: (j.astype(np.float64) * 1e9) / rate  # noqa: E731  (the kernels' formula)
    j = np.clip(np.floor(tau * (rate / 1e9)), 0, max(n - 1, 0)).astype(np.int64)
    while True:
        down = (j > 0) & (tick(j) > tau)
        up = (j + 1 < n) & (tick(j + 1) <= tau)
        if not (down.any() or up.any()):
            break
        j = j - down + up
    j = np.where(tau < 0.0, -1, j)
    return np.where(tau >= (n * 1e9) / rate, n, j)


def amplitude_trigger(
    menu: TriggerMenu, amplitudes: np.ndarray, onsets_ns: np.ndarray, arrival_ns: np.ndarray
) -> TriggerResult:
    """Trigger one whole spill from reconstructed quantities.

    ``amplitudes``: (N, 6) float ADC counts (0 = no signal) of S1, S2, S3, V1, PS_SUM, ECAL_SUM;
    ``onsets_ns``: (N, 6) float onset times in the readout window (ns, NaN = no signal);
    ``arrival_ns``: (N,) arrival time of each record since spill start (ns, non-decreasing)."""
    a, t, tau = check_inputs(amplitudes, onsets_ns, arrival_ns)
    n = a.shape[0]
    if n and not (tau[0] >= -np.inf and np.all(tau[1:] >= tau[:-1])):
        bad = ~np.concatenate([[tau[0] >= -np.inf], tau[1:] >= tau[:-1]])
        raise unsorted_error(int(np.argmax(bad)))
    a = a.astype(np.float64)
    t = t.astype(np.float64)
    thr = menu.counter_threshold_adc
    above = a[:, :4] >= thr
    lo = np.array([menu.counter_window_ns(c)[0] for c in range(4)])
    hi = np.array([menu.counter_window_ns(c)[1] for c in range(4)])
    fired = above & (t[:, :4] >= lo) & (t[:, :4] <= hi)
    pisi = fired[:, 0] & fired[:, 1] & fired[:, 2]
    eot = pisi & ~fired[:, 3]
    e_ps = a[:, PS_INDEX] * menu.gev_per_count[PS_INDEX]
    e_ecal = a[:, ECAL_INDEX] * menu.gev_per_count[ECAL_INDEX]
    raw = {}
    prescale = {"beam": menu.beam.prescale}
    for name, trg in menu.energy_lines:
        prescale[name] = trg.prescale
        ok = (eot if trg.veto else pisi) & (e_ps > trg.ps_min_gev) & (e_ecal < trg.ecal_max_gev)
        if trg.ps_max_gev is not None:
            ok &= e_ps < trg.ps_max_gev
        if trg.ecal_min_gev is not None:
            ok &= e_ecal > trg.ecal_min_gev
        raw[name] = ok if trg.enabled else np.zeros(n, bool)
    raw["beam"] = pisi if menu.beam.enabled else np.zeros(n, bool)
    bits = menu.trigger_bits
    mask = np.zeros(n, TRIGGER_MASK_DTYPE)
    sc = menu.empty_scalers()
    for name in raw:
        p = prescale[name]
        acc = raw[name] & (np.cumsum(raw[name]) % p == 0)
        mask[acc] |= bits[name]
        sc[f"{name}_raw"] = int(raw[name].sum())
        sc[f"{name}_accepted"] = int(acc.sum())
    n_ticks = menu.n_random_ticks
    if n_ticks and n:
        j = _bracket(menu, tau)
        prev = np.concatenate([[-np.inf], tau[:-1]])
        jc = np.clip(j, 0, None).astype(np.float64)
        rnd = (j >= 0) & (j < n_ticks) & (prev < (jc * 1e9) / menu.random.rate_hz)
        mask[rnd] |= bits["random"]
        sc["random_accepted"] = int(rnd.sum())
    sc["random_raw"] = n_ticks
    sc["records"] = n
    for c, name in enumerate(COUNTER_NAMES):
        sc[name] = int(above[:, c].sum())
    sc["PiSi"] = int(pisi.sum())
    sc["EOT"] = int(eot.sum())
    idx = np.flatnonzero(mask).astype(np.int64)
    sc["accepted"] = int(idx.size)
    return TriggerResult(idx, mask[idx], sc, menu.trigger_names)


def reconstruct_trigger_channels(menu: TriggerMenu, prims: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 amplitudes (ADC counts) and onsets (ns) of the six trigger channels, with
    ``detector.reco.reconstruct_numpy`` on the menu's calibrated pedestals, each channel's peak taken in
    its gate (counter gate, energy gate) (in blocks of :data:`RECO_CHUNK` records to bound memory): the input of the
    amplitude entry."""
    g = np.asarray(menu.gev_per_count, dtype=np.float32)
    even, odd = (np.asarray(x, dtype=np.float64) * 0.25 for x in menu.pedestal_sums)
    peds = (even, odd)
    first, last = (np.array(x, dtype=np.int64) for x in zip(*menu.gate_samples))
    n = prims.shape[0]
    amp = np.empty((n, ch.N_TRIGGER_CHANNELS), np.float32)
    t = np.empty((n, ch.N_TRIGGER_CHANNELS), np.float32)
    for s in range(0, n, RECO_CHUNK):
        r = reconstruct_numpy(prims[s : s + RECO_CHUNK], g, menu.zs_threshold_adc, peds, (first, last))
        amp[s : s + RECO_CHUNK] = r.amplitude
        t[s : s + RECO_CHUNK] = r.time_ns
    return amp, t


def waveform_trigger(menu: TriggerMenu, prims: np.ndarray, arrival_ns: np.ndarray) -> TriggerResult:
    """Trigger one whole spill from its primitives: int16 (N, 6, 32) waveforms of S1, S2, S3, V1,
    PS_SUM, ECAL_SUM and (N,) arrival times (ns)."""
    p, tau = check_primitives(prims, arrival_ns)
    amp, t = reconstruct_trigger_channels(menu, p)
    return amplitude_trigger(menu, amp, t, tau)


# ---------------------------------------------------------------------- reference inputs
def synthesize_primitives(
    amplitudes: np.ndarray,
    onsets_ns: np.ndarray,
    extra: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None,
    pedestal_even: float | Sequence[float] | np.ndarray = (120.0, 120.0, 120.0, 120.0, 160.0, 160.0),
    pedestal_odd: float | Sequence[float] | np.ndarray = (125.0, 125.0, 125.0, 118.0, 152.0, 152.0),
    noise_rms: float = pulse.NOISE_RMS_COUNTS,
    seed: int = 0,
) -> np.ndarray:
    """Primitive waveforms int16 (N, 6, 32) with ``detector.pulse``.

    ``amplitudes`` (ADC counts, 0 = no pulse) and ``onsets_ns`` (ns) are (N, 6); ``extra`` =
    (record, channel, amplitude, onset) arrays adds further pulses (pile-up, out-of-time hits). Default
    pedestals are those of config/calibration.toml (counters, V1 = veto, sums)."""
    amp = np.asarray(amplitudes, dtype=np.float64)
    t0 = np.broadcast_to(np.asarray(onsets_ns, dtype=np.float64), amp.shape)
    n, c = amp.shape
    targets = np.arange(n * c)
    a_all, t_all = amp.ravel(), np.ascontiguousarray(t0).ravel()
    if extra is not None:
        rec, chan, ea, et = (np.asarray(x) for x in extra)
        targets = np.concatenate([targets, rec.astype(np.int64) * c + chan.astype(np.int64)])
        a_all = np.concatenate([a_all, ea.astype(np.float64)])
        t_all = np.concatenate([t_all, et.astype(np.float64)])
    analog = np.zeros((n * c, ch.N_SAMPLES), dtype=np.float32)
    pulse.add_pulses(analog, targets, a_all, t_all)
    pe = np.broadcast_to(np.asarray(pedestal_even, dtype=np.float32), (c,)).copy()
    po = np.broadcast_to(np.asarray(pedestal_odd, dtype=np.float32), (c,)).copy()
    out = np.empty((n, c, ch.N_SAMPLES), dtype=np.int16)
    pulse.digitize(analog.reshape(n, c, ch.N_SAMPLES), pe, po, float(noise_rms), pulse.make_noise_bank(seed), seed, out)
    return out


def electron_spill(
    menu: TriggerMenu, n: int, seed: int = 0, spill_ns: float | None = None, low_ecal_fraction: float = 0.1
) -> tuple[np.ndarray, np.ndarray]:
    """A realistic mix of records for tests and benchmarks: (primitives int16 (n, 6, 32), sorted arrival
    times float64 (n,) ns over the spill).

    ~86% electrons (S1..S3 ~1 MIP in time, V1 empty, E_PS ~ 0.5-8 GeV, E_ECAL ~ 100 GeV; a fraction
    ``low_ecal_fraction`` of them with E_ECAL uniform in 5-100 GeV), 12% halo (counters partly out of
    time or missing, V1 for some), 1% hadron-like (little ECAL energy), a few saturated sums, 10% pile-up
    pulses on random channels."""
    rng = np.random.default_rng(seed)
    mip, g = menu.mip_adc, np.asarray(menu.gev_per_count)
    t0 = np.asarray(menu.t0_ns)
    amp = np.zeros((n, 6))
    ons = t0[None, :] + rng.normal(0.0, 1.5, (n, 6))
    kind = rng.choice(3, n, p=[0.87, 0.12, 0.01])
    amp[:, :3] = mip * rng.gamma(8.0, 1.0 / 8.0, (n, 3))
    e_ps = rng.gamma(2.0, 1.2, n)
    e_ecal = np.where(rng.random(n) < low_ecal_fraction, rng.uniform(5.0, 100.0, n), rng.normal(100.0, 2.0, n)) - e_ps
    halo = kind == 1
    ons[halo, :3] += rng.choice([0.0, 0.0, 15.0, -30.0], (int(halo.sum()), 3))
    amp[halo, :3] *= rng.random((int(halo.sum()), 3)) < 0.8
    amp[halo, 3] = np.where(rng.random(int(halo.sum())) < 0.4, mip * rng.gamma(8.0, 1.0 / 8.0, int(halo.sum())), 0)
    e_ps[halo] *= 0.1
    e_ecal[halo] *= rng.random(int(halo.sum()))
    had = kind == 2
    e_ps[had] = rng.exponential(0.3, int(had.sum()))
    e_ecal[had] = rng.exponential(10.0, int(had.sum()))
    amp[:, PS_INDEX] = np.clip(e_ps, 0, None) / g[PS_INDEX]
    amp[:, ECAL_INDEX] = np.clip(e_ecal, 0, None) / g[ECAL_INDEX]
    amp[rng.random(n) < 0.005, ECAL_INDEX] *= 2.0  # a few saturated sums
    m = int(0.1 * n)
    extra = (rng.integers(0, n, m), rng.integers(0, 6, m), rng.uniform(30.0, 1500.0, m), rng.uniform(-50.0, 350.0, m))
    prims = synthesize_primitives(amp, ons, extra, seed=seed)
    spill_ns = menu.spill_length_s * 1e9 if spill_ns is None else spill_ns
    times = np.sort(rng.uniform(0.0, spill_ns, n))
    return prims, times
