"""The numba cache directory is keyed by the sources of the packages whose code jitted functions inline
(detector.jitcache): an edit of an inlined module (e.g. trigger/simd.py) cannot leave stale machine code."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numba

import detector
from detector import jitcache


def _copy_packages(dst: Path) -> None:
    for pkg in jitcache.JIT_PACKAGES:
        shutil.copytree(jitcache.ROOT / pkg, dst / pkg, ignore=shutil.ignore_patterns("__pycache__"))


def test_the_key_follows_every_inlined_source(tmp_path: Path) -> None:
    _copy_packages(tmp_path)
    k0 = jitcache.source_key(tmp_path)
    assert k0 == jitcache.source_key(tmp_path) and len(k0) == 16
    simd = tmp_path / "trigger" / "simd.py"
    simd.write_text(simd.read_text() + "\n# edited\n")
    k1 = jitcache.source_key(tmp_path)
    pulse = tmp_path / "detector" / "pulse.py"
    pulse.write_text(pulse.read_text().replace("\n", "\n\n", 1))
    k2 = jitcache.source_key(tmp_path)
    (tmp_path / "sim_frontend" / "new_module.py").write_text("X = 1\n")
    k3 = jitcache.source_key(tmp_path)
    assert len({k0, k1, k2, k3}) == 4
    (tmp_path / "README.md").write_text("not a source")  # outside the packages: same key
    assert jitcache.source_key(tmp_path) == k3


def test_configure_uses_the_keyed_directory_and_removes_old_keys(tmp_path: Path, monkeypatch) -> None:
    _copy_packages(tmp_path)
    old = tmp_path / ".numba_cache" / "0123456789abcdef"
    old.mkdir(parents=True)
    (old / "trigger_x").mkdir()
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.delenv(jitcache.MARK, raising=False)
    monkeypatch.setattr(numba.config, "CACHE_DIR", numba.config.CACHE_DIR)  # restored after the test
    used = jitcache.configure(tmp_path)
    assert used == str(tmp_path / ".numba_cache" / jitcache.source_key(tmp_path))
    assert used == numba.config.CACHE_DIR and os.environ["NUMBA_CACHE_DIR"] == used  # live and for children
    assert not old.exists()
    # set by configure (another checkout, or sources changed since): recomputed
    assert jitcache.configure(tmp_path) == used
    # set by the user: left alone
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "mine"))
    monkeypatch.delenv(jitcache.MARK)
    numba.config.CACHE_DIR = "unchanged"
    assert jitcache.configure(tmp_path) is None and numba.config.CACHE_DIR == "unchanged"


def test_a_fresh_interpreter_uses_the_current_key_and_detector_does_not_import_numba() -> None:
    assert detector.jitcache is jitcache
    want = str(jitcache.ROOT / ".numba_cache" / jitcache.source_key())
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", jitcache.MARK)}
    code = (
        "import sys, detector.channels; no_numba = 'numba' not in sys.modules; "
        "import numba; print(no_numba, numba.config.CACHE_DIR)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env, cwd=jitcache.ROOT
    )
    assert out.stdout.split() == ["True", want]
