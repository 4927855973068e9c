"""The LED gain-monitoring view: every calorimeter cell's LED amplitude relative to the run's reference
against time (one point per spill), the alarm band of ``monitor.led_alarm_pct``, the cells beyond it in red
and the chosen cell highlighted (model state: :class:`online.monitor.led.LedMonitor`)."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PyQt5 import QtWidgets

from detector import channels as ch

from .. import model as M
from .base import LEVEL_COLOURS, ChannelPlot, register

_GREY = (150, 160, 170, 90)
_RED = "#ff5252"
_CHOSEN = "#ffd740"


@register("led", "LED gain monitoring", "bottom", 75)
class LedView(ChannelPlot):
    """LED amplitude / reference of every calorimeter cell against time (s since the first LED spill)."""

    def __init__(self, channel: str = "ECAL1-2-2", parent: QtWidgets.QWidget | None = None) -> None:
        names = [c.name for c in ch.CHANNELS[: ch.N_CALO]]
        super().__init__(channel, names, "LED data", "since the first LED spill (s)", "LED / ref. - 1 (%)", parent)
        self.curves = [self.plot.plot([], [], pen=pg.mkPen(_GREY, width=1)) for _ in range(ch.N_CALO)]
        self.chosen_curve = self.plot.plot([], [], pen=pg.mkPen(_CHOSEN, width=2.5), symbol="o", symbolSize=5)
        self.band = [pg.InfiniteLine(angle=0, pen=pg.mkPen(_RED, width=1, style=2)) for _ in range(2)]
        for line in self.band:
            self.plot.addItem(line)

    def refresh(self, m: M.MonitorModel, now: float) -> None:
        v = (m.version.get("led", 0), m.version.get("alarms", 0))
        if v == self._version:
            return
        self._version = v
        led = m.led
        pct = led.alarm_pct
        for line, level_pct in zip(self.band, (-pct, pct)):
            line.setValue(level_pct)
        rel = 100.0 * (led.relative() - 1.0)
        t = np.asarray(led.unix, np.float64)
        t = t - t[0] if t.size else t
        bad = set(led.alarming().tolist())
        for cid, curve in enumerate(self.curves):
            y = rel[:, cid] if rel.size else np.zeros(0)
            ok = np.isfinite(y)
            curve.setData(t[ok], y[ok])
            curve.setPen(pg.mkPen(_RED if cid in bad else _GREY, width=2 if cid in bad else 1))
        if self.channel < ch.N_CALO and rel.size:
            y = rel[:, self.channel]
            ok = np.isfinite(y)
            self.chosen_curve.setData(t[ok], y[ok])
        else:
            self.chosen_curve.setData([], [])
        level, text = m.alarms["led"].level, m.alarms["led"].text
        name = ch.CHANNELS[self.channel].name
        dev = led.deviation[self.channel] if self.channel < ch.N_CALO else np.nan
        self.info.setText(f"{name}: {dev:+.2f}% | {text}" if np.isfinite(dev) else f"{name} | {text}")
        self.info.setStyleSheet(f"color: {LEVEL_COLOURS.get(level, '#cccccc')}")
