"""The spill's events written to its spill file while they are read out (:class:`SpillStreamer`).

At 1e7 e-/spill a spill has ~1e5 accepted events, ~0.75 GB of waveforms: written after the readout, the
write alone took 0.4-1.9 s of the 4.8 s spill. The readout hands each block of events to the streamer as it
arrives (:class:`online.readout.EventSink`), a writer thread puts it into the spill file
(:class:`detector.spillfile.SpillFileStream`) while the next block is read, and recording the spill only
finishes the file. A spill that is not recorded (skipped, disk full, the run stops) has its partial file
removed; one the streamer could not open (no disk space for it, the file exists) is written the ordinary way.
"""

from __future__ import annotations

import logging

from detector.spillfile import SpillFileStream

from .msadc import EVENT_RECORD_BYTES
from .readout import SpillOutcome
from .recorder import RunRecorder

log = logging.getLogger("online.daq")


class SpillStreamer:
    """The DAQ's :class:`~online.readout.EventSink`: streams the events of DAQ spill :meth:`arm` into that
    spill's file in the run directory of ``recorder``."""

    def __init__(self, recorder: RunRecorder) -> None:
        self.recorder = recorder
        self.spill: int | None = None
        self.stream: SpillFileStream | None = None

    def arm(self, spill: int) -> None:
        """The next readout is DAQ spill ``spill``."""
        self.abort()
        self.spill = int(spill)

    def open(self, out: SpillOutcome) -> None:
        self.abort()
        if self.spill is None:
            return
        n = int(out.accepted.size)
        problem = self.recorder.space_problem(n * EVENT_RECORD_BYTES)
        if problem is not None:  # recording the spill finds the same and flags it
            return
        try:
            self.stream = SpillFileStream(self.recorder.rdir, self.spill, n, threaded=True)
        except OSError as exc:  # the ordinary write reports it when the spill is recorded
            log.warning("spill %d: events not streamed to disk (%s)", self.spill, exc)

    def rows(self, out: SpillOutcome, first: int, count: int) -> None:
        if self.stream is not None:
            self.stream.put(first, out.events[first : first + count])

    def take(self) -> SpillFileStream | None:
        """The open stream of the armed spill, handed to whoever finishes (or aborts) it."""
        stream, self.stream, self.spill = self.stream, None, None
        return stream

    def abort(self) -> None:
        """Drop the stream of the spill in flight, if any (its partial file is removed)."""
        stream, self.stream = self.stream, None
        if stream is not None:
            stream.abort()
