"""The command-line number types (detector/cli_types.py) and the options of the online tools that use them:
NaN, infinity, negative and garbage values are refused by the parser, naming the option."""

from __future__ import annotations

import argparse
import math

import pytest

from detector import cli_types


@pytest.mark.parametrize(
    ("parse", "good", "bad"),
    [
        (cli_types.positive_int, {"1": 1, "2000": 2000}, ["0", "-3", "1.5", "abc", ""]),
        (cli_types.positive_float, {"0.5": 0.5, "4.3e10": 4.3e10}, ["0", "-1", "nan", "inf", "-inf", "abc"]),
        (cli_types.nonnegative_float, {"0": 0.0, "0.12": 0.12}, ["-0.1", "nan", "inf", "abc"]),
        (cli_types.random_seed, {"0": 0, "12345": 12345}, ["-1", "1.0", "abc"]),
    ],
)
def test_types_accept_and_refuse(parse, good, bad) -> None:
    for text, value in good.items():
        assert parse(text) == value
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError) as exc:
            parse(text)
        assert (text or "''") in str(exc.value)  # the message shows what was given ('' for an empty one)


def test_nan_is_never_a_number_here() -> None:
    """NaN fails every comparison, so 'v < 0' checks let it through; these types do not."""
    for parse in (cli_types.positive_float, cli_types.nonnegative_float):
        with pytest.raises(argparse.ArgumentTypeError):
            parse("NaN")
    assert math.isfinite(cli_types.nonnegative_float("1e308"))


@pytest.mark.parametrize("bad", ["nan", "inf", "-1"])
def test_daq_wait_endpoints_refused(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    """--wait-endpoints nan made the deadline NaN: with the file missing, na64-daq waited forever."""
    from online import daq_cli

    with pytest.raises(SystemExit) as exc:
        daq_cli.main(["run", "--endpoints-file", "missing.json", "--out", "out", "--wait-endpoints", bad])
    assert exc.value.code == 2
    assert f"argument --wait-endpoints: expected a number >= 0, got '{bad}'" in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--exit-after", "--replay-interval"])
@pytest.mark.parametrize("bad", ["nan", "-1"])
def test_monitor_times_refused(option: str, bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    """--exit-after nan ended in a traceback (a NaN timer in milliseconds)."""
    from online import monitor_cli

    with pytest.raises(SystemExit) as exc:
        monitor_cli.main(["--synthetic", option, bad])
    assert exc.value.code == 2
    assert f"argument {option}: expected a number >= 0, got '{bad}'" in capsys.readouterr().err
