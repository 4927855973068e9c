"""Where numba keeps its compiled kernels on disk (``cache=True``).

Numba checks a cached kernel against the source file of the jitted function only, not against the modules
whose functions and intrinsics it inlines (the trigger kernels inline ``trigger.simd``, ``detector.pulse``
and ``detector.reco``; the simulation kernels inline each other across modules, and freeze their
constants): after such a module changes, numba would load the stale machine code. So the cache directory
is keyed by a hash of the sources of those packages (``.numba_cache/<hash>`` in the checkout; older keys are
removed). :func:`configure` runs when ``detector`` is imported, i.e. before any jitted function of the
project is defined; it sets ``NUMBA_CACHE_DIR`` (inherited by the DAQ and emulator processes) without
importing numba, and numba's live setting if numba is already imported. A ``NUMBA_CACHE_DIR`` set by the
user (not by this module) wins.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

#: the packages whose functions, constants and intrinsics jitted code inlines across modules (hashed
#: together; a jitted function elsewhere, e.g. in offline/events.py, only inlines from these)
JIT_PACKAGES = ("detector", "trigger", "sim_frontend")
ROOT = Path(__file__).resolve().parent.parent
#: environment marker: NUMBA_CACHE_DIR was set by configure() (of the checkout it names), not by the user
MARK = "NA64_HIL_JIT_CACHE_OF"


def source_key(root: Path = ROOT) -> str:
    """Hash (16 hex digits) of the names and contents of the packages' Python sources."""
    h = hashlib.sha256()
    for pkg in JIT_PACKAGES:
        for f in sorted((root / pkg).rglob("*.py")):
            h.update(str(f.relative_to(root)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def configure(root: Path = ROOT) -> str | None:
    """Point numba's cache at ``<root>/.numba_cache/<source key>`` unless the user set NUMBA_CACHE_DIR,
    and remove the directories of other keys. Returns the directory used (None: the user's)."""
    env = os.environ
    if env.get("NUMBA_CACHE_DIR") and not env.get(MARK):
        return None
    cache_root = root / ".numba_cache"
    cache_dir = str(cache_root / source_key(root))
    env["NUMBA_CACHE_DIR"] = cache_dir
    env[MARK] = str(root)
    config = sys.modules.get("numba.core.config")
    if config is not None:  # numba read its environment already
        config.CACHE_DIR = cache_dir  # type: ignore[attr-defined]
    if cache_root.is_dir():
        for old in cache_root.iterdir():
            if str(old) != cache_dir and old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
    return cache_dir
