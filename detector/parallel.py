"""Contiguous ranges of one serial numba kernel in Python threads: a parallel run without a second
(``parallel=True``) compile of the kernel. The kernel must release the GIL (``nogil=True``); every range is
computed by the same machine code as a serial run, so the result is the serial result, bit for bit."""

from __future__ import annotations

import threading
from collections.abc import Callable

import numba as nb


def run_ranges(kernel: Callable[[int, int], object], n: int, min_per_thread: int = 1) -> None:
    """Call ``kernel(lo, hi)`` on contiguous ranges covering ``0 .. n - 1``: one range per numba thread
    (``numba.get_num_threads()``), with at least ``min_per_thread`` items each (so a small ``n`` runs in
    one call in this thread). The first range runs in this thread; an exception of any range is raised
    here after all have ended."""
    parts = max(1, min(nb.get_num_threads(), n // max(1, min_per_thread)))
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
