"""Restart recovery's questions to the crate: which spills its ring still holds, whether a spill a previous
DAQ was reading (or could not write) is still there, and where a continued run resumes. The run control
(:mod:`online.daq`) acts on the answers (re-reads, records lost spills, notes gaps)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from .msadc import MSADC, MSADCError

log = logging.getLogger("online.daq")

LIST_ATTEMPTS = 4  #: SPIL:LIST? tries before the ring is reported unknown
LIST_BACKOFF_S = 0.1  #: wait before the second try (s); doubles before each further one


def buffered_spills(
    crate: MSADC,
    attempts: int = LIST_ATTEMPTS,
    backoff_s: float = LIST_BACKOFF_S,
    stopping: Callable[[], bool] | None = None,
) -> list[int]:
    """The crate spill ids the crate's ring holds. A failing ``SPIL:LIST?`` (after the driver's own
    retries) is tried again ``attempts`` times in all, waiting ``backoff_s``, then twice that, and so on;
    if it still fails the last :class:`MSADCError` is raised: an unanswered list is never an empty ring
    (that would record buffered spills as lost). ``stopping()`` true ends the waiting early."""
    last: MSADCError | None = None
    for k in range(max(1, attempts)):
        if k:
            time.sleep(backoff_s * 2 ** (k - 1))
        try:
            return crate.spill_list()
        except MSADCError as exc:
            last = exc
            log.warning("SPIL:LIST? failed (try %d of %d): %s", k + 1, attempts, exc)
            if stopping is not None and stopping():
                break
    assert last is not None
    raise last


def same_spill(crate: MSADC, crate_spill: int, detected_unix: float) -> bool:
    """Is crate spill ``crate_spill`` still the one a previous DAQ saw complete at ``detected_unix`` (unix s;
    and not a new spill of a restarted crate that reuses the number)?"""
    try:
        crate.select_spill(crate_spill)
        info = crate.spill_info()
    except MSADCError:
        return False
    finally:
        crate.release_spill()
    start = info.get("start_unix")
    return not isinstance(start, (int, float)) or detected_unix <= 0 or float(start) <= detected_unix


def still_holds(crate: MSADC, crate_spill: int, detected_unix: float) -> bool:
    """Does the crate's ring still hold the spill a previous DAQ was reading when it died? (MSADCError if
    the crate cannot say.)"""
    return crate_spill in buffered_spills(crate) and same_spill(crate, crate_spill, detected_unix)


def resume_point(crate: MSADC, last: int | None, last_complete: int) -> tuple[int | None, tuple[int, int] | None]:
    """Where a continued run resumes after crate spill ``last`` (the last one it recorded; ``None``: none):
    the first crate spill to read (``None``: the next one to complete, also when the crate was restarted
    since), and the range of crate spills (first, last) that completed while no DAQ ran and are no longer
    in the crate (``None``: no gap). ``last_complete``: the crate's latest completed spill. MSADCError if
    the crate's ring cannot be listed."""
    if last is None or last > last_complete:
        return None, None
    first = min([s for s in buffered_spills(crate) if s > last], default=last_complete + 1)
    return first, ((last + 1, first - 1) if first > last + 1 else None)


#: flags of a spill whose events were read but not written: the crate's copy was kept for a restart
RECOVERABLE_FLAGS = frozenset({"disk_full", "write_failed"})


def ids_outside(first: int, last: int, ranges: list[tuple[int, int]]) -> list[int]:
    """The crate spill ids of ``first..last`` not in any of ``ranges`` (inclusive (a, b) pairs: the ids the
    DAQ skipped on purpose), i.e. the ones lost; the caller bounds their number."""
    out: list[int] = []
    k = first
    for a, b in sorted(ranges):
        out += range(k, min(a, last + 1))
        k = max(k, b + 1)
    out += range(k, last + 1)
    return out


def unwritten(spills: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Entries of a run record (by spill number) whose spill was read but not written (a flag of
    :data:`RECOVERABLE_FLAGS`) and whose crate spill has no later entry (no recovery recorded since)."""
    last: dict[int, dict[str, Any]] = {}
    for e in spills:
        cs = e.get("crate_spill")
        if isinstance(cs, int) and cs >= 0:
            last[cs] = e
    return [e for e in sorted(last.values(), key=lambda e: e["spill"]) if RECOVERABLE_FLAGS & set(e.get("flags", []))]
