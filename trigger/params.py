"""The menu as the kernels see it: ONE structured record (:data:`numpy` record dtype built from the
dataclasses below, read by field name in numba), and the layout of the per-record raw bits and per-block
counts the passes exchange.

The record holds the energy lines as a nested array of :class:`LineParams` records: its length is part
of the record's numba type (a compile-time trip count: LLVM unrolls the line loop), so each kernel is
compiled once per length. There are two lengths (:func:`kernel_lines`): the two lines of every menu
(physics, dimuon), and :data:`MAX_LINES` for any menu with further lines, padded with disabled lines
that never fire (one compile covers every such menu, instead of one per line count).

Raw bits (pass A -> B): bit ``RB_*`` of record i; energy line j has bit ``RB_LINE0 + j``. They are stored in
bit planes of uint8, plane q holding bits 8q .. 8q + 7 (``bits[q, i]``): one plane for a menu with up to
two energy lines. Count columns (per block) are the raw-bit indices, then ``bad`` (records out of time
order) in the last column. Accepted-count columns (pass B): ``A_REC``, ``A_BEAM``, ``A_RAND``, then line j at
``A_LINE0 + j``. Prescale counters: beam, then the lines.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass

import numpy as np

from detector.records import MAX_TRIGGERS, TRIGGER_MASK_DTYPE

from .menu import ECAL_INDEX, PS_INDEX, TriggerMenu
from .simd import GATED, N_SAMPLES, gate_caps, ped_lanes

# per-record raw bits
RB_S1, RB_S2, RB_S3, RB_V1, RB_PISI, RB_EOT = range(6)
RB_LINE0 = 6
#: count columns of the counter scalers and the coincidences
C_S1, C_S2, C_S3, C_V1, C_PISI, C_EOT = range(6)
# accepted-count columns
A_REC, A_BEAM, A_RAND = range(3)
A_LINE0 = 3
#: dtype of the accepted masks
MASK_DTYPE = TRIGGER_MASK_DTYPE
#: most energy lines a menu can have (every trigger takes a bit of the mask; beam and random take two)
MAX_LINES = MAX_TRIGGERS - 2


@dataclass(frozen=True)
class LineParams:
    """One energy line: fires on EOT (PiSi without ``veto``) with ``ps_gt < E_PS < ps_lt`` and
    ``ec_gt < E_ECAL < ec_lt`` (GeV; an absent cut is -inf / +inf)."""

    enabled: int  #: 0 or 1
    prescale: int  #: accept every prescale-th raw trigger
    veto: int  #: 1: V1 vetoes (EOT required), 0: PiSi is enough
    ps_gt: float  #: GeV
    ps_lt: float  #: GeV
    ec_gt: float  #: GeV
    ec_lt: float  #: GeV
    mask: int  #: the line's bit in the trigger mask


@dataclass(frozen=True)
class KernelParams:
    """Everything else the kernels read from the menu (ADC counts, ns, GeV per ADC count, Hz)."""

    thr_adc: float  #: counter threshold, ADC counts
    zs_adc: float  #: zero suppression of the reconstruction, ADC counts
    win_lo: tuple[float, ...]  #: (4,) ns, coincidence window start of S1, S2, S3, V1 (inclusive)
    win_hi: tuple[float, ...]  #: (4,) ns, window end (inclusive)
    gev_ps: float  #: GeV per ADC count of PS_SUM
    gev_ecal: float  #: GeV per ADC count of ECAL_SUM
    ped_se: tuple[int, ...]  #: (6,) 4x the calibrated pedestal of the even samples per channel (ADC counts)
    ped_so: tuple[int, ...]  #: (6,) the same of the odd samples
    ped_lanes: tuple[int, ...]  #: (16,) int32: (ped_se, ped_so) in the lanes of :func:`trigger.simd.record_summary`
    gate_lo: tuple[int, ...]  #: (6,) first sample of each channel's peak search (counter / energy gate)
    gate_hi: tuple[int, ...]  #: (6,) last sample (inclusive)
    gate_caps: tuple[int, ...]  #: (6 x 32,) int16: the gates as :func:`trigger.simd.gate_caps`
    rate_hz: float  #: random trigger rate (1 when disabled: no division by 0)
    n_ticks: int  #: random ticks in the spill (0 when disabled)
    beam_enabled: int  #: 0 or 1
    beam_prescale: int
    beam_mask: int  #: bits in the trigger mask
    random_mask: int
    lines: tuple[LineParams, ...]  #: the energy lines (physics, dimuon, further ones), padded (:func:`kernel_lines`)


_SCALAR = {int: np.int64, float: np.float64}


def record_dtype(cls: type, shapes: dict[str, tuple[np.dtype, tuple[int, ...]]] | None = None) -> np.dtype:
    """The numpy record dtype of a dataclass of int / float fields; ``shapes`` gives the (dtype, shape) of
    its tuple fields."""
    shapes = shapes or {}
    hints = typing.get_type_hints(cls)
    fields: list[tuple[typing.Any, ...]] = []
    for f in dataclasses.fields(cls):
        if f.name in shapes:
            fields.append((f.name, *shapes[f.name]))
        else:
            fields.append((f.name, _SCALAR[hints[f.name]]))
    return np.dtype(fields, align=True)


LINE_DTYPE = record_dtype(LineParams)
#: energy lines of every menu (physics, dimuon): the kernels' record holds exactly these when there are no others
BASE_LINES = 2


def kernel_lines(menu: TriggerMenu) -> int:
    """Energy-line slots of the menu's parameter record: :data:`BASE_LINES` for a menu without further
    lines, else :data:`MAX_LINES` (the menu's lines, then disabled ones)."""
    n = len(menu.energy_lines)
    if not 1 <= n <= MAX_LINES:
        raise ValueError(f"a menu has 1 to {MAX_LINES} energy lines, this one {n}")
    return n if n <= BASE_LINES else MAX_LINES


def params_dtype(n_lines: int) -> np.dtype:
    """Record dtype of :class:`KernelParams` for ``n_lines`` energy lines."""
    return record_dtype(
        KernelParams,
        {
            "win_lo": (np.dtype(np.float64), (4,)),
            "win_hi": (np.dtype(np.float64), (4,)),
            "ped_se": (np.dtype(np.int64), (6,)),
            "ped_so": (np.dtype(np.int64), (6,)),
            "ped_lanes": (np.dtype(np.int32), (16,)),
            "gate_lo": (np.dtype(np.int64), (6,)),
            "gate_hi": (np.dtype(np.int64), (6,)),
            "gate_caps": (np.dtype(np.int16), (len(GATED) * N_SAMPLES,)),
            "lines": (LINE_DTYPE, (n_lines,)),
        },
    )


def kernel_params(menu: TriggerMenu) -> KernelParams:
    """The menu's numbers as the kernels use them."""
    bits = menu.trigger_bits
    inf = float("inf")
    lines = tuple(
        LineParams(
            int(t.enabled),
            t.prescale,
            int(t.veto),
            t.ps_min_gev,
            inf if t.ps_max_gev is None else t.ps_max_gev,
            -inf if t.ecal_min_gev is None else t.ecal_min_gev,
            t.ecal_max_gev,
            int(bits[n]),
        )
        for n, t in menu.energy_lines
    )
    # the padding: a copy of the first line, disabled and without a mask bit (its thresholds stay finite)
    lines += (dataclasses.replace(lines[0], enabled=0, prescale=1, mask=0),) * (kernel_lines(menu) - len(lines))
    w = [menu.counter_window_ns(c) for c in range(4)]
    se, so = menu.pedestal_sums
    first, last = (tuple(g[k] for g in menu.gate_samples) for k in (0, 1))
    return KernelParams(
        menu.counter_threshold_adc,
        menu.zs_threshold_adc,
        tuple(x[0] for x in w),
        tuple(x[1] for x in w),
        menu.gev_per_count[PS_INDEX],
        menu.gev_per_count[ECAL_INDEX],
        se,
        so,
        tuple(int(x) for x in ped_lanes(se, so)),
        first,
        last,
        tuple(int(x) for x in gate_caps(first, last)),
        menu.random.rate_hz if menu.random.enabled else 1.0,
        menu.n_random_ticks,
        int(menu.beam.enabled),
        menu.beam.prescale,
        int(bits["beam"]),
        int(bits["random"]),
        lines,
    )


@functools.lru_cache(maxsize=32)
def pack(menu: TriggerMenu) -> np.ndarray:
    """The menu as the kernels' parameter record: a read-only (1,) array of :func:`params_dtype` (kernels
    read ``params[0]``), cached per menu."""
    kp = kernel_params(menu)
    lines = [dataclasses.astuple(line) for line in kp.lines]
    rec = np.array(
        [tuple(lines if f.name == "lines" else getattr(kp, f.name) for f in dataclasses.fields(KernelParams))],
        params_dtype(len(lines)),
    )
    rec.setflags(write=False)
    return rec


def n_planes(menu: TriggerMenu) -> int:
    """uint8 planes of the raw bits of a menu (of its kernel record's line slots)."""
    return (RB_LINE0 + kernel_lines(menu) + 7) // 8
