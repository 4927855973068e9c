"""The background table of :mod:`offline.background_sources` on Dask (``na64-offline background --sources``
without ``--serial``): one task per source, on a LocalCluster (``n_workers`` processes, one thread each), on
an existing scheduler given by address, or on a given client -- the same grain as ``select``'s one task per
spill file (:mod:`offline.dask_select`).

Each task runs the source's estimator with the same arguments and seed as the serial
:func:`offline.background_sources.predict`, so the two give the same numbers; the table is assembled in
registry order whatever order the tasks finish in. A task reports its progress as Dask events on a topic of
its own call (throttled on the worker), which the client hands to ``progress(source, done, total)``.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from detector.config import Calibration, Config, load_calibration

from . import background_sources as bs
from .dask_select import dask_client

#: a task sends a progress event at most this often (s), and always its last one
PROGRESS_EVERY_S = 0.25


def _task(
    estimator: bs.Estimator,
    name: str,
    topic: str,
    cfg: Config,
    calib: Calibration,
    eot: float,
    intensity: float,
    n_mc: int,
    seed: int,
) -> tuple[dict[str, Any], tuple[int, int]]:
    """One source on a Dask worker (:func:`offline.background_sources.run_source`), its progress sent as
    ``(name, done, total)`` events on ``topic``; returns the result and its last progress ``(done, total)``
    (the client's bar ends there, whenever the events arrive)."""
    from distributed import get_worker

    worker = get_worker()
    sent = [0.0]
    last = [0, 1]

    def progress(done: int, total: int) -> None:
        last[:] = [int(done), int(total)]
        now = time.monotonic()
        if done >= total or now - sent[0] >= PROGRESS_EVERY_S:
            sent[0] = now
            worker.log_event(topic, (name, int(done), int(total)))

    r = bs.run_source(estimator, cfg, calib, eot, intensity, n_mc, seed, progress)
    return r, (last[0], last[1])


def predict_dask(
    cfg: Config,
    eot: float,
    intensity: float,
    n_mc: int,
    sources: list[str] | None = None,
    calib: Calibration | None = None,
    seed: int = 1,
    progress: Callable[[str, int, int], None] | None = None,
    *,
    scheduler: str | None = None,
    n_workers: int = 2,
    client: Any = None,
) -> dict[str, Any]:
    """:func:`offline.background_sources.predict` with one Dask task per source: on ``client``, else on the
    scheduler at ``scheduler`` (an address such as ``tcp://127.0.0.1:8786``), else on a LocalCluster of
    ``n_workers`` processes started and stopped here. ``progress(source, done, total)`` is called from the
    client's event thread and this one (serialised by a lock)."""
    from dask.distributed import as_completed

    names = bs.chosen(sources, eot, intensity, n_mc)
    if n_workers < 1:
        raise ValueError(f"n_workers must be >= 1, got {n_workers}")
    calib = load_calibration(cfg) if calib is None else calib
    lock = threading.Lock()

    finished: set[str] = set()

    def report(name: str, done: int, total: int, last: bool = False) -> None:
        with lock:
            if name in finished:  # an event that arrived after the task's result
                return
            if last:
                finished.add(name)
            if progress is not None:
                progress(name, done, total)

    token = uuid.uuid4().hex[:12]  # fresh keys and topic: never a stale result or event of an earlier call
    topic = f"background-progress-{token}"
    with dask_client(scheduler, n_workers, client) as client:
        client.subscribe_topic(topic, lambda event: report(*event[1]))
        try:
            futures = {
                client.submit(
                    _task,
                    bs.SOURCES[name],
                    name,
                    topic,
                    cfg,
                    calib,
                    float(eot),
                    float(intensity),
                    int(n_mc),
                    int(seed),
                    key=f"background-{token}-{name}",
                    pure=False,
                ): name
                for name in names
            }
            res: dict[str, dict[str, Any]] = {}
            for fut in as_completed(futures):
                name = futures[fut]
                res[name], (done, total) = fut.result()
                fut.release()
                report(name, done, total, last=True)
        finally:
            client.unsubscribe_topic(topic)
    return bs.table({name: res[name] for name in names}, eot, intensity)
