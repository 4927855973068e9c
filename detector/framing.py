"""ZeroMQ framing of numpy arrays (docs/protocols.md section 4).

A message is the multipart ``[topic, header, payload_0, payload_1, ...]``: ``topic`` ASCII, ``header``
UTF-8 JSON (schema version, topic, sequence number, time, run, spill, the dtype and shape of every
payload, free ``meta``), and one raw C-contiguous buffer per array. Buffers are handed to ZeroMQ without
copying and decoded with ``numpy.frombuffer`` on the received frames. Never pickle.

This module does not import ZeroMQ: :func:`send_message` and :func:`recv_message` take any socket with
``send_multipart`` / ``recv_multipart`` (pyzmq's), so every package can use them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SCHEMA_VERSION = 2  #: 2: sequence numbers count per topic (detector.monitoring)
MAX_HEADER_BYTES = 1 << 20
MAX_ARRAYS = 64
MAX_NDIM = 32  #: numpy's own limit is 64; no message of ours has more than 3 dimensions
MAX_NAME_CHARS = 128
_ALLOWED_KINDS = set("biuf")  # bool, signed/unsigned int, float; structured dtypes via "descr"


class FramingError(ValueError):
    """A message is malformed or does not match its header; the text says why."""


@dataclass
class Message:
    """A decoded message. ``arrays`` are read-only views on the received frames (no copy)."""

    topic: str
    seq: int
    time: float
    run: int | None
    spill: int | None
    meta: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def _dtype_spec(dt: np.dtype) -> Any:
    if dt.fields is not None:
        return dt.descr
    if dt.kind not in _ALLOWED_KINDS:
        raise FramingError(f"dtype {dt} cannot be framed (only bool, int, uint, float and structs of them)")
    return dt.str


def _parse_dtype(spec: Any) -> np.dtype:
    try:
        if isinstance(spec, str):
            dt = np.dtype(spec)
            if dt.kind not in _ALLOWED_KINDS:
                raise FramingError(f"dtype {spec!r} is not allowed")
            return dt
        if isinstance(spec, list):
            dt = np.dtype([tuple(x) for x in spec])
            if not dt.fields or any(f[0].kind not in _ALLOWED_KINDS for f in dt.fields.values()):
                raise FramingError(f"structured dtype {str(spec)[:200]} is empty or has a field that is not numeric")
            return dt
    except (TypeError, ValueError) as exc:
        if isinstance(exc, FramingError):
            raise
        raise FramingError(f"bad dtype {str(spec)[:200]}: {exc}") from None
    raise FramingError(f"bad dtype {str(spec)[:200]}")


def encode(
    topic: str,
    seq: int,
    arrays: dict[str, np.ndarray] | None = None,
    meta: dict[str, Any] | None = None,
    run: int | None = None,
    spill: int | None = None,
    now: float | None = None,
) -> list[Any]:
    """Frames of one message. Array payloads are memoryviews on the arrays' own memory (zero-copy);
    non-contiguous arrays are made contiguous first."""
    if not topic or not topic.isascii() or len(topic) > 64:
        raise FramingError(f"topic {topic!r} must be 1..64 ASCII characters")
    arrays = arrays or {}
    if len(arrays) > MAX_ARRAYS:
        raise FramingError(f"too many arrays ({len(arrays)} > {MAX_ARRAYS})")
    specs, payloads = [], []
    for name, arr in arrays.items():
        a = np.ascontiguousarray(arr)
        specs.append({"name": str(name), "dtype": _dtype_spec(a.dtype), "shape": list(a.shape)})
        payloads.append(a.reshape(-1).view(np.uint8).data if a.size else b"")
    header = {
        "schema": SCHEMA_VERSION,
        "topic": topic,
        "seq": int(seq),
        "time": time.time() if now is None else float(now),
        "run": run,
        "spill": spill,
        "arrays": specs,
        "meta": meta or {},
    }
    try:
        head = json.dumps(header, allow_nan=False, separators=(",", ":")).encode()
    except (TypeError, ValueError) as exc:
        raise FramingError(f"header of topic {topic!r} is not JSON-serialisable: {exc}") from None
    return [topic.encode("ascii"), head, *payloads]


def as_received(
    topic: str,
    seq: int,
    arrays: dict[str, np.ndarray] | None = None,
    meta: dict[str, Any] | None = None,
    run: int | None = None,
    spill: int | None = None,
    now: float | None = None,
) -> Message:
    """The message a subscriber would decode from these contents: framed by :func:`encode` and decoded by
    :func:`decode` (the replay and the synthetic source hand the monitor messages exactly as received)."""
    return decode(encode(topic, seq, arrays, meta, run, spill, now))


def _no_constant(name: str) -> Any:
    """``json.loads`` hook: NaN and +/-Infinity are not JSON (``encode`` never writes them)."""
    raise FramingError(f"header contains {name}, which is not JSON (only finite numbers are)")


def _frame_bytes(frame: Any) -> memoryview:
    buf = getattr(frame, "buffer", None)  # zmq.Frame
    return memoryview(buf if buf is not None else frame)


def decode(frames: Iterable[Any]) -> Message:
    """Decode the frames of one message (bytes, memoryviews or ``zmq.Frame`` objects).
    Raises :class:`FramingError` with the reason for anything malformed, and for nothing else: every
    other failure while decoding (a frame that is no buffer, numpy refusing a dtype or a shape) is
    wrapped as a :class:`FramingError` too, so a receiver loop that catches it never dies of bad input."""
    try:
        return _decode(list(frames))
    except FramingError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever bad input provokes is a malformed message
        raise FramingError(f"malformed message: {type(exc).__name__}: {str(exc)[:200]}") from None


def _checked_shape(shape: Any, name: str, itemsize: int, nbytes: int) -> tuple[int, ...]:
    """``shape`` as a tuple of ints, bounded: at most :data:`MAX_NDIM` dimensions, each a non-negative int
    (no bool), and ``product(shape) * itemsize`` (bytes, computed exactly, no int64 overflow) equal to
    ``nbytes``, the bytes of the frame that carries the array."""
    if not isinstance(shape, list) or len(shape) > MAX_NDIM:
        raise FramingError(f"bad shape of array {name!r}: a list of at most {MAX_NDIM} dimensions is expected")
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
        raise FramingError(f"bad shape {str(shape)[:200]} of array {name!r}: dimensions must be integers >= 0")
    count = 1
    for s in shape:
        count *= s  # Python ints: exact however large
    if count * itemsize != nbytes:
        raise FramingError(
            f"array {name!r}: {nbytes} bytes received, {itemsize}-byte items x {str(shape)[:200]} "
            f"needs {count * itemsize}"
        )
    if itemsize == 0 and count > nbytes + MAX_HEADER_BYTES:
        raise FramingError(f"array {name!r}: zero-size items in a shape of {count} elements")
    return tuple(shape)


def _decode(frames: list[Any]) -> Message:
    if len(frames) < 2:
        raise FramingError(f"a message needs at least 2 frames (topic, header); got {len(frames)}")
    topic_b = bytes(_frame_bytes(frames[0]))
    try:
        topic = topic_b.decode("ascii")
    except UnicodeDecodeError:
        raise FramingError(f"topic frame is not ASCII: {topic_b[:32]!r}") from None
    head_b = _frame_bytes(frames[1])
    if head_b.nbytes > MAX_HEADER_BYTES:
        raise FramingError(f"header of {head_b.nbytes} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = json.loads(bytes(head_b).decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FramingError(f"header is not UTF-8 JSON: {exc}") from None
    if not isinstance(header, dict):
        raise FramingError("header is not a JSON object")
    if header.get("schema") != SCHEMA_VERSION:
        raise FramingError(f"schema version {header.get('schema')!r} is not {SCHEMA_VERSION}")
    if header.get("topic") != topic:
        raise FramingError(f"topic frame {topic!r} does not match header topic {header.get('topic')!r}")
    seq = header.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise FramingError(f"bad sequence number {seq!r}")
    specs = header.get("arrays", [])
    if not isinstance(specs, list) or len(specs) != len(frames) - 2:
        n = len(specs) if isinstance(specs, list) else "?"
        raise FramingError(f"header announces {n} arrays but {len(frames) - 2} payload frames arrived")
    arrays: dict[str, np.ndarray] = {}
    for spec, frame in zip(specs, frames[2:]):
        if not isinstance(spec, dict) or not {"name", "dtype", "shape"} <= set(spec):
            raise FramingError(f"bad array description {str(spec)[:200]}")
        name = spec["name"]
        if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_CHARS or name in arrays:
            raise FramingError(f"bad or repeated array name {str(name)[:200]!r}")
        dt = _parse_dtype(spec["dtype"])
        buf = _frame_bytes(frame)
        shape = _checked_shape(spec["shape"], name, dt.itemsize, buf.nbytes)
        arrays[name] = np.frombuffer(buf, dtype=dt).reshape(shape) if buf.nbytes else np.empty(shape, dt)
    meta = header.get("meta", {})
    if not isinstance(meta, dict):
        raise FramingError("meta is not a JSON object")
    t = header.get("time", 0.0)
    for key in ("run", "spill"):
        v = header.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool)):
            raise FramingError(f"header {key} {str(v)[:40]!r} is not an integer or null")
    return Message(
        topic=topic,
        seq=seq,
        time=float(t) if isinstance(t, (int, float)) else 0.0,
        run=header.get("run"),
        spill=header.get("spill"),
        meta=meta,
        arrays=arrays,
    )


def send_message(
    sock: Any,
    topic: str,
    seq: int,
    arrays: dict[str, np.ndarray] | None = None,
    meta: dict[str, Any] | None = None,
    run: int | None = None,
    spill: int | None = None,
    flags: int = 0,
) -> None:
    """Encode and send one message on a pyzmq socket, zero-copy."""
    sock.send_multipart(encode(topic, seq, arrays, meta, run, spill), flags=flags, copy=False)


def recv_message(sock: Any, flags: int = 0) -> Message:
    """Receive and decode one message from a pyzmq socket, zero-copy (raises FramingError)."""
    return decode(sock.recv_multipart(flags=flags, copy=False))


class SeqTracker:
    """Counts messages a consumer missed from the sequence numbers of one publisher."""

    def __init__(self) -> None:
        self.last: int | None = None
        self.received = 0
        self.missed = 0
        self.restarts = 0

    def update(self, seq: int) -> int:
        """Record ``seq``; returns how many messages were missed just before it."""
        self.received += 1
        gap = 0
        if self.last is not None:
            if seq > self.last + 1:
                gap = seq - self.last - 1
            elif seq <= self.last:  # the publisher restarted
                self.restarts += 1
        self.missed += gap
        self.last = seq
        return gap
