"""Numba kernels of the ring protocol: claim, commit, offer, batch offer, poll, park.

Every kernel takes the segment's base address as a plain ``int`` (cheap to pass:
see ``fabric._atomics``) and reads the ring's geometry from its CONFIG line.
The Python API in ``fabric.ring`` validates every argument before calling here:
these kernels trust their inputs, but never trust lengths read from shared memory.

Protocol (layouts in ``shm_layouts.ring`` and ``shm_layouts.record``)::

    producer                                   subscriber
    --------                                   ----------
    t = tail; room = min(sub positions)+cap    c = acquire(commit @ p)
    claim_len, claim_pos = need, t             if c != p: nothing yet (stale or in progress)
    CAS tail t -> t+need   (store if single)   meta = length, type
    [padding record at t if wrapping]          deliver payload view, p += align8(length)
    meta @ rec; release(commit @ rec = ~rec)   ... after the handler: release(position = p)
    copy payload
    SYNC POINT: seq_cst store commit @ rec = rec
    if waiters > 0: doorbell += 1, wake

Kernels return codes, never raise (Aeron ``Publication.offer``). Positive results
of producer kernels may carry ``WAKE_FLAG``: the caller must then wake parked
subscribers with a futex wake (one syscall, only when someone sleeps).

Numba's on-disk cache keys on this file: a change to ``shm_layouts`` must also
touch this file (and bump ``LAYOUT_VERSION``). Layout touch: 6.
"""

from __future__ import annotations

import numpy as np

from fabric._atomics import (
    compare_exchange_at,
    copy_bytes,
    cpu_pause,
    data_address,
    fence,
    fetch_add_at,
    i64_array_at,
    load_acquire_at,
    store_release_at,
)
from fabric._jit import jit
from shm_layouts.packet import PACKET_HEADER_BYTES, PACKET_MAGIC, PACKET_TYPE, PACKET_TYPE_MASK
from shm_layouts.record import PADDING_TYPE, RECORD_HEADER_BYTES
from shm_layouts.ring import (
    CFG_CAPACITY,
    CFG_DATA_OFFSET,
    CFG_MAX_RECORD,
    CFG_MAX_PRODUCERS,
    CFG_MAX_SUBSCRIBERS,
    CFG_MULTI_PRODUCER,
    CFG_SALT,
    CFG_SLOW_POLICY,
    CFG_SUBSCRIBERS_OFFSET,
    CONFIG_OFFSET,
    P_BACK_PRESSURED,
    P_BYTES,
    P_CLAIM_LEN,
    P_CLAIM_POS,
    P_MIN_CACHE,
    P_NOT_CONNECTED,
    P_RECORDS,
    PRODUCER_ENTRY_BYTES,
    PRODUCERS_OFFSET,
    S_BYTES,
    S_DROPPED,
    S_PARKED,
    S_POSITION,
    S_RECORDS,
    S_STATE,
    STAT_DROPPED_SUBSCRIBERS,
    STATE_ACTIVE,
    STATE_DROPPED,
    STATE_JOINING,
    STATS_OFFSET,
    SUBSCRIBER_ENTRY_BYTES,
    SlowSubscriberPolicy,
    TAIL_OFFSET,
    WAKE_DOORBELL,
    WAKE_OFFSET,
    WAKE_WAITERS,
)

__all__ = [
    "WAKE_FLAG",
    "BACK_PRESSURED",
    "NOT_CONNECTED",
    "SUBSCRIBER_DROPPED",
    "RING_CORRUPT",
    "TOO_LARGE",
    "WAKE_SUBSCRIBERS",
    "ring_claim",
    "ring_commit",
    "ring_abort",
    "ring_offer",
    "ring_offer_batch",
    "ring_offer_records",
    "OUT_OF_BOUNDS",
    "ring_offer_buf",
    "buffer_entry_points",
    "ring_poll",
    "ring_poll_packets",
    "ring_take",
    "ring_take_packet",
    "STALL_HINT",
    "EMPTY_ATTENTION",
    "ring_park_begin",
    "ring_park_end",
    "ring_stalled_at",
    "ring_readable",
    "CUR_BASE",
    "CUR_SUBSCRIBER",
    "CUR_POSITION",
    "CUR_RELEASE",
    "CUR_AT",
    "CUR_SPIN",
    "CUR_HELD",
    "CUR_INT_TYPE",
    "READER_CLOSED",
    "CURSOR_WORDS",
    "read_word",
    "publish_word",
    "cas_word",
    "add_word",
    "warm_up",
]

HDR = RECORD_HEADER_BYTES
WAKE_FLAG = 1 << 62
BACK_PRESSURED = -2
NOT_CONNECTED = -3
SUBSCRIBER_DROPPED = -4
RING_CORRUPT = -5
TOO_LARGE = -6  # payload longer than the ring's max_record_bytes, or a type id out of 0..2**31-1
OUT_OF_BOUNDS = -8  # a batch record reaches outside its source buffer (nothing was written)
READER_CLOSED = -9  # the cursor's reader is closed (its CUR_BASE is 0): nothing was touched
# ``ring_take``'s third result when it found nothing: a claim is in progress at the position
# (its producer may have died there: the caller starts its claim-timeout clock).
STALL_HINT = 1
# ``ring_poll`` found no record but something to act on: ``desc[0]`` is the position after
# padding it skipped, ``desc[1]`` is ``STALL_HINT`` when a claim is in progress there.
EMPTY_ATTENTION = -7

# A reader's cursor: int64 words in the reader's own (process-local) memory that the take,
# readable and park kernels read and move, so a per-record call passes one address instead
# of four integers and returns two (each big Python int costs ~10-20 ns to cross).
CUR_BASE = 0  # the ring segment's base address
CUR_SUBSCRIBER = 1  # the subscriber slot
CUR_POSITION = 2  # the next position to read
CUR_RELEASE = 3  # a position to publish as this subscriber's at the next call, or -1
CUR_AT = 4  # where the last RING_CORRUPT was found
CUR_SPIN = 5  # the wait strategy's spin phase: how many re-checks a waiting take makes
CUR_HELD = 6  # 1 while a read_batch batch is held: its memory may not be released yet
CUR_INT_TYPE = 7  # id(int), for the receive builtin's argument check (fabric._ring_builtins)
CURSOR_WORDS = 8

# WAKE line word 2: how many subscribers are joined (ACTIVE or JOINING).
WAKE_SUBSCRIBERS = 2

_CFG = CONFIG_OFFSET
_POLICY_DROP = SlowSubscriberPolicy.DROP
_SUB_LINE_B = 16  # first word of a subscriber entry's cold line


# --- small cross-process primitives (cold paths call these from Python) ---------------------


@jit("int64(int64)")
def read_word(addr):
    """Acquire-load the int64 at ``addr``."""
    return load_acquire_at(addr)


@jit("void(int64, int64)")
def publish_word(addr, value):
    """Release-store ``value`` at ``addr``."""
    store_release_at(addr, value)


@jit("int64(int64, int64, int64)")
def cas_word(addr, expected, desired):
    """Compare-and-swap at ``addr``; returns the value seen."""
    return compare_exchange_at(addr, expected, desired)


@jit("int64(int64, int64)")
def add_word(addr, delta):
    """Fetch-add at ``addr``; returns the old value."""
    return fetch_add_at(addr, delta)


# --- producer side --------------------------------------------------------------------------


@jit(inline="always")
def _min_gate_position(base, max_subs, subs_off, max_prods):
    """The lowest position producers must not lap: subscribers' cursors and open claims.

    An open claim gates producers even when no subscriber is behind it: lapping it would
    let its late commit land inside newer records. Returns -1 when no subscriber is joined.
    """
    lowest = -1
    for s in range(max_subs):
        entry = base + subs_off + s * SUBSCRIBER_ENTRY_BYTES
        state = load_acquire_at(entry + S_STATE * 8)
        if state == STATE_ACTIVE or state == STATE_JOINING:
            pos = load_acquire_at(entry + S_POSITION * 8)
            if lowest < 0 or pos < lowest:
                lowest = pos
    if lowest < 0:
        return -1
    cfg = i64_array_at(base + _CFG, 16)
    cap = cfg[CFG_CAPACITY]
    data = base + cfg[CFG_DATA_OFFSET]
    salt = cfg[CFG_SALT]
    for q in range(max_prods):
        cpos = load_acquire_at(base + PRODUCERS_OFFSET + q * PRODUCER_ENTRY_BYTES + P_CLAIM_POS * 8)
        if 0 <= cpos < lowest:
            # A claim record is stale (its producer lost the tail race, or was preempted before
            # clearing it) when its record's slot shows that position committed, or any later
            # lap there: only "in progress at exactly this position" (or an older lap) still
            # gates. A claim that begins at the end of a lap begins with its own padding
            # (committed at once, or too short to hold a header): its record is the one at the
            # start of the next lap.
            off = cpos & (cap - 1)
            rem = cap - off
            pos = cpos
            if rem < HDR:
                pos = cpos + rem
            elif load_acquire_at(data + off) == cpos ^ salt:
                meta = load_acquire_at(data + off + 8)
                if meta >> 32 == PADDING_TYPE and meta & 0xFFFFFFFF == rem:
                    pos = cpos + rem
            w = load_acquire_at(data + (pos & (cap - 1)))
            at = (w ^ salt) if w >= 0 else ((~w) ^ salt)
            if (w >= 0 and at >= pos) or (w < 0 and at > pos):
                continue
            lowest = cpos
    return lowest


@jit(inline="always")
def _drop_laggards(base, max_subs, subs_off, below):
    """Drop every subscriber whose position is below ``below``; returns how many."""
    dropped = 0
    for s in range(max_subs):
        entry = base + subs_off + s * SUBSCRIBER_ENTRY_BYTES
        state = load_acquire_at(entry + S_STATE * 8)
        if state == STATE_ACTIVE or state == STATE_JOINING:
            pos = load_acquire_at(entry + S_POSITION * 8)
            if pos < below:
                if compare_exchange_at(entry + S_STATE * 8, state, STATE_DROPPED) == state:
                    store_release_at(entry + S_DROPPED * 8, pos)
                    fetch_add_at(base + WAKE_OFFSET + WAKE_SUBSCRIBERS * 8, -1)
                    fetch_add_at(base + STATS_OFFSET + STAT_DROPPED_SUBSCRIBERS * 8, 1)
                    dropped += 1
    return dropped


@jit(inline="always")
def _claim(base, producer, payload_len, type_id):
    """Claim room for one record; returns its position, or a negative code."""
    cfg = i64_array_at(base + _CFG, 16)
    cap = cfg[CFG_CAPACITY]
    mask = cap - 1
    multi = cfg[CFG_MULTI_PRODUCER]
    data = base + cfg[CFG_DATA_OFFSET]
    max_subs = cfg[CFG_MAX_SUBSCRIBERS]
    subs_off = cfg[CFG_SUBSCRIBERS_OFFSET]
    prod = base + PRODUCERS_OFFSET + producer * PRODUCER_ENTRY_BYTES
    pw = i64_array_at(prod, 16)
    if payload_len < 0 or payload_len > cfg[CFG_MAX_RECORD] or type_id < 0 or type_id > 0x7FFFFFFF:
        return TOO_LARGE
    length = payload_len + HDR
    aligned = (length + 7) & ~7
    while True:
        if load_acquire_at(base + WAKE_OFFSET + WAKE_SUBSCRIBERS * 8) <= 0:
            pw[P_NOT_CONNECTED] += 1
            return NOT_CONNECTED
        t = load_acquire_at(base + TAIL_OFFSET)
        rem = cap - (t & mask)
        pad = 0 if aligned <= rem else rem
        total = pad + aligned
        if t + total > pw[P_MIN_CACHE] + cap:
            lowest = _min_gate_position(base, max_subs, subs_off, cfg[CFG_MAX_PRODUCERS])
            if lowest < 0:
                pw[P_NOT_CONNECTED] += 1
                return NOT_CONNECTED
            pw[P_MIN_CACHE] = lowest
            if t + total > lowest + cap:
                if cfg[CFG_SLOW_POLICY] == _POLICY_DROP:
                    if _drop_laggards(base, max_subs, subs_off, t + total - cap) > 0:
                        pw[P_MIN_CACHE] = 0
                        continue
                    # Nothing to drop: an open claim is what holds us back. Never spin here.
                pw[P_BACK_PRESSURED] += 1
                return BACK_PRESSURED
        # Recovery needs to know whose claim a stuck position belongs to: say so before claiming.
        pw[P_CLAIM_LEN] = total
        store_release_at(prod + P_CLAIM_POS * 8, t)
        if multi != 0:
            if compare_exchange_at(base + TAIL_OFFSET, t, t + total) != t:
                # Lost the race: `t` is the winner's claim, not ours; a stale record of it would
                # gate every producer once the tail is a capacity past it.
                store_release_at(prod + P_CLAIM_POS * 8, -1)
                continue
        else:
            store_release_at(base + TAIL_OFFSET, t + total)
        salt = cfg[CFG_SALT]
        if pad >= HDR:
            slot = data + (t & mask)
            store_release_at(slot + 8, (pad & 0xFFFFFFFF) | (PADDING_TYPE << 32))
            store_release_at(slot, t ^ salt)  # SYNC POINT: the padding is complete
        rec = t + pad
        slot = data + (rec & mask)
        store_release_at(slot + 8, (length & 0xFFFFFFFF) | (type_id << 32))
        store_release_at(slot, ~(rec ^ salt))  # in progress
        return rec


@jit(inline="always")
def _commit_and_check_waiters(base, producer, rec):
    cfg = i64_array_at(base + _CFG, 16)
    slot = base + cfg[CFG_DATA_OFFSET] + (rec & (cfg[CFG_CAPACITY] - 1))
    # SYNC POINT: the reader's acquire-load of the commit word; the fence then orders this
    # store before the load of `waiters` (pairs with the parker's fetch-add on `waiters`).
    store_release_at(slot, rec ^ cfg[CFG_SALT])
    store_release_at(base + PRODUCERS_OFFSET + producer * PRODUCER_ENTRY_BYTES + P_CLAIM_POS * 8, -1)  # no open claim
    fence()
    if load_acquire_at(base + WAKE_OFFSET + WAKE_WAITERS * 8) > 0:
        fetch_add_at(base + WAKE_OFFSET + WAKE_DOORBELL * 8, 1)
        return WAKE_FLAG
    return 0


@jit("int64(int64, int64, int64, int64)")
def ring_claim(base, producer, payload_len, type_id):
    """Claim room for a record the caller will fill in place; returns its position or a code."""
    return _claim(base, producer, payload_len, type_id)


@jit("int64(int64, int64, int64, int64)")
def ring_commit(base, producer, rec, payload_len):
    """Commit a claimed record; returns ``WAKE_FLAG`` when parked subscribers need a wake."""
    pw = i64_array_at(base + PRODUCERS_OFFSET + producer * PRODUCER_ENTRY_BYTES, 16)
    pw[P_RECORDS] += 1
    pw[P_BYTES] += payload_len
    return _commit_and_check_waiters(base, producer, rec)


@jit("int64(int64, int64, int64)")
def ring_abort(base, producer, rec):
    """Turn a claimed record into padding (nothing delivered); returns ``WAKE_FLAG`` or 0."""
    cfg = i64_array_at(base + _CFG, 16)
    slot = base + cfg[CFG_DATA_OFFSET] + (rec & (cfg[CFG_CAPACITY] - 1))
    meta = load_acquire_at(slot + 8)
    length = meta & 0xFFFFFFFF
    store_release_at(slot + 8, (((length + 7) & ~7) & 0xFFFFFFFF) | (PADDING_TYPE << 32))
    return _commit_and_check_waiters(base, producer, rec)


@jit(inline="always")
def _offer_copy(base, producer, src_addr, payload_len, type_id):
    """Claim, copy ``payload_len`` bytes from ``src_addr``, commit (the body of every offer)."""
    rec = _claim(base, producer, payload_len, type_id)
    if rec < 0:
        return rec
    cfg = i64_array_at(base + _CFG, 16)
    slot = base + cfg[CFG_DATA_OFFSET] + (rec & (cfg[CFG_CAPACITY] - 1))
    copy_bytes(slot + HDR, src_addr, payload_len)
    pw = i64_array_at(base + PRODUCERS_OFFSET + producer * PRODUCER_ENTRY_BYTES, 16)
    pw[P_RECORDS] += 1
    pw[P_BYTES] += payload_len
    return rec | _commit_and_check_waiters(base, producer, rec)


@jit("int64(int64, int64, int64, int64, int64)")
def ring_offer(base, producer, src_addr, payload_len, type_id):
    """Claim, copy ``payload_len`` bytes from ``src_addr``, commit: one record.

    Returns the record's position (``| WAKE_FLAG`` when a wake is due) or a negative code.
    """
    return _offer_copy(base, producer, src_addr, payload_len, type_id)


_BUFFER_SIGNATURES = [
    "int64(int64, int64, Bytes(uint8, 1, 'C', readonly=True), int64)",
    "int64(int64, int64, ByteArray(uint8, 1, 'C'), int64)",
    "int64(int64, int64, Array(uint8, 1, 'C'), int64)",
    "int64(int64, int64, Array(uint8, 1, 'C', readonly=True), int64)",
]


@jit(_BUFFER_SIGNATURES)
def ring_offer_buf(base, producer, buf, type_id):
    """``ring_offer`` taking the payload as a buffer object (``bytes``, ``bytearray``, uint8 array)."""
    return _offer_copy(base, producer, data_address(buf), len(buf), type_id)


def buffer_entry_points() -> dict:
    """``{python type: compiled entry point}`` for ``ring_offer_buf``, skipping numba's dispatch.

    Safety: an entry point does no type checks; callers must pick it by the exact type
    of the buffer (``type(buf) is bytes`` ...), never by isinstance.
    """
    import numba

    table = {}
    for sig, ovl in ring_offer_buf.overloads.items():
        t = sig[2]
        if isinstance(t, numba.types.Bytes):
            table[bytes] = ovl.entry_point
        elif isinstance(t, numba.types.ByteArray):
            table[bytearray] = ovl.entry_point
    return table


@jit(inline="always")
def _offer_records(base, producer, src_addr, src_len, offsets, lengths, count, type_id):
    """Offer ``count`` records ``src[offsets[i] : offsets[i] + lengths[i]]``, one claim per span.

    Every record is checked first (nothing is written on bad input). Then each claim takes as
    many records as fit before the wrap and within the gate: one tail update (CAS or store)
    for the span, then per record meta, payload and commit, in order. The producer's claim
    record (``P_CLAIM_POS``/``P_CLAIM_LEN``) moves forward with each commit, so it always
    names the first uncommitted record: recovery of a producer that died mid-span pads from
    there to the span's end (``Ring.recover_stuck_claim``), and the gate sees the open part.
    """
    cfg = i64_array_at(base + _CFG, 16)
    cap = cfg[CFG_CAPACITY]
    mask = cap - 1
    data = base + cfg[CFG_DATA_OFFSET]
    salt = cfg[CFG_SALT]
    max_record = cfg[CFG_MAX_RECORD]
    multi = cfg[CFG_MULTI_PRODUCER]
    prod = base + PRODUCERS_OFFSET + producer * PRODUCER_ENTRY_BYTES
    pw = i64_array_at(prod, 16)
    if type_id < 0 or type_id > 0x7FFFFFFF:
        return TOO_LARGE
    for i in range(count):
        n = lengths[i]
        if n < 0 or n > max_record:
            return TOO_LARGE
        o = offsets[i]
        if o < 0 or o > src_len - n:
            return OUT_OF_BOUNDS
    done = 0
    code = 0
    nbytes = 0
    while done < count:
        if load_acquire_at(base + WAKE_OFFSET + WAKE_SUBSCRIBERS * 8) <= 0:
            pw[P_NOT_CONNECTED] += 1
            code = NOT_CONNECTED
            break
        t = load_acquire_at(base + TAIL_OFFSET)
        rem = cap - (t & mask)
        first = (lengths[done] + HDR + 7) & ~7
        pad = 0 if first <= rem else rem
        room = pw[P_MIN_CACHE] + cap - t  # bytes producers may write from t
        if pad + first > room:
            lowest = _min_gate_position(base, cfg[CFG_MAX_SUBSCRIBERS], cfg[CFG_SUBSCRIBERS_OFFSET], cfg[CFG_MAX_PRODUCERS])
            if lowest < 0:
                pw[P_NOT_CONNECTED] += 1
                code = NOT_CONNECTED
                break
            pw[P_MIN_CACHE] = lowest
            room = lowest + cap - t
            if pad + first > room:
                if cfg[CFG_SLOW_POLICY] == _POLICY_DROP:
                    if _drop_laggards(base, cfg[CFG_MAX_SUBSCRIBERS], cfg[CFG_SUBSCRIBERS_OFFSET], t + pad + first - cap) > 0:
                        pw[P_MIN_CACHE] = 0
                        continue
                pw[P_BACK_PRESSURED] += 1
                code = BACK_PRESSURED
                break
        # The span: records that fit before the wrap (after the padding, the whole ring) and the gate.
        limit = min(room - pad, cap if pad > 0 else rem)
        span = first
        k = done + 1
        while k < count:
            a = (lengths[k] + HDR + 7) & ~7
            if span + a > limit:
                break
            span += a
            k += 1
        total = pad + span
        pw[P_CLAIM_LEN] = total
        store_release_at(prod + P_CLAIM_POS * 8, t)
        if multi != 0:
            if compare_exchange_at(base + TAIL_OFFSET, t, t + total) != t:
                store_release_at(prod + P_CLAIM_POS * 8, -1)  # lost the race: `t` is not ours
                continue
        else:
            store_release_at(base + TAIL_OFFSET, t + total)
        if pad >= HDR:
            slot = data + (t & mask)
            store_release_at(slot + 8, (pad & 0xFFFFFFFF) | (PADDING_TYPE << 32))
            store_release_at(slot, t ^ salt)  # SYNC POINT: the padding is complete
        rec = t + pad
        for i in range(done, k):
            n = lengths[i]
            slot = data + (rec & mask)
            store_release_at(slot + 8, ((n + HDR) & 0xFFFFFFFF) | (type_id << 32))
            copy_bytes(slot + HDR, src_addr + offsets[i], n)
            store_release_at(slot, rec ^ salt)  # SYNC POINT: reader's acquire of the commit word
            rec += (n + HDR + 7) & ~7
            nbytes += n
            # The claim record names the first uncommitted record (length first: see recovery).
            pw[P_CLAIM_LEN] = t + total - rec
            store_release_at(prod + P_CLAIM_POS * 8, rec if rec < t + total else -1)
        done = k
    store_release_at(prod + P_CLAIM_POS * 8, -1)
    if done == 0:
        return code
    pw[P_RECORDS] += done
    pw[P_BYTES] += nbytes
    fence()
    if load_acquire_at(base + WAKE_OFFSET + WAKE_WAITERS * 8) > 0:
        fetch_add_at(base + WAKE_OFFSET + WAKE_DOORBELL * 8, 1)
        return done | WAKE_FLAG
    return done


@jit("int64(int64, int64, int64, int64, int64, int64, int64)")
def ring_offer_batch(base, producer, src_addr, offsets_addr, lengths_addr, count, type_id):
    """Offer ``count`` records ``src[offsets[i] : offsets[i] + lengths[i]]`` in order (for
    jitted callers: the source and both int64 arrays by address; the source is trusted to
    hold every record).

    Stops at the first refusal. Returns how many were committed (``| WAKE_FLAG`` when a
    wake is due), or the refusal code when none was (``TOO_LARGE`` before writing anything).
    """
    offsets = i64_array_at(offsets_addr, count)
    lengths = i64_array_at(lengths_addr, count)
    return _offer_records(base, producer, src_addr, 1 << 62, offsets, lengths, count, type_id)


@jit("int64(int64, int64, Array(uint8, 1, 'C', readonly=True), Array(int64, 1, 'C', readonly=True), "
     "Array(int64, 1, 'C', readonly=True), int64)")
def ring_offer_records(base, producer, src, offsets, lengths, type_id):
    """``ring_offer_batch`` over arrays, each record checked against the source's length:
    ``OUT_OF_BOUNDS`` (nothing written) when one reaches outside it or the arrays' lengths
    differ, ``TOO_LARGE`` when one exceeds the ring's record limit."""
    count = len(lengths)
    if len(offsets) != count:
        return OUT_OF_BOUNDS
    return _offer_records(base, producer, data_address(src), len(src), offsets, lengths, count, type_id)


# --- subscriber side ------------------------------------------------------------------------


@jit(inline="always")
def _packet_body(slot, rec_off, type_id, payload):
    """A packet record's body as ``(start, end)`` offsets in the segment, after checking its
    fixed header in place; a malformed record as ``(-rec_off - 1, (type << 32) | length)``."""
    ndeps = type_id & 0xFFFF
    body = PACKET_HEADER_BYTES + 8 * ndeps
    ok = (type_id & PACKET_TYPE_MASK) == PACKET_TYPE and payload > body
    if ok:
        hw = i64_array_at(slot + HDR, 8)
        ok = (hw[6] >> 32) == PACKET_MAGIC and (hw[6] & 0xFFFFFFFF) == payload - body and (
            (hw[5] >> 48) & 0xFFFF
        ) == ndeps
    if ok:
        return rec_off + body, rec_off + payload
    return -rec_off - 1, (type_id << 32) | payload


@jit(inline="always")
def _past_lap_gap(p, cap):
    """A read position moved over the gap at the end of a lap that is too small for a record
    header (producers leave it unwritten): ``(position, its offset in the data area, bytes
    from there to the end of the lap)``."""
    off = p & (cap - 1)
    rem = cap - off
    if rem < HDR:
        return p + rem, 0, cap
    return p, off, rem


@jit(inline="always")
def _poll(base, subscriber, start_pos, release_pos, desc_addr, max_records, packets):
    """The poll loop of ``ring_poll`` (``packets=False``) and ``ring_poll_packets`` (``True``)."""
    cfg = i64_array_at(base + _CFG, 16)
    cap = cfg[CFG_CAPACITY]
    mask = cap - 1
    data_off = cfg[CFG_DATA_OFFSET]
    data = base + data_off
    entry = base + cfg[CFG_SUBSCRIBERS_OFFSET] + subscriber * SUBSCRIBER_ENTRY_BYTES
    sw = i64_array_at(entry, 32)
    if release_pos >= 0:
        # SYNC POINT: pairs with producers' acquire-load of positions (they may reuse the space).
        store_release_at(entry + S_POSITION * 8, release_pos)
    if load_acquire_at(entry + S_STATE * 8) == STATE_DROPPED:
        return SUBSCRIBER_DROPPED
    desc = i64_array_at(desc_addr, 2 + 2 * max_records)
    salt = cfg[CFG_SALT]
    p = start_pos
    n = 0
    nbytes = 0
    while n < max_records:
        p, off, rem = _past_lap_gap(p, cap)
        slot = data + off
        if load_acquire_at(slot) != p ^ salt:  # SYNC POINT: pairs with the producer's commit store
            break
        meta = load_acquire_at(slot + 8)
        length = meta & 0xFFFFFFFF
        aligned = (length + 7) & ~7
        if length < HDR or aligned > rem:
            desc[0] = p
            return RING_CORRUPT
        type_id = meta >> 32
        if type_id != PADDING_TYPE:
            payload = length - HDR
            rec_off = data_off + off + HDR
            if not packets:
                desc[2 + 2 * n] = rec_off
                desc[3 + 2 * n] = (type_id << 32) | payload
            else:
                desc[2 + 2 * n], desc[3 + 2 * n] = _packet_body(slot, rec_off, type_id, payload)
            nbytes += payload
            n += 1
        p += aligned
    desc[0] = p
    if n > 0:
        sw[S_RECORDS] += n
        sw[S_BYTES] += nbytes
        return n
    off = p & mask
    stalled = cap - off >= HDR and load_acquire_at(data + off) == ~(p ^ salt)
    if stalled or p != start_pos:
        desc[1] = STALL_HINT if stalled else 0
        return EMPTY_ATTENTION
    return 0


@jit("int64(int64, int64, int64, int64, int64, int64)")
def ring_poll(base, subscriber, start_pos, release_pos, desc_addr, max_records):
    """Release everything before ``release_pos`` (if >= 0), then find up to ``max_records``.

    Descriptors go to the int64 array at ``desc_addr``: ``desc[0]`` = the position after
    the last record found; for record i, ``desc[2+2i]`` = the payload's byte offset in the
    segment and ``desc[3+2i]`` = ``(type << 32) | payload_length``. Padding is skipped.
    Returns the count; 0 when nothing is there and nothing to act on; ``EMPTY_ATTENTION``
    when nothing was found but padding was skipped (``desc[0]``) or a claim is in progress
    at the position (``desc[1] == STALL_HINT``); or ``SUBSCRIBER_DROPPED`` / ``RING_CORRUPT``.
    """
    return _poll(base, subscriber, start_pos, release_pos, desc_addr, max_records, False)


@jit("int64(int64, int64, int64, int64, int64, int64)")
def ring_poll_packets(base, subscriber, start_pos, release_pos, desc_addr, max_records):
    """``ring_poll`` for packet records, validating each fixed header in place.

    For record i: ``desc[2+2i], desc[3+2i]`` = the body's start and end offsets in the
    segment; a malformed record (not a packet type, bad magic, lengths that disagree)
    is reported as ``-(record_offset) - 1, (type << 32) | length`` for the dead-letter path.
    """
    return _poll(base, subscriber, start_pos, release_pos, desc_addr, max_records, True)


@jit(inline="always")
def _take(base, subscriber, pos, release_pos, spin_checks, packets):
    """The body of ``ring_take`` (``packets=False``) and ``ring_take_packet`` (``True``)."""
    cfg = i64_array_at(base + _CFG, 16)
    cap = cfg[CFG_CAPACITY]
    data_off = cfg[CFG_DATA_OFFSET]
    data = base + data_off
    salt = cfg[CFG_SALT]
    entry = base + cfg[CFG_SUBSCRIBERS_OFFSET] + subscriber * SUBSCRIBER_ENTRY_BYTES
    if release_pos >= 0:
        # SYNC POINT: pairs with producers' acquire-load of positions (they may reuse the space).
        store_release_at(entry + S_POSITION * 8, release_pos)
    p = pos
    spins = 0
    while True:
        if load_acquire_at(entry + S_STATE * 8) == STATE_DROPPED:
            return (SUBSCRIBER_DROPPED, 0, 0)
        p, off, rem = _past_lap_gap(p, cap)
        slot = data + off
        w = load_acquire_at(slot)  # SYNC POINT: pairs with the producer's commit store
        if w == p ^ salt:
            meta = load_acquire_at(slot + 8)
            length = meta & 0xFFFFFFFF
            aligned = (length + 7) & ~7
            if length < HDR or aligned > rem:
                return (RING_CORRUPT, 0, p)
            type_id = meta >> 32
            if type_id == PADDING_TYPE:
                p += aligned
                continue
            payload = length - HDR
            sw = i64_array_at(entry, 8)
            sw[S_RECORDS] += 1
            sw[S_BYTES] += payload
            rec_off = data_off + off + HDR
            if not packets:
                return (p + aligned, rec_off, (type_id << 32) | payload)
            start, end = _packet_body(slot, rec_off, type_id, payload)
            return (p + aligned, start, end)
        if spins >= spin_checks:
            return (p, 0, STALL_HINT if w == ~(p ^ salt) else 0)
        spins += 1
        cpu_pause()


@jit(inline="always")
def _advance(cur, end, off, meta):
    """Move a reader's cursor after ``_take``; returns ``(off, meta)``, or ``(0, code)`` on error."""
    if end < 0:
        cur[CUR_RELEASE] = -1
        cur[CUR_AT] = meta
        return (0, end)
    if off != 0:
        # Past a record: published by the next call (one store there instead of a call here),
        # which releases a held batch too.
        cur[CUR_POSITION] = end
        cur[CUR_RELEASE] = end
        cur[CUR_HELD] = 0
    elif end != cur[CUR_POSITION]:
        cur[CUR_POSITION] = end  # past padding; released later if a held batch still needs it
        cur[CUR_RELEASE] = -1 if cur[CUR_HELD] else end
    else:
        cur[CUR_RELEASE] = -1
    return (off, meta)


@jit(inline="always")
def _take_with_cursor(cursor, spin, packets):
    """The body of ``ring_take`` (``packets=False``) and ``ring_take_packet`` (``True``)."""
    cur = i64_array_at(cursor, CURSOR_WORDS)
    if cur[CUR_BASE] == 0:
        return (0, READER_CLOSED)
    spins = cur[CUR_SPIN] if spin else 0
    end, off, meta = _take(cur[CUR_BASE], cur[CUR_SUBSCRIBER], cur[CUR_POSITION], cur[CUR_RELEASE], spins, packets)
    return _advance(cur, end, off, meta)


@jit("UniTuple(int64, 2)(int64, int64)")
def ring_take(cursor, spin):
    """Release the cursor's pending position (if any), then take the record at its position.

    ``cursor`` is the address of a reader's cursor (``CUR_*`` words). Skips padding. When
    nothing is committed there and ``spin`` is 1, re-checks ``CUR_SPIN`` times (a ``pause``
    between checks: loads only, no shared write) before giving up. Returns
    ``(payload_offset, meta)``:

    - a record: ``payload_offset > 0`` (its byte offset in the segment), ``meta`` =
      ``(type << 32) | payload_length``; the cursor moves past it and releases it at the
      next call;
    - nothing: ``payload_offset == 0``, ``meta`` = ``STALL_HINT`` when a claim is in progress
      there, else 0 (the cursor moves past any padding skipped);
    - ``meta < 0``: ``SUBSCRIBER_DROPPED``, ``RING_CORRUPT`` (the corrupt record's position
      in ``CUR_AT``) or ``READER_CLOSED`` (``payload_offset`` 0).
    """
    return _take_with_cursor(cursor, spin, False)


@jit("UniTuple(int64, 2)(int64, int64)")
def ring_take_packet(cursor, spin):
    """``ring_take`` for packet records, validating the fixed header in place.

    A packet comes back as ``(body_start, body_end)``; a malformed record as
    ``(-(record_offset) - 1, (type << 32) | length)`` for the dead-letter path (consumed too).
    """
    return _take_with_cursor(cursor, spin, True)


@jit(inline="always")
def _has_record(base, pos):
    cfg = i64_array_at(base + _CFG, 16)
    cap = cfg[CFG_CAPACITY]
    off = pos & (cap - 1)
    if cap - off < HDR:
        return True
    return load_acquire_at(base + cfg[CFG_DATA_OFFSET] + off) == pos ^ cfg[CFG_SALT]


@jit("int64(int64)")
def ring_park_begin(cursor):
    """Announce that the cursor's subscriber is about to sleep; returns the doorbell value to
    wait on.

    Returns -1 (do not sleep) when a record is already there or the subscriber was dropped.
    The caller must call ``ring_park_end`` after its futex wait (or after -1: not needed).
    """
    cur = i64_array_at(cursor, CURSOR_WORDS)
    base, subscriber, pos = cur[CUR_BASE], cur[CUR_SUBSCRIBER], cur[CUR_POSITION]
    if base == 0:
        return -1  # closed
    cfg = i64_array_at(base + _CFG, 16)
    entry = base + cfg[CFG_SUBSCRIBERS_OFFSET] + subscriber * SUBSCRIBER_ENTRY_BYTES
    bell = load_acquire_at(base + WAKE_OFFSET + WAKE_DOORBELL * 8)
    # SYNC POINT: seq_cst fetch-add, pairs with the producer's fence before it reads `waiters`.
    fetch_add_at(base + WAKE_OFFSET + WAKE_WAITERS * 8, 1)
    if _has_record(base, pos) or load_acquire_at(entry + S_STATE * 8) == STATE_DROPPED:
        fetch_add_at(base + WAKE_OFFSET + WAKE_WAITERS * 8, -1)
        return -1
    store_release_at(entry + S_PARKED * 8, 1)  # so reclaim can uncount us if we die asleep
    return bell & 0xFFFFFFFF


@jit("void(int64, int64)")
def ring_park_end(base, subscriber):
    """Leave the sleeping state entered by ``ring_park_begin``."""
    cfg = i64_array_at(base + _CFG, 16)
    entry = base + cfg[CFG_SUBSCRIBERS_OFFSET] + subscriber * SUBSCRIBER_ENTRY_BYTES
    if compare_exchange_at(entry + S_PARKED * 8, 1, 0) == 1:
        fetch_add_at(base + WAKE_OFFSET + WAKE_WAITERS * 8, -1)


@jit("int64(int64, int64)")
def ring_readable(cursor, checks):
    """1 when there is something at the cursor's position (a record, padding, or its
    subscriber's drop), re-checked up to ``checks`` more times with a ``pause`` between.

    Loads only: spinning on it (a wait strategy's spin phase, in compiled code) costs no
    shared-line write, takes no cache line away from producers, and shows them no sleeper.
    """
    cur = i64_array_at(cursor, CURSOR_WORDS)
    base, subscriber, pos = cur[CUR_BASE], cur[CUR_SUBSCRIBER], cur[CUR_POSITION]
    if base == 0:
        return 1  # closed: the caller's next read says so
    cfg = i64_array_at(base + _CFG, 16)
    entry = base + cfg[CFG_SUBSCRIBERS_OFFSET] + subscriber * SUBSCRIBER_ENTRY_BYTES
    for _ in range(checks + 1):
        if _has_record(base, pos) or load_acquire_at(entry + S_STATE * 8) == STATE_DROPPED:
            return 1
        cpu_pause()
    return 0


@jit("int64(int64, int64)")
def ring_stalled_at(base, pos):
    """1 when a record at ``pos`` is claimed (tail beyond it) but not committed, else 0."""
    if _has_record(base, pos):
        return 0
    return 1 if load_acquire_at(base + TAIL_OFFSET) > pos else 0


def warm_up() -> None:
    """Compile (or load from cache) every kernel by signature, touching no real ring."""
    for fn in (
        read_word,
        publish_word,
        cas_word,
        add_word,
        ring_claim,
        ring_commit,
        ring_abort,
        ring_offer,
        ring_offer_batch,
        ring_offer_records,
        ring_offer_buf,
        ring_poll,
        ring_poll_packets,
        ring_take,
        ring_take_packet,
        ring_park_begin,
        ring_park_end,
        ring_stalled_at,
        ring_readable,
    ):
        assert fn.signatures, fn  # eager: compiled at import by explicit signature


_ = np  # numpy is imported for numba's typing of carray results
