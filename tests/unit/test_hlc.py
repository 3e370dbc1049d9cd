"""Hybrid logical clocks: stamp packing, Kulkarni's rules, max offset, backward jumps, the shared clock."""

from __future__ import annotations

import gc
import threading

import numpy as np
import pytest
from loguru import logger

from fabric.errors import CausalityViolation, ClosedResourceError, LayoutError
import fabric.hlc as hlc_module
from fabric.hlc import (
    CLOCK_CELL,
    HLC_REGION_BYTES,
    INVALID_STAMP,
    LOGICAL_MASK,
    REJECTED,
    HybridLogicalClock,
    SharedHybridClock,
    hlc_logical,
    hlc_physical_ns,
    make_stamp,
    tick_shared,
    update_shared,
)
from fabric.segment import Segment
from fabric.timesource import MonotonicTimeSource, SimulatedTimeSource, get_time_source, set_time_source
from shm_layouts.header import SEGMENT_HEADER_BYTES, SegmentKind
from tests._hlc_seam import scripted_compiled_clock

GRAIN = 1 << 16
T0 = 1_700_000_000 * 10**9  # a realistic epoch time, a multiple of the grain below
T0 -= T0 % GRAIN
MS = 1_000_000


class ScriptedTimeSource:
    """A TimeSource whose physical time the test sets freely, backwards included."""

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


@pytest.fixture
def log_lines():
    """Log lines from fabric (the package disables its logs by default, as libraries should)."""
    lines: list[str] = []
    handler = logger.add(lambda m: lines.append(str(m)), level="DEBUG", format="{level} {message}")
    logger.enable("fabric")
    yield lines
    logger.disable("fabric")
    logger.remove(handler)


@pytest.fixture
def region():
    """A plain int64 array standing in for a shared region (the kernels only see an address)."""
    return np.zeros(HLC_REGION_BYTES // 8, dtype=np.int64)


class TestStampHelpers:
    def test_make_stamp_keeps_the_physical_grain_and_the_counter(self):
        s = make_stamp(T0 + 12345, 7)
        assert hlc_physical_ns(s) == T0
        assert hlc_logical(s) == 7
        assert s == T0 | 7

    def test_stamps_order_like_integers_physical_first_then_logical(self):
        assert make_stamp(T0, LOGICAL_MASK) < make_stamp(T0 + GRAIN, 0)
        assert make_stamp(T0, 1) < make_stamp(T0, 2)

    def test_make_stamp_refuses_counters_beyond_sixteen_bits_and_negative_times(self):
        with pytest.raises(ValueError):
            make_stamp(T0, LOGICAL_MASK + 1)
        with pytest.raises(ValueError):
            make_stamp(T0, -1)
        with pytest.raises(ValueError):
            make_stamp(-1, 0)
        with pytest.raises(ValueError):
            make_stamp(1 << 62, 0)


class TestTick:
    def test_tick_at_a_fixed_physical_time_counts_up_the_logical_part(self):
        clock = HybridLogicalClock(time_source=SimulatedTimeSource(T0))
        stamps = [clock.tick() for _ in range(5)]
        assert stamps == [T0, T0 + 1, T0 + 2, T0 + 3, T0 + 4]

    def test_tick_jumps_to_physical_time_once_it_moves_past_a_grain(self):
        ts = SimulatedTimeSource(T0)
        clock = HybridLogicalClock(time_source=ts)
        clock.tick()
        clock.tick()
        ts.advance_simulation(3 * GRAIN + 5)
        assert clock.tick() == T0 + 3 * GRAIN

    def test_physical_time_moving_within_one_grain_keeps_counting(self):
        ts = SimulatedTimeSource(T0)
        clock = HybridLogicalClock(time_source=ts)
        clock.tick()
        ts.advance_simulation(GRAIN - 1)
        assert clock.tick() == T0 + 1

    def test_logical_overflow_carries_into_the_physical_part_and_is_counted(self):
        clock = HybridLogicalClock(time_source=SimulatedTimeSource(T0), initial_stamp=make_stamp(T0, LOGICAL_MASK - 1))
        assert clock.tick() == make_stamp(T0, LOGICAL_MASK)
        carried = clock.tick()
        assert carried == make_stamp(T0 + GRAIN, 0)
        assert clock.statistics().logical_carries == 1

    def test_tick_n_reserves_consecutive_stamps(self):
        clock = HybridLogicalClock(time_source=SimulatedTimeSource(T0))
        first = clock.tick_n(10)
        assert first == T0
        assert clock.tick() == T0 + 10
        assert clock.statistics().ticks == 11
        with pytest.raises(ValueError):
            clock.tick_n(0)

    def test_default_time_source_is_the_process_wide_one(self):
        sim = SimulatedTimeSource(T0 + 5 * GRAIN)
        previous = set_time_source(sim)
        try:
            clock = HybridLogicalClock()
            assert clock.time_source is sim
            assert clock.tick() == T0 + 5 * GRAIN
        finally:
            set_time_source(previous)
        assert get_time_source() is previous


class TestUpdate:
    def test_remote_ahead_within_max_offset_pulls_the_clock_forward(self):
        clock = HybridLogicalClock(time_source=SimulatedTimeSource(T0), max_offset_ns=10 * MS)
        clock.tick()
        remote = make_stamp(T0 + 5 * MS, 3)
        result = clock.update(remote)
        assert result.accepted and result.remote_ahead
        assert result.stamp == remote + 1
        assert result.drift_ns == hlc_physical_ns(remote) - T0
        assert clock.tick() == remote + 2

    def test_remote_behind_only_increments_the_local_counter(self):
        ts = SimulatedTimeSource(T0)
        clock = HybridLogicalClock(time_source=ts)
        local = clock.tick()
        result = clock.update(make_stamp(T0 - 10 * GRAIN, 40))
        assert result.stamp == local + 1
        assert not result.remote_ahead

    def test_equal_physical_parts_take_the_larger_counter_plus_one(self):
        clock = HybridLogicalClock(time_source=SimulatedTimeSource(T0), initial_stamp=make_stamp(T0, 4))
        assert clock.update(make_stamp(T0, 9)).stamp == make_stamp(T0, 10)
        assert clock.update(make_stamp(T0, 2)).stamp == make_stamp(T0, 11)

    def test_remote_too_far_ahead_raises_causality_violation_and_leaves_the_clock_alone(self, log_lines):
        clock = HybridLogicalClock(time_source=SimulatedTimeSource(T0), max_offset_ns=MS)
        before = clock.tick()
        with pytest.raises(CausalityViolation, match="max_offset_ns=1000000"):
            clock.update(make_stamp(T0 + 2 * MS, 0))
        assert clock.last_stamp == before
        stats = clock.statistics()
        assert (stats.rejections, stats.updates) == (1, 0)
        assert any(line.startswith("DEBUG") and "rejected" in line for line in log_lines)

    def test_try_update_reports_a_rejection_without_raising(self):
        clock = HybridLogicalClock(time_source=SimulatedTimeSource(T0), max_offset_ns=MS)
        result = clock.try_update(make_stamp(T0 + 3 * MS, 0))
        assert not result.accepted
        assert "ahead of local physical time" in result.reason
        assert result.stamp == clock.last_stamp == 0

    def test_a_remote_exactly_at_max_offset_is_accepted(self):
        clock = HybridLogicalClock(time_source=SimulatedTimeSource(T0), max_offset_ns=4 * GRAIN)
        assert clock.update(make_stamp(T0 + 4 * GRAIN, 0)).accepted

    def test_malformed_remote_stamps_raise_value_or_type_errors(self):
        clock = HybridLogicalClock(time_source=SimulatedTimeSource(T0))
        with pytest.raises(ValueError):
            clock.update(-1)
        with pytest.raises(ValueError):
            clock.update(1 << 62)
        with pytest.raises(TypeError):
            clock.update(1.5)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            clock.update(True)


class TestBackwardJumps:
    def test_a_backward_jump_is_counted_logged_and_stamps_keep_increasing(self, log_lines):
        ts = ScriptedTimeSource(T0 + 10 * MS)
        clock = HybridLogicalClock(time_source=ts)
        a = clock.tick()
        ts.t_ns = T0  # the host clock stepped back 10 ms
        b = clock.tick()
        c = clock.tick()
        assert a < b < c
        stats = clock.statistics()
        assert stats.backward_jumps == 1
        assert stats.max_backward_jump_ns == 10 * MS
        assert any(line.startswith("WARNING") and "backwards by 10000000 ns" in line for line in log_lines)

    def test_a_physical_clock_that_stands_still_is_not_a_backward_jump(self):
        clock = HybridLogicalClock(time_source=SimulatedTimeSource(T0))
        for _ in range(3):
            clock.tick()
        assert clock.statistics().backward_jumps == 0


class TestQueries:
    def test_validate_causality_agrees_with_update(self):
        clock = HybridLogicalClock(time_source=SimulatedTimeSource(T0), max_offset_ns=MS)
        near, far = make_stamp(T0 + MS // 2, 0), make_stamp(T0 + 2 * MS, 0)
        assert clock.validate_causality(near) is True
        assert clock.validate_causality(far) is False
        assert clock.try_update(near).accepted
        assert not clock.try_update(far).accepted

    def test_causal_dependencies_are_the_remote_stamps_merged_before_a_local_stamp(self):
        ts = SimulatedTimeSource(T0)
        clock = HybridLogicalClock(time_source=ts)
        r1, r2, r3 = make_stamp(T0 - GRAIN, 1), make_stamp(T0 - GRAIN, 9), make_stamp(T0 + GRAIN, 0)
        clock.tick()
        clock.update(r1)
        s1 = clock.tick()
        clock.update(r2)
        s2 = clock.tick()
        clock.update(r3)
        s3 = clock.tick()
        assert clock.causal_dependencies(s1) == [r1]
        assert clock.causal_dependencies(s2) == [r1, r2]
        assert clock.causal_dependencies(s3) == [r1, r2, r3]
        assert clock.causal_dependencies(T0) == []

    def test_the_dependency_history_forgets_the_oldest_merges_first(self):
        clock = HybridLogicalClock(time_source=SimulatedTimeSource(T0), history_size=2)
        remotes = [make_stamp(T0 - GRAIN, c) for c in (1, 2, 3)]
        for r in remotes:
            clock.update(r)
        assert clock.causal_dependencies(clock.tick()) == remotes[1:]
        assert clock.statistics().history_len == 2

    def test_statistics_count_ticks_updates_and_rejections(self):
        clock = HybridLogicalClock(time_source=SimulatedTimeSource(T0), max_offset_ns=MS)
        clock.tick()
        clock.tick()
        clock.update(make_stamp(T0, 5))
        ahead = make_stamp(T0 + 5 * MS, 0)
        clock.try_update(ahead)
        stats = clock.statistics()
        assert (stats.ticks, stats.updates, stats.rejections) == (2, 1, 1)
        assert stats.max_drift_ns == hlc_physical_ns(ahead) - T0
        assert stats.stamp == clock.last_stamp


class TestThreads:
    def test_threads_ticking_one_clock_never_share_a_stamp(self):
        clock = HybridLogicalClock(time_source=SimulatedTimeSource(T0))
        results: list[list[int]] = [[] for _ in range(4)]

        def work(out: list[int]) -> None:
            for _ in range(2000):
                out.append(clock.tick())

        threads = [threading.Thread(target=work, args=(r,)) for r in results]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert not any(t.is_alive() for t in threads)
        merged = [s for r in results for s in r]
        assert len(set(merged)) == 8000
        for r in results:
            assert r == sorted(r) and len(set(r)) == len(r)

    @pytest.mark.parametrize("source", ["monotonic", "simulated"])
    def test_threads_mixing_every_operation_never_share_or_reorder_a_stamp(self, source):
        src = MonotonicTimeSource() if source == "monotonic" else SimulatedTimeSource(T0)
        clock = HybridLogicalClock(time_source=src)
        assert (type(clock) is hlc_module._CompiledHybridLogicalClock) == (source == "monotonic")
        threads_n, rounds = 4, 3000
        results: list[list[int]] = [[] for _ in range(threads_n)]
        remote = clock.tick()

        def work(k: int, out: list[int]) -> None:
            for i in range(rounds):
                op = (i + k) % 4
                if op == 0:
                    out.append(clock.tick())
                elif op == 1:
                    first = clock.tick_n(3)
                    out.extend((first, first + 1, first + 2))
                elif op == 2:
                    out.append(clock.merge(remote))
                else:
                    out.append(clock.try_update(remote).stamp)

        threads = [threading.Thread(target=work, args=(k, r)) for k, r in enumerate(results)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads)
        merged = [s for r in results for s in r]
        assert len(set(merged)) == len(merged)  # unique across threads
        assert all(s > remote for s in merged)
        for r in results:
            assert r == sorted(r)  # monotonic within each thread
        ops = [(i + k) % 4 for k in range(threads_n) for i in range(rounds)]
        stats = clock.statistics()
        assert stats.ticks == 1 + ops.count(0) + 3 * ops.count(1)
        assert stats.updates == ops.count(2) + ops.count(3)
        assert stats.stamp == max(merged) == clock.last_stamp
        # readings are taken inside the critical section: no thread saw another's later reading
        assert stats.backward_jumps == 0


class TestImplementationChoice:
    def test_a_monotonic_source_gets_the_compiled_path_any_other_source_the_locked_one(self):
        assert type(HybridLogicalClock(time_source=MonotonicTimeSource())) is hlc_module._CompiledHybridLogicalClock
        assert type(HybridLogicalClock(time_source=SimulatedTimeSource(T0))) is HybridLogicalClock
        assert type(HybridLogicalClock(time_source=ScriptedTimeSource(T0))) is HybridLogicalClock

        class OwnMonotonic(MonotonicTimeSource):
            def now_ns(self) -> int:
                return T0

        # a subclass may read another clock: only the exact type reads CLOCK_MONOTONIC in kernels
        assert type(HybridLogicalClock(time_source=OwnMonotonic())) is HybridLogicalClock

    def test_both_paths_are_hybrid_logical_clocks_with_the_same_public_api(self):
        compiled = HybridLogicalClock(time_source=MonotonicTimeSource())
        locked = HybridLogicalClock(time_source=SimulatedTimeSource(T0))
        for clock in (compiled, locked):
            assert isinstance(clock, HybridLogicalClock)
            for name in ("tick", "tick_n", "try_update", "update", "merge", "validate_causality",
                         "causal_dependencies", "statistics", "last_stamp", "max_offset_ns", "time_source"):
                assert hasattr(clock, name), name

    def test_the_default_source_decides_when_none_is_given(self):
        previous = set_time_source(MonotonicTimeSource())
        try:
            assert type(HybridLogicalClock()) is hlc_module._CompiledHybridLogicalClock
            set_time_source(SimulatedTimeSource(T0))
            clock = HybridLogicalClock()
            assert type(clock) is HybridLogicalClock and clock.tick() == T0
        finally:
            set_time_source(previous)

    def test_a_user_subclass_keeps_the_locked_path(self):
        class Mine(HybridLogicalClock):
            pass

        clock = Mine(time_source=MonotonicTimeSource())
        assert type(clock) is Mine
        assert clock.tick() < clock.tick()


class TestCompiledPath:
    """The real compiled clock: CLOCK_MONOTONIC read inside each kernel call."""

    def test_ticks_strictly_increase_and_follow_the_sources_physical_time(self):
        src = MonotonicTimeSource()
        clock = HybridLogicalClock(time_source=src)
        last = -1
        for _ in range(5000):
            before = src.now_ns()
            stamp = clock.tick()
            after = src.now_ns()
            assert stamp > last
            # l = max(old + 1, pt): never below the reading's grain, never past the later reading
            assert hlc_physical_ns(stamp) >= before & ~LOGICAL_MASK
            assert hlc_physical_ns(stamp) <= after
            last = stamp
        stats = clock.statistics()
        assert (stats.ticks, stats.backward_jumps, stats.logical_carries, stats.stamp) == (5000, 0, 0, last)

    def test_tick_n_reserves_consecutive_stamps_and_checks_n(self):
        clock = HybridLogicalClock(time_source=MonotonicTimeSource())
        a = clock.tick()
        first = clock.tick_n(10)
        assert first > a
        assert clock.last_stamp == first + 9
        assert clock.tick() > first + 9
        assert clock.statistics().ticks == 12
        for bad in (0, LOGICAL_MASK + 2):
            with pytest.raises(ValueError):
                clock.tick_n(bad)

    def test_an_initial_stamp_ahead_of_physical_time_counts_up_from_it(self):
        start = make_stamp(MonotonicTimeSource().now_ns() + 1000 * MS, 7)
        clock = HybridLogicalClock(time_source=MonotonicTimeSource(), initial_stamp=start)
        assert [clock.tick(), clock.tick()] == [start + 1, start + 2]

    def test_a_remote_ahead_pulls_the_clock_and_a_remote_behind_only_counts(self):
        src = MonotonicTimeSource()
        clock = HybridLogicalClock(time_source=src)
        remote = make_stamp(src.now_ns() + 100 * MS, 3)
        result = clock.try_update(remote)
        assert result.accepted and result.remote_ahead
        assert result.stamp == remote + 1 == clock.last_stamp
        assert 0 < result.drift_ns <= 100 * MS
        behind = clock.try_update(make_stamp(src.now_ns() - 100 * MS, 0))
        assert behind.accepted and not behind.remote_ahead and behind.stamp == remote + 2
        assert clock.merge(make_stamp(src.now_ns() - 100 * MS, 0)) == remote + 3
        assert clock.update(remote).stamp == remote + 4
        assert clock.statistics().updates == 4

    def test_a_remote_beyond_max_offset_is_rejected_counted_and_logged(self, log_lines):
        src = MonotonicTimeSource()
        clock = HybridLogicalClock(time_source=src, max_offset_ns=MS)
        before = clock.tick()
        far = make_stamp(src.now_ns() + 1000 * MS, 0)
        result = clock.try_update(far)
        assert not result.accepted and result.stamp == before and result.remote_ahead
        assert "ahead of local physical time" in result.reason and "max_offset_ns=1000000" in result.reason
        assert MS < result.drift_ns <= 1000 * MS
        assert clock.merge(far) == REJECTED
        with pytest.raises(CausalityViolation, match="max_offset_ns=1000000"):
            clock.update(far)
        assert clock.last_stamp == before
        stats = clock.statistics()
        assert (stats.rejections, stats.updates) == (3, 0)
        assert stats.max_drift_ns >= result.drift_ns
        rejected = [line for line in log_lines if line.startswith("DEBUG") and "rejected" in line]
        assert len(rejected) == 3
        assert f"remote stamp {far} is " in rejected[1]  # merge's log carries the same details

    def test_malformed_remote_stamps_raise_before_reaching_a_kernel(self):
        clock = HybridLogicalClock(time_source=MonotonicTimeSource())
        for method in (clock.try_update, clock.update, clock.merge, clock.validate_causality):
            for bad, exc in ((-1, ValueError), (1 << 62, ValueError), (1 << 64, ValueError), (1.5, TypeError), (True, TypeError)):
                with pytest.raises(exc):
                    method(bad)
        stats = clock.statistics()
        assert (stats.updates, stats.rejections, stats.stamp) == (0, 0, 0)

    def test_numpy_integer_stamps_are_accepted(self):
        src = MonotonicTimeSource()
        clock = HybridLogicalClock(time_source=src)
        remote = make_stamp(src.now_ns() + 100 * MS, 0)  # ahead: the result does not depend on the reading
        assert clock.merge(np.int64(remote)) == remote + 1
        assert clock.try_update(np.uint64(remote)).stamp == remote + 2

    def test_validate_causality_agrees_with_update(self):
        src = MonotonicTimeSource()
        clock = HybridLogicalClock(time_source=src, max_offset_ns=100 * MS)
        near, far = make_stamp(src.now_ns() + MS, 0), make_stamp(src.now_ns() + 10_000 * MS, 0)
        assert clock.validate_causality(near) is True
        assert clock.validate_causality(far) is False
        assert clock.try_update(near).accepted
        assert not clock.try_update(far).accepted

    def test_a_backward_jump_is_counted_logged_and_stamps_keep_increasing(self, log_lines):
        clock = HybridLogicalClock(time_source=MonotonicTimeSource())
        a = clock.tick()
        clock._shift_physical_ns(-10 * MS)  # the anchor moves: the kernels read 10 ms less
        b = clock.tick()
        c = clock.tick()
        assert a < b < c
        stats = clock.statistics()
        assert stats.backward_jumps == 1
        assert 0 < stats.max_backward_jump_ns <= 10 * MS
        warnings = [line for line in log_lines if line.startswith("WARNING") and "went backwards" in line]
        assert len(warnings) == 1
        assert f"backwards by {stats.max_backward_jump_ns} ns" in warnings[0] and "#1" in warnings[0]

    @pytest.mark.parametrize("op", ["tick_n", "try_update", "merge", "validate_causality"])
    def test_every_operation_that_reads_the_clock_detects_a_backward_jump(self, op, log_lines):
        clock = HybridLogicalClock(time_source=MonotonicTimeSource())
        before = clock.tick()
        clock._shift_physical_ns(-5 * MS)
        remote = make_stamp(T0, 0)
        {"tick_n": lambda: clock.tick_n(3), "try_update": lambda: clock.try_update(remote),
         "merge": lambda: clock.merge(remote), "validate_causality": lambda: clock.validate_causality(remote)}[op]()
        assert clock.statistics().backward_jumps == 1
        assert any("went backwards" in line for line in log_lines)
        assert clock.tick() > max(before, clock.last_stamp - 1)

    def test_the_dependency_history_keeps_the_last_merges_in_order(self):
        src = MonotonicTimeSource()
        clock = HybridLogicalClock(time_source=src, history_size=2)
        base = make_stamp(src.now_ns() - 1000 * MS, 0)
        remotes = [base + 1, base + 2, base + 3]
        first = clock.merge(remotes[0])
        assert clock.causal_dependencies(first) == [remotes[0]]
        assert clock.causal_dependencies(first - 1) == []
        for r in remotes[1:]:
            clock.merge(r)
        assert clock.causal_dependencies(clock.tick()) == remotes[1:]
        assert clock.statistics().history_len == 2
        no_history = HybridLogicalClock(time_source=src, history_size=0)
        no_history.merge(base)
        assert no_history.causal_dependencies(no_history.tick()) == []
        assert no_history.statistics().history_len == 0

    def test_a_saved_tick_keeps_the_state_it_writes_alive(self):
        tick = HybridLogicalClock(time_source=MonotonicTimeSource()).tick
        gc.collect()
        for _ in range(100):
            np.ones(64, dtype=np.int64)  # reuse freed memory, if the state had been freed
        a = tick()
        assert tick() > a

    def test_repr_shows_the_stamp(self):
        clock = HybridLogicalClock(time_source=MonotonicTimeSource())
        s = clock.tick()
        assert repr(clock) == f"<HybridLogicalClock l={hlc_physical_ns(s)} c={hlc_logical(s)}>"


class TestCompiledRulesThroughTheSeam:
    """The compiled rule kernels with a scripted physical time (tests/_hlc_seam.py)."""

    def test_fixed_time_counts_up_then_jumps_to_physical_time(self):
        ts = ScriptedTimeSource(T0)
        with scripted_compiled_clock(ts) as clock:
            assert [clock.tick() for _ in range(3)] == [T0, T0 + 1, T0 + 2]
            ts.t_ns += GRAIN - 1
            assert clock.tick() == T0 + 3
            ts.t_ns += 3 * GRAIN
            assert clock.tick() == T0 + 3 * GRAIN  # (T0 + 4 grains - 1 ns) truncated to its grain

    def test_logical_overflow_carries_and_is_counted(self):
        ts = ScriptedTimeSource(T0)
        with scripted_compiled_clock(ts, initial_stamp=make_stamp(T0, LOGICAL_MASK - 1)) as clock:
            assert clock.tick() == make_stamp(T0, LOGICAL_MASK)
            assert clock.tick() == make_stamp(T0 + GRAIN, 0)
            assert clock.tick_n(LOGICAL_MASK + 1) == make_stamp(T0 + GRAIN, 1)
            assert clock.statistics().logical_carries == 2

    @pytest.mark.parametrize("path", ["locked", "compiled"])
    def test_an_increment_landing_exactly_on_the_physical_grain_is_not_a_carry(self, path):
        ts = ScriptedTimeSource(T0)
        start = make_stamp(T0 - GRAIN, LOGICAL_MASK)
        remote = make_stamp(T0 - GRAIN, LOGICAL_MASK)
        if path == "locked":
            clocks = [HybridLogicalClock(time_source=ts, initial_stamp=start) for _ in range(2)]
            assert (clocks[0].tick(), clocks[1].merge(remote)) == (T0, T0)
            assert [c.statistics().logical_carries for c in clocks] == [0, 0]
        if path == "compiled":
            with scripted_compiled_clock(ts, initial_stamp=start) as a, scripted_compiled_clock(ts, initial_stamp=start) as b:
                assert (a.tick(), b.merge(remote)) == (T0, T0)
                assert [c.statistics().logical_carries for c in (a, b)] == [0, 0]

    def test_equal_physical_parts_take_the_larger_counter_plus_one(self):
        ts = ScriptedTimeSource(T0)
        with scripted_compiled_clock(ts, initial_stamp=make_stamp(T0, 4)) as clock:
            assert clock.update(make_stamp(T0, 9)).stamp == make_stamp(T0, 10)
            assert clock.merge(make_stamp(T0, 2)) == make_stamp(T0, 11)

    def test_a_remote_exactly_at_max_offset_is_accepted_one_ns_more_is_not(self):
        ts = ScriptedTimeSource(T0)
        with scripted_compiled_clock(ts, max_offset_ns=4 * GRAIN) as clock:
            assert clock.update(make_stamp(T0 + 4 * GRAIN, 0)).accepted
        ts = ScriptedTimeSource(T0 - 1)
        with scripted_compiled_clock(ts, max_offset_ns=4 * GRAIN) as clock:
            result = clock.try_update(make_stamp(T0 + 4 * GRAIN, 0))
            assert not result.accepted and result.drift_ns == 4 * GRAIN + 1

    def test_the_jump_size_and_log_are_exact(self, log_lines):
        ts = ScriptedTimeSource(T0 + 10 * MS)
        with scripted_compiled_clock(ts) as clock:
            a = clock.tick()
            ts.t_ns = T0
            b = clock.tick()
            assert a < b
            stats = clock.statistics()
            assert (stats.backward_jumps, stats.max_backward_jump_ns) == (1, 10 * MS)
        expected = f"physical clock went backwards by {10 * MS} ns ({T0 + 10 * MS} -> {T0}); HLC stamps stay monotonic (backward jump #1)"
        assert any(line.rstrip("\n") == f"WARNING {expected}" for line in log_lines)

    def test_the_rejection_reason_is_the_locked_paths(self):
        ts = ScriptedTimeSource(T0)
        remote = make_stamp(T0 + 3 * MS, 0)
        locked = HybridLogicalClock(time_source=ts, max_offset_ns=MS).try_update(remote)
        with scripted_compiled_clock(ts, max_offset_ns=MS) as clock:
            assert clock.try_update(remote) == locked


class TestSharedClock:
    def test_shared_kernels_follow_the_same_rules_as_the_in_process_clock(self, region):
        rng = np.random.default_rng(11)
        ts = SimulatedTimeSource(T0)
        local = HybridLogicalClock(time_source=ts, max_offset_ns=50 * MS)
        shared = SharedHybridClock.create_at(region.ctypes.data, region, max_offset_ns=50 * MS, time_source=ts)
        for _ in range(2000):
            op = rng.integers(0, 4)
            if op == 0:
                ts.advance_simulation(int(rng.integers(0, 3 * GRAIN)))
            elif op == 1:
                assert shared.tick() == local.tick()
            elif op == 2:
                assert shared.tick_n(3) == local.tick_n(3)
            else:
                remote = make_stamp(ts.now_ns() + int(rng.integers(-20 * MS, 80 * MS)), int(rng.integers(0, 100)))
                a, b = shared.try_update(remote), local.try_update(remote)
                assert (a.accepted, a.stamp, a.drift_ns) == (b.accepted, b.stamp, b.drift_ns)
        s, l = shared.statistics(), local.statistics()
        assert s.stamp == l.stamp
        assert s.rejections == l.rejections > 0
        assert s.max_drift_ns == l.max_drift_ns

    def test_shared_update_returns_codes_for_rejected_and_invalid_stamps(self, region):
        SharedHybridClock.create_at(region.ctypes.data, region, max_offset_ns=MS)
        addr = region.ctypes.data
        assert update_shared(addr, make_stamp(T0 + 2 * MS, 0), T0) == REJECTED
        assert update_shared(addr, -5, T0) == INVALID_STAMP
        assert update_shared(addr, 1 << 62, T0) == INVALID_STAMP
        assert region[CLOCK_CELL] == 0
        assert tick_shared(addr, T0) == T0

    def test_shared_update_raises_causality_violation_and_counts_it_in_the_region(self, region):
        clock = SharedHybridClock.create_at(
            region.ctypes.data, region, max_offset_ns=MS, time_source=SimulatedTimeSource(T0)
        )
        with pytest.raises(CausalityViolation):
            clock.update(make_stamp(T0 + 2 * MS, 0))
        assert clock.statistics().rejections == 1
        assert clock.validate_causality(make_stamp(T0 + MS // 2, 0))

    def test_shared_counters_record_carries_and_backward_jumps(self, region, log_lines):
        ts = ScriptedTimeSource(T0 + MS)
        clock = SharedHybridClock.create_at(
            region.ctypes.data, region, initial_stamp=make_stamp(T0 + MS, LOGICAL_MASK), time_source=ts
        )
        assert clock.tick() == make_stamp(T0 + MS + GRAIN, 0)
        ts.t_ns = T0
        clock.tick()
        stats = clock.statistics()
        assert stats.logical_carries == 1
        assert (stats.backward_jumps, stats.max_backward_jump_ns) == (1, MS)
        assert stats.handle_ticks == 2
        assert any("backwards" in line for line in log_lines)

    def test_attaching_to_an_uninitialised_region_is_refused(self, region):
        with pytest.raises(LayoutError, match="no initialised HLC region"):
            SharedHybridClock.attach_at(region.ctypes.data, region)

    def test_handles_on_one_segment_share_the_clock_word(self, prefix):
        name = f"{prefix}-hlc"
        owner = Segment.create(name, SEGMENT_HEADER_BYTES + HLC_REGION_BYTES, SegmentKind.TEST)
        try:
            ts = SimulatedTimeSource(T0)
            a = SharedHybridClock.create(owner, time_source=ts)
            with Segment.attach(name) as seg:
                b = SharedHybridClock.attach(seg, time_source=ts)
                stamps = [a.tick(), b.tick(), a.tick(), b.tick()]
                assert stamps == [T0, T0 + 1, T0 + 2, T0 + 3]
                assert a.last_stamp == b.last_stamp == T0 + 3
                b.close()
            a.close()
        finally:
            owner.destroy()

    def test_a_handle_on_a_closed_segment_raises_instead_of_faulting(self, prefix):
        seg = Segment.create(f"{prefix}-hlc", SEGMENT_HEADER_BYTES + HLC_REGION_BYTES, SegmentKind.TEST)
        try:
            clock = SharedHybridClock.create(seg)
            seg.close()
            with pytest.raises(ClosedResourceError):
                clock.tick()
        finally:
            seg.destroy()

    def test_a_closed_handle_refuses_to_tick(self, region):
        clock = SharedHybridClock.create_at(region.ctypes.data, region)
        clock.close()
        clock.close()
        with pytest.raises(ClosedResourceError):
            clock.tick()

    def test_a_region_that_does_not_fit_the_segment_is_refused(self, prefix):
        seg = Segment.create(f"{prefix}-hlc", 4096, SegmentKind.TEST)
        try:
            with pytest.raises(ValueError, match="room"):
                SharedHybridClock.create(seg, offset_bytes=4096 - 64)
        finally:
            seg.destroy()
