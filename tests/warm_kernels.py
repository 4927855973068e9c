"""The trigger kernels the tests call beyond the DAQ's own: compiled (or loaded from numba's cache) once by
``python3 tasks.py test`` beside the static checks and the first test files (the files that call them run last:
tests/conftest.py), instead of inside the first trigger test of each pytest worker, each compiling the same
kernels at the same time.

numba compiles the trigger kernels once for menus without further energy lines and once for menus with
them (padded to the most lines a menu can have: trigger.params.kernel_lines); the tests use menus with 1, 2
(tests/test_trigger_hypothesis.py) and :data:`~detector.records.MAX_TRIGGERS` - 4 (tests/test_trigger_lines.py)
further lines besides the default, all on the second kernel. Only the structure of a menu matters here, not
its numbers. Run as a script: prints one line, in seconds."""

from __future__ import annotations

import time

from detector.records import MAX_TRIGGERS, TRIGGER_BITS
from trigger import kernels as K
from trigger import reference as R
from trigger.menu import EnergyTrigger, TriggerMenu

#: numbers of further energy lines of menus that reach every kernel the tests use (0: the default menu; any
#: number from 1 to MAX_TRIGGERS - len(TRIGGER_BITS) reaches the same padded kernel)
FURTHER_LINES = (0, MAX_TRIGGERS - len(TRIGGER_BITS))


def menu_with(n_further: int) -> TriggerMenu:
    """The default menu with ``n_further`` further energy lines (any numbers: only their count matters)."""
    return TriggerMenu().replace(further_lines=tuple((f"warm{k}", EnergyTrigger()) for k in range(n_further)))


def warm_up() -> float:
    """Compile or load every entry (waveform, amplitude) for the menus of :data:`FURTHER_LINES`, and the pulse
    kernels with which the tests synthesise their spills
    (:func:`trigger.reference.electron_spill`). Returns the seconds it took."""
    t = time.perf_counter()
    R.electron_spill(TriggerMenu(), 2, seed=0)
    return time.perf_counter() - t + sum(K.warm_up(menu_with(n)) for n in FURTHER_LINES)


if __name__ == "__main__":
    print(f"the trigger's amplitude entry and the kernel of menus with further lines ... {warm_up():.1f} s", flush=True)
