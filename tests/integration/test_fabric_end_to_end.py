"""End to end: a running fabric, producer and subscriber processes, ``stat`` and ``down``.

How the fabric runs here: ``chronofabric up --name N --config F`` as a foreground
subprocess, not a ``Supervisor`` ticking in a thread of the test process. That is the
path users take (CLI, signal handling, ``run()``), it keeps the supervisor's 20 ms
watch loop off the test process's GIL while the test polls and parses, and the same
process is what ``chronofabric down`` (SIGTERM) must stop. The smaller filter test
runs a ``Supervisor`` in the test process with a ticking thread instead, so the
Python API for running a fabric is covered too.
"""

from __future__ import annotations

import threading
import time

import pytest

import fabric
from fabric.config import DEMO_TOPIC, parse_config
from fabric.supervisor import Supervisor
from tests.fabric_helpers import (
    START_S,
    FabricUp,
    Mismatches,
    Peer,
    cli,
    client_by_pid,
    fabric_name,
    ring_stat,
    run_all,
    segments,
    stat_snapshot,
    topic_stat,
    worker_stat,
    write_topology,
)

N_PER_PRODUCER = 300_000
TOPIC_A = "e2e.a"
TOPIC_B = "e2e.b"

# Producer k publishes packet i on topics[i % len(topics)].
PLAN = [
    {"topics": [TOPIC_A], "count": N_PER_PRODUCER},
    {"topics": [TOPIC_B], "count": N_PER_PRODUCER},
    {"topics": [TOPIC_A, TOPIC_B], "count": N_PER_PRODUCER},
]


def _expected_on(topic: str) -> int:
    n = 0
    for p in PLAN:
        period = len(p["topics"])
        for r, t in enumerate(p["topics"]):
            if t == topic:
                n += len(range(r, p["count"], period))
    return n


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_three_producers_two_subscribers_every_packet_once_in_order(prefix, tmp_path):
    name = fabric_name(prefix)
    config = write_topology(tmp_path / "topology.toml", name, [DEMO_TOPIC, TOPIC_A, TOPIC_B])
    up = FabricUp(name, config=config)
    peers: list[Peer] = []
    try:
        # Subscribers first: a subscriber sees what is published after it subscribed.
        sub_all = Peer.subscriber(name, [TOPIC_A, TOPIC_B], PLAN, timeout=240)
        sub_a = Peer.subscriber(name, [TOPIC_A], PLAN, timeout=240)
        subs = [sub_all, sub_a]
        peers += subs
        ready_subs = [s.wait_json("READY", START_S) for s in subs]
        assert ready_subs[0]["inbox"] != ready_subs[1]["inbox"]
        producers = [Peer.producer(name, k, p["topics"], p["count"]) for k, p in enumerate(PLAN)]
        peers += producers
        ready_prods = [p.wait_json("READY", START_S) for p in producers]
        assert len({r["component"] for r in ready_prods}) == 3
        for p in producers:
            p.send("GO")

        results_p = [p.wait_json("RESULT", 240) for p in producers]
        results_s = [s.wait_json("RESULT", 240) for s in subs]

        assert [r["published"] for r in results_p] == [N_PER_PRODUCER] * 3
        expect_all = _expected_on(TOPIC_A) + _expected_on(TOPIC_B)
        expect_a = _expected_on(TOPIC_A)
        for res, expected, label in ((results_s[0], expect_all, "a+b"), (results_s[1], expect_a, "a")):
            assert res["errors"] == [], f"subscriber {label}: {res['errors']}"
            assert res["received"] == expected, f"subscriber {label}: {res}"
            assert res["first_deliveries"] == expected
            assert sum(res["duplicates"]) == 0
            assert res["seq_regressions"] == 0
        # Per producer: subscriber a+b gets all of every producer; subscriber a gets producer 0's
        # 300k, none of producer 1's and the even-numbered half of producer 2's.
        assert results_s[0]["per_producer"] == [N_PER_PRODUCER] * 3
        assert results_s[1]["per_producer"] == [N_PER_PRODUCER, 0, N_PER_PRODUCER // 2]
        comps = [r["component"] for r in ready_prods]
        assert results_s[0]["sources"] == comps
        assert results_s[1]["sources"] == [comps[0], None, comps[2]]

        # `stat` agrees with the counts. The router publishes its counters every 20 ms while
        # idle; wait (bounded) until they are there, then compare everything at once.
        routed_total = 3 * N_PER_PRODUCER
        deadline = time.monotonic() + 60
        while True:
            assert up.proc.poll() is None, f"`up` exited: {up.log()[-5000:]}"
            snap = stat_snapshot(name)
            if topic_stat(snap, TOPIC_A).routed + topic_stat(snap, TOPIC_B).routed >= routed_total:
                break
            assert time.monotonic() < deadline, f"router counters never reached {routed_total}: {snap.topics}"
            time.sleep(0.2)
        up.remember_workers(snap)
        m = Mismatches()
        m.eq("stat name/state/supervisor", (snap.name, snap.state, snap.supervisor_pid), (name, "running", up.pid))
        a, b = topic_stat(snap, TOPIC_A), topic_stat(snap, TOPIC_B)
        expect_b = _expected_on(TOPIC_B)
        m.eq(f"topic {TOPIC_A} routed/delivered/no_subscriber/filtered", (a.routed, a.delivered, a.no_subscriber, a.filtered),
             (expect_a, 2 * expect_a, 0, 0))
        m.eq(f"topic {TOPIC_B} routed/delivered/no_subscriber/filtered", (b.routed, b.delivered, b.no_subscriber, b.filtered),
             (expect_b, expect_b, 0, 0))
        router = worker_stat(snap, "router")
        m.eq("router state/restarts", (router.state, router.restarts), ("running", 0))
        m.eq("router received/emitted", (router.received, router.emitted), (routed_total, 2 * expect_a + expect_b))
        m.eq("router dropped/errors/dead_lettered", (router.dropped, router.errors, router.dead_lettered), (0, 0, 0))
        for label, peer, want in [
            *((f"producer {k} (pid {p.pid})", p, (N_PER_PRODUCER, 0, 0, 0)) for k, p in enumerate(producers)),
            *((f"subscriber {k} (pid {s.pid})", s, (0, 0, res["received"], 0)) for k, (s, res) in enumerate(zip(subs, results_s))),
        ]:
            c = client_by_pid(snap, peer.pid)
            if c is None:
                m.check(f"{label}: not among stat's clients {snap.clients}", False)
            else:
                m.eq(f"{label}: stat published/refused/received/malformed", (c.published, c.refused, c.received, c.malformed), want)
        m.check(f"router-in records_in {ring_stat(snap, 'router-in').records_in} < {routed_total}",
                ring_stat(snap, "router-in").records_in >= routed_total)
        m.eq("dead_lettered", snap.dead_lettered, 0)

        for p in peers:
            p.send("EXIT")
        for p in peers:
            assert p.wait_exit(60) == 0, p.stderr()[-2000:]

        down = cli("down", "--name", name, "--timeout", "120", timeout_s=180)
        assert down.returncode == 0, down.stderr.decode()
        assert "stopped" in down.stdout.decode()
        assert up.proc.wait(timeout=60) == 0, up.log()[-3000:]
        assert segments(name) == []
    finally:
        for p in peers:
            p.stop()
        up.kill()
    assert segments(name) == []
    # Last, so that a disagreement still leaves the fabric stopped and checked above.
    m.assert_none("`chronofabric stat --json --once` disagrees with what the producers and subscribers counted:")


# --- subscription filters and topics nobody subscribes to --------------------------------------------


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


def _drain(sub, want: int, timeout_s: float) -> list:
    out: list = []
    deadline = time.monotonic() + timeout_s
    while len(out) < want and time.monotonic() < deadline:
        batch = sub.receive_batch(256)
        if batch:
            out += batch
        else:
            try:
                out.append(sub.receive(timeout_ns=100_000_000))
            except TimeoutError:
                pass
    return out


def _nothing_more(sub, quiet_s: float = 0.5) -> list:
    time.sleep(quiet_s)
    return sub.receive_batch(256)


@pytest.mark.timeout(600)
def test_subscription_filters_and_topic_without_subscriber(prefix):
    name = fabric_name(prefix)
    # The router alone (plus the demo topic): filters are the router's job, and a small topology
    # starts quickly in this process.
    cfg = parse_config({"fabric": {"name": name}, "topics": [{"name": DEMO_TOPIC}],
                        "workers": [{"name": "router", "kind": "router", "critical": True}]})
    sup = Supervisor(cfg, log_level="WARNING")
    ticker = None
    clients = []
    try:
        sup.start()
        ticker = _Ticker(sup)
        pubc = fabric.attach(name, timeout_ns=10_000_000_000)
        clients.append(pubc)
        pubc.declare_topic("flt.data")
        pubc.declare_topic("flt.orphan")
        ca, cb_, cc = (fabric.attach(name, timeout_ns=10_000_000_000) for _ in range(3))
        clients += [ca, cb_, cc]
        assert len({pubc.component, ca.component, cb_.component, cc.component}) == 4
        bit_b, bit_c = 1 << cb_.component, 1 << cc.component
        sub_a = ca.subscribe("flt.data", min_priority=5)  # priority >= 5 only
        sub_b = cb_.subscribe("flt.data", target_bits=bit_b)  # target mask must include B
        sub_c = cc.subscribe("flt.data")  # no filter (but a packet's own target mask still applies)

        n = 400
        pub = pubc.publisher("flt.data")
        # i % 4: 0 -> prio 0, no targets | 1 -> prio 9, no targets | 2 -> prio 9, targets B | 3 -> prio 1, targets B|C
        shapes = [(0, 0), (9, 0), (9, bit_b), (1, bit_b | bit_c)]
        for i in range(n):
            prio, targets = shapes[i % 4]
            pub.publish(i, priority=prio, targets=targets, timeout_ns=10_000_000_000)
        orphan = pubc.publisher("flt.orphan")
        for i in range(50):
            orphan.publish(i, timeout_ns=10_000_000_000)

        want = {
            "A": [i for i in range(n) if i % 4 == 1],
            "B": [i for i in range(n) if i % 4 in (2, 3)],
            "C": [i for i in range(n) if i % 4 in (0, 1, 3)],
        }
        for label, sub in (("A", sub_a), ("B", sub_b), ("C", sub_c)):
            got = _drain(sub, len(want[label]), 60)
            got += _nothing_more(sub)
            assert [p.payload for p in got] == want[label], f"subscriber {label}"
            assert all(p.topic == "flt.data" and p.source == pubc.component for p in got)
            assert all(p.priority == shapes[p.payload % 4][0] and p.targets == shapes[p.payload % 4][1] for p in got)

        def counters_settled():
            s = pubc.stats()
            d, o = topic_stat(s, "flt.data"), topic_stat(s, "flt.orphan")
            return (d.routed == n and o.routed == 50) and s

        deadline = time.monotonic() + 30
        snap = counters_settled()
        while not snap:
            assert time.monotonic() < deadline, "router counters never settled"
            time.sleep(0.05)
            snap = counters_settled()
        d, o = topic_stat(snap, "flt.data"), topic_stat(snap, "flt.orphan")
        # Copies: A takes 100, B 200, C 300; refusals: A 300, B 200, C 100.
        assert (d.routed, d.delivered, d.filtered, d.no_subscriber) == (n, 600, 600, 0)
        # Nobody subscribes to flt.orphan: counted, not kept.
        assert (o.routed, o.delivered, o.filtered, o.no_subscriber) == (50, 0, 0, 50)
        assert ring_stat(snap, "router-in").fill_bytes == 0
        late = cc.subscribe("flt.orphan")
        assert _nothing_more(late, 0.3) == [], "a topic's packets from before any subscriber were kept"
        orphan.publish(50)
        got = _drain(late, 1, 30)
        assert [p.payload for p in got] == [50]
        # The CLI agrees: topics, and every client's counters (all four clients are attached and idle).
        stat_cli = stat_snapshot(name)
        m = Mismatches()
        o2 = topic_stat(stat_cli, "flt.orphan")
        m.eq("flt.orphan no_subscriber", o2.no_subscriber, 50)
        m.check(f"flt.orphan delivered {o2.delivered} not in (0, 1)", o2.delivered in (0, 1))
        m.eq("flt.data routed/delivered/filtered", (lambda d: (d.routed, d.delivered, d.filtered))(topic_stat(stat_cli, "flt.data")),
             (n, 600, 600))
        by_row = {c.row: c for c in stat_cli.clients}
        m.eq("publisher client published", by_row[pubc.row].published, n + 51)
        m.eq("subscriber clients received (A, B, C)", [by_row[c.row].received for c in (ca, cb_, cc)], [100, 200, 301])
        m.assert_none("`chronofabric stat` disagrees with the clients:")
    finally:
        run_all(
            *(c.close for c in clients),
            *([ticker.stop] if ticker is not None else []),
            sup.shutdown,
        )
    assert segments(name) == []
