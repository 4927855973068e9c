"""What the run control says about each recorded spill on the console: the progress line, from the spill's
run-record entry (its ``scalers`` message comes from the one producer, :mod:`online.monitor_messages`)."""

from __future__ import annotations

from typing import Any

from detector.records import INCOMPLETE_SPILL_FLAGS


def progress_line(spill: int, entry: dict[str, Any], seconds: float, lost_spills: int) -> tuple[str, str]:
    """The console line of a recorded spill and its rich style: green when unflagged, yellow when flagged
    but complete, bold red when incomplete. ``seconds``: the DAQ's time for the spill; ``lost_spills``: the
    run's count so far."""
    length = float(entry.get("length_s") or 0.0)
    rate = entry["n_accepted"] / length if length > 0 else 0.0
    flags = ",".join(entry.get("flags", [])) or "ok"
    line = (
        f"spill {spill:>5} (crate {entry['crate_spill']}): {entry['n_particles']:>9,} particles  "
        f"{entry['n_accepted']:>7,} accepted  {entry.get('n_recorded', 0):>7,} recorded  "
        f"{rate:8.1f} Hz  EOT {entry['eot']:,}  {seconds:6.2f} s  lost spills {lost_spills}  [{flags}]"
    )
    style = (
        "green"
        if flags == "ok"
        else ("yellow" if not set(entry.get("flags", [])) & INCOMPLETE_SPILL_FLAGS else "bold red")
    )
    return line, style
