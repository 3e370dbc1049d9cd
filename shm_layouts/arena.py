"""The blob arena: large arrays written once into shared memory, read by every subscriber without a copy.

::

    0      +--------------------------------------------------------------+
           | segment header (128)                                         |
    128    | ARENA line: capacity, slots, data offset, alloc lock (pid),  |
           |   lock start, allocations, frees, failures, bytes in use     |
    256    +--------------------------------------------------------------+
           | SLOT 0 (128): state holders generation offset nbytes dtype   |
           |               ndim shape[6] owner                            |
           | SLOT 1 ...                                                   |
    data   +--------------------------------------------------------------+
           | extents of 64-byte-aligned array data                        |
           +--------------------------------------------------------------+

A blob reference is ``(generation << 20) | (slot + 1)``: a stale reference (its slot
reused) is detected by the generation. ``holders`` is a bit mask: bit ``i`` (< 48) is
inbox ``i`` — set by the router when it delivers the packet there — and ``IN_FLIGHT``
is the publisher's hold until the router has fanned the packet out. Holding per inbox,
not per process, keeps two subscribers of one process (or a process that publishes
to itself) apart. The blob is freed when the mask drops to zero; the supervisor
clears the bits of a dead client's inboxes and the in-flight holds it owned.
"""

from __future__ import annotations

from shm_layouts.header import CACHE_LINE_BYTES, SEGMENT_HEADER_BYTES

__all__ = [
    "ARENA_LINE_OFFSET",
    "SLOTS_OFFSET",
    "SLOT_BYTES",
    "A_CAPACITY",
    "A_SLOTS",
    "A_DATA_OFFSET",
    "A_LOCK",
    "A_LOCK_START_MS",
    "A_ALLOCATIONS",
    "A_FREES",
    "A_FAILURES",
    "A_BYTES_IN_USE",
    "B_STATE",
    "B_HOLDERS",
    "B_GENERATION",
    "B_OFFSET",
    "B_NBYTES",
    "B_DTYPE",
    "B_NDIM",
    "B_SHAPE",
    "B_OWNER",
    "MAX_NDIM",
    "BLOB_FREE",
    "BLOB_WRITING",
    "BLOB_READY",
    "REF_SLOT_BITS",
    "IN_FLIGHT",
    "EXTENT_ALIGN",
    "arena_segment_bytes",
    "arena_data_offset",
]

ARENA_LINE_OFFSET = SEGMENT_HEADER_BYTES
SLOTS_OFFSET = ARENA_LINE_OFFSET + CACHE_LINE_BYTES
SLOT_BYTES = 128
MAX_NDIM = 6
REF_SLOT_BITS = 20
IN_FLIGHT = 1 << 62  # the publisher's hold, dropped by the router once the packet is fanned out
EXTENT_ALIGN = 64

A_CAPACITY = 0
A_SLOTS = 1
A_DATA_OFFSET = 2
A_LOCK = 3  # pid holding the allocation lock, 0 when free
A_LOCK_START_MS = 4  # that process's start time (a reused pid does not own the lock)
A_ALLOCATIONS = 5
A_FREES = 6
A_FAILURES = 7  # allocations refused: no room
A_BYTES_IN_USE = 8

B_STATE = 0
B_HOLDERS = 1
B_GENERATION = 2
B_OFFSET = 3
B_NBYTES = 4
B_DTYPE = 5  # numpy dtype.str, ASCII, in 8 bytes
B_NDIM = 6
B_SHAPE = 7  # MAX_NDIM words
B_OWNER = 13  # component that wrote it

BLOB_FREE = 0
BLOB_WRITING = 1
BLOB_READY = 2


def arena_data_offset(slots: int) -> int:
    return (SLOTS_OFFSET + slots * SLOT_BYTES + 4095) & ~4095


def arena_segment_bytes(capacity: int, slots: int) -> int:
    return arena_data_offset(slots) + capacity
