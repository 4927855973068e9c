"""Rates per spill, calorimeter maps and the E_ECAL vs E_HCAL histogram of the monitor."""

from __future__ import annotations

import html
import math
from typing import Any, ClassVar

import numpy as np
import pyqtgraph as pg
from PyQt5 import QtCore, QtGui, QtWidgets

from detector import channels as ch

from .. import model as M
from .base import (
    EXTRA_COLOURS,
    TRIGGER_COLOURS,
    StableRange,
    _bar,
    _elastic,
    _font,
    fmt_compact,
    fmt_count,
    nice_ceil,
    register,
    set_bar_levels,
)


# ------------------------------------------------------------------------------------------------
def _positive(y: np.ndarray) -> np.ndarray:
    """NaN where y <= 0 (log axes)."""
    y = np.array(y, dtype=np.float64)
    y[~(y > 0)] = np.nan
    return y


@register("rates", "Rates per spill", "left", 30)
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
        self.p_counters.setTitle(
            "Beam counters: "
            + "  ".join(f"<span style='color:{c}'>{n}</span>" for n, c in self._counter_colours.items())
        )
        self._trigger_colours: dict[str, str] = {}
        self._set_trigger_title()
        self.curves["eot"] = self.p_eot.plot([], [], pen=pg.mkPen("#69f0ae", width=2), connect="finite")
        self.curves["eot_total"] = self.p_eot_total.plot([], [], pen=pg.mkPen("#ffab40", width=2.5), connect="finite")
        self._symbols = False
        self.ranges = {
            k: StableRange(p)
            for k, p in (
                ("counters", self.p_counters),
                ("triggers", self.p_triggers),
                ("eot", self.p_eot),
                ("eot_total", self.p_eot_total),
            )
        }
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
        if key not in self.curves:  # one pair per trigger type, created once
            n_known = sum(1 for k in self.curves if k.endswith(":acc"))
            col = TRIGGER_COLOURS.get(name, EXTRA_COLOURS[n_known % len(EXTRA_COLOURS)])
            self._trigger_colours[name] = col
            self._set_trigger_title()
            self.curves[key] = self.p_triggers.plot([], [], pen=pg.mkPen(col, width=2), connect="finite")
            self.curves[f"trig:{name}:raw"] = self.p_triggers.plot(
                [], [], pen=pg.mkPen(col, width=1.5, style=QtCore.Qt.PenStyle.DashLine), connect="finite"
            )
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
            else:  # nothing to draw (all NaN): an empty curve, not NaN bounds
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

            def top(*cols: np.ndarray) -> float:
                return nice_ceil(1.05 * max([np.nanmax(c) if np.any(np.isfinite(c)) else 0.0 for c in cols] + [0.0]))

            # the same x range everywhere (no setXLink: it aligns linked views by pixel, and the plots'
            # left axes differ in width)
            self.ranges["counters"].set(xr, (0.0, top(*(h.column(n) for n in ("S0", "S1", "V0")))))
            self.ranges["eot"].set(xr, (0.0, top(h.column("eot"))))
            self.ranges["eot_total"].set(xr, (0.0, top(h.column("eot_total"))))
            self.ranges["triggers"].set(xr)
            tv = np.concatenate(
                [h.column(f"trig:{n}:{k}") for n in m.trigger_names for k in ("raw", "acc")] + [np.empty(0)]
            )
            tv = tv[np.isfinite(tv) & (tv > 0)]
            if tv.size:  # log axis: whole decades, in log10 units
                decades = (math.floor(math.log10(tv.min())), math.ceil(math.log10(tv.max()) + 1e-9))
                self.ranges["triggers"].set(xr, decades)


# ------------------------------------------------------------------------------------------------
class CellMap:
    """One calorimeter map: a PlotItem with an ImageItem, one text label per cell, a selection frame."""

    def __init__(self, plot: pg.PlotItem, nx: int, ny: int, labels: list[list[str]], ids: np.ndarray) -> None:
        self.plot, self.nx, self.ny, self.ids = plot, nx, ny, ids  # ids[x, y] -> channel id
        self.names = labels
        vb = plot.getViewBox()
        vb.setMouseEnabled(False, False)
        vb.setMenuEnabled(False)
        vb.setAspectLocked(True)
        vb.setRange(xRange=(0, nx), yRange=(0, ny), padding=0.02)
        plot.hideButtons()
        plot.hideAxis("left")  # the cell labels carry x-y; an axis costs a repaint per update
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
                t.setFlag(QtWidgets.QGraphicsItem.GraphicsItemFlag.ItemIgnoresTransformations, True)
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


@register("maps", "Calorimeter maps", "central", 5)
class CaloMapsView(QtWidgets.QWidget):
    """ECAL 6x6 (PS and main) and the four HCAL 3x3 modules: accumulated energy or occupancy per cell.
    Clicking a cell emits ``channelSelected(channel_id)``."""

    channelSelected = QtCore.pyqtSignal(int)
    MODES = ("energy", "occupancy")
    TITLES: ClassVar[dict[str, str]] = {
        "ps": "ECAL preshower (PS)",
        "main": "ECAL main",
        **{f"hcal{m}": f"HCAL module {m}" for m in range(4)},
    }

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
        for cm in self.maps.values():
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
            cm.select((int(hit[0][0]), int(hit[0][1])) if hit.size else None)

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
            self.maps[f"hcal{mod}"].set_values(hcal[mod].T, 0.0, hi)  # [y][x] -> [x][y]
        set_bar_levels(self.bars["hcal"], hi)
        if unit != self._unit:  # the unit goes in the titles: a colour-bar label overlaps its ticks
            self._unit = unit
            for key, cm in self.maps.items():
                cm.plot.setTitle(f"{self.TITLES[key]} [{unit}]")
        text = (
            f"{m.calo_spills} spills, {fmt_count(m.calo_events)} events"
            f"   (x → right, y ↑ up; click a cell for its waveforms)"
        )
        if self.info.text() != text:
            self.info.setText(text)


# ------------------------------------------------------------------------------------------------
def _rect_path(x0: float, x1: float, y0: float, y1: float) -> tuple[list[float], list[float]]:
    return [x0, x1, x1, x0, x0], [y0, y0, y1, y1, y0]


@register(
    "ecal_hcal", "E_ECAL vs E_HCAL", "right", 40, make=lambda s: EcalHcalView(s.ecal_box_max_gev, s.hcal_box_max_gev)
)
class EcalHcalView(QtWidgets.QWidget):
    """E_ECAL vs E_HCAL accumulated from ``ecal_hcal`` increments, log10 colour, signal box drawn; a zoom
    on the low-E_HCAL region beside the full plane."""

    ZOOM_HCAL_GEV = 10.0

    def __init__(self, ecal_box: float = 50.0, hcal_box: float = 1.0, parent: QtWidgets.QWidget | None = None) -> None:
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
        self.bar = pg.ColorBarItem(
            values=(0, 1), colorMap="inferno", interactive=False, width=14, label="log10(entries)", colorMapMenu=False
        )
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
        c, ex, hx = m.eh_counts, m.eh_ecal_edges, m.eh_hcal_edges
        if c is None or ex is None or hx is None:  # the edges are set with the first counts
            return
        with np.errstate(divide="ignore"):
            logc = np.where(c > 0, np.log10(np.where(c > 0, c, 1.0)), np.nan)
        hi = float(np.nanmax(logc)) if np.any(c > 0) else 1.0
        hi = max(math.ceil(hi * 2.0 + 1e-9) / 2.0, 0.5)  # whole half-decades: a steady scale
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
        text = (
            f"{fmt_count(self.entries)} entries in {m.eh_spills} spills;  signal box "
            f"(E_ECAL < {self.ecal_box:g}, E_HCAL < {self.hcal_box:g} GeV): {fmt_count(self.in_box)}"
        )
        if self.info.text() != text:
            self.info.setText(text)
