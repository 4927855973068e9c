"""A small SCPI toolkit for the emulated instruments (docs/protocols.md section 1).

Three transport-free pieces, each testable on its own:

- :class:`ErrorQueue`: the instrument's error/event queue (32 entries; when it is full the newest entry
  is replaced by ``-350,"Queue overflow"``, as IEEE 488.2 / SCPI-99 21.8 prescribe).
- :class:`CommandTable`: maps a program header such as ``SYST:ERR?``, ``system:error?`` or
  ``:SYSTem:ERRor:NEXT?`` to a handler. Commands are declared once in SCPI notation (``SYSTem:ERRor[:NEXT]?``:
  upper case = short form, the whole word = long form, ``[...]`` = optional node); every spelling is
  expanded up front, so matching is one dict look-up.
- :class:`StreamParser`: cuts the received byte stream into commands. Text commands end in ``\\n`` (an
  optional ``\\r`` before it is dropped). A ``#`` before the end of a line starts an IEEE 488.2
  definite-length block ``#<n><len><len bytes>``: exactly ``len`` bytes are taken as the payload (they may
  contain ``\\n``), then the terminator ``\\n`` is expected. Malformed headers, oversize blocks and blocks
  that never complete become :class:`ParseError` items and the parser resynchronises at the next
  line end (see :class:`StreamParser` for the exact rules). Memory is bounded.
- :class:`BinaryReply`: a query reply sent as a definite-length block (header and payload bytes).

Nothing here touches sockets or threads; ``sim_frontend.emu_msadc`` wires it to a TCP server.
"""

from __future__ import annotations

import itertools
import re
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

#: SCPI error codes used by the emulated crate and their standard texts
ERROR_TEXTS: dict[int, str] = {
    0: "No error",
    -100: "Command error",
    -102: "Syntax error",
    -109: "Missing parameter",
    -113: "Undefined header",
    -160: "Block data error",
    -200: "Execution error",
    -221: "Settings conflict",
    -222: "Data out of range",
    -223: "Too much data",
    -230: "Data corrupt or stale",
    -350: "Queue overflow",
}

ERROR_QUEUE_SIZE = 32

# IEEE 488.2 (11.5.1) standard event status register bits
ESR_OPC = 0x01  #: operation complete (*OPC)
ESR_QYE = 0x04  #: query error (-400..-499)
ESR_DDE = 0x08  #: device-dependent error (-300..-399 and positive codes)
ESR_EXE = 0x10  #: execution error (-200..-299)
ESR_CME = 0x20  #: command error (-100..-199)
ESR_PON = 0x80  #: power on (set when the instrument starts; cleared by reading *ESR? or *CLS)
# IEEE 488.2 (11.2) status byte bits (SCPI-99 9.1 adds EAV)
STB_EAV = 0x04  #: error/event queue not empty
STB_MAV = 0x10  #: message available in the output queue
STB_ESB = 0x20  #: event status bit: (*ESR and *ESE) != 0
STB_MSS = 0x40  #: master summary status: (status byte and *SRE) != 0, bit 6 excluded


def esr_bit(code: int) -> int:
    """The standard event status register bit an error of SCPI ``code`` sets (SCPI-99 21.8.x)."""
    if -199 <= code <= -100:
        return ESR_CME
    if -299 <= code <= -200:
        return ESR_EXE
    if -499 <= code <= -400:
        return ESR_QYE
    if code != 0:
        return ESR_DDE  # -300..-399 and device-defined positive codes
    return 0


MAX_DETAIL_CHARS = 160


class ScpiError(Exception):
    """A command failed; ``code`` is an SCPI error number of :data:`ERROR_TEXTS`, ``detail`` says why."""

    def __init__(self, code: int, detail: str = "") -> None:
        super().__init__(f"{code},{ERROR_TEXTS.get(code, 'Error')}" + (f"; {detail}" if detail else ""))
        self.code = int(code)
        self.detail = detail


def format_error(code: int, detail: str = "") -> str:
    """``<code>,"<text>[; <detail>]"`` with the detail made safe for one quoted line."""
    text = ERROR_TEXTS.get(code, "Error")
    if detail:
        clean = "".join(c if (c.isprintable() and c != '"') else "'" if c == '"' else "?" for c in detail)
        text += "; " + clean[:MAX_DETAIL_CHARS]
    return f'{code},"{text}"'


class ErrorQueue:
    """Thread-safe FIFO of SCPI errors, ``size`` entries deep, with the IEEE 488.2 status registers it
    feeds: the standard event status register (``esr``: every error sets its class bit, :func:`esr_bit`),
    its enable register (``ese``) and the service request enable register (``sre``).

    When the queue is full a new error is not stored; instead the newest entry is replaced by ``-350``
    (so the client learns that errors were lost, and the oldest, most informative ones are kept)."""

    def __init__(self, size: int = ERROR_QUEUE_SIZE, power_on: bool = False) -> None:
        if size < 2:
            raise ValueError("an error queue needs at least 2 entries")
        self.size = size
        self._q: deque[str] = deque()
        self._lock = threading.Lock()
        self.total = 0  #: errors ever pushed (for the emulator's state report)
        self.esr = ESR_PON if power_on else 0
        self.ese = 0
        self.sre = 0

    def push(self, code: int, detail: str = "") -> None:
        with self._lock:
            self.total += 1
            self.esr |= esr_bit(code)
            if len(self._q) < self.size:
                self._q.append(format_error(code, detail))
            else:
                self._q[-1] = format_error(-350)
                self.esr |= ESR_DDE

    def set_event(self, bits: int) -> None:
        """Set bits of the standard event status register (e.g. :data:`ESR_OPC`)."""
        with self._lock:
            self.esr |= bits & 0xFF

    def read_esr(self) -> int:
        """``*ESR?``: the standard event status register, cleared by the reading."""
        with self._lock:
            v, self.esr = self.esr, 0
            return v

    def status_byte(self, mav: bool = False) -> int:
        """``*STB?``: EAV (queue not empty), MAV, ESB ((ESR and ESE) != 0) and MSS (any bit enabled by
        ``*SRE``); reading it clears nothing."""
        with self._lock:
            stb = (STB_EAV if self._q else 0) | (STB_MAV if mav else 0) | (STB_ESB if self.esr & self.ese else 0)
            return stb | (STB_MSS if stb & self.sre & ~STB_MSS else 0)

    def clear_status(self) -> None:
        """``*CLS``: the queue and the event register are cleared (the enable registers are kept)."""
        with self._lock:
            self._q.clear()
            self.esr = 0

    def pop(self) -> str:
        """The oldest entry, or ``0,"No error"``."""
        with self._lock:
            return self._q.popleft() if self._q else format_error(0)

    def clear(self) -> None:
        with self._lock:
            self._q.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._q)

    def snapshot(self) -> list[str]:
        with self._lock:
            return list(self._q)


# ------------------------------------------------------------------------------------ headers
_NODE_RE = re.compile(r"^([A-Z0-9]+)([a-z0-9]*)$")


def _node_forms(node: str) -> tuple[str, ...]:
    """Accepted spellings (upper case) of one mnemonic: ``SYSTem`` -> (``SYST``, ``SYSTEM``);
    ``EVT|EVENT`` lists alternatives explicitly (for a short form that is not a prefix of the long one)."""
    forms: list[str] = []
    for alt in node.split("|"):
        m = _NODE_RE.match(alt)
        if not m:
            raise ValueError(f"bad SCPI mnemonic {node!r}")
        short, rest = m.group(1), m.group(2)
        forms += [short] if not rest else [short, short + rest.upper()]
    return tuple(dict.fromkeys(forms))


def expand_pattern(pattern: str) -> list[str]:
    """Every upper-case spelling of a header pattern such as ``SYSTem:ERRor[:NEXT]?`` or ``*IDN?``."""
    query = pattern.endswith("?")
    body = pattern[:-1] if query else pattern
    suffix = "?" if query else ""
    if body.startswith("*"):
        return [body.upper() + suffix]
    # split into (node, optional) pairs: "A:B[:C]:D" -> A, B, [C], D
    nodes: list[tuple[str, bool]] = []
    for part in re.findall(r"\[:?([A-Za-z0-9|]+)\]|:?([A-Za-z0-9|]+)", body):
        opt, req = part
        nodes.append((opt, True) if opt else (req, False))
    choices: list[tuple[str | None, ...]] = []
    for name, optional in nodes:
        forms: tuple[str | None, ...] = _node_forms(name)
        choices.append(forms + ((None,) if optional else ()))
    out = []
    for combo in itertools.product(*choices):
        out.append(":".join(c for c in combo if c is not None) + suffix)
    return out


@dataclass(frozen=True)
class Command:
    """One declared command: its pattern, handler and whether it is a query."""

    pattern: str
    handler: Callable[..., Any]
    query: bool
    block: bool = False  #: takes an IEEE block argument
    data: bool = False  #: a data query (the ``drop`` fault closes the connection at it)


class CommandTable:
    """Header -> :class:`Command`, for every short/long/optional spelling (case-insensitive)."""

    def __init__(self) -> None:
        self._map: dict[str, Command] = {}
        self.commands: list[Command] = []

    def add(self, pattern: str, handler: Callable[..., Any], *, block: bool = False, data: bool = False) -> None:
        cmd = Command(pattern, handler, pattern.endswith("?"), block, data)
        self.commands.append(cmd)
        for spelling in expand_pattern(pattern):
            if spelling in self._map:
                raise ValueError(f"SCPI header {spelling} declared twice ({self._map[spelling].pattern}, {pattern})")
            self._map[spelling] = cmd

    def lookup(self, header: str) -> Command | None:
        """The command of a program header (a leading ``:`` is allowed), or None."""
        h = header.strip().upper()
        if h.startswith(":"):
            h = h[1:]
        return self._map.get(h)


def split_header(text: str) -> tuple[str, str]:
    """``"PRIM:DATA? 0,10"`` -> (``"PRIM:DATA?"``, ``"0,10"``)."""
    text = text.strip()
    for i, c in enumerate(text):
        if c in " \t":
            return text[:i], text[i + 1 :].strip()
    return text, ""


def split_args(args: str) -> list[str]:
    """Comma-separated program data, stripped; ``""`` gives ``[]``."""
    if not args.strip():
        return []
    return [a.strip() for a in args.split(",")]


def parse_int(text: str, name: str) -> int:
    """An integer argument (decimal, optionally written as a float with no fraction, e.g. ``1e3``)."""
    t = text.strip()
    if re.fullmatch(r"[+-]?[0-9]{1,19}", t):
        return int(t)
    try:
        v = float(t)
    except ValueError:
        raise ScpiError(-102, f"{name} must be an integer, got {t[:40]!r}") from None
    if not v.is_integer() or abs(v) > 2**62:
        raise ScpiError(-102, f"{name} must be an integer, got {t[:40]!r}")
    return int(v)


def parse_float(text: str, name: str) -> float:
    t = text.strip()
    try:
        v = float(t)
    except ValueError:
        raise ScpiError(-102, f"{name} must be a number, got {t[:40]!r}") from None
    if v != v or v in (float("inf"), float("-inf")):
        raise ScpiError(-222, f"{name} must be finite")
    return v


# ------------------------------------------------------------------------------------ stream parser
@dataclass(frozen=True)
class Line:
    """A text line (without terminator), possibly several ``;``-separated commands."""

    text: bytes


@dataclass(frozen=True)
class Block:
    """A command whose last argument is a definite-length block: ``head`` is the text before ``#``."""

    head: bytes
    payload: bytes


@dataclass(frozen=True)
class ParseError:
    """The stream was malformed; ``head`` is the command text it belonged to (may be empty)."""

    code: int
    detail: str
    head: bytes = b""


Item = Line | Block | ParseError

_TEXT, _BLOCK, _AFTER_BLOCK, _SKIP_LINE, _DISCARD = range(5)


class StreamParser:
    """Incremental parser of the byte stream received from one client.

    Rules (the wire contract of docs/protocols.md section 1):

    - A line ends at ``\\n``; a ``\\r`` before it is dropped. A line with no ``#`` is a :class:`Line`.
    - A ``#`` before the end of the line starts a block ``#<n><len>``: ``n`` is one digit 1..9 and ``len``
      exactly ``n`` decimal digits. A malformed header (``#0`` indefinite blocks included) gives
      ``-160`` and the rest of the line up to ``\\n`` is discarded.
    - ``len`` above ``max_block`` gives ``-223``; the payload is then counted off without being stored
      and everything up to the following ``\\n`` is discarded.
    - After exactly ``len`` payload bytes a ``\\n`` (or ``\\r\\n``) must follow: the :class:`Block` is emitted.
      If another byte follows, the header lied about the length: ``-160`` and the rest of the line is
      discarded. If nothing follows for ``idle_timeout`` seconds, the block is accepted as it is.
    - If the payload is still incomplete after ``idle_timeout`` seconds without any new byte
      (:meth:`idle`), it was truncated: ``-160`` and everything received for that block is discarded;
      parsing restarts with the next byte that arrives.
    - A line longer than ``max_line`` without ``\\n`` or ``#`` gives ``-100`` and is discarded up to its end.
    """

    def __init__(self, max_line: int = 65536, max_block: int = 128 << 20) -> None:
        self.max_line = max_line
        self.max_block = max_block
        self._buf = bytearray()
        self._mode = _TEXT
        self._head = b""
        self._need = 0
        self._payload = bytearray()
        self._announced = 0

    @property
    def mid_block(self) -> bool:
        """True while a block is incomplete (its payload, or the header digits, still expected)."""
        return self._mode in (_BLOCK, _DISCARD) or (self._mode == _TEXT and self._pending_header())

    @property
    def awaiting_terminator(self) -> bool:
        return self._mode == _AFTER_BLOCK

    def _pending_header(self) -> bool:
        nl = self._buf.find(b"\n")
        h = self._buf.find(b"#")
        return h >= 0 and (nl < 0 or h < nl)

    def buffered(self) -> int:
        return len(self._buf) + len(self._payload)

    def feed(self, data: bytes) -> list[Item]:
        """Add received bytes; return the complete items, in order."""
        self._buf += data
        out: list[Item] = []
        while self._step(out):
            pass
        return out

    def idle(self) -> list[Item]:
        """Call when no byte arrived for the idle timeout: ends a truncated block or accepts a block
        whose terminator never came."""
        out: list[Item] = []
        if self._mode == _AFTER_BLOCK:
            out.append(Block(self._head, bytes(self._payload)))
            self._reset_block()
            self._mode = _TEXT
        elif self._mode in (_BLOCK, _DISCARD):
            got = self._announced - self._need
            out.append(
                ParseError(
                    -160, f"truncated block: header announced {self._announced} bytes, {got} arrived", self._head
                )
            )
            self._reset_block()
            self._buf.clear()
            self._mode = _TEXT
        elif self._mode == _TEXT and self._pending_header():
            out.append(ParseError(-160, "incomplete block header", bytes(self._buf[: self._buf.find(b"#")])))
            self._buf.clear()
        while self._step(out):
            pass
        return out

    def _reset_block(self) -> None:
        self._head = b""
        self._need = 0
        self._payload = bytearray()
        self._announced = 0

    def _step(self, out: list[Item]) -> bool:
        """Make progress on the buffer; False when more bytes are needed."""
        buf = self._buf
        if self._mode == _TEXT:
            if not buf:
                return False
            nl = buf.find(b"\n")
            h = buf.find(b"#", 0, nl if nl >= 0 else len(buf))
            if h < 0:
                if nl < 0:
                    if len(buf) > self.max_line:
                        out.append(ParseError(-100, f"line longer than {self.max_line} bytes"))
                        buf.clear()
                        self._mode = _SKIP_LINE
                        return True
                    return False
                line = bytes(buf[:nl])
                del buf[: nl + 1]
                if line.endswith(b"\r"):
                    line = line[:-1]
                if len(line) > self.max_line:
                    out.append(ParseError(-100, f"line longer than {self.max_line} bytes"))
                else:
                    out.append(Line(line))
                return True
            # a block header starts at h
            if h > self.max_line:
                out.append(ParseError(-100, f"line longer than {self.max_line} bytes"))
                del buf[:h]
                self._mode = _SKIP_LINE
                return True
            if len(buf) < h + 2:
                return False
            head = bytes(buf[:h])
            nd = buf[h + 1]
            if not (0x31 <= nd <= 0x39):  # '1'..'9'
                what = (
                    "indefinite-length blocks (#0) are not supported"
                    if nd == 0x30
                    else f"bad block header: '#' followed by {bytes([nd])!r}, expected a digit 1..9"
                )
                out.append(ParseError(-160, what, head))
                del buf[: h + 1]
                self._mode = _SKIP_LINE
                return True
            n = nd - 0x30
            if len(buf) < h + 2 + n:
                digits = bytes(buf[h + 2 :])
                if digits.isdigit() or not digits:
                    return False
                out.append(ParseError(-160, f"bad block length field {digits!r}", head))
                del buf[: h + 2]
                self._mode = _SKIP_LINE
                return True
            digits = bytes(buf[h + 2 : h + 2 + n])
            if not digits.isdigit():
                out.append(ParseError(-160, f"bad block length field {digits!r}", head))
                del buf[: h + 2]
                self._mode = _SKIP_LINE
                return True
            length = int(digits)
            del buf[: h + 2 + n]
            self._head = head
            self._need = length
            self._announced = length
            if length > self.max_block:
                out.append(ParseError(-223, f"block of {length} bytes exceeds the limit of {self.max_block}", head))
                self._mode = _DISCARD
            else:
                self._payload = bytearray()
                self._mode = _BLOCK if length else _AFTER_BLOCK
            return True
        if self._mode == _BLOCK:
            if not buf:
                return False
            take = min(self._need, len(buf))
            self._payload += buf[:take]
            del buf[:take]
            self._need -= take
            if self._need == 0:
                self._mode = _AFTER_BLOCK
            return True
        if self._mode == _DISCARD:
            if not buf:
                return False
            take = min(self._need, len(buf))
            del buf[:take]
            self._need -= take
            if self._need == 0:
                self._reset_block()
                self._mode = _SKIP_LINE
            return True
        if self._mode == _AFTER_BLOCK:
            if not buf:
                return False
            if buf[0] == 0x0A:
                del buf[:1]
            elif buf[0] == 0x0D:
                if len(buf) < 2:
                    return False
                if buf[1] != 0x0A:
                    return self._overlong(out)
                del buf[:2]
            else:
                return self._overlong(out)
            out.append(Block(self._head, bytes(self._payload)))
            self._reset_block()
            self._mode = _TEXT
            return True
        if self._mode == _SKIP_LINE:
            nl = buf.find(b"\n")
            if nl < 0:
                buf.clear()
                return False
            del buf[: nl + 1]
            self._mode = _TEXT
            return True
        raise AssertionError(self._mode)

    def _overlong(self, out: list[Item]) -> bool:
        out.append(
            ParseError(
                -160,
                f"block is longer than its header says ({self._announced} bytes) "
                "or not followed by the line terminator",
                self._head,
            )
        )
        self._reset_block()
        self._mode = _SKIP_LINE
        return True


@dataclass(frozen=True)
class BinaryReply:
    """A reply sent as an IEEE 488.2 definite-length block (raw little-endian bytes of ``array``)."""

    array: np.ndarray

    def header(self, nbytes: int | None = None) -> bytes:
        n = self.array.nbytes if nbytes is None else nbytes
        digits = str(n)
        return f"#{len(digits)}{digits}".encode("ascii")

    def payload(self) -> memoryview:
        a = np.ascontiguousarray(self.array)
        return a.reshape(-1).view(np.uint8).data if a.size else memoryview(b"")


Reply = str | BinaryReply
