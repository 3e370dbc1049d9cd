"""PhasePacket endpoints over a ring: ``PacketWriter`` and ``PacketReader``.

A ``PacketWriter`` encodes a packet's body with msgspec (reused encoder) and
hands it to one compiled call that parses the routing fields, claims, writes
``[header][deps][body]`` and commits (``fabric._packet_kernels``). A
``PacketReader`` polls descriptors in batches and decodes each body straight
from the ring's memory.

Malformed records never kill a reader: ``poll`` and ``receive`` hand them to the
reader's ``on_malformed`` callback (the fabric wires it to a dead-letter ring)
and count them in ``malformed``; everything after them is still delivered.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import msgspec

from fabric import _packet_kernels as _pk
from fabric import _pyobject
from fabric import _ring_builtins
from fabric import _ring_kernels as K
from fabric.errors import ClosedResourceError, CodecError, RecordTooLargeError
from fabric.packet import PacketCodec, PhasePacket, _parse_error
from fabric.ring import RingReader, RingWriter, _entry_point, offer_with_wait
from shm_layouts.packet import PACKET_HEADER_BYTES

__all__ = ["PacketWriter", "PacketReader", "MalformedRecord"]

_WAKE = K.WAKE_FLAG
_POS = _WAKE - 1


class MalformedRecord(Exception):
    """Carried to ``on_malformed``: the record's bytes (a copy), its type id and the codec error."""

    def __init__(self, data: bytes, type_id: int, error: CodecError) -> None:
        super().__init__(str(error))
        self.data = data
        self.type_id = type_id
        self.error = error


class PacketWriter:
    """Publishes PhasePackets into a ring through a ``RingWriter`` (takes ownership of it)."""

    def __init__(self, writer: RingWriter, codec: PacketCodec | None = None) -> None:
        self.writer = writer
        self.codec = codec or PacketCodec()
        self._entry = _pk.packet_entry_points()[bytearray]
        # The scratch buffer is always the same object: its address is computed once, and the
        # kernel reads its current size and data pointer from it (fabric._pyobject).
        self._object_entry = _entry_point(_pk.ring_offer_packet_object) if _pyobject.LAYOUT_OK else None
        self._encode_into = self.codec._enc.encode_into
        self._scratch = self.codec.scratch
        self._base = writer._base
        self._slot = writer.slot
        self._wake = writer._ring._wake_doorbell
        self.offer = self._fast_offer()

    def _fast_offer(self):
        """``offer`` as a closure over its state, the writer's checks folded into one gate cell
        (~40 ns less a call than the method, measured A/B), the scratch buffer passed to the
        kernel by address (~70 ns less than a buffer argument). Errors, refusals and wakes take
        ``_offer_result``; a closed writer or an open claim takes the checked method, which
        raises. Where the object layout is unknown, ``offer`` is the checked method. Where
        CPython's layout is known, this closure is the fallback of a builtin doing the same."""
        if self._object_entry is None:
            return self._offer_checked
        gate = self.writer._gate
        encode_into = self._encode_into
        buf = self._scratch
        base = self._base
        slot = self._slot
        wake_limit = _WAKE
        result = self._offer_result
        entry = self._object_entry
        buf_addr = id(buf)  # `buf` lives as long as this closure
        kind = _pyobject.BYTEARRAY_KIND

        def offer(packet: PhasePacket) -> int:
            if gate[0]:
                try:
                    encode_into(packet, buf)
                except (TypeError, OverflowError) as exc:
                    raise CodecError(f"cannot encode packet on topic {packet.topic!r}: {exc}") from exc
                r = entry(base, slot, buf_addr, kind)
                if r >= 0 and r < wake_limit:
                    return r
                return result(r, packet)
            return PacketWriter.offer(self, packet)

        offer.__doc__ = PacketWriter.offer.__doc__
        if _ring_builtins.AVAILABLE:
            # The same, with no Python frame: encode and offer from one compiled function,
            # this closure taking every case the kernel does not (fabric._ring_builtins).
            return _ring_builtins.packet_offer_builtin(self.writer._entry_state, offer, encode_into, buf, result)
        return offer

    def offer(self, packet: PhasePacket) -> int:
        """Publish at once; returns the position, ``BACK_PRESSURED`` or ``NOT_CONNECTED``.

        Raises
        ------
        CodecError
            The packet cannot be encoded or a field is out of range (nothing is written).
        RecordTooLargeError
            The encoded packet exceeds the ring's record limit.
        """
        return self._offer_checked(packet)

    def _offer_checked(self, packet: PhasePacket) -> int:
        w = self.writer
        if w._closed:
            raise ClosedResourceError("writer is closed")
        if w._claim is not None:
            w._check_no_claim()
        buf = self._scratch
        try:
            self._encode_into(packet, buf)
        except (TypeError, OverflowError) as exc:
            raise CodecError(f"cannot encode packet on topic {packet.topic!r}: {exc}") from exc
        r = self._entry(self._base, self._slot, buf)
        if r >= 0 and r < _WAKE:
            return r
        return self._offer_result(r, packet)

    def _offer_result(self, r: int, packet: PhasePacket) -> int:
        """What the packet kernel's result means: wake parked readers, or raise on bad input."""
        if r >= 0:
            self._wake()
            return r & _POS
        if r <= _pk.PARSE_MALFORMED:
            raise CodecError(_parse_error(r, packet.topic))
        if r == K.TOO_LARGE:
            buf = self._scratch
            raise RecordTooLargeError(
                f"packet of {len(buf) + PACKET_HEADER_BYTES + 8 * len(packet.deps)} bytes exceeds the ring's "
                f"record limit ({self.writer._max}); send large arrays through the blob arena"
            )
        return r

    def send(self, packet: PhasePacket, *, timeout_ns: int = 5_000_000_000) -> int:
        """Publish, waiting up to ``timeout_ns`` for room; raises ``TimeoutError`` after."""
        r = self.offer(packet)  # the common case: room now, no closure, no wait loop
        if r >= 0:
            return r
        return offer_with_wait(lambda: self.offer(packet), self.writer._ring, self.writer.wait, timeout_ns)

    def close(self) -> None:
        self.writer.close()

    def __enter__(self) -> "PacketWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PacketReader:
    """Receives PhasePackets from a ring through a ``RingReader`` (takes ownership of it)."""

    def __init__(
        self,
        reader: RingReader,
        codec: PacketCodec | None = None,
        *,
        on_malformed: Callable[[MalformedRecord], None] | None = None,
        hlc=None,
        on_blob: Callable[[int], None] | None = None,
    ) -> None:
        self.reader = reader
        # A HybridLogicalClock (or SharedHybridClock) merged with every received stamp (receive
        # rule) through its lean ``merge``, or None.
        self.hlc = hlc
        self.codec = codec or PacketCodec()
        self.on_malformed = on_malformed
        # Called with the blob reference of every packet handed out that carries one: readers
        # that never look at blobs (workers) drop their inbox's hold there, or the arena fills.
        self.on_blob = on_blob
        self.malformed = 0
        self._decode = self.codec._dec.decode
        self._kernel = _entry_point(_pk.ring_poll_packets)
        self._pending: list[PhasePacket] = []
        self._pending_at = 0

    def _decode_batch(self, limit: int) -> list[PhasePacket]:
        r = self.reader
        n = r._poll_descs(limit, self._kernel)
        if n == 0:
            return []
        d = r._desc[: 2 + 2 * n].tolist()
        r.position = d[0]
        mv = r._mv
        dec = self._decode
        try:
            starts = d[2::2]
            ends = d[3::2]
            try:
                out = [dec(mv[a:b]) for a, b in zip(starts, ends)]
            except (msgspec.DecodeError, ValueError, TypeError, IndexError):
                out = self._decode_each(mv, starts, ends)  # something in the batch is bad: sort it out
        finally:
            r._release_later(d[0])
        if self.hlc is not None and out:
            self.hlc.merge(max(p.hlc for p in out))  # one merge per batch: same clock, same bound
        if self.on_blob is not None:
            for p in out:
                if p.blob:
                    self.on_blob(p.blob)
        return out

    def _decode_each(self, mv: memoryview, starts: list, ends: list) -> list[PhasePacket]:
        out = []
        dec = self._decode
        for a, b in zip(starts, ends):
            if a < 0:
                off = -a - 1
                self._malformed(bytes(mv[off : off + (b & 0xFFFFFFFF)]), b >> 32, CodecError("not a valid packet record"))
                continue
            try:
                out.append(dec(mv[a:b]))
            except (msgspec.DecodeError, ValueError, TypeError) as exc:
                self._malformed(bytes(mv[a:b]), 0, exc)
        return out

    def _malformed(self, data: bytes, type_id: int, exc: Exception) -> None:
        self.malformed += 1
        err = exc if isinstance(exc, CodecError) else CodecError(f"malformed packet body: {exc}")
        if self.on_malformed is not None:
            self.on_malformed(MalformedRecord(data, type_id, err))

    def poll(self, handler: Callable[[PhasePacket], None], limit: int = 256) -> int:
        """Decode and hand up to ``limit`` packets to ``handler``; returns how many.

        If the handler raises, the packet it raised on is consumed and the ones after it
        are kept for the next call: nothing later is lost.
        """
        n = 0
        if self._pending_at >= len(self._pending) and limit > 0:
            self._pending = self._decode_batch(limit)
            self._pending_at = 0
        while self._pending_at < len(self._pending) and n < limit:
            pkt = self._pending[self._pending_at]
            self._pending_at += 1
            handler(pkt)
            n += 1
        return n

    def receive_batch(self, limit: int = 256) -> list[PhasePacket]:
        """Up to ``limit`` decoded packets (possibly none), without waiting."""
        if self._pending_at < len(self._pending):
            out = self._pending[self._pending_at : self._pending_at + limit]
            self._pending_at += len(out)
            return out
        return self._decode_batch(limit)

    def receive_nowait(self) -> PhasePacket | None:
        """One packet if one is there, else None."""
        if self._pending_at >= len(self._pending):
            self._pending = self._decode_batch(self.reader._batch)
            self._pending_at = 0
            if not self._pending:
                return None
        pkt = self._pending[self._pending_at]
        self._pending_at += 1
        return pkt

    def receive(self, *, timeout_ns: int = 5_000_000_000) -> PhasePacket:
        """Wait up to ``timeout_ns`` for one packet; raises ``TimeoutError`` after.

        One compiled call takes the packet (spinning first, as the reader's wait strategy
        says, in compiled code) and the body is decoded straight from the ring.
        """
        if self._pending_at < len(self._pending):
            pkt = self._pending[self._pending_at]
            self._pending_at += 1
            return pkt
        r = self.reader
        kernel = r._take_packet_kernel
        cursor = r._cursor_addr
        spin = timeout_ns > 0
        start, stop = kernel(cursor, spin)
        while True:
            if start == 0:
                start, stop = r._take_waiting(kernel, stop, timeout_ns, spin)
            if start > 0:  # released at the reader's next call
                try:
                    pkt = self._decode(r._mv[start:stop])
                except (msgspec.DecodeError, ValueError, TypeError) as exc:
                    self._malformed(bytes(r._mv[start:stop]), 0, exc)
                else:
                    if self.hlc is not None:
                        self.hlc.merge(pkt.hlc)
                    if pkt.blob and self.on_blob is not None:
                        self.on_blob(pkt.blob)
                    return pkt
            else:
                off = -start - 1
                self._malformed(bytes(r._mv[off : off + (stop & 0xFFFFFFFF)]), stop >> 32, CodecError("not a valid packet record"))
            # A malformed record was consumed: wait for the next packet (a fresh wait).
            spin = False
            start, stop = kernel(cursor, 0)

    def __iter__(self) -> Iterator[PhasePacket]:
        """Packets as they come, blocking (with the wait strategy) between them; ends when closed."""
        while not self.reader._closed:
            pkt = self.receive_nowait()
            if pkt is None:
                self.reader.wait_readable(timeout_ns=100_000_000)
                continue
            yield pkt

    def close(self) -> None:
        self.reader.close()

    def __enter__(self) -> "PacketReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
