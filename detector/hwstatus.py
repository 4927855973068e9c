"""Hardware status words, declared once: the HV channel status word (``STAT``, docs/protocols.md section 2),
the HV board alarm word (``BDALARM``), the serial line's refusal of a second client and the MSADC
crate's spill state (``SPIL:STAT?``, docs/protocols.md section 1.3).

The driver (:mod:`hv_control.caen`, :mod:`hv_control.supply`), the emulator (:mod:`sim_frontend.emu_hv`),
the DAQ's monitoring stream and the monitor (:mod:`online.monitor.model`) all read these names; nobody
writes a bit number or a state string of their own.
"""

from __future__ import annotations

import enum


class HVStatus(enum.IntFlag):
    """Bits of a CAEN N1470-style channel status word (bit 0 is the least significant)."""

    ON = 1 << 0  #: channel on
    RUP = 1 << 1  #: ramping up
    RDW = 1 << 2  #: ramping down
    OVC = 1 << 3  #: over-current
    OVV = 1 << 4  #: over-voltage
    UNV = 1 << 5  #: under-voltage
    MAXV = 1 << 6  #: VSET at the software limit MAXV
    TRIP = 1 << 7  #: tripped (latched until CLR)
    OVP = 1 << 8  #: over-power
    OVT = 1 << 9  #: over-temperature
    DIS = 1 << 10  #: disabled
    KILL = 1 << 11  #: kill input active
    ILK = 1 << 12  #: interlock
    NOCAL = 1 << 13  #: calibration missing


#: bits that mean the channel is moving towards its set point
HV_RAMPING = HVStatus.RUP | HVStatus.RDW
#: bits that mean a hardware fault other than a trip (over-current/-voltage/-power/-temperature, kill, interlock)
HV_FAULT = HVStatus.OVC | HVStatus.OVV | HVStatus.OVP | HVStatus.OVT | HVStatus.KILL | HVStatus.ILK

#: the driver's long names of the bits (``CAENMainframe.status_flags``), bit by bit
HV_FLAG_NAMES: dict[HVStatus, str] = {
    HVStatus.ON: "on",
    HVStatus.RUP: "ramp_up",
    HVStatus.RDW: "ramp_down",
    HVStatus.OVC: "over_current",
    HVStatus.OVV: "over_voltage",
    HVStatus.UNV: "under_voltage",
    HVStatus.MAXV: "at_maxv",
    HVStatus.TRIP: "tripped",
    HVStatus.OVP: "over_power",
    HVStatus.OVT: "over_temperature",
    HVStatus.DIS: "disabled",
    HVStatus.KILL: "kill",
    HVStatus.ILK: "interlock",
    HVStatus.NOCAL: "no_calibration",
}


def hv_flag_names(word: int) -> set[str]:
    """Long names (:data:`HV_FLAG_NAMES`) of the bits set in a status word; unknown bits are ignored."""
    return {name for bit, name in HV_FLAG_NAMES.items() if int(word) & bit}


class HVBoardAlarm(enum.IntFlag):
    """Bits of the board alarm word (``BDALARM``, docs/protocols.md section 2) as on a 4-channel N1470:
    channels 0..3 in alarm, power fail, over-power, HV clock fail. Channels 4 and up of our wider
    boards use bit ``12 + ch`` (:func:`hv_channel_alarm_bit`)."""

    CH0 = 1 << 0
    CH1 = 1 << 1
    CH2 = 1 << 2
    CH3 = 1 << 3
    PWFAIL = 1 << 4  #: board in power fail
    OVP = 1 << 5  #: board in over-power
    HVCKFAIL = 1 << 6  #: internal HV clock fail


def hv_channel_alarm_bit(ch: int) -> int:
    """The ``BDALARM`` bit of channel ``ch`` of a board: bit ``ch`` for 0..3 (the N1470 layout), bit
    ``12 + ch`` from channel 4 on (bits 16 and up, clear of the board bits 4..6)."""
    if not 0 <= ch <= 50:
        raise ValueError(f"channel {ch!r} out of range 0..50")
    return 1 << ch if ch < 4 else 1 << (12 + ch)


#: the line a serial server sends to a second client before closing it: the line has one owner
#: (docs/protocols.md section 2); transports recognise it and raise a clear error
LINE_OWNED_REPLY = "LINE OWNED BY ANOTHER CLIENT"


class CrateState(str, enum.Enum):
    """Spill state of the MSADC crate as ``SPIL:STAT?`` reports it."""

    IDLE = "IDLE"  #: no beam feed yet
    SPILL = "SPILL"  #: beam on, a spill in progress
    GAP = "GAP"  #: between spills

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(s.value for s in cls)
