"""A complete emulated beam time, end to end, with the production command-line tools (``python3 tasks.py demo``).

1. start ``na64-emulator`` (MSADC crate, HV mainframe, HCAL table; the demo runs the beam feed itself);
2. calibration: a low-intensity beam, ``hv-tune`` equalises one HCAL module (it runs ``na64-daq`` in
   calibration mode as its child) and writes the logbook;
3. physics run 1: ``na64-daq`` records spills with an A' signal injected at a visible epsilon, while
   ``na64-monitor`` watches the live stream and takes a screenshot;
4. physics run 2: the same without A';
5. offline: A' yields, signal efficiency, selection of both runs, background and CLs limits, plots;
   the background per source predicted by biased simulation for run 2's EOT; a replay screenshot of run 2;
6. a summary (EOT, triggers, events in the box, run 2's box opened beside the expectation per source,
   limits) and the list of files written.

Everything it starts runs in its own process group and is stopped at the end, on an error and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from detector.config import Config, dump_toml, load_config

ROOT = pathlib.Path(__file__).resolve().parent.parent
BIN = pathlib.Path(sys.executable).parent
console = Console()


#: the file that marks a directory the demo created: only such a directory is emptied and reused
MARKER = ".na64-demo-output"


def prepare_out(out: pathlib.Path) -> str | None:
    """Make ``out`` the demo's output directory: create it (with :data:`MARKER`), take an empty directory,
    or empty one the demo created before (it carries :data:`MARKER`). Returns why not, for anything
    else: the demo never deletes or overwrites what it did not create."""
    if out.exists() and not out.is_dir():
        return f"--out {out} exists and is not a directory"
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            return (
                f"--out {out} is not empty and was not created by the demo (no {MARKER} in it); "
                "choose a new or empty directory"
            )
        for p in out.iterdir():  # the demo's own output of an earlier run
            if p.name != MARKER:
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("created by demo/beamtime.py; the demo empties and reuses this directory\n")
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tool(name: str) -> list[str]:
    exe = BIN / name
    if not exe.exists():
        raise SystemExit(f"demo: {name} is not installed in {BIN}; run `python3 tasks.py setup`")
    return [str(exe)]


class Processes:
    """Children of the demo: each in its own session, logged to a file, all stopped by :meth:`stop_all`."""

    def __init__(self, logdir: pathlib.Path) -> None:
        self.logdir = logdir
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        with open(self.logdir / f"{name}.log", "ab") as log:  # the child holds its own copy of the descriptor
            proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT, env=env
            )
        self.procs.append((name, proc))
        return proc

    def run(
        self,
        name: str,
        cmd: list[str],
        timeout: float,
        env: dict[str, str] | None = None,
        ok_codes: tuple[int, ...] = (0,),
    ) -> int:
        """Run to completion (stopped after ``timeout`` s); returns the exit code, raises if not in ok_codes."""
        proc = self.start(name, cmd, env)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop(name, proc)
            raise RuntimeError(
                f"{name} did not finish within {timeout:.0f} s (log: {self.logdir / (name + '.log')})"
            ) from None
        if code not in ok_codes:
            tail = (self.logdir / f"{name}.log").read_text(errors="replace").splitlines()[-15:]
            raise RuntimeError(f"{name} exited with {code}; last lines of its log:\n" + "\n".join(tail))
        return code

    def stop(self, name: str, proc: subprocess.Popen, grace: float = 20.0) -> None:
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            console.print(f"[yellow]{name} ignored SIGTERM; killing it[/]")
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()

    def stop_all(self) -> None:
        for name, proc in reversed(self.procs):
            self.stop(name, proc)


def write_config(base: Config, path: pathlib.Path, **sections: dict[str, Any]) -> pathlib.Path:
    """``base`` with the keys of ``sections`` overridden (validated), written to ``path`` as TOML."""
    cfg = base.with_overrides({**sections, "calibration": {"file": str(ROOT / "config" / "calibration.toml")}})
    path.write_text(dump_toml(cfg))
    load_config(path)  # the file reads back
    return path


def wait_for_file(path: pathlib.Path, timeout: float, proc: subprocess.Popen) -> dict[str, Any]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists():
            return json.loads(path.read_text())
        if proc.poll() is not None:
            raise RuntimeError(f"the emulator exited with {proc.returncode} before listening")
        time.sleep(0.1)
    raise RuntimeError(f"the emulator did not write {path} within {timeout:.0f} s")


def step(text: str) -> None:
    console.rule(f"[bold cyan]{text}")


def physics_run(
    procs: Processes,
    out: pathlib.Path,
    cfg_path: pathlib.Path,
    feed_cfg: pathlib.Path,
    endpoints: dict[str, Any],
    endpoints_file: pathlib.Path,
    run: int,
    spills: int,
    screenshot: pathlib.Path | None,
    yields: pathlib.Path,
) -> pathlib.Path:
    monitor = f"tcp://127.0.0.1:{free_port()}"
    daq = procs.start(
        f"na64-daq-run{run}",
        tool("na64-daq")
        + [
            "run",
            "--config",
            str(cfg_path),
            "--endpoints-file",
            str(endpoints_file),
            "--out",
            str(out / "runs"),
            "--run",
            str(run),
            "--spills",
            str(spills),
            "--monitor",
            monitor,
        ],
    )
    time.sleep(3.0)  # the DAQ compiles its kernels at start-up
    if screenshot is not None:
        procs.start(
            f"na64-monitor-run{run}",
            tool("na64-monitor")
            + [
                "--config",
                str(cfg_path),
                "--connect",
                monitor,
                "--yields",
                str(yields),
                "--screenshot",
                str(screenshot),
                "--exit-after",
                str(0.8 * spills * 3.0 + 8),
            ],
            env=dict(os.environ, QT_QPA_PLATFORM="offscreen"),
        )
    feed = procs.start(
        f"feed-run{run}",
        [
            sys.executable,
            "-m",
            "sim_frontend.feed",
            "--config",
            str(feed_cfg),
            "--endpoint",
            endpoints["feed"],
            "--spills",
            str(spills + 2),
        ],
    )
    try:
        code = daq.wait(timeout=60 + spills * 30)
    except subprocess.TimeoutExpired:
        procs.stop("na64-daq", daq)
        raise RuntimeError(f"na64-daq run {run} did not finish (log in {procs.logdir})") from None
    procs.stop("feed", feed)
    if code != 0:
        raise RuntimeError(f"na64-daq run {run} exited with {code} (log in {procs.logdir})")
    return out / "runs" / f"run-{run:06d}"


#: MC events per background source for the demo's run 2: enough to show every source, small enough that the
#: whole table adds well under a minute to the demo
BACKGROUND_EVENTS = 20000


def background_run2(
    procs: Processes, out: pathlib.Path, cfg_path: pathlib.Path, run2: pathlib.Path, intensity: float
) -> None:
    """``na64-offline background --sources`` for run 2's EOT (from its run record) at the demo's ``intensity``
    (e-/spill), written to ``<out>/background-run2.json``; skipped (with a note) when run 2 counted no EOT."""
    from detector.runrecord import read_run_record

    eot = float(read_run_record(run2).get("totals", {}).get("eot", 0))
    if eot <= 0:
        console.print("[yellow]run 2 counted no EOT: no background prediction[/]")
        return
    procs.run(
        "background-run2",
        tool("na64-offline")
        + [
            "background",
            "--sources",
            "--eot",
            f"{eot:.6g}",
            "--intensity",
            f"{intensity:.6g}",
            "--events",
            str(BACKGROUND_EVENTS),
            "--config",
            str(cfg_path),
            "--serial",  # on the demo's two cores a LocalCluster's start-up costs more than it saves
            "--json",
            str(out / "background-run2.json"),
        ],
        timeout=600,
    )


def background_rows(bkg: dict[str, Any], n_obs: int | None) -> list[tuple[str, str, str]]:
    """Rows (source, expected events, MC events used) of a ``background --sources`` result ``bkg``: n +/- err,
    or "< bound" (90% CL) for a source whose MC box was empty; then the total (the bounds of the empty
    sources beside it) and the ``n_obs`` events observed in the box."""
    rows: list[tuple[str, str, str]] = []
    bounds = 0.0
    n_sum, var = 0.0, 0.0  # the sources with events in their MC box (an empty box's err is its bound's scale)
    for name, r in bkg["sources"].items():
        mc = r["mc"]
        upper = mc.get("n_upper_90")
        if upper is not None:
            bounds += float(upper)
            expected = f"< {upper:.2g} (90% CL)"
        else:
            n_sum, var = n_sum + float(r["n"]), var + float(r["err"]) ** 2
            expected = f"{r['n']:.2g} ± {r['err']:.2g}"
        rows.append((name, expected, f"{mc['events']} ({mc['box_events']} in the box)"))
    total = f"{n_sum:.2g} ± {var**0.5:.2g}" + (f" (+ < {bounds:.2g} from the empty boxes)" if bounds else "")
    events = sum(int(r["mc"]["events"]) for r in bkg["sources"].values())
    rows.append(("total", total, str(events)))
    rows.append(("observed in the box", "-" if n_obs is None else str(n_obs), ""))
    return rows


def background_table(bkg: dict[str, Any], n_obs: int | None) -> Table:
    """The rich table of :func:`background_rows` for run 2's EOT."""
    missing = [
        f"{name}: {r['mc']['not_simulated']}" for name, r in bkg["sources"].items() if r["mc"].get("not_simulated")
    ]
    t = Table(
        title=f"run 2's box opened: expected background per source for {bkg['eot']:.3g} EOT (no A' injected)",
        caption="< : 90% CL bound of a source whose MC box was empty, as small as its MC statistics allow"
        + "".join(f"\nnot simulated in {m}" for m in missing),
    )
    for col in ("source", "expected events", "MC events used"):
        t.add_column(col)
    rows = background_rows(bkg, n_obs)
    for i, row in enumerate(rows):
        t.add_row(*row, end_section=i == len(rows) - 3)
    return t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--out",
        default=str(ROOT / "demo-output"),
        help="output directory: new or empty, or one the demo created before (emptied first)",
    )
    ap.add_argument("--config", default=str(ROOT / "config" / "demo.toml"))
    ap.add_argument("--module", type=int, default=3, help="HCAL module to calibrate")
    ap.add_argument("--spills", type=int, default=6, help="spills per physics run")
    args = ap.parse_args(argv)
    out = pathlib.Path(args.out).resolve()
    problem = prepare_out(out)
    if problem is not None:
        console.print(f"[bold red]demo:[/] {problem}")
        return 2
    (out / "logs").mkdir(parents=True)
    base = load_config(args.config)
    procs = Processes(out / "logs")
    t0 = time.monotonic()
    summary: dict[str, Any] = {}
    try:
        cfg_path = write_config(base, out / "beamtime.toml")
        calib_feed = write_config(
            base,
            out / "feed-calibration.toml",
            beam={"particles_per_spill": base.beam.calibration_particles_per_spill},
            spill={"length_s": 0.3, "supercycle_s": 0.8},
        )
        aprime_feed = write_config(base, out / "feed-aprime.toml", aprime={"enabled": True})
        plain_feed = write_config(base, out / "feed-physics.toml", aprime={"enabled": False})

        step("1. na64-emulator: MSADC crate, HV mainframe, HCAL table")
        endpoints_file = out / "endpoints.json"
        emu = procs.start(
            "na64-emulator",
            tool("na64-emulator")
            + ["--config", str(cfg_path), "--endpoints-file", str(endpoints_file), "--external-feed"],
        )
        endpoints = wait_for_file(endpoints_file, 60, emu)
        console.print(endpoints)

        step(f"2. calibration: hv-tune on HCAL module {args.module}")
        feed = procs.start(
            "feed-calibration",
            [sys.executable, "-m", "sim_frontend.feed", "--config", str(calib_feed), "--endpoint", endpoints["feed"]],
        )
        code = procs.run(
            "hv-tune",
            tool("hv-tune")
            + [
                "--config",
                str(cfg_path),
                "--endpoints-file",
                str(endpoints_file),
                "--modules",
                str(args.module),
                "--logbook",
                str(out / "logbook.txt"),
                "--daq-out",
                str(out / "calibration"),
            ],
            timeout=900,
            ok_codes=(0, 1),
        )
        procs.stop("feed-calibration", feed)
        console.print((out / "logbook.txt").read_text())
        summary["hv_tune_exit"] = code

        step("3. offline: A' yields for the live sensitivity view")
        yields = out / "yields.json"
        procs.run(
            "yields",
            tool("na64-offline") + ["yields", "--masses", "2,5,16.7,50,100,200,500", "--json", str(yields)],
            timeout=300,
        )

        step(
            f"4. physics run 1: {args.spills} spills with A' injected (m = {base.aprime.mass_mev} MeV, "
            f"eps = {base.aprime.epsilon}, physical rate)"
        )
        run1 = physics_run(
            procs,
            out,
            cfg_path,
            aprime_feed,
            endpoints,
            endpoints_file,
            1,
            args.spills,
            out / "monitor-live.png",
            yields,
        )

        step(f"5. physics run 2: {args.spills} spills without A'")
        run2 = physics_run(procs, out, cfg_path, plain_feed, endpoints, endpoints_file, 2, args.spills, None, yields)

        step("6. offline: signal efficiency, selection, background, limits, plots")
        procs.run(
            "simulate",
            tool("na64-offline")
            + [
                "simulate",
                "--mass",
                str(base.aprime.mass_mev),
                "--events",
                "2000",
                "--config",
                str(cfg_path),
                "--json",
                str(out / "signal-efficiency.json"),
            ],
            timeout=600,
        )
        for run, rdir in ((1, run1), (2, run2)):
            procs.run(
                f"report-run{run}",
                tool("na64-offline")
                + [
                    "report",
                    str(rdir),
                    "--out",
                    str(out / f"offline-run{run}"),
                    "--config",
                    str(cfg_path),
                    "--masses",
                    "2,5,16.7,50,100,200,500",
                    "--signal-json",
                    str(out / "signal-efficiency.json"),
                ],
                timeout=900,
            )
        background_run2(procs, out, cfg_path, run2, base.beam.particles_per_spill)
        procs.run(
            "monitor-replay",
            tool("na64-monitor")
            + [
                "--config",
                str(cfg_path),
                "--replay",
                str(run2),
                "--yields",
                str(yields),
                "--screenshot",
                str(out / "monitor-replay.png"),
                "--exit-after",
                "8",
            ],
            env=dict(os.environ, QT_QPA_PLATFORM="offscreen"),
            timeout=300,
        )
    except KeyboardInterrupt:
        console.print("[bold red]interrupted: stopping everything the demo started[/]")
        return 130
    except (RuntimeError, OSError, KeyError, json.JSONDecodeError) as exc:
        console.print(f"[bold red]demo failed:[/] {exc}")
        return 1
    finally:
        procs.stop_all()
    print_summary(out, time.monotonic() - t0)
    return 0


def print_summary(out: pathlib.Path, seconds: float) -> None:
    from detector.runrecord import read_run_record

    step(f"Summary ({seconds:.0f} s)")
    t = Table(title="runs")
    for col in (
        "run",
        "spills",
        "EOT",
        "physics triggers",
        "recorded / accepted",
        "events in the box",
        "flagged spills",
    ):
        t.add_column(col)
    for run, name in ((1, "offline-run1"), (2, "offline-run2")):
        rdir = out / "runs" / f"run-{run:06d}"
        try:
            rec = read_run_record(rdir)
        except OSError:
            continue
        sel = {}
        if (out / name / "summary.json").exists():
            sel = json.loads((out / name / "summary.json").read_text())
        tot = rec.get("totals", {})
        physics = sum(sp.get("triggers", {}).get("physics", {}).get("accepted", 0) for sp in rec.get("spills", []))
        flagged = sum(1 for sp in rec.get("spills", []) if sp.get("flags"))
        truth_ap = (sel.get("truth") or {}).get("aprime_in_box")
        t.add_row(
            str(run),
            str(tot.get("spills", "-")),
            f"{tot.get('eot', 0):.3g}",
            str(physics),
            f"{tot.get('events_recorded', '-')} / {tot.get('events_accepted', '-')}",
            str(sel.get("n_obs", "-")) + (f" ({truth_ap} A' by truth)" if truth_ap is not None else ""),
            str(flagged),
        )
    console.print(t)
    bkg = out / "background-run2.json"
    if bkg.exists():
        s2 = out / "offline-run2" / "summary.json"
        n_obs = json.loads(s2.read_text()).get("n_obs") if s2.exists() else None
        console.print(background_table(json.loads(bkg.read_text()), n_obs))
    lim = out / "offline-run2" / "summary.json"
    if lim.exists():
        s = json.loads(lim.read_text())
        lt = Table(title="90% CL limits from run 2 (no A' injected), from the mass scan of exclusion.png")
        for col in ("m_A' [MeV]", "efficiency", "eps_90", "y_90 (alpha_D = 0.5)", "y_90 (alpha_D = 0.1)"):
            lt.add_column(col)
        limits = s.get("limits") or {}
        for row in limits.get("scan") or limits.get("points") or []:
            decade = abs(math.log10(row["mass_mev"]) - round(math.log10(row["mass_mev"]))) < 1e-9
            if decade or not row.get("efficiency_interpolated", False):
                how = " (interpolated)" if row.get("efficiency_interpolated") else ""
                y01 = row.get("y90_alphaD_0.1")
                lt.add_row(
                    f"{row['mass_mev']:g}",
                    f"{row['efficiency']:.3g}{how}",
                    f"{row['eps_90']:.3g}",
                    f"{row['y90_alphaD_0.5']:.3g}",
                    "-" if y01 is None else f"{y01:.3g}",
                )
        console.print(lt)
        console.print(
            f"plots: {', '.join(str(p.relative_to(out.parent)) for p in sorted(out.glob('offline-run*/*.png')))}"
        )
        eff = out / "signal-efficiency.json"
        if eff.exists():
            console.print(f"signal efficiency (simulate): {eff.read_text().strip()[:300]}")
    console.print("[bold]files written:[/]")
    for p in sorted(out.rglob("*")):
        if p.is_file() and not p.name.endswith(".log") and "calibration" not in p.parts:
            console.print(f"  {p.relative_to(out.parent)}")


if __name__ == "__main__":
    sys.exit(main())
