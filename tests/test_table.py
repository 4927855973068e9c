"""HCAL table: the driver (hv_control.table) against the emulated table (sim_frontend.emu_table) served
over a REAL pty and a REAL TCP socket; plus the model's kinematics under a fake clock."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
import serial

from detector.config import load_config
from hv_control.table import HCALTableDriver, TableBusyError, TableLimitError, TablePositionError, TableTimeoutError
from sim_frontend.emu_table import HCALTable
from sim_frontend.serial_server import LineServers, serve_line_handlers

SPEED = 1000.0  # mm/s
REPLY_TIMEOUT_S = 10.0  # a reply must arrive within this (generous on a loaded machine)


class FakeClock:
    """Model time of the table (s), advanced by the test: the table moves only when the test says so."""

    def __init__(self) -> None:
        self.t = 50.0

    def __call__(self) -> float:
        return self.t


class TableRig:
    def __init__(self, kind: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.table = HCALTable(speed_mm_per_s=SPEED, clock=clock)
        self.servers: LineServers = serve_line_handlers(
            {"table": self.table.handle}, pty=kind == "pty", tcp=kind == "tcp"
        )
        addr = self.servers.addresses()["table"]
        self.address = addr["pty"] if kind == "pty" else addr["url"]
        self.server = self.servers.servers["table"][0]
        self.faults = self.servers.faults["table"]
        self.driver = HCALTableDriver.connect(self.address, timeout_s=REPLY_TIMEOUT_S, poll_s=0.01, move_timeout_s=60.0)

    def close(self) -> None:
        self.driver.close()
        self.servers.stop()


@pytest.fixture(params=["pty", "tcp"])
def rig(request: pytest.FixtureRequest) -> Iterator[TableRig]:
    r = TableRig(request.param)
    yield r
    r.close()


@pytest.fixture
def pty_rig() -> Iterator[TableRig]:
    r = TableRig("pty")
    yield r
    r.close()


@pytest.fixture(params=["pty", "tcp"])
def frozen_rig(request: pytest.FixtureRequest) -> Iterator[tuple[TableRig, FakeClock]]:
    """A rig whose table runs on a :class:`FakeClock`: motion happens only when the test advances it."""
    clock = FakeClock()
    r = TableRig(request.param, clock)
    yield r, clock
    r.close()


# -------------------------------------------------------------------------------------------- driver + emulator
def test_move_to_cell_and_verify(rig: TableRig) -> None:
    assert rig.driver.identify().startswith("NA64-HIL,HCAL-TABLE,")
    pos = rig.driver.move_to_cell("2-1-3")
    assert (pos.x_mm, pos.y_mm, pos.module, pos.cell) == (194.0, 0.0, 3, "2-1-3")
    assert rig.table.position() == {"x_mm": 194.0, "y_mm": 0.0, "module": 3, "cell": "2-1-3", "busy": False}
    pos = rig.driver.move_to_cell("0-2-2")
    assert (pos.x_mm, pos.y_mm, pos.module, pos.cell) == (-194.0, 194.0, 2, "0-2-2")
    pos = rig.driver.home()
    assert (pos.x_mm, pos.y_mm, pos.module, pos.cell) == (0.0, 0.0, -1, "PHYSICS")


def test_busy_while_moving_and_move_refused(frozen_rig: tuple[TableRig, FakeClock]) -> None:
    rig, clock = frozen_rig
    rig.driver.move_to_cell("0-0-1", wait=False)  # 274.4 mm at 1000 mm/s: 0.2744 s of model time
    assert rig.driver.busy()
    assert rig.driver.position().cell == "NONE"
    with pytest.raises(TableBusyError):
        rig.driver.move_to_cell("2-2-1")
    clock.t += 0.5 * 274.36 / SPEED  # half way: still busy, half the travel done
    pos = rig.driver.position()
    assert rig.driver.busy() and (pos.x_mm, pos.y_mm, pos.cell) == (-97.0, -97.0, "NONE")
    clock.t += 0.5 * 274.36 / SPEED + 1e-3  # arrived
    pos = rig.driver.wait_idle(60.0)
    assert (pos.x_mm, pos.y_mm, pos.cell) == (-194.0, -194.0, "0-0-1")
    assert [(m["x_mm"], m["y_mm"], m["module"]) for m in rig.table.moves] == [(-194.0, -194.0, 1)]


def test_move_to_position_and_stop(frozen_rig: tuple[TableRig, FakeClock]) -> None:
    rig, clock = frozen_rig
    rig.driver.move_to(100.0, -200.5, 1, wait=False)
    clock.t += 10.0
    pos = rig.driver.wait_idle(60.0)
    assert (pos.x_mm, pos.y_mm, pos.module, pos.cell) == (100.0, -200.5, 1, "NONE")
    rig.driver.move_to(-400.0, 400.0, 1, wait=False)  # (-500, 600.5) mm away: 781.4 mm
    clock.t += 0.1  # 100 mm travelled when the STOP arrives
    stopped = rig.driver.stop()
    assert not rig.driver.busy()
    assert stopped.x_mm == pytest.approx(100.0 - 100.0 * 500.0 / 781.42, abs=0.1)
    assert stopped.y_mm == pytest.approx(-200.5 + 100.0 * 600.5 / 781.42, abs=0.1)
    assert stopped.cell == "NONE"
    clock.t += 10.0  # a stopped table does not move on
    assert rig.driver.position().x_mm == stopped.x_mm and not rig.driver.busy()


def test_out_of_range_is_refused(pty_rig: TableRig) -> None:
    for args in ((450.5, 0.0, 0), (0.0, -451.0, 3), (0.0, 0.0, 4), (0.0, 0.0, -1)):
        with pytest.raises(TableLimitError):
            pty_rig.driver.move_to(*args)
    for bad in ("3-0-0", "0-0-4", "a-b-c", "0-0"):
        with pytest.raises(TableLimitError):
            pty_rig.driver.move_to_cell(bad)
    assert pty_rig.table.moves == []  # the driver refused before sending
    t = pty_rig.driver.transport  # the table refuses as well
    assert t.query("MOVE POS 500.0 0.0 1").startswith("ERR OUT OF TRAVEL")
    assert t.query("MOVE CELL 9-9-9") == "ERR BAD CELL 9-9-9"
    assert t.query("MOVE POS 0 0 7") == "ERR BAD MODULE 7"
    assert t.query("JUMP") == "ERR UNKNOWN COMMAND"
    assert pty_rig.table.moves == []


def test_position_mismatch_raises(pty_rig: TableRig) -> None:
    real = pty_rig.table.handle

    def slipping_encoder(line: str) -> str:  # the table stops 10 mm short in x
        reply = real(line)
        if reply.startswith("POS "):
            parts = reply.split()
            parts[1] = f"{float(parts[1]) - 10.0:.1f}"
            parts[4] = "NONE"
            reply = " ".join(parts)
        return reply

    pty_rig.server.handler = slipping_encoder
    with pytest.raises(
        TablePositionError,
        match=r"rests at \(184.0, 194.0\) mm module 0 cell NONE, not at "
        r"\(194.0, 194.0\) mm module 0 cell 2-2-0",
    ):
        pty_rig.driver.move_to_cell("2-2-0")


def test_wait_idle_times_out(pty_rig: TableRig) -> None:
    slow = HCALTable(speed_mm_per_s=1.0)
    pty_rig.server.handler = slow.handle
    pty_rig.driver.move_to_cell("0-0-0", wait=False)
    with pytest.raises(TableTimeoutError, match=r"still moving after 0\.1 s"):
        pty_rig.driver.wait_idle(0.1)


def test_garbage_on_the_line_is_survived(rig: TableRig) -> None:
    rig.driver.close()
    raw = serial.serial_for_url(rig.address, timeout=REPLY_TIMEOUT_S)
    raw.write(b"\x00\xff\xfe garbage \x1b[2J\r\n" + b"Z" * 5000 + b"\r\n\xc3\x28MOVE\r\n")
    replies = [raw.readline() for _ in range(3)]
    assert replies == [b"ERR UNKNOWN COMMAND\r\n", b"ERR LINE TOO LONG\r\n", b"ERR UNKNOWN COMMAND\r\n"]
    raw.close()
    rig.driver.transport.open()
    rig.faults.set("noise", count=20)
    pos = rig.driver.move_to_cell("1-1-0")
    assert pos.cell == "1-1-0" and rig.driver.position().cell == "1-1-0"
    assert rig.server.stats["noise"] >= 3


def test_dropped_connection_is_survived() -> None:
    r = TableRig("tcp")
    try:
        r.faults.set("drop")
        assert r.driver.position().cell == "PHYSICS"
        assert r.driver.transport.stats["reconnects"] == 1
    finally:
        r.close()


# -------------------------------------------------------------------------------------------- model
def test_model_moves_linearly_in_time() -> None:
    clock = FakeClock()
    t = HCALTable(speed_mm_per_s=100.0, clock=clock)
    assert t.handle("MOVE CELL 2-2-3") == "OK"  # to (194, 194): 274.4 mm, 2.744 s
    clock.t += 1.0
    p = t.position()
    assert p["busy"] and p["x_mm"] == pytest.approx(70.71, abs=0.01) and p["y_mm"] == pytest.approx(70.71, abs=0.01)
    assert t.handle("BUSY?") == "BUSY 1" and t.handle("POS?") == "POS 70.7 70.7 3 NONE"
    clock.t += 1.75
    assert t.handle("BUSY?") == "BUSY 0" and t.handle("POS?") == "POS 194.0 194.0 3 2-2-3"
    assert t.handle("move   pos 0 0 1") == "OK"  # case and spacing tolerated
    clock.t += 2.75
    assert t.handle("POS?") == "POS 0.0 0.0 1 1-1-1"  # a cell centre is reported as that cell
    assert t.handle("HOME") == "OK" and t.handle("POS?") == "POS 0.0 0.0 -1 PHYSICS"


def test_model_speed_from_config_and_validation() -> None:
    assert HCALTable(load_config(None).with_overrides({"emulator": {"table_speed_mm_per_s": 250.0}})).speed == 250.0
    assert HCALTable().speed == load_config(None).emulator.table_speed_mm_per_s == 100.0
    with pytest.raises(ValueError, match="speed"):
        HCALTable(speed_mm_per_s=0.0)
