"""Fault matrix (issue 9, part 2): every fault the emulator can inject, on every endpoint, during a
multi-spill ``na64-daq run`` (subprocess).

One emulator (``--no-pty``: HV and table on TCP) serves every case; faults are cleared between cases
(``clear_faults``; a latched HV trip is cleared with ``CLR`` after its case). Per case a fresh DAQ records
``SPILLS_PER_CASE`` spills into its own run directory with the HV read-back on (so hv faults hit it);
the fault is injected once the first spill is recorded. Table faults are exercised by a table client
(:class:`hv_control.table.HCALTableDriver`, in this process) polling the position and moving to a cell
and HOME while the run goes on: every call must succeed or raise a clear ``TableError``. In every case an
HV-writing client (:class:`hv_control.supply.HVSupply`, in this process) sets voltages on a few channels
in a loop and asks for one above the limit (the test's own) each round, which the supply layer must refuse: every
outcome is a success or an ``HVError``, and it must have set voltages.

Every case ends with:
- the DAQ exited 0 after the requested spills, every finished spill file intact (``read_spill``), no
  temporary file, run record and files agree;
- accounting reconciled (``online.recorder.reconcile``): a spill is complete (seen == particles,
  accepted == read out == recorded, and accepted == the emulator's truth) or flagged with the reason;
- every recorded spill agrees exactly with an independent oracle (tests/oracle.py: the reference trigger
  on the crate's primitives, the crate's waveforms of the accepted records); a spill the fault damaged
  must still be right for what it recorded;
- the fault took effect (the emulator's ``faults_fired`` counters; the feed's ``spills_stalled``; the
  trip in the HV read-back) and left its mark (msadc block/connection faults: the spill retried and
  marked, or flagged; a crate restart: reported in the run record by its new boot id), hv/table/feed
  faults do no damage to the data;
- no accepted VSET above min(calibration hv_limit, hv.max_v) in the emulator's ``hv_log``;
- no na64-daq / sim_frontend process left behind (psutil, children of this process; the shared
  emulator and its feed child excepted until the module ends, when they must be gone too).

The matrix is printed in the terminal summary (no ``-s`` needed).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
from daq_helpers import (
    _no_daq_left_behind,  # noqa: F401  (autouse fixture)
    spills_recorded,
    start_daq,
    wait_until,
)
from emulator_fixture import EmulatorHandle, start_emulator
from oracle import start_oracle
from short_cycle import LED_IN_A_SHORT_GAP

from detector import channels as chmap
from detector.config import load_calibration, load_config
from detector.records import INCOMPLETE_SPILL_FLAGS
from detector.runrecord import read_run_record
from detector.spillfile import list_spills, read_spill, run_dir
from online.recorder import reconcile

pytestmark = pytest.mark.slow

#: 0.3 s spills every 0.5 s, 2e4 particles; short DAQ and HV timeouts so that faults bite. The faults act
#: in seconds (their holds, timeouts and stalls), the cases count spills: the cycle only sets how long a case
#: waits for its spills. The crate's ring holds 12 spills (6 s, as 6 spills of a 1 s cycle did), the LED
#: pulses fit the 0.2 s gap after the flat top (0.02 s, then 50 pulses 2 ms apart)
MATRIX_CONFIG: dict[str, Any] = {
    "spill": {"length_s": 0.3, "supercycle_s": 0.5},
    "beam": {"particles_per_spill": 2e4, "calibration_particles_per_spill": 2e3},
    "emulator": {"spill_buffer": 12, "table_speed_mm_per_s": 1000.0},
    "led": LED_IN_A_SHORT_GAP,
    "daq": {
        "timeout_ms": 1500,
        "retries": 2,
        "chunk_records": 8192,
        "heartbeat_s": 0.2,
        "spill_timeout_s": 2.0,
        "poll_interval_s": 0.02,
        "sample_waveforms": 4,
    },
    "hv": {"timeout_s": 1.0, "retries": 1},
}
SPILLS_PER_CASE = 4  #: plus the spills of the time a fault is held, and one more (the run must go on after it)
TRIP_CHANNEL = "HCAL-1-1-2"
ST_TRIP = 0x80
TABLE_CELL = "0-0-0"

#: (endpoint, kind) -> (fault parameters, seconds to hold the fault before clearing it; None = until the end)
CASES: dict[tuple[str, str], tuple[dict[str, Any], float | None]] = {
    ("msadc", "delay"): ({"seconds": 2.0}, 2.5),  # > daq.timeout_ms: queries time out
    ("msadc", "no_reply"): ({"count": 2}, None),
    ("msadc", "drop"): ({}, None),
    ("msadc", "truncate"): ({}, None),
    ("msadc", "corrupt"): ({}, None),
    ("msadc", "restart"): ({}, None),  # the crate reboots: new boot id, ring and connections gone
    ("hv", "delay"): ({"seconds": 2.5}, 4.0),  # > (retries+1) * hv.timeout_s: read-backs fail
    ("hv", "no_reply"): ({"count": 3}, None),
    ("hv", "drop"): ({}, None),
    ("hv", "noise"): ({"count": 5}, None),
    ("hv", "trip"): ({"channel_id": TRIP_CHANNEL}, None),
    ("table", "delay"): ({"seconds": 2.5}, 4.0),  # > the table client's 2 x 1 s: TableError
    ("table", "no_reply"): ({"count": 3}, None),
    ("table", "drop"): ({}, None),
    ("table", "noise"): ({"count": 5}, None),
    ("feed", "stall"): ({"seconds": 3.5}, None),  # > daq.spill_timeout_s: noted as a stall
}

#: cases whose fault takes a while to play out (seconds, taken as spills of the cycle): an hv no_reply of 3
#: costs the read-back 3 timeouts of hv.timeout_s (two in one failed read, one more after the reconnect), one
#: read per spill; after a lost reply the transport waits up to two more timeouts for it before its next
#: request (docs/protocols.md 2.5)
EXTRA_SECONDS = {("hv", "no_reply"): 4.0, ("table", "no_reply"): 3.0}


def spills_of_case(endpoint: str, kind: str) -> int:
    """Spills the DAQ records in a case: :data:`SPILLS_PER_CASE`, plus the spills of the seconds the fault is
    held and one more, plus those of its :data:`EXTRA_SECONDS`, on the cycle of :data:`MATRIX_CONFIG`."""
    cycle = float(MATRIX_CONFIG["spill"]["supercycle_s"])
    hold_s = CASES[(endpoint, kind)][1]
    held = math.ceil(hold_s / cycle) + 1 if hold_s else 0
    return SPILLS_PER_CASE + held + math.ceil(EXTRA_SECONDS.get((endpoint, kind), 0.0) / cycle)


#: channels the HV-writing client sets (ECAL0 cells: not the tripped one), volts around their set point
HV_WRITER_CHANNELS = ("ECAL0-0-0", "ECAL0-0-1", "ECAL0-0-2")
HV_WRITER_OFFSETS_V = (-4.0, 0.0)
HV_OVER_LIMIT_V = 20.0  #: the writer asks for limit + this each round: the supply must refuse it

COLUMNS = (
    "endpoint",
    "fault",
    "spills recorded",
    "flagged spills",
    "flags",
    "reconciled",
    "oracle",
    "HV ok",
    "leftovers",
    "result",
    "notes",
)


# ------------------------------------------------------------------------------------------ summary
@dataclass
class Row:
    endpoint: str
    fault: str
    spills: int = 0
    flagged: int = 0
    flags: str = ""
    reconciled: str = "?"
    oracle: str = "?"
    hv_ok: str = "?"
    leftovers: int | str = "?"
    result: str = "FAIL"
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def cells(self) -> list[str]:
        return [
            self.endpoint,
            self.fault,
            str(self.spills),
            str(self.flagged),
            self.flags or "-",
            self.reconciled,
            self.oracle,
            self.hv_ok,
            str(self.leftovers),
            self.result,
            "; ".join(self.notes),
        ]


class _MatrixReport:
    """A pytest plugin registered at run time: prints the matrix in the terminal summary."""

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.footer: list[str] = []

    def table(self) -> list[str]:
        cols = list(COLUMNS) + ["s"]
        data = [r.cells() + [f"{r.seconds:.1f}"] for r in self.rows]
        width = [max(len(c), *(len(d[i]) for d in data)) if data else len(c) for i, c in enumerate(cols)]
        width[-2] = min(width[-2], 100)  # notes wrap-free but bounded
        line = lambda cells: " | ".join(str(c)[: width[i]].ljust(width[i]) for i, c in enumerate(cells))  # noqa: E731
        out = [line(cols), "-+-".join("-" * w for w in width)]
        out += [line(d) for d in data]
        return out

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.rows:
            return
        terminalreporter.write_sep("=", "DAQ fault matrix")
        for ln in self.table():
            terminalreporter.write_line(ln)
        for ln in self.footer:
            terminalreporter.write_line(ln)


_PLUGIN_NAME = "na64-fault-matrix-report"


@pytest.fixture(scope="module")
def matrix_report(request: pytest.FixtureRequest) -> _MatrixReport:
    pm = request.config.pluginmanager
    rep = pm.get_plugin(_PLUGIN_NAME)
    if rep is None:
        rep = _MatrixReport()
        pm.register(rep, _PLUGIN_NAME)
    return rep


# ------------------------------------------------------------------------------------------ emulator
def _ours(p: psutil.Process) -> str | None:
    """'na64-daq' / 'sim_frontend' if ``p`` is one of those processes, else None."""
    try:
        cmd = " ".join(p.cmdline())
        if p.status() == psutil.STATUS_ZOMBIE:
            return None
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
    if "online.daq_cli" in cmd or "na64-daq" in cmd:
        return "na64-daq"
    if "sim_frontend" in cmd or "na64-emulator" in cmd:
        return "sim_frontend"
    return None


def leftover_processes(exclude: set[int] = frozenset()) -> list[str]:
    """Live na64-daq / sim_frontend descendants of this process (pids in ``exclude`` and their
    descendants excepted)."""
    excluded = set(exclude)
    for pid in exclude:
        try:
            excluded |= {c.pid for c in psutil.Process(pid).children(recursive=True)}
        except psutil.NoSuchProcess:
            pass
    out = []
    for c in psutil.Process().children(recursive=True):
        if c.pid in excluded:
            continue
        kind = _ours(c)
        if kind:
            out.append(f"{kind} pid {c.pid}")
    return out


@pytest.fixture(scope="module")
def matrix_emulator(tmp_path_factory: pytest.TempPathFactory, matrix_report: _MatrixReport):
    tmp = tmp_path_factory.mktemp("fault_matrix")
    # the HV line has one owner: the DAQ's read-back takes the TCP port, the HV writer the pty port
    emu = start_emulator(tmp, MATRIX_CONFIG, [], name="matrix-emulator")
    try:
        emu.wait_for_spills(1, timeout_s=120)
        yield emu
    finally:
        emu.stop()
        left = leftover_processes()
        matrix_report.footer.append(
            f"shared emulator stopped; processes left after the module: {', '.join(left) if left else 'none'}"
        )
        assert not left, f"processes left behind: {left}"


@pytest.fixture(scope="module")
def limits(matrix_emulator: EmulatorHandle) -> np.ndarray:
    """Per-channel HV limit (V): min(calibration hv_limit, hv.max_v)."""
    cfg = load_config(matrix_emulator.config_path)
    calib = load_calibration(cfg)
    return np.minimum(np.asarray(calib.hv_limit, dtype=float), float(cfg.hv.max_v))


# ------------------------------------------------------------------------------------------ table client
class TableClient(threading.Thread):
    """Polls the table position and moves to a cell and HOME in a loop; every outcome is kept."""

    def __init__(self, address: str) -> None:
        super().__init__(name="table-client", daemon=True)
        self.address = address
        self.ok = 0
        self.table_errors: list[str] = []
        self.other_errors: list[str] = []
        self.slowest_s = 0.0
        self._stop_evt = threading.Event()
        self.driver: Any = None

    def _call(self, fn, *args: Any, **kw: Any) -> Any:
        from hv_control.table import TableError

        t = time.monotonic()
        try:
            r = fn(*args, **kw)
            self.ok += 1
            return r
        except TableError as exc:
            msg = str(exc)
            self.table_errors.append(f"{type(exc).__name__}: {msg}")
            if not msg.strip():
                self.other_errors.append(f"{type(exc).__name__} without a message")
        except Exception as exc:  # noqa: BLE001 - anything else is a driver bug, recorded as a problem
            self.other_errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            self.slowest_s = max(self.slowest_s, time.monotonic() - t)
        return None

    def run(self) -> None:
        from hv_control.table import HCALTableDriver

        self.driver = HCALTableDriver.connect(self.address, timeout_s=1.0, retries=1, move_timeout_s=10.0, poll_s=0.02)
        while not self._stop_evt.is_set():
            self._call(self.driver.position)
            self._call(self.driver.move_to_cell, TABLE_CELL)
            self._call(self.driver.position)
            self._call(self.driver.home)
            self._stop_evt.wait(0.05)

    def stop(self) -> None:
        self._stop_evt.set()
        self.join(timeout=60)


class HVWriter(threading.Thread):
    """Sets the voltages of :data:`HV_WRITER_CHANNELS` through the supply layer in a loop, between their
    set point and a few volts below it, and asks for one above ``limits`` (V, by channel id) each round;
    every outcome kept.
    Ends with the channels back at their set points (retried after the case's fault is cleared)."""

    def __init__(self, address: str, cfg: Any, calib: Any, limits: np.ndarray) -> None:
        super().__init__(name="hv-writer", daemon=True)
        self.address, self.cfg, self.calib, self.limits = address, cfg, calib, limits
        self.ids = [chmap.by_name(n).id for n in HV_WRITER_CHANNELS]
        self.sets_ok = 0
        self.refused = 0  #: over-limit requests refused by the supply layer (HVLimitError)
        self.hv_errors: list[str] = []
        self.other_errors: list[str] = []
        self.over_limit_sent: list[str] = []
        self._stop_evt = threading.Event()
        self.supply: Any = None

    def targets(self, offset: float) -> dict[int, float]:
        return {c: float(self.calib.hv_set[c]) + offset for c in self.ids}

    def _round(self, offset: float) -> None:
        from hv_control.supply import HVError, HVLimitError

        try:
            self.supply.set_voltages(self.targets(offset))
            self.sets_ok += 1
        except HVError as exc:
            self.hv_errors.append(f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # noqa: BLE001 - anything else is a bug of the supply layer, recorded
            self.other_errors.append(f"{type(exc).__name__}: {exc}")
        over = self.ids[0]
        try:
            self.supply.set_voltage(over, float(self.limits[over]) + HV_OVER_LIMIT_V)
            self.over_limit_sent.append(f"{chmap.CHANNELS[over].name}: set above its limit without an error")
        except HVLimitError:
            self.refused += 1
        except HVError as exc:
            self.hv_errors.append(f"over-limit request: {type(exc).__name__}: {exc}")
        except Exception as exc:  # noqa: BLE001 - anything else is a bug of the supply layer, recorded
            self.other_errors.append(f"over-limit request: {type(exc).__name__}: {exc}")

    def run(self) -> None:
        from hv_control.supply import HVSupply

        self.supply = HVSupply.connect(self.address, self.cfg, self.calib)
        i = 0
        while not self._stop_evt.is_set():
            self._round(HV_WRITER_OFFSETS_V[i % len(HV_WRITER_OFFSETS_V)])
            i += 1
            self._stop_evt.wait(0.3)

    def stop(self) -> None:
        self._stop_evt.set()
        self.join(timeout=120)

    def restore(self) -> bool:
        """Back to the set points (after the fault is cleared); whether that worked."""
        from hv_control.supply import HVError

        for _ in range(3):
            try:
                self.supply.set_voltages(self.targets(0.0))
                return True
            except HVError as exc:
                self.hv_errors.append(f"restore: {type(exc).__name__}: {exc}")
        return False


# ------------------------------------------------------------------------------------------ the check
def check_case(rdir: Path, emu: EmulatorHandle, row: Row) -> tuple[list[str], dict[str, Any]]:
    """Spill files intact, record and files agree, accounting reconciled; fills ``row``; returns problems."""
    problems: list[str] = []
    rec = read_run_record(rdir)
    files = list_spills(rdir)
    if [p.name for p in rdir.iterdir() if ".tmp-" in p.name]:
        problems.append("temporary files left behind")
    entries = {int(e["spill"]): e for e in rec["spills"]}
    if sorted(entries) != [int(p.name[6:12]) for p in files]:
        problems.append(f"run record spills {sorted(entries)} and files {[p.name for p in files]} disagree")
    if rec.get("in_flight") is not None:
        problems.append(f"spill still in flight: {rec['in_flight']}")
    row.spills = len(files)
    row.flagged = sum(1 for e in rec["spills"] if e.get("flags"))
    row.flags = ",".join(sorted({f for e in rec["spills"] for f in e.get("flags", [])}))
    recon: list[str] = []
    for p in files:
        try:
            d = read_spill(p)
        except Exception as exc:  # noqa: BLE001 - SpillFileError or worse: the file is damaged, recorded
            problems.append(f"{p.name} unreadable: {exc}")
            continue
        e = entries.get(int(d.attrs["spill"]))
        if e is None:
            continue
        recon += reconcile(e)
        if not (d.n_events == e["n_recorded"] == d.attrs["n_recorded"]):
            recon.append(f"{p.name}: {d.n_events} events in the file, record says {e['n_recorded']}")
        if d.attrs["n_accepted"] != e["n_accepted"] or sorted(d.flags) != sorted(e["flags"]):
            recon.append(f"{p.name}: file attrs and run record disagree")
        complete = not (set(e["flags"]) & INCOMPLETE_SPILL_FLAGS)
        if complete:
            if not (e["n_accepted"] == e["n_read_out"] == e["n_recorded"] and e["n_seen"] == e["n_particles"]):
                recon.append(f"spill {e['spill']} unflagged but counts {e} do not match")
            if e["n_particles"]:
                t = emu.control({"cmd": "truth", "spill": int(e["crate_spill"])})
                if t.get("ok") and "accepted" in t and t["accepted"] != e["n_accepted"]:
                    recon.append(f"spill {e['spill']}: accepted {e['n_accepted']}, emulator truth {t['accepted']}")
                if t.get("ok") and t["particles"] != e["n_particles"]:
                    recon.append(f"spill {e['spill']}: {e['n_particles']} particles, emulator {t['particles']}")
        if d.n_events and (not (d.event_id[1:] > d.event_id[:-1]).all() or not d.trigger_mask.all()):
            recon.append(f"{p.name}: event ids not increasing or untriggered events")
    tot = rec["totals"]
    unflagged_loss = sum(
        int(e["n_accepted"]) - int(e["n_recorded"])
        for e in rec["spills"]
        if not set(e["flags"]) & INCOMPLETE_SPILL_FLAGS
    )
    if unflagged_loss:
        recon.append(f"{unflagged_loss} accepted events not recorded in unflagged spills")
    row.reconciled = "yes" if not recon else "NO"
    problems += recon
    row.notes.append(f"events {tot['events_recorded']}/{tot['events_accepted']}")
    return problems, rec


def hv_check(emu: EmulatorHandle, limits: np.ndarray, row: Row, since: int = 0) -> list[str]:
    """No accepted VSET above the limit in the emulator's HV log (entries from ``since`` on), and at
    least one accepted VSET there (the check has something to check)."""
    log = emu.control({"cmd": "hv_log"})["log"][since:]
    vset = [e for e in log if e["par"] == "VSET" and e["accepted"]]
    if not vset:
        row.hv_ok = "NO (no VSET)"
        return ["no VSET accepted by the HV mainframe during the case: the HV check had nothing to check"]
    bad = [
        e
        for e in vset
        if e["channel_id"] is None or e["value"] is None or float(e["value"]) > float(limits[int(e["channel_id"])])
    ]
    row.hv_ok = "yes" if not bad else f"NO ({len(bad)})"
    return [f"VSET beyond the limit: {e}" for e in bad[:5]]


# ------------------------------------------------------------------------------------------ the cases
@pytest.mark.parametrize("endpoint,kind", list(CASES), ids=[f"{e}-{k}" for e, k in CASES])
def test_fault_matrix(
    endpoint: str,
    kind: str,
    matrix_emulator: EmulatorHandle,
    limits: np.ndarray,
    matrix_report: _MatrixReport,
    tmp_path: Path,
) -> None:
    emu = matrix_emulator
    params, hold_s = CASES[(endpoint, kind)]
    n_spills = spills_of_case(endpoint, kind)
    row = Row(endpoint, kind)
    matrix_report.rows.append(row)
    t_case = time.monotonic()
    problems: list[str] = []
    emu.check_alive()
    emu.control({"cmd": "clear_faults"})
    before = emu.state()
    hv_log_from = len(emu.control({"cmd": "hv_log"})["log"])
    cfg = load_config(emu.config_path)
    writer = HVWriter(emu.hv_pty or emu.hv, cfg, load_calibration(cfg), limits)
    writer.start()
    oracle = start_oracle(emu.endpoints_path, emu.config_path, run_dir(tmp_path / "data", 1))
    daq = start_daq(
        tmp_path, emu.config_path, emu.endpoints_path, tmp_path / "data", spills=n_spills, name=f"daq-{endpoint}-{kind}"
    )
    client: TableClient | None = None
    trip_id = chmap.by_name(TRIP_CHANNEL).id

    def fired() -> int:
        st = emu.state()
        if endpoint == "feed":
            return st["spills"]["spills_stalled"] - before["spills"]["spills_stalled"]
        if kind == "trip":
            return int(
                any(
                    c["tripped"]
                    for c in emu.control({"cmd": "state", "hv": True})["hv"]["channels"]
                    if c["channel_id"] == trip_id
                )
            )
        return st["faults_fired"][endpoint][kind] - before["faults_fired"][endpoint][kind]

    try:
        wait_until(lambda: spills_recorded(daq) >= 1 or daq.proc.poll() is not None, 120, "the first spill")
        assert daq.proc.poll() is None, f"na64-daq exited early ({daq.proc.returncode})\n{daq.log()[-4000:]}"
        wait_until(lambda: writer.sets_ok >= 1 or not writer.is_alive(), 60, "the HV writer's first setting")
        t_inject = time.time()
        if endpoint == "table":
            client = TableClient(emu.table)
            client.start()
            wait_until(lambda: client.ok >= 1 or not client.is_alive(), 60, "the table client's first call")
        reply = emu.control({"cmd": "fault", "endpoint": endpoint, "kind": kind, **params})
        assert reply.get("ok"), reply
        t_clear = t_inject
        if hold_s is not None:
            wait_until(fired, 60, f"the {endpoint} {kind} fault to take effect")
            left = hold_s - (time.time() - t_inject)
            if left > 0:
                time.sleep(left)  # the fault's duration (not a synchronisation)
            emu.control({"cmd": "clear_faults"})
            t_clear = time.time()
        rc = daq.wait(120)
        n_fired = fired()
        after = emu.state()
        writer.stop()
        restored = writer.restore()
        row.notes.append(
            f"fired {n_fired}; HV writer sets ok {writer.sets_ok}, refused {writer.refused}, "
            f"HVError {len(writer.hv_errors)}"
        )
        if rc != 0:
            problems.append(f"na64-daq exited {rc}")
        if n_fired < 1:
            problems.append(f"the {endpoint} {kind} fault never took effect (fired {n_fired})")
        pending = {
            k: v for k, v in after["faults"].get(endpoint, {}).items() if v and k not in ("delay", "stall_s", "pause")
        }
        if pending:
            problems.append(f"the fault never hit: still pending {pending}")
        if writer.other_errors or writer.over_limit_sent:
            problems.append(f"HV writer: {(writer.other_errors + writer.over_limit_sent)[:3]}")
        if not writer.sets_ok or not writer.refused or not restored:
            problems.append(
                f"HV writer: {writer.sets_ok} settings, {writer.refused} over-limit requests refused, "
                f"restored {restored}; errors {writer.hv_errors[-3:]}"
            )
        # ---- the data
        found, rec = check_case(daq.rdir, emu, row)
        problems += found
        found = oracle.check(daq.rdir)
        row.oracle = "yes" if not found else f"NO ({len(found)})"
        problems += found
        spills = rec["spills"]
        if len(spills) != n_spills:
            problems.append(f"{len(spills)} spills recorded, {n_spills} asked for")
        incomplete = [e for e in spills if set(e["flags"]) & INCOMPLETE_SPILL_FLAGS]
        after_inject = [e for e in spills if e.get("recorded_unix", 0) > t_inject]
        if not after_inject:
            problems.append("no spill recorded after the fault was injected: the run did not go on")
        clean = [e for e in spills if e.get("recorded_unix", 0) > t_clear and e not in incomplete]
        if not clean:
            problems.append("no complete spill after the fault was over: the run did not recover")
        # ---- fault-specific expectations
        if endpoint == "msadc":
            stat = {"drop": "dropped", "truncate": "truncated", "corrupt": "corrupted", "restart": "restarts"}.get(kind)
            crate_stats = {
                k: sum(int((s.get("crate_stats") or {}).get(k, 0)) for s in rec["sessions"])
                for k in ("timeouts", "reconnects", "retries")
            }
            row.notes.append("crate " + " ".join(f"{k}={v}" for k, v in crate_stats.items() if v))
            if stat:
                fired = after["msadc_server"][stat] - before["msadc_server"][stat]
                if fired != 1:
                    problems.append(f"msadc {kind} fired {fired} times, expected once")
                marked = [e for e in spills if "retried" in e["flags"] or set(e["flags"]) & INCOMPLETE_SPILL_FLAGS]
                if kind == "restart":  # reported whether or not a spill was in hand: the new boot id
                    restarts = (rec.get("crate") or {}).get("restarts", [])
                    row.notes.append(f"restarts reported {len(restarts)}")
                    if len(restarts) != 1 or "the MSADC crate restarted" not in daq.log():
                        problems.append(f"msadc restart not reported by boot id: {restarts}")
                elif fired and not marked:
                    problems.append(f"msadc {kind} fired but no spill is marked retried or flagged")
            else:  # delay / no_reply: timeouts seen by the driver
                if not (crate_stats["timeouts"] or incomplete):
                    problems.append(f"msadc {kind}: neither a timeout nor a flagged spill")
        else:
            if incomplete:
                problems.append(f"{endpoint} {kind} damaged data: {[(e['spill'], e['flags']) for e in incomplete]}")
        if endpoint == "hv":
            failures = daq.log().count("HV read-back from")
            row.notes.append(f"HV read-back warnings {failures}")
            if kind == "delay" and not failures:
                problems.append("hv delay: the DAQ's HV read-back never failed (the fault did not bite)")
            fresh = [
                e for e in spills if e.get("recorded_unix", 0) > t_clear and e.get("hv") and e["hv"]["unix"] > t_clear
            ]
            if not fresh:
                problems.append("the HV read-back did not recover after the fault (no fresh reading in a spill)")
            if kind == "trip":
                seen = [
                    e
                    for e in after_inject
                    if e.get("hv")
                    and trip_id in e["hv"]["channel_ids"]
                    and e["hv"]["status"][e["hv"]["channel_ids"].index(trip_id)] & ST_TRIP
                ]
                row.notes.append(f"trip seen in the HV read-back of {len(seen)} spill(s)")
                if not seen:
                    problems.append(f"the trip of {TRIP_CHANNEL} is not in any spill's HV read-back")
        if endpoint == "table":
            assert client is not None
            client.stop()
            emu.control({"cmd": "clear_faults"})
            row.notes.append(
                f"table calls ok {client.ok}, TableError {len(client.table_errors)}, slowest {client.slowest_s:.1f} s"
            )
            if client.other_errors:
                problems.append(f"table client got non-TableError exceptions: {client.other_errors[:3]}")
            if client.is_alive():
                problems.append("table client hung")
            if client.slowest_s > 30:
                problems.append(f"a table call took {client.slowest_s:.1f} s")
            # after the fault is cleared the same driver works again and the table goes home
            recovered = None
            for _ in range(3):
                recovered = client._call(client.driver.home)
                if recovered is not None:
                    break
            if recovered is None or recovered.cell != "PHYSICS":
                problems.append(f"table client did not recover after clear_faults: {client.table_errors[-2:]}")
            client.driver.close()
        if endpoint == "feed":
            stalled = [e for e in spills if "feed_stall" in e["flags"]]
            row.notes.append(
                f"stalls noted {len(rec.get('stalls', []))}, spills stalled in the emulator "
                f"{after['spills'].get('spills_stalled', '?')}"
            )
            if not stalled or not rec.get("stalls") or not all(x.get("until_unix") for x in rec["stalls"]):
                problems.append(
                    f"feed stall not noted: {len(stalled)} spill(s) flagged feed_stall, stalls {rec.get('stalls')}"
                )
        problems += hv_check(emu, limits, row, since=hv_log_from)
    finally:
        if client is not None and client.is_alive():
            client.stop()
        writer.stop()
        if writer.supply is not None:
            writer.supply.close()
        oracle.stop()
        daq.kill()
        emu.control({"cmd": "clear_faults"})
        if endpoint == "hv" and kind == "trip":
            from hv_control.supply import HVSupply

            cfg = load_config(emu.config_path)
            sup = HVSupply.connect(emu.hv, cfg, load_calibration(cfg))
            try:
                sup.clear_trip(trip_id)  # CLR: the latched trip does not outlive the case
            finally:
                sup.close()
    left = leftover_processes(exclude={emu.pid})
    row.leftovers = len(left)
    if left:
        problems.append(f"processes left behind: {left}")
    row.seconds = time.monotonic() - t_case
    row.result = "PASS" if not problems else "FAIL"
    assert not problems, "\n".join(problems) + f"\n--- daq log (tail) ---\n{daq.log()[-4000:]}"
