"""The EMS worker: the fabric's own valence/arousal, and the modulation other modules scale by.

Inputs (its inbox)::

    adp.metrics    load = sum(outstanding) / load_capacity, latency = p99_ns
    egc.decisions  "shed" and "alert" lower valence (appraised as a drop in success ratio)
    ems.input      {"deadline_hit_ratio"?, "success_ratio"?, "load"?, "latency_ratio"?, "at_ns"}

Output on ``ems.modulation``::

    {"valence", "arousal", "batch_scale", "sensitivity_scale", "at_ns"}

every ``interval_ms``, and at once when an observation moves valence or arousal by more
than ``threshold`` (or a scale by more than ``threshold`` in log2) since the last one
published. ``at_ns`` is this worker's step time.

The model is ``workers._affect.AffectModel`` (Russell's circumplex, ALMA-style decay to a
baseline; its docstring gives the appraisal formulas). Every observation carries the four
appraisal inputs; the ones an input does not mention hold their last value (initially
the model's targets, which appraise as neutral). ``latency_ratio`` is latency over
``latency_target_ns``. An idle ADP (no completions and nothing outstanding) reports
neutral latency. Governance lowers valence: while EGC's latest level decision is "shed",
and for ``alert_hold_ms`` after an "alert", every observation is appraised with a success
ratio of at most ``shed_success_ratio`` (default 0.9) or ``alert_success_ratio`` (0.99);
each such decision is also an observation of its own.

What the scales do downstream: ``batch_scale = 2**arousal`` sets how many items ADP
dispatches per step; ``sensitivity_scale = 2**-((arousal - valence)/2)`` divides DRPP's
detection threshold (under stress it detects only stronger components).

Counters (its row's ``c``): ``c[0]`` observations, ``c[1]`` modulations published,
``c[2]`` valence x 1e6, ``c[3]`` arousal x 1e6, ``c[4]`` decisions appraised.
"""

from __future__ import annotations

import math
from typing import Any

from loguru import logger

from fabric.packet import PhasePacket
from fabric.wait import Parker
from workers._affect import AffectModel, Modulation
from workers.base import Worker, WorkerContext

__all__ = ["EmsWorker"]

METRICS_TOPIC = "adp.metrics"
DECISIONS_TOPIC = "egc.decisions"
INPUT_TOPIC = "ems.input"
MODULATION_TOPIC = "ems.modulation"

_C_OBS, _C_PUBLISHED, _C_VALENCE, _C_AROUSAL, _C_DECISIONS = range(5)


class EmsWorker(Worker):
    """Affect model of the fabric, published as modulation (see the module docstring).

    Options
    -------
    interval_ms : float
        Period of ``ems.modulation`` (default 250).
    threshold : float
        Movement that publishes at once (default 0.05).
    load_capacity : float
        ADP items outstanding that count as load 1.0 (default 256).
    shed_success_ratio, alert_success_ratio : float
        Success ratio while EGC sheds / after an alert (0.9, 0.99).
    alert_hold_ms : float
        How long an alert keeps lowering the success ratio (default 2000).
    half_life_ms, gain, baseline_valence, baseline_arousal, deadline_target, success_target,
    deadline_weight, load_target, latency_target_ns, max_scale_log2
        ``AffectModel`` parameters (``half_life_ms`` in ms; defaults 5000 ms, 0.3, 0, 0, 0.99,
        0.999, 0.5, 0.5, 10 ms, 1.0).
    poll_batch : int
        Packets taken from the inbox per step (default 64).
    """

    kind = "ems"

    def __init__(
        self,
        ctx: WorkerContext,
        *,
        interval_ms: float = 250.0,
        threshold: float = 0.05,
        load_capacity: float = 256.0,
        shed_success_ratio: float = 0.9,
        alert_success_ratio: float = 0.99,
        alert_hold_ms: float = 2000.0,
        half_life_ms: float = 5000.0,
        gain: float = 0.3,
        baseline_valence: float = 0.0,
        baseline_arousal: float = 0.0,
        deadline_target: float = 0.99,
        success_target: float = 0.999,
        deadline_weight: float = 0.5,
        load_target: float = 0.5,
        latency_target_ns: int = 10_000_000,
        max_scale_log2: float = 1.0,
        poll_batch: int = 64,
    ) -> None:
        super().__init__(ctx)
        if not float(load_capacity) > 0.0:
            raise ValueError(f"ems: load_capacity must be > 0, got {load_capacity}")
        for name, v in (("shed_success_ratio", shed_success_ratio), ("alert_success_ratio", alert_success_ratio)):
            if not 0.0 <= float(v) <= 1.0:
                raise ValueError(f"ems: {name} must be in [0, 1], got {v}")
        self.model = AffectModel(
            half_life_ns=int(float(half_life_ms) * 1e6),
            gain=gain,
            baseline_valence=baseline_valence,
            baseline_arousal=baseline_arousal,
            deadline_target=deadline_target,
            success_target=success_target,
            deadline_weight=deadline_weight,
            load_target=load_target,
            latency_target_ns=int(latency_target_ns),
            max_scale_log2=max_scale_log2,
        )
        self.interval_ns = int(float(interval_ms) * 1e6)
        self.threshold = float(threshold)
        self.load_capacity = float(load_capacity)
        self.shed_success_ratio = float(shed_success_ratio)
        self.alert_success_ratio = float(alert_success_ratio)
        self.alert_hold_ns = int(float(alert_hold_ms) * 1e6)
        self.latency_target_ns = int(latency_target_ns)
        self.poll_batch = int(poll_batch)
        # The four appraisal inputs, held between observations (neutral at first).
        self.held = {
            "deadline_hit_ratio": float(deadline_target),
            "success_ratio": float(success_target),
            "load": float(load_target),
            "latency_ns": float(latency_target_ns),
        }
        self.inbox = ctx.inbox_reader()
        self.writer = ctx.publisher()
        self._shedding = False  # EGC's latest level decision was "shed"
        self._alert_until = -1  # an alert lowers the success ratio until then
        self._last: Modulation | None = None
        self._next_publish = 0
        self._last_t = 0
        self._errors_logged = 0

    # --- step -------------------------------------------------------------------------------

    def step(self, now_ns: int) -> int:
        now_ns = max(now_ns, self._last_t)  # the model refuses time running backwards
        self._last_t = now_ns
        work = 0
        moved = False
        if self.inbox is not None:
            pkts = self.inbox.receive_batch(self.poll_batch)
            if pkts:
                self.ctx.counters["received"] += len(pkts)
                work += len(pkts)
                for pkt in pkts:
                    try:
                        moved |= self._on_packet(pkt, now_ns)
                    except Exception as exc:  # noqa: BLE001 - a bad packet must not stop the worker
                        self._log_error(f"packet on {pkt.topic!r} from {pkt.source}: {type(exc).__name__}: {exc}")
        if moved or now_ns >= self._next_publish:
            self._publish(self.model.modulation(now_ns))
            self._next_publish = now_ns + self.interval_ns
            work += 1
        return work

    def _on_packet(self, pkt: PhasePacket, now_ns: int) -> bool:
        p = pkt.payload
        if not isinstance(p, dict):
            raise TypeError(f"payload must be a dict, got {type(p).__name__}")
        if pkt.topic == METRICS_TOPIC:
            outstanding = sum(int(x) for x in p.get("outstanding") or [])
            self.held["load"] = outstanding / self.load_capacity
            p99 = int(p.get("p99_ns") or 0)
            if p99 > 0:
                self.held["latency_ns"] = float(p99)
            elif outstanding == 0:
                self.held["latency_ns"] = float(self.latency_target_ns)  # idle: nothing is late
            return self._observe(now_ns)
        if pkt.topic == DECISIONS_TOPIC:
            action = p.get("action")
            if action == "alert":
                self._alert_until = now_ns + self.alert_hold_ns
            elif action in ("allow", "throttle", "shed"):
                self._shedding = action == "shed"
            if action not in ("shed", "alert"):
                return False
            self.ctx.counters["c"][_C_DECISIONS] += 1
            return self._observe(now_ns)
        if pkt.topic == INPUT_TOPIC:
            for key in ("deadline_hit_ratio", "success_ratio", "load"):
                if p.get(key) is not None:
                    v = float(p[key])
                    if not math.isfinite(v):
                        raise ValueError(f"{key} must be finite, got {v}")
                    self.held[key] = v
            if p.get("latency_ratio") is not None:
                r = float(p["latency_ratio"])
                if not (r > 0.0 and math.isfinite(r)):
                    raise ValueError(f"latency_ratio must be positive and finite, got {r}")
                self.held["latency_ns"] = r * self.latency_target_ns
            return self._observe(now_ns)
        return False

    def _observe(self, now_ns: int) -> bool:
        obs = dict(self.held)
        if self._shedding:
            obs["success_ratio"] = min(obs["success_ratio"], self.shed_success_ratio)
        if now_ns < self._alert_until:
            obs["success_ratio"] = min(obs["success_ratio"], self.alert_success_ratio)
        obs["deadline_hit_ratio"] = min(max(obs["deadline_hit_ratio"], 0.0), 1.0)
        obs["success_ratio"] = min(max(obs["success_ratio"], 0.0), 1.0)
        obs["load"] = max(obs["load"], 0.0)
        obs["latency_ns"] = max(obs["latency_ns"], 1.0)
        m = self.model.observe(now_ns, **obs)
        c = self.ctx.counters["c"]
        c[_C_OBS] += 1
        c[_C_VALENCE] = int(m.valence * 1e6)
        c[_C_AROUSAL] = int(m.arousal * 1e6)
        return self._moved(m)

    def _moved(self, m: Modulation) -> bool:
        last = self._last
        if last is None:
            return True
        t = self.threshold
        return (
            abs(m.valence - last.valence) > t
            or abs(m.arousal - last.arousal) > t
            or abs(math.log2(m.batch_scale / last.batch_scale)) > t
            or abs(math.log2(m.sensitivity_scale / last.sensitivity_scale)) > t
        )

    def _publish(self, m: Modulation) -> None:
        payload: dict[str, Any] = {
            "valence": m.valence,
            "arousal": m.arousal,
            "batch_scale": m.batch_scale,
            "sensitivity_scale": m.sensitivity_scale,
            "at_ns": m.at_ns,
        }
        if self.emit(self.writer, MODULATION_TOPIC, payload):
            self._last = m
            self.ctx.counters["c"][_C_PUBLISHED] += 1

    def _log_error(self, message: str) -> None:
        self.ctx.counters["errors"] += 1
        self._errors_logged += 1
        if self._errors_logged <= 10 or self._errors_logged % 1000 == 0:
            logger.warning("ems {}: {}", self.ctx.spec.name, message)

    # --- lifecycle ---------------------------------------------------------------------------

    def parker(self) -> Parker | None:
        return None if self.inbox is None else self.inbox.reader._parker

    def drain(self, now_ns: int) -> int:
        return 0  # nothing in flight: modulation is advisory

    def close(self) -> None:
        if self.inbox is not None:
            self.inbox.close()
        self.writer.close()
