"""TimeOracle: P² and EWMA duration prediction, load-driven hints, simulated annealing against EDF."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from fabric.errors import CapacityError
from fabric.oracle import (
    MAX_SPIN_NS,
    WAKE_COST_NS,
    LoadSample,
    OptimizationGoal,
    PerformanceFeedback,
    TimeOracle,
    UnknownTaskKindError,
    edf_order,
    optimization_hint,
    optimize_schedule,
    weighted_tardiness,
)

US = 1_000
GOALS = (OptimizationGoal.MINIMIZE_LATENCY, OptimizationGoal.BALANCED, OptimizationGoal.MAXIMIZE_THROUGHPUT)


def reference_twt(order, p, d, w, start=0) -> float:
    t, total = start, 0.0
    for j in order:
        t += int(p[j])
        total += float(w[j]) * max(0, t - int(d[j]))
    return total


def overloaded(rng: np.random.Generator, n: int, load: float = 1.5):
    """Tasks of 1..19 us whose deadlines fall before 1/load of the total work: many must be late."""
    p = rng.integers(1, 20, n) * US
    d = rng.integers(0, int(p.sum() / load), n)
    w = rng.integers(1, 10, n).astype(np.float64)
    return p, d, w


class TestDurationPrediction:
    @pytest.mark.parametrize("seed", [0, 1, 2])
    def test_p2_quantiles_track_the_sample_quantiles_of_a_skewed_distribution(self, seed):
        xs = np.random.default_rng(seed).lognormal(11.0, 1.0, 20_000)
        oracle = TimeOracle()
        oracle.record_batch("decode", xs)
        mean, p50, p99 = oracle.predict("decode")
        q50, q99 = np.quantile(xs, [0.5, 0.99])
        assert p50 == pytest.approx(q50, rel=0.02)
        assert p99 == pytest.approx(q99, rel=0.06)
        assert oracle.samples("decode") == 20_000

    def test_the_mean_is_an_exponentially_weighted_moving_average(self):
        xs = np.random.default_rng(4).uniform(1e3, 1e5, 500)
        oracle = TimeOracle(ewma_alpha=0.1)
        oracle.record_batch(7, xs)
        mean = xs[0]
        for x in xs[1:]:
            mean += 0.1 * (x - mean)
        assert oracle.predict(7).mean_ns == round(mean)

    def test_the_mean_follows_a_shift_in_durations_within_a_few_dozen_observations(self):
        oracle = TimeOracle(ewma_alpha=0.05)
        oracle.record_batch("k", np.full(1000, 100 * US))
        oracle.record_batch("k", np.full(100, 200 * US))
        assert oracle.predict("k").mean_ns == pytest.approx(200 * US, rel=0.01)

    def test_one_at_a_time_and_batched_observations_give_the_same_prediction(self):
        xs = np.random.default_rng(8).exponential(50 * US, 300)
        a, b = TimeOracle(), TimeOracle()
        for x in xs:
            a.record("k", x)
        b.record_batch("k", xs)
        assert a.predict("k") == b.predict("k")

    def test_with_fewer_than_five_observations_the_quantiles_are_exact(self):
        oracle = TimeOracle()
        oracle.record_batch("k", [10 * US, 30 * US, 20 * US])
        mean, p50, p99 = oracle.predict("k")
        assert p50 == 20 * US
        assert p99 == pytest.approx(np.quantile([10, 30, 20], 0.99) * US)

    def test_an_unseen_kind_has_no_prediction(self):
        oracle = TimeOracle()
        assert oracle.samples("nope") == 0
        with pytest.raises(UnknownTaskKindError, match="'nope'"):
            oracle.predict("nope")

    def test_more_kinds_than_max_kinds_are_refused(self):
        oracle = TimeOracle(max_kinds=2)
        oracle.record("a", 1)
        oracle.record("b", 1)
        with pytest.raises(CapacityError):
            oracle.record("c", 1)

    def test_negative_or_non_finite_durations_are_refused(self):
        oracle = TimeOracle()
        with pytest.raises(ValueError):
            oracle.record_batch("k", [1.0, -1.0])
        with pytest.raises(ValueError):
            oracle.record_batch("k", [float("nan")])
        assert oracle.samples("k") == 0

    def test_feedback_updates_prediction_and_load(self):
        oracle = TimeOracle()
        oracle.observe_load(queue_depth=0, arrivals=0, now_ns=0)
        oracle.observe_load(queue_depth=5, arrivals=1000, now_ns=10**9)
        oracle.record_feedback(PerformanceFeedback(kind="k", duration_ns=250 * US, queue_depth=7, now_ns=2 * 10**9))
        assert oracle.predict_task_duration("k") == 250 * US
        load = oracle.load()
        assert load.queue_depth == 7
        assert load.service_rate_per_s == pytest.approx(4000.0)
        assert 0 < load.arrival_rate_per_s <= 1000.0
        assert oracle.statistics().observations == 1


class TestOptimizationHints:
    LOADS = [
        LoadSample(queue_depth=0, arrival_rate_per_s=0.0, service_rate_per_s=0.0),
        LoadSample(queue_depth=3, arrival_rate_per_s=1_000.0, service_rate_per_s=50_000.0),
        LoadSample(queue_depth=200, arrival_rate_per_s=500_000.0, service_rate_per_s=400_000.0),
        LoadSample(queue_depth=5_000, arrival_rate_per_s=5e6, service_rate_per_s=1e6, workers=2),
    ]

    @pytest.mark.parametrize("load", LOADS)
    def test_batch_sizes_grow_and_spin_budgets_shrink_from_latency_to_throughput(self, load):
        lat, bal, thr = (optimization_hint(goal, load) for goal in GOALS)
        assert 1 <= lat.batch_size <= bal.batch_size <= thr.batch_size <= 1024
        assert lat.spin_budget_ns >= bal.spin_budget_ns >= thr.spin_budget_ns >= 0
        assert lat.max_batch_delay_ns == 0
        assert lat.spin_budget_ns <= MAX_SPIN_NS

    def test_latency_spins_at_least_a_wake_up_and_throughput_not_longer_than_one(self):
        load = LoadSample(arrival_rate_per_s=100.0, service_rate_per_s=1e4)
        assert optimization_hint(OptimizationGoal.MINIMIZE_LATENCY, load).spin_budget_ns >= WAKE_COST_NS
        assert optimization_hint(OptimizationGoal.MAXIMIZE_THROUGHPUT, load).spin_budget_ns <= WAKE_COST_NS

    def test_overload_reports_the_fraction_no_schedule_can_serve(self):
        hint = optimization_hint(
            OptimizationGoal.BALANCED, LoadSample(arrival_rate_per_s=3e5, service_rate_per_s=1e5, workers=2)
        )
        assert hint.utilisation == pytest.approx(1.5)
        assert hint.shed_fraction == pytest.approx(1 / 3)
        assert "overloaded" in hint.reason

    def test_a_throughput_batch_grows_with_the_arrival_rate(self):
        sizes = [
            optimization_hint(OptimizationGoal.MAXIMIZE_THROUGHPUT, LoadSample(arrival_rate_per_s=r)).batch_size
            for r in (1e3, 1e6, 1e7)
        ]
        assert sizes == sorted(sizes) and sizes[0] < sizes[-1]

    def test_an_unknown_service_rate_gives_no_utilisation_and_no_shedding(self):
        hint = optimization_hint(OptimizationGoal.BALANCED, LoadSample(arrival_rate_per_s=1e6))
        assert (hint.utilisation, hint.shed_fraction) == (0.0, 0.0)
        assert "unknown" in hint.reason

    def test_the_oracle_builds_hints_from_the_load_it_measured(self):
        oracle = TimeOracle()
        oracle.record_batch("k", np.full(10, 10 * US))
        for i in range(5):
            oracle.observe_load(queue_depth=40, arrivals=200_000, now_ns=i * 10**9)
        hint = oracle.generate_optimization_hint(OptimizationGoal.MAXIMIZE_THROUGHPUT)
        assert hint.utilisation == pytest.approx(2.0)
        assert hint.batch_size >= 40

    def test_a_goal_must_be_an_optimization_goal(self):
        with pytest.raises(TypeError):
            optimization_hint("fast", LoadSample())  # type: ignore[arg-type]


class TestScheduleOptimiser:
    def test_on_random_overloaded_sets_it_is_never_worse_than_edf(self):
        rng = np.random.default_rng(100)
        for seed in range(40):
            p, d, w = overloaded(rng, int(rng.integers(2, 60)))
            result = optimize_schedule(p, d, w, seed=seed)
            assert result.total_weighted_tardiness <= result.edf_weighted_tardiness
            assert result.total_weighted_tardiness == reference_twt(result.order, p, d, w)
            assert result.edf_weighted_tardiness == reference_twt(edf_order(d, w), p, d, w)
            assert sorted(result.order.tolist()) == list(range(len(p)))

    def test_on_a_fixed_overloaded_set_it_beats_edf_by_a_wide_margin(self):
        p, d, w = overloaded(np.random.default_rng(42), 40)
        result = optimize_schedule(p, d, w, seed=7)
        assert result.improved
        assert result.total_weighted_tardiness <= 0.6 * result.edf_weighted_tardiness
        assert result.tardy_tasks < result.edf_tardy_tasks

    def test_when_edf_meets_every_deadline_the_result_meets_every_deadline_too(self):
        rng = np.random.default_rng(3)
        p = rng.integers(1, 20, 30) * US
        order = rng.permutation(30)
        d = np.empty(30, dtype=np.int64)
        d[order] = np.cumsum(p[order]) + rng.integers(0, 5, 30) * US  # feasible: slack >= 0 in this order
        w = rng.integers(1, 10, 30).astype(np.float64)
        result = optimize_schedule(p, d, w, start_ns=0, seed=1)
        assert result.edf_weighted_tardiness == 0.0  # EDF is optimal for feasible sets (Jackson 1955)
        assert result.total_weighted_tardiness == 0.0 and result.tardy_tasks == 0
        assert result.order.tolist() == edf_order(d, w).tolist()  # ties go to EDF

    @pytest.mark.parametrize("seed", range(4))
    def test_on_seven_tasks_it_finds_the_brute_force_optimum(self, seed):
        p, d, w = overloaded(np.random.default_rng(seed), 7)
        optimum = min(reference_twt(perm, p, d, w) for perm in itertools.permutations(range(7)))
        assert optimize_schedule(p, d, w, seed=seed).total_weighted_tardiness == optimum

    def test_the_same_seed_gives_the_same_order(self):
        p, d, w = overloaded(np.random.default_rng(5), 50)
        a = optimize_schedule(p, d, w, seed=11)
        b = optimize_schedule(p, d, w, seed=11)
        assert a.order.tolist() == b.order.tolist()
        assert a.accepted_moves == b.accepted_moves

    def test_the_start_time_shifts_every_completion(self):
        p, d, w = overloaded(np.random.default_rng(6), 20)
        late_start = optimize_schedule(p, d, w, start_ns=50 * US, seed=0)
        assert late_start.edf_weighted_tardiness == reference_twt(edf_order(d, w), p, d, w, start=50 * US)

    def test_zero_iterations_or_a_single_task_return_edf(self):
        p, d, w = overloaded(np.random.default_rng(1), 10)
        assert optimize_schedule(p, d, w, max_iterations=0).order.tolist() == edf_order(d, w).tolist()
        single = optimize_schedule([5], [1], [2.0])
        assert (single.order.tolist(), single.total_weighted_tardiness) == ([0], 8.0)

    def test_edf_breaks_deadline_ties_by_weight_then_index(self):
        assert edf_order([5, 3, 5, 5], [1.0, 1.0, 9.0, 1.0]).tolist() == [1, 2, 0, 3]

    def test_invalid_task_sets_are_refused(self):
        with pytest.raises(ValueError):
            optimize_schedule([1, 2], [1], [1.0, 1.0])
        with pytest.raises(ValueError):
            optimize_schedule([-1], [1], [1.0])
        with pytest.raises(ValueError):
            optimize_schedule([1], [1], [1.0], seed=-1)
        with pytest.raises(ValueError):
            weighted_tardiness([0, 0], [1, 1], [1, 1], [1.0, 1.0])

    def test_the_oracle_counts_its_optimisations(self):
        oracle = TimeOracle()
        oracle.optimize_schedule(*overloaded(np.random.default_rng(2), 10))
        assert oracle.statistics().optimisations == 1
