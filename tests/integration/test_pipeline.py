"""The default topology end to end: every C-LOGIC module publishes, and a killed accelerator loses no item.

The fabric runs under a ``Supervisor`` in this process, ticked every 20 ms by a thread (its
workers are real processes: the supervisor restarts the one we kill). The default topology
is used as is, except for the accelerator's ``slowdown_factor`` (each kernel runs that many
times) so that items are in flight when it is killed. A client attached with
``fabric.attach`` plays the sensor and the work submitter and subscribes to every module's
output topic.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest

import fabric
from fabric.config import default_topology, validate_topology
from fabric.supervisor import Supervisor
from shm_layouts.control import WorkerState
from tests.fabric_helpers import fabric_name

OUTPUT_TOPICS = ["drpp.patterns", "adp.metrics", "egc.decisions", "ems.modulation", "work.results"]
SLOWDOWN = 30  # each accelerator item runs its kernel 30 times: ~10-40 ms per item here


class _Ticker:
    """A Supervisor in this process, ticked every 20 ms by a thread (stopped before shutdown)."""

    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="supervisor-tick", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.wait(0.02):
                self.sup.tick()
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        assert not self._thread.is_alive(), "the tick thread did not stop"
        if self.error is not None:
            raise AssertionError(f"supervisor tick failed: {self.error!r}") from self.error


class _Inbox:
    """Everything the client's subscriber received, by topic."""

    def __init__(self, sub) -> None:
        self.sub = sub
        self.by_topic: dict[str, list] = {t: [] for t in OUTPUT_TOPICS}

    def poll(self, wait_s: float = 0.05) -> None:
        got = self.sub.receive_batch(256)
        if not got:
            try:
                got = [self.sub.receive(timeout_ns=int(wait_s * 1e9))]
            except TimeoutError:
                return
        for p in got:
            self.by_topic.setdefault(p.topic, []).append(p)

    def payloads(self, topic: str) -> list:
        return [p.payload for p in self.by_topic[topic]]


def _wait(inbox: _Inbox, predicate, timeout_s: float, what: str, sup_check=None):
    deadline = time.monotonic() + timeout_s
    while True:
        inbox.poll()
        value = predicate()
        if value:
            return value
        if sup_check is not None:
            sup_check()
        if time.monotonic() > deadline:
            counts = {t: len(v) for t, v in inbox.by_topic.items()}
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}; received so far: {counts}")


def _sensor_chunks(rate: float, seconds: float, chunk: int, seed: int = 11):
    """Two sines (37.5 Hz and 112 Hz) in white noise, as sensor payloads of ``chunk`` samples."""
    rng = np.random.default_rng(seed)
    n = int(rate * seconds)
    t = np.arange(n) / rate
    x = np.sin(2 * np.pi * 37.5 * t) + 0.5 * np.sin(2 * np.pi * 112.0 * t + 1.0) + 0.4 * rng.standard_normal(n)
    for k in range(0, n, chunk):
        yield {"stream": "vib", "rate_hz": rate, "t0_ns": int(round(k * 1e9 / rate)), "samples": x[k : k + chunk]}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_every_module_publishes_and_a_killed_accelerator_loses_no_item(prefix):
    name = fabric_name(prefix)
    cfg = default_topology(name)
    accel = [w for w in cfg.workers if w.kind == "accelerator"]
    assert accel, "the default topology has no accelerator worker"
    accel[0].options = {"slowdown_factor": SLOWDOWN}
    validate_topology(cfg)
    accel_row = cfg.workers.index(accel[0])
    adp_row = [w.kind for w in cfg.workers].index("adp")

    sup = Supervisor(cfg, log_level="WARNING")
    ticker = None
    client = None
    try:
        sup.start()
        ticker = _Ticker(sup)
        client = fabric.attach(name, timeout_ns=30_000_000_000)
        inbox = _Inbox(client.subscribe(OUTPUT_TOPICS))
        control = client.control

        def supervisor_ok() -> None:
            assert ticker.error is None, f"supervisor tick failed: {ticker.error!r}"

        # --- every module's output topic carries messages ------------------------------------
        sensor = client.publisher("sensor")
        for payload in _sensor_chunks(rate=1000.0, seconds=4.0, chunk=250):
            sensor.publish(payload, timeout_ns=10_000_000_000)
        work = client.publisher("adp.input", priority=5)
        for i in range(20):
            work.publish({"item": i, "kernel": "rms", "inputs": [np.full((2, 64), float(i))], "stream": "vib"})
        # A load pulse: EGC sheds (and says so), then allows again once ADP's own load is seen.
        client.publisher("egc.input").publish({"signal": "load", "value": 0.95, "at_ns": 0})

        _wait(inbox, lambda: all(inbox.by_topic[t] for t in OUTPUT_TOPICS), 120, "a message on every output topic",
              supervisor_ok)
        _wait(inbox, lambda: len(inbox.by_topic["work.results"]) >= 20, 60, "the first 20 results", supervisor_ok)
        first = {r["item"]: r for r in inbox.payloads("work.results")}
        assert sorted(first) == list(range(20))
        for i, r in first.items():
            assert r["ok"] and r["worker"] == accel_row and r["latency_ns"] > 0
            np.testing.assert_allclose(r["result"], [float(i), float(i)])
        pats = [p for p in inbox.payloads("drpp.patterns") if p["kind"] == "pattern"]
        assert pats and all(p["stream"] == "vib" for p in pats)
        assert any(abs(p["frequency_hz"] - 37.5) < 0.2 for p in pats)
        assert any(abs(p["frequency_hz"] - 112.0) < 0.2 for p in pats)
        _wait(inbox, lambda: any(d["action"] == "allow" for d in inbox.payloads("egc.decisions")), 60,
              "EGC to allow again after the load pulse", supervisor_ok)
        actions = [d["action"] for d in inbox.payloads("egc.decisions") if d["target"] == "adp"]
        assert "shed" in actions and actions.index("shed") < len(actions) - 1 - actions[::-1].index("allow")
        assert control.topic_admission("adp.input") == 0
        m = inbox.payloads("adp.metrics")[-1]
        assert set(m) == {"at_ns", "outstanding", "slowdown", "assigned", "completed", "reassigned", "p50_ns", "p99_ns"}
        mod = inbox.payloads("ems.modulation")[-1]
        assert set(mod) == {"valence", "arousal", "batch_scale", "sensitivity_scale", "at_ns"}

        # --- SIGKILL the accelerator mid-batch: every item still gets exactly one reply -------
        rng = np.random.default_rng(3)
        taps = rng.standard_normal(256)
        want = {}
        n_items = 40
        for k in range(n_items):
            item = 1000 + k
            x = rng.standard_normal((2, 2048))
            want[item] = np.array([np.convolve(r, taps)[:2048] for r in x])
            work.publish({"item": item, "kernel": "fir", "inputs": [x, taps]}, timeout_ns=10_000_000_000)

        def done_in_phase2() -> int:
            return sum(1 for r in inbox.payloads("work.results") if r["item"] >= 1000)

        _wait(inbox, lambda: done_in_phase2() >= 3, 60, "the accelerator to start on the batch", supervisor_ok)
        pid = int(control.workers[accel_row]["pid"])
        assert done_in_phase2() < n_items, "the batch finished before the kill: raise SLOWDOWN"
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()

        _wait(inbox, lambda: done_in_phase2() >= n_items, 180, f"{n_items} replies after the kill", supervisor_ok)
        time.sleep(1.0)  # a duplicate reply would arrive now
        inbox.poll()
        replies = [r for r in inbox.payloads("work.results") if r["item"] >= 1000]
        items = sorted(r["item"] for r in replies)
        assert items == sorted(want), f"missing {sorted(set(want) - set(items))}, extra {len(items) - len(set(items))}"
        for r in replies:
            assert r["ok"] is True and r["worker"] == accel_row, r
            np.testing.assert_allclose(r["result"], want[r["item"]], rtol=1e-9, atol=1e-9)
        row = control.workers[accel_row]
        assert int(row["restarts"]) == 1 and int(row["pid"]) != pid
        assert int(row["state"]) == WorkerState.RUNNING
        reassigned = int(control.workers[adp_row]["c"][2])
        assert reassigned >= 1, "the kill found no item in flight"
        assert time.monotonic() - killed_at < 180
    finally:
        if client is not None:
            client.close()
        if ticker is not None:
            ticker.stop()
        sup.shutdown()
