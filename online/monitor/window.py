"""The monitor's main window: docks of the views, one repaint QTimer (``monitor.repaint_hz``, at most
10 Hz) that drains the inbox into the model, evaluates the alarms and refreshes the views. Sources
(ZeroMQ receiver, replay, in-process synthetic feed) run in worker threads and only ever touch the
thread-safe :class:`~online.monitor.stream.Inbox`.
"""

from __future__ import annotations

import logging
import pathlib
import time
from typing import Any

from PyQt5 import QtCore, QtGui, QtWidgets

from detector.settings import Config

from . import model as M
from . import views as V
from .stream import Inbox, StreamReceiver

log = logging.getLogger("online.monitor")

_AREAS = {
    "top": QtCore.Qt.DockWidgetArea.TopDockWidgetArea,
    "left": QtCore.Qt.DockWidgetArea.LeftDockWidgetArea,
    "right": QtCore.Qt.DockWidgetArea.RightDockWidgetArea,
    "bottom": QtCore.Qt.DockWidgetArea.BottomDockWidgetArea,
}


class MonitorWindow(QtWidgets.QMainWindow):
    """Dock-based control-room window. ``tick()`` is the whole update path (also called by tests and
    the benchmark); nothing else changes the widgets."""

    def __init__(
        self,
        settings: M.MonitorSettings | None = None,
        model: M.MonitorModel | None = None,
        inbox: Inbox | None = None,
        parent: QtWidgets.QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.settings = settings or M.MonitorSettings()
        self.model = model or M.MonitorModel(self.settings)
        self.inbox = inbox or Inbox()
        self.receiver: StreamReceiver | None = None
        self.feeder: Any = None  # stream.FeederThread (replay or synthetic)
        self.setWindowTitle("NA64 monitor")
        self.setDockOptions(QtWidgets.QMainWindow.AnimatedDocks | QtWidgets.QMainWindow.AllowNestedDocks)
        self.views: list[Any] = []
        self.docks: dict[str, QtWidgets.QDockWidget] = {}
        self.tabs: QtWidgets.QTabWidget | None = None  #: the central views when there are several
        central: list[tuple[str, Any]] = []
        for spec in V.registered():  # every view registered in online.monitor.views
            w = spec.build(self.settings)
            setattr(self, spec.attr, w)
            self.views.append(w)
            if spec.area == "central":
                central.append((spec.title, w))
            else:
                self._dock(spec.key, spec.title, w, _AREAS[spec.area])
        if len(central) == 1:
            self.setCentralWidget(central[0][1])
        elif central:  # several central views: tabs, in registration order
            self.tabs = QtWidgets.QTabWidget()
            self.tabs.setObjectName("central_tabs")
            for title, w in central:
                self.tabs.addTab(w, title)
            self.setCentralWidget(self.tabs)
        self.maps.channelSelected.connect(self.waveforms.set_channel)
        self.waveforms.combo.currentIndexChanged.connect(self.maps.select_channel)
        self.maps.select_channel(self.waveforms.channel)
        d = self.docks
        self.splitDockWidget(d["status"], d["alarms"], QtCore.Qt.Orientation.Horizontal)
        self.splitDockWidget(d["ecal_hcal"], d["hv"], QtCore.Qt.Orientation.Vertical)
        self.splitDockWidget(d["sensitivity"], d["waveforms"], QtCore.Qt.Orientation.Horizontal)
        self.splitDockWidget(d["waveforms"], d["log"], QtCore.Qt.Orientation.Horizontal)
        self.setCorner(QtCore.Qt.Corner.BottomLeftCorner, QtCore.Qt.DockWidgetArea.BottomDockWidgetArea)
        self.setCorner(QtCore.Qt.Corner.BottomRightCorner, QtCore.Qt.DockWidgetArea.RightDockWidgetArea)
        self.resize(1920, 1080)
        self._docks_laid_out = False
        tb = self.addToolBar("monitor")
        assert tb is not None  # addToolBar(title) creates it
        tb.setObjectName("toolbar")
        act_reset = tb.addAction("Reset accumulators")
        assert act_reset is not None  # addAction(text) creates it
        act_reset.triggered.connect(self.model.reset)
        self.timer = QtCore.QTimer(self)
        self.timer.setInterval(int(round(1000.0 / min(10.0, max(0.2, self.settings.repaint_hz)))))
        self.timer.timeout.connect(self.tick)
        self.last_tick_s = 0.0
        self.tick()

    def layout_docks(self) -> None:
        """Default dock sizes for a 1920x1080 control-room screen (scaled to the actual size); must run
        once the window is shown, Qt ignores resizeDocks before."""
        d = self.docks
        w, h = max(self.width(), 800), max(self.height(), 600)
        self.resizeDocks([d["status"], d["alarms"]], [int(0.6 * w), int(0.4 * w)], QtCore.Qt.Orientation.Horizontal)
        self.resizeDocks([d["status"]], [int(0.14 * h)], QtCore.Qt.Orientation.Vertical)
        self.resizeDocks([d["rates"], d["ecal_hcal"]], [int(0.27 * w), int(0.29 * w)], QtCore.Qt.Orientation.Horizontal)
        self.resizeDocks([d["ecal_hcal"], d["hv"]], [int(0.47 * h), int(0.37 * h)], QtCore.Qt.Orientation.Vertical)
        self.resizeDocks([d["waveforms"]], [int(0.28 * h)], QtCore.Qt.Orientation.Vertical)
        self.resizeDocks(
            [d["sensitivity"], d["waveforms"], d["log"]],
            [int(0.2 * w), int(0.27 * w), int(0.24 * w)],
            QtCore.Qt.Orientation.Horizontal,
        )
        self._docks_laid_out = True

    def showEvent(self, ev: QtGui.QShowEvent | None) -> None:
        super().showEvent(ev)
        if not self._docks_laid_out:
            self.layout_docks()

    def _dock(self, key: str, title: str, widget: QtWidgets.QWidget, area: Any) -> QtWidgets.QDockWidget:
        d = QtWidgets.QDockWidget(title, self)
        d.setObjectName(f"dock_{key}")
        d.setWidget(widget)
        d.setFeatures(QtWidgets.QDockWidget.DockWidgetMovable | QtWidgets.QDockWidget.DockWidgetFloatable)
        d.setStyleSheet("QDockWidget { font-size: 11pt; font-weight: bold; }")
        self.addDockWidget(area, d)
        self.docks[key] = d
        return d

    # ---------------------------------------------------------------------------------------------
    def tick(self, now: float | None = None) -> None:
        """Drain the inbox, update the model and the alarms, refresh every view (GUI thread only)."""
        t0 = time.perf_counter()
        now = time.time() if now is None else now
        msgs, stats = self.inbox.drain()
        self.model.apply(msgs, stats, now)
        if self.feeder is not None and self.model.mode == "replay":
            self.model.replay_finished = self.feeder.finished
        self.model.evaluate(now)
        for v in self.views:
            v.refresh(self.model, now)
        self.last_tick_s = time.perf_counter() - t0

    def start_timer(self) -> None:
        self.timer.start()

    def connect_stream(self, endpoint: str) -> StreamReceiver:
        """Subscribe to a DAQ's monitoring stream in a worker thread."""
        self.model.mode, self.model.source = "live", endpoint
        self.receiver = StreamReceiver(endpoint, self.inbox)
        self.receiver.start()
        if self.receiver.error:
            self.model.add_log(logging.ERROR, "monitor", self.receiver.error)
        else:
            self.model.add_log(logging.INFO, "monitor", f"subscribed to {endpoint}")
        return self.receiver

    def start_replay(self, run_dir: str | pathlib.Path, cfg: Config | None = None, interval_s: float = 0.5) -> Any:
        """Replay a recorded run through the same inbox and views."""
        from .replay import replay_batches
        from .stream import FeederThread

        self.model.mode, self.model.source = "replay", str(run_dir)
        self.model.add_log(logging.INFO, "monitor", f"replaying {run_dir}")
        self.feeder = FeederThread(
            replay_batches(run_dir, cfg),
            self.inbox,
            interval_s,
            name="na64-monitor-replay",
            on_error=self.inbox.put_malformed,
        )
        self.feeder.start()
        return self.feeder

    def start_synthetic(self, interval_s: float = 1.0, seed: int = 0, spills: int = 0) -> Any:
        """Feed the in-process synthetic DAQ (no socket): for demonstrations and screenshots."""
        from .stream import FeederThread
        from .synthetic import SyntheticDAQ, synthetic_batches

        self.model.mode, self.model.source = "live", "synthetic (in-process)"
        self.model.add_log(logging.INFO, "monitor", "synthetic data (no DAQ)")
        daq = SyntheticDAQ(seed=seed)
        self.feeder = FeederThread(synthetic_batches(daq, spills), self.inbox, interval_s, name="na64-monitor-synth")
        self.feeder.start()
        return self.feeder

    def stop_sources(self) -> None:
        if self.receiver is not None:
            self.receiver.close()
            self.receiver = None
        if self.feeder is not None:
            self.feeder.stop()

    def closeEvent(self, ev: QtGui.QCloseEvent | None) -> None:
        self.timer.stop()
        self.stop_sources()
        super().closeEvent(ev)

    def show_central(self, attr: str) -> None:
        """Bring the central view ``attr`` (its registry attribute, e.g. ``"tracker"``) to the front."""
        if self.tabs is not None:
            self.tabs.setCurrentWidget(getattr(self, attr))

    def screenshot(self, path: str | pathlib.Path) -> bool:
        """Bring every view up to date and write a PNG of the whole window."""
        self.tick()
        QtWidgets.QApplication.processEvents()
        return bool(self.grab().save(str(path), "PNG"))
