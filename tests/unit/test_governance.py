"""EGC core: token buckets, admission hysteresis, STL robustness (hand-computed), parser, monitor."""

from __future__ import annotations

import math
import pickle

import msgspec
import numpy as np
import pytest

from fabric.errors import CapacityError, ConfigError
from workers._governance import (
    AdmissionController,
    AdmissionLevel,
    Always,
    And,
    Atom,
    Decision,
    Eventually,
    Not,
    Or,
    StlMonitor,
    StlParseError,
    TokenBucketLimiter,
    Until,
    format_formula,
    formula_horizon_ns,
    formula_signals,
    parse_formula,
    robustness,
)

MS = 1_000_000
S = 1_000_000_000
KEY = ("sensor-1", "imu")


class TestDecision:
    def test_round_trips_through_msgpack(self):
        d = Decision("throttle", "ingress", "load high", -0.1, 42)
        assert msgspec.msgpack.decode(msgspec.msgpack.encode(d), type=Decision) == d

    def test_unknown_action_raises_value_error(self):
        with pytest.raises(ValueError):
            Decision("panic", "x", "", 0.0, 0)  # type: ignore[arg-type]


class TestTokenBucketLimiter:
    def test_a_new_key_starts_with_a_full_burst(self):
        tb = TokenBucketLimiter(rate_per_s=10.0, burst=5)
        assert [tb.allow(KEY, 1, 0) for _ in range(6)] == [True] * 5 + [False]
        assert tb.counters(KEY) == (5, 1)

    def test_tokens_refill_at_the_rate_up_to_the_burst(self):
        tb = TokenBucketLimiter(rate_per_s=10.0, burst=5)
        assert tb.allow(KEY, 5, 0)
        assert not tb.allow(KEY, 1, 99 * MS)
        assert tb.allow(KEY, 1, 100 * MS)
        assert tb.tokens(KEY, 10 * S) == 5.0  # capped at the burst

    def test_a_decimal_rate_is_exact(self):
        tb = TokenBucketLimiter(rate_per_s=0.1, burst=1)
        assert tb.allow(KEY, 1, 0)
        assert not tb.allow(KEY, 1, 10 * S - 1)
        assert tb.allow(KEY, 1, 10 * S)

    def test_a_request_larger_than_the_burst_is_never_admitted(self):
        tb = TokenBucketLimiter(rate_per_s=1000.0, burst=4)
        assert not tb.allow(KEY, 5, 100 * S)
        assert tb.counters(KEY) == (0, 5)

    def test_keys_have_separate_buckets_and_limits(self):
        tb = TokenBucketLimiter(rate_per_s=1.0, burst=1)
        tb.set_limit(("a", "t"), rate_per_s=1.0, burst=3)
        assert [tb.allow(("a", "t"), 1, 0) for _ in range(4)] == [True, True, True, False]
        assert [tb.allow(("b", "t"), 1, 0) for _ in range(2)] == [True, False]
        stats = tb.statistics()
        assert (stats.keys, stats.allowed, stats.denied) == (2, 4, 2)

    def test_time_running_backwards_refills_nothing(self):
        tb = TokenBucketLimiter(rate_per_s=1.0, burst=1)
        assert tb.allow(KEY, 1, 10 * S)
        assert not tb.allow(KEY, 1, 5 * S)
        assert not tb.allow(KEY, 1, 10 * S + S // 2)
        assert tb.allow(KEY, 1, 11 * S)

    def test_allow_many_equals_allow_in_order(self):
        tb1 = TokenBucketLimiter(rate_per_s=2.0, burst=2)
        tb2 = TokenBucketLimiter(rate_per_s=2.0, burst=2)
        reqs = [(KEY, 1, 0), (KEY, 2, 0), (KEY, 1, S // 2), (("x", "y"), 2, S)]
        expected = [tb1.allow(*r) for r in reqs]
        got = tb2.allow_many(*zip(*reqs))
        assert got.tolist() == expected == [True, False, True, True]

    def test_the_key_table_is_bounded(self):
        tb = TokenBucketLimiter(rate_per_s=1.0, burst=1, max_keys=2)
        tb.allow("a", 1, 0)
        tb.allow("b", 1, 0)
        with pytest.raises(CapacityError):
            tb.allow("c", 1, 0)

    @pytest.mark.parametrize("rate, burst", [(0.0, 1), (-1.0, 1), (math.inf, 1), (1.0, 0), (math.nan, 1)])
    def test_bad_limits_raise_value_error(self, rate, burst):
        with pytest.raises(ValueError):
            TokenBucketLimiter(rate_per_s=rate, burst=burst)

    def test_bad_requests_raise(self):
        tb = TokenBucketLimiter(rate_per_s=1.0, burst=1)
        with pytest.raises(ValueError):
            tb.allow(KEY, 0, 0)
        with pytest.raises(TypeError):
            tb.allow(KEY, 1, 0.5)  # type: ignore[arg-type]


class TestAdmissionController:
    def test_hysteresis_keeps_the_level_between_the_on_and_off_thresholds(self):
        ac = AdmissionController(throttle_on=0.75, throttle_off=0.6, shed_on=0.9, shed_off=0.8)
        actions = []
        for t, load in enumerate([0.5, 0.76, 0.7, 0.61, 0.74, 0.59, 0.7]):
            d = ac.update(load, t)
            actions.append(None if d is None else d.action)
        assert actions == [None, "throttle", None, None, None, "allow", None]
        assert ac.transitions == 2

    def test_load_jumps_straight_to_shed_and_back(self):
        ac = AdmissionController()
        d = ac.update(0.95, 1)
        assert d is not None and d.action == "shed" and d.robustness == pytest.approx(0.9 - 0.95)
        assert ac.update(0.85, 2) is None  # above shed_off
        d = ac.update(0.5, 3)
        assert d is not None and d.action == "allow" and d.robustness == pytest.approx(0.6 - 0.5)
        assert d.at_ns == 3 and d.target == "fabric"

    def test_shed_to_throttle_when_load_is_between_the_off_thresholds(self):
        ac = AdmissionController()
        ac.update(0.95, 0)
        d = ac.update(0.7, 1)
        assert d is not None and d.action == "throttle"
        assert ac.level == AdmissionLevel.THROTTLE

    def test_shedding_refuses_only_priorities_below_the_floor(self):
        ac = AdmissionController(shed_below_priority=2)
        assert ac.admit(0) and ac.rate_scale == 1.0
        ac.update(0.8, 0)
        assert ac.admit(0) and ac.rate_scale == 0.5
        ac.update(0.99, 1)
        assert [ac.admit(p) for p in (0, 1, 2, 3)] == [False, False, True, True]

    def test_relaxing_waits_for_the_dwell_time_but_escalation_does_not(self):
        ac = AdmissionController(min_dwell_ns=10 * MS)
        assert ac.update(0.8, 0) is not None
        assert ac.update(0.95, 1 * MS) is not None  # escalate at once
        assert ac.update(0.1, 5 * MS) is None  # too soon to relax
        d = ac.update(0.1, 11 * MS)
        assert d is not None and d.action == "allow"

    @pytest.mark.parametrize(
        "kwargs",
        [
            dict(throttle_on=0.5, throttle_off=0.6),
            dict(shed_on=0.8, shed_off=0.85),
            dict(throttle_on=0.95, shed_on=0.9),
            dict(throttle_rate_scale=0.0),
            dict(min_dwell_ns=-1),
        ],
    )
    def test_bad_thresholds_raise_value_error(self, kwargs):
        with pytest.raises(ValueError):
            AdmissionController(**kwargs)

    def test_nan_load_raises_value_error(self):
        with pytest.raises(ValueError):
            AdmissionController().update(math.nan, 0)


# Trace used by the hand-computed robustness values below.
T = np.array([0, 100, 200, 300, 400]) * MS
X = np.array([1.0, 3.0, 2.0, 5.0, 4.0])
Y = np.array([0.0, 0.0, 1.0, 1.0, 0.0])


class TestRobustness:
    @pytest.mark.parametrize(
        "text, expected",
        [
            ("x < 4", [3, 1, 2, -1, 0]),
            ("x >= 4", [-3, -1, -2, 1, 0]),
            ("not (x < 4)", [-3, -1, -2, 1, 0]),
            ("(x < 4) and (y > 0.5)", [-0.5, -0.5, 0.5, -1, -0.5]),
            ("(x < 4) or (y > 0.5)", [3, 1, 2, 0.5, 0]),
            # min over samples in [t, t+200ms]: {0,1,2}, {1,2,3}, {2,3,4}, {3,4}, {4}
            ("always[0,200ms](x < 4)", [1, -1, -1, -1, 0]),
            # max over samples in [t+100ms, t+200ms]: {1,2}, {2,3}, {3,4}, {4}, {} -> -inf
            ("eventually[100ms,200ms](x > 4)", [-1, 1, 1, 0, -math.inf]),
            # inner e = [0.5, 0.5, 2.5, 2.5, 1.5]; outer min over {i, i+1}
            ("always[0,100ms](eventually[0,100ms](x > 2.5))", [0.5, 0.5, 2.5, 1.5, 1.5]),
            # phi = 4.5 - x = [3.5, 1.5, 2.5, -0.5, 0.5], psi = y - 0.5 = [-.5, -.5, .5, .5, -.5]
            ("(x < 4.5) until[0,300ms] (y > 0.5)", [0.5, 0.5, 0.5, -0.5, -0.5]),
            # only j = i+1: min(psi[j], min(phi[i], phi[j]))
            ("(x < 4.5) until[100ms,100ms] (y > 0.5)", [-0.5, 0.5, -0.5, -0.5, -math.inf]),
        ],
    )
    def test_equals_hand_computed_values(self, text, expected):
        np.testing.assert_allclose(robustness(text, T, {"x": X, "y": Y}), expected)

    def test_hand_built_formula_equals_its_text_form(self):
        f = Always(0, 200 * MS, Atom("x", "<", 4.0))
        np.testing.assert_array_equal(robustness(f, T, {"x": X}), robustness("always[0,200ms](x < 4)", T, {"x": X}))

    def test_missing_signal_and_unsorted_times_raise_value_error(self):
        with pytest.raises(ValueError, match="'y'"):
            robustness("y < 1", T, {"x": X})
        with pytest.raises(ValueError):
            robustness("x < 1", T[::-1], {"x": X})

    def test_horizon_and_signals(self):
        f = parse_formula("always[0,1s](a < 1) and ((b > 0) until[0,200ms] eventually[0,50ms](c > 2))")
        assert formula_horizon_ns(f) == S
        assert formula_signals(f) == ("a", "b", "c")
        assert formula_horizon_ns(parse_formula("always[0,1s](eventually[0,2s](a < 1))")) == 3 * S


class TestParser:
    def test_the_topology_example_parses(self):
        assert parse_formula("always[0,1s](p99_latency_us < 2000)") == Always(
            0, S, Atom("p99_latency_us", "<", 2000.0)
        )

    def test_symbols_and_short_keywords_mean_the_same(self):
        long = parse_formula("not (a < 1) and (b > 2) or eventually[0,5ms] (c <= 3)")
        short = parse_formula("!(a < 1) && (b > 2) || F[0,5ms] (c <= 3)")
        assert long == short == Or(And(Not(Atom("a", "<", 1.0)), Atom("b", ">", 2.0)), Eventually(0, 5 * MS, Atom("c", "<=", 3.0)))

    def test_until_binds_tighter_than_and(self):
        f = parse_formula("a < 1 U[0,1ms] b > 2 and c > 0")
        assert f == And(Until(0, MS, Atom("a", "<", 1.0), Atom("b", ">", 2.0)), Atom("c", ">", 0.0))

    def test_units_and_fractions_of_a_unit(self):
        f = parse_formula("G[1500us,0.5s](x > -1e3)")
        assert f == Always(1_500_000, 500_000_000, Atom("x", ">", -1000.0))
        assert parse_formula("G[0,2min](x>0)").hi_ns == 120 * S

    @pytest.mark.parametrize(
        "text",
        [
            "always[0,1s](p99_latency_us < 2000)",
            "(a < 1) until[3ns,7us] (not (b >= -2.5))",
            "eventually[0,1min]((x > 1) or (y < 0.001))",
        ],
    )
    def test_format_then_parse_gives_the_same_formula(self, text):
        f = parse_formula(text)
        assert parse_formula(format_formula(f)) == f

    @pytest.mark.parametrize(
        "text, position, words",
        [
            ("always[0,1](x < 1)", 10, "needs a unit"),
            ("always[0,1s](x <)", 16, "expected a number"),
            ("always[2s,1s](x < 1)", 6, "exceeds upper bound"),
            ("x < 1 and", 9, "end of input"),
            ("(x < 1", 6, "expected ')'"),
            ("x < 1ms", 5, "takes no unit"),
            ("x ? 1", 2, "unexpected character"),
            ("always 0,1s] x < 1", 7, "expected '['"),
            ("always[0,1h](x < 1)", 10, "unknown time unit"),
            ("always[0,1.5ns](x < 1)", 9, "whole number"),
            ("x < 1 y < 2", 6, "after a complete formula"),
            ("x = 1", 2, "unexpected character"),
        ],
    )
    def test_errors_name_the_position(self, text, position, words):
        with pytest.raises(StlParseError) as info:
            parse_formula(text)
        assert info.value.position == position
        assert f"at position {position}" in str(info.value)
        assert words in str(info.value)

    def test_parse_error_is_a_config_error_and_a_value_error_and_pickles(self):
        with pytest.raises(StlParseError) as info:
            parse_formula("x <")
        err = info.value
        assert isinstance(err, ConfigError) and isinstance(err, ValueError)
        copy = pickle.loads(pickle.dumps(err))
        assert (str(copy), copy.position) == (str(err), err.position)


class TestStlMonitor:
    SPEC = "always[0,1s](p99_latency_us < 2000)"

    def test_no_verdict_until_the_horizon_has_passed(self):
        mon = StlMonitor(self.SPEC)
        mon.push(0, {"p99_latency_us": 100.0})
        assert mon.evaluate(S - 1) is None
        verdict = mon.evaluate(S)
        assert verdict is not None and verdict.sample_ns == 0 and verdict.robustness == 1900.0

    def test_verdicts_cover_the_last_second_of_samples(self):
        mon = StlMonitor(self.SPEC)
        lat = [100, 200, 2500, 300, 150, 120, 110, 100, 90, 80, 70, 60, 50, 40]
        for k, v in enumerate(lat):
            mon.push(k * 100 * MS, {"p99_latency_us": float(v), "other_metric": 1.0})
        # at now = 1.2 s the newest decided sample is t = 0.2 s; window samples 0.2 .. 1.2 s
        v = mon.evaluate(1200 * MS)
        assert (v.sample_ns, v.robustness) == (200 * MS, 2000 - 2500)
        # at 1.3 s: samples 0.3 .. 1.3 s, the 2500 spike is gone
        v = mon.evaluate(1300 * MS)
        assert (v.sample_ns, v.robustness) == (300 * MS, 2000 - 300)

    def test_online_verdicts_equal_offline_robustness(self):
        rng = np.random.default_rng(3)
        times = np.cumsum(rng.integers(1, 50, 300)) * MS
        a = rng.normal(0, 1, 300)
        b = rng.normal(0, 1, 300)
        spec = "(a < 1.5) until[0,200ms] (eventually[0,100ms](b > 1))"
        offline = robustness(spec, times, {"a": a, "b": b})
        mon = StlMonitor(spec)
        for k in range(300):
            mon.push(int(times[k]), {"a": a[k], "b": b[k]})
            v = mon.evaluate(int(times[k]))
            if v is not None:
                i = int(np.searchsorted(times, v.sample_ns, side="right")) - 1
                assert v.robustness == offline[i]
        assert mon.buffered < 40  # only the last ~300 ms of samples are kept

    def test_missing_signals_hold_their_last_value(self):
        mon = StlMonitor("(a < 1) and (b < 1)")
        with pytest.raises(ValueError, match="no value yet"):
            mon.push(0, {"a": 0.0})
        mon.push(0, {"a": 0.0, "b": 0.5})
        mon.push(10, {"a": 0.8})
        v = mon.evaluate(10)
        assert v.sample_ns == 10 and v.robustness == pytest.approx(0.2)  # min(1 - 0.8, 1 - 0.5)

    def test_a_sample_at_the_same_instant_updates_the_previous_one(self):
        mon = StlMonitor("x < 10")
        mon.push(5, {"x": 1.0})
        mon.push(5, {"x": 4.0})
        assert mon.buffered == 1
        assert mon.evaluate(5).robustness == 6.0

    def test_decide_alerts_only_on_violation(self):
        mon = StlMonitor("x < 10", name="x-limit")
        mon.push(0, {"x": 5.0})
        assert mon.decide(0, target="router") is None
        mon.push(1, {"x": 12.0})
        d = mon.decide(2, target="router", action="throttle")
        assert d == Decision("throttle", "router", "x-limit violated at sample 1 ns", -2.0, 2)

    def test_samples_out_of_order_or_not_finite_raise_value_error(self):
        mon = StlMonitor("x < 1")
        mon.push(10, {"x": 0.0})
        with pytest.raises(ValueError):
            mon.push(9, {"x": 0.0})
        with pytest.raises(ValueError):
            mon.push(11, {"x": math.nan})

    def test_a_long_stream_keeps_a_bounded_buffer(self):
        mon = StlMonitor(self.SPEC, initial_capacity=8)
        for k in range(5000):
            mon.push(k * 10 * MS, {"p99_latency_us": 1.0})
            mon.evaluate(k * 10 * MS)
        assert mon.buffered <= 102
        assert mon.evaluations == 5000 - 100
