"""A ring behaves like a FIFO per subscriber, under random interleavings (hypothesis stateful).

The model is the ring's log of claims in claim order (``Entry``): each is open, committed
or aborted, with its exact place in the ring (wrap padding included). Each subscriber is a
cursor into that log. Every operation's outcome is predicted and checked:

- offers / claims / batch offers: accepted exactly when the record (and any wrap padding)
  fits a capacity ahead of the slowest subscriber's *published* position, refused with
  ``NOT_CONNECTED`` when there is no subscriber, ``BACK_PRESSURED`` otherwise; the position
  returned is the model's;
- poll / read_batch / receive: the next committed records of that subscriber's log, in
  order, aborted ones skipped, stopping at the first open claim;
- safety: a subscriber never publishes a position past what it released, and views held
  by an unreleased ``read_batch`` still show their bytes when released (nothing
  overwrote them);
- every counter (tail, records, bytes, refusals, per-subscriber records) matches the model.

``TestRingLiveness`` adds one check: a subscriber that has read everything there is
publishes the position it reached (padding it skipped included), and ``wait_readable``
then says there is nothing to read.

Payload bytes all have the high bit set, so no 8 aligned payload bytes form a
non-negative int64: stale payload bytes can then never look like a commit word (that hazard
has its own test in tests/unit/test_ring.py::TestStalePayload).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from hypothesis import Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from fabric.ring import BACK_PRESSURED, NOT_CONNECTED, Ring, RingConfig
from fabric.testing import unique_prefix
from shm_layouts.record import RECORD_HEADER_BYTES, align_record

CAP = 4096
MAX_RECORD = CAP // 4
MAX_SUBSCRIBERS = 3
NEVER_NS = 3_600 * 10**9  # claim timeout: nothing here is dead, never try to recover

OPEN, COMMITTED, ABORTED = "open", "committed", "aborted"


def make_payload(seq: int, n: int) -> bytes:
    return (0x80 | ((seq * 13 + np.arange(n, dtype=np.int64) * 7) & 0x7F)).astype(np.uint8).tobytes()


@dataclass
class Entry:
    seq: int
    data: bytes
    type_id: int
    claim_start: int  # where the claim begins (wrap padding first, if any)
    pos: int  # where the record begins
    end: int
    state: str


@dataclass
class Sub:
    reader: object
    index: int  # next log entry this subscriber has not received
    released: int  # log entries before this one were released
    join_pos: int
    delivered: int = 0
    batch: object = None
    batch_views: list = field(default_factory=list)
    batch_expected: list = field(default_factory=list)
    last_published: int = 0
    taken: tuple | None = None  # (view, expected bytes) from take(): valid until the next call


@dataclass
class Producer:
    writer: object
    claim: object = None
    entry: Entry | None = None
    records: int = 0
    nbytes: int = 0
    back_pressured: int = 0
    not_connected: int = 0


sizes = st.one_of(st.integers(0, MAX_RECORD), st.sampled_from([0, 1, 7, 8, 9, MAX_RECORD - 1, MAX_RECORD]))
type_ids = st.integers(0, 2**31 - 1)
limits = st.one_of(st.integers(1, 4), st.just(256))


class RingFifoMachine(RuleBasedStateMachine):
    MULTI_PRODUCER = True
    PRODUCERS = 3
    CHECK_LIVENESS = False

    def __init__(self) -> None:
        super().__init__()
        cfg = RingConfig(
            capacity_bytes=CAP,
            max_record_bytes=MAX_RECORD,
            max_producers=self.PRODUCERS,
            max_subscribers=MAX_SUBSCRIBERS,
            multi_producer=self.MULTI_PRODUCER,
        )
        self.ring = Ring.create(f"{unique_prefix('p')}-fifo", cfg)
        self.producers = [Producer(self.ring.writer()) for _ in range(self.PRODUCERS)]
        self.subs: list[Sub] = []
        self.log: list[Entry] = []
        self.tail = 0
        self.seq = 0
        self._add_sub()

    def teardown(self) -> None:
        for sub in self.subs:
            sub.batch_views.clear()
            sub.batch = None
        self.ring.destroy()

    # --- model helpers -------------------------------------------------------------------------

    def _add_sub(self) -> None:
        reader = self.ring.reader()
        reader.claim_timeout_ns = NEVER_NS
        assert reader.position == self.tail
        self.subs.append(Sub(reader, len(self.log), len(self.log), self.tail, last_published=self.tail))

    def _published(self) -> list[int]:
        by_slot = {s.slot: s.position for s in self.ring.statistics().subscribers}
        return [by_slot[sub.reader.slot] for sub in self.subs]

    def _place(self, n: int) -> tuple[int, int]:
        """(record position, claim total) of an n-byte record claimed now."""
        aligned = align_record(n + RECORD_HEADER_BYTES)
        rem = CAP - (self.tail % CAP)
        pad = 0 if aligned <= rem else rem
        return self.tail + pad, pad + aligned

    def _gates(self) -> tuple[int, int] | None:
        """(strict, loose) lowest positions producers may not lap, or None without subscribers.

        ``loose`` is the slowest subscriber's published position: no record may be written a
        capacity beyond it. ``strict`` is also below every open claim's start (its wrap padding
        included): anything that fits before it must be accepted. The two differ only when a
        subscriber has read past an open claim's wrap padding; either outcome is correct then.
        """
        if not self.subs:
            return None
        loose = min(self._published())
        strict = min([loose] + [p.entry.claim_start for p in self.producers if p.entry is not None])
        return strict, loose

    def _predict(self, prod: Producer, n: int) -> tuple[int, bool]:
        """(position or refusal code, whether the other outcome is acceptable too) for an n-byte claim."""
        gates = self._gates()
        if gates is None:
            return NOT_CONNECTED, False
        pos, total = self._place(n)
        strict, loose = gates
        if self.tail + total <= strict + CAP:
            return pos, False
        if self.tail + total > loose + CAP:
            return BACK_PRESSURED, False
        return pos, True

    def _fits(self, sizes: list[int], gate: int) -> int:
        """How many of these records, claimed one after the other now, fit before ``gate + CAP``."""
        tail = self.tail
        for i, n in enumerate(sizes):
            aligned = align_record(n + RECORD_HEADER_BYTES)
            rem = CAP - (tail % CAP)
            tail += (0 if aligned <= rem else rem) + aligned
            if tail > gate + CAP:
                return i
        return len(sizes)

    def _check_outcome(self, prod: Producer, n: int, got: int) -> None:
        """Check a claim's outcome against the model and count refusals."""
        expected, either = self._predict(prod, n)
        if either:
            assert got in (expected, BACK_PRESSURED), (got, expected)
        else:
            assert got == expected, (got, expected)
        if got == NOT_CONNECTED:
            prod.not_connected += 1
        elif got == BACK_PRESSURED:
            prod.back_pressured += 1

    def _append(self, n: int, data: bytes, type_id: int, state: str) -> Entry:
        pos, total = self._place(n)
        entry = Entry(self.seq, data, type_id, self.tail, pos, pos + align_record(n + RECORD_HEADER_BYTES), state)
        self.log.append(entry)
        self.tail += total
        return entry

    def _expected(self, sub: Sub, limit: int) -> tuple[list[tuple[bytes, int]], int]:
        """Records the subscriber gets now (up to ``limit``) and its log index after them."""
        out = []
        i = sub.index
        while i < len(self.log) and len(out) < limit:
            e = self.log[i]
            if e.state == OPEN:
                break
            if e.state == COMMITTED:
                out.append((e.data, e.type_id))
            i += 1
        # Aborted entries right after the last record are skipped too (when the limit allows).
        return out, i

    def _upper_bound(self, index: int) -> int:
        """The furthest a subscriber that released log[:index] may publish."""
        for e in self.log[index:]:
            if e.state != ABORTED:
                return e.pos
        rem = CAP - (self.tail % CAP)
        # Fewer than a header's bytes before the end of the buffer hold no record: readers skip them.
        return self.tail + rem if rem < RECORD_HEADER_BYTES else self.tail

    def _next_seq(self) -> int:
        self.seq += 1
        return self.seq

    # --- producer rules --------------------------------------------------------------------------

    def _free_producer(self, p: int) -> Producer | None:
        """The p-th writer that holds no open claim (None if every writer holds one).

        A writer that offers while it holds its own claim is tested on its own
        (tests/unit/test_ring.py::TestOpenClaimLapped, "the claiming writer").
        """
        free = [prod for prod in self.producers if prod.claim is None]
        return free[p % len(free)] if free else None

    @rule(p=st.integers(0, 7), n=sizes, type_id=type_ids)
    def offer(self, p, n, type_id):
        prod = self._free_producer(p)
        if prod is None:
            return
        seq = self._next_seq()
        data = make_payload(seq, n)
        got = prod.writer.offer(data, type_id)
        self._check_outcome(prod, n, got)
        if got >= 0:
            self._append(n, data, type_id, COMMITTED)
            prod.records += 1
            prod.nbytes += n

    @rule(p=st.integers(0, 7), n=sizes, type_id=type_ids)
    def try_claim(self, p, n, type_id):
        prod = self._free_producer(p)  # one open claim per writer
        if prod is not None:
            self._try_claim(prod, n, type_id)

    def _try_claim(self, prod: Producer, n: int, type_id: int) -> None:
        seq = self._next_seq()
        claim = prod.writer.try_claim(n, type_id)
        if claim is None:
            expected, either = self._predict(prod, n)
            assert expected < 0 or either, f"try_claim refused, the model expected position {expected}"
            if not self.subs:
                prod.not_connected += 1
            else:
                prod.back_pressured += 1
            return
        self._check_outcome(prod, n, claim.position)
        data = make_payload(seq, n)
        claim.buffer[:] = data
        prod.claim = claim
        prod.entry = self._append(n, data, type_id, OPEN)

    @rule(p=st.integers(0, 7), commit=st.booleans())
    def finish_claim(self, p, commit):
        self._finish_claim(self.producers[p % self.PRODUCERS], commit)

    def _finish_claim(self, prod: Producer, commit: bool) -> None:
        if prod.claim is None:
            return
        if commit:
            assert prod.claim.commit() == prod.entry.pos
            prod.entry.state = COMMITTED
            prod.records += 1
            prod.nbytes += len(prod.entry.data)
        else:
            prod.claim.abort()
            prod.entry.state = ABORTED
        prod.claim = None
        prod.entry = None

    @rule(p=st.integers(0, 7), batch=st.lists(sizes, min_size=1, max_size=6), type_id=type_ids)
    def offer_batch(self, p, batch, type_id):
        prod = self._free_producer(p)
        if prod is None:
            return
        parts = [make_payload(self._next_seq(), n) for n in batch]
        buf = np.frombuffer(b"".join(parts) or b"\x80", dtype=np.uint8).copy()
        lengths = np.array(batch, dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        # Predict record by record: the batch stops at the first refusal. ``must`` records fit
        # before the strict gate, ``may`` before the loose one (see ``_gates``).
        gates = self._gates()
        must, may = (self._fits(batch, gates[0]), self._fits(batch, gates[1])) if gates else (0, 0)
        got = prod.writer.offer_batch(buf, offsets, lengths, type_id)
        if gates is None:
            assert got == NOT_CONNECTED
            prod.not_connected += 1
            return
        if got == BACK_PRESSURED:
            assert must == 0, f"batch refused, the model expected at least {must} records accepted"
            prod.back_pressured += 1
            return
        assert must <= got <= may, (got, must, may)
        accepted = got
        if accepted < len(batch):
            prod.back_pressured += 1
        for n, data in zip(batch[:accepted], parts[:accepted]):
            self._append(n, data, type_id, COMMITTED)
            prod.records += 1
            prod.nbytes += n

    # --- subscriber rules --------------------------------------------------------------------------

    @precondition(lambda self: len(self.subs) < MAX_SUBSCRIBERS)
    @rule()
    def join(self):
        self._add_sub()

    # Leaving while a claim is open can leave no subscriber behind that claim: producers must
    # still not lap it (its late commit would land in a newer record; see also
    # tests/unit/test_ring.py::TestOpenClaimLapped for the deterministic case).
    @precondition(lambda self: len(self.subs) > 0)
    @rule(s=st.integers(0, 7), last_too=st.integers(0, 3))
    def leave(self, s, last_too):
        if len(self.subs) == 1 and last_too:
            return  # leaving the ring without subscribers happens, but rarely (NOT_CONNECTED)
        sub = self.subs.pop(s % len(self.subs))
        self._check_held(sub)
        sub.taken = None  # the next call ends a taken view
        sub.reader.close()

    @precondition(lambda self: len(self.subs) > 0)
    @rule(s=st.integers(0, 7), limit=limits)
    def poll(self, s, limit):
        sub = self.subs[s % len(self.subs)]
        if sub.batch is not None:
            return
        expected, after = self._expected(sub, limit)
        got: list[tuple[bytes, int]] = []
        sub.taken = None  # the next call ends a taken view
        n = sub.reader.poll(lambda view, type_id: got.append((bytes(view), type_id)), limit)
        assert n == len(got)
        assert got == expected
        sub.delivered += n
        if n:
            sub.index = after
            sub.released = after
        self._check_published(sub)

    @precondition(lambda self: len(self.subs) > 0)
    @rule(s=st.integers(0, 7), limit=limits)
    def read_batch(self, s, limit):
        sub = self.subs[s % len(self.subs)]
        if sub.batch is not None:
            return
        expected, after = self._expected(sub, limit)
        sub.taken = None  # the next call ends a taken view
        batch = sub.reader.read_batch(limit)
        pairs = list(batch)
        assert [(bytes(v), t) for v, t in pairs] == expected
        sub.delivered += len(pairs)
        if pairs:
            sub.index = after
            sub.batch = batch
            sub.batch_views = [v for v, _ in pairs]
            sub.batch_expected = [d for d, _ in expected]
            sub.batch_after = after
        else:
            batch.release()
        self._check_published(sub)

    @precondition(lambda self: any(s.batch is not None for s in self.subs))
    @rule(s=st.integers(0, 7))
    def release(self, s):
        held = [sub for sub in self.subs if sub.batch is not None]
        sub = held[s % len(held)]
        self._check_held(sub)
        sub.batch.release()
        sub.batch = None
        sub.released = sub.batch_after

    @precondition(lambda self: len(self.subs) > 0)
    @rule(s=st.integers(0, 7))
    def receive_now(self, s):
        sub = self.subs[s % len(self.subs)]
        if sub.batch is not None:
            return
        expected, after = self._expected(sub, 1)
        try:
            sub.taken = None  # the next call ends a taken view
            got = sub.reader.receive(timeout_ns=0)
        except TimeoutError:
            assert expected == []
        else:
            assert [got] == expected
            sub.delivered += 1
            sub.index = after
            sub.released = after
        self._check_published(sub)

    @precondition(lambda self: len(self.subs) > 0)
    @rule(s=st.integers(0, 7))
    def take(self, s):
        """take(): a zero-copy view that must stay intact until the reader's next call."""
        sub = self.subs[s % len(self.subs)]
        if sub.batch is not None:
            return
        expected, after = self._expected(sub, 1)
        sub.taken = None
        got = sub.reader.take()
        if got is None:
            assert expected == []
        else:
            view, type_id = got
            assert [(bytes(view), type_id)] == expected
            sub.taken = (view, expected[0][0])
            sub.delivered += 1
            sub.index = after
            sub.released = after
        self._check_published(sub)

    @precondition(lambda self: len(self.subs) > 0)
    @rule(s=st.integers(0, 7))
    def drain(self, s):
        """Read everything there is; then (liveness) the published position is where it stopped."""
        sub = self.subs[s % len(self.subs)]
        if sub.batch is not None:
            return
        for _ in range(len(self.log) + 2):
            expected, after = self._expected(sub, 256)
            got: list[tuple[bytes, int]] = []
            sub.taken = None  # the next call ends a taken view
            n = sub.reader.poll(lambda view, type_id: got.append((bytes(view), type_id)), 256)
            assert got == expected
            sub.delivered += n
            if n == 0:
                break
            sub.index = sub.released = after
        self._check_published(sub)
        if self.CHECK_LIVENESS:
            bound = self._upper_bound(sub.index)
            published = self._published()[self.subs.index(sub)]
            assert published == bound, (
                f"a drained subscriber published {published}, but it has read and skipped everything "
                f"up to {bound} (tail {self.tail})"
            )
            assert sub.reader.wait_readable(timeout_ns=0) is False

    @precondition(lambda self: len(self.subs) > 0)
    @rule(p=st.integers(0, 7), n=sizes, type_id=type_ids, s=st.integers(0, 7), commit=st.booleans())
    def claim_while_a_subscriber_waits(self, p, n, type_id, s, commit):
        """A subscriber catches up with a claim in progress; then the claim is committed or aborted."""
        prod = self._free_producer(p)
        if prod is None:
            return
        self._try_claim(prod, n, type_id)
        self.drain(s)
        self._finish_claim(prod, commit)

    # --- checks -------------------------------------------------------------------------------------

    def _check_held(self, sub: Sub) -> None:
        if sub.taken is not None:
            assert bytes(sub.taken[0]) == sub.taken[1], "a taken record was overwritten before the next call"
        if sub.batch is not None:
            assert [bytes(v) for v in sub.batch_views] == sub.batch_expected, "a held record was overwritten"

    def _check_published(self, sub: Sub) -> None:
        published = self._published()[self.subs.index(sub)]
        assert published >= sub.last_published, "a subscriber's position went backwards"
        assert sub.join_pos <= published <= self._upper_bound(sub.released), (
            f"published {published} beyond what was released ({self._upper_bound(sub.released)})"
        )
        sub.last_published = published

    @invariant()
    def counters_match(self):
        stats = self.ring.statistics()
        assert stats.tail == self.tail
        assert stats.subscribers_joined == len(self.subs)
        assert stats.waiters == 0
        assert stats.recovered_claims == 0 and stats.dropped_subscribers == 0
        by_slot = {p.slot: p for p in stats.producers}
        for prod in self.producers:
            ps = by_slot.get(prod.writer.slot)
            records = ps.records if ps else 0
            assert records == prod.records
            if ps:
                assert ps.bytes == prod.nbytes
                assert ps.back_pressured == prod.back_pressured
                assert ps.not_connected == prod.not_connected
        subs = {s.slot: s for s in stats.subscribers}
        for sub in self.subs:
            st_ = subs[sub.reader.slot]
            assert st_.records == sub.delivered
            assert 0 <= st_.lag_bytes <= CAP
        if self.subs:
            assert stats.fill_bytes <= CAP

    @invariant()
    def held_views_are_intact(self):
        for sub in self.subs:
            self._check_held(sub)


class SingleProducerFifo(RingFifoMachine):
    MULTI_PRODUCER = False
    PRODUCERS = 1


class MultiProducerFifo(RingFifoMachine):
    MULTI_PRODUCER = True
    PRODUCERS = 3


class MultiProducerLiveness(RingFifoMachine):
    MULTI_PRODUCER = True
    PRODUCERS = 2
    CHECK_LIVENESS = True


# No "explain" phase: it traces every line (slow before Python 3.12) and a failure here is
# already explained by its shrunk steps.
_SETTINGS = settings(
    max_examples=200,
    stateful_step_count=60,
    report_multiple_bugs=False,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
)

TestSingleProducerFifo = SingleProducerFifo.TestCase
TestSingleProducerFifo.settings = _SETTINGS
TestMultiProducerFifo = MultiProducerFifo.TestCase
TestMultiProducerFifo.settings = _SETTINGS
TestRingLiveness = MultiProducerLiveness.TestCase
TestRingLiveness.settings = _SETTINGS
