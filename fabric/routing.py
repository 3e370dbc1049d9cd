"""Routing: the route table (topic → subscriptions) and the router's fused batch kernel.

The router worker calls ``route_batch`` once per batch. In one compiled call it
reads packet records from its input ring, checks each fixed header (a malformed
record goes to the dead-letter ring and is counted), finds the topic's routes by
binary search, applies each subscription's predicate on the header (minimum
priority, source, target bits — and the packet's own target mask), and copies the
record into every matching inbox ring. It never decodes a body.

The kernel takes two integers: the address of the router's *call block* (an int64
array of addresses and sizes, ``B_*`` below, built once per route table) and the
input position. Passing thirteen numpy arrays cost ~1 µs of unboxing per call, which
the router paid on every poll, empty or not.

The input position is released after every routed packet (one store to the
router's own line), and when an inbox is full the kernel stops *inside* the packet's
fan-out and records how far it got (``fanout_pos``, ``fanout_ring``) in the
router's row of the control block; the next call — or a restarted router —
resumes there, delivering to the remaining inboxes only. A packet for a topic
nobody subscribes to is counted (``no_subscriber``) and dropped, never kept.

::

    router-in ring ──► route_batch ──► inbox[3]  (subscriber A: topic "demo")
                          │      └──► inbox[5]  (subscriber B: "demo", priority >= 10)
                          └──► dead-letter ring (malformed records)
"""

from __future__ import annotations

import numpy as np

from fabric._atomics import copy_bytes, cpu_pause, fetch_add_at, fetch_and_at, fetch_or_at, i64_array_at, load_acquire_at, store_release_at
from fabric._jit import jit
from fabric._ring_kernels import (
    BACK_PRESSURED,
    HDR,
    NOT_CONNECTED,
    RING_CORRUPT,
    SUBSCRIBER_DROPPED,
    _claim,
    _past_lap_gap,
    _commit_and_check_waiters,
)
from shm_layouts.arena import (
    A_BYTES_IN_USE,
    A_FREES,
    ARENA_LINE_OFFSET,
    B_GENERATION,
    B_HOLDERS,
    B_NBYTES,
    B_STATE,
    BLOB_FREE,
    BLOB_READY,
    IN_FLIGHT,
    REF_SLOT_BITS,
    SLOT_BYTES,
    SLOTS_OFFSET,
)
from shm_layouts.control import RowState
from shm_layouts.packet import PACKET_HEADER_BYTES, PACKET_MAGIC, PACKET_TYPE, PACKET_TYPE_MASK
from shm_layouts.record import PADDING_TYPE
from shm_layouts.ring import (
    CFG_CAPACITY,
    CFG_DATA_OFFSET,
    CFG_SALT,
    CFG_SUBSCRIBERS_OFFSET,
    CONFIG_OFFSET,
    S_POSITION,
    S_STATE,
    STATE_DROPPED,
    SUBSCRIBER_ENTRY_BYTES,
)

__all__ = ["RouteTable", "route_batch", "call_block", "RouteResult", "ROUTER_COUNTERS"]

# Indexes into the router's private int64 `stats` array (accumulated per batch, then published).
R_ROUTED = 0
R_DELIVERED = 1
R_NO_SUBSCRIBER = 2
R_FILTERED = 3
R_DEAD_LETTERED = 4
R_DEAD_DROPPED = 5  # malformed and the dead-letter ring refused it too
R_UNKNOWN_TOPIC = 6
R_INBOX_GONE = 7  # an inbox without a reader (subscriber gone): that copy dropped
R_BLOCKED = 8  # 1 when the batch stopped on a full inbox
R_WAKE_MASK = 9  # bit i: inbox i needs a futex wake
R_STALE = 10  # 1 when the batch stopped because the subscriptions changed: rebuild, call again
R_BAD_BLOB = 11  # a packet named a blob that is not in the arena (stale or foreign): delivered without it
R_MAX_HLC = 12  # the largest HLC stamp routed since the router last merged it into its clock
R_EVENTS = 13  # what the last call did, in one word: (records << 8) | EV_* bits
R_N = 14

# Bits of stats[R_EVENTS] (the low byte); the records the call consumed are above them.
EV_BLOCKED = 1  # stopped on a full inbox (stats[R_BLOCKED])
EV_STALE = 2  # stopped because the subscriptions or topics changed (stats[R_STALE])
EV_WAKE = 4  # some inbox needs a futex wake (stats[R_WAKE_MASK])
EV_FULL = 8  # consumed max_records: more may be waiting
EV_SHIFT = 8

# Cells of the call block (int64): what route_batch needs besides the input position.
B_IN_BASE = 0
B_IN_SLOT = 1
B_MAX_RECORDS = 2
B_KEYS = 3  # address of the sorted topic ids (uint64 bits)
B_N_TOPICS = 4
B_TOPIC_ADMIT = 5
B_ROUTE_START = 6
B_ROUTE_COUNT = 7
B_ROUTE_INBOX = 8
B_ROUTE_OWNER = 9
B_ROUTE_MIN_PRIORITY = 10
B_ROUTE_SOURCE = 11
B_ROUTE_TARGET_BITS = 12  # uint64 bits
B_N_ROUTES = 13
B_INBOX_BASES = 14
B_INBOX_SLOTS = 15
B_N_INBOXES = 16
B_FANOUT = 17
B_DL_BASE = 18
B_DL_SLOT = 19
B_STATS = 20  # address of stats (R_N cells)
B_TOPIC_STATS = 21  # address of topic_stats (n_topics x T_N cells)
B_SUBS_VERSION_ADDR = 22
B_SUBS_VERSION = 23  # the subscriptions version the table was built from
B_TOPICS_VERSION_ADDR = 24
B_TOPICS_VERSION = 25  # the topics version the table was built from
B_ARENA_BASE = 26
B_ARENA_SLOTS = 27
B_N = 28

ROUTER_COUNTERS = ("routed", "delivered", "no_subscriber", "filtered", "dead_lettered", "dead_dropped", "unknown_topic", "inbox_gone")

# Per-topic counter columns in `topic_stats` (router-private, published to the control block).
T_ROUTED = 0
T_DELIVERED = 1
T_NO_SUBSCRIBER = 2
T_FILTERED = 3
T_BYTES = 4
T_N = 5


class RouteResult:
    """What one ``route_batch`` call did."""

    __slots__ = ("position", "records", "blocked", "wake_mask")

    def __init__(self, position: int, records: int, blocked: bool, wake_mask: int) -> None:
        self.position = position
        self.records = records
        self.blocked = blocked
        self.wake_mask = wake_mask


class RouteTable:
    """Topic → routes, as flat sorted arrays the kernel can search (rebuilt on every change).

    Built from the control block's topic and subscription rows. Routes of one topic
    are sorted by inbox index, which is what makes resuming a fan-out exact.
    """

    def __init__(self, topics: np.ndarray, subscriptions: np.ndarray) -> None:
        active_topics = [(int(t["topic_id"]), row) for row, t in enumerate(topics) if int(t["state"]) == RowState.ACTIVE]
        active_topics.sort()
        self.keys = np.array([k for k, _ in active_topics], dtype=np.uint64)
        self.topic_rows = np.array([r for _, r in active_topics], dtype=np.int64)
        subs = subscriptions[subscriptions["state"] == RowState.ACTIVE]
        starts, counts = [], []
        inbox, owner, min_prio, source, bits = [], [], [], [], []
        for key, _ in active_topics:
            mine = sorted((s for s in subs if int(s["topic_id"]) == key), key=lambda s: int(s["inbox"]))
            starts.append(len(inbox))
            counts.append(len(mine))
            for s in mine:
                inbox.append(int(s["inbox"]))
                owner.append(int(s["owner"]))
                min_prio.append(int(s["min_priority"]))
                source.append(int(s["source"]))
                bits.append(int(s["target_bits"]))
        self.topic_admit = np.array([int(topics[r]["admit_min_priority"]) for _, r in active_topics], dtype=np.int64)
        self.route_start = np.array(starts, dtype=np.int64)
        self.route_count = np.array(counts, dtype=np.int64)
        self.route_inbox = np.array(inbox, dtype=np.int64)
        self.route_owner = np.array(owner, dtype=np.int64)
        self.route_min_priority = np.array(min_prio, dtype=np.int64)
        self.route_source = np.array(source, dtype=np.int64)
        self.route_target_bits = np.array(bits, dtype=np.uint64)
        self.topic_stats = np.zeros((max(len(active_topics), 1), T_N), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.keys)


def call_block(
    table: RouteTable,
    *,
    in_base: int,
    in_slot: int,
    max_records: int,
    inbox_bases: np.ndarray,
    inbox_slots: np.ndarray,
    fanout_addr: int,
    dl_base: int,
    dl_slot: int,
    stats: np.ndarray,
    subs_version_addr: int,
    subs_version: int,
    topics_version_addr: int,
    topics_version: int,
    arena_base: int = 0,
    arena_slots: int = 0,
) -> np.ndarray:
    """The int64 call block ``route_batch`` reads (``B_*`` cells).

    It holds the *addresses* of ``table``'s arrays, ``inbox_bases``, ``inbox_slots`` and
    ``stats``: the caller must keep all of them alive, unchanged in shape, for as long as it
    passes the block (the router rebuilds the block with every table).
    """
    arrays = (table.keys, table.topic_admit, table.route_start, table.route_count, table.route_inbox, table.route_owner,
              table.route_min_priority, table.route_source, table.route_target_bits, inbox_bases, inbox_slots, stats,
              table.topic_stats)
    for a in arrays:
        if a.itemsize != 8 or not a.flags.c_contiguous:
            raise ValueError("route_batch needs C-contiguous 8-byte arrays")
    if inbox_bases.dtype != np.int64 or inbox_slots.dtype != np.int64 or stats.dtype != np.int64 or len(stats) < R_N:
        raise ValueError("inbox_bases, inbox_slots and stats must be int64 (stats with R_N cells)")
    if len(inbox_bases) != len(inbox_slots):
        raise ValueError("inbox_bases and inbox_slots differ in length")
    n_inboxes = len(inbox_bases)
    if len(table.route_inbox) and (int(table.route_inbox.min()) < 0 or int(table.route_inbox.max()) >= n_inboxes):
        raise ValueError(f"a route names an inbox outside 0..{n_inboxes - 1}")
    b = np.zeros(B_N, dtype=np.int64)
    b[B_IN_BASE] = in_base
    b[B_IN_SLOT] = in_slot
    b[B_MAX_RECORDS] = max_records
    b[B_KEYS] = table.keys.ctypes.data
    b[B_N_TOPICS] = len(table.keys)
    b[B_TOPIC_ADMIT] = table.topic_admit.ctypes.data
    b[B_ROUTE_START] = table.route_start.ctypes.data
    b[B_ROUTE_COUNT] = table.route_count.ctypes.data
    b[B_ROUTE_INBOX] = table.route_inbox.ctypes.data
    b[B_ROUTE_OWNER] = table.route_owner.ctypes.data
    b[B_ROUTE_MIN_PRIORITY] = table.route_min_priority.ctypes.data
    b[B_ROUTE_SOURCE] = table.route_source.ctypes.data
    b[B_ROUTE_TARGET_BITS] = table.route_target_bits.ctypes.data
    b[B_N_ROUTES] = len(table.route_inbox)
    b[B_INBOX_BASES] = inbox_bases.ctypes.data
    b[B_INBOX_SLOTS] = inbox_slots.ctypes.data
    b[B_N_INBOXES] = n_inboxes
    b[B_FANOUT] = fanout_addr
    b[B_DL_BASE] = dl_base
    b[B_DL_SLOT] = dl_slot
    b[B_STATS] = stats.ctypes.data
    b[B_TOPIC_STATS] = table.topic_stats.ctypes.data
    b[B_SUBS_VERSION_ADDR] = subs_version_addr
    b[B_SUBS_VERSION] = subs_version
    b[B_TOPICS_VERSION_ADDR] = topics_version_addr
    b[B_TOPICS_VERSION] = topics_version
    b[B_ARENA_BASE] = arena_base
    b[B_ARENA_SLOTS] = arena_slots
    return b


@jit(inline="always")
def _find_topic(keys, topic):
    # keys: the sorted uint64 topic ids, as int64 cells; compared as unsigned.
    lo = 0
    hi = len(keys) - 1
    while lo <= hi:
        mid = (lo + hi) >> 1
        k = np.uint64(keys[mid])
        if k == topic:
            return mid
        if k < topic:
            lo = mid + 1
        else:
            hi = mid - 1
    return -1


@jit(inline="always")
def _drop_hold(slot_addr, bit, line_addr):
    old = fetch_and_at(slot_addr + B_HOLDERS * 8, ~bit)
    if old != 0 and (old & ~bit) == 0:
        nbytes = load_acquire_at(slot_addr + B_NBYTES * 8)
        store_release_at(slot_addr + B_STATE * 8, BLOB_FREE)  # SYNC POINT: pairs with the allocator's acquire
        fetch_add_at(line_addr + A_FREES * 8, 1)
        fetch_add_at(line_addr + A_BYTES_IN_USE * 8, -nbytes)


@jit(inline="always")
def _valid_packet(payload_addr, payload, type_id):
    if (type_id & PACKET_TYPE_MASK) != PACKET_TYPE:
        return False
    ndeps = type_id & 0xFFFF
    body = PACKET_HEADER_BYTES + 8 * ndeps
    if payload <= body:
        return False
    hw = i64_array_at(payload_addr, 8)
    return (hw[6] >> 32) == PACKET_MAGIC and (hw[6] & 0xFFFFFFFF) == payload - body and ((hw[5] >> 48) & 0xFFFF) == ndeps


@jit("int64(int64, int64, int64)")
def route_batch(block_addr, start_pos, spin_checks):
    """Route up to ``max_records`` records from the input ring; returns the new input position.

    ``block_addr`` is the address of a call block (``call_block``: the input ring, the route
    table, the inboxes, the counters); ``start_pos`` is the router's input position. When
    nothing is committed there, re-checks up to ``spin_checks`` times (a ``pause`` between,
    loads only) and routes what arrives in the same call: the router's spin phase, with no
    return to Python between a record's commit and its delivery.

    The control block's subscriptions and topics versions are checked after each record's
    commit is acquired: a record published after a subscription or topic change is never
    routed with the table from before it (the batch stops with ``R_STALE``).

    ``arena_base`` (0: no arena): a packet naming a blob gives every receiving inbox a
    hold on it (its bit in the holder mask, set before the delivery commits); when the
    fan-out is complete the in-flight hold is dropped, freeing a blob nobody got.

    The fan-out words (``fanout_pos``, ``fanout_ring``) in the router's control-block row
    persist the resume point. ``stats`` and ``topic_stats`` accumulate counters (see ``R_*``
    and ``T_*``); ``stats[R_EVENTS]`` says what this call did. The input position is
    released (published) here. Returns a ring code (< 0) when the router's subscriber slot
    was dropped or the input ring is corrupt.
    """
    blk = i64_array_at(block_addr, B_N)
    in_base = blk[B_IN_BASE]
    in_slot = blk[B_IN_SLOT]
    max_records = blk[B_MAX_RECORDS]
    n_topics = blk[B_N_TOPICS]
    keys = i64_array_at(blk[B_KEYS], n_topics)
    topic_admit = i64_array_at(blk[B_TOPIC_ADMIT], n_topics)
    route_start = i64_array_at(blk[B_ROUTE_START], n_topics)
    route_count = i64_array_at(blk[B_ROUTE_COUNT], n_topics)
    n_routes = blk[B_N_ROUTES]
    route_inbox = i64_array_at(blk[B_ROUTE_INBOX], n_routes)
    route_owner = i64_array_at(blk[B_ROUTE_OWNER], n_routes)
    route_min_priority = i64_array_at(blk[B_ROUTE_MIN_PRIORITY], n_routes)
    route_source = i64_array_at(blk[B_ROUTE_SOURCE], n_routes)
    route_target_bits = i64_array_at(blk[B_ROUTE_TARGET_BITS], n_routes)
    n_inboxes = blk[B_N_INBOXES]
    inbox_bases = i64_array_at(blk[B_INBOX_BASES], n_inboxes)
    inbox_slots = i64_array_at(blk[B_INBOX_SLOTS], n_inboxes)
    fanout_addr = blk[B_FANOUT]
    dl_base = blk[B_DL_BASE]
    dl_slot = blk[B_DL_SLOT]
    stats = i64_array_at(blk[B_STATS], R_N)
    topic_stats = i64_array_at(blk[B_TOPIC_STATS], (n_topics if n_topics > 0 else 1) * T_N)
    version_addr = blk[B_SUBS_VERSION_ADDR]
    table_version = blk[B_SUBS_VERSION]
    topics_version_addr = blk[B_TOPICS_VERSION_ADDR]
    topics_version = blk[B_TOPICS_VERSION]
    arena_base = blk[B_ARENA_BASE]
    arena_slots = blk[B_ARENA_SLOTS]
    stats[R_EVENTS] = 0
    cfg = i64_array_at(in_base + CONFIG_OFFSET, 16)
    cap = cfg[CFG_CAPACITY]
    data = in_base + cfg[CFG_DATA_OFFSET]
    entry = in_base + cfg[CFG_SUBSCRIBERS_OFFSET] + in_slot * SUBSCRIBER_ENTRY_BYTES
    if load_acquire_at(entry + S_STATE * 8) == STATE_DROPPED:
        return SUBSCRIBER_DROPPED
    fan = i64_array_at(fanout_addr, 2)
    salt = cfg[CFG_SALT]
    p = start_pos
    n = 0
    spins = 0
    stats[R_BLOCKED] = 0
    stats[R_STALE] = 0
    while n < max_records:
        p, off, rem = _past_lap_gap(p, cap)
        slot = data + off
        if load_acquire_at(slot) != p ^ salt:  # SYNC POINT: pairs with the producer's commit store
            if n == 0 and spins < spin_checks:
                spins += 1
                cpu_pause()
                continue
            break
        # SYNC POINT: pairs with the subscriber's version bump (seq_cst) before its publishers start.
        if load_acquire_at(version_addr) != table_version or load_acquire_at(topics_version_addr) != topics_version:
            stats[R_STALE] = 1
            break
        meta = load_acquire_at(slot + 8)
        length = meta & 0xFFFFFFFF
        aligned = (length + 7) & ~7
        if length < HDR or aligned > rem:
            return RING_CORRUPT
        type_id = meta >> 32
        if type_id == PADDING_TYPE:
            p += aligned
            continue
        payload = length - HDR
        src = slot + HDR
        if not _valid_packet(src, payload, type_id):
            rec = _claim(dl_base, dl_slot, payload, type_id & 0x7FFFFFFF)
            if rec >= 0:
                dcfg = i64_array_at(dl_base + CONFIG_OFFSET, 16)
                dst = dl_base + dcfg[CFG_DATA_OFFSET] + (rec & (dcfg[CFG_CAPACITY] - 1))
                copy_bytes(dst + HDR, src, payload)
                _commit_and_check_waiters(dl_base, dl_slot, rec)
                stats[R_DEAD_LETTERED] += 1
            else:
                stats[R_DEAD_DROPPED] += 1
            p += aligned
            n += 1
            continue
        hw = i64_array_at(src, 8)
        if hw[1] > stats[R_MAX_HLC]:
            stats[R_MAX_HLC] = hw[1]
        k = _find_topic(keys, np.uint64(hw[4]))
        if k < 0:
            stats[R_UNKNOWN_TOPIC] += 1
            p += aligned
            n += 1
            continue
        priority = (hw[5] >> 32) & 0xFF
        source = hw[5] & 0xFFFFFFFF
        if priority < topic_admit[k]:  # governance shed this topic's low priorities
            topic_stats[k * T_N + T_FILTERED] += 1
            stats[R_ROUTED] += 1
            p += aligned
            n += 1
            continue
        targets = np.uint64(hw[3])
        resume_after = -1
        if fan[0] == p:
            resume_after = fan[1]
        blob_slot = 0
        blob = hw[7]
        if blob != 0 and arena_base != 0:
            bslot = (blob & ((1 << REF_SLOT_BITS) - 1)) - 1
            if 0 <= bslot < arena_slots:
                blob_slot = arena_base + SLOTS_OFFSET + bslot * SLOT_BYTES
                if load_acquire_at(blob_slot + B_GENERATION * 8) != (blob >> REF_SLOT_BITS) or load_acquire_at(
                    blob_slot + B_STATE * 8
                ) != BLOB_READY:
                    blob_slot = 0
            if blob_slot == 0:
                stats[R_BAD_BLOB] += 1
        routes = route_count[k]
        if routes == 0:
            topic_stats[k * T_N + T_NO_SUBSCRIBER] += 1
        blocked = False
        for j in range(route_start[k], route_start[k] + routes):
            inbox = route_inbox[j]
            if inbox <= resume_after:
                continue
            owner = route_owner[j]
            if priority < route_min_priority[j]:
                topic_stats[k * T_N + T_FILTERED] += 1
                continue
            if route_source[j] >= 0 and route_source[j] != source:
                topic_stats[k * T_N + T_FILTERED] += 1
                continue
            bits = np.uint64(route_target_bits[j])
            if bits != np.uint64(0) and (targets & bits) == np.uint64(0):
                topic_stats[k * T_N + T_FILTERED] += 1
                continue
            if targets != np.uint64(0) and owner < 64 and ((targets >> np.uint64(owner)) & np.uint64(1)) == np.uint64(0):
                topic_stats[k * T_N + T_FILTERED] += 1
                continue
            base = inbox_bases[inbox]
            rec = _claim(base, inbox_slots[inbox], payload, type_id)
            if rec == BACK_PRESSURED:
                blocked = True
                break
            if rec < 0:  # NOT_CONNECTED (its reader is gone) or refused: this copy is dropped, counted
                stats[R_INBOX_GONE] += 1
                fan[0] = p
                fan[1] = inbox
                continue
            icfg = i64_array_at(base + CONFIG_OFFSET, 16)
            dst = base + icfg[CFG_DATA_OFFSET] + (rec & (icfg[CFG_CAPACITY] - 1))
            copy_bytes(dst + HDR, src, payload)
            if blob_slot != 0:
                fetch_or_at(blob_slot + B_HOLDERS * 8, 1 << inbox)  # the inbox holds it before it can be read
            if _commit_and_check_waiters(base, inbox_slots[inbox], rec) != 0:
                stats[R_WAKE_MASK] |= 1 << inbox
            fan[0] = p  # resume point, in case this router dies before the packet is done
            fan[1] = inbox
            stats[R_DELIVERED] += 1
            topic_stats[k * T_N + T_DELIVERED] += 1
        if blocked:
            stats[R_BLOCKED] = 1
            break
        if blob_slot != 0:
            _drop_hold(blob_slot, IN_FLIGHT, arena_base + ARENA_LINE_OFFSET)
        stats[R_ROUTED] += 1
        topic_stats[k * T_N + T_ROUTED] += 1
        topic_stats[k * T_N + T_BYTES] += payload
        fan[0] = -1
        p += aligned
        n += 1
        # Released after every packet, not once per batch: a router killed mid-batch then
        # resumes right after the last packet it finished, and delivers nothing twice.
        store_release_at(entry + S_POSITION * 8, p)
    if p != start_pos:
        # SYNC POINT: releases the input records to their producers (pairs with their acquire).
        store_release_at(entry + S_POSITION * 8, p)
    ev = n << EV_SHIFT
    if stats[R_BLOCKED]:
        ev |= EV_BLOCKED
    if stats[R_STALE]:
        ev |= EV_STALE
    if stats[R_WAKE_MASK]:
        ev |= EV_WAKE
    if n >= max_records:
        ev |= EV_FULL
    stats[R_EVENTS] = ev
    return p


_ = (NOT_CONNECTED, np)
