"""Writing a new calibration file (the format of config/calibration.toml, read by
:func:`detector.config.load_calibration`) with new per-channel constants, keeping the old one.

The new file is the old file's text with the ``[gev_per_count.cells]`` entries of the changed channels
replaced by the new values, and a comment header naming the date, the run, the tool and the file it was
derived from; the change (old and new constant per channel) is appended to ``<new file>.changes.jsonl``,
one JSON line per calibration. The old file is never modified: a new file of the same name moves the
old one aside first (``<name>.<date>.old``). The result is read back and checked before it is announced.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import pathlib
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from detector import channels as ch
from detector.config import Calibration, load_calibration

from .campaign import append_line

_SECTION = re.compile(r"^\s*\[([^\]]+)\]\s*(#.*)?$")
_ENTRY = re.compile(r'^\s*"?([A-Za-z0-9_-]+)"?\s*=')


def _replace_cells(text: str, values: Mapping[str, float]) -> str:
    """``text`` with the ``[gev_per_count.cells]`` entries of ``values`` replaced (or added): the new
    entries follow the section header, the old entries of those channels are dropped."""
    out: list[str] = []
    section = None
    new_lines = [f'"{name}" = {value:.6g}' for name, value in values.items()]
    found = False
    for line in text.splitlines():
        m = _SECTION.match(line)
        if m:
            section = m.group(1).strip()
            out.append(line)
            if section == "gev_per_count.cells":
                out += new_lines
                found = True
            continue
        e = _ENTRY.match(line)
        if section == "gev_per_count.cells" and e and e.group(1) in values:
            continue
        out.append(line)
    if not found:
        out += ["", "[gev_per_count.cells]", *new_lines]
    return "\n".join(out) + "\n"


def write_calibration(
    old: Calibration,
    out_path: str | os.PathLike,
    constants: Mapping[str, float],
    *,
    tool: str,
    run: str,
    extra: Mapping[str, Any] | None = None,
    now: dt.datetime | None = None,
) -> dict[str, Any]:
    """Write the calibration ``old`` (its source file) with the ``gev_per_count`` of the channels in
    ``constants`` (name -> GeV per count) replaced, to ``out_path``; returns the change record (also
    appended to ``<out_path>.changes.jsonl``). ValueError if the result does not load back with exactly
    these constants."""
    now = now or dt.datetime.now(dt.UTC)
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    src = pathlib.Path(old.source)
    out = pathlib.Path(out_path)
    text = src.read_text(encoding="utf-8")
    header = (
        f"# written by {tool} on {now.isoformat(timespec='seconds')} (run {run}) from {src}:\n"
        f"# gev_per_count of {len(constants)} channels replaced; the change is in {out.name}.changes.jsonl\n"
    )
    new_text = header + _replace_cells(text, constants)
    kept = None
    if out.exists():
        kept = out.with_name(f"{out.name}.{stamp}.old")
        os.replace(out, kept)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(new_text, encoding="utf-8")
    os.replace(tmp, out)
    check = load_calibration(path=out)
    for name, value in constants.items():
        got = float(check.gev_per_count[ch.by_name(name).id])
        if not np.isclose(got, value, rtol=1e-5):
            raise ValueError(f"{out}: {name} reads back as {got}, not {value}")
    record = {
        "date": now.isoformat(timespec="seconds"),
        "tool": tool,
        "run": run,
        "from": str(src),
        "file": str(out),
        "old_file_kept_as": str(kept) if kept else str(src),
        "constants": {
            name: {"old": float(old.gev_per_count[ch.by_name(name).id]), "new": float(v)}
            for name, v in constants.items()
        },
        **(extra or {}),
    }
    append_line(out.with_name(out.name + ".changes.jsonl"), json.dumps(record))
    return record
