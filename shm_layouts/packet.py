"""The PhasePacket fixed header: 64 bytes at the front of every packet record.

::

    0                8                16               24               32
    +----------------+----------------+----------------+----------------+
    | packet_id u64  | hlc i64        | deadline_ns i64| target_mask u64|
    +----------------+----------------+----------------+----------------+
    32               40       44   45   46     48       52       56       64
    +----------------+--------+----+----+------+--------+--------+--------+
    | topic_id u64   | source | pri|flg | ndeps| body_  | magic  | blob   |
    | (FNV-1a 64)    | u32    | u8 | u8 | u16  | len u32| u32    | ref i64|
    +----------------+--------+----+----+------+--------+--------+--------+
    64: deps: ndeps x u64 packet ids        (the scheduler reads them without decoding)
    64 + 8*ndeps: body: the whole PhasePacket, msgspec msgpack (array-like)

The header is a projection of the body, written by the same encoder call: the
scheduler and router order and route on it (in numba, batched) and never decode
the body; subscribers decode only the body. The record's type id carries
``PACKET_TYPE | ndeps`` so a decoder finds the body without reading the header.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "PACKET_HEADER_BYTES",
    "PACKET_HEADER_DTYPE",
    "PACKET_MAGIC",
    "PACKET_TYPE",
    "PACKET_TYPE_MASK",
    "MAX_DEPS",
    "H_ID",
    "H_HLC",
    "H_DEADLINE",
    "H_TARGETS",
    "H_TOPIC",
    "H_SOURCE_PRI_FLAGS_NDEPS",
    "H_BODYLEN_MAGIC",
    "H_BLOB",
    "FLAG_LATE",
    "FLAG_DEGRADED",
    "FLAG_ESCALATED",
]

PACKET_HEADER_BYTES = 64
PACKET_MAGIC = 0x31544B50  # "PKT1"
PACKET_TYPE = 0x10000  # record type id of a packet: PACKET_TYPE | ndeps
PACKET_TYPE_MASK = 0x7FFF0000
MAX_DEPS = 0xFFFF

PACKET_HEADER_DTYPE = np.dtype(
    [
        ("packet_id", "<u8"),
        ("hlc", "<i8"),
        ("deadline_ns", "<i8"),
        ("target_mask", "<u8"),
        ("topic_id", "<u8"),
        ("source", "<u4"),
        ("priority", "u1"),
        ("flags", "u1"),
        ("ndeps", "<u2"),
        ("body_len", "<u4"),
        ("magic", "<u4"),
        ("blob", "<i8"),
    ]
)
assert PACKET_HEADER_DTYPE.itemsize == PACKET_HEADER_BYTES

# int64 word indexes within the header (for numba readers).
H_ID = 0
H_HLC = 1
H_DEADLINE = 2
H_TARGETS = 3
H_TOPIC = 4
H_SOURCE_PRI_FLAGS_NDEPS = 5  # source | priority << 32 | flags << 40 | ndeps << 48
H_BODYLEN_MAGIC = 6  # body_len | magic << 32
H_BLOB = 7  # blob arena reference (0: none); the router takes references for each delivery

# Flags set by the scheduler on delivery.
FLAG_LATE = 1  # delivered after its deadline
FLAG_DEGRADED = 2  # routed to the degraded handler after a miss
FLAG_ESCALATED = 4  # priority raised after a miss
