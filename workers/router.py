"""The router worker: topics and fan-out, on fixed headers only, in numba batches.

Each step routes up to ``batch`` records from the router's input ring into the
inbox rings of every matching subscription (``fabric.routing.route_batch``),
rebuilding its route table whenever the control block's subscriptions change.
Its input slot is durable: a restarted router adopts it and resumes from its last
released position, and its fan-out resume point (in its control-block row) keeps
a half-delivered packet from being delivered twice to the same inbox.

A step is one compiled call with three integer arguments (the call block's address, the
input position, a spin budget) and one read of what the call did (``stats[R_EVENTS]``):
the route table is rebuilt only when the kernel reports the subscriptions or topics
changed, and a stalled input (a dead producer's claim) is looked at once a millisecond
while idle. ``step`` returns how many records it consumed and ``full_batch`` says how many
a call takes, so the worker loop can give the core away after a partial batch (see
``workers.loop``).

The router's parker spins in the routing kernel itself: the wait strategy's spin phase
re-checks the input in compiled code and routes a record in the same call it commits in,
so no return to Python sits between a publish and its delivery (the loopback bench's p50
went from 4.08-4.11 to 3.85-3.94 us with it). What it routed while spinning is counted by
the next ``step``, so the loop resets its wait strategy as after any work.
"""

from __future__ import annotations

import numpy as np
from loguru import logger

from fabric import _ring_kernels as K
from fabric._futex import futex_wake
from fabric.errors import BrokenResourceError
from fabric.ring import _entry_point
from fabric.routing import (
    EV_BLOCKED,
    EV_SHIFT,
    EV_STALE,
    EV_WAKE,
    R_BLOCKED,
    R_EVENTS,
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
    call_block,
    route_batch,
)
from fabric.wait import BackoffParker, Parker
from shm_layouts.control import FABRIC_DTYPE, FABRIC_OFFSET, RingRole
from shm_layouts.ring import WAKE_DOORBELL, WAKE_OFFSET
from workers.base import Worker, WorkerContext

__all__ = ["RouterWorker"]


#: While idle, a stalled input (a claim nobody commits) is looked at this often.
_STALL_CHECK_NS = 1_000_000

_TOPIC_FIELDS = ((T_ROUTED, "routed"), (T_DELIVERED, "delivered"), (T_NO_SUBSCRIBER, "no_subscriber"), (T_FILTERED, "filtered"), (T_BYTES, "bytes"))


class RouterWorker(Worker):
    """Routes packets by topic and target mask to every subscriber's inbox."""

    kind = "router"

    def __init__(self, ctx: WorkerContext, *, batch: int = 256) -> None:
        super().__init__(ctx)
        self.batch = batch
        self.full_batch = batch  # a step that consumed fewer found the input drained
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
        self._topics_version_addr = control.segment.address + FABRIC_OFFSET + FABRIC_DTYPE.fields["topics_version"][1]
        self._kernel = _entry_point(route_batch)
        self._spun_routed = 0  # records the parker routed while spinning, counted by the next step
        self._spin_parker = _SpinRouteParker(self)
        self._block = None  # the kernel's call block: addresses of the table's arrays (kept alive with it)
        self._block_addr = 0
        self._next_stall_check_ns = 0
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
        self._block = call_block(
            self.table,
            in_base=self.input.segment.address,
            in_slot=self.reader.slot,
            max_records=self.batch,
            inbox_bases=self.inbox_bases,
            inbox_slots=self.inbox_slots,
            fanout_addr=self.fanout_addr,
            dl_base=self.dead_letter.segment.address,
            dl_slot=self.dl_writer.slot,
            stats=self.stats,
            subs_version_addr=self._version_addr,
            subs_version=subs_v,
            topics_version_addr=self._topics_version_addr,
            topics_version=topics_v,
            arena_base=self._arena_base,
            arena_slots=self._arena_slots,
        )
        self._block_addr = self._block.ctypes.data
        logger.debug("router: route table rebuilt ({} topics, {} routes) subs_v={}", len(self.table), len(self.table.route_inbox), subs_v)

    def step(self, now_ns: int) -> int:
        """Route what is waiting (up to ``batch`` records); returns how many records it consumed
        (with those the parker routed while spinning since the last step)."""
        n = self._spun_routed
        if n:
            # The parker just routed while spinning: count that now and look for more on the
            # next step (the loop comes back at once), not in a second call here.
            self._spun_routed = 0
        else:
            n, ev = self._route(0)
            if n == 0:
                return self._idle(now_ns, ev)
        self._backoff.reset()
        if now_ns >= self._next_publish_ns:
            self._publish_counters()
            self._next_publish_ns = now_ns + 20_000_000  # stat refreshes see counters at most 20 ms old
            if self.stats[R_MAX_HLC]:
                self.ctx.hlc.merge(int(self.stats[R_MAX_HLC]))  # this hop's clock follows what it routed
                self.stats[R_MAX_HLC] = 0
        return n

    def _route(self, spin_checks: int) -> tuple[int, int]:
        """One kernel call (spinning up to ``spin_checks`` re-checks when nothing is there);
        returns (records consumed, or 1 when only padding was skipped; the call's events)."""
        reader = self.reader
        start = reader.position
        pos = self._kernel(self._block_addr, start, spin_checks)
        ev = int(self.stats[R_EVENTS])
        if ev & EV_STALE:
            # Subscriptions or topics changed under this batch: rebuild, route the rest with the new table.
            self._advance(pos)
            self._refresh_routes()
            pos = self._kernel(self._block_addr, reader.position, 0)
            ev2 = int(self.stats[R_EVENTS])
            ev = (((ev >> EV_SHIFT) + (ev2 >> EV_SHIFT)) << EV_SHIFT) | (ev2 & 0xFF) | (ev & EV_WAKE)
        self._advance(pos)
        if ev & EV_WAKE:
            self._wake(int(self.stats[R_WAKE_MASK]))
        if pos == start:
            return 0, ev
        n = ev >> EV_SHIFT
        return (n if n > 0 else 1), ev  # only padding skipped: still progress

    def _advance(self, pos: int) -> None:
        if pos < 0:
            raise BrokenResourceError(f"router: input ring refused the router (code {pos})")
        self.reader.position = pos

    def _wake(self, mask: int) -> None:
        self.stats[R_WAKE_MASK] = 0
        for i in range(len(self.inbox_bases)):
            if mask >> i & 1:
                futex_wake(int(self.inbox_bases[i]) + WAKE_OFFSET + WAKE_DOORBELL * 8)

    def _idle(self, now_ns: int, ev: int) -> int:
        if now_ns >= self._next_publish_ns:
            self._publish_counters()
            self._next_publish_ns = now_ns + 20_000_000
        if not ev & EV_BLOCKED and now_ns >= self._next_stall_check_ns:
            self._next_stall_check_ns = now_ns + _STALL_CHECK_NS
            self.reader._check_stall()  # a dead producer's claim may block the input
        return 0

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
        return self._backoff if self.stats[R_BLOCKED] else self._spin_parker

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


class _SpinRouteParker:
    """The router's parker: ``spin`` runs the wait strategy's spin phase inside the routing
    kernel (a record is routed in the call it commits in), ``park`` sleeps on the input ring's
    doorbell."""

    __slots__ = ("_router", "park")

    def __init__(self, router: RouterWorker) -> None:
        self._router = router
        self.park = router.reader._parker.park

    def spin(self, checks: int) -> bool:
        """Spin up to ``checks`` re-checks, routing whatever arrives; True when something was."""
        n, _ = self._router._route(checks)
        self._router._spun_routed += n
        return n > 0
