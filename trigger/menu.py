"""The trigger menu (what the online trigger is configured with) and the trigger result (what it reports
per spill).

Definitions (docs/physics.md 1.6; every number below is a field of :class:`TriggerMenu`):

- **counter fired**: S1, S2, S3 or V1 has a reconstructed amplitude ``A >= counter_threshold_adc``
  (``= counter_threshold_mip * mip_adc``, ADC counts; i.e. ``A / mip_adc >= counter_threshold_mip``
  MIP) **and** its onset time ``t`` lies in ``[t0_ns - window_ns, t0_ns + window_ns]`` (both edges
  included; ``t0_ns`` is the channel's nominal onset from the calibration). A channel without signal
  has ``A = 0`` and ``t = NaN`` and never fires.
- **counter scalers** ``S1``, ``S2``, ``S3``, ``V1``: records with the amplitude (taken in the counter
  gate, below) at or above threshold, whatever its time (what a discriminator + scaler counts).
- **PiSi**: S1, S2 and S3 all fired (in time).
- **EOT** (electrons on target): PiSi AND NOT V1, i.e. a clean beam particle entering the ECAL.
- **energies**: ``E = A * gev_per_count`` (GeV, float64 arithmetic on the float32 amplitude) of the
  analogue sums PS_SUM and ECAL_SUM, each amplitude taken in the **energy gate** (below).
- **energy gate**: the samples ``j`` of a sum with ``|j * 12.5 ns - (t0_ns + PEAK_DELAY_NS)| <=
  energy_gate_ns / 2`` (its nominal peak time: the record is opened ``t0_ns`` before the triggering
  particle, :mod:`sim_frontend.digitizer`), clipped to the record (:attr:`TriggerMenu.gate_samples`). The
  sum's peak sample and its saturation are searched among those samples only; the amplitude and onset are
  then reconstructed as without the gate (the 3-point interpolation reads the peak sample's neighbours
  even when they lie outside the gate). What a discriminator in coincidence with S1 x S2 x S3 sees: an
  earlier particle's tail adds to the samples in the gate, a particle arriving after the gate does not
  count.
- **counter gate**: the same for S1, S2, S3 and V1 with the full width ``counter_gate_ns`` around each
  counter's nominal peak time ``t0_ns + PEAK_DELAY_NS``: the amplitude, onset and saturation of a counter
  are those of its largest pulse in that gate, so a larger pulse of a later (or earlier) beam particle in
  the record does not replace the in-time one (a discriminator in coincidence sees the in-time particle;
  the later one is its own record). The gate must hold every sample from which the reconstruction can
  return an onset in the coincidence window (the peak sample k gives ``(k + delta) * 12.5 ns -
  PEAK_DELAY_NS`` with the interpolation's ``|delta| <= PEAK_DELTA_MAX`` samples), i.e. ``counter_gate_ns
  / 2 >= window_ns + PEAK_DELTA_MAX * 12.5 ns``: checked per counter on the samples themselves
  (:class:`MenuError` otherwise). Then an in-time pulse is reconstructed exactly as in the whole record,
  and a pulse whose in-gate maximum is a gate edge sample on its rising or falling flank has its onset
  outside the window, as without the gate.
- **energy lines**: EOT (PiSi when the line's ``veto`` is off) AND ``E_PS > ps_min_gev`` AND
  ``E_ECAL < ecal_max_gev`` (and, when set, ``E_PS < ps_max_gev`` and ``E_ECAL > ecal_min_gev``), prescaled.
  **physics** (Tr(A')) and **dimuon** are the two every menu has; a config adds further ones as
  ``[trigger.menu.<name>]`` tables with ``kind = "energy"`` (bits after dimuon's, in config order:
  :func:`detector.records.trigger_bits`).
- **beam**: PiSi, prescaled.
- **prescale** ``p``: of the raw triggers of one type in a spill, numbered 1, 2, ..., the numbers
  ``p, 2p, 3p, ...`` are accepted (a deterministic counter, reset at every spill), so
  ``accepted = raw // p``.
- **random**: a pulser at ``rate_hz`` over the spill: ticks ``t_j = j * 1e9 / rate_hz`` ns for
  ``j = 0 .. floor(rate_hz * spill_length_s)`` (``t_j <= spill length``, so ``floor(rate * L) + 1``
  ticks). Tick ``j`` accepts the first record with arrival time ``>= t_j`` if that record arrives
  before ``t_(j+1)``. Its raw count is the number of ticks, its accepted count the ticks that found a
  record. Arrival times must be non-decreasing.

The reconstruction the waveform trigger uses is that of :mod:`detector.reco` (zero-suppression
threshold ``zs_threshold_adc``) with each channel's **calibrated pedestals** (``pedestal_even`` /
``pedestal_odd``, from the calibration, in quarter ADC counts: :attr:`TriggerMenu.pedestal_sums`), not a
per-record baseline from the first samples: those can hold an earlier particle's tail, which would pull the
peak - baseline of the next pulse down (an analogue sum discriminated against a fixed level sees the tail
add to the signal, never subtract from it); amplitudes and times are rounded to float32 exactly as
``detector.reco.reconstruct_numpy`` returns them, so re-triggering recorded float32 amplitudes gives
the same decisions as the online waveform trigger.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from detector import channels as ch
from detector.config import Calibration, Config, ConfigError, load_calibration, load_config
from detector.gate import peak_gate
from detector.pulse import PEAK_DELAY_NS
from detector.reco import PEAK_DELTA, ZS_THRESHOLD
from detector.records import TRIGGER_BITS, trigger_bits

#: trigger names every menu has, in bit order (physics, beam, random, dimuon)
TRIGGER_NAMES: tuple[str, ...] = tuple(TRIGGER_BITS)
#: the energy lines every menu has (further ones: :attr:`TriggerMenu.further_lines`)
ENERGY_NAMES: tuple[str, ...] = ("physics", "dimuon")
#: the per-channel fields of :class:`TriggerMenu` (one value per trigger channel)
PER_CHANNEL: tuple[str, ...] = ("t0_ns", "gev_per_count", "pedestal_even", "pedestal_odd")
#: the counters of the primitive block (indices 0..3 of TRIGGER_CHANNEL_NAMES)
COUNTER_NAMES: tuple[str, ...] = ch.TRIGGER_CHANNEL_NAMES[:4]
PS_INDEX = ch.TRIGGER_CHANNEL_NAMES.index("PS_SUM")
ECAL_INDEX = ch.TRIGGER_CHANNEL_NAMES.index("ECAL_SUM")


def scaler_keys(names: tuple[str, ...]) -> tuple[str, ...]:
    """Every scaler a :class:`TriggerResult` of a menu with triggers ``names`` reports, in this order."""
    return (
        ("records",)
        + COUNTER_NAMES
        + ("PiSi", "EOT")
        + tuple(f"{n}_{k}" for n in names for k in ("raw", "accepted"))
        + ("accepted",)
    )


#: the scalers of a menu without further energy lines (:attr:`TriggerMenu.scaler_keys` in general)
SCALER_KEYS: tuple[str, ...] = scaler_keys(TRIGGER_NAMES)
EOT_DEFINITION = "PiSi AND NOT V1: S1, S2, S3 above threshold and in time, V1 not (above threshold and in time)"
#: onsets the reconstruction can return for an unsaturated pulse (ns): a coincidence window outside
#: this range can never be met
ONSET_RANGE_NS = (-PEAK_DELAY_NS - ch.SAMPLE_NS, ch.N_SAMPLES * ch.SAMPLE_NS)
#: samples: the largest offset of the interpolated peak from the peak sample (``detector.reco``'s table)
PEAK_DELTA_MAX = float(max(-PEAK_DELTA[0], PEAK_DELTA[-1]))


class MenuError(ConfigError):
    """The trigger menu is unknown or inconsistent (it could never fire, a prescale below 1, ...)."""


def _num(where: str, value: Any, lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise MenuError(f"trigger menu: {where} = {value!r} must be a number")
    v = float(value)
    if not math.isfinite(v):
        raise MenuError(f"trigger menu: {where} = {value!r} must be finite")
    if lo is not None and (v <= lo if lo_open else v < lo):
        raise MenuError(f"trigger menu: {where} = {v} must be {'>' if lo_open else '>='} {lo}")
    if hi is not None and v > hi:
        raise MenuError(f"trigger menu: {where} = {v} must be <= {hi}")
    return v


def _prescale(where: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise MenuError(f"trigger menu: {where}.prescale = {value!r} must be an integer >= 1")
    if value < 1:
        raise MenuError(f"trigger menu: {where}.prescale = {value} must be >= 1 (1 accepts every raw trigger)")
    if value > 2**62:
        raise MenuError(f"trigger menu: {where}.prescale = {value} is absurdly large")
    return int(value)


def _flag(where: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise MenuError(f"trigger menu: {where}.enabled = {value!r} must be true or false")
    return bool(value)


@dataclass(frozen=True)
class EnergyTrigger:
    """EOT (PiSi without ``veto``) AND ``E_PS > ps_min_gev`` AND ``E_ECAL < ecal_max_gev`` (GeV) AND, when
    set, ``E_PS < ps_max_gev`` and ``E_ECAL > ecal_min_gev``; accepted every ``prescale``-th."""

    enabled: bool = True
    prescale: int = 1
    ps_min_gev: float = 0.3  #: GeV, strict lower bound on the PS_SUM energy
    ecal_max_gev: float = 80.0  #: GeV, strict upper bound on the ECAL_SUM energy
    ps_max_gev: float | None = None  #: GeV, strict upper bound on the PS_SUM energy (None: no cut)
    ecal_min_gev: float | None = None  #: GeV, strict lower bound on the ECAL_SUM energy (None: no cut)
    veto: bool = True  #: V1 vetoes (the line requires EOT); False: PiSi is enough

    @classmethod
    def from_table(cls, where: str, table: Mapping[str, Any]) -> EnergyTrigger:
        """From a config table or a :meth:`TriggerMenu.to_dict` entry (``kind`` and ``bit`` ignored)."""
        try:
            return cls(**{k: v for k, v in table.items() if k not in ("kind", "bit")})
        except TypeError as exc:
            raise MenuError(f"trigger menu: {where}: {exc}") from None


@dataclass(frozen=True)
class BeamTrigger:
    """PiSi, accepted every ``prescale``-th."""

    enabled: bool = True
    prescale: int = 1000


@dataclass(frozen=True)
class RandomTrigger:
    """Pulser at ``rate_hz`` (Hz) over the spill."""

    enabled: bool = True
    rate_hz: float = 10.0


@dataclass(frozen=True)
class TriggerMenu:
    """The validated trigger menu plus the calibration of the six trigger channels.

    Build it with :meth:`from_config` (or :func:`load_menu`); change thresholds for an offline
    re-trigger with :meth:`replace` (re-validated). Per-channel tuples follow
    ``detector.channels.TRIGGER_CHANNEL_NAMES`` = S1, S2, S3, V1, PS_SUM, ECAL_SUM.
    """

    window_ns: float = 10.0  #: ns, half-width of the counter coincidence window
    counter_threshold_mip: float = 0.5  #: MIP, S1..S3 and V1 threshold
    mip_adc: float = 200.0  #: ADC counts of one MIP in a counter
    #: ns, full width of the energy gate around each sum's nominal peak time (module docstring)
    energy_gate_ns: float = 50.0
    #: ns, full width of the counter gate around each counter's nominal peak time (module docstring)
    counter_gate_ns: float = 40.0
    t0_ns: tuple[float, ...] = (100.0,) * 6  #: ns, nominal onset per trigger channel
    gev_per_count: tuple[float, ...] = (5e-6,) * 4 + (0.008, 0.04)  #: GeV per ADC count per channel
    #: ADC counts, calibrated pedestal of the even / odd samples per channel (config/calibration.toml's)
    pedestal_even: tuple[float, ...] = (120.0, 120.0, 120.0, 120.0, 160.0, 160.0)
    pedestal_odd: tuple[float, ...] = (125.0, 125.0, 125.0, 118.0, 152.0, 152.0)
    spill_length_s: float = 4.8  #: s, spill (flat-top) length: span of the random ticks
    physics: EnergyTrigger = field(default_factory=EnergyTrigger)
    beam: BeamTrigger = field(default_factory=BeamTrigger)
    random: RandomTrigger = field(default_factory=RandomTrigger)
    dimuon: EnergyTrigger = field(default_factory=lambda: EnergyTrigger(True, 1, 0.3, 60.0))
    zs_threshold_adc: float = ZS_THRESHOLD  #: ADC counts, zero suppression of the reconstruction
    beam_energy_gev: float = 100.0  #: GeV, a PS threshold at or above it could never fire
    #: further energy lines (name, line), bits after dimuon's in this order
    further_lines: tuple[tuple[str, EnergyTrigger], ...] = ()

    # ------------------------------------------------------------------ validation
    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "window_ns", _num("window_ns", self.window_ns, 0.0, lo_open=True))
        set_(
            self, "counter_threshold_mip", _num("counter_threshold_mip", self.counter_threshold_mip, 0.0, lo_open=True)
        )
        set_(self, "mip_adc", _num("mip_adc", self.mip_adc, 0.0, lo_open=True))
        set_(self, "energy_gate_ns", _num("energy_gate_ns", self.energy_gate_ns, 0.0, lo_open=True))
        set_(self, "counter_gate_ns", _num("counter_gate_ns", self.counter_gate_ns, 0.0, lo_open=True))
        set_(self, "spill_length_s", _num("spill_length_s", self.spill_length_s, 0.0, lo_open=True))
        set_(self, "zs_threshold_adc", _num("zs_threshold_adc", self.zs_threshold_adc, 0.0, lo_open=True))
        set_(self, "beam_energy_gev", _num("beam_energy_gev", self.beam_energy_gev, 0.0, lo_open=True))
        for name in PER_CHANNEL:
            vals = getattr(self, name)
            if isinstance(vals, (str, bytes)) or len(vals) != ch.N_TRIGGER_CHANNELS:
                raise MenuError(
                    f"trigger menu: {name} needs one value per trigger channel "
                    f"({', '.join(ch.TRIGGER_CHANNEL_NAMES)}); got {vals!r}"
                )
            hi = float(ch.ADC_MAX) if name.startswith("pedestal") else None
            set_(
                self,
                name,
                tuple(_num(f"{name}[{ch.TRIGGER_CHANNEL_NAMES[i]}]", v, 0.0, hi) for i, v in enumerate(vals)),
            )
        for name, cls in (
            ("physics", EnergyTrigger),
            ("beam", BeamTrigger),
            ("random", RandomTrigger),
            ("dimuon", EnergyTrigger),
        ):
            if not isinstance(getattr(self, name), cls):
                raise MenuError(f"trigger menu: {name} must be a {cls.__name__}, got {getattr(self, name)!r}")
        self._check_counters()
        self._check_gates()
        for name in ENERGY_NAMES:
            set_(self, name, self._check_energy(name, getattr(self, name)))
        further = []
        for item in self.further_lines:
            if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
                raise MenuError(f"trigger menu: further_lines holds (name, EnergyTrigger) pairs, got {item!r}")
            name, line = item
            if not name.isidentifier() or name in TRIGGER_NAMES:
                raise MenuError(
                    f"trigger menu: {name!r} cannot name a further line (an identifier other than "
                    f"{', '.join(TRIGGER_NAMES)})"
                )
            further.append((name, self._check_energy(name, line)))
        set_(self, "further_lines", tuple(further))
        try:
            set_(self, "_bits", trigger_bits(tuple(n for n, _ in further)))
        except ValueError as exc:
            raise MenuError(f"trigger menu: {exc}") from None
        b = self.beam
        set_(self, "beam", BeamTrigger(_flag("beam", b.enabled), _prescale("beam", b.prescale)))
        r = self.random
        rate = _num("random.rate_hz", r.rate_hz, 0.0, 1e9)
        enabled = _flag("random", r.enabled)
        if enabled and rate == 0.0:
            raise MenuError(
                "trigger menu: random.rate_hz = 0 with the random trigger enabled: it can never "
                "fire (disable it or give a rate)"
            )
        set_(self, "random", RandomTrigger(enabled, rate))
        if not (self.beam.enabled or self.random.enabled or any(t.enabled for _, t in self.energy_lines)):
            raise MenuError("trigger menu enables no trigger: nothing would ever be accepted")

    def _check_counters(self) -> None:
        thr = self.counter_threshold_adc
        if thr < self.zs_threshold_adc:
            raise MenuError(
                f"trigger menu: counter threshold {self.counter_threshold_mip} MIP x {self.mip_adc} "
                f"ADC counts/MIP = {thr:g} ADC counts is below the reconstruction's zero-suppression "
                f"threshold ({self.zs_threshold_adc:g} ADC counts): it cannot be applied as set"
            )
        if thr >= ch.ADC_MAX:
            raise MenuError(
                f"trigger menu: counter threshold {self.counter_threshold_mip} MIP x {self.mip_adc} "
                f"ADC counts/MIP = {thr:g} ADC counts is beyond the 12-bit range ({ch.ADC_MAX}): "
                "the counters could never fire"
            )
        lo, hi = ONSET_RANGE_NS
        for c, name in enumerate(COUNTER_NAMES):
            a, b = self.counter_window_ns(c)
            if b < lo or a > hi:
                raise MenuError(
                    f"trigger menu: the {name} coincidence window [{a:g}, {b:g}] ns (t0_ns +/- "
                    f"window_ns) lies outside the readout window [{lo:g}, {hi:g}] ns: {name} could "
                    "never be in time"
                )

    def _check_gates(self) -> None:
        for c in range(ch.N_TRIGGER_CHANNELS):
            first, last = self.gate_samples[c]
            kind, key = ("counter", "counter_gate_ns") if c < len(COUNTER_NAMES) else ("energy", "energy_gate_ns")
            what = (
                f"the {kind} gate of {ch.TRIGGER_CHANNEL_NAMES[c]} ({key} = {getattr(self, key):g} around its "
                f"nominal peak at {self.t0_ns[c] + PEAK_DELAY_NS:g} ns) holds samples {first}..{last} of the record"
            )
            if last - first < 1:
                raise MenuError(f"trigger menu: {what}: it needs at least two (an even and an odd one)")
            if c < len(COUNTER_NAMES):
                need = self.window_samples(c)
                if need is not None and not (first <= need[0] and need[1] <= last):
                    reach = PEAK_DELTA_MAX * ch.SAMPLE_NS
                    raise MenuError(
                        f"trigger menu: {what}, but an onset in its coincidence window (t0_ns +/- window_ns = "
                        f"{self.t0_ns[c]:g} +/- {self.window_ns:g} ns) can be reconstructed from a peak in "
                        f"samples {need[0]}..{need[1]}: widen counter_gate_ns to at least 2 x (window_ns + "
                        f"{reach:g} ns) = {2 * (self.window_ns + reach):g} ns"
                    )

    def _check_energy(self, name: str, t: EnergyTrigger) -> EnergyTrigger:
        if not isinstance(t, EnergyTrigger):
            raise MenuError(f"trigger menu: {name} must be an EnergyTrigger, got {t!r}")
        opt = lambda key: None if getattr(t, key) is None else _num(f"{name}.{key}", getattr(t, key), 0.0)  # noqa: E731
        if not isinstance(t.veto, (bool, np.bool_)):
            raise MenuError(f"trigger menu: {name}.veto = {t.veto!r} must be true or false")
        t = EnergyTrigger(
            _flag(name, t.enabled),
            _prescale(name, t.prescale),
            _num(f"{name}.ps_min_gev", t.ps_min_gev, 0.0),
            _num(f"{name}.ecal_max_gev", t.ecal_max_gev, 0.0),
            opt("ps_max_gev"),
            opt("ecal_min_gev"),
            bool(t.veto),
        )
        if t.ps_max_gev is not None and t.ps_max_gev <= t.ps_min_gev:
            raise MenuError(
                f"trigger menu: {name}.ps_max_gev = {t.ps_max_gev} must be above ps_min_gev = "
                f"{t.ps_min_gev}: the trigger could never fire"
            )
        if t.ecal_min_gev is not None and t.ecal_min_gev >= t.ecal_max_gev:
            raise MenuError(
                f"trigger menu: {name}.ecal_min_gev = {t.ecal_min_gev} must be below ecal_max_gev = "
                f"{t.ecal_max_gev}: the trigger could never fire"
            )
        if t.ps_min_gev >= t.ecal_max_gev:
            raise MenuError(
                f"trigger menu: {name}.ps_min_gev = {t.ps_min_gev} must be below {name}.ecal_max_gev "
                f"= {t.ecal_max_gev} (the PS is part of the ECAL: the trigger could never fire)"
            )
        if t.enabled:
            if t.ecal_max_gev <= 0.0:
                raise MenuError(f"trigger menu: {name}.ecal_max_gev = {t.ecal_max_gev} GeV: E_ECAL < 0 can never hold")
            if t.ps_min_gev >= self.beam_energy_gev:
                raise MenuError(
                    f"trigger menu: {name}.ps_min_gev = {t.ps_min_gev} GeV is at or above the beam "
                    f"energy ({self.beam_energy_gev} GeV): the trigger could never fire"
                )
            if self.gev_per_count[PS_INDEX] <= 0.0:
                raise MenuError(
                    f"trigger menu: {name} needs E_PS > {t.ps_min_gev} GeV but PS_SUM has "
                    "gev_per_count = 0 in the calibration: it could never fire"
                )
            if self.gev_per_count[ECAL_INDEX] <= 0.0:
                raise MenuError(
                    f"trigger menu: {name} cuts on E_ECAL but ECAL_SUM has gev_per_count = 0 in the "
                    "calibration: the cut would be void"
                )
        return t

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, cfg: Config | None = None, calibration: Calibration | None = None) -> TriggerMenu:
        """Menu from a validated config (``detector.config.load_config``; None = the defaults) and the
        calibration (``detector.config.load_calibration(cfg)`` when None). Raises :class:`MenuError`."""
        cfg = load_config(None) if cfg is None else cfg
        calibration = load_calibration(cfg) if calibration is None else calibration
        trig = cfg.trigger
        menu = {n: line.to_dict() for n, line in trig.menu.items()}
        further = tuple((n, v) for n, v in menu.items() if n not in TRIGGER_NAMES and v.get("kind") == "energy")
        unknown = set(menu) - set(TRIGGER_NAMES) - {n for n, _ in further}
        if unknown:
            raise MenuError(
                f"unknown trigger(s) {sorted(unknown)} in [trigger.menu]; known: {', '.join(TRIGGER_NAMES)}"
            )
        ids = ch.trigger_channel_ids()
        try:
            return cls(
                window_ns=trig.window_ns,
                counter_threshold_mip=trig.counter_threshold_mip,
                mip_adc=trig.mip_adc,
                energy_gate_ns=trig.energy_gate_ns,
                counter_gate_ns=trig.counter_gate_ns,
                t0_ns=tuple(float(x) for x in np.asarray(calibration.t0_ns)[ids]),
                gev_per_count=tuple(float(x) for x in np.asarray(calibration.gev_per_count)[ids]),
                pedestal_even=tuple(float(x) for x in np.asarray(calibration.pedestal_even)[ids]),
                pedestal_odd=tuple(float(x) for x in np.asarray(calibration.pedestal_odd)[ids]),
                spill_length_s=cfg.spill.length_s,
                physics=EnergyTrigger.from_table("physics", menu["physics"]),
                beam=BeamTrigger(**menu["beam"]),
                random=RandomTrigger(**menu["random"]),
                dimuon=EnergyTrigger.from_table("dimuon", menu["dimuon"]),
                beam_energy_gev=cfg.beam.energy_gev,
                further_lines=tuple((n, EnergyTrigger.from_table(n, v)) for n, v in further),
            )
        except (KeyError, TypeError) as exc:
            raise MenuError(f"trigger menu: incomplete or malformed config ({exc})") from None

    def replace(self, **changes: Any) -> TriggerMenu:
        """A copy with some fields changed (re-validated), e.g. for an offline re-trigger::

        menu.replace(physics=dataclasses.replace(menu.physics, ecal_max_gev=60.0))
        """
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable description for the run record (with the derived numbers the kernels use)."""
        return {
            "window_ns": self.window_ns,
            "counter_threshold_mip": self.counter_threshold_mip,
            "mip_adc": self.mip_adc,
            "energy_gate_ns": self.energy_gate_ns,
            "counter_gate_ns": self.counter_gate_ns,
            "gate_samples": [list(g) for g in self.gate_samples],
            "counter_threshold_adc": self.counter_threshold_adc,
            "zs_threshold_adc": self.zs_threshold_adc,
            "spill_length_s": self.spill_length_s,
            "beam_energy_gev": self.beam_energy_gev,
            "channels": list(ch.TRIGGER_CHANNEL_NAMES),
            "t0_ns": list(self.t0_ns),
            "gev_per_count": list(self.gev_per_count),
            "pedestal_even": list(self.pedestal_even),
            "pedestal_odd": list(self.pedestal_odd),
            "triggers": {
                n: {
                    **({"kind": "energy"} if isinstance(t, EnergyTrigger) else {}),
                    **dataclasses.asdict(t),
                    "bit": int(self.trigger_bits[n]),
                }
                for n, t in self.triggers.items()
            },
            "random_ticks": self.n_random_ticks,
            "eot_definition": EOT_DEFINITION,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TriggerMenu:
        """Inverse of :meth:`to_dict` (derived keys are ignored), e.g. to re-trigger a recorded run with the
        menu it was taken with."""
        derived = {"counter_threshold_adc", "gate_samples", "channels", "random_ticks", "eot_definition"}
        known = {f.name for f in dataclasses.fields(cls)} - set(TRIGGER_NAMES) - {"further_lines"}
        unknown = set(d) - known - derived - {"triggers"}
        if unknown:
            raise MenuError(f"trigger menu: unknown key(s) {sorted(unknown)}")
        trig = d.get("triggers", {})
        further = [n for n, t in trig.items() if n not in TRIGGER_NAMES and t.get("kind") == "energy"]
        if set(trig) - set(TRIGGER_NAMES) - set(further):
            raise MenuError(
                f"unknown trigger(s) {sorted(set(trig) - set(TRIGGER_NAMES) - set(further))}; "
                f"known: {', '.join(TRIGGER_NAMES)} and lines with kind = 'energy'"
            )
        kinds = {"physics": EnergyTrigger, "beam": BeamTrigger, "random": RandomTrigger, "dimuon": EnergyTrigger}
        kw: dict[str, Any] = {k: (tuple(v) if k in PER_CHANNEL else v) for k, v in d.items() if k in known}
        try:
            for n, t in trig.items():
                if n in kinds:
                    kw[n] = kinds[n](**{k: v for k, v in t.items() if k not in ("bit", "kind")})
            kw["further_lines"] = tuple((n, EnergyTrigger.from_table(n, trig[n])) for n in further)
            return cls(**kw)
        except TypeError as exc:
            raise MenuError(f"trigger menu: malformed description ({exc})") from None

    # ------------------------------------------------------------------ derived numbers
    @property
    def energy_lines(self) -> tuple[tuple[str, EnergyTrigger], ...]:
        """(name, line) of every energy line: physics, dimuon, then the further lines."""
        return (("physics", self.physics), ("dimuon", self.dimuon)) + self.further_lines

    @property
    def triggers(self) -> dict[str, EnergyTrigger | BeamTrigger | RandomTrigger]:
        """Every trigger of the menu by name, in bit order."""
        return {
            "physics": self.physics,
            "beam": self.beam,
            "random": self.random,
            "dimuon": self.dimuon,
            **dict(self.further_lines),
        }

    @property
    def trigger_names(self) -> tuple[str, ...]:
        """Names of the menu's triggers in bit order (:data:`TRIGGER_NAMES`, then the further lines)."""
        return TRIGGER_NAMES + tuple(n for n, _ in self.further_lines)

    @property
    def trigger_bits(self) -> dict[str, np.uint8]:
        """Bit of each trigger in the recorded trigger mask (:data:`detector.records.TRIGGER_MASK_DTYPE`)."""
        return dict(self._bits)  # type: ignore[attr-defined]

    @property
    def scaler_keys(self) -> tuple[str, ...]:
        """The scalers a result of this menu reports (:func:`scaler_keys`)."""
        return scaler_keys(self.trigger_names)

    def empty_scalers(self) -> dict[str, int]:
        """All of this menu's scalers at zero."""
        return dict.fromkeys(self.scaler_keys, 0)

    @property
    def counter_threshold_adc(self) -> float:
        """Counter threshold in ADC counts (``counter_threshold_mip * mip_adc``)."""
        return self.counter_threshold_mip * self.mip_adc

    @property
    def pedestal_sums(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(even, odd) per channel: 4x the calibrated pedestal rounded to an integer (the sum of four
        samples at the pedestal, ADC counts): the trigger subtracts ``sum / 4`` from every even / odd
        sample, in the exact integer arithmetic of its peak search."""
        q = lambda v: tuple(int(round(4.0 * x)) for x in v)  # noqa: E731
        return q(self.pedestal_even), q(self.pedestal_odd)

    @property
    def gate_samples(self) -> tuple[tuple[int, int], ...]:
        """(first, last) sample (inclusive) per trigger channel in which its peak is searched: the counter
        gate of S1..S3, V1 and the energy gate of PS_SUM and ECAL_SUM (module docstring), clipped to the
        record (:func:`detector.gate.peak_gate`)."""
        n_cnt = len(COUNTER_NAMES)
        width = [self.counter_gate_ns] * n_cnt + [self.energy_gate_ns] * (ch.N_TRIGGER_CHANNELS - n_cnt)
        first, last = peak_gate(np.asarray(self.t0_ns, dtype=np.float64), np.asarray(width, dtype=np.float64))
        return tuple((int(a), int(b)) for a, b in zip(first, last))

    def window_samples(self, c: int) -> tuple[int, int] | None:
        """(first, last) peak sample of counter ``c`` (0..3) from which the reconstruction can return an
        onset in its coincidence window (float32 onset ``(k + delta) * SAMPLE_NS - PEAK_DELAY_NS`` with
        ``|delta| <= PEAK_DELTA_MAX`` for an inner sample, ``k * SAMPLE_NS - PEAK_DELAY_NS`` at the record's
        edges); None if there is none. The counter gate must hold them (:meth:`_check_gates`)."""
        lo, hi = self.counter_window_ns(c)
        k = np.arange(ch.N_SAMPLES, dtype=np.float64)
        inner = (k > 0) & (k < ch.N_SAMPLES - 1)
        reach = np.where(inner, PEAK_DELTA_MAX, 0.0)
        t_min = ((k - reach) * ch.SAMPLE_NS - PEAK_DELAY_NS).astype(np.float32)
        t_max = ((k + reach) * ch.SAMPLE_NS - PEAK_DELAY_NS).astype(np.float32)
        ok = np.flatnonzero((t_max >= lo) & (t_min <= hi))
        return None if ok.size == 0 else (int(ok[0]), int(ok[-1]))

    def counter_window_ns(self, c: int) -> tuple[float, float]:
        """Inclusive coincidence window ``(t0 - window_ns, t0 + window_ns)`` (ns) of counter ``c`` (0..3)."""
        return self.t0_ns[c] - self.window_ns, self.t0_ns[c] + self.window_ns

    def random_tick_ns(self, j: int) -> float:
        """Time of random tick ``j`` (ns since spill start): ``(j * 1e9) / rate_hz``, as the kernels compute it."""
        return (float(j) * 1e9) / self.random.rate_hz

    @property
    def n_random_ticks(self) -> int:
        """Number of random ticks in the spill: ``t_j <= spill length`` (0 when disabled)."""
        if not self.random.enabled:
            return 0
        length_ns = self.spill_length_s * 1e9
        j = int(math.floor(self.random.rate_hz * self.spill_length_s))
        while self.random_tick_ns(j + 1) <= length_ns:
            j += 1
        while j >= 0 and self.random_tick_ns(j) > length_ns:
            j -= 1
        return j + 1


def load_menu(config_path: str | None = None) -> TriggerMenu:
    """Load config (None = defaults) and its calibration and build the menu (``ConfigError`` /
    :class:`MenuError` on any problem)."""
    cfg = load_config(config_path)
    return TriggerMenu.from_config(cfg, load_calibration(cfg))


# ---------------------------------------------------------------------- result
@dataclass(frozen=True, eq=False)
class TriggerResult:
    """What the trigger reports for one spill (or the part of it processed so far).

    - ``accepted``: record indices in the spill (int64, strictly increasing);
    - ``mask``: :data:`detector.records.TRIGGER_MASK_DTYPE` per accepted record, OR of the menu's trigger bits
      (:attr:`TriggerMenu.trigger_bits`) that fired and were accepted after prescaling;
    - ``scalers``: counts, keys :attr:`TriggerMenu.scaler_keys` (``records``; the counter scalers ``S1, S2,
      S3, V1``; ``PiSi``; ``EOT``; ``<trigger>_raw`` and ``<trigger>_accepted`` per trigger of the menu;
      ``accepted`` = number of accepted records);
    - ``names``: the menu's trigger names in bit order.
    """

    accepted: np.ndarray
    mask: np.ndarray
    scalers: dict[str, int]
    names: tuple[str, ...] = TRIGGER_NAMES

    @property
    def eot(self) -> int:
        """Electrons on target in this spill (PiSi AND NOT V1 coincidences)."""
        return self.scalers["EOT"]

    def triggers(self) -> dict[str, dict[str, int]]:
        """``{name: {"raw": n, "accepted": n}}`` per trigger type (the monitoring ``scalers`` message)."""
        return {n: {"raw": self.scalers[f"{n}_raw"], "accepted": self.scalers[f"{n}_accepted"]} for n in self.names}

    def scalers_with(self, crate_scalers: Mapping[str, Any]) -> dict[str, int]:
        """Our scalers merged with the crate's hardware scalers (``SPIL:INFO?`` ``scalers``: S0 and V0
        are not in the primitives). A crate counter we also compute (e.g. S1) is kept as ``crate_S1``."""
        out = dict(self.scalers)
        for k, v in crate_scalers.items():
            if (
                isinstance(v, bool)
                or not isinstance(v, (int, float, np.integer, np.floating))
                or not math.isfinite(float(v))
                or float(v) < 0
                or float(v) != int(v)
            ):
                raise ValueError(f"crate scaler {k!r} = {v!r} is not a non-negative integer count")
            out[f"crate_{k}" if k in self.scalers else str(k)] = int(v)
        return out

    def same_as(self, other: TriggerResult) -> bool:
        """Exact equality of accepted indices, masks and scalers."""
        return (
            np.array_equal(self.accepted, other.accepted)
            and np.array_equal(self.mask, other.mask)
            and self.scalers == other.scalers
        )

    def difference(self, other: TriggerResult) -> str:
        """Human-readable description of how two results differ ('' if they do not)."""
        msgs = []
        if not np.array_equal(self.accepted, other.accepted):
            a, b = set(self.accepted.tolist()), set(other.accepted.tolist())
            msgs.append(f"accepted differ: only left {sorted(a - b)[:10]}, only right {sorted(b - a)[:10]}")
        elif not np.array_equal(self.mask, other.mask):
            bad = np.flatnonzero(self.mask != other.mask)[:10]
            msgs.append(
                f"masks differ at records {self.accepted[bad].tolist()}: {self.mask[bad].tolist()} vs "
                f"{other.mask[bad].tolist()}"
            )
        for k in dict.fromkeys([*self.scalers, *other.scalers]):
            if self.scalers.get(k) != other.scalers.get(k):
                msgs.append(f"scaler {k}: {self.scalers.get(k)} vs {other.scalers.get(k)}")
        return "; ".join(msgs)


def empty_scalers() -> dict[str, int]:
    """All scalers of a menu without further lines at zero (:meth:`TriggerMenu.empty_scalers` in general)."""
    return dict.fromkeys(SCALER_KEYS, 0)
