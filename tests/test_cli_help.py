"""Every console script is installed and explains itself with --help."""

import pathlib
import subprocess
import sys

import pytest

BIN = pathlib.Path(sys.executable).parent
SCRIPTS = {
    "na64-emulator": ["MSADC", "HV", "--endpoints-file"],
    "na64-daq": ["run"],
    "na64-monitor": ["--replay", "--screenshot"],
    "hv-tune": ["--logbook", "--dry-run", "--resume"],
    "ecal-calib": ["--out", "--report", "--cells", "--dry-run", "--resume"],
    "na64-offline": ["yields", "limits", "select"],
}


@pytest.mark.parametrize("script, words", sorted(SCRIPTS.items()))
def test_console_script_answers_help(script, words):
    exe = BIN / script
    assert exe.exists(), f"{script} is not installed in {BIN} (pip install -e .)"
    proc = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage:")
    for w in words:
        assert w in proc.stdout, f"{script} --help does not mention {w}"
