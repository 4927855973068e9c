"""Synthetic monitoring stream: realistic messages of every topic of docs/protocols.md 4.2 and a tiny
ZeroMQ publisher. Used by the monitor's tests and benchmark, and to look at the window before a DAQ
exists::

    python -m online.monitor.synthetic --bind tcp://127.0.0.1:5556 --interval 2     # publisher
    na64-monitor --connect tcp://127.0.0.1:5556                                     # viewer
    na64-monitor --synthetic --screenshot /tmp/monitor.png --exit-after 3           # no socket at all

Numbers follow docs/architecture.md / docs/physics.md: ~5e6 electrons per 4.8 s spill, V0/S1 = 0.126, beam
trigger prescaled 1/1000 (its raw count is the EOT), random trigger 10 Hz; the E_ECAL vs E_HCAL plane
has the 100 GeV electron peak, the hadron band E_ECAL + E_HCAL ~ 100 GeV, dimuons, muons and a few
upstream-interaction events near the signal box. Waveforms are made with the detector's own pulse
model (:func:`detector.pulse.synthesize`). Fault knobs: ``beam_factor`` (rate drop / no beam),
``momentum_factor`` (beam momentum moved), ``trip`` and ``deviate`` (HV), ``error`` (DAQ state ERROR),
``skip_seq`` (sequence gaps). Topics, binning,
states and status bits come from the contract (:mod:`detector.monitoring`, :mod:`detector.hwstatus`); a
topic of the contract without a generator here gets random arrays of its declared shapes.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import numpy as np

from detector import channels as ch
from detector import monitoring as mon
from detector.framing import Message, as_received, encode
from detector.hwstatus import HVStatus
from detector.monitoring import ECAL_EDGES, HCAL_EDGES, DAQState

#: reference A' yields per EOT at eps = 1 (IWW, Pb, E0 = 100 GeV, E_A' > 50 GeV; docs/physics.md 3.5, CALC) for
#: demonstrations of the sensitivity view before `na64-offline yields --json` has been run
REFERENCE_YIELDS_IWW = (
    (1.0, 1.59e-1),
    (2.0, 9.89e-2),
    (5.0, 3.50e-2),
    (10.0, 1.35e-2),
    (16.7, 6.30e-3),
    (20.0, 4.76e-3),
    (50.0, 1.02e-3),
    (100.0, 2.57e-4),
    (200.0, 5.41e-5),
    (500.0, 5.41e-6),
    (1000.0, 8.29e-7),
)


def _default_gev_per_count() -> np.ndarray:
    g = np.empty(ch.N_CHANNELS)
    for c in ch.CHANNELS:
        g[c.id] = {
            "ecal": 0.03 if c.section == 1 else 0.005,
            "hcal": 0.032,
            "counter": 5e-6,
            "veto": 5e-6,
            "srd": 5e-5,
            "sum": 0.04,
        }[c.kind]
    g[ch.by_name("V2").id] = 4e-5
    g[ch.by_name("PS_SUM").id] = 0.008
    return g


def _default_hv_set() -> np.ndarray:
    v = np.zeros(ch.N_CHANNELS)
    for c in ch.CHANNELS:
        v[c.id] = {"ecal": 1000.0, "hcal": 850.0, "counter": 1200.0, "veto": 1200.0, "srd": 1100.0, "sum": 0.0}[c.kind]
    return v


class SyntheticDAQ:
    """Generator of the monitoring messages a DAQ publishes, with per-topic sequence numbers."""

    def __init__(
        self,
        run: int = 1,
        seed: int = 0,
        particles_per_spill: float = 5e6,
        spill_length_s: float = 4.8,
        n_waveforms: int = 8,
        hist_events: int = 4000,
        amplitude_events: int = 200,
    ) -> None:
        self.run = int(run)
        self.rng = np.random.default_rng(seed)
        self.particles_per_spill = float(particles_per_spill)
        self.spill_length_s = float(spill_length_s)
        self.n_waveforms = int(n_waveforms)
        self.hist_events = int(hist_events)
        self.amplitude_events = int(amplitude_events)
        self.seq = mon.TopicSequence()
        self.spill = 0
        self.eot_total = 0
        self.events_recorded = 0
        self.lost_spills = 0
        self.last_spill_unix = 0.0
        # fault knobs
        self.beam_factor = 1.0
        self.trip: set[int] = set()  #: HV channel ids whose trip bit is set
        self.deviate: dict[int, float] = {}  #: channel id -> VMON - VSET (V)
        self.error = ""  #: non-empty: the DAQ reports state ERROR
        self.skip_seq = 0  #: skip this many sequence numbers of the next message's topic
        self.momentum_factor = 1.0  #: beam momentum / beam energy (the momentum alarm)
        self._spec: Any = None
        self.led_gain: dict[int, float] = {}  #: calorimeter cell -> factor on its LED amplitude (a gain jump)
        self.gev_per_count = _default_gev_per_count()
        self.hv_ids = np.array([c.id for c in ch.CHANNELS if c.hv_board is not None], dtype=np.int64)
        self.hv_vset = _default_hv_set()[self.hv_ids].astype(np.float32)
        self.beam_cell = (2.6, 2.4)  # shower centre in ECAL cell units
        self._profiles()
        self._wave_pool: np.ndarray | None = None

    # ------------------------------------------------------------------------------------------
    def _profiles(self) -> None:
        cx, cy = self.beam_cell
        x, y = np.meshgrid(np.arange(6), np.arange(6), indexing="ij")
        r = np.hypot(x - cx, y - cy)
        main = np.exp(-r / 0.55)
        ps = np.exp(-r / 0.35)
        self.ecal_profile = np.stack([ps / ps.sum(), main / main.sum()])  # [k][x][y]
        hx, hy = np.meshgrid(np.arange(3), np.arange(3), indexing="xy")  # [y][x]
        hr = np.hypot(hx - 1.0, hy - 1.0)
        h = np.exp(-hr / 0.6)
        self.hcal_profile = h / h.sum()  # [y][x]
        self.hcal_longitudinal = np.array([0.55, 0.27, 0.12, 0.06])

    def message(
        self,
        topic: str,
        arrays: dict[str, np.ndarray] | None = None,
        meta: dict[str, Any] | None = None,
        spill: int | None = None,
        now: float | None = None,
    ) -> Message:
        """One message exactly as a subscriber decodes it (framed and decoded)."""
        for _ in range(self.skip_seq):
            self.seq.take(topic)
        self.skip_seq = 0
        spill = self.spill if spill is None else spill
        return as_received(topic, self.seq.take(topic), arrays, meta, self.run, spill, now)

    def status(self, state: str | None = None, now: float | None = None, message: str = "") -> Message:
        now = time.time() if now is None else now
        st = DAQState.ERROR.value if self.error else (state or DAQState.IDLE.value)
        meta = {
            "state": st,
            "run": self.run,
            "spill": self.spill,
            "last_spill_unix": self.last_spill_unix,
            "spills_done": self.spill,
            "events_recorded": self.events_recorded,
            "lost_spills": self.lost_spills,
            "message": self.error or message,
        }
        return self.message("status", meta=meta, now=now)

    def log(self, text: str, level: str = "INFO", now: float | None = None) -> Message:
        return self.message("log", meta={"level": level, "text": text}, now=now)

    def hv(self, now: float | None = None) -> Message:
        n = self.hv_ids.size
        vset = self.hv_vset.copy()
        vmon = (vset + self.rng.normal(0.0, 0.3, n)).astype(np.float32)
        status = np.full(n, int(HVStatus.ON), dtype=np.int32)
        for i, cid in enumerate(self.hv_ids):
            if int(cid) in self.deviate:
                vmon[i] = vset[i] + self.deviate[int(cid)]
            if int(cid) in self.trip:
                vmon[i] = 0.0
                status[i] = HVStatus.TRIP | HVStatus.OVC
        imon = np.maximum(vmon * 0.2 + self.rng.normal(0, 0.05, n), 0.0).astype(np.float32)  # uA (5 MOhm)
        return self.message(
            "hv", {"vset": vset, "vmon": vmon, "imon": imon, "status": status, "channel_ids": self.hv_ids}, now=now
        )

    # ------------------------------------------------------------------------------------------
    def scalers(self, now: float) -> Message:
        rng = self.rng
        particles = max(
            0, int(rng.normal(self.particles_per_spill, 0.03 * self.particles_per_spill) * self.beam_factor)
        )
        s0 = int(particles * 0.985)
        s1 = int(particles * 0.95)
        v0 = int(rng.poisson(0.126 * s1)) if s1 else 0
        pisi = int(s1 * 0.90)
        trig = {
            "physics": (int(rng.poisson(4e-3 * pisi)) if pisi else 0, 0.98),
            "beam": (pisi, 1e-3),
            "random": (int(round(10 * self.spill_length_s)) if particles else 0, 1.0),
            "dimuon": (int(rng.poisson(2.5e-3 * pisi)) if pisi else 0, 0.98),
        }
        triggers = {k: {"raw": raw, "accepted": int(raw * f)} for k, (raw, f) in trig.items()}
        accepted = sum(t["accepted"] for t in triggers.values())
        self.eot_total += pisi
        self.events_recorded += accepted
        self._accepted = accepted
        meta = {
            "S0": s0,
            "S1": s1,
            "V0": v0,
            "eot": pisi,
            "eot_total": self.eot_total,
            "particles": particles,
            "triggers": triggers,
            "accepted": accepted,
            "read_out": accepted,
            "recorded": accepted,
            "flags": [],
            "spill_length_s": self.spill_length_s,
            "start_unix": now - self.spill_length_s,
        }
        return self.message("scalers", meta=meta, now=now)

    def calo(self, now: float) -> Message:
        rng = self.rng
        n = max(self._accepted, 0)
        # mean deposits per recorded event (a mix of 100 GeV e- and triggered low-E_ECAL events)
        e_ps, e_main, e_hcal = 2.5 * n, 55.0 * n, 30.0 * n
        ee = np.stack([self.ecal_profile[0] * e_ps, self.ecal_profile[1] * e_main])
        ee *= rng.normal(1.0, 0.02, ee.shape).clip(0.5)
        he = self.hcal_longitudinal[:, None, None] * self.hcal_profile[None] * e_hcal
        he *= rng.normal(1.0, 0.03, he.shape).clip(0.5)
        eo = rng.binomial(n, np.clip(np.stack([self.ecal_profile[0], self.ecal_profile[1]]) * 6, 0, 1))
        ho = rng.binomial(n, np.clip(self.hcal_longitudinal[:, None, None] * self.hcal_profile[None] * 4, 0, 1))
        return self.message(
            "calo",
            {
                "ecal_energy": ee,
                "ecal_occupancy": eo.astype(np.int64),
                "hcal_energy": he,
                "hcal_occupancy": ho.astype(np.int64),
            },
            meta={"events": n},
            now=now,
        )

    def ecal_hcal(self, now: float) -> Message:
        rng = self.rng
        n = self.hist_events if self._accepted else 0
        kind = rng.choice(5, size=n, p=[0.42, 0.36, 0.12, 0.05, 0.05])
        e_ecal = np.empty(n)
        e_hcal = np.empty(n)
        m = kind == 0  # electrons: full shower in the ECAL
        e_ecal[m] = rng.normal(100.0, 2.0, m.sum())
        e_hcal[m] = rng.exponential(0.15, m.sum())
        m = kind == 1  # hadrons: E_ECAL + E_HCAL ~ 100 GeV (HCAL resolution worse)
        ec = rng.uniform(1.0, 80.0, m.sum())
        e_ecal[m] = ec
        e_hcal[m] = np.clip((100.0 - ec) * rng.normal(0.9, 0.12, m.sum()), 0, None)
        m = kind == 2  # upstream interactions: soft e- in the ECAL, nothing behind
        e_ecal[m] = rng.uniform(20.0, 95.0, m.sum())
        e_hcal[m] = rng.exponential(0.4, m.sum())
        m = kind == 3  # dimuons: two MIPs through the HCAL
        e_ecal[m] = rng.normal(75.0, 8.0, m.sum())
        e_hcal[m] = rng.normal(5.0, 1.2, m.sum())
        m = kind == 4  # beam muons
        e_ecal[m] = rng.normal(0.6, 0.15, m.sum())
        e_hcal[m] = rng.normal(2.5, 0.6, m.sum())
        (elo, ehi, en), (hlo, hhi, hn) = ECAL_EDGES, HCAL_EDGES
        counts, _, _ = np.histogram2d(e_ecal, e_hcal, bins=(en, hn), range=((elo, ehi), (hlo, hhi)))
        return self.message(
            "ecal_hcal",
            {"counts": counts},
            meta={"ecal_edges": list(ECAL_EDGES), "hcal_edges": list(HCAL_EDGES)},
            now=now,
        )

    def _pool(self) -> np.ndarray:
        if self._wave_pool is None:
            from detector.pulse import synthesize

            rng = np.random.default_rng(1234)
            k = 32
            e_beam = rng.choice([100.0, 100.0, 60.0, 30.0], size=k)
            energy = np.zeros((k, ch.N_CHANNELS))
            energy[:, :72] = (
                e_beam[:, None]
                * np.concatenate([0.05 * self.ecal_profile[0].ravel(), 0.95 * self.ecal_profile[1].ravel()])[None]
            )
            had = np.clip(100.0 - e_beam, 0, None)
            energy[:, 72:108] = (
                had[:, None] * (self.hcal_longitudinal[:, None, None] * self.hcal_profile[None]).ravel()[None]
            )
            for name in ("S0", "S1", "S2", "S3", "S4"):
                energy[:, ch.by_name(name).id] = 1e-3 * rng.gamma(8.0, 1 / 8.0, k)
            energy[:, ch.by_name("SRD0").id : ch.by_name("SRD2").id + 1] = rng.gamma(4, 0.05 / 4, (k, 3)) / 3
            energy[:, ch.by_name("ECAL_SUM").id] = energy[:, :72].sum(1)
            energy[:, ch.by_name("PS_SUM").id] = energy[:, :36].sum(1)
            amp = np.clip(energy / self.gev_per_count[None] * rng.normal(1.0, 0.03, energy.shape), 0, 3900)
            t0 = rng.normal(100.0, 1.5, amp.shape)
            self._wave_pool = synthesize(amp, t0, 150.0, 156.0, seed=7)
        return self._wave_pool

    def waveforms(self, now: float) -> Message:
        pool = self._pool()
        k = min(self.n_waveforms, pool.shape[0]) if self._accepted else 0
        idx = (np.arange(k) + self.spill * k) % pool.shape[0]
        ids = (
            np.sort(self.rng.choice(max(self._accepted, k, 1), size=k, replace=False)).astype(np.int64)
            if k
            else np.zeros(0, np.int64)
        )
        return self.message("waveforms", {"waveforms": np.ascontiguousarray(pool[idx]), "event_ids": ids}, now=now)

    def amplitudes(self, now: float) -> Message:
        n = self.amplitude_events if self._accepted else 0
        a = np.zeros((n, ch.N_CALO), dtype=np.float32)
        if n:
            tot = self.rng.normal(100.0, 2.0, n)
            a[:, :72] = (
                tot[:, None]
                * np.concatenate([0.05 * self.ecal_profile[0].ravel(), 0.95 * self.ecal_profile[1].ravel()])[None]
                / self.gev_per_count[None, :72]
            )
        return self.message(
            "amplitudes",
            {"amplitudes": a},
            meta={"table": {"x_mm": 0.0, "y_mm": 0.0, "module": -1, "cell": ""}, "start_unix": now},
            now=now,
        )

    def tracker(self, now: float) -> Message:
        """``tracker`` through the DAQ's own histogramming (:func:`online.monitor_messages.tracker_histograms`)
        of made-up tracks: the beam peak at ``momentum_factor`` x the beam energy with 1% resolution, a
        bremsstrahlung tail, 0.15 mrad angles, pile-up tracks, 97% efficient planes, a 5 mm beam spot."""
        from detector.config import load_config
        from detector.tracking import TRACK_DTYPE, PlaneSummary, Spectrometer
        from online.monitor_messages import tracker_histograms

        if self._spec is None:
            self._spec = Spectrometer.from_config(load_config(None))
        spec, rng = self._spec, self.rng
        n = self.hist_events if self._accepted else 0
        t = np.zeros(n, TRACK_DTYPE)
        brem = rng.random(n) < 0.08
        p = spec.p0_gev * self.momentum_factor * rng.normal(1.0, 0.01, n)
        t["p_gev"] = np.where(brem, p * rng.uniform(0.5, 1.0, n), p)
        t["angle_mrad"] = np.hypot(*rng.normal(0.0, 0.15, (2, n))) + np.where(brem, rng.exponential(1.5, n), 0.0)
        t["n_tracks"] = rng.choice(4, size=n, p=[0.10, 0.75, 0.13, 0.02])
        planes = PlaneSummary.zeros(n, spec.n_planes)
        planes.n_strips[:] = rng.poisson(4.0, planes.n_strips.shape)
        planes.n_clusters[:] = rng.poisson(2.0, planes.n_clusters.shape)
        planes.lead_mm[:] = rng.normal(0.0, 5.0, planes.lead_mm.shape)
        planes.lead_charge[:] = np.where(rng.random(planes.lead_charge.shape) < 0.97, 300.0, 30.0)
        m = tracker_histograms(t, planes, spec)
        return self.message(m.topic, m.arrays, m.meta, now=now)

    def led(self, now: float) -> Message:
        """LED cell means: 1500 ADC counts x a fixed per-cell gain, 0.3% spill-to-spill noise, x ``led_gain``."""
        gain = np.random.default_rng(7).uniform(0.8, 1.2, ch.N_CALO)
        a = 1500.0 * gain * self.rng.normal(1.0, 0.003, ch.N_CALO)
        for cid, f in self.led_gain.items():
            a[cid] *= f
        return self.message("led", {"amplitude": a, "rms": 0.023 * a}, meta={"pulses": 50, "unix": now}, now=now)

    def generic(self, spec: mon.TopicSpec, now: float) -> Message:
        """A message of a topic without its own generator: random values of each declared array (a
        named dimension is 8), each meta key 0."""
        dims: dict[str, int] = {}
        arrays = {}
        for a in spec.arrays:
            shape = tuple(dims.setdefault(d, 8) if isinstance(d, str) else d for d in a.shape)
            arrays[a.name] = (self.rng.random(shape) * 100).astype(a.dtype)
        return self.message(spec.name, arrays, meta=dict.fromkeys(spec.meta, 0), now=now)

    def spill_messages(self, now: float | None = None, states: bool = True) -> list[Message]:
        """Everything the DAQ publishes for one spill, in publishing order."""
        now = time.time() if now is None else now
        self.spill += 1
        out = []
        if states:
            out += [self.status(s.value, now) for s in (DAQState.SPILL, DAQState.END_OF_SPILL, DAQState.READOUT)]
        out.append(self.scalers(now))
        self.last_spill_unix = now
        own = {"status", "scalers", "log", "calo", "ecal_hcal", "waveforms", "amplitudes", "hv", "tracker", "led"}
        out += [self.calo(now), self.ecal_hcal(now), self.waveforms(now), self.amplitudes(now), self.hv(now)]
        out.append(self.tracker(now))
        out.append(self.led(now))
        out += [self.generic(t, now) for t in mon.TOPICS.values() if t.name not in own]
        out.append(self.status(DAQState.RECORDED.value, now))
        if self.spill % 10 == 0:
            out.append(self.log(f"run {self.run}: {self.spill} spills recorded, EOT {self.eot_total:.3g}", now=now))
        return out


def write_example_yields(path: str) -> str:
    """Write a yields file in the layout of `na64-offline yields --json` from the docs/physics.md reference
    table (for demonstrations and tests; a real run uses the offline result)."""
    import json

    data = {
        "e0_gev": 100.0,
        "emiss_min_gev": 50.0,
        "model": "IWW",
        "yields": [{"mass_mev": m, "yield_per_eot_eps1": y} for m, y in REFERENCE_YIELDS_IWW],
    }
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1)
    return path


def synthetic_batches(daq: SyntheticDAQ, spills: int = 0) -> Any:
    """Batches of messages, one per spill (``spills`` = 0: endless), starting with an IDLE status and
    an HV reading: the input of :class:`online.monitor.stream.FeederThread`."""
    yield [daq.status(DAQState.IDLE.value), daq.hv()]
    i = 0
    while spills == 0 or i < spills:
        yield daq.spill_messages()
        i += 1


def frames_of(msg: Message) -> list[Any]:
    """Frames to send for a message (re-encoded with its own sequence number and time)."""
    return encode(msg.topic, msg.seq, msg.arrays, msg.meta, msg.run, msg.spill, msg.time)


class SyntheticPublisher:
    """A ZeroMQ PUB socket that sends :class:`SyntheticDAQ` messages (bind ``tcp://127.0.0.1:0`` for any
    free port; ``endpoint`` is the address actually bound)."""

    def __init__(self, bind: str = "tcp://127.0.0.1:0", sndhwm: int = 10000) -> None:
        import zmq

        self._zmq = zmq
        self.sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.PUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, sndhwm)
        self.sock.bind(bind)
        self.endpoint: str = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def send(self, msg: Message) -> None:
        self.sock.send_multipart(frames_of(msg), copy=False)

    def send_raw(self, frames: list[Any]) -> None:
        """Send arbitrary frames (tests of malformed messages)."""
        self.sock.send_multipart(frames)

    def close(self) -> None:
        self.sock.close(0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m online.monitor.synthetic",
        description="Publish a synthetic NA64 monitoring stream (all topics).",
    )
    p.add_argument("--bind", default="tcp://127.0.0.1:5556", help="PUB address (default %(default)s)")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between spills (default %(default)s)")
    p.add_argument("--spills", type=int, default=0, help="spills to send; 0 = until Ctrl-C")
    p.add_argument("--run", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trip", action="append", default=[], metavar="CHANNEL", help="HV channel to show tripped")
    p.add_argument(
        "--write-yields",
        metavar="JSON",
        help="only write an example yields file (docs/physics.md reference values) for the sensitivity view, and exit",
    )
    args = p.parse_args(argv)
    if args.write_yields:
        print(write_example_yields(args.write_yields))
        return 0
    daq = SyntheticDAQ(run=args.run, seed=args.seed)
    daq.trip = {ch.by_name(n).id for n in args.trip}
    pub = SyntheticPublisher(args.bind)
    print(f"publishing on {pub.endpoint}", file=sys.stderr)
    try:
        i = 0
        while args.spills == 0 or i < args.spills:
            for m in daq.spill_messages():
                pub.send(m)
            i += 1
            t_end = time.monotonic() + args.interval
            while time.monotonic() < t_end:
                pub.send(daq.status(DAQState.IDLE.value))
                time.sleep(min(1.0, max(0.0, t_end - time.monotonic())))
    except KeyboardInterrupt:
        pass
    finally:
        pub.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
