"""EMS core: a two-dimensional affect state of the fabric itself, and the modulation it publishes.

The state is a point in Russell's circumplex (J. A. Russell, "A circumplex
model of affect", J. Pers. Soc. Psychol. 39(6):1161-1178, 1980): *valence*
(is the system meeting its goals?) and *arousal* (how hard is it being
pushed?), both in [-1, 1]. It is an appraisal of measurements, not a mood
that anything "feels"; its use is to turn many noisy health signals into two
smooth numbers that other modules can scale their behaviour by.

Dynamics, in the manner of ALMA (P. Gebhard, "ALMA - A Layered Model of
Affect", AAMAS 2005: appraisals push the state, which decays back to a
baseline)::

    between observations:  s(t) = baseline + (s(t0) - baseline) * 2 ** (-(t - t0) / half_life)
    at an observation:     s   <- s + gain * (appraisal - s)

Appraisal of one observation (each term in (-1, 1)):

    valence = w * tanh((deadline_hit_ratio - deadline_target) / (1 - deadline_target))
              + (1 - w) * tanh((success_ratio - success_target) / (1 - success_target))
    arousal = (tanh(load / load_target - 1) + tanh(log2(latency_ns / latency_target_ns))) / 2

So meeting a target exactly appraises as 0; a hit ratio as far below its
target as the target is below 1 appraises as tanh(-1) = -0.76; twice the
target latency adds tanh(1) / 2 = +0.38 arousal.

Modulation (what other modules read), with ``stress = (arousal - valence) / 2`` in [-1, 1]::

    batch_scale       = 2 ** arousal    in [0.5, 2]: bigger batches under load (throughput),
                                        smaller when calm (latency)   -> ADP batch size
    sensitivity_scale = 2 ** -stress    in [0.5, 2]: under stress DRPP doubles its detection
                                        threshold (less optional work), when calm halves it
"""

from __future__ import annotations

import math

import msgspec
import numpy as np

__all__ = ["AffectModel", "AffectState", "Modulation"]


class Modulation(msgspec.Struct, frozen=True, gc=False):
    """What EMS publishes: the affect state and the scales derived from it, at ``at_ns``."""

    valence: float
    arousal: float
    batch_scale: float
    sensitivity_scale: float
    at_ns: int


class AffectState(msgspec.Struct, frozen=True, gc=False):
    """Valence and arousal at ``at_ns``."""

    valence: float
    arousal: float
    at_ns: int


def _check_int(name: str, value: object) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    return int(value)


def _clip1(x: float) -> float:
    return -1.0 if x < -1.0 else (1.0 if x > 1.0 else x)


def _check_ratio_target(name: str, value: float) -> float:
    if not (0.0 <= value < 1.0):
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return float(value)


class AffectModel:
    """Valence/arousal of the system, pushed by observations and decaying to a baseline.

    Parameters
    ----------
    half_life_ns : int
        Time for the distance to the baseline to halve without observations.
    gain : float
        Fraction of the gap to an observation's appraisal closed by that observation, in (0, 1].
    baseline_valence, baseline_arousal : float
        Resting state, in [-1, 1]; also the initial state.
    deadline_target, success_target : float
        Ratios that appraise as neutral, in [0, 1).
    deadline_weight : float
        Weight ``w`` of the deadline term in valence, in [0, 1].
    load_target : float
        Load (same unit as observed, e.g. ring fill ratio) that appraises as neutral; > 0.
    latency_target_ns : int
        Latency that appraises as neutral; > 0.
    max_scale_log2 : float
        Scales range over ``2 ** [-max_scale_log2, +max_scale_log2]``.
    """

    def __init__(
        self,
        *,
        half_life_ns: int = 5_000_000_000,
        gain: float = 0.3,
        baseline_valence: float = 0.0,
        baseline_arousal: float = 0.0,
        deadline_target: float = 0.99,
        success_target: float = 0.999,
        deadline_weight: float = 0.5,
        load_target: float = 0.5,
        latency_target_ns: int = 1_000_000,
        max_scale_log2: float = 1.0,
    ) -> None:
        self._half_life_ns = _check_int("half_life_ns", half_life_ns)
        if self._half_life_ns <= 0:
            raise ValueError(f"half_life_ns must be > 0, got {half_life_ns}")
        if not (0.0 < gain <= 1.0):
            raise ValueError(f"gain must be in (0, 1], got {gain}")
        for name, v in (("baseline_valence", baseline_valence), ("baseline_arousal", baseline_arousal)):
            if not (-1.0 <= v <= 1.0):
                raise ValueError(f"{name} must be in [-1, 1], got {v}")
        if not (0.0 <= deadline_weight <= 1.0):
            raise ValueError(f"deadline_weight must be in [0, 1], got {deadline_weight}")
        if not (load_target > 0.0 and math.isfinite(load_target)):
            raise ValueError(f"load_target must be positive and finite, got {load_target}")
        if _check_int("latency_target_ns", latency_target_ns) <= 0:
            raise ValueError(f"latency_target_ns must be > 0, got {latency_target_ns}")
        if not (max_scale_log2 > 0.0 and math.isfinite(max_scale_log2)):
            raise ValueError(f"max_scale_log2 must be positive and finite, got {max_scale_log2}")
        self._gain = float(gain)
        self._base_v = float(baseline_valence)
        self._base_a = float(baseline_arousal)
        self._deadline_target = _check_ratio_target("deadline_target", deadline_target)
        self._success_target = _check_ratio_target("success_target", success_target)
        self._w = float(deadline_weight)
        self._load_target = float(load_target)
        self._latency_target_ns = int(latency_target_ns)
        self._max_log2 = float(max_scale_log2)
        self._v = self._base_v
        self._a = self._base_a
        self._t_ns: int | None = None
        self._observations = 0

    @property
    def half_life_ns(self) -> int:
        """Decay half-life toward the baseline."""
        return self._half_life_ns

    @property
    def observations(self) -> int:
        """Observations taken so far."""
        return self._observations

    def _decayed(self, now_ns: int) -> tuple[float, float]:
        if self._t_ns is None:
            return self._v, self._a
        elapsed = now_ns - self._t_ns
        if elapsed < 0:
            raise ValueError(f"time ran backwards: {now_ns} ns is before the last update at {self._t_ns} ns")
        factor = 2.0 ** (-elapsed / self._half_life_ns)
        return (
            self._base_v + (self._v - self._base_v) * factor,
            self._base_a + (self._a - self._base_a) * factor,
        )

    def appraise(
        self, *, deadline_hit_ratio: float, success_ratio: float, load: float, latency_ns: float
    ) -> tuple[float, float]:
        """(valence, arousal) that one observation points to, without changing the state.

        Raises
        ------
        ValueError
            If a ratio is outside [0, 1], the load is negative or the latency not positive.
        """
        for name, v in (("deadline_hit_ratio", deadline_hit_ratio), ("success_ratio", success_ratio)):
            if not (0.0 <= v <= 1.0):
                raise ValueError(f"{name} must be in [0, 1], got {v}")
        if not (load >= 0.0 and math.isfinite(load)):
            raise ValueError(f"load must be >= 0 and finite, got {load}")
        if not (latency_ns > 0.0 and math.isfinite(latency_ns)):
            raise ValueError(f"latency_ns must be > 0 and finite, got {latency_ns}")
        v_deadline = math.tanh((deadline_hit_ratio - self._deadline_target) / (1.0 - self._deadline_target))
        v_success = math.tanh((success_ratio - self._success_target) / (1.0 - self._success_target))
        valence = self._w * v_deadline + (1.0 - self._w) * v_success
        a_load = math.tanh(load / self._load_target - 1.0)
        a_latency = math.tanh(math.log2(latency_ns / self._latency_target_ns))
        arousal = 0.5 * (a_load + a_latency)
        return _clip1(valence), _clip1(arousal)

    def observe(
        self,
        now_ns: int,
        *,
        deadline_hit_ratio: float,
        success_ratio: float,
        load: float,
        latency_ns: float,
    ) -> Modulation:
        """Decay the state to ``now_ns``, move it toward this observation's appraisal, return the modulation.

        Parameters
        ----------
        now_ns : int
            Observation time; must not precede the previous update.
        deadline_hit_ratio, success_ratio : float
            Fractions in [0, 1] over the observation window.
        load : float
            Load signal in the unit of ``load_target``.
        latency_ns : float
            Latency statistic (e.g. p99) in ns.

        Raises
        ------
        ValueError
            On out-of-range inputs or time running backwards.
        """
        now = _check_int("now_ns", now_ns)
        target_v, target_a = self.appraise(
            deadline_hit_ratio=deadline_hit_ratio, success_ratio=success_ratio, load=load, latency_ns=latency_ns
        )
        v, a = self._decayed(now)
        self._v = _clip1(v + self._gain * (target_v - v))
        self._a = _clip1(a + self._gain * (target_a - a))
        self._t_ns = now
        self._observations += 1
        return self._modulation(self._v, self._a, now)

    def state(self, now_ns: int) -> AffectState:
        """The state decayed to ``now_ns`` (does not change the model)."""
        now = _check_int("now_ns", now_ns)
        v, a = self._decayed(now)
        return AffectState(valence=v, arousal=a, at_ns=now)

    def modulation(self, now_ns: int) -> Modulation:
        """The modulation at ``now_ns`` (does not change the model)."""
        now = _check_int("now_ns", now_ns)
        v, a = self._decayed(now)
        return self._modulation(v, a, now)

    def _modulation(self, v: float, a: float, now_ns: int) -> Modulation:
        stress = 0.5 * (a - v)
        return Modulation(
            valence=v,
            arousal=a,
            batch_scale=2.0 ** (self._max_log2 * a),
            sensitivity_scale=2.0 ** (-self._max_log2 * stress),
            at_ns=now_ns,
        )
