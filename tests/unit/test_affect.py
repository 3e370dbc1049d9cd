"""EMS core: appraisal direction, decay half-life, modulation scales."""

from __future__ import annotations

import math

import msgspec
import pytest

from workers._affect import AffectModel, Modulation

S = 1_000_000_000
HALF_LIFE = 2 * S
STRESS = dict(deadline_hit_ratio=0.90, success_ratio=0.98, load=0.95, latency_ns=5_000_000)
CALM = dict(deadline_hit_ratio=1.0, success_ratio=1.0, load=0.1, latency_ns=200_000)
NEUTRAL = dict(deadline_hit_ratio=0.99, success_ratio=0.999, load=0.5, latency_ns=1_000_000)


def model(**kwargs) -> AffectModel:
    return AffectModel(half_life_ns=HALF_LIFE, **kwargs)


class TestAppraisal:
    def test_meeting_every_target_exactly_is_neutral(self):
        assert model().appraise(**NEUTRAL) == pytest.approx((0.0, 0.0), abs=1e-12)

    def test_stress_is_negative_valence_and_positive_arousal(self):
        v, a = model().appraise(**STRESS)
        assert v < -0.9 and a > 0.5

    def test_calm_success_is_positive_valence_and_negative_arousal(self):
        v, a = model().appraise(**CALM)
        assert v > 0.7 and a < -0.5

    def test_stated_values_of_the_module_docstring(self):
        m = model(deadline_weight=1.0)
        v, _ = m.appraise(deadline_hit_ratio=0.98, success_ratio=0.999, load=0.5, latency_ns=1_000_000)
        assert v == pytest.approx(math.tanh(-1.0))  # as far below target as the target is below 1
        _, a = m.appraise(deadline_hit_ratio=0.99, success_ratio=0.999, load=0.5, latency_ns=2_000_000)
        assert a == pytest.approx(math.tanh(1.0) / 2)  # twice the target latency

    @pytest.mark.parametrize(
        "override",
        [dict(deadline_hit_ratio=1.1), dict(success_ratio=-0.1), dict(load=-1.0), dict(latency_ns=0.0)],
    )
    def test_out_of_range_inputs_raise_value_error(self, override):
        with pytest.raises(ValueError):
            model().appraise(**(NEUTRAL | override))


class TestDynamics:
    def test_stress_moves_the_state_toward_its_appraisal(self):
        m = model(gain=0.5)
        target_v, target_a = m.appraise(**STRESS)
        for k in range(1, 4):
            mod = m.observe(0, **STRESS)  # same instant: no decay, only the gain
            assert mod.valence == pytest.approx(target_v * (1 - 0.5**k))
            assert mod.arousal == pytest.approx(target_a * (1 - 0.5**k))

    def test_without_observations_the_state_decays_to_baseline_with_the_stated_half_life(self):
        m = model(baseline_valence=0.2, baseline_arousal=-0.1)
        m.observe(10 * S, **STRESS)
        s0 = m.state(10 * S)
        for elapsed, factor in [(HALF_LIFE, 0.5), (2 * HALF_LIFE, 0.25), (HALF_LIFE // 2, 2**-0.5), (0, 1.0)]:
            s = m.state(10 * S + elapsed)
            assert s.valence - 0.2 == pytest.approx((s0.valence - 0.2) * factor, rel=1e-12)
            assert s.arousal + 0.1 == pytest.approx((s0.arousal + 0.1) * factor, rel=1e-12)
        far = m.state(10 * S + 60 * HALF_LIFE)
        assert far.valence == pytest.approx(0.2) and far.arousal == pytest.approx(-0.1)

    def test_reading_the_state_does_not_change_it(self):
        m = model()
        m.observe(0, **STRESS)
        first = m.state(HALF_LIFE)
        for t in range(0, HALF_LIFE, HALF_LIFE // 10):
            m.modulation(t)
        assert m.state(HALF_LIFE) == first

    def test_an_observation_decays_first_then_moves_by_the_gain(self):
        m = model(gain=0.3)
        m.observe(0, **STRESS)
        v1 = m.state(0).valence
        target_v, _ = m.appraise(**CALM)
        mod = m.observe(HALF_LIFE, **CALM)
        decayed = v1 * 0.5
        assert mod.valence == pytest.approx(decayed + 0.3 * (target_v - decayed))
        assert mod.at_ns == HALF_LIFE

    def test_time_running_backwards_raises_value_error(self):
        m = model()
        m.observe(5 * S, **NEUTRAL)
        with pytest.raises(ValueError):
            m.observe(4 * S, **NEUTRAL)
        with pytest.raises(ValueError):
            m.state(4 * S)

    @pytest.mark.parametrize(
        "kwargs",
        [dict(half_life_ns=0), dict(gain=0.0), dict(gain=1.5), dict(baseline_valence=2.0), dict(load_target=0.0)],
    )
    def test_bad_configuration_raises_value_error(self, kwargs):
        with pytest.raises(ValueError):
            AffectModel(**({"half_life_ns": S} | kwargs))


class TestModulation:
    def test_stress_raises_batch_scale_and_lowers_sensitivity(self):
        m = model(gain=1.0)
        mod = m.observe(0, **STRESS)
        assert mod.batch_scale > 1.3 and mod.sensitivity_scale < 0.6

    def test_calm_lowers_batch_scale_and_raises_sensitivity(self):
        mod = model(gain=1.0).observe(0, **CALM)
        assert mod.batch_scale < 0.8 and mod.sensitivity_scale > 1.5

    def test_scales_stay_within_the_stated_range(self):
        for obs in (STRESS, CALM, NEUTRAL):
            mod = model(gain=1.0, max_scale_log2=1.0).observe(0, **obs)
            assert 0.5 <= mod.batch_scale <= 2.0 and 0.5 <= mod.sensitivity_scale <= 2.0
            assert -1.0 <= mod.valence <= 1.0 and -1.0 <= mod.arousal <= 1.0

    def test_modulation_decays_back_to_unit_scales(self):
        m = model(gain=1.0)
        m.observe(0, **STRESS)
        mod = m.modulation(100 * HALF_LIFE)
        assert mod.batch_scale == pytest.approx(1.0) and mod.sensitivity_scale == pytest.approx(1.0)

    def test_round_trips_through_msgpack(self):
        mod = Modulation(valence=-0.5, arousal=0.25, batch_scale=1.2, sensitivity_scale=0.8, at_ns=7)
        assert msgspec.msgpack.decode(msgspec.msgpack.encode(mod), type=Modulation) == mod
