"""An independent oracle of what ``na64-daq`` must record: a separate, stock pyvisa client of the emulated
crate that reads every spill while it is buffered, decided afterwards by the plain-numpy reference trigger.

Nothing here uses the DAQ's code (no ``online.msadc`` driver, no numba kernels): its own
``pyvisa.ResourceManager("@py")`` and connection, switched to an *observer* connection (``SYST:OBS ON``,
docs/protocols.md 1.8: read-only, its own error queue, exempt from injected faults) so that it neither
moves the DAQ's spill selection nor swallows a fault meant for the DAQ. With the read-only
spill-argument forms it reads, as soon as a spill completes, ``SPIL:INFO? <spill>``, ``PRIM:DATA?
0,<N>,<spill>`` and ``PRIM:TIME? 0,<N>,<spill>``; once the DAQ has uploaded its accepted list it reads
that list (``ACC:DATA? <spill>``) and the full waveforms of exactly those record indices
(``EVT:IND:DATA? <spill>,<index>,...``: by index, whatever the crate's list says).

The reference trigger (:func:`trigger.reference.waveform_trigger`, with the run's menu) is slower than
the spill cycle of the tests, so it runs in :meth:`Oracle.check`, after the run, on the primitives kept.
The check then requires, per recorded spill: event ids, trigger masks, EOT, scalers and trigger counts
equal to the reference exactly, the DAQ's uploaded list equal to the reference's accepted records, and
every recorded waveform equal to the crate's waveform of its record index. A recorded spill the oracle
could not read is a failure, not a skip.
"""
from __future__ import annotations

import dataclasses
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyvisa

from detector import channels as ch
from detector.config import load_calibration, load_config
from detector.records import INCOMPLETE_SPILL_FLAGS
from detector.spillfile import read_run_record, read_spill, spill_path
from trigger.menu import TriggerMenu
from trigger.reference import waveform_trigger

#: record indices per ``EVT:IND:DATA?`` (keeps the command line far below the crate's 64 KiB limit)
INDICES_PER_QUERY = 1000


def run_menu(config_path: Path, calibration_mode: bool = False) -> TriggerMenu:
    """The trigger menu a DAQ started with ``--config config_path`` (and ``--calibration-mode``) takes
    data with: the configured menu; in calibration mode the beam trigger enabled without prescale.
    :meth:`Oracle.check` verifies it against the menu the run record says was used."""
    cfg = load_config(config_path)
    menu = TriggerMenu.from_config(cfg, load_calibration(cfg))
    if calibration_mode or cfg.daq.calibration_mode:
        menu = dataclasses.replace(menu, beam=dataclasses.replace(menu.beam, enabled=True, prescale=1))
    return menu


@dataclass
class Seen:
    """What the oracle read of one crate spill."""

    crate_spill: int
    info: dict[str, Any]
    prims: np.ndarray                          #: int16 (N, 6, 32)
    times: np.ndarray                          #: float64 (N,) ns
    uploaded: np.ndarray | None = None         #: the accepted list the DAQ uploaded (int64), once read
    waveforms: np.ndarray | None = None        #: int16 (n, 121, 32) of ``uploaded``, read by index
    evicted: bool = False                      #: the crate no longer holds it
    reference: Any = field(default=None, repr=False)


class Oracle(threading.Thread):
    """Reads every spill that completes in the crate at ``resource`` after :meth:`start`."""

    def __init__(self, resource: str, menu: TriggerMenu, poll_s: float = 0.1, timeout_s: float = 30.0) -> None:
        super().__init__(name="daq-oracle", daemon=True)
        self.resource = resource
        self.menu = menu
        self.poll_s = poll_s
        self.timeout_s = timeout_s
        self.seen: dict[int, Seen] = {}
        self.missed: dict[int, str] = {}          #: crate spill -> why the oracle could not read it
        self.failure: str | None = None           #: the oracle itself broke (connection, ...)
        self.floor: int | None = None             #: spills up to this id were buffered before the start
        self._started_evt = threading.Event()
        self._stop_evt = threading.Event()
        self._lock = threading.Lock()

    # ---------------------------------------------------------------------------------- reading
    def start(self) -> None:  # type: ignore[override]
        """Start reading; returns once the oracle is connected and knows which spills are new."""
        super().start()
        if not self._started_evt.wait(60):
            raise AssertionError("the oracle did not connect to the crate within 60 s")
        if self.failure:
            raise AssertionError(f"the oracle could not start: {self.failure}")

    def stop(self) -> None:
        self._stop_evt.set()
        self.join(timeout=120)

    def run(self) -> None:
        rm = pyvisa.ResourceManager("@py")
        try:
            res = rm.open_resource(self.resource, read_termination="\n", write_termination="\n",
                                   timeout=int(self.timeout_s * 1000))
            res.chunk_size = 1 << 20
            res.write("SYST:OBS ON")
            self.floor = max(self._list(res), default=-1)
        except Exception as exc:  # noqa: BLE001 - reported by start()/check()
            self.failure = f"{type(exc).__name__}: {exc}"
            self._started_evt.set()
            rm.close()
            return
        self._started_evt.set()
        try:
            while not self._stop_evt.is_set():
                self._poll(res)
                self._stop_evt.wait(self.poll_s)
        except Exception as exc:  # noqa: BLE001
            self.failure = f"{type(exc).__name__}: {exc}"
        finally:
            res.close()
            rm.close()

    @staticmethod
    def _list(res: Any) -> list[int]:
        text = res.query("SPIL:LIST?").strip()
        return [int(x) for x in text.split(",")] if text else []

    def _poll(self, res: Any) -> None:
        buffered = self._list(res)
        with self._lock:
            for sid, seen in self.seen.items():
                seen.evicted = seen.evicted or sid not in buffered
        t_list = time.monotonic()
        for sid in buffered:
            if sid <= self.floor or sid in self.missed:
                continue
            seen = self.seen.get(sid)
            t = time.monotonic()
            try:
                if seen is None:
                    self._read_spill(res, sid)
                elif seen.uploaded is None and not seen.evicted:
                    self._read_events(res, seen)
            except pyvisa.VisaIOError as exc:         # evicted while read, or the crate failed
                errors = res.query("SYST:ERR?").strip()
                with self._lock:
                    self.missed[sid] = (f"{'events' if seen else 'primitives'}: {exc}; crate error {errors} "
                                        f"({t - t_list:.1f} s after SPIL:LIST?, the read took "
                                        f"{time.monotonic() - t:.1f} s)")

    def _read_spill(self, res: Any, sid: int) -> None:
        info = json.loads(res.query(f"SPIL:INFO? {sid}"))
        n = int(info["particles"])
        prims = np.zeros((0, ch.N_TRIGGER_CHANNELS, ch.N_SAMPLES), np.int16)
        times = np.zeros(0, np.float64)
        if n:
            prims = res.query_binary_values(f"PRIM:DATA? 0,{n},{sid}", datatype="h", is_big_endian=False,
                                            container=np.ndarray, data_points=n * 6 * ch.N_SAMPLES)
            prims = prims.reshape(n, ch.N_TRIGGER_CHANNELS, ch.N_SAMPLES)
            times = res.query_binary_values(f"PRIM:TIME? 0,{n},{sid}", datatype="d", is_big_endian=False,
                                            container=np.ndarray, data_points=n)
        with self._lock:
            self.seen[sid] = Seen(sid, info, prims, times)

    def _read_events(self, res: Any, seen: Seen) -> None:
        """Once the DAQ uploaded a non-empty accepted list: that list, and the waveforms of its records."""
        sid = seen.crate_spill
        if not json.loads(res.query(f"SPIL:INFO? {sid}"))["accepted"]:
            return
        acc = res.query_binary_values(f"ACC:DATA? {sid}", datatype="I", is_big_endian=False,
                                      container=np.ndarray).astype(np.int64)
        wf = np.empty((acc.size, ch.N_CHANNELS, ch.N_SAMPLES), np.int16)
        for s in range(0, acc.size, INDICES_PER_QUERY):
            part = acc[s:s + INDICES_PER_QUERY]
            got = res.query_binary_values(f"EVT:IND:DATA? {sid}," + ",".join(map(str, part.tolist())),
                                          datatype="h", is_big_endian=False, container=np.ndarray,
                                          data_points=part.size * ch.N_CHANNELS * ch.N_SAMPLES)
            wf[s:s + part.size] = got.reshape(part.size, ch.N_CHANNELS, ch.N_SAMPLES)
        with self._lock:
            seen.uploaded, seen.waveforms = acc, wf

    # ---------------------------------------------------------------------------------- checking
    def wait_for(self, crate_spill: int, events: bool, timeout_s: float = 120.0) -> Seen | str:
        """What the oracle read of a crate spill (with the waveforms if ``events``), or why it has not."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                seen = self.seen.get(crate_spill)
                if crate_spill in self.missed:
                    return f"the oracle could not read crate spill {crate_spill}: {self.missed[crate_spill]}"
                if seen is not None and (not events or seen.uploaded is not None):
                    return seen
                if seen is not None and seen.evicted:
                    return f"crate spill {crate_spill} left the crate before the oracle saw an accepted list"
            if self.failure:
                return f"the oracle failed: {self.failure}"
            if self.floor is not None and crate_spill <= self.floor:
                return f"crate spill {crate_spill} completed before the oracle started"
            time.sleep(0.02)
        return f"the oracle did not read crate spill {crate_spill} within {timeout_s} s"

    def check(self, rdir: Path) -> list[str]:
        """Problems of a recorded run (empty = every recorded spill agrees with the oracle exactly)."""
        problems: list[str] = []
        rec = read_run_record(rdir)
        if json.loads(json.dumps(self.menu.to_dict())) != rec.get("trigger_menu"):
            problems.append(f"the run's trigger menu {rec.get('trigger_menu')} is not the oracle's {self.menu.to_dict()}")
        for e in rec["spills"]:
            if not e.get("n_particles") and not e.get("n_recorded"):
                continue                                # nothing was read from the crate for this spill
            seen = self.wait_for(int(e["crate_spill"]), events=bool(e.get("n_recorded")))
            if isinstance(seen, str):
                problems.append(f"spill {e['spill']}: {seen}")
                continue
            if seen.reference is None:
                seen.reference = waveform_trigger(self.menu, seen.prims, seen.times)
            problems += self._compare(rdir, e, seen)
        return problems

    def _compare(self, rdir: Path, e: dict[str, Any], seen: Seen) -> list[str]:
        ref = seen.reference
        ids = np.asarray(ref.accepted, np.int64)
        where = f"spill {e['spill']} (crate spill {seen.crate_spill})"
        out: list[str] = []
        d = read_spill(spill_path(rdir, int(e["spill"])))
        n = d.n_events
        got = d.event_id.astype(np.int64)
        if e["n_particles"] != seen.prims.shape[0]:
            out.append(f"{where}: {e['n_particles']} particles recorded, the crate holds {seen.prims.shape[0]}")
        if n > ids.size:
            return out + [f"{where}: {n} events recorded, the reference trigger accepts {ids.size}"]
        if not np.array_equal(got, ids[:n]):
            bad = int(np.argmax(got != ids[:n]))
            out.append(f"{where}: event ids differ from the reference trigger from event {bad} on: recorded "
                       f"{got[bad:bad + 3].tolist()}, reference {ids[bad:bad + 3].tolist()}")
        if not np.array_equal(d.trigger_mask, np.asarray(ref.mask, np.uint8)[:n]):
            out.append(f"{where}: trigger masks differ from the reference trigger")
        if n:
            assert seen.uploaded is not None and seen.waveforms is not None
            if not np.array_equal(seen.uploaded, ids):
                bad = int(np.argmax(seen.uploaded[:ids.size] != ids[:seen.uploaded.size])) \
                    if seen.uploaded.size and ids.size else 0
                out.append(f"{where}: the accepted list uploaded to the crate ({seen.uploaded.size} records) is not "
                           f"the reference's ({ids.size}); first difference at {bad}: "
                           f"{seen.uploaded[bad:bad + 3].tolist()} vs {ids[bad:bad + 3].tolist()}")
            pos = np.minimum(np.searchsorted(seen.uploaded, got), max(seen.uploaded.size - 1, 0))
            known = seen.uploaded[pos] == got if seen.uploaded.size else np.zeros(n, bool)
            same = known & np.all(d.waveforms == seen.waveforms[pos], axis=(1, 2))
            if not same.all():
                bad = np.flatnonzero(~same)
                out.append(f"{where}: {bad.size} of {n} recorded waveforms differ from the crate's waveform of their "
                           f"record (first: event {bad[0]}, record {int(got[bad[0]])})")
        complete = not (set(e["flags"]) & INCOMPLETE_SPILL_FLAGS)
        if complete or e["n_seen"] == seen.prims.shape[0]:    # the whole spill went through the trigger
            scalers = ref.scalers_with(seen.info.get("scalers", {}))
            if complete and n != ids.size:
                out.append(f"{where}: {n} events recorded, the reference trigger accepts {ids.size}")
            if e["n_accepted"] != ids.size:
                out.append(f"{where}: {e['n_accepted']} accepted, the reference trigger accepts {ids.size}")
            if not (e["eot"] == d.attrs["eot"] == int(ref.eot)):
                out.append(f"{where}: EOT {e['eot']} (file {d.attrs['eot']}), reference {int(ref.eot)}")
            if e["scalers"] != scalers or d.attrs["scalers"] != scalers:
                diff = {k: (e["scalers"].get(k), v) for k, v in scalers.items() if e["scalers"].get(k) != v}
                out.append(f"{where}: scalers differ from the reference (recorded, reference): {diff}")
            if e["triggers"] != ref.triggers():
                out.append(f"{where}: trigger counts {e['triggers']}, reference {ref.triggers()}")
        return out


def start_oracle(endpoints_path: Path, config_path: Path, calibration_mode: bool = False) -> Oracle:
    """An :class:`Oracle` on the crate named in an emulator's endpoints file, with the run's menu, started."""
    resource = json.loads(Path(endpoints_path).read_text())["msadc"]
    oracle = Oracle(resource, run_menu(config_path, calibration_mode))
    oracle.start()
    return oracle
