"""The router worker: topics and fan-out, on fixed headers only, in numba batches.

Each step routes up to ``batch`` records from the router's input ring into the
inbox rings of every matching subscription (``fabric.routing.route_batch``),
rebuilding its route table whenever the control block's subscriptions change.
Its input slot is durable: a restarted router adopts it and resumes from its last
released position, and its fan-out resume point (in its control-block row) keeps
a half-delivered packet from being delivered twice to the same inbox.
"""

from __future__ import annotations

import numpy as np
from loguru import logger

from fabric import _ring_kernels as K
from fabric._futex import futex_wake
from fabric.errors import BrokenResourceError
from fabric.routing import (
    R_BLOCKED,
    R_DEAD_DROPPED,
    R_DEAD_LETTERED,
    R_DELIVERED,
    R_INBOX_GONE,
    R_MAX_HLC,
    R_N,
    R_ROUTED,
    R_STALE,
    R_UNKNOWN_TOPIC,
    R_WAKE_MASK,
    T_BYTES,
    T_DELIVERED,
    T_FILTERED,
    T_NO_SUBSCRIBER,
    T_ROUTED,
    RouteTable,
    route_batch,
)
from fabric.wait import BackoffParker, Parker
from shm_layouts.control import FABRIC_DTYPE, FABRIC_OFFSET, RingRole
from shm_layouts.ring import WAKE_DOORBELL, WAKE_OFFSET
from workers.base import Worker, WorkerContext

__all__ = ["RouterWorker"]


_TOPIC_FIELDS = ((T_ROUTED, "routed"), (T_DELIVERED, "delivered"), (T_NO_SUBSCRIBER, "no_subscriber"), (T_FILTERED, "filtered"), (T_BYTES, "bytes"))


class RouterWorker(Worker):
    """Routes packets by topic and target mask to every subscriber's inbox."""

    kind = "router"

    def __init__(self, ctx: WorkerContext, *, batch: int = 256) -> None:
        super().__init__(ctx)
        self.batch = batch
        control = ctx.control
        self.input = ctx.ring(RingRole.ROUTER_IN)
        slot = int(ctx.counters["reader_slot"])
        self.reader = self.input.reader(durable=True, adopt_slot=slot if slot >= 0 else None)
        ctx.counters["reader_slot"] = self.reader.slot
        n_inboxes = int(control.header[0]["n_inboxes"])
        self.inbox_rings = [ctx.ring(RingRole.INBOX, i) for i in range(n_inboxes)]
        self.inbox_writers = [r.writer() for r in self.inbox_rings]
        self.inbox_bases = np.array([r.segment.address for r in self.inbox_rings], dtype=np.int64)
        self.inbox_slots = np.array([w.slot for w in self.inbox_writers], dtype=np.int64)
        self.arena = None
        if any(role == RingRole.ARENA for role, _, _ in control.ring_rows()):
            from fabric.arena import BlobArena

            self.arena = BlobArena.attach(control.ring_name(RingRole.ARENA))
        self._arena_base = self.arena.segment.address if self.arena is not None else 0
        self._arena_slots = self.arena.slot_count if self.arena is not None else 0
        self.dead_letter = ctx.ring(RingRole.DEAD_LETTER)
        self.dl_writer = self.dead_letter.writer()
        self.stats = np.zeros(R_N, dtype=np.int64)
        self.fanout_addr = ctx.counter_address("fanout_pos")
        self._subs_version = -1
        self._topics_version = -1
        self.table: RouteTable | None = None
        self._next_publish_ns = 0
        self._progress = False
        self._backoff = BackoffParker()
        self._version_addr = control.segment.address + FABRIC_OFFSET + FABRIC_DTYPE.fields["subscriptions_version"][1]
        self._refresh_routes()
        logger.info(
            "router: input slot {} at position {}, {} inboxes, {} topics",
            self.reader.slot,
            self.reader.position,
            n_inboxes,
            len(self.table),
        )

    def _refresh_routes(self) -> None:
        control = self.ctx.control
        subs_v = control.version("subscriptions_version")
        topics_v = control.version("topics_version")
        if subs_v == self._subs_version and topics_v == self._topics_version:
            return
        if self.table is not None:
            self._publish_counters()
        self._subs_version = subs_v
        self._topics_version = topics_v
        self.table = RouteTable(control.topics, control.subscriptions)
        logger.debug("router: route table rebuilt ({} topics, {} routes) subs_v={}", len(self.table), len(self.table.route_inbox), subs_v)

    def step(self, now_ns: int) -> int:
        self._refresh_routes()
        pos = self._route()
        if self.stats[R_STALE]:
            self._refresh_routes()  # subscriptions changed under this batch: route the rest with the new table
            pos = self._route()
        return self._after_route(pos, now_ns)

    def _route(self) -> int:
        t = self.table
        reader = self.reader
        pos = route_batch(
            self.input.segment.address,
            reader.slot,
            reader.position,
            self.batch,
            t.keys,
            t.topic_admit,
            t.route_start,
            t.route_count,
            t.route_inbox,
            t.route_owner,
            t.route_min_priority,
            t.route_source,
            t.route_target_bits,
            self.inbox_bases,
            self.inbox_slots,
            self.fanout_addr,
            self.dead_letter.segment.address,
            self.dl_writer.slot,
            self.stats,
            t.topic_stats,
            self._version_addr,
            self._subs_version,
            self._arena_base,
            self._arena_slots,
        )
        if pos >= 0 and pos != reader.position:
            reader.position = pos
            self._progress = True
        return pos

    def _after_route(self, pos: int, now_ns: int) -> int:
        reader = self.reader
        progressed = self._progress
        self._progress = False
        if pos < 0:
            raise BrokenResourceError(f"router: input ring refused the router (code {pos})")
        wake = int(self.stats[R_WAKE_MASK])
        if wake:
            self.stats[R_WAKE_MASK] = 0
            for i in range(len(self.inbox_bases)):
                if wake >> i & 1:
                    futex_wake(int(self.inbox_bases[i]) + WAKE_OFFSET + WAKE_DOORBELL * 8)
        if progressed:
            self._backoff.reset()
        if not progressed:
            if now_ns >= self._next_publish_ns:
                self._publish_counters()
                self._next_publish_ns = now_ns + 20_000_000
            if not self.stats[R_BLOCKED]:
                reader._check_stall()  # a dead producer's claim may block the input
            return 0
        if now_ns >= self._next_publish_ns:
            self._publish_counters()
            self._next_publish_ns = now_ns + 20_000_000  # stat refreshes see counters at most 20 ms old
            if self.stats[R_MAX_HLC]:
                self.ctx.hlc.try_update(int(self.stats[R_MAX_HLC]))  # this hop's clock follows what it routed
                self.stats[R_MAX_HLC] = 0
        return 1

    def _publish_counters(self) -> None:
        """Move the batch counters into the control block (the router is their single writer)."""
        c = self.ctx.counters
        s = self.stats
        c["received"] += int(s[R_ROUTED]) + int(s[R_DEAD_LETTERED]) + int(s[R_DEAD_DROPPED]) + int(s[R_UNKNOWN_TOPIC])
        c["emitted"] += int(s[R_DELIVERED])
        c["dead_lettered"] += int(s[R_DEAD_LETTERED])
        c["dropped"] += int(s[R_DEAD_DROPPED]) + int(s[R_INBOX_GONE]) + int(s[R_UNKNOWN_TOPIC])
        c["c"][0] += int(s[R_UNKNOWN_TOPIC])
        c["c"][1] += int(s[R_INBOX_GONE])
        for i in (R_ROUTED, R_DELIVERED, R_DEAD_LETTERED, R_DEAD_DROPPED, R_UNKNOWN_TOPIC, R_INBOX_GONE):
            s[i] = 0
        t = self.table
        topics = self.ctx.control.topics
        for k, row in enumerate(t.topic_rows):
            for col, field in _TOPIC_FIELDS:
                v = int(t.topic_stats[k, col])
                if v:
                    topics[row][field] += v
        t.topic_stats[:] = 0

    def parker(self) -> Parker | None:
        # Blocked by a full inbox, the input still has data: parking on it would return at once.
        # Back off instead (50 us doubling to 1 ms) until the subscriber makes room.
        return self._backoff if self.stats[R_BLOCKED] else self.reader._parker

    def drain(self, now_ns: int) -> int:
        n = self.step(now_ns)
        if n == 0:
            self._publish_counters()
        return n

    def close(self) -> None:
        if self.table is not None:
            self._publish_counters()
        # The input slot stays durable unless we stop on purpose: close() runs on a clean exit.
        self.reader.close()
        for w in self.inbox_writers:
            w.close()
        self.dl_writer.close()
        if self.arena is not None:
            self.arena.close()


_ = K
