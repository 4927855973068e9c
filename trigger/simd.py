"""Explicit-vector summary of one trigger record, as a numba intrinsic (LLVM vector IR).

The waveform trigger needs, per record and per channel, the exact peak of the pedestal-subtracted waveform
(value, and for the counters the sample index) and whether a sample is saturated. The pedestals are the
channels' calibrated ones (:attr:`trigger.menu.TriggerMenu.pedestal_sums`), loop-invariant: one vector
load of :func:`ped_lanes` per record. Written as scalar loops,
numba/LLVM vectorises each channel's 32-sample reduction on its own (in int32 lanes, to carry the sample
index in the key) and pays a full horizontal reduction per channel. Here:

- the peak is searched on the raw int16 samples, per parity: the pedestal of even samples is
  ``se / 4`` and of odd ones ``so / 4``, so ``max_j (4 w_j - P_j) = max(4 max_even w - se, 4 max_odd w - so)``
  (``P_j`` = se for even j, so for odd j): one int16 maximum per channel (16 lanes per 256-bit register);
- the six channels are reduced together by a transpose-and-max tree (18 shuffles and maxima for all six);
- the peak sample of a counter is the first sample equal to its parity's maximum, among the parities that
  reach the peak: two compares, a bit mask and a trailing-zero count, no second pass;
- every channel (:data:`GATED`: the counters in their counter gate, the energy sums PS_SUM and ECAL_SUM in
  their energy gate, :attr:`trigger.menu.TriggerMenu.gate_samples`) is searched in its gate only: each
  half-vector is first clamped from above by :func:`gate_caps` (int16 max in the gate, int16 min outside),
  two more minima per channel, so a sample outside the gate takes part in neither the peak nor the
  saturation; the peak sample of a counter is searched among the samples in its gate (the caps' sign
  bits: a clamped sample can equal an in-gate maximum of int16 min).

``<16 x i16>`` / ``<8 x i32>`` vectors: AVX2 registers on x86, legalised by LLVM for any other target, so the
code is portable; the result is the scalar definition below, bit for bit, whatever the target.

Definition of ``record_summary(p, i, lanes, caps)`` (p a C-contiguous int16 array of shape (N, 6, 32): the
layout is typed, the shape is the caller's to check; 0 <= i < N is NOT bounds-checked: the caller owns the
index; ``lanes`` = :func:`ped_lanes` of the pedestal sums se_c, so_c, 16 contiguous int32, with
``|se_c|, |so_c| <= 2^17``; ``caps`` = :func:`gate_caps` of the samples G_c of each channel, at least one
even and one odd sample each). For channel c with samples w_j (ADC
counts) and ``P_j`` = se_c for even j, so_c for odd j, j in G_c:
``best4_c = max_j (4 w_j - P_j)`` (4x the pedestal-subtracted peak value, exact int32),
``k_c`` = the first j reaching it (numpy's argmax; returned for the counters c = 0, 1, 2),
``sat_c = max_j w_j >= ADC_MAX``. Returns the int32 tuple
``(best4_0, ..., best4_5, k_0, k_1, k_2, sat)`` with bit c of ``sat`` = ``sat_c``.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from detector.channels import ADC_MAX

N_CHANNELS = 6
N_COUNTERS = 3  #: channels whose peak sample is returned (S1, S2, S3)
N_SAMPLES = 32
_I1 = ir.IntType(1)
_I16 = ir.IntType(16)
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_W16 = ir.VectorType(_I16, 16)  # 16 samples
_V32 = ir.VectorType(_I32, 8)
_V32x16 = ir.VectorType(_I32, 16)
SUMMARY = types.UniTuple(types.int32, N_CHANNELS + N_COUNTERS + 1)
#: 32-bit unit of the reduced vectors that holds channel c's (even, odd) pair
UNIT_OF = (0, 4, 2, 6, 1, 5)
#: channel in each unit of the reduced vectors (units 3 and 7 repeat channels 4 and 5)
CHANNEL_OF_UNIT = (0, 4, 2, 4, 1, 5, 3, 5)
PED_BOUND = 1 << 17  #: largest |pedestal sum| record_summary takes (4 int16 samples): no int32 overflow
#: the channels whose samples record_summary takes in a gate (all: the counters' counter gate, the energy
#: sums' energy gate), in the order of gate_caps
GATED = tuple(range(N_CHANNELS))


def ped_lanes(se: tuple[int, ...] | np.ndarray, so: tuple[int, ...] | np.ndarray) -> np.ndarray:
    """The pedestal sums (even ``se``, odd ``so``, one per channel: 4x the pedestal, ADC counts) as the int32
    lanes :func:`record_summary` subtracts: lanes 2u, 2u + 1 = (se, so) of the channel in unit u."""
    out = np.empty(16, np.int32)
    for u, c in enumerate(CHANNEL_OF_UNIT):
        if not (abs(int(se[c])) <= PED_BOUND and abs(int(so[c])) <= PED_BOUND):
            raise ValueError(f"pedestal sums beyond +-{PED_BOUND}: {se[c]}, {so[c]}")
        out[2 * u], out[2 * u + 1] = int(se[c]), int(so[c])
    return out


def gate_caps(first: tuple[int, ...] | np.ndarray, last: tuple[int, ...] | np.ndarray) -> np.ndarray:
    """The int16 caps record_summary clamps the gated channels' samples with: (len(GATED) x 32,), for
    gated channel g (GATED[g]) and sample j at 32 g + j: 32767 if ``first[c] <= j <= last[c]``, else -32768.
    ``first``, ``last``: the first and last sample (inclusive) per channel; ValueError if a gate lacks an
    even or an odd sample."""
    out = np.empty(len(GATED) * N_SAMPLES, np.int16)
    j = np.arange(N_SAMPLES)
    for c in GATED:
        lo, hi = int(first[c]), int(last[c])
        if not (lo >= 0 and hi <= N_SAMPLES - 1 and hi - lo >= 1):
            raise ValueError(f"gate {lo}..{hi} of channel {c} must hold an even and an odd sample of 0..31")
        g = GATED.index(c)
        out[g * N_SAMPLES : (g + 1) * N_SAMPLES] = np.where((j >= lo) & (j <= hi), 32767, -32768)
    return out


# shuffle masks (32-bit units) of the reduction tree
_HALF_LO, _HALF_HI = [0, 1, 2, 3, 8, 9, 10, 11], [4, 5, 6, 7, 12, 13, 14, 15]
_QUAD_LO, _QUAD_HI = [0, 1, 8, 9, 4, 5, 12, 13], [2, 3, 10, 11, 6, 7, 14, 15]
_PAIR_LO, _PAIR_HI = [0, 8, 2, 10, 4, 12, 6, 14], [1, 9, 3, 11, 5, 13, 7, 15]


def _const(ty: ir.Type, values: int | list[int]) -> ir.Constant:
    return ir.Constant(ty, values)


def _mask(idx: list[int]) -> ir.Constant:
    return _const(ir.VectorType(_I32, len(idx)), idx)


def _smax(b: ir.IRBuilder, x, y):
    return b.select(b.icmp_signed(">", x, y), x, y)


def _smin(b: ir.IRBuilder, x, y):
    return b.select(b.icmp_signed("<", x, y), x, y)


def _combine(b: ir.IRBuilder, x, y, lo: list[int], hi: list[int], op):
    """op(shuffle(x, y, lo), shuffle(x, y, hi)) on 32-bit units; ``op`` sees the operands as x's type."""
    xs, ys = b.bitcast(x, _V32), b.bitcast(y, _V32)
    l, h = b.shuffle_vector(xs, ys, _mask(lo)), b.shuffle_vector(xs, ys, _mask(hi))
    return op(b, b.bitcast(l, x.type), b.bitcast(h, x.type))


def _tree(b: ir.IRBuilder, vecs: list, op):
    """Reduce six vectors of eight 32-bit units jointly to one unit per channel (channel c in unit
    UNIT_OF[c] of the result)."""
    t01 = _combine(b, vecs[0], vecs[1], _HALF_LO, _HALF_HI, op)  # [a a a a b b b b]
    t23 = _combine(b, vecs[2], vecs[3], _HALF_LO, _HALF_HI, op)
    t45 = _combine(b, vecs[4], vecs[5], _HALF_LO, _HALF_HI, op)
    u0 = _combine(b, t01, t23, _QUAD_LO, _QUAD_HI, op)  # [a a c c b b d d]
    u1 = _combine(b, t45, t45, _QUAD_LO, _QUAD_HI, op)  # [e e e e f f f f]
    return _combine(b, u0, u1, _PAIR_LO, _PAIR_HI, op)  # [a e c e b f d f]


def _ptr(b: ir.IRBuilder, rec, byte_offset: int, ty: ir.Type):
    return cgutils.pointer_add(b, rec, _const(_I64, byte_offset), return_type=ty.as_pointer())


def _is_record(prims, index) -> bool:
    """Are (prims, index) the types of an int16 C-contiguous (N, 6, 32) array and a record index?"""
    return (
        isinstance(prims, types.Array)
        and prims.dtype == types.int16
        and prims.ndim == 3
        and prims.layout == "C"
        and isinstance(index, types.Integer)
    )


def _record_ptr(context, b: ir.IRBuilder, signature, args):
    """Pointer to the first byte of record args[1] of the array args[0] (no bounds check)."""
    arr = context.make_array(signature.args[0])(context, b, args[0])
    i = context.cast(b, args[1], signature.args[1], types.intp)
    return cgutils.pointer_add(b, arr.data, b.mul(i, b.extract_value(arr.strides, 0)))


@intrinsic
def record_summary(typingctx, prims, index, lanes, caps):
    """See the module docstring."""
    if not (
        _is_record(prims, index)
        and isinstance(lanes, types.Array)
        and lanes.dtype == types.int32
        and lanes.ndim == 1
        and lanes.layout == "C"
        and isinstance(caps, types.Array)
        and caps.dtype == types.int16
        and caps.ndim == 1
        and caps.layout == "C"
    ):
        return None
    sig = SUMMARY(prims, index, lanes, caps)

    def codegen(context, b, signature, args):
        rec = _record_ptr(context, b, signature, args)
        cap = context.make_array(signature.args[3])(context, b, args[3]).data
        halves, peaks, ingate = [], [], []
        zero16 = _const(_W16, [0] * 16)
        for c in range(N_CHANNELS):
            lo = b.load(_ptr(b, rec, 2 * N_SAMPLES * c, _W16), align=2)
            hi = b.load(_ptr(b, rec, 2 * N_SAMPLES * c + 32, _W16), align=2)
            # samples outside the gate -> int16 min: in neither the peak nor the saturation
            g = GATED.index(c)
            cap_lo = b.load(_ptr(b, cap, 2 * N_SAMPLES * g, _W16), align=2)
            cap_hi = b.load(_ptr(b, cap, 2 * N_SAMPLES * g + 32, _W16), align=2)
            lo, hi = _smin(b, lo, cap_lo), _smin(b, hi, cap_hi)
            if c < N_COUNTERS:  # bit j: sample j in the gate (cap > 0)
                in_lo = b.zext(b.bitcast(b.icmp_signed(">", cap_lo, zero16), _I16), _I32)
                in_hi = b.zext(b.bitcast(b.icmp_signed(">", cap_hi, zero16), _I16), _I32)
                ingate.append(b.or_(in_lo, b.shl(in_hi, _const(_I32, 16))))
            halves.append((lo, hi))
            peaks.append(_smax(b, lo, hi))  # lane l: max of samples l and l + 16
        v = _tree(b, peaks, _smax)  # units: (max even, max odd) per channel
        # pedestal sums in the layout of v's units, as int32 pairs (se, so): ped_lanes
        ped = context.make_array(signature.args[2])(context, b, args[2])
        sums = b.load(b.bitcast(ped.data, _V32x16.as_pointer()), align=4)
        m = b.sext(b.bitcast(v, _W16), _V32x16)  # (max even, max odd) per unit, int32
        cand = b.sub(b.shl(m, _const(_V32x16, [2] * 16)), sums)
        best = _smax(b, cand, b.shuffle_vector(cand, cand, _mask([j ^ 1 for j in range(16)])))
        wins = b.zext(b.bitcast(b.icmp_signed("==", cand, best), _I16), _I32)
        sat = b.zext(b.bitcast(b.icmp_signed(">=", m, _const(_V32x16, [ADC_MAX] * 16)), _I16), _I32)
        out = [b.extract_element(best, _const(_I32, 2 * UNIT_OF[c])) for c in range(N_CHANNELS)]
        vu = b.bitcast(v, _V32)
        for c in range(N_COUNTERS):
            u = UNIT_OF[c]
            pair = b.bitcast(b.shuffle_vector(vu, vu, _mask([u] * 8)), _W16)  # (even, odd) max in every unit
            lo, hi = halves[c]
            eq_lo = b.zext(b.bitcast(b.icmp_signed("==", lo, pair), _I16), _I32)
            eq_hi = b.zext(b.bitcast(b.icmp_signed("==", hi, pair), _I16), _I32)
            eq = b.and_(b.or_(eq_lo, b.shl(eq_hi, _const(_I32, 16))), ingate[c])  # bit j: in gate, = parity's max
            w = b.lshr(wins, _const(_I32, 2 * u))
            even = b.select(b.trunc(w, _I1), _const(_I32, 0x55555555), _const(_I32, 0))
            odd = b.select(
                b.trunc(b.lshr(w, _const(_I32, 1)), _I1), _const(_I32, 0xAAAAAAAA - (1 << 32)), _const(_I32, 0)
            )
            cttz = cgutils.get_or_insert_function(b.module, ir.FunctionType(_I32, [_I32, _I1]), "llvm.cttz.i32")
            out.append(b.call(cttz, [b.and_(eq, b.or_(even, odd)), _const(_I1, 0)]))
        bits = _const(_I32, 0)
        for c in range(N_CHANNELS):
            s = b.and_(b.lshr(sat, _const(_I32, 2 * UNIT_OF[c])), _const(_I32, 3))
            bits = b.or_(bits, b.shl(b.zext(b.icmp_unsigned("!=", s, _const(_I32, 0)), _I32), _const(_I32, c)))
        out.append(bits)
        return context.make_tuple(b, signature.return_type, out)

    return sig, codegen


def record_summary_numpy(
    prims: np.ndarray, se: np.ndarray, so: np.ndarray, first: np.ndarray | None = None, last: np.ndarray | None = None
) -> np.ndarray:
    """The definition in numpy: (N, 10) int64 rows ``(best4_0..5, k_0..2, sat)`` of the primitives with
    pedestal sums ``se``, ``so`` (one per channel), each channel's samples ``first[c]..last[c]`` (None:
    the whole record) (for the tests)."""
    p = prims.astype(np.int64)
    j = np.arange(N_SAMPLES)
    lo = np.zeros(N_CHANNELS, np.int64) if first is None else np.asarray(first, np.int64)
    hi = np.full(N_CHANNELS, N_SAMPLES - 1) if last is None else np.asarray(last, np.int64)
    gate = (j[None, :] >= lo[:, None]) & (j[None, :] <= hi[:, None])
    v = 4 * p - np.where(j % 2 == 0, np.asarray(se, np.int64)[:, None], np.asarray(so, np.int64)[:, None])
    v = np.where(gate, v, np.iinfo(np.int64).min)
    out = np.empty((p.shape[0], N_CHANNELS + N_COUNTERS + 1), np.int64)
    out[:, :N_CHANNELS] = v.max(axis=2)
    out[:, N_CHANNELS : N_CHANNELS + N_COUNTERS] = v[:, :N_COUNTERS].argmax(axis=2)
    out[:, -1] = ((np.where(gate, p, -1).max(axis=2) >= ADC_MAX) << np.arange(N_CHANNELS)).sum(axis=1)
    return out


def _prefetch_typer(locality: int):
    """The typer of an intrinsic that prefetches (read) the cache lines of record ``index`` of p with LLVM's
    ``locality`` (3: into every cache level, 2: not into L1); an index beyond the array is harmless (a
    prefetch never faults)."""

    def typer(typingctx, prims, index):
        if not (isinstance(prims, types.Array) and prims.ndim == 3 and isinstance(index, types.Integer)):
            return None
        sig = types.void(prims, index)

        def codegen(context, b, signature, args):
            rec = _record_ptr(context, b, signature, args)
            i8p = ir.IntType(8).as_pointer()
            fn = cgutils.get_or_insert_function(
                b.module, ir.FunctionType(ir.VoidType(), [i8p, _I32, _I32, _I32]), "llvm.prefetch.p0"
            )
            n_lines = prims.dtype.bitwidth // 8 * N_CHANNELS * N_SAMPLES // 64
            for line in range(n_lines):
                ptr = cgutils.pointer_add(b, rec, _const(_I64, 64 * line), return_type=i8p)
                b.call(fn, [ptr, _const(_I32, 0), _const(_I32, locality), _const(_I32, 1)])
            return context.get_dummy_value()

        return sig, codegen

    return typer


#: ``prefetch_record_l2(p, index)``: software prefetch of record ``index`` of p into L2, not L1: a prefetch
#: far ahead then evicts nothing the current records still need from L1
prefetch_record_l2 = intrinsic(_prefetch_typer(2))


_V64x16 = ir.VectorType(_I64, 16)
_F32x16 = ir.VectorType(ir.FloatType(), 16)
_F64x16 = ir.VectorType(ir.DoubleType(), 16)
#: records (lanes) per call of :func:`window_bits`
WINDOW_LANES = 16
#: counters of :func:`window_bits`' table (S1..S3), its columns per counter (in_lo, in_hi, out_lo, out_hi)
WINDOW_COUNTERS, WINDOW_COLS = N_COUNTERS, 4
#: _MM_FROUND_TO_POS_INF / _MM_FROUND_TO_NEG_INF with _MM_FROUND_NO_EXC: the products' rounding per column
_ROUND_UP, _ROUND_DOWN = 10, 9
_COL_ROUND = (_ROUND_UP, _ROUND_DOWN, _ROUND_DOWN, _ROUND_UP)


def target_has_avx512() -> bool:
    """Does numba's compile target have AVX-512F (the host CPU unless NUMBA_CPU_NAME / NUMBA_CPU_FEATURES name
    another)? numba's on-disk cache is keyed by the CPU name and features, so a cached kernel never runs
    on a target other than the one it was compiled for."""
    import llvmlite.binding as llb
    from numba.core import config

    feats = getattr(config, "CPU_FEATURES", None)  # numba sets its config attributes at run time
    if feats is None:
        if getattr(config, "CPU_NAME", None) not in (None, "host"):
            return False
        feats = llb.get_host_cpu_features().flatten()
    return "+avx512f" in feats.split(",")


def _splat(b: ir.IRBuilder, x, ty: ir.VectorType):
    undef = ir.Constant(ty, ir.Undefined)
    return b.shuffle_vector(b.insert_element(undef, x, _const(_I32, 0)), undef, _mask([0] * ty.count))


def _neighbour_x(b: ir.IRBuilder, rec0, offsets, k, c: int, live):
    """``w[k+1] - w[k-1]`` (int32 lanes; the neighbours clamped to the record, as
    :func:`trigger.bounds._neighbours`) of channel c of the records at byte offsets ``offsets`` (int64
    lanes) from ``rec0``, peak samples k (int32 lanes, 0..31): one 8-byte gather per record (samples
    start..start + 3, start = clamp(k - 1, 0, 28), hold both neighbours); lanes not ``live`` are not
    loaded (their result is meaningless)."""
    one, zero = _const(_V32x16, [1] * 16), _const(_V32x16, [0] * 16)
    km = _smax(b, b.sub(k, one), zero)
    kp = _smin(b, b.add(k, one), _const(_V32x16, [N_SAMPLES - 1] * 16))
    start = _smin(b, km, _const(_V32x16, [N_SAMPLES - 4] * 16))
    off = b.add(offsets, b.shl(b.zext(start, _V64x16), _const(_V64x16, [1] * 16)))
    off = b.add(off, _const(_V64x16, [2 * N_SAMPLES * c] * 16))
    i8p = ir.IntType(8).as_pointer()
    ptrs = b.inttoptr(b.add(_splat(b, b.ptrtoint(rec0, _I64), _V64x16), off), ir.VectorType(i8p, 16))
    fty = ir.FunctionType(_V64x16, [ir.VectorType(i8p, 16), _I32, ir.VectorType(_I1, 16), _V64x16])
    gather = cgutils.get_or_insert_function(b.module, fty, "llvm.masked.gather.v16i64.v16p0")
    g = b.call(gather, [ptrs, _const(_I32, 2), live, _const(_V64x16, [0] * 16)])

    def sample(kk):  # the int16 sample kk - start (0..3) of the 8 bytes, as int32
        sh = b.zext(b.shl(b.sub(kk, start), _const(_V32x16, [4] * 16)), _V64x16)
        return b.sext(b.trunc(b.lshr(g, sh), ir.VectorType(_I16, 16)), _V32x16)

    return b.sub(sample(kp), sample(km))


@intrinsic
def window_bits(typingctx, buf, j, n, tab, prims, s0, q_row, k_row, w_row, row_len):
    """The coincidence-window verdicts of S1..S3 for the records s0 + j .. s0 + j + 15 of ``prims`` (int16
    (N, 6, 32), C-contiguous, as :func:`record_summary`; the records j + lane >= n are not read), from their
    summaries in lanes j..j + 15 of the int32 buffer ``buf`` (1-d, C-contiguous, rows of ``row_len``
    entries, one per column: rows q_row + c the 4x peaks q, k_row + c the peak samples k of counter c = 0,
    1, 2; literal row numbers and length; j + 16 <= row_len is the caller's, not checked), into row
    ``w_row``: bit c = counter c's onset in its window, bit 3 + c = out of it, neither = undecided (the
    guard band, or q <= 0). The neighbour ratio
    is ``x / best`` with x = w[k+1] - w[k-1] (:func:`_neighbour_x`) and best = q / 4, compared as x against
    ``best * T`` on ``tab``: float32 (3 x 4 x 32,) at 32 (4 c + col) + k, the columns in_lo, in_hi, out_lo,
    out_hi of :func:`trigger.bounds.window_table` rounded outward (in_lo and out_hi up, in_hi and out_lo
    down: the in and out regions only shrink). The products are rounded away from each verdict (up where
    they bound x from below, down from above), so that for best > 0 "in" implies the scalar path's
    ``best * T0 <= x <= best * T1`` in float64 and "out" its ``x < best * T2 or x > best * T3`` (a float32
    product rounded down that exceeds the integer x exceeds it by a float32 step, far more than the float64
    rounding): the verdicts given are the scalar path's; the few records between go to the general path.
    With AVX-512 the look-ups are two-source permutes of the 32-entry columns (``vpermt2ps``) and the
    products float32 with embedded rounding; on other targets per-lane loads and float64 products (exact
    in the same sense: rounded to nearest, monotonic in T)."""
    ok = (
        isinstance(buf, types.Array) and buf.dtype == types.int32 and buf.ndim == 1 and buf.layout == "C"
        and isinstance(j, types.Integer) and isinstance(n, types.Integer)
        and isinstance(tab, types.Array) and tab.dtype == types.float32 and tab.ndim == 1 and tab.layout == "C"
        and _is_record(prims, s0)
        and all(isinstance(x, types.IntegerLiteral) for x in (q_row, k_row, w_row, row_len))
    )  # fmt: skip
    if not ok:
        return None
    rq, rk, rw, rlen = (x.literal_value for x in (q_row, k_row, w_row, row_len))
    sig = types.void(buf, j, n, tab, prims, s0, q_row, k_row, w_row, row_len)
    avx512 = target_has_avx512()

    def codegen(context, b, signature, args):
        arr = context.make_array(signature.args[0])(context, b, args[0])
        jj = context.cast(b, args[1], signature.args[1], types.int64)
        lane0 = cgutils.pointer_add(b, arr.data, b.shl(jj, _const(_I64, 2)))

        def row(r):
            return b.bitcast(cgutils.pointer_add(b, lane0, _const(_I64, 4 * rlen * r)), _V32x16.as_pointer())

        t = context.make_array(signature.args[3])(context, b, args[3]).data
        rec0 = _record_ptr(context, b, types.void(*signature.args[4:6]), args[4:6])
        rstride = b.extract_value(context.make_array(signature.args[4])(context, b, args[4]).strides, 0)
        lanes = b.add(_splat(b, jj, _V64x16), _const(_V64x16, list(range(16))))
        nn = context.cast(b, args[2], signature.args[2], types.int64)
        live = b.icmp_signed("<", lanes, _splat(b, nn, _V64x16))
        offsets = b.mul(lanes, _splat(b, rstride, _V64x16))
        ft = _F32x16 if avx512 else _F64x16
        res = _const(_V32x16, [0] * 16)
        for c in range(WINDOW_COUNTERS):
            q = b.load(row(rq + c), align=4)
            k = b.and_(b.load(row(rk + c), align=4), _const(_V32x16, [N_SAMPLES - 1] * 16))
            x = b.sitofp(_neighbour_x(b, rec0, offsets, k, c, live), ft)
            best = b.fmul(b.sitofp(q, ft), ir.Constant(ft, [0.25] * 16))
            prod = []
            for col in range(WINDOW_COLS):
                base = N_SAMPLES * (WINDOW_COLS * c + col)  # first entry of the column
                if avx512:
                    lo, hi = (
                        b.load(cgutils.pointer_add(b, t, _const(_I64, 4 * (base + h)), ft.as_pointer()), align=4)
                        for h in (0, 16)
                    )
                    fn = ir.FunctionType(ft, [ft, _V32x16, ft])
                    perm = cgutils.get_or_insert_function(b.module, fn, "llvm.x86.avx512.vpermi2var.ps.512")
                    tv = b.call(perm, [lo, k, hi])
                    fn = ir.FunctionType(ft, [ft, ft, _I32])
                    mul = cgutils.get_or_insert_function(b.module, fn, "llvm.x86.avx512.mul.ps.512")
                    prod.append(b.call(mul, [best, tv, _const(_I32, _COL_ROUND[col])]))
                else:
                    tv = ir.Constant(ft, ir.Undefined)
                    f32p = ir.FloatType().as_pointer()
                    for lane in range(16):
                        idx = b.zext(b.extract_element(k, _const(_I32, lane)), _I64)
                        ptr = cgutils.pointer_add(b, t, b.shl(b.add(idx, _const(_I64, base)), _const(_I64, 2)), f32p)
                        tv = b.insert_element(tv, b.fpext(b.load(ptr, align=4), ir.DoubleType()), _const(_I32, lane))
                    prod.append(b.fmul(best, tv))
            pos = b.icmp_signed(">", q, _const(_V32x16, [0] * 16))
            inw = b.and_(b.and_(b.fcmp_ordered("<=", prod[0], x), b.fcmp_ordered("<=", x, prod[1])), pos)
            out = b.and_(b.or_(b.fcmp_ordered("<", x, prod[2]), b.fcmp_ordered(">", x, prod[3])), pos)
            res = b.or_(res, b.shl(b.zext(inw, _V32x16), _const(_V32x16, [c] * 16)))
            res = b.or_(res, b.shl(b.zext(out, _V32x16), _const(_V32x16, [WINDOW_COUNTERS + c] * 16)))
        b.store(res, row(rw), align=4)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def trailing_zeros(typingctx, x):
    """Trailing zero bits of the uint64 ``x`` (``llvm.cttz.i64``: one instruction, 64 for x = 0): the
    index of x's lowest set bit."""
    if not (isinstance(x, types.Integer) and x.bitwidth == 64 and not x.signed):
        return None
    sig = types.int64(x)

    def codegen(context, b, signature, args):
        fn = cgutils.get_or_insert_function(b.module, ir.FunctionType(_I64, [_I64, _I1]), "llvm.cttz.i64")
        return b.call(fn, [args[0], _const(_I1, 0)])

    return sig, codegen
