"""Energy trigger lines declared in config only: a third line (and the most a menu can hold) goes through
the normal loader and validator, gets the next trigger bit and its own scalers, and the numba kernels
(waveform and amplitude entries, serial, parallel, chunked) equal the numpy reference on it."""

from __future__ import annotations

import numpy as np
import pytest

from detector.config import ConfigError, load_config, validate
from detector.records import MAX_TRIGGERS, TRIGGER_BITS
from trigger import kernels as K
from trigger import reference as R
from trigger.menu import SCALER_KEYS, MenuError, TriggerMenu

HIGHPS = """
[trigger.menu.highps]
kind = "energy"
prescale = 3
ps_min_gev = 2.0
ps_max_gev = 6.0
ecal_min_gev = 20.0
ecal_max_gev = 95.0
veto = false
"""


@pytest.fixture(scope="module")
def menu(tmp_path_factory) -> TriggerMenu:
    path = tmp_path_factory.mktemp("cfg") / "lines.toml"
    path.write_text(HIGHPS)
    return TriggerMenu.from_config(load_config(path))


@pytest.fixture(scope="module")
def spill(menu: TriggerMenu) -> tuple[np.ndarray, np.ndarray]:
    return R.electron_spill(menu, 6000, seed=11, low_ecal_fraction=0.5)  # six blocks


def test_line_from_config_gets_the_next_bit_and_its_scalers(menu: TriggerMenu) -> None:
    assert menu.trigger_names == ("physics", "beam", "random", "dimuon", "highps")
    assert menu.trigger_bits == {**TRIGGER_BITS, "highps": 16}
    assert menu.scaler_keys[:-1] == SCALER_KEYS[:-1] + ("highps_raw", "highps_accepted")
    line = dict(menu.further_lines)["highps"]
    assert (line.prescale, line.ps_max_gev, line.ecal_min_gev, line.veto) == (3, 6.0, 20.0, False)
    assert TriggerMenu.from_dict(menu.to_dict()) == menu
    assert TriggerMenu.from_config().trigger_names == tuple(TRIGGER_BITS)  # the default menu is unchanged


def test_third_line_kernels_equal_reference(menu: TriggerMenu, spill: tuple[np.ndarray, np.ndarray]) -> None:
    prims, tau = spill
    ref = R.waveform_trigger(menu, prims, tau)
    # the line's own numbers, computed here from the reconstruction: PiSi (no veto), 2 < E_PS < 6 GeV,
    # 20 < E_ECAL < 95 GeV, every third accepted
    a, t = R.reconstruct_trigger_channels(menu, prims)
    a64, t64 = a.astype(np.float64), t.astype(np.float64)
    win = np.array([menu.counter_window_ns(c) for c in range(3)])
    pisi = ((a64[:, :3] >= menu.counter_threshold_adc) & (t64[:, :3] >= win[:, 0]) & (t64[:, :3] <= win[:, 1])).all(1)
    e_ps, e_ec = a64[:, 4] * menu.gev_per_count[4], a64[:, 5] * menu.gev_per_count[5]
    raw = pisi & (e_ps > 2.0) & (e_ps < 6.0) & (e_ec > 20.0) & (e_ec < 95.0)
    assert ref.scalers["highps_raw"] == raw.sum() > 30
    assert ref.scalers["highps_accepted"] == raw.sum() // 3
    fired = ref.accepted[(ref.mask & 16) != 0]
    assert np.array_equal(fired, np.flatnonzero(raw)[2::3])
    for res in (
        K.trigger_waveforms(menu, prims, tau),
        K.trigger_waveforms(menu, prims, tau, parallel=True),
        K.trigger_amplitudes(menu, np.asfortranarray(a), np.asfortranarray(t), tau),
        K.trigger_amplitudes(menu, a, t, tau, parallel=True),
    ):
        assert res.same_as(ref), res.difference(ref)
        assert res.mask.dtype == np.uint8
    st = K.SpillTrigger(menu)
    for s in range(0, tau.size, 1500):
        st.process(prims[s : s + 1500], tau[s : s + 1500], s)
    res = st.finish()
    assert res.same_as(ref), res.difference(ref)
    assert res.triggers()["highps"] == {"raw": int(raw.sum()), "accepted": int(raw.sum()) // 3}


def test_a_full_menu_spans_two_bit_planes(spill: tuple[np.ndarray, np.ndarray]) -> None:
    """MAX_TRIGGERS - 4 further lines: 6 energy lines, 12 raw bits, two uint8 planes in the kernels."""
    n_further = MAX_TRIGGERS - len(TRIGGER_BITS)
    lines = {
        f"l{k}": {
            "kind": "energy",
            "prescale": k + 1,
            "ps_min_gev": 0.2 * k,
            "ecal_max_gev": 100.0 - 10 * k,
            "veto": k % 2 == 0,
        }
        for k in range(n_further)
    }
    menu = TriggerMenu.from_config(validate({"trigger": {"menu": {**lines, "dimuon": {"prescale": 2}}}}))
    assert [int(menu.trigger_bits[n]) for n in lines] == [16, 32, 64, 128]
    prims, tau = spill
    ref = R.waveform_trigger(menu, prims, tau)
    assert all(ref.scalers[f"{n}_accepted"] > 0 for n in lines)
    assert K.trigger_waveforms(menu, prims, tau).same_as(ref)
    a, t = R.reconstruct_trigger_channels(menu, prims)
    res = K.trigger_amplitudes(menu, np.asfortranarray(a), np.asfortranarray(t), tau)
    assert res.same_as(ref), res.difference(ref)
    with pytest.raises(MenuError, match="holds 8"):
        TriggerMenu.from_config(validate({"trigger": {"menu": {**lines, "one_more": {"kind": "energy"}}}}))


def test_bad_lines_refused() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'trigger\.menu\.muon'.*kind"):
        validate({"trigger": {"menu": {"muon": {"prescale": 2}}}})
    with pytest.raises(ConfigError, match="must be below"):
        validate({"trigger": {"menu": {"muon": {"kind": "energy", "ps_min_gev": 90.0, "ecal_max_gev": 50.0}}}})
    with pytest.raises(ConfigError, match=r"unknown key 'trigger\.menu\.muon\.ps_max'"):
        validate({"trigger": {"menu": {"muon": {"kind": "energy", "ps_max": 3.0}}}})
    with pytest.raises(MenuError, match="never fire"):
        TriggerMenu.from_config(
            validate({"trigger": {"menu": {"muon": {"kind": "energy", "ps_min_gev": 3.0, "ps_max_gev": 2.0}}}})
        )


def test_menus_with_further_lines_share_one_kernel_record_type(menu: TriggerMenu) -> None:
    """numba compiles a kernel per numba type of its parameter record: every menu with further lines (one
    to the most a menu can hold) packs to the same record type, padded with disabled lines that have no
    mask bit, and the default menu keeps its own two-line record (one bit plane)."""
    import numba as nb

    from trigger.params import MAX_LINES, kernel_lines, n_planes, pack

    base = TriggerMenu()
    line = dict(menu.further_lines)["highps"]
    menus = [base.replace(further_lines=tuple((f"x{k}", line) for k in range(n))) for n in range(1, MAX_LINES - 1)]
    types = {nb.typeof(pack(m)) for m in menus}
    assert len(types) == 1 and nb.typeof(pack(base)) not in types
    assert {kernel_lines(m) for m in menus} == {MAX_LINES} and kernel_lines(base) == 2
    assert n_planes(base) == 1 and {n_planes(m) for m in menus} == {2}
    lines = pack(menus[0])[0]["lines"]  # physics, dimuon, x0, then the padding
    assert lines["enabled"].tolist() == [int(t.enabled) for _, t in menus[0].energy_lines] + [0, 0, 0]
    assert lines["mask"].tolist() == [int(menus[0].trigger_bits[n]) for n, _ in menus[0].energy_lines] + [0, 0, 0]
