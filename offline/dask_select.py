"""Selection of recorded runs, one Dask task per spill file (ARCHITECTURE "Scale"; STACK: ~2 ms of
scheduler overhead per task, so one spill file is the grain).

:func:`process_spill` reads one spill file, reconstructs and selects it and returns a small
:class:`SpillResult` (cut flow, histograms, the events in the box and in the side bands, EOT, truth
counts). :func:`merge` adds partial results in (run, spill) order, so the merged result does not depend on
the order in which tasks finish, nor on the number of workers: a serial run and a Dask run give identical
output. :func:`select_runs` runs the tasks on a LocalCluster (``n_workers`` processes, one thread each), on an
existing scheduler given by address, or serially in-process (``serial=True``, the benchmark baseline), and
writes:

- ``selection.json``: cut flow (total and per run), EOT, events in the box with their run/spill/event ids,
  side-band counts, truth summary when the files carry truth, the cut values and the list of files;
- ``sideband_A.npy``, ``sideband_C.npy``: E_ECAL of the side-band events (GeV; input of
  ``offline/background.py``), plus ``sideband_A_hcal.npy`` / ``sideband_C_hcal.npy`` with their E_HCAL;
- ``histograms.npz`` and ``histograms.root`` (uproot; E_ECAL vs E_HCAL, cut flow, and a TTree of the box
  events).

A spill file that cannot be read is reported (``errors`` in the JSON) and skipped, never fatal. A spill the
DAQ flagged as incomplete (``detector.records.INCOMPLETE_SPILL_FLAGS``: some accepted events were not
recorded) is left out with its EOT and listed in ``excluded_spills``: counting its EOT without all of its
events would bias the signal yield per EOT.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pathlib
import time
import tomllib
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import hist
import numpy as np

from detector.config import Calibration, Config, load_calibration, load_config, validate
from detector.records import INCOMPLETE_SPILL_FLAGS, PARTICLE_NAMES, TRUTH_APRIME, TRUTH_BEAMLINE, TRUTH_DIMUON
from detector.runrecord import read_run_record
from detector.spillfile import SpillFileError, json_default, list_spills, read_spill

from . import events as ev
from . import selection as sel
from .led_correction import corrected_event_table, led_summary

#: columns kept for every event in the box and in the side bands
BOX_COLUMNS = (
    "run",
    "spill",
    "event_id",
    "time_ns",
    "trigger_mask",
    "e_ecal",
    "e_ps",
    "e_hcal",
    "v2_mip",
    "ecal_chi2",
    "ecal_x_mm",
    "ecal_y_mm",
    "n_cells_pileup",
)
TRUTH_BOX_COLUMNS = ("truth_ptype", "truth_flags", "truth_e_beam", "truth_e_invisible", "truth_weight")


@dataclass
class SpillResult:
    """Partial result of one spill file."""

    run_dir: str
    path: str
    run: int = 0
    spill: int = 0
    n_events: int = 0
    eot: float = 0.0
    cut_flow: dict[str, int] = field(default_factory=dict)
    hists: dict[str, hist.Hist] = field(default_factory=dict)
    box: ev.Table = field(default_factory=dict)
    sidebands: dict[str, ev.Table] = field(default_factory=dict)
    truth: dict[str, float] | None = None
    tagged: dict[str, int] = field(default_factory=dict)  #: selection.tagged_electrons
    flags: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    led: dict[str, Any] = field(default_factory=dict)  #: the LED correction of the spill (offline.led_correction)


def _keep(t: ev.Table, mask: np.ndarray) -> ev.Table:
    cols = BOX_COLUMNS + tuple(c for c in TRUTH_BOX_COLUMNS if c in t)
    return {c: t[c][mask] for c in cols}


def truth_counts(t: ev.Table, s: sel.Selection) -> dict[str, float]:
    """Truth bookkeeping of one table (needs ``truth_*`` columns)."""
    ap = (t["truth_flags"] & TRUTH_APRIME) != 0
    box = s.in_box
    trig = s.masks["trigger"]
    out = {
        "events": int(ap.size),
        "aprime_recorded": int(ap.sum()),
        "aprime_triggered": int((ap & trig).sum()),
        "aprime_in_box": int((ap & box).sum()),
        "aprime_in_box_weighted": float(t["truth_weight"][ap & box].sum()),
        "box_not_aprime": int((~ap & box).sum()),
        "dimuon_recorded": int(((t["truth_flags"] & TRUTH_DIMUON) != 0).sum()),
        # the physical count: equal to dimuon_recorded in recorded data (never biased), not in an MC sample
        "dimuon_recorded_weighted": float(t["truth_weight"][(t["truth_flags"] & TRUTH_DIMUON) != 0].sum()),
        "box_beamline": int((((t["truth_flags"] & TRUTH_BEAMLINE) != 0) & box).sum()),
    }
    for code, name in PARTICLE_NAMES.items():
        out[f"box_ptype_{name}"] = int(((t["truth_ptype"] == code) & box).sum())
    return out


def process_table(t: ev.Table, cuts: sel.Cuts, result: SpillResult) -> SpillResult:
    """Fill a :class:`SpillResult` from an event table."""
    s = sel.select(t, cuts)
    result.n_events = ev.n_rows(t)
    result.cut_flow = dict(s.cut_flow())
    result.hists = sel.new_histograms()
    sel.fill_histograms(result.hists, t, s)
    result.box = _keep(t, s.in_box)
    result.sidebands = {name: _keep(t, m) for name, m in s.sidebands.items()}
    result.truth = truth_counts(t, s) if "truth_flags" in t else None
    result.tagged = sel.tagged_electrons(t, s)
    return result


def process_spill(path: str | os.PathLike, cfg: Config, calib: Calibration, run_dir: str = "") -> SpillResult:
    """One Dask task: read, reconstruct and select one spill file."""
    t0 = time.perf_counter()
    p = pathlib.Path(path)
    result = SpillResult(run_dir=run_dir or str(p.parent), path=str(p))
    try:
        data = read_spill(p)
    except SpillFileError as exc:
        result.error = str(exc)
        return result
    result.run = int(data.attrs.get("run", 0))
    result.spill = int(data.attrs.get("spill", 0))
    result.eot = float(data.attrs.get("eot", 0) or 0)
    result.flags = data.flags
    table, result.led = corrected_event_table(data, calib, cfg)
    process_table(table, sel.Cuts.from_config(cfg), result)
    result.seconds = time.perf_counter() - t0
    return result


# ------------------------------------------------------------------------------------------ merging
@dataclass
class MergedSelection:
    """Merged result of many spills."""

    cuts: sel.Cuts
    n_spills: int = 0
    n_events: int = 0
    eot: float = 0.0
    cut_flow: OrderedDict[str, int] = field(default_factory=OrderedDict)
    by_run: dict[str, dict[str, Any]] = field(default_factory=dict)
    hists: dict[str, hist.Hist] = field(default_factory=sel.new_histograms)
    run_hists: dict[str, dict[str, hist.Hist]] = field(default_factory=dict)  #: the same, per run directory
    box: ev.Table = field(default_factory=dict)
    sidebands: dict[str, ev.Table] = field(default_factory=dict)
    truth: dict[str, float] | None = None
    errors: list[str] = field(default_factory=list)
    flagged_spills: list[dict[str, Any]] = field(default_factory=list)
    #: spills left out (events and EOT): their recorded events are not all their accepted events
    excluded_spills: list[dict[str, Any]] = field(default_factory=list)
    task_seconds: float = 0.0
    led: list[dict[str, Any]] = field(default_factory=list)  #: per spill: the LED correction applied

    @property
    def n_obs(self) -> int:
        return ev.n_rows(self.box)

    def summary(self) -> dict[str, Any]:
        """JSON-able summary (the body of ``selection.json``)."""
        box_events = []
        for i in range(self.n_obs):
            row = {}
            for k, v in self.box.items():
                x = v[i].item()
                row[k] = round(x, 6) if isinstance(x, float) else x
            box_events.append(row)
        return {
            "cuts": self.cuts.as_dict(),
            "cut_order": list(sel.CUT_NAMES),
            "n_spills": self.n_spills,
            "n_events": self.n_events,
            "eot": self.eot,
            "cut_flow": dict(self.cut_flow),
            "by_run": self.by_run,
            "box": {"n_obs": self.n_obs, "events": box_events},
            "sidebands": {
                name: {"n": ev.n_rows(t), "definition": _SIDEBAND_DOC[name]} for name, t in self.sidebands.items()
            },
            "truth": self.truth,
            "errors": self.errors,
            "flagged_spills": self.flagged_spills,
            "excluded_spills": self.excluded_spills,
            "led_correction": led_summary(self.led),
        }


_SIDEBAND_DOC = {
    "A": "preselected (no V2/HCAL veto), E_ECAL < ecal_max_gev and E_HCAL >= hcal_max_gev",
    "C": "preselected, V2 veto passed, E_HCAL < hcal_max_gev and E_ECAL >= ecal_max_gev",
}


def _binomial(k: int, n: int) -> tuple[float | None, float | None]:
    """k / n and its binomial error (None, None without events)."""
    if n <= 0:
        return None, None
    f = k / n
    return f, math.sqrt(max(f * (1.0 - f), 0.0) / n)


def merge(results: Iterable[SpillResult], cuts: sel.Cuts) -> MergedSelection:
    """Add partial results in (run directory, run, spill) order (deterministic)."""
    m = MergedSelection(cuts=cuts)
    ordered = sorted(results, key=lambda r: (r.run_dir, r.run, r.spill, r.path))
    boxes: list[Any] = []
    sides: dict[str, list[Any]] = {name: [] for name in sel.SIDEBANDS}
    for r in ordered:
        run = m.by_run.setdefault(
            r.run_dir, {"run": r.run, "n_spills": 0, "n_events": 0, "eot": 0.0, "n_obs": 0, "cut_flow": OrderedDict()}
        )
        if r.error is not None:
            m.errors.append(r.error)
            continue
        if r.flags:
            m.flagged_spills.append({"run_dir": r.run_dir, "spill": r.spill, "flags": list(r.flags)})
        bad = sorted(set(r.flags) & INCOMPLETE_SPILL_FLAGS)
        if bad:  # part of its accepted events is missing: counting its EOT would bias the yield
            m.excluded_spills.append(
                {"run_dir": r.run_dir, "spill": r.spill, "flags": bad, "n_events": r.n_events, "eot": r.eot}
            )
            continue
        m.n_spills += 1
        m.led.append({"run_dir": r.run_dir, "spill": r.spill, **r.led})
        m.n_events += r.n_events
        m.eot += r.eot
        m.task_seconds += r.seconds
        run["n_spills"] += 1
        run["n_events"] += r.n_events
        run["eot"] += r.eot
        run["n_obs"] += ev.n_rows(r.box)
        for name, n in r.cut_flow.items():
            m.cut_flow[name] = m.cut_flow.get(name, 0) + n
            run["cut_flow"][name] = run["cut_flow"].get(name, 0) + n
        rh = m.run_hists.setdefault(r.run_dir, sel.new_histograms())
        for name, h in r.hists.items():
            m.hists[name] += h
            rh[name] += h
        tag = run.setdefault("tagged_electrons", {"beam_electrons": 0, "good_track": 0})
        for k in ("beam_electrons", "good_track"):
            tag[k] += int(r.tagged.get(k, 0))
        tag["efficiency"], tag["efficiency_err"] = _binomial(tag["good_track"], tag["beam_electrons"])
        boxes.append(r.box)
        for name in sel.SIDEBANDS:
            sides[name].append(r.sidebands.get(name, {}))
        if r.truth is not None:
            m.truth = dict(r.truth) if m.truth is None else {k: m.truth.get(k, 0) + v for k, v in r.truth.items()}
    if not m.cut_flow:
        m.cut_flow = OrderedDict((name, 0) for name in ("all",) + sel.CUT_NAMES)
    m.box = ev.concat(boxes) or {c: np.zeros(0) for c in BOX_COLUMNS}
    m.sidebands = {name: (ev.concat(parts) or {c: np.zeros(0) for c in BOX_COLUMNS}) for name, parts in sides.items()}
    return m


# ------------------------------------------------------------------------------------------ config
def run_setup(
    run_dir: str | os.PathLike, cfg: Config | None = None, calib: Calibration | None = None
) -> tuple[Config, Calibration]:
    """Configuration and calibration to analyse a run with. ``cfg`` when given, else the configuration the
    DAQ stored in the run record (``config_toml``, written by ``detector.config.dump_toml``), else the
    defaults. ``calib`` when given, else the calibration file named in the run record
    (``calibration.source``) when it still exists, else the one the configuration names."""
    rec: dict[str, Any] = {}
    try:
        rec = read_run_record(run_dir)
    except SpillFileError:
        pass
    if cfg is None:
        cfg = load_config(None)
        text = rec.get("config_toml")
        if isinstance(text, str) and text.strip():
            try:
                cfg = validate(tomllib.loads(text), f"{run_dir}/run.json:config_toml")
            except (ValueError, tomllib.TOMLDecodeError):
                cfg = load_config(None)
    if calib is None:
        source = (rec.get("calibration") or {}).get("source") if isinstance(rec.get("calibration"), dict) else None
        if isinstance(source, str) and pathlib.Path(source).is_file():
            calib = load_calibration(cfg, path=source)
        else:
            calib = load_calibration(cfg)
    return cfg, calib


def spill_tasks(run_dirs: Sequence[str | os.PathLike]) -> list[tuple[str, str]]:
    """(run_dir, spill path) of every finished spill file of the runs."""
    tasks = []
    for rd in run_dirs:
        for p in list_spills(rd):
            tasks.append((str(pathlib.Path(rd)), str(p)))
    return tasks


# ------------------------------------------------------------------------------------------ drivers
ProgressFn = Callable[[int, int], None]


def _rich_progress(total: int):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    prog = Progress(
        TextColumn("selecting spills"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    return prog, prog.add_task("spills", total=total)


def run_serial(
    tasks: Sequence[tuple[str, str]], cfg_of: dict[str, Config], calib_of: dict[str, Calibration], progress: bool = True
) -> list[SpillResult]:
    """In-process, no Dask (the benchmark baseline)."""
    out = []
    prog, tid = _rich_progress(len(tasks)) if progress else (None, None)
    if prog:
        prog.start()
    try:
        for rd, p in tasks:
            out.append(process_spill(p, cfg_of[rd], calib_of[rd], rd))
            if prog:
                prog.advance(tid)
    finally:
        if prog:
            prog.stop()
    return out


#: where a LocalCluster made here serves its dashboard: a free loopback port (the default, 8787, is taken by
#: the second of two clusters running at once)
DASHBOARD_ADDRESS = "127.0.0.1:0"


@contextlib.contextmanager
def dask_client(scheduler: str | None, n_workers: int, client: Any = None) -> Iterator[Any]:
    """``client`` as it is; else a Client of the scheduler at ``scheduler`` (an address such as
    ``tcp://127.0.0.1:8786``), else of a LocalCluster of ``n_workers`` processes x 1 thread: the ones made
    here are closed on leaving."""
    from dask.distributed import Client, LocalCluster

    if client is not None:
        yield client
        return
    if scheduler:
        with Client(scheduler, timeout="30s") as c:
            yield c
        return
    with (
        LocalCluster(
            n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=DASHBOARD_ADDRESS
        ) as cluster,
        Client(cluster) as c,
    ):
        yield c


def run_dask(
    tasks: Sequence[tuple[str, str]],
    cfg_of: dict[str, Config],
    calib_of: dict[str, Calibration],
    scheduler: str | None = None,
    n_workers: int = 2,
    progress: bool = True,
    client: Any = None,
) -> list[SpillResult]:
    """One task per spill file on a LocalCluster (``n_workers`` processes x 1 thread), on the scheduler at
    ``scheduler`` (an address such as ``tcp://127.0.0.1:8786``), or on an existing ``client``."""
    from dask.distributed import as_completed

    with dask_client(scheduler, n_workers, client) as client:
        token = uuid.uuid4().hex[:12]  # fresh keys: never a stale result of an earlier call
        futures = [
            client.submit(process_spill, p, cfg_of[rd], calib_of[rd], rd, key=f"select-{token}-{i}", pure=False)
            for i, (rd, p) in enumerate(tasks)
        ]
        results = []
        prog, tid = _rich_progress(len(futures)) if progress else (None, None)
        if prog:
            prog.start()
        try:
            for fut in as_completed(futures):
                results.append(fut.result())
                fut.release()
                if prog:
                    prog.advance(tid)
        finally:
            if prog:
                prog.stop()
        return results


def select_runs(
    run_dirs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike | None,
    scheduler: str | None = None,
    n_workers: int = 2,
    *,
    config: Config | None = None,
    calibration: Calibration | None = None,
    serial: bool = False,
    progress: bool = True,
    client: Any = None,
) -> MergedSelection:
    """Select every spill of ``run_dirs`` and write the outputs to ``out_dir`` (None: write nothing).

    ``config``/``calibration`` default to the run's stored configuration (see :func:`run_setup`)."""
    dirs = [str(pathlib.Path(r)) for r in run_dirs]
    if not dirs:
        raise ValueError("no run directory given")
    if n_workers < 1:
        raise ValueError(f"n_workers must be >= 1, got {n_workers}")
    setups = {rd: run_setup(rd, config, calibration) for rd in dirs}
    cfg_of = {rd: s[0] for rd, s in setups.items()}
    calib_of = {rd: s[1] for rd, s in setups.items()}
    tasks = spill_tasks(dirs)
    if serial:
        results = run_serial(tasks, cfg_of, calib_of, progress)
    else:
        results = run_dask(tasks, cfg_of, calib_of, scheduler, n_workers, progress, client)
    cuts = sel.Cuts.from_config(cfg_of[dirs[0]])
    merged = merge(results, cuts)
    for rd in dirs:
        merged.by_run.setdefault(rd, {"run": 0, "n_spills": 0, "n_events": 0, "eot": 0.0, "n_obs": 0, "cut_flow": {}})
    if out_dir is not None:
        write_outputs(merged, out_dir, dirs)
    return merged


# ------------------------------------------------------------------------------------------ outputs
def _atomic_write_text(path: pathlib.Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _save_npy(path: pathlib.Path, arr: np.ndarray) -> None:
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.npy")
    np.save(tmp, arr, allow_pickle=False)
    os.replace(tmp, path)


def write_root(
    path: str | os.PathLike, hists: dict[str, hist.Hist], trees: dict[str, ev.Table] | None = None
) -> pathlib.Path:
    """Histograms (and flat TTrees of tables) into a ROOT file with uproot."""
    import uproot

    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with uproot.recreate(tmp) as f:
        for name, h in hists.items():
            f[name] = h
        for name, t in (trees or {}).items():
            cols = {k: np.ascontiguousarray(v) for k, v in t.items() if v.ndim == 1 and v.dtype.kind in "biuf"}
            if cols:
                f[name] = cols
    os.replace(tmp, path)
    return path


def write_outputs(m: MergedSelection, out_dir: str | os.PathLike, run_dirs: Sequence[str]) -> list[pathlib.Path]:
    """Write selection.json, side-band .npy files, histograms.npz and histograms.root."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: list[pathlib.Path] = []
    for name, t in m.sidebands.items():
        for suffix, col in (("", "e_ecal"), ("_hcal", "e_hcal")):
            p = out / f"sideband_{name}{suffix}.npy"
            _save_npy(p, np.asarray(t.get(col, np.zeros(0)), dtype=np.float64))
            files.append(p)
    p = out / "histograms.npz"
    tmp = out / f".histograms.tmp-{os.getpid()}.npz"
    np.savez(tmp, **sel.histograms_to_arrays(m.hists))  # type: ignore[arg-type]
    os.replace(tmp, p)
    files.append(p)
    files.append(write_root(out / "histograms.root", m.hists, {"box_events": m.box}))
    summary = m.summary()
    summary["runs"] = list(run_dirs)
    p = out / "selection.json"
    files.append(p)
    summary["files"] = [str(f) for f in files]
    _atomic_write_text(p, json.dumps(summary, indent=1, default=json_default) + "\n")
    return files
