"""The control block: typed access to the fabric's shared tables (layout in ``shm_layouts.control``).

The supervisor creates it; workers, clients and ``chronofabric stat`` attach to it.
Rows are claimed with compare-and-swap on their state word, so any process can
register a client, a subscription or a topic without a lock, and the supervisor
can reclaim the rows of processes that died.
"""

from __future__ import annotations

import msgspec
import numpy as np

from fabric import _ring_kernels as K
from fabric._process import is_alive, self_identity
from fabric.config import TopologyConfig
from fabric.errors import (
    CapacityError,
    FabricNotRunningError,
    SegmentNotFoundError,
    UnknownTopicError,
)
from fabric.packet import topic_id as _topic_id
from fabric.segment import Segment, unlink_segment
from shm_layouts.control import (
    CLIENT_DTYPE,
    CLIENTS_OFFSET,
    CONFIG_BLOB_BYTES,
    CONFIG_OFFSET,
    CONTROL_BYTES,
    FABRIC_DTYPE,
    FABRIC_OFFSET,
    MAX_CLIENTS,
    MAX_RINGS,
    MAX_SUBSCRIPTIONS,
    MAX_TOPICS,
    MAX_WORKERS,
    NAME_OFFSET,
    RING_ROW_DTYPE,
    RINGS_OFFSET,
    SUBSCRIPTION_DTYPE,
    SUBSCRIPTIONS_OFFSET,
    TOPIC_DTYPE,
    TOPICS_OFFSET,
    WORKER_DTYPE,
    WORKERS_OFFSET,
    ClientState,
    FabricState,
    RingRole,
    RowState,
)
from shm_layouts.header import SegmentKind

__all__ = ["ControlBlock", "segment_prefix", "control_segment_name", "ring_segment_name"]


def segment_prefix(fabric: str) -> str:
    """Every segment of fabric ``fabric`` starts with this."""
    return f"cf-{fabric}-"


def control_segment_name(fabric: str) -> str:
    return f"{segment_prefix(fabric)}control"


def ring_segment_name(fabric: str, role: str) -> str:
    return f"{segment_prefix(fabric)}{role}"


def _field_offset(dtype: np.dtype, field: str) -> int:
    return dtype.fields[field][1]


class ControlBlock:
    """The control segment of one fabric, created (supervisor) or attached (everyone else)."""

    def __init__(self, segment: Segment, fabric: str) -> None:
        self.segment = segment
        self.fabric = fabric
        u8 = segment.u8
        self.header = np.frombuffer(u8, dtype=FABRIC_DTYPE, count=1, offset=FABRIC_OFFSET)
        self.workers = np.frombuffer(u8, dtype=WORKER_DTYPE, count=MAX_WORKERS, offset=WORKERS_OFFSET)
        self.clients = np.frombuffer(u8, dtype=CLIENT_DTYPE, count=MAX_CLIENTS, offset=CLIENTS_OFFSET)
        self.rings = np.frombuffer(u8, dtype=RING_ROW_DTYPE, count=MAX_RINGS, offset=RINGS_OFFSET)
        self.topics = np.frombuffer(u8, dtype=TOPIC_DTYPE, count=MAX_TOPICS, offset=TOPICS_OFFSET)
        self.subscriptions = np.frombuffer(u8, dtype=SUBSCRIPTION_DTYPE, count=MAX_SUBSCRIPTIONS, offset=SUBSCRIPTIONS_OFFSET)

    # --- factories ------------------------------------------------------------------------

    @classmethod
    def create(cls, fabric: str, config: TopologyConfig) -> "ControlBlock":
        """Create the control segment (supervisor only); state STARTING until ``mark_running``."""
        seg = Segment.create(control_segment_name(fabric), CONTROL_BYTES, SegmentKind.CONTROL, mark_ready=False)
        cb = cls(seg, fabric)
        pid, start_ms = self_identity()
        h = cb.header[0]
        h["supervisor_pid"] = pid
        h["supervisor_start_ms"] = start_ms
        h["state"] = FabricState.STARTING
        blob = msgspec.json.encode(config)
        if len(blob) > CONFIG_BLOB_BYTES:
            seg.destroy()
            raise ValueError(f"the topology encodes to {len(blob)} bytes; at most {CONFIG_BLOB_BYTES} fit")
        seg.u8[CONFIG_OFFSET : CONFIG_OFFSET + len(blob)] = np.frombuffer(blob, dtype=np.uint8)
        h["config_len"] = len(blob)
        name = fabric.encode()
        seg.u8[NAME_OFFSET : NAME_OFFSET + len(name)] = np.frombuffer(name, dtype=np.uint8)
        cb.workers["inbox"] = -1
        cb.workers["reader_slot"] = -1
        cb.workers["fanout_pos"] = -1
        cb.rings["owner"] = -1
        seg.mark_ready()
        return cb

    @classmethod
    def attach(cls, fabric: str, *, timeout_ns: int = 5_000_000_000) -> "ControlBlock":
        """Attach to a running fabric's control block.

        Raises
        ------
        FabricNotRunningError
            No fabric of that name exists.
        VersionMismatchError
            It runs another layout version of ChronoFabric.
        """
        try:
            seg = Segment.attach(control_segment_name(fabric), SegmentKind.CONTROL, timeout_ns=timeout_ns)
        except SegmentNotFoundError as exc:
            raise FabricNotRunningError(
                f"no fabric named {fabric!r} is running (start it with `chronofabric up --name {fabric}`)"
            ) from exc
        return cls(seg, fabric)

    # --- fabric-wide ----------------------------------------------------------------------

    def _addr(self, table_offset: int, itemsize: int, row: int, dtype: np.dtype, field: str) -> int:
        return self.segment.address + table_offset + row * itemsize + _field_offset(dtype, field)

    @property
    def state(self) -> int:
        return int(K.read_word(self.segment.address + FABRIC_OFFSET + _field_offset(FABRIC_DTYPE, "state")))

    def set_state(self, state: int) -> None:
        K.publish_word(self.segment.address + FABRIC_OFFSET + _field_offset(FABRIC_DTYPE, "state"), state)

    def config(self) -> TopologyConfig:
        """The topology this fabric runs."""
        n = int(self.header[0]["config_len"])
        return msgspec.json.decode(bytes(self.segment.u8[CONFIG_OFFSET : CONFIG_OFFSET + n]), type=TopologyConfig)

    @property
    def supervisor_pid(self) -> int:
        return int(self.header[0]["supervisor_pid"])

    def supervisor_alive(self) -> bool:
        h = self.header[0]
        return is_alive(int(h["supervisor_pid"]), int(h["supervisor_start_ms"]))

    def check_running(self) -> None:
        """Raise ``FabricNotRunningError`` unless the supervisor lives and the fabric runs."""
        if not self.supervisor_alive():
            raise FabricNotRunningError(
                f"fabric {self.fabric!r} is stale: its supervisor (pid {self.supervisor_pid}) is gone; "
                "`chronofabric up` reclaims it"
            )
        st = self.state
        if st != FabricState.RUNNING:
            raise FabricNotRunningError(f"fabric {self.fabric!r} is {FabricState.NAMES.get(st, st)}, not running")

    def bump(self, field: str) -> None:
        K.add_word(self.segment.address + FABRIC_OFFSET + _field_offset(FABRIC_DTYPE, field), 1)

    def version(self, field: str) -> int:
        return int(K.read_word(self.segment.address + FABRIC_OFFSET + _field_offset(FABRIC_DTYPE, field)))

    # --- rings ----------------------------------------------------------------------------

    def add_ring(self, role: int, name: str, capacity_bytes: int, index: int = 0) -> int:
        """Record a ring in the table (supervisor, at start)."""
        row = int(self.header[0]["n_rings"])
        if row >= MAX_RINGS:
            raise CapacityError(f"at most {MAX_RINGS} rings")
        r = self.rings[row]
        r["role"] = role
        r["index"] = index
        r["capacity_bytes"] = capacity_bytes
        r["owner"] = -1
        r["name"] = name.encode()
        self.header[0]["n_rings"] = row + 1
        return row

    def ring_name(self, role: int, index: int = 0) -> str:
        for r in self.rings[: int(self.header[0]["n_rings"])]:
            if r["role"] == role and r["index"] == index:
                return r["name"].decode()
        raise KeyError(f"no ring of role {RingRole.NAMES.get(role, role)} index {index}")

    def ring_rows(self) -> list[tuple[int, int, str]]:
        """``(role, index, name)`` of every ring."""
        return [
            (int(r["role"]), int(r["index"]), r["name"].decode()) for r in self.rings[: int(self.header[0]["n_rings"])]
        ]

    def claim_inbox(self, owner: int) -> int:
        """Take a free inbox ring for component ``owner``; returns its pool index."""
        for row in range(int(self.header[0]["n_rings"])):
            if self.rings[row]["role"] != RingRole.INBOX:
                continue
            addr = self._addr(RINGS_OFFSET, RING_ROW_DTYPE.itemsize, row, RING_ROW_DTYPE, "owner")
            if K.cas_word(addr, -1, owner) == -1:
                return int(self.rings[row]["index"])
        raise CapacityError(
            f"fabric {self.fabric!r}: every inbox ring is taken; close unused subscribers or raise fabric.inbox_pool"
        )

    def release_inbox(self, index: int) -> None:
        for row in range(int(self.header[0]["n_rings"])):
            if self.rings[row]["role"] == RingRole.INBOX and self.rings[row]["index"] == index:
                K.publish_word(self._addr(RINGS_OFFSET, RING_ROW_DTYPE.itemsize, row, RING_ROW_DTYPE, "owner"), -1)
                return

    def inbox_owner(self, index: int) -> int:
        for r in self.rings[: int(self.header[0]["n_rings"])]:
            if r["role"] == RingRole.INBOX and r["index"] == index:
                return int(r["owner"])
        return -1

    # --- topics ---------------------------------------------------------------------------

    def declare_topic(self, name: str) -> int:
        """Add a topic (idempotent); returns its row."""
        tid = _topic_id(name)
        free = -1
        for row in range(MAX_TOPICS):
            st = int(self.topics[row]["state"])
            if st == RowState.ACTIVE and int(self.topics[row]["topic_id"]) == tid:
                return row
            if st == RowState.FREE and free < 0:
                free = row
        for row in range(max(free, 0), MAX_TOPICS):
            addr = self._addr(TOPICS_OFFSET, TOPIC_DTYPE.itemsize, row, TOPIC_DTYPE, "state")
            if K.cas_word(addr, RowState.FREE, RowState.BUSY) == RowState.FREE:
                self.topics[row]["topic_id"] = tid
                self.topics[row]["name"] = name.encode()
                K.publish_word(addr, RowState.ACTIVE)
                self.bump("topics_version")
                self.bump("subscriptions_version")  # the router's routing version covers topics too
                return row
        raise CapacityError(f"fabric {self.fabric!r}: all {MAX_TOPICS} topic rows are taken")

    def topic_row(self, name: str) -> int:
        """The row of a declared topic; ``UnknownTopicError`` otherwise."""
        tid = _topic_id(name)
        for row in range(MAX_TOPICS):
            if int(self.topics[row]["state"]) == RowState.ACTIVE and int(self.topics[row]["topic_id"]) == tid:
                return row
        known = sorted(self.topic_names())
        raise UnknownTopicError(
            f"fabric {self.fabric!r} has no topic {name!r} (known: {', '.join(known) or 'none'}); declare it in the "
            "topology's [[topics]] or with FabricClient.declare_topic()"
        )

    def set_topic_admission(self, topic: str, min_priority: int) -> None:
        """Shed packets of ``topic`` below ``min_priority`` at the router (0 admits all); counted as filtered.

        This is how governance decisions (EGC's ``shed``/``allow``) act on the fabric.
        """
        if not 0 <= min_priority <= 256:
            raise ValueError(f"min_priority must be in 0..256, got {min_priority}")
        row = self.topic_row(topic)
        self.topics[row]["admit_min_priority"] = min_priority
        self.bump("subscriptions_version")  # the router rebuilds its table and applies it

    def topic_admission(self, topic: str) -> int:
        return int(self.topics[self.topic_row(topic)]["admit_min_priority"])

    def topic_names(self) -> list[str]:
        return [t["name"].decode() for t in self.topics if int(t["state"]) == RowState.ACTIVE]

    # --- subscriptions --------------------------------------------------------------------

    def add_subscription(
        self, topic: str, inbox: int, owner: int, *, min_priority: int = 0, source: int = -1, target_bits: int = 0
    ) -> int:
        """Route ``topic`` to inbox ``inbox``; returns the subscription row."""
        tid = int(self.topics[self.topic_row(topic)]["topic_id"])
        for row in range(MAX_SUBSCRIPTIONS):
            addr = self._addr(SUBSCRIPTIONS_OFFSET, SUBSCRIPTION_DTYPE.itemsize, row, SUBSCRIPTION_DTYPE, "state")
            if K.cas_word(addr, RowState.FREE, RowState.BUSY) == RowState.FREE:
                s = self.subscriptions[row]
                s["topic_id"] = tid
                s["inbox"] = inbox
                s["owner"] = owner
                s["min_priority"] = min_priority
                s["source"] = source
                s["target_bits"] = target_bits
                K.publish_word(addr, RowState.ACTIVE)
                self.bump("subscriptions_version")
                return row
        raise CapacityError(f"fabric {self.fabric!r}: all {MAX_SUBSCRIPTIONS} subscription rows are taken")

    def remove_subscription(self, row: int) -> None:
        addr = self._addr(SUBSCRIPTIONS_OFFSET, SUBSCRIPTION_DTYPE.itemsize, row, SUBSCRIPTION_DTYPE, "state")
        if K.cas_word(addr, RowState.ACTIVE, RowState.FREE) == RowState.ACTIVE:
            self.bump("subscriptions_version")

    def remove_subscriptions_of_inbox(self, inbox: int) -> int:
        n = 0
        for row in range(MAX_SUBSCRIPTIONS):
            s = self.subscriptions[row]
            if int(s["state"]) == RowState.ACTIVE and int(s["inbox"]) == inbox:
                self.remove_subscription(row)
                n += 1
        return n

    def active_subscriptions(self) -> np.ndarray:
        """A copy of every active subscription row."""
        subs = self.subscriptions.copy()
        return subs[subs["state"] == RowState.ACTIVE]

    # --- clients --------------------------------------------------------------------------

    def register_client(self, *, timeout_ns: int = 1_000_000_000) -> int:
        """Claim a client row for this process; returns the row.

        When every row is taken it waits up to ``timeout_ns`` for the supervisor to reclaim
        the rows of dead clients (only the supervisor reclaims: it also releases their blobs).
        """
        from fabric.timesource import get_time_source

        pid, start_ms = self_identity()
        clock = get_time_source()
        deadline = clock.monotonic_ns() + timeout_ns
        while True:
            for row in range(MAX_CLIENTS):
                addr = self._addr(CLIENTS_OFFSET, CLIENT_DTYPE.itemsize, row, CLIENT_DTYPE, "state")
                if K.cas_word(addr, ClientState.FREE, ClientState.JOINING) == ClientState.FREE:
                    c = self.clients[row]
                    c["pid"] = pid
                    c["start_ms"] = start_ms
                    c["epoch"] = int(c["epoch"]) + 1
                    c["inboxes"] = 0
                    for f in ("published", "refused", "received", "malformed"):
                        c[f] = 0
                    K.publish_word(addr, ClientState.ATTACHED)
                    self.bump("clients_version")
                    return row
            if clock.monotonic_ns() >= deadline:
                raise CapacityError(f"fabric {self.fabric!r}: all {MAX_CLIENTS} client rows are taken")
            import time

            time.sleep(0.01)

    def release_client(self, row: int) -> None:
        addr = self._addr(CLIENTS_OFFSET, CLIENT_DTYPE.itemsize, row, CLIENT_DTYPE, "state")
        K.publish_word(addr, ClientState.FREE)
        self.bump("clients_version")

    def dead_clients(self) -> list[int]:
        """Rows of attached clients whose process is gone."""
        out = []
        for row in range(MAX_CLIENTS):
            c = self.clients[row]
            if int(c["state"]) != ClientState.FREE and not is_alive(int(c["pid"]), int(c["start_ms"])):
                out.append(row)
        return out

    def reclaim_dead_clients(self) -> list[tuple[int, int]]:
        """Free the rows, subscriptions and inboxes of dead clients; returns ``(row, inbox mask)`` of each.

        The supervisor calls it (and then releases the blobs those inboxes held).
        """
        out = []
        for row in self.dead_clients():
            mask = int(self.clients[row]["inboxes"])
            out.append((row, mask))
            for idx in range(64):
                if mask >> idx & 1:
                    self.remove_subscriptions_of_inbox(idx)
                    self.release_inbox(idx)
            self.release_client(row)
        return out

    # --- lifetime -------------------------------------------------------------------------

    def close(self) -> None:
        """Drop the views and unmap (idempotent)."""
        if self.segment.closed:
            return
        self.header = self.workers = self.clients = self.rings = self.topics = self.subscriptions = None  # type: ignore[assignment]
        self.segment.close()

    def destroy(self) -> None:
        """Close and unlink (supervisor)."""
        self.close()
        unlink_segment(self.segment.name)

    def __enter__(self) -> "ControlBlock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
