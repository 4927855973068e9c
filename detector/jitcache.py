"""Where numba keeps its compiled kernels on disk (``cache=True``).

Numba checks a cached kernel against the source file of the jitted function only, not against the modules
whose functions and intrinsics it inlines (``trigger.kernels`` inlines ``trigger.simd``, ``detector.pulse``
and ``detector.reco``; the simulation kernels inline each other across modules, and freeze their
constants): after such a module
changes, numba would load the stale machine code. So the cache directory is keyed by a hash of the
sources of every package with jitted code (``.numba_cache/<hash>`` in the checkout; older keys are removed).
An explicit ``NUMBA_CACHE_DIR`` in the environment wins. :func:`configure` runs when ``detector`` is
imported, i.e. before any jitted function of the project is defined.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

#: the packages whose functions, constants and intrinsics jitted code inlines across modules (hashed
#: together; a jitted function elsewhere, e.g. in offline/events.py, only inlines from these)
JIT_PACKAGES = ("detector", "trigger", "sim_frontend")
ROOT = Path(__file__).resolve().parent.parent


def source_key(root: Path = ROOT) -> str:
    """Hash (16 hex digits) of the names and contents of the packages' Python sources."""
    h = hashlib.sha256()
    for pkg in JIT_PACKAGES:
        for f in sorted((root / pkg).rglob("*.py")):
            h.update(str(f.relative_to(root)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def configure(root: Path = ROOT) -> str | None:
    """Point numba's cache at ``<root>/.numba_cache/<source key>`` (unless NUMBA_CACHE_DIR is set) and
    remove the directories of other keys. Returns the directory used (None: the environment's)."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return None
    import numba
    cache_root = root / ".numba_cache"
    cache_dir = cache_root / source_key(root)
    numba.config.CACHE_DIR = str(cache_dir)
    if cache_root.is_dir():
        for old in cache_root.iterdir():
            if old != cache_dir and old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
    return str(cache_dir)
