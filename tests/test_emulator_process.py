"""``na64-emulator`` as a real subprocess: endpoints file, a stock pyvisa client with no project code,
the spill cycle, the control endpoint, fault injection, the serial instruments, clean shutdown."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import pyvisa
import serial
from emulator_fixture import EmulatorError, group_alive, start_emulator

pytestmark = pytest.mark.timeout(120)

CYCLE = {
    "spill": {"length_s": 0.2, "supercycle_s": 0.5},
    "beam": {"particles_per_spill": 2e4},
    "emulator": {"spill_buffer": 16},
}
REPLY_TIMEOUT_MS = 30000  #: a reply that must arrive gets this long (generous on a loaded machine)
REPLY_TIMEOUT_S = REPLY_TIMEOUT_MS / 1000.0


def wait_until(predicate, timeout_s: float = 60.0, what: str = "condition"):
    """Poll ``predicate()`` until it returns a true value (returned) or ``timeout_s`` passes (fail)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not reached within {timeout_s} s"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    """One emulator for the module (faults are cleared after every test that sets them)."""
    handle = start_emulator(tmp_path_factory.mktemp("emu"), CYCLE)
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture
def crate(emu):
    rm = pyvisa.ResourceManager("@py")
    res = rm.open_resource(emu.msadc, read_termination="\n", write_termination="\n", timeout=REPLY_TIMEOUT_MS)
    yield res
    try:
        res.close()
    finally:
        rm.close()
        emu.control({"cmd": "clear_faults"})


def select_last(res) -> int:
    state, last = res.query("SPIL:STAT?").split(",")
    assert state in ("SPILL", "GAP") and int(last) >= 0
    res.write(f"SPIL:SEL {last}")
    assert res.query("SYST:ERR?") == '0,"No error"'
    return int(last)


# --------------------------------------------------------------------------------------------------
STOCK_CLIENT = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    import pyvisa
    rm = pyvisa.ResourceManager("@py")
    crate = rm.open_resource(sys.argv[1], read_termination="\\n", write_termination="\\n", timeout=30000)
    out = {"idn": crate.query("*IDN?"), "err0": crate.query("SYST:ERR?")}
    crate.write("MEAS:VOLT?")
    out["err_unknown"] = crate.query("SYST:ERR?")
    deadline = time.time() + 60
    while True:
        state, last = crate.query("SPIL:STAT?").split(",")
        if int(last) >= 0 or time.time() > deadline:
            break
        time.sleep(0.05)
    out["state"], out["last"] = state, int(last)
    crate.write("SPIL:SEL %d" % int(last))
    out["count"] = int(crate.query("PRIM:COUN?"))
    prim = crate.query_binary_values("PRIM:DATA? 0,10", datatype="h", is_big_endian=False, container=np.ndarray)
    out["prim_shape"] = list(prim.reshape(-1, 6, 32).shape)
    times = crate.query_binary_values("PRIM:TIME? 0,10", datatype="d", container=np.ndarray)
    out["times_sorted"] = bool(np.all(np.diff(times) >= 0))
    acc = np.array([0, 2, 5, 7], dtype=np.uint32)
    crate.write_binary_values("ACC:DATA ", acc, datatype="I")
    out["err_acc"] = crate.query("SYST:ERR?")
    out["acc"] = int(crate.query("ACC:COUN?"))
    ev = crate.query_binary_values("EVT:DATA? 0,4", datatype="h", container=np.ndarray).reshape(-1, 121, 32)
    out["ev_shape"] = list(ev.shape)
    out["trigger_equal"] = bool((ev[:, [109, 110, 111, 114, 119, 120]] == prim.reshape(-1, 6, 32)[acc]).all())
    out["info"] = json.loads(crate.query("SPIL:INFO?"))
    out["err_end"] = crate.query("SYST:ERR?")
    crate.close()
    print(json.dumps(out))
""")


def test_stock_pyvisa_client_without_project_code(emu, tmp_path):
    script = tmp_path / "stock_client.py"
    script.write_text(STOCK_CLIENT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-I", str(script), emu.msadc],
        capture_output=True,
        text=True,
        timeout=110,
        env=env,
        cwd=str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert "MSADC" in out["idn"].split(",")[1]
    assert out["err0"] == '0,"No error"'
    assert out["err_unknown"].startswith('-113,"Undefined header')
    assert out["state"] in ("SPILL", "GAP") and out["last"] >= 0
    assert out["count"] == 20000
    assert out["prim_shape"] == [10, 6, 32] and out["times_sorted"]
    assert out["err_acc"] == '0,"No error"' and out["acc"] == 4
    assert out["ev_shape"] == [4, 121, 32] and out["trigger_equal"]
    assert out["info"]["particles"] == 20000 and out["info"]["scalers"]["S1"] > 15000
    assert out["err_end"] == '0,"No error"'


def test_endpoints_file(emu):
    ep = json.loads(emu.endpoints_path.read_text())
    for key in ("msadc", "hv", "hv_pty", "table", "table_pty", "feed", "control", "pid"):
        assert key in ep, key
    assert ep["msadc"].startswith("TCPIP::127.0.0.1::") and ep["msadc"].endswith("::SOCKET")
    assert ep["hv"].startswith("socket://127.0.0.1:") and ep["table"].startswith("socket://127.0.0.1:")
    assert ep["feed"].startswith("tcp://127.0.0.1:") and ep["control"].startswith("tcp://127.0.0.1:")
    assert os.path.exists(ep["hv_pty"]) and os.path.exists(ep["table_pty"])
    assert ep["pid"] == emu.proc.pid


def test_spill_cycle_idle_spill_gap(tmp_path):
    """A fresh emulator is IDLE until the beam comes; each spill is SPILL for its flat top, then GAP.
    The test is the beam (external feed): IDLE cannot end before it pushes, and each flat top lasts
    SPILL_S, long enough to be seen by a client polling on a loaded machine."""
    from detector.config import load_config
    from sim_frontend.beam import generate_spill
    from sim_frontend.feed import FeedSender

    spill_s = 3.0
    with start_emulator(
        tmp_path,
        {"spill": {"length_s": spill_s, "supercycle_s": spill_s + 1.0}, "beam": {"particles_per_spill": 5000}},
        ["--external-feed", "--no-pty"],
    ) as h:
        cfg = load_config(h.config_path)
        rm = pyvisa.ResourceManager("@py")
        res = rm.open_resource(h.msadc, read_termination="\n", write_termination="\n", timeout=REPLY_TIMEOUT_MS)
        seen: list[tuple[str, int]] = []

        def status() -> tuple[str, int]:
            state, last = res.query("SPIL:STAT?").split(",")
            if not seen or seen[-1] != (state, int(last)):
                seen.append((state, int(last)))
            return seen[-1]

        try:
            assert status() == ("IDLE", -1)
            with FeedSender(cfg, h.feed) as sender:
                for k in (1, 2):
                    sender.send_spill(generate_spill(cfg, k, n_particles=5000))
                    wait_until(lambda: status()[0] == "SPILL", 60, f"SPILL of spill {k}")
                    wait_until(lambda k=k: status() == ("GAP", k), 60, f"GAP after spill {k}")
        finally:
            res.close()
            rm.close()
        assert seen == [("IDLE", -1), ("SPILL", -1), ("GAP", 1), ("SPILL", 1), ("GAP", 2)], seen


def test_control_endpoint(emu):
    assert emu.control({"cmd": "ping"})["ok"]
    st = emu.wait_for_spills(1)
    assert st["state"] in ("SPILL", "GAP") and st["last_spill"] >= 0
    assert st["crate"]["buffered"] and st["spills"]["spills_completed"] >= 1
    truth = emu.control({"cmd": "truth", "spill": st["last_spill"]})
    assert truth["ok"] and truth["particles"] == 20000 and sum(truth["by_type"].values()) == 20000
    assert not emu.control({"cmd": "truth", "spill": 10**6})["ok"]
    import zmq

    ctx = zmq.Context.instance()
    for bad in (
        b"not json",
        b"[1, 2]",
        b'{"no": "cmd"}',
        b'{"cmd": "explode"}',
        b"\xff\xfe",
        b'{"cmd": "fault", "endpoint": "msadc", "kind": "melt"}',
        b'{"cmd": "fault", "endpoint": "nowhere", "kind": "delay", "seconds": 1}',
        b'{"cmd": "fault", "endpoint": "msadc", "kind": "delay", "seconds": -1}',
        b'{"cmd": "truth", "spill": "x"}',
        b'{"cmd": "trip", "channel_id": 119}',
    ):
        sock = ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, REPLY_TIMEOUT_MS)
        sock.connect(emu.control_address)
        sock.send(bad)
        reply = json.loads(sock.recv())
        sock.close(0)
        assert reply["ok"] is False and reply["error"], (bad, reply)
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, REPLY_TIMEOUT_MS)
    sock.connect(emu.control_address)
    sock.send_multipart([b'{"cmd": "ping"}', b"extra"])
    assert json.loads(sock.recv())["ok"] is False
    sock.close(0)
    assert emu.control({"cmd": "ping"})["ok"]


def test_hv_and_table_over_serial(emu):
    with serial.serial_for_url(emu.hv, baudrate=9600, timeout=REPLY_TIMEOUT_S) as hv:
        hv.write(b"$BD:00,CMD:SET,CH:3,PAR:VSET,VAL:900.0\r\n")
        assert hv.readline() == b"#BD:00,CMD:OK\r\n"
        hv.write(b"$BD:00,CMD:SET,CH:3,PAR:VSET,VAL:2500\r\n")
        assert hv.readline() == b"#BD:00,VAL:ERR\r\n"
    log = emu.control({"cmd": "hv_log"})["log"]
    assert any(e["par"] == "VSET" and e["value"] == 900.0 and e["accepted"] for e in log)
    assert any(e["par"] == "VSET" and e["value"] == 2500.0 and not e["accepted"] for e in log)
    # the trip convenience and the fault form both latch a trip, visible in STAT bit 7 over the pty
    assert emu.control({"cmd": "trip", "channel_id": 72 + 9 * 2 + 4})["ok"]
    with serial.Serial(emu.hv_pty, baudrate=9600, timeout=REPLY_TIMEOUT_S) as hv:
        hv.write(b"$BD:02,CMD:MON,CH:4,PAR:STAT\r\n")
        line = hv.readline().decode()
        assert line.startswith("#BD:02,CMD:OK,VAL:") and int(line.strip().split("VAL:")[1]) & (1 << 7)
        hv.write(b"$BD:02,CMD:SET,CH:4,PAR:CLR\r\n")
        assert hv.readline() == b"#BD:02,CMD:OK\r\n"
    with serial.serial_for_url(emu.table, timeout=REPLY_TIMEOUT_S) as tab:
        tab.write(b"*IDN?\r\n")
        assert b"HCAL-TABLE" in tab.readline()
        tab.write(b"POS?\r\n")
        assert tab.readline().startswith(b"POS ")
    assert emu.control({"cmd": "state"})["table"]["module"] == -1


def test_msadc_faults_via_control(emu, crate):
    emu.wait_for_spills(1)
    select_last(crate)
    # delay
    assert emu.control({"cmd": "fault", "endpoint": "msadc", "kind": "delay", "seconds": 0.3})["ok"]
    t0 = time.monotonic()
    assert "MSADC" in crate.query("*IDN?")
    # the wait is the behaviour under test; load can only lengthen it (a broken delay passes only if
    # this one query happened to stall 0.3 s by itself)
    assert time.monotonic() - t0 >= 0.3
    emu.control({"cmd": "clear_faults"})
    # no_reply: a pyvisa timeout, then the crate answers again
    emu.control({"cmd": "fault", "endpoint": "msadc", "kind": "no_reply", "count": 1})
    crate.timeout = 400  # must expire: the reply is never sent
    with pytest.raises(pyvisa.errors.VisaIOError):
        crate.query("*IDN?")
    crate.timeout = REPLY_TIMEOUT_MS
    assert "MSADC" in crate.query("*IDN?")
    # truncate: the block never completes; the client clears and goes on
    select_last(crate)
    emu.control({"cmd": "fault", "endpoint": "msadc", "kind": "truncate"})
    crate.timeout = 500  # must expire: the block never completes
    with pytest.raises(pyvisa.errors.VisaIOError):
        crate.query_binary_values("PRIM:DATA? 0,1000", datatype="h", container=np.ndarray)
    crate.clear()
    crate.timeout = REPLY_TIMEOUT_MS
    assert "MSADC" in crate.query("*IDN?")
    # corrupt: the block header is not parseable
    select_last(crate)
    emu.control({"cmd": "fault", "endpoint": "msadc", "kind": "corrupt"})
    with pytest.raises(ValueError):
        crate.query_binary_values("PRIM:DATA? 0,10", datatype="h", container=np.ndarray)
    crate.clear()
    assert "MSADC" in crate.query("*IDN?")
    faults = emu.control({"cmd": "state"})["faults"]["msadc"]
    assert faults["truncate"] == 0 and faults["corrupt"] == 0 and faults["no_reply"] == 0


def test_msadc_drop_then_reconnect(emu):
    emu.wait_for_spills(1)
    rm = pyvisa.ResourceManager("@py")
    try:
        res = rm.open_resource(emu.msadc, read_termination="\n", write_termination="\n", timeout=REPLY_TIMEOUT_MS)
        select_last(res)
        emu.control({"cmd": "fault", "endpoint": "msadc", "kind": "drop"})
        assert res.query("PRIM:COUN?") == "20000"  # text query: still served
        res.timeout = 1000  # must expire: the crate closed the connection
        with pytest.raises(pyvisa.errors.VisaIOError):
            res.query_binary_values("PRIM:DATA? 0,10", datatype="h", container=np.ndarray)
        res.close()
        res = rm.open_resource(emu.msadc, read_termination="\n", write_termination="\n", timeout=REPLY_TIMEOUT_MS)
        select_last(res)  # the newest spill: no race with the ring
        assert res.query_binary_values("PRIM:DATA? 0,10", datatype="h", container=np.ndarray).size == 1920
        res.close()
    finally:
        rm.close()
        emu.control({"cmd": "clear_faults"})
    assert emu.state()["msadc_server"]["dropped"] >= 1


def test_hv_faults_via_control(emu):
    emu.control({"cmd": "fault", "endpoint": "hv", "kind": "no_reply", "count": 1})
    try:
        with serial.serial_for_url(emu.hv, timeout=REPLY_TIMEOUT_S) as hv:
            hv.write(b"$BD:08,CMD:MON,CH:0,PAR:VMON\r\n")
            # swallowed: the emulator consumed the fault on this request, so no reply to it exists
            wait_until(lambda: emu.state()["faults"]["hv"]["no_reply"] == 0, 60, "no_reply consumed")
            hv.write(b"$BD:08,CMD:MON,CH:1,PAR:BDNAME\r\n")
            assert hv.readline() == b"#BD:08,CMD:OK,VAL:COUNTERS\r\n"  # the reply to the second one
        emu.control({"cmd": "fault", "endpoint": "table", "kind": "noise", "count": 1})
        with serial.serial_for_url(emu.table, timeout=REPLY_TIMEOUT_S) as tab:
            tab.write(b"BUSY?\r\n")
            line = tab.readline()
            assert line.endswith(b"BUSY 0\r\n") and len(line) > len(b"BUSY 0\r\n")
    finally:
        emu.control({"cmd": "clear_faults"})


def test_feed_stall(emu):
    emu.wait_for_spills(1)
    stalled0 = emu.state()["spills"]["spills_stalled"]
    emu.control({"cmd": "fault", "endpoint": "feed", "kind": "stall", "seconds": 600})
    try:
        # once a spill was stalled, no spill in flight can still complete (one worker, in order)
        st = emu.wait_for(lambda s: s["spills"]["spills_stalled"] >= stalled0 + 1, 60, "a stalled spill")
        before = st["crate"]["spills_completed"]
        st = emu.wait_for(lambda s: s["spills"]["spills_stalled"] >= stalled0 + 3, 60, "two more stalled spills")
        assert st["crate"]["spills_completed"] == before
        assert st["faults"]["feed"]["stall_s"] > 0
    finally:
        emu.control({"cmd": "clear_faults"})
    emu.wait_for(lambda s: s["crate"]["spills_completed"] > before, 60, "spills after the stall")


def test_faults_from_the_command_line_and_config(tmp_path):
    with start_emulator(
        tmp_path,
        {"emulator": {"faults": [{"endpoint": "table", "kind": "delay", "seconds": 0.2}]}},
        ["--external-feed", "--fault", "msadc:delay:0.25", "--fault", "hv:trip:HCAL-1-1-2"],
    ) as h:
        faults = h.state()["faults"]
        assert faults["msadc"]["delay"] == 0.25 and faults["table"]["delay"] == 0.2
        assert h.state()["state"] == "IDLE"  # external feed: no beam yet
        hv = h.control({"cmd": "state", "hv": True})["hv"]
        tripped = [c["name"] for c in hv["channels"] if c["tripped"]]
        assert tripped == ["HCAL-1-1-2"]


def test_bad_command_line_and_config(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[spill]\nlength_s = -1\n")
    for args in (["--config", str(bad)], ["--fault", "msadc"], ["--fault", "msadc:melt"], ["--particles", "-5"]):
        proc = subprocess.run(
            [sys.executable, "-m", "sim_frontend.cli", *args, "--endpoints-file", str(tmp_path / "ep.json")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 2, (args, proc.stderr)
        assert "na64-emulator:" in proc.stderr and "Traceback" not in proc.stderr
        assert not (tmp_path / "ep.json").exists()
    with pytest.raises(EmulatorError, match="exited with status 2"):
        start_emulator(tmp_path, {"spill": {"length_s": 5.0, "supercycle_s": 1.0}})


@pytest.mark.parametrize("fresh", [True, False], ids=["new-interpreter", "forked-launch"])
def test_sigterm_shuts_down_cleanly(tmp_path, fresh):
    """Also: the beam-feed child is forked before any server thread (Emulator._fork_child), both when
    na64-emulator starts as a new interpreter and when the tests launch it as a fork (tests/launcher.py)."""
    with start_emulator(tmp_path, CYCLE, fresh=fresh) as h:
        h.wait_for_spills(1)
        assert h.state()["feed"]["child_alive"] and h.state()["feed"]["child_start"] == "fork"
        pid = h.proc.pid
        h.proc.send_signal(signal.SIGTERM)
        assert h.proc.wait(timeout=60) == 0
        assert not h.endpoints_path.exists()
        h.stop()  # idempotent; checks the process group
        assert not group_alive(pid)
        assert "stopped" in h.log_path.read_text()


def test_external_feed_and_gains_follow_the_hv(tmp_path):
    """Spills pushed to the feed by the test; the S1 amplitude in the primitives follows its HV VMON
    at spill time (PMT gain law), so an HV change shows in the data of the next spill only."""
    from detector.config import load_config
    from sim_frontend.beam import generate_spill
    from sim_frontend.feed import FeedSender

    over = {
        "spill": {"length_s": 0.1, "supercycle_s": 0.5},
        "emulator": {"hv_rup_v_per_s": 500.0, "hv_rdw_v_per_s": 500.0},
    }
    with start_emulator(tmp_path, over, ["--external-feed", "--no-pty"]) as h:
        assert h.state()["state"] == "IDLE" and "hv_pty" not in h.endpoints
        cfg = load_config(h.config_path)
        rm = pyvisa.ResourceManager("@py")
        res = rm.open_resource(h.msadc, read_termination="\n", write_termination="\n", timeout=REPLY_TIMEOUT_MS)

        def push_and_measure(spill_no: int) -> float:
            with FeedSender(cfg, h.feed) as sender:
                sender.send_spill(generate_spill(cfg, spill_no, n_particles=3000))
            h.wait_for(lambda s: s["last_spill"] == spill_no, 60, f"spill {spill_no}")
            res.write(f"SPIL:SEL {spill_no}")
            prim = res.query_binary_values("PRIM:DATA?", datatype="h", container=np.ndarray).reshape(-1, 6, 32)
            s1 = prim[:, 0, :].astype(float)
            amp = s1.max(axis=1) - s1[:, :4].mean(axis=1)
            return float(np.median(amp[amp > 50]))

        try:
            a0 = push_and_measure(1)
            with serial.serial_for_url(h.hv, timeout=REPLY_TIMEOUT_S) as hv:  # S1 = HV board 8, channel 1
                hv.write(b"$BD:08,CMD:SET,CH:1,PAR:VSET,VAL:1100.0\r\n")
                assert hv.readline() == b"#BD:08,CMD:OK\r\n"

                def vmon() -> bytes:
                    hv.write(b"$BD:08,CMD:MON,CH:1,PAR:VMON\r\n")
                    return hv.readline()

                wait_until(lambda: vmon() == b"#BD:08,CMD:OK,VAL:1100.0\r\n", 60, "VMON at 1100 V")
            a1 = push_and_measure(2)
            truth = h.control({"cmd": "truth", "spill": 2})
            assert truth["ok"] and truth["particles"] == 3000
        finally:
            res.close()
            rm.close()
        ratio = a1 / a0
        assert 0.25 < ratio < 0.8, (a0, a1)  # (1100/1200)^gamma with gamma in [3, 12]


def test_emulator_follows_a_dead_test_process(tmp_path):
    """A test process that dies without cleaning up does not leave its emulator behind (--parent-pid)."""
    code = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from emulator_fixture import start_emulator
        h = start_emulator({str(tmp_path)!r}, None, ["--external-feed", "--no-pty"])
        print(h.proc.pid, flush=True)
        os._exit(0)                      # no teardown, no atexit
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    pid = int(proc.stdout.split()[0])
    deadline = time.monotonic() + 60
    while group_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = group_alive(pid)
    if alive:
        os.killpg(pid, signal.SIGKILL)
    assert not alive
    assert "parent process" in (tmp_path / "emulator.log").read_text()


def test_an_emulator_in_a_threaded_process_spawns_its_feed_child(tmp_path):
    """Forking a process with other threads is unsafe (a lock held by one of them stays held in the child): an
    emulator started inside such a program spawns its beam-feed child instead, and spills still flow."""
    import threading

    from emulator_fixture import FAST_CONFIG, deep_merge, to_toml

    from detector.config import load_calibration, load_config
    from sim_frontend.emulator import Emulator

    (tmp_path / "emu.toml").write_text(to_toml(deep_merge(FAST_CONFIG, CYCLE)))
    cfg = load_config(tmp_path / "emu.toml")
    other = threading.Event()
    th = threading.Thread(target=other.wait, daemon=True)
    th.start()
    try:
        with Emulator(cfg, load_calibration(cfg), pty=False) as emu:
            assert emu.state()["feed"]["child_start"] == "spawn"
            deadline = time.monotonic() + 120
            while emu.state()["crate"]["spills_completed"] < 1:
                assert time.monotonic() < deadline, "no spill from the spawned feed child in 120 s"
                time.sleep(0.1)
    finally:
        other.set()
