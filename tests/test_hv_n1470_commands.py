"""The emulated mainframe speaks the CAEN N1470/DT1470 serial command set (docs/protocols.md section 2):
every MON and SET parameter, the board commands, the error replies and the meaning of the status bits.
Byte level: a stock pyserial client on a REAL pty, every request and reply spelled out; the model runs
under a fake clock so that ramps, trips and the OVV/UNV window are exact."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import serial
from test_emu_hv import FakeClock

from detector import channels as chmap
from detector.config import load_calibration, load_config
from detector.hwstatus import HVStatus
from hv_control.caen import CAENMainframe, HVLocalError
from hv_control.transport import SerialTransport
from sim_frontend.emu_hv import KILL_DISCHARGE_V_PER_S, HVMainframe
from sim_frontend.serial_server import PtyLineServer

CFG = load_config(None)
CAL = load_calibration(CFG)
REPLY_TIMEOUT_S = 30.0
CID = chmap.hcal_id(0, 0, 0)  # board 0 ch 0, 850 V


class Line:
    """A pty served by the emulator, and a stock pyserial client on it."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.emu = HVMainframe(CFG, CAL, rup_v_per_s=50.0, rdw_v_per_s=25.0, clock=self.clock)
        self.server = PtyLineServer(self.emu.handle).start()
        self.port = serial.serial_for_url(self.server.device, timeout=REPLY_TIMEOUT_S)

    def __call__(self, request: bytes) -> bytes:
        """Send one request line (CR LF appended) and return the reply line, CR LF included."""
        self.port.write(request + b"\r\n")
        return self.port.readline()

    def close(self) -> None:
        self.port.close()
        self.server.stop()


@pytest.fixture
def line() -> Iterator[Line]:
    ln = Line()
    yield ln
    ln.close()


def stat(line: Line, board: int = 0, ch: int = 0) -> HVStatus:
    reply = line(f"$BD:{board:02d},CMD:MON,CH:{ch},PAR:STAT".encode())
    assert reply.startswith(f"#BD:{board:02d},CMD:OK,VAL:".encode()), reply
    return HVStatus(int(reply[reply.rindex(b":") + 1 :]))


# ------------------------------------------------------------------------------------ channel MON
@pytest.mark.parametrize(
    "par, val",
    [
        (b"VSET", b"850.0"),
        (b"VMIN", b"0.0"),
        (b"VMAX", b"2000.0"),
        (b"VDEC", b"1"),
        (b"VMON", b"850.0"),
        (b"ISET", b"500.00"),
        (b"IMIN", b"0.00"),
        (b"IMAX", b"1000.00"),
        (b"ISDEC", b"2"),
        (b"IMON", b"142.17"),  # 850 V / 6 MOhm + 0.5 uA
        (b"IMRANGE", b"HIGH"),
        (b"IMDEC", b"2"),
        (b"MAXV", b"2000.0"),
        (b"MVMIN", b"0.0"),
        (b"MVMAX", b"2000.0"),
        (b"MVDEC", b"1"),
        (b"RUP", b"50.0"),
        (b"RUPMIN", b"1.0"),
        (b"RUPMAX", b"500.0"),
        (b"RUPDEC", b"1"),
        (b"RDW", b"25.0"),
        (b"RDWMIN", b"1.0"),
        (b"RDWMAX", b"500.0"),
        (b"RDWDEC", b"1"),
        (b"TRIP", b"1.0"),
        (b"TRIPMIN", b"0.0"),
        (b"TRIPMAX", b"1000.0"),
        (b"TRIPDEC", b"1"),
        (b"PDWN", b"RAMP"),
        (b"POL", b"+"),
        (b"STAT", b"1"),
    ],
)
def test_every_channel_mon_parameter(line: Line, par: bytes, val: bytes) -> None:
    assert line(b"$BD:00,CMD:MON,CH:0,PAR:" + par) == b"#BD:00,CMD:OK,VAL:" + val + b"\r\n"


def test_mon_of_all_channels_and_the_driver_reads_the_ranges(line: Line) -> None:
    assert line(b"$BD:08,CMD:MON,CH:11,PAR:RUPMAX") == b"#BD:08,CMD:OK,VAL:" + b";".join([b"500.0"] * 11) + b"\r\n"
    hv = CAENMainframe(SerialTransport(line.server.device, timeout_s=REPLY_TIMEOUT_S))
    try:
        assert hv.mvmax.get_all(4) == [2000.0] * 18
        assert (hv.imin.get(2, 3), hv.imax.get(2, 3), hv.tripmax.get(2, 3), hv.isdec.get(2, 3)) == (
            0.0,
            1000.0,
            1000.0,
            2,
        )
        assert hv.pdwn.get(0, 0) == "RAMP" and hv.pol.get(0, 0) == "+" and hv.imrange.get(0, 0) == "HIGH"
    finally:
        hv.transport.close()


# ------------------------------------------------------------------------------------ channel SET
@pytest.mark.parametrize(
    "par, val, mon",
    [
        (b"VSET", b"900.0", b"900.0"),
        (b"ISET", b"250.5", b"250.50"),
        (b"MAXV", b"1300", b"1300.0"),
        (b"RUP", b"120", b"120.0"),
        (b"RDW", b"80.5", b"80.5"),
        (b"TRIP", b"2.5", b"2.5"),
        (b"PDWN", b"KILL", b"KILL"),
        (b"IMRANGE", b"LOW", b"LOW"),
    ],
)
def test_every_channel_set_parameter_and_its_echo(line: Line, par: bytes, val: bytes, mon: bytes) -> None:
    assert line(b"$BD:01,CMD:SET,CH:4,PAR:" + par + b",VAL:" + val) == b"#BD:01,CMD:OK\r\n"
    assert line(b"$BD:01,CMD:MON,CH:4,PAR:" + par) == b"#BD:01,CMD:OK,VAL:" + mon + b"\r\n"


@pytest.mark.parametrize(
    "request_, reason",
    [
        (b"$BD:00,CMD:SET,CH:0,PAR:PDWN,VAL:SLOW", "PDWN is RAMP or KILL"),
        (b"$BD:00,CMD:SET,CH:0,PAR:IMRANGE,VAL:MID", "IMRANGE is HIGH or LOW"),
        (b"$BD:00,CMD:SET,CH:0,PAR:RUP,VAL:501", "above RUPMAX"),
        (b"$BD:00,CMD:SET,CH:0,PAR:RDW,VAL:0.5", "below RDWMIN"),
        (b"$BD:00,CMD:SET,CH:0,PAR:TRIP,VAL:1000.1", "above TRIPMAX"),
        (b"$BD:00,CMD:SET,CH:0,PAR:ISET,VAL:-1", "below IMIN"),
        (b"$BD:00,CMD:SET,CH:0,PAR:MAXV,VAL:2000.1", "above MVMAX"),
        (b"$BD:00,CMD:SET,CH:0,PAR:VSET,VAL:2000.1", "above MAXV"),
        (b"$BD:00,CMD:SET,CH:0,PAR:VSET", "no VAL"),
        (b"$BD:00,CMD:SET,CH:0,PAR:ON,VAL:1", "a switch takes no VAL"),
        (b"$BD:00,CMD:SET,PAR:BDILKM,VAL:AJAR", "BDILKM is OPEN or CLOSED"),
    ],
)
def test_val_err(line: Line, request_: bytes, reason: str) -> None:
    assert line(request_) == b"#BD:00,VAL:ERR\r\n", reason


@pytest.mark.parametrize(
    "request_, reply",
    [
        (b"$BD:00,CMD:MON,CH:0,PAR:VXYZ", b"#BD:00,PAR:ERR"),  # unknown parameter
        (b"$BD:00,CMD:SET,CH:0,PAR:VMON,VAL:1", b"#BD:00,PAR:ERR"),  # read-only
        (b"$BD:00,CMD:SET,CH:0,PAR:RUPMAX,VAL:1", b"#BD:00,PAR:ERR"),  # a range is read-only
        (b"$BD:00,CMD:SET,PAR:BDNAME,VAL:X", b"#BD:00,PAR:ERR"),
        (b"$BD:00,CMD:MON,CH:10,PAR:VMON", b"#BD:00,CH:ERR"),  # board 0 has 9 channels
        (b"$BD:00,CMD:MON,PAR:VMON", b"#BD:00,CH:ERR"),  # a channel parameter needs CH
        (b"$BD:00,CMD:SET,CH:9,PAR:VSET,VAL:900", b"#BD:00,CH:ERR"),  # CH:n is MON only
        (b"$BD:00,CMD:PUT,CH:0,PAR:VMON", b"#BD:00,CMD:ERR"),
        (b"$BD:09,CMD:MON,PAR:BDNAME", b"#BD:09,CMD:ERR"),  # no such board
        (b"BD:00,CMD:MON,CH:0,PAR:VMON", b"#CMD:ERR"),  # no '$'
    ],
)
def test_cmd_ch_par_errors(line: Line, request_: bytes, reply: bytes) -> None:
    assert line(request_) == reply + b"\r\n"


# ------------------------------------------------------------------------------------ board commands
@pytest.mark.parametrize(
    "par, val",
    [
        (b"BDNAME", b"HCAL2"),
        (b"BDNCH", b"9"),
        (b"BDFREL", b"1.00"),
        (b"BDSNUM", b"EMU-HV-02"),
        (b"BDILK", b"NO"),
        (b"BDILKM", b"CLOSED"),
        (b"BDCTR", b"REMOTE"),
        (b"BDTERM", b"OFF"),
        (b"BDALARM", b"0"),
    ],
)
def test_every_board_mon_parameter_without_ch(line: Line, par: bytes, val: bytes) -> None:
    assert line(b"$BD:02,CMD:MON,PAR:" + par) == b"#BD:02,CMD:OK,VAL:" + val + b"\r\n"


def test_local_control_refuses_every_set_with_loc_err(line: Line) -> None:
    line.emu.set_control(5, "LOCAL")
    assert line(b"$BD:05,CMD:MON,PAR:BDCTR") == b"#BD:05,CMD:OK,VAL:LOCAL\r\n"
    for req in (b"$BD:05,CMD:SET,CH:3,PAR:VSET,VAL:900.0", b"$BD:05,CMD:SET,CH:3,PAR:OFF", b"$BD:05,CMD:SET,PAR:BDCLR"):
        assert line(req) == b"#BD:05,LOC:ERR\r\n"
    assert line(b"$BD:05,CMD:MON,CH:3,PAR:VSET").startswith(b"#BD:05,CMD:OK,VAL:")  # MON still answers
    hv = CAENMainframe(SerialTransport(line.server.device, timeout_s=REPLY_TIMEOUT_S))
    try:
        with pytest.raises(HVLocalError, match="LOCAL"):
            hv.vset.set(5, 3, 900.0)
    finally:
        hv.transport.close()
    line.emu.set_control(5, "REMOTE")
    assert line(b"$BD:05,CMD:SET,CH:3,PAR:VSET,VAL:900.0") == b"#BD:05,CMD:OK\r\n"


def test_interlock_mode_input_alarm_and_bdclr(line: Line) -> None:
    assert line(b"$BD:00,CMD:SET,PAR:BDILKM,VAL:OPEN") == b"#BD:00,CMD:OK\r\n"  # acts on an OPEN input: now
    assert line(b"$BD:00,CMD:MON,PAR:BDILK") == b"#BD:00,CMD:OK,VAL:YES\r\n"
    assert stat(line, 0, 4) == HVStatus.RDW | HVStatus.ILK  # switched off, discharging fast
    assert line(b"$BD:00,CMD:MON,PAR:BDALARM") == f"#BD:00,CMD:OK,VAL:{0b1111 | 0b11111 << 16}\r\n".encode()
    assert line(b"$BD:00,CMD:SET,CH:4,PAR:ON") == b"#BD:00,VAL:ERR\r\n"  # refused while interlocked
    line.emu.set_interlock_input(0, closed=True)  # the input closes: the interlock releases
    assert line(b"$BD:00,CMD:MON,PAR:BDILK") == b"#BD:00,CMD:OK,VAL:NO\r\n"
    line.clock.advance(1.0)
    assert stat(line, 0, 4) == HVStatus.ILK  # latched until BDCLR
    assert line(b"$BD:00,CMD:SET,PAR:BDCLR") == b"#BD:00,CMD:OK\r\n"
    assert stat(line, 0, 4) == 0 and line(b"$BD:00,CMD:MON,PAR:BDALARM") == b"#BD:00,CMD:OK,VAL:0\r\n"
    assert line(b"$BD:00,CMD:SET,CH:4,PAR:ON") == b"#BD:00,CMD:OK\r\n"
    assert CAENMainframe.alarm_flags(0b1001 | 1 << 17 | 1 << 4) == {"CH0", "CH3", "CH5", "PWFAIL"}


def test_kill_input_switches_the_board_off_at_once(line: Line) -> None:
    line.emu.kill(1)
    line.clock.advance(0.25)
    assert (
        line(b"$BD:01,CMD:MON,CH:0,PAR:VMON")
        == f"#BD:01,CMD:OK,VAL:{850.0 - 0.25 * KILL_DISCHARGE_V_PER_S:.1f}\r\n".encode()
    )
    assert stat(line, 1, 0) == HVStatus.RDW | HVStatus.KILL
    assert line(b"$BD:01,CMD:SET,CH:0,PAR:ON") == b"#BD:01,VAL:ERR\r\n"
    assert line(b"$BD:01,CMD:MON,PAR:BDALARM") == f"#BD:01,CMD:OK,VAL:{0b1111 | 0b11111 << 16}\r\n".encode()
    assert line(b"$BD:01,CMD:SET,PAR:BDCLR") == b"#BD:01,CMD:OK\r\n"
    assert line(b"$BD:01,CMD:SET,CH:0,PAR:ON") == b"#BD:01,CMD:OK\r\n"


# ------------------------------------------------------------------------------------ status bits
def test_rup_rdw_while_ramping_at_the_programmed_rates(line: Line) -> None:
    assert line(b"$BD:00,CMD:SET,CH:0,PAR:RUP,VAL:100") == b"#BD:00,CMD:OK\r\n"
    assert line(b"$BD:00,CMD:SET,CH:0,PAR:VSET,VAL:1000.0") == b"#BD:00,CMD:OK\r\n"
    line.clock.advance(1.0)
    assert line(b"$BD:00,CMD:MON,CH:0,PAR:VMON") == b"#BD:00,CMD:OK,VAL:950.0\r\n"  # 100 V/s
    assert stat(line) == HVStatus.ON | HVStatus.RUP
    line.clock.advance(0.5)
    assert stat(line) == HVStatus.ON
    assert line(b"$BD:00,CMD:SET,CH:0,PAR:RDW,VAL:40") == b"#BD:00,CMD:OK\r\n"
    assert line(b"$BD:00,CMD:SET,CH:0,PAR:VSET,VAL:900.0") == b"#BD:00,CMD:OK\r\n"
    line.clock.advance(2.0)
    assert line(b"$BD:00,CMD:MON,CH:0,PAR:VMON") == b"#BD:00,CMD:OK,VAL:920.0\r\n"  # 40 V/s
    assert stat(line) == HVStatus.ON | HVStatus.RDW


def test_pdwn_ramp_or_kill_decides_how_off_discharges(line: Line) -> None:
    assert line(b"$BD:00,CMD:SET,CH:0,PAR:OFF") == b"#BD:00,CMD:OK\r\n"  # PDWN RAMP: at RDW 25 V/s
    assert line(b"$BD:00,CMD:SET,CH:1,PAR:PDWN,VAL:KILL") == b"#BD:00,CMD:OK\r\n"
    assert line(b"$BD:00,CMD:SET,CH:1,PAR:OFF") == b"#BD:00,CMD:OK\r\n"
    line.clock.advance(0.2)
    assert line(b"$BD:00,CMD:MON,CH:0,PAR:VMON") == b"#BD:00,CMD:OK,VAL:845.0\r\n"
    assert (
        line(b"$BD:00,CMD:MON,CH:1,PAR:VMON")
        == f"#BD:00,CMD:OK,VAL:{850 - 0.2 * KILL_DISCHARGE_V_PER_S:.1f}\r\n".encode()
    )


def test_ovc_then_trip_after_trip_seconds(line: Line) -> None:
    assert line(b"$BD:00,CMD:SET,CH:0,PAR:TRIP,VAL:0.5") == b"#BD:00,CMD:OK\r\n"
    assert line(b"$BD:00,CMD:SET,CH:0,PAR:ISET,VAL:100") == b"#BD:00,CMD:OK\r\n"  # 142 uA flow: OVC now
    assert stat(line) == HVStatus.ON | HVStatus.OVC
    line.clock.advance(0.49)
    assert stat(line) == HVStatus.ON | HVStatus.OVC
    line.clock.advance(0.02)
    assert stat(line) == HVStatus.TRIP | HVStatus.RDW  # off, discharging
    assert line(b"$BD:00,CMD:MON,PAR:BDALARM") == b"#BD:00,CMD:OK,VAL:1\r\n"  # channel 0 in alarm


def test_ovv_unv_outside_the_2_5_volt_window_once_settled(line: Line) -> None:
    line.emu.set_regulation_error(CID, 2.4)
    assert stat(line) == HVStatus.ON  # inside +/- 2.5 V
    line.emu.set_regulation_error(CID, 2.6)
    assert stat(line) == HVStatus.ON | HVStatus.OVV
    assert line(b"$BD:00,CMD:MON,CH:0,PAR:VMON") == b"#BD:00,CMD:OK,VAL:852.6\r\n"
    line.emu.set_regulation_error(CID, -2.6)
    assert stat(line) == HVStatus.ON | HVStatus.UNV
    line(b"$BD:00,CMD:SET,CH:0,PAR:VSET,VAL:950.0")
    line.clock.advance(0.5)
    assert stat(line) == HVStatus.ON | HVStatus.RUP  # no UNV while ramping
    line.clock.advance(2.0)
    assert stat(line) == HVStatus.ON | HVStatus.UNV


def test_maxv_below_vset_limits_the_output(line: Line) -> None:
    assert line(b"$BD:00,CMD:SET,CH:0,PAR:MAXV,VAL:800") == b"#BD:00,CMD:OK\r\n"
    line.clock.advance(4.0)  # down to 800 V at RDW 25 V/s
    assert line(b"$BD:00,CMD:MON,CH:0,PAR:VMON") == b"#BD:00,CMD:OK,VAL:800.0\r\n"
    assert stat(line) == HVStatus.ON | HVStatus.MAXV | HVStatus.UNV
    assert line(b"$BD:00,CMD:SET,CH:0,PAR:VSET,VAL:800.1") == b"#BD:00,VAL:ERR\r\n"


def test_dis_and_nocal(line: Line) -> None:
    line.emu.set_enabled(CID, False)
    assert stat(line) & HVStatus.DIS and not stat(line) & HVStatus.ON
    assert line(b"$BD:00,CMD:SET,CH:0,PAR:ON") == b"#BD:00,VAL:ERR\r\n"
    line.emu.set_enabled(CID, True)
    assert line(b"$BD:00,CMD:SET,CH:0,PAR:ON") == b"#BD:00,CMD:OK\r\n"
    line.emu.set_calibration_error(CID)
    assert stat(line) & HVStatus.NOCAL
    assert CAENMainframe.status_flags(int(stat(line))) >= {"on", "no_calibration"}


def test_imon_low_range_has_three_decimals_and_saturates(line: Line) -> None:
    assert line(b"$BD:00,CMD:SET,CH:0,PAR:IMRANGE,VAL:LOW") == b"#BD:00,CMD:OK\r\n"
    assert line(b"$BD:00,CMD:MON,CH:0,PAR:IMDEC") == b"#BD:00,CMD:OK,VAL:3\r\n"
    assert line(b"$BD:00,CMD:MON,CH:0,PAR:IMON") == b"#BD:00,CMD:OK,VAL:100.000\r\n"  # 142 uA: full scale
    line(b"$BD:00,CMD:SET,CH:0,PAR:VSET,VAL:500.0")
    line.clock.advance(20.0)
    assert line(b"$BD:00,CMD:MON,CH:0,PAR:IMON") == b"#BD:00,CMD:OK,VAL:83.833\r\n"  # 500/6 + 0.5
