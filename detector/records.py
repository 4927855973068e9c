"""Record dtypes shared by the simulation, the DAQ, the recorder and offline.

Arrays are columnar where speed matters (waveforms, trigger primitives); per-event truth of the
simulation is one structured record per event (:data:`TRUTH_DTYPE`).
"""

from __future__ import annotations

import enum

import numpy as np

#: particle type codes of the beam simulation (``TRUTH_DTYPE['ptype']``)
PARTICLE_CODES = {"e-": 0, "pi-": 1, "K-": 2, "mu-": 3, "halo": 4}
PARTICLE_NAMES = {v: k for k, v in PARTICLE_CODES.items()}

#: truth flag bits (``TRUTH_DTYPE['flags']``)
TRUTH_APRIME = np.uint8(1)  #: an A' was emitted and escaped (invisible energy ``e_invisible``)
TRUTH_DIMUON = np.uint8(2)  #: gamma -> mu+ mu- in the shower
TRUTH_PILEUP = np.uint8(4)  #: another particle arrived within the readout window
TRUTH_HADRONIC = np.uint8(8)  #: the particle interacted hadronically in the ECAL
TRUTH_CALIBRATION = np.uint8(16)  #: calibration beam on an HCAL cell (table not at the physics position)
TRUTH_BEAMLINE = np.uint8(32)  #: the e- radiated more than 5% of its energy in the beam line (bremsstrahlung)
TRUTH_DECAY = np.uint8(64)  #: a beam mu-, pi- or K- decayed in flight in the beam line; an e- arrives

#: simulation truth of one beam particle / event (little-endian, packed)
TRUTH_DTYPE = np.dtype(
    [
        ("index", "<u4"),  # record index in the spill (= primitive index)
        ("ptype", "u1"),  # PARTICLE_CODES
        ("flags", "u1"),  # TRUTH_* bits
        ("time_ns", "<f8"),  # arrival time since spill start, ns
        ("e_beam", "<f4"),  # particle energy, GeV
        ("x_mm", "<f4"),  # impact point at the ECAL face, mm
        ("y_mm", "<f4"),
        ("e_ps", "<f4"),  # true deposit in the ECAL preshower, GeV
        ("e_ecal", "<f4"),  # true deposit in the whole ECAL (PS + main), GeV
        ("e_hcal", "<f4"),  # true deposit in the four HCAL modules, GeV
        ("e_v2", "<f4"),  # true deposit in V2, GeV
        ("e_srd", "<f4"),  # synchrotron-radiation deposit in the SRD, GeV
        ("e_invisible", "<f4"),  # energy carried away by an A' (0 if none), GeV
        ("weight", "<f4"),  # event weight (1, or 1/bias of a biased process)
    ],
    align=False,
)

#: dtype of ``events/trigger_mask`` of a spill file (one bit per trigger of the menu)
TRIGGER_MASK_DTYPE = np.dtype(np.uint8)
#: most triggers a menu can have: one bit each in :data:`TRIGGER_MASK_DTYPE`
MAX_TRIGGERS = 8 * TRIGGER_MASK_DTYPE.itemsize
#: trigger-type bits in ``events/trigger_mask`` of a spill file, keyed by the trigger-menu name: the
#: triggers every menu has; further energy lines of a menu take the next bits (:func:`trigger_bits`)
TRIGGER_BITS = {"physics": np.uint8(1), "beam": np.uint8(2), "random": np.uint8(4), "dimuon": np.uint8(8)}


def trigger_bits(further: tuple[str, ...] = ()) -> dict[str, np.uint8]:
    """Bits of a menu's triggers: :data:`TRIGGER_BITS`, then one bit per further energy line in the menu's
    order (``further``: their names). ValueError beyond :data:`MAX_TRIGGERS` or on a repeated name."""
    names = tuple(TRIGGER_BITS) + tuple(further)
    if len(set(names)) != len(names):
        raise ValueError(f"trigger names repeat: {names}")
    if len(names) > MAX_TRIGGERS:
        raise ValueError(f"{len(names)} triggers, but the trigger mask ({TRIGGER_MASK_DTYPE}) holds {MAX_TRIGGERS}")
    return {**TRIGGER_BITS, **{n: TRIGGER_MASK_DTYPE.type(1 << (len(TRIGGER_BITS) + k)) for k, n in enumerate(further)}}


class EventType(enum.IntEnum):
    """What triggered a recorded event: the trigger menu's lines on the beam (``/events`` of a spill file,
    whose ``trigger_mask`` says which lines), or the LED pulser out of spill (``/led``; never in ``/events``,
    so that no physics selection can see an LED event)."""

    BEAM = 0
    LED = 1


#: hardware scaler names reported by the crate per spill
SCALER_NAMES = ("S0", "S1", "S2", "S3", "V0", "V1")

#: spill-file flag strings (why a spill is incomplete); a spill without flags is complete
SPILL_FLAGS = (
    "readout_incomplete",  # fewer events read out than accepted
    "crate_error",  # the crate reported an error during readout
    "timeout",  # a VISA timeout that retries did not cure
    "truncated_block",  # a binary block was cut short or corrupt and could not be re-read
    "spill_lost",  # the crate no longer held the spill (DAQ too slow)
    "feed_stall",  # the beam feed stalled (no spill for too long)
    "reconnected",  # the connection was dropped and re-established during this spill
    "retried",  # the readout of this spill was retried and succeeded
    "disk_full",  # not written: the output disk had no room (daq.min_free_mb); the run stopped
    "write_failed",  # writing the spill file failed (I/O error, quota); the run stopped
    "truncated",  # more events accepted than daq.max_events_per_spill: only the first ones were read out
    "skipped_off_cell",  # calibration mode: not read out, the table was not on the requested cell
)
#: flags of a spill whose recorded events are not all its accepted events: the DAQ's accounting does not
#: reconcile, and an analysis leaves the whole spill out (its events and its EOT)
INCOMPLETE_SPILL_FLAGS = frozenset(
    {
        "readout_incomplete",
        "crate_error",
        "timeout",
        "truncated_block",
        "spill_lost",
        "disk_full",
        "write_failed",
        "truncated",
        "skipped_off_cell",
    }
)
assert set(SPILL_FLAGS) >= INCOMPLETE_SPILL_FLAGS
