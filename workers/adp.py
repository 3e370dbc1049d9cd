"""The ADP worker: assigns work items to the accelerator workers and sees every one through.

::

    adp.input ──► pending (priority heap, bounded) ──► JSEQ assign ──► accel.work (target mask = 1 << row)
                                                                              │
    work.results (item's reply topic) ◄── complete (first result wins) ◄── accel.results

Inputs (its inbox)::

    adp.input       {"item": int, "kernel": str, "inputs": [ndarray, ...],
                     "reply_topic": str (default "work.results"), "stream": str | None}
    accel.results   {"item", "worker", "ok", "result", "error", "duration_ns"}
    drpp.patterns   pattern events: items whose "stream" had one recently get a priority boost
    ems.modulation  batch_scale: how many items are dispatched per step
    egc.decisions   those that target "adp" (or this worker's name): throttle, shed, allow

Outputs::

    accel.work      {"item": int, "kernel": str, "inputs": [...]}   to one accelerator (target mask)
    work.results    {"item": int, "ok": bool, "result": ndarray | None, "worker": int, "latency_ns": int}
    adp.metrics     {"at_ns", "outstanding": [per accelerator], "slowdown": [...], "assigned",
                     "completed", "reassigned", "p50_ns", "p99_ns"}      every metrics_interval_ms

**Exactly one reply per accepted item.** Every item gets one ``work.results`` packet: the
result, a failed result (``ok = False``), or a refusal (``ok = False``, ``worker = -1``)
when the pending queue is full, no accelerator exists, or governance sheds it. Items are
keyed inside ADP by an id of its own (``accel.work``'s ``item``), so two clients may use
the same item numbers; a client's item id that is still in flight is ignored if it is
submitted again.

**Dispatch.** ``JseqDispatcher`` (``policy = "jseq"``, default) or
``RoundRobinDispatcher`` (``policy = "round_robin"``) over the accelerator workers of the
topology (rows whose kind is "accelerator", or the names in ``accelerators``). Predicted
durations are per kernel name, learned from the ``duration_ns`` of its results: the median
of ``fabric.oracle.TimeOracle`` (P² estimate) when the oracle is available, else an EWMA
kept here. The median rather than the mean: a kernel's first run in an accelerator process
includes loading its compiled code (~0.2 s, against microseconds afterwards), and one such
outlier must not skew every prediction. Speed differences between accelerators are the
dispatcher's learned slowdown factors (observed over predicted duration, per accelerator).
A kernel never observed is predicted at ``default_predicted_ns``.

**Windows (late binding).** The router blocks when an inbox is full, so ADP keeps at most
``max_inflight_bytes`` of inputs in flight per accelerator (default: a quarter of the inbox
capacity). Items beyond that wait in ADP's queue, highest priority first. Round-robin
takes the next accelerator in turn among those with room. JSEQ sends an item to the
accelerator with the earliest expected completion; when that one's window is full the
item waits in ADP for it rather than going to a worse one, and the items behind it count
its expected duration as part of that accelerator's backlog (so they go to another
accelerator when that is expected to finish them sooner).

**Failures.** Every dispatched item is kept (with its inputs) until its first result. Each
step (at most every ``liveness_interval_ms``) ADP reads the accelerators' rows in the
control block: an accelerator is alive when its state is RUNNING and its heartbeat is
younger than ``stale_ms``; a change of pid or restart count means it died in between.
When one dies, ``mark_dead`` returns its items, which are assigned again at once (to
another live accelerator, or to the same one once it runs again: ``mark_alive``) and sent
again. A restarted accelerator may also finish the copies still in its inbox, so a result
can arrive twice: the first completes the item, later ones are counted (``c[3]``) and
dropped. ``resend_after_ms`` (0: off) also resends an item that waited that long.

Counters (its row's ``c``): ``c[0]`` assigned, ``c[1]`` completed, ``c[2]`` reassigned,
``c[3]`` duplicate results dropped, ``c[4]`` items refused.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from typing import Any

import numpy as np
from loguru import logger

from fabric.errors import BrokenResourceError, CodecError, RecordTooLargeError
from fabric.packet import PhasePacket
from fabric.wait import Parker
from shm_layouts.control import WorkerState
from workers._dispatch import JseqDispatcher, RoundRobinDispatcher
from workers.base import Worker, WorkerContext

try:  # the oracle's predictor when this version has it
    from fabric.oracle import TimeOracle
except ImportError:  # pragma: no cover - older trees
    TimeOracle = None  # type: ignore[assignment, misc]

__all__ = ["AdpWorker"]

INPUT_TOPIC = "adp.input"
WORK_TOPIC = "accel.work"
ACCEL_RESULTS_TOPIC = "accel.results"
RESULTS_TOPIC = "work.results"
METRICS_TOPIC = "adp.metrics"
PATTERNS_TOPIC = "drpp.patterns"
MODULATION_TOPIC = "ems.modulation"
DECISIONS_TOPIC = "egc.decisions"

_C_ASSIGNED, _C_COMPLETED, _C_REASSIGNED, _C_DUPLICATES, _C_REFUSED = range(5)
_MAX_OUTBOX = 65536
_MAX_STREAM_HINTS = 1024
_LATENCY_SAMPLES = 4096


class _Item:
    """One accepted work item, from adp.input to its reply."""

    __slots__ = (
        "iid", "client_item", "source", "kernel", "inputs", "reply_topic", "stream", "priority",
        "received_ns", "predicted_ns", "worker", "sent_ns", "done", "queued", "nbytes",
    )

    def __init__(self, iid: int, client_item: int, source: int, kernel: str, inputs: list, reply_topic: str,
                 stream: str | None, priority: int, received_ns: int) -> None:
        self.iid = iid
        self.client_item = client_item
        self.source = source
        self.kernel = kernel
        self.inputs = inputs
        self.reply_topic = reply_topic
        self.stream = stream
        self.priority = priority
        self.received_ns = received_ns
        self.predicted_ns = 0
        self.worker = -1  # dispatcher index while assigned, else -1
        self.sent_ns = 0
        self.done = False
        self.queued = False  # in the pending heap
        self.nbytes = sum(x.nbytes if isinstance(x, np.ndarray) else 8 * len(x) if isinstance(x, list) else 8
                          for x in inputs) + 64


class _Windowed:
    """Mixin: the policy chooses only among live accelerators whose in-flight window has room.

    ``room`` (uint8 per accelerator) is set by the worker before each ``assign``. The
    dispatchers of ``workers._dispatch`` choose among ``_alive``; for the duration of one
    choice that mask is narrowed to ``_alive & room``.
    """

    room: np.ndarray

    def _choose(self, predicted_ns: int, now_ns: int) -> int:
        alive = self._alive
        self._alive = alive & self.room
        try:
            return super()._choose(predicted_ns, now_ns)
        finally:
            self._alive = alive

    def eligible(self) -> np.ndarray:
        return (self._alive & self.room).astype(bool)


class _WindowedJseq(_Windowed, JseqDispatcher):
    def best(self, predicted_ns: int, now_ns: int, held_ns: np.ndarray) -> tuple[int, float]:
        """The live accelerator with the earliest expected completion, window or not (-1: none).

        ``held_ns`` is expected work already waiting in ADP for each accelerator (items held for
        a full window in this dispatch round). Returns the accelerator and its slowdown.
        """
        cost = self.expected_backlog_ns(now_ns) + held_ns + self._slowdown * float(predicted_ns)
        cost[self._alive == 0] = np.inf
        w = int(np.argmin(cost))
        return (w, float(self._slowdown[w])) if math.isfinite(cost[w]) else (-1, 1.0)


class _WindowedRoundRobin(_Windowed, RoundRobinDispatcher):
    pass


class _KernelEwma:
    """Fallback predictor: an EWMA of durations per kernel name."""

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha
        self.mean: dict[str, float] = {}

    def record(self, kernel: str, duration_ns: float) -> None:
        m = self.mean.get(kernel)
        self.mean[kernel] = duration_ns if m is None else m + self.alpha * (duration_ns - m)

    def predict(self, kernel: str) -> int | None:
        m = self.mean.get(kernel)
        return None if m is None else int(m)


class AdpWorker(Worker):
    """Adaptive dispatch of work items over the accelerator workers (see the module docstring).

    Options
    -------
    policy : {"jseq", "round_robin"}
        Dispatch policy (default "jseq").
    input_topic : str
        Topic of the work items (default "adp.input"; another name lets several ADP workers
        share the accelerators, each with its own queue).
    accelerators : list of str, optional
        Worker names to dispatch to (default: every worker of kind "accelerator").
    batch : int
        Items dispatched per step at ``batch_scale`` 1 (default 16).
    poll_batch : int
        Packets taken from the inbox per step (default 256).
    max_pending, max_outstanding : int
        Bounds of the queue of accepted items and of the items in flight (4096, 1024).
    max_inflight_bytes : int, optional
        Input bytes in flight per accelerator at most (default: a quarter of the fabric's inbox
        capacity). The router blocks when an inbox is full, so ADP must not fill one.
    metrics_interval_ms : float
        Period of ``adp.metrics`` (default 100).
    latency_window_ms : float
        Completions that p50/p99 in the metrics cover (default 1000).
    liveness_interval_ms, stale_ms : float
        How often accelerator rows are checked (10) and the heartbeat age that counts as dead (1000).
    resend_after_ms : float
        Resend an item that waited this long for a result (default 0: only when its accelerator dies).
    default_predicted_ns : int
        Prediction for a kernel never observed (default 1 ms).
    ewma_alpha : float
        Weight of a new observation in the accelerators' slowdown factors and in the per-kernel
        EWMA used without the oracle (default 0.2).
    pattern_hint_ms : float, pattern_boost : int
        Items whose stream had a pattern event in the last ``pattern_hint_ms`` (default 2000) get
        ``pattern_boost`` (default 64) added to their priority.
    throttle_scale : float
        Dispatch rate factor while EGC throttles or sheds (default 0.5).
    shed_below_priority : int
        While EGC sheds: queued and new items below this priority are refused (default 1).
    """

    kind = "adp"

    def __init__(
        self,
        ctx: WorkerContext,
        *,
        policy: str = "jseq",
        input_topic: str = INPUT_TOPIC,
        accelerators: list[str] | None = None,
        batch: int = 16,
        poll_batch: int = 256,
        max_pending: int = 4096,
        max_outstanding: int = 1024,
        max_inflight_bytes: int | None = None,
        metrics_interval_ms: float = 100.0,
        latency_window_ms: float = 1000.0,
        liveness_interval_ms: float = 10.0,
        stale_ms: float = 1000.0,
        resend_after_ms: float = 0.0,
        default_predicted_ns: int = 1_000_000,
        ewma_alpha: float = 0.2,
        pattern_hint_ms: float = 2000.0,
        pattern_boost: int = 64,
        throttle_scale: float = 0.5,
        shed_below_priority: int = 1,
    ) -> None:
        super().__init__(ctx)
        if policy not in ("jseq", "round_robin"):
            raise ValueError(f"adp: policy must be 'jseq' or 'round_robin', got {policy!r}")
        for name, v in (("batch", batch), ("poll_batch", poll_batch), ("max_pending", max_pending),
                        ("max_outstanding", max_outstanding)):
            if int(v) < 1:
                raise ValueError(f"adp: {name} must be >= 1, got {v}")
        if not 0.0 < float(throttle_scale) <= 1.0:
            raise ValueError(f"adp: throttle_scale must be in (0, 1], got {throttle_scale}")
        self.policy = policy
        self.input_topic = input_topic
        self.batch = int(batch)
        self.poll_batch = int(poll_batch)
        self.max_pending = int(max_pending)
        self.max_outstanding = int(max_outstanding)
        cap = ctx.config.fabric.inbox_capacity_bytes
        self.max_inflight_bytes = int(max_inflight_bytes) if max_inflight_bytes is not None else cap // 4
        self.metrics_interval_ns = int(float(metrics_interval_ms) * 1e6)
        self.latency_window_ns = int(float(latency_window_ms) * 1e6)
        self.liveness_interval_ns = int(float(liveness_interval_ms) * 1e6)
        self.stale_ns = int(float(stale_ms) * 1e6)
        self.resend_after_ns = int(float(resend_after_ms) * 1e6)
        self.default_predicted_ns = int(default_predicted_ns)
        self.pattern_hint_ns = int(float(pattern_hint_ms) * 1e6)
        self.pattern_boost = int(pattern_boost)
        self.throttle_scale = float(throttle_scale)
        self.shed_below_priority = int(shed_below_priority)

        # The accelerators: rows of the topology (a worker's component id is its row).
        cfg = ctx.config
        if accelerators is None:
            rows = [r for r, w in enumerate(cfg.workers) if w.kind == "accelerator"]
        else:
            names = [w.name for w in cfg.workers]
            unknown = [n for n in accelerators if n not in names]
            if unknown:
                raise ValueError(f"adp: accelerators {unknown} are not workers of this topology ({names})")
            rows = [names.index(n) for n in accelerators]
            bad = [cfg.workers[r].name for r in rows if cfg.workers[r].kind != "accelerator"]
            if bad:
                raise ValueError(f"adp: workers {bad} are not of kind 'accelerator'")
        self.accel_rows: list[int] = rows
        n = len(rows)
        self.dispatcher = None
        if n:
            cls = _WindowedJseq if policy == "jseq" else _WindowedRoundRobin
            self.dispatcher = cls(n, alpha=float(ewma_alpha))
            self.dispatcher.room = np.ones(n, dtype=np.uint8)
        self._alive = [True] * n  # the dispatcher's view (all alive at construction)
        self._inflight = [0] * n  # input bytes sent to each accelerator and not yet answered
        self._ident: list[tuple[int, int] | None] = [None] * n  # (pid, restarts) seen alive

        self._oracle = TimeOracle(max_kinds=256, ewma_alpha=float(ewma_alpha)) if TimeOracle is not None else None
        self._ewma = _KernelEwma(float(ewma_alpha))

        self.inbox = ctx.inbox_reader()
        self.writer = ctx.publisher()
        # Item ids like packet ids: this component, then its restart count, then a sequence. Two ADP
        # workers, or a restarted ADP and its predecessor's late results, never share an id.
        restarts = int(ctx.counters["restarts"]) & 0xFFFF
        self._iid_base = (ctx.component << 56) | (restarts << 40)
        self._seq = 0
        self._items: dict[int, _Item] = {}  # every accepted item not yet replied to
        self._by_client: dict[tuple[int, int], int] = {}
        self._pending: list[tuple[int, int, _Item]] = []  # heap of (-priority, order, item)
        self._n_pending = 0
        self._order = 0
        self._n_outstanding = 0
        self._outbox: deque[PhasePacket] = deque()
        self._streams: dict[str, int] = {}  # stream -> receive time of its last pattern event
        self._batch_scale = 1.0
        self._throttled = False
        self._shedding = False
        self._latencies: deque[tuple[int, int]] = deque(maxlen=_LATENCY_SAMPLES)
        self._next_metrics = 0
        self._next_liveness = 0
        self._next_resend_check = 0
        self._duplicates = 0
        self._refused = 0
        self._errors_logged = 0
        logger.info(
            "adp {}: policy {}, accelerators {} (rows {}), predictor {}",
            ctx.spec.name, policy, [cfg.workers[r].name for r in rows], rows,
            "fabric.oracle.TimeOracle" if self._oracle is not None else "EWMA per kernel",
        )

    # --- step -------------------------------------------------------------------------------

    def step(self, now_ns: int) -> int:
        work = self._flush()
        if now_ns >= self._next_liveness:
            self._next_liveness = now_ns + self.liveness_interval_ns
            self._check_accelerators(now_ns)
        work += self._poll(now_ns)
        work += self._dispatch(now_ns)
        if self.resend_after_ns and now_ns >= self._next_resend_check:
            self._next_resend_check = now_ns + max(self.resend_after_ns // 4, 1_000_000)
            work += self._resend_overdue(now_ns)
        if now_ns >= self._next_metrics:
            self._next_metrics = now_ns + self.metrics_interval_ns
            self._publish_metrics(now_ns)
        return work

    def _poll(self, now_ns: int) -> int:
        if self.inbox is None:
            return 0
        pkts = self.inbox.receive_batch(self.poll_batch)
        if not pkts:
            return 0
        self.ctx.counters["received"] += len(pkts)
        for pkt in pkts:
            try:
                topic = pkt.topic
                if topic == ACCEL_RESULTS_TOPIC:
                    self._on_result(pkt, now_ns)
                elif topic == self.input_topic:
                    self._on_input(pkt, now_ns)
                elif topic == PATTERNS_TOPIC:
                    self._on_pattern(pkt, now_ns)
                elif topic == MODULATION_TOPIC:
                    self._on_modulation(pkt)
                elif topic == DECISIONS_TOPIC:
                    self._on_decision(pkt, now_ns)
            except Exception as exc:  # noqa: BLE001 - a bad packet must not stop the worker
                self._log_error(f"packet on {pkt.topic!r} from {pkt.source}: {type(exc).__name__}: {exc}")
        return len(pkts)

    # --- inputs -----------------------------------------------------------------------------

    def _on_input(self, pkt: PhasePacket, now_ns: int) -> None:
        p = pkt.payload
        if not isinstance(p, dict):
            raise TypeError(f"work item payload must be a dict, got {type(p).__name__}")
        client_item = int(p["item"])
        kernel = p["kernel"]
        if not isinstance(kernel, str):
            raise TypeError(f"kernel must be a str, got {type(kernel).__name__}")
        inputs = p.get("inputs") or []
        if not isinstance(inputs, list):
            raise TypeError(f"inputs must be a list, got {type(inputs).__name__}")
        reply_topic = p.get("reply_topic") or RESULTS_TOPIC
        stream = p.get("stream")
        key = (pkt.source, client_item)
        if key in self._by_client:
            self._duplicates += 1
            self.ctx.counters["c"][_C_DUPLICATES] += 1
            return  # the same item is still in flight: it gets one reply
        priority = pkt.priority
        if stream is not None:
            seen = self._streams.get(str(stream))
            if seen is not None and now_ns - seen <= self.pattern_hint_ns:
                priority = min(255, priority + self.pattern_boost)
        self._seq += 1
        item = _Item(self._iid_base | (self._seq & 0xFFFFFFFFFF), client_item, pkt.source, kernel, inputs, str(reply_topic),
                     None if stream is None else str(stream), priority, now_ns)
        if self.dispatcher is None:
            self._refuse(item, now_ns, "no accelerator in this topology")
            return
        if self._shedding and priority < self.shed_below_priority:
            self._refuse(item, now_ns, "shed by governance")
            return
        if self._n_pending >= self.max_pending:
            self._refuse(item, now_ns, "pending queue full")
            return
        self._items[item.iid] = item
        self._by_client[key] = item.iid
        self._push_pending(item)

    def _push_pending(self, item: _Item, *, first: bool = False) -> None:
        self._order += 1
        # Reassigned items go before everything of their priority (they waited longest).
        order = -self._order if first else self._order
        heapq.heappush(self._pending, (-item.priority, order, item))
        item.queued = True
        self._n_pending += 1

    def _on_result(self, pkt: PhasePacket, now_ns: int) -> None:
        p = pkt.payload
        iid = int(p["item"])
        item = self._items.get(iid)
        if item is None:
            self._duplicates += 1
            self.ctx.counters["c"][_C_DUPLICATES] += 1
            return  # completed already (a resent copy, or a restarted accelerator's backlog)
        ok = bool(p.get("ok"))
        duration = int(p.get("duration_ns") or 0)
        worker_row = int(p.get("worker", -1))
        if item.worker >= 0:
            observed = None  # only a successful, timed run on the assigned accelerator teaches its slowdown
            if ok and duration > 0 and worker_row == self.accel_rows[item.worker]:
                observed = duration
            if ok and duration > 0:
                self._record_duration(item.kernel, duration)
            self.dispatcher.complete(iid, now_ns, observed_ns=observed)
            self._n_outstanding -= 1
            self._inflight[item.worker] -= item.nbytes
            item.worker = -1
        elif item.queued:
            item.done = True  # waiting for reassignment: drop it from the heap lazily
            self._n_pending -= 1
            item.queued = False
        self.ctx.counters["c"][_C_COMPLETED] += 1
        self._finish(item, now_ns, ok, p.get("result") if ok else None, worker_row)

    def _on_pattern(self, pkt: PhasePacket, now_ns: int) -> None:
        p = pkt.payload
        if isinstance(p, dict) and p.get("kind") == "pattern" and p.get("stream") is not None:
            stream = str(p["stream"])
            self._streams.pop(stream, None)
            self._streams[stream] = now_ns
            if len(self._streams) > _MAX_STREAM_HINTS:
                self._streams.pop(next(iter(self._streams)))

    def _on_modulation(self, pkt: PhasePacket) -> None:
        p = pkt.payload
        scale = float(p["batch_scale"])
        if math.isfinite(scale) and scale > 0.0:
            self._batch_scale = min(max(scale, 0.125), 8.0)

    def _on_decision(self, pkt: PhasePacket, now_ns: int) -> None:
        p = pkt.payload
        if not isinstance(p, dict) or p.get("target") not in ("adp", self.ctx.spec.name):
            return
        action = p.get("action")
        if action == "throttle":
            self._throttled, self._shedding = True, False
        elif action == "shed":
            self._throttled, self._shedding = True, True
            self._refuse_low_priority(now_ns)
        elif action == "allow":
            self._throttled, self._shedding = False, False

    # --- dispatch ---------------------------------------------------------------------------

    def _predict(self, kernel: str) -> int:
        if self._oracle is not None:
            if self._oracle.samples(kernel):
                return max(1, self._oracle.predict(kernel).p50_ns)
            return self.default_predicted_ns
        pred = self._ewma.predict(kernel)
        return self.default_predicted_ns if pred is None else max(1, pred)

    def _record_duration(self, kernel: str, duration: int) -> None:
        if self._oracle is not None:
            try:
                self._oracle.record(kernel, int(duration))
            except Exception:  # noqa: BLE001 - too many kernel names: keep the default prediction
                pass
        else:
            self._ewma.record(kernel, duration)

    def _dispatch(self, now_ns: int) -> int:
        if not self._n_pending or self.dispatcher is None:
            return 0
        scale = self._batch_scale * (self.throttle_scale if self._throttled else 1.0)
        budget = max(1, int(round(self.batch * scale)))
        room = self.dispatcher.room
        held: list[tuple[int, int, _Item]] = []  # items waiting for a full window (JSEQ)
        held_ns = np.zeros(len(self.accel_rows)) if self.policy == "jseq" else None
        n = 0
        examined = 0
        while self._pending and n < budget and examined < 4 * budget and self._n_outstanding < self.max_outstanding:
            for i, b in enumerate(self._inflight):
                room[i] = b < self.max_inflight_bytes
            if not self.dispatcher.eligible().any():
                break  # every live accelerator's window is full (or none lives): items wait here
            entry = heapq.heappop(self._pending)
            item = entry[2]
            if item.done or not item.queued:
                continue
            examined += 1
            if self._shedding and item.priority < self.shed_below_priority:
                item.queued = False
                self._n_pending -= 1
                self._refuse(item, now_ns, "shed by governance")
                continue
            pred = self._predict(item.kernel)
            if held_ns is not None:
                best, slowdown = self.dispatcher.best(pred, now_ns, held_ns)
                if best < 0:
                    held.append(entry)
                    break
                if not room[best]:
                    # It completes earliest on an accelerator whose window is full: it waits for
                    # it, and the items behind it see that wait as part of that accelerator's backlog.
                    held_ns[best] += slowdown * pred
                    held.append(entry)
                    continue
            item.queued = False
            self._n_pending -= 1
            self._assign(item, pred, now_ns)
            n += 1
        for entry in held:
            heapq.heappush(self._pending, entry)
        return n

    def _assign(self, item: _Item, pred: int, now_ns: int) -> None:
        try:
            w = self.dispatcher.assign(item.iid, pred, now_ns)
        except BrokenResourceError:  # no live accelerator (checked before; a race with liveness)
            self._push_pending(item, first=True)
            return
        item.predicted_ns = pred
        item.worker = w
        self._inflight[w] += item.nbytes
        self._n_outstanding += 1
        self.ctx.counters["c"][_C_ASSIGNED] += 1
        self._send_work(item, now_ns)

    def _send_work(self, item: _Item, now_ns: int) -> None:
        item.sent_ns = now_ns
        row = self.accel_rows[item.worker]
        self._emit(
            WORK_TOPIC,
            {"item": item.iid, "kernel": item.kernel, "inputs": item.inputs},
            priority=item.priority,
            targets=1 << row,
        )

    def _resend_overdue(self, now_ns: int) -> int:
        n = 0
        for item in self._items.values():
            if item.worker >= 0 and now_ns - item.sent_ns >= self.resend_after_ns:
                self._send_work(item, now_ns)
                n += 1
        return n

    # --- accelerator liveness ---------------------------------------------------------------

    def _check_accelerators(self, now_ns: int) -> None:
        if self.dispatcher is None:
            return
        rows = self.ctx.control.workers
        for i, r in enumerate(self.accel_rows):
            w = rows[r]
            state = int(w["state"])
            hb = int(w["heartbeat_ns"])
            ident = (int(w["pid"]), int(w["restarts"]))
            alive_now = state == WorkerState.RUNNING and hb > 0 and now_ns - hb <= self.stale_ns
            if self._alive[i] and (not alive_now or (self._ident[i] is not None and self._ident[i] != ident)):
                self._mark_dead(i, now_ns, "restarted" if alive_now else WorkerState.NAMES.get(state, str(state)))
            if not self._alive[i] and alive_now:
                self.dispatcher.mark_alive(i, now_ns)
                self._alive[i] = True
                logger.info("adp: accelerator row {} (pid {}) is back; dispatching to it again", r, ident[0])
            if self._alive[i]:
                self._ident[i] = ident

    def _mark_dead(self, i: int, now_ns: int, why: str) -> None:
        items = self.dispatcher.mark_dead(i, now_ns)
        self._alive[i] = False
        self._ident[i] = None
        self._inflight[i] = 0
        if items:
            logger.warning("adp: accelerator row {} is {}: reassigning its {} items", self.accel_rows[i], why, len(items))
        self.ctx.counters["c"][_C_REASSIGNED] += len(items)
        # Oldest first, ahead of new work of their priority: the next dispatch assigns them to a
        # live accelerator, or they wait until one runs again.
        for iid, _pred in reversed(items):
            item = self._items[iid]
            item.worker = -1
            self._n_outstanding -= 1
            self._push_pending(item, first=True)

    # --- replies ----------------------------------------------------------------------------

    def _finish(self, item: _Item, now_ns: int, ok: bool, result: Any, worker_row: int) -> None:
        self._items.pop(item.iid, None)
        self._by_client.pop((item.source, item.client_item), None)
        latency = now_ns - item.received_ns
        if worker_row >= 0:
            self._latencies.append((now_ns, latency))
        self._emit(
            item.reply_topic,
            {"item": item.client_item, "ok": ok, "result": result, "worker": worker_row, "latency_ns": latency},
            priority=item.priority,
        )

    def _refuse(self, item: _Item, now_ns: int, why: str) -> None:
        self.ctx.counters["c"][_C_REFUSED] += 1
        item.done = True
        self._refused += 1
        if self._refused <= 10 or self._refused % 1000 == 0:
            logger.warning("adp: refused item {} from component {}: {} ({} refused so far)", item.client_item,
                           item.source, why, self._refused)
        self._finish(item, now_ns, False, None, -1)

    def _refuse_low_priority(self, now_ns: int) -> None:
        keep = []
        for entry in self._pending:
            item = entry[2]
            if item.done or not item.queued:
                continue
            if item.priority < self.shed_below_priority:
                item.queued = False
                self._n_pending -= 1
                self._refuse(item, now_ns, "shed by governance")
            else:
                keep.append(entry)
        heapq.heapify(keep)
        self._pending = keep

    # --- metrics ----------------------------------------------------------------------------

    def _publish_metrics(self, now_ns: int) -> None:
        lat = [v for t, v in self._latencies if now_ns - t <= self.latency_window_ns]
        if lat:
            a = np.asarray(lat, dtype=np.float64)
            p50, p99 = (int(x) for x in np.percentile(a, [50, 99], method="higher"))
        else:
            p50 = p99 = 0
        if self.dispatcher is not None:
            st = self.dispatcher.statistics()
            outstanding, slowdown = st.outstanding, [round(s, 4) for s in st.slowdown]
            assigned, completed, reassigned = st.assigned, st.completed, st.reassigned
        else:
            outstanding, slowdown, assigned, completed, reassigned = [], [], 0, 0, 0
        self._emit(
            METRICS_TOPIC,
            {
                "at_ns": now_ns,
                "outstanding": outstanding,
                "slowdown": slowdown,
                "assigned": assigned,
                "completed": completed,
                "reassigned": reassigned,
                "p50_ns": p50,
                "p99_ns": p99,
            },
            priority=0,
            droppable=True,
        )

    # --- emission ---------------------------------------------------------------------------

    def _emit(self, topic: str, payload: Any, *, priority: int, targets: int = 0, droppable: bool = False) -> None:
        pkt = PhasePacket(
            id=self.ctx.next_packet_id(),
            source=self.ctx.component,
            targets=targets,
            priority=priority,
            topic=topic,
            payload=payload,
        )
        if droppable and self._outbox:
            self.ctx.counters["dropped"] += 1  # metrics are periodic: never queue them behind work
            return
        self._outbox.append(pkt)
        self._flush()

    def _flush(self) -> int:
        """Offer queued packets in order; stops at the first refusal (back pressure)."""
        n = 0
        c = self.ctx.counters
        while self._outbox:
            pkt = self._outbox[0]
            try:
                r = self.writer.offer(pkt)
            except (CodecError, RecordTooLargeError) as exc:
                self._outbox.popleft()
                self._on_unsendable(pkt, exc)
                continue
            if r < 0:
                if len(self._outbox) > _MAX_OUTBOX:
                    self._outbox.popleft()
                    c["dropped"] += 1
                break
            self._outbox.popleft()
            c["emitted"] += 1
            n += 1
        return n

    def _on_unsendable(self, pkt: PhasePacket, exc: Exception) -> None:
        self._log_error(f"cannot send on {pkt.topic!r}: {exc}")
        p = pkt.payload
        if pkt.topic == WORK_TOPIC:
            item = self._items.get(p["item"])
            if item is not None and item.worker >= 0:  # its inputs cannot travel: the item fails
                self.dispatcher.complete(item.iid, item.sent_ns, observed_ns=item.predicted_ns)
                self._n_outstanding -= 1
                self._inflight[item.worker] -= item.nbytes
                item.worker = -1
                self._finish(item, item.sent_ns, False, None, -1)
        elif isinstance(p, dict) and "latency_ns" in p and p.get("result") is not None:
            p["ok"], p["result"] = False, None  # the result cannot travel: reply that it failed
            self._outbox.appendleft(pkt)
        else:
            self.ctx.counters["dropped"] += 1

    def _log_error(self, message: str) -> None:
        self.ctx.counters["errors"] += 1
        self._errors_logged += 1
        if self._errors_logged <= 10 or self._errors_logged % 1000 == 0:
            logger.warning("adp {}: {}", self.ctx.spec.name, message)

    # --- lifecycle ---------------------------------------------------------------------------

    def parker(self) -> Parker | None:
        return None if self.inbox is None else self.inbox.reader._parker

    def drain(self, now_ns: int) -> int:
        """Forward what has arrived (results, refusals); do not start new work."""
        return self._flush() + self._poll(now_ns) + self._flush()

    def close(self) -> None:
        if self.inbox is not None:
            self.inbox.close()
        self.writer.close()
