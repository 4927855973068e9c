"""``na64-offline`` subcommands run in-process with --json output."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from offline import cli


def _run(argv: list[str]) -> int:
    return cli.main(argv)


def test_dimuon_json(tmp_path: Path) -> None:
    out = tmp_path / "dimuon.json"
    assert _run(["dimuon", "--energies", "1,10,100", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert [row["energy_gev"] for row in data] == [1.0, 10.0, 100.0]
    for row, expected in zip(data, (30.2, 334.0, 886.0)):
        assert set(row) == {"energy_gev", "sigma_ub"}
        assert row["sigma_ub"] == pytest.approx(expected, rel=0.01)


def test_dimuon_without_json_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["dimuon", "--energies", "10"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data[0]["sigma_ub"] == pytest.approx(334.0, rel=0.01)


def test_yields_json_layout(tmp_path: Path) -> None:
    out = tmp_path / "yields.json"
    assert _run(["yields", "--masses", "1,16.7,100", "--e0", "100", "--emiss-min", "50", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert set(data) == {"e0_gev", "emiss_min_gev", "model", "yields"}
    assert data["e0_gev"] == 100.0 and data["emiss_min_gev"] == 50.0 and data["model"] == "IWW"
    assert [y["mass_mev"] for y in data["yields"]] == [1.0, 16.7, 100.0]
    assert all(set(y) == {"mass_mev", "yield_per_eot_eps1"} for y in data["yields"])
    values = {y["mass_mev"]: y["yield_per_eot_eps1"] for y in data["yields"]}
    assert values[16.7] == pytest.approx(6.3e-3, rel=0.15)
    assert values[100.0] == pytest.approx(2.6e-4, rel=0.15)


def test_yields_etl_with_spectra(tmp_path: Path) -> None:
    out = tmp_path / "yields_etl.json"
    args = ["yields", "--masses", "16.7", "--etl", "--spectra", "--spectrum-bins", "20", "--json", str(out)]
    assert _run(args) == 0
    data = json.loads(out.read_text())
    assert data["model"] == "ETL"
    assert data["yields"][0]["yield_per_eot_eps1"] == pytest.approx(5.37e-3, rel=0.15)
    spectrum = data["spectra"]["16.7"]
    edges = np.array(spectrum["e_aprime_edges_gev"])
    dn_de = np.array(spectrum["dn_de_per_gev_per_eot_eps1"])
    assert len(edges) == 21 and len(dn_de) == 20
    above = np.sum((dn_de * np.diff(edges))[edges[:-1] >= 50.0])
    assert above == pytest.approx(data["yields"][0]["yield_per_eot_eps1"], rel=0.01)


def test_limits_default_configuration(tmp_path: Path) -> None:
    out = tmp_path / "limits.json"
    plot = tmp_path / "exclusion.png"
    assert _run(["limits", "--masses", "16.7,100", "--json", str(out), "--plot", str(plot)]) == 0
    data = json.loads(out.read_text())
    assert [row["mass_mev"] for row in data] == [16.7, 100.0]
    for row in data:
        assert set(row) == {"mass_mev", "eps_90", "n90", "y90_alphaD_0.5", "y90_alphaD_0.005"}
        assert math.log(10) < row["n90"] < 1.05 * math.log(10)
        assert row["y90_alphaD_0.5"] == pytest.approx(row["eps_90"] ** 2 * 0.5 / 81, rel=1e-9)
    # eps_90 = sqrt(N90 / (4.3e10 * 0.5 * n_A'/eps^2)) with n_A' ~ 6.3e-3 at 16.7 MeV
    assert data[0]["eps_90"] == pytest.approx(math.sqrt(data[0]["n90"] / (4.3e10 * 0.5 * 6.3e-3)), rel=0.08)
    assert plot.stat().st_size > 1000 and (tmp_path / "exclusion_y.png").stat().st_size > 1000


def test_limits_from_runs_file_and_eot_scaling(tmp_path: Path) -> None:
    runs = tmp_path / "runs.json"
    runs.write_text(
        json.dumps(
            {
                "runs": [
                    {"name": "a", "n_eot": 1.0e10, "efficiency": 0.5, "n_obs": 0, "background": 0.05},
                    {"name": "b", "n_eot": 3.3e10, "efficiency": 0.5, "n_obs": 0, "background": 0.07},
                ]
            }
        )
    )
    out_runs, out_default = tmp_path / "runs_limits.json", tmp_path / "default.json"
    assert _run(["limits", "--masses", "20", "--runs", str(runs), "--json", str(out_runs)]) == 0
    assert _run(["limits", "--masses", "20", "--json", str(out_default), "--background-err", "0"]) == 0
    from_runs, default = json.loads(out_runs.read_text())[0], json.loads(out_default.read_text())[0]
    assert from_runs["eps_90"] == pytest.approx(default["eps_90"], rel=1e-9)  # same EOT x efficiency, n_obs = 0
    out_big = tmp_path / "big.json"
    assert _run(["limits", "--masses", "20", "--eot", "1.72e11", "--json", str(out_big)]) == 0
    assert json.loads(out_big.read_text())[0]["eps_90"] == pytest.approx(default["eps_90"] / 2, rel=1e-6)


def test_background_subcommand(tmp_path: Path) -> None:
    sideband = tmp_path / "sideband.npy"
    np.save(sideband, np.random.default_rng(2).exponential(3.0, 3000))
    out = tmp_path / "bkg.json"
    argv = ["background", "--sideband", str(sideband), "--fit-range", "2,12", "--box", "0,1", "--json", str(out)]
    assert _run(argv) == 0
    data = json.loads(out.read_text())
    assert {"n_b", "stat_err", "syst_err", "chi2_ndf", "fit"} <= set(data)
    assert data["n_b"] == pytest.approx(3000 * (1 - math.exp(-1 / 3.0)), rel=0.25)


def test_bad_input_returns_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["yields", "--masses", "16.7", "--emiss-min", "150", "--json", str(tmp_path / "x.json")]) == 2
    assert "missing-energy cut" in capsys.readouterr().err
    assert _run(["background", "--sideband", str(tmp_path / "missing.npy"), "--fit-range", "1,2", "--box", "0,1"]) == 2
    with pytest.raises(SystemExit) as exc:
        _run(["limits", "--masses", "-5"])
    assert exc.value.code == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["limits", "--background", "inf"], "argument --background: expected a number >= 0, got 'inf'"),
        (["limits", "--eot-syst", "nan"], "argument --eot-syst: expected a number >= 0, got 'nan'"),
        (["limits", "--ntoys", "0"], "argument --ntoys: expected an integer >= 1, got 0"),
        (["background", "--sources", "--eot", "nan"], "argument --eot: expected a number > 0, got 'nan'"),
        (["background", "--sources", "--events", "0"], "argument --events: expected an integer >= 1, got 0"),
        (["background", "--bins", "-3"], "argument --bins: expected an integer >= 1, got -3"),
        (["yields", "--spectrum-bins", "0"], "argument --spectrum-bins: expected an integer >= 1, got 0"),
        (["yields", "--e0", "inf"], "argument --e0: expected a number > 0, got 'inf'"),
        (["background", "--fit-range", "1,inf"], "argument --fit-range: expected finite LO < HI, got '1,inf'"),
    ],
)
def test_non_finite_numbers_are_refused_by_the_parser(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """These reached the computation: NaN in the background JSON, the CLs solver failing on NaN."""
    with pytest.raises(SystemExit) as exc:
        _run(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("command", ["dimuon", "yields", "limits", "background"])
def test_each_subcommand_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        _run([command, "--help"])
    assert exc.value.code == 0
    assert "--json" in capsys.readouterr().out


def test_registry_has_every_subcommand_with_help() -> None:
    assert set(cli.SUBCOMMANDS) == {
        "dimuon",
        "yields",
        "limits",
        "background",
        "simulate",
        "select",
        "report",
        "export",
        "efficiency",
        "dimuons",
    }
    for name in cli.SUBCOMMANDS:
        with pytest.raises(SystemExit) as exc:
            cli.main([name, "--help"])
        assert exc.value.code == 0
