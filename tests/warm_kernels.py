"""The trigger kernels the tests call beyond the DAQ's own: compiled (or loaded from numba's cache) once by
``python3 tasks.py test`` before the suite, beside the static checks, instead of inside the first pytest
worker that needs them (where a compile holds the cross-process compile lock: detector.jitcache).

numba compiles the trigger kernels once per number of energy lines (the menu reaches them as a tuple of
line records: trigger.params), and the tests use menus with 1, 2 (tests/test_trigger_hypothesis.py) and
:data:`~detector.records.MAX_TRIGGERS` - 4 (tests/test_trigger_lines.py) further lines besides the default.
Only the structure of a menu matters here, not its numbers. Run as a script: prints one line, in seconds."""

from __future__ import annotations

import time

from detector.records import MAX_TRIGGERS, TRIGGER_BITS
from trigger import kernels as K
from trigger import reference as R
from trigger.menu import EnergyTrigger, TriggerMenu

#: numbers of further energy lines of the menus the tests trigger with (0: the default menu), and whether
#: the tests run those menus on the parallel passes too (the full menu of test_trigger_lines.py: serial only)
FURTHER_LINES = {0: True, 1: True, 2: True, MAX_TRIGGERS - len(TRIGGER_BITS): False}


def menu_with(n_further: int) -> TriggerMenu:
    """The default menu with ``n_further`` further energy lines (any numbers: only their count matters)."""
    return TriggerMenu().replace(further_lines=tuple((f"warm{k}", EnergyTrigger()) for k in range(n_further)))


def warm_up() -> float:
    """Compile or load every entry (waveform, amplitude; serial, and parallel where the tests use it) for the
    menus of :data:`FURTHER_LINES`, and the pulse kernels with which the tests synthesise their spills
    (:func:`trigger.reference.electron_spill`). Returns the seconds it took."""
    t = time.perf_counter()
    R.electron_spill(TriggerMenu(), 2, seed=0)
    return time.perf_counter() - t + sum(K.warm_up(menu_with(n), parallel=par) for n, par in FURTHER_LINES.items())


if __name__ == "__main__":
    print(f"the trigger's amplitude entry and parallel passes, menus of the tests ... {warm_up():.1f} s", flush=True)
