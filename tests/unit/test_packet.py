"""PhasePacket codec and packet endpoints: round trips, header/body agreement, refusals, malformed records."""

from __future__ import annotations

import math

import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fabric.channel import MalformedRecord, PacketReader, PacketWriter
from fabric.errors import ClaimPendingError, ClosedResourceError, CodecError, RecordTooLargeError
from fabric.packet import NDARRAY_EXT, PacketCodec, PhasePacket, read_header, topic_id
from fabric.ring import BACK_PRESSURED, NOT_CONNECTED, Ring, RingConfig
from shm_layouts.packet import PACKET_HEADER_BYTES, PACKET_MAGIC, PACKET_TYPE

U64 = 2**64 - 1
I64_MIN, I64_MAX = -(2**63), 2**63 - 1

# --- strategies --------------------------------------------------------------------------------

DTYPES = [
    np.dtype(np.uint8),
    np.dtype(np.int16),
    np.dtype(np.int32),
    np.dtype(np.int64),
    np.dtype(np.uint64),
    np.dtype(np.float16),
    np.dtype(np.float32),
    np.dtype(np.float64),
    np.dtype(np.complex128),
    np.dtype(np.bool_),
    np.dtype(">i4"),
    np.dtype(">f8"),
]
arrays = hnp.arrays(
    dtype=st.sampled_from(DTYPES),
    shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=4),
)  # 0-d arrays have their own test (test_zero_dimensional_arrays_keep_their_shape)
# Non-contiguous views travel too (encoded in C order).
arrays = arrays | arrays.filter(lambda a: a.ndim >= 1).map(lambda a: a[::2]) | arrays.map(lambda a: a.T)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(I64_MIN, U64)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=40)
)
payloads = st.recursive(
    scalars | arrays,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=8,
)
topics = st.text(max_size=30)


def packets(deps=st.just(())):
    return st.builds(
        PhasePacket,
        id=st.integers(0, U64),
        hlc=st.integers(I64_MIN, I64_MAX),
        source=st.integers(0, 2**32 - 1),
        targets=st.integers(0, U64),
        priority=st.integers(0, 255),
        deadline_ns=st.integers(I64_MIN, I64_MAX),
        blob=st.integers(0, I64_MAX),
        flags=st.integers(0, 255),
        topic=topics,
        deps=deps,
        payload=payloads,
    )


deps_lists = st.lists(st.integers(0, U64) | st.integers(0, 200), max_size=8).map(tuple)

# --- comparison ----------------------------------------------------------------------------------


def assert_same(sent, got, path="payload"):
    """Decoded payloads must equal what was sent (numpy arrays bit for bit, as new owned arrays)."""
    if isinstance(sent, np.ndarray):
        assert isinstance(got, np.ndarray), path
        assert got.dtype == sent.dtype and got.shape == sent.shape, path
        assert got.tobytes() == np.ascontiguousarray(sent).tobytes(), path
        assert got.flags.writeable and got.flags.c_contiguous, path
        assert got.base is None, f"{path}: a decoded array must own its memory"
    elif isinstance(sent, float):
        assert type(got) is float, path
        assert (math.isnan(sent) and math.isnan(got)) or (sent == got and math.copysign(1, sent) == math.copysign(1, got)), path
    elif isinstance(sent, (list, tuple)):
        assert isinstance(got, list) and len(got) == len(sent), path
        for i, (a, b) in enumerate(zip(sent, got)):
            assert_same(a, b, f"{path}[{i}]")
    elif isinstance(sent, dict):
        assert isinstance(got, dict) and list(got) == list(sent), path
        for k in sent:
            assert_same(sent[k], got[k], f"{path}[{k!r}]")
    else:
        assert type(got) is type(sent) and got == sent, path


def assert_same_packet(sent: PhasePacket, got: PhasePacket) -> None:
    for name in ("id", "hlc", "source", "targets", "priority", "deadline_ns", "blob", "flags", "topic"):
        assert getattr(got, name) == getattr(sent, name), name
    assert tuple(got.deps) == tuple(sent.deps)
    assert_same(sent.payload, got.payload)


def assert_header_agrees(record: bytes, type_id: int, pkt: PhasePacket) -> None:
    ndeps = len(pkt.deps)
    assert type_id == PACKET_TYPE | ndeps
    h = read_header(record)
    assert h.packet_id == pkt.id
    assert h.hlc == pkt.hlc
    assert h.deadline_ns == pkt.deadline_ns
    assert h.target_mask == pkt.targets
    assert h.topic_id == topic_id(pkt.topic)
    assert h.source == pkt.source
    assert h.priority == pkt.priority
    assert h.flags == pkt.flags
    assert h.blob == pkt.blob
    assert h.ndeps == ndeps
    assert h.magic == PACKET_MAGIC
    body_off = PACKET_HEADER_BYTES + 8 * ndeps
    assert h.body_len == len(record) - body_off
    deps = np.frombuffer(record, dtype="<u8", count=ndeps, offset=PACKET_HEADER_BYTES)
    assert [int(d) for d in deps] == list(pkt.deps)


# --- the codec -------------------------------------------------------------------------------------

RT_SETTINGS = settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])


class TestCodecRoundTrip:
    @RT_SETTINGS
    @given(pkt=packets())
    def test_encode_decode_round_trip(self, pkt):
        codec = PacketCodec()
        record, type_id = codec.encode(pkt)
        assert type_id == PACKET_TYPE
        assert_same_packet(pkt, codec.decode(record, type_id))
        assert_same_packet(pkt, codec.decode_verified(record, type_id))
        assert_same_packet(pkt, codec.decode(memoryview(record), type_id))
        assert_header_agrees(record, type_id, pkt)

    @pytest.mark.parametrize("deps", [(1, 2, 3), tuple(range(20)), (U64, 0, 7)])
    def test_encode_accepts_packets_with_dependencies(self, deps):
        """``PacketCodec.encode`` must handle any number of deps (each takes 8 header bytes)."""
        codec = PacketCodec()
        pkt = PhasePacket(topic="t", deps=deps)
        record, type_id = codec.encode(pkt)
        assert_header_agrees(record, type_id, pkt)
        assert_same_packet(pkt, codec.decode_verified(record, type_id))

    @pytest.mark.parametrize("value", [np.array(7, dtype=np.uint8), np.array(-1.5), np.array(True)])
    def test_zero_dimensional_arrays_keep_their_shape(self, value):
        codec = PacketCodec()
        got = codec.decode(*codec.encode(PhasePacket(topic="t", payload=value))).payload
        assert_same(value, got)

    def test_numpy_scalars_travel_as_python_scalars(self):
        codec = PacketCodec()
        pkt = PhasePacket(topic="t", payload=[np.float32(1.5), np.int64(-3), np.bool_(True)])
        got = codec.decode(*codec.encode(pkt)).payload
        assert got == [1.5, -3, True] and [type(x) for x in got] == [float, int, bool]

    def test_a_decoded_array_never_aliases_the_record(self):
        codec = PacketCodec()
        record = bytearray(codec.encode(PhasePacket(topic="t", payload=np.arange(4, dtype=np.int64)))[0])
        arr = codec.decode(record, PACKET_TYPE).payload
        record[-8:] = b"\xff" * 8
        assert list(arr) == [0, 1, 2, 3]

    def test_topic_id_is_fnv1a_64(self):
        assert topic_id("") == 0xCBF29CE484222325
        assert topic_id("a") == 0xAF63DC4C8601EC8C
        assert topic_id("foobar") == 0x85944171F73967E8
        assert PacketCodec().topic_id("foobar") == topic_id("foobar")


class TestFieldRanges:
    @pytest.mark.parametrize(
        "fields",
        [
            dict(priority=256),
            dict(priority=-1),
            dict(source=-1),
            dict(source=2**32),
            dict(id=2**64),
            dict(id=I64_MIN - 1),
            dict(hlc=2**64),
            dict(blob=-1),
            dict(blob=2**63),
            dict(flags=256),
            dict(flags=-1),
            dict(deps=(2**64,)),
            dict(topic=5),
            dict(payload=object()),
            dict(payload=complex(1, 2)),
            dict(payload={"k": {1, 2, object()}}),
            dict(payload=np.array([object()], dtype=object)),
        ],
        ids=lambda f: ",".join(f"{k}={v!r}"[:30] for k, v in f.items()),
    )
    def test_out_of_range_or_unencodable_fields_are_codec_errors(self, fields, prefix):
        pkt = PhasePacket(topic="t")
        for name, value in fields.items():
            setattr(pkt, name, value)
        with pytest.raises(CodecError):
            PacketCodec().encode(pkt)
        with Ring.create(f"{prefix}-rng", RingConfig(capacity_bytes=1 << 16)) as ring:
            ring.reader()
            with PacketWriter(ring.writer()) as writer:
                with pytest.raises(CodecError):
                    writer.offer(pkt)
                assert ring.statistics().tail == 0  # nothing was written

    def test_codec_error_is_a_value_error(self):
        with pytest.raises(ValueError):
            PacketCodec().encode(PhasePacket(topic="t", priority=999))

    def test_too_many_deps_are_refused(self):
        with pytest.raises(CodecError):
            PacketCodec().encode(PhasePacket(topic="t", deps=tuple([0]) * 65536))

    @pytest.mark.parametrize(
        "fields",
        [dict(id=-1), dict(hlc=2**63), dict(deadline_ns=2**63), dict(deadline_ns=U64)],
        ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items()),
    )
    def test_an_accepted_packet_always_has_a_header_that_agrees_with_its_body(self, fields):
        """Either the encoder refuses a value the fixed header cannot hold, or the header equals the body.

        (The scheduler orders and expires packets on the header alone.)
        """
        codec = PacketCodec()
        pkt = PhasePacket(topic="t", **fields)
        try:
            record, type_id = codec.encode(pkt)
        except CodecError:
            return
        assert_header_agrees(record, type_id, pkt)
        assert_same_packet(pkt, codec.decode_verified(record, type_id))


class TestCorruptRecords:
    def _record(self, **fields):
        return PacketCodec().encode(PhasePacket(topic="t", payload=b"payload", **fields))

    def test_non_packet_type_and_short_records(self):
        codec = PacketCodec()
        record, type_id = self._record()
        with pytest.raises(CodecError, match="not a packet"):
            codec.decode(record, 0)
        with pytest.raises(CodecError):
            codec.decode(record[:PACKET_HEADER_BYTES], type_id)
        with pytest.raises(CodecError):
            codec.decode(record[:10], type_id)
        with pytest.raises(CodecError):
            read_header(record[:PACKET_HEADER_BYTES - 1])

    def test_decode_verified_catches_a_header_that_disagrees(self):
        codec = PacketCodec()
        record, type_id = self._record(id=5)
        bad = bytearray(record)
        bad[0] = 6  # header id 6, body id 5
        with pytest.raises(CodecError, match="disagrees"):
            codec.decode_verified(bytes(bad), type_id)
        bad = bytearray(record)
        bad[52] ^= 0xFF  # magic
        with pytest.raises(CodecError, match="magic"):
            codec.decode_verified(bytes(bad), type_id)
        assert codec.decode(bytes(bad), type_id).id == 5  # plain decode reads only the body

    @settings(max_examples=300)
    @given(pkt=packets(), data=st.data())
    def test_corrupted_bytes_decode_or_raise_codec_error_only(self, pkt, data):
        codec = PacketCodec()
        record, type_id = codec.encode(pkt)
        body = bytearray(record[PACKET_HEADER_BYTES:])
        how = data.draw(st.sampled_from(["flip", "truncate", "random", "splice"]))
        if how == "flip":
            for _ in range(data.draw(st.integers(1, 4))):
                i = data.draw(st.integers(0, len(body) - 1))
                body[i] = data.draw(st.integers(0, 255))
        elif how == "truncate":
            body = body[: data.draw(st.integers(0, len(body) - 1))]
        elif how == "random":
            body = bytearray(data.draw(st.binary(min_size=1, max_size=200)))
        else:
            i = data.draw(st.integers(0, len(body)))
            body[i:i] = data.draw(st.binary(min_size=1, max_size=8))
        corrupted = record[:PACKET_HEADER_BYTES] + bytes(body)
        try:
            got = codec.decode(corrupted, type_id)
        except CodecError:
            return
        assert isinstance(got, PhasePacket)

    @pytest.mark.parametrize(
        "ext",
        [
            msgspec.msgpack.Ext(NDARRAY_EXT, b""),  # no dtype length byte at all
            msgspec.msgpack.Ext(NDARRAY_EXT, b"\x03<f8\x05"),  # 5 dims but no shape
            msgspec.msgpack.Ext(NDARRAY_EXT, b"\x03<f8\x01" + (3).to_bytes(8, "little") + b"\0" * 8),  # short data
            msgspec.msgpack.Ext(NDARRAY_EXT, b"\x09<f8"),  # dtype string runs past the end
            msgspec.msgpack.Ext(NDARRAY_EXT, b"\x03zz9\x00"),  # not a dtype
            msgspec.msgpack.Ext(7, b"ab"),  # unknown extension
        ],
        ids=["empty", "no-shape", "short-data", "long-dtype", "bad-dtype", "unknown-ext"],
    )
    def test_malformed_ndarray_extensions_are_codec_errors(self, ext):
        codec = PacketCodec()
        record, type_id = codec.encode(PhasePacket(topic="t", payload=ext))
        with pytest.raises(CodecError):
            codec.decode(record, type_id)


# --- endpoints on a ring ---------------------------------------------------------------------------


@pytest.fixture
def ring(prefix):
    with Ring.create(f"{prefix}-pk", RingConfig(capacity_bytes=1 << 18)) as r:
        yield r


def _raw_records(reader) -> list[tuple[bytes, int]]:
    out: list[tuple[bytes, int]] = []
    while reader.poll(lambda v, t: out.append((bytes(v), t))):
        pass
    return out


class TestPacketEndpoints:
    def test_packets_with_deps_through_a_ring_header_agrees_with_body(self, ring):
        raw = ring.reader()
        preader = PacketReader(ring.reader())
        writer = PacketWriter(ring.writer())
        codec = PacketCodec()

        @settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
        @given(pkt=packets(deps_lists))
        def check(pkt):
            assert writer.offer(pkt) >= 0
            ((record, type_id),) = _raw_records(raw)
            assert_header_agrees(record, type_id, pkt)
            assert_same_packet(pkt, codec.decode_verified(record, type_id))
            got = preader.receive(timeout_ns=1_000_000_000)
            assert_same_packet(pkt, got)
            assert preader.receive_nowait() is None
            assert preader.malformed == 0

        check()

    @pytest.mark.parametrize("source", ["monotonic", "simulated"])
    def test_the_reader_merges_every_received_stamp_into_its_clock(self, ring, source):
        from fabric.hlc import HybridLogicalClock, make_stamp
        from fabric.timesource import MonotonicTimeSource, SimulatedTimeSource

        now = MonotonicTimeSource().now_ns()
        clock = HybridLogicalClock(time_source=MonotonicTimeSource() if source == "monotonic" else SimulatedTimeSource(now))
        preader = PacketReader(ring.reader(), hlc=clock)
        writer = PacketWriter(ring.writer())
        ahead = [make_stamp(now + 100_000_000 + i * 65536, 0) for i in range(4)]  # ahead of the reader's clock
        for i, stamp in enumerate(ahead):
            writer.send(PhasePacket(id=i, hlc=stamp, topic="t", payload=i), timeout_ns=1_000_000_000)
        assert preader.receive(timeout_ns=1_000_000_000).hlc == ahead[0]
        assert clock.last_stamp == ahead[0] + 1  # receive: one merge per packet
        assert [p.hlc for p in preader.receive_batch(10)] == ahead[1:]
        assert clock.last_stamp == ahead[-1] + 1  # a batch: one merge of its largest stamp
        far = make_stamp(now + 10**12, 0)  # beyond max_offset_ns: rejected, the clock stays
        writer.send(PhasePacket(id=9, hlc=far, topic="t", payload=9), timeout_ns=1_000_000_000)
        assert preader.receive(timeout_ns=1_000_000_000).hlc == far
        assert clock.last_stamp == ahead[-1] + 1
        stats = clock.statistics()
        assert (stats.updates, stats.rejections) == (2, 1)
        assert clock.causal_dependencies(clock.last_stamp) == [ahead[0], ahead[-1]]

    def test_every_receive_flavour_delivers_in_order(self, ring):
        preader = PacketReader(ring.reader())
        writer = PacketWriter(ring.writer())
        for i in range(10):
            writer.send(PhasePacket(id=i, topic="t", payload=i), timeout_ns=1_000_000_000)
        got = [preader.receive(timeout_ns=1_000_000_000).id]
        got.append(preader.receive_nowait().id)
        got += [p.id for p in preader.receive_batch(3)]
        preader.poll(lambda p: got.append(p.id), limit=2)
        for p in preader:
            got.append(p.id)
            if p.id == 9:
                break
        assert got == list(range(10))
        with pytest.raises(TimeoutError):
            preader.receive(timeout_ns=10_000_000)

    def test_a_handler_error_loses_no_later_packet(self, ring):
        preader = PacketReader(ring.reader())
        writer = PacketWriter(ring.writer())
        for i in range(5):
            writer.offer(PhasePacket(id=i, topic="t"))
        seen = []

        def handler(p):
            seen.append(p.id)
            if p.id == 1:
                raise RuntimeError("handler failed")

        with pytest.raises(RuntimeError):
            preader.poll(handler)
        assert seen == [0, 1]
        assert [p.id for p in preader.receive_batch(10)] == [2, 3, 4]

    def test_writer_refusals(self, ring, prefix):
        writer = PacketWriter(ring.writer())
        assert writer.offer(PhasePacket(topic="t")) == NOT_CONNECTED
        preader = PacketReader(ring.reader())
        with pytest.raises(RecordTooLargeError, match="record limit"):
            writer.offer(PhasePacket(topic="t", payload=bytes(ring.max_record_bytes)))
        n = 0
        for size in (1000, 0):
            while writer.offer(PhasePacket(id=n, topic="t", payload=bytes(size))) >= 0:
                n += 1
        assert writer.offer(PhasePacket(id=n, topic="t")) == BACK_PRESSURED
        with pytest.raises(TimeoutError):
            writer.send(PhasePacket(topic="t"), timeout_ns=10_000_000)
        got = []
        while batch := preader.receive_batch(256):
            got += [p.id for p in batch]
        assert got == list(range(n))
        writer.close()
        with pytest.raises(ClosedResourceError):
            writer.offer(PhasePacket(topic="t"))

    def test_an_open_claim_or_a_closed_ring_writer_stops_a_bound_offer(self, ring):
        """``offer`` taken once (``offer = writer.offer``, as hot loops do) still sees its ring
        writer's claim and close."""
        writer = PacketWriter(ring.writer())
        preader = PacketReader(ring.reader())
        offer = writer.offer
        assert offer(PhasePacket(id=1, topic="t")) >= 0
        claim = writer.writer.try_claim(8)
        with pytest.raises(ClaimPendingError):
            offer(PhasePacket(id=2, topic="t"))
        claim.commit()
        assert offer(PhasePacket(id=3, topic="t")) >= 0
        writer.writer.close()
        with pytest.raises(ClosedResourceError):
            offer(PhasePacket(id=4, topic="t"))
        assert [p.id for p in preader.receive_batch(10)] == [1, 3]


def _garbage_records():
    """(bytes, type id) of records a PacketReader must dead-letter, one of each kind."""
    codec = PacketCodec()
    good, gtype = codec.encode(PhasePacket(id=999, topic="t", payload=b"x" * 40))
    corrupt_body = good[:PACKET_HEADER_BYTES] + b"\xc1" * (len(good) - PACKET_HEADER_BYTES)  # 0xc1: never valid
    bad_magic = bytearray(good)
    bad_magic[52] ^= 0x5A
    wrong_len = bytearray(good)
    wrong_len[48] ^= 0x01  # body_len disagrees with the record length
    three_fields = msgspec.msgpack.encode([1, 2, 3])
    wrong_shape = bytearray(good[:PACKET_HEADER_BYTES] + three_fields)
    wrong_shape[48:52] = len(three_fields).to_bytes(4, "little")
    return [
        (b"not a packet at all", 0),  # a non-packet type id
        (b"\x00" * 80, 5),
        (b"short", PACKET_TYPE),  # packet type, shorter than a header
        (corrupt_body, gtype),  # packet type, valid header, corrupted body
        (bytes(bad_magic), gtype),
        (bytes(wrong_len), gtype),
        (bytes(wrong_shape), gtype),  # valid msgpack, not a PhasePacket
        (good[:-5], gtype),  # truncated
        (good, gtype | 3),  # claims 3 deps it does not have
    ]


class TestMalformedRecords:
    def _publish(self, ring, bad_records):
        raw = ring.writer()
        writer = PacketWriter(ring.writer())
        sent = []
        seq = 0
        for data, type_id in bad_records:
            for _ in range(2):
                writer.offer(PhasePacket(id=seq, topic="ok", payload=[seq, "x" * (seq % 7)]))
                sent.append(seq)
                seq += 1
            assert raw.offer(data, type_id) >= 0
        writer.offer(PhasePacket(id=seq, topic="ok", payload=[seq, ""]))
        sent.append(seq)
        return sent

    @pytest.mark.parametrize("how", ["poll", "receive_batch", "receive", "iterate"])
    def test_garbage_is_dead_lettered_and_every_later_packet_delivered(self, ring, how):
        bad = _garbage_records()
        dead: list[MalformedRecord] = []
        preader = PacketReader(ring.reader(), on_malformed=dead.append)
        sent = self._publish(ring, bad)
        got: list[int] = []
        if how == "poll":
            while preader.poll(lambda p: got.append(p.id), limit=3):
                pass
        elif how == "receive_batch":
            while batch := preader.receive_batch(4):
                got += [p.id for p in batch]
        elif how == "receive":
            while len(got) < len(sent):
                got.append(preader.receive(timeout_ns=1_000_000_000).id)
        else:
            for p in preader:
                got.append(p.id)
                if len(got) == len(sent):
                    break
        assert got == sent
        assert preader.malformed == len(bad) == len(dead)
        for rec in dead:
            assert isinstance(rec.error, CodecError)
            assert isinstance(rec.data, bytes) and rec.data
        assert {rec.data for rec in dead} >= {b"not a packet at all", b"short"}

    def test_without_a_callback_malformed_records_are_only_counted(self, ring):
        preader = PacketReader(ring.reader())
        sent = self._publish(ring, _garbage_records()[:3])
        assert [p.id for p in preader.receive_batch(100)] == sent
        assert preader.malformed == 3

    @pytest.mark.parametrize(
        "ext",
        [msgspec.msgpack.Ext(NDARRAY_EXT, b""), msgspec.msgpack.Ext(NDARRAY_EXT, b"\x03<f8\x05")],
        ids=["empty-ndarray-ext", "ndarray-ext-without-shape"],
    )
    def test_a_packet_with_a_malformed_array_is_dead_lettered(self, ring, ext):
        """A well-framed packet whose array extension is broken must not kill the reader or its batch."""
        dead: list[MalformedRecord] = []
        preader = PacketReader(ring.reader(), on_malformed=dead.append)
        writer = PacketWriter(ring.writer())
        writer.offer(PhasePacket(id=1, topic="t"))
        writer.offer(PhasePacket(id=2, topic="t", payload=ext))
        writer.offer(PhasePacket(id=3, topic="t"))
        got = [p.id for p in preader.receive_batch(10)]
        assert got == [1, 3]
        assert preader.malformed == 1 and len(dead) == 1


class TestObjectAddress:
    """The packet offer passes its scratch buffer by address (``fabric._pyobject``)."""

    def test_the_layout_probe_agrees_with_the_buffer_protocol_here(self):
        import numba

        from fabric import _pyobject

        assert _pyobject.LAYOUT_OK  # CPython 3.11 on x86-64: the layout this project runs on

        @numba.njit
        def span(addr, kind):
            return _pyobject.object_span(addr, kind)

        for obj, kind in ((b"abc" * 20, _pyobject.BYTES_KIND), (bytearray(b"xyz" * 30), _pyobject.BYTEARRAY_KIND)):
            data, n = span(id(obj), kind)
            assert n == len(obj)
            assert data == np.frombuffer(obj, dtype=np.uint8).ctypes.data
        grown = bytearray(8)
        before = span(id(grown), _pyobject.BYTEARRAY_KIND)
        grown.extend(bytes(1 << 16))  # reallocates: the kernel reads the new pointer and size
        data, n = span(id(grown), _pyobject.BYTEARRAY_KIND)
        assert n == len(grown) and data == np.frombuffer(grown, dtype=np.uint8).ctypes.data
        assert before[1] == 8

    def test_without_the_layout_the_writer_uses_the_buffer_path(self, ring, monkeypatch):
        from fabric import _pyobject

        monkeypatch.setattr(_pyobject, "LAYOUT_OK", False)
        writer = PacketWriter(ring.writer())
        reader = PacketReader(ring.reader())
        assert writer.offer.__func__ is PacketWriter._offer_checked
        for i in range(3):
            assert writer.offer(PhasePacket(id=i, topic="t", payload=b"p" * i)) >= 0
        assert [(p.id, p.payload) for p in reader.receive_batch(10)] == [(i, b"p" * i) for i in range(3)]


def test_on_blob_sees_every_blob_reference_handed_out(ring):
    """Both the single-packet and the batch path report blobs (workers drop their holds there)."""
    seen: list[int] = []
    writer = PacketWriter(ring.writer())
    reader = PacketReader(ring.reader(), on_blob=seen.append)
    for i, blob in enumerate([0, 11, 0, 12, 13]):
        assert writer.offer(PhasePacket(id=i, topic="t", blob=blob)) >= 0
    assert reader.receive(timeout_ns=1_000_000_000).id == 0
    assert reader.receive(timeout_ns=1_000_000_000).id == 1
    assert [p.id for p in reader.receive_batch(10)] == [2, 3, 4]
    assert seen == [11, 12, 13]
