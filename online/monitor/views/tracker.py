"""The spectrometer view of the monitor: the ``tracker`` topic (docs/protocols.md 4.2) summed over the run,
and the beam-momentum peak of the recent spills (:mod:`online.monitor.tracker`)."""

from __future__ import annotations

import html
import math

import numpy as np
import pyqtgraph as pg
from PyQt5 import QtWidgets

from .. import model as M
from .base import EXTRA_COLOURS, LEVEL_COLOURS, StableRange, TopicView, nice_ceil, register

STATION_COLOURS = ("#40c4ff", "#69f0ae", "#ffd740", "#ff80ab", *EXTRA_COLOURS)
EFF_COLOUR, STRIP_COLOUR, CLUSTER_COLOUR = "#69f0ae", "#40c4ff", "#ffab40"


def _centres(edges: list) -> np.ndarray:
    lo, hi, n = float(edges[0]), float(edges[1]), int(edges[2])
    return lo + (np.arange(n) + 0.5) * (hi - lo) / n


def _steps(edges: list) -> np.ndarray:
    return np.linspace(float(edges[0]), float(edges[1]), int(edges[2]) + 1)


def _quantile(counts: np.ndarray, edges: list, q: float) -> float:
    c = np.cumsum(counts)
    if not c.size or c[-1] <= 0:
        return math.nan
    return float(_steps(edges)[1:][np.searchsorted(c, q * c[-1])])


def _legend(title: str, names: list[str], colours: tuple[str, ...]) -> str:
    return f"{title}  " + "  ".join(f"<span style='color:{c}'>{html.escape(n)}</span>" for n, c in zip(names, colours))


@register("tracker", "Spectrometer (MM1-MM4)", "central", 6)
class TrackerView(TopicView):
    """Momentum spectrum (reference and current peak marked), incoming angle, track multiplicity, beam
    profiles per chamber (X and Y), per-plane efficiency and noise (strips and clusters per event)."""

    topic = "tracker"

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        lay = QtWidgets.QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        self.glw = pg.GraphicsLayoutWidget()
        lay.addWidget(self.glw)
        g = self.glw
        self.p_mom = g.addPlot(row=0, col=0, colspan=2)
        self.p_angle = g.addPlot(row=0, col=2)
        self.p_x = g.addPlot(row=1, col=0)
        self.p_y = g.addPlot(row=1, col=1)
        self.p_mult = g.addPlot(row=1, col=2)
        self.p_eff = g.addPlot(row=2, col=0, colspan=2)
        self.p_noise = g.addPlot(row=2, col=2)
        for i in range(3):  # equal columns and rows, whatever the axes' label widths
            g.ci.layout.setColumnStretchFactor(i, 1)
            g.ci.layout.setRowStretchFactor(i, 1)
        for p in (self.p_mom, self.p_angle, self.p_x, self.p_y, self.p_mult, self.p_eff, self.p_noise):
            p.setMinimumWidth(60)
        labels = (
            (self.p_mom, "p [GeV]", "events"),
            (self.p_angle, "angle [mrad]", "events"),
            (self.p_mult, "tracks per event", "fraction"),
            (self.p_x, "beam profile x [mm]", "events"),
            (self.p_y, "beam profile y [mm]", "events"),
            (self.p_eff, "plane", "efficiency"),
            (self.p_noise, "plane (MM)", "per event"),
        )
        for p, xl, yl in labels:
            p.showGrid(x=True, y=True, alpha=0.25)
            p.setLabel("bottom", xl)
            p.setLabel("left", yl)
            p.hideButtons()
            p.setMouseEnabled(x=False, y=False)
        self.c_mom = self.p_mom.plot([0.0, 1.0], [0.0], stepMode="center", pen=pg.mkPen("#ffffff", width=1.5))
        self.l_ref = pg.InfiniteLine(angle=90, pen=pg.mkPen("#b0bec5", width=1.5, style=pg.QtCore.Qt.PenStyle.DashLine))
        self.l_peak = pg.InfiniteLine(angle=90, pen=pg.mkPen(LEVEL_COLOURS[M.OK], width=2.5))
        self.p_mom.addItem(self.l_ref)
        self.p_mom.addItem(self.l_peak)
        self.c_angle = self.p_angle.plot([0.0, 1.0], [0.0], stepMode="center", pen=pg.mkPen("#40c4ff", width=1.5))
        self.b_mult = pg.BarGraphItem(x=[], height=[], width=0.7, brush="#ffd740")
        self.p_mult.addItem(self.b_mult)
        self.c_prof: dict[str, list[pg.PlotDataItem]] = {"X": [], "Y": []}
        self.b_eff = pg.BarGraphItem(x=[], height=[], width=0.7, brush=EFF_COLOUR)
        self.p_eff.addItem(self.b_eff)
        self.eff_text: list[pg.TextItem] = []
        self.b_strips = pg.BarGraphItem(x=[], height=[], width=0.38, brush=STRIP_COLOUR)
        self.b_clusters = pg.BarGraphItem(x=[], height=[], width=0.38, brush=CLUSTER_COLOUR)
        self.p_noise.addItem(self.b_strips)
        self.p_noise.addItem(self.b_clusters)
        self.p_noise.setTitle(_legend("Noise:", ["strips", "clusters"], (STRIP_COLOUR, CLUSTER_COLOUR)))
        self.p_mult.setTitle("Tracks")
        self.p_mom.setTitle("Momentum")
        self.p_angle.setTitle("Angle")
        self.p_eff.setTitle("Plane efficiency")
        self.p_x.setTitle("X:")
        self.p_y.setTitle("Y:")
        self.ranges = {
            k: StableRange(getattr(self, f"p_{k}")) for k in ("mom", "angle", "mult", "x", "y", "eff", "noise")
        }
        self.planes: list[str] = []

    # ---------------------------------------------------------------------------------------------
    def _set_planes(self, planes: list[str]) -> None:
        """Plane names on the axes, the profile curves and the efficiency labels: made once per layout."""
        if planes == self.planes:
            return
        self.planes = list(planes)
        ticks = [[(i, n) for i, n in enumerate(planes)]]
        self.p_eff.getAxis("bottom").setTicks(ticks)
        short = [n.removeprefix("MM") for n in planes]  # the noise plot is narrow
        self.p_noise.getAxis("bottom").setTicks([[(i, n) for i, n in enumerate(short)]])
        for view, plot in (("X", self.p_x), ("Y", self.p_y)):
            for c in self.c_prof[view]:
                plot.removeItem(c)
            names = [n[:-1] for n in planes if n.endswith(view)]
            cols = STATION_COLOURS[: len(names)]
            self.c_prof[view] = [
                plot.plot([0.0, 1.0], [0.0], stepMode="center", pen=pg.mkPen(c, width=1.5)) for c in cols
            ]
            plot.setTitle(_legend(f"{view}:", names, cols))
        for t in self.eff_text:
            self.p_eff.removeItem(t)
        self.eff_text = []
        for i in range(len(planes)):
            t = pg.TextItem("", color="#15181c", anchor=(0.5, 0.5), angle=90)
            t.setPos(i, 0.5)
            self.p_eff.addItem(t)
            self.eff_text.append(t)

    def draw(self, m: M.MonitorModel) -> None:
        msg = m.latest.get("tracker")
        sums = m.sums.get("tracker")
        if msg is None or sums is None:  # nothing yet, or the accumulators were reset: empty plots
            for c in (self.c_mom, self.c_angle, *self.c_prof["X"], *self.c_prof["Y"]):
                c.setData([0.0, 1.0], [0.0])
            for b in (self.b_mult, self.b_eff, self.b_strips, self.b_clusters):
                b.setOpts(x=[], height=[])
            for t in self.eff_text:
                t.setText("")
            self.l_ref.setVisible(False)
            self.l_peak.setVisible(False)
            return
        meta = msg.meta
        planes = [str(p) for p in meta.get("planes", [])]
        n_pl = int(sums["strips"].shape[0])
        if len(planes) != n_pl:
            planes = [f"{k // 2}{'XY'[k % 2]}" for k in range(n_pl)]
        self._set_planes(planes)
        self._draw_momentum(m, sums["momentum"], meta["momentum_edges"])
        ang = sums["angle"]
        self.c_angle.setData(_steps(meta["angle_edges"]), ang)
        med = _quantile(ang, meta["angle_edges"], 0.5)
        self.p_angle.setTitle(f"Angle: median {med:.2f} mrad" if math.isfinite(med) else "Angle")
        a_lo, a_hi = float(meta["angle_edges"][0]), float(meta["angle_edges"][1])
        q99 = _quantile(ang, meta["angle_edges"], 0.99)
        a_top = min(a_hi, nice_ceil(1.5 * q99)) if math.isfinite(q99) else a_hi
        self.ranges["angle"].set((a_lo, a_top), (0.0, nice_ceil(1.05 * max(ang.max(), 1.0))))
        mult = sums["multiplicity"]
        tot = max(mult.sum(), 1.0)
        self.b_mult.setOpts(x=np.arange(mult.size), height=mult / tot)
        last = mult.size - 1
        self.p_mult.getAxis("bottom").setTicks([[(i, f"{i}+" if i == last else str(i)) for i in range(mult.size)]])
        self.p_mult.setTitle(f"Tracks: {mult[1] / tot:.0%} single" if mult.size > 1 else "Tracks")
        self.ranges["mult"].set((-0.6, last + 0.6), (0.0, 1.0))
        pe = meta["profile_edges"]
        steps = _steps(pe)
        top = 1.0
        for view in ("X", "Y"):
            rows = [k for k, n in enumerate(planes) if n.endswith(view)]
            for c, k in zip(self.c_prof[view], rows):
                c.setData(steps, sums["profile"][k])
                top = max(top, float(sums["profile"][k].max()))
        for view in ("x", "y"):
            self.ranges[view].set((float(pe[0]), float(pe[1])), (0.0, nice_ceil(1.05 * top)))
        ref, hit = sums["eff_ref"], sums["eff_hit"]
        eff = np.divide(hit, ref, out=np.full(ref.shape, np.nan), where=ref > 0)
        x = np.arange(n_pl)
        self.b_eff.setOpts(x=x, height=np.nan_to_num(eff))
        for t, e in zip(self.eff_text, eff):
            t.setText(f"{e:.3f}" if math.isfinite(e) else "—")
        self.ranges["eff"].set((-0.6, n_pl - 0.4), (0.0, 1.05))
        n_ev = max(float(mult.sum()), 1.0)  # every event is in one multiplicity bin
        strips, clusters = sums["strips"] / n_ev, sums["clusters"] / n_ev
        self.b_strips.setOpts(x=x - 0.2, height=strips)
        self.b_clusters.setOpts(x=x + 0.2, height=clusters)
        self.ranges["noise"].set((-0.6, n_pl - 0.4), (0.0, nice_ceil(1.1 * max(strips.max(), clusters.max(), 1.0))))

    def _draw_momentum(self, m: M.MonitorModel, counts: np.ndarray, edges: list) -> None:
        self.c_mom.setData(_steps(edges), counts)
        w = m.momentum
        ref, peak = w.reference_gev, w.peak_gev
        self.l_ref.setVisible(math.isfinite(ref))
        self.l_peak.setVisible(math.isfinite(peak))
        if math.isfinite(ref):
            self.l_ref.setValue(ref)
        level = m.alarms["momentum"].level
        if math.isfinite(peak):
            self.l_peak.setValue(peak)
            self.l_peak.setPen(pg.mkPen(LEVEL_COLOURS[level if level != M.NONE else M.OK], width=2.5))
        title = "Momentum"
        if math.isfinite(peak):
            title += f": peak {peak:.2f} GeV ({w.peak_spills} spill{'s' if w.peak_spills != 1 else ''})"
        if math.isfinite(ref):
            title += f", ref. {ref:.4g} ┄"
        self.p_mom.setTitle(title)
        centre = ref if math.isfinite(ref) else (peak if math.isfinite(peak) else 100.0)
        self.ranges["mom"].set((0.5 * centre, 1.2 * centre), (0.0, nice_ceil(1.05 * max(counts.max(), 1.0))))
