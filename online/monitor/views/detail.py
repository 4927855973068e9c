"""Sample waveforms, the HV table and the expected sensitivity of the monitor."""

from __future__ import annotations

import html
import math

import numpy as np
import pyqtgraph as pg
from PyQt5 import QtCore, QtGui, QtWidgets

from detector import channels as ch

from .. import model as M
from .base import (
    HV_COLOURS,
    LEVEL_COLOURS,
    ChannelPlot,
    StableRange,
    Tile,
    _elastic,
    _font,
    fmt_count,
    fmt_eps,
    nice_ceil,
    register,
)


# ------------------------------------------------------------------------------------------------
@register("waveforms", "Waveforms", "bottom", 70)
class WaveformView(ChannelPlot):
    """The latest sample waveforms of one channel (``waveforms`` topic); the channel is chosen in the
    combo box or by clicking a map cell."""

    MAX_CURVES = 16
    PALETTE = (
        "#ffd740",
        "#40c4ff",
        "#69f0ae",
        "#ff5252",
        "#e040fb",
        "#ffab40",
        "#b2ff59",
        "#18ffff",
        "#ff80ab",
        "#ea80fc",
        "#ccff90",
        "#84ffff",
        "#ffe57f",
        "#ff9e80",
        "#b388ff",
        "#f4ff81",
    )

    def __init__(self, channel: str = "ECAL1-2-2", parent: QtWidgets.QWidget | None = None) -> None:
        names = [c.name for c in ch.CHANNELS]
        super().__init__(channel, names, "waveforms", "time in readout window (ns)", "ADC counts", parent)
        self.t_ns = np.arange(ch.N_SAMPLES) * ch.SAMPLE_NS
        self.plot.setXRange(0.0, ch.N_SAMPLES * ch.SAMPLE_NS, padding=0.01)
        self.range = StableRange(self.plot.getPlotItem())
        self.curves = [self.plot.plot([], [], pen=pg.mkPen(self.PALETTE[i], width=1.5)) for i in range(self.MAX_CURVES)]

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
@register("hv", "High voltage", "right", 50)
class HVView(QtWidgets.QWidget):
    """VSET / VMON / IMON / status per HV channel; trips and faults red, |VMON - VSET| beyond the limit
    orange, ramping yellow, off grey. Problem channels are listed first."""

    COLUMNS = ("Channel", "Bd/ch", "VSET", "VMON", "IMON", "Status", "State")
    TIPS = (
        "channel name (detector.channels)",
        "HV board / channel",
        "set voltage (V)",
        "monitored voltage (V)",
        "monitored current (uA)",
        "status word (docs/protocols.md section 2)",
        "condition",
    )

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
            head = self.table.horizontalHeaderItem(i)
            assert head is not None  # set by setHorizontalHeaderLabels
            head.setToolTip(tip)
        vhead, hhead = self.table.verticalHeader(), self.table.horizontalHeader()
        assert vhead is not None and hhead is not None  # a QTableWidget has both headers
        vhead.setVisible(False)
        vhead.setDefaultSectionSize(20)
        self.table.setEditTriggers(QtWidgets.QAbstractItemView.NoEditTriggers)
        self.table.setSelectionMode(QtWidgets.QAbstractItemView.NoSelection)
        # fixed widths (sized once when the rows are created): ResizeToContents re-measures every row
        # on every setText and costs ~2 ms per cell
        hhead.setSectionResizeMode(QtWidgets.QHeaderView.Interactive)
        hhead.setStretchLastSection(True)
        self.table.setFont(_font(10))
        lay.addWidget(self.table, 1)
        self.row_ids = np.empty(0, np.int64)  # channel id shown in each row
        self._cells: list[list[tuple[str, str | None]]] = []
        self._version = -1

    def row_of(self, cid: int) -> int:
        hit = np.flatnonzero(self.row_ids == cid)
        return int(hit[0]) if hit.size else -1

    def cell(self, cid: int, column: str) -> QtWidgets.QTableWidgetItem | None:
        """The table cell of channel ``cid`` in ``column``; None if the channel has no row."""
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
                row: list[tuple[str, str | None]] = []
                for c in range(len(self.COLUMNS)):
                    it = QtWidgets.QTableWidgetItem("")
                    it.setTextAlignment(QtCore.Qt.AlignmentFlag.AlignCenter)
                    self.table.setItem(r, c, it)
                    row.append(("", "init"))
                self._cells.append(row)
        cond = m.hv_condition
        order = np.argsort(-cond.astype(np.int64), kind="stable")  # worst first, else channel order
        self.row_ids = m.hv_ids[order]
        for r, i in enumerate(order):
            cid = int(m.hv_ids[i])
            chan = ch.CHANNELS[cid]
            colour = HV_COLOURS[int(cond[i])]
            texts = (
                chan.name,
                f"{chan.hv_board}/{chan.hv_channel}",
                f"{m.hv_vset[i]:.1f}",
                f"{m.hv_vmon[i]:.1f}",
                f"{m.hv_imon[i]:.2f}",
                f"0x{int(m.hv_status[i]):04X}",
                M.HV_CONDITION_NAMES[int(cond[i])],
            )
            for col, text in enumerate(texts):
                if self._cells[r][col] != (text, colour):
                    self._cells[r][col] = (text, colour)
                    item = self.table.item(r, col)
                    assert item is not None  # every cell got its item when the rows were made
                    item.setText(text)
                    if colour is None:
                        item.setData(QtCore.Qt.ItemDataRole.BackgroundRole, None)
                        item.setData(QtCore.Qt.ItemDataRole.ForegroundRole, None)
                    else:
                        item.setBackground(QtGui.QBrush(QtGui.QColor(colour)))
                        item.setForeground(QtGui.QBrush(QtGui.QColor("#000000" if colour == "#f9a825" else "#ffffff")))
        if new_rows and n:
            self.table.resizeColumnsToContents()
        a = m.alarms["hv"]
        counts = {name: int((cond == code).sum()) for code, name in enumerate(M.HV_CONDITION_NAMES)}
        self.summary.set_value(
            f"{counts['TRIP']} tripped · {counts['FAULT']} fault · {counts['DEV']} off nominal"
            f" · {counts['RAMP']} ramping · {counts['OFF']} off · {counts['OK']} OK"
        )
        level = M.ALARM if counts["TRIP"] or counts["FAULT"] else M.WARN if counts["DEV"] else M.OK if n else M.NONE
        self.summary.set_colour(LEVEL_COLOURS[level])
        self.summary.setToolTip(a.text)


# ------------------------------------------------------------------------------------------------
@register("sensitivity", "Expected sensitivity (ε reach, 90% CL)", "bottom", 60)
class SensitivityView(QtWidgets.QWidget):
    """Expected 90% CL reach in epsilon at a few A' masses for the EOT accumulated so far."""

    def __init__(
        self, masses: tuple[float, ...] = M.SENSITIVITY_MASSES_MEV, parent: QtWidgets.QWidget | None = None
    ) -> None:
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
            cap.setAlignment(QtCore.Qt.AlignmentFlag.AlignCenter)
            val = QtWidgets.QLabel("—")
            val.setFont(_font(16, True))
            val.setAlignment(QtCore.Qt.AlignmentFlag.AlignCenter)
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
            self.header.setText(
                f"<span style='color:#ffb74d; font-size:13pt; font-weight:bold'>"
                f"No sensitivity: {html.escape(sens.error)}</span>"
            )
            return
        reach = dict(sens.reach(m.eot_total, self.masses))
        for mass, lab in self.values.items():
            lab.setText(fmt_eps(reach[mass]) if np.isfinite(sens.yield_at(mass)) else "not in table")
        self.header.setText(
            f"ε₉₀ = √(2.3 / (EOT × eff × yield)):  EOT {fmt_count(m.eot_total)}, eff {sens.efficiency:.2f}, "
            f"{sens.model_name or 'yields'} E0 {sens.e0_gev:g} GeV, E_miss > {sens.emiss_min_gev:g} GeV"
        )
        mx, eps = sens.curve(m.eot_total)
        self.curve.setData(mx, eps)
        good = np.isfinite(eps) & (eps > 0)
        if good.any():  # log-log: whole decades (log10 units)
            self.range.set(
                (math.floor(math.log10(mx[0]) + 1e-9), math.ceil(math.log10(mx[-1]) - 1e-9)),
                (math.floor(math.log10(eps[good].min())), math.ceil(math.log10(eps[good].max()) + 1e-9)),
            )
        pts = np.array([[mm, e] for mm, e in reach.items() if np.isfinite(e)])
        if pts.size:
            self.points.setData(pts[:, 0], pts[:, 1])
