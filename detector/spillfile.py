"""The recorded-data layout: one directory per run, one HDF5 file per spill, a run record (:mod:`detector.runrecord`).

The ONE writer and ONE reader, used by the recorder (online), the monitor's replay and offline.

Run directory ``<out>/run-<number>/``:
- ``spill-<number>.h5`` per spill (layout below), written to ``.spill-<number>.h5.tmp-<pid>``, flushed,
  fsync'd, closed and atomically renamed, then the directory is fsync'd: a crash loses at most the spill
  in flight and never corrupts a finished one (an unflushed HDF5 file is unreadable; docs/stack.md);
- the run record (``run.json`` summary and ``spills.jsonl`` journal): :mod:`detector.runrecord`.

HDF5 never sees a failed write: libhdf5 does not survive one (a write error while a file is open, e.g. a
full disk, leaves the library in a state where the next HDF5 call, or the interpreter's exit, segfaults;
measured with h5py 3 / HDF5 1.14). The spill file is therefore written through :class:`_FailSafeFile`,
h5py's file-object driver on a plain file descriptor: the first failed ``pwrite``/``ftruncate`` is kept,
every later write becomes a no-op, HDF5 closes normally, and :func:`write_spill` then removes the partial
file and raises :class:`SpillWriteError` (an ``OSError`` with the original errno).

Spill file::

    /                      attrs: schema_version, run, spill, crate_spill, start_unix, length_s,
                                  n_particles, n_accepted, n_read_out, n_recorded, eot, written_unix,
                                  and JSON strings: flags, scalers, triggers, trigger_menu, hv, table, extra
    /events/event_id       (n,) uint32   record index in the spill's trigger primitives
    /events/trigger_mask   (n,) uint8    detector.records.TRIGGER_BITS
    /events/time_ns        (n,) float64  arrival time since spill start
    /events/waveforms      (n, 121, 32) int16
    /truth                 (n,) detector.records.TRUTH_DTYPE   (only when recorded from the emulator)
    /led/pulse             (m,) uint32   LED pulse number in the cycle (detector.led: the LED events of the gap
    /led/event_type        (m,) uint8    after the flat top, detector.records.EventType.LED; kept apart from
    /led/time_ns           (m,) float64  /events so that no physics selection sees them; files without /led
    /led/waveforms         (m, 121, 32) int16   stay readable: ``led`` is None)
    /mm/event_ptr          (n + 1,) int64  Micromegas strips of event e: [event_ptr[e], event_ptr[e + 1])
    /mm/plane, /mm/strip, /mm/charge   uint8, uint16, float32 (ADC counts): detector.tracking.StripData
    /mm/time_ns            float32 (ns after the trigger, NaN: none; files without it are read as 0: in time)
                           (only when the crate has the Micromegas readout; files without /mm stay readable)
"""

from __future__ import annotations

import contextlib
import errno as errno_mod
import io
import json
import os
import pathlib
import queue
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np

from .channels import N_CHANNELS, N_SAMPLES
from .led import LedEvents
from .records import TRUTH_DTYPE
from .tracking import StripData

SCHEMA_VERSION = 1
_SPILL_RE = re.compile(r"^spill-(\d+)\.h5$")
_JSON_ATTRS = ("flags", "scalers", "triggers", "trigger_menu", "hv", "table", "extra")
_INT_ATTRS = ("run", "spill", "crate_spill", "n_particles", "n_accepted", "n_read_out", "n_recorded", "eot")


class SpillFileError(OSError):
    """A spill file or run record is missing, truncated or malformed; the message names the file."""


class SpillWriteError(OSError):
    """A spill file could not be written (disk full, quota, I/O error); ``errno`` is the system's, the
    message names the file. Nothing was renamed into place: finished spills are untouched."""


class _FailSafeFile(io.RawIOBase):
    """A random-access file for h5py's file-object driver that turns the first I/O error into a
    recorded :attr:`error` and every later write into a no-op (reads then return zeros), so that HDF5
    completes and closes normally; the caller checks :attr:`error` and discards the file."""

    def __init__(self, path: pathlib.Path) -> None:
        super().__init__()
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        self.error: OSError | None = None
        self._pos = 0
        self._size = 0

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = base + int(offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer: Any) -> int:
        mv = memoryview(buffer).cast("B")
        n = len(mv)
        if self.error is None:
            try:
                n = os.preadv(self.fd, [mv], self._pos)
            except OSError as exc:
                self.error = exc
                mv[:] = bytes(n)
        else:
            mv[:] = bytes(n)
        self._pos += n
        return n

    def write(self, data: Any) -> int:
        mv = memoryview(data).cast("B")
        n = len(mv)
        if self.error is None:
            try:
                done = 0
                while done < n:
                    done += os.pwrite(self.fd, mv[done:], self._pos + done)
            except OSError as exc:
                self.error = exc
        self._pos += n
        self._size = max(self._size, self._pos)
        return n

    def truncate(self, size: int | None = None) -> int:
        size = self._pos if size is None else int(size)
        if self.error is None:
            try:
                os.ftruncate(self.fd, size)
            except OSError as exc:
                self.error = exc
        self._size = size
        return size

    def flush(self) -> None:
        pass

    def fsync(self, data_only: bool = False) -> None:
        """Flush to the disk (``fsync``, or ``fdatasync`` with ``data_only``); an error is kept as any other."""
        if self.error is None:
            try:
                (os.fdatasync if data_only else os.fsync)(self.fd)
            except OSError as exc:
                self.error = exc

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        super().close()


@dataclass
class SpillData:
    """Contents of one spill file. Arrays are loaded into memory."""

    path: pathlib.Path
    attrs: dict[str, Any]
    event_id: np.ndarray
    trigger_mask: np.ndarray
    time_ns: np.ndarray
    waveforms: np.ndarray
    truth: np.ndarray | None = None
    mm: StripData | None = None  #: the events' Micromegas strips (None: not recorded)
    led: LedEvents | None = None  #: the LED events after the flat top (None: not recorded)

    @property
    def n_events(self) -> int:
        return int(self.event_id.shape[0])

    @property
    def flags(self) -> list[str]:
        return list(self.attrs.get("flags", []))


@dataclass
class SpillContent:
    """What the recorder hands to :func:`write_spill`."""

    run: int
    spill: int
    event_id: np.ndarray
    trigger_mask: np.ndarray
    time_ns: np.ndarray
    waveforms: np.ndarray
    truth: np.ndarray | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    mm: StripData | None = None
    led: LedEvents | None = None


def run_dir(out: str | os.PathLike, run: int) -> pathlib.Path:
    """``<out>/run-<run>`` (6-digit zero-padded)."""
    return pathlib.Path(out) / f"run-{int(run):06d}"


def spill_path(rdir: str | os.PathLike, spill: int) -> pathlib.Path:
    return pathlib.Path(rdir) / f"spill-{int(spill):06d}.h5"


def fsync_dir(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _validate_content(c: SpillContent) -> None:
    n = c.event_id.shape[0]
    if c.waveforms.dtype != np.int16 or c.waveforms.shape != (n, N_CHANNELS, N_SAMPLES):
        raise ValueError(
            f"waveforms must be int16 ({n}, {N_CHANNELS}, {N_SAMPLES}); got {c.waveforms.dtype} {c.waveforms.shape}"
        )
    for name in ("trigger_mask", "time_ns"):
        if getattr(c, name).shape != (n,):
            raise ValueError(f"{name} must have shape ({n},); got {getattr(c, name).shape}")
    if c.truth is not None and (c.truth.dtype != TRUTH_DTYPE or c.truth.shape != (n,)):
        raise ValueError(f"truth must be TRUTH_DTYPE of shape ({n},)")
    if c.mm is not None and (c.mm.n_events != n or int(c.mm.event_ptr[-1]) != c.mm.plane.shape[0]):
        raise ValueError(f"mm must hold the strips of {n} events; got {c.mm.n_events} events")
    if c.led is not None:
        c.led.check()


def estimated_size(content: SpillContent) -> int:
    """An upper estimate of the spill file's size (bytes): the arrays plus HDF5 metadata (1 MB is ample:
    a 256-event chunk of waveforms needs one index entry of tens of bytes)."""
    arrays: list[np.ndarray | None] = [
        content.event_id,
        content.trigger_mask,
        content.time_ns,
        content.waveforms,
        content.truth,
    ]
    if content.mm is not None:
        mm = content.mm
        arrays += [mm.event_ptr, mm.plane, mm.strip, mm.charge, mm.time_ns]
    if content.led is not None:
        arrays += [content.led.pulse, content.led.event_type, content.led.time_ns, content.led.waveforms]
    data = sum(int(np.asarray(a).nbytes) for a in arrays if a is not None)
    return data + len(json.dumps(content.attrs, default=json_default)) + (1 << 20)


class SpillFileStream:
    """One spill file written while its events arrive: the waveforms of ``n_events`` events are put in blocks,
    in order, as the readout gets them (:meth:`put`), and :meth:`finish` adds everything else and moves the
    file into place; the ONE way a spill file is written (:func:`write_spill` is a stream finished at once).

    With ``threaded`` a writer thread takes the blocks (h5py releases the GIL in its dataset writes), so the
    disk write overlaps the readout of the next block; the block's memory must stay untouched until
    :meth:`finish` or :meth:`abort`. A failed write (disk full, I/O error) is kept and raised by
    :meth:`finish` as :class:`SpillWriteError`; the partial file is removed either way.
    Refuses to overwrite an existing finished spill file (FileExistsError)."""

    #: blocks of at least this many bytes are flushed to the disk by the writer thread as they are written,
    #: so that the final fsync of :meth:`finish` has little left to do
    SYNC_BYTES = 64 << 20

    def __init__(
        self,
        rdir: str | os.PathLike,
        spill: int,
        n_events: int,
        compression: str | None = None,
        threaded: bool = False,
    ) -> None:
        self.rdir = pathlib.Path(rdir)
        self.rdir.mkdir(parents=True, exist_ok=True)
        self.spill = int(spill)
        self.capacity = int(n_events)
        self.compression = compression
        self.final = spill_path(self.rdir, spill)
        if self.final.exists():
            raise FileExistsError(f"{self.final} exists already; a finished spill is never overwritten")
        self.tmp = self.rdir / f".{self.final.name}.tmp-{os.getpid()}"
        self.rows_written = 0  #: events put so far (rows [0, rows_written) of the waveforms)
        self._blocks: list[tuple[int, np.ndarray]] = []
        self._failure: BaseException | None = None
        self._queue: queue.SimpleQueue[tuple[int, np.ndarray] | None] | None = None
        self._thread: threading.Thread | None = None
        self._unsynced = 0
        self.finished = False  #: the file is in place
        self.sink = _FailSafeFile(self.tmp)
        try:
            self.file = h5py.File(self.sink, "w", libver="latest")
            n = self.capacity
            chunks = (max(1, min(n, 256)), N_CHANNELS, N_SAMPLES) if n else None
            self.waveforms = self.file.create_group("events").create_dataset(
                "waveforms",
                shape=(n, N_CHANNELS, N_SAMPLES),
                dtype=np.int16,
                chunks=chunks,
                maxshape=(None, N_CHANNELS, N_SAMPLES) if n else None,
                compression=compression,
            )
        except BaseException:
            self._discard()
            raise
        if threaded:
            self._queue = queue.SimpleQueue()
            self._thread = threading.Thread(target=self._writer, name=f"spill-{self.spill}-writer", daemon=True)
            self._thread.start()

    @property
    def bytes_put(self) -> int:
        """Bytes of waveforms put so far."""
        return self.rows_written * N_CHANNELS * N_SAMPLES * 2

    def put(self, first: int, block: np.ndarray) -> None:
        """The waveforms of events ``first .. first + len(block) - 1`` (int16, events x channels x samples);
        blocks come in order, each starting where the last ended."""
        if first != self.rows_written or block.dtype != np.int16 or block.shape[1:] != (N_CHANNELS, N_SAMPLES):
            raise ValueError(
                f"spill {self.spill}: block of {block.dtype} {block.shape} at event {first}; expected int16 "
                f"(n, {N_CHANNELS}, {N_SAMPLES}) at event {self.rows_written}"
            )
        if first + block.shape[0] > self.capacity:
            raise ValueError(f"spill {self.spill}: events up to {first + block.shape[0]} put, {self.capacity} opened")
        self.rows_written = first + block.shape[0]
        self._blocks.append((first, block))
        if self._queue is not None:
            self._queue.put((first, block))
        else:
            self._write(first, block)

    def _write(self, first: int, block: np.ndarray) -> None:
        self.waveforms[first : first + block.shape[0]] = block
        self._unsynced += block.nbytes
        if self._thread is not None and self._unsynced >= self.SYNC_BYTES:
            self.sink.fsync(data_only=True)
            self._unsynced = 0

    def _writer(self) -> None:
        assert self._queue is not None
        while (item := self._queue.get()) is not None:
            if self._failure is None:
                try:
                    self._write(*item)
                except BaseException as exc:  # noqa: BLE001 (kept for finish(), which raises it in the caller's thread)
                    self._failure = exc

    def _stop_writer(self) -> None:
        """The writer thread (if any) writes what it was given and ends."""
        if self._thread is not None and self._queue is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def finish(self, content: SpillContent) -> pathlib.Path:
        """Write the rest of ``content`` (its events must be the first ``len(content.event_id)`` put, or
        fewer: the file keeps as many as ``content`` has), flush, fsync, move the file into place and return
        its path. Rows ``content`` holds beyond those put are written here; a put block that is not
        ``content``'s own memory is written again from ``content``."""
        try:
            _validate_content(content)
            self._stop_writer()
            if self._failure is not None:
                raise self._failure
            n = content.event_id.shape[0]
            if n > self.capacity:
                raise ValueError(f"spill {self.spill}: {n} events to record, the file was opened for {self.capacity}")
            for first, block in self._blocks:  # the file must hold exactly content's waveforms
                last = min(first + block.shape[0], n)
                if first < n and not _same_memory(block[: last - first], content.waveforms[first:last]):
                    self._write(first, content.waveforms[first:last])
            if n > self.rows_written:
                self._write(self.rows_written, content.waveforms[self.rows_written : n])
            if n < self.capacity:
                self.waveforms.resize(n, axis=0)
            self._write_rest(content)
            self.file.close()
            self.sink.fsync()
            self.sink.close()
            if self.sink.error is not None:
                e = self.sink.error
                raise SpillWriteError(
                    e.errno or errno_mod.EIO, f"spill {content.spill} not written to {self.rdir}: {e.strerror or e}"
                )
            os.replace(self.tmp, self.final)
            self.finished = True
            fsync_dir(self.rdir)
        except BaseException:
            if not self.finished:
                self._discard()
            raise
        return self.final

    def _write_rest(self, content: SpillContent) -> None:
        f, compression = self.file, self.compression
        attrs = dict(content.attrs)
        attrs.update(
            schema_version=SCHEMA_VERSION,
            run=int(content.run),
            spill=int(content.spill),
            n_recorded=int(content.event_id.shape[0]),
            written_unix=time.time(),
        )
        for k, v in attrs.items():
            f.attrs[k] = json.dumps(v) if k in _JSON_ATTRS else v
        g = f["events"]
        g.create_dataset("event_id", data=np.asarray(content.event_id, dtype=np.uint32))
        g.create_dataset("trigger_mask", data=np.asarray(content.trigger_mask, dtype=np.uint8))
        g.create_dataset("time_ns", data=np.asarray(content.time_ns, dtype=np.float64))
        if content.truth is not None:
            f.create_dataset("truth", data=content.truth)
        if content.mm is not None:
            _write_mm(f.create_group("mm"), content.mm, compression)
        if content.led is not None:
            _write_led(f.create_group("led"), content.led, compression)

    def abort(self) -> None:
        """Give up this spill file: the writer stops, the partial file is removed (idempotent; nothing
        happens to a finished file)."""
        if not self.finished:
            self._discard()

    def _discard(self) -> None:
        self._stop_writer()
        file = getattr(self, "file", None)
        if file is not None and file.id.valid:
            with contextlib.suppress(Exception):
                file.close()
        self.sink.close()
        self.tmp.unlink(missing_ok=True)


def _same_memory(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether ``a`` and ``b`` are the same bytes of the same buffer (same start, shape and strides)."""
    return (
        a.shape == b.shape
        and a.strides == b.strides
        and a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
    )


def write_spill(rdir: str | os.PathLike, content: SpillContent, compression: str | None = None) -> pathlib.Path:
    """Write one spill file atomically into run directory ``rdir`` and return its path.
    Refuses to overwrite an existing finished spill file (FileExistsError); a failed write (disk full,
    I/O error) raises :class:`SpillWriteError` and leaves nothing behind."""
    _validate_content(content)
    return SpillFileStream(rdir, content.spill, content.event_id.shape[0], compression).finish(content)


def _write_mm(g: Any, mm: StripData, compression: str | None) -> None:
    g.create_dataset("event_ptr", data=np.asarray(mm.event_ptr, np.int64))
    for name, dt in (("plane", np.uint8), ("strip", np.uint16), ("charge", np.float32), ("time_ns", np.float32)):
        g.create_dataset(name, data=np.asarray(getattr(mm, name), dt), compression=compression)


def _write_led(g: Any, led: LedEvents, compression: str | None) -> None:
    g.create_dataset("pulse", data=np.asarray(led.pulse, np.uint32))
    g.create_dataset("event_type", data=np.asarray(led.event_type, np.uint8))
    g.create_dataset("time_ns", data=np.asarray(led.time_ns, np.float64))
    g.create_dataset("waveforms", data=led.waveforms, compression=compression)


def _read_led(g: Any, waveforms: bool) -> LedEvents:
    pulse = g["pulse"][()]
    m = pulse.shape[0]
    wf = g["waveforms"][()] if waveforms else np.empty((0, N_CHANNELS, N_SAMPLES), np.int16)
    led = LedEvents(pulse, g["time_ns"][()], wf, g["event_type"][()])
    if waveforms:
        led.check()
    elif led.time_ns.shape != (m,) or led.event_type.shape != (m,):
        raise ValueError(f"/led arrays differ in length ({m} pulses)")
    return led


def _read_mm(g: Any, n: int) -> StripData:
    charge = g["charge"][()]
    # files written before the strip times: every strip in time, as the reconstruction took them then
    time = g["time_ns"][()] if "time_ns" in g else np.zeros(charge.shape, np.float32)
    mm = StripData(g["event_ptr"][()], g["plane"][()], g["strip"][()], charge, time)
    ptr = mm.event_ptr
    m = mm.plane.shape[0]
    if ptr.shape != (n + 1,) or ptr[0] != 0 or ptr[-1] != m or bool(np.any(np.diff(ptr) < 0)):
        raise ValueError(f"/mm/event_ptr does not delimit the strips of {n} events")
    if mm.strip.shape != (m,) or mm.charge.shape != (m,) or mm.time_ns.shape != (m,):
        raise ValueError("/mm strip arrays differ in length")
    return mm


def read_spill(path: str | os.PathLike, waveforms: bool = True) -> SpillData:
    """Read a spill file. Raises :class:`SpillFileError` naming the file if it is truncated, not HDF5,
    of another schema, or inconsistent. ``waveforms=False`` skips the largest dataset."""
    p = pathlib.Path(path)
    try:
        with h5py.File(p, "r") as f:
            attrs: dict[str, Any] = {}
            for k, v in f.attrs.items():
                if k in _JSON_ATTRS:
                    attrs[k] = json.loads(v)
                elif isinstance(v, np.generic):
                    attrs[k] = v.item()
                else:
                    attrs[k] = v
            if attrs.get("schema_version") != SCHEMA_VERSION:
                raise SpillFileError(f"{p}: schema version {attrs.get('schema_version')!r}, expected {SCHEMA_VERSION}")
            g = f["events"]
            eid = g["event_id"][()]
            n = eid.shape[0]
            wf = g["waveforms"][()] if waveforms else np.empty((0, N_CHANNELS, N_SAMPLES), np.int16)
            data = SpillData(
                p, attrs, eid, g["trigger_mask"][()], g["time_ns"][()], wf, f["truth"][()] if "truth" in f else None
            )
            if "mm" in f:
                data.mm = _read_mm(f["mm"], n)
            if "led" in f:
                data.led = _read_led(f["led"], waveforms)
    except SpillFileError:
        raise
    except (OSError, KeyError, ValueError, json.JSONDecodeError) as exc:
        raise SpillFileError(f"{p}: unreadable or incomplete spill file ({exc})") from None
    if waveforms and data.waveforms.shape != (n, N_CHANNELS, N_SAMPLES):
        raise SpillFileError(
            f"{p}: waveforms have shape {data.waveforms.shape}, expected ({n}, {N_CHANNELS}, {N_SAMPLES})"
        )
    if data.attrs.get("n_recorded") != n:
        raise SpillFileError(f"{p}: n_recorded = {data.attrs.get('n_recorded')} but {n} events are stored")
    return data


def read_led(path: str | os.PathLike) -> LedEvents | None:
    """Only the LED events of a spill file (None: the file has none); :class:`SpillFileError` as
    :func:`read_spill`."""
    p = pathlib.Path(path)
    try:
        with h5py.File(p, "r") as f:
            if f.attrs.get("schema_version") != SCHEMA_VERSION:
                raise SpillFileError(
                    f"{p}: schema version {f.attrs.get('schema_version')!r}, expected {SCHEMA_VERSION}"
                )
            return _read_led(f["led"], True) if "led" in f else None
    except SpillFileError:
        raise
    except (OSError, KeyError, ValueError) as exc:
        raise SpillFileError(f"{p}: unreadable LED events ({exc})") from None


def list_spills(rdir: str | os.PathLike) -> list[pathlib.Path]:
    """Finished spill files of a run directory, by spill number (temporary files are ignored)."""
    rdir = pathlib.Path(rdir)
    if not rdir.is_dir():
        raise SpillFileError(f"{rdir}: no such run directory")
    found = [(int(m.group(1)), p) for p in rdir.iterdir() if (m := _SPILL_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def json_default(o: Any) -> Any:
    """``json.dumps`` default for numpy scalars and arrays."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON-serialisable")
