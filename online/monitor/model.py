"""Pure state of the control-room monitor: accumulators, rate history, HV evaluation, alarms and the
live sensitivity estimate. No Qt here: everything is unit-testable and the views only read it.

Data flow (one code path for live and replay)::

    source (ZeroMQ SUB worker | replay worker | tests)
        -> stream.Inbox.put(Message)             [any thread; counts sequence gaps, latest-wins]
        -> Inbox.drain() -> (messages, LinkStats) [GUI thread, on the repaint timer]
        -> MonitorModel.apply(messages, stats)
        -> MonitorModel.evaluate(now)             [alarms]
        -> views read the model; each view redraws only when its section's version changed.

Topics and their content are the contract of :mod:`detector.monitoring` (docs/protocols.md section
4.2). A message whose content does not match the contract (missing meta key, wrong array shape) is
counted as malformed and logged, never raises out of :meth:`MonitorModel.apply`. A topic with a
``_on_<topic>`` handler here gets its own state; any other topic of the contract is kept generically
(:attr:`MonitorModel.latest` for latest-wins topics, :attr:`MonitorModel.sums` of the arrays for
accumulating ones), and ``version[topic]`` counts its updates, so a new topic needs no code here.

Sensitivity (see :class:`Sensitivity`): the 90% CL reach with zero observed events and no background is
``eps_90(m) = sqrt(2.3 / (EOT * efficiency * yield(m)))`` where ``yield(m)`` is the A' yield per EOT at
eps = 1 (``yield_per_eot_eps1`` in the JSON file written by ``na64-offline yields --json``), interpolated
log-log in mass; ``efficiency`` is the signal efficiency (config ``monitor.signal_efficiency`` if the key
exists, else 0.5; ``na64-monitor --efficiency`` overrides it).
"""

from __future__ import annotations

import logging
import math
import pathlib
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from detector import channels as ch
from detector import monitoring as mon
from detector.framing import Message
from detector.hwstatus import HV_FAULT, HVStatus
from detector.hwstatus import HV_RAMPING as HV_RAMP_BITS
from detector.monitoring import ACCUMULATING, LATEST_WINS, TOPIC_NAMES, ContentError, DAQState  # noqa: F401
from detector.settings import Config

from .history import History
from .led import LedMonitor
from .sensitivity import SENSITIVITY_MASSES_MEV, Sensitivity  # noqa: F401 - SENSITIVITY_MASSES_MEV: the views' default
from .tracker import MomentumWatch

log = logging.getLogger("online.monitor")

#: DAQ states of the spill state machine (``status`` meta ``state``)
STATES = tuple(s.value for s in DAQState)
TOPICS = TOPIC_NAMES
#: version sections besides one per topic
EXTRA_SECTIONS = ("rates", "sens", "alarms")

#: alarm levels
NONE, OK, WARN, ALARM = -1, 0, 1, 2
LEVEL_NAMES = {NONE: "n/a", OK: "OK", WARN: "WARNING", ALARM: "ALARM"}
ALARM_KEYS = ("daq", "beam", "momentum", "hv", "missed", "data", "led")
ALARM_TITLES = {
    "daq": "DAQ",
    "beam": "BEAM",
    "momentum": "MOMENTUM",
    "hv": "HV",
    "missed": "MISSED",
    "data": "DATA",
    "led": "LED",
}

#: per-channel HV condition codes, worst last
HV_OK, HV_OFF, HV_RAMPING, HV_DEVIATION, HV_FAULTED, HV_TRIPPED = range(6)
HV_CONDITION_NAMES = ("OK", "OFF", "RAMP", "DEV", "FAULT", "TRIP")


# --------------------------------------------------------------------------------------------------
@dataclass
class MonitorSettings:
    """The ``[monitor]`` config section plus the few other keys the monitor reads."""

    repaint_hz: float = 5.0
    yields_file: str = ""
    rate_drop_fraction: float = 0.5
    hv_deviation_v: float = 5.0
    stall_s: float = 60.0
    history_spills: int = 500
    efficiency: float = 0.5
    ecal_box_max_gev: float = 50.0
    hcal_box_max_gev: float = 1.0
    supercycle_s: float = 30.0
    rate_mean_spills: int = 20  #: spills in the running mean of S1 for the rate-drop alarm
    log_lines: int = 2000
    momentum_alarm_pct: float = 2.0  #: percent; see online.monitor.tracker
    beam_energy_gev: float = 0.0  #: GeV, the momentum alarm's reference (0: the DAQ's, from the messages)
    momentum_reference_spills: int = 0
    led_alarm_pct: float = 2.0  #: per cent from the LED reference (``monitor.led_alarm_pct``)
    led_reference_spills: int = 3  #: spills that make the LED reference (``led.reference_spills``)

    @classmethod
    def from_config(cls, cfg: Config) -> MonitorSettings:
        m, off = cfg.monitor, cfg.offline
        yields_file = m.yields_file
        if cfg.path and yields_file and not pathlib.Path(yields_file).is_absolute():
            yields_file = str(pathlib.Path(cfg.path).parent / yields_file)
        return cls(
            repaint_hz=min(10.0, float(m.repaint_hz)),
            yields_file=yields_file,
            rate_drop_fraction=float(m.rate_drop_fraction),
            hv_deviation_v=float(m.hv_deviation_v),
            stall_s=float(m.stall_s),
            history_spills=int(m.history_spills),
            efficiency=float(m.signal_efficiency),
            ecal_box_max_gev=float(off.ecal_box_max_gev),
            hcal_box_max_gev=float(off.hcal_box_max_gev),
            supercycle_s=float(cfg.spill.supercycle_s),
            momentum_alarm_pct=float(m.momentum_alarm_pct),
            beam_energy_gev=float(cfg.beam.energy_gev),
            momentum_reference_spills=int(m.momentum_reference_spills),
            led_alarm_pct=float(m.led_alarm_pct),
            led_reference_spills=int(cfg.led.reference_spills),
        )


@dataclass
class LinkStats:
    """What the receiving end counted: every message seen, sequence gaps, local drops."""

    received: int = 0  #: well-framed messages received
    missed: int = 0  #: messages the publisher sent that never arrived (sequence gaps)
    missed_by_topic: dict[str, int] = field(default_factory=dict)  #: the same, per topic
    restarts: int = 0  #: publisher restarts (sequence went backwards)
    malformed: int = 0  #: messages that failed framing (FramingError)
    last_malformed: str = ""
    unknown: int = 0  #: well-framed messages of a topic the monitor does not know
    superseded: dict[str, int] = field(default_factory=dict)  #: latest-wins replacements (by design)
    dropped: dict[str, int] = field(default_factory=dict)  #: accumulating messages dropped locally
    last_rx: float | None = None  #: wall-clock time of the last message received

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    def copy(self) -> LinkStats:
        return LinkStats(
            self.received,
            self.missed,
            dict(self.missed_by_topic),
            self.restarts,
            self.malformed,
            self.last_malformed,
            self.unknown,
            dict(self.superseded),
            dict(self.dropped),
            self.last_rx,
        )


@dataclass
class Alarm:
    key: str
    level: int = NONE
    text: str = ""
    since: float | None = None


@dataclass
class LogEntry:
    id: int
    time: float
    level: int  #: python logging level
    source: str  #: "alarm", "daq", "monitor"
    text: str


# --------------------------------------------------------------------------------------------------
def _meta_num(meta: dict[str, Any], key: str, default: float | None = None) -> float:
    v = meta.get(key, default)
    if v is None:
        raise ContentError(f"meta key {key!r} missing")
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ContentError(f"meta key {key!r} = {v!r} is not a number")
    return float(v)


def _array(msg: Message, name: str, shape: tuple[int, ...] | None = None, ndim: int | None = None) -> np.ndarray:
    a = msg.arrays.get(name)
    if a is None:
        raise ContentError(f"array {name!r} missing")
    if shape is not None and tuple(a.shape) != shape:
        raise ContentError(f"array {name!r} has shape {tuple(a.shape)}, expected {shape}")
    if ndim is not None and a.ndim != ndim:
        raise ContentError(f"array {name!r} has {a.ndim} dimensions, expected {ndim}")
    return a


def _edges(meta: dict[str, Any], key: str) -> tuple[float, float, int]:
    e = meta.get(key)
    if not (isinstance(e, list) and len(e) == 3 and all(isinstance(x, (int, float)) for x in e)):
        raise ContentError(f"meta {key!r} = {e!r} is not [lo, hi, n]")
    lo, hi, n = float(e[0]), float(e[1]), int(e[2])
    if not (hi > lo and n > 0):
        raise ContentError(f"meta {key!r} = {e!r}: need hi > lo and n > 0")
    return lo, hi, n


class MonitorModel:
    """Everything the views show. Call :meth:`apply` with drained messages and :meth:`evaluate`
    once per repaint; read the public attributes; ``version[section]`` increases when a section changes
    (sections: status, rates, calo, ecal_hcal, waveforms, amplitudes, hv, log, sens, alarms)."""

    def __init__(
        self, settings: MonitorSettings | None = None, sensitivity: Sensitivity | None = None, now: float | None = None
    ) -> None:
        self.s = settings or MonitorSettings()
        self.sensitivity = sensitivity or Sensitivity(self.s.yields_file, self.s.efficiency)
        self.started = time.time() if now is None else now
        self.mode = "live"  #: "live" or "replay"
        self.source = ""  #: endpoint or run directory, for the status panel
        self.replay_finished = False
        self.version: dict[str, int] = dict.fromkeys(TOPIC_NAMES + EXTRA_SECTIONS, 0)
        self.latest: dict[str, Message] = {}  #: latest message of topics without a handler
        self.sums: dict[str, dict[str, np.ndarray]] = {}  #: summed arrays of accumulating topics without one
        self.link = LinkStats()
        self.content_errors = 0
        self.last_content_error = ""
        self._bad_time: float | None = None
        self._missed_time: float | None = None
        self._last_missed_total = 0
        self._last_bad_total = 0
        self.log: deque[LogEntry] = deque(maxlen=self.s.log_lines)
        self._log_id = 0
        self.alarms: dict[str, Alarm] = {k: Alarm(k) for k in ALARM_KEYS}
        # status
        self.run: int | None = None
        self.spill: int | None = None
        self.state = "UNKNOWN"
        self.state_message = ""
        self.last_status_rx: float | None = None
        self.last_spill_unix: float | None = None
        self.spills_done = 0
        self.events_recorded = 0
        self.lost_spills = 0
        self.publisher_dropped = 0  #: messages the DAQ's PUB socket refused (status meta)
        self._lost_spills_time: float | None = None
        # hv
        self.hv_ids = np.empty(0, np.int64)
        self.hv_vset = np.empty(0, np.float32)
        self.hv_vmon = np.empty(0, np.float32)
        self.hv_imon = np.empty(0, np.float32)
        self.hv_status = np.empty(0, np.int32)
        self.hv_condition = np.empty(0, np.int8)
        self.hv_rx: float | None = None
        # waveforms, amplitudes
        self.waveforms = np.zeros((0, ch.N_CHANNELS, ch.N_SAMPLES), np.int16)
        self.waveform_event_ids = np.zeros(0, np.int64)
        self.waveform_spill: int | None = None
        self.amplitudes = np.zeros((0, ch.N_CALO), np.float32)
        self.amplitude_meta: dict[str, Any] = {}
        self._reset_run_accumulators()

    # ---------------------------------------------------------------------------------------------
    def _reset_run_accumulators(self) -> None:
        self.history = History(self.s.history_spills)
        self.trigger_names: list[str] = []
        self.eot_total = 0.0
        self.eot_sum_seen = 0.0
        self.spills_seen = 0
        self.last_scalers: dict[str, Any] = {}
        self.last_scalers_rx: float | None = None
        self.ecal_energy = np.zeros((ch.N_ECAL_SECTIONS, ch.N_ECAL_X, ch.N_ECAL_Y))
        self.ecal_occupancy = np.zeros((ch.N_ECAL_SECTIONS, ch.N_ECAL_X, ch.N_ECAL_Y))
        self.hcal_energy = np.zeros((ch.N_HCAL_MODULES, ch.N_HCAL_Y, ch.N_HCAL_X))
        self.hcal_occupancy = np.zeros((ch.N_HCAL_MODULES, ch.N_HCAL_Y, ch.N_HCAL_X))
        self.calo_events = 0
        self.calo_spills = 0
        self.eh_counts: np.ndarray | None = None
        self.eh_ecal_edges: tuple[float, float, int] | None = None
        self.eh_hcal_edges: tuple[float, float, int] | None = None
        self.eh_spills = 0
        self.reach: list[tuple[float, float]] = self.sensitivity.reach(0.0)
        s = self.s
        self.momentum = MomentumWatch(s.momentum_alarm_pct, s.beam_energy_gev, s.momentum_reference_spills)
        self.sums = {}
        self.led = LedMonitor(self.s.led_alarm_pct, self.s.led_reference_spills, self.s.history_spills)
        for k in ("rates", "calo", "ecal_hcal", "sens", *(t for t in ACCUMULATING if t != "log")):
            self.version[k] += 1

    def reset(self) -> None:
        """Forget the per-run accumulators (maps, histograms, rate history)."""
        self._reset_run_accumulators()
        self.add_log(logging.INFO, "monitor", "accumulators reset")

    # ---------------------------------------------------------------------------------------------
    def add_log(self, level: int, source: str, text: str, now: float | None = None) -> None:
        self._log_id += 1
        self.log.append(LogEntry(self._log_id, time.time() if now is None else now, level, source, text))
        self.version["log"] += 1
        if source != "daq":
            log.log(level, "%s: %s", source, text)

    def _content_error(self, msg: Message, exc: Exception, now: float) -> None:
        self.content_errors += 1
        self.last_content_error = f"{msg.topic}: {exc}"
        self._bad_time = now
        self.version["status"] += 1
        if self.content_errors <= 20 or self.content_errors % 100 == 0:
            self.add_log(logging.WARNING, "monitor", f"bad {msg.topic!r} message (seq {msg.seq}): {exc}", now)

    def _check_run(self, run: Any, now: float) -> None:
        if not isinstance(run, int) or isinstance(run, bool):
            return
        if self.run is not None and run != self.run:
            self.add_log(logging.INFO, "monitor", f"new run {run} (was {self.run}): accumulators reset", now)
            self._reset_run_accumulators()
        if run != self.run:
            self.run = run
            self.version["status"] += 1

    # ---------------------------------------------------------------------------------------------
    def apply(self, messages: Iterable[Message], stats: LinkStats | None = None, now: float | None = None) -> None:
        """Ingest drained messages (in arrival order) and take over the receiving end's counters."""
        now = time.time() if now is None else now
        if stats is not None:
            self.set_link_stats(stats, now)
        for msg in messages:
            self.ingest(msg, now)

    def set_link_stats(self, stats: LinkStats, now: float | None = None) -> None:
        now = time.time() if now is None else now
        missed_total = stats.missed + stats.dropped_total
        if missed_total > self._last_missed_total:
            self._missed_time = now
            self.add_log(
                logging.WARNING,
                "monitor",
                f"{missed_total - self._last_missed_total} message(s) missed "
                f"(total: {stats.missed} missed on the link, {stats.dropped_total} dropped locally)",
                now,
            )
        if stats.malformed > self._last_bad_total:
            self._bad_time = now
            self.add_log(
                logging.WARNING,
                "monitor",
                f"{stats.malformed - self._last_bad_total} malformed message(s): {stats.last_malformed}",
                now,
            )
        if stats.restarts > self.link.restarts:
            self.add_log(logging.INFO, "monitor", "publisher restarted (sequence number went back)", now)
        if (stats.received, stats.missed, stats.malformed, stats.dropped_total) != (
            self.link.received,
            self.link.missed,
            self.link.malformed,
            self.link.dropped_total,
        ):
            self.version["status"] += 1
        self._last_missed_total = missed_total
        self._last_bad_total = stats.malformed
        self.link = stats.copy()

    def ingest(self, msg: Message, now: float | None = None) -> None:
        """Update the state from one message. Content errors are counted, never raised."""
        now = time.time() if now is None else now
        if msg.topic not in mon.TOPICS:
            return
        handler = getattr(self, f"_on_{msg.topic}", self._on_generic)
        try:
            handler(msg, now)
        except (ContentError, KeyError, TypeError, ValueError, IndexError) as exc:
            self._content_error(msg, exc, now)

    def _on_generic(self, msg: Message, now: float) -> None:
        """A topic of the contract without its own handler: latest-wins topics keep their last message,
        accumulating ones the sum of their arrays (restarted when a shape changes or a run starts)."""
        spec = mon.check(msg)
        self._check_run(msg.run, now)
        if spec.accumulate:
            acc = self.sums.setdefault(msg.topic, {})
            for a in spec.arrays:
                v = np.asarray(msg.arrays[a.name], dtype=np.float64)
                if a.name not in acc or acc[a.name].shape != v.shape:
                    acc[a.name] = np.zeros(v.shape)
                acc[a.name] += v
        self.latest[msg.topic] = Message(
            msg.topic,
            msg.seq,
            msg.time,
            msg.run,
            msg.spill,
            dict(msg.meta),
            {k: np.array(v) for k, v in msg.arrays.items()},
        )
        self.version[msg.topic] += 1

    def _on_tracker(self, msg: Message, now: float) -> None:
        """Run sums and latest message as for any topic, plus the momentum peak (online.monitor.tracker)."""
        _array(msg, "momentum", (_edges(msg.meta, "momentum_edges")[2],))  # checked before anything is summed
        self._on_generic(msg, now)
        self.momentum.add(msg)

    def _on_status(self, msg: Message, now: float) -> None:
        m = msg.meta
        state = m.get("state")
        if state not in STATES:
            raise ContentError(f"state {state!r} is not one of {', '.join(STATES)}")
        self._check_run(m.get("run", msg.run), now)
        sp = m.get("spill", msg.spill)
        if isinstance(sp, int):
            self.spill = sp
        if state != self.state:
            lvl = logging.ERROR if state == "ERROR" else logging.INFO
            text = f"DAQ state {self.state} -> {state}"
            if state == "ERROR" and m.get("message"):
                text += f": {m.get('message')}"
            if state == "ERROR" or self.state in ("ERROR", "UNKNOWN") or state == "IDLE":
                self.add_log(lvl, "daq", text, now)
        self.state = state
        self.state_message = str(m.get("message", "") or "")
        lsu = m.get("last_spill_unix")
        if isinstance(lsu, (int, float)) and not isinstance(lsu, bool) and lsu > 0:
            self.last_spill_unix = float(lsu)
        for key in ("spills_done", "events_recorded"):
            v = m.get(key)
            if isinstance(v, int):
                setattr(self, key, v)
        pd = m.get("monitor_dropped")
        if isinstance(pd, int):
            self.publisher_dropped = pd
        lost = m.get("lost_spills")
        if isinstance(lost, int):
            if lost > self.lost_spills:
                self._lost_spills_time = now
                self.add_log(logging.WARNING, "daq", f"DAQ lost {lost - self.lost_spills} spill(s) (total {lost})", now)
            self.lost_spills = lost
        self.last_status_rx = now
        self.version["status"] += 1

    def _on_scalers(self, msg: Message, now: float) -> None:
        m = msg.meta
        s0, s1, v0 = _meta_num(m, "S0"), _meta_num(m, "S1"), _meta_num(m, "V0")
        eot = _meta_num(m, "eot")
        trig = m.get("triggers", {})
        if not isinstance(trig, dict):
            raise ContentError(f"triggers = {trig!r} is not a table")
        row = {
            "spill": float(msg.spill) if isinstance(msg.spill, int) else math.nan,
            "time": now,
            "S0": s0,
            "S1": s1,
            "V0": v0,
            "eot": eot,
        }
        for name, tv in trig.items():
            if not isinstance(tv, dict):
                raise ContentError(f"triggers[{name!r}] = {tv!r} is not {{raw, accepted}}")
            row[f"trig:{name}:raw"] = _meta_num(tv, "raw")
            row[f"trig:{name}:acc"] = _meta_num(tv, "accepted")
        self._check_run(msg.run, now)
        if isinstance(msg.spill, int):
            self.spill = msg.spill
        self.eot_sum_seen += eot
        tot = m.get("eot_total")
        self.eot_total = (
            float(tot) if isinstance(tot, (int, float)) and not isinstance(tot, bool) else self.eot_total + eot
        )
        row["eot_total"] = self.eot_total
        for name in trig:
            if name not in self.trigger_names:
                self.trigger_names.append(name)
        if len(self.history) and self.history.last("spill") == row["spill"]:
            self.history.replace_last(row)  # the same spill published again
        else:
            self.history.append(row)
            self.spills_seen += 1
        st = m.get("start_unix")
        ln = m.get("spill_length_s")
        if isinstance(st, (int, float)) and isinstance(ln, (int, float)) and self.mode == "live":
            self.last_spill_unix = max(self.last_spill_unix or 0.0, float(st) + float(ln))
        self.last_scalers = dict(m)
        self.last_scalers_rx = now
        flags = m.get("flags") or []
        if flags:
            self.add_log(logging.WARNING, "daq", f"spill {msg.spill}: flags {', '.join(map(str, flags))}", now)
        self.reach = self.sensitivity.reach(self.eot_total)
        self.version["rates"] += 1
        self.version["sens"] += 1
        self.version["status"] += 1

    def _on_calo(self, msg: Message, now: float) -> None:
        ee = _array(msg, "ecal_energy", (ch.N_ECAL_SECTIONS, ch.N_ECAL_X, ch.N_ECAL_Y))
        eo = _array(msg, "ecal_occupancy", (ch.N_ECAL_SECTIONS, ch.N_ECAL_X, ch.N_ECAL_Y))
        he = _array(msg, "hcal_energy", (ch.N_HCAL_MODULES, ch.N_HCAL_Y, ch.N_HCAL_X))
        ho = _array(msg, "hcal_occupancy", (ch.N_HCAL_MODULES, ch.N_HCAL_Y, ch.N_HCAL_X))
        self._check_run(msg.run, now)
        self.ecal_energy += ee
        self.ecal_occupancy += eo
        self.hcal_energy += he
        self.hcal_occupancy += ho
        ev = msg.meta.get("events", 0)
        self.calo_events += int(ev) if isinstance(ev, (int, float)) else 0
        self.calo_spills += 1
        self.version["calo"] += 1

    def _on_ecal_hcal(self, msg: Message, now: float) -> None:
        ex = _edges(msg.meta, "ecal_edges")
        hx = _edges(msg.meta, "hcal_edges")
        c = _array(msg, "counts", (ex[2], hx[2]))
        self._check_run(msg.run, now)
        if self.eh_counts is None or (ex, hx) != (self.eh_ecal_edges, self.eh_hcal_edges):
            if self.eh_counts is not None:
                self.add_log(logging.INFO, "monitor", "E_ECAL vs E_HCAL binning changed: histogram restarted", now)
            self.eh_counts = np.zeros((ex[2], hx[2]))
            self.eh_ecal_edges, self.eh_hcal_edges = ex, hx
            self.eh_spills = 0
        self.eh_counts += c
        self.eh_spills += 1
        self.version["ecal_hcal"] += 1

    def _on_waveforms(self, msg: Message, now: float) -> None:
        w = _array(msg, "waveforms", ndim=3)
        if w.shape[1:] != (ch.N_CHANNELS, ch.N_SAMPLES):
            raise ContentError(f"waveforms have shape {w.shape}, expected (k, {ch.N_CHANNELS}, {ch.N_SAMPLES})")
        ids = msg.arrays.get("event_ids")
        ids = np.arange(w.shape[0]) if ids is None or ids.shape != (w.shape[0],) else ids
        self.waveforms = np.array(w, dtype=np.int16)
        self.waveform_event_ids = np.array(ids, dtype=np.int64)
        self.waveform_spill = msg.spill
        self.version["waveforms"] += 1

    def _on_amplitudes(self, msg: Message, now: float) -> None:
        a = _array(msg, "amplitudes", ndim=2)
        if a.shape[1] != ch.N_CALO:
            raise ContentError(f"amplitudes have {a.shape[1]} columns, expected {ch.N_CALO}")
        self.amplitudes = np.array(a, dtype=np.float32)
        self.amplitude_meta = dict(msg.meta)
        self.version["amplitudes"] += 1

    def _on_led(self, msg: Message, now: float) -> None:
        mon.check(msg)
        self._check_run(msg.run, now)
        self.led.add(-1 if msg.spill is None else int(msg.spill), _meta_num(msg.meta, "unix"), msg.arrays["amplitude"])
        self.version["led"] += 1

    def _on_hv(self, msg: Message, now: float) -> None:
        ids = _array(msg, "channel_ids", ndim=1)
        n = ids.shape[0]
        arrs = {k: _array(msg, k, (n,)) for k in ("vset", "vmon", "imon", "status")}
        if n and (ids.min() < 0 or ids.max() >= ch.N_CHANNELS):
            raise ContentError("channel_ids out of range")
        self.hv_ids = np.array(ids, dtype=np.int64)
        self.hv_vset = np.array(arrs["vset"], dtype=np.float32)
        self.hv_vmon = np.array(arrs["vmon"], dtype=np.float32)
        self.hv_imon = np.array(arrs["imon"], dtype=np.float32)
        self.hv_status = np.array(arrs["status"], dtype=np.int64).astype(np.int32)
        self.hv_condition = hv_conditions(self.hv_vset, self.hv_vmon, self.hv_status, self.s.hv_deviation_v)
        self.hv_rx = now
        self.version["hv"] += 1

    def _on_log(self, msg: Message, now: float) -> None:
        text = msg.meta.get("text")
        if not isinstance(text, str):
            raise ContentError("log message without text")
        lvl = msg.meta.get("level", "INFO")
        level = logging.getLevelName(str(lvl).upper()) if not isinstance(lvl, int) else lvl
        self.add_log(level if isinstance(level, int) else logging.INFO, "daq", text, now)

    # ---------------------------------------------------------------------------------------------
    @property
    def missed_total(self) -> int:
        """Messages the monitor did not get: sequence gaps plus local drops."""
        return self.link.missed + self.link.dropped_total

    @property
    def malformed_total(self) -> int:
        return self.link.malformed + self.content_errors

    def since_last_spill(self, now: float | None = None) -> float | None:
        now = time.time() if now is None else now
        if self.mode == "replay":
            return None if self.last_scalers_rx is None else now - self.last_scalers_rx
        if self.last_spill_unix is not None:
            return max(0.0, now - self.last_spill_unix)
        return None if self.last_scalers_rx is None else now - self.last_scalers_rx

    def s1_running_mean(self) -> float:
        """Mean S1 of the spills before the last one (up to ``rate_mean_spills``), spills with S1 > 0 only."""
        s1 = self.history.column("S1")[:-1]
        s1 = s1[np.isfinite(s1) & (s1 > 0)][-self.s.rate_mean_spills :]
        return float(s1.mean()) if s1.size else math.nan

    def evaluate(self, now: float | None = None) -> dict[str, Alarm]:
        """Recompute the alarms; logs every change of level."""
        now = time.time() if now is None else now
        new = {
            "daq": self._alarm_daq(now),
            "beam": self._alarm_beam(now),
            "momentum": self._alarm_momentum(),
            "hv": self._alarm_hv(),
            "missed": self._alarm_missed(now),
            "data": self._alarm_data(now),
            "led": self._alarm_led(),
        }
        changed = False
        for key, (level, text) in new.items():
            a = self.alarms[key]
            if level != a.level:
                if level >= WARN or a.level >= WARN:
                    lvl = {ALARM: logging.ERROR, WARN: logging.WARNING}.get(level, logging.INFO)
                    word = LEVEL_NAMES[level] if level >= WARN else "cleared"
                    self.add_log(lvl, "alarm", f"{ALARM_TITLES[key]} {word}: {text}", now)
                a.level, a.since = level, now
                changed = True
            if text != a.text:
                a.text = text
                changed = True
        if changed:
            self.version["alarms"] += 1
        return self.alarms

    def _alarm_daq(self, now: float) -> tuple[int, str]:
        if self.mode == "replay":
            return (OK, "replay finished") if self.replay_finished else (OK, f"replay: state {self.state}")
        if self.state == "ERROR":
            return ALARM, "DAQ in ERROR" + (f": {self.state_message}" if self.state_message else "")
        if self.last_status_rx is None:
            waited = now - self.started
            if waited > self.s.stall_s:
                return ALARM, f"no DAQ status for {waited:.0f} s since start"
            return NONE, "waiting for DAQ status"
        age = now - self.last_status_rx
        if age > self.s.stall_s:
            return ALARM, f"DAQ STALLED: no status for {age:.0f} s (limit {self.s.stall_s:.0f} s)"
        return OK, f"{self.state}, heartbeat {age:.0f} s ago"

    def _alarm_beam(self, now: float) -> tuple[int, str]:
        n = len(self.history)
        if n == 0:
            return NONE, "no spill yet"
        s1 = self.history.last("S1")
        if not s1 > 0:
            return ALARM, f"NO BEAM: S1 = 0 in spill {self.spill}"
        mean = self.s1_running_mean()
        frac = self.s.rate_drop_fraction
        if np.isfinite(mean) and n >= 3 and s1 < frac * mean:
            return ALARM, f"RATE DROP: S1 = {s1:.3g} < {frac:.2f} x mean {mean:.3g}"
        if self.mode == "live" and self.last_scalers_rx is not None:
            gap = now - self.last_scalers_rx
            limit = max(3.0 * self.s.supercycle_s, self.s.stall_s)
            if gap > limit and self.state != "ERROR":
                return WARN, f"no spill for {gap:.0f} s: beam off?"
        if np.isfinite(mean):
            return OK, f"S1 {s1:.3g} = {s1 / mean:.0%} of mean"
        return OK, f"S1 {s1:.3g}"

    def _alarm_momentum(self) -> tuple[int, str]:
        moved, text = self.momentum.evaluate()
        return ({None: NONE, False: OK, True: ALARM}[moved], text)

    def _alarm_hv(self) -> tuple[int, str]:
        if self.hv_ids.size == 0:
            return NONE, "no HV data"
        cond = self.hv_condition

        def names(mask: np.ndarray) -> str:
            return ", ".join(ch.CHANNELS[i].name for i in self.hv_ids[mask][:4]) + (" ..." if mask.sum() > 4 else "")

        trip = cond == HV_TRIPPED
        fault = cond == HV_FAULTED
        dev = cond == HV_DEVIATION
        if trip.any() or fault.any():
            parts = []
            if trip.any():
                parts.append(f"{int(trip.sum())} TRIPPED: {names(trip)}")
            if fault.any():
                parts.append(f"{int(fault.sum())} fault: {names(fault)}")
            return ALARM, "; ".join(parts)
        if dev.any():
            return WARN, f"{int(dev.sum())} |VMON-VSET| > {self.s.hv_deviation_v:g} V: {names(dev)}"
        return OK, f"{self.hv_ids.size} channels OK"

    def _alarm_missed(self, now: float) -> tuple[int, str]:
        tot = self.missed_total
        recent = (self._missed_time is not None and now - self._missed_time < self.s.stall_s) or (
            self._lost_spills_time is not None and now - self._lost_spills_time < self.s.stall_s
        )
        text = f"{self.link.missed} missed, {self.link.dropped_total} dropped"
        if self.lost_spills:
            text += f", DAQ lost {self.lost_spills} spills"
        if recent:
            return WARN, text
        return OK, text if (tot or self.lost_spills) else "none missed"

    def _alarm_data(self, now: float) -> tuple[int, str]:
        tot = self.malformed_total
        if self._bad_time is not None and now - self._bad_time < self.s.stall_s:
            last = self.link.last_malformed or self.last_content_error
            return WARN, f"{tot} malformed: {last}"[:160]
        return OK, f"{tot} malformed" if tot else "all messages well-formed"

    def _alarm_led(self) -> tuple[int, str]:
        bad, text = self.led.alarm()
        return (NONE if bad is None else ALARM if bad else OK), text

    @property
    def worst_level(self) -> int:
        return max(a.level for a in self.alarms.values())


def hv_conditions(vset: np.ndarray, vmon: np.ndarray, status: np.ndarray, deviation_v: float) -> np.ndarray:
    """Per-channel HV condition code (HV_OK .. HV_TRIPPED) from the status word and |VMON - VSET|.
    A deviation counts only for a channel that is ON and not ramping."""
    st = np.asarray(status, dtype=np.int64)
    out = np.full(st.shape, HV_OK, dtype=np.int8)
    on = (st & HVStatus.ON) != 0
    out[~on | ((st & HVStatus.DIS) != 0)] = HV_OFF
    ramp = on & ((st & HV_RAMP_BITS) != 0)
    out[ramp] = HV_RAMPING
    dev = on & ~ramp & (np.abs(np.asarray(vmon, np.float64) - np.asarray(vset, np.float64)) > deviation_v)
    out[dev] = HV_DEVIATION
    out[(st & HV_FAULT) != 0] = HV_FAULTED
    out[(st & HVStatus.TRIP) != 0] = HV_TRIPPED
    return out
