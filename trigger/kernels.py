"""The numba online trigger, evaluated per spill (definitions in :mod:`trigger.menu`, numpy oracle in
:mod:`trigger.reference`). Public API: :class:`SpillTrigger` (chunked, state carried), the one-shot
:func:`trigger_waveforms` / :func:`trigger_amplitudes`, and :func:`warm_up`.

Two entries, the same decisions for the same physics (both are tested bit-exact against the oracle):

- **waveform entry** (online): primitives int16 (N, 6, 32) + arrival times (N,) ns; a channel is
  reconstructed only as far as the decision needs, with the reconstruction helpers of :mod:`detector.reco`
  wherever a number is computed (:mod:`trigger.wave`, :mod:`trigger.bounds`);
- **amplitude entry** (offline re-trigger): amplitudes and onsets (N, 6) + arrival times (:mod:`trigger.amp`).

Per chunk, pass A (per-record raw bits, per-block counts), pass B (prescales, random ticks) and pass C
(gather) run over blocks of :data:`~trigger.accept.BLOCK` records (:mod:`trigger.accept`); the menu reaches
the kernels as one parameter record (:mod:`trigger.params`), its energy lines included.

The only possible difference to the numpy oracle: numpy's SIMD ``exp`` and libm's ``exp`` (numba)
differ by 1 ulp (float64) for a few % of arguments; that reaches a float32 amplitude with probability
~1e-9 per exactly-reconstructed amplitude (rare: only near a cut), and a decision only if that
amplitude then sits exactly on the cut.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np

from detector import channels as ch
from detector.parallel import run_ranges

from .accept import BLOCK, pass_b, pass_c
from .amp import amp_pass_a, amp_thresholds
from .bounds import window_table
from .menu import COUNTER_NAMES, TriggerMenu, TriggerResult
from .params import (
    A_BEAM,
    A_LINE0,
    A_RAND,
    A_REC,
    C_EOT,
    C_PISI,
    C_S1,
    MASK_DTYPE,
    RB_LINE0,
    kernel_lines,
    n_planes,
    pack,
)
from .reference import check_inputs, check_primitives, unsorted_error
from .wave import wave_pass_a

assert sys.byteorder == "little"


def _at_least(a: np.ndarray, size: int) -> np.ndarray:
    """``a`` if it holds ``size`` elements, else a new 1-d array of ``size`` of its dtype (grow-only)."""
    return a if a.size >= size else np.empty(size, a.dtype)


class _Scratch:
    """The work arrays of one chunk's passes A and B: the raw-bit planes (planes x n uint8), the accepted
    masks (n), the per-block counts and accepted counts (int64). Grow-only 1-d buffers whose leading
    elements are viewed as C-contiguous arrays of the chunk's shape, so that chunks and spills after the
    first write into pages already mapped (measured: 0.16 ns per record on the bench's spill, less than
    the ~1 ns first estimated; docs/performance.md, 2026-12-06 evening). Every element a chunk reads is
    written by that chunk first (pass A writes every raw bit and count, pass B zeroes the masks of the
    blocks it accepts in and every accepted count, pass C reads only those blocks), and nothing returned
    to a caller is a view of them."""

    __slots__ = ("acc", "amask", "bits", "cnt")

    def __init__(self) -> None:
        self.bits = np.empty(0, np.uint8)
        self.amask = np.empty(0, MASK_DTYPE)
        self.cnt = np.empty(0, np.int64)
        self.acc = np.empty(0, np.int64)

    def views(
        self, planes: int, n: int, n_blocks: int, n_cnt: int, n_acc: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(bits (planes, n), amask (n,), cnt (n_blocks, n_cnt), acc (n_blocks, n_acc)): uninitialised."""
        self.bits = _at_least(self.bits, planes * n)
        self.amask = _at_least(self.amask, n)
        self.cnt = _at_least(self.cnt, n_blocks * n_cnt)
        self.acc = _at_least(self.acc, n_blocks * n_acc)
        return (
            self.bits[: planes * n].reshape(planes, n),
            self.amask[:n],
            self.cnt[: n_blocks * n_cnt].reshape(n_blocks, n_cnt),
            self.acc[: n_blocks * n_acc].reshape(n_blocks, n_acc),
        )


#: free work arrays (:class:`_Scratch`), shared by every :class:`SpillTrigger` of the process: a chunk takes
#: one (a new one when none is free: chunks triggered at once in several threads each have their own) and
#: gives it back; at most _SCRATCH_KEEP are kept, each as large as the largest chunk it served (3 bytes
#: per record with the default menu's two bit planes and uint8 masks)
_SCRATCH: list[_Scratch] = []
_SCRATCH_KEEP = 2
_SCRATCH_LOCK = threading.Lock()


@contextmanager
def _scratch() -> Iterator[_Scratch]:
    """A :class:`_Scratch` for the duration of one chunk."""
    with _SCRATCH_LOCK:
        s = _SCRATCH.pop() if _SCRATCH else _Scratch()
    try:
        yield s
    finally:
        with _SCRATCH_LOCK:
            if len(_SCRATCH) < _SCRATCH_KEEP:
                _SCRATCH.append(s)


class SpillTrigger:
    """Trigger one spill, chunk by chunk as it arrives, with prescale counters and the random-tick state
    carried over: any chunking gives exactly the whole-spill result.

    ``process`` (waveform entry) and ``process_amplitudes`` (amplitude entry) take consecutive chunks;
    ``first_index`` is the spill index of the chunk's first record (it must follow the previous chunk).
    ``finish`` returns the :class:`~trigger.menu.TriggerResult` of the spill. ``parallel`` runs passes A
    and B in contiguous ranges of blocks on numba's thread count of threads (the same compiled serial
    kernels: :func:`detector.parallel.run_ranges`), with identical results.
    """

    def __init__(self, menu: TriggerMenu, parallel: bool = False) -> None:
        if not isinstance(menu, TriggerMenu):
            raise TypeError(f"menu must be a TriggerMenu, got {type(menu).__name__}")
        self.menu = menu
        self.parallel = bool(parallel)
        self._params = pack(menu)
        self._n_lines = kernel_lines(menu)  # line slots: the menu's energy lines, then disabled padding
        self._planes = n_planes(menu)
        # prescale counters (raw triggers since the last accepted one): beam, then the line slots
        prescales = [menu.beam.prescale] + [t.prescale for _, t in menu.energy_lines]
        self._prescale = np.array(prescales + [1] * (1 + self._n_lines - len(prescales)), np.int64)
        self._counter = np.zeros(self._prescale.size, np.int64)
        self._prev_t = -np.inf  # arrival time of the last record seen (ns)
        self._next_index = 0
        self._counts = np.zeros(8 * self._planes + 1, np.int64)
        self._acc = np.zeros(A_LINE0 + self._n_lines, np.int64)
        self._idx: list[np.ndarray] = []
        self._mask: list[np.ndarray] = []
        self._done = False

    @property
    def records(self) -> int:
        """Records processed so far."""
        return self._next_index

    def process(
        self, prims: np.ndarray, arrival_ns: np.ndarray, first_index: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Trigger a chunk of primitives: int16 (n, 6, 32) waveforms of S1, S2, S3, V1, PS_SUM, ECAL_SUM
        and (n,) arrival times (ns). Returns the chunk's accepted spill indices and masks."""
        p, tau = check_primitives(prims, arrival_ns)
        p = np.ascontiguousarray(p)
        tau = np.ascontiguousarray(tau)

        def pass_a(bits: np.ndarray, cnt: np.ndarray) -> None:
            rw = window_table(self.menu)
            self._blocks(lambda lo, hi: wave_pass_a(p, tau, self._prev_t, self._params, rw, bits, cnt, lo, hi), cnt)

        return self._chunk(pass_a, tau, first_index)

    def process_amplitudes(
        self, amplitudes: np.ndarray, onsets_ns: np.ndarray, arrival_ns: np.ndarray, first_index: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Trigger a chunk of reconstructed records: amplitudes (n, 6) float ADC counts, onsets (n, 6)
        float ns (NaN = no signal), arrival times (n,) ns. Returns the chunk's accepted indices and masks."""
        a, t, tau = check_inputs(amplitudes, onsets_ns, arrival_ns)
        tau = np.ascontiguousarray(tau)
        tha, tht = amp_thresholds(self.menu, a.dtype, t.dtype)

        def pass_a(bits: np.ndarray, cnt: np.ndarray) -> None:
            ac = tuple(a[:, c] for c in range(6))
            tc = tuple(t[:, c] for c in range(4))
            self._blocks(
                lambda lo, hi: amp_pass_a(ac, tc, tau, self._prev_t, tha, tht, self._params, bits, cnt, lo, hi), cnt
            )

        return self._chunk(pass_a, tau, first_index)

    def _blocks(self, kernel: Callable[[int, int], None], cnt: np.ndarray) -> None:
        """Run ``kernel(lo, hi)`` over the chunk's blocks (the rows of ``cnt``): in this thread, or in
        contiguous ranges on threads when ``parallel``."""
        if self.parallel:
            run_ranges(kernel, cnt.shape[0])
        else:
            kernel(0, cnt.shape[0])

    def _chunk(
        self, pass_a: Callable[[np.ndarray, np.ndarray], None], tau: np.ndarray, first_index: int | None
    ) -> tuple[np.ndarray, np.ndarray]:
        if self._done:
            raise RuntimeError("SpillTrigger.finish() was called: start a new SpillTrigger for the next spill")
        first = self._next_index if first_index is None else int(first_index)
        if first != self._next_index:
            raise ValueError(
                f"chunk starts at record {first}, expected {self._next_index}: chunks must be consecutive and in order"
            )
        n = tau.shape[0]
        if n == 0:
            return np.empty(0, np.int64), np.empty(0, MASK_DTYPE)
        n_blocks = (n + BLOCK - 1) // BLOCK
        with _scratch() as scratch:
            bits, amask, cnt, acc = scratch.views(self._planes, n, n_blocks, self._counts.size, self._acc.size)
            # pass A writes the first and the last plane in full (both entries); the masks are written (zeroed
            # first) only in blocks with accepted records, and pass C reads only those
            bits[1 : self._planes - 1] = 0
            pass_a(bits, cnt)
            if cnt[:, -1].any():
                prev = np.concatenate([[self._prev_t], tau[:-1]])
                raise unsorted_error(first + int(np.argmax(~(tau >= prev))))
            raw = np.concatenate([cnt[:, C_PISI : C_PISI + 1], cnt[:, RB_LINE0 : RB_LINE0 + self._n_lines]], axis=1)
            csum = np.cumsum(raw, axis=0)
            cstart = np.ascontiguousarray((self._counter[None, :] + csum - raw) % self._prescale[None, :])
            prev_t = self._prev_t
            self._blocks(lambda lo, hi: pass_b(bits, amask, tau, prev_t, cstart, cnt, self._params, acc, lo, hi), cnt)
            offsets = np.zeros(n_blocks + 1, np.int64)
            np.cumsum(acc[:, A_REC], out=offsets[1:])
            idx = np.empty(offsets[-1], np.int64)
            mask = np.empty(offsets[-1], MASK_DTYPE)
            if idx.size:
                pass_c(amask, acc, offsets, first, idx, mask)
            counts = cnt.sum(axis=0)
            accepted = acc.sum(axis=0)
        # commit the state only now that the chunk is known good
        self._counter = (self._counter + csum[-1]) % self._prescale
        self._prev_t = float(tau[-1])
        self._next_index = first + n
        self._counts += counts
        self._acc += accepted
        self._idx.append(idx)
        self._mask.append(mask)
        return idx, mask

    def finish(self) -> TriggerResult:
        """The spill's result (accepted indices, masks, scalers); the object cannot be used afterwards."""
        self._done = True
        m = self.menu
        c, a = self._counts, self._acc
        sc = m.empty_scalers()
        sc["records"] = self._next_index
        for k, name in enumerate(COUNTER_NAMES):
            sc[name] = int(c[C_S1 + k])
        sc["PiSi"] = int(c[C_PISI])
        sc["EOT"] = int(c[C_EOT])
        for j, (name, _) in enumerate(m.energy_lines):
            sc[f"{name}_raw"] = int(c[RB_LINE0 + j])
            sc[f"{name}_accepted"] = int(a[A_LINE0 + j])
        sc["beam_raw"] = int(c[C_PISI]) if m.beam.enabled else 0
        sc["beam_accepted"] = int(a[A_BEAM])
        sc["random_raw"] = m.n_random_ticks
        sc["random_accepted"] = int(a[A_RAND])
        idx = np.concatenate(self._idx) if self._idx else np.empty(0, np.int64)
        mask = np.concatenate(self._mask) if self._mask else np.empty(0, MASK_DTYPE)
        sc["accepted"] = int(idx.size)
        return TriggerResult(idx, mask, sc, m.trigger_names)


def trigger_waveforms(
    menu: TriggerMenu, prims: np.ndarray, arrival_ns: np.ndarray, parallel: bool = False
) -> TriggerResult:
    """Trigger a whole spill from its primitives (int16 (N, 6, 32), arrival times (N,) ns)."""
    st = SpillTrigger(menu, parallel)
    st.process(prims, arrival_ns, 0)
    return st.finish()


def trigger_amplitudes(
    menu: TriggerMenu, amplitudes: np.ndarray, onsets_ns: np.ndarray, arrival_ns: np.ndarray, parallel: bool = False
) -> TriggerResult:
    """Trigger a whole spill from amplitudes (N, 6) ADC counts, onsets (N, 6) ns, arrival times (N,) ns."""
    st = SpillTrigger(menu, parallel)
    st.process_amplitudes(amplitudes, onsets_ns, arrival_ns, 0)
    return st.finish()


def warm_up(menu: TriggerMenu | None = None, amplitude: bool = True) -> float:
    """Compile (or load from the on-disk cache: a few hundred ms) the kernels with the real dtypes on tiny
    arrays, for ``menu`` (None: the default menu; the kernels are compiled once for menus without further
    energy lines and once for menus with them: :func:`trigger.params.kernel_lines`): the waveform entry
    (int16 primitives, float64 times) and, with ``amplitude``, the amplitude entry (float32 and float64,
    columnar and row-major). The parallel path runs the same compiled kernels on threads. Call once at
    start-up. Returns the seconds it took."""
    import time

    t = time.perf_counter()
    menu = TriggerMenu() if menu is None else menu
    prims = np.zeros((3, ch.N_TRIGGER_CHANNELS, ch.N_SAMPLES), np.int16)
    prims[0, :3, 8:] = 300  # one PiSi record, accepted by the random tick at t = 0
    tau = np.array([0.0, 1.0, 2.0])
    trigger_waveforms(menu, prims, tau)
    if amplitude:
        for dt in (np.float32, np.float64):
            for order in ("C", "F"):
                a = np.zeros((3, ch.N_TRIGGER_CHANNELS), dt, order=order)
                trigger_amplitudes(menu, a, a, tau)
    return time.perf_counter() - t
