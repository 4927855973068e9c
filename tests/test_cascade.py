"""1D e-m cascade and Tsai primary track length against docs/physics.md section 9 (checks 11-14)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sim_frontend import cascade

E0 = 100.0
N_SHOWERS = 6000


@pytest.fixture(scope="module")
def table() -> cascade.TrackLengthTable:
    return cascade.simulate_cascade(E0, N_SHOWERS, seed=11, e_cut_gev=1.0)


def test_check11_tsai_primary_track_length_above_half_energy() -> None:
    assert cascade.tsai_primary_track_length(E0, E0 / 2) == pytest.approx(0.870, rel=0.01)
    assert cascade.tsai_primary_track_length(E0, E0 / 2, b=1 / math.log(2)) == pytest.approx(0.804, rel=0.01)
    # a 40 X0 target is thick for the primary above E0/2
    assert cascade.tsai_primary_track_length(E0, E0 / 2, 40.0) == pytest.approx(0.870, rel=0.01)


def test_tsai_primary_dtde_at_half_energy() -> None:
    assert cascade.tsai_primary_dtde(E0, 50.0) == pytest.approx(0.0159, rel=0.01)


def test_check12_rossi_approximation_a(table: cascade.TrackLengthTable) -> None:
    centres = table.centres_gev
    window = (centres > 0.05 * E0) & (centres < 0.3 * E0)
    scaled = np.sum(table.track_all_x0[window] * centres[window] ** 2 / E0) / np.sum(table.widths_gev[window])
    assert scaled == pytest.approx(0.437, rel=0.08)


def test_check13_track_length_above_50_gev(table: cascade.TrackLengthTable) -> None:
    assert table.track_length_above(50.0) == pytest.approx(0.92, rel=0.05)
    assert table.track_length_above(50.0, primary_only=True) == pytest.approx(0.85, rel=0.05)
    assert np.all(table.track_primary_x0 <= table.track_all_x0 + 1e-15)


def test_check14_energy_conservation(table: cascade.TrackLengthTable) -> None:
    assert table.max_energy_imbalance() < 1e-9
    assert np.all(table.energy_leaving_gev >= 0) and np.all(table.energy_dropped_gev > 0)


def test_numpy_reference_conserves_energy_and_agrees() -> None:
    reference = cascade.simulate_cascade_numpy(E0, 3000, seed=5)
    assert reference.max_energy_imbalance() < 1e-9
    fast = cascade.simulate_cascade(E0, 3000, seed=5)
    assert reference.track_length_above(50.0) == pytest.approx(fast.track_length_above(50.0), rel=0.05)
    assert reference.track_all_x0.sum() == pytest.approx(fast.track_all_x0.sum(), rel=0.03)


def test_reproducible_with_seed() -> None:
    first = cascade.simulate_cascade(E0, 200, seed=3)
    second = cascade.simulate_cascade(E0, 200, seed=3)
    other = cascade.simulate_cascade(E0, 200, seed=4)
    assert np.array_equal(first.track_all_x0, second.track_all_x0)
    assert np.array_equal(first.energy_dropped_gev, second.energy_dropped_gev)
    assert not np.array_equal(first.track_all_x0, other.track_all_x0)


def test_thin_target_lets_energy_leave() -> None:
    thin = cascade.simulate_cascade(E0, 500, seed=2, t_max_x0=2.0)
    assert thin.max_energy_imbalance() < 1e-9
    assert thin.energy_leaving_gev.mean() > 0.3 * E0
    # total charged track length per electron cannot exceed (number of charged particles) x depth;
    # the primary alone <= T
    assert thin.track_primary_x0.sum() <= 2.0 + 1e-12


def test_brems_rate() -> None:
    y_min = 1e-4
    assert cascade.brems_rate_per_x0(y_min) == pytest.approx(
        4 / 3 * math.log(1 / y_min) - 4 / 3 * (1 - y_min) + (1 - y_min**2) / 2
    )
    with pytest.raises(ValueError):
        cascade.brems_rate_per_x0(0.0)


def test_default_edges_have_half_energy_edge() -> None:
    edges = cascade.default_edges(E0, 1.0)
    assert edges[0] == 1.0 and edges[-1] == E0
    assert np.any(np.isclose(edges, 50.0, rtol=0, atol=1e-12))
    assert np.all(np.diff(edges) > 0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"e0_gev": -1.0, "n_showers": 10},
        {"e0_gev": E0, "n_showers": 0},
        {"e0_gev": E0, "n_showers": 10, "e_cut_gev": 0.0},
        {"e0_gev": E0, "n_showers": 10, "t_max_x0": -1.0},
        {"e0_gev": E0, "n_showers": 10, "edges_gev": np.array([1.0, 50.0])},
    ],
)
def test_bad_input_raises(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        cascade.simulate_cascade(**kwargs)
    with pytest.raises(ValueError):
        cascade.tsai_primary_track_length(E0, 150.0)
