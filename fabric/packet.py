"""PhasePacket — the message ChronoFabric carries — and its codec.

A packet record is a 64-byte fixed header, the causal dependencies, then the
whole packet as msgspec msgpack (layout and diagram in ``shm_layouts.packet``).
The scheduler and router read only the header (in numba, batched); subscribers
decode only the body, straight from the ring's memoryview.

Payload encoding: any msgspec-encodable value (None, bool, int, float, str,
bytes, lists, dicts, msgspec Structs as dicts). ``bytes`` travel as msgpack
``bin`` and decode as ``bytes``. numpy arrays travel as msgpack extension type
``1``: ``[u8 len][dtype.str][u8 ndim][ndim x u64 shape][C-order data]``, and
decode as a new (owned, writable) array — the ring's memory is reused, so a
decoded array never aliases it. Numpy scalars encode as Python scalars. Large
arrays should travel through the blob arena instead (no copy at all).

Codecs are reused: one ``PacketCodec`` per writer or reader, never one per message.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import msgspec
import numpy as np

from fabric import _packet_kernels as _pk
from fabric.errors import CodecError
from shm_layouts.packet import (
    FLAG_DEGRADED,
    FLAG_ESCALATED,
    FLAG_LATE,
    MAX_DEPS,
    PACKET_HEADER_BYTES,
    PACKET_HEADER_DTYPE,
    PACKET_MAGIC,
    PACKET_TYPE,
    PACKET_TYPE_MASK,
)

__all__ = [
    "PhasePacket",
    "PacketCodec",
    "PacketHeader",
    "topic_id",
    "NDARRAY_EXT",
    "read_header",
    "ALL_TARGETS",
    "PRIORITY_MAX",
    "FLAG_LATE",
    "FLAG_DEGRADED",
    "FLAG_ESCALATED",
]

NDARRAY_EXT = 1
ALL_TARGETS = 0  # target mask 0: no component restriction
PRIORITY_MAX = 255



class PhasePacket(msgspec.Struct, array_like=True, gc=False, kw_only=True):
    """One message on the fabric.

    Fields are keyword-only; the fixed ones come first so a compiled kernel can read
    them from the encoded body without touching the payload (``fabric._packet_kernels``).

    Attributes
    ----------
    id:
        Unique id, assigned by the publisher (``source`` in the high bits, a sequence below).
    hlc:
        Hybrid logical clock stamp (``fabric.hlc``): physical ns with the low 16 bits
        holding the logical counter. Ordering stamps is ordering integers.
    source:
        Component id of the sender (0 .. 2**32-1).
    targets:
        Bit mask of component ids that may receive it; 0 means no restriction.
    priority:
        0 (lowest) to 255 (most urgent).
    deadline_ns:
        Absolute deadline in the fabric's time (``fabric.timesource.now_ns``); 0 for none.
    blob:
        A reference to a large array in the fabric's blob arena (``fabric.arena``), 0 for none.
        Subscribers get a read-only view of it without a copy.
    flags:
        Set by the fabric, not the publisher: ``FLAG_LATE`` (delivered after its deadline),
        ``FLAG_DEGRADED`` (re-routed to the topic's degraded handler), ``FLAG_ESCALATED``
        (its priority was raised after a miss) — see ``shm_layouts.packet``.
    topic:
        Where it goes: subscribers of this topic receive it.
    deps:
        Ids of packets that must be delivered before this one (causal delivery).
    payload:
        Any msgspec-encodable value; bytes and numpy arrays as described in the module doc.
    """

    id: int = 0
    hlc: int = 0
    source: int = 0
    targets: int = 0
    priority: int = 0
    deadline_ns: int = 0
    blob: int = 0
    flags: int = 0
    topic: str
    deps: tuple[int, ...] = ()
    payload: Any = None


class PacketHeader(msgspec.Struct, frozen=True):
    """The fixed header of a packet record, decoded (for tools and tests; workers read it in numba)."""

    packet_id: int
    hlc: int
    deadline_ns: int
    target_mask: int
    topic_id: int
    source: int
    priority: int
    flags: int
    ndeps: int
    body_len: int
    magic: int
    blob: int


def topic_id(topic: str) -> int:
    """FNV-1a 64 of the topic's UTF-8 bytes (0 is reserved: mapped to 1)."""
    h = 0xCBF29CE484222325
    for b in topic.encode("utf-8"):
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h or 1


def _enc_hook(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        arr = obj if obj.flags.c_contiguous else obj.copy(order="C")  # (ascontiguousarray makes 0-d 1-d)
        if arr.dtype.hasobject:
            raise TypeError("numpy arrays of Python objects cannot be encoded")
        dt = arr.dtype.str.encode("ascii")
        head = bytes([len(dt)]) + dt + bytes([arr.ndim]) + struct.pack(f"<{arr.ndim}Q", *arr.shape)
        return msgspec.msgpack.Ext(NDARRAY_EXT, head + arr.tobytes())
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"PhasePacket payloads cannot carry {type(obj).__name__}")


def _ext_hook(code: int, data: memoryview) -> Any:
    if code != NDARRAY_EXT:
        raise ValueError(f"unknown msgpack extension type {code}")
    try:
        n = data[0]
        dtype = np.dtype(bytes(data[1 : 1 + n]).decode("ascii"))
        ndim = data[1 + n]
        shape_end = 2 + n + 8 * ndim
        shape = struct.unpack_from(f"<{ndim}Q", data, 2 + n)
        count = math.prod(shape)  # Python ints: a garbage shape cannot overflow
        if dtype.hasobject or len(data) - shape_end != count * dtype.itemsize:
            raise ValueError("its data does not match its dtype and shape")
        return np.frombuffer(data[shape_end:], dtype=dtype).reshape(shape).copy()
    except (IndexError, struct.error, TypeError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"malformed ndarray extension: {exc}") from exc


class PacketCodec:
    """Encodes PhasePackets into packet records and decodes them back. Reuse one per endpoint.

    Not thread-safe (it owns a scratch buffer).
    """

    __slots__ = ("_enc", "_dec", "_topics", "scratch")

    def __init__(self) -> None:
        self._enc = msgspec.msgpack.Encoder(enc_hook=_enc_hook)
        self._dec = msgspec.msgpack.Decoder(PhasePacket, ext_hook=_ext_hook)
        self._topics: dict[str, int] = {}
        self.scratch = bytearray(256)

    def topic_id(self, topic: str) -> int:
        """``topic_id(topic)``, cached."""
        tid = self._topics.get(topic)
        if tid is None:
            if len(self._topics) > 4096:
                self._topics.clear()
            tid = self._topics[topic] = topic_id(topic)
        return tid

    def encode_body(self, packet: PhasePacket) -> bytearray:
        """The msgspec body alone, in the codec's scratch buffer (reused by the next call).

        This is what a ring publisher hands to ``ring_offer_packet``.
        """
        try:
            self._enc.encode_into(packet, self.scratch)
        except (TypeError, OverflowError) as exc:
            raise CodecError(f"cannot encode packet on topic {packet.topic!r}: {exc}") from exc
        return self.scratch

    def encode(self, packet: PhasePacket) -> tuple[bytes, int]:
        """The whole packet record (header, deps, body) as ``bytes``, and its record type id.

        Raises
        ------
        CodecError
            The payload cannot be encoded, or a field is out of range.
        """
        body = self.encode_body(packet)
        out = np.empty(PACKET_HEADER_BYTES + 8 * len(packet.deps) + len(body), dtype=np.uint8)
        n = _pk.build_packet_record(body, out)
        if n < 0:
            raise CodecError(_parse_error(n, packet.topic))
        return out[:n].tobytes(), PACKET_TYPE | len(packet.deps)

    def decode(self, view: memoryview | bytes, type_id: int) -> PhasePacket:
        """Decode a packet record (as handed out by a ring reader).

        Raises
        ------
        CodecError
            The record is not a valid packet; nothing else is affected.
        """
        if type_id & PACKET_TYPE_MASK != PACKET_TYPE:
            raise CodecError(f"record type {type_id:#x} is not a packet")
        body_off = PACKET_HEADER_BYTES + 8 * (type_id & 0xFFFF)
        if len(view) <= body_off:
            raise CodecError(f"packet record of {len(view)} bytes is shorter than its header ({body_off})")
        try:
            return self._dec.decode(view[body_off:])
        except (msgspec.DecodeError, ValueError, TypeError, struct.error) as exc:
            raise CodecError(f"malformed packet body: {exc}") from exc

    def decode_verified(self, view: memoryview | bytes, type_id: int) -> PhasePacket:
        """``decode`` plus a check that the fixed header agrees with the body (tools, dead-letter triage)."""
        header = read_header(view)
        if header.magic != PACKET_MAGIC or header.source != header.source & 0xFFFFFFFF:
            raise CodecError(f"bad packet magic {header.magic:#x}")
        packet = self.decode(view, type_id)
        body_off = PACKET_HEADER_BYTES + 8 * header.ndeps
        if (
            header.packet_id != packet.id
            or header.ndeps != len(packet.deps)
            or header.body_len != len(view) - body_off
            or header.topic_id != self.topic_id(packet.topic)
        ):
            raise CodecError(f"packet header disagrees with its body (id {header.packet_id} vs {packet.id})")
        return packet


def _parse_error(code: int, topic: str) -> str:
    if code == _pk.PARSE_RANGE:
        return (
            f"packet on topic {topic!r} has a field out of range "
            f"(priority and flags 0..255, source 0..2**32-1, at most {MAX_DEPS} deps, blob >= 0, ids/targets within 64 bits)"
        )
    return f"packet on topic {topic!r} is not a well-formed PhasePacket body"


def read_header(view: memoryview | bytes) -> PacketHeader:
    """Decode the fixed header of a packet record."""
    if len(view) < PACKET_HEADER_BYTES:
        raise CodecError(f"record of {len(view)} bytes is shorter than a packet header")
    h = np.frombuffer(view, dtype=PACKET_HEADER_DTYPE, count=1)[0]
    return PacketHeader(*(int(h[name]) for name in PACKET_HEADER_DTYPE.names))

