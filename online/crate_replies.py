"""Validation of the MSADC crate's text replies (docs/protocols.md 1.3): a reply is used only once it is
the right type, finite and within bounds; anything else raises :class:`ReplyError` with the reason.

A crate is hardware we do not control: a NaN, a string where a number belongs, a count of 1e12 or of -1,
a spill id of 1e9 must never reach an allocation, a slice or the run record. The driver
(:mod:`online.msadc`) turns a :class:`ReplyError` into an :class:`~online.msadc.MSADCReplyError` (spill
flag ``crate_error``, the reason kept). Pure functions, no transport.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from typing import Any

MAX_LED_PULSES = 1 << 16  #: most LED pulses a crate may declare for one spill (``SPIL:INFO?`` ``led``)
MAX_SPILL_ID = 2**31 - 1  #: crate spill ids are 0..2^31-1 (-1 in SPIL:STAT? / SPIL:SEL?: none)
MAX_LIST_IDS = 1024  #: SPIL:LIST? never lists more ids than this (the emulator's ring holds at most 1024)
MAX_SCALER = 2**62  #: a hardware scaler above this is a corrupt value
MAX_UNIX = 1e10  #: unix times (s) beyond the year 2286 are corrupt values
MAX_LENGTH_S = 3600.0  #: a spill (flat top) longer than an hour is a corrupt value
MAX_TABLE_MM = 1e5  #: table coordinates beyond 100 m are corrupt values

_INT_RE = re.compile(r"[+-]?[0-9]{1,19}")


class ReplyError(ValueError):
    """A crate reply has the wrong type or is out of bounds; the text says which reply and why."""


def parse_int(reply: str, what: str, lo: int, hi: int) -> int:
    """A decimal integer reply (no exponent, no fraction) within ``lo..hi`` (inclusive)."""
    text = reply.strip()
    if not _INT_RE.fullmatch(text):
        raise ReplyError(f"{what}: {text[:60]!r} is not an integer")
    v = int(text)
    if not lo <= v <= hi:
        raise ReplyError(f"{what}: {v} is outside {lo}..{hi}")
    return v


def parse_status(reply: str, states: tuple[str, ...]) -> tuple[str, int]:
    """``SPIL:STAT?`` -> (state, last completed spill id or -1)."""
    state, sep, last = reply.partition(",")
    state = state.strip().upper()
    if not sep or state not in states:
        raise ReplyError(f"SPIL:STAT?: {reply[:80]!r} is not '<{'|'.join(states)}>,<last>'")
    return state, parse_int(last, "SPIL:STAT? last spill", -1, MAX_SPILL_ID)


def parse_list(reply: str, max_ids: int = MAX_LIST_IDS) -> list[int]:
    """``SPIL:LIST?`` -> the buffered spill ids: at most ``max_ids``, each 0..MAX_SPILL_ID, strictly
    increasing. An empty reply is an empty ring."""
    parts = [p for p in reply.split(",") if p.strip()] if reply.strip() else []
    if len(parts) > max_ids:
        raise ReplyError(f"SPIL:LIST?: {len(parts)} ids listed, the crate holds at most {max_ids}")
    ids = [parse_int(p, "SPIL:LIST? id", 0, MAX_SPILL_ID) for p in parts]
    if any(b <= a for a, b in itertools.pairwise(ids)):
        raise ReplyError(f"SPIL:LIST?: ids {reply[:80]!r} are not strictly increasing")
    return ids


def _no_constant(name: str) -> Any:
    raise ReplyError(f"SPIL:INFO?: {name} is not a number")


def _number(v: Any, what: str, lo: float, hi: float) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
        raise ReplyError(f"SPIL:INFO? {what}: {str(v)[:40]!r} is not a finite number in {lo:g}..{hi:g}")
    return float(v)


def _integer(v: Any, what: str, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ReplyError(f"SPIL:INFO? {what}: {str(v)[:40]!r} is not an integer in {lo}..{hi}")
    return int(v)


def parse_info(reply: str, spill: int | None, max_records: int) -> dict[str, Any]:
    """``SPIL:INFO?`` -> the spill description, checked field by field (every key but ``spill`` may be
    missing; a key that is there must be valid): ``spill`` (== ``spill`` if given), ``particles``
    (0..``max_records``), ``led`` (LED pulses after the flat top, 0..``MAX_LED_PULSES``), ``start_unix`` /
    ``complete_unix`` (unix s) and ``length_s`` (s), finite and bounded; ``seed`` and ``accepted`` integers;
    ``table`` an object (``x_mm``, ``y_mm`` finite, ``module`` an integer, ``cell`` a string); ``scalers`` an
    object of non-negative integers. Only these keys are returned (a crate's extra keys are not carried into
    the run record)."""
    try:
        info = json.loads(reply, parse_constant=_no_constant)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ReplyError(f"SPIL:INFO?: not JSON ({exc}): {reply[:120]!r}") from None
    if not isinstance(info, dict):
        raise ReplyError(f"SPIL:INFO?: not a JSON object: {reply[:120]!r}")
    out: dict[str, Any] = {}
    out["spill"] = _integer(info.get("spill"), "spill", 0, MAX_SPILL_ID)
    if spill is not None and out["spill"] != spill:
        raise ReplyError(f"SPIL:INFO? describes spill {out['spill']}, spill {spill} is selected")
    if "particles" in info:
        out["particles"] = _integer(info["particles"], "particles", 0, max_records)
    if "start_unix" in info:
        out["start_unix"] = _number(info["start_unix"], "start_unix", 0.0, MAX_UNIX)
    if "length_s" in info:
        out["length_s"] = _number(info["length_s"], "length_s", 0.0, MAX_LENGTH_S)
    if "complete_unix" in info:
        out["complete_unix"] = _number(info["complete_unix"], "complete_unix", 0.0, MAX_UNIX)
    if "seed" in info:
        out["seed"] = _integer(info["seed"], "seed", 0, 2**64 - 1)
    if "accepted" in info:
        out["accepted"] = _integer(info["accepted"], "accepted", 0, max_records)
    if "led" in info:
        out["led"] = _integer(info["led"], "led", 0, MAX_LED_PULSES)
    table = info.get("table", {})
    if not isinstance(table, dict):
        raise ReplyError(f"SPIL:INFO? table: {str(table)[:60]!r} is not an object")
    tab: dict[str, Any] = {}
    for k in ("x_mm", "y_mm"):
        if k in table:
            tab[k] = _number(table[k], f"table.{k}", -MAX_TABLE_MM, MAX_TABLE_MM)
    if "module" in table:
        tab["module"] = _integer(table["module"], "table.module", -1, 1 << 16)
    if "cell" in table:
        if not isinstance(table["cell"], str) or len(table["cell"]) > 32 or not table["cell"].isprintable():
            raise ReplyError(f"SPIL:INFO? table.cell: {str(table['cell'])[:40]!r} is not a short name")
        tab["cell"] = table["cell"]
    out["table"] = tab
    scalers = info.get("scalers", {})
    if not isinstance(scalers, dict) or len(scalers) > 64:
        raise ReplyError(f"SPIL:INFO? scalers: {str(scalers)[:60]!r} is not an object of counters")
    out["scalers"] = {}
    for k, v in scalers.items():
        if not isinstance(k, str) or len(k) > 32:
            raise ReplyError(f"SPIL:INFO? scaler name {str(k)[:40]!r}")
        out["scalers"][k] = _integer(v, f"scalers.{k}", 0, MAX_SCALER)
    return out
