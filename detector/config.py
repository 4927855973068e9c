"""Configuration: TOML files under ``config/`` read with stdlib ``tomllib``, validated against one
declarative schema and returned as a typed, frozen :class:`~detector.settings.Config` (``cfg.daq.retries``).

The schema is the section dataclasses of :mod:`detector.settings` (:data:`SCHEMA` is derived from them).

Every key has a type, a default, an allowed range or set of choices and a unit. An unknown section or
key, a wrong type or an out-of-range value raises :class:`ConfigError` naming the file, the key and what
is allowed. A file may set only some keys; the rest take their defaults, so ``load_config(None)`` is the
documented default that runs everything against the emulator on loopback.

Per-channel calibration (GeV per ADC count, HV set points, pedestals) lives in a second file named by
``calibration.file`` and is loaded by :func:`load_calibration` into a :class:`Calibration`.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import pathlib
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import channels as ch
from .settings import SCHEMA, WILDCARD, Config, EnergyLine, Field

__all__ = [
    "CONFIG_DIR",
    "DEFAULT_CONFIG",
    "SCHEMA",
    "Calibration",
    "Config",
    "ConfigError",
    "Field",
    "as_config",
    "defaults",
    "dump_toml",
    "load_calibration",
    "load_config",
    "validate",
]

CONFIG_DIR = pathlib.Path(__file__).resolve().parent.parent / "config"
DEFAULT_CONFIG = CONFIG_DIR / "default.toml"


class ConfigError(ValueError):
    """A configuration file or value is invalid; the message names file, key and the allowed values."""


def _is_field(x: Any) -> bool:
    return isinstance(x, Field)


def defaults(schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """The default configuration (a fresh nested dict)."""
    schema = SCHEMA if schema is None else schema
    out: dict[str, Any] = {}
    for key, spec in schema.items():
        if key == WILDCARD or (_is_field(spec) and spec.default is None):
            continue  # a further sub-table, or an optional key: absent unless set
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
    if (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and ((field.lo is not None and value < field.lo) or (field.hi is not None and value > field.hi))
    ):
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
            more = (
                f"; a further sub-table needs kind = {schema[WILDCARD]['kind'].default!r}" if WILDCARD in schema else ""
            )
            raise ConfigError(f"{source}: unknown key '{dotted}'; known keys here: {known}{more}")
        if _is_field(spec):
            out[key] = _check_value(source, dotted, spec, value)
        else:
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: '{dotted}' must be a table [{dotted}], got {value!r}")
            _merge(source, spec, value, out[key], dotted + ".")


def validate(data: Mapping[str, Any], source: str = "<config>") -> Config:
    """Validate a parsed config dict (as ``tomllib`` reads it) merged over the defaults; the typed
    :class:`~detector.settings.Config` (``path`` None)."""
    out = defaults()
    _merge(source, SCHEMA, dict(data), out, "")
    cfg = Config.from_dict(out)
    _check_consistency(source, cfg)
    return cfg


def _check_beamline(source: str, cfg: Config) -> None:
    bl, tr = cfg.beamline, cfg.tracker
    n = len(bl.layer_names)
    if len(bl.layer_z_m) != n or len(bl.layer_x0) != n:
        raise ConfigError(f"{source}: beamline.layer_names, layer_z_m and layer_x0 must have the same length")
    if list(bl.layer_z_m) != sorted(bl.layer_z_m) or (n and not bl.layer_z_m[0] >= 0.0):
        raise ConfigError(f"{source}: beamline.layer_z_m must be >= 0 and increasing")
    if n and bl.layer_z_m[-1] >= bl.ecal_z_m:
        raise ConfigError(f"{source}: every beamline layer must be upstream of beamline.ecal_z_m")
    if any(not 0.0 <= x < 1.0 for x in bl.layer_x0):
        raise ConfigError(f"{source}: beamline.layer_x0 must be in [0, 1) radiation lengths")
    m = len(bl.magnet_z_m)
    if m == 0 or len(bl.magnet_length_m) != m or len(bl.magnet_field_t) != m:
        raise ConfigError(f"{source}: beamline.magnet_z_m, magnet_length_m, magnet_field_t: same length >= 1")
    if any(not 0.0 < z < bl.ecal_z_m for z in bl.magnet_z_m) or list(bl.magnet_z_m) != sorted(bl.magnet_z_m):
        raise ConfigError(f"{source}: beamline.magnet_z_m must be increasing, between 0 and the ECAL")
    pipes = list(zip(bl.pipe_from_m, bl.pipe_to_m, strict=False))
    if len(bl.pipe_from_m) != len(bl.pipe_to_m) or any(
        not 0.0 <= a < b <= bl.ecal_z_m or any(a <= z <= b for z in bl.layer_z_m) for a, b in pipes
    ):
        raise ConfigError(
            f"{source}: beamline.pipe_from_m and pipe_to_m: same length, each pipe within [0, ecal_z_m] with no "
            "layer inside it or on its ends"
        )
    if any(b1 > a2 for (_, b1), (a2, _) in itertools.pairwise(pipes)):
        raise ConfigError(f"{source}: beamline pipes must be in beam order and must not overlap")
    missing = [s for s in tr.stations if s not in bl.layer_names]
    if missing:
        raise ConfigError(f"{source}: tracker.stations {missing} are not beamline layers")
    z = [bl.layer_z_m[bl.layer_names.index(s)] for s in tr.stations]
    up = [v < bl.magnet_z_m[0] for v in z]
    down = [v > bl.magnet_z_m[-1] for v in z]
    if z != sorted(z) or not any(up) or not any(down) or not all(u or d for u, d in zip(up, down, strict=True)):
        raise ConfigError(
            f"{source}: tracker.stations must be in beam order, at least one before the first dipole and one after "
            "the last, none between them"
        )
    if cfg.offline.p_min_gev >= cfg.offline.p_max_gev:
        raise ConfigError(f"{source}: offline.p_min_gev must be below offline.p_max_gev")


def _check_consistency(source: str, cfg: Config) -> None:
    hv = cfg.hv
    if hv.min_v > hv.max_v:
        raise ConfigError(f"{source}: hv.min_v = {hv.min_v} is above hv.max_v = {hv.max_v}")
    if hv.safe_v > hv.max_v:
        raise ConfigError(f"{source}: hv.safe_v = {hv.safe_v} is above hv.max_v = {hv.max_v}")
    if cfg.spill.length_s >= cfg.spill.supercycle_s:
        raise ConfigError(
            f"{source}: spill.length_s = {cfg.spill.length_s} must be shorter than "
            f"spill.supercycle_s = {cfg.spill.supercycle_s}"
        )
    b = cfg.beam
    fracs = sum((b.frac_pion, b.frac_kaon, b.frac_muon, b.frac_halo))
    if fracs >= 1.0:
        raise ConfigError(f"{source}: beam fractions (pion+kaon+muon+halo) add up to {fracs:.3f} >= 1")
    _check_beamline(source, cfg)
    host = cfg.endpoints.host
    if not (host.startswith("127.") or host in ("localhost", "::1")) and not cfg.endpoints.zmq_curve:
        raise ConfigError(
            f"{source}: endpoints.host = {host!r} is not loopback; binding beyond loopback "
            "needs endpoints.zmq_curve = true"
        )
    menu = cfg.trigger.menu
    for name, line in menu.items():
        if isinstance(line, EnergyLine) and line.ps_min_gev >= line.ecal_max_gev:
            raise ConfigError(
                f"{source}: trigger.menu.{name}: ps_min_gev = {line.ps_min_gev} must be "
                f"below ecal_max_gev = {line.ecal_max_gev}"
            )
    if not any(line.enabled for line in menu.values()):
        raise ConfigError(f"{source}: trigger.menu enables no trigger")


def load_config(path: str | pathlib.Path | None = None) -> Config:
    """Load and validate a TOML config (None: the built-in defaults); ``Config.path`` is the resolved
    file (None for the defaults)."""
    if path is None:
        return validate({}, "<defaults>")
    p = pathlib.Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read config file ({exc.strerror or exc})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML ({exc})") from None
    return dataclasses.replace(validate(data, str(p)), path=str(p.resolve()))


def as_config(cfg: Config | None) -> Config:
    """``cfg`` itself, or the defaults for None."""
    return load_config(None) if cfg is None else cfg


def dump_toml(cfg: Config | Mapping[str, Any]) -> str:
    """Write a (validated) config back as TOML text, for run records and reproducibility."""
    data = cfg.to_dict() if isinstance(cfg, Config) else dict(cfg)
    lines: list[str] = []

    def fmt(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list):
            return (
                "["
                + ", ".join(
                    fmt(x)
                    if not isinstance(x, dict)
                    else "{" + ", ".join(f"{k} = {fmt(y)}" for k, y in x.items()) + "}"
                    for x in v
                )
                + "]"
            )
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

    walk(data, "")
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


def load_calibration(cfg: Config | None = None, path: str | pathlib.Path | None = None) -> Calibration:
    """Load the calibration file named by ``cfg.calibration.file`` (relative to the config file, else to
    ``config/``), or ``path`` when given. Checks every HV limit against ``hv.max_v``."""
    cfg = as_config(cfg)
    if path is None:
        name = pathlib.Path(cfg.calibration.file)
        base = pathlib.Path(cfg.path).parent if cfg.path else CONFIG_DIR
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
    max_v = cfg.hv.max_v
    over = np.flatnonzero(arrays["hv_limit"] > max_v)
    if over.size:
        raise ConfigError(
            f"{src}: hv_limit of {ch.CHANNELS[over[0]].name} = {arrays['hv_limit'][over[0]]} V is "
            f"above the global hv.max_v = {max_v} V"
        )
    bad = np.flatnonzero(arrays["hv_set"] > arrays["hv_limit"])
    if bad.size:
        c = ch.CHANNELS[bad[0]]
        raise ConfigError(
            f"{src}: hv_set of {c.name} = {arrays['hv_set'][bad[0]]} V is above its "
            f"hv_limit = {arrays['hv_limit'][bad[0]]} V"
        )
    return Calibration(source=src, **arrays)
