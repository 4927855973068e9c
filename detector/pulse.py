"""MSADC pulse model, energy/time -> waveform (the simulation direction).

Template (docs/physics.md 1.5, CR-RC^2-like, unit peak at ``d = n*tau``)::

    p(t) = A * (d / (n tau))^n * exp(n - d / tau)   for d = t - t0 >= 0, else 0;  n = 2, tau = 12 ns

Sample ``k`` of the 32-sample window is taken at ``t_k = k * 12.5 ns``. Even and odd samples come from
two interleaved ADC phases with separate pedestals. White noise (1.5 counts RMS by default) is added and
the result is rounded and clipped to the 12-bit range 0..4095.

Pile-up is made by adding several pulses to one waveform before digitising (:func:`add_pulses`).
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from .channels import ADC_MAX, N_SAMPLES, SAMPLE_NS

TEMPLATE_N = 2
TEMPLATE_TAU_NS = 12.0
PEAK_DELAY_NS = TEMPLATE_N * TEMPLATE_TAU_NS  #: onset -> peak, ns (24 ns)
TEMPLATE_LENGTH_NS = 250.0  #: beyond this the template is < 1e-6 and treated as 0
NOISE_RMS_COUNTS = 1.5  #: default white noise per sample, ADC counts
NOISE_BANK_SIZE = 1 << 20


@nb.njit(cache=True, nogil=True, inline="always")
def template_value(d_ns: float) -> float:
    """Unit-peak template at ``d_ns`` ns after the onset (0 before the onset and after 250 ns)."""
    if d_ns <= 0.0 or d_ns >= TEMPLATE_LENGTH_NS:
        return 0.0
    u = d_ns / PEAK_DELAY_NS
    return u * u * math.exp(TEMPLATE_N - d_ns / TEMPLATE_TAU_NS)


def template(d_ns: np.ndarray | float) -> np.ndarray:
    """Vectorised unit-peak template (numpy), ``d_ns`` in ns after onset."""
    d = np.asarray(d_ns, dtype=np.float64)
    u = np.where(d > 0, d / PEAK_DELAY_NS, 0.0)
    out = u**TEMPLATE_N * np.exp(TEMPLATE_N - np.where(d > 0, d, 0.0) / TEMPLATE_TAU_NS)
    return np.where((d > 0) & (d < TEMPLATE_LENGTH_NS), out, 0.0)


def sample_times_ns() -> np.ndarray:
    """Sampling instants of the readout window, ns (32 values, 12.5 ns apart)."""
    return np.arange(N_SAMPLES) * SAMPLE_NS


def pulse_samples(amplitude: float, t0_ns: float) -> np.ndarray:
    """Noise-free, pedestal-free samples (float64, 32) of one pulse of ``amplitude`` ADC counts whose
    onset is at ``t0_ns`` in the window."""
    return amplitude * template(sample_times_ns() - t0_ns)


@nb.njit(cache=True, nogil=True)
def add_pulses(analog: np.ndarray, target: np.ndarray, amplitude: np.ndarray, t0_ns: np.ndarray) -> None:
    """Add pulses into ``analog`` (float32, shape (W, 32)), in place.

    Pulse ``i`` of ``amplitude[i]`` ADC counts with onset ``t0_ns[i]`` (ns, may be negative or beyond
    the window: only its visible part is added) goes into waveform ``target[i]``. Several pulses may
    target the same waveform (pile-up)."""
    for i in range(target.shape[0]):
        a = amplitude[i]
        if a == 0.0:
            continue
        w = target[i]
        t0 = t0_ns[i]
        k0 = int(math.floor(t0 / SAMPLE_NS)) + 1
        if k0 < 0:
            k0 = 0
        for k in range(k0, N_SAMPLES):
            d = k * SAMPLE_NS - t0
            if d >= TEMPLATE_LENGTH_NS:
                break
            analog[w, k] += a * template_value(d)


def make_noise_bank(seed: int = 0, size: int = NOISE_BANK_SIZE) -> np.ndarray:
    """Bank of standard-normal float32 numbers that :func:`digitize` draws noise from."""
    return np.random.default_rng(seed).standard_normal(size).astype(np.float32)


@nb.njit(cache=True, nogil=True, inline="always")
def _xorshift(state: np.uint64) -> np.uint64:
    state ^= state << np.uint64(13)
    state ^= state >> np.uint64(7)
    state ^= state << np.uint64(17)
    return state


@nb.njit(cache=True, nogil=True)
def digitize(
    analog: np.ndarray,
    pedestal_even: np.ndarray,
    pedestal_odd: np.ndarray,
    noise_rms: float,
    noise_bank: np.ndarray,
    seed: int,
    out: np.ndarray,
) -> None:
    """Digitise ``analog`` (float32, shape (W, C, 32), ADC counts above pedestal) into ``out``
    (int16, same shape): add the per-channel even/odd pedestal (arrays of C), add white noise of
    ``noise_rms`` counts (drawn from ``noise_bank`` at a pseudo-random offset per waveform), round, and
    clip to 0..4095. Deterministic for a given ``seed``."""
    n_w, n_c, n_s = analog.shape
    bank_n = noise_bank.shape[0] - n_s
    state = np.uint64(seed * 2654435761 + 88172645463325252) | np.uint64(1)
    for w in range(n_w):
        for c in range(n_c):
            state = _xorshift(state)
            off = int(state % np.uint64(bank_n))
            pe = pedestal_even[c]
            po = pedestal_odd[c]
            for k in range(n_s):
                v = analog[w, c, k] + (pe if (k & 1) == 0 else po) + noise_rms * noise_bank[off + k]
                v = math.floor(v + 0.5)
                if v < 0.0:
                    v = 0.0
                elif v > ADC_MAX:
                    v = ADC_MAX
                out[w, c, k] = np.int16(v)


def synthesize(
    amplitude: np.ndarray,
    t0_ns: np.ndarray,
    pedestal_even: float | np.ndarray = 150.0,
    pedestal_odd: float | np.ndarray = 156.0,
    noise_rms: float = NOISE_RMS_COUNTS,
    seed: int = 0,
) -> np.ndarray:
    """Waveforms of single pulses (convenience for tests and small samples).

    ``amplitude`` (ADC counts) and ``t0_ns`` (onset, ns) have shape (W, C); pedestals are scalars or
    arrays of C. Returns int16 (W, C, 32)."""
    amp = np.atleast_2d(np.asarray(amplitude, dtype=np.float64))
    t0 = np.broadcast_to(np.asarray(t0_ns, dtype=np.float64), amp.shape)
    n_w, n_c = amp.shape
    analog = np.zeros((n_w * n_c, N_SAMPLES), dtype=np.float32)
    add_pulses(analog, np.arange(n_w * n_c), amp.ravel(), np.ascontiguousarray(t0).ravel())
    pe = np.broadcast_to(np.asarray(pedestal_even, dtype=np.float32), (n_c,)).copy()
    po = np.broadcast_to(np.asarray(pedestal_odd, dtype=np.float32), (n_c,)).copy()
    out = np.empty((n_w, n_c, N_SAMPLES), dtype=np.int16)
    digitize(analog.reshape(n_w, n_c, N_SAMPLES), pe, po, float(noise_rms), make_noise_bank(seed), seed, out)
    return out
