"""Channel map and configuration loading/validation."""

import numpy as np
import pytest

from detector import channels as ch
from detector.config import DEFAULT_CONFIG, ConfigError, load_calibration, load_config, validate


def test_channel_counts_and_ids_are_stable():
    assert ch.N_CHANNELS == 121 and ch.N_CALO == 108
    assert [c.id for c in ch.CHANNELS] == list(range(121))
    assert ch.by_name("ECAL0-0-0").id == 0 and ch.by_name("ECAL1-5-5").id == 71
    assert ch.by_name("HCAL-0-0-0").id == 72 and ch.by_name("HCAL-2-2-3").id == 107
    assert ch.by_name("S0").id == 108 and ch.by_name("ECAL_SUM").id == 120
    assert len({c.name for c in ch.CHANNELS}) == 121


def test_addresses_are_unique():
    msadc = {(c.msadc_board, c.msadc_input) for c in ch.CHANNELS}
    hv = [(c.hv_board, c.hv_channel) for c in ch.CHANNELS if c.hv_board is not None]
    assert len(msadc) == 121 and len(hv) == len(set(hv)) == 119
    assert ch.hv_board_size(0) == 9 and ch.hv_board_size(4) == 18 and ch.hv_board_size(8) == 11
    c = ch.by_hv_address(3, 3 * 2 + 0)
    assert c.name == "HCAL-0-2-3"


def test_logbook_cell_names():
    assert ch.parse_hcal_cell("2-1-3") == (2, 1, 3)
    assert ch.hcal_id(2, 1, 3) == ch.by_name("HCAL-2-1-3").id
    for bad in ("3-1-1", "1-1", "a-b-c", "1-1-4"):
        with pytest.raises(ValueError):
            ch.parse_hcal_cell(bad)


def test_maps_reshape_by_cell():
    vals = np.arange(121, dtype=float)
    e = ch.ecal_map(vals)
    assert e.shape == (2, 6, 6) and e[1, 2, 3] == ch.ecal_id(1, 2, 3)
    h = ch.hcal_map(vals)
    assert h.shape == (4, 3, 3) and h[3, 1, 2] == ch.hcal_id(2, 1, 3)
    assert [ch.CHANNELS[i].name for i in ch.trigger_channel_ids()] == list(ch.TRIGGER_CHANNEL_NAMES)


def test_default_config_file_equals_the_schema_defaults():
    from_file = load_config(DEFAULT_CONFIG)
    builtin = load_config(None)
    assert from_file.path == str(DEFAULT_CONFIG.resolve()) and builtin.path is None
    assert from_file.to_dict() == builtin.to_dict() and from_file != builtin


def write(tmp_path, text, name="c.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    "text, words",
    [
        ("[beam]\nenergy_gev = 'a'\n", ["beam.energy_gev", "wrong type", "a number"]),
        ("[beam]\nenergy_gev = 1000.0\n", ["beam.energy_gev", "out of range", "400.0"]),
        ("[beam]\nenergy = 100.0\n", ["unknown key 'beam.energy'", "energy_gev"]),
        ("[bogus]\nx = 1\n", ["unknown key 'bogus'"]),
        ("[trigger.menu.physics]\nps_min_gev = 90.0\n", ["ps_min_gev", "ecal_max_gev"]),
        ("[hv]\nmax_v = 600.0\nmin_v = 700.0\n", ["hv.min_v", "hv.max_v"]),
        ("[endpoints]\nhost = '0.0.0.0'\n", ["not loopback", "zmq_curve"]),
        ("[spill]\nlength_s = 5.0\nsupercycle_s = 4.0\n", ["length_s", "supercycle_s"]),
        ("[beam\n", ["not valid TOML"]),
        ("[beam]\nenergy_gev = nan\n", ["not finite"]),
        ("[trigger.menu.beam]\nprescale = true\n", ["prescale", "wrong type"]),
    ],
)
def test_bad_config_names_file_key_and_allowed(tmp_path, text, words):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    msg = str(exc.value)
    assert str(p) in msg
    for w in words:
        assert w in msg


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.toml")


def test_partial_config_keeps_defaults(tmp_path):
    cfg = load_config(write(tmp_path, "[beam]\nparticles_per_spill = 1000\n"))
    assert cfg.beam.particles_per_spill == 1000 and cfg.beam.energy_gev == 100.0
    assert validate({}).trigger.menu["physics"].ecal_max_gev == 80.0


def test_default_calibration_loads():
    cal = load_calibration()
    assert cal.gev_per_count.shape == (121,)
    assert cal.hv_set[ch.by_name("HCAL-0-2-3").id] == 942.0  # 2017 logbook
    assert np.all(cal.hv_set <= cal.hv_limit)
    assert cal.gev_per_count[ch.by_name("PS_SUM").id] == 0.008


CAL = """
[gev_per_count]
ecal = 0.03
hcal = 0.03
counter = 5e-6
veto = 5e-6
srd = 5e-5
sum = 0.04
[hv_set]
ecal = 1000.0
hcal = 900.0
counter = 1000.0
veto = 1000.0
srd = 1000.0
sum = 0.0
[hv_limit]
ecal = 1400.0
hcal = LIMIT
counter = 1400.0
veto = 1400.0
srd = 1400.0
sum = 0.0
[pedestal_even]
ecal = 150.0
hcal = 150.0
counter = 150.0
veto = 150.0
srd = 150.0
sum = 150.0
[pedestal_odd]
ecal = 150.0
hcal = 150.0
counter = 150.0
veto = 150.0
srd = 150.0
sum = 150.0
[gamma]
ecal = 7.5
hcal = 7.5
counter = 7.5
veto = 7.5
srd = 7.5
sum = 7.5
[t0_ns]
ecal = 100.0
hcal = 100.0
counter = 100.0
veto = 100.0
srd = 100.0
sum = 100.0
"""


def test_calibration_limit_above_global_max_is_refused(tmp_path):
    p = write(tmp_path, CAL.replace("LIMIT", "1800.0"), "cal.toml")
    with pytest.raises(ConfigError, match=r"above the global hv\.max_v"):
        load_calibration(load_config(None), p)


def test_calibration_set_point_above_its_limit_is_refused(tmp_path):
    p = write(tmp_path, CAL.replace("LIMIT", "850.0"), "cal.toml")
    with pytest.raises(ConfigError, match=r"HCAL-0-0-0.*above its hv_limit"):
        load_calibration(load_config(None), p)


def test_calibration_unknown_channel_and_missing_values(tmp_path):
    p = write(tmp_path, CAL.replace("LIMIT", "1300.0") + "[t0_ns.cells]\nHCAL-9-9-9 = 1.0\n", "cal.toml")
    with pytest.raises(ConfigError, match="unknown channel name 'HCAL-9-9-9'"):
        load_calibration(load_config(None), p)
    p = write(tmp_path, CAL.replace("LIMIT", "1300.0").replace("srd = 5e-5\n", ""), "cal2.toml")
    with pytest.raises(ConfigError, match=r"\[gev_per_count\] gives no value for 3 channel"):
        load_calibration(load_config(None), p)
