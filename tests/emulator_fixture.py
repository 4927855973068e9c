"""Start ``na64-emulator`` as a real subprocess for a test, on free loopback ports, and always clean up.

Usage in a test module (``tests/`` is on ``sys.path`` under pytest's default import mode)::

    from emulator_fixture import emulator, emulator_factory, start_emulator  # noqa: F401  (fixtures)

    def test_something(emulator):                       # default: FAST_CONFIG, internal beam feed
        st = emulator.wait_for_spills(1)                # a spill is buffered in the crate
        rm = pyvisa.ResourceManager("@py")
        crate = rm.open_resource(emulator.msadc, read_termination="\\n", write_termination="\\n")
        ...

    def test_other(emulator_factory):                   # several emulators or custom settings
        emu = emulator_factory({"spill": {"length_s": 0.5}}, extra_args=["--external-feed"])
        emu.control({"cmd": "fault", "endpoint": "msadc", "kind": "delay", "seconds": 0.2})

    def test_plain(tmp_path):                           # without fixtures: a context manager
        with start_emulator(tmp_path, {"beam": {"particles_per_spill": 5000}}) as emu:
            ...

``start_emulator`` writes the merged configuration (``FAST_CONFIG`` deep-merged with
``config_overrides``; pass ``base=None`` for the plain defaults) to ``tmp_path/emulator.toml``, runs
``python -m sim_frontend.cli --config --endpoints-file *extra_args`` in its own session with stdout/stderr to
``tmp_path/emulator.log`` (as a fork of the tests' warm server, tests/launcher.py; ``fresh=True``, an ``env``,
or ``NA64_TEST_FRESH_PROCESSES=1``: as a new interpreter), waits until the endpoints file appears
(``startup_timeout_s``), and returns an :class:`EmulatorHandle`. If the process dies first, the
exception carries the tail of its log. ``EmulatorHandle.stop()`` (also on fixture teardown and at
``with`` exit) sends SIGTERM, waits, then SIGKILLs the process group: no process is left behind, the
emulator's beam-feed child included. As safety nets, emulators still running when the test process
exits are stopped by an ``atexit`` hook, and every emulator is started with ``--parent-pid`` so that it
shuts itself down if the test process dies without cleaning up.

Endpoints (``handle.endpoints``, also as attributes): ``msadc`` (VISA resource string), ``hv`` /
``table`` (``socket://127.0.0.1:<port>``), ``hv_pty`` / ``table_pty`` (pty device paths), ``feed`` /
``control`` (ZeroMQ ``tcp://`` addresses), ``pid``.
"""

from __future__ import annotations

import atexit
import copy
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from launcher import LaunchedProcess, fresh_processes, launch

REPO_ROOT = Path(__file__).resolve().parent.parent

#: Settings that make the emulator quick in tests: small spills on a compressed SPS cycle; an ECAL as
#: calibrated as the shipped calibration file assumes (the default hides a +/-20% spread for ecal-calib)
FAST_CONFIG: dict[str, Any] = {
    "spill": {"length_s": 0.3, "supercycle_s": 1.0},
    "beam": {"particles_per_spill": 2e4, "calibration_particles_per_spill": 2e3},
    "emulator": {"ecal_gain_spread": 0.02, "ecal_drift_per_hour": 0.0},
}


def deep_merge(base: dict[str, Any], over: dict[str, Any] | None) -> dict[str, Any]:
    """``base`` updated recursively with ``over`` (a new dict; neither argument is modified)."""
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {v!r} to TOML")


def to_toml(cfg: dict[str, Any]) -> str:
    """TOML text of a nested dict of sections (enough for configuration overrides)."""
    lines: list[str] = []

    def walk(d: dict[str, Any], prefix: str) -> None:
        scalars = {k: v for k, v in d.items() if not isinstance(v, dict)}
        if prefix and (scalars or not d):
            lines.append(f"[{prefix}]")
        for k, v in scalars.items():
            lines.append(f"{k} = {_toml_value(v)}")
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}.{k}" if prefix else k)

    walk(cfg, "")
    return "\n".join(lines) + "\n"


class EmulatorError(RuntimeError):
    """The emulator did not start, or a control request failed."""


@dataclass
class EmulatorHandle:
    """A running ``na64-emulator`` subprocess and its endpoints."""

    proc: subprocess.Popen | LaunchedProcess
    endpoints: dict[str, Any]
    config_path: Path
    endpoints_path: Path
    log_path: Path
    config: dict[str, Any] = field(default_factory=dict)

    # -- endpoints
    @property
    def msadc(self) -> str:
        """VISA resource string of the crate, ``TCPIP::127.0.0.1::<port>::SOCKET``."""
        return self.endpoints["msadc"]

    @property
    def hv(self) -> str:
        """pyserial URL of the HV mainframe, ``socket://127.0.0.1:<port>``."""
        return self.endpoints["hv"]

    @property
    def hv_pty(self) -> str | None:
        return self.endpoints.get("hv_pty")

    @property
    def table(self) -> str:
        return self.endpoints["table"]

    @property
    def table_pty(self) -> str | None:
        return self.endpoints.get("table_pty")

    @property
    def feed(self) -> str:
        """ZeroMQ address of the beam feed (connect a PUSH socket / ``FeedSender`` here)."""
        return self.endpoints["feed"]

    @property
    def control_address(self) -> str:
        return self.endpoints["control"]

    @property
    def pid(self) -> int:
        return self.proc.pid

    # -- control
    def control(self, request: dict[str, Any], timeout_s: float = 5.0) -> dict[str, Any]:
        """Send one JSON request to the control endpoint and return the reply (``{"ok": ...}``)."""
        import zmq

        ctx = zmq.Context.instance()
        sock = ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, int(timeout_s * 1000))
        sock.setsockopt(zmq.SNDTIMEO, int(timeout_s * 1000))
        try:
            sock.connect(self.control_address)
            sock.send(json.dumps(request).encode())
            try:
                raw = sock.recv()
            except zmq.Again:
                raise EmulatorError(f"no control reply in {timeout_s} s to {request!r}\n{self.log_tail()}") from None
        finally:
            sock.close(0)
        return json.loads(raw)

    def state(self) -> dict[str, Any]:
        """The control ``state`` reply (``state``, ``last_spill``, ``crate``, ``spills``, ``faults``, ...)."""
        reply = self.control({"cmd": "state"})
        if not reply.get("ok"):
            raise EmulatorError(f"state request failed: {reply}")
        return reply

    def wait_for(
        self,
        predicate: Callable[[dict[str, Any]], bool],
        timeout_s: float = 30.0,
        what: str = "condition",
        poll_s: float = 0.05,
    ) -> dict[str, Any]:
        """Poll :meth:`state` until ``predicate(state)`` holds; returns that state (EmulatorError on timeout)."""
        deadline = time.monotonic() + timeout_s
        st: dict[str, Any] = {}
        while time.monotonic() < deadline:
            self.check_alive()
            st = self.state()
            if predicate(st):
                return st
            time.sleep(poll_s)
        raise EmulatorError(
            f"timeout after {timeout_s} s waiting for {what}; last state: "
            f"{st.get('crate')}, spills {st.get('spills')}\n{self.log_tail()}"
        )

    def wait_for_spills(self, n: int = 1, timeout_s: float = 60.0) -> dict[str, Any]:
        """Wait until at least ``n`` spills completed in the crate (counting from the emulator start)."""
        return self.wait_for(lambda s: s["crate"]["spills_completed"] >= n, timeout_s, f"{n} completed spill(s)")

    # -- process
    def check_alive(self) -> None:
        rc = self.proc.poll()
        if rc is not None:
            raise EmulatorError(f"the emulator exited with status {rc}\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return "--- emulator log (tail) ---\n" + self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no emulator log)"

    def stop(self, timeout_s: float = 10.0) -> int:
        """SIGTERM, wait up to ``timeout_s``, then SIGKILL the process group; returns the exit status."""
        return _terminate(self.proc, timeout_s)

    def __enter__(self) -> EmulatorHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


#: emulators started by this process and not stopped yet (stopped at interpreter exit as a last resort;
#: the emulator also shuts itself down when this process ends: ``--parent-pid``)
_LIVE: dict[int, subprocess.Popen | LaunchedProcess] = {}


@atexit.register
def _stop_forgotten() -> None:
    for proc in list(_LIVE.values()):
        _terminate(proc, 5.0)


def _terminate(proc: subprocess.Popen | LaunchedProcess, timeout_s: float) -> int:
    """SIGTERM the emulator, wait, SIGKILL its process group if needed, and make sure that no live
    member of the group (the emulator's beam-feed child) is left."""
    _LIVE.pop(proc.pid, None)
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _killpg(proc.pid)
            proc.wait(timeout=10)
    _reap_group(proc.pid)
    return proc.returncode


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def group_alive(pgid: int) -> bool:
    """Is any live (non-zombie) process left in process group ``pgid``?"""
    proc_dir = Path("/proc")
    if not proc_dir.is_dir():
        try:
            os.killpg(pgid, 0)
            return True
        except (ProcessLookupError, PermissionError):
            return False
    for d in proc_dir.iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()  # after "pid (comm) ": state ppid pgrp ...
        if len(fields) > 2 and fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            return True
    return False


def _reap_group(pgid: int, timeout_s: float = 5.0) -> None:
    """Wait until no live process of the emulator's group is left; SIGKILL stragglers after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    killed = False
    while group_alive(pgid):
        if time.monotonic() > deadline:
            if killed:
                raise EmulatorError(f"processes of group {pgid} survive SIGKILL")
            _killpg(pgid)
            killed = True
            deadline = time.monotonic() + timeout_s
        time.sleep(0.05)


def start_emulator(
    tmp_path: Path,
    config_overrides: dict[str, Any] | None = None,
    extra_args: Sequence[str] = (),
    *,
    base: dict[str, Any] | None = FAST_CONFIG,
    startup_timeout_s: float = 240.0,
    env: dict[str, str] | None = None,
    name: str = "emulator",
    fresh: bool = False,
) -> EmulatorHandle:
    """Start ``na64-emulator`` as a subprocess on free loopback ports and wait until it listens.

    ``config_overrides`` is a nested dict of config sections deep-merged over ``base`` (default
    :data:`FAST_CONFIG`); ``extra_args`` are further command-line options (``--external-feed``,
    ``--fault msadc:delay:0.2``, ``--seed 3``, ...). ``name`` prefixes the files written to ``tmp_path``.
    ``fresh``: start a new interpreter, not a fork of the warm server (also with ``env``: tests/launcher.py).
    """
    tmp_path = Path(tmp_path)
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg = deep_merge(base or {}, config_overrides)
    config_path = tmp_path / f"{name}.toml"
    config_path.write_text(to_toml(cfg), encoding="utf-8")
    endpoints_path = tmp_path / f"{name}.endpoints.json"
    log_path = tmp_path / f"{name}.log"
    try:
        endpoints_path.unlink()
    except FileNotFoundError:
        pass
    args = [
        "--config",
        str(config_path),
        "--endpoints-file",
        str(endpoints_path),
        "--parent-pid",
        str(os.getpid()),
        *map(str, extra_args),
    ]
    cmd = [sys.executable, "-m", "sim_frontend.cli", *args]
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), full_env.get("PYTHONPATH", "")) if p)
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    full_env.update(env or {})
    proc: subprocess.Popen | LaunchedProcess
    with open(log_path, "wb") as log_file:  # the child keeps its own descriptor (a fork opens the file again)
        if fresh or env or fresh_processes():
            proc = subprocess.Popen(
                cmd,
                cwd=str(REPO_ROOT),
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        else:
            proc = launch("sim_frontend.cli", args, log_path=log_path, cwd=REPO_ROOT, env=full_env)
    handle = EmulatorHandle(proc, {}, config_path, endpoints_path, log_path, cfg)
    _LIVE[proc.pid] = proc
    try:
        deadline = time.monotonic() + startup_timeout_s
        while True:
            if endpoints_path.exists():
                try:
                    handle.endpoints = json.loads(endpoints_path.read_text(encoding="utf-8"))
                    break
                except ValueError:
                    pass  # cannot happen with the atomic write; be patient anyway
            if proc.poll() is not None:
                raise EmulatorError(
                    f"na64-emulator exited with status {proc.returncode} before listening\n"
                    f"command: {cmd}\n{handle.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise EmulatorError(
                    f"na64-emulator did not write {endpoints_path} within {startup_timeout_s} s\n{handle.log_tail()}"
                )
            time.sleep(0.05)
        if handle.endpoints.get("pid") != proc.pid:
            raise EmulatorError(f"endpoints file names pid {handle.endpoints.get('pid')}, expected {proc.pid}")
    except BaseException:
        _terminate(proc, 5.0)
        raise
    return handle


@pytest.fixture
def emulator_factory(tmp_path: Path) -> Iterator[Callable[..., EmulatorHandle]]:
    """A function ``(config_overrides=None, extra_args=(), **kw) -> EmulatorHandle``; every emulator it
    started is stopped at teardown."""
    started: list[EmulatorHandle] = []

    def factory(
        config_overrides: dict[str, Any] | None = None, extra_args: Sequence[str] = (), **kw: Any
    ) -> EmulatorHandle:
        handle = start_emulator(tmp_path, config_overrides, extra_args, name=f"emulator{len(started)}", **kw)
        started.append(handle)
        return handle

    yield factory
    for h in started:
        h.stop()


@pytest.fixture
def emulator(emulator_factory: Callable[..., EmulatorHandle]) -> EmulatorHandle:
    """One emulator with :data:`FAST_CONFIG` and the internal beam feed."""
    return emulator_factory()
