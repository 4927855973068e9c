"""Typed configuration: one frozen dataclass per config section, and the schema they define.

The classes below ARE the schema. Each key is written once, as a dataclass field: its Python type is
the annotation, and :func:`key` attaches the default, the allowed range or choices, the unit and the
doc. :data:`SCHEMA` (section -> key -> :class:`Field`), which ``detector.config`` validates TOML
against, is derived from these classes at import time. So code reads ``cfg.daq.min_free_mb`` with a
type mypy knows, and the meaning of a key (type, default, range, unit) is defined once.

Why this way round (classes first, dict derived) and not ``dataclasses.make_dataclass`` from a SCHEMA
dict: a type checker sees attribute types only in written class bodies, so generated classes would need
hand-written twins for mypy, i.e. every key twice, held together only by a test.

Annotation -> accepted TOML values: ``float`` takes an integer or a number (kept as written),
``int`` an integer, ``bool`` true/false, ``str`` a string, ``tuple[...]`` an array (stored as a tuple).

The trigger menu is a mapping name -> line record (:class:`EnergyLine`, :class:`BeamLine`,
:class:`RandomLine`), declared in :data:`MENU_LINES` with per-line default overrides, so that the number
of lines is data, not attributes.

:class:`Config` is built by ``detector.config`` (``load_config``, ``validate``) and by
:meth:`Config.with_overrides`, i.e. always after validation; :meth:`Config.to_dict` gives the nested
dict back (``detector.config.dump_toml`` writes it as TOML). ``dataclasses.replace`` makes an
unvalidated variant where a program needs a value outside the file ranges (e.g. a very short spill).
"""

import dataclasses
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

NUM = (int, float)
#: schema key of a table's open-ended sub-tables: a sub-table of another name that sets ``kind`` follows
#: this schema (a further trigger line ``[trigger.menu.<name>]`` with ``kind = "energy"``)
WILDCARD = "*"

_TOML_TYPES: dict[Any, type | tuple[type, ...]] = {float: NUM, int: int, bool: bool, str: str}


@dataclass(frozen=True)
class Field:
    """One configuration key: its accepted TOML type(s), default, range and unit."""

    type: type | tuple[type, ...]
    default: Any
    lo: float | None = None
    hi: float | None = None
    choices: tuple[Any, ...] | None = None
    unit: str = ""
    doc: str = ""

    def allowed(self) -> str:
        """What the key accepts, in words (used in every ``ConfigError`` message)."""
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        names = {
            bool: "true/false",
            int: "an integer",
            float: "a number",
            str: "a string",
            list: "a list",
            dict: "a table",
        }
        types = self.type if isinstance(self.type, tuple) else (self.type,)
        kind = " or ".join(names.get(t, t.__name__) for t in types)
        if self.lo is not None or self.hi is not None:
            kind += f" in [{self.lo if self.lo is not None else '-inf'}, {self.hi if self.hi is not None else 'inf'}]"
        return kind + (f" {self.unit}" if self.unit else "")


def key(
    default: Any,
    lo: float | None = None,
    hi: float | None = None,
    *,
    choices: tuple[Any, ...] | None = None,
    unit: str = "",
    doc: str = "",
) -> Any:
    """A config key as a dataclass field: default, inclusive range ``[lo, hi]`` or ``choices``, unit, doc.
    The key's type is the field's annotation."""
    meta = {"lo": lo, "hi": hi, "choices": choices, "unit": unit, "doc": doc}
    return dataclasses.field(default=default, metadata={"config": meta})


class Section:
    """Base of every section and menu-line record: ``to_dict`` and the schema of its fields."""

    def to_dict(self) -> dict[str, Any]:
        """The section as a plain nested dict (TOML arrays as lists), as ``tomllib`` would read it."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if isinstance(v, Section):
                v = v.to_dict()
            elif isinstance(v, MenuLines):
                v = {n: line.to_dict() for n, line in v.items()}
            elif isinstance(v, tuple):
                v = [dict(x) if isinstance(x, Mapping) else x for x in v]
            elif v is None:
                continue  # an optional key that is not set
            out[f.name] = v
        return out

    @classmethod
    def from_dict(cls: type["S"], d: Mapping[str, Any]) -> "S":
        """The section from a validated dict (every key present; done by ``detector.config.validate``)."""
        kw = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name not in d and f.default is None:
                continue  # an optional key that is not set
            v = d[f.name]
            kw[f.name] = tuple(dict(x) if isinstance(x, Mapping) else x for x in v) if isinstance(v, list) else v
        return cls(**kw)


S = TypeVar("S", bound=Section)


def fields_schema(cls: type[Section], overrides: Mapping[str, Any] | None = None) -> dict[str, Field]:
    """key -> :class:`Field` of the keys of a section class declared with :func:`key` (sub-tables are
    left out); ``overrides``: other defaults, by key."""
    out = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if "config" not in f.metadata:
            continue
        ftype: Any = f.type
        if isinstance(ftype, types.UnionType):  # ``float | None``: an optional key (default None)
            ftype = next(t for t in ftype.__args__ if t is not type(None))
        origin = getattr(ftype, "__origin__", ftype)
        toml_type = list if origin is tuple else _TOML_TYPES[origin]
        default = (overrides or {}).get(f.name, f.default)
        out[f.name] = Field(toml_type, list(default) if isinstance(default, tuple) else default, **f.metadata["config"])
    return out


# ------------------------------------------------------------------------------------------ sections
@dataclass(frozen=True)
class CalibrationSection(Section):
    """``[calibration]``: where the per-channel constants are."""

    file: str = key("calibration.toml", doc="per-channel constants, relative to this config file")


@dataclass(frozen=True)
class EndpointsSection(Section):
    """``[endpoints]``: addresses and ports of the servers and streams."""

    host: str = key("127.0.0.1", doc="address every server binds to; non-loopback needs zmq_curve")
    zmq_curve: bool = key(False, doc="require ZeroMQ CURVE keys (mandatory off loopback)")
    msadc_port: int = key(0, 0, 65535, doc="VISA socket port of the MSADC crate; 0 = any free port")
    hv_port: int = key(0, 0, 65535, doc="TCP port of the HV serial line; 0 = any free port")
    table_port: int = key(0, 0, 65535, doc="TCP port of the table serial line; 0 = any free port")
    feed_port: int = key(0, 0, 65535, doc="ZeroMQ port of the beam feed; 0 = any free port")
    control_port: int = key(0, 0, 65535, doc="ZeroMQ REP port of the emulator control; 0 = any")
    monitor: str = key("tcp://127.0.0.1:5556", doc="ZeroMQ PUB address of na64-daq's monitoring stream")


@dataclass(frozen=True)
class SpillSection(Section):
    """``[spill]``: the SPS spill cycle."""

    length_s: float = key(4.8, 0.01, 60.0, unit="s", doc="beam (flat-top) duration of a spill")
    supercycle_s: float = key(30.0, 0.02, 120.0, unit="s", doc="spill period; docs/physics.md: 14.4-48 s")
    count: int = key(0, 0, 10**9, doc="spills the feed generates; 0 = until stopped")


@dataclass(frozen=True)
class BeamSection(Section):
    """``[beam]``: the simulated beam (composition, spot, seeds)."""

    particles_per_spill: float = key(5e6, 0, 2e7, doc="particles per spill (EOT scale)")
    energy_gev: float = key(100.0, 1.0, 400.0, unit="GeV")
    energy_spread: float = key(0.01, 0.0, 0.2, doc="relative RMS momentum spread")
    x_mm: float = key(0.0, -100.0, 100.0, unit="mm", doc="beam centre at the ECAL face")
    y_mm: float = key(0.0, -100.0, 100.0, unit="mm")
    sigma_mm: float = key(5.0, 0.1, 50.0, unit="mm", doc="beam spot RMS")
    frac_pion: float = key(3e-3, 0.0, 0.5, doc="pi- per particle")
    frac_kaon: float = key(3e-4, 0.0, 0.5)
    frac_muon: float = key(1e-3, 0.0, 0.5)
    frac_halo: float = key(0.126, 0.0, 0.9, doc="halo particles that fire V0 (docs/physics.md: V0/S1 = 0.126)")
    frac_halo_v1: float = key(0.05, 0.0, 1.0, doc="fraction of the halo that also fires V1")
    tail_x0: float = key(
        2e-3, 0.0, 0.1, doc="X0 crossed after H4's momentum selection, before z = 0 (the low-energy tail)"
    )
    tail_y_min: float = key(0.05, 1e-3, 0.5, doc="smallest energy fraction a tail electron lost upstream")
    dimuon_bias: float = key(
        200.0, 1.0, 1e6, doc="bias factor of gamma -> mu mu in showers of MC samples (recorded data: never biased)"
    )
    seed: int = key(12345, 0, 2**63 - 1)
    calibration_particle: str = key(
        "e-", choices=("e-", "pi-", "mu-"), doc="particle of the calibration beam when the table is on an HCAL cell"
    )
    calibration_particles_per_spill: float = key(2e4, 0, 1e7)


@dataclass(frozen=True)
class BeamlineSection(Section):
    """``[beamline]``: everything the beam crosses upstream of the ECAL (docs/physics.md 1.10). ``z`` runs
    along the nominal beam from the exit window of the vacuum pipe (z = 0) to the ECAL face; transverse
    coordinates are relative to the nominal trajectory of a ``beam.energy_gev`` electron (the ECAL, MM3 and
    MM4 sit on the deflected axis). Thin layers are listed by name with their position and thickness in
    radiation lengths; the gaps between them are gas of radiation length ``gap_x0_m``, except inside the beam
    pipes (``pipe_from_m`` .. ``pipe_to_m``: vacuum pipes and vessels, or helium bags), which are filled with
    ``pipe_gas_x0_m`` (0: vacuum) and closed at both ends by a window of ``pipe_window_x0``."""

    layer_names: tuple[str, ...] = key(
        ("W0", "S0", "MM1", "MM2", "MM3", "MM4", "S1", "S2", "S3"),
        doc="thin layers crossed by the beam (V0 and V1 have a hole for the beam and are not listed)",
    )
    layer_z_m: tuple[float, ...] = key(
        (0.0, 0.5, 1.5, 8.5, 17.5, 27.5, 29.0, 29.7, 30.2), unit="m", doc="layer positions"
    )
    layer_x0: tuple[float, ...] = key(
        (1.8e-3, 4.7e-3, 3.0e-3, 3.0e-3, 3.0e-3, 3.0e-3, 4.7e-3, 4.7e-3, 4.7e-3),
        doc="layer thicknesses in radiation lengths",
    )
    gap_x0_m: float = key(303.9, 1.0, 1e6, unit="m", doc="radiation length of the gas between layers (air)")
    pipe_from_m: tuple[float, ...] = key(
        (2.0, 9.0, 18.0), unit="m", doc="upstream ends of the beam pipes (no layer inside a pipe; ends not on a layer)"
    )
    pipe_to_m: tuple[float, ...] = key((8.0, 17.0, 27.0), unit="m", doc="downstream ends of the beam pipes")
    pipe_gas_x0_m: float = key(
        0.0, 0.0, 1e7, unit="m", doc="radiation length of what fills the pipes (0: vacuum; helium: 5671 m)"
    )
    pipe_window_x0: float = key(1.8e-3, 0.0, 0.1, doc="thickness of each pipe end window in radiation lengths")
    ecal_z_m: float = key(31.0, 1.0, 200.0, unit="m", doc="ECAL front face")
    magnet_z_m: tuple[float, ...] = key((10.5, 13.5), unit="m", doc="dipole centres")
    magnet_length_m: tuple[float, ...] = key((2.0, 2.0), unit="m", doc="dipole field lengths")
    magnet_field_t: tuple[float, ...] = key((1.75, 1.75), unit="T", doc="dipole fields (bend towards -x)")
    divergence_mrad: float = key(0.05, 0.0, 10.0, unit="mrad", doc="RMS beam divergence at z = 0, per plane")
    brem_y_min: float = key(1e-3, 1e-6, 0.1, doc="bremsstrahlung photons below this energy fraction are neglected")
    srd_acceptance: float = key(0.9, 0.0, 1.0, doc="fraction of the SR fan that reaches the SRD")
    srd_photon_min_kev: float = key(
        50.0, 0.0, 1e4, unit="keV", doc="SR photons below this are absorbed before the SRD (windows, air)"
    )


@dataclass(frozen=True)
class TrackerSection(Section):
    """``[tracker]``: the Micromegas stations (an X and a Y strip plane each; docs/physics.md 1.10). Their
    positions and material are the beam-line layers of the same names; the stations before the first dipole
    measure the incoming track, those after the last one the deflected track."""

    stations: tuple[str, ...] = key(("MM1", "MM2", "MM3", "MM4"), doc="beamline layers that are MM stations")
    pitch_mm: float = key(0.25, 0.01, 10.0, unit="mm", doc="strip pitch")
    half_size_mm: float = key(40.0, 1.0, 500.0, unit="mm", doc="half side of the active area")
    resolution_mm: float = key(0.07, 0.001, 10.0, unit="mm", doc="single-plane spatial resolution")
    efficiency: float = key(0.97, 0.0, 1.0, doc="per-plane hit efficiency")
    noise_strips: float = key(1.0, 0.0, 100.0, doc="mean noise strips above threshold per plane and event")
    cluster_size: float = key(3.0, 1.0, 20.0, doc="mean strips per particle cluster")
    time_window_ns: float = key(100.0, 1.0, 1000.0, unit="ns", doc="readout window: tracks within +/- it pile up")
    time_resolution_ns: float = key(10.0, 0.1, 100.0, unit="ns", doc="hit time resolution (APV25 sample ratios)")
    hit_time_cut_ns: float = key(
        40.0, 1.0, 1000.0, unit="ns", doc="clusters with |time| above it are not hit candidates of the track fits"
    )
    chi2_max: float = key(30.0, 0.1, 1e6, doc="track candidates with a larger chi2 are dropped")
    min_hits_x: int = key(4, 3, 16, doc="X-plane hits of a track (3 leaves no degree of freedom for the momentum)")


@dataclass(frozen=True)
class AprimeSection(Section):
    """``[aprime]``: injected A' -> invisible signal."""

    enabled: bool = key(False, doc="inject A' -> invisible signal events")
    mass_mev: float = key(16.7, 1.0, 1000.0, unit="MeV")
    epsilon: float = key(1e-4, 0.0, 1.0, doc="kinetic mixing")
    bias: float = key(1.0, 1.0, 1e12, doc="A' rate bias of MC samples, as a truth weight (recorded data: never biased)")


@dataclass(frozen=True)
class EmulatorSection(Section):
    """``[emulator]``: the emulated hardware and its hidden truth (gains the calibration must find)."""

    gain_spread: float = key(0.30, 0.0, 0.9, doc="hidden HCAL gain spread (+/- fraction, uniform)")
    gain_spread_other: float = key(0.02, 0.0, 0.9, doc="hidden gain spread of counters, SRD (calibrated)")
    ecal_gain_spread: float = key(
        0.20, 0.0, 0.9, doc="hidden ECAL gain spread per cell (+/- fraction, uniform): ecal-calib must find it"
    )
    ecal_drift_per_hour: float = key(
        0.002, 0.0, 0.5, doc="RMS over the ECAL channels of their linear gain drift (fraction per hour)"
    )
    gamma_mean: float = key(7.5, 3.0, 12.0, doc="hidden gain-law exponent, mean")
    gamma_spread: float = key(0.5, 0.0, 3.0, doc="hidden gain-law exponent, RMS")
    hidden_seed: int = key(777, 0, 2**63 - 1)
    spill_buffer: int = key(2, 1, 16, doc="completed spills the crate keeps")
    wait_for_feed: bool = key(False, doc="do not start the internal simulation; wait for an external feed")
    hv_rup_v_per_s: float = key(50.0, 1.0, 500.0, unit="V/s")
    hv_rdw_v_per_s: float = key(50.0, 1.0, 500.0, unit="V/s")
    table_speed_mm_per_s: float = key(100.0, 1.0, 10000.0, unit="mm/s")
    faults: tuple[dict[str, Any], ...] = key((), doc="faults active at start, as tables {endpoint, kind, ...}")


@dataclass(frozen=True)
class LedSection(Section):
    """``[led]``: the LED gain-monitoring system (docs/physics.md 7.2): a pulser that fires every calorimeter
    cell in the supercycle gap after each spill's flat top, its LED trigger read out by the DAQ, and the
    reference the monitor's alarm and the offline correction compare against."""

    enabled: bool = key(True, doc="the emulator's LED pulser fires after every spill; the DAQ reads the LED events")
    pulses_per_cycle: int = key(50, 1, 1000, doc="LED pulses in the gap after each spill")
    delay_s: float = key(0.2, 0.0, 60.0, unit="s", doc="from the end of the flat top to the first LED pulse")
    period_ms: float = key(5.0, 0.01, 1000.0, unit="ms", doc="spacing of the LED pulses")
    amplitude_adc: float = key(1500.0, 10.0, 3500.0, unit="ADC counts", doc="LED amplitude of a cell at gain 1")
    photoelectrons: float = key(2000.0, 10.0, 1e6, doc="photoelectrons per pulse and cell (photostatistics)")
    jitter: float = key(0.005, 0.0, 0.2, doc="relative RMS pulse-to-pulse LED intensity, common to all cells")
    drift_per_hour: float = key(-0.0002, -0.1, 0.1, doc="LED intensity drift (fraction per hour)")
    reference_spills: int = key(
        3, 1, 1000, doc="spills with LED events at the start of a run that make its LED reference"
    )


# ------------------------------------------------------------------------------------- trigger menu
@dataclass(frozen=True)
class BeamLine(Section):
    """The beam trigger: S1*S2*S3, prescaled."""

    enabled: bool = key(True)
    prescale: int = key(1000, 1, 10**7)


@dataclass(frozen=True)
class RandomLine(Section):
    """The random (periodic) trigger."""

    enabled: bool = key(True)
    rate_hz: float = key(10.0, 0.0, 1e5, unit="Hz")


@dataclass(frozen=True)
class EnergyLine(Section):
    """An energy trigger line (physics, dimuon, and any further ``[trigger.menu.<name>]`` with
    ``kind = "energy"``): counters (EOT, or PiSi when ``veto`` is false), E_PS above ``ps_min_gev``, E_ECAL
    below ``ecal_max_gev``, optionally E_PS below ``ps_max_gev`` and E_ECAL above ``ecal_min_gev``;
    definitions in trigger/menu.py."""

    kind: str = key("energy", choices=("energy",), doc="an energy trigger line")
    enabled: bool = key(True)
    prescale: int = key(1, 1, 10**7)
    ps_min_gev: float = key(0.3, 0.0, 100.0, unit="GeV", doc="E_PS above this (strict)")
    ecal_max_gev: float = key(80.0, 0.0, 400.0, unit="GeV", doc="E_ECAL below this (strict)")
    ps_max_gev: float | None = key(None, 0.0, 400.0, unit="GeV", doc="optional: E_PS below this (strict)")
    ecal_min_gev: float | None = key(None, 0.0, 400.0, unit="GeV", doc="optional: E_ECAL above this (strict)")
    veto: bool = key(True, doc="true: EOT (PiSi AND NOT V1) required; false: PiSi")


MenuLine = EnergyLine | BeamLine | RandomLine

#: the lines of ``[trigger.menu]``: name -> (record class, defaults that differ from the class's)
MENU_LINES: dict[str, tuple[type[Section], dict[str, Any]]] = {
    "physics": (EnergyLine, {}),
    "beam": (BeamLine, {}),
    "random": (RandomLine, {}),
    "dimuon": (EnergyLine, {"ecal_max_gev": 60.0}),
}


class MenuLines(Mapping[str, Any]):
    """Read-only mapping trigger name -> line record, in declaration order (picklable, unlike a
    ``MappingProxyType``: configs travel to spawned children and dask workers)."""

    def __init__(self, lines: Mapping[str, Any]) -> None:
        self._lines = dict(lines)

    def __getitem__(self, name: str) -> Any:
        return self._lines[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._lines)

    def __len__(self) -> int:
        return len(self._lines)

    def __repr__(self) -> str:
        return f"MenuLines({self._lines!r})"

    __hash__ = None  # type: ignore[assignment]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "MenuLines":
        return cls({n: (MENU_LINES[n][0] if n in MENU_LINES else EnergyLine).from_dict(v) for n, v in d.items()})


def _menu_default() -> MenuLines:
    return MenuLines({n: kind(**over) for n, (kind, over) in MENU_LINES.items()})


@dataclass(frozen=True)
class TriggerSection(Section):
    """``[trigger]``: counter coincidence settings and the menu of trigger lines."""

    window_ns: float = key(10.0, 0.5, 100.0, unit="ns", doc="counter coincidence half-window")
    counter_threshold_mip: float = key(0.5, 0.05, 10.0, doc="S and V threshold in MIP")
    mip_adc: float = key(200.0, 1.0, 4000.0, unit="ADC counts", doc="counter amplitude of one MIP")
    energy_gate_ns: float = key(
        50.0,
        25.0,
        1000.0,
        unit="ns",
        doc="full width of the gate, centred on each energy sum's nominal peak time (calibration t0 + the "
        "template's onset-to-peak delay), in which the PS_SUM and ECAL_SUM amplitudes are taken (docs/physics.md 1.6)",
    )
    counter_gate_ns: float = key(
        40.0,
        20.0,
        1000.0,
        unit="ns",
        doc="full width of the gate, centred on each counter's (S1..S3, V1) nominal peak time, in which its "
        "amplitude and onset are taken; it must hold every onset in the +/- window_ns coincidence window "
        "(at least 2 x (window_ns + 10 ns), checked by the trigger menu: docs/physics.md 1.6)",
    )
    menu: MenuLines = dataclasses.field(default_factory=_menu_default)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TriggerSection":
        kw: dict[str, Any] = {k: (MenuLines.from_dict(v) if k == "menu" else v) for k, v in d.items()}
        return cls(**kw)


@dataclass(frozen=True)
class DaqSection(Section):
    """``[daq]``: readout, recording and monitoring of ``na64-daq``."""

    visa_library: str = key("@py", doc="pyvisa backend")
    timeout_ms: int = key(10000, 10, 600000, unit="ms")
    retries: int = key(3, 0, 20)
    chunk_records: int = key(1 << 20, 1, 1 << 26, doc="primitive records per PRIM:DATA? read")
    poll_interval_s: float = key(0.05, 0.001, 10.0, unit="s")
    record_truth: bool = key(True, doc="store emulator truth (EVT:TRUT?) when the crate offers it")
    sample_waveforms: int = key(8, 0, 1000, doc="waveforms per spill on the monitoring stream")
    calibration_mode: bool = key(False, doc="beam trigger unprescaled; publish amplitudes")
    heartbeat_s: float = key(1.0, 0.05, 60.0, unit="s")
    spill_timeout_s: float = key(120.0, 0.1, 3600.0, unit="s", doc="no spill for this long = DAQ stalled")
    lock_wait_s: float = key(
        10.0,
        0.0,
        600.0,
        unit="s",
        doc="a crate locked by another DAQ is asked again for this long before na64-daq gives up (the lock of "
        "a DAQ that died expires in the crate)",
    )
    max_events_per_spill: int = key(
        200_000,
        1,
        10**8,
        doc="most events read out per spill: a spill whose trigger accepted more has only its first ones read "
        "(flagged truncated; its accounting keeps every accepted event). Bounds the event buffers at "
        "this x 121 channels x 32 samples x 2 bytes",
    )
    min_free_mb: float = key(
        256.0,
        0.0,
        1e8,
        unit="MB",
        doc="disk kept free on the output filesystem: a spill that would cut into it is "
        "not written (flagged disk_full) and the run stops",
    )


@dataclass(frozen=True)
class HvSection(Section):
    """``[hv]``: HV limits, ramps and the serial line. ``HVSupply.configure`` programs RUP, RDW, ISET, TRIP
    and MAXV from these keys at the start of every tool that owns the HV line."""

    max_v: float = key(1500.0, 0.0, 2000.0, unit="V", doc="per-channel voltage limit (refuse above)")
    min_v: float = key(500.0, 0.0, 2000.0, unit="V", doc="lowest operating set point")
    max_step_v: float = key(50.0, 0.1, 500.0, unit="V", doc="largest change of one calibration step")
    ramp_step_v: float = key(20.0, 0.1, 500.0, unit="V", doc="software ramp step")
    ramp_up_v_per_s: float = key(50.0, 1.0, 500.0, unit="V/s", doc="hardware ramp-up rate RUP")
    ramp_down_v_per_s: float = key(50.0, 1.0, 500.0, unit="V/s", doc="hardware ramp-down rate RDW")
    settle_tolerance_v: float = key(1.0, 0.01, 50.0, unit="V")
    settle_timeout_s: float = key(60.0, 0.1, 3600.0, unit="s")
    safe_v: float = key(0.0, 0.0, 2000.0, unit="V", doc="voltage of the safe state")
    timeout_s: float = key(2.0, 0.01, 60.0, unit="s", doc="serial read timeout")
    retries: int = key(2, 0, 10)
    max_current_ua: float = key(500.0, 1.0, 1000.0, unit="uA", doc="current limit ISET of every channel")
    trip_s: float = key(1.0, 0.0, 1000.0, unit="s", doc="over-current time before a channel trips (TRIP)")


@dataclass(frozen=True)
class HvTuneSection(Section):
    """``[hv_tune]``: the HCAL HV equalisation campaign."""

    target: float = key(2500.0, 100.0, 4000.0, unit="ADC counts")
    tolerance: float = key(0.02, 0.001, 0.5)
    max_iterations: int = key(5, 1, 50)
    gamma_default: float = key(7.5, 1.0, 20.0, doc="gain-law exponent before it is measured")
    min_events: int = key(500, 10, 10**7)
    max_spills_per_point: int = key(5, 1, 1000)


@dataclass(frozen=True)
class MonitorSection(Section):
    """``[monitor]``: the online monitor's views and alarms."""

    repaint_hz: float = key(5.0, 0.2, 10.0, unit="Hz")
    yields_file: str = key("", doc="JSON written by `na64-offline yields --json` (empty: no sensitivity view)")
    rate_drop_fraction: float = key(0.5, 0.0, 1.0, doc="alarm when S1 falls below this x the running mean")
    hv_deviation_v: float = key(5.0, 0.1, 500.0, unit="V")
    stall_s: float = key(60.0, 1.0, 3600.0, unit="s")
    history_spills: int = key(500, 10, 100000)
    signal_efficiency: float = key(0.5, 0.01, 1.0, doc="signal efficiency for the live sensitivity view")
    momentum_alarm_pct: float = key(2.0, 0.1, 100.0, doc="alarm when the beam momentum peak moves by more (%)")
    momentum_reference_spills: int = key(
        0, 0, 10000, doc="0: the peak is compared with beam.energy_gev; N: with the run's first N spills"
    )
    led_alarm_pct: float = key(
        2.0, 0.1, 100.0, unit="%", doc="alarm when a cell's LED amplitude moves this far from its reference"
    )


@dataclass(frozen=True)
class OfflineSection(Section):
    """``[offline]``: offline reconstruction and selection cuts."""

    ecal_box_max_gev: float = key(50.0, 0.0, 400.0, unit="GeV")
    hcal_box_max_gev: float = key(1.0, 0.0, 100.0, unit="GeV")
    cell_pileup_min_gev: float = key(1.0, 0.0, 100.0, unit="GeV")
    pileup_window_ns: float = key(2.0, 0.1, 100.0, unit="ns")
    pileup_range_ns: float = key(
        100.0,
        20.0,
        400.0,
        unit="ns",
        doc="calorimeter cells: peak and pile-up within +/- this of their nominal peak (docs/physics.md 1.3)",
    )
    srd_min_gev: float = key(
        0.015,
        0.0,
        1.0,
        unit="GeV",
        doc="SR per SRD section; the paper's working point: 95% of the beam electrons tagged (docs/physics.md 1.10)",
    )
    v2_max_mip: float = key(0.5, 0.0, 100.0)
    shape_chi2_ndf_max: float = key(4.0, 0.1, 1000.0, doc="ECAL lateral profile vs e-m expectation, chi2/ndf")
    centre_max_mm: float = key(20.0, 1.0, 200.0, unit="mm", doc="shower centre distance from the beam axis")
    p_min_gev: float = key(95.0, 0.0, 400.0, unit="GeV", doc="momentum window of the incoming track, low edge")
    p_max_gev: float = key(105.0, 0.0, 1000.0, unit="GeV", doc="momentum window, high edge")
    angle_max_mrad: float = key(5.0, 0.0, 100.0, unit="mrad", doc="incoming track angle")
    max_tracks: int = key(1, 1, 100, doc="track multiplicity: at most this many tracks")
    dask_workers: int = key(2, 1, 64)
    led_correction: bool = key(True, doc="scale ECAL energies per spill and cell by LED reference / LED mean")


#: section name -> class, in file order
SECTIONS: dict[str, type[Section]] = {
    "calibration": CalibrationSection,
    "endpoints": EndpointsSection,
    "spill": SpillSection,
    "beam": BeamSection,
    "beamline": BeamlineSection,
    "tracker": TrackerSection,
    "aprime": AprimeSection,
    "emulator": EmulatorSection,
    "led": LedSection,
    "trigger": TriggerSection,
    "daq": DaqSection,
    "hv": HvSection,
    "hv_tune": HvTuneSection,
    "monitor": MonitorSection,
    "offline": OfflineSection,
}


def _schema() -> dict[str, Any]:
    out: dict[str, Any] = {name: fields_schema(cls) for name, cls in SECTIONS.items()}
    out["trigger"]["menu"] = {n: fields_schema(kind, over) for n, (kind, over) in MENU_LINES.items()}
    out["trigger"]["menu"][WILDCARD] = fields_schema(EnergyLine)  # any further energy line
    return out


#: The whole schema: section -> key -> Field; sub-tables (``trigger.menu.physics``) as nested dicts.
SCHEMA: dict[str, Any] = _schema()


# ------------------------------------------------------------------------------------------ config
@dataclass(frozen=True)
class Config:
    """A validated configuration. ``path``: the resolved file it was read from (None: defaults or a
    run record); a relative ``calibration.file`` is taken relative to it."""

    calibration: CalibrationSection
    endpoints: EndpointsSection
    spill: SpillSection
    beam: BeamSection
    beamline: BeamlineSection
    tracker: TrackerSection
    aprime: AprimeSection
    emulator: EmulatorSection
    led: LedSection
    trigger: TriggerSection
    daq: DaqSection
    hv: HvSection
    hv_tune: HvTuneSection
    monitor: MonitorSection
    offline: OfflineSection
    path: str | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], path: str | None = None) -> "Config":
        """From a validated nested dict (``detector.config.validate`` builds it; do not call directly)."""
        sections: dict[str, Any] = {n: kind.from_dict(d[n]) for n, kind in SECTIONS.items()}
        return cls(**sections, path=path)

    def to_dict(self) -> dict[str, Any]:
        """The configuration as a nested dict of plain values (no ``path``), as ``tomllib`` reads it."""
        return {n: getattr(self, n).to_dict() for n in SECTIONS}

    def with_overrides(self, overrides: Mapping[str, Any]) -> "Config":
        """A new config with ``overrides`` (nested dict, e.g. ``{"daq": {"min_free_mb": 1e3}}``) merged in,
        validated by the same schema and checks as a file (``ConfigError`` on a bad value)."""
        from .config import validate

        return dataclasses.replace(
            validate(merge_dicts(self.to_dict(), overrides), self.path or "<overrides>"), path=self.path
        )


def merge_dicts(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated recursively with ``over`` (a new dict; the arguments are not modified)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge_dicts(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out
