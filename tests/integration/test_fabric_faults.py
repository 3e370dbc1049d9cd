"""Fault injection on a running fabric: SIGKILL the router, a producer, a subscriber, the supervisor.

Each test runs its own fabric (``chronofabric up --name N`` as a subprocess, except
the worker-restart test, which ticks a ``Supervisor`` in this process) and kills
with SIGKILL: no handler runs, no ``finally``, exactly like a crash. Every wait has
a deadline; no test asserts a speed or a duration.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import psutil
import pytest

import fabric
from fabric.config import DEMO_TOPIC, default_topology
from fabric.control import ControlBlock
from fabric.errors import FabricNotRunningError
from fabric.supervisor import Supervisor
from tests.fabric_helpers import (
    START_S,
    FabricUp,
    Peer,
    client_by_pid,
    control_snapshot,
    fabric_name,
    pid_gone,
    ring_stat,
    run_all,
    segments,
    stat_snapshot,
    wait_pids_gone,
    wait_until,
    worker_stat,
    write_topology,
)

TOPIC = DEMO_TOPIC


def _router_only_up(name: str, tmp_path) -> FabricUp:
    """A fabric of the router alone (the data-path faults need no other worker; it starts faster)."""
    return FabricUp(name, config=write_topology(tmp_path / "topology.toml", name, [TOPIC]))


def _published(name: str, pid: int) -> int:
    """What producer ``pid`` published so far, as its client row says (it flushes in batches)."""
    c = client_by_pid(control_snapshot(name), pid)
    return c.published if c is not None else -1


def _received(name: str, pid: int) -> int:
    c = client_by_pid(control_snapshot(name), pid)
    return c.received if c is not None else -1


# --- the router ------------------------------------------------------------------------------------


@pytest.mark.timeout(600)
def test_router_sigkilled_mid_stream_is_restarted_and_resumes_without_loss(prefix, tmp_path):
    """The router dies mid-stream; the supervisor restarts it; the subscriber misses nothing.

    The architecture promises exact resumption (durable input slot + fan-out resume point).
    This test asserts what must hold in any case -- every packet arrives, in order, with no
    gap -- and then, separately, that none arrived twice.
    """
    name = fabric_name(prefix)
    count = 200_000
    plan = [{"topics": [TOPIC], "count": count}]
    up = _router_only_up(name, tmp_path)
    peers: list[Peer] = []
    try:
        sub = Peer.subscriber(name, [TOPIC], plan, at_least_once=True, timeout=240, linger=1.0)
        peers.append(sub)
        sub.wait_json("READY", START_S)
        prod = Peer.producer(name, 0, [TOPIC], count)
        peers.append(prod)
        prod.wait_json("READY", START_S)
        before = stat_snapshot(name)
        up.remember_workers(before)
        router0 = worker_stat(before, "router")
        assert (router0.state, router0.restarts) == ("running", 0)
        prod.send("GO")
        # Mid-stream: the subscriber has some but far from all.
        wait_until(lambda: _received(name, sub.pid) >= count // 5, 120, "the subscriber to receive a fifth of the stream")
        os.kill(router0.pid, signal.SIGKILL)
        killed_at = _received(name, sub.pid)

        def restarted():
            w = worker_stat(control_snapshot(name), "router")
            return w.restarts == 1 and w.state == "running" and w.pid != router0.pid and w

        router1 = wait_until(restarted, 60, "the supervisor to restart the router")
        up.remember_workers(control_snapshot(name))
        prod_res = prod.wait_json("RESULT", 240)
        res = sub.wait_json("RESULT", 240)
        assert prod_res["published"] == count
        assert killed_at < count, "the router was killed after the stream ended: not a mid-stream kill"
        # At least once, in order, no gaps:
        assert res["errors"] == [], res["errors"]
        assert res["first_deliveries"] == count and res["per_producer"] == [count], res
        # `stat` shows the one restart, the new pid, and the router running again.
        snap = stat_snapshot(name)
        w = worker_stat(snap, "router")
        assert (w.restarts, w.state, w.pid) == (1, "running", router1.pid)
        # It adopted its durable input slot (resumed where it stopped) rather than joining anew.
        assert ring_stat(snap, "router-in").subscribers == 1
        # Exactly once: nothing arrived twice.
        assert res["duplicates"] == [0], (
            f"the restarted router delivered {res['duplicates'][0]} packets a second time "
            f"(killed when the subscriber had {killed_at} of {count})"
        )
        for p in peers:
            p.send("EXIT")
        for p in peers:
            p.wait_exit(60)
        assert up.stop() == 0
        assert segments(name) == []
    finally:
        run_all(*(p.stop for p in peers), up.kill)
    assert segments(name) == []


@pytest.mark.timeout(600)
def test_router_interrupted_with_sigint_is_restarted_and_routes(prefix, tmp_path):
    """A router that exits through Python's unwinding (SIGINT -> KeyboardInterrupt, or any exception)
    rather than SIGKILL must come back like a SIGKILLed one: restarted, routing, nothing lost."""
    name = fabric_name(prefix)
    up = _router_only_up(name, tmp_path)
    try:
        with fabric.attach(name) as fab, fab.subscribe(TOPIC) as sub, fab.publisher(TOPIC) as pub:
            pub.publish("before")
            assert sub.receive(timeout_ns=60_000_000_000).payload == "before"
            router0 = worker_stat(control_snapshot(name), "router")
            up.remember_workers(control_snapshot(name))
            os.kill(router0.pid, signal.SIGINT)

            def restarted():
                w = worker_stat(control_snapshot(name), "router")
                up.worker_pids.add(w.pid)
                return w.restarts >= 1 and w.state == "running" and w.pid != router0.pid and w

            try:
                wait_until(restarted, 60, "the router to run again after SIGINT")
            except AssertionError:
                w = worker_stat(control_snapshot(name), "router")
                raise AssertionError(
                    f"after SIGINT the router never ran again: state {w.state}, restarts {w.restarts}, errors {w.errors}; "
                    f"supervisor log: {[line for line in up.log().splitlines() if 'router' in line or 'slot' in line][-6:]}"
                ) from None
            # Published while it was down or after: delivered once it is back.
            pub.publish("after", timeout_ns=60_000_000_000)
            assert sub.receive(timeout_ns=60_000_000_000).payload == "after"
            assert worker_stat(control_snapshot(name), "router").restarts == 1
        assert up.stop() == 0
        assert segments(name) == []
    finally:
        up.kill()
    assert segments(name) == []


# --- a producer ------------------------------------------------------------------------------------


@pytest.mark.timeout(600)
def test_producer_sigkilled_mid_publish_does_not_stop_the_others(prefix, tmp_path):
    """A producer dies in the middle of publishing; its claim (if any) is recovered; others flow."""
    name = fabric_name(prefix)
    n_ok, n_late = 60_000, 20_000
    # Producer 0 publishes until killed (count unknown to the subscriber); 1 and 2 are known.
    plan = [{"topics": [TOPIC], "count": -1}, {"topics": [TOPIC], "count": n_ok}, {"topics": [TOPIC], "count": n_late}]
    up = _router_only_up(name, tmp_path)
    peers: list[Peer] = []
    try:
        sub = Peer.subscriber(name, [TOPIC], plan, timeout=240, linger=1.0)
        peers.append(sub)
        sub.wait_json("READY", START_S)
        victim = Peer.producer(name, 0, [TOPIC], -1)
        ok = Peer.producer(name, 1, [TOPIC], n_ok)
        peers += [victim, ok]
        victim.wait_json("READY", START_S)
        ok.wait_json("READY", START_S)
        victim.send("GO")
        ok.send("GO")
        wait_until(lambda: _published(name, victim.pid) >= 20_000, 120, "the victim to publish 20k packets")
        os.kill(victim.pid, signal.SIGKILL)
        victim.proc.wait(timeout=10)
        # A producer that starts after the death publishes through the same router-in ring.
        late = Peer.producer(name, 2, [TOPIC], n_late)
        peers.append(late)
        late.wait_json("READY", START_S)
        late.send("GO")
        assert ok.wait_json("RESULT", 240)["published"] == n_ok
        assert late.wait_json("RESULT", 240)["published"] == n_late
        res = sub.wait_json("RESULT", 240)
        # Everything from the live producers, exactly once and in order; from the dead one a
        # gap-free prefix (its packets up to the one it died in, which may be lost).
        assert res["errors"] == [], res["errors"]
        assert res["per_producer"][1:] == [n_ok, n_late], res
        assert res["duplicates"] == [0, 0, 0], res
        assert res["per_producer"][0] >= 20_000 - 256, res  # stat counts in batches of up to 256
        snap = stat_snapshot(name)
        rin = ring_stat(snap, "router-in")
        assert rin.recovered_claims in (0, 1), rin
        assert client_by_pid(snap, victim.pid) is None or wait_until(
            lambda: client_by_pid(control_snapshot(name), victim.pid) is None, 30, "the dead producer's row to be reclaimed"
        )
        assert worker_stat(snap, "router").restarts == 0
        for p in peers:
            p.send("EXIT")
        for p in peers:
            p.wait_exit(60)
        assert up.stop() == 0
        assert segments(name) == []
    finally:
        run_all(*(p.stop for p in peers), up.kill)
    assert segments(name) == []


# --- a subscriber ----------------------------------------------------------------------------------


@pytest.mark.timeout(600)
def test_subscriber_sigkilled_its_row_and_inbox_are_reclaimed(prefix, tmp_path):
    """A subscriber dies; the supervisor reclaims its client row and inbox; a new subscriber takes
    that inbox and receives more than an inbox's worth; the other subscriber never misses a packet."""
    name = fabric_name(prefix)
    n1, n2 = 40_000, 40_000  # each ~4 MiB of records: several laps of a 1 MiB inbox
    pad = 64
    plan1 = [{"topics": [TOPIC], "count": n1}, {"topics": [TOPIC], "count": n2}]
    up = _router_only_up(name, tmp_path)
    peers: list[Peer] = []
    try:
        steady = Peer.subscriber(name, [TOPIC], plan1, timeout=240, linger=1.0)
        victim = Peer.subscriber(name, [TOPIC], plan1, timeout=240)
        peers += [steady, victim]
        steady.wait_json("READY", START_S)
        victim_ready = victim.wait_json("READY", START_S)
        p1 = Peer.producer(name, 0, [TOPIC], n1, pad=pad)
        peers.append(p1)
        p1.wait_json("READY", START_S)
        p1.send("GO")
        wait_until(lambda: _received(name, victim.pid) >= n1 // 4, 120, "the victim to receive a quarter of the stream")
        os.kill(victim.pid, signal.SIGKILL)
        victim.proc.wait(timeout=10)
        assert p1.wait_json("RESULT", 240)["published"] == n1

        # The supervisor reclaims the row, the subscription and the inbox.
        wait_until(lambda: client_by_pid(control_snapshot(name), victim.pid) is None, 30,
                   "stat to stop listing the dead subscriber")
        inbox = victim_ready["inbox"]
        with ControlBlock.attach(name) as cb:
            wait_until(lambda: cb.inbox_owner(inbox) == -1, 30, f"inbox {inbox} to be free again")
        # A new subscriber takes that inbox (the lowest free one) and gets a second stream
        # several times the inbox's size; the steady subscriber gets both streams whole.
        newcomer = Peer.subscriber(name, [TOPIC], [{"topics": [TOPIC], "count": 0}, {"topics": [TOPIC], "count": n2}],
                                   timeout=240, linger=1.0)
        peers.append(newcomer)
        new_ready = newcomer.wait_json("READY", START_S)
        assert new_ready["inbox"] == inbox
        p2 = Peer.producer(name, 1, [TOPIC], n2, pad=pad, publish_timeout=30)
        peers.append(p2)
        p2.wait_json("READY", START_S)
        p2.send("GO")
        try:
            assert p2.wait_json("RESULT", 240)["published"] == n2
        except AssertionError as exc:
            raise AssertionError(f"the fabric stalled after the subscriber's death: {_inbox_report(name, inbox)}\n{exc}") from None
        res_new = newcomer.wait_json("RESULT", 240)
        res_steady = steady.wait_json("RESULT", 240)
        assert res_steady["errors"] == [] and res_steady["per_producer"] == [n1, n2], res_steady
        assert res_new["errors"] == [] and res_new["per_producer"] == [0, n2], res_new
        snap = stat_snapshot(name)
        assert worker_stat(snap, "router").restarts == 0
        assert client_by_pid(snap, victim.pid) is None
        for p in peers:
            p.send("EXIT")
        for p in peers:
            p.wait_exit(60)
        assert up.stop() == 0
        assert segments(name) == []
    finally:
        run_all(*(p.stop for p in peers), up.kill)
    assert segments(name) == []


def _inbox_report(name: str, inbox: int) -> str:
    """Who holds slots on inbox ``inbox`` now (alive or not), and the router-in fill."""
    from fabric.ring import Ring
    from shm_layouts.control import RingRole

    with ControlBlock.attach(name) as cb:
        ring = Ring.attach(cb.ring_name(RingRole.INBOX, inbox))
        try:
            st = ring.statistics()
        finally:
            ring.close()
    subs = [f"slot {x.slot}: pid {x.pid} ({'alive' if not pid_gone(x.pid) else 'DEAD'}), position {x.position}, "
            f"lag {x.lag_bytes} B" for x in st.subscribers]
    snap = control_snapshot(name)
    rin = ring_stat(snap, "router-in")
    ibx = ring_stat(snap, "inbox", f"-inbox-{inbox}")
    return (f"inbox {inbox}: fill {ibx.fill_bytes}/{ibx.capacity_bytes} B, back-pressured {ibx.back_pressured} times, "
            f"subscriber slots [{'; '.join(subs)}]; router-in fill {rin.fill_bytes} B")


# --- the supervisor --------------------------------------------------------------------------------


@pytest.mark.timeout(600)
def test_supervisor_sigkilled_workers_exit_and_next_up_reclaims(prefix):
    name = fabric_name(prefix)
    up = FabricUp(name)
    up2 = None
    try:
        snap = stat_snapshot(name)
        up.remember_workers(snap)
        worker_pids = [w.pid for w in snap.workers]
        assert worker_pids and all(psutil.pid_exists(p) for p in worker_pids)
        os.kill(up.pid, signal.SIGKILL)
        up.proc.wait(timeout=10)
        # Workers notice within about half a second; allow a generous deadline on a busy host.
        still = wait_pids_gone(worker_pids, 15)
        assert still == [], f"workers {still} outlived their supervisor"
        # What is left is stale: attaching says so, and nothing was cleaned up by the dead.
        left = segments(name)
        assert any(s.endswith("-control") for s in left), left
        with pytest.raises(FabricNotRunningError, match="stale|not running|gone"):
            fabric.attach(name, timeout_ns=1_000_000_000)
        # The next `up` with the same name reclaims the stale segments and runs.
        up2 = FabricUp(name)
        snap2 = stat_snapshot(name)
        up2.remember_workers(snap2)
        assert snap2.supervisor_pid == up2.pid and snap2.state == "running"
        assert all(w.pid not in worker_pids for w in snap2.workers)
        with fabric.attach(name) as fab:
            with fab.subscribe(TOPIC) as sub, fab.publisher(TOPIC) as pub:
                pub.publish("after the crash")
                assert sub.receive(timeout_ns=30_000_000_000).payload == "after the crash"
        assert up2.stop() == 0
        assert segments(name) == []
    finally:
        run_all(up.kill, *([up2.kill] if up2 is not None else []))
    assert segments(name) == []


# --- a worker, with the supervisor ticking in this process ----------------------------------------


@pytest.mark.timeout(600)
def test_worker_sigkilled_is_restarted_and_stat_shows_it(prefix):
    """SIGKILL workers of the default topology (the router twice, a module worker with an inbox once);
    a Supervisor ticking in this process restarts each, and `chronofabric stat` shows the restarts."""
    name = fabric_name(prefix)
    cfg = default_topology(name)
    module = next((w.name for w in cfg.workers if w.subscribe), None)
    sup = Supervisor(cfg, log_level="WARNING")
    stop = threading.Event()
    errors: list[BaseException] = []

    def tick() -> None:
        try:
            while not stop.wait(0.02):
                sup.tick()
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = None
    killed: list[int] = []
    try:
        sup.start()
        thread = threading.Thread(target=tick, name="supervisor-tick", daemon=True)
        thread.start()
        plan = [("router", 1), ("router", 2)] + ([(module, 1)] if module else [])
        for worker, expected_restarts in plan:
            w = worker_stat(stat_snapshot(name), worker)
            assert w.state == "running"
            killed.append(w.pid)
            os.kill(w.pid, signal.SIGKILL)

            def back(worker=worker, expected_restarts=expected_restarts):
                s = worker_stat(control_snapshot(name), worker)
                return s.restarts == expected_restarts and s.state == "running" and s.pid not in killed and s

            wait_until(back, 60, f"restart {expected_restarts} of {worker}")
        # The CLI's view agrees, and the restarted router routes.
        snap = stat_snapshot(name)
        r = worker_stat(snap, "router")
        assert (r.restarts, r.state) == (2, "running") and r.pid not in killed
        assert sup.workers[0].restarts == 2
        if module:
            m = worker_stat(snap, module)
            assert (m.restarts, m.state) == (1, "running") and m.pid not in killed
        others = [w for w in snap.workers if w.name not in ("router", module)]
        assert all(w.restarts == 0 and w.state == "running" for w in others), others
        with fabric.attach(name) as fab:
            with fab.subscribe(TOPIC) as sub, fab.publisher(TOPIC) as pub:
                for i in range(1000):
                    pub.publish(i)
                got: list = []
                deadline = time.monotonic() + 60
                while len(got) < 1000 and time.monotonic() < deadline:
                    batch = sub.receive_batch(256)
                    if not batch:
                        try:
                            batch = [sub.receive(timeout_ns=500_000_000)]
                        except TimeoutError:
                            batch = []
                    got += [p.payload for p in batch]
                assert got == list(range(1000))
        assert errors == []
    finally:
        stop.set()
        if thread is not None:
            thread.join(timeout=10)
        sup.shutdown()
    assert segments(name) == []
    assert all(pid_gone(p) for p in killed)

