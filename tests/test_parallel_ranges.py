"""detector.parallel: contiguous ranges of a serial kernel on threads, and numba's thread count read without
starting its threading layer (a process that started GNU OpenMP cannot fork a child that runs a parallel
region; the tests' launcher forks every emulator and DAQ)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from detector.parallel import run_ranges


def test_the_ranges_cover_every_item_once_and_an_error_is_raised_after_all_ended():
    seen: list[tuple[int, int]] = []
    run_ranges(lambda lo, hi: seen.append((lo, hi)), 1000)
    covered = sorted(i for lo, hi in seen for i in range(lo, hi))
    assert covered == list(range(1000))
    seen.clear()
    run_ranges(lambda lo, hi: seen.append((lo, hi)), 10, min_per_thread=100)  # too few for a second range
    assert seen == [(0, 10)]

    def fail(lo: int, hi: int) -> None:
        if lo > 0:
            raise ValueError(f"range {lo}..{hi}")

    with pytest.raises(ValueError, match="range"):
        run_ranges(fail, 1000)


def test_the_thread_count_does_not_start_numbas_threading_layer_and_follows_set_num_threads():
    code = textwrap.dedent("""
        import numba
        from numba.np.ufunc import parallel
        from detector.parallel import run_ranges, thread_count
        n = thread_count()
        run_ranges(lambda lo, hi: None, 1000)
        assert not parallel._is_initialized, "the threading layer was started"
        assert n == numba.config.NUMBA_NUM_THREADS == numba.get_num_threads(), n
        numba.set_num_threads(1)
        assert thread_count() == 1
        print("ok")
    """)
    env = {**os.environ, "NUMBA_NUM_THREADS": "2"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
