"""The error hierarchy of every instrument driver.

:class:`InstrumentError` is the base; each failure has one of three kinds, and every driver's own error
types derive from the kind they mean, so a caller can catch either the driver's type or the kind:

- :class:`InstrumentTimeoutError` (also a builtin :class:`TimeoutError`): no (complete) reply arrived
  before the deadline;
- :class:`InstrumentConnectionError` (also a builtin :class:`ConnectionError`): the instrument could not
  be reached, or the connection dropped and could not be re-established;
- :class:`InstrumentProtocolError`: the instrument answered, but refused the request or answered
  something that does not fit it (error reply, malformed block, wrong configuration).

:class:`ErrorKinds` names the classes the transport layer raises for a driver, so that a driver gets its
own types straight from the layer without wrapping every call.
"""

from __future__ import annotations

from dataclasses import dataclass


class InstrumentError(Exception):
    """Base of every instrument driver error."""


class InstrumentTimeoutError(InstrumentError, TimeoutError):
    """No (complete) reply before the deadline."""


class InstrumentConnectionError(InstrumentError, ConnectionError):
    """The instrument could not be reached or the connection was dropped."""


class InstrumentProtocolError(InstrumentError):
    """The instrument refused a request or answered something that does not fit it."""


@dataclass(frozen=True)
class ErrorKinds:
    """The error classes a transport raises for one driver (each built from one message string)."""

    timeout: type[InstrumentTimeoutError] = InstrumentTimeoutError
    connection: type[InstrumentConnectionError] = InstrumentConnectionError
    protocol: type[InstrumentProtocolError] = InstrumentProtocolError

    def __post_init__(self) -> None:
        for name, base in (
            ("timeout", InstrumentTimeoutError),
            ("connection", InstrumentConnectionError),
            ("protocol", InstrumentProtocolError),
        ):
            if not issubclass(getattr(self, name), base):
                raise TypeError(f"ErrorKinds.{name} must derive from {base.__name__}")


DEFAULT_KINDS = ErrorKinds()
