"""The instrument layer shared by every driver: the HV mainframe and HCAL table drivers
(``hv_control.caen``, ``hv_control.table`` over ``hv_control.transport``) and the MSADC crate driver
(``online.msadc``).

What lives here, once:

- :mod:`.errors`: the error hierarchy (:class:`InstrumentError` and its timeout / connection / protocol
  kinds), from which every driver's own error types derive;
- :mod:`.transaction`: the retry loop (:func:`run_with_retries`: recover - e.g. reconnect - and retry a
  failed transaction a bounded number of times) and :func:`deferred_sigint` (a write/read pair is never
  split by Ctrl-C);
- :mod:`.visa`: the process-wide pyvisa ResourceManager and :class:`VisaSession` (open/close with
  half-open clean-up, raw writes, reads that each name their timeout);
- :mod:`.readers`: the one adapter around pyvisa-py's internals (the socket fast path) with its
  fallback to public pyvisa calls.

Why here, in ``hv_control``: the package arrows (docs/architecture.md) let ``online`` import
``hv_control`` and ``detector``, let ``hv_control`` import only ``detector``, and keep ``detector`` free
of anything but numpy, numba and h5py. A layer used by drivers in both ``hv_control`` and ``online``
must therefore sit in ``hv_control`` (the lowest package that needs it and may depend on pyvisa and
pyserial); ``online`` cannot hold it (``hv_control`` may not import ``online``), ``detector`` may not
depend on pyvisa, and a new top-level package would add package arrows. ``hv_control`` is also the
package that owns slow-control instruments already.
"""

from __future__ import annotations

from .errors import (
    ErrorKinds,
    InstrumentConnectionError,
    InstrumentError,
    InstrumentProtocolError,
    InstrumentTimeoutError,
)
from .readers import ByteReader, PublicReader, SocketReader, reader_for
from .transaction import deferred_sigint, run_with_retries
from .visa import VisaSession, resource_manager

__all__ = [
    "ByteReader",
    "ErrorKinds",
    "InstrumentConnectionError",
    "InstrumentError",
    "InstrumentProtocolError",
    "InstrumentTimeoutError",
    "PublicReader",
    "SocketReader",
    "VisaSession",
    "deferred_sigint",
    "reader_for",
    "resource_manager",
    "run_with_retries",
]
