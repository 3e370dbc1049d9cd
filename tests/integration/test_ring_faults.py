"""Ring faults with real processes: producers and subscribers SIGKILLed at the worst moments.

Peers are child processes (``tests._ring_peers``) that report on stdout; the test process
owns the ring and usually the reader, with a short ``claim_timeout_ns`` so recovery of a
dead producer's claim happens quickly. Every wait has a deadline.
"""

from __future__ import annotations

import json
import time

import pytest

from fabric._ring_kernels import read_word
from fabric.ring import BACK_PRESSURED, Ring, RingConfig
from fabric.wait import BlockWait
from shm_layouts.record import RECORD_HEADER_BYTES, align_record
from shm_layouts.ring import WAKE_DOORBELL, WAKE_OFFSET
from tests._fabric_procs import spawn_module, stop_all, wait_until

CLAIM_TIMEOUT_NS = 20_000_000
DEAD_CLAIM_TYPE = 9  # the type id the claiming children use


def rec(n: int) -> int:
    return align_record(n + RECORD_HEADER_BYTES)


def _peer(role: str, ring: Ring, **cfg):
    return spawn_module("tests._ring_peers", role, ring.name, json.dumps(cfg))


#: How a test reads: poll + wait_readable, blocking receive, take, or poll alone in a busy
#: loop (recovery must not depend on ever calling a wait).
READ_APIS = ["poll", "receive", "take", "poll_only"]


def _collect(reader, want: int, timeout_s: float, api: str = "poll") -> list[tuple[bytes, int]]:
    """Read until ``want`` records arrived or ``timeout_s`` passed (whatever arrived is returned)."""
    got: list[tuple[bytes, int]] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < want and time.monotonic() < deadline:
        if api == "receive":
            try:
                got.append(reader.receive(timeout_ns=20_000_000))
            except TimeoutError:
                pass
        elif api == "take":
            item = reader.take()
            if item is None:
                reader.wait_readable(timeout_ns=20_000_000)
            else:
                got.append((bytes(item[0]), item[1]))
        elif reader.poll(lambda v, t: got.append((bytes(v), t))) == 0 and api == "poll":
            reader.wait_readable(timeout_ns=20_000_000)
    return got


def _drain(reader) -> list[tuple[bytes, int]]:
    got: list[tuple[bytes, int]] = []
    while reader.poll(lambda v, t: got.append((bytes(v), t))):
        pass
    return got


def _advance_to(writer, reader, target: int) -> None:
    """Offer and read filler records until the ring's tail is exactly ``target``."""
    ring = writer._ring
    tail = ring.statistics().tail
    while tail < target:
        gap = target - tail
        n = min(gap, rec(ring.max_record_bytes)) - RECORD_HEADER_BYTES
        if 0 < gap - rec(n) < RECORD_HEADER_BYTES:
            n -= 16
        assert writer.offer(bytes(max(n, 0)), 1) >= 0
        _drain(reader)
        tail = ring.statistics().tail
    assert tail == target


def _b_records(count: int) -> list[tuple[bytes, int]]:
    return [(b"B" + seq.to_bytes(8, "little"), 2) for seq in range(count)]


class TestDeadProducer:
    @pytest.mark.parametrize("api", READ_APIS)
    @pytest.mark.parametrize("marked", [True, False], ids=["marked", "unmarked"])
    def test_every_reading_api_recovers_a_dead_claim(self, prefix, api, marked):
        """A producer killed after claiming: with its in-progress marker written, or killed
        between moving the tail and writing the marker (``unmarked``: the slot still holds an
        old word, so only the tail shows the claim). Every reading API gets past it."""
        with Ring.create(f"{prefix}-api", RingConfig(capacity_bytes=1 << 16)) as ring:
            reader = ring.reader()
            reader.claim_timeout_ns = CLAIM_TIMEOUT_NS
            writer = ring.writer()
            children = []
            try:
                dying = _peer("claim_and_hang", ring, length=64, unmark=not marked)
                children.append(dying)
                assert int(dying.wait_line("CLAIMED", 30)) == 0
                dying.sigkill()
            finally:
                stop_all(children)
            for seq in range(20):
                writer.send(b"B" + seq.to_bytes(8, "little"), 2, timeout_ns=2_000_000_000)
            got = _collect(reader, 20, timeout_s=10, api=api)
            assert got == _b_records(20), f"{api}: got {len(got)} of 20 records after a dead claim"
            assert ring.statistics().recovered_claims == 1

    @pytest.mark.parametrize("committed", [0, 3])
    @pytest.mark.parametrize("meta", [True, False], ids=["meta", "no-meta"])
    def test_a_batch_producer_killed_mid_span_loses_only_its_uncommitted_records(self, prefix, committed, meta):
        """offer_batch claims a span at once: its committed records are delivered, the rest of
        the span is recovered as padding, and later records flow."""
        with Ring.create(f"{prefix}-span", RingConfig(capacity_bytes=1 << 16)) as ring:
            reader = ring.reader()
            reader.claim_timeout_ns = CLAIM_TIMEOUT_NS
            writer = ring.writer()
            children = []
            try:
                dying = _peer("span_and_hang", ring, length=40, records=8, committed=committed, meta=meta)
                children.append(dying)
                assert int(dying.wait_line("CLAIMED", 30)) == 0
                assert _drain(reader) == [(bytes([i]) * 40, 7) for i in range(committed)]  # the rest waits
                dying.sigkill()
            finally:
                stop_all(children)
            for seq in range(20):
                writer.send(b"B" + seq.to_bytes(8, "little"), 2, timeout_ns=2_000_000_000)
            got = _collect(reader, 20, timeout_s=10)
            assert got == _b_records(20)
            stats = ring.statistics()
            assert stats.recovered_claims == 1
            assert stats.recovered_bytes == (8 - committed) * rec(40)

    def test_claim_of_a_killed_producer_is_recovered_and_later_records_arrive(self, prefix):
        count = 5_000  # 160 KB through a 64 KB ring: the second producer blocks on the dead claim
        with Ring.create(f"{prefix}-dead", RingConfig(capacity_bytes=1 << 16)) as ring:
            reader = ring.reader()
            reader.claim_timeout_ns = CLAIM_TIMEOUT_NS
            writer = ring.writer()
            for i in range(10):
                writer.offer(b"before%d" % i, 1)
            assert len(_drain(reader)) == 10
            tail = ring.statistics().tail
            children = []
            try:
                dying = _peer("claim_and_hang", ring, length=64)
                children.append(dying)
                assert int(dying.wait_line("CLAIMED", 30)) == tail
                other = _peer("raw_offerer", ring, count=count, wait_go=True, deadline_s=60)
                children.append(other)
                other.wait_line("READY", 30)
                other.send_line("GO")
                wait_until(lambda: ring.statistics().tail > tail + rec(64), 20, "the second producer to offer")
                assert _drain(reader) == []  # everything waits behind the claim of a live producer
                dying.sigkill()
                got = _collect(reader, count, timeout_s=60)
                assert other.result(30) == {"sent": count}
                assert other.wait(20) == 0
            finally:
                stop_all(children)
            assert got == _b_records(count)  # every later record, in order; nothing of the dead claim
            stats = ring.statistics()
            assert stats.recovered_claims == 1
            assert stats.recovered_bytes == rec(64) > 0
            ring.reclaim_dead()
            assert ring.statistics().reclaimed_producers == 1  # (by whoever noticed first)
            writer.offer(b"after", 3)
            assert _drain(reader) == [(b"after", 3)]

    @pytest.mark.parametrize("padding", ["abort", "wrap"])
    def test_a_dead_claim_right_after_padding_is_recovered(self, prefix, padding):
        """The reader stands at padding (an aborted claim, or the wrap) with the dead claim behind it."""
        cap = 4096
        with Ring.create(f"{prefix}-pad", RingConfig(capacity_bytes=cap)) as ring:
            reader = ring.reader()
            reader.claim_timeout_ns = CLAIM_TIMEOUT_NS
            writer = ring.writer()
            if padding == "abort":
                writer.try_claim(8, 1).abort()
                expected_claim_at = rec(8)
            else:
                _advance_to(writer, reader, cap - 40)  # 40 bytes left: a 64-byte record must wrap
                expected_claim_at = cap
            assert _drain(reader) == []
            children = []
            try:
                dying = _peer("claim_and_hang", ring, length=64)
                children.append(dying)
                assert int(dying.wait_line("CLAIMED", 30)) == expected_claim_at
                dying.sigkill()
            finally:
                stop_all(children)
            for seq in range(20):
                writer.send(b"B" + seq.to_bytes(8, "little"), 2, timeout_ns=2_000_000_000)
            got = _collect(reader, 20, timeout_s=3)
            assert got == _b_records(20), f"got {len(got)} of 20 records after a dead claim behind {padding} padding"
            assert ring.statistics().recovered_claims == 1

    def test_a_live_producer_slow_to_commit_is_never_overwritten(self, prefix):
        length = 256
        pattern = bytes((i * 7 + 3) & 0xFF for i in range(length))
        with Ring.create(f"{prefix}-slow", RingConfig(capacity_bytes=1 << 16)) as ring:
            reader = ring.reader()
            reader.claim_timeout_ns = CLAIM_TIMEOUT_NS
            writer = ring.writer()
            children = []
            try:
                slow = _peer("slow_commit", ring, length=length)
                children.append(slow)
                claimed_at = int(slow.wait_line("CLAIMED", 30))
                for i in range(5):
                    writer.offer(b"later%d" % i, 3)
                # Hold the claim for 25 claim timeouts while the reader keeps looking at it.
                stalled_until = time.monotonic() + 25 * CLAIM_TIMEOUT_NS / 1e9
                early = []
                while time.monotonic() < stalled_until:
                    if reader.poll(lambda v, t: early.append((bytes(v), t))) == 0:
                        reader.wait_readable(timeout_ns=CLAIM_TIMEOUT_NS)
                assert early == []
                assert ring.statistics().recovered_claims == 0
                slow.send_line("COMMIT")
                assert int(slow.wait_line("COMMITTED", 20)) == claimed_at
                got = _collect(reader, 6, timeout_s=10)
                slow.send_line("EXIT")
                assert slow.wait(20) == 0
            finally:
                stop_all(children)
            assert got == [(pattern, DEAD_CLAIM_TYPE)] + [(b"later%d" % i, 3) for i in range(5)]
            stats = ring.statistics()
            assert stats.recovered_claims == 0 and stats.recovered_bytes == 0


class TestDeadSubscriber:
    def test_a_killed_subscriber_is_reclaimed_by_a_blocking_send(self, prefix):
        with Ring.create(f"{prefix}-ksub", RingConfig(capacity_bytes=4096, slow_subscriber_policy="block")) as ring:
            reader = ring.reader()
            writer = ring.writer()
            children = []
            try:
                idle = _peer("idle_subscriber", ring)
                children.append(idle)
                idle.wait_line("READY", 30)
                sent = []
                seq = 0
                while True:
                    data = seq.to_bytes(8, "little") * 12
                    r = writer.offer(data, 1)
                    if r == BACK_PRESSURED:
                        break
                    sent.append((data, 1))
                    seq += 1
                    assert seq < 1000
                got = _drain(reader)
                assert writer.offer(b"x" * 96, 1) == BACK_PRESSURED  # only the idle child holds it back
                idle.sigkill()
            finally:
                stop_all(children)
            for _ in range(100):  # 100 x 112 bytes: more than the whole ring
                data = seq.to_bytes(8, "little") * 12
                writer.send(data, 1, timeout_ns=10_000_000_000)
                sent.append((data, 1))
                seq += 1
                got += _drain(reader)
            assert got == sent
            stats = ring.statistics()
            assert stats.reclaimed_subscribers == 1
            assert [s.slot for s in stats.subscribers] == [reader.slot]
            assert stats.subscribers_joined == 1

    def test_a_killed_parked_consumer_hangs_nothing(self, prefix):
        with Ring.create(f"{prefix}-park", RingConfig(capacity_bytes=4096)) as ring:
            reader = ring.reader(wait=BlockWait())
            writer = ring.writer()
            children = []
            try:
                parked = _peer("parked_reader", ring, wait="block", count=1000, timeout_s=60)
                children.append(parked)
                parked.wait_line("READY", 30)
                wait_until(lambda: ring.statistics().waiters >= 1, 20, "the child to park on the doorbell")
                parked.sigkill()
            finally:
                stop_all(children)
            sent, got = [], []
            for seq in range(200):  # several laps: the dead subscriber must be reclaimed on the way
                data = bytes([seq % 256]) * 100
                writer.send(data, 4, timeout_ns=10_000_000_000)
                sent.append((data, 4))
                if seq % 2 == 0:
                    got.append(reader.receive(timeout_ns=5_000_000_000))  # parks (BlockWait) if needed
                got += _drain(reader)
            assert got == sent
            assert ring.statistics().reclaimed_subscribers == 1
            assert reader.wait_readable(timeout_ns=20_000_000) is False  # still works, times out

    def test_a_killed_parked_consumer_leaves_no_phantom_sleeper(self, prefix):
        """Once the dead subscriber is reclaimed, producers must not keep ringing the doorbell for it."""
        with Ring.create(f"{prefix}-ghost", RingConfig(capacity_bytes=4096)) as ring:
            reader = ring.reader()
            writer = ring.writer()
            children = []
            try:
                parked = _peer("parked_reader", ring, wait="block", timeout_s=60)
                children.append(parked)
                parked.wait_line("READY", 30)
                wait_until(lambda: ring.statistics().waiters >= 1, 20, "the child to park on the doorbell")
                parked.sigkill()
            finally:
                stop_all(children)
            assert ring.reclaim_dead() == (0, 1)
            assert ring.statistics().waiters == 0, "a dead subscriber is still counted as sleeping"
            bell = read_word(ring.segment.address + WAKE_OFFSET + WAKE_DOORBELL * 8)
            writer.offer(b"nobody sleeps", 1)
            assert read_word(ring.segment.address + WAKE_OFFSET + WAKE_DOORBELL * 8) == bell
            assert _drain(reader) == [(b"nobody sleeps", 1)]
