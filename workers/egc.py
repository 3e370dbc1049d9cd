"""The EGC worker: runtime monitors, admission control and rate limits, acting on the fabric.

Inputs (its inbox)::

    adp.metrics     signals p50_ns, p99_ns, outstanding (sum), assigned, completed, reassigned,
                    slowdown_max, and load = outstanding / load_capacity
    egc.input       {"signal": str, "value": float, "at_ns": int}: any named signal
    ems.modulation  signals valence, arousal

Output on ``egc.decisions``::

    {"action": "allow"|"throttle"|"shed"|"alert", "target": str, "reason": str,
     "robustness": float, "at_ns": int}

Three mechanisms (cores in ``workers._governance``):

1. **STL monitors**, one per entry of ``formulas`` (name -> text, e.g.
   ``{"latency": "always[0,1s](p99_ns < 20000000)"}``). Samples are stamped with this
   worker's step time when they arrive (one time base for every source); a signal holds its
   last value until it changes. A monitor's verdict is final ``horizon`` after its sample.
   When robustness crosses below zero the formula's action (``formula_actions``, default
   "alert") is published; "throttle" or "shed" also raise the admission level while the
   formula stays violated. When it crosses back, a decision with the current level says so.
2. **Admission control** (``AdmissionController``: allow/throttle/shed with hysteresis and
   a minimum dwell) on the signal ``load_signal`` (default "load": ADP's outstanding items
   over ``load_capacity``, or an ``egc.input`` of that name).
3. **Token buckets**: ``rate_limits`` (topic -> [rate_per_s, burst]) on the rate at which the
   router sees each topic (the topic's ``routed`` counter in the control block, plus its
   ``filtered`` counter while shed, since the router counts shed packets there): a topic
   over its limit is shed at the router (priorities below ``shed_below_priority``) until
   it has stayed within the limit for ``rate_recover_ms``. ``input_rate_limit`` ([rate,
   burst]) bounds what each (source, topic) may feed this worker; the excess is ignored
   and counted (``c[3]``).

**Acting.** Every allow/throttle/shed decision states the *effective* level, the highest of
the admission level and the levels of violated throttle/shed formulas, for ``target``
(default "adp": ADP obeys it). In SHED, EGC sets ``control.set_topic_admission(topic,
shed_below_priority)`` on each of ``topics`` (default ["adp.input"]), so the router drops
their low-priority packets; leaving SHED sets it back to 0. At start it resets those topics
to 0 (a restarted EGC begins in ALLOW).

Counters (its row's ``c``): ``c[0]`` decisions, ``c[1]`` alerts, ``c[2]`` effective level
(0 allow, 1 throttle, 2 shed), ``c[3]`` rate-limit refusals, ``c[4]`` STL verdicts.
"""

from __future__ import annotations

import math
from typing import Any

from loguru import logger

from fabric.errors import UnknownTopicError
from fabric.packet import PhasePacket
from fabric.wait import Parker
from workers._governance import (
    DECISION_ACTIONS,
    AdmissionController,
    AdmissionLevel,
    StlMonitor,
    TokenBucketLimiter,
)
from workers.base import Worker, WorkerContext

__all__ = ["EgcWorker", "DEFAULT_FORMULAS"]

METRICS_TOPIC = "adp.metrics"
INPUT_TOPIC = "egc.input"
MODULATION_TOPIC = "ems.modulation"
DECISIONS_TOPIC = "egc.decisions"

#: Default monitors over ``adp.metrics``: p99 completion latency under 20 ms over every second.
DEFAULT_FORMULAS = {"latency": "always[0,1s](p99_ns < 20000000)"}

_C_DECISIONS, _C_ALERTS, _C_LEVEL, _C_RATE_LIMITED, _C_VERDICTS = range(5)
_LEVEL_NAMES = {AdmissionLevel.ALLOW: "allow", AdmissionLevel.THROTTLE: "throttle", AdmissionLevel.SHED: "shed"}
_ACTION_LEVELS = {"throttle": AdmissionLevel.THROTTLE, "shed": AdmissionLevel.SHED}


class _Formula:
    __slots__ = ("name", "monitor", "action", "target", "satisfied", "robustness")

    def __init__(self, name: str, monitor: StlMonitor, action: str, target: str) -> None:
        self.name = name
        self.monitor = monitor
        self.action = action
        self.target = target
        self.satisfied = True  # until a verdict says otherwise
        self.robustness = math.inf


class _TopicLimit:
    __slots__ = ("topic", "row", "rate", "last_routed", "last_filtered", "shed", "within_since")

    def __init__(self, topic: str, row: int, rate: float, routed: int, filtered: int) -> None:
        self.topic = topic
        self.row = row
        self.rate = rate
        self.last_routed = routed
        self.last_filtered = filtered
        self.shed = False
        self.within_since: int | None = None


class EgcWorker(Worker):
    """Governance: STL monitors, admission control and rate limits (see the module docstring).

    Options
    -------
    formulas : dict of str to str
        Monitors by name (default ``DEFAULT_FORMULAS``).
    formula_actions : dict of str to str
        Action on violation per formula name: "alert" (default), "throttle" or "shed".
    target : str
        Whom the decisions address (default "adp").
    topics : list of str
        Topics shed at the router in SHED (default ["adp.input"]).
    shed_below_priority : int
        Priority floor set on shed topics (default 1: priority-0 packets are dropped).
    load_signal : str, load_capacity : float
        Signal driving admission control (default "load") and the outstanding ADP items that
        make load 1.0 (default 256).
    admission : dict
        ``AdmissionController`` thresholds (throttle_on 0.75, throttle_off 0.6, shed_on 0.9,
        shed_off 0.8) and ``min_dwell_ms`` (default 500).
    rate_limits : dict of str to [rate_per_s, burst]
        Per-topic limits enforced at the router (burst is raised to cover two check intervals).
    rate_recover_ms : float
        Time within its limit before a shed topic is allowed again (default 1000).
    input_rate_limit : [rate_per_s, burst], optional
        Per (source, topic) limit on this worker's own inputs.
    check_interval_ms : float
        How often monitors are evaluated and topic rates read (default 50).
    poll_batch : int
        Packets taken from the inbox per step (default 64).
    """

    kind = "egc"

    def __init__(
        self,
        ctx: WorkerContext,
        *,
        formulas: dict[str, str] | None = None,
        formula_actions: dict[str, str] | None = None,
        target: str = "adp",
        topics: list[str] | None = None,
        shed_below_priority: int = 1,
        load_signal: str = "load",
        load_capacity: float = 256.0,
        admission: dict[str, Any] | None = None,
        rate_limits: dict[str, list[float]] | None = None,
        rate_recover_ms: float = 1000.0,
        input_rate_limit: list[float] | None = None,
        check_interval_ms: float = 50.0,
        poll_batch: int = 64,
    ) -> None:
        super().__init__(ctx)
        formulas = dict(DEFAULT_FORMULAS if formulas is None else formulas)
        formula_actions = dict(formula_actions or {})
        unknown = sorted(set(formula_actions) - set(formulas))
        if unknown:
            raise ValueError(f"egc: formula_actions names formulas that do not exist: {unknown}")
        self.formulas: list[_Formula] = []
        for name, text in formulas.items():
            action = formula_actions.get(name, "alert")
            if action not in ("alert", "throttle", "shed"):
                raise ValueError(f"egc: formula {name!r}: action must be alert, throttle or shed, got {action!r}")
            self.formulas.append(_Formula(name, StlMonitor(text, name=f"{name}: {text}"), action, target))
        if not 0 <= int(shed_below_priority) <= 256:
            raise ValueError(f"egc: shed_below_priority must be in 0..256, got {shed_below_priority}")
        if not float(load_capacity) > 0.0:
            raise ValueError(f"egc: load_capacity must be > 0, got {load_capacity}")
        adm = dict(admission or {})
        min_dwell_ns = int(float(adm.pop("min_dwell_ms", 500.0)) * 1e6)
        self.admission = AdmissionController(min_dwell_ns=min_dwell_ns, target=target, **adm)
        self.target = target
        self.topics = list(["adp.input"] if topics is None else topics)
        self.shed_below_priority = int(shed_below_priority)
        self.load_signal = load_signal
        self.load_capacity = float(load_capacity)
        self.check_interval_ns = int(float(check_interval_ms) * 1e6)
        self.rate_recover_ns = int(float(rate_recover_ms) * 1e6)
        self.poll_batch = int(poll_batch)
        control = ctx.control
        for t in self.topics:
            control.topic_row(t)  # UnknownTopicError names the topic and the known ones
        self.limits: dict[str, _TopicLimit] = {}
        self.topic_limiter: TokenBucketLimiter | None = None
        if rate_limits:
            interval_s = self.check_interval_ns / 1e9
            first = True
            for topic, (rate, burst) in rate_limits.items():
                row = control.topic_row(topic)
                burst = max(int(burst), int(math.ceil(float(rate) * interval_s * 2)))
                if first:
                    self.topic_limiter = TokenBucketLimiter(rate, burst, max_keys=len(rate_limits))
                    first = False
                self.topic_limiter.set_limit(topic, rate, burst)
                t = control.topics[row]
                self.limits[topic] = _TopicLimit(topic, row, float(rate), int(t["routed"]), int(t["filtered"]))
        self.input_limiter = None
        if input_rate_limit is not None:
            rate, burst = input_rate_limit
            self.input_limiter = TokenBucketLimiter(rate, int(burst), max_keys=4096)
        # A fresh EGC starts in ALLOW: undo what a predecessor may have left set.
        self._floors: dict[str, int] = {}
        for t in set(self.topics) | set(self.limits):
            if control.topic_admission(t) != 0:
                control.set_topic_admission(t, 0)
            self._floors[t] = 0
        self.level = AdmissionLevel.ALLOW
        self._known: dict[str, float] = {}
        self._dirty = False
        self._next_check = 0
        self._last_t = 0
        self._errors_logged = 0
        self.inbox = ctx.inbox_reader()
        self.writer = ctx.publisher()
        logger.info(
            "egc {}: monitors {}, admission on {!r} -> target {!r}, acting on topics {}, rate limits {}",
            ctx.spec.name, formulas, load_signal, target, self.topics,
            {t: lim.rate for t, lim in self.limits.items()},
        )

    # --- step -------------------------------------------------------------------------------

    def step(self, now_ns: int) -> int:
        now_ns = max(now_ns, self._last_t)
        self._last_t = now_ns
        work = 0
        if self.inbox is not None:
            pkts = self.inbox.receive_batch(self.poll_batch)
            if pkts:
                self.ctx.counters["received"] += len(pkts)
                work += len(pkts)
                for pkt in pkts:
                    try:
                        self._on_packet(pkt, now_ns)
                    except Exception as exc:  # noqa: BLE001 - a bad packet must not stop the worker
                        self._log_error(f"packet on {pkt.topic!r} from {pkt.source}: {type(exc).__name__}: {exc}")
                if self._dirty:
                    self._push_samples(now_ns)
        if now_ns >= self._next_check:
            self._next_check = now_ns + self.check_interval_ns
            work += self._evaluate(now_ns)
            work += self._check_rates(now_ns)
        return work

    def _on_packet(self, pkt: PhasePacket, now_ns: int) -> None:
        if self.input_limiter is not None and not self.input_limiter.allow((pkt.source, pkt.topic), 1, now_ns):
            self.ctx.counters["c"][_C_RATE_LIMITED] += 1
            return
        p = pkt.payload
        if not isinstance(p, dict):
            raise TypeError(f"payload must be a dict, got {type(p).__name__}")
        if pkt.topic == METRICS_TOPIC:
            outstanding = sum(int(x) for x in p.get("outstanding") or [])
            slowdown = [float(x) for x in p.get("slowdown") or []]
            signals = {
                "p50_ns": float(p["p50_ns"]),
                "p99_ns": float(p["p99_ns"]),
                "outstanding": float(outstanding),
                "assigned": float(p.get("assigned", 0)),
                "completed": float(p.get("completed", 0)),
                "reassigned": float(p.get("reassigned", 0)),
                "slowdown_max": max(slowdown) if slowdown else 1.0,
                "load": outstanding / self.load_capacity,
            }
            self._update(signals, now_ns)
        elif pkt.topic == INPUT_TOPIC:
            self._update({str(p["signal"]): float(p["value"])}, now_ns)
        elif pkt.topic == MODULATION_TOPIC:
            self._update({"valence": float(p["valence"]), "arousal": float(p["arousal"])}, now_ns)

    def _update(self, signals: dict[str, float], now_ns: int) -> None:
        for name, v in signals.items():
            if not math.isfinite(v):
                raise ValueError(f"signal {name!r} is not finite: {v}")
        self._known.update(signals)
        self._dirty = True
        load = signals.get(self.load_signal)
        if load is not None:
            d = self.admission.update(load, now_ns)
            if d is not None:
                self._set_level(now_ns, d.reason, d.robustness, always=True)

    def _push_samples(self, now_ns: int) -> None:
        self._dirty = False
        known = self._known
        for f in self.formulas:
            if all(s in known for s in f.monitor.signals):
                f.monitor.push(now_ns, {s: known[s] for s in f.monitor.signals})

    # --- monitors and levels ----------------------------------------------------------------

    def _evaluate(self, now_ns: int) -> int:
        n = 0
        for f in self.formulas:
            verdict = f.monitor.evaluate(now_ns)
            if verdict is None:
                continue
            n += 1
            self.ctx.counters["c"][_C_VERDICTS] += 1
            f.robustness = verdict.robustness
            ok = verdict.robustness >= 0.0
            if ok == f.satisfied:
                continue
            f.satisfied = ok
            if not ok:
                reason = f"{f.name} violated at sample {verdict.sample_ns} ns (robustness {verdict.robustness:.6g})"
                if f.action == "alert":
                    self.ctx.counters["c"][_C_ALERTS] += 1
                    self._decide("alert", f.target, reason, verdict.robustness, now_ns)
                else:
                    self._set_level(now_ns, reason, verdict.robustness, always=True)
            else:
                reason = f"{f.name} satisfied again (robustness {verdict.robustness:.6g})"
                self._set_level(now_ns, reason, verdict.robustness, always=True)
        return n

    def _effective_level(self) -> AdmissionLevel:
        level = self.admission.level
        for f in self.formulas:
            if not f.satisfied and f.action in _ACTION_LEVELS:
                level = max(level, _ACTION_LEVELS[f.action])
        return AdmissionLevel(level)

    def _set_level(self, now_ns: int, reason: str, robustness: float, *, always: bool = False) -> None:
        level = self._effective_level()
        changed = level != self.level
        self.level = level
        self.ctx.counters["c"][_C_LEVEL] = int(level)
        if changed or always:
            self._decide(_LEVEL_NAMES[level], self.target, reason, robustness, now_ns)
        if changed:
            self._apply_floors()

    def _apply_floors(self) -> None:
        control = self.ctx.control
        for topic in self._floors:
            floor = 0
            if topic in self.topics and self.level == AdmissionLevel.SHED:
                floor = self.shed_below_priority
            lim = self.limits.get(topic)
            if lim is not None and lim.shed:
                floor = self.shed_below_priority
            if floor != self._floors[topic]:
                try:
                    control.set_topic_admission(topic, floor)
                except UnknownTopicError as exc:  # pragma: no cover - topics are never removed
                    self._log_error(str(exc))
                    continue
                self._floors[topic] = floor
                logger.info("egc: topic {!r} now admits priority >= {}", topic, floor)

    # --- rate limits ------------------------------------------------------------------------

    def _check_rates(self, now_ns: int) -> int:
        if not self.limits:
            return 0
        topics = self.ctx.control.topics
        n = 0
        for lim in self.limits.values():
            routed = int(topics[lim.row]["routed"])
            filtered = int(topics[lim.row]["filtered"])
            delta = routed - lim.last_routed
            if lim.shed:
                # The router counts the packets it sheds as filtered, not routed: while shed, the
                # offered rate is both (subscription filters count there too: errs on the safe side).
                delta += filtered - lim.last_filtered
            lim.last_routed = routed
            lim.last_filtered = filtered
            within = delta <= 0 or self.topic_limiter.allow(lim.topic, delta, now_ns)
            if not within:
                self.ctx.counters["c"][_C_RATE_LIMITED] += 1
                lim.within_since = None
                if not lim.shed:
                    lim.shed = True
                    n += 1
                    self._decide("shed", lim.topic, f"topic {lim.topic!r} over its rate limit of {lim.rate:g}/s",
                                 -float(delta), now_ns)
                    self._apply_floors()
            elif lim.shed:
                if lim.within_since is None:
                    lim.within_since = now_ns
                elif now_ns - lim.within_since >= self.rate_recover_ns:
                    lim.shed = False
                    n += 1
                    self._decide("allow", lim.topic, f"topic {lim.topic!r} within its rate limit of {lim.rate:g}/s",
                                 0.0, now_ns)
                    self._apply_floors()
        return n

    # --- emission ---------------------------------------------------------------------------

    def _decide(self, action: str, target: str, reason: str, robustness: float, now_ns: int) -> None:
        assert action in DECISION_ACTIONS
        if not math.isfinite(robustness):
            robustness = math.copysign(1e308, robustness)
        self.ctx.counters["c"][_C_DECISIONS] += 1
        logger.info("egc decision: {} {} ({})", action, target, reason)
        self.emit(
            self.writer,
            DECISIONS_TOPIC,
            {"action": action, "target": target, "reason": reason, "robustness": float(robustness), "at_ns": now_ns},
            priority=255,
        )

    def _log_error(self, message: str) -> None:
        self.ctx.counters["errors"] += 1
        self._errors_logged += 1
        if self._errors_logged <= 10 or self._errors_logged % 1000 == 0:
            logger.warning("egc {}: {}", self.ctx.spec.name, message)

    # --- lifecycle ---------------------------------------------------------------------------

    def parker(self) -> Parker | None:
        return None if self.inbox is None else self.inbox.reader._parker

    def drain(self, now_ns: int) -> int:
        return 0

    def close(self) -> None:
        if self.inbox is not None:
            self.inbox.close()
        self.writer.close()
