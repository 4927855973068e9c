"""Configuration: TOML files under ``config/`` read with stdlib ``tomllib`` and validated against one
declarative schema.

Every key has a type, a default, an allowed range or set of choices and a unit. An unknown section or
key, a wrong type or an out-of-range value raises :class:`ConfigError` naming the file, the key and what
is allowed. A file may set only some keys; the rest take their defaults, so ``load_config(None)`` is the
documented default that runs everything against the emulator on loopback.

Per-channel calibration (GeV per ADC count, HV set points, pedestals) lives in a second file named by
``calibration.file`` and is loaded by :func:`load_calibration` into a :class:`Calibration`.
"""
from __future__ import annotations

import copy
import math
import pathlib
import tomllib
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import channels as ch

CONFIG_DIR = pathlib.Path(__file__).resolve().parent.parent / "config"
DEFAULT_CONFIG = CONFIG_DIR / "default.toml"


class ConfigError(ValueError):
    """A configuration file or value is invalid; the message names file, key and the allowed values."""


@dataclass(frozen=True)
class Field:
    """One configuration key: its type, default, range and unit."""

    type: type | tuple[type, ...]
    default: Any
    lo: float | None = None
    hi: float | None = None
    choices: tuple[Any, ...] | None = None
    unit: str = ""
    doc: str = ""

    def allowed(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        names = {bool: "true/false", int: "an integer", float: "a number", str: "a string",
                 list: "a list", dict: "a table"}
        types = self.type if isinstance(self.type, tuple) else (self.type,)
        kind = " or ".join(names.get(t, t.__name__) for t in types)
        if self.lo is not None or self.hi is not None:
            kind += f" in [{self.lo if self.lo is not None else '-inf'}, {self.hi if self.hi is not None else 'inf'}]"
        return kind + (f" {self.unit}" if self.unit else "")


F = Field
NUM = (int, float)

#: schema key of a table's open-ended sub-tables: a sub-table of another name that sets ``kind`` follows
#: this schema (e.g. a further trigger line ``[trigger.menu.<name>]``)
WILDCARD = "*"

#: one energy trigger line (``[trigger.menu.physics]``, ``[trigger.menu.dimuon]`` and any further
#: ``[trigger.menu.<name>]`` with ``kind = "energy"``); definitions in trigger/menu.py. A Field whose
#: default is None is optional: absent unless set
ENERGY_LINE: dict[str, Field] = {
    "kind": Field(str, "energy", choices=("energy",), doc="an energy trigger line"),
    "enabled": Field(bool, True),
    "prescale": Field(int, 1, 1, 10**7),
    "ps_min_gev": Field(NUM, 0.3, 0.0, 100.0, unit="GeV", doc="E_PS above this (strict)"),
    "ecal_max_gev": Field(NUM, 80.0, 0.0, 400.0, unit="GeV", doc="E_ECAL below this (strict)"),
    "ps_max_gev": Field(NUM, None, 0.0, 400.0, unit="GeV", doc="optional: E_PS below this (strict)"),
    "ecal_min_gev": Field(NUM, None, 0.0, 400.0, unit="GeV", doc="optional: E_ECAL above this (strict)"),
    "veto": Field(bool, True, doc="true: EOT (PiSi AND NOT V1) required; false: PiSi"),
}

#: The whole schema: section -> key -> Field. Sub-tables (e.g. ``trigger.menu.physics``) are
#: described by a nested dict.
SCHEMA: dict[str, Any] = {
    "calibration": {
        "file": F(str, "calibration.toml", doc="per-channel constants, relative to this config file"),
    },
    "endpoints": {
        "host": F(str, "127.0.0.1", doc="address every server binds to; non-loopback needs zmq_curve"),
        "zmq_curve": F(bool, False, doc="require ZeroMQ CURVE keys (mandatory off loopback)"),
        "msadc_port": F(int, 0, 0, 65535, doc="VISA socket port of the MSADC crate; 0 = any free port"),
        "hv_port": F(int, 0, 0, 65535, doc="TCP port of the HV serial line; 0 = any free port"),
        "table_port": F(int, 0, 0, 65535, doc="TCP port of the table serial line; 0 = any free port"),
        "feed_port": F(int, 0, 0, 65535, doc="ZeroMQ port of the beam feed; 0 = any free port"),
        "control_port": F(int, 0, 0, 65535, doc="ZeroMQ REP port of the emulator control; 0 = any"),
        "monitor": F(str, "tcp://127.0.0.1:5556", doc="ZeroMQ PUB address of na64-daq's monitoring stream"),
    },
    "spill": {
        "length_s": F(NUM, 4.8, 0.01, 60.0, unit="s", doc="beam (flat-top) duration of a spill"),
        "supercycle_s": F(NUM, 30.0, 0.02, 120.0, unit="s", doc="spill period; physics.md: 14.4-48 s"),
        "count": F(int, 0, 0, 10**9, doc="spills the feed generates; 0 = until stopped"),
    },
    "beam": {
        "particles_per_spill": F(NUM, 5e6, 0, 2e7, doc="particles per spill (EOT scale)"),
        "energy_gev": F(NUM, 100.0, 1.0, 400.0, unit="GeV"),
        "energy_spread": F(NUM, 0.01, 0.0, 0.2, doc="relative RMS momentum spread"),
        "x_mm": F(NUM, 0.0, -100.0, 100.0, unit="mm", doc="beam centre at the ECAL face"),
        "y_mm": F(NUM, 0.0, -100.0, 100.0, unit="mm"),
        "sigma_mm": F(NUM, 5.0, 0.1, 50.0, unit="mm", doc="beam spot RMS"),
        "frac_pion": F(NUM, 3e-3, 0.0, 0.5, doc="pi- per particle"),
        "frac_kaon": F(NUM, 3e-4, 0.0, 0.5),
        "frac_muon": F(NUM, 1e-3, 0.0, 0.5),
        "frac_halo": F(NUM, 0.126, 0.0, 0.9, doc="halo particles that fire V0 (physics.md: V0/S1 = 0.126)"),
        "frac_halo_v1": F(NUM, 0.05, 0.0, 1.0, doc="fraction of the halo that also fires V1"),
        "frac_upstream": F(NUM, 1e-3, 0.0, 0.2, doc="electrons that interacted upstream (soft e-)"),
        "dimuon_bias": F(NUM, 200.0, 1.0, 1e6, doc="bias factor of gamma -> mu mu in showers"),
        "seed": F(int, 12345, 0, 2**63 - 1),
        "calibration_particle": F(str, "e-", choices=("e-", "pi-", "mu-"),
                                  doc="particle of the calibration beam when the table is on an HCAL cell"),
        "calibration_particles_per_spill": F(NUM, 2e4, 0, 1e7),
    },
    "aprime": {
        "enabled": F(bool, False, doc="inject A' -> invisible signal events"),
        "mass_mev": F(NUM, 16.7, 1.0, 1000.0, unit="MeV"),
        "epsilon": F(NUM, 1e-4, 0.0, 1.0, doc="kinetic mixing"),
        "bias": F(NUM, 1.0, 1.0, 1e12, doc="rate bias (recorded in truth as a weight)"),
    },
    "emulator": {
        "gain_spread": F(NUM, 0.30, 0.0, 0.9, doc="hidden HCAL gain spread (+/- fraction, uniform)"),
        "gain_spread_other": F(NUM, 0.02, 0.0, 0.9, doc="hidden gain spread of ECAL, counters, SRD (calibrated)"),
        "gamma_mean": F(NUM, 7.5, 3.0, 12.0, doc="hidden gain-law exponent, mean"),
        "gamma_spread": F(NUM, 0.5, 0.0, 3.0, doc="hidden gain-law exponent, RMS"),
        "hidden_seed": F(int, 777, 0, 2**63 - 1),
        "spill_buffer": F(int, 2, 1, 16, doc="completed spills the crate keeps"),
        "wait_for_feed": F(bool, False, doc="do not start the internal simulation; wait for an external feed"),
        "hv_rup_v_per_s": F(NUM, 50.0, 1.0, 500.0, unit="V/s"),
        "hv_rdw_v_per_s": F(NUM, 50.0, 1.0, 500.0, unit="V/s"),
        "table_speed_mm_per_s": F(NUM, 100.0, 1.0, 10000.0, unit="mm/s"),
        "faults": F(list, [], doc="faults active at start, as tables {endpoint, kind, ...}"),
    },
    "trigger": {
        "window_ns": F(NUM, 10.0, 0.5, 100.0, unit="ns", doc="counter coincidence half-window"),
        "counter_threshold_mip": F(NUM, 0.5, 0.05, 10.0, doc="S and V threshold in MIP"),
        "mip_adc": F(NUM, 200.0, 1.0, 4000.0, unit="ADC counts", doc="counter amplitude of one MIP"),
        "menu": {
            "physics": ENERGY_LINE,
            "beam": {
                "enabled": F(bool, True),
                "prescale": F(int, 1000, 1, 10**7),
            },
            "random": {
                "enabled": F(bool, True),
                "rate_hz": F(NUM, 10.0, 0.0, 1e5, unit="Hz"),
            },
            "dimuon": {**ENERGY_LINE, "ecal_max_gev": F(NUM, 60.0, 0.0, 400.0, unit="GeV")},
            #: any further table that declares ``kind = "energy"`` is one more energy trigger line
            WILDCARD: ENERGY_LINE,
        },
    },
    "daq": {
        "visa_library": F(str, "@py", doc="pyvisa backend"),
        "timeout_ms": F(int, 10000, 10, 600000, unit="ms"),
        "retries": F(int, 3, 0, 20),
        "chunk_records": F(int, 1 << 20, 1, 1 << 26, doc="primitive records per PRIM:DATA? read"),
        "poll_interval_s": F(NUM, 0.05, 0.001, 10.0, unit="s"),
        "record_truth": F(bool, True, doc="store emulator truth (EVT:TRUT?) when the crate offers it"),
        "sample_waveforms": F(int, 8, 0, 1000, doc="waveforms per spill on the monitoring stream"),
        "calibration_mode": F(bool, False, doc="beam trigger unprescaled; publish amplitudes"),
        "heartbeat_s": F(NUM, 1.0, 0.05, 60.0, unit="s"),
        "spill_timeout_s": F(NUM, 120.0, 0.1, 3600.0, unit="s", doc="no spill for this long = DAQ stalled"),
        "min_free_mb": F(NUM, 256.0, 0.0, 1e8, unit="MB",
                         doc="disk kept free on the output filesystem: a spill that would cut into it is not "
                             "written (flagged disk_full) and the run stops"),
    },
    "hv": {
        "max_v": F(NUM, 1500.0, 0.0, 2000.0, unit="V", doc="per-channel voltage limit (refuse above)"),
        "min_v": F(NUM, 500.0, 0.0, 2000.0, unit="V", doc="lowest operating set point"),
        "max_step_v": F(NUM, 50.0, 0.1, 500.0, unit="V", doc="largest change of one calibration step"),
        "ramp_step_v": F(NUM, 20.0, 0.1, 500.0, unit="V", doc="software ramp step"),
        "ramp_up_v_per_s": F(NUM, 50.0, 1.0, 500.0, unit="V/s"),
        "ramp_down_v_per_s": F(NUM, 50.0, 1.0, 500.0, unit="V/s"),
        "settle_tolerance_v": F(NUM, 1.0, 0.01, 50.0, unit="V"),
        "settle_timeout_s": F(NUM, 60.0, 0.1, 3600.0, unit="s"),
        "safe_v": F(NUM, 0.0, 0.0, 2000.0, unit="V", doc="voltage of the safe state"),
        "timeout_s": F(NUM, 2.0, 0.01, 60.0, unit="s", doc="serial read timeout"),
        "retries": F(int, 2, 0, 10),
        "max_current_ua": F(NUM, 500.0, 1.0, 1000.0, unit="uA"),
    },
    "hv_tune": {
        "target": F(NUM, 2500.0, 100.0, 4000.0, unit="ADC counts"),
        "tolerance": F(NUM, 0.02, 0.001, 0.5),
        "max_iterations": F(int, 5, 1, 50),
        "gamma_default": F(NUM, 7.5, 1.0, 20.0, doc="gain-law exponent before it is measured"),
        "min_events": F(int, 500, 10, 10**7),
        "max_spills_per_point": F(int, 5, 1, 1000),
    },
    "monitor": {
        "repaint_hz": F(NUM, 5.0, 0.2, 10.0, unit="Hz"),
        "yields_file": F(str, "", doc="JSON written by `na64-offline yields --json` (empty: no sensitivity view)"),
        "rate_drop_fraction": F(NUM, 0.5, 0.0, 1.0, doc="alarm when S1 falls below this x the running mean"),
        "hv_deviation_v": F(NUM, 5.0, 0.1, 500.0, unit="V"),
        "stall_s": F(NUM, 60.0, 1.0, 3600.0, unit="s"),
        "history_spills": F(int, 500, 10, 100000),
        "signal_efficiency": F(NUM, 0.5, 0.01, 1.0, doc="signal efficiency for the live sensitivity view"),
    },
    "offline": {
        "ecal_box_max_gev": F(NUM, 50.0, 0.0, 400.0, unit="GeV"),
        "hcal_box_max_gev": F(NUM, 1.0, 0.0, 100.0, unit="GeV"),
        "cell_pileup_min_gev": F(NUM, 1.0, 0.0, 100.0, unit="GeV"),
        "pileup_window_ns": F(NUM, 2.0, 0.1, 100.0, unit="ns"),
        "srd_min_gev": F(NUM, 0.025, 0.0, 1.0, unit="GeV",
                         doc="SR per SRD section: half of a 100 GeV e-'s, so soft upstream e- fail the tag"),
        "v2_max_mip": F(NUM, 0.5, 0.0, 100.0),
        "shape_chi2_ndf_max": F(NUM, 4.0, 0.1, 1000.0, doc="ECAL lateral profile vs e-m expectation, chi2/ndf"),
        "centre_max_mm": F(NUM, 20.0, 1.0, 200.0, unit="mm", doc="shower centre distance from the beam axis"),
        "dask_workers": F(int, 2, 1, 64),
    },
}


def _is_field(x: Any) -> bool:
    return isinstance(x, Field)


def defaults(schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """The default configuration (a fresh nested dict)."""
    schema = SCHEMA if schema is None else schema
    out: dict[str, Any] = {}
    for key, spec in schema.items():
        if key == WILDCARD or (_is_field(spec) and spec.default is None):
            continue
        out[key] = copy.deepcopy(spec.default) if _is_field(spec) else defaults(spec)
    return out


def _check_value(source: str, dotted: str, field: Field, value: Any) -> Any:
    types = field.type if isinstance(field.type, tuple) else (field.type,)
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if not ok:
        raise ConfigError(f"{source}: key '{dotted}' = {value!r} has the wrong type; allowed: {field.allowed()}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{source}: key '{dotted}' = {value!r} is not finite; allowed: {field.allowed()}")
    if field.choices is not None and value not in field.choices:
        raise ConfigError(f"{source}: key '{dotted}' = {value!r} is not allowed; allowed: {field.allowed()}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if (field.lo is not None and value < field.lo) or (field.hi is not None and value > field.hi):
            raise ConfigError(f"{source}: key '{dotted}' = {value!r} is out of range; allowed: {field.allowed()}")
    return value


def _merge(source: str, schema: dict[str, Any], data: dict[str, Any], out: dict[str, Any], prefix: str) -> None:
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        spec = schema.get(key)
        if spec is None and WILDCARD in schema and isinstance(value, dict) and "kind" in value:
            if not key.isidentifier():
                raise ConfigError(f"{source}: '{dotted}' is not a valid name (letters, digits, _)")
            spec = schema[WILDCARD]
            out[key] = defaults(spec)
        if spec is None or key == WILDCARD:
            known = ", ".join(sorted(k for k in schema if k != WILDCARD))
            more = (f"; a further sub-table needs kind = {schema[WILDCARD]['kind'].default!r}"
                    if WILDCARD in schema else "")
            raise ConfigError(f"{source}: unknown key '{dotted}'; known keys here: {known}{more}")
        if _is_field(spec):
            out[key] = _check_value(source, dotted, spec, value)
        else:
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: '{dotted}' must be a table [{dotted}], got {value!r}")
            _merge(source, spec, value, out[key], dotted + ".")


def validate(data: dict[str, Any], source: str = "<config>") -> dict[str, Any]:
    """Validate a parsed config dict and return it merged over the defaults."""
    out = defaults()
    _merge(source, SCHEMA, data, out, "")
    _check_consistency(source, out)
    return out


def _check_consistency(source: str, cfg: dict[str, Any]) -> None:
    hv = cfg["hv"]
    if hv["min_v"] > hv["max_v"]:
        raise ConfigError(f"{source}: hv.min_v = {hv['min_v']} is above hv.max_v = {hv['max_v']}")
    if hv["safe_v"] > hv["max_v"]:
        raise ConfigError(f"{source}: hv.safe_v = {hv['safe_v']} is above hv.max_v = {hv['max_v']}")
    if cfg["spill"]["length_s"] >= cfg["spill"]["supercycle_s"]:
        raise ConfigError(f"{source}: spill.length_s = {cfg['spill']['length_s']} must be shorter than "
                          f"spill.supercycle_s = {cfg['spill']['supercycle_s']}")
    fracs = sum(cfg["beam"][k] for k in ("frac_pion", "frac_kaon", "frac_muon", "frac_halo", "frac_upstream"))
    if fracs >= 1.0:
        raise ConfigError(f"{source}: beam fractions (pion+kaon+muon+halo+upstream) add up to {fracs:.3f} >= 1")
    host = cfg["endpoints"]["host"]
    if not (host.startswith("127.") or host in ("localhost", "::1")) and not cfg["endpoints"]["zmq_curve"]:
        raise ConfigError(f"{source}: endpoints.host = {host!r} is not loopback; binding beyond loopback "
                          "needs endpoints.zmq_curve = true")
    t = cfg["trigger"]["menu"]
    for name in (n for n, v in t.items() if "kind" in v):
        if t[name]["ps_min_gev"] >= t[name]["ecal_max_gev"]:
            raise ConfigError(f"{source}: trigger.menu.{name}: ps_min_gev = {t[name]['ps_min_gev']} must be "
                              f"below ecal_max_gev = {t[name]['ecal_max_gev']}")
    if not any(t[name]["enabled"] for name in t):
        raise ConfigError(f"{source}: trigger.menu enables no trigger")


def load_config(path: str | pathlib.Path | None = None) -> dict[str, Any]:
    """Load and validate a TOML config (None: the built-in defaults). Adds ``_path`` (str or None)."""
    if path is None:
        cfg = validate({}, "<defaults>")
        cfg["_path"] = None
        return cfg
    p = pathlib.Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read config file ({exc.strerror or exc})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML ({exc})") from None
    cfg = validate(data, str(p))
    cfg["_path"] = str(p.resolve())
    return cfg


def dump_toml(cfg: dict[str, Any]) -> str:
    """Write a (validated) config back as TOML text, for run records and reproducibility."""
    lines: list[str] = []

    def fmt(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list):
            return "[" + ", ".join(fmt(x) if not isinstance(x, dict) else
                                   "{" + ", ".join(f"{k} = {fmt(y)}" for k, y in x.items()) + "}"
                                   for x in v) + "]"
        return repr(v)

    def walk(d: dict[str, Any], prefix: str) -> None:
        scalars = {k: v for k, v in d.items() if not isinstance(v, dict) and not k.startswith("_")}
        tables = {k: v for k, v in d.items() if isinstance(v, dict)}
        if scalars and prefix:
            lines.append(f"[{prefix}]")
        for k, v in scalars.items():
            lines.append(f"{k} = {fmt(v)}")
        if scalars:
            lines.append("")
        for k, v in tables.items():
            walk(v, f"{prefix}.{k}" if prefix else k)

    walk(cfg, "")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# per-channel calibration
@dataclass(frozen=True)
class Calibration:
    """Per-channel constants, arrays indexed by channel id (length ``N_CHANNELS``).

    - ``gev_per_count``: energy per pedestal-subtracted ADC count at the reference HV (GeV/count);
      counters, vetoes and SRD are in GeV too (MIP-equivalent deposit scale).
    - ``hv_set``: HV set point (V) at which ``gev_per_count`` holds; 0 for channels without a PMT.
    - ``hv_limit``: per-channel HV limit (V); never above the global ``hv.max_v``.
    - ``pedestal_even`` / ``pedestal_odd``: nominal pedestals (ADC counts) of the two interleaved phases.
    - ``gamma``: nominal PMT gain-law exponent.
    - ``t0_ns``: nominal pulse onset in the readout window (ns).
    """

    gev_per_count: np.ndarray
    hv_set: np.ndarray
    hv_limit: np.ndarray
    pedestal_even: np.ndarray
    pedestal_odd: np.ndarray
    gamma: np.ndarray
    t0_ns: np.ndarray
    source: str = "<defaults>"


CALIBRATION_KEYS = {
    # key: (kind-keyed table or scalar, lo, hi, unit)
    "gev_per_count": (0.0, 1.0, "GeV/count"),
    "hv_set": (0.0, 2000.0, "V"),
    "hv_limit": (0.0, 2000.0, "V"),
    "pedestal_even": (0.0, 1000.0, "ADC counts"),
    "pedestal_odd": (0.0, 1000.0, "ADC counts"),
    "gamma": (1.0, 20.0, ""),
    "t0_ns": (0.0, 300.0, "ns"),
}


def _per_channel(source: str, key: str, table: dict[str, Any], lo: float, hi: float, unit: str) -> np.ndarray:
    """Expand ``{kind = value, ..., cells = {name = value}}`` into a per-channel array."""
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: [{key}] must be a table of channel kinds and names")
    out = np.full(ch.N_CHANNELS, np.nan)
    extra = table.get("cells", {})
    if not isinstance(extra, dict):
        raise ConfigError(f"{source}: {key}.cells must be a table of channel name = value")
    for kname, value in table.items():
        if kname == "cells":
            continue
        if kname not in ch.KINDS:
            raise ConfigError(f"{source}: unknown key '{key}.{kname}'; allowed: {', '.join(ch.KINDS)}, cells")
        out[ch.ids_of_kind(kname)] = _num(source, f"{key}.{kname}", value, lo, hi, unit)
    for name, value in extra.items():
        try:
            cid = ch.by_name(name).id
        except KeyError as exc:
            raise ConfigError(f"{source}: {key}.cells: {exc.args[0]}") from None
        out[cid] = _num(source, f"{key}.cells.{name}", value, lo, hi, unit)
    missing = [ch.CHANNELS[i].name for i in np.flatnonzero(np.isnan(out))]
    if missing:
        raise ConfigError(f"{source}: [{key}] gives no value for {len(missing)} channel(s), e.g. {missing[:3]}")
    return out


def _num(source: str, dotted: str, value: Any, lo: float, hi: float, unit: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{source}: key '{dotted}' = {value!r} must be a finite number in [{lo}, {hi}] {unit}")
    if not lo <= value <= hi:
        raise ConfigError(f"{source}: key '{dotted}' = {value!r} is out of range; allowed [{lo}, {hi}] {unit}")
    return float(value)


def load_calibration(cfg: dict[str, Any] | None = None, path: str | pathlib.Path | None = None) -> Calibration:
    """Load the calibration file named by ``cfg['calibration']['file']`` (relative to the config file,
    else to ``config/``), or ``path`` when given. Checks every HV limit against ``hv.max_v``."""
    cfg = load_config(None) if cfg is None else cfg
    if path is None:
        name = pathlib.Path(cfg["calibration"]["file"])
        base = pathlib.Path(cfg["_path"]).parent if cfg.get("_path") else CONFIG_DIR
        path = name if name.is_absolute() else base / name
        if not path.exists() and not name.is_absolute():
            path = CONFIG_DIR / name
    p = pathlib.Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read calibration file ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML ({exc})") from None
    src = str(p)
    unknown = set(data) - set(CALIBRATION_KEYS)
    if unknown:
        raise ConfigError(f"{src}: unknown section(s) {sorted(unknown)}; allowed: {', '.join(CALIBRATION_KEYS)}")
    missing = set(CALIBRATION_KEYS) - set(data)
    if missing:
        raise ConfigError(f"{src}: missing section(s) {sorted(missing)}")
    arrays = {k: _per_channel(src, k, data[k], *CALIBRATION_KEYS[k]) for k in CALIBRATION_KEYS}
    max_v = cfg["hv"]["max_v"]
    over = np.flatnonzero(arrays["hv_limit"] > max_v)
    if over.size:
        raise ConfigError(f"{src}: hv_limit of {ch.CHANNELS[over[0]].name} = {arrays['hv_limit'][over[0]]} V is "
                          f"above the global hv.max_v = {max_v} V")
    bad = np.flatnonzero(arrays["hv_set"] > arrays["hv_limit"])
    if bad.size:
        c = ch.CHANNELS[bad[0]]
        raise ConfigError(f"{src}: hv_set of {c.name} = {arrays['hv_set'][bad[0]]} V is above its "
                          f"hv_limit = {arrays['hv_limit'][bad[0]]} V")
    return Calibration(source=src, **arrays)
