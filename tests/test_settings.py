"""Typed configuration (detector/settings.py): the dataclasses are the schema, every key loads into its
attribute, bad values are refused with the validator's messages, TOML round trips, the object is frozen."""

import dataclasses
import pickle
import tomllib
import typing
from collections.abc import Mapping

import pytest

from detector.config import (
    CONFIG_DIR,
    SCHEMA,
    ConfigError,
    Field,
    as_config,
    dump_toml,
    load_calibration,
    load_config,
    validate,
)
from detector.settings import MENU_LINES, NUM, SECTIONS, WILDCARD, BeamLine, Config, EnergyLine, MenuLines, RandomLine

#: (dotted key, Field) of every key, menu lines included
KEYS = [(f"{s}.{k}", f) for s, sec in SCHEMA.items() for k, f in sec.items() if isinstance(f, Field)] + [
    (f"trigger.menu.{n}.{k}", f)
    for n, line in SCHEMA["trigger"]["menu"].items()
    for k, f in line.items()
    if n != WILDCARD
]


def _nested(dotted: str, value: object) -> dict:
    out: dict = {}
    d = out
    *head, last = dotted.split(".")
    for h in head:
        d = d.setdefault(h, {})
    d[last] = value
    return out


def _get(cfg: Config, dotted: str) -> object:
    obj: object = cfg
    for part in dotted.split("."):
        obj = obj[part] if isinstance(obj, MenuLines) else getattr(obj, part)
    return obj


#: valid non-default values of keys that are checked against each other (the beam line and the tracker)
OTHER_VALUES: dict[str, object] = {
    "beamline.layer_names": ["W0", "S0", "MM1", "MM2", "MM3", "MM4", "S1", "S2", "S4"],
    "beamline.layer_z_m": [0.1, 0.6, 1.6, 8.6, 17.6, 27.6, 29.1, 29.8, 30.3],
    "beamline.layer_x0": [0.002] * 9,
    "beamline.ecal_z_m": 32.0,
    "beamline.magnet_z_m": [10.0, 13.0],
    "beamline.magnet_length_m": [1.5, 1.5],
    "beamline.magnet_field_t": [2.0, 2.0],
    "beamline.pipe_from_m": [2.5, 9.0, 18.0],
    "beamline.pipe_to_m": [8.0, 16.5, 27.0],
    "tracker.stations": ["MM1", "MM2", "MM3", "S1"],
    "offline.p_max_gev": 110.0,
}


def _other_value(dotted: str, f: Field) -> object:
    """A valid value different from the default (toward ``lo``, else toward ``hi``)."""
    if dotted in OTHER_VALUES:
        return OTHER_VALUES[dotted]
    d = f.default
    if f.choices is not None:  # a one-choice key (``kind``) can only be set to itself
        return next((c for c in f.choices if c != d), d)
    if d is None:  # an optional key: absent by default, any valid value sets it
        return (f.lo + f.hi) / 2
    if f.type is bool:
        return not d
    if f.type is list:
        return [{"endpoint": "hv", "kind": "delay", "value": 0.25}]
    if f.type is str:
        return "127.0.0.2" if dotted == "endpoints.host" else d + "-x"
    if f.type is int:
        return d - 1 if f.lo is not None and d > f.lo else d + 1
    return (d + f.lo) / 2 if f.lo is not None and d > f.lo else (d + f.hi) / 2


def test_schema_is_the_dataclasses_field_for_field():
    assert list(SCHEMA) == list(SECTIONS) == [f.name for f in dataclasses.fields(Config) if f.name != "path"]
    hints = typing.get_type_hints(Config)
    for name, cls in SECTIONS.items():
        assert hints[name] is cls
        section_fields = {f.name: f for f in dataclasses.fields(cls)}
        keys = {k for k, v in SCHEMA[name].items() if isinstance(v, Field)}
        assert keys == {k for k, f in section_fields.items() if "config" in f.metadata}
        assert set(SCHEMA[name]) == set(section_fields), name  # sub-tables are fields too (the menu)
    for line, (kind, over) in MENU_LINES.items():
        assert set(SCHEMA["trigger"]["menu"][line]) == {f.name for f in dataclasses.fields(kind)}
        assert set(over) <= set(SCHEMA["trigger"]["menu"][line])
    # annotation -> accepted TOML types, and the dataclass defaults are the schema defaults
    toml_of = {float: NUM, int: int, bool: bool, str: str}
    built = Config(**{n: cls() for n, cls in SECTIONS.items()})
    for dotted, f in KEYS:
        *owner, key = dotted.split(".")
        value = _get(built, dotted)
        assert value == f.default or (f.type is list and list(value) == f.default), dotted
        cls = type(_get(built, ".".join(owner)))
        hint = typing.get_type_hints(cls)[key]
        if f.default is None:  # an optional key: ``float | None``
            assert type(None) in typing.get_args(hint), dotted
            hint = next(t for t in typing.get_args(hint) if t is not type(None))
        assert f.type == (list if typing.get_origin(hint) is tuple else toml_of[hint]), dotted
    assert built == load_config(None)


def test_known_keys_keep_their_meaning():
    """A few keys pinned by hand: a change to the declarations that moves them fails here."""
    f = SCHEMA["daq"]["min_free_mb"]
    assert (f.type, f.default, f.lo, f.hi, f.unit) == (NUM, 256.0, 0.0, 1e8, "MB")
    f = SCHEMA["trigger"]["menu"]["dimuon"]["ecal_max_gev"]
    assert (f.default, f.lo, f.hi, f.unit) == (60.0, 0.0, 400.0, "GeV")
    assert SCHEMA["trigger"]["menu"]["physics"]["ecal_max_gev"].default == 80.0
    assert SCHEMA["trigger"]["menu"]["beam"]["prescale"].default == 1000
    assert SCHEMA["beam"]["calibration_particle"].choices == ("e-", "pi-", "mu-")
    assert SCHEMA["emulator"]["faults"].type is list and SCHEMA["emulator"]["faults"].default == []
    cfg = load_config(None)
    assert isinstance(cfg.trigger.menu["physics"], EnergyLine) and isinstance(cfg.trigger.menu["beam"], BeamLine)
    assert isinstance(cfg.trigger.menu["random"], RandomLine) and list(cfg.trigger.menu) == list(MENU_LINES)
    assert cfg.daq.min_free_mb == 256.0 and cfg.hv.max_v == 1500.0 and cfg.emulator.faults == ()


@pytest.mark.parametrize("dotted, field", KEYS, ids=[k for k, _ in KEYS])
def test_every_key_loads_into_its_attribute(tmp_path, dotted, field):
    value = _other_value(dotted, field)
    over = _nested(dotted, value)
    if dotted == "endpoints.host":
        over["endpoints"]["zmq_curve"] = True
    p = tmp_path / "c.toml"
    p.write_text(dump_toml(over), encoding="utf-8")
    cfg = load_config(p)
    got = _get(cfg, dotted)
    if field.type is list:  # a list of tables (faults) or of plain values (the beam line)
        got = [dict(x) if isinstance(x, dict) else x for x in got]
    assert got == value
    assert type(_get(cfg, dotted)) is (tuple if field.type is list else type(value))
    expected = load_config(None).to_dict()
    section = expected
    *head, last = dotted.split(".")
    for h in head:
        section = section[h]
    section[last] = value
    if dotted == "endpoints.host":
        expected["endpoints"]["zmq_curve"] = True
    assert cfg.to_dict() == expected  # the other keys kept their defaults
    assert cfg.path == str(p.resolve())


@pytest.mark.parametrize(
    "over, message",
    [
        ({"daq": {"retries": -1}}, "f.toml: key 'daq.retries' = -1 is out of range; allowed: an integer in [0, 20]"),
        (
            {"beam": {"energy_gev": "a"}},
            (
                "f.toml: key 'beam.energy_gev' = 'a' has the wrong type; "
                "allowed: an integer or a number in [1.0, 400.0] GeV"
            ),
        ),
        (
            {"beam": {"calibration_particle": "p+"}},
            "f.toml: key 'beam.calibration_particle' = 'p+' is not allowed; allowed: one of 'e-', 'pi-', 'mu-'",
        ),
        (
            {"trigger": {"menu": {"beam": {"prescale": True}}}},
            "f.toml: key 'trigger.menu.beam.prescale' = True has the wrong type; allowed: an integer in [1, 10000000]",
        ),
        (
            {"daq": {"bogus": 1}},
            (
                "f.toml: unknown key 'daq.bogus'; known keys here: calibration_mode, chunk_records, heartbeat_s, "
                "lock_wait_s, max_events_per_spill, min_free_mb, poll_interval_s, record_truth, retries, "
                "sample_waveforms, spill_timeout_s, timeout_ms, visa_library"
            ),
        ),
        ({"hv": {"min_v": 900.0, "max_v": 800.0}}, "f.toml: hv.min_v = 900.0 is above hv.max_v = 800.0"),
        (
            {"trigger": {"menu": {"dimuon": {"ps_min_gev": 70.0}}}},
            "f.toml: trigger.menu.dimuon: ps_min_gev = 70.0 must be below ecal_max_gev = 60.0",
        ),
        ({"trigger": {"menu": {n: {"enabled": False} for n in MENU_LINES}}}, "f.toml: trigger.menu enables no trigger"),
        ({"emulator": {"faults": {}}}, "f.toml: key 'emulator.faults' = {} has the wrong type; allowed: a list"),
        (
            {"spill": {"length_s": float("inf")}},
            "f.toml: key 'spill.length_s' = inf is not finite; allowed: an integer or a number in [0.01, 60.0] s",
        ),
        ({"trigger": {"menu": "x"}}, "f.toml: 'trigger.menu' must be a table [trigger.menu], got 'x'"),
    ],
)
def test_invalid_values_are_refused_with_the_validator_text(over, message):
    with pytest.raises(ConfigError) as exc:
        validate(over, "f.toml")
    assert str(exc.value) == message
    with pytest.raises(ConfigError) as exc:  # the same schema guards the typed overrides
        load_config(None).with_overrides(over)
    assert str(exc.value) == message.replace("f.toml", "<overrides>", 1)


def test_round_trip_through_toml(tmp_path):
    cfg = load_config(None).with_overrides(
        {
            "beam": {"particles_per_spill": 1000, "seed": 9},
            "daq": {"min_free_mb": 12.5},
            "trigger": {"menu": {"dimuon": {"enabled": False, "ecal_max_gev": 55.0}}},
            "emulator": {"faults": [{"endpoint": "msadc", "kind": "no_reply", "value": 2}]},
        }
    )
    text = dump_toml(cfg)
    assert tomllib.loads(text) == cfg.to_dict()
    assert validate(tomllib.loads(text)) == cfg
    p = tmp_path / "rt.toml"
    p.write_text(text, encoding="utf-8")
    back = load_config(p)
    assert back == dataclasses.replace(cfg, path=str(p.resolve()))
    assert back.beam.particles_per_spill == 1000 and type(back.beam.particles_per_spill) is int  # kept as written
    assert back.emulator.faults == ({"endpoint": "msadc", "kind": "no_reply", "value": 2},)
    assert pickle.loads(pickle.dumps(back)) == back  # spawned children and dask workers


def test_config_is_frozen():
    cfg = load_config(None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.daq = cfg.daq  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.daq.min_free_mb = 1.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.trigger.menu["beam"].prescale = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.trigger.menu["beam"] = cfg.trigger.menu["physics"]  # type: ignore[index]
    with pytest.raises(TypeError):
        cfg["daq"]["min_free_mb"] = 1.0  # type: ignore[index]
    d = cfg.to_dict()
    d["daq"]["min_free_mb"] = 1.0  # a copy: the config is untouched
    assert cfg.daq.min_free_mb == 256.0


def test_with_overrides_makes_a_new_validated_config(tmp_path):
    p = tmp_path / "base.toml"
    p.write_text('[calibration]\nfile = "calibration.toml"\n[daq]\nretries = 5\n', encoding="utf-8")
    base = load_config(p)
    new = base.with_overrides({"daq": {"min_free_mb": 1e3}, "trigger": {"menu": {"beam": {"prescale": 25}}}})
    assert (new.daq.min_free_mb, new.daq.retries, new.trigger.menu["beam"].prescale) == (1e3, 5, 25)
    assert (base.daq.min_free_mb, base.trigger.menu["beam"].prescale) == (256.0, 1000)
    assert new.path == base.path  # a relative calibration file still resolves the same way
    assert base.with_overrides({}) == base


def test_calibration_file_is_relative_to_the_config_file_also_after_overrides(tmp_path):
    mine = tmp_path / "mine.toml"
    mine.write_text((CONFIG_DIR / "calibration.toml").read_text(encoding="utf-8"), encoding="utf-8")
    p = tmp_path / "c.toml"
    p.write_text('[calibration]\nfile = "mine.toml"\n', encoding="utf-8")
    cfg = load_config(p)
    assert load_calibration(cfg).source == str(mine)
    assert load_calibration(cfg.with_overrides({"hv": {"max_v": 1600.0}})).source == str(mine)
    assert load_calibration(load_config(None)).source == str(CONFIG_DIR / "calibration.toml")


def test_config_is_read_by_attribute_only():
    """No dict access: a config key is read as ``cfg.section.key``; ``to_dict()`` gives the plain dict."""
    cfg = load_config(None)
    assert not isinstance(cfg, Mapping) and not isinstance(cfg.daq, Mapping)
    with pytest.raises(TypeError):
        cfg["daq"]  # type: ignore[index]
    with pytest.raises(TypeError):
        cfg.daq["min_free_mb"]  # type: ignore[index]
    assert as_config(cfg) is cfg and as_config(None) == cfg
