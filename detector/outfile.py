"""Output files written whole or not at all, and never over a file the writer did not create.

:func:`new_output` hands out a temporary name beside the target (``.<name>.tmp-<pid>``); when the block
ends normally the temporary file is fsync'd and renamed onto the target, on an exception it is removed
and the target is untouched. An existing target is refused unless ``overwrite`` is asked for.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def new_output(path: str | os.PathLike, overwrite: bool = False) -> Iterator[pathlib.Path]:
    """The temporary path to write ``path`` through (see the module docstring). FileExistsError when
    ``path`` exists and ``overwrite`` is false; the parent directory is created if needed."""
    out = pathlib.Path(path)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; not overwritten (ask for it explicitly, e.g. --force)")
    if out.is_dir():
        raise IsADirectoryError(f"{out} is a directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
