"""Lock-free rings of variable-length records in shared memory.

A ``Ring`` is one segment (layout in ``shm_layouts.ring``). Processes take roles on it:

- ``RingWriter`` — a producer slot. ``offer()`` returns at once with a position or a
  negative code (``BACK_PRESSURED``, ``NOT_CONNECTED``); ``send()`` waits with the
  wait strategy up to a timeout and then raises ``TimeoutError``; ``try_claim()``
  hands out the record's memory to fill in place; ``offer_batch()`` writes many
  records in one compiled call.
- ``RingReader`` — a subscriber slot with its own cursor. Every subscriber sees every
  record; producers are gated by the slowest subscriber (or drop it, per the ring's
  ``slow_subscriber_policy``). ``poll(handler)`` hands each record's memory to the
  handler as a ``memoryview`` (no copy) and releases it when the handler returns;
  ``read_batch()`` hands out a whole batch of views, valid until ``release()``.

Example::

    with Ring.create("demo-ring", RingConfig(capacity_bytes=1 << 20)) as ring:
        with ring.reader() as reader, ring.writer() as writer:
            writer.offer(b"hello")
            received = []
            reader.poll(lambda view, type_id: received.append(bytes(view)))

Failure handling: a producer that dies between claim and commit leaves a claim in
progress; the first subscriber stuck behind it for ``claim_timeout_ns`` checks the
claim's owner (pid and start time) and, only if it is dead, turns the claim into
padding and counts it (``statistics().recovered_claims``). A live but slow producer
is never overwritten. Dead subscribers are reclaimed by ``reclaim_dead()`` (the
blocking ``send`` calls it when back-pressured for long), so they cannot block
producers forever.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Callable

import msgspec
import numpy as np
from loguru import logger

from fabric import _ring_builtins as _B
from fabric import _ring_kernels as K
from fabric._futex import futex_wait, futex_wake
from fabric._process import is_alive, self_identity
from fabric.errors import (
    BrokenResourceError,
    CapacityError,
    ClaimPendingError,
    ClosedResourceError,
    RecordTooLargeError,
    SubscriberDroppedError,
)
from fabric.segment import Segment
from fabric.timesource import get_time_source
from fabric.wait import BackoffParker, WaitStrategy, default_wait_strategy
from shm_layouts.header import SegmentKind
from shm_layouts.record import PADDING_TYPE, RECORD_HEADER_BYTES, align_record
from shm_layouts.ring import (
    CFG_CAPACITY,
    CFG_DATA_OFFSET,
    CFG_MAX_PRODUCERS,
    CFG_MAX_RECORD,
    CFG_MAX_SUBSCRIBERS,
    CFG_MULTI_PRODUCER,
    CFG_SALT,
    CFG_SLOW_POLICY,
    CFG_SUBSCRIBERS_OFFSET,
    CONFIG_OFFSET,
    MAX_PRODUCERS_LIMIT,
    MAX_SUBSCRIBERS_LIMIT,
    MIN_CAPACITY,
    P_BACK_PRESSURED,
    P_BYTES,
    P_CLAIM_LEN,
    P_CLAIM_POS,
    P_MIN_CACHE,
    P_NOT_CONNECTED,
    P_PID,
    P_RECORDS,
    P_START_MS,
    P_STATE,
    PRODUCER_ENTRY_BYTES,
    PRODUCERS_OFFSET,
    S_BYTES,
    S_DROPPED,
    S_DURABLE,
    S_PARKED,
    S_PID,
    S_POSITION,
    S_RECORDS,
    S_START_MS,
    S_STATE,
    STAT_DROPPED_SUBSCRIBERS,
    STAT_RECLAIMED_PRODUCERS,
    STAT_RECLAIMED_SUBSCRIBERS,
    STAT_RECOVERED_BYTES,
    STAT_RECOVERED_CLAIMS,
    STATE_ACTIVE,
    STATE_DROPPED,
    STATE_FREE,
    STATE_JOINING,
    STATS_OFFSET,
    SUBSCRIBER_ENTRY_BYTES,
    TAIL_OFFSET,
    WAKE_DOORBELL,
    WAKE_OFFSET,
    WAKE_WAITERS,
    SlowSubscriberPolicy,
    data_offset,
    ring_segment_bytes,
    subscribers_offset,
)

__all__ = [
    "Ring",
    "RingConfig",
    "RingWriter",
    "RingReader",
    "RecordBatch",
    "Claim",
    "RingStatistics",
    "ProducerStatistics",
    "SubscriberStatistics",
    "BACK_PRESSURED",
    "NOT_CONNECTED",
    "TOO_LARGE",
]

BACK_PRESSURED = K.BACK_PRESSURED
NOT_CONNECTED = K.NOT_CONNECTED
TOO_LARGE = K.TOO_LARGE
_WAKE = K.WAKE_FLAG
_POS_MASK = _WAKE - 1
_CLAIM_TIMEOUT_NS = 200_000_000
#: Empty polls between full stall checks (which read the tail line the producer writes).
_STALL_CHECK_EVERY_MASK = 1023
_WAKE_SUBS = K.WAKE_SUBSCRIBERS
_CUR_POSITION = K.CUR_POSITION
_CUR_RELEASE = K.CUR_RELEASE
_CUR_HELD = K.CUR_HELD


class RingConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Geometry and policy of a ring, fixed at creation.

    Attributes
    ----------
    capacity_bytes:
        Data bytes, a power of two >= 4096.
    max_record_bytes:
        Largest payload accepted (default: a quarter of the capacity).
    max_producers, max_subscribers:
        Slots in the producer and subscriber tables.
    multi_producer:
        Claims by CAS (any number of writers) rather than a plain store (one writer).
    slow_subscriber_policy:
        ``"block"`` — the slowest subscriber holds producers back (nothing lost);
        ``"drop"`` — producers drop a subscriber that leaves no room (it gets
        ``SubscriberDroppedError``; counted).
    """

    capacity_bytes: int = 1 << 20
    max_record_bytes: int = 0
    max_producers: int = 8
    max_subscribers: int = 4
    multi_producer: bool = True
    slow_subscriber_policy: str = "block"

    def validated(self) -> "RingConfig":
        cap = self.capacity_bytes
        if cap < MIN_CAPACITY or cap & (cap - 1):
            raise ValueError(f"capacity_bytes must be a power of two >= {MIN_CAPACITY}, got {cap}")
        max_rec = self.max_record_bytes or cap // 4
        if not 0 < max_rec <= cap // 2 - RECORD_HEADER_BYTES:
            raise ValueError(f"max_record_bytes must be in 1..{cap // 2 - RECORD_HEADER_BYTES}, got {max_rec}")
        if not 1 <= self.max_producers <= MAX_PRODUCERS_LIMIT:
            raise ValueError(f"max_producers must be in 1..{MAX_PRODUCERS_LIMIT}, got {self.max_producers}")
        if not 1 <= self.max_subscribers <= MAX_SUBSCRIBERS_LIMIT:
            raise ValueError(f"max_subscribers must be in 1..{MAX_SUBSCRIBERS_LIMIT}, got {self.max_subscribers}")
        if self.slow_subscriber_policy not in ("block", "drop"):
            raise ValueError(f"slow_subscriber_policy must be 'block' or 'drop', got {self.slow_subscriber_policy!r}")
        return msgspec.structs.replace(self, max_record_bytes=max_rec)


class ProducerStatistics(msgspec.Struct, frozen=True):
    slot: int
    pid: int
    state: int
    records: int
    bytes: int
    back_pressured: int
    not_connected: int


class SubscriberStatistics(msgspec.Struct, frozen=True):
    slot: int
    pid: int
    state: int
    position: int
    lag_bytes: int
    records: int
    bytes: int


class RingStatistics(msgspec.Struct, frozen=True):
    """A snapshot of a ring's counters (read-only; safe from any process)."""

    name: str
    capacity_bytes: int
    tail: int
    fill_bytes: int
    subscribers_joined: int
    waiters: int
    recovered_claims: int
    recovered_bytes: int
    dropped_subscribers: int
    reclaimed_producers: int
    reclaimed_subscribers: int
    producers: list[ProducerStatistics]
    subscribers: list[SubscriberStatistics]

    @property
    def records_offered(self) -> int:
        return sum(p.records for p in self.producers)

    @property
    def back_pressured(self) -> int:
        return sum(p.back_pressured for p in self.producers)


class Ring:
    """One ring segment, created (owned) or attached. Hand out writers and readers from it."""

    def __init__(self, segment: Segment) -> None:
        self.segment = segment
        self.name = segment.name
        w = segment.words
        cfg = CONFIG_OFFSET // 8
        self.capacity_bytes = int(w[cfg + CFG_CAPACITY])
        self.max_record_bytes = int(w[cfg + CFG_MAX_RECORD])
        self.max_producers = int(w[cfg + CFG_MAX_PRODUCERS])
        self.max_subscribers = int(w[cfg + CFG_MAX_SUBSCRIBERS])
        self.multi_producer = bool(w[cfg + CFG_MULTI_PRODUCER])
        self.slow_subscriber_policy = "drop" if w[cfg + CFG_SLOW_POLICY] == SlowSubscriberPolicy.DROP else "block"
        self.data_offset = int(w[cfg + CFG_DATA_OFFSET])
        self._salt = int(w[cfg + CFG_SALT])
        self._subs_off = int(w[cfg + CFG_SUBSCRIBERS_OFFSET])
        if self._subs_off != subscribers_offset(self.max_producers) or self.data_offset != data_offset(
            self.max_producers, self.max_subscribers
        ):
            raise BrokenResourceError(f"ring {self.name!r} has an inconsistent header")
        self._handles: set = set()

    # --- factories ------------------------------------------------------------------------

    @classmethod
    def create(cls, name: str, config: RingConfig | None = None) -> "Ring":
        """Create a ring segment (exclusive; the caller owns and destroys it)."""
        cfg = (config or RingConfig()).validated()
        size = ring_segment_bytes(cfg.capacity_bytes, cfg.max_producers, cfg.max_subscribers)
        seg = Segment.create(name, size, SegmentKind.RING, mark_ready=False)
        w = seg.words
        c = CONFIG_OFFSET // 8
        w[c + CFG_CAPACITY] = cfg.capacity_bytes
        w[c + CFG_MAX_RECORD] = cfg.max_record_bytes
        w[c + CFG_MAX_PRODUCERS] = cfg.max_producers
        w[c + CFG_MAX_SUBSCRIBERS] = cfg.max_subscribers
        w[c + CFG_MULTI_PRODUCER] = int(cfg.multi_producer)
        w[c + CFG_SLOW_POLICY] = SlowSubscriberPolicy.DROP if cfg.slow_subscriber_policy == "drop" else 0
        w[c + CFG_DATA_OFFSET] = data_offset(cfg.max_producers, cfg.max_subscribers)
        w[c + CFG_SUBSCRIBERS_OFFSET] = subscribers_offset(cfg.max_producers)
        w[c + CFG_SALT] = (1 << 62) | secrets.randbits(62)
        for p in range(cfg.max_producers):
            w[(PRODUCERS_OFFSET + p * PRODUCER_ENTRY_BYTES) // 8 + P_CLAIM_POS] = -1
        # Fresh memory is zero, and 0 is the commit word of position 0: fill the data with -1,
        # which is never a position, so no slot looks committed before it is written.
        w[data_offset(cfg.max_producers, cfg.max_subscribers) // 8 :] = -1
        seg.mark_ready()
        return cls(seg)

    @classmethod
    def attach(cls, name: str, *, timeout_ns: int = 5_000_000_000) -> "Ring":
        """Attach to an existing ring (never unlinks it)."""
        return cls(Segment.attach(name, SegmentKind.RING, timeout_ns=timeout_ns))

    # --- roles ----------------------------------------------------------------------------

    def writer(self, *, wait: WaitStrategy | None = None) -> "RingWriter":
        """Take a producer slot; raises ``CapacityError`` when every slot is taken."""
        h = RingWriter(self, self._take_producer_slot(), wait or default_wait_strategy())
        self._handles.add(h)
        return h

    def reader(
        self,
        *,
        wait: WaitStrategy | None = None,
        batch_records: int = 256,
        durable: bool = False,
        adopt_slot: int | None = None,
    ) -> "RingReader":
        """Take a subscriber slot, starting at the current tail (it sees records offered from now on).

        Parameters
        ----------
        durable:
            The slot belongs to a supervised worker: ``reclaim_dead`` leaves it alone when the
            worker dies, so its restarted process can adopt it and resume where it stopped.
        adopt_slot:
            Take over this durable slot of a dead process, keeping its position.
        """
        slot = self._adopt_subscriber_slot(adopt_slot) if adopt_slot is not None else self._take_subscriber_slot()
        if durable:
            K.publish_word(self._subscriber_addr(slot, S_DURABLE), 1)
        h = RingReader(self, slot, wait or default_wait_strategy(), batch_records)
        h.durable = durable
        self._handles.add(h)
        return h

    def _word_addr(self, byte_offset: int) -> int:
        return self.segment.address + byte_offset

    def _producer_addr(self, slot: int, word: int) -> int:
        return self.segment.address + PRODUCERS_OFFSET + slot * PRODUCER_ENTRY_BYTES + word * 8

    def _subscriber_addr(self, slot: int, word: int) -> int:
        return self.segment.address + self._subs_off + slot * SUBSCRIBER_ENTRY_BYTES + word * 8

    def _min_active_position(self) -> int:
        lowest = -1
        for s in range(self.max_subscribers):
            st = K.read_word(self._subscriber_addr(s, S_STATE))
            if st in (STATE_ACTIVE, STATE_JOINING):
                pos = K.read_word(self._subscriber_addr(s, S_POSITION))
                lowest = pos if lowest < 0 else min(lowest, pos)
        return lowest

    def _take_producer_slot(self) -> int:
        self._check_open()
        pid, start_ms = self_identity()
        for _ in range(2):
            lowest = self._min_active_position()
            for p in range(self.max_producers):
                if K.read_word(self._producer_addr(p, P_STATE)) != STATE_FREE:
                    continue
                # A free slot whose last claim nobody has read past yet may still be needed to
                # recover that claim: reuse it only once every subscriber is beyond the claim.
                cpos = K.read_word(self._producer_addr(p, P_CLAIM_POS))
                clen = K.read_word(self._producer_addr(p, P_CLAIM_LEN))
                if cpos >= 0 and lowest >= 0 and cpos + clen > lowest:
                    continue
                if K.cas_word(self._producer_addr(p, P_STATE), STATE_FREE, STATE_JOINING) != STATE_FREE:
                    continue
                K.publish_word(self._producer_addr(p, P_PID), pid)
                K.publish_word(self._producer_addr(p, P_START_MS), start_ms)
                K.publish_word(self._producer_addr(p, P_MIN_CACHE), 0)
                K.publish_word(self._producer_addr(p, P_STATE), STATE_ACTIVE)
                logger.trace("ring {}: producer slot {} taken by pid {}", self.name, p, pid)
                return p
            self.reclaim_dead()
        raise CapacityError(
            f"ring {self.name!r}: all {self.max_producers} producer slots are taken; "
            "close unused writers or create the ring with a larger max_producers"
        )

    def _take_subscriber_slot(self) -> int:
        self._check_open()
        pid, start_ms = self_identity()
        for _ in range(2):
            for s in range(self.max_subscribers):
                if K.cas_word(self._subscriber_addr(s, S_STATE), STATE_FREE, STATE_JOINING) != STATE_FREE:
                    continue
                K.publish_word(self._subscriber_addr(s, S_PID), pid)
                K.publish_word(self._subscriber_addr(s, S_START_MS), start_ms)
                K.publish_word(self._subscriber_addr(s, S_RECORDS), 0)
                K.publish_word(self._subscriber_addr(s, S_BYTES), 0)
                K.publish_word(self._subscriber_addr(s, S_DURABLE), 0)
                # Join protocol: publish a position, count ourselves in (seq_cst), then start at
                # the tail read *after* that — producers that never saw us cannot lap it.
                K.publish_word(self._subscriber_addr(s, S_POSITION), K.read_word(self._word_addr(TAIL_OFFSET)))
                K.add_word(self._word_addr(WAKE_OFFSET + _WAKE_SUBS * 8), 1)
                start = K.read_word(self._word_addr(TAIL_OFFSET))
                K.publish_word(self._subscriber_addr(s, S_POSITION), start)
                K.publish_word(self._subscriber_addr(s, S_STATE), STATE_ACTIVE)
                logger.trace("ring {}: subscriber slot {} taken by pid {} at {}", self.name, s, pid, start)
                return s
            self.reclaim_dead()
        raise CapacityError(
            f"ring {self.name!r}: all {self.max_subscribers} subscriber slots are taken; "
            "close unused readers or create the ring with a larger max_subscribers"
        )

    def _adopt_subscriber_slot(self, slot: int) -> int:
        self._check_open()
        if not 0 <= slot < self.max_subscribers:
            raise ValueError(f"no subscriber slot {slot} on ring {self.name!r}")
        state = K.read_word(self._subscriber_addr(slot, S_STATE))
        pid = K.read_word(self._subscriber_addr(slot, S_PID))
        me, start_ms = self_identity()
        if state not in (STATE_ACTIVE, STATE_JOINING):
            raise BrokenResourceError(f"ring {self.name!r}: subscriber slot {slot} is not held (state {state})")
        if pid != me and is_alive(pid, K.read_word(self._subscriber_addr(slot, S_START_MS))):
            raise BrokenResourceError(f"ring {self.name!r}: subscriber slot {slot} is held by live pid {pid}")
        K.publish_word(self._subscriber_addr(slot, S_PID), me)
        K.publish_word(self._subscriber_addr(slot, S_START_MS), start_ms)
        logger.info("ring {}: pid {} adopted subscriber slot {} of pid {}", self.name, me, slot, pid)
        return slot

    def release_durable_slot(self, slot: int) -> None:
        """Give up a durable subscriber slot whose worker will not come back (supervisor)."""
        K.publish_word(self._subscriber_addr(slot, S_DURABLE), 0)
        self._release_subscriber_slot(slot)

    def _release_producer_slot(self, slot: int) -> None:
        K.publish_word(self._producer_addr(slot, P_STATE), STATE_FREE)

    def _release_subscriber_slot(self, slot: int) -> None:
        if K.cas_word(self._subscriber_addr(slot, S_PARKED), 1, 0) == 1:
            K.add_word(self._word_addr(WAKE_OFFSET + WAKE_WAITERS * 8), -1)  # it died asleep: uncount it
        addr = self._subscriber_addr(slot, S_STATE)
        state = K.read_word(addr)
        if state in (STATE_ACTIVE, STATE_JOINING) and K.cas_word(addr, state, STATE_FREE) == state:
            K.add_word(self._word_addr(WAKE_OFFSET + _WAKE_SUBS * 8), -1)
        elif state == STATE_DROPPED:
            K.cas_word(addr, STATE_DROPPED, STATE_FREE)

    # --- failure handling -----------------------------------------------------------------

    def reclaim_dead(self) -> tuple[int, int]:
        """Free the slots of producers and subscribers whose process is gone; returns the counts."""
        self._check_open()
        producers = subscribers = 0
        for p in range(self.max_producers):
            if K.read_word(self._producer_addr(p, P_STATE)) == STATE_FREE:
                cpos = K.read_word(self._producer_addr(p, P_CLAIM_POS))
                if cpos >= 0:  # a free slot still recording a claim: close it, it gates everyone
                    self.recover_stuck_claim(cpos)
                    K.publish_word(self._producer_addr(p, P_CLAIM_POS), -1)
                continue
            pid = K.read_word(self._producer_addr(p, P_PID))
            if pid and not is_alive(pid, K.read_word(self._producer_addr(p, P_START_MS))):
                cpos = K.read_word(self._producer_addr(p, P_CLAIM_POS))
                if cpos >= 0:
                    # Its open claim gates every producer: turn it into padding (or find it committed).
                    self.recover_stuck_claim(cpos)
                    K.publish_word(self._producer_addr(p, P_CLAIM_POS), -1)
                K.publish_word(self._producer_addr(p, P_STATE), STATE_FREE)
                K.add_word(self._word_addr(STATS_OFFSET + STAT_RECLAIMED_PRODUCERS * 8), 1)
                producers += 1
                logger.info("ring {}: reclaimed producer slot {} of dead pid {}", self.name, p, pid)
        for s in range(self.max_subscribers):
            state = K.read_word(self._subscriber_addr(s, S_STATE))
            if state == STATE_FREE:
                continue
            if K.read_word(self._subscriber_addr(s, S_DURABLE)):
                continue  # its supervisor restarts the worker, which adopts the slot
            pid = K.read_word(self._subscriber_addr(s, S_PID))
            if pid and not is_alive(pid, K.read_word(self._subscriber_addr(s, S_START_MS))):
                self._release_subscriber_slot(s)
                K.add_word(self._word_addr(STATS_OFFSET + STAT_RECLAIMED_SUBSCRIBERS * 8), 1)
                subscribers += 1
                logger.info("ring {}: reclaimed subscriber slot {} of dead pid {}", self.name, s, pid)
        return producers, subscribers

    def recover_stuck_claim(self, position: int) -> bool:
        """Turn a dead producer's unfinished claim at ``position`` into padding.

        Returns True when the claim was recovered (or someone else already did), False
        when the claim's owner is alive or unknown (then nothing is touched).
        """
        self._check_open()
        if not K.ring_stalled_at(self.segment.address, position):
            return True
        cap = self.capacity_bytes
        owners = []
        for p in range(self.max_producers):
            cpos = K.read_word(self._producer_addr(p, P_CLAIM_POS))
            clen = K.read_word(self._producer_addr(p, P_CLAIM_LEN))
            if cpos >= 0 and cpos <= position < cpos + clen:
                owners.append((p, cpos, clen))
        if not owners:
            return False
        for p, _, _ in owners:
            state = K.read_word(self._producer_addr(p, P_STATE))
            pid = K.read_word(self._producer_addr(p, P_PID))
            if state != STATE_FREE and is_alive(pid, K.read_word(self._producer_addr(p, P_START_MS))):
                return False  # a live producer may still commit: never overwrite it
        # The claim's end: a span of records (offer_batch) or one record. Its committed records
        # stay; a record with its in-progress marker becomes padding of its own length; from
        # the first slot with no header written, the rest of the claim becomes padding. Two dead
        # owners of overlapping claims can only happen when one CAS failed; the smaller end is real.
        end = min(cpos + clen for _, cpos, clen in owners)
        pos = position
        recovered = 0
        while pos < end:
            off = pos & (cap - 1)
            rem = cap - off
            if rem < RECORD_HEADER_BYTES:
                pos += rem
                continue
            addr = self.segment.address + self.data_offset + off
            observed = K.read_word(addr)
            meta_len = K.read_word(addr + 8) & 0xFFFFFFFF
            if observed == pos ^ self._salt:  # committed before its producer died: keep it
                pos += max(align_record(meta_len), RECORD_HEADER_BYTES)
                continue
            if observed == ~(pos ^ self._salt) and RECORD_HEADER_BYTES <= meta_len and align_record(meta_len) <= min(rem, end - pos):
                length = align_record(meta_len)
            else:
                length = min(end - pos, rem)
            K.publish_word(addr + 8, (length & 0xFFFFFFFF) | (PADDING_TYPE << 32))
            if K.cas_word(addr, observed, pos ^ self._salt) == observed:
                recovered += length
            pos += length
        for p, _, _ in owners:
            K.publish_word(self._producer_addr(p, P_CLAIM_POS), -1)  # the claim is closed: it gates no one
        if recovered:
            K.add_word(self._word_addr(STATS_OFFSET + STAT_RECOVERED_CLAIMS * 8), 1)
            K.add_word(self._word_addr(STATS_OFFSET + STAT_RECOVERED_BYTES * 8), recovered)
            logger.warning("ring {}: recovered a dead producer's claim at {} ({} bytes)", self.name, position, recovered)
            self._wake()
        return True

    def _wake(self) -> None:
        K.add_word(self._word_addr(WAKE_OFFSET + WAKE_DOORBELL * 8), 1)
        futex_wake(self._word_addr(WAKE_OFFSET + WAKE_DOORBELL * 8))

    # --- observation ----------------------------------------------------------------------

    def statistics(self) -> RingStatistics:
        """A snapshot of every counter of this ring."""
        self._check_open()
        w = self.segment.words
        tail = int(K.read_word(self._word_addr(TAIL_OFFSET)))
        prods = []
        for p in range(self.max_producers):
            b = (PRODUCERS_OFFSET + p * PRODUCER_ENTRY_BYTES) // 8
            if w[b + P_STATE] == STATE_FREE and w[b + P_RECORDS] == 0:
                continue
            prods.append(
                ProducerStatistics(
                    p, int(w[b + P_PID]), int(w[b + P_STATE]), int(w[b + P_RECORDS]), int(w[b + P_BYTES]),
                    int(w[b + P_BACK_PRESSURED]), int(w[b + P_NOT_CONNECTED]),
                )
            )
        subs = []
        lowest = None
        for s in range(self.max_subscribers):
            b = (self._subs_off + s * SUBSCRIBER_ENTRY_BYTES) // 8
            state = int(w[b + S_STATE])
            if state == STATE_FREE:
                continue
            pos = int(w[b + S_POSITION])
            if state != STATE_DROPPED:
                lowest = pos if lowest is None else min(lowest, pos)
            subs.append(
                SubscriberStatistics(
                    s, int(w[b + S_PID]), state, pos, max(0, tail - pos), int(w[b + S_RECORDS]), int(w[b + S_BYTES])
                )
            )
        st = STATS_OFFSET // 8
        wk = WAKE_OFFSET // 8
        return RingStatistics(
            name=self.name,
            capacity_bytes=self.capacity_bytes,
            tail=tail,
            fill_bytes=0 if lowest is None else max(0, tail - lowest),
            subscribers_joined=int(w[wk + _WAKE_SUBS]),
            waiters=int(w[wk + WAKE_WAITERS]),
            recovered_claims=int(w[st + STAT_RECOVERED_CLAIMS]),
            recovered_bytes=int(w[st + STAT_RECOVERED_BYTES]),
            dropped_subscribers=int(w[st + STAT_DROPPED_SUBSCRIBERS]),
            reclaimed_producers=int(w[st + STAT_RECLAIMED_PRODUCERS]),
            reclaimed_subscribers=int(w[st + STAT_RECLAIMED_SUBSCRIBERS]),
            producers=prods,
            subscribers=subs,
        )

    # --- lifetime -------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.segment.closed:
            raise ClosedResourceError(f"ring {self.name!r} is closed")

    @property
    def closed(self) -> bool:
        return self.segment.closed

    def close(self) -> None:
        """Close every writer and reader handed out, then unmap (idempotent).

        A durable reader is only detached (its slot and position stay for the worker's
        successor); call its ``close()`` first to give the slot up on purpose.
        """
        if self.segment.closed:
            return
        for h in list(self._handles):
            if isinstance(h, RingReader) and h.durable:
                h.detach()
            else:
                h.close()
        self.segment.close()

    def destroy(self) -> None:
        """Close, then unlink the segment (owner only)."""
        self.close()
        if self.segment.is_owner:
            self.segment.unlink()

    def __enter__(self) -> "Ring":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.segment.is_owner:
            self.destroy()
        else:
            self.close()

    def __repr__(self) -> str:
        return f"<Ring {self.name!r} {self.capacity_bytes} bytes{' closed' if self.closed else ''}>"


def offer_with_wait(offer, ring: Ring, wait: WaitStrategy, timeout_ns: int) -> int:
    """Call ``offer()`` until it returns a position (>= 0), waiting with ``wait`` in between.

    Raises ``TimeoutError`` after ``timeout_ns``. Every 100 ms of back pressure it reclaims
    the ring's dead subscribers, so a subscriber that died cannot block producers forever.
    """
    r = offer()
    if r >= 0:
        return r
    clock = get_time_source()
    start = clock.monotonic_ns()
    deadline = start + timeout_ns
    next_reclaim = start + 100_000_000
    backoff = BackoffParker()  # nobody rings a producer's doorbell: park by sleeping, not spinning
    wait.reset()
    while True:
        now = clock.monotonic_ns()
        if now >= deadline:
            why = "no room (back-pressured)" if r == BACK_PRESSURED else "no subscriber"
            raise TimeoutError(f"ring {ring.name!r}: {why} for {timeout_ns / 1e9:.3f} s")
        if now >= next_reclaim:
            ring.reclaim_dead()
            next_reclaim = now + 100_000_000
        wait.idle(backoff, max_park_ns=deadline - now)
        r = offer()
        if r >= 0:
            return r


class Claim:
    """Room for one record, claimed in the ring: fill ``buffer``, then ``commit()`` or ``abort()``."""

    __slots__ = ("_writer", "position", "buffer", "_done")

    def __init__(self, writer: "RingWriter", position: int, buffer: memoryview) -> None:
        self._writer = writer
        self.position = position
        self.buffer = buffer
        self._done = False

    def commit(self) -> int:
        """Publish the record; returns its position."""
        if self._done:
            raise ClosedResourceError("claim already committed or aborted")
        self._done = True
        n = len(self.buffer)
        self.buffer.release()
        w = self._writer
        if K.ring_commit(w._base, w.slot, self.position, n) & _WAKE:
            w._ring._wake_doorbell()
        w._claim_ended()
        return self.position

    def abort(self) -> None:
        """Give the room back as padding: subscribers skip it."""
        if self._done:
            return
        self._done = True
        self.buffer.release()
        w = self._writer
        if K.ring_abort(w._base, w.slot, self.position) & _WAKE:
            w._ring._wake_doorbell()
        w._claim_ended()

    def __enter__(self) -> "Claim":
        return self

    def __exit__(self, exc_type, *exc: object) -> None:
        if exc_type is None:
            if not self._done:
                self.commit()
        else:
            self.abort()


def _wake_doorbell(self: Ring) -> None:
    futex_wake(self.segment.address + WAKE_OFFSET + WAKE_DOORBELL * 8)


Ring._wake_doorbell = _wake_doorbell  # type: ignore[attr-defined]


class RingWriter:
    """A producer slot on a ring. Not thread-safe: one writer per thread.

    Safety: a writer must not be used after ``close()``; every call checks.
    """

    def __init__(self, ring: Ring, slot: int, wait: WaitStrategy) -> None:
        self._ring = ring
        self.slot = slot
        self.wait = wait
        self._base = ring.segment.address
        self._max = ring.max_record_bytes
        self._entries = K.buffer_entry_points()
        self._claim: Claim | None = None
        self._closed = False
        # The writer's entry state (fabric._ring_builtins): its W_OPEN word is 1 while offers may
        # skip the checks (no open claim, not closed). The builtin offers read it there; the
        # Python fast paths (``offer``'s closure, PacketWriter's) through ``_gate``, a one-word
        # view of the same cell, so there is one flag to keep right.
        self._entry_state = _B.writer_state(self._base, slot)
        self._gate = memoryview(self._entry_state)[_B.W_OPEN : _B.W_OPEN + 1]

    def _set_open(self, is_open: bool) -> None:
        """Let offers skip the checks (True) or send them through ``_offer_slow`` (False)."""
        self._gate[0] = int(is_open)

    def _offer_result(self, r: int, length: int, type_id: int) -> int:
        """What an offer kernel's result means: wake parked readers, or raise on bad input."""
        if r >= 0:
            self._ring._wake_doorbell()
            return r & _POS_MASK
        if r == K.TOO_LARGE:
            self._raise_too_large(length, type_id)
        return r

    @functools.cached_property
    def offer(self) -> Callable[..., int]:
        """``offer(data, type_id=0) -> int``: append one record at once.

        Returns
        -------
        int
            The record's position (>= 0), or ``BACK_PRESSURED`` (no room: the slowest
            subscriber is a capacity behind) or ``NOT_CONNECTED`` (no subscriber).

        Raises
        ------
        RecordTooLargeError
            ``len(data)`` exceeds the ring's ``max_record_bytes`` (or ``type_id`` is
            outside 0..2**31-1).
        ClaimPendingError, ClosedResourceError
            This writer holds an open claim, or is closed.

        Made at first use. Where CPython's layout is known it is a builtin over a compiled
        function (``fabric._ring_builtins``: ~60 ns, no Python frame) that offers ``bytes``
        and ``bytearray`` itself and hands anything else to the Python closure below: a
        closure over the writer's state (~40 ns a call less than a method reading ``self``),
        whose common buffer types go to their compiled entry and everything else (and every
        refusal) through ``_offer_slow``.
        """
        gate = self._gate
        entries = self._entries
        base = self._base
        slot = self.slot
        wake_limit = _WAKE
        result = self._offer_result
        slow = self._offer_slow

        def offer(data: bytes | bytearray | memoryview | np.ndarray, type_id: int = 0) -> int:
            if gate[0]:
                try:
                    fn = entries[data.__class__]
                except KeyError:
                    return slow(data, type_id)
                # (Passing id(data) instead of the buffer, as PacketWriter does, measured no faster here.)
                r = fn(base, slot, data, type_id)
                if r >= 0 and r < wake_limit:
                    return r
                return result(r, len(data), type_id)
            return slow(data, type_id)

        if _B.AVAILABLE:
            return _B.offer_builtin(self._entry_state, offer, self._ring._wake_doorbell)
        return offer

    def _offer_slow(self, data, type_id: int) -> int:
        if self._closed:
            raise ClosedResourceError("writer is closed")
        self._check_no_claim()
        fn = self._entries.get(type(data))
        if fn is not None:
            r = fn(self._base, self.slot, data, type_id)
            return r if 0 <= r < _WAKE else self._offer_result(r, len(data), type_id)
        arr = data.view(np.uint8).ravel() if isinstance(data, np.ndarray) else np.frombuffer(data, dtype=np.uint8)
        if not arr.flags.c_contiguous:
            arr = np.ascontiguousarray(arr)
        r = K.ring_offer_buf(self._base, self.slot, arr, type_id)
        return r if 0 <= r < _WAKE else self._offer_result(r, len(arr), type_id)

    def _check_no_claim(self) -> None:
        if self._claim is not None:
            raise ClaimPendingError(
                f"this writer holds an open claim at position {self._claim.position}: commit or abort it first "
                "(one open claim per writer; use another writer to claim concurrently)"
            )

    def _raise_too_large(self, length: int, type_id: int):
        if not 0 <= type_id < 2**31:
            raise ValueError(f"type_id must be in 0..2**31-1, got {type_id}")
        raise RecordTooLargeError(f"record of {length} bytes exceeds the ring's max_record_bytes ({self._max})")

    def offer_batch(self, buffer: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, type_id: int = 0) -> int:
        """Append records ``buffer[offsets[i] : offsets[i] + lengths[i]]`` in one compiled call.

        ``buffer`` is a C-contiguous 1-D uint8 array; ``offsets`` and ``lengths`` are 1-D
        int64 arrays (other integer sequences are converted, at a cost). Records are claimed
        a span at a time (one tail update for all that fit before the wrap).

        Returns how many were appended (a prefix; stops at the first refusal), or a
        negative code when none was.

        Raises
        ------
        RecordTooLargeError
            A length is negative or exceeds ``max_record_bytes`` (nothing is written).
        ValueError
            A record reaches outside ``buffer``, or the arrays' lengths differ (nothing is written).
        """
        if self._closed:
            raise ClosedResourceError("writer is closed")
        if self._claim is not None:
            self._check_no_claim()
        try:
            r = K.ring_offer_records(self._base, self.slot, buffer, offsets, lengths, type_id)
        except TypeError:
            buffer, offsets, lengths = self._batch_arrays(buffer, offsets, lengths)
            r = K.ring_offer_records(self._base, self.slot, buffer, offsets, lengths, type_id)
        if r >= 0:
            if r & _WAKE:
                self._ring._wake_doorbell()
                return r & _POS_MASK
            return r
        if r == K.TOO_LARGE:
            self._raise_too_large(int(np.max(lengths, initial=0)), type_id)
        if r == K.OUT_OF_BOUNDS:
            raise ValueError(
                f"offer_batch: a record reaches outside the {len(buffer)}-byte buffer, or offsets and lengths "
                f"differ in length ({len(offsets)} vs {len(lengths)})"
            )
        return r

    @staticmethod
    def _batch_arrays(buffer, offsets, lengths) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``offer_batch``'s arguments as the kernel's exact types, or a ``TypeError`` that says why."""
        if not isinstance(buffer, np.ndarray) or buffer.dtype != np.uint8 or buffer.ndim != 1 or not buffer.flags.c_contiguous:
            raise TypeError("buffer must be a C-contiguous 1-D uint8 array")
        offsets = np.ascontiguousarray(offsets, dtype=np.int64)
        lengths = np.ascontiguousarray(lengths, dtype=np.int64)
        if offsets.ndim != 1 or lengths.ndim != 1:
            raise ValueError("offsets and lengths must be 1-D")
        return buffer, offsets, lengths

    def send(self, data: bytes | bytearray | memoryview | np.ndarray, type_id: int = 0, *, timeout_ns: int = 5_000_000_000) -> int:
        """Append one record, waiting up to ``timeout_ns`` for room (and for a subscriber).

        Raises ``TimeoutError`` when the deadline passes; a dead subscriber that blocks
        the ring is reclaimed along the way.
        """
        r = self.offer(data, type_id)  # the common case: room now, no closure, no wait loop
        if r >= 0:
            return r
        return offer_with_wait(lambda: self.offer(data, type_id), self._ring, self.wait, timeout_ns)

    def try_claim(self, length: int, type_id: int = 0) -> Claim | None:
        """Claim room for a ``length``-byte record to fill in place; None when refused.

        The claim must be committed or aborted promptly: until then subscribers wait at it.
        """
        if self._closed:
            raise ClosedResourceError("writer is closed")
        self._check_no_claim()
        if not 0 <= length <= self._max:
            raise RecordTooLargeError(f"record of {length} bytes exceeds the ring's max_record_bytes ({self._max})")
        rec = K.ring_claim(self._base, self.slot, length, type_id)
        if rec < 0:
            if rec == K.TOO_LARGE:
                self._raise_too_large(length, type_id)
            return None
        seg = self._ring.segment
        start = self._ring.data_offset + (rec & (self._ring.capacity_bytes - 1)) + RECORD_HEADER_BYTES
        claim = Claim(self, rec, memoryview(seg.u8)[start : start + length])
        self._claim = claim
        self._set_open(False)  # offers go through the checked path (and refuse) until the claim ends
        return claim

    def _claim_ended(self) -> None:
        self._claim = None
        if not self._closed:
            self._set_open(True)

    def statistics(self) -> ProducerStatistics:
        for p in self._ring.statistics().producers:
            if p.slot == self.slot:
                return p
        raise BrokenResourceError("this writer's slot is not in the ring's table")

    def close(self) -> None:
        """Give the producer slot back (idempotent)."""
        if self._closed:
            return
        if self._claim is not None and not self._ring.closed:
            self._claim.abort()  # an open claim left behind would gate every producer for good
        self._closed = True
        self._set_open(False)
        if not self._ring.closed:
            self._ring._release_producer_slot(self.slot)
        self._ring._handles.discard(self)

    def __enter__(self) -> "RingWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RecordBatch:
    """Records found by one ``read_batch``: zero-copy views, valid until ``release()``.

    Iterating yields ``(memoryview, type_id)`` pairs. For numpy consumers, ``offsets``,
    ``lengths`` and ``type_ids`` are arrays (``offsets`` index the segment's bytes,
    ``ring.segment.u8``), with no Python object per record. The descriptors live in the
    reader's buffer: like the views, they are valid until the reader's next read.
    """

    __slots__ = ("_reader", "_desc", "count", "end_position", "_released")

    def __init__(self, reader: "RingReader", desc: np.ndarray, count: int, end_position: int) -> None:
        self._reader = reader
        self._desc = desc  # [end, _, offset0, meta0, offset1, meta1, ...]
        self.count = count
        self.end_position = end_position
        self._released = False

    def __len__(self) -> int:
        return self.count

    def __iter__(self):
        mv = self._reader._mv
        d = self._desc[2 : 2 + 2 * self.count].tolist()
        for i in range(0, len(d), 2):
            off = d[i]
            meta = d[i + 1]
            yield mv[off : off + (meta & 0xFFFFFFFF)], meta >> 32

    @property
    def offsets(self) -> np.ndarray:
        """Each record's payload offset in the segment (an int64 view, no copy)."""
        return self._desc[2 : 2 + 2 * self.count : 2]

    @property
    def lengths(self) -> np.ndarray:
        """Each record's payload length in bytes."""
        return self._desc[3 : 2 + 2 * self.count : 2] & 0xFFFFFFFF

    @property
    def type_ids(self) -> np.ndarray:
        """Each record's type id."""
        return self._desc[3 : 2 + 2 * self.count : 2] >> 32

    def descriptors(self) -> list:
        """``[payload_offset, (type << 32) | length, ...]`` pairs (offsets into the segment)."""
        return self._desc[2 : 2 + 2 * self.count].tolist()

    def release(self) -> None:
        """Hand the records' memory back to producers (published by the reader's next call)."""
        if not self._released:
            self._released = True
            self._reader._release_to(self.end_position)

    def __enter__(self) -> "RecordBatch":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class RingReader:
    """A subscriber slot on a ring with its own cursor. Not thread-safe: one reader per thread."""

    def __init__(self, ring: Ring, slot: int, wait: WaitStrategy, batch_records: int) -> None:
        if batch_records < 1:
            raise ValueError("batch_records must be >= 1")
        self._ring = ring
        self.slot = slot
        self._base = ring.segment.address
        self._mv = memoryview(ring.segment.u8)
        self._batch = batch_records
        self._desc = np.zeros(2 + 2 * batch_records, dtype=np.int64)
        self._desc_addr = self._desc.ctypes.data
        self._position_addr = ring._subscriber_addr(slot, S_POSITION)
        # The cursor (``K.CUR_*`` words): where this reader is, what it still has to release,
        # whether a batch is held, how long a take spins. The take, readable and park kernels
        # read and move it themselves; Python reads it through ``_cur`` (ints, not numpy scalars).
        self._cursor = np.zeros(K.CURSOR_WORDS, dtype=np.int64)
        self._cursor_addr = self._cursor.ctypes.data
        self._cur = memoryview(self._cursor)
        self._cur[K.CUR_BASE] = self._base
        self._cur[K.CUR_SUBSCRIBER] = slot
        self._cur[_CUR_POSITION] = K.read_word(self._position_addr)
        self._cur[_CUR_RELEASE] = -1
        self.wait = wait
        self._stall_pos = -1
        self._stall_since_ns = 0
        self.claim_timeout_ns = _CLAIM_TIMEOUT_NS
        self._closed = False
        self.durable = False
        self._parker = _RingParker(self)
        self._kernel = _entry_point(K.ring_poll)
        self._take_kernel = _entry_point(K.ring_take)
        self._take_packet_kernel = _entry_point(K.ring_take_packet)
        self._mm = ring.segment._mmap  # slicing it copies straight into a bytes object
        self._readable_kernel = _entry_point(K.ring_readable)
        self._empty_polls = 0

    @property
    def wait(self) -> WaitStrategy:
        """How this reader waits; its spin phase (``spin_checks``) is read when it is set."""
        return self._wait

    @wait.setter
    def wait(self, strategy: WaitStrategy) -> None:
        self._wait = strategy
        self._cur[K.CUR_SPIN] = strategy.spin_checks

    @property
    def position(self) -> int:
        """The ring position of the next record this reader reads."""
        return self._cur[_CUR_POSITION]

    @position.setter
    def position(self, value: int) -> None:
        self._cur[_CUR_POSITION] = value

    def _release_later(self, position: int) -> None:
        """Publish ``position`` as this subscriber's at its next kernel call (no call now)."""
        self._cur[_CUR_RELEASE] = position

    # --- reading --------------------------------------------------------------------------

    def _poll_descs(self, limit: int, kernel=None) -> int:
        """Run a poll kernel (default ``ring_poll``) from this reader's position; returns the count."""
        if self._closed:
            raise ClosedResourceError("reader is closed")
        cur = self._cur
        n = (kernel or self._kernel)(
            self._base, self.slot, cur[_CUR_POSITION], cur[_CUR_RELEASE], self._desc_addr, min(limit, self._batch)
        )
        cur[_CUR_RELEASE] = -1
        if n > 0:
            self._empty_polls = 0
            return n
        if n == 0:
            # Nothing, and nothing in progress here: cheap. Still look for a claim whose
            # producer died before marking it (tail past us, no marker) now and then.
            self._empty_polls += 1
            if self._empty_polls & _STALL_CHECK_EVERY_MASK == 0:
                self._check_stall()
            return 0
        if n != K.EMPTY_ATTENTION:
            self._raise_code(n, int(self._desc[0]))
        end, hint = self._desc[:2].tolist()
        if end > cur[_CUR_POSITION]:
            # It skipped padding and found nothing else: move past it and say so now, or the
            # padding would gate producers (and look readable to waits) until the next poll —
            # unless a batch is still held, whose memory must stay ours until it is released.
            cur[_CUR_POSITION] = end
            if not cur[_CUR_HELD]:
                K.publish_word(self._position_addr, end)
        if hint == K.STALL_HINT:
            self._check_stall()
        return 0

    def _raise_code(self, code: int, at: int):
        if code == K.READER_CLOSED:
            raise ClosedResourceError("reader is closed")
        if code == K.SUBSCRIBER_DROPPED:
            dropped_at = K.read_word(self._ring._subscriber_addr(self.slot, S_DROPPED))
            raise SubscriberDroppedError(
                f"ring {self._ring.name!r}: this subscriber was dropped at position {dropped_at} because it "
                "fell a full ring behind (slow_subscriber_policy='drop'); attach a new reader to continue"
            )
        raise BrokenResourceError(f"ring {self._ring.name!r}: corrupt record at position {at}")

    def _check_stall(self) -> None:
        pos = self.position
        if not K.ring_stalled_at(self._base, pos):
            self._stall_pos = -1
            return
        clock = get_time_source()
        if self._stall_pos != pos:
            self._stall_pos = pos
            self._stall_since_ns = clock.monotonic_ns()
        elif clock.monotonic_ns() - self._stall_since_ns >= self.claim_timeout_ns:
            if self._ring.recover_stuck_claim(pos):
                self._stall_pos = -1
            else:
                self._stall_since_ns = clock.monotonic_ns()  # owner alive: look again later

    def _release_to(self, position: int) -> None:
        # Released lazily: the next poll's kernel call publishes it (one call instead of two).
        self._cur[_CUR_RELEASE] = position
        self._cur[_CUR_HELD] = 0

    def poll(self, handler, limit: int = 256) -> int:
        """Call ``handler(view, type_id)`` for up to ``limit`` records; returns how many.

        Each view is valid only during its handler call (the memory is released after).
        """
        n = self._poll_descs(limit)
        if n == 0:
            return 0
        d = self._desc[: 2 + 2 * n].tolist()
        start = self.position
        end = d[0]
        mv = self._mv
        i = 2
        try:
            for i in range(2, 2 + 2 * n, 2):
                off = d[i]
                meta = d[i + 1]
                handler(mv[off : off + (meta & 0xFFFFFFFF)], meta >> 32)
        except BaseException:
            # The record the handler failed on is consumed; the ones after it are not.
            end = self._position_after(start, d[i], d[i + 1] & 0xFFFFFFFF)
            raise
        finally:
            self._cur[_CUR_POSITION] = end
            self._cur[_CUR_HELD] = 0  # publishing `end` releases any batch still held, too
            # SYNC POINT: pairs with producers' acquire-load of subscriber positions.
            K.publish_word(self._position_addr, end)
        return n

    def _position_after(self, start: int, payload_offset: int, payload_len: int) -> int:
        """The ring position just after the record whose payload sits at ``payload_offset``.

        A batch spans less than one lap, so the record's slot and ``start`` fix its position.
        """
        ring = self._ring
        mask = ring.capacity_bytes - 1
        slot = payload_offset - RECORD_HEADER_BYTES - ring.data_offset
        pos = start + ((slot - (start & mask)) & mask)
        return pos + align_record(RECORD_HEADER_BYTES + payload_len)

    def read_batch(self, limit: int = 256) -> RecordBatch:
        """Up to ``limit`` records as zero-copy views, held until ``batch.release()``.

        Only one batch may be outstanding: the next ``read_batch``/``poll`` releases it.
        """
        n = self._poll_descs(limit)
        if n == 0:
            return RecordBatch(self, self._desc, 0, self.position)
        end = int(self._desc[0])
        self._cur[_CUR_POSITION] = end
        self._cur[_CUR_HELD] = 1
        return RecordBatch(self, self._desc, n, end)

    def _took_nothing(self, meta: int) -> None:
        """A take kernel found no record: raise its error, or look at a claim in progress."""
        if meta < 0:
            self._raise_code(meta, self._cur[K.CUR_AT])
        if meta == K.STALL_HINT:
            self._check_stall()

    def _take_waiting(self, kernel, meta: int, timeout_ns: int, spun: bool) -> tuple[int, int]:
        """After a take kernel found nothing: wait (strategy, deadline) and take again."""
        clock = get_time_source()
        deadline = clock.monotonic_ns() + timeout_ns
        while True:
            self._took_nothing(meta)
            remaining = deadline - clock.monotonic_ns()
            if remaining <= 0 or not self.wait_readable(timeout_ns=remaining, spun=spun):
                raise TimeoutError(f"ring {self._ring.name!r}: no record within {timeout_ns / 1e9:.3f} s")
            off, meta = kernel(self._cursor_addr, 0)
            if off != 0:
                return off, meta
            spun = False

    @functools.cached_property
    def take(self) -> Callable[[], tuple[memoryview, int] | None]:
        """``take() -> (view, type_id) | None``: the next record as a zero-copy view, or None
        when there is none.

        Does not wait. The view is valid until the next call on this reader (its memory is
        handed back to producers then): copy what must outlive it. Raises
        ``ClosedResourceError`` once the reader is closed.

        A closure made at first use: one compiled call (``ring_take``) moves the cursor.
        """
        kernel = self._take_kernel
        cursor = self._cursor_addr
        mv = self._mv
        took_nothing = self._took_nothing

        def take() -> tuple[memoryview, int] | None:
            off, meta = kernel(cursor, 0)
            if off != 0:
                return mv[off : off + (meta & 0xFFFFFFFF)], meta >> 32
            took_nothing(meta)
            return None

        return take

    @functools.cached_property
    def receive(self) -> Callable[..., tuple[bytes, int]]:
        """``receive(*, timeout_ns=5_000_000_000) -> (bytes, type_id)``: wait up to
        ``timeout_ns`` for one record and return a copy of it.

        The wait strategy's spin phase runs in compiled code (``ring_take`` re-checks the
        record's commit word with a ``pause`` between), so a record that arrives while
        spinning is taken in the same call. The record's memory goes back to producers at
        this reader's next call. Raises ``TimeoutError`` when nothing arrives in time,
        ``ClosedResourceError`` once the reader is closed.

        Made at first use: where CPython's layout is known, a builtin over a compiled
        function (``fabric._ring_builtins``) that takes and copies a record with no Python
        frame, and hands every other case (nothing after the spin, errors, other arguments)
        to the Python closure below, whose common case is one compiled call and one copy.
        """
        kernel = self._take_kernel
        cursor = self._cursor_addr
        mm = self._mm
        waiting = self._take_waiting

        def receive(*, timeout_ns: int = 5_000_000_000) -> tuple[bytes, int]:
            spin = timeout_ns > 0
            off, meta = kernel(cursor, spin)
            if not off:
                off, meta = waiting(kernel, meta, timeout_ns, spin)
            return mm[off : off + (meta & 0xFFFFFFFF)], meta >> 32

        if _B.AVAILABLE:
            return _B.receive_builtin(self._cursor, receive)
        return receive

    def wait_readable(self, *, timeout_ns: int, spun: bool = False) -> bool:
        """Wait with the wait strategy until a record is there or ``timeout_ns`` passes.

        ``spun=True``: the caller has just spun the strategy's compiled spin phase itself
        (``receive``), so the wait goes on from the strategy's next phase.
        """
        if self._closed:
            raise ClosedResourceError("reader is closed")
        cur = self._cur
        if cur[_CUR_RELEASE] >= 0:
            K.publish_word(self._position_addr, cur[_CUR_RELEASE])  # before we may sleep
            cur[_CUR_RELEASE] = -1
        clock = get_time_source()
        deadline = clock.monotonic_ns() + timeout_ns
        wait = self.wait
        wait.reset()
        if spun:
            wait.spun()
        while not self._readable():
            now = clock.monotonic_ns()
            if now >= deadline:
                return False
            self._check_stall()
            wait.idle(self._parker, max_park_ns=min(deadline - now, 50_000_000))
        return True

    def _readable(self) -> bool:
        # A plain load: announcing a park just to look (as this once did) made every spinning
        # check two atomic writes on the shared wake line, and producers futex-wake for nobody.
        return self._readable_kernel(self._cursor_addr, 0) != 0

    @property
    def lag_bytes(self) -> int:
        """How far behind the ring's tail this reader is."""
        return max(0, K.read_word(self._ring._word_addr(TAIL_OFFSET)) - self.position)

    def statistics(self) -> SubscriberStatistics:
        for s in self._ring.statistics().subscribers:
            if s.slot == self.slot:
                return s
        raise BrokenResourceError("this reader's slot is not in the ring's table")

    def detach(self) -> None:
        """Stop using this reader but keep its (durable) slot and position for a successor to adopt."""
        if self._closed:
            return
        self._closed = True
        self._cur[K.CUR_BASE] = 0  # the take kernels refuse from now on: the mapping may go
        self._mv.release()
        self._ring._handles.discard(self)

    def close(self) -> None:
        """Give the subscriber slot back (idempotent); producers stop waiting for it."""
        if self._closed:
            return
        self._closed = True
        self._cur[K.CUR_BASE] = 0  # the take kernels refuse from now on: the mapping may go
        self._mv.release()
        if not self._ring.closed:
            K.publish_word(self._ring._subscriber_addr(self.slot, S_DURABLE), 0)
            self._ring._release_subscriber_slot(self.slot)
        self._ring._handles.discard(self)

    def __enter__(self) -> "RingReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _entry_point(dispatcher):
    """The compiled entry of a kernel with exactly one (explicit) signature: skips numba's dispatch."""
    (overload,) = dispatcher.overloads.values()
    return overload.entry_point


class _RingParker:
    """Spins on the ring in compiled code, or sleeps on its doorbell: announce, re-check,
    futex-wait, leave."""

    __slots__ = ("_reader",)

    def __init__(self, reader: RingReader) -> None:
        self._reader = reader

    def spin(self, checks: int) -> bool:
        """Re-check the ring up to ``checks`` times in compiled code; True once readable."""
        r = self._reader
        return r._readable_kernel(r._cursor_addr, checks) != 0

    def park(self, timeout_ns: int) -> None:
        r = self._reader
        bell = K.ring_park_begin(r._cursor_addr)
        if bell < 0:
            return
        try:
            futex_wait(r._base + WAKE_OFFSET + WAKE_DOORBELL * 8, bell, timeout_ns)
        finally:
            K.ring_park_end(r._base, r.slot)
