"""CausalQueue: packets are held until their dependencies were delivered; bounded; timeouts counted."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fabric.causal import CausalQueue, OfferStatus, TimeoutPolicy

MS = 1_000_000


def drain(q: CausalQueue) -> list[int]:
    return q.pop_ready()


class TestOffer:
    def test_a_packet_without_dependencies_is_ready_at_once(self):
        q = CausalQueue(timeout_ns=MS)
        assert q.offer(1, (), 0) is OfferStatus.READY
        assert drain(q) == [1]
        assert q.is_delivered(1)

    def test_a_packet_waits_until_its_dependency_was_delivered(self):
        q = CausalQueue(timeout_ns=MS)
        assert q.offer(2, (1,), 0) is OfferStatus.WAITING
        assert drain(q) == []
        assert q.missing_dependencies(2) == (1,)
        assert q.offer(1, (), 0) is OfferStatus.READY
        assert drain(q) == [1, 2]

    def test_one_pop_returns_a_whole_chain_in_topological_order(self):
        q = CausalQueue(timeout_ns=MS)
        q.offer(4, (3,), 0)
        q.offer(3, (2, 1), 0)
        q.offer(2, (1,), 0)
        q.offer(1, (), 0)
        assert drain(q) == [1, 2, 3, 4]

    def test_pop_ready_respects_max_count_and_keeps_the_rest(self):
        q = CausalQueue(timeout_ns=MS)
        for i in range(5):
            q.offer(i, (), 0)
        assert q.pop_ready(2) == [0, 1]
        assert q.pop_ready() == [2, 3, 4]

    def test_duplicate_ids_are_refused_and_counted(self):
        q = CausalQueue(timeout_ns=MS)
        q.offer(1, (9,), 0)
        assert q.offer(1, (), 0) is OfferStatus.DUPLICATE
        q.offer(2, (), 0)
        drain(q)
        assert q.offer(2, (), 0) is OfferStatus.DUPLICATE
        assert q.statistics().duplicates == 2

    def test_a_packet_depending_on_itself_is_invalid(self):
        q = CausalQueue(timeout_ns=MS)
        assert q.offer(5, (5, 1), 0) is OfferStatus.INVALID
        assert q.statistics().invalid == 1
        assert len(q) == 0

    def test_repeated_dependencies_count_once(self):
        q = CausalQueue(timeout_ns=MS)
        q.offer(2, (1, 1, 1), 0)
        q.offer(1, (), 0)
        assert drain(q) == [1, 2]

    def test_mark_delivered_releases_dependants_of_packets_delivered_elsewhere(self):
        q = CausalQueue(timeout_ns=MS)
        q.offer(2, (1,), 0)
        q.offer(3, (1,), 0)
        assert q.mark_delivered(1) == 2
        assert drain(q) == [2, 3]
        assert q.mark_delivered(1) == 0

    def test_mark_delivered_on_a_held_packet_removes_it_so_it_is_never_delivered_twice(self):
        q = CausalQueue(timeout_ns=MS)
        q.offer(1, (), 0)
        q.offer(2, (7,), 0)
        q.mark_delivered(1)
        q.mark_delivered(2)
        assert drain(q) == []
        assert len(q) == 0
        assert q.statistics().delivered_elsewhere == 2


class TestBounds:
    def test_waiting_beyond_max_waiting_is_refused_as_full(self):
        q = CausalQueue(timeout_ns=MS, max_waiting=2)
        assert q.offer(1, (100,), 0) is OfferStatus.WAITING
        assert q.offer(2, (100,), 0) is OfferStatus.WAITING
        assert q.offer(3, (100,), 0) is OfferStatus.FULL
        assert q.statistics().refused_full == 1

    def test_the_packet_everyone_waits_for_still_gets_in_when_waiting_is_full(self):
        q = CausalQueue(timeout_ns=MS, max_waiting=2)
        q.offer(1, (100,), 0)
        q.offer(2, (100,), 0)
        assert q.offer(100, (), 0) is OfferStatus.READY
        assert drain(q) == [100, 1, 2]

    def test_ready_beyond_max_ready_is_refused_until_popped(self):
        q = CausalQueue(timeout_ns=MS, max_ready=2)
        q.offer(1, (), 0)
        q.offer(2, (), 0)
        assert q.offer(3, (), 0) is OfferStatus.FULL
        drain(q)
        assert q.offer(3, (), 0) is OfferStatus.READY

    def test_the_delivered_window_forgets_the_oldest_ids_and_then_a_dependency_counts_as_missing(self):
        q = CausalQueue(timeout_ns=MS, delivered_window=2)
        for i in (1, 2, 3):
            q.offer(i, (), 0)
        drain(q)
        assert not q.is_delivered(1) and q.is_delivered(3)
        assert q.statistics().forgotten == 1
        # 1 is forgotten: a packet depending on it waits (never delivered early) and times out.
        assert q.offer(4, (1,), 0) is OfferStatus.WAITING
        assert q.expire(2 * MS).dead_lettered == [4]


class TestTimeouts:
    def test_dead_letter_policy_removes_a_packet_whose_dependency_never_came(self):
        q = CausalQueue(timeout_ns=10 * MS, policy=TimeoutPolicy.DEAD_LETTER)
        q.offer(2, (1,), 0)
        assert q.expire(9 * MS).dead_lettered == []
        report = q.expire(10 * MS)
        assert report.dead_lettered == [2] and report.released == []
        assert drain(q) == []
        assert q.statistics().dead_lettered == 1

    def test_dead_lettering_cascades_to_packets_waiting_on_the_dead_one(self):
        q = CausalQueue(timeout_ns=10 * MS)
        q.offer(2, (1,), 0)
        q.offer(3, (2,), 5 * MS)
        q.offer(4, (3, 99), 6 * MS)
        assert q.expire(10 * MS).dead_lettered == [2, 3, 4]
        assert len(q) == 0
        # A later packet depending on a dead-lettered id is dead-lettered at once.
        assert q.offer(5, (2,), 11 * MS) is OfferStatus.DEAD_LETTERED
        assert q.statistics().dead_lettered == 4

    def test_release_policy_hands_out_a_timed_out_packet_and_counts_it(self):
        q = CausalQueue(timeout_ns=10 * MS, policy=TimeoutPolicy.RELEASE)
        q.offer(2, (1,), 0)
        q.offer(3, (2,), 1 * MS)
        report = q.expire(10 * MS)
        assert report.released == [2]
        assert drain(q) == [2, 3]
        assert q.statistics().released_on_timeout == 1

    def test_expire_only_touches_packets_older_than_the_timeout(self):
        q = CausalQueue(timeout_ns=10 * MS)
        q.offer(2, (1,), 0)
        q.offer(3, (1,), 8 * MS)
        assert q.expire(12 * MS).dead_lettered == [2]
        assert q.missing_dependencies(3) == (1,)

    def test_an_arrival_time_that_goes_backwards_is_taken_as_the_previous_one(self):
        q = CausalQueue(timeout_ns=10 * MS)
        q.offer(2, (1,), 5 * MS)
        q.offer(3, (1,), 1 * MS)  # earlier than the previous offer: treated as 5 ms
        assert q.expire(14 * MS).dead_lettered == []
        assert q.expire(15 * MS).dead_lettered == [2, 3]

    def test_invalid_configuration_is_refused(self):
        with pytest.raises(ValueError):
            CausalQueue(timeout_ns=0)
        with pytest.raises(ValueError):
            CausalQueue(timeout_ns=1, max_waiting=0)
        with pytest.raises(TypeError):
            CausalQueue(timeout_ns=1, policy="release")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- property


@st.composite
def dag_workloads(draw):
    """Packets 0..n-1 with dependencies on lower ids (some never offered), offered in random order."""
    n = draw(st.integers(1, 40))
    deps = [draw(st.lists(st.integers(0, i - 1), max_size=3)) if i else [] for i in range(n)]
    missing = draw(st.sets(st.integers(0, n - 1), max_size=3))  # never offered
    order = draw(st.permutations([i for i in range(n) if i not in missing]))
    actions = draw(st.lists(st.sampled_from(["pop", "expire", "mark"]), min_size=len(order), max_size=len(order)))
    return deps, order, actions


@given(workload=dag_workloads(), window=st.integers(4, 64), policy=st.sampled_from(list(TimeoutPolicy)))
@settings(max_examples=200)
def test_a_packet_is_never_delivered_before_its_dependencies_and_none_is_lost(workload, window, policy):
    deps, order, actions = workload
    q = CausalQueue(timeout_ns=10 * MS, policy=policy, max_waiting=64, delivered_window=window)
    delivered: list[int] = []
    released: set[int] = set()
    dead: set[int] = set()
    elsewhere: set[int] = set()
    now = 0
    for packet, action in zip(order, actions):
        status = q.offer(packet, deps[packet], now)
        assert status in (OfferStatus.READY, OfferStatus.WAITING, OfferStatus.DEAD_LETTERED)
        if status is OfferStatus.DEAD_LETTERED:
            dead.add(packet)
        now += MS
        if action == "pop":
            delivered += q.pop_ready()
        elif action == "expire":
            report = q.expire(now)
            released.update(report.released)
            dead.update(report.dead_lettered)
        elif packet % 7 == 3 and status is OfferStatus.WAITING:
            q.mark_delivered(packet)
            elsewhere.add(packet)
    delivered += q.pop_ready()
    report = q.expire(now + 100 * MS)
    released.update(report.released)
    dead.update(report.dead_lettered)
    delivered += q.pop_ready()

    assert len(delivered) == len(set(delivered))
    position = {p: i for i, p in enumerate(delivered)}
    for packet in delivered:
        if packet in released:
            continue  # RELEASE policy: may precede a dependency that never arrived (counted)
        for dep in deps[packet]:
            if dep in elsewhere:
                continue
            assert dep in position and position[dep] < position[packet], (packet, dep, delivered)
    # Nothing is lost silently: every offered packet was delivered, delivered elsewhere or dead-lettered.
    assert set(delivered) | elsewhere | dead == set(order)
    assert not (set(delivered) & dead)
    assert len(q) == 0
    if policy is TimeoutPolicy.DEAD_LETTER:
        assert not released
    else:
        assert not dead
        assert q.statistics().released_on_timeout == len(released)
