"""The monitoring contract, as code: every topic of the DAQ's monitoring stream (docs/protocols.md
section 4.2, whose topic table is generated from this module by :func:`markdown_table`).

A topic is declared once, in :data:`TOPICS`, with

- its arrays: name, dtype and shape (a dimension written as a string, ``"k"``, varies per message);
- its meta keys (``meta``: always present; ``optional``: may be present);
- whether it **accumulates** (per-spill increments or lines, which a consumer must not drop silently) or
  is **latest-wins** (state: a newer message supersedes an older one);
- for histograms, their binning (:data:`ECAL_EDGES`, :data:`HCAL_EDGES`).

Sequence numbers run **per topic**: the ``seq`` of a message is its index among the messages of its topic
since the publisher started (:class:`TopicSequence` on the sending side), so a consumer that subscribes
to some topics only counts exactly what it missed of those (:class:`TopicSeqTracker`).

The DAQ's spill state machine states are :class:`DAQState` (the ``state`` of ``status``). The framing
(JSON header, raw buffers) is :mod:`detector.framing`; its ``SCHEMA_VERSION`` is the version of this
contract too.
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from . import channels as ch
from .framing import SCHEMA_VERSION, Message, SeqTracker

__all__ = [
    "ACCUMULATING",
    "ANGLE_EDGES",
    "ECAL_EDGES",
    "HCAL_EDGES",
    "LATEST_WINS",
    "MOMENTUM_EDGES",
    "N_MULTIPLICITY",
    "SCHEMA_VERSION",
    "TOPICS",
    "TOPIC_NAMES",
    "ArraySpec",
    "ContentError",
    "DAQState",
    "TopicSeqTracker",
    "TopicSequence",
    "TopicSpec",
    "check",
    "markdown_table",
    "update_docs",
]


class DAQState(str, enum.Enum):
    """States of the DAQ's spill state machine (``status`` meta ``state``)."""

    IDLE = "IDLE"
    SPILL = "SPILL"
    END_OF_SPILL = "END_OF_SPILL"
    READOUT = "READOUT"
    RECORDED = "RECORDED"
    ERROR = "ERROR"


#: GeV, E_ECAL axis of the ``ecal_hcal`` histogram [lo, hi, n bins]
ECAL_EDGES: tuple[float, float, int] = (0.0, 150.0, 150)
#: GeV, E_HCAL axis of the ``ecal_hcal`` histogram [lo, hi, n bins]
HCAL_EDGES: tuple[float, float, int] = (0.0, 150.0, 150)
#: GeV, the ``tracker`` momentum spectrum [lo, hi, n bins]
MOMENTUM_EDGES: tuple[float, float, int] = (0.0, 200.0, 400)
#: mrad, the ``tracker`` incoming-angle histogram [lo, hi, n bins]
ANGLE_EDGES: tuple[float, float, int] = (0.0, 10.0, 100)
#: bins of the ``tracker`` track multiplicity: 0, 1, ..., the last one counts that many or more
N_MULTIPLICITY = 8


class ContentError(ValueError):
    """A well-framed message whose content does not match the monitoring contract."""


@dataclass(frozen=True)
class ArraySpec:
    """One array of a topic: ``shape`` entries are ints (fixed) or names (vary per message)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]
    doc: str = ""

    def check(self, a: np.ndarray, dims: dict[str, int], strict: bool = True) -> None:
        """Raise :class:`ContentError` unless ``a`` has this shape (and, if ``strict``, this dtype); named
        dimensions must agree between the arrays of one message (``dims`` collects them)."""
        if strict and a.dtype != np.dtype(self.dtype):
            raise ContentError(f"array {self.name!r} has dtype {a.dtype}, expected {np.dtype(self.dtype)}")
        if a.ndim != len(self.shape):
            raise ContentError(f"array {self.name!r} has {a.ndim} dimensions, expected {len(self.shape)}")
        for n, want in zip(a.shape, self.shape):
            if isinstance(want, str):
                if dims.setdefault(want, n) != n:
                    raise ContentError(f"array {self.name!r}: dimension {want} = {n}, other arrays have {dims[want]}")
            elif n != want:
                raise ContentError(f"array {self.name!r} has shape {tuple(a.shape)}, expected {self.shape_text()}")

    def shape_text(self) -> str:
        return "(" + ",".join(str(s) for s in self.shape) + ("," if len(self.shape) == 1 else "") + ")"


@dataclass(frozen=True)
class TopicSpec:
    """One topic of the monitoring stream."""

    name: str
    when: str  #: when the DAQ publishes it
    accumulate: bool  #: True: per-spill increments/lines; False: latest-wins
    arrays: tuple[ArraySpec, ...] = ()
    meta: tuple[str, ...] = ()  #: meta keys every message carries
    optional: tuple[str, ...] = ()  #: meta keys a message may carry
    doc: str = ""  #: what the arrays/meta mean, units
    edges: dict[str, tuple[float, float, int]] = field(default_factory=dict)  #: meta key -> histogram binning

    def array(self, name: str) -> ArraySpec:
        for a in self.arrays:
            if a.name == name:
                return a
        raise KeyError(name)


_CALO_E = (ch.N_ECAL_SECTIONS, ch.N_ECAL_X, ch.N_ECAL_Y)
_CALO_H = (ch.N_HCAL_MODULES, ch.N_HCAL_Y, ch.N_HCAL_X)
_STATES = ", ".join(s.value for s in DAQState)

#: every topic of the monitoring stream, in publishing order of a spill
TOPICS: dict[str, TopicSpec] = {
    t.name: t
    for t in (
        TopicSpec(
            "status",
            "every second (heartbeat) and on every state change",
            accumulate=False,
            meta=("state",),
            optional=(
                "ready",
                "run",
                "spill",
                "last_spill_unix",
                "spills_done",
                "events_recorded",
                "lost_spills",
                "message",
                "calibration_mode",
                "monitor_dropped",
            ),
            doc=f"`state` ({_STATES}), `ready` (true once kernels are compiled and the crate is configured), "
            "`monitor_dropped` (messages the PUB socket refused)",
        ),
        TopicSpec(
            "scalers",
            "per spill",
            accumulate=True,
            meta=("S0", "S1", "V0", "eot"),
            optional=(
                "eot_total",
                "particles",
                "triggers",
                "accepted",
                "read_out",
                "recorded",
                "flags",
                "spill_length_s",
                "start_unix",
                "crate_spill",
                "scalers",
            ),
            doc="counts of the spill; `triggers` {name: {raw, accepted}}; `scalers` the crate's hardware counters",
        ),
        TopicSpec(
            "calo",
            "per spill",
            accumulate=True,
            arrays=(
                ArraySpec("ecal_energy", "<f8", _CALO_E, "GeV summed over the events, [section][x][y]"),
                ArraySpec("ecal_occupancy", "<i8", _CALO_E, "events with the cell above zero"),
                ArraySpec("hcal_energy", "<f8", _CALO_H, "GeV summed, [module][y][x]"),
                ArraySpec("hcal_occupancy", "<i8", _CALO_H, "events with the cell above zero"),
            ),
            meta=("events",),
            optional=("ecal_axes", "hcal_axes"),
        ),
        TopicSpec(
            "ecal_hcal",
            "per spill",
            accumulate=True,
            arrays=(
                ArraySpec(
                    "counts", "<f8", ("n_ecal", "n_hcal"), "the spill's increment of the E_ECAL vs E_HCAL histogram"
                ),
            ),
            meta=("ecal_edges", "hcal_edges"),
            optional=("events",),
            doc="edges are [lo, hi, n] in GeV, n = n_ecal, n_hcal",
            edges={"ecal_edges": ECAL_EDGES, "hcal_edges": HCAL_EDGES},
        ),
        TopicSpec(
            "waveforms",
            "per spill",
            accumulate=False,
            arrays=(
                ArraySpec("waveforms", "<i2", ("k", ch.N_CHANNELS, ch.N_SAMPLES), "ADC counts"),
                ArraySpec("event_ids", "<i8", ("k",), "event numbers in the spill"),
            ),
            doc="k sample events, evenly spaced over the spill's recorded events "
            "(`online.monitor_messages.sample_indices`)",
        ),
        TopicSpec(
            "amplitudes",
            "per spill",
            accumulate=False,
            arrays=(
                ArraySpec(
                    "amplitudes",
                    "<f4",
                    ("n", ch.N_CALO),
                    "pedestal-subtracted ADC counts of the calorimeter cells for the events of the "
                    "calibration (beam) trigger",
                ),
            ),
            meta=("table", "start_unix"),
            optional=("events",),
            doc="`table` {x_mm, y_mm, module, cell}",
        ),
        TopicSpec(
            "hv",
            "per spill and every 5 s",
            accumulate=False,
            arrays=(
                ArraySpec("vset", "<f4", ("n_hv",), "V"),
                ArraySpec("vmon", "<f4", ("n_hv",), "V"),
                ArraySpec("imon", "<f4", ("n_hv",), "uA"),
                ArraySpec("status", "<i4", ("n_hv",), "status word, `detector.hwstatus.HVStatus`"),
                ArraySpec("channel_ids", "<i8", ("n_hv",), "channel ids"),
            ),
            optional=("unix",),
        ),
        TopicSpec(
            "tracker",
            "per spill (when the Micromegas were read out)",
            accumulate=True,
            arrays=(
                ArraySpec("momentum", "<i8", ("n_p",), "events per momentum bin (events with an x track)"),
                ArraySpec("angle", "<i8", ("n_angle",), "events per incoming-angle bin (x and y track)"),
                ArraySpec("multiplicity", "<i8", (N_MULTIPLICITY,), "events with 0, 1, ... (last: or more) tracks"),
                ArraySpec("profile", "<i8", ("n_planes", "n_pos"), "largest particle cluster per event, per plane"),
                ArraySpec("strips", "<i8", ("n_planes",), "strips read out, summed over the events"),
                ArraySpec("clusters", "<i8", ("n_planes",), "clusters, summed over the events"),
                ArraySpec("eff_ref", "<i8", ("n_planes",), "events with a particle in every other plane"),
                ArraySpec("eff_hit", "<i8", ("n_planes",), "... of which this plane has one too"),
            ),
            meta=("events", "planes", "p0_gev", "momentum_edges", "angle_edges", "profile_edges"),
            doc="planes are 2 k (X) and 2 k + 1 (Y) of station k, named in `planes`; `p0_gev` the DAQ's "
            "configured beam energy; `profile_edges` [lo, hi, n] in mm (the chambers' active area); a particle "
            "is a cluster of charge >= `detector.tracking.PARTICLE_CLUSTER_CHARGE`",
            edges={"momentum_edges": MOMENTUM_EDGES, "angle_edges": ANGLE_EDGES},
        ),
        TopicSpec(
            "led",
            "per spill with LED events",
            accumulate=True,
            arrays=(
                ArraySpec("amplitude", "<f8", (ch.N_CALO,), "mean LED amplitude per calorimeter cell, ADC counts"),
                ArraySpec("rms", "<f8", (ch.N_CALO,), "RMS over the pulses, ADC counts"),
            ),
            meta=("pulses", "unix"),
            doc="`detector.led.cell_means` of the LED pulses after the flat top (NaN: no pulse); `unix` the "
            "end of the flat top (s)",
        ),
        TopicSpec(
            "log",
            "on events worth a line (the last: `end of run (reason): run N in DIR: ...`)",
            accumulate=True,
            meta=("level", "text"),
        ),
    )
}

TOPIC_NAMES: tuple[str, ...] = tuple(TOPICS)
#: topics whose latest message supersedes the previous one (state, not increments)
LATEST_WINS: frozenset[str] = frozenset(t.name for t in TOPICS.values() if not t.accumulate)
#: topics that carry per-spill increments or lines: never dropped silently
ACCUMULATING: frozenset[str] = frozenset(t.name for t in TOPICS.values() if t.accumulate)


def check(msg: Message, strict: bool = False) -> TopicSpec:
    """The topic's spec if ``msg`` carries every declared array (shape; with ``strict`` also the exact
    dtype) and meta key; raises :class:`ContentError` (unknown topic, missing array or key, wrong shape
    or dtype) otherwise. Not strict, any numeric dtype is accepted (consumers convert)."""
    spec = TOPICS.get(msg.topic)
    if spec is None:
        raise ContentError(f"unknown topic {msg.topic!r}")
    dims: dict[str, int] = {}
    for a in spec.arrays:
        arr = msg.arrays.get(a.name)
        if arr is None:
            raise ContentError(f"array {a.name!r} missing")
        a.check(arr, dims, strict)
    for key in spec.meta:
        if key not in msg.meta:
            raise ContentError(f"meta key {key!r} missing")
    return spec


class TopicSequence:
    """Per-topic sequence numbers of one publisher (not thread-safe: the caller holds its lock)."""

    def __init__(self) -> None:
        self.next: dict[str, int] = {}

    def take(self, topic: str) -> int:
        """The number of the next message of ``topic`` (0, 1, 2, ... per topic)."""
        n = self.next.get(topic, 0)
        self.next[topic] = n + 1
        return n

    def total(self) -> int:
        return sum(self.next.values())


class TopicSeqTracker:
    """Counts messages a consumer missed, per topic, from the per-topic sequence numbers."""

    def __init__(self) -> None:
        self.topics: dict[str, SeqTracker] = {}

    def update(self, topic: str, seq: int) -> int:
        """Record message ``seq`` of ``topic``; returns how many of that topic were missed just before it."""
        tr = self.topics.get(topic)
        if tr is None:
            tr = self.topics[topic] = SeqTracker()
        return tr.update(seq)

    @property
    def received(self) -> int:
        return sum(t.received for t in self.topics.values())

    @property
    def missed(self) -> int:
        return sum(t.missed for t in self.topics.values())

    @property
    def restarts(self) -> int:
        return sum(t.restarts for t in self.topics.values())

    def missed_by_topic(self) -> dict[str, int]:
        return {k: t.missed for k, t in self.topics.items()}


# ------------------------------------------------------------------------------------------------ docs
def _rows() -> Iterator[str]:
    yield "| topic | when | kind | arrays | meta |"
    yield "|---|---|---|---|---|"
    for t in TOPICS.values():
        arrays = (
            ", ".join(
                f"`{a.name}` {a.shape_text()} {np.dtype(a.dtype).str[1:]}" + (f" ({a.doc})" if a.doc else "")
                for a in t.arrays
            )
            or "–"
        )
        meta = ", ".join([f"`{k}`" for k in t.meta] + [f"`{k}`?" for k in t.optional]) or "–"
        if t.doc:
            meta += f"; {t.doc}"
        kind = "accumulates" if t.accumulate else "latest wins"
        yield f"| `{t.name}` | {t.when} | {kind} | {arrays} | {meta} |"


DOC_BEGIN = "<!-- monitoring topics: generated by `python -m detector.monitoring --update-docs docs/protocols.md` -->"
DOC_END = "<!-- end of generated monitoring topics -->"


def markdown_table() -> str:
    """The topic table of docs/protocols.md section 4.2, between its generated-section markers."""
    edges = ", ".join(f"`{k}` = {list(v)}" for t in TOPICS.values() for k, v in t.edges.items())
    lines = [
        DOC_BEGIN,
        *_rows(),
        "",
        (
            f"Schema version {SCHEMA_VERSION}; `seq` counts per topic; `?` marks optional meta keys; "
            f"histogram binning: {edges} (GeV; `angle_edges` in mrad)."
        ),
        DOC_END,
    ]
    return "\n".join(lines)


def update_docs(text: str) -> str:
    """``text`` (docs/protocols.md) with its generated topic table replaced by the current one."""
    i, j = text.find(DOC_BEGIN), text.find(DOC_END)
    if i < 0 or j < i:
        raise ValueError("docs have no generated monitoring-topics section (markers missing)")
    return text[:i] + markdown_table() + text[j + len(DOC_END) :]


def _main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "--update-docs":
        import pathlib

        p = pathlib.Path(argv[1])
        p.write_text(update_docs(p.read_text(encoding="utf-8")), encoding="utf-8")
        return 0
    print(markdown_table())
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
