"""Topology configuration: a TOML file decoded into msgspec Structs.

A bad file gets a ``ConfigError`` naming the field and the reason, e.g.
``workers[1].cpus[0]: Expected `int`, got `str```. With no file at all the
embedded default topology runs (``default_topology()``).

Example ``topology.toml``::

    [fabric]
    name = "lab"
    inbox_pool = 8

    [[topics]]
    name = "sensor.imu"

    [[workers]]
    name = "router"
    kind = "router"
    cpus = [1]
    critical = true
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import msgspec

from fabric.errors import ConfigError

__all__ = [
    "FabricSpec",
    "TopicSpec",
    "WorkerSpec",
    "TopologyConfig",
    "load_config",
    "parse_config",
    "default_topology",
    "validate_topology",
    "TOPIC_NAME_RE",
    "FABRIC_NAME_RE",
    "DEMO_TOPIC",
    "MISS_POLICIES",
]

TOPIC_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
FABRIC_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,30}$")
DEMO_TOPIC = "demo"
# miss policy name -> scheduler class (fabric.deadline.MissPolicy order)
MISS_POLICIES = {"drop": 0, "late": 1, "degrade": 2, "escalate": 3}


class FabricSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Fabric-wide settings."""

    name: str = "chronofabric"
    ingress_capacity_bytes: int = 1 << 22
    inbox_capacity_bytes: int = 1 << 20
    inbox_pool: int = 16
    max_record_bytes: int = 1 << 16
    arena_bytes: int = 1 << 26
    arena_slots: int = 1024
    heartbeat_interval_ms: int = 50
    hung_timeout_ms: int = 5000
    restart_backoff_ms: tuple[int, int] = (100, 5000)
    max_restarts: int = 20
    realtime_priority: int = 0
    wait_strategy: str = "adaptive"
    drain_timeout_ms: int = 2000


class TopicSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A topic the fabric routes.

    ``miss_policy`` is what the scheduler does with a packet of this topic whose
    deadline passes before it is delivered: ``drop`` it, deliver it ``late`` (flagged),
    ``degrade`` it (re-route to the topic ``<name>.degraded``, which must be declared),
    or ``escalate`` it (priority 255, flagged). Every miss is counted.
    """

    name: str
    description: str = ""
    miss_policy: str = "late"


class WorkerSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One supervised worker process.

    ``subscribe`` lists the topics delivered to the worker's inbox; ``options`` are
    passed to the worker kind as keyword arguments.
    """

    name: str
    kind: str
    cpus: list[int] | None = None
    critical: bool = False
    subscribe: list[str] = []
    options: dict[str, Any] = {}
    restart: bool = True


class TopologyConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A whole fabric: settings, topics, workers."""

    fabric: FabricSpec = msgspec.field(default_factory=FabricSpec)
    topics: list[TopicSpec] = []
    workers: list[WorkerSpec] = []

    def topic_names(self) -> list[str]:
        return [t.name for t in self.topics]

    def worker(self, name: str) -> WorkerSpec:
        for w in self.workers:
            if w.name == name:
                return w
        raise KeyError(name)


def _field_path(msg: str) -> str:
    # msgspec says "... - at `$.workers[0].cpus[0]`": lead with the field, then the reason.
    m = re.search(r" - at `\$\.?(.*)`$", msg)
    if not m:
        return msg
    return f"{m.group(1) or '<root>'}: {msg[: m.start()]}"


def parse_config(data: dict[str, Any], *, source: str = "<config>") -> TopologyConfig:
    """Decode and validate a topology from plain data (as TOML gives it)."""
    try:
        cfg = msgspec.convert(data, TopologyConfig)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source}: {_field_path(str(exc))}") from exc
    validate_topology(cfg, source=source)
    return cfg


def load_config(path: str | Path) -> TopologyConfig:
    """Read a topology TOML file.

    Raises
    ------
    ConfigError
        The file is missing, not TOML, or names a field with a bad value.
    """
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{p}: no such file") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from exc
    return parse_config(data, source=str(p))


def validate_topology(cfg: TopologyConfig, *, source: str = "<config>") -> None:
    """Check the rules msgspec types cannot express; raises ``ConfigError`` naming the field."""
    from workers import WORKER_KINDS
    from shm_layouts.control import MAX_TOPICS, MAX_WORKERS

    f = cfg.fabric

    def bad(field: str, why: str) -> ConfigError:
        return ConfigError(f"{source}: {field}: {why}")

    if not FABRIC_NAME_RE.match(f.name):
        raise bad("fabric.name", f"{f.name!r} must be 1-31 letters, digits, '_' or '-'")
    for field in ("ingress_capacity_bytes", "inbox_capacity_bytes"):
        v = getattr(f, field)
        if v < 65536 or v & (v - 1):
            raise bad(f"fabric.{field}", f"must be a power of two >= 65536, got {v}")
    if f.arena_bytes and (f.arena_bytes < 1 << 20 or not 1 <= f.arena_slots <= 65536):
        raise bad("fabric.arena_bytes", "must be 0 (no arena) or >= 1 MiB, with arena_slots in 1..65536")
    if not 1 <= f.inbox_pool <= 48:
        raise bad("fabric.inbox_pool", f"must be in 1..48, got {f.inbox_pool}")
    if not 256 <= f.max_record_bytes <= min(f.ingress_capacity_bytes, f.inbox_capacity_bytes) // 4:
        raise bad("fabric.max_record_bytes", "must be >= 256 and at most a quarter of the smallest ring")
    if f.heartbeat_interval_ms <= 0 or f.hung_timeout_ms < 4 * f.heartbeat_interval_ms:
        raise bad("fabric.hung_timeout_ms", "must be at least 4 heartbeat intervals")
    lo, hi = f.restart_backoff_ms
    if not 0 < lo <= hi:
        raise bad("fabric.restart_backoff_ms", f"must be [min, max] with 0 < min <= max, got {[lo, hi]}")
    if f.wait_strategy not in ("spin", "yield", "block", "adaptive"):
        raise bad("fabric.wait_strategy", f"must be spin, yield, block or adaptive, got {f.wait_strategy!r}")
    if not 0 <= f.realtime_priority <= 99:
        raise bad("fabric.realtime_priority", "must be 0 (off) or a SCHED_FIFO priority 1..99")
    names = set()
    for i, t in enumerate(cfg.topics):
        if not TOPIC_NAME_RE.match(t.name):
            raise bad(f"topics[{i}].name", f"{t.name!r} must be 1-63 letters, digits, '.', '_' or '-'")
        if t.name in names:
            raise bad(f"topics[{i}].name", f"topic {t.name!r} is declared twice")
        if t.miss_policy not in MISS_POLICIES:
            raise bad(f"topics[{i}].miss_policy", f"must be one of {sorted(MISS_POLICIES)}, got {t.miss_policy!r}")
        names.add(t.name)
    for i, t in enumerate(cfg.topics):
        if t.miss_policy == "degrade" and f"{t.name}.degraded" not in names:
            raise bad(f"topics[{i}].miss_policy", f"'degrade' needs a topic {t.name + '.degraded'!r} declared for the cheaper handler")
    if len(names) > MAX_TOPICS:
        raise bad("topics", f"at most {MAX_TOPICS} topics")
    if len(cfg.workers) > MAX_WORKERS:
        raise bad("workers", f"at most {MAX_WORKERS} workers")
    seen = set()
    inboxes = 0
    for i, w in enumerate(cfg.workers):
        if not FABRIC_NAME_RE.match(w.name):
            raise bad(f"workers[{i}].name", f"{w.name!r} must be 1-31 letters, digits, '_' or '-'")
        if w.name in seen:
            raise bad(f"workers[{i}].name", f"worker {w.name!r} is declared twice")
        seen.add(w.name)
        if w.kind not in WORKER_KINDS:
            raise bad(f"workers[{i}].kind", f"unknown kind {w.kind!r}; known kinds: {sorted(WORKER_KINDS)}")
        if w.cpus is not None:
            if not w.cpus or any(c < 0 or c > 63 for c in w.cpus):
                raise bad(f"workers[{i}].cpus", f"must be a non-empty list of core numbers 0..63, got {w.cpus}")
        for j, topic in enumerate(w.subscribe):
            if topic not in names:
                raise bad(f"workers[{i}].subscribe[{j}]", f"topic {topic!r} is not declared in [[topics]]")
        if w.subscribe:
            inboxes += 1
    kinds = [w.kind for w in cfg.workers]
    if kinds.count("router") != 1:
        raise bad("workers", f"a topology needs exactly one worker of kind 'router', found {kinds.count('router')}")
    if kinds.count("scheduler") > 1:
        raise bad("workers", "at most one worker of kind 'scheduler'")
    if inboxes >= f.inbox_pool:
        raise bad("fabric.inbox_pool", f"{inboxes} workers subscribe; the pool needs more inboxes than that for clients")


def default_topology(name: str = "chronofabric") -> TopologyConfig:
    """The embedded topology: every worker kind that exists, and the demo and module topics."""
    from workers import WORKER_KINDS

    topics = [TopicSpec(name=DEMO_TOPIC, description="demo producer/subscriber traffic")]
    workers = [WorkerSpec(name="router", kind="router", critical=True)]
    if "scheduler" in WORKER_KINDS:
        workers.append(WorkerSpec(name="scheduler", kind="scheduler", critical=True))
    for kind_topics in _MODULE_DEFAULTS:
        kind, subscribe, declared = kind_topics
        if kind in WORKER_KINDS:
            for t in declared:
                if t not in [x.name for x in topics]:
                    topics.append(TopicSpec(name=t))
            workers.append(WorkerSpec(name=kind if kind != "accelerator" else "accel-0", kind=kind, subscribe=subscribe))
    cfg = TopologyConfig(fabric=FabricSpec(name=name), topics=topics, workers=workers)
    validate_topology(cfg, source="<default topology>")
    return cfg


# (kind, topics it subscribes to, topics it declares) for the C-LOGIC and accelerator workers.
_MODULE_DEFAULTS: list[tuple[str, list[str], list[str]]] = [
    ("drpp", ["sensor", "ems.modulation"], ["sensor", "drpp.patterns", "ems.modulation", "egc.decisions"]),
    ("adp", ["adp.input", "drpp.patterns", "accel.results", "ems.modulation", "egc.decisions"],
     ["adp.input", "adp.metrics", "accel.work", "accel.results", "work.results"]),
    ("egc", ["egc.input", "adp.metrics", "ems.modulation"], ["egc.input", "egc.decisions"]),
    ("ems", ["ems.input", "adp.metrics", "egc.decisions"], ["ems.input", "ems.modulation"]),
    ("accelerator", ["accel.work", "egc.decisions"], ["accel.work", "accel.results"]),
]
