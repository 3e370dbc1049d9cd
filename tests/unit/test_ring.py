"""The ring API in one process: one class per API (offer, claims, batches, readers, policies, lifetime).

Rings here are small (4 KiB) so every test wraps; positions are computed exactly from the
record layout (16-byte header, 8-byte alignment, padding when a record does not fit before
the end of the buffer).
"""

from __future__ import annotations

import json
import textwrap
import threading
import time

import numpy as np
import pytest

from fabric.errors import (
    BrokenResourceError,
    CapacityError,
    ClosedResourceError,
    RecordTooLargeError,
    SubscriberDroppedError,
)
from fabric._ring_kernels import publish_word
from fabric.ring import BACK_PRESSURED, NOT_CONNECTED, Ring, RingConfig
from fabric.segment import unlink_segment
from fabric.wait import BusySpinWait
from shm_layouts.record import RECORD_HEADER_BYTES, align_record, pack_meta
from shm_layouts.ring import P_CLAIM_POS, STATE_ACTIVE, STATE_DROPPED
from tests._fabric_procs import spawn_code, stop_all

CAP = 4096
MAX = CAP // 4  # the default max_record_bytes


def rec(n: int) -> int:
    """Ring bytes taken by a record of ``n`` payload bytes."""
    return align_record(n + RECORD_HEADER_BYTES)


def payload(seq: int, n: int) -> bytes:
    return bytes((seq * 7 + i) & 0xFF for i in range(n))


def drain(reader, limit: int = 256, max_calls: int = 10_000) -> list[tuple[bytes, int]]:
    """Poll until a call finds nothing; returns copies of every record."""
    out: list[tuple[bytes, int]] = []
    for _ in range(max_calls):
        if reader.poll(lambda view, type_id: out.append((bytes(view), type_id)), limit) == 0:
            return out
    raise AssertionError("reader never ran dry")


def advance_to(writer, reader, target: int, type_id: int = 1) -> None:
    """Offer and drain filler records until the ring's tail is exactly ``target`` (same lap math)."""
    ring = writer._ring
    tail = ring.statistics().tail
    while tail < target:
        gap = target - tail
        n = min(gap, rec(MAX)) - RECORD_HEADER_BYTES
        if 0 < gap - rec(n) < RECORD_HEADER_BYTES:  # leave room for a last filler of >= 16 bytes
            n -= 16
        assert writer.offer(bytes(max(n, 0)), type_id) >= 0
        drain(reader)
        tail = ring.statistics().tail
    assert tail == target


@pytest.fixture
def ring(prefix):
    with Ring.create(f"{prefix}-ring", RingConfig(capacity_bytes=CAP)) as r:
        yield r


class TestConfig:
    @pytest.mark.parametrize(
        "kwargs",
        [
            dict(capacity_bytes=3000),
            dict(capacity_bytes=2048),
            dict(capacity_bytes=CAP, max_record_bytes=CAP // 2),
            dict(max_producers=0),
            dict(max_subscribers=65),
            dict(slow_subscriber_policy="lose"),
        ],
    )
    def test_invalid_configs_are_refused(self, prefix, kwargs):
        with pytest.raises(ValueError):
            Ring.create(f"{prefix}-bad", RingConfig(**kwargs))

    def test_attach_reads_the_creators_config(self, prefix):
        cfg = RingConfig(capacity_bytes=8192, max_record_bytes=100, max_producers=3, max_subscribers=2,
                         multi_producer=False, slow_subscriber_policy="drop")
        with Ring.create(f"{prefix}-cfg", cfg) as owner, Ring.attach(owner.name) as att:
            assert (att.capacity_bytes, att.max_record_bytes, att.max_producers, att.max_subscribers) == (8192, 100, 3, 2)
            assert att.multi_producer is False and att.slow_subscriber_policy == "drop"

    def test_slot_tables_are_bounded(self, prefix):
        with Ring.create(f"{prefix}-slots", RingConfig(capacity_bytes=CAP, max_producers=1, max_subscribers=1)) as r:
            w = r.writer()
            rd = r.reader()
            with pytest.raises(CapacityError):
                r.writer()
            with pytest.raises(CapacityError):
                r.reader()
            w.close()
            rd.close()
            r.writer().close()
            r.reader().close()


class TestOffer:
    def test_fifo_across_many_wraps_with_varied_sizes(self, ring):
        sizes = [0, 1, 7, 8, 9, 15, 16, 17, 100, 255, 511, 1000, MAX - 1, MAX]
        reader, writer = ring.reader(), ring.writer()
        sent: list[tuple[bytes, int]] = []
        got: list[tuple[bytes, int]] = []
        expected_pos = 0
        for seq in range(400):
            data = payload(seq, sizes[seq % len(sizes)])
            type_id = seq % 5
            pos = writer.offer(data, type_id)
            if pos == BACK_PRESSURED:
                got += drain(reader)
                pos = writer.offer(data, type_id)
            rem = CAP - (expected_pos % CAP)
            if rec(len(data)) > rem:
                expected_pos += rem  # wrap padding (or an unusable tail of < 16 bytes)
            assert pos == expected_pos, seq
            expected_pos += rec(len(data))
            sent.append((data, type_id))
            if seq % 3 == 0:
                got += drain(reader, limit=2)
        got += drain(reader)
        assert got == sent
        stats = ring.statistics()
        assert stats.tail == expected_pos > 10 * CAP
        assert stats.records_offered == 400
        (sub,) = stats.subscribers
        assert sub.records == 400 and sub.position == stats.tail and sub.lag_bytes == 0
        assert sub.bytes == sum(len(d) for d, _ in sent)

    @pytest.mark.parametrize(
        "kind",
        [bytes, bytearray, memoryview, lambda b: np.frombuffer(b, dtype=np.uint8), lambda b: np.frombuffer(b, dtype=np.uint8).copy()],
    )
    def test_every_buffer_type_is_accepted(self, ring, kind):
        reader, writer = ring.reader(), ring.writer()
        data = payload(3, 40)
        assert writer.offer(kind(data), 4) == 0
        assert drain(reader) == [(data, 4)]

    @pytest.mark.parametrize("rem", [40, 8, 48])
    def test_padding_at_the_wrap(self, ring, rem):
        reader, writer = ring.reader(), ring.writer()
        advance_to(writer, reader, CAP - rem)
        before = reader.statistics().records
        data = payload(1, 32)  # takes 48 bytes
        pos = writer.offer(data, 6)
        if rem >= rec(32):
            assert pos == CAP - rem  # fits exactly: no padding
        else:
            assert pos == CAP  # the record starts the next lap; the gap is padding
        assert ring.statistics().tail == pos + rec(32)
        assert drain(reader) == [(data, 6)]  # the padding is never delivered
        assert reader.statistics().records == before + 1

    def test_back_pressure_when_full_and_every_refusal_is_counted(self, ring):
        reader, writer = ring.reader(), ring.writer()
        accepted = 0
        while writer.offer(payload(accepted, 100)) >= 0:
            accepted += 1
        assert accepted == CAP // rec(100)  # 34 records of 120 bytes; the 35th would wrap past the reader
        refusals = 1
        for _ in range(5):
            assert writer.offer(b"x") == BACK_PRESSURED
            refusals += 1
        assert writer.try_claim(8) is None
        refusals += 1
        buf = np.zeros(16, dtype=np.uint8)
        assert writer.offer_batch(buf, np.array([0, 8]), np.array([8, 8])) == BACK_PRESSURED
        refusals += 1  # one refusal per batch call (it stops at the first)
        with pytest.raises(TimeoutError, match="back-pressured"):
            writer.send(b"y", timeout_ns=20_000_000)
        stats = ring.statistics()
        assert stats.back_pressured >= refusals + 2  # send's first offer and at least one retry
        assert writer.statistics().back_pressured == stats.back_pressured
        assert stats.records_offered == accepted
        assert stats.fill_bytes == accepted * rec(100) <= CAP
        assert len(drain(reader)) == accepted
        assert writer.offer(b"z") >= 0

    def test_not_connected_without_a_subscriber(self, ring):
        writer = ring.writer()
        assert writer.offer(b"lost") == NOT_CONNECTED
        assert writer.try_claim(4) is None
        with pytest.raises(TimeoutError, match="no subscriber"):
            writer.send(b"lost", timeout_ns=20_000_000)
        assert writer.statistics().not_connected >= 3
        assert ring.statistics().tail == 0  # nothing was written
        reader = ring.reader()
        assert writer.offer(b"kept") == 0
        assert drain(reader) == [(b"kept", 0)]
        reader.close()
        assert writer.offer(b"lost again") == NOT_CONNECTED

    def test_oversize_record_is_refused_and_nothing_is_written(self, ring):
        reader, writer = ring.reader(), ring.writer()
        assert ring.max_record_bytes == MAX
        with pytest.raises(RecordTooLargeError, match="max_record_bytes"):
            writer.offer(bytes(MAX + 1))
        with pytest.raises(RecordTooLargeError):
            writer.offer(np.zeros(MAX + 1, dtype=np.uint8))
        with pytest.raises(RecordTooLargeError):
            writer.try_claim(MAX + 1)
        buf = np.zeros(3 * MAX, dtype=np.uint8)
        with pytest.raises(RecordTooLargeError):
            writer.offer_batch(buf, np.array([0, 10]), np.array([10, MAX + 1]))
        stats = ring.statistics()
        assert stats.tail == 0 and stats.records_offered == 0
        assert drain(reader) == []
        assert writer.offer(bytes(MAX)) == 0  # the limit itself is fine
        assert drain(reader) == [(bytes(MAX), 0)]

    def test_type_id_out_of_range_is_a_value_error(self, ring):
        ring.reader()
        writer = ring.writer()
        for bad in (-1, 2**31):
            with pytest.raises(ValueError, match="type_id"):
                writer.offer(b"x", bad)
        assert ring.statistics().tail == 0

    def test_try_claim_refuses_an_out_of_range_type_id_like_offer_does(self, ring):
        """``try_claim`` must not answer a bad type id with ``None`` ("refused, try again")."""
        ring.reader()
        writer = ring.writer()
        with pytest.raises(ValueError, match="type_id"):
            writer.try_claim(8, -1)
        with pytest.raises(ValueError, match="type_id"):
            writer.try_claim(8, 2**31)

    def test_offer_batch_refuses_an_out_of_range_type_id_like_offer_does(self, ring):
        ring.reader()
        writer = ring.writer()
        buf = np.zeros(8, dtype=np.uint8)
        with pytest.raises(ValueError, match="type_id"):
            writer.offer_batch(buf, np.array([0]), np.array([8]), type_id=-1)


class TestStalePayload:
    def test_old_payload_bytes_are_never_taken_for_a_committed_record(self, ring):
        """A reader at the tail must not deliver a record nobody wrote.

        The commit word at a position is trusted when it equals the position. On a later lap
        a record boundary can fall where an earlier record's *payload* was, and user payload
        bytes can hold any value - here the position that boundary will have.
        """
        reader, writer = ring.reader(), ring.writer()
        trap = np.zeros(8, dtype=np.int64)
        trap[0] = CAP + 16  # the position whose slot is this word (slot offset 16)
        trap[1] = pack_meta(RECORD_HEADER_BYTES + 16, 7)  # and a plausible length / type beside it
        trap[2] = 0x1122334455667788
        assert writer.offer(trap.tobytes(), 1) == 0
        advance_to(writer, reader, CAP)
        assert writer.offer(b"", 3) == CAP  # the lap's first record covers slot bytes 0..15 only
        assert drain(reader) == [(b"", 3)]
        assert reader.position == ring.statistics().tail == CAP + 16
        assert writer.offer(b"real", 4) == CAP + 16
        assert drain(reader) == [(b"real", 4)]


class TestTryClaim:
    def test_commit_publishes_and_abort_is_skipped(self, ring):
        reader, writer = ring.reader(), ring.writer()
        claim = writer.try_claim(10, 7)
        assert claim is not None and claim.position == 0 and len(claim.buffer) == 10
        claim.buffer[:] = b"0123456789"
        assert drain(reader) == []  # not committed yet
        assert claim.commit() == 0
        aborted = writer.try_claim(20, 8)
        aborted.buffer[:5] = b"junk!"
        aborted.abort()
        aborted.abort()  # idempotent
        assert writer.offer(b"after", 9) == rec(10) + rec(20)
        assert drain(reader) == [(b"0123456789", 7), (b"after", 9)]
        with pytest.raises(ClosedResourceError):
            claim.commit()
        stats = writer.statistics()
        assert stats.records == 2  # aborts are not records

    def test_an_open_claim_holds_back_later_records_in_order(self, ring):
        reader, writer, other = ring.reader(), ring.writer(), ring.writer()
        first = writer.try_claim(4, 1)
        assert other.offer(b"second", 2) > first.position
        assert drain(reader) == []
        first.buffer[:] = b"1st!"
        first.commit()
        assert drain(reader) == [(b"1st!", 1), (b"second", 2)]

    def test_claim_as_context_manager(self, ring):
        reader, writer = ring.reader(), ring.writer()
        with writer.try_claim(3, 1) as claim:
            claim.buffer[:] = b"abc"
        with pytest.raises(RuntimeError):
            with writer.try_claim(3, 2) as claim:
                claim.buffer[:] = b"xyz"
                raise RuntimeError("abort me")
        assert writer.offer(b"end", 3) >= 0
        assert drain(reader) == [(b"abc", 1), (b"end", 3)]

    def test_zero_length_claim(self, ring):
        reader, writer = ring.reader(), ring.writer()
        writer.try_claim(0, 5).commit()
        assert drain(reader) == [(b"", 5)]

    def test_claim_wraps_with_padding(self, ring):
        reader, writer = ring.reader(), ring.writer()
        advance_to(writer, reader, CAP - 24)
        claim = writer.try_claim(64, 2)
        assert claim.position == CAP
        claim.buffer[:] = payload(9, 64)
        claim.commit()
        assert drain(reader) == [(payload(9, 64), 2)]


class TestOneOpenClaimPerWriter:
    def test_a_writer_holding_a_claim_refuses_to_offer_or_claim_until_it_ends(self, ring):
        """A writer records one open claim; offering past it would forget the claim's protection."""
        from fabric.errors import ClaimPendingError

        reader, writer = ring.reader(), ring.writer()
        claim = writer.try_claim(8, 1)
        with pytest.raises(ClaimPendingError, match="commit or abort it first"):
            writer.offer(b"x", 2)
        with pytest.raises(ClaimPendingError):
            writer.try_claim(4, 2)
        with pytest.raises(ClaimPendingError):
            writer.offer_batch(np.zeros(8, np.uint8), np.array([0]), np.array([8]))
        claim.buffer[:] = b"claimed!"
        claim.commit()
        assert writer.offer(b"after", 2) >= 0
        assert drain(reader) == [(b"claimed!", 1), (b"after", 2)]

    def test_closing_a_writer_aborts_its_open_claim(self, ring):
        reader, writer = ring.reader(), ring.writer()
        writer.try_claim(8, 1)
        writer.close()
        other = ring.writer()
        assert other.offer(b"next", 3) >= 0
        assert drain(reader) == [(b"next", 3)]


class TestOpenClaimLapped:
    @pytest.mark.parametrize("finish", ["commit", "abort"])
    @pytest.mark.parametrize("lapper", ["another writer"])
    def test_a_claim_whose_subscribers_left_is_not_lapped(self, ring, finish, lapper):
        """A claim in progress must not be overwritten by a later lap, subscribers or not.

        The only subscriber behind the claim leaves and a new one joins at the tail (a consumer
        restart). Producers then go round the ring - another writer, or the claiming writer
        itself, which may offer while it holds the claim - and when the claim is finally
        committed or aborted, its commit must not land in the records written over it.
        """
        early = ring.reader()
        slow_writer, other = ring.writer(), ring.writer()
        writer = slow_writer if lapper == "the claiming writer" else other
        claim = slow_writer.try_claim(8, 1)
        assert claim.position == 0
        claim.buffer[:] = b"claimed!"
        late = ring.reader()  # joins after the claim
        early.close()
        sent, got = [], []
        seq = 0
        # Go round to just before the claim's bytes, reading as we go.
        while ring.statistics().tail + rec(100) <= CAP - 200:
            data = payload(seq, 100)
            assert writer.offer(data, 2) >= 0
            sent.append((data, 2))
            seq += 1
            got += drain(late)
        # Records over the claim's slot (or back pressure, if the ring protects the claim).
        for _ in range(4):
            data = payload(seq, 100)
            if writer.offer(data, 2) < 0:
                break
            sent.append((data, 2))
            seq += 1
        getattr(claim, finish)()
        for _ in range(4):
            data = payload(seq, 100)
            try:
                writer.send(data, 2, timeout_ns=200_000_000)
            except TimeoutError:
                break
            sent.append((data, 2))
            seq += 1
        got += drain(late)
        assert len(sent) >= 30
        # (Were the late reader to start at the claim instead, it would also get the claimed record.)
        assert [r for r in got if r != (b"claimed!", 1)] == sent


    @pytest.mark.parametrize("finish", ["commit", "abort"])
    @pytest.mark.parametrize("api", ["offer", "offer_batch"])
    def test_a_claim_that_begins_with_its_own_wrap_padding_still_gates(self, ring, finish, api):
        """A claim whose first bytes are end-of-lap padding commits that padding at once; its
        record, at the start of the next lap, is still in progress. Producers must stop before
        lapping it (once, the gate took the committed padding for a finished claim and let a
        record be written where the claim's late commit or abort then landed)."""
        early = ring.reader()
        claimer, writer = ring.writer(), ring.writer()
        advance_to(writer, early, CAP - 64)
        claim = claimer.try_claim(100, 1)
        assert claim is not None and claim.position == CAP  # 64 bytes of padding first
        claim.buffer[:] = payload(999, 100)
        late = ring.reader()  # joins after the claim; the only subscriber behind it leaves
        early.close()
        sent, got = [], []
        for seq in range(2 * CAP // rec(100)):
            data = payload(seq, 100)
            if api == "offer":
                r = writer.offer(data, 2)
            else:
                r = writer.offer_batch(np.frombuffer(data, dtype=np.uint8), np.array([0]), np.array([100]), 2)
            if r < 0:
                break
            sent.append((data, 2))
            got += drain(late)
        tail = ring.statistics().tail
        assert tail <= (CAP - 64) + CAP, "a record was written over the open claim's bytes"
        getattr(claim, finish)()
        got += drain(late)
        assert [r for r in got if r != (payload(999, 100), 1)] == sent
        assert writer.offer(b"after", 3) >= 0 and drain(late) == [(b"after", 3)]


class TestClaimsThatGateProducers:
    """Open claims hold producers back; a claim that is no longer open must stop doing so."""

    def _go_round(self, ring, writer, reader, laps: int = 2) -> int:
        """Offer (reading as we go) until ``laps`` capacities went through; returns how many were accepted."""
        accepted = 0
        for seq in range(laps * CAP // rec(100)):
            data = payload(seq, 100)
            if writer.offer(data, 2) < 0:
                ring.reclaim_dead()  # give the ring every chance to notice what is abandoned
                if writer.offer(data, 2) < 0:
                    break
            accepted += 1
            assert drain(reader) == [(data, 2)]
        return accepted

    def test_closing_a_writer_with_an_open_claim_does_not_block_the_ring(self, ring):
        early = ring.reader()
        abandoned, writer = ring.writer(), ring.writer()
        claim = abandoned.try_claim(8, 1)
        assert claim is not None
        late = ring.reader()  # joins after the claim
        early.close()
        abandoned.close()  # gives its slot back with the claim still open
        del claim
        laps = 2
        assert self._go_round(ring, writer, late, laps) == laps * CAP // rec(100), (
            "producers stay back-pressured behind a claim whose writer was closed"
        )

    def test_a_claim_attempt_that_lost_the_tail_race_gates_no_one(self, ring):
        """State injection: what ``_claim`` leaves when its CAS on the tail fails and the retry is refused.

        Two producers race for the last room of a full ring: the loser's CAS fails, it loops,
        finds no room and returns BACK_PRESSURED - with its ``P_CLAIM_POS`` still naming the
        position the winner took (and committed). That stale claim must not gate producers.
        (tests/integration/test_ring_cross_process.py has the same race for real.)
        """
        reader = ring.reader()
        loser, winner = ring.writer(), ring.writer()
        taken_at = winner.offer(payload(0, 100), 2)
        assert drain(reader) == [(payload(0, 100), 2)]
        publish_word(ring._producer_addr(loser.slot, P_CLAIM_POS), taken_at)
        laps = 2
        assert self._go_round(ring, winner, reader, laps) == laps * CAP // rec(100), (
            "a claim attempt that lost the race keeps every producer back-pressured"
        )
        assert loser.offer(b"loser", 3) >= 0
        assert drain(reader) == [(b"loser", 3)]

    def test_drop_policy_offer_returns_while_an_open_claim_gates(self, prefix):
        """Under "drop" an open claim (not a subscriber) leaves no room: offer must still return.

        Run in a child process: the offer spins inside compiled code with the GIL held, so a
        hang could not be interrupted here.
        """
        code = textwrap.dedent(
            """
            import json, sys
            from fabric.ring import Ring, RingConfig
            ring = Ring.create(sys.argv[1], RingConfig(capacity_bytes=4096, slow_subscriber_policy="drop"))
            try:
                early = ring.reader()
                slow, writer = ring.writer(), ring.writer()
                claim = slow.try_claim(8, 1)       # a live producer, slow to commit
                late = ring.reader()               # a consumer that (re)joined after the claim
                early.close()
                codes = []
                for i in range(60):                # more than a lap of 120-byte records
                    codes.append(writer.offer(bytes(100), 2))
                    late.poll(lambda v, t: None)
                    print("OFFERED", i, codes[-1], flush=True)
                claim.commit()
                codes.append(writer.offer(bytes(100), 2))
                print("RESULT " + json.dumps({"codes": codes}), flush=True)
            finally:
                ring.destroy()
            """
        )
        children = []
        try:
            child = spawn_code(code, f"{prefix}-dropgate")
            children.append(child)
            try:
                result = child.result(20)
            except AssertionError:
                offered = [line for line in child.lines if line.startswith("OFFERED")]
                raise AssertionError(
                    f"offer() never returned after {len(offered)} offers: it spins in compiled code "
                    "when the only thing in the way is an open claim"
                ) from None
            assert child.wait(20) == 0
        finally:
            stop_all(children)
            unlink_segment(f"{prefix}-dropgate")  # the child destroys it, unless it was killed
        codes = result["codes"]
        assert all(c >= 0 or c == BACK_PRESSURED for c in codes), codes
        assert codes[-1] >= 0  # the claim is committed: room again


class TestPaddingAtTheReaderPosition:
    """After an abort (or wrap padding) a reader sits at padding with nothing committed behind it."""

    def test_wait_readable_does_not_report_padding_as_readable(self, ring):
        reader, writer = ring.reader(), ring.writer()
        writer.try_claim(8, 1).abort()
        assert drain(reader) == []
        assert reader.wait_readable(timeout_ns=50_000_000) is False

    def test_receive_waits_for_the_next_record_after_an_abort(self, ring):
        reader, writer = ring.reader(), ring.writer()
        writer.try_claim(8, 1).abort()
        assert drain(reader) == []

        def offer_later():
            time.sleep(0.2)
            writer.offer(b"late", 2)

        t = threading.Thread(target=offer_later)
        t.start()
        try:
            assert reader.receive(timeout_ns=5_000_000_000) == (b"late", 2)
        finally:
            t.join(timeout=10)

    def test_reader_position_moves_past_padding_it_skipped(self, ring):
        reader, writer = ring.reader(), ring.writer()
        writer.try_claim(8, 1).abort()
        assert drain(reader) == []
        # The padding was looked at and skipped: it must not keep the producers gated.
        assert reader.statistics().position == ring.statistics().tail == rec(8)


class TestOfferBatch:
    def _batch(self, sizes, seq0=0):
        parts = [payload(seq0 + i, n) for i, n in enumerate(sizes)]
        buf = np.frombuffer(b"".join(parts), dtype=np.uint8).copy()
        lengths = np.array(sizes, dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        return parts, buf, offsets, lengths

    def test_records_arrive_in_batch_order(self, ring):
        reader, writer = ring.reader(), ring.writer()
        parts, buf, offsets, lengths = self._batch([0, 5, 17, 64, 3, 200])
        assert writer.offer_batch(buf, offsets, lengths, type_id=4) == 6
        assert drain(reader) == [(p, 4) for p in parts]
        stats = writer.statistics()
        assert stats.records == 6 and stats.bytes == int(lengths.sum())

    def test_partial_acceptance_when_full(self, ring):
        reader, writer = ring.reader(), ring.writer()
        parts, buf, offsets, lengths = self._batch([500] * 10)
        n = writer.offer_batch(buf, offsets, lengths, 1)
        assert n == CAP // rec(500) == 7
        assert drain(reader) == [(p, 1) for p in parts[:7]]
        assert writer.offer_batch(buf, offsets[n:], lengths[n:], 1) == 3
        assert drain(reader) == [(p, 1) for p in parts[7:]]
        assert writer.statistics().back_pressured == 1

    def test_empty_batch_and_argument_checks(self, ring):
        reader, writer = ring.reader(), ring.writer()
        buf = np.zeros(16, dtype=np.uint8)
        assert writer.offer_batch(buf, np.array([], dtype=np.int64), np.array([], dtype=np.int64)) == 0
        with pytest.raises(TypeError):
            writer.offer_batch(np.zeros(16, dtype=np.int32), np.array([0]), np.array([4]))
        with pytest.raises(ValueError):
            writer.offer_batch(buf, np.array([0, 1]), np.array([4]))
        with pytest.raises(ValueError):
            writer.offer_batch(buf, np.array([10]), np.array([8]))
        assert ring.statistics().tail == 0
        assert drain(reader) == []

    def test_not_connected(self, ring):
        writer = ring.writer()
        buf = np.zeros(16, dtype=np.uint8)
        assert writer.offer_batch(buf, np.array([0]), np.array([16])) == NOT_CONNECTED


class TestReaders:
    def test_several_readers_each_see_every_record(self, ring):
        readers = [ring.reader() for _ in range(3)]
        writer = ring.writer()
        sent = []
        got = [[] for _ in readers]
        for seq in range(200):
            data = payload(seq, seq % 90)
            while writer.offer(data, 1) == BACK_PRESSURED:
                for i, r in enumerate(readers):
                    got[i] += drain(r, limit=seq % 4 + 1)
            sent.append((data, 1))
        for i, r in enumerate(readers):
            got[i] += drain(r)
            assert got[i] == sent, i

    def test_the_slowest_reader_gates_the_producer(self, ring):
        fast, slow = ring.reader(), ring.reader()
        writer = ring.writer()
        accepted = 0
        while writer.offer(payload(accepted, 100)) >= 0:
            accepted += 1
            drain(fast)
        assert accepted == CAP // rec(100)
        assert writer.offer(b"x") == BACK_PRESSURED
        assert ring.statistics().fill_bytes == slow.lag_bytes == accepted * rec(100)
        assert fast.lag_bytes == 0
        assert slow.poll(lambda v, t: None, 1) == 1  # one record of room
        assert writer.offer(payload(0, 100)) >= 0
        assert writer.offer(payload(0, 100)) == BACK_PRESSURED

    def test_closing_the_slow_reader_frees_the_producer(self, ring):
        fast, slow = ring.reader(), ring.reader()
        writer = ring.writer()
        while writer.offer(payload(1, 200)) >= 0:
            drain(fast)
        assert writer.offer(payload(1, 200)) == BACK_PRESSURED
        slow.close()
        assert writer.offer(payload(1, 200)) >= 0
        assert len(drain(fast)) == 1
        assert [s.slot for s in ring.statistics().subscribers] == [fast.slot]

    def test_a_reader_joining_late_starts_at_the_tail(self, ring):
        early, writer = ring.reader(), ring.writer()
        for seq in range(5):
            writer.offer(payload(seq, 30), 1)
        tail = ring.statistics().tail
        late = ring.reader()
        assert late.position == tail and late.lag_bytes == 0
        assert drain(late) == []
        writer.offer(b"new", 2)
        assert drain(late) == [(b"new", 2)]
        assert len(drain(early)) == 6

    def test_read_batch_views_are_valid_until_release(self, ring):
        reader, writer = ring.reader(), ring.writer()
        sent = [payload(seq, 300) for seq in range(6)]
        for data in sent:
            assert writer.offer(data, 3) >= 0
        batch = reader.read_batch(4)
        assert len(batch) == 4 and batch.end_position == 4 * rec(300)
        views = [v for v, _ in batch]
        assert [t for _, t in batch] == [3] * 4
        # Fill everything else: a producer must not overwrite the held records.
        for size in (300, 0):
            while writer.offer(payload(99, size), 4) >= 0:
                pass
        assert writer.offer(b"", 4) == BACK_PRESSURED
        assert ring.statistics().tail == CAP  # full: exactly a capacity ahead of the held batch
        assert reader.statistics().position == 0
        assert [bytes(v) for v in views] == sent[:4]
        batch.release()
        batch.release()  # idempotent
        rest = drain(reader)  # publishes the release
        assert [d for d, _ in rest[:2]] == sent[4:]
        assert writer.offer(payload(5, 300), 5) >= 0
        del views

    def test_read_batch_respects_the_limit_and_an_empty_batch(self, ring):
        reader, writer = ring.reader(), ring.writer()
        empty = reader.read_batch()
        assert len(empty) == 0 and list(empty) == []
        empty.release()
        for seq in range(3):
            writer.offer(payload(seq, 10), 1)
        with reader.read_batch(2) as b:
            assert [bytes(v) for v, _ in b] == [payload(0, 10), payload(1, 10)]
            assert len(b.descriptors()) == 4
        assert drain(reader) == [(payload(2, 10), 1)]

    def test_receive_returns_a_copy_and_times_out(self, ring):
        reader, writer = ring.reader(), ring.writer()
        writer.offer(b"one", 1)
        assert reader.receive(timeout_ns=1_000_000_000) == (b"one", 1)
        with pytest.raises(TimeoutError):
            reader.receive(timeout_ns=20_000_000)

    def test_take_hands_out_a_view_released_at_the_next_call(self, ring):
        reader, writer = ring.reader(), ring.writer()
        assert reader.take() is None
        writer.offer(b"first", 4)
        writer.offer(b"second", 5)
        view, type_id = reader.take()
        assert (bytes(view), type_id) == (b"first", 4)
        published = {s.slot: s.position for s in ring.statistics().subscribers}[reader.slot]
        assert published == 0  # still ours: producers may not reuse it yet
        view2, type_id2 = reader.take()
        assert (bytes(view2), type_id2) == (b"second", 5)
        published = {s.slot: s.position for s in ring.statistics().subscribers}[reader.slot]
        assert published == rec(5)  # the first record went back at this call
        assert reader.take() is None
        stats = {s.slot: s for s in ring.statistics().subscribers}[reader.slot]
        assert stats.position == rec(5) + rec(6) and stats.records == 2

    def test_take_and_receive_step_over_padding(self, ring):
        reader, writer = ring.reader(), ring.writer()
        advance_to(writer, reader, CAP - 40)  # a 64-byte record must wrap: padding first
        writer.offer(bytes(64), 1)
        view, _ = reader.take()
        assert len(view) == 64
        writer.try_claim(8, 1).abort()  # padding of its own
        writer.offer(b"after", 2)
        assert reader.receive(timeout_ns=1_000_000_000) == (b"after", 2)
        writer.try_claim(8, 1).abort()
        assert reader.take() is None  # only padding there: stepped over, nothing handed out
        assert reader.position == ring.statistics().tail

    def test_receive_spins_in_compiled_code_and_sees_a_record_from_another_thread(self, ring):
        reader, writer = ring.reader(wait=BusySpinWait()), ring.writer()
        timer = threading.Timer(0.05, lambda: writer.offer(b"late", 6))
        timer.start()
        try:
            assert reader.receive(timeout_ns=5_000_000_000) == (b"late", 6)
        finally:
            timer.join(5)

    def test_a_handler_error_loses_no_later_record(self, ring):
        """The records after the one whose handler raised are still delivered, in order."""
        reader, writer = ring.reader(), ring.writer()
        for seq in range(5):
            writer.offer(bytes([seq]), 1)
        seen = []

        def handler(view, type_id):
            seen.append(view[0])
            if view[0] == 1:
                raise RuntimeError("handler failed")

        with pytest.raises(RuntimeError):
            reader.poll(handler)
        assert seen == [0, 1]
        assert [d[0] for d, _ in drain(reader)] == [2, 3, 4]


class TestDropPolicy:
    def test_the_laggard_is_dropped_and_the_others_continue(self, prefix):
        cfg = RingConfig(capacity_bytes=CAP, slow_subscriber_policy="drop")
        with Ring.create(f"{prefix}-drop", cfg) as ring:
            fast, slow = ring.reader(), ring.reader()
            writer = ring.writer()
            sent = []
            got = []
            for seq in range(100):  # 12 KB through a 4 KB ring
                data = payload(seq, 100)
                assert writer.offer(data, 1) >= 0  # never back-pressured under "drop"
                sent.append((data, 1))
                got += drain(fast)
            assert got == sent
            stats = ring.statistics()
            assert stats.dropped_subscribers == 1
            assert stats.back_pressured == 0
            assert {s.slot: s.state for s in stats.subscribers} == {fast.slot: STATE_ACTIVE, slow.slot: STATE_DROPPED}
            assert stats.subscribers_joined == 1
            with pytest.raises(SubscriberDroppedError, match="dropped") as info:
                slow.poll(lambda v, t: None)
            assert isinstance(info.value, BrokenResourceError)
            with pytest.raises(SubscriberDroppedError):
                slow.read_batch()
            slow.close()
            assert [s.slot for s in ring.statistics().subscribers] == [fast.slot]
            newcomer = ring.reader()  # the freed slot can be taken again
            writer.offer(b"hello", 2)
            assert drain(newcomer) == [(b"hello", 2)]
            assert drain(fast) == [(b"hello", 2)]
            assert ring.statistics().dropped_subscribers == 1

    def test_when_every_subscriber_is_dropped_the_producer_is_not_connected(self, prefix):
        cfg = RingConfig(capacity_bytes=CAP, slow_subscriber_policy="drop")
        with Ring.create(f"{prefix}-drop2", cfg) as ring:
            only = ring.reader()
            writer = ring.writer()
            codes = [writer.offer(payload(i, 200)) for i in range(40)]
            assert NOT_CONNECTED in codes and BACK_PRESSURED not in codes
            assert ring.statistics().dropped_subscribers == 1
            with pytest.raises(SubscriberDroppedError):
                only.poll(lambda v, t: None)


class TestLifetime:
    def test_closed_writer_refuses_everything(self, ring):
        ring.reader()
        writer = ring.writer()
        writer.close()
        writer.close()
        buf = np.zeros(8, dtype=np.uint8)
        for call in (
            lambda: writer.offer(b"x"),
            lambda: writer.offer(bytearray(b"x")),
            lambda: writer.offer(memoryview(b"x")),
            lambda: writer.send(b"x", timeout_ns=1_000_000),
            lambda: writer.try_claim(1),
            lambda: writer.offer_batch(buf, np.array([0]), np.array([8])),
        ):
            with pytest.raises(ClosedResourceError):
                call()
        assert ring.statistics().tail == 0

    def test_closed_reader_refuses_everything(self, ring):
        reader = ring.reader()
        reader.close()
        reader.close()
        for call in (
            lambda: reader.poll(lambda v, t: None),
            lambda: reader.read_batch(),
            lambda: reader.receive(timeout_ns=1_000_000),
            lambda: reader.take(),
            lambda: reader.wait_readable(timeout_ns=1_000_000),
        ):
            with pytest.raises(ClosedResourceError):
                call()
        assert ring.statistics().subscribers == []

    def test_fast_paths_taken_before_close_refuse_after_it(self, prefix):
        # offer/take/receive are closures: one fetched before close must still refuse after it,
        # not touch the unmapped segment (the reader's cursor loses its base on close).
        ring = Ring.create(f"{prefix}-held", RingConfig(capacity_bytes=CAP))
        try:
            reader, writer = ring.reader(), ring.writer()
            offer, take, receive = writer.offer, reader.take, reader.receive
            assert offer(b"abc") == 0 and take()[0].tobytes() == b"abc"
            assert offer(b"de", 5) > 0 and receive(timeout_ns=1_000_000) == (b"de", 5)
            ring.close()  # closes both handles, then unmaps
            for call in (lambda: offer(b"x"), take, lambda: receive(timeout_ns=1_000_000), lambda: receive(timeout_ns=0)):
                with pytest.raises(ClosedResourceError):
                    call()
        finally:
            ring.destroy()

    def test_closing_the_ring_closes_its_handles(self, prefix):
        ring = Ring.create(f"{prefix}-life", RingConfig(capacity_bytes=CAP))
        try:
            reader, writer = ring.reader(), ring.writer()
            ring.close()
            assert ring.closed
            with pytest.raises(ClosedResourceError):
                writer.offer(b"x")
            with pytest.raises(ClosedResourceError):
                reader.poll(lambda v, t: None)
            for call in (ring.statistics, ring.writer, ring.reader, ring.reclaim_dead):
                with pytest.raises(ClosedResourceError):
                    call()
            ring.close()  # idempotent
        finally:
            ring.destroy()

    def test_an_attacher_closes_without_unlinking(self, ring):
        with Ring.attach(ring.name) as other:
            reader = other.reader()
            writer = ring.writer()
            writer.offer(b"shared", 1)
            assert drain(reader) == [(b"shared", 1)]
        assert other.closed and not ring.closed
        assert ring.statistics().subscribers == []  # closing the attacher released its reader
        with Ring.attach(ring.name) as again:
            assert again.capacity_bytes == CAP
