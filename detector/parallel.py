"""Contiguous ranges of one serial numba kernel in Python threads: a parallel run without a second
(``parallel=True``) compile of the kernel. The kernel must release the GIL (``nogil=True``); every range is
computed by the same machine code as a serial run, so the result is the serial result, bit for bit.

The project has no ``parallel=True`` kernel, so numba's threading layer (GNU OpenMP here) is never needed, and
:func:`thread_count` does not start it: a process that started it cannot fork a child that runs a parallel
region (the child terminates: "fork() called from a process already using GNU OpenMP"), and the tests start
their emulators and DAQs as forks of one warm process (tests/launcher.py)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import numba as nb
from numba.np.ufunc import parallel as _nb_parallel


def thread_count() -> int:
    """``numba.get_num_threads()``, without starting numba's threading layer when it is not running yet:
    until then nothing (``numba.set_num_threads`` starts it) can have changed the count from
    ``numba.config.NUMBA_NUM_THREADS`` (the ``NUMBA_NUM_THREADS`` environment variable, else the cores)."""
    if getattr(_nb_parallel, "_is_initialized", True):
        return nb.get_num_threads()
    return int(nb.config.NUMBA_NUM_THREADS)  # type: ignore[attr-defined]  # set by numba.config at import


def run_ranges(kernel: Callable[[int, int], object], n: int, min_per_thread: int = 1) -> None:
    """Call ``kernel(lo, hi)`` on contiguous ranges covering ``0 .. n - 1``: one range per numba thread
    (:func:`thread_count`), with at least ``min_per_thread`` items each (so a small ``n`` runs in
    one call in this thread). The first range runs in this thread; an exception of any range is raised
    here after all have ended."""
    parts = max(1, min(thread_count(), n // max(1, min_per_thread)))
    edges = [n * i // parts for i in range(parts + 1)]
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            kernel(edges[i], edges[i + 1])
        except BaseException as exc:  # noqa: BLE001 - raised in the calling thread below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(1, parts)]
    for th in threads:
        th.start()
    run(0)
    for th in threads:
        th.join()
    if errors:
        raise errors[0]
