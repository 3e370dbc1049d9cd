"""DeadlineScheduler: EDF with priorities, miss detection and recovery, admission control, the brief's API."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fabric.deadline import (
    DeadlineScheduler,
    DeliveryFlags,
    MissPolicy,
    SchedulableTask,
    UnknownTaskError,
    get_scheduler,
    set_scheduler,
)
from fabric.oracle import TimeOracle, weighted_tardiness
from fabric.timesource import SimulatedTimeSource

US = 1_000
MS = 1_000_000
REPO_ROOT = Path(__file__).resolve().parents[2]
ALL_POLICIES = [MissPolicy.DROP, MissPolicy.DELIVER_LATE, MissPolicy.DEGRADE, MissPolicy.ESCALATE]


def pop_all(s: DeadlineScheduler, now_ns: int = 0) -> tuple[list[int], list[int]]:
    out = np.zeros(max(len(s), 1), dtype=np.int64)
    flags = np.zeros_like(out)
    n, _ = s.pop_batch(now_ns, out, flags)
    return out[:n].tolist(), flags[:n].tolist()


def push(s: DeadlineScheduler, ids, deadlines, priorities=None, classes=None, now_ns: int = 0):
    n = len(ids)
    return s.push_batch(
        ids,
        deadlines,
        [0] * n if priorities is None else priorities,
        [0] * n if classes is None else classes,
        now_ns,
    )


class TestEdfOrder:
    def test_entries_come_out_earliest_deadline_first(self):
        s = DeadlineScheduler(64)
        push(s, [1, 2, 3, 4], [40 * MS, 10 * MS, 30 * MS, 20 * MS])
        assert pop_all(s)[0] == [2, 4, 3, 1]

    def test_equal_deadlines_come_out_by_priority_then_in_push_order(self):
        s = DeadlineScheduler(64)
        push(s, [1, 2, 3, 4, 5], [MS] * 5, [3, 200, 3, 255, 3])
        assert pop_all(s)[0] == [4, 2, 1, 3, 5]

    def test_entries_without_a_deadline_come_after_every_entry_with_one(self):
        s = DeadlineScheduler(64)
        push(s, [1, 2, 3], [0, 10**15, 0], [255, 0, 0])
        assert s.peek_deadline() == 10**15
        assert pop_all(s, now_ns=0)[0] == [2, 1, 3]
        assert s.peek_deadline() is None

    def test_pop_batch_fills_caller_arrays_up_to_max_count(self):
        s = DeadlineScheduler(64)
        push(s, list(range(10)), [(10 - i) * MS for i in range(10)])
        out = np.full(8, -1, dtype=np.int64)
        assert s.pop_batch(0, out, max_count=3) == (3, 0)
        assert out[:3].tolist() == [9, 8, 7] and out[3] == -1
        assert len(s) == 7

    def test_interleaved_pushes_and_pops_match_a_sorted_reference(self):
        rng = np.random.default_rng(5)
        s = DeadlineScheduler(4096)
        model: list[tuple[int, int, int, int]] = []  # (deadline key, -priority, seq, id)
        seq = 0
        out = np.zeros(64, dtype=np.int64)
        for _ in range(200):
            n = int(rng.integers(1, 40))
            ids = np.arange(seq, seq + n)
            dls = rng.integers(0, 50, n) * MS  # some zeros: no deadline
            prs = rng.integers(0, 256, n)
            s.push_batch(ids, dls, prs, np.zeros(n), 0)
            for i in range(n):
                model.append((int(dls[i]) or 2**63 - 1, -int(prs[i]), seq + i, seq + i))
            seq += n
            k = int(rng.integers(0, 64))
            got, _ = s.pop_batch(0, out, max_count=k)
            model.sort()
            expect = [m[3] for m in model[:got]]
            del model[:got]
            assert out[:got].tolist() == expect
            assert got == min(k, got + len(model))
        assert len(s) == len(model)


class TestValidation:
    @pytest.mark.parametrize(
        ("priority", "cls", "deadline"), [(256, 0, 1), (-1, 0, 1), (0, 4, 1), (0, -1, 1), (0, 0, -5)]
    )
    def test_an_out_of_range_entry_rejects_the_whole_batch(self, priority, cls, deadline):
        s = DeadlineScheduler(64)
        with pytest.raises(ValueError, match="entry 1 .*nothing was queued"):
            s.push_batch([1, 2], [1, deadline], [0, priority], [0, cls], 0)
        assert len(s) == 0
        assert s.statistics().pushed == 0

    def test_batches_of_unequal_length_are_refused(self):
        with pytest.raises(ValueError, match="equal lengths"):
            DeadlineScheduler(8).push_batch([1, 2], [1], [0, 0], [0, 0], 0)

    def test_a_batch_longer_than_the_capacity_is_refused(self):
        with pytest.raises(ValueError, match="split it"):
            push(DeadlineScheduler(4), list(range(5)), [1] * 5)

    def test_invalid_configurations_are_refused(self):
        with pytest.raises(ValueError):
            DeadlineScheduler(1)
        with pytest.raises(ValueError):
            DeadlineScheduler(16, high_watermark=17)
        with pytest.raises(ValueError):
            DeadlineScheduler(16, high_watermark=8, low_watermark=8)
        with pytest.raises(ValueError):
            DeadlineScheduler(16, high_watermark=8, low_watermark=-1)
        with pytest.raises(ValueError):
            DeadlineScheduler(16, class_policies=[])
        with pytest.raises(ValueError):
            DeadlineScheduler(16, class_policies=[MissPolicy.DROP] * 17)


class TestDeadlineMisses:
    def test_a_head_past_its_deadline_at_pop_gets_its_class_policy(self):
        s = DeadlineScheduler(64, class_policies=ALL_POLICIES)
        push(s, [10, 11, 12, 13, 14], [1 * MS, 2 * MS, 3 * MS, 4 * MS, 50 * MS], classes=[0, 1, 2, 3, 0])
        out = np.zeros(8, dtype=np.int64)
        flags = np.zeros(8, dtype=np.int64)
        dropped = np.zeros(8, dtype=np.int64)
        assert s.pop_batch(10 * MS, out, flags, out_dropped=dropped) == (4, 1)
        assert dropped[0] == 10
        assert out[:4].tolist() == [11, 12, 13, 14]
        assert flags[:4].tolist() == [
            DeliveryFlags.MISSED,
            DeliveryFlags.MISSED | DeliveryFlags.DEGRADED,
            DeliveryFlags.MISSED | DeliveryFlags.ESCALATED,
            DeliveryFlags.NONE,
        ]
        st = s.statistics()
        assert (st.missed, st.missed_at_pop, st.dropped, st.delivered_late, st.degraded, st.escalated) == (
            4,
            4,
            1,
            1,
            1,
            1,
        )
        assert st.class_misses == [1, 1, 1, 1]

    def test_a_deadline_equal_to_now_is_met(self):
        s = DeadlineScheduler(8)
        push(s, [1], [5 * MS])
        assert pop_all(s, now_ns=5 * MS) == ([1], [0])
        assert s.statistics().missed == 0

    def test_an_entry_late_on_arrival_is_a_miss_detected_at_push(self):
        s = DeadlineScheduler(64, class_policies=ALL_POLICIES)
        report = push(s, [1, 2, 3], [1 * MS, 1 * MS, 20 * MS], priorities=[0, 0, 255], classes=[0, 3, 1], now_ns=5 * MS)
        assert report.dropped == [1] and report.queued == 2
        st = s.statistics()
        assert (st.missed_at_push, st.dropped, st.escalated) == (2, 1, 1)
        ids, flags = pop_all(s, now_ns=5 * MS)
        assert ids == [2, 3]
        assert flags[0] == DeliveryFlags.MISSED | DeliveryFlags.ESCALATED
        assert s.statistics().missed == 2  # not counted again at pop

    def test_expire_applies_each_policy_once_and_reports_by_action(self):
        s = DeadlineScheduler(64, class_policies=ALL_POLICIES)
        push(s, [1, 2, 3, 4, 5, 6], [1 * MS, 2 * MS, 3 * MS, 4 * MS, 1 * MS, 90 * MS], classes=[0, 1, 2, 3, 0, 1])
        report = s.expire(10 * MS)
        assert sorted(report.dropped) == [1, 5]
        assert (report.late, report.degraded, report.escalated) == ([2], [3], [4])
        assert report.count == 5
        assert s.expire(10 * MS).count == 0  # already handled: not reported twice
        ids, flags = pop_all(s, now_ns=10 * MS)
        assert ids == [2, 3, 4, 6]
        assert flags == [
            DeliveryFlags.MISSED,
            DeliveryFlags.MISSED | DeliveryFlags.DEGRADED,
            DeliveryFlags.MISSED | DeliveryFlags.ESCALATED,
            0,
        ]
        st = s.statistics()
        assert (st.missed, st.missed_at_expire, st.missed_at_pop) == (5, 5, 0)

    def test_escalation_moves_an_expired_entry_ahead_of_equal_deadlines(self):
        s = DeadlineScheduler(64, class_policies=[MissPolicy.DELIVER_LATE, MissPolicy.ESCALATE])
        push(s, [1, 2, 3], [MS, MS, MS], priorities=[200, 100, 0], classes=[0, 0, 1])
        s.expire(2 * MS)
        assert pop_all(s, now_ns=2 * MS)[0] == [3, 1, 2]

    def test_expire_leaves_unexpired_entries_in_edf_order(self):
        rng = np.random.default_rng(3)
        s = DeadlineScheduler(1024, class_policies=[MissPolicy.DROP, MissPolicy.ESCALATE])
        dls = rng.integers(1, 100, 500) * MS
        push(s, list(range(500)), dls.tolist(), classes=(np.arange(500) % 2).tolist())
        report = s.expire(50 * MS)
        expired = set(np.flatnonzero(dls < 50 * MS).tolist())
        assert set(report.dropped) | set(report.escalated) == expired
        ids, _ = pop_all(s, now_ns=50 * MS)
        assert len(ids) == 500 - len(report.dropped)
        rest = [i for i in ids if i not in expired]
        assert [dls[i] for i in rest] == sorted(dls[i] for i in rest)

    def test_a_pop_stops_when_the_dropped_array_is_full(self):
        s = DeadlineScheduler(16, class_policies=[MissPolicy.DROP])
        push(s, [1, 2, 3, 4], [MS, MS, MS, 90 * MS])
        out = np.zeros(4, dtype=np.int64)
        dropped = np.zeros(2, dtype=np.int64)
        assert s.pop_batch(10 * MS, out, out_dropped=dropped) == (0, 2)
        assert s.pop_batch(10 * MS, out, out_dropped=dropped) == (1, 1)
        assert out[0] == 4

    def test_ids_dropped_into_the_internal_buffer_are_readable_afterwards(self):
        s = DeadlineScheduler(16, class_policies=[MissPolicy.DROP])
        push(s, [7, 8], [MS, 90 * MS])
        out = np.zeros(4, dtype=np.int64)
        assert s.pop_batch(10 * MS, out) == (1, 1)
        assert s.last_dropped == [7]


class TestAdmissionControl:
    def test_above_the_high_watermark_the_lowest_priorities_are_shed_down_to_the_low_watermark(self):
        s = DeadlineScheduler(16, high_watermark=10, low_watermark=6)
        report = push(s, list(range(12)), [MS] * 12, priorities=[50, 10, 20, 90, 10, 60, 70, 80, 5, 40, 30, 100])
        assert sorted(report.shed) == [1, 2, 4, 8, 9, 10]  # priorities 10, 20, 10, 5, 40, 30
        assert len(s) == 6
        assert sorted(pop_all(s)[0]) == [0, 3, 5, 6, 7, 11]
        st = s.statistics()
        assert (st.shed, st.shed_passes) == (6, 1)

    def test_among_equal_priorities_the_latest_deadline_then_the_newest_are_shed(self):
        s = DeadlineScheduler(16, high_watermark=4, low_watermark=2)
        report = push(s, [1, 2, 3, 4, 5], [5 * MS, 9 * MS, 5 * MS, 5 * MS, 1 * MS], priorities=[7] * 5)
        # shed 3: the latest deadline (2), then the newest of the 5 ms ties (4, then 3)
        assert sorted(report.shed) == [2, 3, 4]
        assert pop_all(s)[0] == [5, 1]

    def test_escalated_entries_are_protected_from_shedding_like_priority_255(self):
        s = DeadlineScheduler(16, high_watermark=2, low_watermark=1, class_policies=[MissPolicy.ESCALATE])
        push(s, [1], [MS], priorities=[0])
        s.expire(2 * MS)
        report = push(s, [2, 3], [5 * MS, 5 * MS], priorities=[254, 254])
        assert sorted(report.shed) == [2, 3]

    def test_a_full_array_mid_batch_sheds_before_pushing_on(self):
        s = DeadlineScheduler(8, high_watermark=8, low_watermark=4)
        push(s, list(range(8)), [MS] * 8, priorities=list(range(8)))
        report = push(s, [100, 101], [MS, MS], priorities=[255, 255])
        assert sorted(report.shed) == [0, 1, 2, 3]
        assert sorted(pop_all(s)[0]) == [4, 5, 6, 7, 100, 101]

    def test_every_pushed_id_is_accounted_for_under_overload(self):
        rng = np.random.default_rng(9)
        s = DeadlineScheduler(256, class_policies=[MissPolicy.DROP, MissPolicy.DELIVER_LATE])
        seen: list[int] = []
        out = np.zeros(32, dtype=np.int64)
        dropped = np.zeros(256, dtype=np.int64)
        now = 0
        for b in range(100):
            ids = np.arange(b * 64, (b + 1) * 64)
            report = s.push_batch(ids, now + rng.integers(0, 5, 64) * MS, rng.integers(0, 256, 64), ids % 2, now)
            seen += report.shed + report.dropped
            now += MS
            if b % 10 == 0:
                seen += s.expire(now).dropped
            n, nd = s.pop_batch(now, out, out_dropped=dropped)
            seen += out[:n].tolist() + dropped[:nd].tolist()
        while len(s):
            n, nd = s.pop_batch(now, out, out_dropped=dropped)
            seen += out[:n].tolist() + dropped[:nd].tolist()
        assert sorted(seen) == list(range(6400))
        st = s.statistics()
        assert st.pushed == st.popped + st.shed + st.dropped == 6400


class TestBriefApi:
    def test_schedule_task_queues_it_and_predicts_its_completion(self):
        ts = SimulatedTimeSource(1_000 * MS)
        s = DeadlineScheduler(64, time_source=ts)
        s.set_class_duration(1, 2 * MS)
        first = s.schedule_task(SchedulableTask(task_id=1, deadline_ns=1_010 * MS, task_class=1))
        second = s.schedule_task(SchedulableTask(task_id=2, deadline_ns=1_005 * MS, priority=9, task_class=1))
        assert first.accepted and second.accepted
        assert second.queue_depth == 2
        assert second.predicted_completion_ns == 1_002 * MS
        assert s.predict_completion_time(1) == 1_004 * MS

    def test_a_task_estimate_seeds_its_class_duration_until_the_oracle_has_history(self):
        s = DeadlineScheduler(64, time_source=SimulatedTimeSource(0))
        result = s.schedule_task(SchedulableTask(task_id=5, deadline_ns=MS, estimated_duration_ns=300 * US))
        assert result.predicted_completion_ns == 300 * US
        s.oracle.record_batch(0, [100 * US] * 10)
        assert s.predict_completion_time(5) == 100 * US

    def test_predicting_an_unknown_task_raises(self):
        s = DeadlineScheduler(8, time_source=SimulatedTimeSource(0))
        with pytest.raises(UnknownTaskError, match="no queued task has id 3"):
            s.predict_completion_time(3)

    def test_handle_deadline_miss_applies_the_class_policy_to_a_queued_task(self):
        s = DeadlineScheduler(64, class_policies=[MissPolicy.DROP, MissPolicy.ESCALATE])
        push(s, [1, 2, 3], [5 * MS, 5 * MS, 6 * MS], priorities=[100, 100, 100], classes=[0, 0, 1])
        assert s.handle_deadline_miss(1) is MissPolicy.DROP
        assert s.handle_deadline_miss(3) is MissPolicy.ESCALATE
        assert pop_all(s)[0] == [2, 3]
        st = s.statistics()
        assert (st.missed_reported, st.dropped, st.escalated) == (2, 1, 1)

    def test_handle_deadline_miss_of_a_task_already_popped_needs_its_class(self):
        s = DeadlineScheduler(8, class_policies=[MissPolicy.DEGRADE])
        with pytest.raises(UnknownTaskError):
            s.handle_deadline_miss(42)
        assert s.handle_deadline_miss(42, task_class=0) is MissPolicy.DEGRADE
        assert s.statistics().degraded == 1

    def test_optimize_schedule_returns_task_ids_never_worse_than_edf(self):
        s = DeadlineScheduler(8, time_source=SimulatedTimeSource(0))
        tasks = [
            SchedulableTask(task_id=100 + i, deadline_ns=d * MS, priority=p, estimated_duration_ns=3 * MS)
            for i, (d, p) in enumerate([(3, 0), (4, 0), (5, 0), (6, 200), (7, 0)])
        ]
        result = s.optimize_schedule(tasks, seed=1)
        assert sorted(result.order) == [100, 101, 102, 103, 104]
        assert result.total_weighted_tardiness < result.edf_weighted_tardiness
        idx = [t - 100 for t in result.order]
        total, _ = weighted_tardiness(idx, [3 * MS] * 5, [3 * MS, 4 * MS, 5 * MS, 6 * MS, 7 * MS], [1, 1, 1, 201, 1])
        assert total == result.total_weighted_tardiness

    def test_optimize_schedule_needs_an_estimate_or_oracle_history(self):
        s = DeadlineScheduler(8, time_source=SimulatedTimeSource(0), oracle=TimeOracle())
        with pytest.raises(ValueError, match="no history for class 2"):
            s.optimize_schedule([SchedulableTask(task_id=1, deadline_ns=MS, task_class=2)])

    def test_the_process_wide_scheduler_is_created_once_and_replaceable(self):
        previous = set_scheduler(None)
        try:
            first = get_scheduler()
            assert get_scheduler() is first
            mine = DeadlineScheduler(8)
            assert set_scheduler(mine) is first
            assert get_scheduler() is mine
            with pytest.raises(TypeError):
                set_scheduler(object())  # type: ignore[arg-type]
        finally:
            set_scheduler(previous)


def test_the_scheduler_bench_quick_run_prints_one_sane_json_line_per_case():
    proc = subprocess.run(
        [sys.executable, "-m", "bench.bench_scheduler", "--quick"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    cases = {r["case"]: r for r in records}
    assert "environment" in cases
    assert any(c.startswith("scheduler_push_pop") for c in cases)
    assert any(c.startswith("anneal_vs_edf") for c in cases)
    assert any(c.startswith("hlc_") for c in cases)
    for rec in records:
        assert rec["bench"] == "scheduler"
        if "p50_ns_per_op" in rec:
            assert 0 < rec["p50_ns_per_op"] <= rec["p99_ns_per_op"]
            assert rec["ops_per_s"] > 0
        if "edf_weighted_tardiness" in rec:
            assert rec["anneal_weighted_tardiness"] <= rec["edf_weighted_tardiness"]
    assert "case" in proc.stderr  # the table
