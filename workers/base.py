"""Workers are step functions: ``poll → handle(batch) → emit``, one call of ``step`` at a time.

A worker never loops or sleeps on its own. ``workers.loop`` drives it in a real
process (real time, real rings, the idle strategy and heartbeats); the
deterministic simulator drives the same code in one process under a
``SimulatedTimeSource`` with a seeded order of steps. That split is what makes a
whole topology replayable.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from loguru import logger

from fabric.channel import PacketReader, PacketWriter
from fabric.config import TopologyConfig, WorkerSpec
from fabric.control import ControlBlock
from fabric.errors import BrokenResourceError
from fabric.hlc import HybridLogicalClock
from fabric.packet import PhasePacket
from fabric.ring import Ring
from fabric.timesource import TimeSource, get_time_source
from fabric.wait import Parker
from shm_layouts.control import WORKER_DTYPE, WORKERS_OFFSET, RingRole

__all__ = ["Worker", "WorkerContext"]


class WorkerContext:
    """What a worker is given: its identity, the control block, its rings and the time source."""

    def __init__(self, control: ControlBlock, row: int, spec: WorkerSpec, clock: TimeSource | None = None) -> None:
        self.control = control
        self.row = row
        self.component = row
        self.spec = spec
        self.config: TopologyConfig = control.config()
        self.clock = clock or get_time_source()
        self.counters = control.workers[row]
        self.hlc = HybridLogicalClock(time_source=self.clock)  # stamps what it emits, merges what it receives
        self._rings: dict[tuple[int, int], Ring] = {}
        self._arena = None  # the fabric's BlobArena, attached when an inbox reader needs it
        self._seq = 0

    def ring(self, role: int, index: int = 0) -> Ring:
        """Attach (once) to a ring of this fabric."""
        key = (role, index)
        ring = self._rings.get(key)
        if ring is None:
            ring = self._rings[key] = Ring.attach(self.control.ring_name(role, index))
        return ring

    def counter_address(self, field: str) -> int:
        """Address of one of this worker's counters (for kernels that count in place)."""
        return self.control.segment.address + WORKERS_OFFSET + self.row * WORKER_DTYPE.itemsize + WORKER_DTYPE.fields[field][1]

    def inbox_reader(self) -> PacketReader | None:
        """A packet reader on this worker's inbox (None when it subscribes to nothing)."""
        inbox = int(self.counters["inbox"])
        if inbox < 0:
            return None
        ring = self.ring(RingRole.INBOX, inbox)
        slot = int(self.counters["reader_slot"])
        reader = ring.reader(durable=True, adopt_slot=slot if slot >= 0 else None)
        self.counters["reader_slot"] = reader.slot
        return PacketReader(reader, hlc=self.hlc, on_blob=self._blob_dropper(inbox))

    def _blob_dropper(self, inbox: int) -> Callable[[int], None] | None:
        """Workers never read blobs: drop this inbox's hold on every blob as its packet arrives
        (the router took one for each inbox it delivered to; kept, it would fill the arena).
        None when the fabric runs without an arena (no packet can carry a blob then)."""
        try:
            name = self.control.ring_name(RingRole.ARENA)
        except KeyError:
            return None
        if self._arena is None:
            from fabric.arena import BlobArena  # only fabrics with an arena pay for its import

            self._arena = BlobArena.attach(name)
        arena = self._arena

        def drop(ref: int) -> None:
            try:
                arena.release(ref, inbox=inbox)
            except BrokenResourceError as exc:
                # Redelivered after this worker restarted: its hold went with the first delivery
                # and the space was reused since. Nothing of ours is left to drop.
                logger.debug("{}: blob {:#x} already released ({})", self.spec.name, ref, exc)

        return drop

    def publisher(self) -> PacketWriter:
        """A packet writer into the router's input (what every worker emits through)."""
        return PacketWriter(self.ring(RingRole.ROUTER_IN).writer())

    def next_packet_id(self) -> int:
        """A fabric-unique packet id: this component in the top byte, a sequence below."""
        self._seq += 1
        restarts = int(self.counters["restarts"]) & 0xFFFF
        return (self.component << 56) | (restarts << 40) | self._seq

    def close(self) -> None:
        for ring in self._rings.values():
            ring.close()
        self._rings.clear()
        if self._arena is not None:
            self._arena.close()
            self._arena = None
        self.counters = None  # a view into the control block: drop it before the block unmaps


class Worker:
    """Base class of every worker kind.

    Subclasses implement ``step(now_ns) -> int`` (how much work was done; 0 means
    idle) and may override ``parker()`` (what to sleep on when idle) and ``close()``.
    """

    kind = "base"

    def __init__(self, ctx: WorkerContext, **options: Any) -> None:
        self.ctx = ctx
        if options:
            raise TypeError(f"worker kind {self.kind!r} takes no options {sorted(options)}")

    def step(self, now_ns: int) -> int:
        raise NotImplementedError

    def parker(self) -> Parker | None:
        return None

    def drain(self, now_ns: int) -> int:
        """Finish in-flight work before exit (called repeatedly until it returns 0)."""
        return self.step(now_ns)

    def emit(self, writer: PacketWriter, topic: str, payload: Any, *, priority: int = 0, targets: int = 0) -> bool:
        """Publish a packet from this worker (True if the ring took it; refusals are counted).

        ``targets``: a component bit mask restricting who may receive it (0: every subscriber).
        """
        pkt = PhasePacket(
            id=self.ctx.next_packet_id(),
            hlc=self.ctx.hlc.tick(),
            source=self.ctx.component,
            priority=priority,
            targets=targets,
            topic=topic,
            payload=payload,
        )
        if writer.offer(pkt) >= 0:
            self.ctx.counters["emitted"] += 1
            return True
        self.ctx.counters["dropped"] += 1
        return False

    def close(self) -> None:
        pass

