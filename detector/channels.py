"""The channel map: every read-out channel of the apparatus with a stable id, a name, its MSADC address
and, where it has a photomultiplier, its HV supply address.

Ids are assigned once, in this order, and never change (recorded files store ids):

=========  ======  =========================================================  =================
ids        count   channels                                                   names
=========  ======  =========================================================  =================
0..35      36      ECAL preshower (PS, section k = 0), cell x, y in 0..5      ``ECAL0-x-y``
36..71     36      ECAL main section (k = 1)                                   ``ECAL1-x-y``
72..107    36      HCAL, 4 modules x 3x3 cells (logbook ``x-y-module``)        ``HCAL-x-y-m``
108..112   5       beam counters                                              ``S0`` .. ``S4``
113..115   3       vetoes                                                     ``V0``, ``V1``, ``V2``
116..118   3       synchrotron-radiation detector sections                    ``SRD0`` .. ``SRD2``
119..120   2       analogue trigger sums                                      ``PS_SUM``, ``ECAL_SUM``
=========  ======  =========================================================  =================

Ids 0..107 are the calorimeter cells (``N_CALO``). ECAL ids are ``36*k + 6*x + y`` and HCAL ids are
``72 + 9*m + 3*y + x`` (HCAL cells are ordered row by row inside a module, as the HV board channels).

MSADC address: 32 channels per board, channel id ``i`` sits on board ``i // 32``, input ``i % 32``.

HV address (board, channel) of the CAEN-style mainframe (docs/protocols.md):
boards 0..3 are the HCAL modules 0..3 (9 channels, channel ``3*y + x``); boards 4..7 are the ECAL
quadrants q = 2*(x >= 3) + (y >= 3), 18 channels each (``2*(3*(y%3) + x%3) + k``); board 8 carries
the counters, vetoes and SRD (11 channels, in id order from S0). The analogue sums have no PMT.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

import numpy as np

N_SAMPLES = 32  #: samples per MSADC readout window
SAMPLE_NS = 12.5  #: MSADC sampling period (80 MS/s), ns
ADC_MAX = 4095  #: 12-bit full scale, ADC counts
MSADC_CHANNELS_PER_BOARD = 32

N_ECAL_SECTIONS, N_ECAL_X, N_ECAL_Y = 2, 6, 6
N_HCAL_MODULES, N_HCAL_X, N_HCAL_Y = 4, 3, 3
N_ECAL = N_ECAL_SECTIONS * N_ECAL_X * N_ECAL_Y  # 72
N_HCAL = N_HCAL_MODULES * N_HCAL_X * N_HCAL_Y  # 36
N_CALO = N_ECAL + N_HCAL  # 108
ECAL_FIRST, HCAL_FIRST = 0, N_ECAL
COUNTER_NAMES = ("S0", "S1", "S2", "S3", "S4")
VETO_NAMES = ("V0", "V1", "V2")
SRD_NAMES = ("SRD0", "SRD1", "SRD2")
SUM_NAMES = ("PS_SUM", "ECAL_SUM")
N_CHANNELS = N_CALO + len(COUNTER_NAMES) + len(VETO_NAMES) + len(SRD_NAMES) + len(SUM_NAMES)  # 121

#: channels of the trigger primitives, in the order of the primitive block (N x 6 x 32)
TRIGGER_CHANNEL_NAMES = ("S1", "S2", "S3", "V1", "PS_SUM", "ECAL_SUM")
N_TRIGGER_CHANNELS = len(TRIGGER_CHANNEL_NAMES)

HV_BOARD_HCAL0 = 0
HV_BOARD_ECAL0 = 4
HV_BOARD_COUNTERS = 8
N_HV_BOARDS = 9

KINDS = ("ecal", "hcal", "counter", "veto", "srd", "sum")


@dataclass(frozen=True)
class Channel:
    """One read-out channel."""

    id: int
    name: str
    kind: str  #: one of KINDS
    msadc_board: int
    msadc_input: int
    hv_board: int | None  #: None for channels without a PMT (analogue sums)
    hv_channel: int | None
    section: int = -1  #: ECAL section k (0 = PS, 1 = main); -1 otherwise
    module: int = -1  #: HCAL module 0..3; -1 otherwise
    x: int = -1  #: cell column
    y: int = -1  #: cell row


def ecal_id(k: int, x: int, y: int) -> int:
    """Channel id of ECAL cell (section k, column x, row y)."""
    if not (0 <= k < N_ECAL_SECTIONS and 0 <= x < N_ECAL_X and 0 <= y < N_ECAL_Y):
        raise ValueError(f"no ECAL cell k={k} x={x} y={y} (k in 0..1, x and y in 0..5)")
    return ECAL_FIRST + 36 * k + 6 * x + y


def hcal_id(x: int, y: int, module: int) -> int:
    """Channel id of HCAL cell x-y-module."""
    if not (0 <= x < N_HCAL_X and 0 <= y < N_HCAL_Y and 0 <= module < N_HCAL_MODULES):
        raise ValueError(f"no HCAL cell {x}-{y}-{module} (x, y in 0..2, module in 0..3)")
    return HCAL_FIRST + 9 * module + 3 * y + x


_CELL_RE = re.compile(r"^\s*(\d)-(\d)-(\d)\s*$")


def parse_hcal_cell(text: str) -> tuple[int, int, int]:
    """Parse a logbook cell name ``x-y-module`` into (x, y, module); ValueError if malformed."""
    m = _CELL_RE.match(text)
    if not m:
        raise ValueError(f"bad HCAL cell name {text!r}: expected 'x-y-module', e.g. '2-1-3'")
    x, y, mod = (int(g) for g in m.groups())
    hcal_id(x, y, mod)  # range check
    return x, y, mod


def hcal_cell_name(x: int, y: int, module: int) -> str:
    """Logbook name ``x-y-module`` of an HCAL cell."""
    return f"{x}-{y}-{module}"


_ECAL_CELL_RE = re.compile(r"^ECAL-([0-5])-([0-5])$")


def ecal_cell_name(x: int, y: int) -> str:
    """Campaign name ``ECAL-x-y`` of the ECAL cell (column x, row y), whose PS and main channels are
    ``ECAL0-x-y`` and ``ECAL1-x-y``."""
    ecal_id(0, x, y)  # range check
    return f"ECAL-{x}-{y}"


def parse_ecal_cell(text: str) -> tuple[int, int]:
    """Parse an ECAL cell name ``ECAL-x-y`` into (x, y); ValueError if malformed."""
    m = _ECAL_CELL_RE.match(text) if isinstance(text, str) else None
    if not m:
        raise ValueError(f"bad ECAL cell name {text!r}: expected 'ECAL-x-y' with x, y in 0..5, e.g. 'ECAL-3-2'")
    return int(m.group(1)), int(m.group(2))


def _build() -> tuple[Channel, ...]:
    chans: list[Channel] = []

    def add(name: str, kind: str, hv: tuple[int, int] | None, **kw: int) -> None:
        i = len(chans)
        chans.append(
            Channel(
                i,
                name,
                kind,
                i // MSADC_CHANNELS_PER_BOARD,
                i % MSADC_CHANNELS_PER_BOARD,
                hv[0] if hv else None,
                hv[1] if hv else None,
                **kw,
            )
        )

    for k in range(N_ECAL_SECTIONS):
        for x in range(N_ECAL_X):
            for y in range(N_ECAL_Y):
                quadrant = 2 * (x >= 3) + (y >= 3)
                hv = (HV_BOARD_ECAL0 + quadrant, 2 * (3 * (y % 3) + x % 3) + k)
                add(f"ECAL{k}-{x}-{y}", "ecal", hv, section=k, x=x, y=y)
    for m in range(N_HCAL_MODULES):
        for y in range(N_HCAL_Y):
            for x in range(N_HCAL_X):
                add(f"HCAL-{hcal_cell_name(x, y, m)}", "hcal", (HV_BOARD_HCAL0 + m, 3 * y + x), module=m, x=x, y=y)
    hv_ch = 0
    for names, kind in ((COUNTER_NAMES, "counter"), (VETO_NAMES, "veto"), (SRD_NAMES, "srd")):
        for name in names:
            add(name, kind, (HV_BOARD_COUNTERS, hv_ch))
            hv_ch += 1
    for name in SUM_NAMES:
        add(name, "sum", None)
    assert len(chans) == N_CHANNELS
    return tuple(chans)


CHANNELS: tuple[Channel, ...] = _build()
_BY_NAME = {c.name: c for c in CHANNELS}
_BY_HV = {(c.hv_board, c.hv_channel): c for c in CHANNELS if c.hv_board is not None}


def by_name(name: str) -> Channel:
    """The channel called ``name`` (e.g. ``S1``, ``ECAL1-2-3``, ``HCAL-0-2-3``); KeyError names the problem."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown channel name {name!r}") from None


def by_hv_address(board: int, channel: int) -> Channel:
    """The channel powered by HV board ``board``, channel ``channel``."""
    try:
        return _BY_HV[(board, channel)]
    except KeyError:
        raise KeyError(f"no PMT on HV board {board} channel {channel}") from None


def hv_board_size(board: int) -> int:
    """Number of HV channels on a board of the mainframe."""
    if not 0 <= board < N_HV_BOARDS:
        raise ValueError(f"no HV board {board} (0..{N_HV_BOARDS - 1})")
    return sum(1 for c in CHANNELS if c.hv_board == board)


@cache
def trigger_channel_ids() -> np.ndarray:
    """Channel ids of the trigger primitives, in primitive-block order (int64 array of 6)."""
    return np.array([_BY_NAME[n].id for n in TRIGGER_CHANNEL_NAMES], dtype=np.int64)


def ids_of_kind(kind: str) -> np.ndarray:
    """Channel ids of one kind (``ecal``, ``hcal``, ...), ascending."""
    if kind not in KINDS:
        raise ValueError(f"unknown channel kind {kind!r}; known: {', '.join(KINDS)}")
    return np.array([c.id for c in CHANNELS if c.kind == kind], dtype=np.int64)


def ecal_map(values: np.ndarray) -> np.ndarray:
    """Reshape per-channel values (first 72 entries = ECAL ids) into [k][x][y] = (2, 6, 6)."""
    return np.asarray(values)[..., ECAL_FIRST : ECAL_FIRST + N_ECAL].reshape(
        values.shape[:-1] + (N_ECAL_SECTIONS, N_ECAL_X, N_ECAL_Y)
    )


def hcal_map(values: np.ndarray) -> np.ndarray:
    """Reshape per-channel values (ids 72..107) into [module][y][x] = (4, 3, 3)."""
    return np.asarray(values)[..., HCAL_FIRST : HCAL_FIRST + N_HCAL].reshape(
        values.shape[:-1] + (N_HCAL_MODULES, N_HCAL_Y, N_HCAL_X)
    )
