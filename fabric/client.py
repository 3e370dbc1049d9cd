"""Attach to a running fabric from any Python process: publish and subscribe.

Example::

    import fabric

    with fabric.attach("chronofabric") as fab:
        with fab.subscribe("demo") as sub, fab.publisher("demo") as pub:
            pub.publish({"reading": 1.5})
            packet = sub.receive(timeout_ns=1_000_000_000)

A client takes a row in the control block (its component id is
``MAX_WORKERS + row``). Publishers write into the router's input ring (packets
with a deadline or dependencies go through the scheduler when the topology has
one); each subscriber takes an inbox ring from the fabric's pool and registers
its subscriptions, which the router picks up at once. A client that dies is
noticed by the supervisor, which reclaims its row, inboxes and subscriptions.

Handles are not thread-safe: use one client per thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from loguru import logger

from fabric import _ring_kernels as K
from fabric.channel import PacketReader, PacketWriter
from fabric.control import ControlBlock
from fabric.errors import BrokenResourceError, ClosedResourceError, FabricNotRunningError
from fabric.hlc import HybridLogicalClock
from fabric.packet import PhasePacket
from fabric.ring import BACK_PRESSURED, Ring
from fabric.timesource import get_time_source
from fabric.wait import WaitStrategy
from shm_layouts.control import (
    CLIENT_DTYPE,
    CLIENTS_OFFSET,
    RingRole,
    client_component,
)

__all__ = ["attach", "FabricClient", "Publisher", "Subscriber"]

#: Low 40 bits of a packet id: the client's sequence number (above: component and epoch).
_SEQ_MASK = 0xFFFFFFFFFF


def attach(name: str = "chronofabric", *, timeout_ns: int = 5_000_000_000) -> "FabricClient":
    """Attach to the running fabric ``name``.

    Raises
    ------
    FabricNotRunningError
        No fabric of that name runs (or its supervisor is dead).
    VersionMismatchError
        The fabric runs another layout version of ChronoFabric.
    """
    return FabricClient(name, timeout_ns=timeout_ns)


class FabricClient:
    """A process's handle on one fabric."""

    def __init__(self, name: str, *, timeout_ns: int = 5_000_000_000) -> None:
        self.name = name
        self.control = ControlBlock.attach(name, timeout_ns=timeout_ns)
        try:
            self._wait_running(timeout_ns)
            self.row = self.control.register_client()
        except BaseException:
            self.control.close()
            raise
        self.component = client_component(self.row)
        self.epoch = int(self.control.clients[self.row]["epoch"]) & 0xFFFF
        self.hlc = HybridLogicalClock()
        self._id_base = (self.component << 56) | (self.epoch << 40)
        # Counted in plain ints on the hot path (one writer each); a small thread publishes the
        # deltas to the control block every 20 ms, so `stat` is never more than 20 ms behind.
        self._counts = {"published": 0, "refused": 0, "received": 0, "malformed": 0}
        self._flushed = dict(self._counts)
        self._flush_lock = threading.Lock()
        self._stop_flusher = threading.Event()
        self._flusher = threading.Thread(target=self._flush_loop, name=f"chronofabric-counters-{name}", daemon=True)
        self._rings: dict[tuple[int, int], Ring] = {}
        self._writers: dict[int, PacketWriter] = {}
        self._seq = 0  # the last packet sequence number issued (ids: _id_base | seq)
        self._handles: list = []
        self._arena = None
        self._closed = False
        self._has_scheduler = any(role == RingRole.SCHEDULER_IN for role, _, _ in self.control.ring_rows())
        self._flusher.start()
        logger.debug("attached to fabric {} as client row {}", name, self.row)

    def _wait_running(self, timeout_ns: int) -> None:
        clock = get_time_source()
        deadline = clock.monotonic_ns() + timeout_ns
        while True:
            try:
                self.control.check_running()
                return
            except FabricNotRunningError:
                if clock.monotonic_ns() >= deadline or not self.control.supervisor_alive():
                    raise
            _sleep_ms(5)

    # --- plumbing -------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedResourceError(f"client of fabric {self.name!r} is closed")

    def _ring(self, role: int, index: int = 0) -> Ring:
        key = (role, index)
        ring = self._rings.get(key)
        if ring is None:
            ring = self._rings[key] = Ring.attach(self.control.ring_name(role, index))
        return ring

    def _writer(self, role: int) -> PacketWriter:
        w = self._writers.get(role)
        if w is None:
            w = self._writers[role] = PacketWriter(self._ring(role).writer())
        return w

    def _next_id(self) -> int:
        self._seq = seq = self._seq + 1
        return self._id_base | (seq & _SEQ_MASK)

    def _count(self, field: str, n: int = 1) -> None:
        self._counts[field] += n

    def flush_counters(self) -> None:
        """Publish this client's counters to the control block now (``stat`` reads them)."""
        with self._flush_lock:
            if self.control.segment.closed:
                return
            base = self.control.segment.address + CLIENTS_OFFSET + self.row * CLIENT_DTYPE.itemsize
            for field, total in list(self._counts.items()):
                delta = total - self._flushed[field]
                if delta:
                    K.add_word(base + CLIENT_DTYPE.fields[field][1], delta)
                    self._flushed[field] = total

    def _flush_loop(self) -> None:
        while not self._stop_flusher.wait(0.02):
            self.flush_counters()

    # --- API ------------------------------------------------------------------------------

    def publisher(self, topic: str, *, priority: int = 0, targets: int = 0) -> "Publisher":
        """A publisher on ``topic`` (which must be declared: ``UnknownTopicError`` otherwise)."""
        self._check_open()
        self.control.topic_row(topic)
        pub = Publisher(self, topic, priority=priority, targets=targets)
        self._handles.append(pub)
        return pub

    def subscribe(
        self,
        topics: str | Iterable[str],
        *,
        min_priority: int = 0,
        source: int | None = None,
        target_bits: int = 0,
        wait: WaitStrategy | None = None,
    ) -> "Subscriber":
        """Receive every packet of ``topics`` from now on (optionally filtered on the fixed header).

        Parameters
        ----------
        min_priority:
            Only packets with at least this priority.
        source:
            Only packets from this component id.
        target_bits:
            Only packets whose target mask intersects these bits.
        """
        self._check_open()
        names = [topics] if isinstance(topics, str) else list(topics)
        for t in names:
            self.control.topic_row(t)
        sub = Subscriber(self, names, min_priority=min_priority, source=-1 if source is None else source,
                         target_bits=target_bits, wait=wait)
        self._handles.append(sub)
        return sub

    @property
    def arena(self):
        """The fabric's blob arena (``fabric.arena.BlobArena``), attached on first use."""
        self._check_open()
        if self._arena is None:
            from fabric.arena import BlobArena
            from fabric.errors import CapacityError

            try:
                name = self.control.ring_name(RingRole.ARENA)
            except KeyError:
                raise CapacityError(f"fabric {self.name!r} runs without a blob arena (fabric.arena_bytes = 0)") from None
            self._arena = BlobArena.attach(name)
        return self._arena

    def declare_topic(self, topic: str) -> None:
        """Add a topic to the running fabric (idempotent)."""
        from fabric.config import TOPIC_NAME_RE

        self._check_open()
        if not TOPIC_NAME_RE.match(topic):
            raise ValueError(f"topic {topic!r} must be 1-63 letters, digits, '.', '_' or '-'")
        self.control.declare_topic(topic)

    def topics(self) -> list[str]:
        """Topics the fabric routes."""
        return self.control.topic_names()

    def stats(self):
        """A snapshot of the fabric's counters (``fabric.stat.FabricSnapshot``)."""
        from fabric.stat import snapshot

        self._check_open()
        return snapshot(self.control)

    def check(self) -> None:
        """Raise ``BrokenResourceError`` if the fabric's supervisor is gone."""
        if not self.control.supervisor_alive():
            raise BrokenResourceError(f"fabric {self.name!r}: the supervisor is gone")

    def close(self) -> None:
        """Close every publisher and subscriber, give the client row back (idempotent)."""
        if self._closed:
            return
        for h in list(self._handles):
            h.close()
        self._closed = True
        self._stop_flusher.set()
        self._flusher.join(timeout=1.0)
        self.flush_counters()
        for w in self._writers.values():
            w.close()
        for ring in self._rings.values():
            ring.close()
        self._rings.clear()
        if self._arena is not None:
            self._arena.close()
            self._arena = None
        if not self.control.segment.closed:
            self.control.release_client(self.row)
            self.control.close()

    def __enter__(self) -> "FabricClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Publisher:
    """Publishes on one topic. Every packet is stamped with the client's hybrid logical clock."""

    def __init__(self, client: FabricClient, topic: str, *, priority: int, targets: int) -> None:
        self._client = client
        self.topic = topic
        self.priority = priority
        self.targets = targets
        self._closed = False
        # The fast path of publish/try_publish (no deadline, deps or per-call overrides) binds
        # everything it touches once: ~0.1 us of lookups and calls per packet otherwise.
        self._offer = client._writer(RingRole.ROUTER_IN).offer
        self._tick = client.hlc.tick
        self._id_base = client._id_base
        self._source = client.component
        self._counts = client._counts

    def _packet(
        self, payload: Any, priority: int | None, deadline_ns: int, targets: int | None, deps: tuple, blob: int = 0
    ) -> PhasePacket:
        c = self._client
        return PhasePacket(
            id=c._next_id(),
            hlc=c.hlc.tick(),
            source=c.component,
            targets=self.targets if targets is None else targets,
            priority=self.priority if priority is None else priority,
            deadline_ns=deadline_ns,
            blob=blob,
            topic=self.topic,
            deps=deps,
            payload=payload,
        )

    def _plain_packet(self, payload: Any) -> PhasePacket:
        """The common packet (no deadline, deps or per-call overrides), from bound state only."""
        c = self._client
        c._seq = seq = c._seq + 1
        return PhasePacket(id=self._id_base | (seq & _SEQ_MASK), hlc=self._tick(), source=self._source,
                           targets=self.targets, priority=self.priority, topic=self.topic, payload=payload)

    def _writer_for(self, deadline_ns: int, deps: tuple) -> PacketWriter:
        c = self._client
        if (deadline_ns or deps) and c._has_scheduler:
            return c._writer(RingRole.SCHEDULER_IN)
        return c._writer(RingRole.ROUTER_IN)

    def try_publish(
        self, payload: Any, *, priority: int | None = None, deadline_ns: int = 0, targets: int | None = None, deps: tuple = ()
    ) -> int | None:
        """Publish at once; returns the packet id, or None when the fabric refused it (counted)."""
        if self._closed:
            raise ClosedResourceError(f"publisher on {self.topic!r} is closed")
        if priority is None and targets is None and not deadline_ns and not deps:
            pkt = self._plain_packet(payload)
            if self._offer(pkt) >= 0:
                self._counts["published"] += 1
                return pkt.id
            self._counts["refused"] += 1
            return None
        pkt = self._packet(payload, priority, deadline_ns, targets, tuple(deps))
        if self._writer_for(deadline_ns, pkt.deps).offer(pkt) >= 0:
            self._client._count("published")
            return pkt.id
        self._client._count("refused")
        return None

    def publish(
        self,
        payload: Any,
        *,
        priority: int | None = None,
        deadline_ns: int = 0,
        targets: int | None = None,
        deps: tuple = (),
        timeout_ns: int = 5_000_000_000,
    ) -> int:
        """Publish, waiting up to ``timeout_ns`` for room; returns the packet id.

        Parameters
        ----------
        deadline_ns:
            Absolute deadline in fabric time (``fabric.timesource.now_ns()``); 0 for none.
        deps:
            Ids of packets that must be delivered before this one.

        Raises
        ------
        TimeoutError
            The fabric had no room for ``timeout_ns`` (back pressure).
        CodecError
            The payload cannot be encoded.
        """
        if self._closed:
            raise ClosedResourceError(f"publisher on {self.topic!r} is closed")
        if priority is None and targets is None and not deadline_ns and not deps:
            # The common case: one tick, one packet, one offer (~1 us in all).
            pkt = self._plain_packet(payload)
            if self._offer(pkt) < 0:
                self._send(self._client._writer(RingRole.ROUTER_IN), pkt, timeout_ns)  # room ran out: wait
            self._counts["published"] += 1
            return pkt.id
        pkt = self._packet(payload, priority, deadline_ns, targets, tuple(deps))
        self._send(self._writer_for(deadline_ns, pkt.deps), pkt, timeout_ns)
        self._client._count("published")
        return pkt.id

    def _send(self, writer: PacketWriter, pkt: PhasePacket, timeout_ns: int) -> None:
        """``writer.send`` (waits for room up to ``timeout_ns``); a timeout is counted as refused."""
        try:
            writer.send(pkt, timeout_ns=timeout_ns)
        except TimeoutError:
            self._client._count("refused")
            self._client.check()
            raise

    def publish_array(
        self,
        array: Any,
        payload: Any = None,
        *,
        priority: int | None = None,
        deadline_ns: int = 0,
        targets: int | None = None,
        timeout_ns: int = 5_000_000_000,
    ) -> int:
        """Publish a large array through the blob arena: written once, read in place by every subscriber.

        ``payload`` travels in the packet as usual (e.g. metadata); subscribers get the
        array with ``Subscriber.view(packet)``. Returns the packet id.

        Raises
        ------
        CapacityError
            The arena has no room now (subscribers have not released enough).
        """
        if self._closed:
            raise ClosedResourceError(f"publisher on {self.topic!r} is closed")
        c = self._client
        arena = c.arena
        ref = arena.put(array, owner=c.component)
        pkt = self._packet(payload, priority, deadline_ns, targets, (), ref)
        try:
            self._writer_for(deadline_ns, ()).send(pkt, timeout_ns=timeout_ns)
        except BaseException:
            arena.release_in_flight(ref)  # nobody will route it: drop our hold
            c._count("refused")
            raise
        c._count("published")
        return pkt.id

    def publish_batch(self, payloads: Iterable[Any], *, priority: int | None = None, timeout_ns: int = 5_000_000_000) -> int:
        """Publish many payloads in order (each waits for room like ``publish``); returns the count."""
        if self._closed:
            raise ClosedResourceError(f"publisher on {self.topic!r} is closed")
        writer = self._client._writer(RingRole.ROUTER_IN)
        n = 0
        for payload in payloads:
            pkt = self._packet(payload, priority, 0, None, ())
            if writer.offer(pkt) < 0:
                try:
                    writer.send(pkt, timeout_ns=timeout_ns)
                except TimeoutError:
                    self._client._count("published", n)
                    self._client._count("refused")
                    raise
            n += 1
        self._client._count("published", n)
        return n

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> "Publisher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Subscriber:
    """Receives the packets of its topics through its own inbox ring.

    Iterating yields packets as they come (blocking between them) until closed.
    Malformed packets are counted in ``malformed`` (and the client's row) and skipped.
    """

    def __init__(self, client: FabricClient, topics: list[str], *, min_priority: int, source: int, target_bits: int,
                 wait: WaitStrategy | None) -> None:
        self._client = client
        self.topics = topics
        control = client.control
        self.inbox = control.claim_inbox(client.component)
        self._rows: list[int] = []
        try:
            ring = client._ring(RingRole.INBOX, self.inbox)
            ring.reclaim_dead()  # a previous owner that died may still hold a subscriber slot here
            self._reader = PacketReader(ring.reader(wait=wait), on_malformed=self._on_malformed, hlc=client.hlc)
            # Join the inbox first, then route to it: nothing is routed before we can read it.
            for t in topics:
                self._rows.append(
                    control.add_subscription(t, self.inbox, client.component, min_priority=min_priority, source=source,
                                             target_bits=target_bits)
                )
            row = control.clients[client.row]
            row["inboxes"] = int(row["inboxes"]) | (1 << self.inbox)
        except BaseException:
            self._teardown()
            raise
        self._closed = False

    def _on_malformed(self, rec) -> None:
        self._client._count("malformed")
        logger.warning("subscriber on {}: dropped a malformed packet: {}", self.topics, rec.error)

    @property
    def malformed(self) -> int:
        return self._reader.malformed

    def try_receive(self) -> PhasePacket | None:
        """One packet if one is there, else None."""
        if self._closed:
            raise ClosedResourceError("subscriber is closed")
        pkt = self._reader.receive_nowait()
        if pkt is not None:
            self._received(pkt)
        return pkt

    def receive(self, *, timeout_ns: int = 5_000_000_000) -> PhasePacket:
        """Wait up to ``timeout_ns`` for the next packet; raises ``TimeoutError`` after."""
        if self._closed:
            raise ClosedResourceError("subscriber is closed")
        try:
            # Packets left over from a batch come first; otherwise one compiled call takes the
            # next (spinning as the wait strategy says). A batch poll first, as this once did,
            # cost 2.4 us a packet at low rates (one poll, one list, one generator per packet).
            pkt = self._reader.receive(timeout_ns=timeout_ns)
        except TimeoutError:
            self._client.check()
            raise
        self._received(pkt)
        return pkt

    def receive_batch(self, limit: int = 256) -> list[PhasePacket]:
        """Up to ``limit`` packets that are there now (possibly none)."""
        if self._closed:
            raise ClosedResourceError("subscriber is closed")
        out = self._reader.receive_batch(limit)  # the reader merges the stamps into the client's clock
        if out:
            self._client._count("received", len(out))
        return out

    def poll(self, handler: Callable[[PhasePacket], None], limit: int = 256) -> int:
        """Hand up to ``limit`` waiting packets to ``handler``; returns how many."""
        batch = self.receive_batch(limit)
        for pkt in batch:
            handler(pkt)
        return len(batch)

    def view(self, packet: PhasePacket):
        """The packet's blob as a read-only numpy array, without a copy; ``release`` it when done."""
        if not packet.blob:
            raise ValueError("this packet carries no blob")
        return self._client.arena.view(packet.blob)

    def release(self, packet: PhasePacket) -> None:
        """Drop this subscriber's hold on the packet's blob (the last holder frees it)."""
        if packet.blob:
            self._client.arena.release(packet.blob, inbox=self.inbox)

    def _received(self, pkt: PhasePacket) -> None:
        self._client._count("received")

    def __iter__(self) -> Iterator[PhasePacket]:
        while not self._closed:
            try:
                yield self.receive(timeout_ns=100_000_000)
            except TimeoutError:
                continue

    def _teardown(self) -> None:
        control = self._client.control
        for row in self._rows:
            control.remove_subscription(row)
        self._rows = []
        reader = getattr(self, "_reader", None)
        if reader is not None:
            reader.close()
        row = control.clients[self._client.row]
        row["inboxes"] = int(row["inboxes"]) & ~(1 << self.inbox) & 0xFFFFFFFFFFFFFFFF
        if any(role == RingRole.ARENA for role, _, _ in control.ring_rows()):
            self._client.arena.release_inbox(self.inbox)  # blobs it never released must not outlive it
        control.release_inbox(self.inbox)

    def close(self) -> None:
        """Stop receiving; the inbox goes back to the pool (idempotent)."""
        if getattr(self, "_closed", True):
            return
        self._closed = True
        if not self._client.control.segment.closed:
            self._teardown()

    def __enter__(self) -> "Subscriber":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _sleep_ms(ms: float) -> None:
    import time

    time.sleep(ms / 1000.0)


_ = BACK_PRESSURED
