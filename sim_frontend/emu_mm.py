"""The Micromegas readout module of the emulated crate (docs/protocols.md section 1, ``MM:`` commands).

APV25-like: per accepted event the zero-suppressed strips of MM1-MM4 with :data:`detector.mmblock.N_MM_SAMPLES`
time samples each, made on demand by :func:`sim_frontend.mmhits.event_strips` for the accepted events of the
selected spill (the same particles, pile-up and noise every time they are asked for) and sent as the block of
:mod:`detector.mmblock`.

Commands (registered on the crate's table by :meth:`MMReadout.register`):

- ``MM:DATA? [<first>,<count>]``: the block of accepted events ``first..first+count-1`` (accepted-list order);
- ``MM:PLANes?``: the number of strip planes (2 per station); ``MM:STRips?``: strips per plane;
  ``MM:SAMPles?``: time samples per strip.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from detector.mmblock import N_MM_SAMPLES, encode_block
from detector.settings import Config
from detector.tracking import Spectrometer

from . import mmhits
from .crate_spill import SpillRecord
from .scpi import BinaryReply, CommandTable, ScpiError

MAX_MM_EVENTS_PER_QUERY = 1 << 16  #: events per ``MM:DATA?`` (-223 above)


class MMReadout:
    """The Micromegas module for configuration ``cfg`` (``[beamline]``, ``[tracker]``)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.spec = Spectrometer.from_config(cfg)
        self._lookahead: Any = None  #: the crate's MM lookahead (set by :meth:`register`)

    def block(self, rec: SpillRecord, first: int, count: int) -> bytes:
        """The ``MM:DATA?`` payload of accepted events ``first..first+count-1`` of ``rec``."""
        idx = np.ascontiguousarray(rec.accepted[first : first + count], dtype=np.int64)
        spill = rec.spill
        if getattr(spill, "z0_xy", None) is None:
            raise ScpiError(-200, f"spill {rec.spill_id} was not transported through the beam line")
        return encode_block(mmhits.event_strips(spill, self.cfg, idx))

    def prefetch(self, rec: SpillRecord, first: int, count: int) -> None:
        """Start making the block of accepted events ``first..first+count-1`` in the background, unless it is
        being made already: the crate calls it when ``EVT:DATA?`` asks for those events, whose ``MM:DATA?``
        follows (so the first block, too, overlaps the event digitisation)."""
        la = self._lookahead
        key = (rec, rec.accepted, first, count)
        if la is None or count <= 0 or la.pending(key):
            return
        la.start(key, lambda: self.block(rec, first, count))

    def register(
        self,
        table: CommandTable,
        selected: Callable[[], SpillRecord],
        event_range: Callable[[list[str], int, str, int], tuple[int, int]],
        noargs: Callable[[list[str], str], Any],
        lookahead: Any,
    ) -> None:
        """Add the ``MM:`` commands to the crate's ``table``; ``selected()`` is the selected spill's record
        (or raises the crate's error), ``event_range`` the crate's ``<first>,<count>`` parser, ``lookahead``
        a :class:`sim_frontend.emu_msadc.Lookahead` of its own (the next block is made in the background
        while one is sent, as for ``EVT:DATA?``; :meth:`prefetch` starts one from the event readout)."""
        self._lookahead = lookahead

        def data(args: list[str]) -> BinaryReply:
            rec = selected()
            acc = rec.accepted
            first, count = event_range(args, acc.size, "MM:DATA?", MAX_MM_EVENTS_PER_QUERY)
            payload = lookahead.take((rec, acc, first, count))
            if payload is None:
                payload = self.block(rec, first, count)
            nxt = first + count
            if count and nxt < acc.size:  # the readout goes on with the next block: make it while this one is sent
                n_next = min(count, acc.size - nxt)
                lookahead.start((rec, acc, nxt, n_next), lambda: self.block(rec, nxt, n_next))
            return BinaryReply(np.frombuffer(payload, np.uint8))

        table.add("MM:DATA?", data, data=True)
        table.add("MM:PLANes?", lambda a: noargs(a, "MM:PLAN?") or str(self.spec.n_planes))
        table.add("MM:STRips?", lambda a: noargs(a, "MM:STR?") or str(self.spec.n_strips))
        table.add("MM:SAMPles?", lambda a: noargs(a, "MM:SAMP?") or str(N_MM_SAMPLES))
