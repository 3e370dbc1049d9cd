"""ADP core: assign work items to workers so that each finishes as early as expected.

**Join the shortest expected queue (JSEQ).** A new item goes to the live worker
that minimises its *expected completion time*::

    cost(w) = expected_backlog_ns(w) + slowdown(w) * predicted_ns(item)
    expected_backlog_ns(w) = slowdown(w) * sum(predicted_ns of items queued on w)
                             - min(now - head_started(w), slowdown(w) * predicted_ns(head of w))

This is the "least work remaining" policy of M. Harchol-Balter, M. Crovella and
C. Murta, "On choosing a task assignment policy for a distributed server
system", J. Parallel Distrib. Comput. 59(2):204-228, 1999 (which beats
round-robin and random under high-variance job sizes), applied to
heterogeneous, drifting workers by scaling each worker's work by a learned
*slowdown factor*: an exponentially weighted moving average of
``observed_ns / predicted_ns`` over the worker's completed items. With equal
speeds and unit work it reduces to join-the-shortest-queue (W. Winston,
"Optimality of the shortest line discipline", J. Appl. Probab. 14(1):181-189, 1977).

Bookkeeping assumes each worker serves its items in assignment (FIFO) order and
starts the next at once: the head item started when it was assigned to an idle
worker or when its predecessor completed.

``RoundRobinDispatcher`` has the same interface and ignores predictions: the
baseline. ``simulate_dispatch`` is a deterministic discrete-event simulation
that drives either dispatcher on a workload (arrivals, skewed sizes, workers
that slow down or die) and returns completion times, for tests and benches.

Lifecycle of an item::

    assign(item, predicted_ns, now) --> queued on worker w --> complete(item, now, observed_ns)
                                           |
                     mark_dead(w, now) ----+--> returned as (item, predicted_ns) for reassignment
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from typing import Iterable, Protocol, runtime_checkable

import msgspec
import numpy as np
from numpy.typing import ArrayLike, NDArray

from fabric._jit import jit
from fabric.errors import BrokenResourceError

__all__ = [
    "Dispatcher",
    "DispatcherStatistics",
    "JseqDispatcher",
    "RoundRobinDispatcher",
    "simulate_dispatch",
]

_RATIO_MIN = 1.0 / 64.0  # one freak measurement must not swing the slowdown by more than this
_RATIO_MAX = 64.0


class DispatcherStatistics(msgspec.Struct, frozen=True, gc=False):
    """Counters and per-worker state of a dispatcher (lists indexed by worker)."""

    assigned: int
    completed: int
    reassigned: int
    outstanding: list[int]
    alive: list[bool]
    slowdown: list[float]


@runtime_checkable
class Dispatcher(Protocol):
    """What ``simulate_dispatch`` and the ADP worker need from a dispatch policy."""

    @property
    def n_workers(self) -> int:
        """Number of workers (live or dead)."""
        ...

    def assign(self, item_id: int, predicted_ns: int, now_ns: int) -> int:
        """Choose a live worker for a new item and record it there; return the worker."""
        ...

    def complete(self, item_id: int, now_ns: int, observed_ns: int | None = None) -> int:
        """Record that an item finished; return the worker that ran it."""
        ...

    def mark_dead(self, worker: int, now_ns: int) -> list[tuple[int, int]]:
        """Stop assigning to a worker; return its outstanding (item_id, predicted_ns), oldest first."""
        ...

    def mark_alive(self, worker: int, now_ns: int) -> None:
        """Assign to a worker again (a restarted worker starts with no items)."""
        ...

    def statistics(self) -> DispatcherStatistics:
        """Counters and per-worker state."""
        ...


# ----------------------------------------------------------------------------- kernel


@jit(["void(float64[:], float64[:], int64[:], int64[:], float64[:], uint8[:], int64, int64[:], int64[:])"])
def _jseq_assign_kernel(
    pending_pred, head_pred, head_start, queued, slowdown, alive, now_ns, predicted, out
):  # pragma: no cover - compiled
    """Greedy JSEQ over a batch: item i goes to argmin cost; the chosen worker's state is updated.

    ``out[i] = -1`` when no worker is alive. Ties go to the lowest worker index.
    """
    n = slowdown.size
    for i in range(predicted.size):
        best = -1
        best_cost = np.inf
        p = float(predicted[i])
        for w in range(n):
            if alive[w] == 0:
                continue
            s = slowdown[w]
            backlog = s * pending_pred[w]
            if queued[w] > 0:
                elapsed = float(now_ns - head_start[w])
                done = s * head_pred[w]
                if elapsed < done:
                    done = elapsed
                if done > 0.0:
                    backlog -= done
            cost = backlog + s * p
            if cost < best_cost:
                best_cost = cost
                best = w
        out[i] = best
        if best >= 0:
            if queued[best] == 0:
                head_start[best] = now_ns
                head_pred[best] = p
            queued[best] += 1
            pending_pred[best] += p


# ----------------------------------------------------------------------------- dispatchers


def _check_int(name: str, value: object) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    return int(value)


class _DispatcherBase:
    """Bookkeeping shared by the policies: FIFO queue of (item, predicted_ns) per worker."""

    def __init__(self, n_workers: int, *, alpha: float = 0.2) -> None:
        n = _check_int("n_workers", n_workers)
        if n < 1:
            raise ValueError(f"n_workers must be >= 1, got {n}")
        if not (0.0 < alpha <= 1.0):
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self._n = n
        self._alpha = float(alpha)
        self._queues: list[deque[int]] = [deque() for _ in range(n)]
        self._where: dict[int, tuple[int, int]] = {}  # item -> (worker, predicted_ns)
        self._pending_pred = np.zeros(n, dtype=np.float64)
        self._head_pred = np.zeros(n, dtype=np.float64)
        self._head_start = np.zeros(n, dtype=np.int64)
        self._queued = np.zeros(n, dtype=np.int64)
        self._slowdown = np.ones(n, dtype=np.float64)
        self._alive = np.ones(n, dtype=np.uint8)
        self._assigned = 0
        self._completed = 0
        self._reassigned = 0

    @property
    def n_workers(self) -> int:
        """Number of workers (live or dead)."""
        return self._n

    @property
    def slowdown(self) -> NDArray[np.float64]:
        """Learned observed/predicted duration ratio per worker (a copy; 1.0 = as predicted)."""
        return self._slowdown.copy()

    def outstanding(self, worker: int) -> list[int]:
        """Items assigned to ``worker`` and not yet completed, oldest first."""
        return list(self._queues[self._check_worker(worker)])

    def expected_backlog_ns(self, now_ns: int) -> NDArray[np.float64]:
        """Expected ns of work left per worker at ``now_ns`` (0 for dead or idle workers)."""
        now = _check_int("now_ns", now_ns)
        s = self._slowdown
        done = np.minimum(np.maximum(now - self._head_start, 0).astype(np.float64), s * self._head_pred)
        backlog = s * self._pending_pred - np.where(self._queued > 0, done, 0.0)
        return np.where(self._alive == 1, backlog, 0.0)

    def _check_worker(self, worker: int) -> int:
        w = _check_int("worker", worker)
        if not (0 <= w < self._n):
            raise ValueError(f"worker must be in 0..{self._n - 1}, got {w}")
        return w

    def _choose(self, predicted_ns: int, now_ns: int) -> int:  # pragma: no cover - abstract
        """Pick a live worker and update its numeric state (``_push_state``)."""
        raise NotImplementedError

    def _push_state(self, worker: int, predicted_ns: int, now_ns: int) -> None:
        """Numeric state of a new item on ``worker`` (``_jseq_assign_kernel`` does the same in bulk)."""
        if self._queued[worker] == 0:
            self._head_start[worker] = now_ns
            self._head_pred[worker] = predicted_ns
        self._queued[worker] += 1
        self._pending_pred[worker] += predicted_ns

    def _push_item(self, item_id: int, worker: int, predicted_ns: int) -> None:
        self._queues[worker].append(item_id)
        self._where[item_id] = (worker, predicted_ns)
        self._assigned += 1

    def _check_new_item(self, item_id: int, predicted_ns: int, now_ns: int) -> tuple[int, int, int]:
        item = _check_int("item_id", item_id)
        pred = _check_int("predicted_ns", predicted_ns)
        now = _check_int("now_ns", now_ns)
        if pred < 0:
            raise ValueError(f"predicted_ns must be >= 0, got {pred}")
        if item in self._where:
            raise ValueError(f"item {item} is already outstanding on worker {self._where[item][0]}")
        if not self._alive.any():
            raise BrokenResourceError("no live worker to assign to")
        return item, pred, now

    def assign(self, item_id: int, predicted_ns: int, now_ns: int) -> int:
        """Choose a live worker for a new item and record the item there.

        Parameters
        ----------
        item_id : int
            Caller's unique id for the item (unique among outstanding items).
        predicted_ns : int
            Predicted duration on a worker of nominal speed (slowdown 1.0).
        now_ns : int
            Current time.

        Returns
        -------
        int
            The chosen worker.

        Raises
        ------
        BrokenResourceError
            If every worker is dead.
        ValueError
            If ``item_id`` is already outstanding or ``predicted_ns < 0``.
        """
        item, pred, now = self._check_new_item(item_id, predicted_ns, now_ns)
        worker = self._choose(pred, now)
        self._push_item(item, worker, pred)
        return worker

    def complete(self, item_id: int, now_ns: int, observed_ns: int | None = None) -> int:
        """Record that an item finished, and learn the worker's slowdown from it.

        Parameters
        ----------
        item_id : int
            An outstanding item.
        now_ns : int
            Completion time; the worker's next item starts now.
        observed_ns : int, optional
            Measured duration. When omitted and the item was at the head of its
            worker's queue, ``now_ns - head_started`` is used; otherwise the
            slowdown is not updated.

        Returns
        -------
        int
            The worker that ran the item.

        Raises
        ------
        ValueError
            If the item is not outstanding.
        """
        item = _check_int("item_id", item_id)
        now = _check_int("now_ns", now_ns)
        try:
            worker, pred = self._where.pop(item)
        except KeyError:
            raise ValueError(f"item {item} is not outstanding") from None
        queue = self._queues[worker]
        was_head = queue[0] == item
        if observed_ns is None and was_head:
            observed_ns = now - int(self._head_start[worker])
        if was_head:
            queue.popleft()
        else:
            queue.remove(item)
        self._queued[worker] -= 1
        self._pending_pred[worker] = max(self._pending_pred[worker] - pred, 0.0) if queue else 0.0
        if was_head and queue:
            self._head_start[worker] = now
            self._head_pred[worker] = self._where[queue[0]][1]
        if observed_ns is not None and pred > 0:
            ratio = min(max(float(observed_ns) / pred, _RATIO_MIN), _RATIO_MAX)
            self._slowdown[worker] += self._alpha * (ratio - self._slowdown[worker])
        self._completed += 1
        return worker

    def mark_dead(self, worker: int, now_ns: int) -> list[tuple[int, int]]:
        """Stop assigning to ``worker`` and hand back its outstanding items.

        Returns
        -------
        list of (item_id, predicted_ns)
            The worker's outstanding items, oldest first, for the caller to
            ``assign`` again (``statistics().reassigned`` counts them; ``assigned``
            counts every ``assign``, so it counts them again).
        """
        w = self._check_worker(worker)
        _check_int("now_ns", now_ns)
        items = [(item, self._where.pop(item)[1]) for item in self._queues[w]]
        self._queues[w].clear()
        self._queued[w] = 0
        self._pending_pred[w] = 0.0
        self._alive[w] = 0
        self._reassigned += len(items)
        return items

    def mark_alive(self, worker: int, now_ns: int, *, reset_slowdown: bool = True) -> None:
        """Assign to ``worker`` again; a restarted worker's speed is unknown, so by default it is reset to 1.0."""
        w = self._check_worker(worker)
        _check_int("now_ns", now_ns)
        self._alive[w] = 1
        if reset_slowdown:
            self._slowdown[w] = 1.0

    def statistics(self) -> DispatcherStatistics:
        """Counters and per-worker state."""
        return DispatcherStatistics(
            assigned=self._assigned,
            completed=self._completed,
            reassigned=self._reassigned,
            outstanding=[len(q) for q in self._queues],
            alive=[bool(a) for a in self._alive],
            slowdown=[float(s) for s in self._slowdown],
        )


class JseqDispatcher(_DispatcherBase):
    """Join-the-shortest-expected-queue: minimise each item's expected completion time.

    Parameters
    ----------
    n_workers : int
        Number of workers, indexed 0..n_workers-1, all alive at first.
    alpha : float
        EWMA weight of the newest ``observed / predicted`` ratio in a worker's
        slowdown factor (0.2: the factor has moved ~90% of the way to a new speed
        after 10 completions on that worker).
    """

    def __init__(self, n_workers: int, *, alpha: float = 0.2) -> None:
        super().__init__(n_workers, alpha=alpha)
        self._one_pred = np.zeros(1, dtype=np.int64)
        self._one_out = np.zeros(1, dtype=np.int64)

    def _choose(self, predicted_ns: int, now_ns: int) -> int:
        self._one_pred[0] = predicted_ns
        _jseq_assign_kernel(
            self._pending_pred,
            self._head_pred,
            self._head_start,
            self._queued,
            self._slowdown,
            self._alive,
            now_ns,
            self._one_pred,
            self._one_out,
        )
        return int(self._one_out[0])

    def assign_batch(self, item_ids: ArrayLike, predicted_ns: ArrayLike, now_ns: int) -> NDArray[np.int64]:
        """Assign many items arriving at the same instant, in order (greedy JSEQ).

        Equivalent to calling ``assign`` for each item in turn, but the choice
        loop runs in one compiled call.

        Returns
        -------
        ndarray of int64
            The worker chosen for each item.
        """
        ids = np.asarray(item_ids, dtype=np.int64).ravel()
        preds = np.ascontiguousarray(np.asarray(predicted_ns, dtype=np.int64).ravel())
        if ids.shape != preds.shape:
            raise ValueError(f"item_ids and predicted_ns must have the same length, got {ids.size} and {preds.size}")
        if ids.size == 0:
            return np.empty(0, dtype=np.int64)
        now = _check_int("now_ns", now_ns)
        if np.any(preds < 0):
            raise ValueError("predicted_ns must be >= 0")
        if len(set(ids.tolist())) != ids.size or any(int(i) in self._where for i in ids):
            raise ValueError("item_ids must be unique and not already outstanding")
        if not self._alive.any():
            raise BrokenResourceError("no live worker to assign to")
        out = np.empty(ids.size, dtype=np.int64)
        _jseq_assign_kernel(
            self._pending_pred,
            self._head_pred,
            self._head_start,
            self._queued,
            self._slowdown,
            self._alive,
            now,
            preds,
            out,
        )
        for item, pred, worker in zip(ids.tolist(), preds.tolist(), out.tolist()):
            self._push_item(item, worker, pred)
        return out


class RoundRobinDispatcher(_DispatcherBase):
    """Baseline: live workers in turn, ignoring predictions and speeds.

    It still learns slowdown factors (for ``statistics()``), but never uses them.
    """

    def __init__(self, n_workers: int, *, alpha: float = 0.2) -> None:
        super().__init__(n_workers, alpha=alpha)
        self._next = 0

    def _choose(self, predicted_ns: int, now_ns: int) -> int:
        for k in range(self._n):
            w = (self._next + k) % self._n
            if self._alive[w]:
                self._next = (w + 1) % self._n
                self._push_state(w, predicted_ns, now_ns)
                return w
        raise BrokenResourceError("no live worker to assign to")  # pragma: no cover - checked before


# ----------------------------------------------------------------------------- simulation

_EV_COMPLETE = 0  # at equal times: completions, then speed changes, then arrivals
_EV_SPEED = 1
_EV_ARRIVAL = 2


def simulate_dispatch(
    dispatcher: Dispatcher,
    arrivals: ArrayLike,
    sizes: ArrayLike,
    worker_speeds: ArrayLike,
    speed_changes: Iterable[tuple[int, int, float]] = (),
    seed: int = 0,
    *,
    noise_sigma: float = 0.1,
) -> NDArray[np.int64]:
    """Run a deterministic discrete-event simulation of FIFO workers fed by ``dispatcher``.

    Item ``i`` arrives at ``arrivals[i]`` and is assigned at once with
    ``predicted_ns = sizes[i]``. A worker serves its items in order; an item
    that starts at time t on worker w takes
    ``ceil(sizes[i] / speed_w(t) * noise[i])`` ns, where ``noise`` is lognormal
    with mean 1 and log-sd ``noise_sigma``, drawn from ``seed`` per item before
    the run, so every policy sees the same noise (common random numbers). On
    completion the dispatcher learns ``observed_ns``.

    Parameters
    ----------
    dispatcher : Dispatcher
        A fresh dispatcher with ``len(worker_speeds)`` workers.
    arrivals : array_like of int, shape (n,)
        Arrival times in ns, non-decreasing.
    sizes : array_like of int, shape (n,)
        Work of each item in ns at nominal speed 1.0 (also the prediction).
    worker_speeds : array_like of float, shape (n_workers,)
        Initial speed of each worker (> 0; 0.5 = takes twice as long).
    speed_changes : iterable of (t_ns, worker, speed)
        Speed changes; they apply to items that start after ``t_ns``. A speed
        of 0 kills the worker: ``mark_dead`` returns its items (the one in
        service restarts from scratch elsewhere) and they are assigned again.
        A positive speed for a dead worker revives it (``mark_alive``). Items
        that find no live worker wait, in order, until one is revived.
    seed : int
        Seed of the duration noise.
    noise_sigma : float
        Log-standard deviation of the multiplicative duration noise.

    Returns
    -------
    ndarray of int64, shape (n,)
        Completion time of each item in ns (``-1`` if it was still waiting for a
        live worker at the end). Response time is ``completion - arrivals``.

    Raises
    ------
    ValueError
        On inconsistent shapes, unsorted arrivals, bad speeds or a dispatcher
        with the wrong number of workers.
    RuntimeError
        If the dispatcher's idea of a dead worker's items disagrees with the simulation.
    """
    arr = np.asarray(arrivals, dtype=np.int64).ravel()
    size = np.asarray(sizes, dtype=np.int64).ravel()
    speeds = np.asarray(worker_speeds, dtype=np.float64).ravel().copy()
    if arr.shape != size.shape:
        raise ValueError(f"arrivals and sizes must have the same length, got {arr.size} and {size.size}")
    if arr.size and np.any(np.diff(arr) < 0):
        raise ValueError("arrivals must be non-decreasing")
    if np.any(size < 0):
        raise ValueError("sizes must be >= 0")
    if speeds.size != dispatcher.n_workers:
        raise ValueError(f"dispatcher has {dispatcher.n_workers} workers but {speeds.size} speeds were given")
    if not np.all(speeds > 0.0) or not np.all(np.isfinite(speeds)):
        raise ValueError("initial worker speeds must be positive and finite")
    if noise_sigma < 0.0:
        raise ValueError(f"noise_sigma must be >= 0, got {noise_sigma}")
    changes = sorted((int(t), int(w), float(s)) for t, w, s in speed_changes)
    for _, w, s in changes:
        if not (0 <= w < speeds.size) or not (s >= 0.0 and math.isfinite(s)):
            raise ValueError(f"bad speed change for worker {w}: speed {s}")

    rng = np.random.default_rng(seed)
    noise = np.exp(rng.normal(-0.5 * noise_sigma**2, noise_sigma, size=arr.size))
    n_workers = speeds.size
    completion = np.full(arr.size, -1, dtype=np.int64)
    queues: list[deque[int]] = [deque() for _ in range(n_workers)]
    busy = [-1] * n_workers  # item in service
    started = [0] * n_workers
    generation = [0] * n_workers  # invalidates completion events of a worker that died
    alive = [True] * n_workers
    waiting: deque[tuple[int, int]] = deque()  # (item, predicted) that found no live worker
    events: list[tuple[int, int, int, int, int]] = []  # (t, kind, seq, a, b)
    seq = 0
    for i in range(arr.size):
        events.append((int(arr[i]), _EV_ARRIVAL, seq, i, 0))
        seq += 1
    for t, w, s in changes:
        events.append((t, _EV_SPEED, seq, w, int(round(s * 1e9))))
        seq += 1
    heapq.heapify(events)

    def start_next(w: int, now: int) -> None:
        nonlocal seq
        if busy[w] >= 0 or not queues[w]:
            return
        item = queues[w].popleft()
        busy[w] = item
        started[w] = now
        duration = int(math.ceil(size[item] / speeds[w] * noise[item]))
        heapq.heappush(events, (now + duration, _EV_COMPLETE, seq, w, generation[w]))
        seq += 1

    def place(item: int, predicted: int, now: int) -> None:
        if not any(alive):
            waiting.append((item, predicted))
            return
        w = dispatcher.assign(item, predicted, now)
        if not alive[w]:
            raise RuntimeError(f"dispatcher assigned item {item} to dead worker {w}")
        queues[w].append(item)
        start_next(w, now)

    while events:
        now, kind, _, a, b = heapq.heappop(events)
        if kind == _EV_COMPLETE:
            w, gen = a, b
            if gen != generation[w]:
                continue  # the worker died while serving this item
            item = busy[w]
            busy[w] = -1
            completion[item] = now
            dispatcher.complete(item, now, observed_ns=now - started[w])
            start_next(w, now)
        elif kind == _EV_SPEED:
            w, new_speed = a, b / 1e9
            if new_speed == 0.0:
                if not alive[w]:
                    continue
                alive[w] = False
                generation[w] += 1
                ours = ([busy[w]] if busy[w] >= 0 else []) + list(queues[w])
                busy[w] = -1
                queues[w].clear()
                returned = dispatcher.mark_dead(w, now)
                if [item for item, _ in returned] != ours:
                    raise RuntimeError(f"dispatcher returned {returned} for dead worker {w}, simulation had {ours}")
                for item, predicted in returned:
                    place(item, predicted, now)
            else:
                speeds[w] = new_speed
                if not alive[w]:
                    alive[w] = True
                    dispatcher.mark_alive(w, now)
                    while waiting:
                        place(*waiting.popleft(), now)
        else:
            place(a, int(size[a]), now)
    return completion

