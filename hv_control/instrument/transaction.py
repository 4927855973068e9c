"""One transaction with an instrument: retried after a recovery, never split by Ctrl-C.

:func:`run_with_retries` is the one retry loop of every driver: the driver says which errors are worth
a retry, what to do before a retry (reconnect, restore state, back off) and how to account for a failure
(counters, incidents, a clearer message); the loop itself is the same for all. :func:`deferred_sigint`
holds back SIGINT while a write/read pair is in progress (QCoDeS does the same), so that Ctrl-C never
leaves a reply unread on the line.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


def run_with_retries(
    attempt: Callable[[], T],
    *,
    retries: int,
    retryable: tuple[type[BaseException], ...],
    recover: Callable[[int], None] | None = None,
    on_failure: Callable[[BaseException, int], BaseException | None] | None = None,
) -> T:
    """Call ``attempt()`` and return its result; after a ``retryable`` error try again, at most
    ``retries`` more times, and then raise the last error.

    ``recover(n)`` runs before the n-th retry (n = 1, 2, ...): reconnect, restore state, back off. A
    ``retryable`` error raised by ``recover`` counts as the failure of that attempt (the next retry
    recovers again). ``on_failure(error, n)`` is told of every retryable failure of attempt n (0 =
    the first) and may return the error to keep in its place (e.g. one naming the request). Any other
    error - and any BaseException such as KeyboardInterrupt - propagates at once.
    """
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries!r}")
    last: BaseException | None = None
    for n in range(retries + 1):
        try:
            if n and recover is not None:
                recover(n)
            return attempt()
        except retryable as exc:
            replaced = on_failure(exc, n) if on_failure is not None else None
            last = replaced if replaced is not None else exc
    assert last is not None
    raise last


@contextlib.contextmanager
def deferred_sigint() -> Iterator[None]:
    """Hold back SIGINT (Ctrl-C) until the block ends, then deliver it (main thread only; elsewhere a
    no-op, as Python delivers signals to the main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[Any] = []
    try:
        old = signal.signal(signal.SIGINT, lambda sig, frame: received.append((sig, frame)))
    except (ValueError, TypeError):  # not in the main interpreter / no signal support
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
        if received and callable(old):
            old(*received[0])
