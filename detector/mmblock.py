"""The Micromegas readout block: the wire and file layout of zero-suppressed APV25-like strip data
(docs/protocols.md section 1, ``MM:DATA?``), written once for the emulated crate, the DAQ and the spill file.

A strip record (:data:`MM_STRIP_DTYPE`, 10 bytes, little-endian, packed): ``plane`` (u1: 2 * station + 0 for
X, 1 for Y), ``reserved`` (u1, 0), ``strip`` (u2, numbered from the low edge of the plane), ``adc`` (3 x i2: the
strip's pulse sampled :data:`N_MM_SAMPLES` times, :data:`SAMPLE_PERIOD_NS` apart, ADC counts above pedestal).

The APV25 shaper is a CR-RC of time constant :data:`SHAPING_NS`: a charge q gives q (t/tau) exp(1 - t/tau), and
the samples are taken at t = 1, 2, 3 sample periods after the hit, the second one at the peak
(:data:`SAMPLE_SHAPE`). The strip charge of the reconstruction is the largest sample (:func:`strip_charge`).

A block of ``count`` events: ``count + 1`` uint32 strip offsets (the strips of event e are records
``ptr[e]..ptr[e+1]-1``; ``ptr[0] = 0``, non-decreasing) followed by ``ptr[count]`` strip records.
"""

from __future__ import annotations

import numpy as np

from .tracking import StripData

N_MM_SAMPLES = 3  #: time samples per strip
SAMPLE_PERIOD_NS = 25.0  #: APV25 sampling period (40 MHz), ns
SHAPING_NS = 50.0  #: CR-RC shaping time of the APV25 preamplifier, ns
_T = SAMPLE_PERIOD_NS * np.arange(1, N_MM_SAMPLES + 1) / SHAPING_NS
SAMPLE_SHAPE = _T * np.exp(1.0 - _T)  #: relative pulse height at the samples (1 at the peak sample)
ADC_MAX = 32767  #: largest sample value (int16)

MM_STRIP_DTYPE = np.dtype([("plane", "u1"), ("reserved", "u1"), ("strip", "<u2"), ("adc", "<i2", (N_MM_SAMPLES,))])
PTR_DTYPE = np.dtype("<u4")


class MMBlockError(ValueError):
    """An ``MM:DATA?`` block is not the documented layout; the text says why."""


def strip_records(strips: StripData) -> np.ndarray:
    """The :data:`MM_STRIP_DTYPE` records of ``strips`` (charge in ADC counts -> samples of the pulse)."""
    rec = np.zeros(strips.plane.shape[0], MM_STRIP_DTYPE)
    rec["plane"] = strips.plane
    rec["strip"] = strips.strip
    q = np.asarray(strips.charge, np.float64)[:, None] * SAMPLE_SHAPE[None, :]
    rec["adc"] = np.clip(np.rint(q), 0, ADC_MAX).astype(np.int16)
    return rec


def encode_block(strips: StripData) -> bytes:
    """The block payload of ``strips`` (offsets then records; see the module docstring)."""
    ptr = np.asarray(strips.event_ptr, np.int64)
    if ptr[-1] > np.iinfo(np.uint32).max:
        raise ValueError(f"{ptr[-1]} strips do not fit a uint32 offset")
    return ptr.astype(PTR_DTYPE).tobytes() + strip_records(strips).tobytes()


def strip_charge(records: np.ndarray) -> np.ndarray:
    """Strip charges (ADC counts, float32) of :data:`MM_STRIP_DTYPE` records: the largest sample (taken sample
    by sample: a reduction over the short, unaligned axis of the packed records is 5x slower)."""
    adc = records["adc"]
    peak = adc[:, 0]
    for k in range(1, N_MM_SAMPLES):
        peak = np.maximum(peak, adc[:, k])
    return peak.astype(np.float32)


def strip_data(event_ptr: np.ndarray, records: np.ndarray) -> StripData:
    """The :class:`StripData` of offsets ``event_ptr`` (n + 1) and their strip records."""
    return StripData(
        np.asarray(event_ptr, np.int64),
        np.ascontiguousarray(records["plane"]),
        np.ascontiguousarray(records["strip"]),
        strip_charge(records),
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
    )


def empty(n_events: int = 0) -> StripData:
    """``n_events`` events without strips."""
    return StripData(
        np.zeros(n_events + 1, np.int64), np.empty(0, np.uint8), np.empty(0, np.uint16), np.empty(0, np.float32)
    )
