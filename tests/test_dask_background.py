"""``na64-offline background --sources`` on Dask (offline/dask_background.py): one task per source on a real
LocalCluster with 2 worker processes gives the serial table, number for number, for the same seed; every
source's progress reaches the client."""

from __future__ import annotations

import json
import threading

import pytest

from detector.config import load_config
from offline import background_sources as bs
from offline.cli import main
from offline.dask_background import predict_dask
from offline.dask_select import DASHBOARD_ADDRESS

ARGS = ["background", "--sources", "--eot", "1.6e6", "--intensity", "3e5", "--events", "200", "--seed", "3"]


def _without_timing(x):
    """``x`` without its wall times (keys ``seconds``): everything else must agree."""
    if isinstance(x, dict):
        return {k: _without_timing(v) for k, v in x.items() if k != "seconds"}
    if isinstance(x, list):
        return [_without_timing(v) for v in x]
    return x


@pytest.fixture(scope="module")
def cluster():
    from dask.distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=DASHBOARD_ADDRESS) as c:
        yield c


def test_one_task_per_source_equals_the_serial_table(cluster, tmp_path):
    serial, dask = tmp_path / "serial.json", tmp_path / "dask.json"
    assert main([*ARGS, "--serial", "--json", str(serial)]) == 0
    assert main([*ARGS, "--scheduler", cluster.scheduler_address, "--json", str(dask)]) == 0
    a, b = json.loads(serial.read_text()), json.loads(dask.read_text())
    assert list(b["sources"]) == list(bs.SOURCES)  # registry order, whatever order the tasks finished in
    assert _without_timing(b) == _without_timing(a)
    assert all(r["seconds"] > 0 for r in b["sources"].values())
    # the numbers are not trivially equal: some source fills its box with this seed, others give a bound
    assert any(r["n"] > 0 for r in a["sources"].values()) and a["total"]["err"] > 0
    assert any(r["mc"]["n_upper_90"] for r in a["sources"].values())
    # another seed gives other numbers: the seed reaches the workers
    other = tmp_path / "other.json"
    argv = [*ARGS[:-1], "4", "--scheduler", cluster.scheduler_address, "--json", str(other)]
    assert main(argv) == 0
    assert _without_timing(json.loads(other.read_text())) != _without_timing(b)


def test_progress_of_every_source_reaches_the_client(cluster):
    from dask.distributed import Client

    seen: dict[str, list[tuple[int, int]]] = {}
    threads = set()

    def progress(name: str, done: int, total: int) -> None:
        seen.setdefault(name, []).append((done, total))
        threads.add(threading.get_ident())

    cfg = load_config(None)
    names = ["upstream", "decays_in_flight", "punchthrough"]
    with Client(cluster) as client:
        r = predict_dask(cfg, 1e9, 5.1e6, 200, names, seed=2, progress=progress, client=client)
    assert list(r["sources"]) == names
    assert set(seen) == set(names)
    # the totals the estimators count in, known on the workers only: 200 electrons; 4 channels x 1000
    assert seen["upstream"][-1] == (200, 200) and seen["decays_in_flight"][-1] == (4000, 4000)
    for name, calls in seen.items():
        done, total = calls[-1]
        assert total >= 1 and done == total, name  # every bar ends full
        assert all(d <= t for d, t in calls)
    assert r["total"]["n"] == pytest.approx(sum(s["n"] for s in r["sources"].values()))
    with pytest.raises(ValueError, match="unknown background sources"):
        predict_dask(cfg, 1e9, 5.1e6, 200, ["nonsense"], client=object())
