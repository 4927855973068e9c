"""What the run control says about each recorded spill on the console: the progress line, from the spill's
run-record entry (its ``scalers`` message comes from the one producer, :mod:`online.monitor_messages`)."""

from __future__ import annotations

import errno
import os
from typing import Any

from rich.console import Console

from detector.records import INCOMPLETE_SPILL_FLAGS


def progress_line(spill: int, entry: dict[str, Any], seconds: float, lost_spills: int) -> tuple[str, str]:
    """The console line of a recorded spill and its rich style: green when unflagged, yellow when flagged
    but complete, bold red when incomplete. ``seconds``: the DAQ's time for the spill; ``lost_spills``: the
    run's count so far. A spill cut at ``daq.max_events_per_spill`` also says how many events were read."""
    length = float(entry.get("length_s") or 0.0)
    rate = entry["n_accepted"] / length if length > 0 else 0.0
    flags = ",".join(entry.get("flags", [])) or "ok"
    line = (
        f"spill {spill:>5} (crate {entry['crate_spill']}): {entry['n_particles']:>9,} particles  "
        f"{entry['n_accepted']:>7,} accepted  "
        + (f"{entry.get('n_read_out', 0):,} read (cap)  " if "truncated" in entry.get("flags", []) else "")
        + f"{entry.get('n_recorded', 0):>7,} recorded  "
        f"{rate:8.1f} Hz  EOT {entry['eot']:,}  {seconds:6.2f} s  lost spills {lost_spills}  [{flags}]"
    )
    style = (
        "green"
        if flags == "ok"
        else ("yellow" if not set(entry.get("flags", [])) & INCOMPLETE_SPILL_FLAGS else "bold red")
    )
    return line, style


class OperatorConsole(Console):
    """The rich console of the progress lines. A closed pipe is a ``BrokenPipeError`` for the caller
    (:func:`print_line`), not rich's default, which exits the program (``SystemExit(1)``)."""

    def on_broken_pipe(self) -> None:
        self.quiet = True  # nothing more is rendered
        raise BrokenPipeError(errno.EPIPE, "the console's output was closed (broken pipe)")


def print_line(console: Any, line: str, style: str) -> str | None:
    """Print ``line`` on the rich ``console``; returns None, or why the console cannot take it (a closed
    pipe such as ``na64-daq run ... | head -1``, a closed terminal). The console's file is then pointed
    at ``/dev/null``, so that nothing written to it later (nor Python's flush at exit) raises again: a
    console is for the operator and never stops the recording."""
    try:
        console.print(line, style=style, highlight=False, markup=False)
        return None
    except (OSError, ValueError) as exc:  # BrokenPipeError, EIO of a closed tty, "I/O operation on closed file"
        why = f"{type(exc).__name__}: {exc}"
    try:
        fd = console.file.fileno()
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, fd)
        finally:
            os.close(null)
    except (OSError, ValueError, AttributeError):
        pass
    return why
