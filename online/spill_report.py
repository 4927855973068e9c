"""What the run control says about each recorded spill: the ``scalers`` topic's meta and the console's
progress line, both from the spill's run-record entry."""
from __future__ import annotations

from typing import Any

from detector.records import INCOMPLETE_SPILL_FLAGS


def scalers_meta(entry: dict[str, Any], totals: dict[str, Any]) -> dict[str, Any]:
    """The meta of the ``scalers`` message of a spill: its counts, triggers, EOT (and the run's EOT so far,
    from the run record's ``totals``), flags, spill length (s) and start (unix s)."""
    sc = entry.get("scalers") or {}
    return {"S0": int(sc.get("S0", 0)), "S1": int(sc.get("S1", sc.get("crate_S1", 0))), "V0": int(sc.get("V0", 0)),
            "eot": int(entry.get("eot", 0)), "eot_total": int(totals.get("eot", 0)),
            "particles": int(entry.get("n_particles", 0)), "triggers": entry.get("triggers") or {},
            "accepted": int(entry.get("n_accepted", 0)), "read_out": int(entry.get("n_read_out", 0)),
            "recorded": int(entry.get("n_recorded", 0)), "flags": list(entry.get("flags", [])),
            "spill_length_s": float(entry.get("length_s", 0.0)), "start_unix": float(entry.get("start_unix", 0.0)),
            "crate_spill": int(entry.get("crate_spill", -1)), "scalers": sc}


def progress_line(spill: int, entry: dict[str, Any], seconds: float, lost_spills: int) -> tuple[str, str]:
    """The console line of a recorded spill and its rich style: green when unflagged, yellow when flagged
    but complete, bold red when incomplete. ``seconds``: the DAQ's time for the spill; ``lost_spills``: the
    run's count so far."""
    length = float(entry.get("length_s") or 0.0)
    rate = entry["n_accepted"] / length if length > 0 else 0.0
    flags = ",".join(entry.get("flags", [])) or "ok"
    line = (f"spill {spill:>5} (crate {entry['crate_spill']}): {entry['n_particles']:>9,} particles  "
            f"{entry['n_accepted']:>7,} accepted  {entry.get('n_recorded', 0):>7,} recorded  "
            f"{rate:8.1f} Hz  EOT {entry['eot']:,}  {seconds:6.2f} s  lost spills {lost_spills}  [{flags}]")
    style = "green" if flags == "ok" else ("yellow" if not set(entry.get("flags", [])) & INCOMPLETE_SPILL_FLAGS
                                           else "bold red")
    return line, style
