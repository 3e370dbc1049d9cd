"""Properties of the deadline scheduler on generated workloads (hypothesis).

1. EDF order: with no misses, pops come out exactly in (deadline, -priority, push order) among the
   entries present, and admission control sheds exactly the entries a reference model picks.
2. Accounting: with misses, recovery policies and shedding, every pushed id comes out exactly once
   (popped, shed, or dropped at push, pop or expiry), and a popped entry is flagged MISSED exactly
   when its deadline had passed.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fabric.deadline import DeadlineScheduler, DeliveryFlags, MissPolicy

MS = 1_000_000
NO_DEADLINE_KEY = 2**63 - 1

# Few distinct deadlines and priorities, so ties (which the order and the shed rule must break
# deterministically) are common; sometimes the whole range.
entries = st.lists(
    st.tuples(
        st.integers(0, 5).map(lambda k: k * MS),
        st.one_of(st.sampled_from([0, 1, 200, 255]), st.integers(0, 255)),
    ),
    min_size=1,
    max_size=24,
)


class ReferenceQueue:
    """The scheduler's specification as a sorted list (no misses)."""

    def __init__(self, capacity: int, high: int, low: int) -> None:
        self.capacity, self.high, self.low = capacity, high, low
        self.items: list[tuple[int, int, int, int]] = []  # (deadline key, -priority, seq, id)
        self.seq = 0

    def _shed(self) -> list[int]:
        k = len(self.items) - self.low
        # lowest priority first, then latest deadline, then newest
        victims = sorted(self.items, key=lambda it: (-it[1], -it[0], -it[2]))[:k]
        for v in victims:
            self.items.remove(v)
        return [v[3] for v in victims]

    def push(self, batch: list[tuple[int, int, int]]) -> list[int]:
        shed: list[int] = []
        for task_id, deadline, priority in batch:
            if len(self.items) == self.capacity:
                shed += self._shed()
            self.items.append((deadline or NO_DEADLINE_KEY, -priority, self.seq, task_id))
            self.seq += 1
        if len(self.items) > self.high:
            shed += self._shed()
        return shed

    def pop(self, k: int) -> list[int]:
        self.items.sort()
        out = [it[3] for it in self.items[:k]]
        del self.items[:k]
        return out


@given(
    ops=st.lists(st.one_of(st.tuples(st.just("push"), entries), st.tuples(st.just("pop"), st.integers(0, 16))), max_size=40),
    capacity=st.integers(4, 48),
    data=st.data(),
)
@settings(max_examples=150)
def test_pops_follow_edf_order_among_entries_present_and_shedding_matches_the_model(ops, capacity, data):
    high = data.draw(st.integers(1, capacity), label="high")
    low = data.draw(st.integers(0, high - 1), label="low")
    sched = DeadlineScheduler(capacity, high_watermark=high, low_watermark=low)
    model = ReferenceQueue(capacity, high, low)
    next_id = 0
    out = np.zeros(16, dtype=np.int64)
    for op, arg in ops:
        if op == "push":
            batch = [(next_id + i, d, p) for i, (d, p) in enumerate(arg[:capacity])]
            next_id += len(batch)
            report = sched.push_batch(
                [b[0] for b in batch], [b[1] for b in batch], [b[2] for b in batch], [0] * len(batch), 0
            )
            assert sorted(report.shed) == sorted(model.push(batch))
            assert report.dropped == []
        else:
            n, dropped = sched.pop_batch(0, out, max_count=arg)
            assert dropped == 0
            assert out[:n].tolist() == model.pop(arg)
        assert len(sched) == len(model.items) <= high
    st_ = sched.statistics()
    assert st_.missed == 0
    assert st_.pushed == next_id


@given(
    policies=st.lists(st.sampled_from(list(MissPolicy)), min_size=1, max_size=4),
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("push"), st.lists(st.tuples(st.integers(0, 30), st.integers(0, 255), st.integers(0, 3)), min_size=1, max_size=20)),
            st.tuples(st.just("pop"), st.integers(1, 12)),
            st.tuples(st.just("expire"), st.just(0)),
            st.tuples(st.just("advance"), st.integers(0, 8)),
        ),
        max_size=60,
    ),
    capacity=st.integers(8, 40),
)
@settings(max_examples=200)
def test_every_pushed_id_comes_out_exactly_once_and_misses_are_flagged_as_they_happen(policies, ops, capacity):
    sched = DeadlineScheduler(capacity, class_policies=policies)
    n_cls = len(policies)
    deadline_of: dict[int, int] = {}
    outcome: dict[int, str] = {}
    now = 5 * MS
    next_id = 0
    out = np.zeros(12, dtype=np.int64)
    flags = np.zeros(12, dtype=np.int64)
    dropped = np.zeros(4, dtype=np.int64)

    def settle(ids, how: str) -> None:
        for i in ids:
            assert i not in outcome, f"id {i} came out twice ({outcome[i]} and {how})"
            outcome[i] = how

    def pop(k: int) -> None:
        n, nd = sched.pop_batch(now, out, flags, max_count=k, out_dropped=dropped)
        settle(dropped[:nd].tolist(), "dropped")
        for i, f in zip(out[:n].tolist(), flags[:n].tolist()):
            missed = deadline_of[i] != 0 and deadline_of[i] < now
            assert bool(f & DeliveryFlags.MISSED) == missed, (i, deadline_of[i], now, f)
        settle(out[:n].tolist(), "popped")

    for op, arg in ops:
        if op == "push":
            batch = arg[:capacity]
            ids = list(range(next_id, next_id + len(batch)))
            next_id += len(batch)
            dls = [d * MS for d, _, _ in batch]
            for i, d in zip(ids, dls):
                deadline_of[i] = d
            report = sched.push_batch(ids, dls, [p for _, p, _ in batch], [c % n_cls for _, _, c in batch], now)
            settle(report.dropped, "dropped")
            settle(report.shed, "shed")
        elif op == "pop":
            pop(arg)
        elif op == "expire":
            report = sched.expire(now)
            settle(report.dropped, "dropped")
        else:
            now += arg * MS
    while len(sched):
        pop(12)
    assert sorted(outcome) == list(range(next_id))
    st_ = sched.statistics()
    assert st_.pushed == next_id
    assert st_.popped == sum(1 for v in outcome.values() if v == "popped")
    assert st_.shed == sum(1 for v in outcome.values() if v == "shed")
    assert st_.dropped == sum(1 for v in outcome.values() if v == "dropped")
    assert st_.missed == st_.dropped + st_.delivered_late + st_.degraded + st_.escalated
    assert sum(st_.class_misses) == st_.missed
