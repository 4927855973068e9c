"""argparse value types shared by the na64-offline subcommands (the plain numbers: :mod:`detector.cli_types`)."""

from __future__ import annotations

import argparse
import math

import numpy as np


def float_list(text: str) -> list[float]:
    """Parse "1,16.7,100" into positive floats (argparse type)."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from exc
    if not values or any(not np.isfinite(v) or v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


def float_pair(text: str) -> tuple[float, float]:
    """Parse "LO,HI" (argparse type)."""
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected LO,HI, got {text!r}") from exc
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise argparse.ArgumentTypeError(f"expected finite LO < HI, got {text!r}")
    return lo, hi
