"""The scheduler worker: deadlines and causality, between publishers and the router.

Publishers send packets that carry a deadline or causal dependencies to the
scheduler's ring; everything else takes the direct lane to the router. Each step:

1. take a batch of packet records from ``scheduler-in`` (its durable slot: a restarted
   scheduler resumes where it stopped), read their fixed headers in one numba call,
   and keep each record (its bytes) until it is forwarded;
2. hold packets whose dependencies were not delivered yet (``fabric.causal``), with a
   timeout policy from the worker's options (release or dead-letter, counted);
3. queue the rest in the EDF heap (``fabric.deadline``): earliest deadline first,
   priority next; admission control sheds the lowest priority first when the queue
   passes its high watermark (counted and logged: never silent);
4. pop in EDF order and forward to ``router-in``. Input records are released only up
   to the oldest one not yet forwarded, so a scheduler killed with packets queued loses
   none: its successor adopts the slot and re-reads them (at-least-once).
5. forward: a packet on time is passed
   byte for byte. A packet whose deadline passed gets its topic's miss policy
   (``TopicSpec.miss_policy``): dropped, delivered late (``FLAG_LATE``), degraded to
   ``<topic>.degraded`` or escalated to priority 255 — re-encoded with the flag set,
   and counted in the worker's ``deadline_misses``.

Every hop updates its clock: the scheduler merges each packet's HLC stamp. The time
oracle (``fabric.oracle``) measures its load (queue depth, arrival rate, service time
per packet) and its hint for the worker's ``goal`` (latency, balanced, throughput)
sets how many packets it forwards per step; it always ingests everything waiting, since
EDF can only order what it has seen.

Counters (stat): ``deadline_misses``; ``dropped`` (policy drops + shed + causal
drops); ``c = [shed, late, degraded, escalated, causal_timeouts]``.
"""

from __future__ import annotations

from collections import deque

import numpy as np
from loguru import logger

from fabric._atomics import i64_array_at
from fabric._jit import jit
from fabric.causal import CausalQueue, OfferStatus, TimeoutPolicy
from fabric.channel import PacketWriter
from fabric.config import MISS_POLICIES
from fabric.deadline import DeadlineScheduler, DeliveryFlags, MissPolicy
from fabric.hlc import HybridLogicalClock
from fabric.oracle import OptimizationGoal
from fabric.packet import FLAG_DEGRADED, FLAG_ESCALATED, FLAG_LATE, PacketCodec, topic_id
from fabric.wait import Parker
from shm_layouts.control import RingRole
from shm_layouts.packet import PACKET_HEADER_BYTES, PACKET_MAGIC, PACKET_TYPE, PACKET_TYPE_MASK
from workers.base import Worker, WorkerContext

__all__ = ["SchedulerWorker"]

# Columns of the header extract.
X_ID, X_DEADLINE, X_PRIORITY, X_TOPIC, X_HLC, X_VALID = range(6)


@jit("int64(int64, int64[::1], int64, int64[:, ::1])")
def extract_headers(seg_base, descs, n, out):
    """Read id, deadline, priority, topic and HLC of ``n`` packet records (descriptor pairs)."""
    for i in range(n):
        off = descs[2 + 2 * i]
        meta = descs[3 + 2 * i]
        length = meta & 0xFFFFFFFF
        type_id = meta >> 32
        ndeps = type_id & 0xFFFF
        valid = (type_id & PACKET_TYPE_MASK) == PACKET_TYPE and length > PACKET_HEADER_BYTES + 8 * ndeps
        if valid:
            hw = i64_array_at(seg_base + off, 8)
            valid = (hw[6] >> 32) == PACKET_MAGIC
            out[i, X_ID] = hw[0]
            out[i, X_HLC] = hw[1]
            out[i, X_DEADLINE] = hw[2]
            out[i, X_TOPIC] = hw[4]
            out[i, X_PRIORITY] = (hw[5] >> 32) & 0xFF
        out[i, X_VALID] = 1 if valid else 0
    return n


class SchedulerWorker(Worker):
    """EDF with priorities, causal delivery, miss recovery and admission control."""

    kind = "scheduler"

    def __init__(
        self,
        ctx: WorkerContext,
        *,
        batch: int = 256,
        capacity: int = 65536,
        causal_timeout_ms: int = 1000,
        causal_policy: str = "release",
        max_waiting: int = 16384,
        goal: str = "balanced",
    ) -> None:
        super().__init__(ctx)
        self.batch = batch
        control = ctx.control
        self.input = ctx.ring(RingRole.SCHEDULER_IN)
        slot = int(ctx.counters["reader_slot"])
        self.reader = self.input.reader(durable=True, adopt_slot=slot if slot >= 0 else None, batch_records=batch)
        ctx.counters["reader_slot"] = self.reader.slot
        self.out_ring = ctx.ring(RingRole.ROUTER_IN)
        self.raw_out = self.out_ring.writer()
        self.packet_out = PacketWriter(self.out_ring.writer())
        self.dead_letter = ctx.ring(RingRole.DEAD_LETTER).writer()
        self.codec = PacketCodec()
        self.hlc = HybridLogicalClock(time_source=ctx.clock)
        policies = [MissPolicy.DROP, MissPolicy.DELIVER_LATE, MissPolicy.DEGRADE, MissPolicy.ESCALATE]
        self.edf = DeadlineScheduler(capacity, class_policies=policies, time_source=ctx.clock)
        try:
            policy = TimeoutPolicy[causal_policy.upper()]
        except KeyError:
            raise ValueError(f"causal_policy must be one of {[p.name.lower() for p in TimeoutPolicy]}") from None
        self.causal = CausalQueue(timeout_ns=causal_timeout_ms * 1_000_000, policy=policy, max_waiting=max_waiting)
        # topic id -> (miss class, degraded topic name or None)
        self.topic_class: dict[int, int] = {}
        self.degraded_topic: dict[int, str] = {}
        for t in ctx.config.topics:
            self.topic_class[topic_id(t.name)] = MISS_POLICIES[t.miss_policy]
            if t.miss_policy == "degrade":
                self.degraded_topic[topic_id(t.name)] = f"{t.name}.degraded"
        self._hdr = np.zeros((batch, 6), dtype=np.int64)
        # internal id -> (record bytes, record type, input position). Ids grow with the input position and
        # the dict keeps insertion order, so its first key is the oldest record not yet forwarded.
        self._store: dict[int, tuple[bytes, int, int]] = {}
        self._packet_of: dict[int, int] = {}  # internal id -> packet id
        self._held: dict[int, int] = {}  # packet id -> internal id, waiting for dependencies
        self._seq = 0
        self._out_ids = np.zeros(batch, dtype=np.int64)
        self._out_flags = np.zeros(batch, dtype=np.int64)
        self._pending: deque[tuple[int, int]] = deque()  # (internal id, flags) popped, not yet forwarded
        self._next_sweep = 0
        # The time oracle tunes how much the scheduler takes per step from the load it measures.
        try:
            self.goal = {"latency": OptimizationGoal.MINIMIZE_LATENCY, "balanced": OptimizationGoal.BALANCED,
                         "throughput": OptimizationGoal.MAXIMIZE_THROUGHPUT}[goal]
        except KeyError:
            raise ValueError("goal must be 'latency', 'balanced' or 'throughput'") from None
        self.oracle = self.edf.oracle
        self.take = batch
        self._arrivals = 0
        self._next_hint = 0
        logger.info("scheduler: input slot {} at position {}", self.reader.slot, self.reader.position)
        _ = control

    # --- step -----------------------------------------------------------------------------

    def step(self, now_ns: int) -> int:
        # Deadlines are absolute in fabric time (TimeSource.now_ns), not the loop's monotonic clock.
        now_ns = self.ctx.clock.now_ns()
        # Ingest everything waiting (up to capacity): EDF can only order what it has seen.
        work = 0
        while True:
            n = self._ingest(now_ns)
            work += n
            if n < self.batch:
                break
        work += self._release_causal(now_ns)
        work += self._forward(now_ns)
        if work:
            self._release_input()
        if now_ns >= self._next_sweep:
            self._sweep(now_ns)
            self._next_sweep = now_ns + 1_000_000  # 1 ms: queued misses are found within a millisecond
        return work

    def _ingest(self, now_ns: int) -> int:
        if len(self._store) >= self.edf.capacity:
            return 0  # full: leave the rest in the ring (back pressure to publishers)
        start = self.reader.position
        batch = self.reader.read_batch(min(self.batch, self.edf.capacity - len(self._store)))
        n = batch.count
        if n == 0:
            return 0
        cap = self.input.capacity_bytes
        data_off = self.input.data_offset
        c = self.ctx.counters
        try:
            descs = self.reader._desc
            extract_headers(self.input.segment.address, descs, n, self._hdr)
            mv = self.reader._mv
            d = batch.descriptors()
            ids, deadlines, priorities, classes = [], [], [], []
            for i in range(n):
                off = d[2 * i]
                meta = d[2 * i + 1]
                rec = bytes(mv[off : off + (meta & 0xFFFFFFFF)])
                type_id = meta >> 32
                h = self._hdr[i]
                if not h[X_VALID]:
                    self.dead_letter.offer(rec, type_id & 0x7FFFFFFF)
                    c["dead_lettered"] += 1
                    continue
                self.hlc.merge(int(h[X_HLC]))
                self._seq += 1
                sid = self._seq
                pid = int(h[X_ID])
                # the record's input position, from its offset (a batch spans less than one lap)
                pos = start + (((off - 16 - data_off) - (start & (cap - 1))) & (cap - 1))
                self._store[sid] = (rec, type_id, pos)
                self._packet_of[sid] = pid
                ndeps = type_id & 0xFFFF
                if ndeps:
                    deps = np.frombuffer(rec, dtype=np.uint64, count=ndeps, offset=PACKET_HEADER_BYTES).astype(np.int64)
                    status = self.causal.offer(pid, [int(x) for x in deps.view(np.uint64)], now_ns)
                    if status in (OfferStatus.READY, OfferStatus.WAITING):
                        self._held[pid] = sid  # comes back out of pop_ready in causal order
                        continue
                    # not taken (full, duplicate, names itself, or a dependency was dead-lettered)
                    self.dead_letter.offer(rec, type_id & 0x7FFFFFFF)
                    c["dead_lettered"] += 1
                    c["c"][4] += 1
                    self._forget(sid)
                    continue
                ids.append(sid)
                deadlines.append(int(h[X_DEADLINE]))
                priorities.append(int(h[X_PRIORITY]))
                classes.append(self.topic_class.get(int(h[X_TOPIC]) & 0xFFFFFFFFFFFFFFFF, 1))
            c["received"] += n
            self._arrivals += n
        finally:
            self._release_input()
        if ids:
            self._push(ids, deadlines, priorities, classes, now_ns)
        return n

    def _push(self, ids, deadlines, priorities, classes, now_ns: int) -> None:
        report = self.edf.push_batch(ids, deadlines, priorities, classes, now_ns)
        c = self.ctx.counters
        if report.shed:
            c["c"][0] += len(report.shed)
            c["dropped"] += len(report.shed)
            logger.warning("scheduler: shed {} low-priority packets (queue over its high watermark)", len(report.shed))
            for sid in report.shed:
                self._forget(sid)
        if report.dropped:
            c["deadline_misses"] += len(report.dropped)
            c["dropped"] += len(report.dropped)
            for sid in report.dropped:
                self._forget(sid)

    def _release_causal(self, now_ns: int) -> int:
        ready = self.causal.pop_ready()
        if not ready:
            return 0
        ids, deadlines, priorities, classes = [], [], [], []
        for pid in ready:
            sid = self._held.pop(pid, None)
            if sid is None:
                continue
            rec = self._store[sid][0]
            hw = np.frombuffer(rec, dtype=np.int64, count=8)
            ids.append(sid)
            deadlines.append(int(hw[2]))
            priorities.append(int((int(hw[5]) >> 32) & 0xFF))
            classes.append(self.topic_class.get(int(hw[4]) & 0xFFFFFFFFFFFFFFFF, 1))
        if ids:
            self._push(ids, deadlines, priorities, classes, now_ns)
        return len(ids)

    def _forward(self, now_ns: int) -> int:
        done = 0
        while self._pending:
            sid, flags = self._pending[0]
            if not self._send(sid, flags):
                return done  # router-in is full: try again next step
            self._pending.popleft()
            done += 1
        t0 = self.ctx.clock.monotonic_ns()
        n, n_dropped = self.edf.pop_batch(now_ns, self._out_ids, self._out_flags, max_count=self.take)
        c = self.ctx.counters
        if n_dropped:
            c["deadline_misses"] += n_dropped
            c["dropped"] += n_dropped
            for sid in self.edf.last_dropped:
                self._forget(sid)
        for i in range(n):
            sid = int(self._out_ids[i])
            flags = int(self._out_flags[i])
            if flags & DeliveryFlags.MISSED:
                c["deadline_misses"] += 1
            if not self._pending and self._send(sid, flags):
                done += 1
            else:
                self._pending.append((sid, flags))
        if n:
            self.oracle.record("forward", (self.ctx.clock.monotonic_ns() - t0) // n)  # service time per packet
        return done

    def _send(self, sid: int, flags: int) -> bool:
        rec, type_id, _pos = self._store[sid]
        if not flags & DeliveryFlags.MISSED:
            ok = self.raw_out.offer(rec, type_id) >= 0
        else:
            ok = self._send_recovered(rec, type_id, flags)
            if not ok:
                return False
        if ok:
            pid = self._packet_of.get(sid)
            if pid is not None:
                self.causal.mark_delivered(pid)
            self._forget(sid)
            self.ctx.counters["emitted"] += 1
        return ok

    def _send_recovered(self, rec: bytes, type_id: int, flags: int) -> bool:
        """A packet past its deadline: re-encode it with the miss made visible."""
        import msgspec

        pkt = self.codec.decode(memoryview(rec), type_id)
        c = self.ctx.counters
        new_flags = pkt.flags | FLAG_LATE
        topic = pkt.topic
        priority = pkt.priority
        if flags & DeliveryFlags.DEGRADED:
            degraded = self.degraded_topic.get(topic_id(pkt.topic))
            if degraded is not None:
                topic = degraded
            new_flags |= FLAG_DEGRADED
            c["c"][2] += 1
        elif flags & DeliveryFlags.ESCALATED:
            priority = 255
            new_flags |= FLAG_ESCALATED
            c["c"][3] += 1
        else:
            c["c"][1] += 1
        out = msgspec.structs.replace(pkt, flags=new_flags, topic=topic, priority=priority)
        return self.packet_out.offer(out) >= 0

    def _sweep(self, now_ns: int) -> None:
        if now_ns >= self._next_hint:
            self.oracle.observe_load(queue_depth=len(self.edf) + len(self._pending), arrivals=self._arrivals, now_ns=now_ns)
            self._arrivals = 0
            hint = self.oracle.generate_optimization_hint(self.goal)
            self.take = max(1, min(hint.batch_size, self.batch))
            self._next_hint = now_ns + 10_000_000
        report = self.edf.expire(now_ns)
        c = self.ctx.counters
        if report.dropped:
            c["deadline_misses"] += len(report.dropped)
            c["dropped"] += len(report.dropped)
            for sid in report.dropped:
                self._forget(sid)
        c["deadline_misses"] += len(report.late) + len(report.degraded) + len(report.escalated)
        expired = self.causal.expire(now_ns)
        for pid in expired.dead_lettered:
            sid = self._held.pop(pid, None)
            if sid is not None:
                rec, type_id, _pos = self._store[sid]
                self.dead_letter.offer(rec, type_id & 0x7FFFFFFF)
                c["dead_lettered"] += 1
                c["c"][4] += 1
                self._forget(sid)
        if expired.released:
            c["c"][4] += len(expired.released)
            # released packets come out of pop_ready on the next step

    def _forget(self, sid: int) -> None:
        self._store.pop(sid, None)
        self._packet_of.pop(sid, None)

    def _release_input(self) -> None:
        """Hand back the input up to the oldest record not yet forwarded (at-least-once on a crash)."""
        oldest = next(iter(self._store.values()), None)
        self.reader._release_later(self.reader.position if oldest is None else oldest[2])

    def parker(self) -> Parker | None:
        # With packets queued, keep stepping (their deadlines and retries need us); else park on input.
        return None if (len(self.edf) or self._pending or self._held) else self.reader._parker

    def drain(self, now_ns: int) -> int:
        return self.step(now_ns) if (len(self.edf) or self._pending or self.reader.lag_bytes) else 0

    def close(self) -> None:
        self.reader.close()
        self.raw_out.close()
        self.packet_out.close()
        self.dead_letter.close()
