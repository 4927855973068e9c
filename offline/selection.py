"""The event selection of the invisible-mode search (PAPER sec. V; docs/physics.md 1.3-1.7, 6.6) as named,
ordered cuts with a cut flow, the side bands, and the histograms.

Cuts, in order (each applies on top of the previous ones):

==============  ==========================================================================================
``trigger``     physics-trigger bit set in the event's trigger mask (TRIGGER_BITS["physics"])
``srd``         electron tag: every SRD section above ``offline.srd_min_gev``
``srd_time``    SRD timing: every SRD section in time, |t - t0| < ``trigger.window_ns``
``momentum``    incoming momentum from the spectrometer (:mod:`detector.tracking`) in
                [``offline.p_min_gev``, ``offline.p_max_gev``]
``angle``       incoming track angle < ``offline.angle_max_mrad``
``tracks``      single track: 1 .. ``offline.max_tracks`` fitted tracks and at most as many incoming
                particles in the chambers before the magnets
``shower``      shower-shape cut: the lateral profile must be that of an e-m shower (chi2/ndf of the 6x6
                map against the e-m expectation < ``shape_chi2_ndf_max``) and its centre must lie near the
                beam axis (|x|, |y| < ``centre_max_mm``, about 4 sigma of the beam spot). Wide hadronic
                showers and off-axis electrons fail it.
``ps``          preshower energy E_PS > the physics-trigger threshold ``trigger.menu.physics.ps_min_gev``,
                on the analogue sum PS_SUM the trigger cuts on (``e_ps_sum``): the cell sum ``e_ps`` loses
                the zero-suppressed tails of a small shower and would cut harder than the trigger
``v2``          V2 veto: E_V2 < ``offline.v2_max_mip`` MIP
``hcal``        HCAL veto: E_HCAL < ``offline.hcal_box_max_gev``
``pileup``      every ECAL cell above ``offline.cell_pileup_min_gev`` shows a single pulse (no pile-up flag)
                within +/- ``offline.pileup_window_ns`` of the nominal t0 (PAPER)
``box``         signal box E_ECAL < ``offline.ecal_box_max_gev``
==============  ==========================================================================================

The three tracker cuts need the track columns (:data:`TRACK_COLUMNS`, filled by :func:`track_columns` from
the Micromegas strip data). A table without them (a spill file recorded without the Micromegas block) cannot
be cut on the track: there the three cuts pass every event and :attr:`Selection.tracker_applied` is False, so
a cut flow says which case it is.

Preselection = every cut but the vetoes (``v2``, ``hcal``) and the ``box``. Side bands (docs/physics.md 6.6):

- ``A``: preselected, E_ECAL < box edge and E_HCAL >= the HCAL threshold. The V2 veto is NOT applied here:
  events with energy in the HCAL nearly always carry charged secondaries through V2 (dimuons, hadrons), so
  with V2 the band would be empty;
- ``C``: preselected, V2 veto passed, E_HCAL < the HCAL threshold and E_ECAL >= box edge: every cut of the
  box except the E_ECAL one (the paper's example, run II, uses C). Its E_ECAL spectrum is extrapolated
  into the box by ``offline/background.py``.

Histograms use ``hist`` with Weight storage (uproot cannot write Int64 storage).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass

import hist
import numpy as np

from detector.records import TRIGGER_BITS
from detector.settings import Config

from .events import Table, n_rows, track_columns  # noqa: F401 (track_columns: part of this module's API)

CUT_NAMES: tuple[str, ...] = (
    "trigger", "srd", "srd_time", "momentum", "angle", "tracks", "shower", "ps", "v2", "hcal", "pileup", "box"
)  # fmt: skip
PRESELECTION: tuple[str, ...] = (
    "trigger", "srd", "srd_time", "momentum", "angle", "tracks", "shower", "ps", "pileup"
)  # fmt: skip
#: the SRD tag, energy and timing (the electron identification before the tracker)
SRD_CUTS: tuple[str, ...] = ("srd", "srd_time")
#: the tracker cuts: a good single track in the momentum window
TRACKER_CUTS: tuple[str, ...] = ("momentum", "angle", "tracks")
#: event-table columns of the reconstructed incoming track (NaN / 0 without a track)
TRACK_COLUMNS: tuple[str, ...] = (
    "trk_p_gev", "trk_angle_mrad", "trk_n_tracks", "trk_n_incoming", "trk_chi2", "trk_ndf", "trk_n_hits"
)  # fmt: skip
SIDEBANDS: tuple[str, ...] = ("A", "C")
ECAL_HCAL_RANGE_GEV = (0.0, 150.0)
ECAL_HCAL_BINS = 150
MOMENTUM_RANGE_GEV = (0.0, 200.0)  #: the spectrometer momentum histograms
MOMENTUM_BINS = 200


@dataclass(frozen=True)
class Cuts:
    """Cut values, read from a validated configuration by :meth:`from_config` (their defaults and
    documentation are the config keys': ``offline.*``, ``trigger.window_ns`` and the physics trigger line's
    ``ps_min_gev``; no value is written here a second time)."""

    ps_min_gev: float
    srd_min_gev: float
    srd_window_ns: float
    shape_chi2_ndf_max: float
    centre_max_mm: float
    v2_max_mip: float
    hcal_max_gev: float
    ecal_max_gev: float
    p_min_gev: float
    p_max_gev: float
    angle_max_mrad: float
    max_tracks: float

    @classmethod
    def from_config(cls, cfg: Config, **overrides: float) -> Cuts:
        off = cfg.offline
        values = dict(
            ps_min_gev=float(cfg.trigger.menu["physics"].ps_min_gev),
            srd_min_gev=float(off.srd_min_gev),
            srd_window_ns=float(cfg.trigger.window_ns),
            v2_max_mip=float(off.v2_max_mip),
            hcal_max_gev=float(off.hcal_box_max_gev),
            shape_chi2_ndf_max=float(off.shape_chi2_ndf_max),
            centre_max_mm=float(off.centre_max_mm),
            ecal_max_gev=float(off.ecal_box_max_gev),
            p_min_gev=float(off.p_min_gev),
            p_max_gev=float(off.p_max_gev),
            angle_max_mrad=float(off.angle_max_mrad),
            max_tracks=float(off.max_tracks),
        )
        values.update(overrides)
        return cls(**values)

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def cut_masks(t: Table, cuts: Cuts) -> OrderedDict[str, np.ndarray]:
    """Each cut on its own (boolean arrays over the events of ``t``), in :data:`CUT_NAMES` order."""
    srd_ok = np.ones(n_rows(t), dtype=bool)
    srd_in_time = np.ones(n_rows(t), dtype=bool)
    for i in range(3):
        srd_ok &= t[f"srd{i}"] > cuts.srd_min_gev
        srd_in_time &= np.abs(t[f"srd{i}_dt"]) < cuts.srd_window_ns  # NaN (no pulse) fails
    chi2_ndf = t["ecal_chi2"] / np.maximum(t["ecal_ndf"], 1)
    m = OrderedDict()
    m["trigger"] = (t["trigger_mask"] & TRIGGER_BITS["physics"]) != 0
    m["srd"] = srd_ok
    m["srd_time"] = srd_in_time
    m.update(tracker_masks(t, cuts))
    m["shower"] = (
        (chi2_ndf < cuts.shape_chi2_ndf_max)
        & (np.abs(t["ecal_x_mm"]) < cuts.centre_max_mm)
        & (np.abs(t["ecal_y_mm"]) < cuts.centre_max_mm)
    )  # NaN (no energy) fails
    m["ps"] = t["e_ps_sum"] > cuts.ps_min_gev
    m["v2"] = t["v2_mip"] < cuts.v2_max_mip
    m["hcal"] = t["e_hcal"] < cuts.hcal_max_gev
    m["pileup"] = t["n_cells_pileup"] == 0
    m["box"] = t["e_ecal"] < cuts.ecal_max_gev
    return m


def tracker_masks(t: Table, cuts: Cuts) -> OrderedDict[str, np.ndarray]:
    """The :data:`TRACKER_CUTS` on their own; they need only the track columns (all pass without them)."""
    m = OrderedDict()
    if has_tracks(t):
        p = t["trk_p_gev"]
        m["momentum"] = (p >= cuts.p_min_gev) & (p <= cuts.p_max_gev)  # NaN (no track) fails
        m["angle"] = t["trk_angle_mrad"] < cuts.angle_max_mrad
        m["tracks"] = (
            (t["trk_n_tracks"] >= 1) & (t["trk_n_tracks"] <= cuts.max_tracks) & (t["trk_n_incoming"] <= cuts.max_tracks)
        )
    else:
        for name in TRACKER_CUTS:
            m[name] = np.ones(n_rows(t), dtype=bool)
    return m


def has_tracks(t: Table) -> bool:
    """Whether the table carries the track columns (see the module docstring)."""
    return all(c in t for c in TRACK_COLUMNS)


def cumulative(masks: OrderedDict[str, np.ndarray], names: tuple[str, ...] = CUT_NAMES) -> OrderedDict[str, np.ndarray]:
    """Masks of the events passing all cuts up to and including each one."""
    out = OrderedDict()
    acc = None
    for name in names:
        acc = masks[name].copy() if acc is None else acc & masks[name]
        out[name] = acc
    return out


@dataclass
class Selection:
    """Result of :func:`select` on one table."""

    cuts: Cuts
    masks: OrderedDict[str, np.ndarray]  #: single cuts
    passed: OrderedDict[str, np.ndarray]  #: cumulative
    preselected: np.ndarray
    sidebands: dict[str, np.ndarray]
    tracker_applied: bool = True  #: False: the table had no track columns, the tracker cuts passed all

    @property
    def n_events(self) -> int:
        return int(next(iter(self.masks.values())).shape[0])

    @property
    def in_box(self) -> np.ndarray:
        return self.passed["box"]

    def cut_flow(self) -> OrderedDict[str, int]:
        flow = OrderedDict(all=self.n_events)
        for name, mask in self.passed.items():
            flow[name] = int(mask.sum())
        return flow


def select(t: Table, cuts: Cuts) -> Selection:
    """Apply the cuts to an event table."""
    masks = cut_masks(t, cuts)
    passed = cumulative(masks)
    pre = cumulative(masks, PRESELECTION)["pileup"]
    low_ecal = masks["box"]
    low_hcal = masks["hcal"]
    sidebands = {"A": pre & low_ecal & ~low_hcal, "C": pre & masks["v2"] & low_hcal & ~low_ecal}
    return Selection(cuts, masks, passed, pre, sidebands, has_tracks(t))


# ------------------------------------------------------------------------------------ histograms
def new_histograms() -> dict[str, hist.Hist]:
    """Empty histograms (Weight storage): E_ECAL vs E_HCAL for physics triggers and after the
    preselection, the cut flow, and the incoming momentum of the beam-trigger and of the physics-trigger
    events (spectrometer; filled when the table has the track columns)."""
    lo, hi = ECAL_HCAL_RANGE_GEV

    def ecal_hcal(title: str) -> hist.Hist:
        return hist.Hist(
            hist.axis.Regular(ECAL_HCAL_BINS, lo, hi, name="e_ecal", label="E_ECAL [GeV]"),
            hist.axis.Regular(ECAL_HCAL_BINS, lo, hi, name="e_hcal", label="E_HCAL [GeV]"),
            storage=hist.storage.Weight(),
            label=title,
        )

    return {
        "ecal_vs_hcal_trigger": ecal_hcal("physics trigger"),
        "ecal_vs_hcal": ecal_hcal("preselected (all cuts but the V2/HCAL vetoes and the box)"),
        "cutflow": hist.Hist(
            hist.axis.Integer(0, len(CUT_NAMES) + 1, name="cut", label="cut (0 = all)"),
            storage=hist.storage.Weight(),
            label="cut flow",
        ),
        **{
            f"momentum_{trig}": hist.Hist(
                hist.axis.Regular(MOMENTUM_BINS, *MOMENTUM_RANGE_GEV, name="p", label="incoming momentum [GeV]"),
                storage=hist.storage.Weight(),
                label=f"{trig} trigger",
            )
            for trig in ("beam", "physics")
        },
    }


def event_weights(t: Table) -> np.ndarray:
    """Per-event weights: the truth weight of simulated events (1/bias or the probability of a forced
    process in MC samples; 1 in recorded data, which are never biased), 1 for events without truth."""
    w = t.get("truth_weight")
    return np.ones(n_rows(t)) if w is None else np.asarray(w, dtype=np.float64)


def fill_histograms(h: dict[str, hist.Hist], t: Table, sel: Selection) -> None:
    """Add the events of one table, with their :func:`event_weights`, to the histograms (values beyond
    150 GeV land in the overflow)."""
    w = event_weights(t)
    trig = sel.masks["trigger"]
    h["ecal_vs_hcal_trigger"].fill(e_ecal=t["e_ecal"][trig], e_hcal=t["e_hcal"][trig], weight=w[trig])
    pre = sel.preselected
    h["ecal_vs_hcal"].fill(e_ecal=t["e_ecal"][pre], e_hcal=t["e_hcal"][pre], weight=w[pre])
    flow = [w.sum()] + [w[m].sum() for m in sel.passed.values()]
    h["cutflow"].fill(cut=np.arange(len(flow)), weight=np.asarray(flow, dtype=np.float64))
    if sel.tracker_applied:
        for kind in ("beam", "physics"):
            m = ((t["trigger_mask"] & TRIGGER_BITS[kind]) != 0) & np.isfinite(t["trk_p_gev"])
            h[f"momentum_{kind}"].fill(p=t["trk_p_gev"][m], weight=w[m])


def tagged_electrons(t: Table, sel: Selection) -> dict[str, int]:
    """The tracker's efficiency on tagged electrons: ``beam_electrons``, the beam-trigger events the SRD tags
    as electrons (:data:`SRD_CUTS`: energy and timing), and ``good_track``, those of them with a good single
    track in the momentum window (every cut of :data:`TRACKER_CUTS`). Event counts (not weighted);
    both 0 for a table without the track columns."""
    if not sel.tracker_applied:
        return {"beam_electrons": 0, "good_track": 0}
    tag = (t["trigger_mask"] & TRIGGER_BITS["beam"]) != 0
    for name in SRD_CUTS:
        tag = tag & sel.masks[name]
    good = tag.copy()
    for name in TRACKER_CUTS:
        good &= sel.masks[name]
    return {"beam_electrons": int(tag.sum()), "good_track": int(good.sum())}


def histograms_to_arrays(h: dict[str, hist.Hist]) -> dict[str, np.ndarray]:
    """Flat numpy arrays of the histograms (values, variances, edges) for an .npz file."""
    out: dict[str, np.ndarray] = {}
    for name, hh in h.items():
        variances = hh.variances(flow=True)
        out[f"{name}__values"] = hh.values(flow=True)
        out[f"{name}__variances"] = hh.values(flow=True) if variances is None else variances
        for i, ax in enumerate(hh.axes):
            out[f"{name}__edges{i}"] = np.asarray(ax.edges)
    out["cutflow__names"] = np.array(("all",) + CUT_NAMES)
    return out
