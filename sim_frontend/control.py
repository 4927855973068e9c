"""The emulator's control endpoint (docs/protocols.md section 4.3): JSON requests over ZeroMQ REQ/REP.

A request is one UTF-8 JSON object with a ``cmd`` key, e.g. ``{"cmd": "ping"}``; the reply is one JSON
object, ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``. Anything malformed (not UTF-8, not
JSON, not an object, no ``cmd``, an unknown command, several frames, a handler that raises) gets an
``ok: false`` reply naming the problem; the server never dies of a request.

:class:`ControlServer` runs the REP socket in its own thread and dispatches to a table of command
handlers (``name -> callable(request dict) -> reply dict``) given by its owner (``sim_frontend.emulator``).
:func:`request` is the matching client (REQ socket with timeouts, no linger), for tests and scripts.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

import zmq

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 1 << 16
Handler = Callable[[dict[str, Any]], dict[str, Any]]


class ControlError(RuntimeError):
    """The control endpoint did not answer, or answered something that is not a JSON object."""


def _json_default(obj: Any) -> Any:
    """Make numpy scalars and arrays JSON-serialisable."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        raise TypeError(f"{type(obj).__name__} is not JSON serialisable") from None
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def encode_reply(reply: Mapping[str, Any]) -> bytes:
    """JSON bytes of a reply (non-finite floats become null)."""
    try:
        return json.dumps(reply, default=_json_default, allow_nan=False, separators=(",", ":")).encode()
    except ValueError:
        cleaned = json.loads(json.dumps(reply, default=_json_default), parse_constant=lambda _: None)
        return json.dumps(cleaned, separators=(",", ":")).encode()


def dispatch(frames: list[bytes], handlers: Mapping[str, Handler]) -> dict[str, Any]:
    """The reply to one received request (a list of frames). Never raises."""
    if len(frames) != 1:
        return {"ok": False, "error": f"a request is one frame of JSON, got {len(frames)} frames"}
    raw = frames[0]
    if len(raw) > MAX_REQUEST_BYTES:
        return {"ok": False, "error": f"request of {len(raw)} bytes exceeds {MAX_REQUEST_BYTES}"}
    try:
        req = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return {"ok": False, "error": "request is not UTF-8"}
    except json.JSONDecodeError as exc:
        return {"ok": False, "error": f"request is not JSON: {exc}"}
    if not isinstance(req, dict):
        return {"ok": False, "error": f"request must be a JSON object, got {type(req).__name__}"}
    cmd = req.get("cmd")
    if not isinstance(cmd, str):
        return {"ok": False, "error": "request has no string 'cmd'; known: " + ", ".join(sorted(handlers))}
    handler = handlers.get(cmd)
    if handler is None:
        return {"ok": False, "error": f"unknown cmd {cmd!r}; known: " + ", ".join(sorted(handlers))}
    try:
        reply = handler(req)
    except (ValueError, KeyError, TypeError) as exc:
        return {"ok": False, "error": f"{cmd}: {exc.args[0] if exc.args else exc}"}
    except Exception as exc:  # a handler bug must not kill the control endpoint
        log.exception("control handler %s failed", cmd)
        return {"ok": False, "error": f"{cmd}: internal error {type(exc).__name__}: {exc}"}
    if not isinstance(reply, dict):
        return {"ok": False, "error": f"{cmd}: handler returned {type(reply).__name__}"}
    reply.setdefault("ok", True)
    return reply


class ControlServer:
    """A ZeroMQ REP server answering JSON requests with ``handlers`` in a background thread.

    ``endpoint`` is a ZeroMQ bind address; ``tcp://127.0.0.1:*`` (or port 0) binds any free port, and
    :attr:`address` is the bound one after :meth:`start`."""

    def __init__(
        self, handlers: Mapping[str, Handler], endpoint: str = "tcp://127.0.0.1:*", context: zmq.Context | None = None
    ) -> None:
        self.handlers = dict(handlers)
        self.endpoint = endpoint[:-2] + ":*" if endpoint.endswith(":0") else endpoint
        self._ctx = context or zmq.Context.instance()
        self._sock: zmq.Socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.address = ""
        self.requests = 0
        self.malformed = 0

    def start(self) -> ControlServer:
        sock = self._ctx.socket(zmq.REP)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES * 4)
        try:
            sock.bind(self.endpoint)
        except zmq.ZMQError:
            sock.close(0)
            raise
        self.address = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._sock = sock
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="emulator-control", daemon=True)
        self._thread.start()
        log.info("control endpoint on %s", self.address)
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None

    def _run(self) -> None:
        sock = self._sock
        assert sock is not None
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                if not dict(poller.poll(100)):
                    continue
                try:
                    frames = sock.recv_multipart()
                except zmq.ZMQError as exc:
                    log.warning("control recv failed: %s", exc)
                    continue
                self.requests += 1
                reply = dispatch(frames, self.handlers)
                if not reply.get("ok"):
                    self.malformed += 1
                try:
                    sock.send(encode_reply(reply))
                except zmq.ZMQError as exc:
                    log.warning("control reply failed: %s", exc)
        finally:
            sock.close(0)
            self._sock = None


def request(
    address: str, req: Mapping[str, Any] | bytes, timeout_s: float = 5.0, context: zmq.Context | None = None
) -> dict[str, Any]:
    """Send one request to a control endpoint and return the reply dict (ControlError on timeout)."""
    ctx = context or zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, int(timeout_s * 1000))
    sock.setsockopt(zmq.SNDTIMEO, int(timeout_s * 1000))
    try:
        sock.connect(address)
        sock.send(req if isinstance(req, bytes) else json.dumps(req).encode())
        try:
            raw = sock.recv()
        except zmq.Again:
            raise ControlError(f"no reply from the emulator control endpoint {address} in {timeout_s} s") from None
    finally:
        sock.close(0)
    try:
        reply = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ControlError(f"control reply is not JSON: {exc}") from None
    if not isinstance(reply, dict):
        raise ControlError(f"control reply is not a JSON object: {reply!r}")
    return reply
