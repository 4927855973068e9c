"""Widgets of the control-room monitor. Each view creates its Qt and pyqtgraph items ONCE and updates
them in place (``setData`` / ``setImage`` / ``setText``) from :class:`~online.monitor.model.MonitorModel`
in ``refresh(model, now)``, and only when the model section it shows changed (``model.version``). Views
are touched from the GUI thread only (the window's repaint timer), never from a worker thread
(pyqtgraph #1398); nothing is re-created per update (pyqtgraph #2348).
"""
from __future__ import annotations

import html
import logging
import math
import time
from typing import Any

import numpy as np
import pyqtgraph as pg
from PyQt5 import QtCore, QtGui, QtWidgets

from detector import channels as ch

from . import model as M

# ------------------------------------------------------------------------------------------------
# colours (dark control-room theme)
BG = "#15181c"
PANEL = "#22272e"
NEUTRAL = "#3a4049"
FG = "#f0f0f0"
LEVEL_COLOURS = {M.NONE: "#4a5059", M.OK: "#2e7d32", M.WARN: "#ef6c00", M.ALARM: "#c62828"}
STATE_COLOURS = {"IDLE": "#546e7a", "SPILL": "#1565c0", "END_OF_SPILL": "#00838f", "READOUT": "#6a1b9a",
                 "RECORDED": "#2e7d32", "ERROR": "#c62828", "UNKNOWN": "#4a5059"}
HV_COLOURS = {M.HV_OK: None, M.HV_OFF: "#5f6670", M.HV_RAMPING: "#f9a825", M.HV_DEVIATION: "#ef6c00",
              M.HV_FAULTED: "#c62828", M.HV_TRIPPED: "#c62828"}
TRIGGER_COLOURS = {"physics": "#ff5252", "beam": "#69f0ae", "random": "#b0bec5", "dimuon": "#e040fb",
                   "calibration": "#ffd740"}
EXTRA_COLOURS = ("#40c4ff", "#ffab40", "#eeff41", "#ff80ab", "#a7ffeb")
LOG_COLOURS = {logging.DEBUG: "#9e9e9e", logging.INFO: "#e0e0e0", logging.WARNING: "#ffb74d",
               logging.ERROR: "#ff5252", logging.CRITICAL: "#ff1744"}
CMAP = "viridis"


def fmt_count(x: float | None) -> str:
    """Counts for reading across the room: ``12 345`` below 1e5, else ``4.30e10``."""
    if x is None or not np.isfinite(x):
        return "—"
    x = float(x)
    if abs(x) < 1e5:
        return f"{x:,.0f}".replace(",", "\u2009")
    e = int(math.floor(math.log10(abs(x))))
    return f"{x / 10 ** e:.2f}e{e}"


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
    f = v / 10.0 ** e
    for m in _NICE:
        if f <= m * (1 + 1e-9):
            return m * 10.0 ** e
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
    cb = pg.ColorBarItem(values=(0, 1), colorMap=cmap, interactive=False, width=14, label=label,
                         colorMapMenu=False)
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
    for role, colour in ((QtGui.QPalette.Window, BG), (QtGui.QPalette.WindowText, FG),
                         (QtGui.QPalette.Base, "#101316"), (QtGui.QPalette.AlternateBase, PANEL),
                         (QtGui.QPalette.Text, FG), (QtGui.QPalette.Button, PANEL),
                         (QtGui.QPalette.ButtonText, FG), (QtGui.QPalette.Highlight, "#1e88e5"),
                         (QtGui.QPalette.HighlightedText, "#ffffff"), (QtGui.QPalette.ToolTipBase, PANEL),
                         (QtGui.QPalette.ToolTipText, FG)):
        pal.setColor(role, QtGui.QColor(colour))
    app.setPalette(pal)
    pg.setConfigOptions(background=BG, foreground="#d0d0d0", antialias=False, imageAxisOrder="col-major")


# ------------------------------------------------------------------------------------------------
class Tile(QtWidgets.QFrame):
    """A caption and a big value on a coloured background (readable from across the room)."""

    def __init__(self, caption: str, value_pt: float = 22.0, detail: bool = False,
                 parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("tile")
        lay = QtWidgets.QVBoxLayout(self)
        lay.setContentsMargins(8, 3, 8, 4)
        lay.setSpacing(0)
        self.caption = QtWidgets.QLabel(caption)
        self.caption.setFont(_font(9.5, True))
        self.value = QtWidgets.QLabel("—")
        self.value.setFont(_font(value_pt, True))
        self.value.setAlignment(QtCore.Qt.AlignCenter)
        lay.addWidget(self.caption)
        lay.addWidget(self.value, 1)
        self.detail: QtWidgets.QLabel | None = None
        if detail:
            self.detail = _elastic(QtWidgets.QLabel(""))
            self.detail.setFont(_font(9.5))
            self.detail.setAlignment(QtCore.Qt.AlignCenter)
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
        self.setStyleSheet(f"QFrame#tile {{ background-color: {bg}; border-radius: 6px; }}"
                           f"QLabel {{ color: {fg}; background: transparent; }}")


class StatusPanel(QtWidgets.QWidget):
    """Run, spill, DAQ state, time since the last spill, EOT, missed and malformed messages."""

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        grid = QtWidgets.QGridLayout(self)
        grid.setContentsMargins(4, 4, 4, 4)
        grid.setSpacing(6)
        self.tiles: dict[str, Tile] = {}
        spec = [("run", "RUN", 26), ("spill", "SPILL", 26), ("state", "DAQ STATE", 22),
                ("since", "SINCE LAST SPILL", 22), ("eot_spill", "EOT LAST SPILL", 20),
                ("eot_total", "EOT RUN TOTAL", 20), ("missed", "MISSED MSGS", 22), ("malformed", "MALFORMED", 22)]
        for i, (key, cap, pt) in enumerate(spec):
            t = Tile(cap, pt)
            grid.addWidget(t, 0, i)
            grid.setColumnStretch(i, 2 if key in ("state", "eot_total", "since") else 1)
            self.tiles[key] = t
        self.info = QtWidgets.QLabel("")
        self.info.setFont(_font(10))
        self.info.setWordWrap(True)
        self.info.setSizePolicy(QtWidgets.QSizePolicy.Ignored, QtWidgets.QSizePolicy.Preferred)
        self.info.setTextInteractionFlags(QtCore.Qt.TextSelectableByMouse)
        grid.addWidget(self.info, 1, 0, 1, len(spec))

    def refresh(self, m: M.MonitorModel, now: float) -> None:
        t = self.tiles
        t["run"].set_value("—" if m.run is None else str(m.run))
        t["spill"].set_value("—" if m.spill is None else str(m.spill))
        t["state"].set_value(m.state.replace("_", " "))
        t["state"].set_colour(STATE_COLOURS.get(m.state, NEUTRAL))
        since = m.since_last_spill(now)
        t["since"].set_value(fmt_age(since))
        late = since is not None and since > max(2.0 * m.s.supercycle_s, m.s.stall_s) and m.mode == "live"
        t["since"].set_colour(LEVEL_COLOURS[M.WARN] if late else NEUTRAL)
        t["eot_spill"].set_value(fmt_count(m.history.last("eot")) if len(m.history) else "—")
        t["eot_total"].set_value(fmt_count(m.eot_total) if len(m.history) or m.eot_total else "—")
        t["missed"].set_value(str(m.missed_total))
        t["missed"].set_colour(LEVEL_COLOURS[m.alarms["missed"].level] if m.missed_total else NEUTRAL)
        t["malformed"].set_value(str(m.malformed_total))
        t["malformed"].set_colour(LEVEL_COLOURS[M.WARN] if m.malformed_total else NEUTRAL)
        link = m.link
        sup = sum(link.superseded.values())
        rx_age = None if link.last_rx is None else now - link.last_rx
        src = f"{m.mode}: {m.source}" if m.source else m.mode
        text = (f"{src}   |   received {link.received}, last {fmt_age(rx_age)} ago   |   missed on link "
                f"{link.missed}, dropped locally {link.dropped_total}, superseded (latest-wins) {sup}, "
                f"publisher restarts {link.restarts}   |   DAQ: {m.spills_done} spills, "
                f"{fmt_count(m.events_recorded)} events recorded, {m.lost_spills} spills lost, "
                f"{m.publisher_dropped} messages dropped by the DAQ publisher")
        if m.state_message:
            text += f"   |   {m.state_message}"
        if self.info.text() != text:
            self.info.setText(text)


class AlarmPanel(QtWidgets.QWidget):
    """One coloured tile per alarm: DAQ, BEAM, HV, MISSED, DATA."""

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        lay = QtWidgets.QHBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        lay.setSpacing(6)
        self.tiles: dict[str, Tile] = {}
        for key in M.ALARM_KEYS:
            t = Tile(M.ALARM_TITLES[key], 18, detail=True)
            t.setMinimumWidth(120)
            lay.addWidget(t, 1)
            self.tiles[key] = t
        self._version = -1

    def refresh(self, m: M.MonitorModel, now: float) -> None:
        if m.version["alarms"] == self._version:
            return
        self._version = m.version["alarms"]
        for key, a in m.alarms.items():
            t = self.tiles[key]
            t.set_value(M.LEVEL_NAMES[a.level] if a.level != M.NONE else "—")
            t.set_detail(a.text)
            t.set_colour(LEVEL_COLOURS[a.level])

    def colour(self, key: str) -> str:
        return self.tiles[key].bg


class LogPane(QtWidgets.QPlainTextEdit):
    """Alarm transitions, DAQ ``log`` messages and monitor notes, newest at the bottom, bounded."""

    def __init__(self, max_lines: int = 2000, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.setReadOnly(True)
        self.setMaximumBlockCount(max_lines)
        self.setFont(QtGui.QFontDatabase.systemFont(QtGui.QFontDatabase.FixedFont))
        self.document().setDefaultStyleSheet("")
        self._last_id = 0

    def refresh(self, m: M.MonitorModel, now: float) -> None:
        new = [e for e in m.log if e.id > self._last_id]
        if not new:
            return
        self._last_id = new[-1].id
        for e in new[-self.maximumBlockCount():]:
            ts = time.strftime("%H:%M:%S", time.localtime(e.time))
            col = LOG_COLOURS.get(e.level, FG)
            lvl = logging.getLevelName(e.level)
            self.appendHtml(f'<span style="color:{col}">{ts} {lvl:<7} [{e.source}] {html.escape(e.text)}</span>')
        sb = self.verticalScrollBar()
        sb.setValue(sb.maximum())

    def lines(self) -> list[str]:
        return self.toPlainText().splitlines()


# ------------------------------------------------------------------------------------------------
def _positive(y: np.ndarray) -> np.ndarray:
    """NaN where y <= 0 (log axes)."""
    y = np.array(y, dtype=np.float64)
    y[~(y > 0)] = np.nan
    return y


class RatesView(pg.GraphicsLayoutWidget):
    """Per-spill history: S0, S1, V0; raw (dashed) and accepted (solid) count of every trigger type;
    EOT per spill and accumulated EOT. x axis: spill number."""

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.p_counters = self.addPlot(row=0, col=0, colspan=2)
        self.p_triggers = self.addPlot(row=1, col=0, colspan=2)
        self.p_eot = self.addPlot(row=2, col=0, title="EOT per spill")
        self.p_eot_total = self.addPlot(row=2, col=1, title="Accumulated EOT")
        self.p_triggers.setLogMode(y=True)
        for p in (self.p_counters, self.p_triggers, self.p_eot, self.p_eot_total):
            p.showGrid(x=True, y=True, alpha=0.25)
            p.setLabel("bottom", "spill")
            p.hideButtons()
        self.p_counters.setLabel("left", "counts per spill")
        self.p_triggers.setLabel("left", "accepted ─  raw ┄")
        self.curves: dict[str, pg.PlotDataItem] = {}
        self._counter_colours = {"S0": "#ffffff", "S1": "#ffd740", "V0": "#40c4ff"}
        for name, col in self._counter_colours.items():
            self.curves[name] = self.p_counters.plot([], [], pen=pg.mkPen(col, width=2), connect="finite")
        self.p_counters.setTitle("Beam counters: " + "  ".join(
            f"<span style='color:{c}'>{n}</span>" for n, c in self._counter_colours.items()))
        self._trigger_colours: dict[str, str] = {}
        self._set_trigger_title()
        self.curves["eot"] = self.p_eot.plot([], [], pen=pg.mkPen("#69f0ae", width=2), connect="finite")
        self.curves["eot_total"] = self.p_eot_total.plot([], [], pen=pg.mkPen("#ffab40", width=2.5),
                                                         connect="finite")
        self._symbols = False
        self.ranges = {k: StableRange(p) for k, p in (("counters", self.p_counters), ("triggers", self.p_triggers),
                                                      ("eot", self.p_eot), ("eot_total", self.p_eot_total))}
        self._version = -1

    def _set_symbols(self, on: bool) -> None:
        """Dots while a run has fewer than 3 spills (a single point draws no line); lines only after,
        which are cheaper to paint."""
        if on == self._symbols:
            return
        self._symbols = on
        for c in self.curves.values():
            if on:
                col = c.opts["pen"].color() if hasattr(c.opts["pen"], "color") else pg.mkColor("w")
                c.setSymbol("o")
                c.setSymbolSize(6)
                c.setSymbolPen(None)
                c.setSymbolBrush(col)
            else:
                c.setSymbol(None)

    def _set_trigger_title(self) -> None:
        names = "  ".join(f"<span style='color:{c}'>{html.escape(n)}</span>" for n, c in self._trigger_colours.items())
        self.p_triggers.setTitle(f"Triggers {names}")

    def _trigger_curves(self, name: str) -> tuple[pg.PlotDataItem, pg.PlotDataItem]:
        key = f"trig:{name}:acc"
        if key not in self.curves:       # one pair per trigger type, created once
            n_known = sum(1 for k in self.curves if k.endswith(":acc"))
            col = TRIGGER_COLOURS.get(name, EXTRA_COLOURS[n_known % len(EXTRA_COLOURS)])
            self._trigger_colours[name] = col
            self._set_trigger_title()
            self.curves[key] = self.p_triggers.plot([], [], pen=pg.mkPen(col, width=2), connect="finite")
            self.curves[f"trig:{name}:raw"] = self.p_triggers.plot(
                [], [], pen=pg.mkPen(col, width=1.5, style=QtCore.Qt.DashLine), connect="finite")
            if self._symbols:
                self._symbols = False
                self._set_symbols(True)
        return self.curves[key], self.curves[f"trig:{name}:raw"]

    def refresh(self, m: M.MonitorModel, now: float) -> None:
        if m.version["rates"] == self._version:
            return
        self._version = m.version["rates"]
        h = m.history
        x = h.column("spill").copy()
        if x.size and not np.all(np.isfinite(x)):
            x = np.arange(x.size, dtype=np.float64)
        self._set_symbols(x.size < 3)
        def put(curve: pg.PlotDataItem, y: np.ndarray) -> None:
            if np.isfinite(y).any():
                curve.setData(x, y)
            else:                       # nothing to draw (all NaN): an empty curve, not NaN bounds
                curve.setData([], [])
        for name in ("S0", "S1", "V0"):
            put(self.curves[name], np.array(h.column(name)))
        for name in m.trigger_names:
            acc, raw = self._trigger_curves(name)
            put(acc, _positive(h.column(f"trig:{name}:acc")))
            put(raw, _positive(h.column(f"trig:{name}:raw")))
        put(self.curves["eot"], np.array(h.column("eot")))
        put(self.curves["eot_total"], np.array(h.column("eot_total")))
        if x.size:
            # x from a multiple of 10 to a round span; y from 0 (a rate drop reads as a proportion)
            x_lo = math.floor(x[0] / 10.0) * 10.0
            xr = (x_lo, x_lo + nice_ceil(x[-1] - x_lo + 1.0))
            top = lambda *cols: nice_ceil(1.05 * max([np.nanmax(c) if np.any(np.isfinite(c)) else 0.0  # noqa: E731
                                                      for c in cols] + [0.0]))
            # the same x range everywhere (no setXLink: it aligns linked views by pixel, and the plots'
            # left axes differ in width)
            self.ranges["counters"].set(xr, (0.0, top(*(h.column(n) for n in ("S0", "S1", "V0")))))
            self.ranges["eot"].set(xr, (0.0, top(h.column("eot"))))
            self.ranges["eot_total"].set(xr, (0.0, top(h.column("eot_total"))))
            self.ranges["triggers"].set(xr)
            tv = np.concatenate([h.column(f"trig:{n}:{k}") for n in m.trigger_names for k in ("raw", "acc")]
                                + [np.empty(0)])
            tv = tv[np.isfinite(tv) & (tv > 0)]
            if tv.size:    # log axis: whole decades, in log10 units
                decades = (math.floor(math.log10(tv.min())), math.ceil(math.log10(tv.max()) + 1e-9))
                self.ranges["triggers"].set(xr, decades)


# ------------------------------------------------------------------------------------------------
class CellMap:
    """One calorimeter map: a PlotItem with an ImageItem, one text label per cell, a selection frame."""

    def __init__(self, plot: pg.PlotItem, nx: int, ny: int, labels: list[list[str]], ids: np.ndarray) -> None:
        self.plot, self.nx, self.ny, self.ids = plot, nx, ny, ids      # ids[x, y] -> channel id
        self.names = labels
        vb = plot.getViewBox()
        vb.setMouseEnabled(False, False)
        vb.setMenuEnabled(False)
        vb.setAspectLocked(True)
        vb.setRange(xRange=(0, nx), yRange=(0, ny), padding=0.02)
        plot.hideButtons()
        plot.hideAxis("left")          # the cell labels carry x-y; an axis costs a repaint per update
        plot.hideAxis("bottom")
        self.image = pg.ImageItem(np.zeros((nx, ny)))
        plot.addItem(self.image)
        # QGraphicsSimpleTextItem, not pg.TextItem (a QGraphicsTextItem with a document layout, ~5x the
        # cost per setText): fixed pixel size, centred on the cell, upright in the y-up view
        self.texts: list[list[QtWidgets.QGraphicsSimpleTextItem]] = []
        self._text_cache: dict[tuple[int, int], tuple[str, str]] = {}
        font = _font(7.5)
        for x in range(nx):
            col = []
            for y in range(ny):
                t = QtWidgets.QGraphicsSimpleTextItem("")
                t.setFont(font)
                t.setBrush(QtGui.QBrush(QtGui.QColor("#ffffff")))
                t.setFlag(QtWidgets.QGraphicsItem.ItemIgnoresTransformations, True)
                t.setZValue(5)
                plot.addItem(t, ignoreBounds=True)
                t.setPos(x + 0.5, y + 0.5)
                col.append(t)
            self.texts.append(col)
        self.frame = QtWidgets.QGraphicsRectItem(0, 0, 1, 1)
        self.frame.setPen(pg.mkPen("#ff1744", width=3))
        self.frame.setZValue(10)
        self.frame.setVisible(False)
        plot.addItem(self.frame)

    def set_values(self, values: np.ndarray, lo: float, hi: float) -> None:
        """values[x, y]; labels show the cell name and the value."""
        self.image.setImage(np.asarray(values, dtype=np.float64), autoLevels=False, levels=(lo, hi))
        span = hi - lo if hi > lo else 1.0
        for x in range(self.nx):
            for y in range(self.ny):
                v = float(values[x, y])
                text = f"{self.names[x][y]}\n{fmt_compact(v)}"
                colour = "#000000" if (v - lo) / span > 0.62 else "#ffffff"
                old = self._text_cache.get((x, y))
                if old != (text, colour):
                    self._text_cache[(x, y)] = (text, colour)
                    t = self.texts[x][y]
                    if old is None or old[1] != colour:
                        t.setBrush(QtGui.QBrush(QtGui.QColor(colour)))
                    if old is None or old[0] != text:
                        t.setText(text)
                        br = t.boundingRect()
                        t.setTransform(QtGui.QTransform.fromTranslate(-br.width() / 2, -br.height() / 2))

    def contains_scene(self, pos: QtCore.QPointF) -> tuple[int, int] | None:
        vb = self.plot.getViewBox()
        if not vb.sceneBoundingRect().contains(pos):
            return None
        p = vb.mapSceneToView(pos)
        x, y = int(math.floor(p.x())), int(math.floor(p.y()))
        if 0 <= x < self.nx and 0 <= y < self.ny:
            return x, y
        return None

    def select(self, xy: tuple[int, int] | None) -> None:
        if xy is None:
            self.frame.setVisible(False)
        else:
            self.frame.setRect(QtCore.QRectF(xy[0], xy[1], 1, 1))
            self.frame.setVisible(True)

    def scene_pos_of(self, x: int, y: int) -> QtCore.QPointF:
        return self.plot.getViewBox().mapViewToScene(QtCore.QPointF(x + 0.5, y + 0.5))


class CaloMapsView(QtWidgets.QWidget):
    """ECAL 6x6 (PS and main) and the four HCAL 3x3 modules: accumulated energy or occupancy per cell.
    Clicking a cell emits ``channelSelected(channel_id)``."""

    channelSelected = QtCore.pyqtSignal(int)
    MODES = ("energy", "occupancy")
    TITLES = {"ps": "ECAL preshower (PS)", "main": "ECAL main", **{f"hcal{m}": f"HCAL module {m}" for m in range(4)}}

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        lay = QtWidgets.QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        bar = QtWidgets.QHBoxLayout()
        self.mode_box = QtWidgets.QComboBox()
        self.mode_box.addItems(["Energy (GeV, summed)", "Occupancy (hits)"])
        self.mode_box.setFont(_font(11))
        self.mode_box.currentIndexChanged.connect(self._mode_changed)
        self.info = _elastic(QtWidgets.QLabel(""), wrap=False)
        self.info.setFont(_font(11))
        bar.addWidget(QtWidgets.QLabel("Show:"))
        bar.addWidget(self.mode_box)
        bar.addSpacing(20)
        bar.addWidget(self.info, 1)
        lay.addLayout(bar)
        self.glw = pg.GraphicsLayoutWidget()
        lay.addWidget(self.glw, 1)
        self.maps: dict[str, CellMap] = {}
        self.bars: dict[str, pg.ColorBarItem] = {}
        top = self.glw.addLayout(row=0, col=0)
        for i, (key, k) in enumerate((("ps", 0), ("main", 1))):
            p = top.addPlot(row=0, col=2 * i, title=self.TITLES[key])
            names = [[f"{x}-{y}" for y in range(6)] for x in range(6)]
            ids = np.array([[ch.ecal_id(k, x, y) for y in range(6)] for x in range(6)])
            self.maps[key] = CellMap(p, 6, 6, names, ids)
            cb = _bar()
            cb.setImageItem(self.maps[key].image)
            top.addItem(cb, row=0, col=2 * i + 1)
            self.bars[key] = cb
        bottom = self.glw.addLayout(row=1, col=0)
        hcal_images = []
        for mod in range(4):
            p = bottom.addPlot(row=0, col=mod, title=self.TITLES[f"hcal{mod}"])
            names = [[ch.hcal_cell_name(x, y, mod) for y in range(3)] for x in range(3)]
            ids = np.array([[ch.hcal_id(x, y, mod) for y in range(3)] for x in range(3)])
            self.maps[f"hcal{mod}"] = CellMap(p, 3, 3, names, ids)
            hcal_images.append(self.maps[f"hcal{mod}"].image)
        cb = _bar()
        cb.setImageItem(hcal_images)
        bottom.addItem(cb, row=0, col=4)
        self.bars["hcal"] = cb
        self.glw.ci.layout.setRowStretchFactor(0, 3)
        self.glw.ci.layout.setRowStretchFactor(1, 2)
        self.glw.scene().sigMouseClicked.connect(self._clicked)
        self.mode = "energy"
        self._unit = ""
        self.selected: int | None = None
        self._version: tuple[int, str] | None = None

    def _mode_changed(self, index: int) -> None:
        self.mode = self.MODES[index]
        self._version = None

    def set_mode(self, mode: str) -> None:
        self.mode_box.setCurrentIndex(self.MODES.index(mode))

    def _clicked(self, ev: Any) -> None:
        for key, cm in self.maps.items():
            xy = cm.contains_scene(ev.scenePos())
            if xy is not None:
                self.select_channel(int(cm.ids[xy]))
                self.channelSelected.emit(int(cm.ids[xy]))
                ev.accept()
                return

    def select_channel(self, cid: int) -> None:
        self.selected = cid
        for cm in self.maps.values():
            hit = np.argwhere(cm.ids == cid)
            cm.select(tuple(int(v) for v in hit[0]) if hit.size else None)

    def image_of(self, key: str) -> np.ndarray:
        """The data shown by a map (x, y)."""
        return self.maps[key].image.image

    def refresh(self, m: M.MonitorModel, now: float) -> None:
        ver = (m.version["calo"], self.mode)
        if ver == self._version:
            return
        self._version = ver
        if self.mode == "energy":
            ecal, hcal, unit = m.ecal_energy, m.hcal_energy, "GeV"
        else:
            ecal, hcal, unit = m.ecal_occupancy, m.hcal_occupancy, "hits"
        for key, k in (("ps", 0), ("main", 1)):
            hi = nice_ceil(float(ecal[k].max()) if ecal[k].size else 0.0)
            self.maps[key].set_values(ecal[k], 0.0, hi)
            set_bar_levels(self.bars[key], hi)
        hi = nice_ceil(float(hcal.max()) if hcal.size else 0.0)
        for mod in range(4):
            self.maps[f"hcal{mod}"].set_values(hcal[mod].T, 0.0, hi)   # [y][x] -> [x][y]
        set_bar_levels(self.bars["hcal"], hi)
        if unit != self._unit:       # the unit goes in the titles: a colour-bar label overlaps its ticks
            self._unit = unit
            for key, cm in self.maps.items():
                cm.plot.setTitle(f"{self.TITLES[key]} [{unit}]")
        text = (f"{m.calo_spills} spills, {fmt_count(m.calo_events)} events"
                f"   (x → right, y ↑ up; click a cell for its waveforms)")
        if self.info.text() != text:
            self.info.setText(text)


# ------------------------------------------------------------------------------------------------
def _rect_path(x0: float, x1: float, y0: float, y1: float) -> tuple[list[float], list[float]]:
    return [x0, x1, x1, x0, x0], [y0, y0, y1, y1, y0]


class EcalHcalView(QtWidgets.QWidget):
    """E_ECAL vs E_HCAL accumulated from ``ecal_hcal`` increments, log10 colour, signal box drawn; a zoom
    on the low-E_HCAL region beside the full plane."""

    ZOOM_HCAL_GEV = 10.0

    def __init__(self, ecal_box: float = 50.0, hcal_box: float = 1.0,
                 parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.ecal_box, self.hcal_box = float(ecal_box), float(hcal_box)
        lay = QtWidgets.QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        self.info = _elastic(QtWidgets.QLabel("no data yet"))
        self.info.setFont(_font(11, True))
        lay.addWidget(self.info)
        self.glw = pg.GraphicsLayoutWidget()
        lay.addWidget(self.glw, 1)
        self.plot = self.glw.addPlot(row=0, col=0, title="E_ECAL vs E_HCAL (log10 entries)")
        self.zoom = self.glw.addPlot(row=1, col=0, title=f"zoom: E_HCAL &lt; {self.ZOOM_HCAL_GEV:g} GeV")
        self.images = {}
        for key, p in (("full", self.plot), ("zoom", self.zoom)):
            p.setLabel("bottom", "E_ECAL (GeV)")
            p.setLabel("left", "E_HCAL (GeV)")
            p.showGrid(x=True, y=True, alpha=0.2)
            img = pg.ImageItem()
            p.addItem(img)
            self.images[key] = img
            xs, ys = _rect_path(0.0, self.ecal_box, 0.0, self.hcal_box)
            box = pg.PlotDataItem(xs, ys, pen=pg.mkPen("#ff1744", width=3))
            box.setZValue(10)
            p.addItem(box)
        self.box_label = pg.TextItem("signal box", color="#ff5252", anchor=(0, 1))
        self.box_label.setFont(_font(9, True))
        self.box_label.setPos(1.0, self.hcal_box)
        self.zoom.addItem(self.box_label)
        self.plot.setRange(xRange=(0, 150), yRange=(0, 150), padding=0.01)
        self.zoom.setRange(xRange=(0, 150), yRange=(0, self.ZOOM_HCAL_GEV), padding=0.01)
        self.bar = pg.ColorBarItem(values=(0, 1), colorMap="inferno", interactive=False, width=14,
                                   label="log10(entries)", colorMapMenu=False)
        self.bar.setImageItem([self.images["full"], self.images["zoom"]])
        self.glw.addItem(self.bar, row=0, col=1, rowspan=2)
        self.glw.ci.layout.setRowStretchFactor(0, 3)
        self.glw.ci.layout.setRowStretchFactor(1, 2)
        self._version = -1
        self._edges: Any = None
        self.in_box = 0.0
        self.entries = 0.0

    def box_count(self, counts: np.ndarray, ex: tuple[float, float, int], hx: tuple[float, float, int]) -> float:
        """Entries in bins entirely inside the signal box (E_ECAL < ecal_box and E_HCAL < hcal_box)."""
        e_hi = ex[0] + (np.arange(ex[2]) + 1) * (ex[1] - ex[0]) / ex[2]
        h_hi = hx[0] + (np.arange(hx[2]) + 1) * (hx[1] - hx[0]) / hx[2]
        ie = e_hi <= self.ecal_box + 1e-9
        ih = h_hi <= self.hcal_box + 1e-9
        return float(counts[np.ix_(ie, ih)].sum())

    def refresh(self, m: M.MonitorModel, now: float) -> None:
        if m.version["ecal_hcal"] == self._version:
            return
        self._version = m.version["ecal_hcal"]
        c = m.eh_counts
        if c is None:
            return
        ex, hx = m.eh_ecal_edges, m.eh_hcal_edges
        with np.errstate(divide="ignore"):
            logc = np.where(c > 0, np.log10(np.where(c > 0, c, 1.0)), np.nan)
        hi = float(np.nanmax(logc)) if np.any(c > 0) else 1.0
        hi = max(math.ceil(hi * 2.0 + 1e-9) / 2.0, 0.5)           # whole half-decades: a steady scale
        self.images["full"].setImage(logc, autoLevels=False, levels=(0.0, hi))
        hbin = (hx[1] - hx[0]) / hx[2]
        nz = int(min(hx[2], max(1, math.ceil((self.ZOOM_HCAL_GEV - hx[0]) / hbin))))
        self.images["zoom"].setImage(np.ascontiguousarray(logc[:, :nz]), autoLevels=False, levels=(0.0, hi))
        if (ex, hx) != self._edges:
            self._edges = (ex, hx)
            self.images["full"].setRect(QtCore.QRectF(ex[0], hx[0], ex[1] - ex[0], hx[1] - hx[0]))
            self.images["zoom"].setRect(QtCore.QRectF(ex[0], hx[0], ex[1] - ex[0], nz * hbin))
            self.plot.setRange(xRange=(ex[0], ex[1]), yRange=(hx[0], hx[1]), padding=0.01)
            self.zoom.setRange(xRange=(ex[0], ex[1]), yRange=(hx[0], hx[0] + nz * hbin), padding=0.01)
        if self.bar.levels() != (0.0, hi):
            self.bar.setLevels((0.0, hi))
        self.entries = float(c.sum())
        self.in_box = self.box_count(c, ex, hx)
        text = (f"{fmt_count(self.entries)} entries in {m.eh_spills} spills;  signal box "
                f"(E_ECAL < {self.ecal_box:g}, E_HCAL < {self.hcal_box:g} GeV): {fmt_count(self.in_box)}")
        if self.info.text() != text:
            self.info.setText(text)


# ------------------------------------------------------------------------------------------------
class WaveformView(QtWidgets.QWidget):
    """The latest sample waveforms of one channel (``waveforms`` topic); the channel is chosen in the
    combo box or by clicking a map cell."""

    MAX_CURVES = 16
    PALETTE = ("#ffd740", "#40c4ff", "#69f0ae", "#ff5252", "#e040fb", "#ffab40", "#b2ff59", "#18ffff",
               "#ff80ab", "#ea80fc", "#ccff90", "#84ffff", "#ffe57f", "#ff9e80", "#b388ff", "#f4ff81")

    def __init__(self, channel: str = "ECAL1-2-2", parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        lay = QtWidgets.QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        bar = QtWidgets.QHBoxLayout()
        self.combo = QtWidgets.QComboBox()
        self.combo.addItems([c.name for c in ch.CHANNELS])
        self.combo.setFont(_font(11, True))
        self.combo.setMaxVisibleItems(25)
        self.info = _elastic(QtWidgets.QLabel("no waveforms yet"))
        self.info.setFont(_font(10))
        bar.addWidget(QtWidgets.QLabel("Channel:"))
        bar.addWidget(self.combo)
        bar.addWidget(self.info, 1)
        lay.addLayout(bar)
        self.plot = pg.PlotWidget()
        self.plot.setLabel("bottom", "time in readout window (ns)")
        self.plot.setLabel("left", "ADC counts")
        self.plot.showGrid(x=True, y=True, alpha=0.25)
        lay.addWidget(self.plot, 1)
        self.t_ns = np.arange(ch.N_SAMPLES) * ch.SAMPLE_NS
        self.plot.setXRange(0.0, ch.N_SAMPLES * ch.SAMPLE_NS, padding=0.01)
        self.range = StableRange(self.plot.getPlotItem())
        self.curves = [self.plot.plot([], [], pen=pg.mkPen(self.PALETTE[i], width=1.5))
                       for i in range(self.MAX_CURVES)]
        self.channel = ch.by_name(channel).id
        self.combo.setCurrentIndex(self.channel)
        self.combo.currentIndexChanged.connect(self._combo_changed)
        self._version: tuple[int, int] | None = None

    def _combo_changed(self, index: int) -> None:
        self.channel = int(index)
        self._version = None

    def set_channel(self, cid: int) -> None:
        if cid != self.combo.currentIndex():
            self.combo.setCurrentIndex(int(cid))      # emits -> _combo_changed
        self.channel = int(cid)
        self._version = None

    def shown(self) -> list[np.ndarray]:
        """y data of the visible curves (for tests)."""
        return [c.yData for c in self.curves if c.isVisible() and c.yData is not None and len(c.yData)]

    def refresh(self, m: M.MonitorModel, now: float) -> None:
        ver = (m.version["waveforms"], self.channel)
        if ver == self._version:
            return
        self._version = ver
        w = m.waveforms
        k = min(w.shape[0], self.MAX_CURVES)
        for i, c in enumerate(self.curves):
            if i < k:
                c.setData(self.t_ns, w[i, self.channel].astype(np.float64))
                c.setVisible(True)
            else:
                c.setVisible(False)
        if k:
            wk = w[:k, self.channel]
            lo = max(0.0, math.floor((float(wk.min()) - 10.0) / 50.0) * 50.0)
            self.range.set(None, (lo, max(lo + 50.0, nice_ceil(1.05 * float(wk.max())))))
        name = ch.CHANNELS[self.channel].name
        ids = ", ".join(str(int(e)) for e in m.waveform_event_ids[:k])
        text = f"{name} (id {self.channel}): {k} events of spill {m.waveform_spill}" + (f"  [{ids}]" if k else "")
        self.info.setText(text if w.shape[0] else f"{name} (id {self.channel}): no waveforms yet")


# ------------------------------------------------------------------------------------------------
class HVView(QtWidgets.QWidget):
    """VSET / VMON / IMON / status per HV channel; trips and faults red, |VMON - VSET| beyond the limit
    orange, ramping yellow, off grey. Problem channels are listed first."""

    COLUMNS = ("Channel", "Bd/ch", "VSET", "VMON", "IMON", "Status", "State")
    TIPS = ("channel name (detector.channels)", "HV board / channel", "set voltage (V)", "monitored voltage (V)",
            "monitored current (uA)", "status word (docs/protocols.md section 2)", "condition")

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        lay = QtWidgets.QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        self.summary = Tile("HV CHANNELS", 13)
        _elastic(self.summary.value)
        lay.addWidget(self.summary)
        self.table = QtWidgets.QTableWidget(0, len(self.COLUMNS))
        self.table.setHorizontalHeaderLabels(self.COLUMNS)
        for i, tip in enumerate(self.TIPS):
            self.table.horizontalHeaderItem(i).setToolTip(tip)
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setDefaultSectionSize(20)
        self.table.setEditTriggers(QtWidgets.QAbstractItemView.NoEditTriggers)
        self.table.setSelectionMode(QtWidgets.QAbstractItemView.NoSelection)
        # fixed widths (sized once when the rows are created): ResizeToContents re-measures every row
        # on every setText and costs ~2 ms per cell
        self.table.horizontalHeader().setSectionResizeMode(QtWidgets.QHeaderView.Interactive)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setFont(_font(10))
        lay.addWidget(self.table, 1)
        self.row_ids = np.empty(0, np.int64)       # channel id shown in each row
        self._cells: list[list[tuple[str, str | None]]] = []
        self._version = -1

    def row_of(self, cid: int) -> int:
        hit = np.flatnonzero(self.row_ids == cid)
        return int(hit[0]) if hit.size else -1

    def cell(self, cid: int, column: str) -> QtWidgets.QTableWidgetItem:
        return self.table.item(self.row_of(cid), self.COLUMNS.index(column))

    def refresh(self, m: M.MonitorModel, now: float) -> None:
        if m.version["hv"] == self._version:
            return
        self._version = m.version["hv"]
        n = m.hv_ids.size
        new_rows = self.table.rowCount() != n
        if new_rows:
            self.table.setRowCount(n)
            self._cells = []
            for r in range(n):
                row = []
                for c in range(len(self.COLUMNS)):
                    it = QtWidgets.QTableWidgetItem("")
                    it.setTextAlignment(QtCore.Qt.AlignCenter)
                    self.table.setItem(r, c, it)
                    row.append(("", "init"))
                self._cells.append(row)
        cond = m.hv_condition
        order = np.argsort(-cond.astype(np.int64), kind="stable")     # worst first, else channel order
        self.row_ids = m.hv_ids[order]
        for r, i in enumerate(order):
            cid = int(m.hv_ids[i])
            c = ch.CHANNELS[cid]
            colour = HV_COLOURS[int(cond[i])]
            texts = (c.name, f"{c.hv_board}/{c.hv_channel}", f"{m.hv_vset[i]:.1f}", f"{m.hv_vmon[i]:.1f}",
                     f"{m.hv_imon[i]:.2f}", f"0x{int(m.hv_status[i]):04X}", M.HV_CONDITION_NAMES[int(cond[i])])
            for col, text in enumerate(texts):
                if self._cells[r][col] != (text, colour):
                    self._cells[r][col] = (text, colour)
                    it = self.table.item(r, col)
                    it.setText(text)
                    if colour is None:
                        it.setData(QtCore.Qt.BackgroundRole, None)
                        it.setData(QtCore.Qt.ForegroundRole, None)
                    else:
                        it.setBackground(QtGui.QBrush(QtGui.QColor(colour)))
                        it.setForeground(QtGui.QBrush(QtGui.QColor("#000000" if colour == "#f9a825" else "#ffffff")))
        if new_rows and n:
            self.table.resizeColumnsToContents()
        a = m.alarms["hv"]
        counts = {name: int((cond == code).sum()) for code, name in enumerate(M.HV_CONDITION_NAMES)}
        self.summary.set_value(f"{counts['TRIP']} tripped · {counts['FAULT']} fault · {counts['DEV']} off nominal"
                               f" · {counts['RAMP']} ramping · {counts['OFF']} off · {counts['OK']} OK")
        level = M.ALARM if counts["TRIP"] or counts["FAULT"] else M.WARN if counts["DEV"] else \
            M.OK if n else M.NONE
        self.summary.set_colour(LEVEL_COLOURS[level])
        self.summary.setToolTip(a.text)


# ------------------------------------------------------------------------------------------------
class SensitivityView(QtWidgets.QWidget):
    """Expected 90% CL reach in epsilon at a few A' masses for the EOT accumulated so far."""

    def __init__(self, masses: tuple[float, ...] = M.SENSITIVITY_MASSES_MEV,
                 parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.masses = tuple(masses)
        lay = QtWidgets.QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        self.header = _elastic(QtWidgets.QLabel(""))
        self.header.setFont(_font(10))
        lay.addWidget(self.header)
        grid = QtWidgets.QGridLayout()
        self.values: dict[float, QtWidgets.QLabel] = {}
        for i, mass in enumerate(self.masses):
            cap = QtWidgets.QLabel(f"{mass:g} MeV")
            cap.setFont(_font(10, True))
            cap.setAlignment(QtCore.Qt.AlignCenter)
            val = QtWidgets.QLabel("—")
            val.setFont(_font(16, True))
            val.setAlignment(QtCore.Qt.AlignCenter)
            val.setStyleSheet("color: #ffd740")
            grid.addWidget(cap, 0, i)
            grid.addWidget(val, 1, i)
            self.values[mass] = val
        lay.addLayout(grid)
        self.plot = pg.PlotWidget()
        self.plot.setMinimumWidth(50)
        self.plot.setLogMode(x=True, y=True)
        self.plot.setLabel("bottom", "m_A' (MeV)")
        self.plot.setLabel("left", "ε 90% CL")
        self.plot.getAxis("left").enableAutoSIPrefix(False)
        self.plot.showGrid(x=True, y=True, alpha=0.25)
        self.curve = self.plot.plot([], [], pen=pg.mkPen("#ffd740", width=2.5))
        self.points = self.plot.plot([], [], pen=None, symbol="o", symbolSize=8, symbolBrush="#ff5252")
        self.range = StableRange(self.plot.getPlotItem())
        lay.addWidget(self.plot, 1)
        self._version = -1

    def refresh(self, m: M.MonitorModel, now: float) -> None:
        if m.version["sens"] == self._version:
            return
        self._version = m.version["sens"]
        sens = m.sensitivity
        if not sens.ok:
            self.header.setText(f"<span style='color:#ffb74d; font-size:13pt; font-weight:bold'>"
                                f"No sensitivity: {html.escape(sens.error)}</span>")
            return
        reach = dict(sens.reach(m.eot_total, self.masses))
        for mass, lab in self.values.items():
            lab.setText(fmt_eps(reach[mass]) if np.isfinite(sens.yield_at(mass)) else "not in table")
        self.header.setText(
            f"ε₉₀ = √(2.3 / (EOT × eff × yield)):  EOT {fmt_count(m.eot_total)}, eff {sens.efficiency:.2f}, "
            f"{sens.model_name or 'yields'} E0 {sens.e0_gev:g} GeV, E_miss > {sens.emiss_min_gev:g} GeV")
        mx, eps = sens.curve(m.eot_total)
        self.curve.setData(mx, eps)
        good = np.isfinite(eps) & (eps > 0)
        if good.any():    # log-log: whole decades (log10 units)
            self.range.set((math.floor(math.log10(mx[0]) + 1e-9), math.ceil(math.log10(mx[-1]) - 1e-9)),
                           (math.floor(math.log10(eps[good].min())), math.ceil(math.log10(eps[good].max()) + 1e-9)))
        pts = np.array([[mm, e] for mm, e in reach.items() if np.isfinite(e)])
        if pts.size:
            self.points.setData(pts[:, 0], pts[:, 1])
