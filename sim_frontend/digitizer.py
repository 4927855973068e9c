"""MSADC digitiser of the emulated crate: deposits (GeV) -> 12-bit waveforms, with pile-up, noise,
pedestals and PMT gains that follow the HV.

Model (the same as :mod:`detector.pulse`): a pulse of amplitude ``A = deposit_GeV * amplitude_scale[c]``
ADC counts with the CR-RC^2 template, onset ``t0_ns[c]`` after the window start for the particle that
opened the record, sampled every 12.5 ns (32 samples); the even and odd samples get the two pedestals of
the channel; white noise of ``noise_rms`` counts from a standard-normal bank (detector.pulse.make_noise_bank)
read at a pseudo-random offset that is a pure hash of (spill seed, record index, channel id); rounded and
clipped to 0..4095. Template values come from a table of 1025 sub-sample phases (0.012 ns steps) x 20
samples, built from detector.pulse.template.

Pile-up: record i's window starts ``t0_ns[c]`` before particle i's arrival; every particle j whose pulse
reaches into the window (``-t0 - 250 ns < t_j - t_i < 400 ns - t0``) adds its own pulse at its relative time.

Gains: ``amplitude_scale = hidden_gain / gev_per_count * (VMON / hv_set) ** hidden_gamma`` (0 where VMON <= 0).
The analogue sums (no PMT of their own) follow the mean HV factor of the cells they sum (PS cells for
PS_SUM, all 72 ECAL cells for ECAL_SUM), so an ECAL HV change shows in the trigger sums too.

The two kernels (:meth:`Digitizer.primitives` over a whole spill, :meth:`Digitizer.events` for selected
records, all channels) share one inline waveform routine, so a record's trigger channels are bit-identical
in both.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from detector import channels as ch
from detector import pulse
from detector.channels import ADC_MAX, N_CHANNELS, N_SAMPLES, SAMPLE_NS
from detector.config import Calibration, Config
from detector.gain import relative_gain
from detector.parallel import run_ranges
from sim_frontend.beam import BeamSpill, mix64
from sim_frontend.gain_drift import GainDrift
from sim_frontend.response import Deposits, channel_deposits

N_PHASES = 1024
N_TSAMP = int(math.ceil(pulse.TEMPLATE_LENGTH_NS / SAMPLE_NS))  # 20 samples cover the template
BLOCK = 4096  # records per work item of the trigger primitives (the unit of the ranges run on threads)
#: noise bank length: 128 kB stays in the L2 cache (random offsets into a 4 MB bank cost 3x the run time);
#: a waveform reads 32 consecutive values at one of 32736 offsets
NOISE_BANK_SIZE = 1 << 15
PAD = N_TSAMP  #: padding before the window in the float buffer (pulses that began earlier)
BUF_LEN = PAD + N_SAMPLES + N_TSAMP


def template_table() -> np.ndarray:
    """(N_PHASES + 1, N_TSAMP) float32: template value at ``(p / N_PHASES + m) * 12.5 ns`` after the onset."""
    p = np.arange(N_PHASES + 1)[:, None] / N_PHASES
    m = np.arange(N_TSAMP)[None, :]
    return pulse.template((p + m) * SAMPLE_NS).astype(np.float32)


TEMPLATE_TABLE = template_table()


@nb.njit(cache=True, nogil=True, inline="always")
def _noise_offset(seed, rec, cid, bank_n):
    h = mix64(seed ^ mix64(np.uint64(rec) * np.uint64(N_CHANNELS) + np.uint64(cid) + np.uint64(0x9E37)))
    return int(((h >> np.uint64(32)) * np.uint64(bank_n)) >> np.uint64(32))  # multiply-shift, no division


@nb.njit(cache=True, nogil=True, inline="always")
def _pulse_geom(onset):
    """Where a pulse with onset ``onset`` ns (window time) lands: the padded-buffer position p0 of its
    first sample after the onset (the window is buf[PAD:PAD + 32]) and the template phase row ph; p0 < 0
    means that the pulse has ended before the window (nothing to add)."""
    s = onset / SAMPLE_NS
    k0 = int(math.floor(s)) + 1
    ph = int((k0 - s) * N_PHASES + 0.5)  # sample k0 is (ph / N_PHASES) * 12.5 ns after the onset
    if k0 < -N_TSAMP or k0 >= N_SAMPLES:
        return -1, 0
    return k0 + PAD, ph


@nb.njit(cache=True, nogil=True, inline="always")
def _add_pulse(buf, r, af, p0, ph, tmpl):
    """Add a pulse of amplitude ``af`` (float32 counts) placed by :func:`_pulse_geom` to buf[r]: a fixed
    N_TSAMP-sample loop into the padded buffer (vectorises; samples outside the window are discarded)."""
    for m in range(N_TSAMP):
        buf[r, p0 + m] += af * tmpl[ph, m]


@nb.njit(cache=True, nogil=True, inline="always")
def _store_wave(pb, r, touched, ped_row, rms, bank, off, out_row):
    """Digitise one waveform: pedestal pattern + noise (bank at ``off``) + the pulses accumulated in
    pb[r] (only if ``touched``), rounded (floor(v + 0.5)) and clipped to 0..4095; then clear pb[r]."""
    if touched:
        for k in range(N_SAMPLES):
            v = ped_row[k] + rms * bank[off + k] + pb[r, PAD + k] + np.float32(0.5)
            out_row[k] = np.int16(min(max(v, np.float32(0.0)), np.float32(ADC_MAX)))
        for k in range(BUF_LEN):
            pb[r, k] = np.float32(0.0)
    else:
        for k in range(N_SAMPLES):
            v = ped_row[k] + rms * bank[off + k] + np.float32(0.5)
            out_row[k] = np.int16(min(max(v, np.float32(0.0)), np.float32(ADC_MAX)))


@nb.njit(cache=True, nogil=True)
def _primitives_kernel(b_lo, b_hi, times, dep, scale, t0, ped, rms, bank, cids, seed, tmpl, before, after, out):
    """Trigger-primitive records of blocks ``b_lo .. b_hi - 1`` (BLOCK records each) of the spill: the blocks
    are independent, so contiguous ranges of them run in Python threads (:func:`detector.parallel.run_ranges`)
    on this one serial kernel, with the same result as one call over all blocks."""
    n = times.shape[0]
    nc = dep.shape[1]
    bank_n = bank.shape[0] - N_SAMPLES
    for b in range(b_lo, b_hi):
        i0 = b * BLOCK
        i1 = min(n, i0 + BLOCK)
        buf = np.zeros((nc, BUF_LEN), dtype=np.float32)  # pulses only (pedestal + noise at the end)
        touched = np.zeros(nc, dtype=np.bool_)
        # first particle that can reach the window of record i0 (binary search)
        lo_t = times[i0] - before
        a_, b_ = 0, i0
        while a_ < b_:
            mid = (a_ + b_) >> 1
            if times[mid] <= lo_t:
                a_ = mid + 1
            else:
                b_ = mid
        lo = a_
        for i in range(i0, i1):
            ti = times[i]
            while times[lo] <= ti - before:
                lo += 1
            j = lo
            while j < n:
                dt = times[j] - ti
                if dt >= after:
                    break
                last = np.inf
                p0, ph = -1, 0
                for c in range(nc):
                    d = dep[j, c]
                    if d != 0.0:
                        onset = t0[c] + dt
                        if onset != last:  # channels with the same t0 share the pulse placement
                            p0, ph = _pulse_geom(onset)
                            last = onset
                        if p0 >= 0:
                            _add_pulse(buf, c, np.float32(np.float64(d) * scale[c]), p0, ph, tmpl)
                            touched[c] = True
                j += 1
            for c in range(nc):
                _store_wave(buf, c, touched[c], ped[c], rms, bank, _noise_offset(seed, i, cids[c], bank_n), out[i, c])
                touched[c] = False


@nb.njit(cache=True, nogil=True)
def _events_kernel(
    rec_index, rec_row, row_first, row_count, times_u, dep_u, scale, t0, ped, rms, bank, seed, tmpl, before, after, out
):
    """Full-channel records: record r is particle rec_index[r] (row rec_row[r] of the neighbour set);
    its window neighbours are rows row_first[r] .. row_first[r] + row_count[r] - 1 of times_u/dep_u."""
    nc = dep_u.shape[1]
    bank_n = bank.shape[0] - N_SAMPLES
    buf = np.zeros((nc, BUF_LEN), dtype=np.float32)
    touched = np.zeros(nc, dtype=np.bool_)
    for r in range(rec_index.shape[0]):
        i = rec_index[r]
        ti = times_u[rec_row[r]]
        for q in range(row_first[r], row_first[r] + row_count[r]):
            if times_u[q] <= ti - before:  # the same comparisons as _primitives_kernel
                continue
            dt = times_u[q] - ti
            if dt >= after:
                break
            for c in range(nc):
                d = dep_u[q, c]
                if d != 0.0:
                    p0, ph = _pulse_geom(t0[c] + dt)
                    if p0 >= 0:
                        _add_pulse(buf, c, np.float32(np.float64(d) * scale[c]), p0, ph, tmpl)
                        touched[c] = True
        for c in range(nc):
            _store_wave(buf, c, touched[c], ped[c], rms, bank, _noise_offset(seed, i, c, bank_n), out[r, c])
            touched[c] = False


#: fewest records per thread of :meth:`Digitizer.events` (its records are independent: contiguous ranges of
#: them are digitised in Python threads by the one serial kernel)
EVENTS_PER_THREAD = 1024


def _union_of_ranges(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Sorted indices covered by the half-open ranges [lo[i], hi[i]) (hi > lo), in time proportional to
    their number (not to the spill's)."""
    order = np.argsort(lo, kind="stable")
    lo, hi = lo[order], hi[order]
    reach = np.maximum.accumulate(hi)  # end of the merged range so far
    first = np.flatnonzero(np.concatenate([[True], lo[1:] >= reach[:-1]]))  # a merged range begins
    begin = lo[first]
    length = reach[np.concatenate([first[1:] - 1, [lo.size - 1]])] - begin
    offset = np.cumsum(length) - length
    return np.repeat(begin - offset, length) + np.arange(int(length.sum()), dtype=np.int64)


class Digitizer:
    """The emulated MSADC crate's signal chain, with hidden true gains that ``hv-tune`` has to find.

    ``hidden_gain`` (N_CHANNELS,): HCAL uniform in 1 +/- ``emulator.gain_spread``, ECAL in
    1 +/- ``emulator.ecal_gain_spread``, every other channel 1 +/- ``emulator.gain_spread_other``; the ECAL
    gains also drift with time and jump on request (``drift``, :class:`sim_frontend.gain_drift.GainDrift`:
    a spill's gains are those at its start); ``hidden_gamma`` (N_CHANNELS,): gain-law exponents
    ~ N(``emulator.gamma_mean``, ``emulator.gamma_spread``), clipped to [3, 12]. Both come from
    ``hidden_seed`` (default ``emulator.hidden_seed``)."""

    def __init__(
        self,
        cfg: Config,
        calibration: Calibration,
        hidden_seed: int | None = None,
        noise_rms: float = pulse.NOISE_RMS_COUNTS,
    ):
        em = cfg.emulator
        self.cfg = cfg
        self.calibration = calibration
        self.hidden_seed = int(em.hidden_seed if hidden_seed is None else hidden_seed)
        rng = np.random.default_rng([self.hidden_seed, 0x6A1])
        gain = rng.uniform(1.0 - em.gain_spread_other, 1.0 + em.gain_spread_other, N_CHANNELS)
        hc = ch.ids_of_kind("hcal")
        gain[hc] = rng.uniform(1.0 - em.gain_spread, 1.0 + em.gain_spread, hc.size)
        self.hidden_gamma = np.clip(rng.normal(em.gamma_mean, em.gamma_spread, N_CHANNELS), 3.0, 12.0)
        ec = ch.ids_of_kind("ecal")  # drawn apart, so that the other channels' hidden values stay as they were
        gain[ec] = np.random.default_rng([self.hidden_seed, 0xECA1]).uniform(
            1.0 - em.ecal_gain_spread, 1.0 + em.ecal_gain_spread, ec.size
        )
        self.hidden_gain = gain
        self.drift = GainDrift(em.ecal_drift_per_hour, self.hidden_seed)
        self.noise_rms = float(noise_rms)
        self.noise_bank = pulse.make_noise_bank(seed=self.hidden_seed ^ 0x5A5A, size=NOISE_BANK_SIZE)
        self.gev_per_count = np.asarray(calibration.gev_per_count, dtype=np.float64)
        self.hv_set = np.asarray(calibration.hv_set, dtype=np.float64)
        self.t0_ns = np.asarray(calibration.t0_ns, dtype=np.float64)
        self.ped_e = np.asarray(calibration.pedestal_even, dtype=np.float64)
        self.ped_o = np.asarray(calibration.pedestal_odd, dtype=np.float64)
        # per-channel pedestal pattern of the 32 samples (even/odd ADC phases), float32
        self.ped_pattern = np.empty((N_CHANNELS, N_SAMPLES), dtype=np.float32)
        self.ped_pattern[:, 0::2] = self.ped_e[:, None]
        self.ped_pattern[:, 1::2] = self.ped_o[:, None]
        self.trigger_ids = ch.trigger_channel_ids()
        # window reach: pulses with onset in (-250 ns, 400 ns) of the window are visible
        self._before = pulse.TEMPLATE_LENGTH_NS + float(self.t0_ns.max())
        self._after = N_SAMPLES * SAMPLE_NS - float(self.t0_ns.min())
        self._ps_ids = np.array([ch.ecal_id(0, x, y) for x in range(6) for y in range(6)])
        self._ecal_ids = ch.ids_of_kind("ecal")

    # ---------------------------------------------------------------------------------------- gains
    def amplitude_scale(self, hv_vmon: np.ndarray, t_unix: float | None = None) -> np.ndarray:
        """ADC counts per GeV of every channel at the monitored voltages ``hv_vmon`` (N_CHANNELS,) V:
        ``hidden_gain / gev_per_count * (vmon / hv_set) ** hidden_gamma`` (0 where vmon <= 0), times the
        ECAL drift and jumps at unix time ``t_unix`` (None: without them). Channels without a PMT
        (hv_set = 0: the analogue sums) take the mean HV factor of the cells they sum."""
        v = np.asarray(hv_vmon, dtype=np.float64)
        if v.shape != (N_CHANNELS,):
            raise ValueError(f"hv_vmon must have shape ({N_CHANNELS},); got {v.shape}")
        factor = relative_gain(v, self.hv_set, self.hidden_gamma)
        for name, cells in (("PS_SUM", self._ps_ids), ("ECAL_SUM", self._ecal_ids)):
            cid = ch.by_name(name).id
            if self.hv_set[cid] <= 0:
                factor[cid] = factor[cells].mean()
        gain = self.hidden_gain if t_unix is None else self.hidden_gain * self.drift.factor(t_unix)
        return gain / self.gev_per_count * factor

    def nominal_vmon(self) -> np.ndarray:
        """The calibration HV set points (N_CHANNELS,): VMON of a mainframe at its nominal settings."""
        return self.hv_set.copy()

    # ---------------------------------------------------------------------------------- primitives
    def primitives(
        self, spill: BeamSpill, dep: Deposits, hv_vmon: np.ndarray, out: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Trigger primitives of the whole spill: int16 (N, 6, 32) waveforms of S1, S2, S3, V1, PS_SUM,
        ECAL_SUM (pile-up, noise, pedestals, 12-bit clip) and float64 (N,) arrival times (ns since the spill
        start). ``out`` may pass a reusable (>= N, 6, 32) int16 buffer (its first N records are used)."""
        n = spill.n
        if dep.n != n:
            raise ValueError(f"deposits are for {dep.n} particles, the spill has {n}")
        times = spill.times_ns  # the spill's contiguous copy (read only), also returned
        ids = self.trigger_ids
        scale = self.amplitude_scale(hv_vmon, float(spill.start_unix))[ids]
        if out is None:
            out = np.empty((n, ch.N_TRIGGER_CHANNELS, N_SAMPLES), dtype=np.int16)
        elif out.dtype != np.int16 or out.shape[0] < n or out.shape[1:] != (ch.N_TRIGGER_CHANNELS, N_SAMPLES):
            raise ValueError(f"out must be int16 (>= {n}, 6, 32); got {out.dtype} {out.shape}")
        out = out[:n]
        if n:
            args = (
                times,
                np.ascontiguousarray(dep.trigger),
                scale,
                self.t0_ns[ids],
                np.ascontiguousarray(self.ped_pattern[ids]),
                np.float32(self.noise_rms),
                self.noise_bank,
                ids.astype(np.int64),
                np.uint64(spill.seed),
                TEMPLATE_TABLE,
                self._before,
                self._after,
                out,
            )
            run_ranges(lambda b_lo, b_hi: _primitives_kernel(b_lo, b_hi, *args), (n + BLOCK - 1) // BLOCK)
        return out, times

    # ---------------------------------------------------------------------------------- LED pulses
    def led_events(
        self, light: np.ndarray, times_ns: np.ndarray, hv_vmon: np.ndarray, t_unix: float, seed: int
    ) -> np.ndarray:
        """Full waveforms int16 (m, N_CHANNELS, 32) of LED pulses: ``light`` (m, N_CHANNELS) deposit-equivalent
        GeV per pulse and channel (:class:`sim_frontend.led_pulser.LedPulser`), ``times_ns`` (m,) their times
        (ms apart: no pile-up between them), the gains at unix time ``t_unix`` and HV ``hv_vmon``; noise
        offsets hashed from ``seed`` and record numbers above any beam record's. The same kernel as
        :meth:`events`."""
        dep = np.ascontiguousarray(light, dtype=np.float32)
        m = dep.shape[0]
        if dep.shape != (m, N_CHANNELS) or np.shape(times_ns) != (m,):
            raise ValueError(f"LED light must be (m, {N_CHANNELS}) with m times; got {dep.shape}, {np.shape(times_ns)}")
        out = np.empty((m, N_CHANNELS, N_SAMPLES), dtype=np.int16)
        if m == 0:
            return out
        rows = np.arange(m, dtype=np.int64)
        _events_kernel(
            rows + (1 << 40),  # record numbers for the noise hash: apart from the beam records'
            rows,
            rows,
            np.ones(m, dtype=np.int64),
            np.ascontiguousarray(times_ns, dtype=np.float64),
            dep,
            self.amplitude_scale(hv_vmon, float(t_unix)),
            self.t0_ns,
            self.ped_pattern,
            np.float32(self.noise_rms),
            self.noise_bank,
            np.uint64(seed),
            TEMPLATE_TABLE,
            self._before,
            self._after,
            out,
        )
        return out

    # -------------------------------------------------------------------------------------- events
    def events(self, spill: BeamSpill, dep: Deposits, indices: np.ndarray, hv_vmon: np.ndarray) -> np.ndarray:
        """Full waveforms int16 (len(indices), N_CHANNELS, 32) of the records ``indices`` (any order),
        pile-up included; the trigger channels are bit-identical to :meth:`primitives`."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = spill.n
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f"record indices must be in 0..{n - 1}")
        out = np.empty((idx.size, N_CHANNELS, N_SAMPLES), dtype=np.int16)
        if idx.size == 0:
            return out
        times = spill.times_ns
        scale = self.amplitude_scale(hv_vmon, float(spill.start_unix))
        # neighbour ranges [lo, hi) of every record, and their union
        lo = np.searchsorted(times, times[idx] - self._before - 1.0, side="right")  # 1 ns margin: the kernel
        hi = np.searchsorted(times, times[idx] + self._after + 1.0, side="left")  # makes the exact cut
        lo = np.minimum(lo, idx)
        hi = np.maximum(hi, idx + 1)
        union = _union_of_ranges(lo, hi)
        dep_u = channel_deposits(spill, dep, union)
        times_u = np.ascontiguousarray(times[union], dtype=np.float64)
        row_first = np.searchsorted(union, lo)
        row_count = hi - lo
        rec_row = np.searchsorted(union, idx)
        args = (self.t0_ns, self.ped_pattern, np.float32(self.noise_rms), self.noise_bank, np.uint64(spill.seed))
        run_ranges(
            lambda a, b: _events_kernel(
                idx[a:b],
                rec_row[a:b],
                row_first[a:b],
                row_count[a:b],
                times_u,
                dep_u,
                scale,
                *args,
                TEMPLATE_TABLE,
                self._before,
                self._after,
                out[a:b],
            ),
            idx.size,
            EVENTS_PER_THREAD,
        )
        return out
