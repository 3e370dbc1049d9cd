"""Deadline scheduling: earliest deadline first, with priorities, miss recovery and load shedding.

The core is a binary min-heap on one preallocated ``int64[capacity, 4]`` array,
driven by numba kernels in batches; nothing is allocated per packet. Each row
is one queued entry (32 bytes, so a sift moves one half cache line)::

    col   0              1                                  2            3
        +--------------+----------------------------------+------------+-------------------+
        | deadline_key | order_key                        | id         | meta              |
        | deadline_ns, | 63..55: 255 - priority           | the        | 7..0:  class      |
        | or INT64_MAX | 54..0:  sequence (push order)    | caller's   | 15..8: flags      |
        | when none    |                                  | id         |                   |
        +--------------+----------------------------------+------------+-------------------+

    heap order: (deadline_key, order_key) ascending
              = earliest deadline, then highest priority, then first pushed (FIFO)

Entries without a deadline (``deadline_ns == 0``) sort after every entry with
one. Ties are broken by priority (0..255, higher first) and then by push
order, so the order is total and runs are deterministic.

Deadline misses are detected as they happen, in three places, once per entry:

- at push: the deadline has already passed (``deadline_ns < now_ns``);
- at pop: the head's deadline passed while it waited;
- by ``expire(now_ns)``: a periodic sweep. Expired entries form a subtree at
  the top of the heap (the deadline is the primary key), so the sweep walks
  only them: O(k) for k expired entries, plus one O(n) re-heapify when it
  removed or re-keyed any.

Each entry's class (0..15) selects the recovery action, counted per action and
per class:

==================  ==========================================================================
``DROP``            removed; its id is reported (push report, pop's dropped list, expiry report)
``DELIVER_LATE``    delivered anyway, flagged ``MISSED``
``DEGRADE``         delivered flagged ``MISSED | DEGRADED``: route it to a cheaper handler; the
                    expiry sweep reports it at once so the router can re-target it early
``ESCALATE``        its priority is raised to 255 (re-keyed in the heap) and it is delivered
                    flagged ``MISSED | ESCALATED`` so the consumer takes its fast path
==================  ==========================================================================

Admission control: when a push leaves more than ``high_watermark`` entries
queued (or finds the array full mid-batch), one shedding pass removes entries
down to ``low_watermark``, lowest priority first, then latest deadline first,
then newest first. Shed ids are returned in the push report and counted: never
silent. The pass is O(n) (a priority histogram, then two in-place sorts of the
tied group), amortised over at least ``high - low`` shed entries.

Every id handed to ``push_batch`` therefore comes out exactly once: popped,
shed, dropped (at push, pop or expiry), or still queued.

The brief's scheduler API (``schedule_task``, ``optimize_schedule``,
``predict_completion_time``, ``handle_deadline_miss``) and the process-wide
accessor (``get_scheduler``/``set_scheduler``) are thin wrappers over the core;
``optimize_schedule`` delegates to ``fabric.oracle`` (simulated annealing).
"""

from __future__ import annotations

import enum
import threading
from typing import Sequence

import msgspec
import numpy as np
from numpy.typing import ArrayLike, NDArray

from fabric._jit import jit
from fabric.errors import FabricError
from fabric.oracle import TimeOracle, UnknownTaskKindError
from fabric.timesource import TimeSource, get_time_source

__all__ = [
    "MissPolicy",
    "DeliveryFlags",
    "PushReport",
    "DeadlineExpiryReport",
    "SchedulerStatistics",
    "DeadlineScheduler",
    "SchedulableTask",
    "ScheduleResult",
    "OptimizationResult",
    "UnknownTaskError",
    "get_scheduler",
    "set_scheduler",
    "MAX_CLASSES",
    "PRIORITY_MAX",
    "NO_DEADLINE",
]

MAX_CLASSES = 16
PRIORITY_MAX = 255
NO_DEADLINE = 0
_INT64_MAX = np.iinfo(np.int64).max

# Heap rows: 4 int64 columns (deadline key, order key, id, meta: see the diagram above); the
# kernels index them as 0..3.
_DL = 0
_ROW = 4
_PRIO_SHIFT = 55
_SEQ_MASK = (1 << _PRIO_SHIFT) - 1

# Flags (meta bits 15..8); _F_REMOVE is internal to the expiry sweep.
_F_MISSED = 1
_F_DEGRADED = 2
_F_ESCALATED = 4
_F_REMOVE = 128

# Policies (values of MissPolicy, as the kernels see them).
_P_DROP = 0
_P_LATE = 1
_P_DEGRADE = 2
_P_ESCALATE = 3

# State cells.
_S_SIZE = 0
_S_SEQ = 1
_S_CAPACITY = 2
_S_HIGH_WM = 3
_S_LOW_WM = 4
_S_N_CLASSES = 5
_S_LAST_DROPPED = 6
_S_PUSHED = 8
_S_POPPED = 9
_S_SHED = 10
_S_MISSED = 11
_S_MISSED_AT_PUSH = 12
_S_MISSED_AT_POP = 13
_S_MISSED_AT_EXPIRE = 14
_S_DROPPED = 15
_S_LATE = 16
_S_DEGRADED = 17
_S_ESCALATED = 18
_S_SHED_PASSES = 19
_S_MAX_DEPTH = 20
_S_MISSED_REPORTED = 21
_S_POLICY = 32
_S_CLASS_MISSES = 48
_S_CLASS_DURATION = 64
_STATE_CELLS = 80

_SEQ_EXHAUSTED = -(1 << 62)


class MissPolicy(enum.IntEnum):
    """Recovery action for an entry whose deadline passed before it was delivered."""

    DROP = _P_DROP
    DELIVER_LATE = _P_LATE
    DEGRADE = _P_DEGRADE
    ESCALATE = _P_ESCALATE


class DeliveryFlags(enum.IntFlag):
    """Bits written to ``out_flags`` by ``pop_batch``."""

    NONE = 0
    MISSED = _F_MISSED
    DEGRADED = _F_DEGRADED
    ESCALATED = _F_ESCALATED


class UnknownTaskError(FabricError, KeyError):
    """No queued entry has that id."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want the message as written.
        return str(self.args[0]) if self.args else ""


# ----------------------------------------------------------------------------- kernels


@jit(inline="always")
def _sift_up(heap, pos):  # pragma: no cover - compiled
    d = heap[pos, 0]
    k = heap[pos, 1]
    i = heap[pos, 2]
    m = heap[pos, 3]
    while pos > 0:
        parent = (pos - 1) >> 1
        pd = heap[parent, 0]
        if d < pd or (d == pd and k < heap[parent, 1]):
            heap[pos, 0] = pd
            heap[pos, 1] = heap[parent, 1]
            heap[pos, 2] = heap[parent, 2]
            heap[pos, 3] = heap[parent, 3]
            pos = parent
        else:
            break
    heap[pos, 0] = d
    heap[pos, 1] = k
    heap[pos, 2] = i
    heap[pos, 3] = m
    return pos


@jit(inline="always")
def _sift_down(heap, size, pos):  # pragma: no cover - compiled
    d = heap[pos, 0]
    k = heap[pos, 1]
    i = heap[pos, 2]
    m = heap[pos, 3]
    while True:
        child = 2 * pos + 1
        if child >= size:
            break
        right = child + 1
        if right < size:
            cd = heap[child, 0]
            rd = heap[right, 0]
            if rd < cd or (rd == cd and heap[right, 1] < heap[child, 1]):
                child = right
        cd = heap[child, 0]
        if cd < d or (cd == d and heap[child, 1] < k):
            heap[pos, 0] = cd
            heap[pos, 1] = heap[child, 1]
            heap[pos, 2] = heap[child, 2]
            heap[pos, 3] = heap[child, 3]
            pos = child
        else:
            break
    heap[pos, 0] = d
    heap[pos, 1] = k
    heap[pos, 2] = i
    heap[pos, 3] = m


@jit(inline="always")
def _remove_at(heap, size, pos):  # pragma: no cover - compiled
    """Remove row ``pos`` from a heap of ``size`` rows; returns the new size."""
    last = size - 1
    if pos != last:
        heap[pos, 0] = heap[last, 0]
        heap[pos, 1] = heap[last, 1]
        heap[pos, 2] = heap[last, 2]
        heap[pos, 3] = heap[last, 3]
        if _sift_up(heap, pos) == pos:
            _sift_down(heap, last, pos)
    return last


@jit
def _heapify(heap, size):  # pragma: no cover - compiled
    """Restore heap order over ``size`` rows (O(n)); not inlined: only shedding and sweeps call it."""
    pos = size // 2 - 1
    while pos >= 0:
        _sift_down(heap, size, pos)
        pos -= 1


@jit
def _sort_prefix(a, m):  # pragma: no cover - compiled
    """Sort ``a[:m]`` ascending in place (heapsort: no allocation, small to compile)."""
    start = m // 2 - 1
    while start >= 0:
        root = start
        while True:
            child = 2 * root + 1
            if child >= m:
                break
            if child + 1 < m and a[child + 1] > a[child]:
                child += 1
            if a[child] > a[root]:
                a[child], a[root] = a[root], a[child]
                root = child
            else:
                break
        start -= 1
    end = m - 1
    while end > 0:
        a[0], a[end] = a[end], a[0]
        root = 0
        while True:
            child = 2 * root + 1
            if child >= end:
                break
            if child + 1 < end and a[child + 1] > a[child]:
                child += 1
            if a[child] > a[root]:
                a[child], a[root] = a[root], a[child]
                root = child
            else:
                break
        end -= 1


@jit(inline="always")
def _apply_policy(state, cls, pol):  # pragma: no cover - compiled
    """Count one detected miss of class ``cls`` and its action; returns the delivery flags."""
    state[_S_MISSED] += 1
    state[_S_CLASS_MISSES + cls] += 1
    if pol == _P_DROP:
        state[_S_DROPPED] += 1
        return _F_MISSED
    if pol == _P_DEGRADE:
        state[_S_DEGRADED] += 1
        return _F_MISSED | _F_DEGRADED
    if pol == _P_ESCALATE:
        state[_S_ESCALATED] += 1
        return _F_MISSED | _F_ESCALATED
    state[_S_LATE] += 1
    return _F_MISSED


@jit
def _shed(heap, state, scratch, target, shed_out, n_shed):  # pragma: no cover - compiled
    """Remove entries down to ``target``: lowest priority, then latest deadline, then newest first.

    Not inlined: it runs once per shedding pass, not per packet, and inlining it twice into
    ``_push_batch`` doubled that kernel's compile time.
    """
    size = state[_S_SIZE]
    k = size - target
    if k <= 0:
        return n_shed
    cap = state[_S_CAPACITY]
    for p in range(256):
        scratch[cap + p] = 0
    for r in range(size):
        scratch[cap + 255 - (heap[r, 1] >> _PRIO_SHIFT)] += 1
    cum = 0
    pstar = 255
    for p in range(256):
        h = scratch[cap + p]
        if cum + h >= k:
            pstar = p
            break
        cum += h
    need = k - cum  # victims to take from priority pstar (>= 1)
    m = 0
    for r in range(size):
        if 255 - (heap[r, 1] >> _PRIO_SHIFT) == pstar:
            scratch[m] = heap[r, 0]
            m += 1
    _sort_prefix(scratch, m)
    dstar = scratch[m - need]  # the need-th latest deadline among them
    greater = 0
    for j in range(m):
        if scratch[j] > dstar:
            greater += 1
    need_eq = need - greater  # victims among (pstar, dstar), newest first (>= 1)
    m2 = 0
    for r in range(size):
        if 255 - (heap[r, 1] >> _PRIO_SHIFT) == pstar and heap[r, 0] == dstar:
            scratch[m2] = heap[r, 1] & _SEQ_MASK
            m2 += 1
    _sort_prefix(scratch, m2)
    sstar = scratch[m2 - need_eq]
    w = 0
    for r in range(size):
        pr = 255 - (heap[r, 1] >> _PRIO_SHIFT)
        dl = heap[r, 0]
        victim = pr < pstar or (
            pr == pstar and (dl > dstar or (dl == dstar and (heap[r, 1] & _SEQ_MASK) >= sstar))
        )
        if victim:
            shed_out[n_shed] = heap[r, 2]
            n_shed += 1
        else:
            if w != r:
                heap[w, 0] = dl
                heap[w, 1] = heap[r, 1]
                heap[w, 2] = heap[r, 2]
                heap[w, 3] = heap[r, 3]
            w += 1
    state[_S_SIZE] = w
    state[_S_SHED] += size - w
    state[_S_SHED_PASSES] += 1
    _heapify(heap, w)
    return n_shed


@jit(
    "int64(int64[:, ::1], int64[::1], int64[::1], int64[::1], int64[::1], int64[::1], int64[::1], int64,"
    " int64[::1], int64[::1])"
)
def _push_batch(
    heap, state, scratch, ids, deadlines, priorities, classes, now_ns, shed_out, dropped_out
):  # pragma: no cover - compiled
    """Push a batch; returns the number shed (ids in ``shed_out``) or a negative error code.

    ``-(i + 1)``: entry ``i`` has a priority, class or deadline out of range (nothing was
    pushed). ``state[_S_LAST_DROPPED]`` is set to the number of entries dropped at once
    (late on arrival, class policy DROP; ids in ``dropped_out``).
    """
    n = ids.shape[0]
    ncls = state[_S_N_CLASSES]
    for j in range(n):
        p = priorities[j]
        c = classes[j]
        if p < 0 or p > 255 or c < 0 or c >= ncls or deadlines[j] < 0:
            return -(j + 1)
    if state[_S_SEQ] + n > _SEQ_MASK:
        return _SEQ_EXHAUSTED
    cap = state[_S_CAPACITY]
    n_shed = 0
    n_drop = 0
    for j in range(n):
        d = deadlines[j]
        c = classes[j]
        prio = priorities[j]
        flags = 0
        state[_S_PUSHED] += 1
        if d != 0 and d < now_ns:
            pol = state[_S_POLICY + c]
            state[_S_MISSED_AT_PUSH] += 1
            flags = _apply_policy(state, c, pol)
            if pol == _P_DROP:
                dropped_out[n_drop] = ids[j]
                n_drop += 1
                continue
            if pol == _P_ESCALATE:
                prio = 255
        if state[_S_SIZE] == cap:
            n_shed = _shed(heap, state, scratch, state[_S_LOW_WM], shed_out, n_shed)
        size = state[_S_SIZE]
        seq = state[_S_SEQ]
        state[_S_SEQ] = seq + 1
        heap[size, 0] = d if d != 0 else _INT64_MAX
        heap[size, 1] = ((255 - prio) << _PRIO_SHIFT) | seq
        heap[size, 2] = ids[j]
        heap[size, 3] = c | (flags << 8)
        _sift_up(heap, size)
        size += 1
        state[_S_SIZE] = size
        if size > state[_S_MAX_DEPTH]:
            state[_S_MAX_DEPTH] = size
    if state[_S_SIZE] > state[_S_HIGH_WM]:
        n_shed = _shed(heap, state, scratch, state[_S_LOW_WM], shed_out, n_shed)
    state[_S_LAST_DROPPED] = n_drop
    return n_shed


@jit("int64(int64[:, ::1], int64[::1], int64, int64, int64[::1], int64[::1], int64[::1])")
def _pop_batch(heap, state, now_ns, max_count, out_ids, out_flags, out_dropped):  # pragma: no cover - compiled
    """Pop up to ``max_count`` entries in EDF order; returns how many were written to ``out_ids``.

    An entry whose deadline passed (``deadline < now_ns``) and that was not flagged yet
    gets its class policy: DROP writes its id to ``out_dropped`` instead (the pop stops
    early when ``out_dropped`` is full); the others deliver it with flags.
    ``state[_S_LAST_DROPPED]`` is set to the number dropped.
    """
    limit = max_count
    if out_ids.shape[0] < limit:
        limit = out_ids.shape[0]
    if out_flags.shape[0] < limit:
        limit = out_flags.shape[0]
    drop_cap = out_dropped.shape[0]
    popped = 0
    n_drop = 0
    size = state[_S_SIZE]
    while popped < limit and size > 0:
        meta = heap[0, 3]
        flags = meta >> 8
        if heap[0, 0] < now_ns and (flags & _F_MISSED) == 0:
            c = meta & 0xFF
            pol = state[_S_POLICY + c]
            if pol == _P_DROP:
                if n_drop == drop_cap:
                    break
                state[_S_MISSED_AT_POP] += 1
                _apply_policy(state, c, pol)
                out_dropped[n_drop] = heap[0, 2]
                n_drop += 1
                size = _remove_at(heap, size, 0)
                continue
            state[_S_MISSED_AT_POP] += 1
            flags |= _apply_policy(state, c, pol)
        out_ids[popped] = heap[0, 2]
        out_flags[popped] = flags
        popped += 1
        size = _remove_at(heap, size, 0)
    state[_S_SIZE] = size
    state[_S_POPPED] += popped
    state[_S_LAST_DROPPED] = n_drop
    return popped


@jit("int64(int64[:, ::1], int64[::1], int64[::1], int64, int64[::1], int64[::1])")
def _expire(heap, state, scratch, now_ns, out_ids, out_actions):  # pragma: no cover - compiled
    """Apply the class policy to every queued entry newly found past its deadline.

    Returns how many were found; ``out_ids``/``out_actions`` (``MissPolicy`` values) list them.
    DROP entries are removed; ESCALATE entries are re-keyed to priority 255.
    """
    size = state[_S_SIZE]
    if size == 0 or heap[0, 0] >= now_ns:
        return 0
    n = 0
    changed = False
    scratch[0] = 0
    sp = 1
    while sp > 0:
        sp -= 1
        r = scratch[sp]
        meta = heap[r, 3]
        flags = meta >> 8
        if (flags & _F_MISSED) == 0:
            c = meta & 0xFF
            pol = state[_S_POLICY + c]
            state[_S_MISSED_AT_EXPIRE] += 1
            flags |= _apply_policy(state, c, pol)
            if pol == _P_DROP:
                flags |= _F_REMOVE
                changed = True
            elif pol == _P_ESCALATE:
                heap[r, 1] = heap[r, 1] & _SEQ_MASK  # priority 255: (255 - 255) << 55 == 0
                changed = True
            heap[r, 3] = c | (flags << 8)
            out_ids[n] = heap[r, 2]
            out_actions[n] = pol
            n += 1
        child = 2 * r + 1
        if child < size and heap[child, 0] < now_ns:
            scratch[sp] = child
            sp += 1
        child += 1
        if child < size and heap[child, 0] < now_ns:
            scratch[sp] = child
            sp += 1
    if changed:
        w = 0
        for r in range(size):
            if ((heap[r, 3] >> 8) & _F_REMOVE) == 0:
                if w != r:
                    heap[w, 0] = heap[r, 0]
                    heap[w, 1] = heap[r, 1]
                    heap[w, 2] = heap[r, 2]
                    heap[w, 3] = heap[r, 3]
                w += 1
        state[_S_SIZE] = w
        _heapify(heap, w)
    return n


@jit("int64(int64[:, ::1], int64[::1], int64)")
def _handle_miss(heap, state, task_id):  # pragma: no cover - compiled
    """Apply the class policy to the queued entry ``task_id`` now; returns the policy, or -1 if absent."""
    size = state[_S_SIZE]
    for r in range(size):
        if heap[r, 2] == task_id:
            meta = heap[r, 3]
            c = meta & 0xFF
            flags = meta >> 8
            pol = state[_S_POLICY + c]
            if (flags & _F_MISSED) == 0:
                state[_S_MISSED_REPORTED] += 1
                flags |= _apply_policy(state, c, pol)
            if pol == _P_DROP:
                state[_S_SIZE] = _remove_at(heap, size, r)
                return pol
            heap[r, 3] = c | (flags << 8)
            if pol == _P_ESCALATE and (heap[r, 1] >> _PRIO_SHIFT) != 0:
                heap[r, 1] = heap[r, 1] & _SEQ_MASK
                _sift_up(heap, r)
            return pol
    return -1


@jit("int64(int64[:, ::1], int64[::1], int64)")
def _work_ahead(heap, state, task_id):  # pragma: no cover - compiled
    """Predicted work (ns) of every queued entry served before ``task_id``, itself included; -1 if absent."""
    size = state[_S_SIZE]
    pos = -1
    for r in range(size):
        if heap[r, 2] == task_id:
            pos = r
            break
    if pos < 0:
        return -1
    d = heap[pos, 0]
    k = heap[pos, 1]
    total = 0
    for r in range(size):
        rd = heap[r, 0]
        if rd < d or (rd == d and heap[r, 1] <= k):
            total += state[_S_CLASS_DURATION + (heap[r, 3] & 0xFF)]
    return total


# ----------------------------------------------------------------------------- reports


class PushReport(msgspec.Struct, frozen=True, gc=False):
    """What one ``push_batch`` did besides queueing."""

    queued: int
    """Entries queued by this call (some may be among ``shed``)."""

    shed: list[int]
    """Ids removed by admission control (this call's or earlier entries), in no particular order."""

    dropped: list[int]
    """Ids already past their deadline on arrival whose class policy is DROP."""


class DeadlineExpiryReport(msgspec.Struct, frozen=True, gc=False):
    """Entries one ``expire`` sweep found past their deadline, by recovery action."""

    dropped: list[int]
    late: list[int]
    degraded: list[int]
    escalated: list[int]

    @property
    def count(self) -> int:
        """Misses found by the sweep."""
        return len(self.dropped) + len(self.late) + len(self.degraded) + len(self.escalated)


class SchedulerStatistics(msgspec.Struct, frozen=True, gc=False):
    """Counters and sizes of a ``DeadlineScheduler``."""

    size: int
    capacity: int
    high_watermark: int
    low_watermark: int
    max_depth: int
    pushed: int
    popped: int
    shed: int
    shed_passes: int
    missed: int
    missed_at_push: int
    missed_at_pop: int
    missed_at_expire: int
    missed_reported: int
    dropped: int
    delivered_late: int
    degraded: int
    escalated: int
    class_misses: list[int]


class SchedulableTask(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """A task as the brief's ``schedule_task`` takes it.

    Attributes
    ----------
    task_id:
        Caller's id (unique among queued tasks for the id-based queries).
    deadline_ns:
        Absolute deadline in the scheduler's time base; 0 for none.
    priority:
        0 (lowest) .. 255; also the task's weight (``priority + 1``) in ``optimize_schedule``.
    task_class:
        Recovery class 0..n_classes-1, which is also the task kind the oracle predicts.
    estimated_duration_ns:
        The caller's estimate (0: ask the oracle for the class's mean).
    """

    task_id: int
    deadline_ns: int = 0
    priority: int = 0
    task_class: int = 0
    estimated_duration_ns: int = 0


class ScheduleResult(msgspec.Struct, frozen=True, gc=False):
    """Outcome of ``schedule_task``."""

    task_id: int
    accepted: bool
    """False when the task itself was dropped on arrival or shed."""
    shed: list[int]
    dropped: list[int]
    queue_depth: int
    predicted_completion_ns: int
    """Now plus the predicted work queued ahead of it, itself included (-1 if not accepted)."""


class OptimizationResult(msgspec.Struct, frozen=True, gc=False):
    """Outcome of ``optimize_schedule`` (single machine, total weighted tardiness)."""

    order: list[int]
    """Task ids in the recommended execution order."""
    total_weighted_tardiness: float
    edf_weighted_tardiness: float
    tardy_tasks: int
    edf_tardy_tasks: int
    iterations: int


# ----------------------------------------------------------------------------- scheduler


def _as_i64(values: ArrayLike, name: str) -> NDArray[np.int64]:
    arr = np.ascontiguousarray(values, dtype=np.int64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    return arr


class DeadlineScheduler:
    """Earliest-deadline-first queue with priorities, miss recovery and admission control.

    Parameters
    ----------
    capacity:
        Most entries held (the heap array's rows).
    high_watermark, low_watermark:
        Above ``high_watermark`` entries after a push, shed down to ``low_watermark``.
        Defaults: ``capacity - capacity // 8`` and ``high - max(1, capacity // 16)``.
    class_policies:
        Recovery action per class, ``class_policies[c]`` for class ``c``; the number of
        classes is its length (1..16). Default: 4 classes, ``DELIVER_LATE``.
    time_source:
        For the convenience calls that take no ``now_ns``; default: the process-wide source.
    oracle:
        Duration predictions for ``predict_completion_time`` and the annealer for
        ``optimize_schedule``; default: a fresh ``TimeOracle``.

    Not thread-safe: one scheduler per scheduling thread (the kernels mutate its arrays).
    """

    __slots__ = (
        "_heap",
        "_state",
        "_scratch",
        "_shed_buf",
        "_drop_buf",
        "_flag_buf",
        "_exp_ids",
        "_exp_actions",
        "_last_dropped",
        "_source",
        "_oracle",
        "_n_classes",
    )

    def __init__(
        self,
        capacity: int = 65536,
        *,
        high_watermark: int | None = None,
        low_watermark: int | None = None,
        class_policies: Sequence[MissPolicy] = (MissPolicy.DELIVER_LATE,) * 4,
        time_source: TimeSource | None = None,
        oracle: TimeOracle | None = None,
    ) -> None:
        capacity = int(capacity)
        if capacity < 2:
            raise ValueError(f"capacity must be >= 2, got {capacity}")
        high = capacity - capacity // 8 if high_watermark is None else int(high_watermark)
        if not 1 <= high <= capacity:
            raise ValueError(f"high_watermark must be in 1..capacity ({capacity}), got {high}")
        low = max(high - max(1, capacity // 16), 0) if low_watermark is None else int(low_watermark)
        if not 0 <= low < high:
            raise ValueError(f"low_watermark must be in 0..high_watermark-1 ({high - 1}), got {low}")
        policies = [MissPolicy(p) for p in class_policies]
        if not 1 <= len(policies) <= MAX_CLASSES:
            raise ValueError(f"class_policies must name 1..{MAX_CLASSES} classes, got {len(policies)}")
        self._heap = np.zeros((capacity, _ROW), dtype=np.int64)
        self._state = np.zeros(_STATE_CELLS, dtype=np.int64)
        self._scratch = np.zeros(capacity + 256, dtype=np.int64)
        self._shed_buf = np.zeros(2 * capacity, dtype=np.int64)
        self._drop_buf = np.zeros(capacity, dtype=np.int64)
        self._flag_buf = np.zeros(capacity, dtype=np.int64)
        self._exp_ids = np.zeros(capacity, dtype=np.int64)
        self._exp_actions = np.zeros(capacity, dtype=np.int64)
        self._last_dropped: list[int] = []
        st = self._state
        st[_S_CAPACITY] = capacity
        st[_S_HIGH_WM] = high
        st[_S_LOW_WM] = low
        st[_S_N_CLASSES] = len(policies)
        for c, pol in enumerate(policies):
            st[_S_POLICY + c] = int(pol)
        self._n_classes = len(policies)
        self._source = time_source if time_source is not None else get_time_source()
        self._oracle = oracle if oracle is not None else TimeOracle()

    # --- accessors -------------------------------------------------------------------------

    def __len__(self) -> int:
        """Entries queued."""
        return int(self._state[_S_SIZE])

    @property
    def capacity(self) -> int:
        """Most entries held."""
        return int(self._state[_S_CAPACITY])

    @property
    def n_classes(self) -> int:
        """Number of recovery classes."""
        return self._n_classes

    @property
    def oracle(self) -> TimeOracle:
        """The oracle used for predictions and optimisation."""
        return self._oracle

    def class_policy(self, task_class: int) -> MissPolicy:
        """The recovery action of a class."""
        self._check_class(task_class)
        return MissPolicy(int(self._state[_S_POLICY + task_class]))

    def set_class_policy(self, task_class: int, policy: MissPolicy) -> None:
        """Change the recovery action of a class (applies to misses detected from now on)."""
        self._check_class(task_class)
        self._state[_S_POLICY + task_class] = int(MissPolicy(policy))

    def set_class_duration(self, task_class: int, duration_ns: int) -> None:
        """Set the predicted service time of a class (used by ``predict_completion_time``)."""
        self._check_class(task_class)
        if int(duration_ns) < 0:
            raise ValueError(f"duration_ns must be >= 0, got {duration_ns}")
        self._state[_S_CLASS_DURATION + task_class] = int(duration_ns)

    def _check_class(self, task_class: int) -> None:
        if not 0 <= int(task_class) < self._n_classes:
            raise ValueError(f"task_class must be in 0..{self._n_classes - 1}, got {task_class}")

    @property
    def last_dropped(self) -> list[int]:
        """Ids dropped (class policy DROP) by the last ``pop_batch`` that used the internal buffer."""
        return list(self._last_dropped)

    # --- core batch API --------------------------------------------------------------------

    def push_batch(
        self,
        ids: ArrayLike,
        deadlines: ArrayLike,
        priorities: ArrayLike,
        classes: ArrayLike,
        now_ns: int,
    ) -> PushReport:
        """Queue a batch of entries (one numba call; no allocation per entry).

        Parameters
        ----------
        ids, deadlines, priorities, classes:
            Equal-length int64 arrays (other int arrays and sequences are converted):
            caller ids, absolute deadlines in ns (0: none), priorities 0..255, classes
            0..n_classes-1.
        now_ns:
            The current time; entries already past their deadline are misses on arrival.

        Returns
        -------
        PushReport
            How many were queued and which ids were shed or dropped (never silent).

        Raises
        ------
        ValueError
            Lengths differ, the batch is longer than the capacity, or an entry is out of
            range (nothing was queued).
        OverflowError
            2**55 entries were pushed over the scheduler's life (the order counter ran out).
        """
        ids_a = _as_i64(ids, "ids")
        dl_a = _as_i64(deadlines, "deadlines")
        pr_a = _as_i64(priorities, "priorities")
        cl_a = _as_i64(classes, "classes")
        n = ids_a.shape[0]
        if not (dl_a.shape[0] == pr_a.shape[0] == cl_a.shape[0] == n):
            raise ValueError(
                f"ids, deadlines, priorities and classes must have equal lengths, got "
                f"{n}, {dl_a.shape[0]}, {pr_a.shape[0]}, {cl_a.shape[0]}"
            )
        if n > self._heap.shape[0]:
            raise ValueError(f"a batch of {n} is longer than the capacity {self._heap.shape[0]}; split it")
        st = self._state
        n_shed = _push_batch(
            self._heap, st, self._scratch, ids_a, dl_a, pr_a, cl_a, int(now_ns), self._shed_buf, self._drop_buf
        )
        if n_shed < 0:
            if n_shed == _SEQ_EXHAUSTED:
                raise OverflowError("this scheduler has used all 2**55 order numbers; create a new one")
            j = -n_shed - 1
            raise ValueError(
                f"entry {j} (id {int(ids_a[j])}) is out of range: priority {int(pr_a[j])} (0..255), "
                f"class {int(cl_a[j])} (0..{self._n_classes - 1}), deadline {int(dl_a[j])} (>= 0); nothing was queued"
            )
        n_drop = int(st[_S_LAST_DROPPED])
        shed = self._shed_buf[:n_shed].tolist() if n_shed else []
        dropped = self._drop_buf[:n_drop].tolist() if n_drop else []
        return PushReport(n - n_drop, shed, dropped)

    def pop_batch(
        self,
        now_ns: int,
        out_ids: NDArray[np.int64],
        out_flags: NDArray[np.int64] | None = None,
        *,
        max_count: int | None = None,
        out_dropped: NDArray[np.int64] | None = None,
    ) -> tuple[int, int]:
        """Pop entries in EDF order into caller-provided arrays (one numba call).

        Parameters
        ----------
        now_ns:
            The current time: heads past their deadline are misses (class policy applies).
        out_ids:
            Receives the ids delivered, in order (int64, C-contiguous).
        out_flags:
            Receives ``DeliveryFlags`` per delivered id (optional).
        max_count:
            Most ids to deliver (default: ``len(out_ids)``).
        out_dropped:
            Receives ids dropped by class policy DROP; the pop stops early when it is full.
            Default: an internal buffer, read back with ``last_dropped``.

        Returns
        -------
        (delivered, dropped)
            How many ids were written to ``out_ids`` and to the dropped array.
        """
        limit = out_ids.shape[0] if max_count is None else int(max_count)
        flags = self._flag_buf if out_flags is None else out_flags
        dropped_arr = self._drop_buf if out_dropped is None else out_dropped
        n = _pop_batch(self._heap, self._state, int(now_ns), limit, out_ids, flags, dropped_arr)
        n_drop = int(self._state[_S_LAST_DROPPED])
        if out_dropped is None:
            self._last_dropped = self._drop_buf[:n_drop].tolist() if n_drop else []
        return int(n), n_drop

    def expire(self, now_ns: int) -> DeadlineExpiryReport:
        """Sweep for queued entries past their deadline and apply their class policy.

        Cost O(k) for k newly expired entries (they sit at the top of the heap), plus
        one O(n) re-heapify when entries were dropped or escalated. Entries already
        flagged are not reported again.
        """
        n = int(_expire(self._heap, self._state, self._scratch, int(now_ns), self._exp_ids, self._exp_actions))
        out: dict[int, list[int]] = {_P_DROP: [], _P_LATE: [], _P_DEGRADE: [], _P_ESCALATE: []}
        for task_id, action in zip(self._exp_ids[:n].tolist(), self._exp_actions[:n].tolist()):
            out[action].append(task_id)
        return DeadlineExpiryReport(out[_P_DROP], out[_P_LATE], out[_P_DEGRADE], out[_P_ESCALATE])

    def peek_deadline(self) -> int | None:
        """The earliest queued deadline (``None`` when empty or when no entry has one)."""
        if self._state[_S_SIZE] == 0:
            return None
        d = int(self._heap[0, _DL])
        return None if d == _INT64_MAX else d

    def statistics(self) -> SchedulerStatistics:
        """A snapshot of the counters."""
        st = self._state.tolist()
        return SchedulerStatistics(
            size=st[_S_SIZE],
            capacity=st[_S_CAPACITY],
            high_watermark=st[_S_HIGH_WM],
            low_watermark=st[_S_LOW_WM],
            max_depth=st[_S_MAX_DEPTH],
            pushed=st[_S_PUSHED],
            popped=st[_S_POPPED],
            shed=st[_S_SHED],
            shed_passes=st[_S_SHED_PASSES],
            missed=st[_S_MISSED],
            missed_at_push=st[_S_MISSED_AT_PUSH],
            missed_at_pop=st[_S_MISSED_AT_POP],
            missed_at_expire=st[_S_MISSED_AT_EXPIRE],
            missed_reported=st[_S_MISSED_REPORTED],
            dropped=st[_S_DROPPED],
            delivered_late=st[_S_LATE],
            degraded=st[_S_DEGRADED],
            escalated=st[_S_ESCALATED],
            class_misses=st[_S_CLASS_MISSES : _S_CLASS_MISSES + self._n_classes],
        )

    # --- the brief's API (thin wrappers) ---------------------------------------------------

    def _now(self, now_ns: int | None) -> int:
        return int(self._source.now_ns()) if now_ns is None else int(now_ns)

    def _refresh_class_durations(self) -> None:
        for c in range(self._n_classes):
            try:
                self._state[_S_CLASS_DURATION + c] = self._oracle.predict(c).mean_ns
            except UnknownTaskKindError:
                continue  # no history for this class yet: keep the value set by set_class_duration

    def schedule_task(self, task: SchedulableTask, *, now_ns: int | None = None) -> ScheduleResult:
        """Queue one task (``push_batch`` of one) and predict when it completes.

        Returns
        -------
        ScheduleResult
            ``accepted`` is False when the task was dropped on arrival or shed; ``shed``
            lists every id admission control removed.
        """
        now = self._now(now_ns)
        if task.estimated_duration_ns > 0 and self._oracle.samples(task.task_class) == 0:
            self.set_class_duration(task.task_class, task.estimated_duration_ns)
        report = self.push_batch(
            np.array([task.task_id], dtype=np.int64),
            np.array([task.deadline_ns], dtype=np.int64),
            np.array([task.priority], dtype=np.int64),
            np.array([task.task_class], dtype=np.int64),
            now,
        )
        accepted = report.queued == 1 and task.task_id not in report.shed
        predicted = self.predict_completion_time(task.task_id, now_ns=now) if accepted else -1
        return ScheduleResult(task.task_id, accepted, report.shed, report.dropped, len(self), predicted)

    def predict_completion_time(self, task_id: int, *, now_ns: int | None = None) -> int:
        """Predicted completion time (absolute ns) of a queued task if served in EDF order.

        ``now`` plus the predicted service time of every entry served before it and of
        itself: per class, the oracle's EWMA mean when it has history, else the value of
        ``set_class_duration`` (0 by default). One O(n) scan.

        Raises
        ------
        UnknownTaskError
            No queued entry has this id.
        """
        self._refresh_class_durations()
        ahead = int(_work_ahead(self._heap, self._state, int(task_id)))
        if ahead < 0:
            raise UnknownTaskError(f"no queued task has id {task_id}")
        return self._now(now_ns) + ahead

    def handle_deadline_miss(self, task_id: int, *, task_class: int | None = None) -> MissPolicy:
        """Apply the recovery action for a task that missed (or will miss) its deadline.

        For a queued task the class policy is applied now (DROP removes it, ESCALATE
        raises it to priority 255, DEGRADE and DELIVER_LATE flag it) and counted once.
        For a task no longer queued (already popped and running late), pass its
        ``task_class``: the miss is counted and the action returned for the caller to carry
        out.

        Raises
        ------
        UnknownTaskError
            The task is not queued and no ``task_class`` was given.
        """
        pol = int(_handle_miss(self._heap, self._state, int(task_id)))
        if pol >= 0:
            return MissPolicy(pol)
        if task_class is None:
            raise UnknownTaskError(f"no queued task has id {task_id}; pass task_class for a task already popped")
        self._check_class(task_class)
        st = self._state
        policy = MissPolicy(int(st[_S_POLICY + task_class]))
        st[_S_MISSED] += 1
        st[_S_MISSED_REPORTED] += 1
        st[_S_CLASS_MISSES + task_class] += 1
        counter = {
            MissPolicy.DROP: _S_DROPPED,
            MissPolicy.DELIVER_LATE: _S_LATE,
            MissPolicy.DEGRADE: _S_DEGRADED,
            MissPolicy.ESCALATE: _S_ESCALATED,
        }[policy]
        st[counter] += 1
        return policy

    def optimize_schedule(
        self, tasks: Sequence[SchedulableTask], *, now_ns: int | None = None, seed: int = 0
    ) -> OptimizationResult:
        """Order tasks for one machine to minimise total weighted tardiness (simulated annealing).

        Durations are ``estimated_duration_ns`` or, when 0, the oracle's mean for the
        task's class; weights are ``priority + 1``; the machine starts at ``now``. The
        result is never worse than EDF (``fabric.oracle.optimize_schedule``).

        Raises
        ------
        ValueError
            A task has no estimate and the oracle has no history for its class.
        """
        if not tasks:
            return OptimizationResult([], 0.0, 0.0, 0, 0, 0)
        durations = np.empty(len(tasks), dtype=np.int64)
        for i, t in enumerate(tasks):
            if t.estimated_duration_ns > 0:
                durations[i] = t.estimated_duration_ns
            else:
                try:
                    durations[i] = self._oracle.predict(t.task_class).mean_ns
                except UnknownTaskKindError as exc:
                    raise ValueError(
                        f"task {t.task_id} has no estimated_duration_ns and the oracle has no history "
                        f"for class {t.task_class}"
                    ) from exc
        deadlines = np.array(
            [t.deadline_ns if t.deadline_ns > 0 else _INT64_MAX // 4 for t in tasks], dtype=np.int64
        )
        weights = np.array([t.priority + 1.0 for t in tasks], dtype=np.float64)
        res = self._oracle.optimize_schedule(durations, deadlines, weights, start_ns=self._now(now_ns), seed=seed)
        ids = [tasks[i].task_id for i in res.order.tolist()]
        return OptimizationResult(
            ids,
            res.total_weighted_tardiness,
            res.edf_weighted_tardiness,
            res.tardy_tasks,
            res.edf_tardy_tasks,
            res.iterations,
        )

    def __repr__(self) -> str:
        return f"<DeadlineScheduler {len(self)}/{self.capacity}>"


# ----------------------------------------------------------------------------- process-wide accessor

_scheduler: DeadlineScheduler | None = None
_scheduler_lock = threading.Lock()


def get_scheduler() -> DeadlineScheduler:
    """The process-wide scheduler (the brief's global helper), created on first use.

    Library code should receive its scheduler explicitly; this accessor exists for
    the brief's API and for scripts. The default has capacity 65536 and 4
    ``DELIVER_LATE`` classes. Not thread-safe to *use* from several threads (see
    ``DeadlineScheduler``); creation is.
    """
    global _scheduler
    sched = _scheduler
    if sched is None:
        with _scheduler_lock:
            if _scheduler is None:
                _scheduler = DeadlineScheduler()
            sched = _scheduler
    return sched


def set_scheduler(scheduler: DeadlineScheduler | None) -> DeadlineScheduler | None:
    """Install the process-wide scheduler (``None``: create a fresh one on next use); returns the previous one."""
    global _scheduler
    if scheduler is not None and not isinstance(scheduler, DeadlineScheduler):
        raise TypeError(f"{scheduler!r} is not a DeadlineScheduler")
    with _scheduler_lock:
        previous = _scheduler
        _scheduler = scheduler
    return previous
