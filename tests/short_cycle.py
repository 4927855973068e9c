"""The tests' short SPS cycle: configuration overrides (deep-merged over ``tests/daq_helpers.py``'s
``DAQ_TEST_CONFIG`` or a test's own settings) for tests whose checks need a few spills of the DAQ test
beam, not a long gap between them. The wall time of such a test is mostly its spills' cycles."""

from __future__ import annotations

from typing import Any

#: LED pulses that fit in a gap of 0.15 s or more: the first 0.02 s after the flat top, 50 pulses 2 ms apart
#: (0.12 s; the default's 0.2 s + 50 x 5 ms outlast a short gap)
LED_IN_A_SHORT_GAP: dict[str, Any] = {"delay_s": 0.02, "period_ms": 2.0}

#: a spill every 0.5 s: the 0.3 s flat top of DAQ_TEST_CONFIG and a 0.2 s gap with the LED pulses inside it
#: (the DAQ records a spill of its 3e4 particles about 0.1 s after the flat top; one of a few thousand events
#: read out in calibration mode in about 0.2 s, so it may fall behind by a little, which the crate's ring of
#: DAQ_TEST_CONFIG's 6 spills, 3 s, absorbs)
SHORT_CYCLE: dict[str, Any] = {"spill": {"supercycle_s": 0.5}, "led": LED_IN_A_SHORT_GAP}
