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

Numba writes a function's cache entry without any lock between processes: it reads the function's index,
picks the first free data file number, writes the index, then the data file (each file atomically, by
rename). Two processes saving two signatures of one function at the same time (the kernel warm-up of
``tasks.py``, two pytest workers, the DAQ and the emulator starting together, Dask workers) can both pick
number 1, and the index of one may end up naming the data file of the other: every process that loads that
entry later runs machine code compiled for other argument types and crashes (numba issue 4807, segfaults of a
cache generated in parallel; issue 10128 is a race between a gufunc's two entries, and the project has no
gufuncs).
:func:`install_entry_locks` makes numba's reads and writes of one function's entry hold an exclusive
``flock`` on a lock file beside that function's index (:func:`entry_lock`), so that they take turns per
function. Compilation itself needs no lock: processes compile in parallel, and only the few milliseconds of
reading or writing the same function's files are serialised. (Until 2026-12-06 one lock file held numba's
whole compiler lock across processes, so that only one process at a time could compile anything.)

Cache entries written by different processes can also clash by symbol name (issue 14; numba 0.68, the cause
of the ``tracking._reco_kernel`` entries that segfaulted every process loading them; numba issue 10486, open,
where the same workaround is discussed). Numba names a compiled
function by its qualified name, its argument types and a per-process counter (``FunctionIdentity``'s unique
id, the ``[abi:v<id>]`` tag of the mangled name), and it keeps the callees linked into a cached object as
weak (``linkonce_odr``) definitions. Two functions with the same name and argument types but different code
exist: numba's sort and argsort are both ``make_quicksort_impl.<locals>.run_quicksort1(array(float64))``
(``buf.sort()`` in ``sim_frontend.beamline._sr_sample``, ``np.argsort`` in ``detector.tracking._fit_view``);
only the counter tells them apart, and it counts from 1 in every process. When the two were compiled in two
processes whose counters stood at the same value there (a matter of what each had compiled before), their
symbols were equal, and the JIT linker of a process that loaded both entries bound the tracker's call to the
weak symbol defined first: the sort, which returns the sorted array instead of the index array, so the
tracker read outside its arrays (loaded the other way round, ``_sr_sample``'s sort ran the argsort and left
the synchrotron-radiation quantiles unsorted, silently). :func:`install_process_unique_ids` starts the counter
of every process (and of a forked child) at its own random block, so no two processes can name two functions
alike (the names within a process stay unique as before), whatever each compiled before. Entries written
before this (small ids) are not in the keyed directory (this file is part of the key); a cache directory set
by the user may still hold them.

Both are installed by :func:`numba_init`, numba's ``init`` extension entry point (pyproject
``[project.entry-points.numba_extensions]``): numba runs it before it compiles anything, in every process of
the installed project.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import itertools
import os
import secrets
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

#: the packages whose functions, constants and intrinsics jitted code inlines across modules (hashed
#: together; a jitted function elsewhere, e.g. in offline/events.py, only inlines from these)
JIT_PACKAGES = ("detector", "trigger", "sim_frontend")
ROOT = Path(__file__).resolve().parent.parent
#: environment marker: NUMBA_CACHE_DIR was set by configure() (of the checkout it names), not by the user
MARK = "NA64_HIL_JIT_CACHE_OF"
LOCK_SUFFIX = ".lock"  #: a function's lock file is its index file's path with this appended (:func:`entry_lock`)
#: a process numbers the functions numba compiles within its own block of 2**UID_BLOCK_BITS ids, one of
#: 2**UID_BLOCKS_BITS blocks drawn at random (:func:`install_process_unique_ids`)
UID_BLOCK_BITS = 24
UID_BLOCKS_BITS = 39


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
        numba_init()
    if cache_root.is_dir():
        for old in cache_root.iterdir():
            if str(old) != cache_dir and old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
    return cache_dir


@contextlib.contextmanager
def entry_lock(index_path: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the lock file of the cache entry whose index is ``index_path`` (created
    beside it if needed) for the duration of the block; waits, without a timeout, while another process holds
    it (a holder only reads or writes two small files)."""
    os.makedirs(os.path.dirname(index_path), exist_ok=True)  # numba may read an entry before it made the directory
    fd = os.open(index_path + LOCK_SUFFIX, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the flock


def install_entry_locks() -> None:
    """Make numba's reads and writes of a function's cache entry (``IndexDataCacheFile.load``, ``save`` and
    ``flush``: the index and the data file together) hold that function's :func:`entry_lock` (module
    docstring). Idempotent; within a process numba's own compiler lock already serialises them."""
    from numba.core import caching

    cls: Any = caching.IndexDataCacheFile
    if getattr(cls, "_na64_entry_locks", False):
        return

    def locked(method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def under_lock(self: Any, *args: Any) -> Any:
            with entry_lock(self._index_path):
                return method(self, *args)

        return under_lock

    for name in ("load", "save", "flush"):
        setattr(cls, name, locked(getattr(cls, name)))
    cls._na64_entry_locks = True


def install_process_unique_ids() -> None:
    """Start numba's counter of compiled functions (``FunctionIdentity``'s unique id, part of every mangled
    symbol name) at a random block of its own in this process: functions compiled in two processes get
    different symbol names, so weak definitions of two different functions in cache entries written by two
    processes cannot bind to each other (module docstring). Ids already handed out in this process stay
    below the block (it starts at 2**UID_BLOCK_BITS or higher), so names within the process stay unique.
    A forked child draws a block of its own (it would otherwise go on counting like its parent). Idempotent."""
    from numba.core import bytecode

    cls: Any = bytecode.FunctionIdentity
    if getattr(cls, "_na64_unique_ids", False):
        return

    def new_block() -> None:
        cls._unique_ids = itertools.count((1 + secrets.randbits(UID_BLOCKS_BITS)) << UID_BLOCK_BITS)

    new_block()
    os.register_at_fork(after_in_child=new_block)
    cls._na64_unique_ids = True


def numba_init() -> None:
    """numba's ``init`` extension entry point (pyproject): the per-process function ids and the per-function
    cache entry locks (module docstring)."""
    install_process_unique_ids()
    install_entry_locks()
