"""The DAQ's HV read-back thread: reads the supplies back (never sets them), publishes the ``hv`` topic
and keeps the latest reading for the run record.

The HV line has one owner (docs/protocols.md section 2). When another tool (hv-tune) owns it, the
read-back does not share the line: it reports "HV line owned by another tool", keeps no connection
and tries again at the next period."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import numpy as np

from detector.config import Calibration, Config

from .publisher import Publisher

log = logging.getLogger("online.daq")

HV_PERIOD_S = 5.0  #: hv topic period between spills


class HVReader(threading.Thread):
    """Reads the HV back (never sets it) every :data:`HV_PERIOD_S` and when poked at the end of a spill;
    publishes ``hv`` and keeps the latest reading for the run record. A failing supply is retried."""

    def __init__(self, cfg: Config, calibration: Calibration, address: str, publisher: Publisher | None) -> None:
        super().__init__(name="hv-reader", daemon=True)
        self.cfg, self.calibration, self.address, self.publisher = cfg, calibration, address, publisher
        self._stop_evt = threading.Event()
        self._poke = threading.Event()
        self._lock = threading.Lock()
        self._latest: dict[str, Any] | None = None
        self.supply: Any = None
        self.errors = 0
        self.line_owned: str | None = None  #: why the line is not ours, while another tool owns it

    def poke(self) -> None:
        self._poke.set()

    def snapshot(self) -> dict[str, Any] | None:
        with self._lock:
            return self._latest

    def _read(self) -> None:
        from hv_control.supply import HVSupply

        if self.supply is None:
            self.supply = HVSupply.connect(self.address, self.cfg, self.calibration)
        r = self.supply.read_all()
        now = time.time()
        snap = {
            "unix": now,
            "channel_ids": r["channel_ids"].tolist(),
            "vset": np.round(r["vset"], 1).tolist(),
            "vmon": np.round(r["vmon"], 1).tolist(),
            "imon": np.round(r["imon"], 2).tolist(),
            "status": r["status"].astype(int).tolist(),
        }
        with self._lock:
            self._latest = snap
        if self.publisher is not None:
            self.publisher.publish(
                "hv",
                arrays={
                    "vset": r["vset"].astype(np.float32),
                    "vmon": r["vmon"].astype(np.float32),
                    "imon": r["imon"].astype(np.float32),
                    "status": r["status"].astype(np.int32),
                    "channel_ids": r["channel_ids"].astype(np.int64),
                },
                meta={"unix": now},
            )

    def run(self) -> None:
        from hv_control.transport import LineOwnedError

        while not self._stop_evt.is_set():
            try:
                self._read()
                if self.line_owned is not None:
                    log.info("HV line %s is ours again; HV read-back resumed", self.address)
                    self.line_owned = None
            except Exception as exc:  # noqa: BLE001 - HV problems never stop the DAQ; they are logged
                owned = exc if isinstance(exc, LineOwnedError) else exc.__cause__
                if isinstance(owned, LineOwnedError):  # never share the line: report, leave it to its owner
                    self._close_supply()
                    if self.line_owned is None:
                        log.warning("HV line owned by another tool: HV read-back paused (%s)", owned)
                    self.line_owned = str(owned)
                    self._poke.wait(HV_PERIOD_S)
                    self._poke.clear()
                    continue
                self.errors += 1
                if self.errors in (1, 10) or self.errors % 100 == 0:
                    log.warning("HV read-back from %s failed (%d times): %s", self.address, self.errors, exc)
                self._close_supply()
            self._poke.wait(HV_PERIOD_S)
            self._poke.clear()

    def _close_supply(self) -> None:
        if self.supply is not None:
            try:
                self.supply.close()
            except Exception:  # noqa: BLE001 - closing a broken connection must not raise
                pass
            self.supply = None

    def stop(self) -> None:
        self._stop_evt.set()
        self._poke.set()
        self.join(timeout=5)
        self._close_supply()
