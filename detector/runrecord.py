"""The run record: the ONE reader (:func:`read_run_record`) and its writers, append-only per spill.

A run directory holds two run-record files:

- ``spills.jsonl``, the journal: one JSON object per line, appended (``O_APPEND``) and fsync'd, never
  rewritten. ``kind`` says what a line is:

  - ``begin``: a spill's readout starts (``spill``, ``crate_spill``, ``since_unix``, ``pid``, ...); the
    spill is *in flight* until its ``spill`` line;
  - ``hv``: the HV read-back the next ``spill`` lines refer to; it holds ``unix`` and only the fields
    (``channel_ids``, ``vset``, ``vmon``, ``imon``, ``status``) that changed since the previous ``hv``
    line of the same writer;
  - ``spill``: a recorded spill's entry (accounting, flags, scalers, ...); ``hv_ref: true`` means its
    ``hv`` is the HV state built from the ``hv`` lines before it;
  - ``timing``: timings of a spill known only after it was recorded (merged into its ``timing``; written
    without its own fsync: the next fsync'd line takes it to disk).

- ``run.json``, the summary: configuration, trigger menu, thresholds, calibration, crate, sessions,
  gaps, stalls and totals (everything but the spill entries), replaced atomically (temporary file,
  fsync, rename). Its size does not grow with the number of spills, so a spill costs the same to
  record at the start of a run and after thousands of spills.

A crash in the middle of an append leaves a truncated last line: the reader ignores it and reports it
(``journal_problems``), the writer cuts it off before appending again; earlier lines are never touched.
A record in the older single-file layout (``schema_version`` 1: ``run.json`` with ``spills`` and
``in_flight`` inside) is read too and converted when a DAQ continues the run.

The reader checks the record's schema (required keys, types) and raises :class:`RunRecordError` naming
the file (and the journal line) instead of a ``KeyError`` deep inside a caller.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import time
from typing import Any

from .records import INCOMPLETE_SPILL_FLAGS
from .spillfile import SpillFileError, fsync_dir, json_default

RUN_RECORD = "run.json"  #: the summary, replaced atomically
RUN_JOURNAL = "spills.jsonl"  #: the journal, appended one line per event
SCHEMA_VERSION = 2  #: summary + journal; 1 is the older single-file record
#: keys of a run record that live in the journal, not in the summary
JOURNAL_KEYS = ("spills", "in_flight", "journal_problems")
_COUNTS = ("n_particles", "n_seen", "n_accepted", "n_read_out", "n_recorded", "eot")
_SUMMARY_LISTS = ("sessions", "gaps", "stalls", "flags")


class RunRecordError(SpillFileError):
    """A run record is missing, malformed or of the wrong schema; the message names the file (and line)."""


# ------------------------------------------------------------------------------------------- totals
def is_complete(entry: dict[str, Any]) -> bool:
    """A spill entry without a flag of :data:`detector.records.INCOMPLETE_SPILL_FLAGS`."""
    return not (set(entry.get("flags", [])) & INCOMPLETE_SPILL_FLAGS)


def empty_totals() -> dict[str, int]:
    return dict.fromkeys(
        (
            "spills",
            "complete_spills",
            "flagged_spills",
            "truncated_spills",
            "lost_spills",
            "events_recorded",
            "events_accepted",
            "events_not_recorded",
            "particles",
            "eot",
            "gaps",
        ),
        0,
    )


def add_to_totals(totals: dict[str, int], entry: dict[str, Any]) -> None:
    """Add one spill entry to the run totals (in place)."""
    flags = entry.get("flags", [])
    acc = int(entry.get("n_accepted", 0))
    totals["spills"] += 1
    totals["complete_spills"] += int(is_complete(entry))
    totals["flagged_spills"] += int(bool(flags))
    totals["truncated_spills"] += int("truncated" in flags)
    totals["lost_spills"] += int("spill_lost" in flags)
    totals["events_recorded"] += int(entry.get("n_recorded", 0))
    totals["events_accepted"] += acc
    totals["events_not_recorded"] += acc - int(entry.get("n_recorded", 0))
    totals["particles"] += int(entry.get("n_particles", 0))
    totals["eot"] += int(entry.get("eot", 0))


def run_totals(spills: list[dict[str, Any]], gaps: list[Any]) -> dict[str, int]:
    """The totals of a run record (computed from its spill entries and gaps)."""
    t = empty_totals()
    for e in spills:
        add_to_totals(t, e)
    t["gaps"] = len(gaps)
    return t


# ------------------------------------------------------------------------------------------ schema
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_entry(e: Any, where: str) -> None:
    """A spill entry: ``spill`` an integer >= 0, counts integers >= 0, ``flags`` a list of strings."""
    if not isinstance(e, dict):
        raise RunRecordError(f"{where}: a spill entry must be a JSON object, got {type(e).__name__}")
    if not _is_int(e.get("spill")) or e["spill"] < 0:
        raise RunRecordError(f"{where}: 'spill' must be an integer >= 0, got {e.get('spill')!r}")
    if "crate_spill" in e and not _is_int(e["crate_spill"]):
        raise RunRecordError(f"{where}: 'crate_spill' must be an integer, got {e['crate_spill']!r}")
    for k in _COUNTS + ("max_events",):
        if k in e and not (_is_int(e[k]) and e[k] >= 0):
            raise RunRecordError(f"{where}: {k!r} must be an integer >= 0, got {e[k]!r}")
    for k in ("start_unix", "length_s"):
        if e.get(k) is not None and not _is_num(e[k]):
            raise RunRecordError(f"{where}: {k!r} must be a number or null, got {e[k]!r}")
    flags = e.get("flags", [])
    if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
        raise RunRecordError(f"{where}: 'flags' must be a list of strings, got {flags!r}")
    for k in ("hv", "timing", "scalers", "triggers", "table"):
        if e.get(k) is not None and not isinstance(e[k], dict):
            raise RunRecordError(f"{where}: {k!r} must be a JSON object or null, got {type(e[k]).__name__}")


def _check_summary(rec: Any, p: pathlib.Path) -> None:
    if not isinstance(rec, dict):
        raise RunRecordError(f"{p}: run record is not a JSON object")
    version = rec.get("schema_version", 1)
    if version not in (1, SCHEMA_VERSION):
        raise RunRecordError(f"{p}: run record schema version {version!r}, expected 1 or {SCHEMA_VERSION}")
    if not _is_int(rec.get("run")):
        raise RunRecordError(f"{p}: run record has no integer 'run' (got {rec.get('run')!r})")
    for k in _SUMMARY_LISTS:
        if k in rec and not isinstance(rec[k], list):
            raise RunRecordError(f"{p}: run record {k!r} must be a list, got {type(rec[k]).__name__}")
    if "totals" in rec and not isinstance(rec["totals"], dict):
        raise RunRecordError(f"{p}: run record 'totals' must be a JSON object")


# ------------------------------------------------------------------------------------------ reader
def _read_journal(p: pathlib.Path) -> tuple[list[dict[str, Any]], dict[str, Any] | None, list[str]]:
    """Spill entries (by spill number), the spill in flight and the problems of a journal."""
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise RunRecordError(f"{p}: the run record's journal is missing") from None
    except OSError as exc:
        raise RunRecordError(f"{p}: cannot read the run record's journal ({exc.strerror or exc})") from None
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the journal ends with a newline
    problems = []
    if tail:
        problems.append(
            f"{p.name} line {len(lines) + 1}: truncated last line ({len(tail)} bytes; "
            "a writer died in the middle of it): ignored"
        )
    spills: dict[int, dict[str, Any]] = {}
    in_flight: dict[str, Any] | None = None
    hv: dict[str, Any] = {}
    for i, raw in enumerate(lines, 1):
        where = f"{p} line {i}"
        try:
            obj = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RunRecordError(f"{where}: not valid JSON ({exc})") from None
        kind = obj.get("kind") if isinstance(obj, dict) else None
        if kind == "spill":
            e = {k: v for k, v in obj.items() if k not in ("kind", "hv_ref")}
            _check_entry(e, where)
            if obj.get("hv_ref"):
                e["hv"] = dict(hv)
            spills[e["spill"]] = e
            if in_flight is not None and in_flight.get("spill") == e["spill"]:
                in_flight = None
        elif kind == "begin":
            if not _is_int(obj.get("spill")) or not _is_int(obj.get("crate_spill")):
                raise RunRecordError(f"{where}: a 'begin' line needs integer 'spill' and 'crate_spill'")
            in_flight = {k: v for k, v in obj.items() if k != "kind"}
        elif kind == "hv":
            hv.update({k: v for k, v in obj.items() if k != "kind"})
        elif kind == "timing":
            e2 = spills.get(obj.get("spill"))
            if e2 is not None and isinstance(obj.get("timing"), dict):
                e2["timing"] = {**(e2.get("timing") or {}), **obj["timing"]}
        else:
            raise RunRecordError(f"{where}: unknown journal line (kind {kind!r})")
    return [spills[k] for k in sorted(spills)], in_flight, problems


def read_run_record(rdir: str | os.PathLike) -> dict[str, Any]:
    """The run record of run directory ``rdir`` as one dict: the summary's keys plus ``spills`` (entries by
    spill number), ``in_flight`` (the spill whose readout began and was not recorded, or None),
    ``totals`` (computed from the entries) and ``journal_problems`` (e.g. a truncated last line,
    ignored). Raises :class:`RunRecordError` (a ``SpillFileError``) if it is missing or malformed."""
    rdir = pathlib.Path(rdir)
    p = rdir / RUN_RECORD
    try:
        rec = json.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RunRecordError(f"{p}: cannot read run record ({exc.strerror or exc})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunRecordError(f"{p}: run record is not valid JSON ({exc})") from None
    _check_summary(rec, p)
    if rec.get("schema_version", 1) == 1:
        if not isinstance(rec.get("spills"), list):
            raise RunRecordError(f"{p}: run record has no 'spills' list")
        for i, e in enumerate(rec["spills"]):
            _check_entry(e, f"{p} spills[{i}]")
        rec["spills"] = sorted(rec["spills"], key=lambda e: e["spill"])
        rec.setdefault("in_flight", None)
        rec["journal_problems"] = []
    else:
        rec["spills"], rec["in_flight"], rec["journal_problems"] = _read_journal(rdir / RUN_JOURNAL)
    for k in _SUMMARY_LISTS:
        rec.setdefault(k, [])
    rec["totals"] = run_totals(rec["spills"], rec["gaps"])
    return rec


# ----------------------------------------------------------------------------------------- writers
def _finite(obj: Any, path: str, found: list[str]) -> Any:
    """``obj`` with every non-finite float replaced by None (JSON has no NaN); their paths go to ``found``."""
    if isinstance(obj, float) and not math.isfinite(obj):
        found.append(f"{path}={obj}")
        return None
    if isinstance(obj, dict):
        return {k: _finite(v, f"{path}.{k}" if path else str(k), found) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v, f"{path}[{i}]", found) for i, v in enumerate(obj)]
    return obj


def _dumps(obj: Any, **kw: Any) -> bytes:
    """Compact JSON of ``obj``. A non-finite number (from a bad crate reply, say) never stops the record: it
    is written as null, and a dict gets ``nonfinite`` listing where (JSON cannot hold NaN or infinity)."""
    try:
        return json.dumps(obj, allow_nan=False, default=json_default, separators=(",", ":"), **kw).encode()
    except ValueError:
        found: list[str] = []
        clean = _finite(json.loads(json.dumps(obj, default=json_default)), "", found)
        if isinstance(clean, dict):
            clean["nonfinite"] = found
        return json.dumps(clean, allow_nan=False, separators=(",", ":"), **kw).encode()


def _replace(final: pathlib.Path, data: bytes) -> int:
    """Write ``data`` to ``final`` atomically (temporary file, fsync, rename, fsync of the directory)."""
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)  # the previous file stays as it was
        raise
    fsync_dir(final.parent)
    return len(data)


def summary_of(record: dict[str, Any]) -> dict[str, Any]:
    """The summary part of a run record (everything but what lives in the journal)."""
    out = {k: v for k, v in record.items() if k not in JOURNAL_KEYS}
    out["schema_version"] = SCHEMA_VERSION
    return out


class RunRecordWriter:
    """Appends to the journal and replaces the summary of run directory ``rdir``. The caller owns the run
    directory (the recorder's lock). ``bytes_written`` / ``seconds``: the I/O done so far (bytes, s)."""

    def __init__(self, rdir: str | os.PathLike) -> None:
        self.rdir = pathlib.Path(rdir)
        self.journal = self.rdir / RUN_JOURNAL
        self._fd: int | None = None
        self._hv: dict[str, Any] = {}
        self.bytes_written = 0
        self.seconds = 0.0

    def open(self, spills: list[dict[str, Any]] | None = None) -> list[str]:
        """Open the journal for appending. ``spills``: entries to start a new journal with (a record of the
        older layout being converted; None: keep the journal as it is). A truncated last line is cut off;
        returns what was repaired."""
        repaired = []
        if spills is not None:
            text = b"".join(self._spill_line(e) for e in spills)
            _replace(self.journal, text)
            self._hv = {}
        fd = os.open(self.journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        size = os.fstat(fd).st_size
        if size:
            with open(self.journal, "rb") as fh:
                fh.seek(max(0, size - (1 << 16)))
                block = fh.read()
            if b"\n" not in block and size > len(block):  # a very long last line: look at all of it
                with open(self.journal, "rb") as fh:
                    block = fh.read()
            keep = size - len(block) + block.rfind(b"\n") + 1
            if keep != size:
                os.ftruncate(fd, keep)
                os.fsync(fd)
                repaired.append(f"{RUN_JOURNAL}: truncated last line ({size - keep} bytes) cut off")
        self._fd = fd
        return repaired

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def _append(self, data: bytes, sync: bool) -> None:
        assert self._fd is not None, "RunRecordWriter.open() first"
        t = time.perf_counter()
        size = os.fstat(self._fd).st_size
        try:
            done = 0
            while done < len(data):
                done += os.write(self._fd, data[done:])
            if sync:
                os.fsync(self._fd)
        except OSError:
            try:  # never leave half a line for the next append to continue
                os.ftruncate(self._fd, size)
            except OSError:
                pass
            raise
        self.bytes_written += len(data)
        self.seconds += time.perf_counter() - t

    def _spill_line(self, entry: dict[str, Any]) -> bytes:
        """The ``hv`` line (when the read-back changed) and the ``spill`` line of an entry."""
        e = dict(entry)
        hv = e.pop("hv", None)
        out = b""
        if isinstance(hv, dict) and hv:
            changed = {k: v for k, v in hv.items() if k == "unix" or self._hv.get(k) != v}
            if set(changed) != {"unix"} or hv.get("unix") != self._hv.get("unix"):
                out += _dumps({"kind": "hv", **changed}) + b"\n"
                self._hv.update(hv)
            e["hv_ref"] = True
        else:
            e["hv"] = hv
        line = _dumps({"kind": "spill", **e})
        _check_entry(json.loads(line), f"{self.journal} (being written)")  # as the reader will see it
        return out + line + b"\n"

    def begin(self, in_flight: dict[str, Any]) -> None:
        """Note a spill in flight (fsync'd)."""
        self._append(_dumps({"kind": "begin", **in_flight}) + b"\n", sync=True)

    def spill(self, entry: dict[str, Any]) -> None:
        """Append a recorded spill's entry (fsync'd); its HV read-back goes in only where it changed."""
        hv = dict(self._hv)
        try:
            self._append(self._spill_line(entry), sync=True)
        except (OSError, ValueError):
            self._hv = hv
            raise

    def timing(self, spill: int, timing: dict[str, Any]) -> None:
        """Append timings known after the spill was recorded (no fsync of its own)."""
        self._append(_dumps({"kind": "timing", "spill": int(spill), "timing": timing}) + b"\n", sync=False)

    def summary(self, record: dict[str, Any]) -> None:
        """Replace ``run.json`` with the summary of ``record`` (atomically)."""
        t = time.perf_counter()
        n = _replace(self.rdir / RUN_RECORD, _dumps(summary_of(record), indent=1, sort_keys=True))
        self.bytes_written += n
        self.seconds += time.perf_counter() - t


def write_run_record(rdir: str | os.PathLike, record: dict[str, Any]) -> pathlib.Path:
    """Write a whole run record at once (journal, then summary; e.g. a run made by a simulation): the
    same layout the recorder appends to. Returns the summary's path."""
    rdir = pathlib.Path(rdir)
    rdir.mkdir(parents=True, exist_ok=True)
    if not _is_int(record.get("run")):
        raise RunRecordError(f"{rdir / RUN_RECORD}: a run record needs an integer 'run'")
    w = RunRecordWriter(rdir)
    w.open(spills=list(record.get("spills", [])))
    try:
        if record.get("in_flight"):
            w.begin(record["in_flight"])
        w.summary(record)
    finally:
        w.close()
    return rdir / RUN_RECORD
