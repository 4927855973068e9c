"""argparse value types shared by the command-line tools (``na64-daq``, ``na64-monitor``, ``hv-tune``,
``ecal-calib``, ``na64-offline``): a bad number is refused by the parser, naming its option, before anything
runs. NaN and infinity are refused wherever a finite number is meant."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def _parsed(text: str, conv: Callable[[str], T], what: str) -> T:
    try:
        return conv(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from exc


def positive_int(text: str) -> int:
    """An integer >= 1: event counts, bins."""
    v = _parsed(text, int, "an integer")
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {v}")
    return v


def positive_float(text: str) -> float:
    """A finite number > 0: masses, intensities, EOT, timeouts in seconds."""
    v = _parsed(text, float, "a number")
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return v


def nonnegative_float(text: str) -> float:
    """A finite number >= 0: backgrounds, relative systematics, waits and intervals in seconds."""
    v = _parsed(text, float, "a number")
    if not (math.isfinite(v) and v >= 0):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return v


def random_seed(text: str) -> int:
    """A random seed: an integer >= 0, as numpy's generators take."""
    v = _parsed(text, int, "an integer seed")
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a seed >= 0, got {v}")
    return v
