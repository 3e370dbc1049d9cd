"""The C-LOGIC and accelerator workers' step logic, driven in this process over a real small fabric.

``InProcessFabric`` creates a real fabric's segments (the supervisor's own segment set-up,
nothing spawned) and constructs the router and the workers under test in this process,
each with its ``WorkerContext``; ``step()`` steps them all once, in row order, with one
time reading (a ``SimulatedTimeSource`` where a test needs to move time itself). A client
attached with ``fabric.attach`` publishes the inputs and subscribes to the outputs, so
every packet crosses real rings and the real router. ``crash(row)`` abandons a worker
without closing it (its durable inbox slot stays, as after SIGKILL) and marks its row
RESTARTING; ``restart(row)`` builds a new one on the same row, which adopts the slot.

Known answers: a sine in ``sensor`` gives a pattern event at its frequency; an
``adp.input`` item gives one ``work.results`` reply equal to numpy's answer; a formula
violation gives an EGC decision and sets the topic admission; stress observations move
``ems.modulation`` in the stated direction.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import pytest

import fabric
from fabric._process import self_identity
from fabric.config import FabricSpec, TopicSpec, TopologyConfig, WorkerSpec, validate_topology
from fabric.pinning import plan_pinning
from fabric.supervisor import Supervisor
from fabric.testing import unique_prefix
from fabric.timesource import MonotonicTimeSource, SimulatedTimeSource
from shm_layouts.control import FabricState, WorkerState
from workers import load_worker_class
from workers.base import WorkerContext

MS = 1_000_000

ADP_TOPICS = ["adp.input", "drpp.patterns", "accel.results", "ems.modulation", "egc.decisions"]
ALL_TOPICS = [
    "sensor", "drpp.patterns", "ems.modulation", "egc.decisions", "adp.input", "adp.metrics", "accel.work",
    "accel.results", "work.results", "egc.input", "ems.input",
]


def _name() -> str:
    return unique_prefix("w").replace("cfw-", "w")


class InProcessFabric:
    """A real fabric whose router and workers run in this process, stepped by the test."""

    def __init__(self, workers: list[WorkerSpec], *, clock=None, topics: list[str] = ALL_TOPICS) -> None:
        self.name = _name()
        self.clock = clock or MonotonicTimeSource()
        specs = [WorkerSpec(name="router", kind="router", critical=True), *workers]
        self.cfg = TopologyConfig(
            fabric=FabricSpec(name=self.name, inbox_pool=len(specs) + 4),
            topics=[TopicSpec(name=t) for t in topics],
            workers=specs,
        )
        validate_topology(self.cfg)
        self.sup = Supervisor(self.cfg, log_level="WARNING")
        self.live: dict[int, tuple[WorkerContext, Any]] = {}
        self.dead: list[tuple[WorkerContext, Any]] = []
        self.paused: set[int] = set()
        self.clients: list = []
        try:
            self.sup.plan = plan_pinning(self.cfg)
            self.sup.create_segments()  # the supervisor's segment set-up, without spawning anything
            cb = self.control = self.sup.control
            pid, start_ms = self_identity()
            for row in range(len(specs)):
                cb.workers[row]["pid"] = pid
                cb.workers[row]["start_ms"] = start_ms
            cb.header[0]["heartbeat_ns"] = self.clock.monotonic_ns()
            cb.set_state(FabricState.RUNNING)
            for row in range(len(specs)):
                self.start(row)
        except BaseException:
            self.close()
            raise

    def row(self, name: str) -> int:
        return [w.name for w in self.cfg.workers].index(name)

    def start(self, row: int):
        spec = self.cfg.workers[row]
        ctx = WorkerContext(self.control, row, spec, self.clock)
        try:
            worker = load_worker_class(spec.kind)(ctx, **spec.options)
        except BaseException:
            ctx.close()
            raise
        self.control.workers[row]["heartbeat_ns"] = self.clock.monotonic_ns()
        self.control.workers[row]["state"] = WorkerState.RUNNING
        self.live[row] = (ctx, worker)
        return worker

    def worker(self, name: str):
        return self.live[self.row(name)][1]

    def counters(self, name: str) -> list[int]:
        return [int(x) for x in self.control.workers[self.row(name)]["c"]]

    def crash(self, name: str) -> None:
        """As SIGKILL: nothing is closed (the durable inbox slot stays); the row says RESTARTING."""
        row = self.row(name)
        self.dead.append(self.live.pop(row))
        self.control.workers[row]["state"] = WorkerState.RESTARTING

    def restart(self, name: str):
        row = self.row(name)
        self.control.workers[row]["restarts"] += 1
        return self.start(row)

    def attach(self):
        client = fabric.attach(self.name, timeout_ns=5_000_000_000)
        self.clients.append(client)
        return client

    def step(self, times: int = 1) -> int:
        work = 0
        for _ in range(times):
            now = self.clock.monotonic_ns()
            for row, (ctx, w) in list(self.live.items()):
                if row in self.paused:
                    continue
                ctx.counters["heartbeat_ns"] = now
                work += w.step(now)
            if isinstance(self.clock, SimulatedTimeSource):
                self.clock.advance_simulation(MS)
        return work

    def run_until(self, predicate, timeout_s: float = 30.0, what: str = "the condition"):
        deadline = time.monotonic() + timeout_s
        while True:
            self.step()
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")

    def close(self) -> None:
        for c in self.clients:
            c.close()
        self.clients.clear()
        for _row, (ctx, w) in list(self.live.items()):
            w.close()
            ctx.close()
        self.live.clear()
        for ctx, _w in self.dead:
            ctx.close()
        self.dead.clear()
        self.sup.shutdown()


@pytest.fixture
def make_fabric():
    made: list[InProcessFabric] = []

    def make(workers: list[WorkerSpec], **kw) -> InProcessFabric:
        f = InProcessFabric(workers, **kw)
        made.append(f)
        return f

    yield make
    for f in made:
        f.close()


class Collector:
    """Everything a subscriber received, by topic."""

    def __init__(self, sub) -> None:
        self.sub = sub
        self.packets: list = []

    def poll(self) -> list:
        got = []
        while batch := self.sub.receive_batch(256):
            got += batch
        self.packets += got
        return got

    def on(self, topic: str) -> list:
        self.poll()
        return [p for p in self.packets if p.topic == topic]

    def payloads(self, topic: str) -> list[dict]:
        return [p.payload for p in self.on(topic)]


def accel_spec(name: str = "accel-0", **options) -> WorkerSpec:
    return WorkerSpec(name=name, kind="accelerator", subscribe=["accel.work", "egc.decisions"], options=options)


def adp_spec(**options) -> WorkerSpec:
    return WorkerSpec(name="adp", kind="adp", subscribe=ADP_TOPICS, options=options)


# --- accelerator ------------------------------------------------------------------------------


def test_accelerator_answers_each_item_with_the_kernel_result_or_why_it_failed(make_fabric):
    f = make_fabric([accel_spec(fail_every=4)])
    row = f.row("accel-0")
    client = f.attach()
    out = Collector(client.subscribe("accel.results"))
    pub = client.publisher("accel.work", targets=1 << row)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 64))
    h = rng.standard_normal(5)
    a = rng.standard_normal((4, 64))
    items = {
        1: ("fir", [x, h], np.array([np.convolve(r, h)[:64] for r in x])),
        2: ("matvec", [a, x], x @ a.T),
        3: ("rms", [x], np.sqrt((x**2).mean(axis=1))),
        4: ("sum", [x], None),  # the 4th item taken fails on purpose (fail_every=4)
        5: ("no_such_kernel", [x], None),
        6: ("fft", [x[:, :32].astype(np.complex128)], np.fft.fft(x[:, :32])),
        7: ("fir", [[1, 2, 3], [1.0]], np.array([[1.0, 2.0, 3.0]])),  # lists become float64 arrays
    }
    for item, (kernel, inputs, _) in items.items():
        pub.publish({"item": item, "kernel": kernel, "inputs": inputs}, priority=3)
    replies = f.run_until(lambda: len(out.on("accel.results")) >= len(items) and out.payloads("accel.results"),
                          what="every reply")
    by_item = {r["item"]: r for r in replies}
    assert sorted(by_item) == sorted(items) and len(replies) == len(items)
    for item, (_kernel, _inputs, want) in items.items():
        r = by_item[item]
        assert set(r) == {"item", "worker", "ok", "result", "error", "duration_ns"}
        assert r["worker"] == row
        if want is None:
            assert r["ok"] is False and r["result"] is None and r["error"], r
        else:
            assert r["ok"] is True and r["error"] is None, r
            np.testing.assert_allclose(r["result"], want, rtol=1e-12, atol=1e-12)
            assert r["duration_ns"] > 0
    assert "injected failure" in by_item[4]["error"]
    assert "unknown kernel" in by_item[5]["error"]
    assert all(p.priority == 3 for p in out.on("accel.results"))
    ok, failed, on_cuda, on_cpu, _busy = f.counters("accel-0")
    assert (ok, failed) == (5, 2)
    assert on_cuda + on_cpu == 6  # every item whose kernel ran (the unknown kernel never did), on one device
    assert on_cuda == 0 or f.worker("accel-0").cuda


def test_accelerator_only_takes_work_addressed_to_it(make_fabric):
    f = make_fabric([accel_spec("accel-0"), accel_spec("accel-1")])
    r0, r1 = f.row("accel-0"), f.row("accel-1")
    client = f.attach()
    out = Collector(client.subscribe("accel.results"))
    pub = client.publisher("accel.work")
    for i in range(10):
        pub.publish({"item": i, "kernel": "sum", "inputs": [np.full((1, 4), float(i))]}, targets=1 << (r0 if i % 2 else r1))
    replies = f.run_until(lambda: len(out.on("accel.results")) >= 10 and out.payloads("accel.results"))
    assert {r["item"]: r["worker"] for r in replies} == {i: (r0 if i % 2 else r1) for i in range(10)}
    assert all(r["result"][0] == 4.0 * r["item"] for r in replies)


# --- ADP --------------------------------------------------------------------------------------


def test_adp_item_gets_exactly_one_reply_with_the_kernel_result(make_fabric):
    f = make_fabric([adp_spec(metrics_interval_ms=20), accel_spec("accel-0"), accel_spec("accel-1", slowdown_factor=3)])
    client = f.attach()
    client.declare_topic("my.replies")
    out = Collector(client.subscribe(["work.results", "adp.metrics", "my.replies"]))
    pub = client.publisher("adp.input")
    rng = np.random.default_rng(1)
    want = {}
    for i in range(60):
        x = rng.standard_normal((2, 128))
        if i % 3 == 0:
            h = rng.standard_normal(9)
            pub.publish({"item": i, "kernel": "fir", "inputs": [x, h]}, priority=2)
            want[i] = np.array([np.convolve(r, h)[:128] for r in x])
        elif i % 3 == 1:
            pub.publish({"item": i, "kernel": "mean", "inputs": [x], "stream": None}, priority=2)
            want[i] = x.mean(axis=1)
        else:
            pub.publish({"item": i, "kernel": "max", "inputs": [x], "reply_topic": "my.replies"}, priority=2)
            want[i] = x.max(axis=1)
    f.run_until(lambda: len(out.on("work.results")) + len(out.on("my.replies")) >= 60, what="60 replies")
    f.step(50)  # nothing more arrives
    replies = out.on("work.results") + out.on("my.replies")
    assert len(replies) == 60
    rows = {f.row("accel-0"), f.row("accel-1")}
    for p in replies:
        r = p.payload
        assert set(r) == {"item", "ok", "result", "worker", "latency_ns"}
        assert r["ok"] is True and r["worker"] in rows and r["latency_ns"] >= 0
        np.testing.assert_allclose(r["result"], want[r["item"]], rtol=1e-12, atol=1e-12)
        assert (p.topic == "my.replies") == (r["item"] % 3 == 2)
    assert sorted(p.payload["item"] for p in replies) == list(range(60))
    assert {p.payload["worker"] for p in replies} == rows  # both accelerators took work

    m = f.run_until(lambda: [x for x in out.payloads("adp.metrics") if x["completed"] == 60], what="final metrics")[-1]
    assert set(m) == {"at_ns", "outstanding", "slowdown", "assigned", "completed", "reassigned", "p50_ns", "p99_ns"}
    assert m["outstanding"] == [0, 0] and len(m["slowdown"]) == 2
    assert (m["assigned"], m["completed"], m["reassigned"]) == (60, 60, 0)
    assert 0 < m["p50_ns"] <= m["p99_ns"]
    assigned, completed, reassigned, duplicates, refused = f.counters("adp")
    assert (assigned, completed, reassigned, duplicates, refused) == (60, 60, 0, 0, 0)


def test_adp_reassigns_the_items_of_a_dead_accelerator_and_drops_duplicate_results(make_fabric):
    f = make_fabric([adp_spec(liveness_interval_ms=0), accel_spec("accel-0"), accel_spec("accel-1")])
    client = f.attach()
    out = Collector(client.subscribe("work.results"))
    pub = client.publisher("adp.input")
    a1 = f.row("accel-1")
    f.paused.add(a1)  # accel-1 takes nothing: whatever ADP sends it stays in its inbox
    for i in range(40):
        pub.publish({"item": i, "kernel": "sum", "inputs": [np.full((1, 8), float(i))]}, priority=1)
    adp = f.worker("adp")
    f.run_until(lambda: len(out.on("work.results")) >= 40 - adp.dispatcher.statistics().outstanding[1]
                and adp.dispatcher.statistics().outstanding[1] > 0, what="accel-0's share done")
    stuck = adp.dispatcher.statistics().outstanding[1]
    assert stuck > 0
    f.paused.discard(a1)
    f.crash("accel-1")  # dies with its items in its inbox
    f.run_until(lambda: len(out.on("work.results")) >= 40, what="reassigned items done")
    assert f.counters("adp")[2] == stuck  # reassigned
    assert adp.dispatcher.statistics().alive == [True, False]
    # It comes back: it adopts its inbox slot and runs the copies still there; ADP drops those results.
    f.restart("accel-1")
    f.run_until(lambda: f.counters("adp")[3] >= stuck, what="the restarted accelerator's duplicates")
    f.step(50)
    replies = out.payloads("work.results")
    assert sorted(r["item"] for r in replies) == list(range(40))  # exactly one reply each
    assert all(r["ok"] and r["result"][0] == 8.0 * r["item"] for r in replies)
    assert all(r["worker"] == f.row("accel-0") for r in replies)
    assert adp.dispatcher.statistics().alive == [True, True]  # mark_alive once it ran again
    # New work goes to both again.
    for i in range(40, 60):
        pub.publish({"item": i, "kernel": "sum", "inputs": [np.ones((1, 8))]}, priority=1)
    f.run_until(lambda: len(out.on("work.results")) >= 60)
    assert {r["worker"] for r in out.payloads("work.results")[40:]} == {f.row("accel-0"), a1}


def test_adp_resends_to_the_same_accelerator_once_it_is_back(make_fabric):
    f = make_fabric([adp_spec(liveness_interval_ms=0), accel_spec("accel-0")])
    client = f.attach()
    out = Collector(client.subscribe("work.results"))
    pub = client.publisher("adp.input")
    a0 = f.row("accel-0")
    f.paused.add(a0)
    for i in range(10):
        pub.publish({"item": i, "kernel": "min", "inputs": [np.arange(4.0) + i]}, priority=1)
    adp = f.worker("adp")
    f.run_until(lambda: adp.dispatcher.statistics().outstanding == [10])
    f.paused.discard(a0)
    f.crash("accel-0")
    f.step(20)
    assert out.on("work.results") == [] and adp.dispatcher.statistics().alive == [False]
    f.restart("accel-0")
    f.run_until(lambda: len(out.on("work.results")) >= 10 and f.counters("adp")[3] >= 10)
    f.step(20)
    replies = out.payloads("work.results")
    assert sorted(r["item"] for r in replies) == list(range(10))
    assert all(r["ok"] and r["result"][0] == r["item"] for r in replies)
    assert f.counters("adp")[2] == 10  # reassigned (to the same accelerator, after mark_alive)


@pytest.mark.parametrize("policy", ["jseq", "round_robin"])
def test_adp_keeps_each_accelerator_window_bounded_and_queues_the_rest(make_fabric, policy):
    x = np.ones((1, 500))  # 4000 bytes of input (+64 counted per item)
    f = make_fabric([adp_spec(policy=policy, max_inflight_bytes=3 * 4064), accel_spec("accel-0"), accel_spec("accel-1")])
    client = f.attach()
    out = Collector(client.subscribe("work.results"))
    pub = client.publisher("adp.input")
    f.paused |= {f.row("accel-0"), f.row("accel-1")}
    for i in range(20):
        pub.publish({"item": i, "kernel": "sum", "inputs": [x]}, priority=1)
    adp = f.worker("adp")
    f.run_until(lambda: adp._n_pending == 14, what="the windows to fill")
    f.step(20)
    assert adp.dispatcher.statistics().outstanding == [3, 3]  # never more than the window
    assert adp._n_pending == 14
    f.paused.clear()
    f.run_until(lambda: len(out.on("work.results")) >= 20)
    f.step(20)
    assert sorted(r["item"] for r in out.payloads("work.results")) == list(range(20))


def test_adp_round_robin_policy_alternates(make_fabric):
    f = make_fabric([adp_spec(policy="round_robin"), accel_spec("accel-0"), accel_spec("accel-1")])
    client = f.attach()
    out = Collector(client.subscribe("work.results"))
    pub = client.publisher("adp.input")
    for i in range(20):
        pub.publish({"item": i, "kernel": "sum", "inputs": [np.ones((1, 4))]}, priority=1)
    f.run_until(lambda: len(out.on("work.results")) >= 20)
    workers = [r["worker"] for r in out.payloads("work.results")]
    assert workers.count(f.row("accel-0")) == workers.count(f.row("accel-1")) == 10


def test_adp_obeys_governance_pattern_hints_and_modulation(make_fabric):
    f = make_fabric([adp_spec(batch=16), accel_spec("accel-0")])
    client = f.attach()
    out = Collector(client.subscribe("work.results"))
    inp = client.publisher("adp.input")
    decisions = client.publisher("egc.decisions")
    patterns = client.publisher("drpp.patterns")
    modulation = client.publisher("ems.modulation")

    # Pattern hint: items of a stream with a recent pattern event get a higher priority.
    patterns.publish({"kind": "pattern", "stream": "hot", "frequency_hz": 5.0, "amplitude": 1.0, "phase_rad": 0.0,
                      "strength": 100.0, "block_end_ns": 0})
    f.step(5)
    inp.publish({"item": 1, "kernel": "sum", "inputs": [np.ones(3)], "stream": "hot"}, priority=2)
    inp.publish({"item": 2, "kernel": "sum", "inputs": [np.ones(3)], "stream": "cold"}, priority=2)
    f.run_until(lambda: len(out.on("work.results")) >= 2)
    prio = {p.payload["item"]: p.priority for p in out.on("work.results")}
    assert prio == {1: 2 + 64, 2: 2}

    # Shed (addressed to ADP): priority-0 items are refused with a reply; others still run.
    decisions.publish({"action": "shed", "target": "adp", "reason": "test", "robustness": -1.0, "at_ns": 0})
    decisions.publish({"action": "shed", "target": "someone-else", "reason": "test", "robustness": -1.0, "at_ns": 0})
    f.step(5)
    inp.publish({"item": 3, "kernel": "sum", "inputs": [np.ones(3)]}, priority=0)
    inp.publish({"item": 4, "kernel": "sum", "inputs": [np.ones(3)]}, priority=5)
    f.run_until(lambda: len(out.on("work.results")) >= 4)
    r = {p.payload["item"]: p.payload for p in out.on("work.results")}
    assert (r[3]["ok"], r[3]["worker"], r[3]["result"]) == (False, -1, None)
    assert r[4]["ok"] is True
    assert f.counters("adp")[4] == 1  # refused
    decisions.publish({"action": "allow", "target": "adp", "reason": "test", "robustness": 1.0, "at_ns": 0})
    f.step(5)
    inp.publish({"item": 5, "kernel": "sum", "inputs": [np.ones(3)]}, priority=0)
    f.run_until(lambda: len(out.on("work.results")) >= 5)
    assert out.payloads("work.results")[-1]["ok"] is True

    # batch_scale: items dispatched per step = round(batch * batch_scale).
    adp = f.worker("adp")
    modulation.publish({"valence": 0.0, "arousal": -1.0, "batch_scale": 0.25, "sensitivity_scale": 1.0, "at_ns": 0})
    f.step(5)
    f.paused.add(f.row("adp"))
    for i in range(100, 140):
        inp.publish({"item": i, "kernel": "sum", "inputs": [np.ones(3)]}, priority=1)
    f.step(3)  # the router moves them into ADP's inbox
    f.paused.discard(f.row("adp"))
    before = f.counters("adp")[0]
    adp.step(f.clock.monotonic_ns())
    assert f.counters("adp")[0] - before == 4
    assert adp._batch_scale == 0.25


def test_adp_refuses_with_a_reply_when_its_queue_is_full_and_ignores_a_resubmitted_item(make_fabric):
    f = make_fabric([adp_spec(max_pending=5), accel_spec("accel-0")])
    client = f.attach()
    out = Collector(client.subscribe("work.results"))
    inp = client.publisher("adp.input")
    f.paused.add(f.row("adp"))
    for i in range(8):
        inp.publish({"item": i, "kernel": "sum", "inputs": [np.ones(2)]}, priority=1)
    inp.publish({"item": 0, "kernel": "sum", "inputs": [np.ones(2)]}, priority=1)  # same id, still in flight
    f.step(3)
    f.paused.discard(f.row("adp"))
    f.run_until(lambda: len(out.on("work.results")) >= 8)
    f.step(20)
    replies = out.payloads("work.results")
    assert sorted(r["item"] for r in replies) == list(range(8))
    assert [r["item"] for r in replies if not r["ok"]] == [5, 6, 7]
    assert f.counters("adp")[3:] == [1, 3]  # one duplicate submission ignored, three refused


# --- DRPP -------------------------------------------------------------------------------------


def _sensor_chunks(stream: str, x: np.ndarray, rate: float, t0_ns: int, chunk: int) -> list[dict]:
    return [
        {"stream": stream, "rate_hz": rate, "t0_ns": t0_ns + int(round(k * 1e9 / rate)), "samples": x[k : k + chunk]}
        for k in range(0, x.size, chunk)
    ]


def test_drpp_finds_a_sine_at_its_frequency_and_the_direction_of_information_flow(make_fabric):
    f = make_fabric(
        [WorkerSpec(name="drpp", kind="drpp", subscribe=["sensor", "ems.modulation"], options={"te_interval_ms": 50})],
        clock=SimulatedTimeSource(10**12),
    )
    client = f.attach()
    out = Collector(client.subscribe("drpp.patterns"))
    pub = client.publisher("sensor")
    rate, n, f0 = 1000.0, 4096, 123.4
    rng = np.random.default_rng(5)
    t = np.arange(n) / rate
    x = 0.8 * np.sin(2 * np.pi * f0 * t + 0.3) + 0.5 * rng.standard_normal(n)
    # y follows x one sample later (plus noise): information flows x -> y.
    y = np.empty(n)
    y[0] = 0.0
    y[1:] = np.tanh(2.0 * x[:-1]) + 0.3 * rng.standard_normal(n - 1)
    t0 = 7_000_000_000
    for cx, cy in zip(_sensor_chunks("x", x, rate, t0, 256), _sensor_chunks("y", y, rate, t0, 256)):
        pub.publish(cx)
        pub.publish(cy)
        f.step(2)
    f.run_until(lambda: any(p["kind"] == "transfer_entropy" for p in out.payloads("drpp.patterns")))
    pats = [p for p in out.payloads("drpp.patterns") if p["kind"] == "pattern" and p["stream"] == "x"]
    # 4096 samples, blocks of 1024 every 512: 7 blocks, each finds the sine.
    assert len(pats) == 7
    bin_hz = rate / 1024
    period_ns = 1e9 / rate
    for k, p in enumerate(pats):
        assert set(p) == {"kind", "stream", "frequency_hz", "amplitude", "phase_rad", "strength", "block_end_ns"}
        assert abs(p["frequency_hz"] - f0) < 0.05 * bin_hz
        assert abs(p["amplitude"] - 0.8) < 0.1
        assert p["strength"] > 16
        assert p["block_end_ns"] == t0 + round((1023 + 512 * k) * period_ns)
    te = {(p["source"], p["target"]): p for p in out.payloads("drpp.patterns") if p["kind"] == "transfer_entropy"}
    assert set(te) == {("x", "y"), ("y", "x")}
    assert set(te["x", "y"]) == {"kind", "source", "target", "bits", "at_ns"}
    assert te["x", "y"]["bits"] > te["y", "x"]["bits"] + 0.3
    assert te["x", "y"]["at_ns"] == t0 + round((n - 1) * period_ns)
    samples, blocks, events, te_values, streams = f.counters("drpp")
    assert (samples, blocks, streams) == (2 * n, 14, 2)
    assert events >= 7 and te_values == 2


def test_drpp_applies_ems_sensitivity_and_resets_a_stream_after_a_gap(make_fabric):
    f = make_fabric([WorkerSpec(name="drpp", kind="drpp", subscribe=["sensor", "ems.modulation"],
                                options={"block_size": 256, "te_interval_ms": 0})])
    client = f.attach()
    out = Collector(client.subscribe("drpp.patterns"))
    pub = client.publisher("sensor")
    mod = client.publisher("ems.modulation")
    rate = 500.0
    t = np.arange(1024) / rate
    x = np.sin(2 * np.pi * 50.0 * t)
    pub.publish({"stream": "s", "rate_hz": rate, "t0_ns": 0, "samples": x[:256]})
    f.run_until(lambda: out.on("drpp.patterns"))
    drpp = f.worker("drpp")
    mod.publish({"valence": -1.0, "arousal": 1.0, "batch_scale": 2.0, "sensitivity_scale": 0.5, "at_ns": 0})
    f.run_until(lambda: drpp.streams["s"].detector.sensitivity_scale == 0.5)
    assert drpp.streams["s"].detector.effective_threshold == 32.0
    # A gap of 100 ms: the detector starts a new block instead of straddling it.
    gap_t0 = int(round((256 + 50) * 1e9 / rate))
    pub.publish({"stream": "s", "rate_hz": rate, "t0_ns": gap_t0, "samples": x[256:384]})
    f.step(5)
    assert drpp.streams["s"].detector.statistics().blocks == 1  # 128 samples after the gap: no new block yet
    pub.publish({"stream": "s", "rate_hz": rate, "t0_ns": gap_t0 + int(round(128 * 1e9 / rate)), "samples": x[384:512]})
    f.run_until(lambda: len(out.on("drpp.patterns")) >= 2)
    ev = out.payloads("drpp.patterns")[-1]
    assert ev["block_end_ns"] == gap_t0 + round(255 * 1e9 / rate)
    # A malformed packet is counted, not fatal.
    pub.publish({"stream": "s", "samples": [1.0]})
    f.step(5)
    assert int(f.control.workers[f.row("drpp")]["errors"]) == 1


# --- EGC --------------------------------------------------------------------------------------


def _metrics(p99_ns: int, outstanding: list[int] = (0,), reassigned: int = 0) -> dict:
    return {"at_ns": 0, "outstanding": list(outstanding), "slowdown": [1.0] * len(outstanding), "assigned": 0,
            "completed": 0, "reassigned": reassigned, "p50_ns": p99_ns // 2, "p99_ns": p99_ns}


def test_egc_formula_violation_publishes_a_decision_and_sheds_the_topic(make_fabric):
    f = make_fabric(
        [WorkerSpec(name="egc", kind="egc", subscribe=["egc.input", "adp.metrics", "ems.modulation"],
                    options={"formulas": {"latency": "always[0,100ms](p99_ns < 2000000)",
                                          "retries": "reassigned < 10"},
                             "formula_actions": {"latency": "shed"}, "shed_below_priority": 3})],
        clock=SimulatedTimeSource(10**12),
    )
    client = f.attach()
    out = Collector(client.subscribe("egc.decisions"))
    metrics = client.publisher("adp.metrics")
    assert f.control.topic_admission("adp.input") == 0
    for _ in range(30):  # 1 ms of p99 every 10 ms: satisfied, no decision
        metrics.publish(_metrics(1 * MS))
        f.step(10)
    assert out.payloads("egc.decisions") == []
    for _ in range(30):  # 5 ms: violated by 3 ms
        metrics.publish(_metrics(5 * MS))
        f.step(10)
    shed = [d for d in out.payloads("egc.decisions") if d["action"] == "shed"]
    assert len(shed) == 1
    d = shed[0]
    assert set(d) == {"action", "target", "reason", "robustness", "at_ns"}
    assert d["target"] == "adp" and d["robustness"] == pytest.approx(-3 * MS) and "latency" in d["reason"]
    assert f.control.topic_admission("adp.input") == 3  # the router now drops priorities 0..2
    assert f.counters("egc")[2] == 2  # level: shed
    for _ in range(30):
        metrics.publish(_metrics(1 * MS))
        f.step(10)
    allow = [d for d in out.payloads("egc.decisions") if d["action"] == "allow"]
    assert len(allow) == 1 and "satisfied again" in allow[0]["reason"] and allow[0]["robustness"] > 0
    assert f.control.topic_admission("adp.input") == 0
    # A formula with the default action only alerts, and the admission stays.
    metrics.publish(_metrics(1 * MS, reassigned=15))
    f.step(20)
    alerts = [d for d in out.payloads("egc.decisions") if d["action"] == "alert"]
    assert len(alerts) == 1 and alerts[0]["robustness"] == pytest.approx(-5.0) and "retries" in alerts[0]["reason"]
    assert f.counters("egc")[1] == 1
    assert f.control.topic_admission("adp.input") == 0


def test_egc_admission_control_on_load_with_hysteresis(make_fabric):
    f = make_fabric(
        [WorkerSpec(name="egc", kind="egc", subscribe=["egc.input", "adp.metrics", "ems.modulation"],
                    options={"formulas": {}, "admission": {"min_dwell_ms": 50}})],
        clock=SimulatedTimeSource(10**12),
    )
    client = f.attach()
    out = Collector(client.subscribe("egc.decisions"))
    sig = client.publisher("egc.input")

    def load(v: float) -> None:
        sig.publish({"signal": "load", "value": v, "at_ns": 0})
        f.step(5)

    for v in (0.5, 0.8, 0.85, 0.95, 0.85, 0.7):
        load(v)
    f.step(100)
    load(0.7)  # relaxing waits for min_dwell: now shed -> throttle
    load(0.5)
    f.step(100)
    load(0.5)
    actions = [d["action"] for d in out.payloads("egc.decisions")]
    assert actions == ["throttle", "shed", "throttle", "allow"]
    assert f.control.topic_admission("adp.input") == 0


def test_egc_rate_limit_sheds_a_topic_at_the_router_until_it_calms_down(make_fabric):
    f = make_fabric(
        [WorkerSpec(name="egc", kind="egc", subscribe=["egc.input", "adp.metrics", "ems.modulation"],
                    options={"formulas": {}, "rate_limits": {"sensor": [1000, 100]}, "rate_recover_ms": 200})],
        clock=SimulatedTimeSource(10**12),
    )
    client = f.attach()
    out = Collector(client.subscribe(["egc.decisions", "sensor"]))
    pub = client.publisher("sensor")
    for i in range(400):  # 400 packets within a few ms of simulated time: far over 1000/s
        pub.publish({"i": i})
    f.step(100)
    d = out.payloads("egc.decisions")
    assert [x["action"] for x in d] == ["shed"] and d[0]["target"] == "sensor"
    assert f.control.topic_admission("sensor") == 1
    assert f.counters("egc")[3] >= 1
    pub.publish({"i": "low"}, priority=0)
    pub.publish({"i": "high"}, priority=1)
    f.step(5)
    assert out.payloads("sensor")[-1] == {"i": "high"}  # the router dropped the priority-0 packet
    for _ in range(60):  # the producer keeps flooding at priority 0 (all shed) for 600 ms: still shed
        for i in range(20):
            pub.publish({"i": i})
        f.step(10)
    assert [x["action"] for x in out.payloads("egc.decisions")] == ["shed"]
    assert f.control.topic_admission("sensor") == 1
    f.step(400)  # quiet for 400 ms: allowed again
    assert [x["action"] for x in out.payloads("egc.decisions")] == ["shed", "allow"]
    assert f.control.topic_admission("sensor") == 0


# --- EMS --------------------------------------------------------------------------------------


def test_ems_stress_raises_arousal_and_batch_scale_and_governance_lowers_valence(make_fabric):
    f = make_fabric(
        [WorkerSpec(name="ems", kind="ems", subscribe=["ems.input", "adp.metrics", "egc.decisions"],
                    options={"interval_ms": 1000})],
        clock=SimulatedTimeSource(10**12),
    )
    client = f.attach()
    out = Collector(client.subscribe("ems.modulation"))
    metrics = client.publisher("adp.metrics")
    decisions = client.publisher("egc.decisions")
    f.step(2)
    first = out.payloads("ems.modulation")
    assert len(first) == 1
    assert set(first[0]) == {"valence", "arousal", "batch_scale", "sensitivity_scale", "at_ns"}
    assert (first[0]["valence"], first[0]["arousal"], first[0]["batch_scale"]) == (0.0, 0.0, 1.0)
    # Stress: 4x the latency target and twice the target load, ten observations.
    for _ in range(10):
        metrics.publish(_metrics(40 * MS, outstanding=[256]))
        f.step(10)
    m = out.payloads("ems.modulation")[-1]
    assert m["arousal"] > 0.5 and m["batch_scale"] > 1.4
    assert m["sensitivity_scale"] < 1.0  # stressed: DRPP raises its threshold
    assert len(out.payloads("ems.modulation")) > 2  # it moved: published before the 1 s period
    v_before = m["valence"]
    decisions.publish({"action": "shed", "target": "adp", "reason": "t", "robustness": -1.0, "at_ns": 0})
    f.step(10)
    for _ in range(5):
        metrics.publish(_metrics(40 * MS, outstanding=[256]))
        f.step(10)
    m2 = out.payloads("ems.modulation")[-1]
    assert m2["valence"] < v_before - 0.3
    # Calm: idle ADP, then ems.input says everything is fine and light.
    decisions.publish({"action": "allow", "target": "adp", "reason": "t", "robustness": 1.0, "at_ns": 0})
    inp = client.publisher("ems.input")
    for _ in range(20):
        inp.publish({"deadline_hit_ratio": 1.0, "success_ratio": 1.0, "load": 0.0, "latency_ratio": 0.25, "at_ns": 0})
        f.step(10)
    m3 = out.payloads("ems.modulation")[-1]
    assert m3["arousal"] < -0.5 and m3["batch_scale"] < 0.75
    assert m3["valence"] > 0.5 and m3["sensitivity_scale"] > 1.0
    obs, published, valence_u, arousal_u, decisions_seen = f.counters("ems")
    assert obs == 10 + 1 + 5 + 20 and decisions_seen == 1
    # The counters hold the last observation; the last modulation published is within the threshold of it.
    assert abs(valence_u / 1e6 - m3["valence"]) <= 0.05 and abs(arousal_u / 1e6 - m3["arousal"]) <= 0.05
    assert math.isclose(m3["batch_scale"], 2.0 ** m3["arousal"])


def test_ems_publishes_every_interval_while_idle(make_fabric):
    f = make_fabric(
        [WorkerSpec(name="ems", kind="ems", subscribe=["ems.input", "adp.metrics", "egc.decisions"],
                    options={"interval_ms": 100})],
        clock=SimulatedTimeSource(10**12),
    )
    client = f.attach()
    out = Collector(client.subscribe("ems.modulation"))
    f.step(1000)  # one simulated second
    assert len(out.payloads("ems.modulation")) in (10, 11)
