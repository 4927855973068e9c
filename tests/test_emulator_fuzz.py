"""Fuzz the crate socket of a running ``na64-emulator``: random bytes, SCPI-like text and binary blocks
(well-formed, lying about their length, malformed headers, huge announced lengths). Whatever arrives,
a fresh connection must still get an answer to ``*IDN?``, and connections must not pile up."""

from __future__ import annotations

import socket
import struct
import time

import pytest
from emulator_fixture import start_emulator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

HEADERS = [
    "*IDN?",
    "*RST",
    "*CLS",
    "*OPC?",
    "SYST:ERR?",
    "SYSTem:ERRor:NEXT?",
    "CONF:SAMP",
    "CONF:SAMP?",
    "CONF:LAT",
    "CONF:LAT?",
    "CONF:CHAN?",
    "CONF:TRIG:CHAN?",
    "CONF:SPILL:BUFF?",
    "SPIL:STAT?",
    "SPIL:LIST?",
    "SPIL:SEL",
    "SPIL:SEL?",
    "SPIL:INFO?",
    "SPIL:TRUT?",
    "PRIM:COUN?",
    "PRIM:DATA?",
    "PRIM:TIME?",
    "ACC:DATA",
    "ACC:COUN?",
    "EVT:COUN?",
    "EVT:DATA?",
    "EVT:TRUT?",
    "spil:sel",
    "FOO:BAR?",
    ":SYST:ERR?",
    "*IDN",
    "ACC:DATA?",
]
ARGS = st.one_of(
    st.just(""),
    st.integers(-5, 10**7).map(str),
    st.tuples(st.integers(-3, 30000), st.integers(-3, 300)).map(lambda t: f"{t[0]},{t[1]}"),
    st.text(alphabet="0123456789,.-+eE #;:?abc", max_size=12),
    st.just("1e999"),
    st.just("nan"),
)


@st.composite
def blocks(draw) -> bytes:
    payload = draw(st.binary(max_size=64))
    kind = draw(st.sampled_from(["ok", "short", "long", "bad_n", "bad_len", "huge", "zero"]))
    if kind == "ok":
        n = str(len(payload))
        head = f"#{len(n)}{n}".encode()
    elif kind == "short":
        n = str(len(payload) + draw(st.integers(1, 20)))
        head = f"#{len(n)}{n}".encode()
    elif kind == "long":
        n = str(max(0, len(payload) - draw(st.integers(1, 5))))
        head = f"#{len(n)}{n}".encode()
    elif kind == "bad_n":
        head = b"#" + draw(st.sampled_from([b"A", b"#", b"\n", b" ", b"-"]))
    elif kind == "bad_len":
        head = b"#3" + draw(st.binary(min_size=3, max_size=3))
    elif kind == "huge":
        head = b"#9999999999"
    else:
        head = b"#0"
    cmd = draw(st.sampled_from([b"ACC:DATA ", b"SPIL:SEL ", b"", b"*IDN? "]))
    return cmd + head + payload + draw(st.sampled_from([b"\n", b"", b"\r\n", b";*OPC?\n"]))


TEXT = st.tuples(st.sampled_from(HEADERS), ARGS).map(lambda t: (t[0] + (" " + t[1] if t[1] else "") + "\n").encode())
CHUNK = st.one_of(st.binary(max_size=200), TEXT, blocks(), st.just(b"\n"), st.just(b"SPIL:SEL 0\n"))


#: the crate's idle timeout of an unfinished binary block (the emulator's --block-timeout): every example whose
#: garbage leaves a block open waits it out before its probe is answered, so it is short; a block whose bytes
#: pause longer on a loaded machine is truncated, one more kind of garbage the connection must survive
BLOCK_TIMEOUT_S = 0.05
PROBE = b"\nCONF:LAT 1234.5\nCONF:LAT?\n"
PROBE_REPLY = b"1234.5\n"


@pytest.fixture(scope="module")
def fuzz_emulator(tmp_path_factory):
    handle = start_emulator(
        tmp_path_factory.mktemp("fuzz"),
        {
            "spill": {"length_s": 0.1, "supercycle_s": 0.5},
            "beam": {"particles_per_spill": 2000},
            "emulator": {"spill_buffer": 16},
        },
        ["--block-timeout", str(BLOCK_TIMEOUT_S), "--no-pty"],
    )
    try:
        handle.wait_for_spills(1)
        yield handle
    finally:
        handle.stop()


def _port(handle) -> int:
    return int(handle.endpoints["msadc_port"])


def _read_until(s: socket.socket, marker: bytes, timeout_s: float) -> bool:
    """Read (and discard) replies until ``marker`` ends the data received so far."""
    deadline = time.monotonic() + timeout_s
    tail = b""
    while time.monotonic() < deadline:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = s.recv(1 << 20)
        except TimeoutError:
            return False
        if not chunk:
            raise ConnectionError("the crate closed the connection")
        tail = (tail + chunk)[-64:]
        if tail.endswith(marker):
            return True
    return False


def _idn(port: int, timeout_s: float = 30.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
        s.sendall(b"*IDN?\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
        return buf


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunks=st.lists(CHUNK, min_size=1, max_size=12), select=st.booleans())
def test_crate_survives_anything(fuzz_emulator, chunks, select):
    """Garbage on one connection: the same connection recovers (at the latest after the block timeout),
    and a new connection is served."""
    port = _port(fuzz_emulator)
    with socket.create_connection(("127.0.0.1", port), timeout=30.0) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST on close
        if select:
            s.sendall(b"SPIL:SEL " + fuzz_emulator.state()["last_spill"].__str__().encode() + b"\n")
        for c in chunks:
            s.sendall(c)
        # An unfinished block swallows a probe; it is abandoned after BLOCK_TIMEOUT_S without bytes, which
        # each wait below gives it (a probe reply that is only late is found by a later wait). Re-sent
        # until it is answered, within a generous deadline.
        deadline = time.monotonic() + 60
        while True:
            s.sendall(PROBE)
            if _read_until(s, PROBE_REPLY, 4 * BLOCK_TIMEOUT_S):
                break
            assert time.monotonic() < deadline, "the connection did not resynchronise"
    assert b"MSADC" in _idn(port)


def test_after_fuzzing_the_crate_is_clean(fuzz_emulator):
    port = _port(fuzz_emulator)
    assert _idn(port).startswith(b"NA64-HIL,MSADC-CRATE,")
    deadline = time.monotonic() + 60
    while True:  # every fuzz connection was closed on the server side too
        st_ = fuzz_emulator.state()["msadc_server"]
        if st_["connections"] - st_["disconnects"] == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert st_["connections"] - st_["disconnects"] == 0
    assert fuzz_emulator.control({"cmd": "ping"})["ok"]
    assert "MSADC connection failed" not in fuzz_emulator.log_path.read_text()
    fuzz_emulator.check_alive()
