"""The Micromegas readout block: the wire and file layout of zero-suppressed APV25-like strip data
(docs/protocols.md section 1, ``MM:DATA?``), written once for the emulated crate, the DAQ and the spill file.

A strip record (:data:`MM_STRIP_DTYPE`, 10 bytes, little-endian, packed): ``plane`` (u1: 2 * station + 0 for
X, 1 for Y), ``reserved`` (u1, 0), ``strip`` (u2, numbered from the low edge of the plane), ``adc`` (3 x i2: the
strip's pulse sampled :data:`N_MM_SAMPLES` times, :data:`SAMPLE_PERIOD_NS` apart, ADC counts above pedestal).

The APV25 shaper is a CR-RC of time constant :data:`SHAPING_NS`: a charge q arriving at t_h gives
q x exp(1 - x), x = (t - t_h) / tau, for t > t_h (0 before: :func:`pulse_shape`), peaking at q. The samples are
taken at :data:`SAMPLE_TIMES_NS` = 25, 50, 75 ns after the event's trigger, so that the pulse of a hit in time
with the trigger (t_h = 0) peaks at the second one (:data:`SAMPLE_SHAPE`); a hit t_h ns later (another beam
particle of the readout window, or the time resolution) is sampled t_h earlier on its pulse.

Decoding (:func:`strip_charge_time`, closed form): two samples a < b on the pulse (after t_h), D = t_b - t_a
apart, give R = (s_b / s_a) exp(D / tau) = (x_a + D / tau) / x_a, so x_a = (D / tau) / (R - 1), the hit time
t_h = t_a - tau x_a and the charge q = s_a / (x_a exp(1 - x_a)). The pair is (s1, s3) (the longest lever
arm) when the first sample is above 0, else (s2, s3) (a pulse starting after the first sample); the
remaining sample must then equal the pulse's value there within :data:`SAMPLE_TOLERANCE` (the rounding to
whole counts). A strip whose samples are not one pulse of this shape (R <= 1, the remaining sample off), or
that has fewer than two samples above 0 (a pulse starting after the second sample: at least ~50 ns late),
has no time (NaN: never in time) and the largest sample as its charge.

A block of ``count`` events: ``count + 1`` uint32 strip offsets (the strips of event e are records
``ptr[e]..ptr[e+1]-1``; ``ptr[0] = 0``, non-decreasing) followed by ``ptr[count]`` strip records.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from .tracking import StripData

N_MM_SAMPLES = 3  #: time samples per strip
SAMPLE_PERIOD_NS = 25.0  #: APV25 sampling period (40 MHz), ns
SHAPING_NS = 50.0  #: CR-RC shaping time of the APV25 preamplifier, ns
SAMPLE_TIMES_NS = SAMPLE_PERIOD_NS * np.arange(1, N_MM_SAMPLES + 1)  #: sample times after the trigger, ns
ADC_MAX = 32767  #: largest sample value (int16)
#: largest difference (ADC counts) between the remaining sample and the pulse through the other two, as
#: (counts, fraction of the charge): the rounding of the samples to whole counts, propagated through the
#: closed form, reaches 1.05 counts and, for a pulse starting just before the first sample (whose value then
#: moves by q e / tau per ns), 0.09 q at q = 20 counts, 0.02 q at 100 (tests/test_mmblock.py)
SAMPLE_TOLERANCE = (1.5, 0.1)


def pulse_shape(dt_ns: np.ndarray | float) -> np.ndarray:
    """CR-RC pulse height relative to its peak ``dt_ns`` ns after the hit (0 before it; 1 at ``SHAPING_NS``)."""
    x = np.asarray(dt_ns, np.float64) / SHAPING_NS
    with np.errstate(invalid="ignore", over="ignore"):
        return np.where(x > 0.0, x * np.exp(1.0 - x), 0.0)


SAMPLE_SHAPE = pulse_shape(SAMPLE_TIMES_NS)  #: relative pulse height at the samples of an in-time hit

MM_STRIP_DTYPE = np.dtype([("plane", "u1"), ("reserved", "u1"), ("strip", "<u2"), ("adc", "<i2", (N_MM_SAMPLES,))])
PTR_DTYPE = np.dtype("<u4")


class MMBlockError(ValueError):
    """An ``MM:DATA?`` block is not the documented layout; the text says why."""


def strip_samples(charge: np.ndarray, time_ns: np.ndarray) -> np.ndarray:
    """(n, N_MM_SAMPLES) int16 samples (ADC counts) of strips of ``charge`` (ADC counts) hit at ``time_ns``
    (ns after the trigger; NaN: no pulse in the window, all samples 0)."""
    t = np.asarray(time_ns, np.float64)[:, None]
    shape = np.nan_to_num(pulse_shape(SAMPLE_TIMES_NS[None, :] - t), nan=0.0)
    q = np.asarray(charge, np.float64)[:, None] * shape
    return np.clip(np.rint(q), 0, ADC_MAX).astype(np.int16)


def strip_records(strips: StripData) -> np.ndarray:
    """The :data:`MM_STRIP_DTYPE` records of ``strips`` (charge in ADC counts and time -> samples of the pulse)."""
    rec = np.zeros(strips.plane.shape[0], MM_STRIP_DTYPE)
    rec["plane"] = strips.plane
    rec["strip"] = strips.strip
    rec["adc"] = strip_samples(strips.charge, strips.time_ns)
    return rec


def encode_block(strips: StripData) -> bytes:
    """The block payload of ``strips`` (offsets then records; see the module docstring)."""
    ptr = np.asarray(strips.event_ptr, np.int64)
    if ptr[-1] > np.iinfo(np.uint32).max:
        raise ValueError(f"{ptr[-1]} strips do not fit a uint32 offset")
    return ptr.astype(PTR_DTYPE).tobytes() + strip_records(strips).tobytes()


def strip_charge_time(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(charge, time) float32 of strips of ``samples`` ((n, N_MM_SAMPLES) ADC counts): the pulse's height (ADC
    counts) and hit time (ns after the trigger) by the closed form of the module docstring; a strip whose
    samples are not one pulse: the largest sample (at least 0) and NaN."""
    s = np.ascontiguousarray(samples, np.float64).reshape(-1, N_MM_SAMPLES)
    charge = np.empty(s.shape[0], np.float32)
    time = np.empty(s.shape[0], np.float32)
    _charge_time_kernel(s, SAMPLE_TIMES_NS, SHAPING_NS, SAMPLE_TOLERANCE[0], SAMPLE_TOLERANCE[1], charge, time)
    return charge, time


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _charge_time_kernel(s, t_samples, tau, tol_counts, tol_frac, charge, time):  # pragma: no cover - numba
    """One pass over the strips (the DAQ decodes ~1e6 strips per block of events at 1e7 e-/spill)."""
    for i in range(s.shape[0]):
        s0, s1, s2 = s[i, 0], s[i, 1], s[i, 2]
        peak = max(0.0, max(s0, max(s1, s2)))
        if s0 <= 0.0:  # the pulse starts after the first sample: pair (s2, s3), check s1
            a, other, sa, so = 1, 0, s1, s0
        else:  # pair (s1, s3), check s2
            a, other, sa, so = 0, 1, s0, s1
        ok = sa > 0.0 and s2 > 0.0
        q = th = 0.0
        if ok:
            delta = (t_samples[2] - t_samples[a]) / tau
            r = s2 / sa * np.exp(delta)
            ok = r > 1.0
            if ok:
                xa = delta / (r - 1.0)
                q = sa / (xa * np.exp(1.0 - xa))
                th = t_samples[a] - tau * xa
                x = (t_samples[other] - th) / tau
                pred = q * x * np.exp(1.0 - x) if x > 0.0 else 0.0
                ok = abs(pred - so) <= tol_counts + tol_frac * q
        if ok:
            charge[i] = q
            time[i] = th
        else:
            charge[i] = peak
            time[i] = np.nan


def strip_data(event_ptr: np.ndarray, records: np.ndarray) -> StripData:
    """The :class:`StripData` of offsets ``event_ptr`` (n + 1) and their strip records."""
    charge, time = strip_charge_time(records["adc"])
    return StripData(
        np.asarray(event_ptr, np.int64),
        np.ascontiguousarray(records["plane"]),
        np.ascontiguousarray(records["strip"]),
        charge,
        time,
    )


def decode_block(payload: bytes | np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """(offsets int64 (count + 1,), records) of a block of ``count`` events; :class:`MMBlockError` when the
    payload does not have the documented layout (offsets not starting at 0, decreasing, or not matching the
    number of records that follow)."""
    buf = np.frombuffer(payload, np.uint8) if not isinstance(payload, np.ndarray) else payload.view(np.uint8)
    head = (count + 1) * PTR_DTYPE.itemsize
    if buf.size < head:
        raise MMBlockError(f"block of {buf.size} bytes is shorter than the {head} bytes of {count + 1} offsets")
    ptr = buf[:head].view(PTR_DTYPE).astype(np.int64)
    rest = buf.size - head
    if rest % MM_STRIP_DTYPE.itemsize:
        raise MMBlockError(f"{rest} bytes after the offsets are not whole {MM_STRIP_DTYPE.itemsize}-byte strips")
    n = rest // MM_STRIP_DTYPE.itemsize
    if ptr[0] != 0 or ptr[-1] != n or (count and bool(np.any(np.diff(ptr) < 0))):
        raise MMBlockError(f"offsets (first {ptr[0]}, last {ptr[-1]}) do not delimit the {n} strips that follow")
    return ptr, buf[head:].view(MM_STRIP_DTYPE)


def concat(parts: list[StripData]) -> StripData:
    """The events of ``parts`` one after the other, as one :class:`StripData`."""
    ptr = [np.zeros(1, np.int64)]
    off = 0
    for p in parts:
        ptr.append(np.asarray(p.event_ptr[1:], np.int64) + off)
        off += int(p.event_ptr[-1])
    return StripData(
        np.concatenate(ptr),
        np.concatenate([p.plane for p in parts] or [np.empty(0, np.uint8)]).astype(np.uint8, copy=False),
        np.concatenate([p.strip for p in parts] or [np.empty(0, np.uint16)]).astype(np.uint16, copy=False),
        np.concatenate([p.charge for p in parts] or [np.empty(0, np.float32)]).astype(np.float32, copy=False),
        np.concatenate([p.time_ns for p in parts] or [np.empty(0, np.float32)]).astype(np.float32, copy=False),
    )


def empty(n_events: int = 0) -> StripData:
    """``n_events`` events without strips."""
    return StripData.empty(n_events)
