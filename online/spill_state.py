"""The DAQ's spill state machine (H4DAQ's FSM): :class:`State`, the transition table :data:`TRANSITIONS`
and :class:`SpillStateMachine`, which refuses any other transition and reports every change::

    IDLE ──> SPILL ──> END_OF_SPILL ──> READOUT ──> RECORDED ──> IDLE | SPILL | END_OF_SPILL
      └──────────────────^                 │
     any state ──> ERROR ──> IDLE | SPILL | END_OF_SPILL | READOUT | RECORDED

The run control (:mod:`online.daq`) publishes each change on the ``status`` topic.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from detector.monitoring import DAQState as State

S = State
#: allowed transitions (a state may always be re-entered, which is not a change)
TRANSITIONS: dict[State, frozenset[State]] = {
    S.IDLE: frozenset({S.SPILL, S.END_OF_SPILL, S.ERROR}),
    S.SPILL: frozenset({S.IDLE, S.END_OF_SPILL, S.ERROR}),
    S.END_OF_SPILL: frozenset({S.READOUT, S.ERROR}),
    S.READOUT: frozenset({S.RECORDED, S.ERROR}),
    S.RECORDED: frozenset({S.IDLE, S.SPILL, S.END_OF_SPILL, S.ERROR}),
    S.ERROR: frozenset({S.IDLE, S.SPILL, S.END_OF_SPILL, S.READOUT, S.RECORDED}),
}


class IllegalTransition(RuntimeError):
    """A transition the table does not allow (a bug in the loop, never a hardware condition)."""


class SpillStateMachine:
    """The DAQ state with its transition table; ``on_change(old, new, message)`` runs on every change."""

    def __init__(self, on_change: Callable[[State, State, str], None] | None = None) -> None:
        self.state = State.IDLE
        self.message = ""
        self.since = time.time()
        self.history: list[tuple[float, str, str]] = []
        self._on_change = on_change
        self._lock = threading.Lock()

    def to(self, new: State, message: str = "") -> None:
        with self._lock:
            old = self.state
            if new == old:
                if message:
                    self.message = message
                return
            if new not in TRANSITIONS[old]:
                raise IllegalTransition(f"DAQ state {old.value} -> {new.value} is not allowed")
            self.state, self.message, self.since = new, message, time.time()
            self.history.append((self.since, new.value, message))
            del self.history[:-200]
        if self._on_change is not None:
            self._on_change(old, new, message)
