"""A hostile MSADC crate for the DAQ's acceptance tests: the emulated crate (:class:`MSADCCrate` served by
:class:`MSADCServer` over real TCP, our MSADC SCPI byte for byte) whose replies to the DAQ are rewritten by
a script: NaN and strings in ``SPIL:INFO?``, counts of 1e12 and -1, failing ``SPIL:LIST?``. Id jumps and
restarts are real crate events (:meth:`HostileCrate.complete` with any id, ``faults.set("restart")``).

Observer connections (tests/oracle.py) are never rewritten: the oracle sees the true crate, so it can
check what the DAQ recorded. Spills are small hand-made records (tests/test_emu_msadc.py) with a
stand-in digitiser: no simulation, no numba in this process.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from test_emu_msadc import StandInDigitizer, make_record

from sim_frontend.emu_msadc import MSADCCrate, Session
from sim_frontend.msadc_server import MSADCServer
from sim_frontend.scpi import Reply

#: a rewrite: (command pattern, selected spill, the true reply) -> the reply sent instead (None: keep it)
Rewrite = Callable[[str, "int | None", Reply], "Reply | None"]


class ScriptedCrate(MSADCCrate):
    """An :class:`MSADCCrate` whose replies to non-observer connections pass through ``rewrites``."""

    def __init__(self, buffer: int = 4) -> None:
        super().__init__(StandInDigitizer(), buffer=buffer)
        self.rewrites: list[Rewrite] = []
        self.rewritten: dict[str, int] = {}  #: how often each pattern was rewritten
        self._script_lock = threading.Lock()

    def execute(
        self, text: str, block: bytes | None = None, session: Session | None = None
    ) -> tuple[Any, Reply | None]:
        cmd, reply = super().execute(text, block, session)
        if cmd is None or reply is None or (session is not None and session.observer):
            return cmd, reply
        selected = self.snapshot()["selected"]
        with self._script_lock:
            for rw in self.rewrites:
                new = rw(cmd.pattern, selected, reply)
                if new is not None:
                    self.rewritten[cmd.pattern] = self.rewritten.get(cmd.pattern, 0) + 1
                    return cmd, new
        return cmd, reply


class HostileCrate:
    """The scripted crate on a TCP port (``resource``), fed with spills by the test (:meth:`complete`)."""

    def __init__(self, buffer: int = 4, n_records: int = 400) -> None:
        self.crate = ScriptedCrate(buffer)
        self.server = MSADCServer(self.crate, idle_timeout_s=0.3).start()
        self.n_records = n_records

    @property
    def resource(self) -> str:
        return self.server.resource

    def complete(self, spill_id: int) -> None:
        """Spill ``spill_id`` starts and completes in the crate at once (any id: a jump is a jump)."""
        self.crate.spill_started(spill_id)
        self.crate.spill_completed(make_record(spill_id, self.n_records))

    def on(self, pattern: str, spill: int | None, reply: Reply, times: int | None = None) -> None:
        """Reply ``reply`` to ``pattern`` (the command's declared pattern, e.g. ``SPILl:INFOrmation?``) while
        ``spill`` is selected (None: whatever is selected), at most ``times`` times (None: always)."""
        left = [times]

        def rw(p: str, selected: int | None, true: Reply) -> Reply | None:
            if p != pattern or (spill is not None and selected != spill) or left[0] == 0:
                return None
            if left[0] is not None:
                left[0] -= 1
            return reply

        self.crate.rewrites.append(rw)

    def stop(self) -> None:
        self.server.stop()
