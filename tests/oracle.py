"""An independent oracle of what ``na64-daq`` must record: a separate, stock pyvisa client of the emulated
crate that keeps every spill of the run readable, and decides each recorded spill with the plain-numpy
reference trigger.

Nothing here uses the DAQ's code (no ``online.msadc`` driver, no numba kernels, not the accepted list the
DAQ uploaded): its own ``pyvisa.ResourceManager("@py")`` and connection, switched to a *holding observer*
(docs/protocols.md 1.8: ``SYST:OBS ON`` = read-only, its own error queue, exempt from injected faults;
``SYST:OBS:HOLD ON`` = a spill that leaves the crate's ring stays readable for this connection until
it releases it with ``SPIL:REL``). What the DAQ sees of the crate is unchanged: it still loses a spill
it is too slow for, but the oracle does not, so that nothing depends on who wins a race.

While the run goes on, a thread releases the spills the DAQ will never record (it read the run record:
crate spills before its last recorded one that it neither recorded nor holds in flight) and decides each
spill as soon as the run record lists it (the same :meth:`Oracle.decide` that :meth:`Oracle.check` calls;
a spill it could not decide is decided again there), so that the reading and the reference trigger overlap
the run instead of following it. Deciding a spill reads ``SPIL:INFO? <spill>``, ``PRIM:DATA?``/``PRIM:TIME?
0,<N>,<spill>``, runs :func:`trigger.reference.waveform_trigger` with the run's menu and reads the waveforms
of the reference's accepted records by index (``EVT:IND:DATA? <spill>,<index>,...``). :meth:`Oracle.check`
(after the run) decides the recorded spills not decided yet and requires, per recorded spill: event
ids and trigger masks equal to the reference's (for a spill flagged incomplete: the prefix it recorded),
every recorded waveform equal to the crate's waveform of the reference record, and for a spill the
trigger saw whole: accepted count, EOT, scalers and trigger counts equal to the reference. A recorded
spill the oracle cannot read is a failure, not a skip. :meth:`Oracle.check_published` holds the DAQ's
published ``waveforms`` topic against the same crate waveforms.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyvisa

from detector import channels as ch
from detector.config import load_calibration, load_config
from detector.records import INCOMPLETE_SPILL_FLAGS
from detector.runrecord import read_run_record
from detector.spillfile import read_spill, spill_path
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
class Decided:
    """What the oracle made of one crate spill: the crate's spill info, the reference trigger's result
    on the whole spill and the crate's waveforms of the reference's first ``waveforms.shape[0]``
    accepted records (int16 (n, 121, 32))."""

    crate_spill: int
    info: dict[str, Any]
    particles: int
    reference: Any
    waveforms: np.ndarray

    @property
    def ids(self) -> np.ndarray:
        return np.asarray(self.reference.accepted, np.int64)


class Oracle(threading.Thread):
    """Holds every spill that completes in the crate at ``resource`` after :meth:`start` and checks the
    DAQ run in ``rdir`` against them."""

    def __init__(
        self, resource: str, menu: TriggerMenu, rdir: Path, poll_s: float = 0.2, timeout_s: float = 120.0
    ) -> None:
        super().__init__(name="daq-oracle", daemon=True)
        self.resource = resource
        self.menu = menu
        self.rdir = Path(rdir)
        self.poll_s = poll_s
        self.timeout_s = timeout_s
        self.floor = -1  #: spills up to this id completed before the oracle started
        self.released: set[int] = set()  #: crate spills given back (the DAQ never recorded them)
        self.decided: dict[int, Decided] = {}
        self.failure: str | None = None  #: the release thread broke (connection, ...)
        self._stop_evt = threading.Event()
        self._io = threading.Lock()  #: one pyvisa resource, used by the thread and check()
        self._deciding = threading.Lock()  #: one decision at a time: a spill is read and released once
        self._tried: set[int] = set()  #: crate spills the thread tried to decide (once each)
        self._rm: Any = None
        self._res: Any = None

    # ---------------------------------------------------------------------------------- connection
    def start(self) -> None:  # type: ignore[override]
        """Connect, become a holding observer and start the release thread."""
        self._rm = pyvisa.ResourceManager("@py")
        res = self._rm.open_resource(
            self.resource, read_termination="\n", write_termination="\n", timeout=int(self.timeout_s * 1000)
        )
        res.chunk_size = 1 << 20
        # pyvisa-py's socket session receives at most 4 KiB per recv() call (its max_recv_size); the binary
        # blocks (:meth:`_query_block`) are read 1 MiB per call (another backend has no such attribute)
        session = getattr(self._rm.visalib, "sessions", {}).get(res.session)
        if isinstance(getattr(session, "max_recv_size", None), int):
            session.max_recv_size = max(session.max_recv_size, 1 << 20)
        res.write("SYST:OBS ON")
        res.write("SYST:OBS:HOLD ON")
        self._res = res
        before = self._list()
        self.floor = max(before, default=-1)
        self._expect_no_error("SYST:OBS:HOLD ON")
        super().start()

    def stop(self) -> None:
        """Stop the thread and close the connection (the crate drops whatever it held for it)."""
        self._stop_evt.set()
        if self.is_alive():
            self.join(timeout=60)
        with self._io:
            if self._res is not None:
                self._res.close()
                self._rm.close()
                self._res = None

    def __enter__(self) -> Oracle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _list(self) -> list[int]:
        with self._io:
            text = self._res.query("SPIL:LIST?").strip()
        return [int(x) for x in text.split(",")] if text else []

    def _expect_no_error(self, what: str) -> None:
        with self._io:
            err = self._res.query("SYST:ERR?").strip()
        if not err.startswith("0"):
            raise AssertionError(f"the crate refused the oracle's {what}: {err}")

    def _release(self, ids: list[int]) -> None:
        if ids:
            with self._io:
                self._res.write("SPIL:REL " + ",".join(map(str, ids)))
            self.released.update(ids)

    # ---------------------------------------------------------------------------------- release thread
    def run(self) -> None:
        try:
            while not self._stop_evt.wait(self.poll_s):
                rec = self._run_record()
                self._release(self.not_needed(self._list(), rec))
                for crate_spill in self.to_decide(rec):
                    if self._stop_evt.is_set():
                        break
                    self._tried.add(crate_spill)
                    self.decide(crate_spill)  # a string (could not be read) is not kept: check() tries again
        except Exception as exc:  # noqa: BLE001 - reported by check()
            self.failure = f"{type(exc).__name__}: {exc}"

    def _run_record(self) -> dict[str, Any] | None:
        try:
            return read_run_record(self.rdir)
        except Exception:  # noqa: BLE001 - no run record yet, or being replaced: try again later
            return None

    def to_decide(self, rec: dict[str, Any] | None) -> list[int]:
        """Crate spills of recorded entries that read data from the crate, not yet decided nor tried by the
        thread, as :meth:`check` will decide them (a spill flagged ``truncated`` is left to it: it decides
        the recorded prefix)."""
        if rec is None:
            return []
        out: list[int] = []
        for e in rec["spills"]:
            if not e.get("n_particles") and not e.get("n_recorded"):
                continue
            s = int(e["crate_spill"])
            if (
                "truncated" not in e["flags"]
                and s > self.floor
                and s not in self.decided
                and s not in self._tried
                and s not in out
            ):
                out.append(s)
        return out

    def not_needed(self, held: list[int], rec: dict[str, Any] | None) -> list[int]:
        """Held crate spills no DAQ of this run will record: before its last recorded (or in-flight)
        crate spill, neither recorded with data nor in flight (a restarted DAQ re-reads the spill in
        flight, then continues after the last recorded one). ``rec``: the run record (None: not yet)."""
        if rec is None:
            return []
        keep = {int(e["crate_spill"]) for e in rec["spills"] if e.get("n_particles") or e.get("n_recorded")}
        mark = [int(e["crate_spill"]) for e in rec["spills"]]
        if rec.get("in_flight"):
            keep.add(int(rec["in_flight"]["crate_spill"]))
            mark.append(int(rec["in_flight"]["crate_spill"]))
        last = max(mark, default=-1)
        return [s for s in held if s < last and s not in keep and s not in self.released and s not in self.decided]

    # ---------------------------------------------------------------------------------- reading
    def _query_block(self, cmd: str, datatype: str, points: int) -> np.ndarray:
        """The reply of ``cmd``: an IEEE 488.2 definite-length block (``#<n><length><bytes>`` and the read
        termination) of ``points`` little-endian values of ``datatype``, read with stock pyvisa calls
        (``write``, ``read_bytes``) and checked here: the header's length, the terminator. While the block is
        read the termination character is off: with it on, pyvisa-py ends every read at the next 0x0A byte of
        the binary data (a few hundred bytes per call; a calibration spill's 0.2 GB of waveforms took ~3 s
        through ``query_binary_values``)."""
        res, dtype = self._res, np.dtype(datatype).newbyteorder("<")
        term_en = pyvisa.constants.ResourceAttribute.termchar_enabled
        res.write(cmd)
        res.set_visa_attribute(term_en, False)
        try:
            head = res.read_bytes(2)
            if head[:1] != b"#" or not head[1:2].isdigit() or head[1:2] == b"0":
                raise AssertionError(f"{cmd}: the reply is not a definite-length block: {head!r}")
            digits = res.read_bytes(int(head[1:2]))
            if not digits.isdigit() or int(digits) != points * dtype.itemsize:
                raise AssertionError(f"{cmd}: a block of {digits!r} bytes, expected {points * dtype.itemsize}")
            data = res.read_bytes(int(digits))
            end = res.read_bytes(len(res.read_termination or ""))
        finally:
            res.set_visa_attribute(term_en, True)
        if end != (res.read_termination or "").encode():
            raise AssertionError(f"{cmd}: the block ends with {end!r}, not the read termination")
        return np.frombuffer(data, dtype)

    def decide(self, crate_spill: int, upto: int | None = None) -> Decided | str:
        """Read crate spill ``crate_spill`` (held or buffered), trigger it with the reference and read the
        waveforms of every accepted record (of the first ``upto``: a spill the DAQ truncated); then release
        it. A string says why it could not be read."""
        with self._deciding:
            return self._decide(crate_spill, upto)

    def _decide(self, crate_spill: int, upto: int | None) -> Decided | str:
        if crate_spill in self.decided:
            return self.decided[crate_spill]
        if crate_spill <= self.floor:
            return f"crate spill {crate_spill} completed before the oracle started"
        if crate_spill in self.released:
            return f"crate spill {crate_spill} was released by the oracle as not needed (a bug of the oracle)"
        sid = crate_spill
        try:
            with self._io:
                info = json.loads(self._res.query(f"SPIL:INFO? {sid}"))
                n = int(info["particles"])
                prims = np.zeros((0, ch.N_TRIGGER_CHANNELS, ch.N_SAMPLES), np.int16)
                times = np.zeros(0, np.float64)
                if n:
                    prims = self._query_block(f"PRIM:DATA? 0,{n},{sid}", "h", n * ch.N_TRIGGER_CHANNELS * ch.N_SAMPLES)
                    prims = prims.reshape(n, ch.N_TRIGGER_CHANNELS, ch.N_SAMPLES)
                    times = self._query_block(f"PRIM:TIME? 0,{n},{sid}", "d", n)
            ref = waveform_trigger(self.menu, prims, times)
            ids = np.asarray(ref.accepted, np.int64)
            want = ids[: ids.size if upto is None else upto]
            wf = np.empty((want.size, ch.N_CHANNELS, ch.N_SAMPLES), np.int16)
            with self._io:
                for s in range(0, want.size, INDICES_PER_QUERY):
                    part = want[s : s + INDICES_PER_QUERY]
                    got = self._query_block(
                        f"EVT:IND:DATA? {sid}," + ",".join(map(str, part.tolist())),
                        "h",
                        part.size * ch.N_CHANNELS * ch.N_SAMPLES,
                    )
                    wf[s : s + part.size] = got.reshape(part.size, ch.N_CHANNELS, ch.N_SAMPLES)
        except pyvisa.VisaIOError as exc:
            with self._io:
                err = self._res.query("SYST:ERR?").strip()
            return f"the oracle could not read crate spill {sid}: {exc}; crate error {err}"
        self._release([sid])
        self.decided[sid] = Decided(sid, info, n, ref, wf)
        return self.decided[sid]

    # ---------------------------------------------------------------------------------- checking
    def check(self, rdir: Path | None = None) -> list[str]:
        """Problems of the recorded run (empty = every recorded spill agrees with the oracle exactly)."""
        rdir = self.rdir if rdir is None else Path(rdir)
        problems: list[str] = [] if self.failure is None else [f"the oracle's release thread failed: {self.failure}"]
        rec = read_run_record(rdir)
        if json.loads(json.dumps(self.menu.to_dict())) != rec.get("trigger_menu"):
            problems.append(
                f"the run's trigger menu {rec.get('trigger_menu')} is not the oracle's {self.menu.to_dict()}"
            )
        for e in rec["spills"]:
            if not e.get("n_particles") and not e.get("n_recorded"):
                continue  # nothing was read from the crate for this spill
            got = self.decide(int(e["crate_spill"]), None if "truncated" not in e["flags"] else int(e["n_recorded"]))
            if isinstance(got, str):
                problems.append(f"spill {e['spill']}: {got}")
                continue
            problems += self._compare(rdir, e, got)
        return problems

    def _compare(self, rdir: Path, e: dict[str, Any], dec: Decided) -> list[str]:
        ref, ids = dec.reference, dec.ids
        where = f"spill {e['spill']} (crate spill {dec.crate_spill})"
        out: list[str] = []
        d = read_spill(spill_path(rdir, int(e["spill"])))
        n = d.n_events
        got = d.event_id.astype(np.int64)
        if e["n_particles"] != dec.particles:
            out.append(f"{where}: {e['n_particles']} particles recorded, the crate holds {dec.particles}")
        if n > ids.size:
            return out + [f"{where}: {n} events recorded, the reference trigger accepts {ids.size}"]
        if not np.array_equal(got, ids[:n]):
            bad = int(np.argmax(got != ids[:n]))
            out.append(
                f"{where}: event ids differ from the reference trigger from event {bad} on: recorded "
                f"{got[bad : bad + 3].tolist()}, reference {ids[bad : bad + 3].tolist()}"
            )
        if not np.array_equal(d.trigger_mask, np.asarray(ref.mask, np.uint8)[:n]):
            bad = int(np.argmax(d.trigger_mask != np.asarray(ref.mask, np.uint8)[:n]))
            out.append(f"{where}: trigger masks differ from the reference trigger from event {bad} on")
        same = np.all(d.waveforms == dec.waveforms[:n], axis=(1, 2))
        if not same.all():
            bad = np.flatnonzero(~same)
            out.append(
                f"{where}: {bad.size} of {n} recorded waveforms differ from the crate's waveform of the "
                f"reference record (first: event {bad[0]}, reference record {int(ids[bad[0]])})"
            )
        if "truncated" in e["flags"]:  # cut at daq.max_events_per_spill: exactly the first max_events read
            cap = int(e.get("max_events", -1))
            whole = not (set(e["flags"]) & INCOMPLETE_SPILL_FLAGS - {"truncated"})  # else a failure cut it shorter
            if not (n <= cap < ids.size) or (whole and n != cap):
                out.append(f"{where}: truncated at {cap} events, but {n} recorded of {ids.size} accepted")
        complete = not (set(e["flags"]) & INCOMPLETE_SPILL_FLAGS)
        if complete and n != ids.size:
            out.append(f"{where}: {n} events recorded in a complete spill, the reference trigger accepts {ids.size}")
        if complete or e["n_seen"] == dec.particles:  # the whole spill went through the DAQ's trigger
            scalers = ref.scalers_with(dec.info.get("scalers", {}))
            # a spill that could not be written keeps its accounting in the run record only
            attrs = d.attrs if "write_failed" not in e["flags"] else {"eot": e["eot"], "scalers": e["scalers"]}
            if e["n_accepted"] != ids.size:
                out.append(f"{where}: {e['n_accepted']} accepted, the reference trigger accepts {ids.size}")
            if not (e["eot"] == attrs["eot"] == int(ref.eot)):
                out.append(f"{where}: EOT {e['eot']} (file {attrs['eot']}), reference {int(ref.eot)}")
            if e["scalers"] != scalers or attrs["scalers"] != scalers:
                diff = {k: (e["scalers"].get(k), v) for k, v in scalers.items() if e["scalers"].get(k) != v}
                out.append(f"{where}: scalers differ from the reference (recorded, reference): {diff}")
            if e["triggers"] != ref.triggers():
                out.append(f"{where}: trigger counts {e['triggers']}, reference {ref.triggers()}")
        return out

    def check_published(self, rdir: Path, messages: list[Any]) -> list[str]:
        """Problems of the DAQ's published ``waveforms`` messages (call after :meth:`check`): each
        published waveform must be the crate's waveform of a record the reference accepted, with its id."""
        rec = read_run_record(rdir)
        by_spill = {int(e["spill"]): e for e in rec["spills"]}
        out: list[str] = []
        for m in messages:
            e = by_spill.get(int(m.spill))
            if e is None:
                out.append(f"waveforms published for spill {m.spill}, which the run record does not have")
                continue
            dec = self.decided.get(int(e["crate_spill"]))
            if dec is None:
                out.append(f"waveforms published for spill {m.spill}, which the oracle did not check")
                continue
            ev = np.asarray(m.arrays["event_ids"], np.int64)
            pos = np.searchsorted(dec.ids, ev)
            ok = (
                (pos < dec.waveforms.shape[0]) & (dec.ids[np.minimum(pos, dec.ids.size - 1)] == ev)
                if dec.ids.size
                else np.zeros(ev.size, bool)
            )
            if not ok.all():
                out.append(f"spill {m.spill}: published event ids {ev[~ok].tolist()} are not accepted records")
                continue
            same = np.all(np.asarray(m.arrays["waveforms"]) == dec.waveforms[pos], axis=(1, 2))
            if not same.all():
                out.append(
                    f"spill {m.spill}: {int((~same).sum())} of {ev.size} published waveforms differ from the "
                    f"crate's waveform of their record (ids {ev[~same].tolist()})"
                )
        return out


def start_oracle(endpoints_path: Path, config_path: Path, rdir: Path, calibration_mode: bool = False) -> Oracle:
    """An :class:`Oracle` on the crate named in an emulator's endpoints file, with the run's menu, for
    the run directory ``rdir``, started (before the DAQ, so that it holds every spill the DAQ may read)."""
    resource = json.loads(Path(endpoints_path).read_text())["msadc"]
    oracle = Oracle(resource, run_menu(config_path, calibration_mode), rdir)
    oracle.start()
    return oracle
