"""The calibration-campaign engine shared by ``hv-tune`` and ``ecal-calib`` (docs/physics.md section 7).

A campaign visits cells in turn. For every cell the engine moves the table so that the beam hits it,
announces the cell to the calibration DAQ (which then reads out only spills taken there), waits for beam
on that cell (only spills that started after the move/settle and with ``meta.table.cell`` equal to the
cell count: :class:`hv_control.stream.StreamAmplitudes`), and hands over to the tool's own step (collect,
fit, decide: :meth:`CellCampaign.process_cell`). Around that it keeps:

- the journal: the state file (JSON, written to a temporary file, fsync'ed, renamed, directory fsync'ed)
  after every measurement; it holds every cell's state and the cell -> channel mapping, which
  ``--resume`` recomputes from the channel map and refuses if it differs;
- the logbook: one line per measurement, appended and fsync'ed;
- pause on a fault (trip, beam loss, failed fit, table error): every channel is left at its last verified
  value (a tripped one switched off), the journal records the cell as ``paused`` and
  :class:`CampaignPaused` says how to resume;
- SIGTERM/SIGHUP (:func:`signals_interrupt`): the campaign stops at the next safe point (never in the
  middle of an HV ramp and its verification), journals, and the caller homes the table and stops the
  child DAQ (:func:`stop_daq`: its whole process group);
- the supply is configured once at campaign start (MAXV, RUP/RDW, ISET, TRIP from config).

A tool subclasses :class:`CellCampaign` and defines the per-cell step (or several passes over the cells,
:meth:`CellCampaign.passes`), the cell -> channel mapping, what a finished cell is and (optionally) what
happens after a pass (:meth:`CellCampaign.after_pass`).
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import Any

from detector import channels as chmap

from .peak import PeakFitError
from .supply import HVError, HVTripError
from .table import TableError

STATE_VERSION = 1
DAQ_STOP_TIMEOUT_S = 60.0  #: time the child DAQ gets to finish its spill after SIGTERM before SIGKILL


class CampaignPaused(RuntimeError):
    """The campaign stopped safely; the message says why and how to resume."""


class CampaignInterrupted(Exception):
    """SIGTERM/SIGHUP arrived (raised in the main thread by :func:`signals_interrupt`)."""

    def __init__(self, signame: str) -> None:
        super().__init__(f"interrupted by {signame}")
        self.signame = signame


class BeamLossError(RuntimeError):
    """No usable beam spills arrived for a measurement."""


class MappingMismatch(ValueError):
    """A resumed campaign's stored cell -> channel mapping differs from the one computed now."""


def channel_mapping(channel_id: int) -> dict[str, Any]:
    """What a cell's channel is, from the channel map: id, name and HV address ``[board, channel]``."""
    c = chmap.CHANNELS[int(channel_id)]
    return {"channel_id": c.id, "name": c.name, "hv": [c.hv_board, c.hv_channel]}


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as JSON to ``path``: temporary file, flush, fsync, rename, fsync of the directory,
    so that after a crash the file is either the old or the new one, complete."""
    p = pathlib.Path(path)
    tmp = p.with_name(p.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(data, indent=1))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, p)
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened
        fd = os.open(p.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one line to a logbook file and fsync it."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line.rstrip("\n") + "\n")
        fh.flush()
        os.fsync(fh.fileno())


class CellCampaign:
    """One campaign over ``cells`` (logbook names), tool-independent.

    ``hv``: the :class:`~hv_control.supply.HVSupply` the campaign owns (configured once at start; None:
    the campaign touches no HV); ``table``: the table driver (``move_to_cell``); ``states``: cell ->
    state dataclass (with ``cell``, ``status``, ``message``), from :meth:`load_journal` on resume;
    ``request_path``: where the cell under the beam is announced to the calibration DAQ (JSON
    ``{"cell": ...}``; None: not announced); ``progress(what, state)``: progress callback."""

    tool = "campaign"
    #: faults that pause the campaign (channels safe, journal written)
    FAULTS: tuple[type[BaseException], ...] = (HVError, BeamLossError, PeakFitError, TableError)
    #: statuses of a cell that is not visited again
    FINISHED = frozenset({"done", "failed"})

    def __init__(
        self,
        *,
        hv: Any,
        table: Any,
        cells: list[str],
        logbook: str | os.PathLike,
        state_path: str | os.PathLike,
        states: dict[str, Any],
        progress: Callable[[str, Any], None] | None = None,
        request_path: str | os.PathLike | None = None,
    ) -> None:
        self.hv, self.table = hv, table
        self.cells = list(cells)
        self.logbook = pathlib.Path(logbook)
        self.state_path = pathlib.Path(state_path)
        self.states = states
        self.progress = progress or (lambda what, st: None)
        self.request_path = pathlib.Path(request_path) if request_path else None
        self._pending_signal: str | None = None
        self._critical = 0
        for cell in self.cells:
            self.check_mapping(cell, self.states[cell])

    # ------------------------------------------------------------------ to be defined by a tool
    @classmethod
    def mapping(cls, cell: str) -> dict[str, Any]:
        """The cell's channels (ids and HV addresses) as computed from the channel map now."""
        raise NotImplementedError

    def stored_mapping(self, st: Any) -> dict[str, Any]:
        """The cell's channels as stored in its (possibly resumed) state."""
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        """The campaign's parameters, stored in the journal."""
        return {}

    def header(self) -> str:
        """The logbook line that opens a (resumed) campaign."""
        return f"# {self.tool} {time.strftime('%Y-%m-%d %H:%M:%S')}"

    def process_cell(self, st: Any) -> None:
        """Collect, fit and decide for one cell; the table is on it already."""
        raise NotImplementedError

    def make_safe(self, st: Any, exc: BaseException) -> str:
        """After a fault: a tripped channel is switched off at the safe voltage, all others stay at their
        last verified voltage. Returns what was done."""
        channel = getattr(st, "channel_id", None)
        if isinstance(exc, HVTripError) and channel is not None and self.hv is not None:
            try:
                self.hv.shutdown([channel])
                return f"{st.cell} switched off at {self.hv.hv.safe_v:.0f} V"
            except HVError as exc2:
                return f"{st.cell}: shutdown failed ({exc2}) - check the supply"
        return "all channels left at their last verified voltage"

    # ------------------------------------------------------------------ mapping check (--resume)
    def check_mapping(self, cell: str, st: Any) -> None:
        """MappingMismatch if the state's stored channels differ from those computed now."""
        now, stored = self.mapping(cell), self.stored_mapping(st)
        if now != stored:
            raise MappingMismatch(
                f"cell {cell}: the campaign file maps it to {stored}, the channel map now gives {now}; "
                "refusing to resume (start a new campaign)"
            )

    # ------------------------------------------------------------------ journal and logbook
    def journal(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "tool": self.tool,
            **self.params(),
            "mapping": {c: self.mapping(c) for c in self.states},
            "cells": {c: asdict(s) for c, s in self.states.items()},
        }

    def save_state(self) -> None:
        """Write the journal atomically (fsync)."""
        write_json_atomic(self.state_path, self.journal())

    @classmethod
    def load_journal(cls, path: str | os.PathLike) -> dict[str, Any]:
        """The journal of an interrupted campaign; ValueError if the file is not one of this tool."""
        p = pathlib.Path(path)
        try:
            data = json.loads(p.read_text())
            if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
                raise ValueError(f"state version {data.get('version') if isinstance(data, dict) else None!r}")
            if data.get("tool", cls.tool) != cls.tool:
                raise ValueError(f"it is a {data.get('tool')} campaign, not {cls.tool}")
            if not isinstance(data.get("cells"), dict):
                raise ValueError("no cells")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{p}: not a readable {cls.tool} state file ({exc})") from None
        stored = data.get("mapping") or {}
        for cell in data["cells"]:
            try:
                now = cls.mapping(cell)
            except ValueError as exc:
                raise MappingMismatch(f"{p}: cell {cell!r} of the campaign file does not exist now ({exc})") from None
            if cell in stored and stored[cell] != now:
                raise MappingMismatch(
                    f"{p}: cell {cell} was mapped to {stored[cell]}, the channel map now gives {now}; "
                    "refusing to resume (start a new campaign)"
                )
        return data

    def log(self, line: str) -> None:
        append_line(self.logbook, line)

    # ------------------------------------------------------------------ steps offered to a tool
    def move_to(self, st: Any) -> float:
        """Announce the cell to the calibration DAQ, move the table onto it and wait until it rests there;
        returns the unix time after the move (spills that started before do not count)."""
        self.progress("move", st)
        self.announce(st.cell)
        self.table.move_to_cell(st.cell)
        return time.time()

    def announce(self, cell: str | None) -> None:
        """Tell the calibration DAQ which cell is wanted (it skips spills taken elsewhere)."""
        if self.request_path is not None:
            write_json_atomic(self.request_path, {"cell": cell, "unix": time.time()})

    @contextlib.contextmanager
    def critical(self) -> Iterator[None]:
        """A section a signal must not cut (an HV ramp and its verification): a SIGTERM/SIGHUP that
        arrives inside is acted upon at its end."""
        self._critical += 1
        try:
            yield
        finally:
            self._critical -= 1
        self.checkpoint()

    def checkpoint(self) -> None:
        """Raise a signal that arrived during a critical section."""
        if self._pending_signal and not self._critical:
            name, self._pending_signal = self._pending_signal, None
            raise CampaignInterrupted(name)

    def on_signal(self, signame: str) -> None:
        """Called by :func:`signals_interrupt` in the main thread: interrupts now, or at the end of the
        critical section in progress."""
        if self._critical:
            self._pending_signal = signame
            return
        raise CampaignInterrupted(signame)

    # ------------------------------------------------------------------ the loop
    def start(self) -> None:
        """Once at campaign start: open the logbook and program the supply's limits and ramps from config."""
        self.logbook.parent.mkdir(parents=True, exist_ok=True)
        self.log(self.header())
        if self.hv is not None:
            with self.critical():
                self.hv.configure()

    def passes(self) -> list[tuple[str, frozenset[str], Callable[[Any], None]]]:
        """The campaign's passes over the cells: name, the statuses that need no visit in that pass, and
        the per-cell step. One pass of :meth:`process_cell` by default."""
        return [("cells", self.FINISHED, self.process_cell)]

    def after_pass(self, name: str) -> None:
        """After every cell was visited in pass ``name`` (e.g. a global fit)."""

    def run(self) -> dict[str, Any]:
        """Visit every cell not yet finished in each pass (then :meth:`after_pass`); returns the states.
        Raises CampaignPaused on a fault or a signal (journal written, channels safe)."""
        current = None
        finished: frozenset[str] = frozenset()
        try:
            self.start()
            for name, finished, step in self.passes():
                for cell in self.cells:
                    st = self.states[cell]
                    if st.status in finished:
                        continue
                    current = st
                    step(st)
                    current = None  # finished its step: a signal from here on pauses between cells
                    self.save_state()
                    self.progress("cell_done", st)
                    self.checkpoint()
                current = None
                self.after_pass(name)
                self.save_state()
        except self.FAULTS as exc:
            what = self.make_safe(current, exc)
            self._pause(_unfinished(current, finished), f"{type(exc).__name__}: {exc}", what, exc)
        except CampaignInterrupted as exc:
            # a signal is raised wherever the main thread is outside a critical section, also just after a
            # cell's step returned: a cell whose step finished it keeps its status (it is journaled as such)
            self._pause(_unfinished(current, finished), str(exc), "channels left at their last verified values", exc)
        self.announce(None)
        self.save_state()
        return self.states

    def _pause(self, st: Any, why: str, what: str, exc: BaseException) -> None:
        if st is not None:
            st.status, st.message = "paused", why
        self.save_state()
        where = f"at cell {st.cell}" if st is not None else "between cells"
        raise CampaignPaused(f"campaign paused {where}: {why}. {what}. Resume with --resume {self.state_path}") from exc


def _unfinished(st: Any, finished: frozenset[str]) -> Any:
    """The cell a pause interrupts: ``st`` unless its step of the current pass had finished it (status in
    ``finished``), else None."""
    return None if st is None or st.status in finished else st


# ---------------------------------------------------------------------- signals and the child DAQ
@contextlib.contextmanager
def signals_interrupt(campaign_ref: Callable[[], CellCampaign | None]) -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP stop the campaign returned by ``campaign_ref()`` at its next
    safe point (:meth:`CellCampaign.on_signal`), or raise :class:`CampaignInterrupted` at once when no
    campaign runs yet. A SIGHUP the process was started ignoring (``nohup hv-tune ...``: the operator asked
    the campaign to outlive its terminal) stays ignored. The previous handlers are restored afterwards."""

    def handler(signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        c = campaign_ref()
        if c is None:
            raise CampaignInterrupted(name)
        c.on_signal(name)

    caught = [signal.SIGTERM] + ([signal.SIGHUP] if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN else [])
    old = {s: signal.signal(s, handler) for s in caught}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def start_daq(cmd: list[str], log_path: pathlib.Path) -> subprocess.Popen:
    """Start the calibration DAQ ``cmd`` as a child in its own process group (session), output to
    ``log_path``."""
    with open(log_path, "ab") as log:  # the child holds its own copy of the descriptor
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop_daq(proc: subprocess.Popen | None, timeout_s: float = DAQ_STOP_TIMEOUT_S) -> None:
    """Stop the child DAQ and everything in its process group: SIGTERM to the group (the DAQ finishes the
    spill in hand), wait, then SIGKILL to the group; returns once the DAQ is reaped."""
    if proc is None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
