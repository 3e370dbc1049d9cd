"""Properties of hybrid logical clocks on generated clock behaviours and message exchanges (hypothesis).

The last two properties are about the two implementations of ``HybridLogicalClock``: the compiled
path (kernels, driven here through ``tests/_hlc_seam.py``) agrees exactly with the locked path on
generated operation sequences, and threads sharing a real compiled clock get unique stamps.

The multi-node test simulates N nodes, each reading a shared ``SimulatedTimeSource`` plus its own
fixed skew, exchanging messages in random order. True causality (happened-before) is tracked with
vector clocks alongside, and the HLC stamps are checked against it (Kulkarni et al. 2014, Thm 1-3).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st
from loguru import logger

from fabric.errors import CausalityViolation
from fabric.hlc import (
    LOGICAL_MASK,
    HybridLogicalClock,
    _CompiledHybridLogicalClock,
    hlc_logical,
    hlc_physical_ns,
    make_stamp,
)
from fabric.timesource import MonotonicTimeSource, SimulatedTimeSource
from tests._hlc_seam import scripted_compiled_clock

GRAIN = 1 << 16
T0 = (1_700_000_000 * 10**9) // GRAIN * GRAIN
MS = 1_000_000


class ScriptedTimeSource:
    """Physical time the test sets freely (it may run backwards)."""

    def __init__(self, t_ns: int) -> None:
        self.t_ns = t_ns

    def now_ns(self) -> int:
        return self.t_ns

    def monotonic_ns(self) -> int:
        return self.t_ns

    def create_checkpoint(self):  # pragma: no cover - not used by the clocks
        raise NotImplementedError

    def advance_simulation(self, delta_ns: int) -> None:
        self.t_ns += delta_ns


class SkewedTimeSource:
    """A node's view of the shared simulated time: ``base + skew`` (skew may be negative)."""

    def __init__(self, base: SimulatedTimeSource, skew_ns: int) -> None:
        self.base = base
        self.skew_ns = skew_ns

    def now_ns(self) -> int:
        return self.base.now_ns() + self.skew_ns

    def monotonic_ns(self) -> int:
        return self.now_ns()

    def create_checkpoint(self):  # pragma: no cover - not used by the clocks
        raise NotImplementedError

    def advance_simulation(self, delta_ns: int) -> None:  # pragma: no cover - not used
        self.base.advance_simulation(delta_ns)


@dataclass(frozen=True)
class Event:
    node: int
    stamp: int
    vc: tuple[int, ...]
    physical_ns: int


def happened_before(e: Event, f: Event) -> bool:
    return e.vc != f.vc and all(a <= b for a, b in zip(e.vc, f.vc))


@given(deltas=st.lists(st.integers(-20 * MS, 20 * MS), min_size=1, max_size=200))
def test_tick_strictly_increases_whatever_the_physical_clock_does(deltas):
    ts = ScriptedTimeSource(T0)
    clock = HybridLogicalClock(time_source=ts)
    last = clock.tick()
    backwards = 0
    for delta in deltas:
        ts.t_ns += delta
        backwards += delta < 0
        stamp = clock.tick()
        assert stamp > last
        last = stamp
    assert clock.statistics().backward_jumps == backwards


@given(
    skews=st.lists(st.integers(-5 * MS, 5 * MS), min_size=2, max_size=5),
    ops=st.lists(
        st.tuples(st.sampled_from(["local", "send", "receive", "advance"]), st.integers(0, 10**9), st.integers(0, 10**9)),
        max_size=120,
    ),
)
@settings(max_examples=150)
def test_happened_before_is_preserved_across_random_exchanges_among_skewed_nodes(skews, ops):
    n = len(skews)
    base = SimulatedTimeSource(T0)
    sources = [SkewedTimeSource(base, s) for s in skews]
    clocks = [HybridLogicalClock(time_source=src, max_offset_ns=1_000 * MS) for src in sources]
    vcs = [[0] * n for _ in range(n)]
    in_flight: list[tuple[int, int, tuple[int, ...]]] = []  # (to, stamp, vc)
    events: list[Event] = []
    last_stamp = [-1] * n

    def record(node: int, stamp: int) -> None:
        assert stamp > last_stamp[node], "stamps of one node must strictly increase"
        last_stamp[node] = stamp
        events.append(Event(node, stamp, tuple(vcs[node]), sources[node].now_ns()))

    for op, a, b in ops:
        if op == "advance":
            base.advance_simulation(a % (3 * MS))  # often less than a grain: counters grow
            continue
        if op == "receive":
            if not in_flight:
                continue
            to, stamp, vc = in_flight.pop(a % len(in_flight))
            merged = clocks[to].update(stamp).stamp
            vcs[to] = [max(x, y) for x, y in zip(vcs[to], vc)]
            vcs[to][to] += 1
            record(to, merged)
            continue
        node = a % n
        vcs[node][node] += 1
        stamp = clocks[node].tick()
        record(node, stamp)
        if op == "send":
            in_flight.append((b % n, stamp, tuple(vcs[node])))

    for e in events:
        for f in events:
            if happened_before(e, f):
                assert e.stamp < f.stamp, (e, f)
    # Bounded drift (Kulkarni Thm 2): l never runs ahead of the local physical reading by more
    # than the largest skew lead of another node; no logical carry happens at these rates.
    for e in events:
        assert hlc_physical_ns(e.stamp) - e.physical_ns <= max(skews) - skews[e.node]
    assert all(c.statistics().logical_carries == 0 for c in clocks)
    assert all(c.statistics().rejections == 0 for c in clocks)
    # Bounded counter (Kulkarni Thm 3): c counts events sharing l along a causal chain, so an
    # event's counter is below the number of recorded events with its physical part.
    same_l: dict[int, int] = {}
    for e in events:
        same_l[hlc_physical_ns(e.stamp)] = same_l.get(hlc_physical_ns(e.stamp), 0) + 1
        assert hlc_logical(e.stamp) < same_l[hlc_physical_ns(e.stamp)]


@given(start=st.integers(0, 300), ticks=st.integers(1, 400), remote_counter=st.integers(0, LOGICAL_MASK))
def test_the_logical_counter_never_exceeds_sixteen_bits_it_carries_instead(start, ticks, remote_counter):
    ts = SimulatedTimeSource(T0)
    clock = HybridLogicalClock(time_source=ts, initial_stamp=make_stamp(T0, LOGICAL_MASK - start))
    clock.update(make_stamp(T0, remote_counter))
    last = clock.last_stamp
    for _ in range(ticks):
        stamp = clock.tick()
        assert stamp == last + 1
        assert 0 <= hlc_logical(stamp) <= LOGICAL_MASK
        last = stamp
    crossed = hlc_physical_ns(last) > T0
    assert clock.statistics().logical_carries == int(crossed)


@given(
    max_offset_ns=st.integers(0, 100 * MS),
    lead_ns=st.integers(-100 * MS, 200 * MS),
    counter=st.integers(0, LOGICAL_MASK),
    prior_ticks=st.integers(0, 3),
)
def test_a_remote_is_accepted_exactly_when_its_physical_lead_is_within_max_offset(
    max_offset_ns, lead_ns, counter, prior_ticks
):
    ts = SimulatedTimeSource(T0 + 200 * MS)
    clock = HybridLogicalClock(time_source=ts, max_offset_ns=max_offset_ns)
    for _ in range(prior_ticks):
        clock.tick()
    before = clock.last_stamp
    remote = make_stamp(ts.now_ns() + lead_ns, counter)
    within = hlc_physical_ns(remote) - ts.now_ns() <= max_offset_ns
    assert clock.validate_causality(remote) is within
    if within:
        result = clock.update(remote)
        assert result.accepted
        assert result.stamp > remote and result.stamp > before
    else:
        try:
            clock.update(remote)
        except CausalityViolation:
            pass
        else:  # pragma: no cover - the assertion below explains the failure
            raise AssertionError("a remote beyond max_offset_ns was accepted")
        assert clock.last_stamp == before
        assert clock.statistics().rejections == 1


# ----------------------------------------------------------------------------- compiled vs locked

_OP = st.one_of(
    st.tuples(st.just("advance"), st.integers(-5 * MS, 5 * MS), st.just(0)),  # negative: a backward jump
    st.tuples(st.just("tick"), st.just(0), st.just(0)),
    st.tuples(st.just("tick_n"), st.integers(1, LOGICAL_MASK + 1), st.just(0)),
    st.tuples(st.sampled_from(["try_update", "update", "merge", "validate"]), st.integers(-20 * MS, 80 * MS),
              st.integers(0, LOGICAL_MASK)),
    st.tuples(st.just("deps"), st.integers(0, 50), st.just(0)),
    # a remote next to the local stamp: remote == old + 1 must still give remote + 1
    st.tuples(st.sampled_from(["near_merge", "near_try_update"]), st.integers(-2, 2), st.just(0)),
    # a remote whose lead is exactly max_offset_ns + a (a in -1..1): the acceptance boundary
    st.tuples(st.sampled_from(["edge_merge", "edge_try_update"]), st.integers(-1, 1), st.integers(0, LOGICAL_MASK)),
)


def _run(clock, ts: ScriptedTimeSource, ops, max_offset_ns: int) -> list:
    """Apply ``ops`` to ``clock``, returning everything each operation returned or raised."""
    out: list = []
    issued: list[int] = []
    for op, a, b in ops:
        if op == "advance":
            ts.t_ns += a
        elif op.startswith("near_"):
            remote = max(0, clock.last_stamp + a)
            out.append(clock.merge(remote) if op == "near_merge" else clock.try_update(remote))
        elif op.startswith("edge_"):
            grain_after = (ts.t_ns + max_offset_ns + GRAIN) // GRAIN * GRAIN
            ts.t_ns = grain_after - max_offset_ns - a  # never earlier than before
            remote = make_stamp(grain_after, b)
            out.append(clock.merge(remote) if op == "edge_merge" else clock.try_update(remote))
        elif op == "tick":
            issued.append(clock.tick())
            out.append(issued[-1])
        elif op == "tick_n":
            issued.append(clock.tick_n(a))
            out.append(issued[-1])
        elif op == "deps":
            out.append(clock.causal_dependencies(issued[-1 - a % len(issued)]) if issued else None)
        else:
            remote = make_stamp(max(0, ts.t_ns + a), b)
            if op == "try_update":
                out.append(clock.try_update(remote))
            elif op == "merge":
                out.append(clock.merge(remote))
            elif op == "validate":
                out.append(clock.validate_causality(remote))
            else:
                try:
                    out.append(clock.update(remote))
                except CausalityViolation as exc:
                    out.append(("CausalityViolation", str(exc)))
        out.append(clock.last_stamp)
    out.append(clock.statistics())
    return out


@given(
    ops=st.lists(_OP, max_size=80),
    max_offset_ns=st.integers(0, 50 * MS),
    history_size=st.integers(0, 6),
    start_counter=st.one_of(st.integers(0, LOGICAL_MASK), st.integers(LOGICAL_MASK - 3, LOGICAL_MASK)),
    start_lead=st.integers(-3, 3),
)
@settings(max_examples=300)
def test_the_compiled_and_locked_paths_agree_on_any_operation_sequence(
    ops, max_offset_ns, history_size, start_counter, start_lead
):
    """Same script of physical readings (backward jumps included), same calls: same results,
    same stamps after every call, same statistics, same log lines (jumps, rejections)."""
    kwargs = dict(
        max_offset_ns=max_offset_ns,
        history_size=history_size,
        initial_stamp=make_stamp(T0 + start_lead * GRAIN, start_counter),
    )
    runs = []
    for path in ("locked", "compiled"):
        ts = ScriptedTimeSource(T0)
        lines: list[str] = []
        handler = logger.add(lambda m: lines.append(str(m)), level="DEBUG", format="{level} {message}")
        logger.enable("fabric")
        try:
            if path == "locked":
                clock = HybridLogicalClock(time_source=ts, **kwargs)
                assert type(clock) is HybridLogicalClock
                results = _run(clock, ts, ops, max_offset_ns)
            else:
                with scripted_compiled_clock(ts, **kwargs) as clock:
                    results = _run(clock, ts, ops, max_offset_ns)
        finally:
            logger.disable("fabric")
            logger.remove(handler)
        runs.append((results, lines))
    (locked, locked_lines), (compiled, compiled_lines) = runs
    assert compiled == locked
    assert compiled_lines == locked_lines


@given(
    plans=st.lists(
        st.lists(st.sampled_from(["tick", "tick_n", "merge", "try_update"]), min_size=1, max_size=300),
        min_size=2,
        max_size=4,
    ),
    remote_lead_ms=st.integers(-100, 100),
)
@settings(max_examples=25)
def test_threads_on_the_compiled_clock_get_unique_increasing_stamps(plans, remote_lead_ms):
    """Real compiled clock (CLOCK_MONOTONIC read in the kernels), one thread per plan."""
    src = MonotonicTimeSource()
    clock = HybridLogicalClock(time_source=src)
    assert type(clock) is _CompiledHybridLogicalClock
    remote = make_stamp(src.now_ns() + remote_lead_ms * MS, 0)
    results: list[list[int]] = [[] for _ in plans]
    errors: list[BaseException] = []

    def work(plan: list[str], out: list[int]) -> None:
        try:
            for op in plan:
                if op == "tick":
                    out.append(clock.tick())
                elif op == "tick_n":
                    first = clock.tick_n(2)
                    out.extend((first, first + 1))
                elif op == "merge":
                    out.append(clock.merge(remote))
                else:
                    out.append(clock.try_update(remote).stamp)
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)
            raise

    threads = [threading.Thread(target=work, args=(p, r)) for p, r in zip(plans, results)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert not errors
    merged = [s for r in results for s in r]
    assert len(set(merged)) == len(merged)
    for r in results:
        assert r == sorted(r)
    stats = clock.statistics()
    ops = [op for p in plans for op in p]
    assert stats.ticks == ops.count("tick") + 2 * ops.count("tick_n")
    assert stats.updates == ops.count("merge") + ops.count("try_update")
    assert stats.backward_jumps == 0 and stats.rejections == 0
    assert stats.stamp == max(merged)
