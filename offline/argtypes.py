"""argparse value types shared by the na64-offline subcommands."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import TypeVar

import numpy as np

T = TypeVar("T")


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


def _parsed(text: str, conv: Callable[[str], T], what: str) -> T:
    try:
        return conv(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from exc


def positive_int(text: str) -> int:
    """Parse an integer >= 1 (argparse type): event counts, worker counts."""
    v = _parsed(text, int, "an integer")
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {v}")
    return v


def positive_float(text: str) -> float:
    """Parse a finite number > 0 (argparse type): masses, intensities, EOT."""
    v = _parsed(text, float, "a number")
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return v


def nonnegative_float(text: str) -> float:
    """Parse a finite number >= 0 (argparse type): backgrounds, relative systematics."""
    v = _parsed(text, float, "a number")
    if not (math.isfinite(v) and v >= 0):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return v


def random_seed(text: str) -> int:
    """Parse a random seed (argparse type): an integer >= 0, as numpy's generators take."""
    v = _parsed(text, int, "an integer seed")
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a seed >= 0, got {v}")
    return v
