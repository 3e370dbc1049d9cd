"""Live ADP: JSEQ against round-robin over two accelerator workers, and module throughput.

    python -m bench.bench_adp [--quick] [--seconds S] [--load L]

Prints one JSON line per case on stdout (the first is ``"case": "environment"``); logs go
to stderr. Cases:

- ``calibrate``: items/s the two accelerators sustain on the workload (a burst through the
  JSEQ ADP); the offered rate of the latency cases is ``load`` (default 0.6) times this.
- ``latency_jseq`` and ``latency_round_robin``: seeded Poisson arrivals of skewed work (50%
  ``rms`` on 2x1024, 35% ``power_spectrum`` on 4x1024, 15% ``fir`` on 2x2048 with 384 taps:
  a 1-2 ms kernel) submitted to an ADP with ``policy = "jseq"`` and to one with
  ``policy = "round_robin"``, in alternating rounds (ABBA order: 2 rounds of 0.75 s with
  ``--quick``, else 6 of 2.5 s), each round drained before the next and using the same
  arrivals for both policies, so a background load that drifts (a shared machine) weighs
  on both alike. Completion time is measured by the submitting client, from publishing an
  item to receiving its ``work.results`` reply (the bench's own clock). p50/p90/p99/mean,
  and how many items each accelerator ran.
- ``jseq_vs_round_robin``: round-robin p50 and p99 over JSEQ's (> 1: JSEQ is faster).
- ``drpp_throughput``: sensor samples/s through DRPP (1024-sample chunks of a sine in
  noise, full-band detection, block 1024, hop 512), published as fast as the fabric takes
  them, until DRPP's sample counter has them all.
- ``adp_throughput``: items/s through ADP -> accelerators -> ADP -> client for tiny items
  (``sum`` of 16 samples): the fabric's per-item cost, not the kernels'.

The fabric (one, started once): the router, DRPP, two ADP workers (``adp`` with JSEQ on
``adp.input``; ``adp-rr`` with round-robin on ``adp.input.rr``), and two accelerators,
``accel-1`` with ``slowdown_factor = 4`` (it runs every kernel four times: a device a
quarter as fast). Both ADPs share the accelerators; the cases run one after the other.
A warm-up round per policy (not measured) comes first, so that JSEQ has learned the
per-kernel durations and the slow accelerator's slowdown, as in a long-running fabric.

Method notes: processes are not pinned by the bench (the supervisor's plan pins them);
on a 2-core machine the six worker processes, the supervisor's tick thread and this
client share the cores, so absolute numbers are those of a crowded host. There,
``slowdown_factor`` does not make an independent slower device: it repeats the kernel, so
the slow accelerator also takes CPU time from the fast one. JSEQ's model (independent
servers of different speeds) then holds only partly, and a background load that varies
from minute to minute moves the ratio between runs by more than the policies differ:
compare runs on a quiet machine, or ``bench_clogic``'s simulated dispatch case for the
policies alone. Benches may read clocks directly (``time.perf_counter_ns``): they are
not library code.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import sys
import threading
import time
from typing import Any

import numpy as np

__all__ = ["main"]

SLOW_FACTOR = 4
TOPICS = [
    "sensor", "drpp.patterns", "ems.modulation", "egc.decisions", "adp.input", "adp.input.rr", "adp.metrics",
    "accel.work", "accel.results", "work.results",
]


def _environment() -> dict[str, Any]:
    def version(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    uname = platform.uname()
    return {
        "bench": "adp",
        "case": "environment",
        "host": uname.node,
        "kernel": f"{uname.system} {uname.release}",
        "machine": uname.machine,
        "cpus": os.cpu_count(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "versions": {d: version(d) for d in ("numpy", "numba", "msgspec", "chronofabric")},
    }


def _emit(rec: dict[str, Any]) -> None:
    print(json.dumps(rec), flush=True)


def _topology(name: str):
    from fabric.config import FabricSpec, TopicSpec, TopologyConfig, WorkerSpec, validate_topology

    adp_subs = ["drpp.patterns", "accel.results", "ems.modulation", "egc.decisions"]
    cfg = TopologyConfig(
        fabric=FabricSpec(name=name, inbox_pool=12),
        topics=[TopicSpec(name=t) for t in TOPICS],
        workers=[
            WorkerSpec(name="router", kind="router", critical=True),
            WorkerSpec(name="drpp", kind="drpp", subscribe=["sensor", "ems.modulation"], options={"te_interval_ms": 0}),
            WorkerSpec(name="adp", kind="adp", subscribe=["adp.input", *adp_subs], options={"policy": "jseq"}),
            WorkerSpec(name="adp-rr", kind="adp", subscribe=["adp.input.rr", *adp_subs],
                       options={"policy": "round_robin", "input_topic": "adp.input.rr"}),
            WorkerSpec(name="accel-0", kind="accelerator", subscribe=["accel.work", "egc.decisions"]),
            WorkerSpec(name="accel-1", kind="accelerator", subscribe=["accel.work", "egc.decisions"],
                       options={"slowdown_factor": SLOW_FACTOR}),
        ],
    )
    validate_topology(cfg, source="<bench_adp>")
    return cfg


class _Ticker:
    def __init__(self, sup) -> None:
        self.sup = sup
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="supervisor-tick", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.wait(0.02):
                self.sup.tick()
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            self.error = exc

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


# --- workload ------------------------------------------------------------------------------------


class Workload:
    """Seeded skewed items: (kernel, inputs) by class."""

    def __init__(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.rng = rng
        self.light = [rng.standard_normal((2, 1024)) for _ in range(8)]
        self.medium = [rng.standard_normal((4, 1024)) for _ in range(8)]
        self.heavy = [rng.standard_normal((2, 2048)) for _ in range(8)]
        self.taps = rng.standard_normal(384)

    def item(self, u: float, k: int) -> tuple[str, list]:
        if u < 0.50:
            return "rms", [self.light[k % 8]]
        if u < 0.85:
            return "power_spectrum", [self.medium[k % 8]]
        return "fir", [self.heavy[k % 8], self.taps]

    def arrivals(self, rate_per_s: float, seconds: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Poisson arrival offsets (ns) and class draws for ``seconds`` at ``rate_per_s``."""
        rng = np.random.default_rng(seed)
        n = max(1, int(rate_per_s * seconds * 1.2) + 16)
        gaps = rng.exponential(1e9 / rate_per_s, n)
        t = np.cumsum(gaps)
        keep = t < seconds * 1e9
        return t[keep].astype(np.int64), rng.random(int(keep.sum()))


class Client:
    """The bench's fabric client: submits items and collects replies, one thread."""

    def __init__(self, name: str) -> None:
        import fabric

        self.fab = fabric.attach(name, timeout_ns=60_000_000_000)
        self.sub = self.fab.subscribe("work.results")
        self.pubs = {t: self.fab.publisher(t, priority=1) for t in ("adp.input", "adp.input.rr")}
        self.sent: dict[int, int] = {}
        self.done: dict[int, tuple[int, int, bool]] = {}  # item -> (latency ns, worker, ok)
        self.next_item = 0

    def submit(self, topic: str, kernel: str, inputs: list) -> int:
        item = self.next_item
        self.next_item += 1
        self.pubs[topic].publish({"item": item, "kernel": kernel, "inputs": inputs}, timeout_ns=30_000_000_000)
        self.sent[item] = time.perf_counter_ns()
        return item

    def collect(self) -> int:
        n = 0
        while batch := self.sub.receive_batch(256):
            now = time.perf_counter_ns()
            for p in batch:
                r = p.payload
                t0 = self.sent.pop(r["item"], None)
                if t0 is not None:
                    self.done[r["item"]] = (now - t0, r["worker"], r["ok"])
                    n += 1
        return n

    def wait_for(self, items: list[int], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while any(i not in self.done for i in items):
            if time.monotonic() > deadline:
                missing = sum(1 for i in items if i not in self.done)
                raise TimeoutError(f"{missing} of {len(items)} items got no reply within {timeout_s} s")
            if not self.collect():
                time.sleep(0.0005)

    def close(self) -> None:
        self.fab.close()


def _percentiles(lat_ns: list[int]) -> dict[str, int]:
    a = np.sort(np.asarray(lat_ns, dtype=np.int64))
    pick = lambda q: int(a[min(a.size - 1, int(np.ceil(q * a.size)) - 1)])  # noqa: E731 - nearest rank
    return {"p50_ns": pick(0.50), "p90_ns": pick(0.90), "p99_ns": pick(0.99), "max_ns": int(a[-1]),
            "mean_ns": int(a.mean())}


# --- cases ---------------------------------------------------------------------------------------


def calibrate(client: Client, wl: Workload, n: int) -> dict[str, Any]:
    """Items/s of the workload through JSEQ and both accelerators, in bursts of 64."""
    rng = np.random.default_rng(99)
    items = []
    t0 = time.perf_counter_ns()
    for k in range(n):
        kernel, inputs = wl.item(rng.random(), k)
        items.append(client.submit("adp.input", kernel, inputs))
        if k % 64 == 63:
            client.wait_for(items[-64:], 120)
    client.wait_for(items, 120)
    dt = time.perf_counter_ns() - t0
    return {"bench": "adp", "case": "calibrate", "items": n, "items_per_s": round(n * 1e9 / dt, 1)}


def latency_round(client: Client, wl: Workload, policy: str, rate: float, seconds: float,
                  seed: int) -> list[tuple[int, int, bool]]:
    """One round of seeded Poisson arrivals to one policy; (latency ns, worker row, ok) per item."""
    topic = "adp.input" if policy == "jseq" else "adp.input.rr"
    offsets, draws = wl.arrivals(rate, seconds, seed=seed)
    items: list[int] = []
    start = time.perf_counter_ns()
    for k, (off, u) in enumerate(zip(offsets.tolist(), draws.tolist())):
        while time.perf_counter_ns() - start < off:
            client.collect()
        kernel, inputs = wl.item(u, k)
        items.append(client.submit(topic, kernel, inputs))
    client.wait_for(items, 300)  # the round drains before the other policy's round starts
    return [client.done[i] for i in items]


def latency_cases(client: Client, wl: Workload, rate: float, rounds: int, seconds: float, warmup: float,
                  rows: dict[int, str]) -> dict[str, dict[str, Any]]:
    """Both policies, in alternating rounds (ABBA order) so that a drifting background load
    affects both alike; each round uses the same seeded arrivals for both policies."""
    for policy in ("jseq", "round_robin"):  # warm-up, not measured
        latency_round(client, wl, policy, rate, warmup, seed=999)
    got: dict[str, list] = {"jseq": [], "round_robin": []}
    for r in range(rounds):
        order = ("jseq", "round_robin") if r % 2 == 0 else ("round_robin", "jseq")
        for policy in order:
            got[policy] += latency_round(client, wl, policy, rate, seconds, seed=1000 + r)
    out = {}
    for policy, measured in got.items():
        per_worker: dict[str, int] = {}
        for _, w, _ in measured:
            per_worker[rows.get(w, str(w))] = per_worker.get(rows.get(w, str(w)), 0) + 1
        out[policy] = {
            "bench": "adp",
            "case": f"latency_{policy}",
            "policy": policy,
            "offered_per_s": round(rate, 1),
            "rounds": rounds,
            "seconds_per_round": seconds,
            "n": len(measured),
            "failed": sum(1 for _, _, ok in measured if not ok),
            **_percentiles([lat for lat, _, _ in measured]),
            "per_accelerator": dict(sorted(per_worker.items())),
        }
    return out


def drpp_throughput(fab, name: str, seconds: float) -> dict[str, Any]:
    from fabric.control import ControlBlock

    rate = 10_000.0
    chunk = 1024
    rng = np.random.default_rng(5)
    t = np.arange(chunk * 64) / rate
    x = np.sin(2 * np.pi * 440.0 * t) + 0.5 * rng.standard_normal(t.size)
    chunks = [x[k : k + chunk] for k in range(0, x.size, chunk)]
    pub = fab.publisher("sensor")
    cb = ControlBlock.attach(name)
    try:
        row = [w.name for w in cb.config().workers].index("drpp")
        base = int(cb.workers[row]["c"][0])
        events0 = int(cb.workers[row]["c"][2])
        n = 0
        t0 = time.perf_counter_ns()
        deadline = t0 + int(seconds * 1e9)
        while time.perf_counter_ns() < deadline:
            pub.publish({"stream": "bench", "rate_hz": rate, "t0_ns": int(n * chunk * 1e9 / rate),
                         "samples": chunks[n % len(chunks)]}, timeout_ns=30_000_000_000)
            n += 1
        want = base + n * chunk
        end_wait = time.monotonic() + 120
        while int(cb.workers[row]["c"][0]) < want:
            if time.monotonic() > end_wait:
                raise TimeoutError("DRPP did not take every sample within 120 s")
            time.sleep(0.001)
        dt = time.perf_counter_ns() - t0
        events = int(cb.workers[row]["c"][2]) - events0
    finally:
        cb.close()
    return {"bench": "adp", "case": "drpp_throughput", "samples": n * chunk, "chunk": chunk,
            "samples_per_s": round(n * chunk * 1e9 / dt, 1), "pattern_events": events}


def adp_throughput(client: Client, n: int, window: int = 512) -> dict[str, Any]:
    """Tiny items with at most ``window`` in flight (well inside ADP's queue: none is refused)."""
    x = np.ones((1, 16))
    items = []
    t0 = time.perf_counter_ns()
    for _ in range(n):
        while len(client.sent) >= window:
            if not client.collect():
                time.sleep(0.0002)
        items.append(client.submit("adp.input", "sum", [x]))
    client.wait_for(items, 120)
    dt = time.perf_counter_ns() - t0
    failed = sum(1 for i in items if not client.done[i][2])
    return {"bench": "adp", "case": "adp_throughput", "items": n, "in_flight": window, "failed": failed,
            "items_per_s": round(n * 1e9 / dt, 1)}


# --- main ----------------------------------------------------------------------------------------


def run(quick: bool, seconds: float | None, load: float) -> int:
    from fabric.logging import configure_logging
    from fabric.supervisor import Supervisor
    from fabric.testing import unique_prefix

    configure_logging(os.environ.get("CHRONOFABRIC_LOG", "WARNING"))
    _emit(_environment())
    seconds = seconds if seconds is not None else (0.75 if quick else 2.5)
    rounds = 2 if quick else 6
    warmup = 0.5 if quick else 2.0
    name = unique_prefix("b").replace("cfb-", "badp")
    cfg = _topology(name)
    rows = {r: w.name for r, w in enumerate(cfg.workers)}
    sup = Supervisor(cfg, log_level=os.environ.get("CHRONOFABRIC_LOG", "WARNING"))
    ticker = None
    client = None
    try:
        t0 = time.perf_counter()
        sup.start()
        print(f"bench_adp: fabric {name} started in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        ticker = _Ticker(sup)
        client = Client(name)
        wl = Workload(seed=7)
        cal = calibrate(client, wl, 128 if quick else 512)
        _emit(cal)
        rate = load * cal["items_per_s"]
        results = latency_cases(client, wl, rate, rounds, seconds, warmup, rows)
        for rec in results.values():
            _emit(rec)
        j, r = results["jseq"], results["round_robin"]
        _emit({
            "bench": "adp",
            "case": "jseq_vs_round_robin",
            "p50_ratio": round(r["p50_ns"] / j["p50_ns"], 3),
            "p99_ratio": round(r["p99_ns"] / j["p99_ns"], 3),
            "mean_ratio": round(r["mean_ns"] / j["mean_ns"], 3),
            "offered_per_s": j["offered_per_s"],
            "load": load,
        })
        _emit(drpp_throughput(client.fab, name, 1.0 if quick else 5.0))
        _emit(adp_throughput(client, 500 if quick else 5000))
        if ticker.error is not None:
            raise ticker.error
    finally:
        if client is not None:
            client.close()
        if ticker is not None:
            ticker.stop()
        sup.shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_adp", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short runs (a smoke test of the cases)")
    ap.add_argument("--seconds", type=float, default=None, help="seconds of arrivals per round (0.75 quick, 2.5)")
    ap.add_argument("--load", type=float, default=0.6, help="offered rate as a fraction of the calibrated rate")
    args = ap.parse_args(argv)
    if not 0.0 < args.load < 2.0:
        ap.error("--load must be in (0, 2)")
    return run(args.quick, args.seconds, args.load)


if __name__ == "__main__":
    sys.exit(main())
