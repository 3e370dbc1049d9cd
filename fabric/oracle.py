"""The time oracle: duration prediction, load-driven tuning hints and a schedule optimiser.

The brief asks for a "quantum time oracle". What it needs are three classical,
well-understood algorithms, named here for what they are:

====================================  ==================================================================
brief                                 here
====================================  ==================================================================
``predict_task_duration``             ``TimeOracle.predict(kind)``: an exponentially weighted moving
                                      average of the mean plus streaming p50 and p99 estimates by the
                                      P-square algorithm (R. Jain and I. Chlamtac, "The P² algorithm
                                      for dynamic calculation of quantiles and histograms without
                                      storing observations", CACM 28(10):1076-1085, 1985): five
                                      markers per quantile, O(1) memory and time per observation.
``update_quantum_state(feedback)``    ``TimeOracle.record`` / ``record_feedback`` / ``observe_load``.
``generate_optimization_hint()``      ``TimeOracle.generate_optimization_hint(goal)`` and the pure
                                      ``optimization_hint(goal, load)``: batch size, spin budget and
                                      batching delay from measured queue depth, arrival rate and
                                      utilisation (formulas in ``optimization_hint``).
``optimize_schedule_quantum(tasks)``  ``optimize_schedule``: simulated annealing (S. Kirkpatrick,
                                      C. D. Gelatt and M. P. Vecchi, "Optimization by simulated
                                      annealing", Science 220(4598):671-680, 1983) on total weighted
                                      tardiness of one machine (1||ΣwT, strongly NP-hard: Lawler 1977,
                                      Lenstra et al. 1977), seeded, numba inner loop.
====================================  ==================================================================

No GPU/TPU hooks: the annealer's inner loop is sequential by nature and runs
in microseconds to milliseconds on one core.

Schedule optimiser
------------------
Tasks ``j`` have processing time ``p_j``, deadline ``d_j`` and weight ``w_j``;
the machine starts at ``start_ns`` and runs them back to back in the chosen
order. Objective: ``Σ w_j · max(0, C_j − d_j)`` with ``C_j`` the completion time.

- Start: the EDF order (deadline ascending, then weight descending, then index).
- Moves: swap two random positions, or remove one task and reinsert it
  elsewhere (half each). Only the positions between the two indices change
  completion time, so a move is evaluated in O(|i − j|), not O(n).
- Acceptance: Metropolis, ``exp(−Δ/T)``. ``T0`` is set so that the average
  uphill move seen in 100 trial moves from EDF is accepted with probability
  1/2; ``T`` cools geometrically to ``T0 · 1e-4`` over the run.
- The best order seen is kept and is replaced only by a *strictly* better one
  (exact recomputed sums), so the result is never worse than EDF and is EDF
  itself when nothing beats it (e.g. when EDF already meets every deadline).
- Seeded by ``seed`` through splitmix64: the same inputs give the same order.
"""

from __future__ import annotations

import enum
import math
import threading
from typing import Hashable, NamedTuple

import msgspec
import numpy as np
from numpy.typing import ArrayLike, NDArray

from fabric._jit import jit
from fabric.errors import CapacityError, FabricError

__all__ = [
    "Prediction",
    "UnknownTaskKindError",
    "OptimizationGoal",
    "LoadSample",
    "OptimizationHint",
    "PerformanceFeedback",
    "ScheduleOptimization",
    "OracleStatistics",
    "TimeOracle",
    "optimization_hint",
    "optimize_schedule",
    "weighted_tardiness",
    "edf_order",
    "WAKE_COST_NS",
    "MAX_SPIN_NS",
]

# ----------------------------------------------------------------------------- duration prediction

_P50 = 0.5
_P99 = 0.99
_ROW = 42  # count, ewma, then per quantile: q[5], n[5], desired[5], increment[5]
_Q50 = 2
_Q99 = 22


class Prediction(NamedTuple):
    """Predicted duration of one task kind, in ns."""

    mean_ns: int
    p50_ns: int
    p99_ns: int


class UnknownTaskKindError(FabricError, KeyError):
    """The oracle has no observation of that task kind."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want the message as written.
        return str(self.args[0]) if self.args else ""


@jit(inline="always")
def _p2_step(row, b, p, x, cnt):  # pragma: no cover - compiled
    """One P² observation for the quantile whose markers start at ``row[b]``."""
    q = b
    n = b + 5
    want = b + 10
    inc = b + 15
    if cnt < 5:
        row[q + cnt] = x
        if cnt == 4:
            for i in range(1, 5):  # insertion sort of the first five heights
                v = row[q + i]
                j = i - 1
                while j >= 0 and row[q + j] > v:
                    row[q + j + 1] = row[q + j]
                    j -= 1
                row[q + j + 1] = v
            for i in range(5):
                row[n + i] = float(i)
            row[want + 0] = 0.0
            row[want + 1] = 2.0 * p
            row[want + 2] = 4.0 * p
            row[want + 3] = 2.0 + 2.0 * p
            row[want + 4] = 4.0
            row[inc + 0] = 0.0
            row[inc + 1] = p / 2.0
            row[inc + 2] = p
            row[inc + 3] = (1.0 + p) / 2.0
            row[inc + 4] = 1.0
        return
    if x < row[q]:
        row[q] = x
        k = 0
    elif x >= row[q + 4]:
        row[q + 4] = x
        k = 3
    else:
        k = 0
        while k < 3 and x >= row[q + k + 1]:
            k += 1
    for i in range(k + 1, 5):
        row[n + i] += 1.0
    for i in range(5):
        row[want + i] += row[inc + i]
    for i in range(1, 4):
        d = row[want + i] - row[n + i]
        ni = row[n + i]
        if (d >= 1.0 and row[n + i + 1] - ni > 1.0) or (d <= -1.0 and row[n + i - 1] - ni < -1.0):
            s = 1.0 if d > 0.0 else -1.0
            qi = row[q + i]
            qm = row[q + i - 1]
            qp = row[q + i + 1]
            nm = row[n + i - 1]
            np_ = row[n + i + 1]
            cand = qi + s / (np_ - nm) * ((ni - nm + s) * (qp - qi) / (np_ - ni) + (np_ - ni - s) * (qi - qm) / (ni - nm))
            if qm < cand < qp:
                row[q + i] = cand
            else:
                o = i + 1 if s > 0.0 else i - 1
                row[q + i] = qi + s * (row[q + o] - qi) / (row[n + o] - ni)
            row[n + i] = ni + s


@jit("void(float64[::1], float64[::1], float64)")
def _observe(row, xs, alpha):  # pragma: no cover - compiled
    """Fold observations ``xs`` into one kind's row: EWMA mean and P² p50/p99 markers."""
    for x in xs:
        cnt = int(row[0])
        if cnt == 0:
            row[1] = x
        else:
            row[1] += alpha * (x - row[1])
        _p2_step(row, _Q50, _P50, x, cnt)
        _p2_step(row, _Q99, _P99, x, cnt)
        row[0] = cnt + 1.0


def _quantile_estimate(row: NDArray[np.float64], base: int, p: float) -> float:
    cnt = int(row[0])
    if cnt >= 5:
        return float(row[base + 2])
    return float(np.quantile(row[base : base + cnt], p))


def _ewma_fold(mean: float, xs: NDArray[np.float64], alpha: float) -> float:
    """``mean <- mean + alpha (x - mean)`` for each x in order, in closed form (0.0 = no mean yet)."""
    if mean == 0.0:
        mean, xs = float(xs[0]), xs[1:]
    n = xs.size
    if n == 0:
        return mean
    decay = (1.0 - alpha) ** np.arange(n - 1, -1, -1, dtype=np.float64)
    return float((1.0 - alpha) ** n * mean + alpha * np.dot(decay, xs))


class PerformanceFeedback(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """One completed task, as the brief's ``update_quantum_state`` takes it."""

    kind: int | str
    duration_ns: int
    queue_depth: int = -1
    """Queue depth seen at completion (-1: not measured)."""
    now_ns: int = -1
    """When it completed (-1: not given; needed with ``queue_depth`` for load tracking)."""


# ----------------------------------------------------------------------------- hints

WAKE_COST_NS = 30_000
"""Waking a parked process on the reference VM: 25-35 us p50 (PERFORMANCE-NOTES)."""
MAX_SPIN_NS = 100_000
"""Longest spin worth paying before parking when latency matters (PERFORMANCE-NOTES: 50-100 us)."""
_LATENCY_MAX_BATCH = 16
_BALANCED_MAX_BATCH = 64
_THROUGHPUT_MIN_BATCH = 16
_THROUGHPUT_MAX_BATCH = 1024
_BALANCED_WINDOW_NS = 20_000
_THROUGHPUT_WINDOW_NS = 100_000
_THROUGHPUT_MAX_DELAY_NS = 1_000_000


class OptimizationGoal(enum.Enum):
    """What a hint optimises for."""

    MINIMIZE_LATENCY = "minimize_latency"
    MAXIMIZE_THROUGHPUT = "maximize_throughput"
    BALANCED = "balanced"


class LoadSample(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """Measured load, the input of ``optimization_hint``.

    ``service_rate_per_s`` is one worker's completions per second at full use (1e9 /
    mean service ns); 0 when unknown.
    """

    queue_depth: int = 0
    arrival_rate_per_s: float = 0.0
    service_rate_per_s: float = 0.0
    workers: int = 1


class OptimizationHint(msgspec.Struct, frozen=True, gc=False):
    """Concrete knobs for a consumer loop."""

    goal: OptimizationGoal
    batch_size: int
    """Most items to take per poll."""
    spin_budget_ns: int
    """How long to spin for more work before parking."""
    max_batch_delay_ns: int
    """How long to wait for a batch to fill before processing a partial one."""
    shed_fraction: float
    """Fraction of arrivals that cannot be served in steady state (0 unless utilisation > 1)."""
    utilisation: float
    """Arrival rate over total service rate (0 when the service rate is unknown)."""
    reason: str


def _pow2_ceil(x: float) -> int:
    if x <= 1.0:
        return 1
    return 1 << math.ceil(math.log2(x))


def optimization_hint(goal: OptimizationGoal, load: LoadSample) -> OptimizationHint:
    """Knobs for a consumer loop from measured load.

    With ``λ`` the arrival rate, ``ia = 1/λ`` the mean inter-arrival time,
    ``μ = workers · service_rate`` and ``ρ = λ/μ``:

    - shed fraction ``1 − 1/ρ`` when ``ρ > 1`` (the part of the arrivals no schedule
      can serve in steady state), else 0.
    - latency: batch = queue depth clamped to 1..16 (drain a backlog, never wait for
      one); spin = ``clamp(2·ia, WAKE_COST, MAX_SPIN)`` (spinning is cheaper than a
      wake-up); no batching delay.
    - balanced: batch = next power of two of ``max(depth, λ·20 us)``, at most 64;
      spin = half the latency goal's; delay = time for the batch to fill, at most 20 us.
    - throughput: batch = next power of two of ``max(16, depth, λ·100 us)``, at most
      1024 (amortise per-call costs); spin = ``min(ia, WAKE_COST)`` (leave the core to
      producers unless the next item is due sooner than a wake-up); delay = time for the
      batch to fill, at most 1 ms.

    So for one load: batch(latency) <= batch(balanced) <= batch(throughput) and
    spin(latency) >= spin(balanced) >= spin(throughput).
    """
    if not isinstance(goal, OptimizationGoal):
        raise TypeError(f"goal must be an OptimizationGoal, got {goal!r}")
    depth = max(0, int(load.queue_depth))
    lam = max(0.0, float(load.arrival_rate_per_s))
    mu = max(0.0, float(load.service_rate_per_s)) * max(1, int(load.workers))
    rho = lam / mu if mu > 0.0 else 0.0
    shed = 1.0 - 1.0 / rho if rho > 1.0 else 0.0
    ia_ns = 1e9 / lam if lam > 0.0 else math.inf

    def fill_delay(batch: int, cap_ns: int) -> int:
        if lam == 0.0 or depth >= batch:
            return 0
        return int(min((batch - depth) * ia_ns, cap_ns))

    latency_spin = min(MAX_SPIN_NS, max(WAKE_COST_NS, 2.0 * ia_ns))
    if goal is OptimizationGoal.MINIMIZE_LATENCY:
        batch = min(max(depth, 1), _LATENCY_MAX_BATCH)
        spin = latency_spin
        delay = 0
    elif goal is OptimizationGoal.BALANCED:
        batch = min(_pow2_ceil(max(depth, lam * _BALANCED_WINDOW_NS / 1e9)), _BALANCED_MAX_BATCH)
        spin = latency_spin / 2.0
        delay = fill_delay(batch, _BALANCED_WINDOW_NS)
    else:
        batch = min(
            _pow2_ceil(max(_THROUGHPUT_MIN_BATCH, depth, lam * _THROUGHPUT_WINDOW_NS / 1e9)), _THROUGHPUT_MAX_BATCH
        )
        spin = min(ia_ns, WAKE_COST_NS)
        delay = fill_delay(batch, _THROUGHPUT_MAX_DELAY_NS)
    reason = (
        f"{goal.value}: depth {depth}, arrivals {lam:.3g}/s, "
        + (f"utilisation {rho:.2f}" if mu > 0.0 else "service rate unknown")
        + (f", overloaded: shed {shed:.0%}" if shed > 0.0 else "")
    )
    return OptimizationHint(goal, int(batch), int(spin), int(delay), shed, rho, reason)


# ----------------------------------------------------------------------------- schedule optimiser


@jit(inline="always")
def _next_random(s):  # pragma: no cover - compiled
    """splitmix64: returns (new state, uniform float in [0, 1))."""
    s = s + np.uint64(0x9E3779B97F4A7C15)
    z = s
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return s, (z >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@jit(inline="always")
def _segment_cost(order, p, d, w, t, lo, hi):  # pragma: no cover - compiled
    """Weighted tardiness of positions lo..hi when position lo starts at time t."""
    total = 0.0
    for k in range(lo, hi + 1):
        j = order[k]
        t += p[j]
        late = t - d[j]
        if late > 0:
            total += w[j] * late
    return total


@jit(inline="always")
def _refresh(order, p, d, w, start, lo, hi, comp, pcost):  # pragma: no cover - compiled
    t = start if lo == 0 else comp[lo - 1]
    for k in range(lo, hi + 1):
        j = order[k]
        t += p[j]
        comp[k] = t
        late = t - d[j]
        pcost[k] = w[j] * late if late > 0 else 0.0


@jit(inline="always")
def _apply_move(order, kind, i, j):  # pragma: no cover - compiled
    """kind 0: swap positions i and j; kind 1: move the task at i to position j."""
    if kind == 0:
        tmp = order[i]
        order[i] = order[j]
        order[j] = tmp
    elif i < j:
        tmp = order[i]
        for k in range(i, j):
            order[k] = order[k + 1]
        order[j] = tmp
    else:
        tmp = order[i]
        for k in range(i, j, -1):
            order[k] = order[k - 1]
        order[j] = tmp


@jit(
    "float64(int64[::1], int64[::1], float64[::1], int64, int64[::1], int64, int64, int64[::1], int64[::1],"
    " float64[::1], int64[::1])"
)
def _anneal(p, d, w, start, order, iterations, seed, best, comp, pcost, counters):  # pragma: no cover - compiled
    """Simulated annealing on total weighted tardiness from ``order`` (modified in place).

    ``best`` receives the best order; returns its exact cost. ``counters``: [accepted
    moves, improvements of the best].
    """
    n = order.shape[0]
    _refresh(order, p, d, w, start, 0, n - 1, comp, pcost)
    best_cost = 0.0
    for k in range(n):
        best[k] = order[k]
        best_cost += pcost[k]
    counters[0] = 0
    counters[1] = 0
    if n < 2 or iterations <= 0:
        return best_cost
    cur = best_cost
    s = np.uint64(seed)
    # The first `calibration` moves only measure: T0 makes their average uphill delta accepted
    # with probability 1/2. One loop for both phases keeps the compiled kernel small.
    calibration = 100
    up_sum = 0.0
    up_n = 0
    temp = 1.0
    cool = math.exp(math.log(1e-4) / iterations)
    for it in range(calibration + iterations):
        s, u = _next_random(s)
        i = min(int(u * n), n - 1)
        s, u = _next_random(s)
        j = (i + 1 + min(int(u * (n - 1)), n - 2)) % n
        s, u = _next_random(s)
        kind = 0 if u < 0.5 else 1
        lo = min(i, j)
        hi = max(i, j)
        old = 0.0
        for k in range(lo, hi + 1):
            old += pcost[k]
        _apply_move(order, kind, i, j)
        t0 = start if lo == 0 else comp[lo - 1]
        delta = _segment_cost(order, p, d, w, t0, lo, hi) - old
        if it < calibration:
            accept = False
            if delta > 0.0:
                up_sum += delta
                up_n += 1
            if it == calibration - 1 and up_n > 0:
                temp = (up_sum / up_n) / math.log(2.0)
        else:
            accept = delta <= 0.0
            if not accept:
                s, u = _next_random(s)
                accept = u < math.exp(-delta / temp)
            temp *= cool
        if accept:
            _refresh(order, p, d, w, start, lo, hi, comp, pcost)
            cur += delta
            counters[0] += 1
            if cur < best_cost:
                exact = 0.0
                for k in range(n):
                    exact += pcost[k]
                cur = exact
                if exact < best_cost:
                    best_cost = exact
                    for k in range(n):
                        best[k] = order[k]
                    counters[1] += 1
        else:
            _apply_move(order, kind, j, i)  # undoes a swap and an insertion alike
    return best_cost


@jit("float64(int64[::1], int64[::1], int64[::1], float64[::1], int64, int64[::1])")
def _order_cost(order, p, d, w, start, tardy):  # pragma: no cover - compiled
    """Total weighted tardiness of ``order``; ``tardy[0]`` receives the number of late tasks."""
    t = start
    total = 0.0
    late_n = 0
    for k in range(order.shape[0]):
        j = order[k]
        t += p[j]
        late = t - d[j]
        if late > 0:
            total += w[j] * late
            late_n += 1
    tardy[0] = late_n
    return total


class ScheduleOptimization(msgspec.Struct, frozen=True, gc=False):
    """Result of ``optimize_schedule``."""

    order: NDArray[np.int64]
    """Task indices in execution order."""
    total_weighted_tardiness: float
    edf_weighted_tardiness: float
    tardy_tasks: int
    edf_tardy_tasks: int
    iterations: int
    accepted_moves: int
    improvements: int

    @property
    def improved(self) -> bool:
        """True when the order beats EDF (strictly)."""
        return self.total_weighted_tardiness < self.edf_weighted_tardiness


def _task_arrays(
    processing_ns: ArrayLike, deadlines_ns: ArrayLike, weights: ArrayLike
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float64]]:
    p = np.ascontiguousarray(processing_ns, dtype=np.int64)
    d = np.ascontiguousarray(deadlines_ns, dtype=np.int64)
    w = np.ascontiguousarray(weights, dtype=np.float64)
    if not (p.ndim == d.ndim == w.ndim == 1 and p.shape == d.shape == w.shape):
        raise ValueError(f"processing_ns, deadlines_ns and weights must be 1-D of equal length, got {p.shape}, {d.shape}, {w.shape}")
    if p.size and (p.min() < 0 or not np.all(np.isfinite(w)) or w.min() < 0):
        raise ValueError("processing times must be >= 0 and weights finite and >= 0")
    return p, d, w


def edf_order(deadlines_ns: ArrayLike, weights: ArrayLike | None = None) -> NDArray[np.int64]:
    """Task indices by deadline ascending, then weight descending, then index."""
    d = np.asarray(deadlines_ns, dtype=np.int64)
    w = np.zeros(d.shape, dtype=np.float64) if weights is None else np.asarray(weights, dtype=np.float64)
    return np.lexsort((np.arange(d.size), -w, d)).astype(np.int64)


def weighted_tardiness(
    order: ArrayLike, processing_ns: ArrayLike, deadlines_ns: ArrayLike, weights: ArrayLike, *, start_ns: int = 0
) -> tuple[float, int]:
    """Total weighted tardiness of running tasks in ``order`` from ``start_ns``, and how many are late."""
    p, d, w = _task_arrays(processing_ns, deadlines_ns, weights)
    o = np.ascontiguousarray(order, dtype=np.int64)
    if sorted(o.tolist()) != list(range(p.size)):
        raise ValueError("order must be a permutation of the task indices")
    tardy = np.zeros(1, dtype=np.int64)
    total = float(_order_cost(o, p, d, w, int(start_ns), tardy))
    return total, int(tardy[0])


def _default_iterations(n: int) -> int:
    return max(2_000, min(200_000, 400 * n))


def optimize_schedule(
    processing_ns: ArrayLike,
    deadlines_ns: ArrayLike,
    weights: ArrayLike,
    *,
    start_ns: int = 0,
    seed: int = 0,
    max_iterations: int | None = None,
) -> ScheduleOptimization:
    """Single-machine order minimising total weighted tardiness, by simulated annealing from EDF.

    Parameters
    ----------
    processing_ns, deadlines_ns, weights:
        Per task: processing time (ns, >= 0), absolute deadline (ns), weight (>= 0).
    start_ns:
        When the machine starts the first task.
    seed:
        Seed of the move generator (>= 0); same inputs and seed give the same order.
    max_iterations:
        Annealing moves (default ``clamp(400 n, 2000, 200000)``).

    Returns
    -------
    ScheduleOptimization
        Never worse than EDF; exactly EDF when nothing strictly better was found.
    """
    p, d, w = _task_arrays(processing_ns, deadlines_ns, weights)
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    n = p.size
    iterations = _default_iterations(n) if max_iterations is None else int(max_iterations)
    if iterations < 0:
        raise ValueError(f"max_iterations must be >= 0, got {max_iterations}")
    edf = edf_order(d, w)
    tardy = np.zeros(1, dtype=np.int64)
    edf_cost = float(_order_cost(edf, p, d, w, int(start_ns), tardy))
    edf_tardy = int(tardy[0])
    if n < 2:
        return ScheduleOptimization(edf, edf_cost, edf_cost, edf_tardy, edf_tardy, 0, 0, 0)
    order = edf.copy()
    best = np.empty(n, dtype=np.int64)
    comp = np.empty(n, dtype=np.int64)
    pcost = np.empty(n, dtype=np.float64)
    counters = np.zeros(2, dtype=np.int64)
    best_cost = float(_anneal(p, d, w, int(start_ns), order, iterations, int(seed), best, comp, pcost, counters))
    if not best_cost < edf_cost:
        best, best_cost = edf, edf_cost
    best_cost = float(_order_cost(best, p, d, w, int(start_ns), tardy))
    return ScheduleOptimization(
        best, best_cost, edf_cost, int(tardy[0]), edf_tardy, iterations, int(counters[0]), int(counters[1])
    )


# ----------------------------------------------------------------------------- the oracle


class OracleStatistics(msgspec.Struct, frozen=True, gc=False):
    """Counters of a ``TimeOracle``."""

    kinds: int
    observations: int
    arrival_rate_per_s: float
    service_rate_per_s: float
    queue_depth: int
    optimisations: int


class TimeOracle:
    """Duration predictions per task kind, load tracking, tuning hints and schedule optimisation.

    Parameters
    ----------
    max_kinds:
        Most distinct task kinds tracked (fixed memory: 42 floats per kind).
    ewma_alpha:
        Weight of a new observation in the mean (0 < alpha <= 1); the EWMA's centre of
        mass lies ``1/alpha - 1`` observations back.
    rate_alpha:
        Weight of a new interval in the arrival-rate EWMA.

    Thread-safe (one lock; observations are folded in by a numba kernel).
    """

    __slots__ = (
        "_alpha",
        "_rate_alpha",
        "_rows",
        "_kinds",
        "_lock",
        "_observations",
        "_service_mean_ns",
        "_arrival_rate",
        "_last_load_ns",
        "_queue_depth",
        "_optimisations",
    )

    def __init__(self, *, max_kinds: int = 256, ewma_alpha: float = 0.05, rate_alpha: float = 0.2) -> None:
        if int(max_kinds) < 1:
            raise ValueError(f"max_kinds must be >= 1, got {max_kinds}")
        if not 0.0 < float(ewma_alpha) <= 1.0 or not 0.0 < float(rate_alpha) <= 1.0:
            raise ValueError(f"ewma_alpha and rate_alpha must be in (0, 1], got {ewma_alpha}, {rate_alpha}")
        self._alpha = float(ewma_alpha)
        self._rate_alpha = float(rate_alpha)
        self._rows = np.zeros((int(max_kinds), _ROW), dtype=np.float64)
        self._kinds: dict[Hashable, int] = {}
        self._lock = threading.Lock()
        self._observations = 0
        self._service_mean_ns = 0.0
        self._arrival_rate = 0.0
        self._last_load_ns: int | None = None
        self._queue_depth = 0
        self._optimisations = 0

    # --- observations ----------------------------------------------------------------------

    def _row_for(self, kind: Hashable) -> int:
        row = self._kinds.get(kind)
        if row is None:
            if len(self._kinds) >= self._rows.shape[0]:
                raise CapacityError(
                    f"the oracle already tracks {self._rows.shape[0]} task kinds; raise max_kinds "
                    f"or reuse kinds (new kind {kind!r})"
                )
            row = self._kinds[kind] = len(self._kinds)
        return row

    def record_batch(self, kind: Hashable, durations_ns: ArrayLike) -> None:
        """Fold observed durations (ns, >= 0) of one task kind into its predictors.

        Raises
        ------
        CapacityError
            ``kind`` is new and ``max_kinds`` kinds are already tracked.
        ValueError
            A duration is negative or not finite.
        """
        xs = np.ascontiguousarray(durations_ns, dtype=np.float64).reshape(-1)
        if xs.size == 0:
            return
        if not np.all(np.isfinite(xs)) or xs.min() < 0.0:
            raise ValueError("durations must be finite and >= 0")
        with self._lock:
            row = self._row_for(kind)
            _observe(self._rows[row], xs, self._alpha)
            self._observations += xs.size
            self._service_mean_ns = _ewma_fold(self._service_mean_ns, xs, self._alpha)

    def record(self, kind: Hashable, duration_ns: int) -> None:
        """Fold one observed duration into the predictors of ``kind``."""
        self.record_batch(kind, np.array([duration_ns], dtype=np.float64))

    def record_feedback(self, feedback: PerformanceFeedback) -> None:
        """The brief's ``update_quantum_state``: one completion, optionally with the queue depth seen."""
        self.record(feedback.kind, feedback.duration_ns)
        if feedback.queue_depth >= 0 and feedback.now_ns >= 0:
            self.observe_load(queue_depth=feedback.queue_depth, arrivals=0, now_ns=feedback.now_ns)

    def observe_load(self, *, queue_depth: int, arrivals: int, now_ns: int) -> None:
        """Record the queue depth now and how many items arrived since the previous call.

        The arrival rate is an EWMA of ``arrivals / elapsed`` over successive calls.
        """
        with self._lock:
            self._queue_depth = max(0, int(queue_depth))
            last = self._last_load_ns
            now_ns = int(now_ns)
            if last is not None and now_ns > last:
                inst = max(0, int(arrivals)) * 1e9 / (now_ns - last)
                if self._arrival_rate == 0.0:
                    self._arrival_rate = inst
                else:
                    self._arrival_rate += self._rate_alpha * (inst - self._arrival_rate)
            if last is None or now_ns > last:
                self._last_load_ns = now_ns

    # --- predictions -----------------------------------------------------------------------

    def samples(self, kind: Hashable) -> int:
        """How many durations of ``kind`` were observed (0 if none)."""
        row = self._kinds.get(kind)
        return 0 if row is None else int(self._rows[row, 0])

    def predict(self, kind: Hashable) -> Prediction:
        """Predicted duration of a task of ``kind``: (EWMA mean, P² p50, P² p99) in ns.

        With fewer than five observations the quantiles are the exact quantiles of
        those observed.

        Raises
        ------
        UnknownTaskKindError
            No duration of ``kind`` was observed.
        """
        with self._lock:
            row = self._kinds.get(kind)
            if row is None:
                raise UnknownTaskKindError(f"no duration of task kind {kind!r} has been observed")
            r = self._rows[row]
            return Prediction(
                int(round(r[1])),
                int(round(_quantile_estimate(r, _Q50, _P50))),
                int(round(_quantile_estimate(r, _Q99, _P99))),
            )

    def predict_task_duration(self, kind: Hashable) -> int:
        """The brief's ``predict_task_duration``: the EWMA mean for ``kind``, in ns."""
        return self.predict(kind).mean_ns

    # --- load and hints --------------------------------------------------------------------

    def load(self, *, workers: int = 1) -> LoadSample:
        """The current load estimate (queue depth, arrival rate, per-worker service rate)."""
        with self._lock:
            mean = self._service_mean_ns
            return LoadSample(
                queue_depth=self._queue_depth,
                arrival_rate_per_s=self._arrival_rate,
                service_rate_per_s=1e9 / mean if mean > 0.0 else 0.0,
                workers=workers,
            )

    def generate_optimization_hint(
        self, goal: OptimizationGoal = OptimizationGoal.BALANCED, *, workers: int = 1
    ) -> OptimizationHint:
        """Tuning knobs for ``goal`` from the load measured so far (see ``optimization_hint``)."""
        return optimization_hint(goal, self.load(workers=workers))

    # --- optimisation ----------------------------------------------------------------------

    def optimize_schedule(
        self,
        processing_ns: ArrayLike,
        deadlines_ns: ArrayLike,
        weights: ArrayLike,
        *,
        start_ns: int = 0,
        seed: int = 0,
        max_iterations: int | None = None,
    ) -> ScheduleOptimization:
        """``optimize_schedule`` (simulated annealing, never worse than EDF), counted."""
        result = optimize_schedule(
            processing_ns, deadlines_ns, weights, start_ns=start_ns, seed=seed, max_iterations=max_iterations
        )
        with self._lock:
            self._optimisations += 1
        return result

    def statistics(self) -> OracleStatistics:
        """A snapshot of the counters and load estimates."""
        with self._lock:
            mean = self._service_mean_ns
            return OracleStatistics(
                kinds=len(self._kinds),
                observations=self._observations,
                arrival_rate_per_s=self._arrival_rate,
                service_rate_per_s=1e9 / mean if mean > 0.0 else 0.0,
                queue_depth=self._queue_depth,
                optimisations=self._optimisations,
            )
