"""``RingWriter.offer``, ``RingReader.receive`` and ``PacketWriter.offer`` as builtins
(``fabric._fastcall``).

The per-message calls of a ring, made with no Python frame and no numba entry on their
common path: a writer's ``offer(bytes_or_bytearray[, type_id])`` that commits, a reader's
``receive([timeout_ns=...])`` that finds a record (spinning first, as the wait strategy
says), and a packet writer's ``offer(packet)`` that encodes (msgspec's ``encode_into``,
called from the kernel) and commits. Everything else — other buffer types, keywords the
kernel does not read, a closed handle, a refusal that must raise, waiting past the spin —
goes to the handle's Python implementation, called with the same arguments.

Bound state (the builtin's ``self``)::

    offer          (writer state address, python offer, python wake, state array)
    receive        (reader cursor address, python receive, "timeout_ns", cursor array)
    packet offer   (writer state address, python offer, encode_into, scratch bytearray,
                    python result(code, packet), state array)

The arrays ride along in the tuple so they live as long as the builtin does.
"""

from __future__ import annotations

import os
import sys

import numpy as np
from numba import cfunc

from fabric import _fastcall as F
from fabric import _packet_kernels as PK
from fabric import _ring_kernels as K
from fabric._atomics import i64_array_at
from fabric._pyobject import BYTEARRAY_KIND, BYTES_KIND, object_span

__all__ = ["AVAILABLE", "writer_state", "offer_builtin", "receive_builtin", "packet_offer_builtin", "W_OPEN"]

#: False where CPython's object layout is not the probed one, or when the environment sets
#: ``CHRONOFABRIC_NO_BUILTINS=1`` (the Python closures are then the API: same results, slower).
AVAILABLE = F.LAYOUT_OK and os.environ.get("CHRONOFABRIC_NO_BUILTINS", "") in ("", "0")

# A writer's entry state: int64 words in the writer's memory.
W_BASE = 0  # the ring segment's base address
W_SLOT = 1  # the producer slot
W_OPEN = 2  # 1 while offers may skip the writer's checks (no open claim, not closed)
W_BYTES_TYPE = 3  # id(bytes), id(bytearray), id(int): the argument types the kernel reads
W_BYTEARRAY_TYPE = 4
W_INT_TYPE = 5
WRITER_WORDS = 8

_TYPE = F.TYPE_OFFSET // 8  # ob_type's word in an object
_ITEMS = F.TUPLE_ITEMS_OFFSET
_WAKE = K.WAKE_FLAG
_POS_MASK = K.WAKE_FLAG - 1
_BACK_PRESSURED = K.BACK_PRESSURED
_NOT_CONNECTED = K.NOT_CONNECTED
_CURSOR_WORDS = K.CURSOR_WORDS
_CUR_BASE = K.CUR_BASE
_CUR_SUBSCRIBER = K.CUR_SUBSCRIBER
_CUR_POSITION = K.CUR_POSITION
_CUR_RELEASE = K.CUR_RELEASE
_CUR_SPIN = K.CUR_SPIN
_take = K._take
_advance = K._advance
_ring_offer = K.ring_offer  # called, not inlined: each inlined copy is compiled again
_offer_packet_object = PK.ring_offer_packet_object


@cfunc(F.FASTCALL_SIGNATURE, cache=True)
def ring_offer_call(self, args, nargs, kwnames):  # pragma: no cover - compiled; tested through RingWriter.offer
    """``offer(data[, type_id])``: bytes or bytearray with an exact int type id, committed here."""
    bound = i64_array_at(F.address(self) + _ITEMS, 3)
    st = i64_array_at(F.long_value(bound[0]), WRITER_WORDS)
    if st[W_OPEN] != 0 and F.address(kwnames) == 0 and (nargs == 1 or nargs == 2):
        data = F.address(args[0])
        t = i64_array_at(data, 2)[_TYPE]
        kind = BYTES_KIND if t == st[W_BYTES_TYPE] else (BYTEARRAY_KIND if t == st[W_BYTEARRAY_TYPE] else -1)
        type_id = 0
        if nargs == 2:
            arg = F.address(args[1])
            if i64_array_at(arg, 2)[_TYPE] != st[W_INT_TYPE]:
                kind = -1
            else:
                type_id = F.long_value(arg)
                if type_id == -1:  # -1, or too big (an error is set): Python says which
                    F.clear_error()
                    kind = -1
        if kind >= 0:
            src, n = object_span(data, kind)
            r = _ring_offer(st[W_BASE], st[W_SLOT], src, n, type_id)
            if r >= _WAKE:
                woke = F.call_noargs(bound[2])  # committed; a parked reader needs its futex wake
                if woke == 0:
                    return F.as_object(0)
                F.decref(woke)
                r &= _POS_MASK
            if r >= 0 or r == _BACK_PRESSURED or r == _NOT_CONNECTED:
                return F.as_object(F.new_long(r))
            # Any other code wrote nothing: the Python offer raises the matching error.
    return F.as_object(F.call_fallback(bound[1], args, nargs, F.address(kwnames)))


@cfunc(F.FASTCALL_SIGNATURE, cache=True)
def ring_receive_call(self, args, nargs, kwnames):  # pragma: no cover - compiled; tested through RingReader.receive
    """``receive([timeout_ns=int])``: a record there now (or within the spin), copied here."""
    bound = i64_array_at(F.address(self) + _ITEMS, 3)
    cur = i64_array_at(F.long_value(bound[0]), _CURSOR_WORDS)
    kw = F.address(kwnames)
    ok = nargs == 0 and cur[_CUR_BASE] != 0
    spin = 1  # the default timeout (5 s) is > 0
    if ok and kw != 0:
        names = i64_array_at(kw, 4)  # a tuple: [refcnt, type, size, item 0]
        ok = names[2] == 1 and names[3] == bound[2]  # exactly timeout_ns=, by the interned name
        if ok:
            arg = F.address(args[0])
            ok = i64_array_at(arg, 2)[_TYPE] == cur[K.CUR_INT_TYPE]
            if ok:
                timeout_ns = F.long_value(arg)
                if timeout_ns == -1:
                    F.clear_error()  # too big: found now or not, Python reads it again
                spin = 1 if timeout_ns > 0 else 0
    if ok:
        base = cur[_CUR_BASE]
        end, off, meta = _take(base, cur[_CUR_SUBSCRIBER], cur[_CUR_POSITION], cur[_CUR_RELEASE],
                               cur[_CUR_SPIN] if spin else 0, False)
        if off != 0:
            data = F.new_bytes(base + off, meta & 0xFFFFFFFF)
            type_id = F.new_long(meta >> 32) if data != 0 else 0
            if type_id == 0:  # out of memory (an error is set): the record stays for the next call
                F.decref(data)
                cur[_CUR_RELEASE] = -1  # _take published it already
                return F.as_object(0)
            _advance(cur, end, off, meta)
            return F.as_object(F.new_pair(data, type_id))
        _advance(cur, end, off, meta)  # past padding; the release is published
    return F.as_object(F.call_fallback(bound[1], args, nargs, kw))


@cfunc(F.FASTCALL_SIGNATURE, cache=True)
def packet_offer_call(self, args, nargs, kwnames):  # pragma: no cover - compiled; tested through PacketWriter.offer
    """``offer(packet)``: encoded by msgspec into the scratch buffer, parsed and committed here."""
    bound = i64_array_at(F.address(self) + _ITEMS, 5)
    st = i64_array_at(F.long_value(bound[0]), WRITER_WORDS)
    if st[W_OPEN] != 0 and F.address(kwnames) == 0 and nargs == 1:
        packet = F.address(args[0])
        done = F.call2(bound[2], packet, bound[3])  # encode_into(packet, scratch)
        if done != 0:
            F.decref(done)
            # A call, not inlined: the packet parser takes ~20 s to compile, once is enough.
            r = _offer_packet_object(st[W_BASE], st[W_SLOT], bound[3], BYTEARRAY_KIND)
            if r >= 0 and r < _WAKE:
                return F.as_object(F.new_long(r))
            code = F.new_long(r)  # a wake is due, a refusal, or an error the Python side raises
            if code == 0:
                return F.as_object(0)
            out = F.call2(bound[4], code, packet)
            F.decref(code)
            return F.as_object(out)
        F.clear_error()  # not encodable: the Python offer encodes again and raises CodecError
    return F.as_object(F.call_fallback(bound[1], args, nargs, F.address(kwnames)))


_OFFER_DOC = """offer(data, type_id=0)
--

Append one record at once; returns its position (>= 0), ``BACK_PRESSURED`` or ``NOT_CONNECTED``.

Raises ``RecordTooLargeError`` when ``len(data)`` exceeds the ring's ``max_record_bytes`` (or
``type_id`` is outside 0..2**31-1), ``ClaimPendingError`` while this writer holds an open
claim, ``ClosedResourceError`` once it is closed."""

_RECEIVE_DOC = """receive(*, timeout_ns=5000000000)
--

Wait up to ``timeout_ns`` for one record; returns ``(bytes copy, type_id)``.

The wait strategy's spin phase runs in compiled code, so a record that arrives while spinning
is taken in the same call. Raises ``TimeoutError`` when nothing arrives in time,
``ClosedResourceError`` once the reader is closed."""

_TIMEOUT_NAME = sys.intern("timeout_ns")


def writer_state(base: int, slot: int) -> np.ndarray:
    """A new writer entry state (``W_*`` words), open."""
    st = np.zeros(WRITER_WORDS, dtype=np.int64)
    st[[W_BASE, W_SLOT, W_OPEN, W_BYTES_TYPE, W_BYTEARRAY_TYPE, W_INT_TYPE]] = [
        base, slot, 1, id(bytes), id(bytearray), id(int)
    ]
    return st


def offer_builtin(state: np.ndarray, fallback, wake):
    """The builtin ``offer`` over a writer's entry state; ``fallback(data, type_id=0)`` and
    ``wake()`` are the writer's Python offer and doorbell wake."""
    return F.builtin(ring_offer_call, "offer", _OFFER_DOC, (state.ctypes.data, fallback, wake, state))


_PACKET_OFFER_DOC = """offer(packet)
--

Publish a PhasePacket at once; returns its position, ``BACK_PRESSURED`` or ``NOT_CONNECTED``.

Raises ``CodecError`` when the packet cannot be encoded or a field is out of range (nothing is
written), ``RecordTooLargeError`` when the encoded packet exceeds the ring's record limit."""


def packet_offer_builtin(state: np.ndarray, fallback, encode_into, scratch: bytearray, result):
    """The builtin ``PacketWriter.offer`` over its writer's entry state. ``fallback(packet)``
    is the Python offer, ``encode_into(packet, scratch)`` msgspec's, ``result(code, packet)``
    what a refusal, wake or error code means."""
    return F.builtin(packet_offer_call, "offer", _PACKET_OFFER_DOC, (state.ctypes.data, fallback, encode_into, scratch, result, state))


def receive_builtin(cursor: np.ndarray, fallback):
    """The builtin ``receive`` over a reader's cursor; ``fallback(*, timeout_ns)`` is the
    reader's Python receive."""
    cursor[K.CUR_INT_TYPE] = id(int)
    return F.builtin(ring_receive_call, "receive", _RECEIVE_DOC, (cursor.ctypes.data, fallback, _TIMEOUT_NAME, cursor))
