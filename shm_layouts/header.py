"""The segment header: the first 128 bytes of every ChronoFabric segment.

::

    0        8        16       24       32       40       48       56       64
    +--------+--------+--------+--------+--------+--------+--------+--------+
    | magic  | version| seg_   | kind   | creator| creator| ready  | (spare)|
    | "CHRNF | maj<<16| bytes  |        | pid    | start  |        |        |
    |  AB01" |  |minor|        |        |        | (ns)   |        |        |
    +--------+--------+--------+--------+--------+--------+--------+--------+
    64 .. 128: reserved, zero

All fields are little-endian int64. The creator fills every field, then writes
``ready = READY_VALUE`` last with a release store: an attacher that sees ready
with an acquire load sees the rest. Attachers check magic, the major version
and the size, and refuse anything else with a message that says what to do.
(Aeron ``CncFileDescriptor`` / ``signalCncReady``.)
"""

from __future__ import annotations

import enum

import numpy as np

__all__ = [
    "CACHE_LINE_BYTES",
    "MAGIC",
    "LAYOUT_VERSION_MAJOR",
    "LAYOUT_VERSION_MINOR",
    "LAYOUT_VERSION",
    "READY_VALUE",
    "SEGMENT_HEADER_BYTES",
    "SEGMENT_HEADER_DTYPE",
    "SegmentKind",
    "MAGIC_WORD",
    "VERSION_WORD",
    "SIZE_WORD",
    "KIND_WORD",
    "CREATOR_PID_WORD",
    "CREATOR_START_WORD",
    "READY_WORD",
    "version_string",
]

# Two lines, not one: the adjacent-line prefetcher pulls cache lines in pairs.
CACHE_LINE_BYTES = 128

MAGIC = int.from_bytes(b"CHRNFAB1", "little")
LAYOUT_VERSION_MAJOR = 1
LAYOUT_VERSION_MINOR = 0
LAYOUT_VERSION = (LAYOUT_VERSION_MAJOR << 16) | LAYOUT_VERSION_MINOR
READY_VALUE = int.from_bytes(b"READY!!!", "little")

SEGMENT_HEADER_BYTES = 128
SEGMENT_HEADER_DTYPE = np.dtype(
    [
        ("magic", "<i8"),
        ("version", "<i8"),
        ("segment_bytes", "<i8"),
        ("kind", "<i8"),
        ("creator_pid", "<i8"),
        ("creator_start_ns", "<i8"),
        ("ready", "<i8"),
        ("spare", "<i8", 9),
    ]
)
assert SEGMENT_HEADER_DTYPE.itemsize == SEGMENT_HEADER_BYTES

# Word indexes (int64 cells) of each field, for atomics on an int64 view.
MAGIC_WORD = 0
VERSION_WORD = 1
SIZE_WORD = 2
KIND_WORD = 3
CREATOR_PID_WORD = 4
CREATOR_START_WORD = 5
READY_WORD = 6


class SegmentKind(enum.IntEnum):
    """What a segment holds, so a ring is never mistaken for a control block."""

    RING = 1
    CONTROL = 2
    ARENA = 3
    TEST = 99


def version_string(version: int) -> str:
    """``(major << 16) | minor`` as ``"major.minor"``."""
    return f"{version >> 16}.{version & 0xFFFF}"
