"""Widgets of the control-room monitor: shared colours, formatting, the :class:`Tile` and the view
registry. Each view (modules beside this one) creates its Qt and pyqtgraph items ONCE and updates
them in place (``setData`` / ``setImage`` / ``setText``) from :class:`~online.monitor.model.MonitorModel`
in ``refresh(model, now)``, and only when the model section it shows changed (``model.version``). Views
are touched from the GUI thread only (the window's repaint timer), never from a worker thread
(pyqtgraph #1398); nothing is re-created per update (pyqtgraph #2348).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyqtgraph as pg
from PyQt5 import QtCore, QtGui, QtWidgets

from detector.monitoring import DAQState

from .. import model as M

# ------------------------------------------------------------------------------------------------
# colours (dark control-room theme)
BG = "#15181c"
PANEL = "#22272e"
NEUTRAL = "#3a4049"
FG = "#f0f0f0"
LEVEL_COLOURS = {M.NONE: "#4a5059", M.OK: "#2e7d32", M.WARN: "#ef6c00", M.ALARM: "#c62828"}
_S = DAQState
STATE_COLOURS = {
    _S.IDLE.value: "#546e7a",
    _S.SPILL.value: "#1565c0",
    _S.END_OF_SPILL.value: "#00838f",
    _S.READOUT.value: "#6a1b9a",
    _S.RECORDED.value: "#2e7d32",
    _S.ERROR.value: "#c62828",
    "UNKNOWN": "#4a5059",
}
HV_COLOURS = {
    M.HV_OK: None,
    M.HV_OFF: "#5f6670",
    M.HV_RAMPING: "#f9a825",
    M.HV_DEVIATION: "#ef6c00",
    M.HV_FAULTED: "#c62828",
    M.HV_TRIPPED: "#c62828",
}
TRIGGER_COLOURS = {
    "physics": "#ff5252",
    "beam": "#69f0ae",
    "random": "#b0bec5",
    "dimuon": "#e040fb",
    "calibration": "#ffd740",
}
EXTRA_COLOURS = ("#40c4ff", "#ffab40", "#eeff41", "#ff80ab", "#a7ffeb")
LOG_COLOURS = {
    logging.DEBUG: "#9e9e9e",
    logging.INFO: "#e0e0e0",
    logging.WARNING: "#ffb74d",
    logging.ERROR: "#ff5252",
    logging.CRITICAL: "#ff1744",
}
CMAP = "viridis"


def fmt_count(x: float | None) -> str:
    """Counts for reading across the room: ``12 345`` below 1e5, else ``4.30e10``."""
    if x is None or not np.isfinite(x):
        return "—"
    x = float(x)
    if abs(x) < 1e5:
        return f"{x:,.0f}".replace(",", "\u2009")
    e = int(math.floor(math.log10(abs(x))))
    return f"{x / 10**e:.2f}e{e}"


def fmt_compact(v: float) -> str:
    """Short numbers for map cells: 0.52, 37, 412, 11.2k, 3.05M."""
    if not np.isfinite(v):
        return "—"
    a = abs(v)
    if a < 10:
        return f"{v:.2g}"
    if a < 1000:
        return f"{v:.0f}"
    for suffix, d in (("k", 1e3), ("M", 1e6), ("G", 1e9), ("T", 1e12)):
        if a < d * 999.5:
            return f"{v / d:.3g}{suffix}"
    return f"{v:.2e}"


_NICE = (1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0)


def nice_ceil(v: float) -> float:
    """Smallest 'round' number (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8 x 10^n) >= v; 1 for v <= 0.
    Scales and colour bars use it so that they stay put from one spill to the next: steadier to read and
    no axis regeneration per update."""
    if not (v > 0 and np.isfinite(v)):
        return 1.0
    e = math.floor(math.log10(v))
    f = v / 10.0**e
    for m in _NICE:
        if f <= m * (1 + 1e-9):
            return m * 10.0**e
    return 10.0 ** (e + 1)


def set_bar_levels(bar: Any, hi: float) -> None:
    """Levels (0, hi) of a colour bar with explicit compact ticks at quarters (250k, 2.5M: the bar's
    45 px axis drops labels like 2500000)."""
    if bar.levels() == (0.0, hi):
        return
    bar.setLevels((0.0, hi))
    bar.axis.setTicks([[(f * hi, fmt_compact(f * hi)) for f in (0.0, 0.25, 0.5, 0.75, 1.0)]])


def _bar(cmap: str = CMAP, label: str | None = None) -> pg.ColorBarItem:
    """A non-interactive colour bar with room for labels like '2.25M'."""
    cb = pg.ColorBarItem(values=(0, 1), colorMap=cmap, interactive=False, width=14, label=label, colorMapMenu=False)
    cb.axis.setStyle(tickFont=_font(8), tickTextOffset=3, tickLength=4)
    cb.axis.setWidth(52)
    return cb


class StableRange:
    """Sets a ViewBox range only when it changes (pyqtgraph regenerates and repaints the axes on every
    range change)."""

    def __init__(self, plot: Any) -> None:
        self.vb = plot.getViewBox()
        self.vb.disableAutoRange()
        self.x: tuple[float, float] | None = None
        self.y: tuple[float, float] | None = None

    def set(self, x: tuple[float, float] | None = None, y: tuple[float, float] | None = None) -> None:
        kw = {}
        if x is not None and x != self.x and np.all(np.isfinite(x)) and x[1] > x[0]:
            self.x = x
            kw["xRange"] = x
        if y is not None and y != self.y and np.all(np.isfinite(y)) and y[1] > y[0]:
            self.y = y
            kw["yRange"] = y
        if kw:
            self.vb.setRange(padding=0, **kw)


def fmt_age(s: float | None) -> str:
    if s is None or not np.isfinite(s):
        return "—"
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def fmt_eps(e: float) -> str:
    return "—" if not np.isfinite(e) else f"{e:.2e}"


def _font(pt: float, bold: bool = False) -> QtGui.QFont:
    f = QtGui.QFont()
    f.setPointSizeF(pt)
    f.setBold(bold)
    return f


def _elastic(label: QtWidgets.QLabel, wrap: bool = True) -> QtWidgets.QLabel:
    """A label whose (long, changing) text never widens the window: it wraps instead."""
    label.setWordWrap(wrap)
    label.setSizePolicy(QtWidgets.QSizePolicy.Ignored, QtWidgets.QSizePolicy.Preferred)
    label.setMinimumWidth(20)
    return label


def apply_dark_theme(app: QtWidgets.QApplication) -> None:
    """Fusion style with a dark palette; pyqtgraph in the same colours."""
    app.setStyle("Fusion")
    pal = QtGui.QPalette()
    for role, colour in (
        (QtGui.QPalette.Window, BG),
        (QtGui.QPalette.WindowText, FG),
        (QtGui.QPalette.Base, "#101316"),
        (QtGui.QPalette.AlternateBase, PANEL),
        (QtGui.QPalette.Text, FG),
        (QtGui.QPalette.Button, PANEL),
        (QtGui.QPalette.ButtonText, FG),
        (QtGui.QPalette.Highlight, "#1e88e5"),
        (QtGui.QPalette.HighlightedText, "#ffffff"),
        (QtGui.QPalette.ToolTipBase, PANEL),
        (QtGui.QPalette.ToolTipText, FG),
    ):
        pal.setColor(role, QtGui.QColor(colour))
    app.setPalette(pal)
    pg.setConfigOptions(background=BG, foreground="#d0d0d0", antialias=False, imageAxisOrder="col-major")


# ------------------------------------------------------------------------------------------------
class Tile(QtWidgets.QFrame):
    """A caption and a big value on a coloured background (readable from across the room)."""

    def __init__(
        self, caption: str, value_pt: float = 22.0, detail: bool = False, parent: QtWidgets.QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self.setObjectName("tile")
        lay = QtWidgets.QVBoxLayout(self)
        lay.setContentsMargins(8, 3, 8, 4)
        lay.setSpacing(0)
        self.caption = QtWidgets.QLabel(caption)
        self.caption.setFont(_font(9.5, True))
        self.value = QtWidgets.QLabel("—")
        self.value.setFont(_font(value_pt, True))
        self.value.setAlignment(QtCore.Qt.AlignmentFlag.AlignCenter)
        lay.addWidget(self.caption)
        lay.addWidget(self.value, 1)
        self.detail: QtWidgets.QLabel | None = None
        if detail:
            self.detail = _elastic(QtWidgets.QLabel(""))
            self.detail.setFont(_font(9.5))
            self.detail.setAlignment(QtCore.Qt.AlignmentFlag.AlignCenter)
            lay.addWidget(self.detail)
        self.bg = ""
        self.set_colour(NEUTRAL)

    def set_value(self, text: str) -> None:
        if self.value.text() != text:
            self.value.setText(text)

    def set_detail(self, text: str) -> None:
        if self.detail is not None and self.detail.text() != text:
            self.detail.setText(text)
            self.detail.setToolTip(text)

    def set_colour(self, bg: str, fg: str = "#ffffff") -> None:
        if bg == self.bg:
            return
        self.bg = bg
        self.setStyleSheet(
            f"QFrame#tile {{ background-color: {bg}; border-radius: 6px; }}"
            f"QLabel {{ color: {fg}; background: transparent; }}"
        )


# ------------------------------------------------------------------------------------------------
# the view registry: a view registers itself, with its dock, in one place (its class decorator)
AREAS = ("central", "top", "left", "right", "bottom")


@dataclass(frozen=True)
class ViewSpec:
    """How the window shows a view: ``key`` names its dock and the window attribute holding the widget
    (``attr``, default ``key``); ``area`` one of :data:`AREAS`; ``order`` the creation order;
    ``make(settings)`` builds the widget (default: the class without arguments)."""

    key: str
    title: str
    cls: type
    area: str = "right"
    order: int = 100
    attr: str = ""
    make: Callable[[M.MonitorSettings], Any] | None = None

    def build(self, settings: M.MonitorSettings) -> Any:
        return self.make(settings) if self.make is not None else self.cls()


REGISTRY: dict[str, ViewSpec] = {}


def register(
    key: str,
    title: str,
    area: str = "right",
    order: int = 100,
    attr: str = "",
    make: Callable[[M.MonitorSettings], Any] | None = None,
) -> Callable[[type], type]:
    """Class decorator: show this view in the monitor window (a dock in ``area``, or the central widget)."""
    if area not in AREAS:
        raise ValueError(f"area {area!r} is not one of {AREAS}")

    def deco(cls: type) -> type:
        if key in REGISTRY:
            raise ValueError(f"a view is already registered as {key!r}")
        REGISTRY[key] = ViewSpec(key, title, cls, area, order, attr or key, make)
        return cls

    return deco


def registered() -> list[ViewSpec]:
    """Every registered view, in creation order."""
    return sorted(REGISTRY.values(), key=lambda s: (s.order, s.key))


class TopicView(QtWidgets.QWidget):
    """Base of a view of one topic of the contract: :meth:`draw` runs when ``model.version[topic]``
    changed; the data are ``model.latest[topic]`` (last message) and ``model.sums[topic]`` (summed arrays
    of an accumulating topic), unless the model has dedicated state for the topic."""

    topic = ""

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self._version = -1

    def refresh(self, m: M.MonitorModel, now: float) -> None:
        v = m.version.get(self.topic, 0)
        if v == self._version:
            return
        self._version = v
        self.draw(m)

    def draw(self, m: M.MonitorModel) -> None:
        raise NotImplementedError


class ChannelPlot(QtWidgets.QWidget):
    """Base of a view of one channel at a time: a bar with the channel combo box (``names``, the channel id
    is the index) and an elastic info label, over one plot (``xlabel``, ``ylabel``); choosing a channel (in
    the box, or :meth:`set_channel` from a map click) sets ``channel`` and forces a redraw."""

    def __init__(
        self,
        channel: str,
        names: list[str],
        what: str,
        xlabel: str,
        ylabel: str,
        parent: QtWidgets.QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        lay = QtWidgets.QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        bar = QtWidgets.QHBoxLayout()
        self.combo = QtWidgets.QComboBox()
        self.combo.addItems(names)
        self.combo.setFont(_font(11, True))
        self.combo.setMaxVisibleItems(25)
        self.info = _elastic(QtWidgets.QLabel(f"no {what} yet"))
        self.info.setFont(_font(10))
        bar.addWidget(QtWidgets.QLabel("Channel:"))
        bar.addWidget(self.combo)
        bar.addWidget(self.info, 1)
        lay.addLayout(bar)
        self.plot = pg.PlotWidget()
        self.plot.setLabel("bottom", xlabel)
        self.plot.setLabel("left", ylabel)
        self.plot.showGrid(x=True, y=True, alpha=0.25)
        lay.addWidget(self.plot, 1)
        self.channel = names.index(channel)
        self.combo.setCurrentIndex(self.channel)
        self.combo.currentIndexChanged.connect(self._combo_changed)
        self._version: Any = None

    def _combo_changed(self, index: int) -> None:
        self.channel = int(index)
        self._version = None

    def set_channel(self, cid: int) -> None:
        if 0 <= cid < self.combo.count() and cid != self.combo.currentIndex():
            self.combo.setCurrentIndex(int(cid))  # emits -> _combo_changed
        self.channel = int(cid)
        self._version = None
