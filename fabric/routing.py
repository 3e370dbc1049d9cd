"""Routing: the route table (topic → subscriptions) and the router's fused batch kernel.

The router worker calls ``route_batch`` once per batch. In one compiled call it
reads packet records from its input ring, checks each fixed header (a malformed
record goes to the dead-letter ring and is counted), finds the topic's routes by
binary search, applies each subscription's predicate on the header (minimum
priority, source, target bits — and the packet's own target mask), and copies the
record into every matching inbox ring. It never decodes a body.

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

from fabric._atomics import copy_bytes, fetch_add_at, fetch_and_at, fetch_or_at, i64_array_at, load_acquire_at, store_release_at
from fabric._jit import jit
from fabric._ring_kernels import (
    BACK_PRESSURED,
    HDR,
    NOT_CONNECTED,
    RING_CORRUPT,
    SUBSCRIBER_DROPPED,
    _claim,
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

__all__ = ["RouteTable", "route_batch", "RouteResult", "ROUTER_COUNTERS"]

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
R_N = 13

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


@jit(inline="always")
def _find_topic(keys, topic):
    lo = 0
    hi = len(keys) - 1
    while lo <= hi:
        mid = (lo + hi) >> 1
        k = keys[mid]
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


_ROUTE_SIG = (
    "int64(int64, int64, int64, int64, uint64[::1], int64[::1], int64[::1], int64[::1], int64[::1], int64[::1], "
    "int64[::1], int64[::1], uint64[::1], int64[::1], int64[::1], int64, int64, int64, int64[::1], int64[:, ::1], "
    "int64, int64, int64, int64)"
)


@jit(_ROUTE_SIG)
def route_batch(
    in_base,
    in_slot,
    start_pos,
    max_records,
    keys,
    topic_admit,
    route_start,
    route_count,
    route_inbox,
    route_owner,
    route_min_priority,
    route_source,
    route_target_bits,
    inbox_bases,
    inbox_slots,
    fanout_addr,
    dl_base,
    dl_slot,
    stats,
    topic_stats,
    version_addr,
    table_version,
    arena_base,
    arena_slots,
):
    """Route up to ``max_records`` records from the input ring; returns the new input position.

    ``version_addr`` is the control block's subscriptions version. It is checked after
    each record's commit is acquired: a record published after a subscription change is
    never routed with the table from before it (the batch stops with ``R_STALE``).

    ``arena_base`` (0: no arena): a packet naming a blob gives every receiving inbox a
    hold on it (its bit in the holder mask, set before the delivery commits); when the
    fan-out is complete the in-flight hold is dropped, freeing a blob nobody got.

    ``fanout_addr`` points at the router's two persistent words (``fanout_pos``,
    ``fanout_ring``) in the control block. ``stats`` and ``topic_stats`` accumulate
    counters (see ``R_*`` and ``T_*``). The input position is released (published) here.
    Returns a ring code (< 0) when the router's subscriber slot was dropped or the
    input ring is corrupt.
    """
    cfg = i64_array_at(in_base + CONFIG_OFFSET, 16)
    cap = cfg[CFG_CAPACITY]
    mask = cap - 1
    data = in_base + cfg[CFG_DATA_OFFSET]
    entry = in_base + cfg[CFG_SUBSCRIBERS_OFFSET] + in_slot * SUBSCRIBER_ENTRY_BYTES
    if load_acquire_at(entry + S_STATE * 8) == STATE_DROPPED:
        return SUBSCRIBER_DROPPED
    fan = i64_array_at(fanout_addr, 2)
    salt = cfg[CFG_SALT]
    p = start_pos
    n = 0
    stats[R_BLOCKED] = 0
    stats[R_STALE] = 0
    while n < max_records:
        off = p & mask
        rem = cap - off
        if rem < HDR:
            p += rem
            continue
        slot = data + off
        if load_acquire_at(slot) != p ^ salt:  # SYNC POINT: pairs with the producer's commit store
            break
        # SYNC POINT: pairs with the subscriber's version bump (seq_cst) before its publishers start.
        if load_acquire_at(version_addr) != table_version:
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
            topic_stats[k, T_FILTERED] += 1
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
            topic_stats[k, T_NO_SUBSCRIBER] += 1
        blocked = False
        for j in range(route_start[k], route_start[k] + routes):
            inbox = route_inbox[j]
            if inbox <= resume_after:
                continue
            owner = route_owner[j]
            if priority < route_min_priority[j]:
                topic_stats[k, T_FILTERED] += 1
                continue
            if route_source[j] >= 0 and route_source[j] != source:
                topic_stats[k, T_FILTERED] += 1
                continue
            bits = route_target_bits[j]
            if bits != np.uint64(0) and (targets & bits) == np.uint64(0):
                topic_stats[k, T_FILTERED] += 1
                continue
            if targets != np.uint64(0) and owner < 64 and ((targets >> np.uint64(owner)) & np.uint64(1)) == np.uint64(0):
                topic_stats[k, T_FILTERED] += 1
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
            topic_stats[k, T_DELIVERED] += 1
        if blocked:
            stats[R_BLOCKED] = 1
            break
        if blob_slot != 0:
            _drop_hold(blob_slot, IN_FLIGHT, arena_base + ARENA_LINE_OFFSET)
        stats[R_ROUTED] += 1
        topic_stats[k, T_ROUTED] += 1
        topic_stats[k, T_BYTES] += payload
        fan[0] = -1
        p += aligned
        n += 1
        # Released after every packet, not once per batch: a router killed mid-batch then
        # resumes right after the last packet it finished, and delivers nothing twice.
        store_release_at(entry + S_POSITION * 8, p)
    if p != start_pos:
        # SYNC POINT: releases the input records to their producers (pairs with their acquire).
        store_release_at(entry + S_POSITION * 8, p)
    return p


_ = (NOT_CONNECTED, np)
