"""The blob arena: publish a large array once; every subscriber reads it in place.

A publisher ``put``s an array (one copy, into shared memory) and publishes a packet
whose ``blob`` field carries the reference. The router, which sees the reference in
the fixed header, adds each receiving component's bit to the blob's holder mask
before delivering, then drops the publisher's bit. A subscriber gets a read-only
numpy view (``view``) — no copy — and ``release``s it when done; the last release
frees the space. The supervisor releases everything a dead client held.

Allocation is first-fit over the extents in use, under a small lock in the arena
(the pid that holds it; a dead holder's lock is taken over). Allocation is a cold
path next to the copy of a megabyte array; releases and reads take no lock.

Layout and reference format: ``shm_layouts.arena``.
"""

from __future__ import annotations

import os

import numpy as np
from loguru import logger

from fabric import _ring_kernels as K
from fabric._atomics import load_acquire_at
from fabric._jit import jit
from fabric._process import is_alive, self_identity
from fabric.routing import _drop_hold
from fabric.errors import BrokenResourceError, CapacityError, ClosedResourceError
from fabric.segment import Segment
from fabric.timesource import get_time_source
from shm_layouts.arena import (
    A_ALLOCATIONS,
    A_BYTES_IN_USE,
    A_CAPACITY,
    A_DATA_OFFSET,
    A_FAILURES,
    A_FREES,
    A_LOCK,
    A_LOCK_START_MS,
    A_SLOTS,
    ARENA_LINE_OFFSET,
    B_DTYPE,
    B_GENERATION,
    B_HOLDERS,
    B_NBYTES,
    B_NDIM,
    B_OFFSET,
    B_OWNER,
    B_SHAPE,
    B_STATE,
    BLOB_FREE,
    BLOB_READY,
    BLOB_WRITING,
    EXTENT_ALIGN,
    IN_FLIGHT,
    MAX_NDIM,
    REF_SLOT_BITS,
    SLOT_BYTES,
    SLOTS_OFFSET,
    arena_data_offset,
    arena_segment_bytes,
)
from shm_layouts.header import SegmentKind

__all__ = ["BlobArena", "ArenaStatistics", "release_blob_bit"]

_SLOT_MASK = (1 << REF_SLOT_BITS) - 1
_LOCK_TIMEOUT_NS = 5_000_000_000


@jit("int64(int64, int64, int64)")
def release_blob_bit(slot_addr, bit, arena_line_addr):
    """Clear ``bit`` from a blob's holders; frees the blob when none is left. Returns the holders left."""
    old = load_acquire_at(slot_addr + B_HOLDERS * 8)
    _drop_hold(slot_addr, bit, arena_line_addr)
    return old & ~bit


class ArenaStatistics:
    """Counters of the arena (a snapshot)."""

    __slots__ = ("capacity_bytes", "bytes_in_use", "blobs", "allocations", "frees", "failures")

    def __init__(self, capacity_bytes, bytes_in_use, blobs, allocations, frees, failures) -> None:
        self.capacity_bytes = capacity_bytes
        self.bytes_in_use = bytes_in_use
        self.blobs = blobs
        self.allocations = allocations
        self.frees = frees
        self.failures = failures

    def __repr__(self) -> str:
        return (
            f"ArenaStatistics(capacity_bytes={self.capacity_bytes}, bytes_in_use={self.bytes_in_use}, "
            f"blobs={self.blobs}, allocations={self.allocations}, frees={self.frees}, failures={self.failures})"
        )


class BlobArena:
    """One blob arena segment, created (supervisor) or attached (publishers, subscribers, router)."""

    def __init__(self, segment: Segment) -> None:
        self.segment = segment
        w = segment.words
        line = ARENA_LINE_OFFSET // 8
        self.capacity_bytes = int(w[line + A_CAPACITY])
        self.slot_count = int(w[line + A_SLOTS])
        self.data_offset = int(w[line + A_DATA_OFFSET])
        self._slots = w[SLOTS_OFFSET // 8 : SLOTS_OFFSET // 8 + self.slot_count * SLOT_BYTES // 8].reshape(
            self.slot_count, SLOT_BYTES // 8
        )
        self._line_addr = segment.address + ARENA_LINE_OFFSET
        self._views: dict[int, int] = {}

    @classmethod
    def create(cls, name: str, capacity_bytes: int, slots: int = 1024) -> "BlobArena":
        """Create an arena (the supervisor does, with the rest of the fabric)."""
        if capacity_bytes < 4096 or slots < 1 or slots > _SLOT_MASK:
            raise ValueError(f"arena needs capacity_bytes >= 4096 and 1..{_SLOT_MASK} slots")
        capacity_bytes = (capacity_bytes + 4095) & ~4095
        seg = Segment.create(name, arena_segment_bytes(capacity_bytes, slots), SegmentKind.ARENA, mark_ready=False)
        w = seg.words
        line = ARENA_LINE_OFFSET // 8
        w[line + A_CAPACITY] = capacity_bytes
        w[line + A_SLOTS] = slots
        w[line + A_DATA_OFFSET] = arena_data_offset(slots)
        seg.mark_ready()
        return cls(seg)

    @classmethod
    def attach(cls, name: str, *, timeout_ns: int = 5_000_000_000) -> "BlobArena":
        return cls(Segment.attach(name, SegmentKind.ARENA, timeout_ns=timeout_ns))

    # --- allocation -----------------------------------------------------------------------

    def _lock(self) -> None:
        pid, start_ms = self_identity()
        addr = self._line_addr + A_LOCK * 8
        clock = get_time_source()
        deadline = clock.monotonic_ns() + _LOCK_TIMEOUT_NS
        spins = 0
        while True:
            holder = K.cas_word(addr, 0, pid)
            if holder == 0:
                K.publish_word(self._line_addr + A_LOCK_START_MS * 8, start_ms)
                return
            spins += 1
            if spins % 64 == 0:
                if not is_alive(holder, K.read_word(self._line_addr + A_LOCK_START_MS * 8)):
                    if K.cas_word(addr, holder, pid) == holder:  # its holder died: take it over
                        logger.warning("arena {}: took over the allocation lock of dead pid {}", self.segment.name, holder)
                        K.publish_word(self._line_addr + A_LOCK_START_MS * 8, start_ms)
                        return
                if clock.monotonic_ns() > deadline:
                    raise BrokenResourceError(f"arena {self.segment.name!r}: allocation lock held by pid {holder} for too long")
            os.sched_yield()

    def _unlock(self) -> None:
        K.publish_word(self._line_addr + A_LOCK * 8, 0)

    def put(self, array: np.ndarray, *, owner: int) -> int:
        """Copy ``array`` into the arena, held in flight for component ``owner``; returns the reference.

        Publish it in exactly one packet: the router turns the in-flight hold into holds of
        the inboxes it delivers to. If the publish fails, ``release_in_flight(ref)``.

        Raises
        ------
        CapacityError
            No room (or no free slot) right now; released blobs make room.
        """
        self._check_open()
        arr = np.ascontiguousarray(array)
        if arr.dtype.hasobject or arr.ndim > MAX_NDIM:
            raise TypeError(f"the arena takes numeric arrays of at most {MAX_NDIM} dimensions")
        dt = arr.dtype.str.encode("ascii")
        if len(dt) > 8:
            raise TypeError(f"dtype {arr.dtype} cannot be described in the arena")
        if not 0 <= owner < 64:
            raise ValueError(f"owner must be a component id 0..63, got {owner}")
        need = max(EXTENT_ALIGN, (arr.nbytes + EXTENT_ALIGN - 1) & ~(EXTENT_ALIGN - 1))
        self._lock()
        try:
            slot, offset = self._first_fit(need)
            row = self._slots[slot]
            gen = int(row[B_GENERATION]) + 1
            row[B_GENERATION] = gen
            row[B_OFFSET] = offset
            row[B_NBYTES] = need
            row[B_DTYPE] = int.from_bytes(dt.ljust(8, b"\0"), "little", signed=True)
            row[B_NDIM] = arr.ndim
            row[B_SHAPE : B_SHAPE + MAX_NDIM] = 0
            row[B_SHAPE : B_SHAPE + arr.ndim] = arr.shape
            row[B_OWNER] = owner
            row[B_HOLDERS] = IN_FLIGHT
            K.publish_word(self._slot_addr(slot) + B_STATE * 8, BLOB_WRITING)
            K.add_word(self._line_addr + A_ALLOCATIONS * 8, 1)
            K.add_word(self._line_addr + A_BYTES_IN_USE * 8, need)
        finally:
            self._unlock()
        start = self.data_offset + offset
        dst = self.segment.u8[start : start + arr.nbytes]
        dst[:] = arr.reshape(-1).view(np.uint8)
        # SYNC POINT: the data is complete before READY (pairs with view()'s acquire).
        K.publish_word(self._slot_addr(slot) + B_STATE * 8, BLOB_READY)
        return (gen << REF_SLOT_BITS) | (slot + 1)

    def _first_fit(self, need: int) -> tuple[int, int]:
        states = self._slots[:, B_STATE]
        used = states != BLOB_FREE
        free_slots = np.flatnonzero(~used)
        if not len(free_slots):
            K.add_word(self._line_addr + A_FAILURES * 8, 1)
            raise CapacityError(f"arena {self.segment.name!r}: all {self.slot_count} blob slots are in use")
        starts = self._slots[used, B_OFFSET]
        ends = starts + self._slots[used, B_NBYTES]
        order = np.argsort(starts)
        cursor = 0
        for s, e in zip(starts[order].tolist(), ends[order].tolist()):
            if s - cursor >= need:
                return int(free_slots[0]), cursor
            cursor = max(cursor, e)
        if self.capacity_bytes - cursor >= need:
            return int(free_slots[0]), cursor
        K.add_word(self._line_addr + A_FAILURES * 8, 1)
        raise CapacityError(
            f"arena {self.segment.name!r}: no room for {need} bytes ({self.capacity_bytes} total, "
            f"{int(K.read_word(self._line_addr + A_BYTES_IN_USE * 8))} in use); release blobs or raise fabric.arena_bytes"
        )

    # --- reading and releasing ------------------------------------------------------------

    def _slot_addr(self, slot: int) -> int:
        return self.segment.address + SLOTS_OFFSET + slot * SLOT_BYTES

    def _slot_of(self, ref: int) -> int:
        slot = (ref & _SLOT_MASK) - 1
        if not 0 <= slot < self.slot_count:
            raise BrokenResourceError(f"blob reference {ref:#x} names no slot of this arena")
        if int(K.read_word(self._slot_addr(slot) + B_GENERATION * 8)) != ref >> REF_SLOT_BITS:
            raise BrokenResourceError(f"blob reference {ref:#x} is stale: its blob was released and the space reused")
        return slot

    def view(self, ref: int) -> np.ndarray:
        """A read-only view of the blob (no copy), valid until this process releases it."""
        self._check_open()
        slot = self._slot_of(ref)
        if K.read_word(self._slot_addr(slot) + B_STATE * 8) != BLOB_READY:
            raise BrokenResourceError(f"blob {ref:#x} is not ready (released, or its writer died)")
        row = self._slots[slot]
        dtype = np.dtype(int(row[B_DTYPE]).to_bytes(8, "little", signed=True).rstrip(b"\0").decode("ascii"))
        shape = tuple(int(x) for x in row[B_SHAPE : B_SHAPE + int(row[B_NDIM])])
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        start = self.data_offset + int(row[B_OFFSET])
        arr = np.frombuffer(self.segment.u8, dtype=dtype, count=count, offset=start).reshape(shape)
        arr.flags.writeable = False
        return arr

    def release(self, ref: int, *, inbox: int) -> None:
        """Drop inbox ``inbox``'s hold on the blob (its subscriber is done); the last hold frees it."""
        self._check_open()
        slot = self._slot_of(ref)
        release_blob_bit(self._slot_addr(slot), 1 << inbox, self._line_addr)

    def release_in_flight(self, ref: int) -> None:
        """Drop the publisher's hold on a blob that was never routed (its publish failed)."""
        self._check_open()
        slot = self._slot_of(ref)
        release_blob_bit(self._slot_addr(slot), IN_FLIGHT, self._line_addr)

    def release_inbox(self, inbox: int) -> int:
        """Drop every hold of inbox ``inbox`` (its subscriber closed or died); returns how many."""
        self._check_open()
        bit = 1 << inbox
        n = 0
        for slot in np.flatnonzero((self._slots[:, B_HOLDERS] & bit) != 0).tolist():
            release_blob_bit(self._slot_addr(slot), bit, self._line_addr)
            n += 1
        return n

    def release_client(self, component: int, inbox_mask: int) -> int:
        """Drop every hold of a dead client: its inboxes' bits and its unrouted blobs. Returns how many."""
        self._check_open()
        n = 0
        holders = self._slots[:, B_HOLDERS]
        for slot in np.flatnonzero((holders & inbox_mask) != 0).tolist():
            release_blob_bit(self._slot_addr(slot), inbox_mask, self._line_addr)
            n += 1
        mine = (self._slots[:, B_OWNER] == component) & ((self._slots[:, B_HOLDERS] & IN_FLIGHT) != 0)
        for slot in np.flatnonzero(mine).tolist():
            release_blob_bit(self._slot_addr(slot), IN_FLIGHT, self._line_addr)
            n += 1
        return n

    def holders(self, ref: int) -> int:
        """The holder mask of a blob (bit i = inbox i; ``IN_FLIGHT`` = not routed yet)."""
        return int(K.read_word(self._slot_addr(self._slot_of(ref)) + B_HOLDERS * 8))

    def statistics(self) -> ArenaStatistics:
        w = self.segment.words
        line = ARENA_LINE_OFFSET // 8
        return ArenaStatistics(
            self.capacity_bytes,
            int(w[line + A_BYTES_IN_USE]),
            int(np.count_nonzero(self._slots[:, B_STATE] != BLOB_FREE)),
            int(w[line + A_ALLOCATIONS]),
            int(w[line + A_FREES]),
            int(w[line + A_FAILURES]),
        )

    # --- lifetime -------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.segment.closed:
            raise ClosedResourceError(f"arena {self.segment.name!r} is closed")

    def close(self) -> None:
        if self.segment.closed:
            return
        self._slots = None  # type: ignore[assignment]
        self.segment.close()

    def destroy(self) -> None:
        self.close()
        if self.segment.is_owner:
            self.segment.unlink()

    def __enter__(self) -> "BlobArena":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.segment.is_owner:
            self.destroy()
        else:
            self.close()
