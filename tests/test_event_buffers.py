"""The readout's recycled event buffers (online.buffers.EventPool): recycling, and faulting in the next
spill's buffer while the readout waits for primitives."""

import numpy as np

from detector.channels import N_CHANNELS, N_SAMPLES
from online.buffers import EventPool


def test_a_recycled_buffer_is_the_smallest_that_fits_and_is_kept_once():
    pool = EventPool(keep=2)
    a, b = pool.take(100), pool.take(1000)
    assert a.shape == (126, N_CHANNELS, N_SAMPLES) and b.shape[0] == 1116  # 10 % + 16 headroom
    pool.release(b)
    pool.release(a)
    pool.release(a)  # a second release is ignored
    assert pool.take(50) is a  # the smallest that fits
    assert pool.take(50) is b  # the only one left
    c = pool.take(50)  # none left: a new one
    assert c is not a and c is not b


def test_prefault_prepares_the_buffer_the_next_take_returns():
    pool = EventPool()
    step = 1 << 20
    steps = 0
    while pool.prefault(3000, step_bytes=step):
        steps += 1
    need = (3000 * 11 // 10 + 16) * N_CHANNELS * N_SAMPLES * 2
    assert steps == -(-need // step)  # every byte written once, a step at a time
    assert not pool.prefault(3000)  # nothing left to do
    buf = pool.take(2500)
    assert buf.shape[0] == 3316 and not buf.any()
    assert pool.take(2500) is not buf  # handed out once


def test_prefault_does_nothing_when_the_pool_holds_a_buffer_that_fits_and_grows_for_a_larger_spill():
    pool = EventPool()
    old = pool.take(2000)
    pool.release(old)
    assert not pool.prefault(2000)
    assert pool.prefault(100, step_bytes=1 << 20) is False  # the pooled one fits that too
    assert pool.prefault(5000, step_bytes=1 << 20)  # larger than anything held: a new one is faulted in
    while pool.prefault(5000):
        pass
    big = pool.take(5000)
    assert big.shape[0] == 5516 and pool.take(2000) is old
    assert isinstance(big, np.ndarray)
