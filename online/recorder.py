"""The recorder: run directory, spill files, run record and the zero-loss accounting.

Files are written with :mod:`detector.spillfile` (the ONE spill-file writer): ``<out>/run-<number>/spill-<n>.h5``
(atomic: temporary name, fsync, rename), and :mod:`detector.runrecord` (the run record): one line appended
and fsync'd to the journal ``spills.jsonl`` per event (spill begun, spill recorded), and the small summary
``run.json`` replaced atomically; both cost the same per spill however long the run.

Restart and crash rules:

- A run directory is owned by one ``na64-daq`` at a time (``fcntl.flock`` on ``.daq.lock``; the kernel
  releases it when the process dies, even after ``kill -9``).
- Opening an existing run continues it: spill numbers go on after the highest finished spill (from the
  run record and from the files; a file the record does not know yet - the process died between the
  rename and the record update - is adopted from its attributes).
- Before the readout of a spill starts, the run record notes it as ``in_flight`` (a ``begin`` line). If
  the process dies, the next start finds ``in_flight`` without a finished file: the spill is
  *interrupted*. Stale temporary files (``.spill-*.h5.tmp-*``, ``.run.json.tmp-*``,
  ``.spills.jsonl.tmp-*``) are removed and listed in the run record. The DAQ then re-reads the
  interrupted spill if the crate still holds it (flag ``retried``) or records it as
  lost (flags ``spill_lost``, ``readout_incomplete``).

Accounting per spill (spill attrs and run record): ``n_particles`` (primitive records the crate holds),
``n_seen`` (records the trigger processed), ``n_accepted``, ``n_read_out``, ``n_recorded``; a spill whose
readout stopped at ``daq.max_events_per_spill`` (``max_events``) is flagged ``truncated``. A spill is
*complete* when ``n_seen == n_particles`` and ``n_accepted == n_read_out == n_recorded``; a spill that is
not complete must carry at least one of :data:`detector.records.INCOMPLETE_SPILL_FLAGS` saying why (:func:`reconcile`).
"""

from __future__ import annotations

import fcntl
import os
import pathlib
import re
import shutil
import socket
import sys
import time
from typing import Any

import numpy as np

from detector.channels import N_CHANNELS, N_SAMPLES
from detector.records import INCOMPLETE_SPILL_FLAGS, SPILL_FLAGS
from detector.runrecord import (
    RUN_RECORD,
    SCHEMA_VERSION,
    RunRecordWriter,
    add_to_totals,
    is_complete,
    read_run_record,
    run_totals,
)
from detector.spillfile import (
    SpillContent,
    SpillFileError,
    SpillFileStream,
    list_spills,
    read_spill,
    run_dir,
    write_spill,
)

__all__ = ["RecorderError", "RunRecorder", "is_complete", "next_run_number", "reconcile"]

_TMP_RE = re.compile(r"^\.(spill-\d+\.h5|run\.json|spills\.jsonl)\.tmp-(\d+)$")
_RUN_RE = re.compile(r"^run-(\d+)$")


class RecorderError(RuntimeError):
    """The run directory cannot be used (locked by another DAQ, unreadable run record, ...)."""


def next_run_number(out: str | os.PathLike) -> int:
    """One above the highest ``run-<n>`` in ``out`` (1 for an empty or missing directory)."""
    p = pathlib.Path(out)
    nums = [int(m.group(1)) for d in p.iterdir() if (m := _RUN_RE.match(d.name))] if p.is_dir() else []
    return max(nums, default=0) + 1


def reconcile(entry: dict[str, Any]) -> list[str]:
    """Problems of one spill entry's accounting ([] when it is consistent): a spill whose counts do not
    match must carry a flag of :data:`detector.records.INCOMPLETE_SPILL_FLAGS`; unknown flags are problems too."""
    problems = []
    flags = set(entry.get("flags", []))
    unknown = flags - set(SPILL_FLAGS)
    if unknown:
        problems.append(f"unknown flags {sorted(unknown)}")
    n = {k: int(entry.get(k, 0)) for k in ("n_particles", "n_seen", "n_accepted", "n_read_out", "n_recorded")}
    complete = n["n_seen"] == n["n_particles"] and n["n_accepted"] == n["n_read_out"] == n["n_recorded"]
    if not complete and not (flags & INCOMPLETE_SPILL_FLAGS):
        problems.append(f"spill {entry.get('spill')}: counts {n} do not reconcile and no flag says why")
    if n["n_recorded"] > n["n_read_out"] or n["n_read_out"] > n["n_accepted"] or n["n_seen"] > n["n_particles"]:
        problems.append(f"spill {entry.get('spill')}: impossible counts {n}")
    if "truncated" in flags and not n["n_read_out"] < n["n_accepted"]:
        problems.append(f"spill {entry.get('spill')}: flagged truncated, but every accepted event was read: {n}")
    return problems


class RunRecorder:
    """Owns ``<out>/run-<run>/`` for one DAQ session. Call :meth:`open` first, :meth:`close` at the end."""

    def __init__(
        self,
        out: str | os.PathLike,
        run: int,
        *,
        config_toml: str = "",
        trigger_menu: dict | None = None,
        thresholds: dict | None = None,
        calibration: dict | None = None,
        argv: list[str] | None = None,
        extra: dict[str, Any] | None = None,
        min_free_bytes: float = 0.0,
    ) -> None:
        self.out = pathlib.Path(out)
        self.min_free_bytes = float(min_free_bytes)  #: disk kept free on the output filesystem (bytes)
        self.run = int(run)
        self.rdir = run_dir(out, run)
        self.config_toml = config_toml
        self.trigger_menu = trigger_menu or {}
        self.thresholds = thresholds or {}
        self.calibration = calibration or {}
        self.argv = list(sys.argv if argv is None else argv)
        self.extra = extra or {}
        self.record: dict[str, Any] = {}
        self.interrupted: dict[str, Any] | None = None  #: the spill in flight when a previous DAQ died
        self.next_spill = 1
        self.session: dict[str, Any] = {}
        self._lock_fd: int | None = None
        self._writer: RunRecordWriter | None = None
        self._io_mark = (0, 0.0)  #: the writer's (bytes, s) when the spill in hand began
        self.restarted = False

    # ----------------------------------------------------------------------------- open/close
    def open(self) -> RunRecorder:
        self.rdir.mkdir(parents=True, exist_ok=True)
        problem = self.space_problem(0)
        if problem:
            raise RecorderError(f"not enough disk to record run {self.run}: {problem}")
        self._lock()
        cleaned = self._clean_tmp()
        convert: list[dict[str, Any]] | None = []  # a new journal: empty, or the entries of an older record
        if (self.rdir / RUN_RECORD).exists():
            try:
                self.record = read_run_record(self.rdir)
            except SpillFileError as exc:
                self._unlock()
                raise RecorderError(f"cannot continue run {self.run}: {exc}") from None
            if self.record.get("run") != self.run:
                self._unlock()
                raise RecorderError(
                    f"{self.rdir / RUN_RECORD}: belongs to run {self.record.get('run')!r}, not {self.run}"
                )
            self.restarted = True
            convert = list(self.record["spills"]) if self.record.get("schema_version", 1) == 1 else None
        else:
            self.record = self._new_record()
        rec = self.record
        self._writer = RunRecordWriter(self.rdir)
        repaired = self._writer.open(spills=convert)
        known = {int(e["spill"]) for e in rec["spills"]}
        adopted = []
        unreadable = []
        for p in list_spills(self.rdir):
            n = int(p.name[6:-3])
            if n in known:
                continue
            self.restarted = True
            try:
                data = read_spill(p, waveforms=False)
            except SpillFileError as exc:
                unreadable.append({"file": p.name, "error": str(exc)})
                continue
            e = self._entry_from_attrs(data.attrs, p.name)
            self._writer.spill(e)
            rec["spills"].append(e)
            adopted.append(n)
        rec["spills"].sort(key=lambda e: e["spill"])
        in_flight = rec.get("in_flight")
        done = {int(e["spill"]) for e in rec["spills"]}
        if in_flight and int(in_flight["spill"]) not in done:
            self.interrupted = dict(in_flight)
            self.interrupted["tmp_files"] = [
                c for c in cleaned if c.startswith(f".spill-{int(in_flight['spill']):06d}")
            ]
        else:  # in flight in the journal until the interrupted spill is recorded (re-read or flagged)
            rec["in_flight"] = None
        highest = max(done | {int(x["spill"]) for x in [in_flight] if x}, default=0)
        self.next_spill = highest + 1
        self.session = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "start_unix": time.time(),
            "argv": self.argv,
            "restart": self.restarted,
            "cleaned_tmp_files": cleaned,
            "adopted_files": adopted,
            "unreadable_files": unreadable,
            "journal_problems": rec.get("journal_problems", []),
            "journal_repaired": repaired,
            "interrupted": self.interrupted,
            "spills_recorded": 0,
        }
        if self.restarted and self.config_toml and self.config_toml != rec.get("config_toml"):
            self.session["config_toml"] = self.config_toml
            self.session["config_changed"] = True
        rec["sessions"].append(self.session)
        rec["totals"] = run_totals(rec["spills"], rec["gaps"])
        self.save()
        return self

    def _new_record(self) -> dict[str, Any]:
        now = time.time()
        return {
            "schema_version": SCHEMA_VERSION,
            "run": self.run,
            "created_unix": now,
            "updated_unix": now,
            "config_toml": self.config_toml,
            "trigger_menu": self.trigger_menu,
            "thresholds": self.thresholds,
            "calibration": self.calibration,
            "spills": [],
            "in_flight": None,
            "sessions": [],
            "gaps": [],
            "stalls": [],
            "flags": [],
            "totals": {},
            **self.extra,
        }

    def close(self, reason: str = "stopped") -> None:
        if not self.record or self._writer is None:  # never opened, or refused to open: nothing to write
            self._unlock()
            return
        self.session["stop_unix"] = time.time()
        self.session["stop_reason"] = reason
        try:
            self.save()
        finally:
            if self._writer is not None:
                self._writer.close()
            self._unlock()

    def _lock(self) -> None:
        fd = os.open(self.rdir / ".daq.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise RecorderError(f"{self.rdir} is in use by another na64-daq (lock {self.rdir / '.daq.lock'})") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            fd, self._lock_fd = self._lock_fd, None
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def _clean_tmp(self) -> list[str]:
        """Remove temporary files a dead writer left (we hold the lock: nobody else is writing)."""
        cleaned = []
        for p in sorted(self.rdir.iterdir()):
            if _TMP_RE.match(p.name):
                p.unlink(missing_ok=True)
                cleaned.append(p.name)
        return cleaned

    @staticmethod
    def _entry_from_attrs(attrs: dict[str, Any], name: str) -> dict[str, Any]:
        keys = (
            "spill",
            "crate_spill",
            "start_unix",
            "length_s",
            "n_particles",
            "n_seen",
            "n_accepted",
            "n_read_out",
            "n_recorded",
            "max_events",
            "eot",
            "flags",
            "scalers",
            "triggers",
            "table",
        )
        e = {k: attrs[k] for k in keys if k in attrs}
        e.setdefault("n_seen", e.get("n_particles", 0))
        e["file"] = name
        e["adopted"] = True
        return e

    # --------------------------------------------------------------------------------- state
    @property
    def spills(self) -> list[dict[str, Any]]:
        return self.record["spills"]

    @property
    def last_crate_spill(self) -> int | None:
        ids = [
            int(e["crate_spill"])
            for e in self.spills
            if e.get("crate_spill", -1) is not None and int(e.get("crate_spill", -1)) >= 0
        ]
        return max(ids, default=None)

    def save(self) -> None:
        """Replace the summary ``run.json`` (atomically; its size does not grow with the spills)."""
        assert self._writer is not None, "RunRecorder.open() first"
        self.record["updated_unix"] = time.time()
        self._writer.summary(self.record)

    @property
    def totals(self) -> dict[str, Any]:
        return self.record["totals"]

    def summary(self) -> str:
        """One line on the run so far: ``run 12 in DIR: 3 spills (0 flagged, 0 lost), 818 events, EOT 78503``."""
        t = self.record.get("totals") or {}
        return (
            f"run {self.run} in {self.rdir}: {t.get('spills', 0)} spills "
            f"({t.get('flagged_spills', 0)} flagged, {t.get('lost_spills', 0)} lost), "
            f"{t.get('events_recorded', 0)} events, EOT {t.get('eot', 0)}"
        )

    # ------------------------------------------------------------------------------- disk
    def free_bytes(self) -> int:
        """Free bytes on the filesystem of the run directory, for this (unprivileged) user."""
        return int(shutil.disk_usage(self.rdir).free)

    def space_problem(self, need_bytes: float) -> str | None:
        """None if ``need_bytes`` can be written and ``min_free_bytes`` still stay free, else why not."""
        free = self.free_bytes()
        if free - need_bytes >= self.min_free_bytes:
            return None
        return (
            f"{free / 1e6:,.0f} MB free on the filesystem of {self.rdir}; "
            + (f"the spill needs about {need_bytes / 1e6:,.0f} MB and " if need_bytes else "")
            + f"daq.min_free_mb keeps {self.min_free_bytes / 1e6:,.0f} MB free"
        )

    # ------------------------------------------------------------------------------- spills
    def begin_spill(self, spill: int, crate_spill: int, **info: Any) -> None:
        """Note the spill in flight (durably) before its readout starts."""
        assert self._writer is not None, "RunRecorder.open() first"
        self._io_mark = (self._writer.bytes_written, self._writer.seconds)
        self.record["in_flight"] = {
            "spill": int(spill),
            "crate_spill": int(crate_spill),
            "since_unix": time.time(),
            "pid": os.getpid(),
            **info,
        }
        self._writer.begin(self.record["in_flight"])

    def record_spill(
        self,
        content: SpillContent,
        entry: dict[str, Any],
        compression: str | None = None,
        stream: SpillFileStream | None = None,
    ) -> pathlib.Path:
        """Write the spill file (finish ``stream``, the file the events were streamed into, when given) and
        add ``entry`` (accounting, flags, scalers, ...) to the run record. ``n_recorded`` is set from the
        content; an entry that does not reconcile gets ``readout_incomplete``."""
        entry = dict(entry)
        entry["spill"] = int(content.spill)
        entry["n_recorded"] = int(content.event_id.shape[0])
        flags = list(dict.fromkeys(entry.get("flags", [])))
        entry["flags"] = flags
        if reconcile(entry):
            flags.append("readout_incomplete")
        entry["problems"] = reconcile(entry)
        content.attrs["flags"] = flags
        for k in ("n_particles", "n_seen", "n_accepted", "n_read_out"):
            content.attrs[k] = int(entry.get(k, 0))
        if "max_events" in entry:
            content.attrs["max_events"] = int(entry["max_events"])
        t0 = time.perf_counter()
        path = stream.finish(content) if stream is not None else write_spill(self.rdir, content, compression)
        entry["file"] = path.name
        entry["write_s"] = time.perf_counter() - t0
        entry["recorded_unix"] = time.time()
        assert self._writer is not None, "RunRecorder.open() first"
        if self.record.get("in_flight") is None or self.record["in_flight"].get("spill") != entry["spill"]:
            self._io_mark = (self._writer.bytes_written, self._writer.seconds)  # no begin line (a lost spill)
        self._writer.spill(entry)
        self.spills.append(entry)
        self.record["in_flight"] = None
        self.session["spills_recorded"] = self.session.get("spills_recorded", 0) + 1
        add_to_totals(self.totals, entry)
        self.save()
        self.next_spill = max(self.next_spill, int(content.spill) + 1)
        return path

    def note_timing(self, spill: int, timing: dict[str, Any]) -> None:
        """Add timings known only after spill ``spill`` was recorded (s) to its entry, together with the
        run record's own cost for the spill: ``run_record_bytes`` written and ``run_record_s`` spent on
        its begin line, its entry and the summary."""
        assert self._writer is not None, "RunRecorder.open() first"
        t = dict(timing)
        t["run_record_bytes"] = self._writer.bytes_written - self._io_mark[0]
        t["run_record_s"] = self._writer.seconds - self._io_mark[1]
        for e in reversed(self.spills):
            if e["spill"] == spill:
                e.setdefault("timing", {}).update(t)
                break
        self._writer.timing(spill, t)

    def record_empty(self, spill: int, crate_spill: int, flags: list[str], reason: str, **entry: Any) -> pathlib.Path:
        """A spill with no events (lost by the crate, or interrupted and gone): an empty, flagged file."""
        e = {
            "crate_spill": int(crate_spill),
            "n_particles": 0,
            "n_seen": 0,
            "n_accepted": 0,
            "n_read_out": 0,
            "eot": 0,
            "flags": list(flags),
            "reason": reason,
            **entry,
        }
        attrs = {
            "crate_spill": int(crate_spill),
            "start_unix": float(entry.get("start_unix", 0.0)),
            "length_s": float(entry.get("length_s", 0.0)),
            "eot": 0,
            "extra": {"reason": reason},
        }
        content = SpillContent(
            self.run,
            spill,
            np.zeros(0, np.uint32),
            np.zeros(0, np.uint8),
            np.zeros(0, np.float64),
            np.zeros((0, N_CHANNELS, N_SAMPLES), np.int16),
            None,
            attrs,
        )
        return self.record_spill(content, e)

    def note_gap(self, crate_from: int, crate_to: int, reason: str) -> None:
        """Crate spills ``crate_from..crate_to`` were never read (e.g. the DAQ was not running)."""
        self.record.setdefault("gaps", []).append(
            {"crate_from": int(crate_from), "crate_to": int(crate_to), "reason": reason, "unix": time.time()}
        )
        self.totals["gaps"] = len(self.record["gaps"])
        self.save()

    def note_stall(self, since_unix: float, until_unix: float | None) -> None:
        self.record.setdefault("stalls", []).append({"since_unix": since_unix, "until_unix": until_unix})
        self.save()

    def set(self, key: str, value: Any, save: bool = False) -> None:
        """Set a summary key of the run record (not one of the journal's: spills, in_flight)."""
        if key in ("spills", "in_flight"):
            raise ValueError(f"{key!r} lives in the run record's journal")
        self.record[key] = value
        if save:
            self.save()
