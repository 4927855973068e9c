"""Run and spill status tiles, the alarm panel and the log pane of the monitor."""

from __future__ import annotations

import html
import logging
import time

from PyQt5 import QtCore, QtGui, QtWidgets

from .. import model as M
from .base import FG, LEVEL_COLOURS, LOG_COLOURS, NEUTRAL, STATE_COLOURS, Tile, _font, fmt_age, fmt_count, register


@register("status", "Run and spill status", "top", 10)
class StatusPanel(QtWidgets.QWidget):
    """Run, spill, DAQ state, time since the last spill, EOT, missed and malformed messages."""

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        grid = QtWidgets.QGridLayout(self)
        grid.setContentsMargins(4, 4, 4, 4)
        grid.setSpacing(6)
        self.tiles: dict[str, Tile] = {}
        spec = [
            ("run", "RUN", 26),
            ("spill", "SPILL", 26),
            ("state", "DAQ STATE", 22),
            ("since", "SINCE LAST SPILL", 22),
            ("eot_spill", "EOT LAST SPILL", 20),
            ("eot_total", "EOT RUN TOTAL", 20),
            ("missed", "MISSED MSGS", 22),
            ("malformed", "MALFORMED", 22),
        ]
        for i, (key, cap, pt) in enumerate(spec):
            t = Tile(cap, pt)
            grid.addWidget(t, 0, i)
            grid.setColumnStretch(i, 2 if key in ("state", "eot_total", "since") else 1)
            self.tiles[key] = t
        self.info = QtWidgets.QLabel("")
        self.info.setFont(_font(10))
        self.info.setWordWrap(True)
        self.info.setSizePolicy(QtWidgets.QSizePolicy.Ignored, QtWidgets.QSizePolicy.Preferred)
        self.info.setTextInteractionFlags(QtCore.Qt.TextInteractionFlag.TextSelectableByMouse)
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
        text = (
            f"{src}   |   received {link.received}, last {fmt_age(rx_age)} ago   |   missed on link "
            f"{link.missed}, dropped locally {link.dropped_total}, superseded (latest-wins) {sup}, "
            f"publisher restarts {link.restarts}   |   DAQ: {m.spills_done} spills, "
            f"{fmt_count(m.events_recorded)} events recorded, {m.lost_spills} spills lost, "
            f"{m.publisher_dropped} messages dropped by the DAQ publisher"
        )
        if m.state_message:
            text += f"   |   {m.state_message}"
        if self.info.text() != text:
            self.info.setText(text)


@register("alarms", "Alarms", "top", 20)
class AlarmPanel(QtWidgets.QWidget):
    """One coloured tile per alarm (:data:`~online.monitor.model.ALARM_KEYS`)."""

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


@register("log", "Log", "bottom", 80, attr="log_pane", make=lambda s: LogPane(s.log_lines))
class LogPane(QtWidgets.QPlainTextEdit):
    """Alarm transitions, DAQ ``log`` messages and monitor notes, newest at the bottom, bounded."""

    def __init__(self, max_lines: int = 2000, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.setReadOnly(True)
        self.setMaximumBlockCount(max_lines)
        self.setFont(QtGui.QFontDatabase.systemFont(QtGui.QFontDatabase.FixedFont))
        doc = self.document()
        assert doc is not None  # a QPlainTextEdit owns its document
        doc.setDefaultStyleSheet("")
        self._last_id = 0

    def refresh(self, m: M.MonitorModel, now: float) -> None:
        new = [e for e in m.log if e.id > self._last_id]
        if not new:
            return
        self._last_id = new[-1].id
        for e in new[-self.maximumBlockCount() :]:
            ts = time.strftime("%H:%M:%S", time.localtime(e.time))
            col = LOG_COLOURS.get(e.level, FG)
            lvl = logging.getLevelName(e.level)
            self.appendHtml(f'<span style="color:{col}">{ts} {lvl:<7} [{e.source}] {html.escape(e.text)}</span>')
        sb = self.verticalScrollBar()
        assert sb is not None  # a QAbstractScrollArea owns its scroll bars
        sb.setValue(sb.maximum())

    def lines(self) -> list[str]:
        return self.toPlainText().splitlines()
