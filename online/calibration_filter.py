"""Which spills a calibration-mode DAQ reads out (issue: calibration at any beam intensity).

A calibration campaign (``hv-tune``, ``ecal-calib``) needs only the spills taken with the table on the
cell it measures; any other spill (the table at the physics position with the full-intensity beam, or
moving) is skipped after ``SPIL:INFO?``: no primitives and no events are read, the spill is recorded
empty and flagged ``skipped_off_cell`` with its accounting (particles, start, table position).

The wanted cell comes from the campaign's request file (``na64-daq run --calibration-mode
--calibration-request PATH``; JSON ``{"cell": "0-2-3"}``, rewritten atomically by the campaign before every
table move; ``null`` or a missing file: no cell wanted, every spill is skipped). A calibration-mode DAQ
without a request file reads out every spill, as before.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any


class CellFilter:
    """``refuse(info)`` -> why a spill is not read out (``None``: read it). ``request_path``: the
    campaign's request file."""

    def __init__(self, request_path: str | os.PathLike) -> None:
        self.request_path = pathlib.Path(request_path)

    def wanted(self) -> str | None:
        """The cell the campaign asks for now (None: none, or no readable request)."""
        try:
            cell = json.loads(self.request_path.read_text()).get("cell")
        except (OSError, ValueError, AttributeError):
            return None
        return cell if isinstance(cell, str) and cell else None

    def refuse(self, info: dict[str, Any]) -> str | None:
        table = info.get("table")
        cell = table.get("cell") if isinstance(table, dict) else None
        if not isinstance(cell, str):
            return "the crate reports no table position for this spill"
        wanted = self.wanted()
        if wanted is None:
            return f"table at {cell}; the campaign requests no cell"
        return None if cell == wanted else f"table at {cell}, the campaign requests {wanted}"
