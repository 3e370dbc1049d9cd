"""The control block: the fabric's single source of truth (like Aeron's CnC file).

One segment per fabric, created by the supervisor, read-only for observers
(``chronofabric stat``). Every row is written by one process only (stated per
table), and hot counters sit on their own 128-byte lines.

::

    0      +--------------------------------------------------------------+
           | segment header (128)                                         |
    128    | FABRIC line: supervisor pid/start, state, heartbeat, versions|  supervisor
    256    | fabric name (64) | config (msgspec JSON, CONFIG_BLOB_BYTES)  |  supervisor
           +--------------------------------------------------------------+
           | WORKERS   MAX_WORKERS x 256  line A: heartbeat + counters     |  the worker
           |                              line B: identity, state, cpus   |  supervisor
           | CLIENTS   MAX_CLIENTS x 256  line A: heartbeat + counters     |  the client
           |                              line B: identity, state, inboxes|  the client / supervisor
           | RINGS     MAX_RINGS x 128    name, role, index, capacity      |  supervisor
           | TOPICS    MAX_TOPICS x 128   id, name, router counters       |  router (counters)
           | SUBSCRIPTIONS  MAX_SUBSCRIPTIONS x 64                         |  the subscriber
           +--------------------------------------------------------------+

Component ids: worker row ``i`` is component ``i``; client row ``j`` is component
``MAX_WORKERS + j``. A packet's target mask has bit ``k`` for component ``k``.
"""

from __future__ import annotations

import numpy as np

from shm_layouts.header import CACHE_LINE_BYTES, SEGMENT_HEADER_BYTES

__all__ = [
    "MAX_WORKERS",
    "MAX_CLIENTS",
    "MAX_RINGS",
    "MAX_TOPICS",
    "MAX_SUBSCRIPTIONS",
    "CONFIG_BLOB_BYTES",
    "FABRIC_DTYPE",
    "WORKER_DTYPE",
    "CLIENT_DTYPE",
    "RING_ROW_DTYPE",
    "TOPIC_DTYPE",
    "SUBSCRIPTION_DTYPE",
    "FABRIC_OFFSET",
    "NAME_OFFSET",
    "CONFIG_OFFSET",
    "WORKERS_OFFSET",
    "CLIENTS_OFFSET",
    "RINGS_OFFSET",
    "TOPICS_OFFSET",
    "SUBSCRIPTIONS_OFFSET",
    "CONTROL_BYTES",
    "FabricState",
    "WorkerState",
    "ClientState",
    "RowState",
    "RingRole",
    "client_component",
]

MAX_WORKERS = 32
MAX_CLIENTS = 32
MAX_RINGS = 64
MAX_TOPICS = 256
MAX_SUBSCRIPTIONS = 256
CONFIG_BLOB_BYTES = 16384

LINE = CACHE_LINE_BYTES


class FabricState:
    STARTING = 1
    RUNNING = 2
    STOPPING = 3
    STOPPED = 4
    BROKEN = 5
    NAMES = {1: "starting", 2: "running", 3: "stopping", 4: "stopped", 5: "broken"}


class WorkerState:
    EMPTY = 0
    STARTING = 1
    RUNNING = 2
    STOPPING = 3  # asked to drain and exit
    EXITED = 4
    RESTARTING = 5  # dead or hung; waiting out its backoff
    FAILED = 6  # gave up after too many restarts
    NAMES = {0: "-", 1: "starting", 2: "running", 3: "stopping", 4: "exited", 5: "restarting", 6: "failed"}


class ClientState:
    FREE = 0
    JOINING = 1
    ATTACHED = 2
    NAMES = {0: "free", 1: "joining", 2: "attached"}


class RowState:
    FREE = 0
    BUSY = 1  # being written
    ACTIVE = 2


class RingRole:
    ROUTER_IN = 1
    SCHEDULER_IN = 2
    DEAD_LETTER = 3
    INBOX = 4
    ARENA = 5  # the blob arena (not a ring; listed here so every segment is in one table)
    NAMES = {1: "router-in", 2: "scheduler-in", 3: "dead-letter", 4: "inbox", 5: "arena"}


FABRIC_DTYPE = np.dtype(
    [
        ("supervisor_pid", "<i8"),
        ("supervisor_start_ms", "<i8"),
        ("state", "<i8"),
        ("heartbeat_ns", "<i8"),  # supervisor heartbeat (fabric time, monotonic)
        ("started_ns", "<i8"),
        ("subscriptions_version", "<i8"),  # bumped on every subscription change
        ("topics_version", "<i8"),
        ("clients_version", "<i8"),
        ("n_workers", "<i8"),
        ("n_rings", "<i8"),
        ("n_inboxes", "<i8"),
        ("config_len", "<i8"),
        ("dead_lettered", "<i8"),  # malformed records the supervisor drained from the dead-letter ring
        ("spare", "<i8", 3),
    ]
)
assert FABRIC_DTYPE.itemsize == LINE

WORKER_DTYPE = np.dtype(
    [
        # line A — written by the worker process only
        ("heartbeat_ns", "<i8"),
        ("steps", "<i8"),
        ("received", "<i8"),  # packets taken from its input
        ("emitted", "<i8"),  # packets it published or delivered onward
        ("errors", "<i8"),
        ("dead_lettered", "<i8"),
        ("deadline_misses", "<i8"),
        ("dropped", "<i8"),
        ("parks", "<i8"),
        ("fanout_pos", "<i8"),  # router: input position of the packet being fanned out (-1 none)
        ("fanout_ring", "<i8"),  # router: last inbox that packet was delivered to
        ("c", "<i8", 5),  # kind-specific counters (named per kind in fabric.stat)
        # line B — written by the supervisor (and the worker for `reader_slot`)
        ("state", "<i8"),
        ("pid", "<i8"),
        ("start_ms", "<i8"),
        ("cpus_mask", "<i8"),
        ("restarts", "<i8"),
        ("kind", "<i8"),
        ("inbox", "<i8"),  # pool index of its inbox ring, -1 none
        ("reader_slot", "<i8"),  # its subscriber slot on its input ring (kept across restarts)
        ("exit_code", "<i8"),
        ("name", "S56"),
    ]
)
assert WORKER_DTYPE.itemsize == 2 * LINE

CLIENT_DTYPE = np.dtype(
    [
        # line A — written by the client
        ("heartbeat_ns", "<i8"),
        ("published", "<i8"),
        ("refused", "<i8"),  # back-pressure refusals seen by try_publish
        ("received", "<i8"),
        ("malformed", "<i8"),
        ("spare_a", "<i8", 11),
        # line B — identity (client) and reclaim (supervisor)
        ("state", "<i8"),
        ("pid", "<i8"),
        ("start_ms", "<i8"),
        ("epoch", "<i8"),  # incremented on every attach to this row: part of packet ids
        ("inboxes", "<u8"),  # bit mask of inbox pool indexes this client holds
        ("spare_b", "<i8", 11),
    ]
)
assert CLIENT_DTYPE.itemsize == 2 * LINE

RING_ROW_DTYPE = np.dtype(
    [
        ("role", "<i8"),
        ("index", "<i8"),  # inbox pool index (inbox rings), else 0
        ("capacity_bytes", "<i8"),
        ("owner", "<i8"),  # component holding an inbox, -1 free
        ("name", "S96"),
    ]
)
assert RING_ROW_DTYPE.itemsize == LINE

TOPIC_DTYPE = np.dtype(
    [
        ("state", "<i8"),
        ("topic_id", "<u8"),
        ("routed", "<i8"),  # router: packets seen on this topic
        ("delivered", "<i8"),  # router: copies delivered to subscribers
        ("no_subscriber", "<i8"),  # router: packets nobody subscribed to (counted, not kept)
        ("filtered", "<i8"),  # router: copies a subscription predicate refused
        ("bytes", "<i8"),
        ("admit_min_priority", "<i8"),  # governance (EGC): packets below this priority are shed, counted as filtered
        ("name", "S64"),
    ]
)
assert TOPIC_DTYPE.itemsize == LINE

SUBSCRIPTION_DTYPE = np.dtype(
    [
        ("state", "<i8"),
        ("topic_id", "<u8"),
        ("inbox", "<i8"),  # pool index of the inbox ring it delivers to
        ("owner", "<i8"),  # component id of the subscriber
        ("min_priority", "<i8"),
        ("source", "<i8"),  # only packets from this component (-1: any)
        ("target_bits", "<u8"),  # only packets whose target mask intersects this (0: any)
        ("spare", "<i8"),
    ]
)
assert SUBSCRIPTION_DTYPE.itemsize == 64

FABRIC_OFFSET = SEGMENT_HEADER_BYTES
NAME_OFFSET = FABRIC_OFFSET + LINE
CONFIG_OFFSET = NAME_OFFSET + 64
WORKERS_OFFSET = (CONFIG_OFFSET + CONFIG_BLOB_BYTES + LINE - 1) // LINE * LINE
CLIENTS_OFFSET = WORKERS_OFFSET + MAX_WORKERS * WORKER_DTYPE.itemsize
RINGS_OFFSET = CLIENTS_OFFSET + MAX_CLIENTS * CLIENT_DTYPE.itemsize
TOPICS_OFFSET = RINGS_OFFSET + MAX_RINGS * RING_ROW_DTYPE.itemsize
SUBSCRIPTIONS_OFFSET = TOPICS_OFFSET + MAX_TOPICS * TOPIC_DTYPE.itemsize
CONTROL_BYTES = SUBSCRIPTIONS_OFFSET + MAX_SUBSCRIPTIONS * SUBSCRIPTION_DTYPE.itemsize


def client_component(row: int) -> int:
    """Component id of client row ``row``."""
    return MAX_WORKERS + row
