"""HVSupply.configure: MAXV, RUP/RDW, ISET and TRIP programmed from the configuration and verified by
read-back; a value outside the range the hardware reports is refused before anything is sent (never
clamped). hv.min_v is enforced by the supply layer. Byte-exact against a scripted line, and against
the emulator over a real pty."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import pytest

from detector import channels as chmap
from detector.config import Config, ConfigError, load_calibration, load_config, validate
from hv_control.caen import CAENMainframe
from hv_control.supply import SETTINGS, HVLimitError, HVReadbackError, HVSupply
from hv_control.transport import ScriptedTransport
from sim_frontend.emu_hv import HVMainframe
from sim_frontend.serial_server import PtyLineServer

CFG = load_config(None).with_overrides(
    {"hv": {"ramp_up_v_per_s": 120.0, "ramp_down_v_per_s": 80.0, "max_current_ua": 300.0, "trip_s": 2.5}}
)
CAL = load_calibration(CFG)
CID = chmap.hcal_id(0, 0, 0)  # board 0 ch 0, limit 1300 V
OK0 = b"#BD:00,CMD:OK\r\n"


def mon9(par: str, value: str) -> tuple[bytes, bytes]:
    return (f"$BD:00,CMD:MON,CH:9,PAR:{par}\r\n".encode(), f"#BD:00,CMD:OK,VAL:{';'.join([value] * 9)}\r\n".encode())


RANGES = [
    mon9("RUPMIN", "1.0"),
    mon9("RUPMAX", "500.0"),
    mon9("RDWMIN", "1.0"),
    mon9("RDWMAX", "500.0"),
    mon9("IMIN", "0.00"),
    mon9("IMAX", "1000.00"),
    mon9("TRIPMIN", "0.0"),
    mon9("TRIPMAX", "1000.0"),
    mon9("MVMIN", "0.0"),
    mon9("MVMAX", "2000.0"),
]


def scripted(pairs: Sequence[tuple[bytes, bytes | None]], cfg: Config = CFG) -> tuple[HVSupply, ScriptedTransport]:
    t = ScriptedTransport(pairs)
    return HVSupply(CAENMainframe(t), cfg, load_calibration(cfg)), t


def test_configure_wire_traffic_is_exact() -> None:
    """Ranges first (one MON per board and parameter), then the five SETs, then the read-back."""
    s, t = scripted(
        RANGES
        + [
            (b"$BD:00,CMD:SET,CH:0,PAR:RUP,VAL:120.0\r\n", OK0),
            (b"$BD:00,CMD:SET,CH:0,PAR:RDW,VAL:80.0\r\n", OK0),
            (b"$BD:00,CMD:SET,CH:0,PAR:ISET,VAL:300.00\r\n", OK0),
            (b"$BD:00,CMD:SET,CH:0,PAR:TRIP,VAL:2.5\r\n", OK0),
            (b"$BD:00,CMD:SET,CH:0,PAR:MAXV,VAL:1300.0\r\n", OK0),
            mon9("RUP", "120.0"),
            mon9("RDW", "80.0"),
            mon9("ISET", "300.00"),
            mon9("TRIP", "2.5"),
            mon9("MAXV", "1300.0"),
        ]
    )
    assert s.configure([CID]) == {CID: {"rup": 120.0, "rdw": 80.0, "iset": 300.0, "trip": 2.5, "maxv": 1300.0}}
    t.assert_done()


@pytest.mark.parametrize(
    "par, value, message",
    [
        ("RUPMAX", "100.0", r"hv.ramp_up_v_per_s = 120 V/s is outside the hardware range of RUP \[1, 100\] V/s"),
        ("RDWMIN", "90.0", r"hv.ramp_down_v_per_s = 80 V/s is outside the hardware range of RDW \[90, 500\]"),
        ("IMAX", "200.00", r"hv.max_current_ua = 300 uA is outside the hardware range of ISET \[0, 200\] uA"),
        ("TRIPMAX", "2.0", r"hv.trip_s = 2.5 s is outside the hardware range of TRIP \[0, 2\] s"),
        ("MVMAX", "1200.0", r"HCAL-0-0-0: the limit .* = 1300 V is outside the hardware range of MAXV \[0, 1200\] V"),
    ],
)
def test_a_value_outside_the_hardware_range_is_refused_and_nothing_is_sent(par: str, value: str, message: str) -> None:
    ranges = [
        mon9(par, value) if p.startswith(f"$BD:00,CMD:MON,CH:9,PAR:{par}\r".encode()) else (p, r) for p, r in RANGES
    ]
    s, t = scripted(ranges)
    with pytest.raises(HVLimitError, match=r"refusing to configure the HV, nothing sent: .*" + message):
        s.configure([CID])
    t.assert_done()  # only the range read-outs went out: no SET


def test_trip_s_is_a_config_key_with_a_range() -> None:
    assert validate({"hv": {"trip_s": 2.5}}).hv.trip_s == 2.5 and validate({}).hv.trip_s == 1.0
    with pytest.raises(ConfigError, match="trip_s"):
        validate({"hv": {"trip_s": 1000.5}})
    assert [st.key for st in SETTINGS.values()][:4] == [
        "hv.ramp_up_v_per_s",
        "hv.ramp_down_v_per_s",
        "hv.max_current_ua",
        "hv.trip_s",
    ]


# ------------------------------------------------------------------------------------ against the emulator
class Pty:
    def __init__(self) -> None:
        self.emu = HVMainframe(CFG, CAL, rup_v_per_s=500.0, rdw_v_per_s=500.0)
        self.server = PtyLineServer(self.emu.handle).start()
        self.supply = HVSupply.connect(self.server.device, CFG, CAL, poll_s=0.01)

    def close(self) -> None:
        self.supply.close()
        self.server.stop()


@pytest.fixture
def pty() -> Iterator[Pty]:
    p = Pty()
    yield p
    p.close()


def test_configure_programs_every_channel_of_the_emulator(pty: Pty) -> None:
    sent = pty.supply.configure()
    ids = pty.supply.channel_ids.tolist()
    assert sorted(sent) == ids
    chans = {c["channel_id"]: c for c in pty.emu.state()["channels"]}
    for c in ids:
        assert (chans[c]["rup"], chans[c]["rdw"], chans[c]["iset"], chans[c]["trip_s"]) == (120.0, 80.0, 300.0, 2.5)
        assert chans[c]["maxv"] == pty.supply.limit(c) <= CFG.hv.max_v
    log = pty.emu.set_log()
    assert all(e["accepted"] for e in log)
    for par in ("RUP", "RDW", "ISET", "TRIP", "MAXV"):
        assert sorted(e["channel_id"] for e in log if e["par"] == par) == ids, par
    # MAXV is now enforced by the hardware itself
    assert pty.emu.handle("$BD:00,CMD:SET,CH:0,PAR:VSET,VAL:1300.1") == "#BD:00,VAL:ERR"


def test_a_wrong_read_back_is_an_error(pty: Pty) -> None:
    real = pty.emu.handle

    def ignores_trip(line: str) -> str:  # a mainframe that acknowledges TRIP but does not apply it
        return "#BD:00,CMD:OK" if ",PAR:TRIP,VAL:" in line else real(line)

    pty.server.handler = ignores_trip
    with pytest.raises(HVReadbackError, match=r"HCAL-0-0-0: TRIP echo 1 s differs from 2.5 s sent"):
        pty.supply.configure([CID])


# ------------------------------------------------------------------------------------ hv.min_v
def test_min_v_refuses_operating_set_points_below_it_and_sends_nothing() -> None:
    s, t = scripted([], CFG.with_overrides({"hv": {"min_v": 600.0}}))
    for v in (599.9, 0.0, 300.0):
        with pytest.raises(HVLimitError, match=r"below hv\.min_v = 600 V"):
            s.set_voltage(CID, v)
        with pytest.raises(HVLimitError, match=r"below hv\.min_v"):
            s.power_up({CID: v})
    assert s.check_voltage(CID, 600.0) == 600.0
    with pytest.raises(HVLimitError, match=r"below hv\.min_v"):
        s.check_voltage(CID, 599.96)  # its wire value 600.0 would pass: the request itself is refused
    t.assert_done()


def test_min_v_leaves_the_safe_paths_alone(pty: Pty) -> None:
    cfg = CFG.with_overrides({"hv": {"min_v": 800.0, "ramp_step_v": 400.0, "safe_v": 0.0}})
    s = HVSupply(pty.supply.mainframe, cfg, CAL, poll_s=0.01)
    s.shutdown([CID])  # down to safe_v = 0 V, below min_v: allowed
    assert [e["value"] for e in pty.emu.set_log() if e["channel_id"] == CID and e["par"] == "VSET"][-1] == 0.0
    assert s.power_up({CID: 900.0})[CID] == pytest.approx(900.0, abs=1.0)  # ON at 0 V, ramp steps through 400 V
    assert [e["value"] for e in pty.emu.set_log() if e["channel_id"] == CID and e["par"] == "VSET"][-4:] == [
        0.0,
        400.0,
        800.0,
        900.0,
    ]
    with pytest.raises(HVLimitError, match=r"below hv\.min_v = 800 V"):
        s.set_voltage(CID, 700.0)


def test_an_unset_limit_still_denies_the_safe_state_set_point() -> None:
    lim = CAL.hv_limit.copy()
    lim[CID] = float("nan")
    t = ScriptedTransport([])
    s = HVSupply(CAENMainframe(t), CFG, dataclasses.replace(CAL, hv_limit=lim))
    with pytest.raises(HVLimitError, match="no valid HV limit"):
        s._send_voltage(CID, "VSET", 0.0, safe_path=True)
    t.assert_done()


def test_clear_trip_falls_back_to_bdclr_on_a_module_without_clr() -> None:
    s, t = scripted(
        [
            (b"$BD:00,CMD:SET,CH:0,PAR:CLR\r\n", b"#BD:00,PAR:ERR\r\n"),  # a real N1470: no per-channel CLR
            (b"$BD:00,CMD:SET,PAR:BDCLR\r\n", OK0),
            (b"$BD:00,CMD:MON,CH:0,PAR:VSET\r\n", b"#BD:00,CMD:OK,VAL:850.0\r\n"),
            (b"$BD:00,CMD:MON,CH:0,PAR:VMON\r\n", b"#BD:00,CMD:OK,VAL:0.0\r\n"),
            (b"$BD:00,CMD:MON,CH:0,PAR:IMON\r\n", b"#BD:00,CMD:OK,VAL:0.00\r\n"),
            (b"$BD:00,CMD:MON,CH:0,PAR:STAT\r\n", b"#BD:00,CMD:OK,VAL:0\r\n"),
        ]
    )
    s.clear_trip(CID)
    t.assert_done()
