"""A' signal efficiency from the SAME simulation, reconstruction, trigger and selection as the data
(issue 8 part 7; ``na64-offline simulate``).

Per mass:

1. beam: ``N`` electrons of the configured beam (energy, spread, spot) from
   :func:`sim_frontend.beam.generate_spill` (no other particle types); every one emits an invisibly decaying
   A' with x = E_A'/E0 drawn from :func:`sim_frontend.aprime.sample_x` restricted to
   E_A' > E_miss,min = E0 - ``offline.ecal_box_max_gev`` (the yield definition of ``sim_frontend.yields``
   with the same E_miss,min, so efficiency x yield = the expected signal in the box);
2. detector: :func:`sim_frontend.response.apply_response`, the A' emitted inside the ECAL shower at a depth
   the primary's path implies (:mod:`sim_frontend.aprime_depth`, as in the emulator), full events from
   ``sim_frontend.digitizer.Digitizer.events`` at the nominal HV (calibration ``hv_set``, no hidden gain
   spread);
3. reconstruction: :func:`offline.events.reconstruct_events` of all channels (the offline event table);
4. trigger: the trigger's waveform entry on the six trigger channels (S1, S2, S3, V1, PS_SUM, ECAL_SUM) of
   the full event (bit-identical to the primitives) -- the same code and the same input as online, its
   calibrated pedestals included (not the offline reconstruction's per-event ones, which an earlier
   particle's tail can raise: :mod:`trigger.menu`);
5. selection: :mod:`offline.selection` (every cut, box included).

Efficiency = selected / generated, with the binomial error sqrt(e (1 - e) / N).

Pile-up (``pileup=True``): the signal electrons are embedded in a beam of the configured composition and
intensity (``beam.particles_per_spill`` per ``spill.length_s``): a beam spill is generated over a time
slice holding ``PILEUP_BEAM_FACTOR`` x N particles and N of its beam electrons are turned into A' emitters;
the digitizer adds the pulses of their neighbours in time.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from detector import channels as ch
from detector.config import Calibration, Config, load_calibration
from detector.records import PARTICLE_CODES, TRIGGER_BITS, TRUTH_APRIME, TRUTH_DIMUON
from sim_frontend import aprime
from sim_frontend.aprime_depth import AprimeEmission
from sim_frontend.beam import BeamSpill, generate_spill
from sim_frontend.response import Deposits, apply_response

from . import events as ev
from . import selection as sel

PILEUP_BEAM_FACTOR = 4  #: beam particles generated per signal event in pile-up mode
SEED_OFFSET = 0x51A1  #: spill number offset of the signal simulation (independent of data spills)


@dataclass
class SignalResult:
    """Signal efficiency at one A' mass."""

    mass_mev: float
    events: int
    triggered: int
    selected: int
    cut_flow: dict[str, int]
    emiss_min_gev: float
    pileup: bool = False
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def efficiency(self) -> float:
        return self.selected / self.events if self.events else 0.0

    @property
    def efficiency_err(self) -> float:
        """Binomial error sqrt(e (1 - e) / N)."""
        e = self.efficiency
        return math.sqrt(e * (1.0 - e) / self.events) if self.events else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "mass_mev": self.mass_mev,
            "events": self.events,
            "triggered": self.triggered,
            "selected": self.selected,
            "efficiency": self.efficiency,
            "efficiency_err": self.efficiency_err,
            "cut_flow": dict(self.cut_flow),
            "emiss_min_gev": self.emiss_min_gev,
            "pileup": self.pileup,
            "seed": self.seed,
            **self.extra,
        }


def emiss_min_gev(cfg: Config) -> float:
    """E_miss,min = beam energy - signal-box edge (GeV)."""
    return float(cfg.beam.energy_gev) - float(cfg.offline.ecal_box_max_gev)


def signal_emission(cfg: Config, mass_mev: float, seed: int, at_face: bool = False) -> AprimeEmission:
    """How the response emits the A' of the signal sample (:func:`_make_spill`): ``mass_mev``, E_A' above
    E_miss,min as the fraction of each electron's beam energy its x is drawn above, at its depth in the
    shower unless ``at_face``."""
    return AprimeEmission(float(mass_mev), emiss_min_gev(cfg) / float(cfg.beam.energy_gev), seed, at_face)


def electron_only(cfg: Config) -> Config:
    """``cfg`` with a beam of electrons only (no pions, kaons, muons or halo) and no A' injection."""
    no_others = dict.fromkeys(("frac_pion", "frac_kaon", "frac_muon", "frac_halo"), 0.0)
    return cfg.with_overrides({"beam": no_others, "aprime": {"enabled": False}})


def mc_beam(cfg: Config, n: int, spill_no: int, pileup: bool) -> tuple[BeamSpill, np.ndarray]:
    """An unbiased MC spill and the indices of ``n`` of its beam electrons, for an MC sample to turn into
    its own events (A' emitters, forced background processes). ``pileup``: the electrons are embedded in a
    beam of the configured composition and intensity (``beam.particles_per_spill`` per ``spill.length_s``),
    ``PILEUP_BEAM_FACTOR`` x n particles over the matching time slice, evenly spaced among its electrons;
    else a spill of electrons only, far apart in time."""
    if pileup:
        rate = float(cfg.beam.particles_per_spill) / float(cfg.spill.length_s)  # 1/s
        n_beam = PILEUP_BEAM_FACTOR * n + 100
        # the short pile-up spill may be below the range a config file may ask for: replaced, not validated
        c = dataclasses.replace(
            cfg,
            aprime=dataclasses.replace(cfg.aprime, enabled=False),
            spill=dataclasses.replace(cfg.spill, length_s=n_beam / rate),
        )
        spill = generate_spill(c, spill_no, n_particles=n_beam, start_unix=0.0)
        electrons = np.flatnonzero(spill.truth["ptype"] == PARTICLE_CODES["e-"])
        # evenly spaced electrons (not neighbours of each other in the list): every signal event keeps the
        # pile-up environment of the beam
        if electrons.size < n:
            raise RuntimeError("not enough beam electrons for the signal events; raise PILEUP_BEAM_FACTOR")
        pick = electrons[np.linspace(0, electrons.size - 1, n).round().astype(np.int64)]
    else:
        spill = generate_spill(electron_only(cfg), spill_no, n_particles=n, start_unix=0.0)
        pick = np.arange(n)
    return spill, pick


def _make_spill(cfg: Config, mass_mev: float, n: int, seed: int, pileup: bool):
    """A BeamSpill in which ``n`` beam electrons (their indices are returned) emit an A'."""
    e0 = float(cfg.beam.energy_gev)
    spill, pick = mc_beam(cfg, n, SEED_OFFSET + seed, pileup)
    rng = np.random.default_rng([seed, int(round(mass_mev * 1000)), 0xA9])
    x = aprime.sample_x(
        mass_mev * 1e-3, e0, pick.size, rng, x_min=signal_emission(cfg, mass_mev, seed).emiss_min_fraction
    )
    t = spill.truth
    t["flags"][pick] = (t["flags"][pick] & ~np.uint8(TRUTH_DIMUON)) | TRUTH_APRIME
    t["e_invisible"][pick] = (x * t["e_beam"][pick]).astype(np.float32)
    t["weight"][pick] = 1.0
    return spill, pick


def trigger_menu(cfg: Config, calib: Calibration):
    from trigger.menu import TriggerMenu

    return TriggerMenu.from_config(cfg, calib)


def physics_only_menu(cfg: Config, calib: Calibration):
    """The configured menu with the physics trigger alone deciding: no prescale bookkeeping across chunks,
    no beam or random triggers."""
    menu = trigger_menu(cfg, calib)
    return menu.replace(
        physics=dataclasses.replace(menu.physics, prescale=1),
        beam=dataclasses.replace(menu.beam, enabled=False),
        random=dataclasses.replace(menu.random, enabled=False),
    )


def trigger_mask(menu, wf: np.ndarray, arrival_ns: np.ndarray) -> np.ndarray:
    """Trigger mask (uint8 per event) of full events ``wf`` (int16 (N, N_CHANNELS, 32)) arriving at
    ``arrival_ns`` (ns): their six trigger channels through the trigger's waveform entry
    (:func:`trigger.kernels.trigger_waveforms`, the numba code online runs on the primitives)."""
    from trigger.kernels import trigger_waveforms

    ids = ch.trigger_channel_ids()
    order = np.argsort(arrival_ns, kind="stable")
    prims = np.ascontiguousarray(wf[order][:, ids])
    res = trigger_waveforms(menu, prims, np.ascontiguousarray(arrival_ns[order], dtype=np.float64))
    mask_sorted = np.zeros(order.size, np.uint8)
    mask_sorted[res.accepted] = res.mask
    mask = np.zeros(order.size, np.uint8)
    mask[order] = mask_sorted
    return mask


def simulate_events(
    cfg: Config,
    mass_mev: float,
    n_events: int,
    calib: Calibration | None = None,
    seed: int = 1,
    pileup: bool = False,
    chunk: int = 4096,
) -> ev.Table:
    """Event table (with truth and the re-computed trigger mask) of ``n_events`` A' signal events."""

    if n_events < 1:
        raise ValueError(f"need at least one event, got {n_events}")
    if not (mass_mev > 0 and math.isfinite(mass_mev)):
        raise ValueError(f"A' mass must be > 0 MeV, got {mass_mev}")
    calib = load_calibration(cfg) if calib is None else calib
    spill, pick = _make_spill(cfg, mass_mev, n_events, seed, pileup)
    dep = apply_response(spill, cfg, aprime=signal_emission(cfg, mass_mev, seed))
    return mc_event_table(cfg, calib, spill, dep, pick, chunk)


def mc_event_table(
    cfg: Config, calib: Calibration, spill: BeamSpill, dep: Deposits, pick: np.ndarray, chunk: int = 4096
) -> ev.Table:
    """Event table of the MC particles ``pick`` of ``spill`` (after the response ``dep``): full events from
    the digitiser at the nominal HV (pile-up of their neighbours included), the offline reconstruction, the
    physics trigger recomputed from their waveforms (prescale 1, the beam and random triggers off) and the truth,
    weights included -- the chain recorded data go through."""
    from sim_frontend.digitizer import Digitizer

    digi = Digitizer(cfg, calib, hidden_seed=None)
    menu = physics_only_menu(cfg, calib)
    hv = np.asarray(calib.hv_set, dtype=np.float64)
    tables = []
    for s in range(0, pick.size, chunk):
        idx = pick[s : s + chunk]
        wf = digi.events(spill, dep, idx, hv)
        reco = ev.reconstruct_events(wf, calib, cfg)
        arrival = spill.truth["time_ns"][idx].astype(np.float64)
        mask = trigger_mask(menu, wf, arrival)
        tables.append(
            ev.event_table_from_arrays(
                wf,
                calib,
                cfg,
                event_id=idx,
                trigger_mask=mask,
                time_ns=arrival,
                truth=spill.truth[idx],
                run=0,
                spill=spill.spill,
                reco=reco,
            )
        )
    return ev.concat(tables)


def mc_track_columns(cfg: Config, spill: BeamSpill, pick: np.ndarray, chunk: int = 4096) -> ev.Table:
    """Track columns (:data:`offline.selection.TRACK_COLUMNS`) of the MC particles ``pick`` of ``spill``:
    their Micromegas strips (the spill went through the beam line) and the track reconstruction, the rows
    in the order of ``pick`` (that of :func:`mc_event_table`)."""
    from detector.tracking import Spectrometer, reconstruct_tracks
    from sim_frontend import mmhits

    spec = Spectrometer.from_config(cfg)
    return ev.concat(
        [
            sel.track_columns(reconstruct_tracks(mmhits.event_strips(spill, cfg, pick[s : s + chunk]), spec))
            for s in range(0, pick.size, chunk)
        ]
    )


def simulate_signal(
    cfg: Config, mass_mev: float, n_events: int, calib: Calibration | None = None, seed: int = 1, pileup: bool = False
) -> SignalResult:
    """Signal efficiency at one mass (see the module docstring)."""
    t = simulate_events(cfg, mass_mev, n_events, calib, seed, pileup)
    s = sel.select(t, sel.Cuts.from_config(cfg))
    flow = s.cut_flow()
    trig = int(((t["trigger_mask"] & TRIGGER_BITS["physics"]) != 0).sum())
    extra = {
        "e_aprime_mean_gev": float(np.mean(t["truth_e_invisible"])),
        "e_ecal_mean_gev": float(np.mean(t["e_ecal"])),
    }
    return SignalResult(
        float(mass_mev),
        int(n_events),
        trig,
        int(flow["box"]),
        dict(flow),
        emiss_min_gev(cfg),
        bool(pileup),
        int(seed),
        extra,
    )
