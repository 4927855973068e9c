"""The emulator's LED pulser (issue 19 point 4; docs/physics.md 7.2): in the supercycle gap after each
spill's flat top it fires ``led.pulses_per_cycle`` pulses, ``led.period_ms`` apart, the first ``led.delay_s``
after the end of the flat top, into every calorimeter cell (:data:`detector.led.LED_CHANNELS`).

Light model: pulse ``k`` has intensity ``I_k = (1 + drift_per_hour * hours since start) * (1 + jitter * z_k)``
(``z_k`` standard normal; the LED itself, common to all cells). Cell ``c`` sees ``n_pe * I_k`` photoelectrons
on average (``photoelectrons``) and a Gaussian photostatistics fluctuation of relative RMS
``1 / sqrt(n_pe * I_k)``. Its light is expressed as the deposit (GeV) that gives ``amplitude_adc * I_k`` ADC
counts at gain 1: ``amplitude_adc * gev_per_count[c] * I_k * (1 + fluctuation)``; the digitiser multiplies it
by the cell's hidden gain at the time of the pulses (the same gains the drift and ``gain_jump`` change) and
by its HV factor, and adds pedestals and noise (:meth:`sim_frontend.digitizer.Digitizer.led_events`).
Deterministic per (hidden seed, spill).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from detector import channels as ch
from detector.led import LED_CHANNELS, LedEvents
from detector.settings import LedSection


class LedPulser:
    """Fires the LED pulses of one supercycle. ``gev_per_count`` (N_CHANNELS,) the calibration's GeV per ADC
    count; ``t_start_unix``: when the LED drift starts (None: no drift until :meth:`start`)."""

    def __init__(self, led: LedSection, gev_per_count: np.ndarray, hidden_seed: int) -> None:
        self.led = led
        self.gev_per_count = np.asarray(gev_per_count, dtype=np.float64)
        self.hidden_seed = int(hidden_seed)
        self.t_start_unix: float | None = None

    def start(self, t_unix: float) -> None:
        """Let the LED intensity drift from ``t_unix`` on."""
        self.t_start_unix = float(t_unix)

    def times_ns(self, spill_length_s: float) -> np.ndarray:
        """Pulse times (ns since the spill start): after the flat top of ``spill_length_s`` s."""
        k = np.arange(self.led.pulses_per_cycle, dtype=np.float64)
        return (float(spill_length_s) + self.led.delay_s) * 1e9 + k * self.led.period_ms * 1e6

    def light(self, spill_id: int, t_unix: float) -> np.ndarray:
        """Deposit-equivalent LED light (m, N_CHANNELS) float32 GeV of the pulses after spill ``spill_id``
        fired at unix time ``t_unix`` (0 in the channels the LED does not reach)."""
        led = self.led
        m = led.pulses_per_cycle
        rng = np.random.default_rng([self.hidden_seed, 0x1ED, int(spill_id) & 0xFFFFFFFF])
        hours = 0.0 if self.t_start_unix is None else max(0.0, float(t_unix) - self.t_start_unix) / 3600.0
        intensity = (1.0 + led.drift_per_hour * hours) * (1.0 + led.jitter * rng.standard_normal(m))
        intensity = np.maximum(intensity, 1e-3)
        npe = led.photoelectrons * intensity[:, None]
        stat = 1.0 + rng.standard_normal((m, LED_CHANNELS.size)) / np.sqrt(npe)
        out = np.zeros((m, ch.N_CHANNELS), dtype=np.float32)
        out[:, LED_CHANNELS] = led.amplitude_adc * self.gev_per_count[LED_CHANNELS] * intensity[:, None] * stat
        return out

    def fire(
        self,
        spill_id: int,
        spill_length_s: float,
        t_unix: float,
        digitise: Callable[[np.ndarray, np.ndarray], np.ndarray],
    ) -> LedEvents:
        """The LED events of the gap after spill ``spill_id``: ``digitise(light, times_ns)`` turns the light
        into waveforms (the digitiser with the gains at ``t_unix``)."""
        times = self.times_ns(spill_length_s)
        wf = digitise(self.light(spill_id, t_unix), times)
        return LedEvents(np.arange(times.size, dtype=np.uint32), times, wf)
