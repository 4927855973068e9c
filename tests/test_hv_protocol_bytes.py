"""Byte-exact request/reply tests of the HV protocol (hv_control.caen), the safety layer's wire traffic
(hv_control.supply) and the table driver (hv_control.table) against a scripted transport - in the style
of pymeasure's ``expected_protocol``: no emulator, every byte on the wire is spelled out."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from detector import channels as chmap
from detector.config import load_calibration, load_config
from hv_control.caen import (
    CAENMainframe,
    HVChannelError,
    HVCommandError,
    HVParameterError,
    HVReplyError,
    HVValueError,
    extract_reply,
)
from hv_control.supply import HVLimitError, HVSupply, HVTripError
from hv_control.table import HCALTableDriver, TableBusyError, TableLimitError, TablePositionError
from hv_control.transport import ScriptedTransport, TransportTimeoutError


def hv(pairs: list[tuple[bytes, bytes | None]]) -> tuple[CAENMainframe, ScriptedTransport]:
    t = ScriptedTransport(pairs)
    return CAENMainframe(t), t


# -------------------------------------------------------------------------------------------- caen
def test_set_vset_bytes() -> None:
    m, t = hv([(b"$BD:00,CMD:SET,CH:3,PAR:VSET,VAL:900.0\r\n", b"#BD:00,CMD:OK\r\n")])
    m.vset.set(0, 3, 900)
    t.assert_done()


def test_mon_vmon_bytes() -> None:
    m, t = hv([(b"$BD:00,CMD:MON,CH:3,PAR:VMON\r\n", b"#BD:00,CMD:OK,VAL:874.5\r\n")])
    assert m.vmon.get(0, 3) == 874.5
    t.assert_done()


def test_formats_of_every_settable_parameter() -> None:
    m, t = hv(
        [
            (b"$BD:07,CMD:SET,CH:17,PAR:ISET,VAL:150.25\r\n", b"#BD:07,CMD:OK\r\n"),
            (b"$BD:07,CMD:SET,CH:17,PAR:RUP,VAL:50.0\r\n", b"#BD:07,CMD:OK\r\n"),
            (b"$BD:07,CMD:SET,CH:17,PAR:RDW,VAL:25.5\r\n", b"#BD:07,CMD:OK\r\n"),
            (b"$BD:07,CMD:SET,CH:17,PAR:MAXV,VAL:1400.0\r\n", b"#BD:07,CMD:OK\r\n"),
            (b"$BD:07,CMD:SET,CH:17,PAR:TRIP,VAL:0.5\r\n", b"#BD:07,CMD:OK\r\n"),
        ]
    )
    m.iset.set(7, 17, 150.25)
    m.rup.set(7, 17, 50)
    m.rdw.set(7, 17, 25.5)
    m.maxv.set(7, 17, 1400)
    m.trip.set(7, 17, 0.5)
    t.assert_done()


def test_switches_have_no_val() -> None:
    m, t = hv(
        [
            (b"$BD:08,CMD:SET,CH:1,PAR:ON\r\n", b"#BD:08,CMD:OK\r\n"),
            (b"$BD:08,CMD:SET,CH:1,PAR:OFF\r\n", b"#BD:08,CMD:OK\r\n"),
            (b"$BD:08,CMD:SET,CH:1,PAR:CLR\r\n", b"#BD:08,CMD:OK\r\n"),
        ]
    )
    m.on(8, 1)
    m.off(8, 1)
    m.clear_trip(8, 1)
    t.assert_done()


def test_multi_channel_mon_parses_all_values() -> None:
    vals = ";".join(f"{900 + i:.1f}" for i in range(9))
    m, t = hv(
        [
            (b"$BD:02,CMD:MON,CH:9,PAR:VMON\r\n", f"#BD:02,CMD:OK,VAL:{vals}\r\n".encode()),
            (b"$BD:02,CMD:MON,CH:9,PAR:STAT\r\n", b"#BD:02,CMD:OK,VAL:1;3;5;1;1;129;1;0;1\r\n"),
        ]
    )
    assert m.vmon.get_all(2) == [900.0 + i for i in range(9)]
    stat = m.stat.get_all(2)
    assert stat[5] == 129 and CAENMainframe.status_flags(stat[5]) == {"on", "tripped"}
    t.assert_done()


def test_multi_channel_mon_with_wrong_count_is_refused() -> None:
    m, _ = hv([(b"$BD:04,CMD:MON,CH:18,PAR:VMON\r\n", b"#BD:04,CMD:OK,VAL:1.0;2.0\r\n")])
    with pytest.raises(HVReplyError, match="expected 18 values, got 2"):
        m.vmon.get_all(4)


def test_board_parameters() -> None:
    m, t = hv(
        [
            (b"$BD:08,CMD:MON,PAR:BDNAME\r\n", b"#BD:08,CMD:OK,VAL:COUNTERS\r\n"),  # board commands carry no CH
            (b"$BD:08,CMD:MON,PAR:BDNCH\r\n", b"#BD:08,CMD:OK,VAL:11\r\n"),
        ]
    )
    assert m.bdname.get(8) == "COUNTERS"
    assert m.bdnch.get(8) == 11
    t.assert_done()


@pytest.mark.parametrize(
    "reply, exc",
    [
        (b"#BD:00,CMD:ERR", HVCommandError),
        (b"#BD:00,CH:ERR", HVChannelError),
        (b"#BD:00,PAR:ERR", HVParameterError),
        (b"#BD:00,VAL:ERR", HVValueError),
        (b"#CMD:ERR", HVCommandError),
    ],
)
def test_error_replies_raise_with_the_request(reply: bytes, exc: type) -> None:
    m, _ = hv([(b"$BD:00,CMD:SET,CH:3,PAR:VSET,VAL:1999.0\r\n", reply + b"\r\n")])
    with pytest.raises(exc, match=r"\$BD:00,CMD:SET,CH:3,PAR:VSET,VAL:1999.0") as info:
        m.vset.set(0, 3, 1999)
    assert info.value.request == "$BD:00,CMD:SET,CH:3,PAR:VSET,VAL:1999.0"


def test_reply_from_wrong_board_is_refused() -> None:
    m, _ = hv([(b"$BD:01,CMD:MON,CH:0,PAR:VMON\r\n", b"#BD:02,CMD:OK,VAL:1.0\r\n")])
    with pytest.raises(HVReplyError, match="board 02, not 01"):
        m.vmon.get(1, 0)


def test_mon_reply_without_val_is_refused() -> None:
    m, _ = hv([(b"$BD:01,CMD:MON,CH:0,PAR:VMON\r\n", b"#BD:01,CMD:OK\r\n")])
    with pytest.raises(HVReplyError, match="no VAL"):
        m.vmon.get(1, 0)


def test_noise_before_the_reply_is_skipped() -> None:
    m, t = hv(
        [
            (b"$BD:00,CMD:MON,CH:3,PAR:VMON\r\n", b"\x00\xff#\x13q\r\n$$\xfe\n\x07\x8b#BD:00,CMD:OK,VAL:874.5\r\n"),
            (b"$BD:00,CMD:MON,CH:3,PAR:IMON\r\n", b"\xc3(#BD:00,CMD:OK,VAL:145.75\r\n"),
        ]
    )
    assert m.vmon.get(0, 3) == 874.5
    assert m.imon.get(0, 3) == 145.75
    assert t.stats["garbage_lines"] == 2
    t.assert_done()


def test_extract_reply_grammar() -> None:
    assert extract_reply("xx#BD:03,CMD:OK,VAL:1.0;2.0") == "#BD:03,CMD:OK,VAL:1.0;2.0"
    assert extract_reply("#BD:03,CMD:MAYBE") is None
    assert extract_reply("no marker") is None


@pytest.mark.parametrize("value", [2000.01, -0.1, math.nan, math.inf, "900"])
def test_strict_validator_sends_nothing(value: object) -> None:
    m, t = hv([])
    with pytest.raises(ValueError, match="refusing to send VSET"):
        m.vset.set(0, 3, value)  # type: ignore[arg-type]
    t.assert_done()


def test_iset_validator_is_strict_not_truncating() -> None:
    m, t = hv([])
    with pytest.raises(ValueError, match=r"outside the allowed range \[0, 1000\]"):
        m.iset.set(0, 3, 1000.5)
    t.assert_done()


def test_silence_gives_a_timeout_naming_the_request() -> None:
    m, _ = hv([(b"$BD:00,CMD:MON,CH:3,PAR:VMON\r\n", None)])
    with pytest.raises(TransportTimeoutError, match=r"no reply .* '\$BD:00,CMD:MON,CH:3,PAR:VMON'"):
        m.vmon.get(0, 3)


def test_unexpected_request_is_caught_by_the_script() -> None:
    m, _ = hv([(b"$BD:00,CMD:MON,CH:3,PAR:VMON\r\n", b"#BD:00,CMD:OK,VAL:1.0\r\n")])
    with pytest.raises(AssertionError, match="expected request"):
        m.vmon.get(0, 4)


# -------------------------------------------------------------------------------------------- supply
def _supply(pairs: list[tuple[bytes, bytes | None]], **hv_cfg: float) -> tuple[HVSupply, ScriptedTransport]:
    cfg = load_config(None).with_overrides(
        {"hv": {"ramp_step_v": 20.0, "settle_tolerance_v": 1.0, "settle_timeout_s": 1.0, **hv_cfg}}
    )
    t = ScriptedTransport(pairs)
    clock = [0.0]

    def sleep(s: float) -> None:
        clock[0] += s

    return HVSupply(CAENMainframe(t), cfg, load_calibration(cfg), sleep=sleep, clock=lambda: clock[0]), t


def _board0(values: list[float] | list[int], fmt: str = "{:.1f}") -> str:
    return ";".join(fmt.format(v) for v in values)


def test_supply_ramp_wire_traffic_is_exact() -> None:
    """HCAL-0-0-0 (board 0 ch 0) from read-back 850.0 V to 880.0 V in 20 V steps: read-back first,
    then per step SET VSET, VSET echo, VMON/STAT until settled."""
    cid = chmap.hcal_id(0, 0, 0)
    on = [1] * 9

    def mon(par: str, values: list[float] | list[int], fmt: str = "{:.1f}") -> tuple[bytes, bytes]:
        return (f"$BD:00,CMD:MON,CH:9,PAR:{par}\r\n".encode(), f"#BD:00,CMD:OK,VAL:{_board0(values, fmt)}\r\n".encode())

    ok = b"#BD:00,CMD:OK\r\n"
    pairs = [
        mon("VMON", [850.0] * 9),
        mon("STAT", on, "{:d}"),
        (b"$BD:00,CMD:SET,CH:0,PAR:VSET,VAL:870.0\r\n", ok),
        mon("VSET", [870.0] + [850.0] * 8),
        mon("VMON", [861.0] + [850.0] * 8),
        mon("STAT", [3] + [1] * 8, "{:d}"),
        mon("VMON", [869.6] + [850.0] * 8),
        mon("STAT", on, "{:d}"),
        (b"$BD:00,CMD:SET,CH:0,PAR:VSET,VAL:880.0\r\n", ok),
        mon("VSET", [880.0] + [850.0] * 8),
        mon("VMON", [880.2] + [850.0] * 8),
        mon("STAT", on, "{:d}"),
    ]
    s, t = _supply(pairs)
    assert s.set_voltage(cid, 880.0) == 880.2
    t.assert_done()


def test_supply_refuses_above_limit_without_sending_anything() -> None:
    s, t = _supply([])
    cid = chmap.hcal_id(1, 1, 2)
    assert s.limit(cid) == 1300.0
    for bad in (1300.1, 5000.0, -1.0, math.nan, math.inf, None):
        with pytest.raises(HVLimitError):
            s.set_voltage(cid, bad)  # type: ignore[arg-type]
    t.assert_done()


def test_supply_unset_limit_denies() -> None:
    cfg = load_config(None)
    cal = load_calibration(cfg)
    lim = cal.hv_limit.copy()
    lim[chmap.hcal_id(0, 0, 0)] = np.nan
    t = ScriptedTransport([])
    s = HVSupply(CAENMainframe(t), cfg, dataclasses.replace(cal, hv_limit=lim))
    with pytest.raises(HVLimitError, match="no valid HV limit"):
        s.set_voltage(chmap.hcal_id(0, 0, 0), 100.0)
    t.assert_done()


def test_supply_refuses_when_read_back_fails() -> None:
    s, t = _supply([(b"$BD:00,CMD:MON,CH:9,PAR:VMON\r\n", None)])
    with pytest.raises(Exception, match=r"cannot read back .* refusing to set"):
        s.set_voltage(chmap.hcal_id(0, 0, 0), 860.0)
    t.assert_done()  # the only exchange was the read-back: no SET went out


def test_supply_refuses_a_tripped_channel_before_sending() -> None:
    stat = [1] * 9
    stat[4] = 128
    s, t = _supply(
        [
            (b"$BD:00,CMD:MON,CH:9,PAR:VMON\r\n", f"#BD:00,CMD:OK,VAL:{_board0([850.0] * 9)}\r\n".encode()),
            (b"$BD:00,CMD:MON,CH:9,PAR:STAT\r\n", f"#BD:00,CMD:OK,VAL:{_board0(stat, '{:d}')}\r\n".encode()),
        ]
    )
    with pytest.raises(HVTripError, match="HCAL-1-1-0") as info:
        s.set_voltage(chmap.hcal_id(1, 1, 0), 860.0)
    assert info.value.channel_ids == [chmap.hcal_id(1, 1, 0)]
    t.assert_done()


def test_supply_quantises_down_at_the_limit_never_up() -> None:
    cfg = load_config(None)
    cal = load_calibration(cfg)
    cid = chmap.hcal_id(0, 0, 0)
    lim = cal.hv_limit.copy()
    lim[cid] = 1299.96  # "%.1f" of 1299.96 is 1300.0, above the limit
    s = HVSupply(CAENMainframe(ScriptedTransport([])), cfg, dataclasses.replace(cal, hv_limit=lim))
    assert s.check_voltage(cid, 1299.96) == 1299.9
    assert s.check_voltage(cid, 899.96) == 900.0
    with pytest.raises(HVLimitError):
        s.check_voltage(cid, 1299.97)


# -------------------------------------------------------------------------------------------- table
def table(pairs: list[tuple[bytes, bytes | None]]) -> tuple[HCALTableDriver, ScriptedTransport]:
    t = ScriptedTransport(pairs)
    return HCALTableDriver(t, poll_s=0.0, sleep=lambda s: None), t


def test_table_move_to_cell_bytes() -> None:
    d, t = table(
        [
            (b"MOVE CELL 2-1-3\r\n", b"OK\r\n"),
            (b"BUSY?\r\n", b"BUSY 1\r\n"),
            (b"BUSY?\r\n", b"BUSY 0\r\n"),
            (b"POS?\r\n", b"POS 194.0 0.0 3 2-1-3\r\n"),
        ]
    )
    pos = d.move_to_cell(" 2-1-3 ")
    assert (pos.x_mm, pos.y_mm, pos.module, pos.cell) == (194.0, 0.0, 3, "2-1-3")
    t.assert_done()


def test_table_move_pos_home_stop_idn_bytes() -> None:
    d, t = table(
        [
            (b"MOVE POS 100.0 -200.5 1\r\n", b"OK\r\n"),
            (b"BUSY?\r\n", b"BUSY 0\r\n"),
            (b"POS?\r\n", b"POS 100.0 -200.5 1 NONE\r\n"),
            (b"HOME\r\n", b"OK\r\n"),
            (b"BUSY?\r\n", b"BUSY 0\r\n"),
            (b"POS?\r\n", b"POS 0.0 0.0 -1 PHYSICS\r\n"),
            (b"STOP\r\n", b"OK\r\n"),
            (b"POS?\r\n", b"POS 0.0 0.0 -1 PHYSICS\r\n"),
            (b"*IDN?\r\n", b"NA64-HIL,HCAL-TABLE,EMU-TABLE-0001,0.1\r\n"),
        ]
    )
    assert d.move_to(100.0, -200.5, 1).cell == "NONE"
    assert d.home().module == -1
    assert d.stop().cell == "PHYSICS"
    assert d.identify().startswith("NA64-HIL,HCAL-TABLE")
    t.assert_done()


def test_table_position_mismatch_raises() -> None:
    d, _ = table(
        [
            (b"MOVE CELL 0-0-0\r\n", b"OK\r\n"),
            (b"BUSY?\r\n", b"BUSY 0\r\n"),
            (b"POS?\r\n", b"POS -190.0 -194.0 0 NONE\r\n"),
        ]
    )
    with pytest.raises(TablePositionError, match=r"rests at \(-190.0, -194.0\)"):
        d.move_to_cell("0-0-0")


def test_table_busy_and_limits() -> None:
    d, t = table([(b"MOVE CELL 1-1-1\r\n", b"ERR BUSY\r\n")])
    with pytest.raises(TableBusyError):
        d.move_to_cell("1-1-1")
    for args in ((450.1, 0.0, 0), (0.0, -1e9, 0), (0.0, 0.0, 4), (math.nan, 0.0, 1)):
        with pytest.raises(TableLimitError):
            d.move_to(*args)  # type: ignore[arg-type]
    with pytest.raises(TableLimitError):
        d.move_to_cell("3-0-0")
    t.assert_done()


def test_table_noise_before_reply() -> None:
    d, t = table([(b"POS?\r\n", b"\x00\x9f\r\n\xffPOS 194.0 194.0 2 2-2-2\r\n")])
    assert d.position().cell == "2-2-2"
    t.assert_done()
