"""The shared instrument layer (hv_control/instrument/): error kinds, the retry loop, deferred SIGINT, the
VISA session and the pyvisa-py fast-path adapter with its public-pyvisa fallback, over real sockets
(pyvisa + pyvisa-py against a scripted TCP server)."""

from __future__ import annotations

import os
import select
import signal
import time

import numpy as np
import pytest
from scripted_server import DROP, SILENT, ScriptedCrate, block

from hv_control.caen import HVCommandError, HVProtocolError, HVReplyError
from hv_control.instrument import (
    ErrorKinds,
    InstrumentConnectionError,
    InstrumentError,
    InstrumentProtocolError,
    InstrumentTimeoutError,
    PublicReader,
    SocketReader,
    VisaSession,
    deferred_sigint,
    resource_manager,
    run_with_retries,
)
from hv_control.table import TableBusyError, TableError, TablePositionError, TableTimeoutError
from hv_control.transport import ConnectionLostError, TransportError, TransportTimeoutError
from online.msadc import (
    MSADCBlockError,
    MSADCConfigError,
    MSADCConnectionError,
    MSADCCrateError,
    MSADCError,
    MSADCSpillLost,
    MSADCTimeout,
)


# ------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "cls,kind",
    [
        (TransportTimeoutError, InstrumentTimeoutError),
        (MSADCTimeout, InstrumentTimeoutError),
        (TableTimeoutError, InstrumentTimeoutError),
        (ConnectionLostError, InstrumentConnectionError),
        (MSADCConnectionError, InstrumentConnectionError),
        (HVProtocolError, InstrumentProtocolError),
        (HVCommandError, InstrumentProtocolError),
        (HVReplyError, InstrumentProtocolError),
        (MSADCBlockError, InstrumentProtocolError),
        (MSADCCrateError, InstrumentProtocolError),
        (MSADCSpillLost, InstrumentProtocolError),
        (MSADCConfigError, InstrumentProtocolError),
        (TableBusyError, InstrumentProtocolError),
        (TablePositionError, InstrumentProtocolError),
        (TransportError, InstrumentError),
        (MSADCError, InstrumentError),
        (TableError, InstrumentError),
    ],
)
def test_every_driver_error_derives_from_its_kind(cls, kind):
    assert issubclass(cls, kind) and issubclass(cls, InstrumentError)


def test_kinds_keep_the_builtin_meanings_and_the_old_bases():
    assert issubclass(InstrumentTimeoutError, TimeoutError)
    assert issubclass(InstrumentConnectionError, ConnectionError)
    assert issubclass(MSADCError, RuntimeError)  # callers that caught RuntimeError still do
    assert issubclass(TableTimeoutError, TimeoutError)
    err = MSADCCrateError("SPIL:SEL 3", [(-230, "gone")])
    assert err.codes == [-230] and "gone" in str(err)  # one-message constructors survive OSError bases


def test_error_kinds_refuse_classes_of_the_wrong_kind():
    with pytest.raises(TypeError, match="timeout"):
        ErrorKinds(timeout=MSADCConnectionError)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="protocol"):
        ErrorKinds(protocol=ValueError)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- retries
class Flaky:
    """Fails with the given errors in turn, then returns 'ok'; records every call."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def test_retry_recovers_before_each_retry_and_reports_each_failure():
    fn = Flaky(InstrumentTimeoutError("t"), InstrumentConnectionError("c"))
    recovered: list[int] = []
    failed: list[tuple[str, int]] = []
    got = run_with_retries(
        fn,
        retries=3,
        retryable=(InstrumentTimeoutError, InstrumentConnectionError),
        recover=recovered.append,
        on_failure=lambda e, n: failed.append((str(e), n)),
    )
    assert got == "ok" and fn.calls == 3
    assert recovered == [1, 2]
    assert failed == [("t", 0), ("c", 1)]


def test_retry_raises_the_last_error_or_its_replacement_when_exhausted():
    fn = Flaky(*[InstrumentTimeoutError(f"t{i}") for i in range(5)])
    with pytest.raises(TransportTimeoutError, match="attempt 3"):
        run_with_retries(
            fn,
            retries=2,
            retryable=(InstrumentTimeoutError,),
            on_failure=lambda e, n: TransportTimeoutError(f"{e}: attempt {n + 1}"),
        )
    assert fn.calls == 3
    fn = Flaky(InstrumentTimeoutError("only"))
    with pytest.raises(InstrumentTimeoutError, match="only"):
        run_with_retries(fn, retries=0, retryable=(InstrumentTimeoutError,))
    assert fn.calls == 1


def test_retry_lets_other_errors_through_at_once():
    fn = Flaky(MSADCCrateError("x", [(-222, "range")]))
    recovered: list[int] = []
    with pytest.raises(MSADCCrateError):
        run_with_retries(fn, retries=3, retryable=(MSADCTimeout,), recover=recovered.append)
    assert fn.calls == 1 and recovered == []
    with pytest.raises(ValueError):
        run_with_retries(fn, retries=-1, retryable=(MSADCTimeout,))


def test_a_failed_recovery_counts_as_a_failed_attempt():
    fn = Flaky(InstrumentTimeoutError("t"))
    recover = Flaky(InstrumentConnectionError("reconnect failed"))  # the first reconnect fails
    failures: list[tuple[type, int]] = []
    got = run_with_retries(
        fn,
        retries=2,
        retryable=(InstrumentError,),
        recover=lambda n: recover(),
        on_failure=lambda e, n: failures.append((type(e), n)),
    )
    assert got == "ok"
    assert failures == [(InstrumentTimeoutError, 0), (InstrumentConnectionError, 1)]
    assert recover.calls == 2 and fn.calls == 2  # attempt 1 never ran


def test_sigint_is_deferred_until_the_transaction_ends():
    got: list[int] = []
    old = signal.signal(signal.SIGINT, lambda s, f: got.append(s))
    try:
        with deferred_sigint():
            os.kill(os.getpid(), signal.SIGINT)
            deadline = time.monotonic() + 0.05
            while time.monotonic() < deadline:  # give the signal every chance to be (wrongly) delivered
                pass
            assert got == []
        assert got == [signal.SIGINT]
    finally:
        signal.signal(signal.SIGINT, old)


# --------------------------------------------------------------------------------- VISA session
class CrateTimeout(InstrumentTimeoutError):
    pass


class CrateLost(InstrumentConnectionError):
    pass


KINDS = ErrorKinds(timeout=CrateTimeout, connection=CrateLost)


def _session(server: ScriptedCrate, fast: bool, timeout_s: float = 2.0) -> VisaSession:
    s = VisaSession(server.resource, fast=fast, kinds=KINDS)
    s.open(timeout_s=timeout_s, open_timeout_s=2.0)
    return s


def _exchange(fast: bool, payload: bytes) -> tuple[bool, list[bytes], int]:
    """One request answered by a line, a binary block and another line in one send (so that the block
    starts in bytes pyvisa-py may already hold); returns what the session read."""
    reply = b"HELLO,1.5\r\n" + block(payload) + b"AFTER\n"
    server = ScriptedCrate([(b"Q\n", reply), (b"Z\n", b"LAST\n")])
    s = _session(server, fast)
    try:
        s.write(b"Q\n")
        first = s.read_line(2.0, "Q")
        head = bytearray(2)
        s.read_into(memoryview(head), 2.0, "Q")
        digits = bytearray(int(head[1:2]))
        s.read_into(memoryview(digits), 2.0, "Q")
        data = bytearray(int(digits))
        s.read_into(memoryview(data), 2.0, "Q")
        term = bytearray(1)
        s.read_into(memoryview(term), 2.0, "Q")
        after = s.read_line(2.0, "Q")
        s.write(b"Z\n")
        last = s.read_line(2.0, "Z")
        taken = s.reader.socket_bytes if isinstance(s.reader, SocketReader) else -1
        was_fast = s.fast
    finally:
        s.close()
    server.check()
    server.close()
    assert taken in (-1, len(reply) + 5)
    return was_fast, [first, bytes(head + digits), bytes(data), bytes(term), after, last], taken


def test_fast_path_is_taken_when_available_and_the_forced_fallback_reads_the_same_bytes():
    payload = np.random.default_rng(7).integers(0, 256, 3 << 20, dtype=np.uint8).tobytes()  # several recv
    fast, got_fast, taken = _exchange(True, payload)
    slow, got_slow, _ = _exchange(False, payload)
    assert fast is True and slow is False
    assert taken > len(payload)  # the bytes came through the fast reader's own socket reads
    assert got_fast == got_slow
    assert got_fast[0] == b"HELLO,1.5\r" and got_fast[2] == payload and got_fast[3:] == [b"\n", b"AFTER", b"LAST"]


def test_fallback_is_chosen_where_pyvisa_py_internals_are_missing():
    # an ASRL resource over socket:// is a pyvisa-py session without a raw socket: public calls only
    server = ScriptedCrate([(b"Q\n", b"A\n")])
    s = VisaSession(f"ASRLsocket://127.0.0.1:{server.port}::INSTR", fast=True, kinds=KINDS)
    s.open(timeout_s=2.0)
    try:
        assert s.fast is False and isinstance(s.reader, PublicReader)
        s.write(b"Q\n")
        assert s.read_line(2.0, "Q") == b"A"
    finally:
        s.close()
    server.check()
    assert SocketReader.attach(object(), "not a resource") is None


@pytest.mark.parametrize("fast", [True, False])
def test_silence_raises_the_drivers_timeout_kind(fast):
    server = ScriptedCrate([(b"Q\n", SILENT), (b"R\n", b"12")])
    s = _session(server, fast, timeout_s=0.2)
    try:
        s.write(b"Q\n")
        t0 = time.monotonic()
        with pytest.raises(CrateTimeout, match="Q"):
            s.read_line(0.2, "Q")
        assert time.monotonic() - t0 < 1.5
        s.write(b"R\n")
        buf = bytearray(4)
        with pytest.raises(CrateTimeout, match="R"):  # a block cut short: 2 of 4 bytes, then nothing
            s.read_into(memoryview(buf), 0.2, "R")
    finally:
        s.close()
    server.check()


@pytest.mark.parametrize("fast", [True, False])
def test_a_dropped_connection_raises_the_drivers_kind(fast):
    server = ScriptedCrate([(b"Q\n", DROP)])
    s = _session(server, fast, timeout_s=1.0)
    try:
        s.write(b"Q\n")
        t0 = time.monotonic()
        with pytest.raises((CrateLost, CrateTimeout)) as ei:
            s.read_line(1.0, "Q")
        if fast:  # the fast path sees the EOF at once
            assert isinstance(ei.value, CrateLost) and time.monotonic() - t0 < 0.9
    finally:
        s.close()
    server.check()


def test_closed_session_raises_the_connection_kind():
    s = VisaSession("TCPIP::127.0.0.1::9::SOCKET", kinds=KINDS)
    with pytest.raises(CrateLost):
        s.write(b"Q\n")
    with pytest.raises(CrateLost):
        s.read_line(0.1, "Q")
    with pytest.raises(CrateLost, match="cannot open"):
        VisaSession("NOT-A-VISA-NAME", kinds=KINDS).open(timeout_s=0.2, open_timeout_s=0.2)


def test_discard_input_drops_stale_bytes_on_the_fast_path():
    server = ScriptedCrate([(b"A\n", b"STALE1\nSTALE2\n"), (b"B\n", b"FRESH\n")])
    s = _session(server, fast=True)
    try:
        s.write(b"A\n")
        assert s.read_line(2.0, "A") == b"STALE1"
        reader = s.reader
        assert isinstance(reader, SocketReader)
        if b"STALE2" not in reader._pending():  # wait for the rest to arrive on the socket
            assert select.select([reader.sock], [], [], 5.0)[0]
        s.discard_input()
        s.write(b"B\n")
        assert s.read_line(2.0, "B") == b"FRESH"
    finally:
        s.close()
    server.check()


def test_one_resource_manager_outlives_its_sessions():
    a = ScriptedCrate([])
    b = ScriptedCrate([(b"Q\n", b"2\n")])
    rm = resource_manager()
    sa, sb = _session(a, True), _session(b, False)
    sa.close()  # closes its resource only (pymeasure #894)
    assert resource_manager() is rm
    _ = rm.session  # still open: raises InvalidSession otherwise
    sb.write(b"Q\n")
    assert sb.read_line(1.0, "Q") == b"2"
    sb.close()
    a.check()
    b.check()
