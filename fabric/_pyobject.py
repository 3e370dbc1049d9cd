"""Where a ``bytes`` or ``bytearray`` keeps its bytes, for kernels that take ``id(obj)``.

A kernel that takes a buffer object pays for unboxing it (buffer protocol, a meminfo) and
for reference counting wherever the array is passed on; the packet kernel hands its body to
a parser step by step, and taking the body by address cut a packet offer from 223 to 175 ns
(measured, same body, A/B in one process). So ``PacketWriter`` passes its scratch buffer's
address, ``id(buf)``, and the kernel reads size and data from CPython's layout::

    bytes       [refcnt][type][ob_size][hash][data ...]                 data at basicsize - 1
    bytearray   [refcnt][type][ob_size][alloc][bytes*][start*][exports]  start* at basicsize - 16

The caller holds a reference to the object for the whole call and the kernel runs with the
GIL held, so the object can neither move nor change under it. The layout is checked at
import against the buffer protocol; where it differs (another Python implementation or a
future CPython), ``LAYOUT_OK`` is False and every caller uses the buffer arguments instead.
"""

from __future__ import annotations

import ctypes
import sys

import numpy as np

from fabric._atomics import load_acquire_at
from fabric._jit import jit

__all__ = ["LAYOUT_OK", "BYTES_KIND", "BYTEARRAY_KIND", "object_span"]

BYTES_KIND = 0
BYTEARRAY_KIND = 1

_SIZE_OFFSET = 16  # ob_size of a PyVarObject: after ob_refcnt and ob_type
_BYTES_DATA_OFFSET = bytes.__basicsize__ - 1  # ob_sval[1] is counted in the basic size
_BYTEARRAY_START_OFFSET = bytearray.__basicsize__ - 16  # ob_start, before ob_exports


def _layout_matches() -> bool:
    """True when the offsets above find the same bytes as the buffer protocol does."""
    if sys.implementation.name != "cpython" or ctypes.sizeof(ctypes.c_void_p) != 8:
        return False
    for sample in (b"chronofabric-layout-probe", b"", bytes(range(200))):
        view = np.frombuffer(sample, dtype=np.uint8)
        if len(sample) and view.ctypes.data != id(sample) + _BYTES_DATA_OFFSET:
            return False
        if ctypes.c_ssize_t.from_address(id(sample) + _SIZE_OFFSET).value != len(sample):
            return False
    for sample in (bytearray(b"probe" * 9), bytearray(300)):
        start = ctypes.c_void_p.from_address(id(sample) + _BYTEARRAY_START_OFFSET).value
        if start != np.frombuffer(sample, dtype=np.uint8).ctypes.data:
            return False
        if ctypes.c_ssize_t.from_address(id(sample) + _SIZE_OFFSET).value != len(sample):
            return False
    return True


LAYOUT_OK = _layout_matches()


@jit(inline="always")
def object_span(obj_addr, kind):
    """``(data address, size)`` of the bytes (kind 0) or bytearray (kind 1) at ``obj_addr``."""
    n = load_acquire_at(obj_addr + _SIZE_OFFSET)
    if kind == BYTES_KIND:
        return obj_addr + _BYTES_DATA_OFFSET, n
    return load_acquire_at(obj_addr + _BYTEARRAY_START_OFFSET), n
