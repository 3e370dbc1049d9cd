"""The record header: 16 bytes in front of every record in a ring.

::

    0                   8                  12                 16
    +-------------------+------------------+------------------+----------- - -
    | commit (int64)    | length (int32)   | type (int32)     | payload ...
    +-------------------+------------------+------------------+----------- - -

- ``commit`` is ``position ^ salt`` once the record is complete (the ring's salt:
  bit 62 set, bit 63 clear, 62 random bits). It is written last with a release store
  (the SYNC POINT a reader acquires). While a producer writes, it holds the bitwise
  NOT of that (negative: in progress). A stale word from an earlier lap never equals
  the current commit word — not even when an old payload held the position's bytes,
  since nobody writes the salt by accident — so readers need no zeroing and several
  subscribers can read one ring.
- ``length`` counts header + payload bytes; the next record starts at
  ``position + align8(length)``.
- ``type`` is the producer's record type; ``PADDING_TYPE`` marks filler that
  readers skip (at the wrap, or where a dead producer's claim was recovered).

If fewer than ``RECORD_HEADER_BYTES`` remain before the end of the buffer, no
header fits: producers and readers both skip to the start of the next lap.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "RECORD_HEADER_BYTES",
    "RECORD_ALIGNMENT",
    "RECORD_HEADER_DTYPE",
    "PADDING_TYPE",
    "DATA_TYPE",
    "COMMIT_WORD",
    "META_WORD",
    "align_record",
    "pack_meta",
    "meta_length",
    "meta_type",
]

RECORD_HEADER_BYTES = 16
RECORD_ALIGNMENT = 8
RECORD_HEADER_DTYPE = np.dtype([("commit", "<i8"), ("length", "<i4"), ("type", "<i4")])
assert RECORD_HEADER_DTYPE.itemsize == RECORD_HEADER_BYTES

PADDING_TYPE = -1
DATA_TYPE = 0

COMMIT_WORD = 0
META_WORD = 1


def align_record(length: int) -> int:
    """Round a record length up to the record alignment."""
    return (length + RECORD_ALIGNMENT - 1) & ~(RECORD_ALIGNMENT - 1)


def pack_meta(length: int, type_id: int) -> int:
    """The second header word: ``length`` in the low 32 bits, ``type`` in the high 32."""
    return (length & 0xFFFFFFFF) | (type_id << 32)


def meta_length(meta: int) -> int:
    return meta & 0xFFFFFFFF


def meta_type(meta: int) -> int:
    return meta >> 32
