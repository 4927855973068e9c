"""MSADC reconstruction, waveform -> pedestal, amplitude, time, flags, energy (numba, with a numpy
reference implementation of the same algorithm).

Per waveform (32 samples of 12-bit ADC counts):

1. pedestals: mean of the first 4 even and the first 4 odd samples (two interleaved ADC phases);
2. zero suppression: if the largest pedestal-subtracted sample is below ``threshold`` (ADC counts) the
   channel has no signal: amplitude = energy = 0, time = NaN, flag ``NO_SIGNAL``;
3. peak sample k = argmax; amplitude and time from the template (detector.pulse) by the 3-point ratio
   ``R = (s[k+1] - s[k-1]) / s[k]``, which is a monotonic function of the peak's offset from sample k
   (inverted with a precomputed table): exact for a noise-free single pulse, about 0.2 ns RMS at 100 counts;
4. saturated pulses (a sample at 4095): amplitude and time in closed form from the two samples after the
   saturated plateau (else the two before it), flag ``SATURATED``;
5. pile-up: a sample away from the peak that differs from the fitted template by more than
   ``max(8 counts, 3% of A) + |d template/d t0| * 100/A ns`` (the last term allows for the onset's
   uncertainty on the steep edges), or (for saturated and edge pulses) a second local maximum of at least
   ``threshold`` standing ``PILEUP_PROMINENCE`` counts above the valley, flag ``PILEUP``;
6. energy = amplitude x GeV-per-count of the channel.

``time_ns`` is the pulse onset in the window (ns), the same ``t0`` that :mod:`detector.pulse` takes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba as nb
import numpy as np

from .channels import ADC_MAX, N_SAMPLES, SAMPLE_NS
from .pulse import PEAK_DELAY_NS, TEMPLATE_LENGTH_NS, TEMPLATE_N, TEMPLATE_TAU_NS, template, template_value

FLAG_SATURATED = np.uint8(1)
FLAG_PILEUP = np.uint8(2)
FLAG_NO_SIGNAL = np.uint8(4)
FLAG_EDGE = np.uint8(8)  #: peak in the first or last sample: no interpolation

ZS_THRESHOLD = 10.0  #: default zero-suppression threshold, ADC counts (~6.7 sigma of the noise)
PILEUP_PROMINENCE = 8.0  #: ADC counts a second peak must stand above the valley before it
RESIDUAL_MIN = 8.0  #: ADC counts: a sample this far from the fitted template means pile-up ...
RESIDUAL_FRACTION = 0.03  #: ... or this fraction of the amplitude, whichever is larger, ...
RESIDUAL_TIME_NS_COUNTS = 100.0  #: ... plus the template's slope there times this / A (ns): the onset is
#: known to about 20/A ns RMS (0.2 ns at 100 counts), and on a steep edge a 5-sigma timing error alone
#: moves a sample by more than 8 counts (a false PILEUP on 0.14% of 100-400 count pulses without it)
N_PED = 4  #: samples per phase used for the pedestal
DECAY_PER_SAMPLE = math.exp(-SAMPLE_NS / TEMPLATE_TAU_NS)


def _peak_table(n: int = 3001, span: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """Table of (R, delta): delta = offset (in samples) of the true peak after the max sample k."""
    delta = np.linspace(-span, span, n)
    v = [template(PEAK_DELAY_NS + (j - delta) * SAMPLE_NS) for j in (-1, 0, 1)]
    r = (v[2] - v[0]) / v[1]
    assert np.all(np.diff(r) > 0), "peak table is not monotonic"
    return r.astype(np.float64), delta.astype(np.float64)


PEAK_R, PEAK_DELTA = _peak_table()


# The peak table as module constants (numba freezes global arrays into the compiled code: no reference
# counting in a hot loop). SLOPE is what np.interp computes per segment. Uniform bins over PEAK_R -> the
# segment containing the bin's start (fine enough that a bin holds at most one knot, so one well-predicted
# comparison finds the segment; 32 KB, so that it stays in cache next to a streamed spill); ITAB rows =
# xp[j], slope[j], fp[j], xp[j + 1] (one cache line per lookup)
_XP = np.ascontiguousarray(PEAK_R)
_FP = np.ascontiguousarray(PEAK_DELTA)
_N_XP = _XP.size
_N_GUIDE = 1 << 13
_GUIDE_X0 = float(_XP[0])
_GUIDE_INV = _N_GUIDE / float(_XP[-1] - _XP[0])
_GUIDE = np.clip(
    np.searchsorted(_XP, _GUIDE_X0 + np.arange(_N_GUIDE) / _GUIDE_INV, side="right") - 1, 0, _N_XP - 2
).astype(np.int32)
_ITAB = np.ascontiguousarray(
    np.stack([_XP[:-1], (_FP[1:] - _FP[:-1]) / (_XP[1:] - _XP[:-1]), _FP[:-1], _XP[1:]], axis=1)
)
assert np.diff(_XP).min() * _GUIDE_INV > 1.0, "a guide bin must hold at most one knot"
#: exp(T / tau) of the closed form of saturated pulses
_EXP_SAMPLE = math.exp(SAMPLE_NS / 12.0)


@nb.njit(cache=True, nogil=True, inline="always")
def peak_delta(x: float) -> float:
    """``np.interp(x, PEAK_R, PEAK_DELTA)`` bit for bit (numpy's formula ``slope * (x - xp[j]) + fp[j]``
    with numpy's per-segment slope): the peak's offset (samples) after the peak sample for the neighbour
    ratio ``x = (s[k+1] - s[k-1]) / s[k]`` (x not NaN)."""
    xc = min(max(x, _XP[0]), _XP[_N_XP - 2])
    g = min(max(int((xc - _GUIDE_X0) * _GUIDE_INV), 0), _N_GUIDE - 1)
    j = np.int64(_GUIDE[g])
    if _ITAB[j, 3] <= xc:  # the next knot lies in the bin (or rounding): predictable branches
        j += 1
        while _ITAB[j, 3] <= xc:
            j += 1
    while _ITAB[j, 0] > xc:
        j -= 1
    y = _ITAB[j, 1] * (x - _ITAB[j, 0]) + _ITAB[j, 2]
    if x >= _XP[_N_XP - 1]:
        y = _FP[_N_XP - 1]
    elif x < _XP[0]:
        y = _FP[0]
    return y


@nb.njit(cache=True, nogil=True, inline="always")
def peak_fit(k: int, best: float, sm: float, sp: float, need_amp: bool) -> tuple[float, float]:
    """(onset ns, amplitude ADC counts) of an unsaturated pulse from its peak sample k (inner: 0 < k < 31),
    pedestal-subtracted peak ``best`` > 0 and neighbours ``sm = s[k-1]``, ``sp = s[k+1]``: the 3-point
    ratio through the peak table, then the template. Without ``need_amp`` the amplitude returned is
    ``best`` (no exp)."""
    delta = peak_delta((sp - sm) / best)
    amp = best
    if need_amp:
        amp = best / template_value(PEAK_DELAY_NS - delta * SAMPLE_NS)
    return (k + delta) * SAMPLE_NS - PEAK_DELAY_NS, amp


@nb.njit(cache=True, nogil=True, inline="always")
def saturated_fit(w: np.ndarray, pe: float, po: float, threshold: float, amp: float, t0: float) -> tuple[float, float]:
    """(amplitude ADC counts, onset ns) of a saturated waveform ``w`` (a sample at ADC_MAX; pedestals pe, po):
    the first two samples after the saturated plateau (else the two before it) fix onset and amplitude in
    closed form, ``s[j+1]/s[j] = ((d+T)/d)^2 exp(-T/tau)`` for a sample d ns after the onset. Returns
    ``(amp, t0)`` as given (the peak sample's) when the closed form does not apply."""
    je = N_SAMPLES - 1
    while je >= 0 and w[je] < ADC_MAX:
        je -= 1
    j1 = je + 1
    if j1 + 1 >= N_SAMPLES:
        j1 = 0
        while j1 < N_SAMPLES and w[j1] < ADC_MAX:
            j1 += 1
        j1 -= 2
    if j1 >= 0:
        v1 = w[j1] - (pe if (j1 & 1) == 0 else po)
        v2 = w[j1 + 1] - (pe if ((j1 + 1) & 1) == 0 else po)
        if v1 > threshold and v2 > 0.0:
            q = math.sqrt((v2 / v1) * _EXP_SAMPLE)
            if q > 1.0:
                d = SAMPLE_NS / (q - 1.0)
                tv = template_value(d)
                if tv > 0.0:
                    amp = v1 / tv
                    t0 = j1 * SAMPLE_NS - d
    return amp, t0


@nb.njit(cache=True, nogil=True, inline="always")
def reco_waveform(w: np.ndarray, threshold: float):
    """Reconstruct one waveform ``w`` (int16, 32). Returns (pedestal_even, pedestal_odd, amplitude,
    time_ns, flags). Used by :func:`reconstruct`; the online trigger computes its amplitudes and onsets
    with the same helpers (:func:`peak_fit`, :func:`saturated_fit`)."""
    se = 0
    so = 0
    for i in range(N_PED):
        se += w[2 * i]
        so += w[2 * i + 1]
    pe = se * 0.25
    po = so * 0.25
    # cheap, vectorisable test first: the plain maximum against the lower pedestal is an upper bound
    # of both phases' pedestal-subtracted maxima, so below threshold means no signal for sure
    mx = w[0]
    for j in range(1, N_SAMPLES):
        if w[j] > mx:
            mx = w[j]
    if mx - min(pe, po) < threshold:
        return pe, po, 0.0, np.nan, FLAG_NO_SIGNAL
    sat = mx >= ADC_MAX
    if not sat:
        me = w[0]
        mo = w[1]
        for i in range(1, N_SAMPLES // 2):
            if w[2 * i] > me:
                me = w[2 * i]
            if w[2 * i + 1] > mo:
                mo = w[2 * i + 1]
        if (me - pe) < threshold and (mo - po) < threshold:
            return pe, po, 0.0, np.nan, FLAG_NO_SIGNAL
    # peak sample (first maximum of the pedestal-subtracted samples)
    k = 0
    best = -1e30
    for j in range(N_SAMPLES):
        v = w[j] - (pe if (j & 1) == 0 else po)
        if v > best:
            best = v
            k = j
    flags = np.uint8(0)
    amp = best
    t0 = k * SAMPLE_NS - PEAK_DELAY_NS
    if sat:
        flags |= FLAG_SATURATED
        amp, t0 = saturated_fit(w, pe, po, threshold, amp, t0)
    elif 0 < k < N_SAMPLES - 1:
        sm = w[k - 1] - (pe if ((k - 1) & 1) == 0 else po)
        sp = w[k + 1] - (pe if ((k + 1) & 1) == 0 else po)
        t0, amp = peak_fit(k, best, sm, sp, True)
        # residual against the fitted template over the window (a second pulse, merged or on the tail)
        # template on the sample grid by recurrence: exp(-(d + T)/tau) = exp(-d/tau) * exp(-T/tau)
        tol = max(RESIDUAL_MIN, RESIDUAL_FRACTION * amp)
        dt_tol = RESIDUAL_TIME_NS_COUNTS / amp
        j0 = int(math.floor(t0 / SAMPLE_NS)) + 1
        if j0 < 0:
            j0 = 0
        d = j0 * SAMPLE_NS - t0
        ex = amp * math.exp(TEMPLATE_N - d / TEMPLATE_TAU_NS)
        for j in range(N_SAMPLES):
            dj = d
            if j < j0 or d >= TEMPLATE_LENGTH_NS:
                pred = 0.0
            else:
                u = d / PEAK_DELAY_NS
                pred = u * u * ex
                d += SAMPLE_NS
                ex *= DECAY_PER_SAMPLE
            if j >= k - 1 and j <= k + 1:
                continue
            sj = w[j] - (pe if (j & 1) == 0 else po)
            res = abs(sj - pred)
            if res <= tol:
                continue
            # rare: the onset's uncertainty on the template's slope there (pred > 0 only after the onset)
            slope = abs(pred * (TEMPLATE_N / dj - 1.0 / TEMPLATE_TAU_NS)) if pred > 0.0 else 0.0
            if res > tol + slope * dt_tol:
                flags |= FLAG_PILEUP
                break
    else:
        flags |= FLAG_EDGE
    # a second peak: a local maximum >= threshold standing PILEUP_PROMINENCE above the valley to k
    if (flags & FLAG_PILEUP) == 0:
        for j in range(1, N_SAMPLES - 1):
            if (j >= k - 1 and j <= k + 1) or w[j] >= ADC_MAX:
                continue
            sj = w[j] - (pe if (j & 1) == 0 else po)
            if sj < threshold:
                continue
            if not (
                sj > w[j - 1] - (pe if ((j - 1) & 1) == 0 else po)
                and sj >= w[j + 1] - (pe if ((j + 1) & 1) == 0 else po)
            ):
                continue
            lo, hi = (j + 1, k) if j < k else (k + 1, j)
            valley = 1e30
            for m in range(lo, hi):
                vm = w[m] - (pe if (m & 1) == 0 else po)
                if vm < valley:
                    valley = vm
            if sj - valley >= PILEUP_PROMINENCE:
                flags |= FLAG_PILEUP
                break
    return pe, po, amp, t0, flags


@nb.njit(cache=True, nogil=True, inline="always")
def _max32(wf, e, c, t):
    """Maximum of the 32 samples of wf[e, c] by a tree of element-wise maxima (vectorises; ``t`` is
    a scratch array of 16 int16)."""
    for j in range(16):
        a = wf[e, c, j]
        b = wf[e, c, j + 16]
        t[j] = a if a > b else b
    for j in range(8):
        a = t[j]
        b = t[j + 8]
        t[j] = a if a > b else b
    for j in range(4):
        a = t[j]
        b = t[j + 4]
        t[j] = a if a > b else b
    a = t[0] if t[0] > t[2] else t[2]
    b = t[1] if t[1] > t[3] else t[3]
    return a if a > b else b


@nb.njit(cache=True, nogil=True, inline="always")
def _reco_event(wf, e, gev_per_count, threshold, ped_e, ped_o, amp, time, energy, flags, t):
    for c in range(wf.shape[1]):
        # exact pre-filter, the same condition reco_waveform starts with: most channels are empty
        mx = _max32(wf, e, c, t)
        se = np.int32(wf[e, c, 0]) + wf[e, c, 2] + wf[e, c, 4] + wf[e, c, 6]
        so = np.int32(wf[e, c, 1]) + wf[e, c, 3] + wf[e, c, 5] + wf[e, c, 7]
        pe = se * 0.25
        po = so * 0.25
        if mx - min(pe, po) < threshold:
            ped_e[e, c] = pe
            ped_o[e, c] = po
            amp[e, c] = 0.0
            time[e, c] = np.nan
            energy[e, c] = 0.0
            flags[e, c] = FLAG_NO_SIGNAL
            continue
        pe, po, a, tm, f = reco_waveform(wf[e, c], threshold)
        ped_e[e, c] = pe
        ped_o[e, c] = po
        amp[e, c] = a
        time[e, c] = tm
        energy[e, c] = a * gev_per_count[c]
        flags[e, c] = f


@nb.njit(cache=True, nogil=True)
def _reconstruct_serial(wf, gev_per_count, threshold, ped_e, ped_o, amp, time, energy, flags):
    t = np.empty(16, np.int16)
    for e in range(wf.shape[0]):
        _reco_event(wf, e, gev_per_count, threshold, ped_e, ped_o, amp, time, energy, flags, t)


@nb.njit(cache=True, nogil=True, parallel=True)
def _reconstruct_parallel(wf, gev_per_count, threshold, ped_e, ped_o, amp, time, energy, flags):
    for e in nb.prange(wf.shape[0]):
        t = np.empty(16, np.int16)
        _reco_event(wf, e, gev_per_count, threshold, ped_e, ped_o, amp, time, energy, flags, t)


@dataclass
class RecoResult:
    """Reconstructed quantities, arrays of shape (n_events, n_channels)."""

    pedestal_even: np.ndarray  #: ADC counts (float32)
    pedestal_odd: np.ndarray  #: ADC counts (float32)
    amplitude: np.ndarray  #: pedestal-subtracted peak, ADC counts (float32); 0 below threshold
    time_ns: np.ndarray  #: pulse onset in the window, ns (float32); NaN without signal
    energy_gev: np.ndarray  #: GeV (float32)
    flags: np.ndarray  #: uint8 bit set of FLAG_*


def _alloc(n_e: int, n_c: int) -> RecoResult:
    f4 = lambda: np.empty((n_e, n_c), dtype=np.float32)  # noqa: E731
    return RecoResult(f4(), f4(), f4(), f4(), f4(), np.empty((n_e, n_c), dtype=np.uint8))


def _check(waveforms: np.ndarray, gev_per_count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    wf = np.asarray(waveforms)
    if wf.dtype != np.int16 or wf.ndim != 3 or wf.shape[2] != N_SAMPLES:
        raise ValueError(f"waveforms must be int16 of shape (events, channels, {N_SAMPLES}); got {wf.dtype} {wf.shape}")
    g = np.ascontiguousarray(gev_per_count, dtype=np.float32)
    if g.shape != (wf.shape[1],):
        raise ValueError(f"gev_per_count must have one value per channel ({wf.shape[1]}); got {g.shape}")
    return np.ascontiguousarray(wf), g


def reconstruct(
    waveforms: np.ndarray, gev_per_count: np.ndarray, threshold: float = ZS_THRESHOLD, parallel: bool = False
) -> RecoResult:
    """Reconstruct every waveform of ``waveforms`` (int16, (events, channels, 32)) with numba.
    ``gev_per_count`` has one value per channel (GeV per ADC count); ``threshold`` in ADC counts."""
    wf, g = _check(waveforms, gev_per_count)
    r = _alloc(wf.shape[0], wf.shape[1])
    fn = _reconstruct_parallel if parallel else _reconstruct_serial
    fn(wf, g, float(threshold), r.pedestal_even, r.pedestal_odd, r.amplitude, r.time_ns, r.energy_gev, r.flags)
    return r


def reconstruct_numpy(waveforms: np.ndarray, gev_per_count: np.ndarray, threshold: float = ZS_THRESHOLD) -> RecoResult:
    """The same algorithm as :func:`reconstruct`, vectorised with numpy (the reference and the
    benchmark baseline)."""
    wf, g = _check(waveforms, gev_per_count)
    n_e, n_c, _ = wf.shape
    w = wf.reshape(-1, N_SAMPLES).astype(np.float64)
    m = w.shape[0]
    pe = w[:, 0 : 2 * N_PED : 2].sum(axis=1) * 0.25
    po = w[:, 1 : 2 * N_PED : 2].sum(axis=1) * 0.25
    ped = np.empty_like(w)
    ped[:, 0::2] = pe[:, None]
    ped[:, 1::2] = po[:, None]
    s = w - ped
    sat = (w >= ADC_MAX).any(axis=1)
    k = s.argmax(axis=1)
    rows = np.arange(m)
    best = s[rows, k]
    nosig = (best < threshold) & ~sat
    amp = best.copy()
    t0 = k * SAMPLE_NS - PEAK_DELAY_NS
    flags = np.zeros(m, dtype=np.uint8)
    flags[nosig] |= FLAG_NO_SIGNAL
    flags[sat] |= FLAG_SATURATED
    inner = (k > 0) & (k < N_SAMPLES - 1) & ~sat & ~nosig
    edge = ~inner & ~sat & ~nosig
    flags[edge] |= FLAG_EDGE
    # interpolation
    ki = k[inner]
    ri = rows[inner]
    r = (s[ri, ki + 1] - s[ri, ki - 1]) / best[inner]
    delta = np.interp(r, PEAK_R, PEAK_DELTA)
    amp[inner] = best[inner] / template(PEAK_DELAY_NS - delta * SAMPLE_NS)
    t0[inner] = (ki + delta) * SAMPLE_NS - PEAK_DELAY_NS
    tol = np.maximum(RESIDUAL_MIN, RESIDUAL_FRACTION * amp[inner])
    dj = np.arange(N_SAMPLES)[None, :] * SAMPLE_NS - t0[inner, None]  # ns after the onset
    pred = amp[inner, None] * template(dj)
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = np.where((dj > 0) & (pred > 0), np.abs(pred * (TEMPLATE_N / dj - 1.0 / TEMPLATE_TAU_NS)), 0.0)
    tol_j = tol[:, None] + slope * (RESIDUAL_TIME_NS_COUNTS / amp[inner])[:, None]
    far = np.abs(np.arange(N_SAMPLES)[None, :] - ki[:, None]) > 1
    bad = (far & (np.abs(s[inner] - pred) > tol_j)).any(axis=1)
    flags[ri[bad]] |= FLAG_PILEUP
    # saturation: closed form on the two samples after the plateau (else before it)
    if sat.any():
        rs = rows[sat]
        satm = w[rs] >= ADC_MAX
        last = N_SAMPLES - 1 - satm[:, ::-1].argmax(axis=1)
        first = satm.argmax(axis=1)
        j1 = np.where(last + 2 < N_SAMPLES, last + 1, first - 2)
        ok = j1 >= 0
        rs, j1 = rs[ok], j1[ok]
        v1 = s[rs, j1]
        v2 = s[rs, j1 + 1]
        good = (v1 > threshold) & (v2 > 0)
        rs, j1, v1, v2 = rs[good], j1[good], v1[good], v2[good]
        q = np.sqrt((v2 / v1) * math.exp(SAMPLE_NS / 12.0))
        good = q > 1.0
        rs, j1, v1, q = rs[good], j1[good], v1[good], q[good]
        d = SAMPLE_NS / (q - 1.0)
        tv = template(d)
        good = tv > 0
        amp[rs[good]] = v1[good] / tv[good]
        t0[rs[good]] = j1[good] * SAMPLE_NS - d[good]
    # second local maximum with prominence
    idx = np.arange(N_SAMPLES)[None, :]
    loc = np.zeros_like(s, dtype=bool)
    loc[:, 1:-1] = (s[:, 1:-1] > s[:, :-2]) & (s[:, 1:-1] >= s[:, 2:]) & (s[:, 1:-1] >= threshold)
    loc &= (np.abs(idx - k[:, None]) > 1) & (w < ADC_MAX)
    left = np.where(idx < k[:, None], s, np.inf)
    suffix_min = np.minimum.accumulate(left[:, ::-1], axis=1)[:, ::-1]  # min(left[j:])
    valley_l = np.full_like(s, np.inf)
    valley_l[:, :-1] = suffix_min[:, 1:]  # min(s[j+1:k])
    right = np.where(idx > k[:, None], s, np.inf)
    prefix_min = np.minimum.accumulate(right, axis=1)  # min(right[:j+1])
    valley_r = np.full_like(s, np.inf)
    valley_r[:, 1:] = prefix_min[:, :-1]  # min(s[k+1:j])
    valley = np.where(idx < k[:, None], valley_l, valley_r)
    second = (loc & (s - valley >= PILEUP_PROMINENCE)).any(axis=1)
    flags[second & ~nosig] |= FLAG_PILEUP
    amp[nosig] = 0.0
    t0 = t0.astype(np.float64)
    t0[nosig] = np.nan
    shape = (n_e, n_c)
    amp32 = amp.astype(np.float32).reshape(shape)
    return RecoResult(
        pe.astype(np.float32).reshape(shape),
        po.astype(np.float32).reshape(shape),
        amp32,
        t0.astype(np.float32).reshape(shape),
        (amp32 * g[None, :]).astype(np.float32),
        flags.reshape(shape),
    )
