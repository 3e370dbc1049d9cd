"""Deterministic simulation: a whole topology in one process, under simulated time, replayable by seed.

The same worker classes that run as processes (``workers.*``) are stepped here by a
seeded scheduler, on the fabric's real shared-memory segments, with a
``SimulatedTimeSource`` installed as the process-wide source (so no code in the
fabric can see real time). Simulated clients publish random packets — priorities,
deadlines, causal dependencies — and subscribers record what they receive.

Seeded faults (``FaultPlan``):

- delays: simulated time jumps (deadlines get missed, causal timeouts fire);
- crashes: a worker object is dropped without closing (as SIGKILL would) and a new
  one adopts its durable slot, resuming from its released position;
- dropped wake-ups: a worker with work is skipped for a while.

Every delivery (subscriber, packet id, HLC stamp, flags) and the final counters feed
a BLAKE2b hash: the **trace hash**. The same seed gives the same hash, run after run
(FoundationDB's simulator and TigerBeetle's VOPR test this way); a failing seed is a
reproducible bug report: ``chronofabric simulate --seed N --steps M``.
"""

from __future__ import annotations

import hashlib
import random
import secrets

import msgspec
from loguru import logger

from fabric.channel import PacketReader, PacketWriter
from fabric.config import FabricSpec, TopicSpec, TopologyConfig, WorkerSpec, validate_topology
from fabric.control import ring_segment_name
from fabric.hlc import HybridLogicalClock
from fabric.packet import PhasePacket
from fabric.pinning import plan_pinning
from fabric.ring import Ring, RingWriter
from fabric.timesource import SimulatedTimeSource, get_time_source, set_time_source
from shm_layouts.control import RingRole, WorkerState, client_component
from workers import load_worker_class
from workers.base import WorkerContext

__all__ = ["FaultPlan", "SimulationResult", "Simulation", "simulate", "simulation_topology"]


class FaultPlan(msgspec.Struct, frozen=True, kw_only=True):
    """Probabilities (per simulation step) of each injected fault."""

    delay: float = 0.002  # a jump of 1-20 ms of simulated time
    crash: float = 0.0005  # a worker dies (dropped without closing) and is replaced
    dropped_wakeup: float = 0.01  # a worker is skipped for 1-50 steps


class SimulationResult(msgspec.Struct, frozen=True):
    """What a run produced; ``trace_hash`` is the replay check."""

    seed: int
    steps: int
    trace_hash: str
    published: int
    delivered: int
    simulated_ns: int
    faults: dict[str, int]
    counters: dict[str, list[int]]


def simulation_topology(name: str) -> TopologyConfig:
    """The topology the simulator runs: router, scheduler, two topics with different miss policies."""
    cfg = TopologyConfig(
        fabric=FabricSpec(
            name=name,
            ingress_capacity_bytes=1 << 18,
            inbox_capacity_bytes=1 << 17,
            inbox_pool=6,
            max_record_bytes=4096,
            arena_bytes=0,
        ),
        topics=[
            TopicSpec(name="sim.a", miss_policy="late"),
            TopicSpec(name="sim.b", miss_policy="escalate"),
            TopicSpec(name="sim.c", miss_policy="drop"),
        ],
        workers=[
            WorkerSpec(name="router", kind="router", critical=True),
            WorkerSpec(name="scheduler", kind="scheduler", critical=True, options={"causal_timeout_ms": 20}),
        ],
    )
    validate_topology(cfg, source="<simulation topology>")
    return cfg


class _SimPublisher:
    def __init__(self, sim: "Simulation", index: int) -> None:
        self.sim = sim
        self.index = index
        self.component = client_component(index)
        self.hlc = HybridLogicalClock(time_source=sim.clock)
        self.router_in = PacketWriter(sim.ring(RingRole.ROUTER_IN).writer())
        self.sched_in = PacketWriter(sim.ring(RingRole.SCHEDULER_IN).writer())
        self.seq = 0
        self.recent: list[int] = []

    def step(self, rng: random.Random) -> int:
        self.seq += 1
        pid = (self.component << 56) | self.seq
        topic = rng.choice(("sim.a", "sim.b", "sim.c"))
        deadline = 0
        deps: tuple[int, ...] = ()
        roll = rng.random()
        now = self.sim.clock.now_ns()
        if roll < 0.5:
            deadline = now + rng.randint(100_000, 5_000_000)
        if roll < 0.1 and self.sim.all_ids:
            deps = (rng.choice(self.sim.all_ids),)
        pkt = PhasePacket(
            id=pid,
            hlc=self.hlc.tick(),
            source=self.component,
            priority=rng.randint(0, 255),
            deadline_ns=deadline,
            topic=topic,
            deps=deps,
            payload=rng.randint(0, 1 << 30),
        )
        writer = self.sched_in if (deadline or deps) else self.router_in
        if writer.offer(pkt) >= 0:
            self.sim.published += 1
            self.sim.all_ids.append(pid)
            if len(self.sim.all_ids) > 64:
                del self.sim.all_ids[0]
            return 1
        return 0

    def close(self) -> None:
        self.router_in.close()
        self.sched_in.close()


class _SimSubscriber:
    def __init__(self, sim: "Simulation", index: int, topics: list[str]) -> None:
        self.sim = sim
        self.component = client_component(8 + index)
        cb = sim.control
        self.inbox = cb.claim_inbox(self.component)
        self.ring = sim.ring(RingRole.INBOX, self.inbox)
        self.hlc = HybridLogicalClock(time_source=sim.clock)
        self.reader = PacketReader(self.ring.reader(batch_records=64), hlc=self.hlc)
        self.rows = [cb.add_subscription(t, self.inbox, self.component) for t in topics]
        self.index = index

    def step(self, rng: random.Random) -> int:
        batch = self.reader.receive_batch(rng.randint(1, 64))
        for p in batch:
            self.sim.record(self.index, p)
        return len(batch)

    def close(self) -> None:
        self.reader.close()


class Simulation:
    """One seeded run. Use ``run(steps)``; always ``close()`` (or use it as a context manager)."""

    def __init__(
        self,
        seed: int,
        *,
        config: TopologyConfig | None = None,
        faults: FaultPlan | None = None,
        publishers: int = 3,
        subscribers: int = 2,
    ) -> None:
        from fabric.supervisor import Supervisor

        self.seed = seed
        self.rng = random.Random(seed)
        self.faults = faults or FaultPlan()
        self.clock = SimulatedTimeSource(start_ns=1_700_000_000_000_000_000)
        self._previous_source = set_time_source(self.clock)
        name = f"sim{secrets.token_hex(4)}"  # segment names never enter the trace
        self.config = config or simulation_topology(name)
        self.published = 0
        self.delivered = 0
        self.all_ids: list[int] = []
        self._hash = hashlib.blake2b(digest_size=16)
        self._hash.update(seed.to_bytes(8, "little", signed=True))
        self.fault_counts = {"delay": 0, "crash": 0, "dropped_wakeup": 0}
        self._rings: dict[tuple[int, int], Ring] = {}
        self._sup = Supervisor(self.config)
        self._sup.plan = plan_pinning(self.config)
        self._sup.create_segments()
        self.control = self._sup.control
        self.workers: list = []
        self.contexts: list[WorkerContext] = []
        self._skip: dict[int, int] = {}
        for row, spec in enumerate(self.config.workers):
            self.control.workers[row]["state"] = WorkerState.RUNNING
            self._start_worker(row)
        self.publishers = [_SimPublisher(self, i) for i in range(publishers)]
        topic_sets = [["sim.a", "sim.b"], ["sim.b", "sim.c"], ["sim.a", "sim.c"]]
        self.subscribers = [_SimSubscriber(self, i, topic_sets[i % 3]) for i in range(subscribers)]

    def ring(self, role: int, index: int = 0) -> Ring:
        key = (role, index)
        if key not in self._rings:
            self._rings[key] = Ring.attach(self.control.ring_name(role, index))
        return self._rings[key]

    def _start_worker(self, row: int) -> None:
        spec = self.config.workers[row]
        ctx = WorkerContext(self.control, row, spec, self.clock)
        worker = load_worker_class(spec.kind)(ctx, **spec.options)
        if row < len(self.workers):
            self.workers[row] = worker
            self.contexts[row] = ctx
        else:
            self.workers.append(worker)
            self.contexts.append(ctx)

    def _crash(self, row: int) -> None:
        # As SIGKILL: nothing is closed. Durable slots stay held; the next worker adopts them.
        # The dead worker's producer slots are handed back, as reclaim_dead would on a real death.
        old = self.workers[row]
        writers = []
        for value in vars(old).values():
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, PacketWriter):
                    writers.append(item.writer)
                elif isinstance(item, RingWriter):
                    writers.append(item)
        for w in writers:
            w._ring._release_producer_slot(w.slot)
            w._closed = True
        self.control.workers[row]["restarts"] += 1
        self.contexts[row]._rings.clear()  # its mappings die with it
        self._start_worker(row)

    def record(self, subscriber: int, pkt: PhasePacket) -> None:
        self.delivered += 1
        self._hash.update(
            b"%d:%d:%d:%d:%d;" % (subscriber, pkt.id, pkt.hlc, pkt.flags, pkt.priority)
        )

    def run(self, steps: int) -> SimulationResult:
        """Run ``steps`` scheduling decisions; returns the result with its trace hash."""
        rng = self.rng
        actors = len(self.workers) + len(self.publishers) + len(self.subscribers)
        for step in range(steps):
            f = self.faults
            if rng.random() < f.delay:
                self.clock.advance_simulation(rng.randint(1_000_000, 20_000_000))
                self.fault_counts["delay"] += 1
            else:
                self.clock.advance_simulation(rng.randint(1_000, 50_000))
            if rng.random() < f.crash:
                row = rng.randrange(len(self.workers))
                self._crash(row)
                self.fault_counts["crash"] += 1
                self._hash.update(b"crash:%d:%d;" % (step, row))
            if rng.random() < f.dropped_wakeup:
                self._skip[rng.randrange(len(self.workers))] = rng.randint(1, 50)
                self.fault_counts["dropped_wakeup"] += 1
            a = rng.randrange(actors)
            if a < len(self.workers):
                if self._skip.get(a, 0) > 0:
                    self._skip[a] -= 1
                    continue
                self.workers[a].step(self.clock.monotonic_ns())
            elif a < len(self.workers) + len(self.publishers):
                self.publishers[a - len(self.workers)].step(rng)
            else:
                self.subscribers[a - len(self.workers) - len(self.publishers)].step(rng)
        return self._result(steps)

    def _result(self, steps: int) -> SimulationResult:
        counters = {}
        for row, w in enumerate(self.config.workers):
            c = self.control.workers[row]
            counters[w.name] = [int(c[f]) for f in ("received", "emitted", "deadline_misses", "dropped", "dead_lettered")] + [
                int(x) for x in c["c"]
            ]
        for name in sorted(counters):
            self._hash.update(name.encode() + b"=" + ",".join(map(str, counters[name])).encode() + b";")
        self._hash.update(b"published=%d;delivered=%d" % (self.published, self.delivered))
        return SimulationResult(
            seed=self.seed,
            steps=steps,
            trace_hash=self._hash.hexdigest(),
            published=self.published,
            delivered=self.delivered,
            simulated_ns=self.clock.now_ns() - 1_700_000_000_000_000_000,
            faults=dict(self.fault_counts),
            counters=counters,
        )

    def close(self) -> None:
        """Close everything and unlink every segment; restore the process-wide time source."""
        try:
            for s in self.subscribers:
                s.close()
            for p in self.publishers:
                p.close()
            for w in self.workers:
                w.close()
            for ctx in self.contexts:
                ctx.close()
            for r in self._rings.values():
                r.close()
            self._rings.clear()
            self._sup.shutdown()
        finally:
            set_time_source(self._previous_source)

    def __enter__(self) -> "Simulation":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def simulate(seed: int, steps: int, *, faults: FaultPlan | None = None) -> SimulationResult:
    """Run one seeded simulation and return its result (segments cleaned up)."""
    with Simulation(seed, faults=faults) as sim:
        result = sim.run(steps)
    logger.debug("simulation seed {}: {}", seed, result.trace_hash)
    return result


_ = (get_time_source, ring_segment_name)
