"""Topology config: decoding (msgspec), validation rules (each names its field), the default topology."""

from __future__ import annotations

import copy

import msgspec
import pytest

import workers
from fabric.config import (
    DEMO_TOPIC,
    FabricSpec,
    TopologyConfig,
    WorkerSpec,
    default_topology,
    load_config,
    parse_config,
    validate_topology,
)
from fabric.errors import ConfigError, FabricError
from shm_layouts.control import MAX_TOPICS, MAX_WORKERS

ROUTER = {"name": "router", "kind": "router"}
MINIMAL = {"topics": [{"name": "demo"}], "workers": [ROUTER]}


def _with(base: dict, **sections) -> dict:
    data = copy.deepcopy(base)
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key].update(value)
        else:
            data[key] = value
    return data


def _fails(data: dict, field: str, reason: str, source: str = "<config>") -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data, source=source)
    msg = str(info.value)
    assert msg.startswith(f"{source}: {field}: "), msg
    assert reason in msg, msg
    return msg


# --- decoding ----------------------------------------------------------------------------------


def test_minimal_topology_gets_every_default():
    cfg = parse_config(MINIMAL)
    f = cfg.fabric
    assert f == FabricSpec()
    assert f.name == "chronofabric" and f.inbox_pool == 16 and f.wait_strategy == "adaptive"
    assert f.ingress_capacity_bytes == 1 << 22 and f.inbox_capacity_bytes == 1 << 20
    assert f.restart_backoff_ms == (100, 5000) and f.hung_timeout_ms >= 4 * f.heartbeat_interval_ms
    (w,) = cfg.workers
    assert w == WorkerSpec(name="router", kind="router")
    assert w.cpus is None and w.critical is False and w.subscribe == [] and w.options == {} and w.restart is True
    assert cfg.topic_names() == ["demo"]
    assert cfg.worker("router") is w
    with pytest.raises(KeyError):
        cfg.worker("nobody")


def test_every_field_round_trips_through_json():
    data = {
        "fabric": {"name": "lab-1", "inbox_pool": 8, "wait_strategy": "block", "restart_backoff_ms": [10, 20],
                   "realtime_priority": 10, "ingress_capacity_bytes": 1 << 20, "inbox_capacity_bytes": 1 << 18,
                   "max_record_bytes": 1024},
        "topics": [{"name": "sensor.imu", "description": "IMU"}, {"name": "x_y-z.9"}],
        "workers": [{"name": "router", "kind": "router", "cpus": [1, 0], "critical": True, "subscribe": [],
                     "options": {"batch": 64}, "restart": False}],
    }
    cfg = parse_config(data)
    assert cfg.fabric.restart_backoff_ms == (10, 20)
    assert cfg.workers[0].cpus == [1, 0] and cfg.workers[0].options == {"batch": 64}
    again = msgspec.json.decode(msgspec.json.encode(cfg), type=TopologyConfig)
    assert again == cfg


@pytest.mark.parametrize(
    "data,field,reason",
    [
        (_with(MINIMAL, workers=[{"name": "router", "kind": "router", "cpus": ["1"]}]), "workers[0].cpus[0]",
         "Expected `int`, got `str`"),
        (_with(MINIMAL, fabric={"inbox_pool": "many"}), "fabric.inbox_pool", "Expected `int`, got `str`"),
        (_with(MINIMAL, fabric={"restart_backoff_ms": [1, 2, 3]}), "fabric.restart_backoff_ms",
         "Expected `array` of length 2"),
        (_with(MINIMAL, workers=[{"name": "router"}]), "workers[0]", "missing required field `kind`"),
        (_with(MINIMAL, topics=[{"name": "demo", "colour": "red"}]), "topics[0]", "unknown field `colour`"),
        (_with(MINIMAL, fabric={"nmae": "x"}), "fabric", "unknown field `nmae`"),
        (_with(MINIMAL, workers={"name": "router"}), "workers", "Expected `array`, got `object`"),
    ],
    ids=["cpu-str", "pool-str", "backoff-len", "kind-missing", "topic-unknown-field", "fabric-unknown-field",
         "workers-not-list"],
)
def test_decoding_errors_lead_with_the_field(data, field, reason):
    msg = _fails(data, field, reason, source="topology.toml")
    assert " - at `" not in msg  # the path moved to the front, not repeated at the end


def test_unknown_top_level_key_is_named():
    with pytest.raises(ConfigError) as info:
        parse_config(_with(MINIMAL, extra=1), source="topology.toml")
    assert str(info.value) == "topology.toml: Object contains unknown field `extra`"


def test_config_error_is_a_value_error_and_a_fabric_error():
    with pytest.raises(ValueError):
        parse_config(_with(MINIMAL, fabric={"inbox_pool": 0}))
    with pytest.raises(FabricError):
        parse_config(_with(MINIMAL, fabric={"inbox_pool": 0}))


# --- validation rules ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fabric,field,reason",
    [
        ({"name": ""}, "fabric.name", "must be 1-31 letters"),
        ({"name": "a" * 32}, "fabric.name", "must be 1-31 letters"),
        ({"name": "has space"}, "fabric.name", "must be 1-31 letters"),
        ({"name": "-lead"}, "fabric.name", "must be 1-31 letters"),
        ({"name": "a/b"}, "fabric.name", "must be 1-31 letters"),
        ({"name": "dot.ted"}, "fabric.name", "must be 1-31 letters"),
        ({"ingress_capacity_bytes": 100_000}, "fabric.ingress_capacity_bytes", "power of two >= 65536, got 100000"),
        ({"inbox_capacity_bytes": 32768}, "fabric.inbox_capacity_bytes", "power of two >= 65536, got 32768"),
        ({"inbox_pool": 0}, "fabric.inbox_pool", "must be in 1..48, got 0"),
        ({"inbox_pool": 49}, "fabric.inbox_pool", "must be in 1..48, got 49"),
        ({"max_record_bytes": 255}, "fabric.max_record_bytes", "must be >= 256"),
        ({"max_record_bytes": (1 << 20) // 4 + 8}, "fabric.max_record_bytes", "at most a quarter of the smallest ring"),
        ({"heartbeat_interval_ms": 0}, "fabric.hung_timeout_ms", "at least 4 heartbeat intervals"),
        ({"heartbeat_interval_ms": 100, "hung_timeout_ms": 399}, "fabric.hung_timeout_ms", "at least 4 heartbeat"),
        ({"restart_backoff_ms": [0, 10]}, "fabric.restart_backoff_ms", "0 < min <= max, got [0, 10]"),
        ({"restart_backoff_ms": [20, 10]}, "fabric.restart_backoff_ms", "0 < min <= max, got [20, 10]"),
        ({"wait_strategy": "nap"}, "fabric.wait_strategy", "spin, yield, block or adaptive, got 'nap'"),
        ({"realtime_priority": 100}, "fabric.realtime_priority", "SCHED_FIFO priority 1..99"),
        ({"realtime_priority": -1}, "fabric.realtime_priority", "SCHED_FIFO priority 1..99"),
    ],
)
def test_fabric_rules(fabric, field, reason):
    _fails(_with(MINIMAL, fabric=fabric), field, reason)


@pytest.mark.parametrize(
    "fabric",
    [
        {"name": "a"}, {"name": "A" * 31}, {"name": "x_y-Z9"}, {"ingress_capacity_bytes": 65536, "inbox_capacity_bytes": 65536,
                                                                  "max_record_bytes": 16384},
        {"inbox_pool": 1, "name": "one"}, {"inbox_pool": 48}, {"max_record_bytes": 256},
        {"heartbeat_interval_ms": 100, "hung_timeout_ms": 400}, {"restart_backoff_ms": [5, 5]},
        {"wait_strategy": "spin"}, {"wait_strategy": "yield"}, {"wait_strategy": "block"}, {"realtime_priority": 99},
    ],
)
def test_fabric_rules_accept_the_edges(fabric):
    assert parse_config(_with(MINIMAL, fabric=fabric)).fabric.name == fabric.get("name", "chronofabric")


@pytest.mark.parametrize(
    "topics,field,reason",
    [
        ([{"name": ""}], "topics[0].name", "must be 1-63 letters"),
        ([{"name": "demo"}, {"name": "bad topic"}], "topics[1].name", "must be 1-63 letters"),
        ([{"name": ".dot"}], "topics[0].name", "must be 1-63 letters"),
        ([{"name": "t" * 64}], "topics[0].name", "must be 1-63 letters"),
        ([{"name": "demo"}, {"name": "demo"}], "topics[1].name", "topic 'demo' is declared twice"),
        ([{"name": f"t{i}"} for i in range(MAX_TOPICS + 1)], "topics", f"at most {MAX_TOPICS} topics"),
    ],
)
def test_topic_rules(topics, field, reason):
    _fails(_with(MINIMAL, topics=topics), field, reason)


def test_topic_miss_policy_rules():
    cfg = parse_config(_with(MINIMAL, topics=[{"name": "a", "miss_policy": "drop"}, {"name": "b", "miss_policy": "escalate"},
                                              {"name": "c"}, {"name": "d", "miss_policy": "degrade"}, {"name": "d.degraded"}]))
    assert [t.miss_policy for t in cfg.topics] == ["drop", "escalate", "late", "degrade", "late"]
    _fails(_with(MINIMAL, topics=[{"name": "a"}, {"name": "b", "miss_policy": "ignore"}]), "topics[1].miss_policy",
           "must be one of ['degrade', 'drop', 'escalate', 'late'], got 'ignore'")
    _fails(_with(MINIMAL, topics=[{"name": "a", "miss_policy": "degrade"}]), "topics[0].miss_policy",
           "'degrade' needs a topic 'a.degraded' declared")


def test_topic_limit_edge_and_names():
    cfg = parse_config(_with(MINIMAL, topics=[{"name": f"t{i}"} for i in range(MAX_TOPICS)]))
    assert len(cfg.topics) == MAX_TOPICS
    assert parse_config(_with(MINIMAL, topics=[{"name": "t" * 63}, {"name": "A.b_c-9"}])).topic_names() == ["t" * 63, "A.b_c-9"]


@pytest.mark.parametrize(
    "extra_workers,field,reason",
    [
        ([{"name": "bad name", "kind": "router"}], "workers[1].name", "must be 1-31 letters"),
        ([{"name": "router", "kind": "router"}], "workers[1].name", "worker 'router' is declared twice"),
        ([{"name": "w", "kind": "teleporter"}], "workers[1].kind", "unknown kind 'teleporter'; known kinds: ["),
        ([{"name": "w", "kind": "router", "cpus": []}], "workers[1].cpus", "non-empty list of core numbers 0..63, got []"),
        ([{"name": "w", "kind": "router", "cpus": [64]}], "workers[1].cpus", "core numbers 0..63, got [64]"),
        ([{"name": "w", "kind": "router", "cpus": [-1]}], "workers[1].cpus", "core numbers 0..63, got [-1]"),
        ([{"name": "w", "kind": "router", "subscribe": ["demo", "nope"]}], "workers[1].subscribe[1]",
         "topic 'nope' is not declared in [[topics]]"),
        ([{"name": "router2", "kind": "router"}], "workers", "exactly one worker of kind 'router', found 2"),
    ],
)
def test_worker_rules(extra_workers, field, reason):
    _fails(_with(MINIMAL, workers=[ROUTER, *extra_workers]), field, reason)


def test_unknown_kind_lists_the_known_ones():
    msg = _fails(_with(MINIMAL, workers=[ROUTER, {"name": "w", "kind": "nope"}]), "workers[1].kind", "unknown kind")
    for kind in workers.WORKER_KINDS:
        assert repr(kind) in msg


def test_a_topology_needs_its_router():
    _fails({"topics": [{"name": "demo"}], "workers": []}, "workers", "exactly one worker of kind 'router', found 0")
    other = next((k for k in workers.WORKER_KINDS if k != "router"), None)
    if other is not None:
        _fails({"workers": [{"name": "w", "kind": other}]}, "workers", "found 0")


def test_at_most_one_scheduler(monkeypatch):
    monkeypatch.setitem(workers.WORKER_KINDS, "scheduler", "workers.scheduler:SchedulerWorker")
    ok = _with(MINIMAL, workers=[ROUTER, {"name": "s1", "kind": "scheduler"}])
    parse_config(ok)
    _fails(_with(MINIMAL, workers=[ROUTER, {"name": "s1", "kind": "scheduler"}, {"name": "s2", "kind": "scheduler"}]),
           "workers", "at most one worker of kind 'scheduler'")


def test_worker_count_limit():
    many = [ROUTER] + [{"name": f"w{i}", "kind": "router"} for i in range(MAX_WORKERS)]
    _fails(_with(MINIMAL, workers=many), "workers", f"at most {MAX_WORKERS} workers")


def test_subscribing_workers_leave_inboxes_for_clients(monkeypatch):
    # Any existing kind name passes the kind check; a test-only one keeps this rule on its own.
    monkeypatch.setitem(workers.WORKER_KINDS, "probe", "workers.router:RouterWorker")
    two = [{"name": f"w{i}", "kind": "probe", "subscribe": ["demo"]} for i in range(2)]
    parse_config(_with(MINIMAL, fabric={"inbox_pool": 3}, workers=[ROUTER, *two]))
    _fails(_with(MINIMAL, fabric={"inbox_pool": 2}, workers=[ROUTER, *two]), "fabric.inbox_pool",
           "2 workers subscribe; the pool needs more inboxes than that for clients")
    # Workers that subscribe to nothing take no inbox.
    idle = [{"name": f"w{i}", "kind": "probe"} for i in range(5)]
    parse_config(_with(MINIMAL, fabric={"inbox_pool": 1}, workers=[ROUTER, *idle]))


def test_validate_topology_checks_structs_built_in_python():
    cfg = TopologyConfig(fabric=FabricSpec(name="x y"), workers=[WorkerSpec(name="router", kind="router")])
    with pytest.raises(ConfigError, match=r"^<mine>: fabric.name: 'x y' must be"):
        validate_topology(cfg, source="<mine>")


# --- files --------------------------------------------------------------------------------------


README_TOML = """
[fabric]
name = "lab"
inbox_pool = 8                 # inbox rings for subscribers (workers and clients)
wait_strategy = "adaptive"     # spin | yield | block | adaptive (default: parks when idle)

[[topics]]
name = "sensor.imu"

[[workers]]
name = "router"
kind = "router"
cpus = [1]                     # omitted: an automatic plan, critical workers first
critical = true
"""


def test_the_readme_example_loads(tmp_path):
    path = tmp_path / "topology.toml"
    path.write_text(README_TOML, encoding="utf-8")
    cfg = load_config(path)
    assert cfg.fabric.name == "lab" and cfg.fabric.inbox_pool == 8 and cfg.fabric.wait_strategy == "adaptive"
    assert cfg.topic_names() == ["sensor.imu"]
    assert cfg.workers == [WorkerSpec(name="router", kind="router", cpus=[1], critical=True)]


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"absent\.toml: no such file"):
        load_config(tmp_path / "absent.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[fabric\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad\.toml: not valid TOML"):
        load_config(bad)
    typed = tmp_path / "typed.toml"
    typed.write_text('[[workers]]\nname = "router"\nkind = "router"\ncpus = ["1"]\n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(typed)
    assert str(info.value) == f"{typed}: workers[0].cpus[0]: Expected `int`, got `str`"


# --- the embedded default topology ---------------------------------------------------------------


def test_default_topology_is_valid_and_has_the_router_and_demo():
    cfg = default_topology()
    validate_topology(cfg)
    assert cfg.fabric.name == "chronofabric"
    assert DEMO_TOPIC in cfg.topic_names()
    routers = [w for w in cfg.workers if w.kind == "router"]
    assert len(routers) == 1 and routers[0].critical and routers[0].name == "router"
    assert cfg.workers[0].kind == "router"  # row 0: the router's component id is 0


def test_default_topology_runs_every_kind_that_exists_once():
    cfg = default_topology("x")
    kinds = sorted(w.kind for w in cfg.workers)
    assert kinds == sorted(workers.WORKER_KINDS)
    names = [w.name for w in cfg.workers]
    assert len(set(names)) == len(names)
    declared = set(cfg.topic_names())
    for w in cfg.workers:
        assert set(w.subscribe) <= declared, w
    if "scheduler" in workers.WORKER_KINDS:
        assert cfg.worker("scheduler").critical
    if "accelerator" in workers.WORKER_KINDS:
        assert cfg.worker("accel-0").kind == "accelerator"
    critical = [w.name for w in cfg.workers if w.critical]
    assert set(critical) <= {"router", "scheduler"}


def test_default_topology_with_only_the_router(monkeypatch):
    monkeypatch.setattr(workers, "WORKER_KINDS", {"router": "workers.router:RouterWorker"})
    cfg = default_topology("solo")
    assert [w.name for w in cfg.workers] == ["router"] and cfg.topic_names() == [DEMO_TOPIC]


def test_default_topology_with_every_kind(monkeypatch):
    monkeypatch.setattr(workers, "WORKER_KINDS", dict(workers._ALL_KINDS))
    cfg = default_topology("full")
    assert [w.name for w in cfg.workers] == ["router", "scheduler", "drpp", "adp", "egc", "ems", "accel-0"]
    assert [w.critical for w in cfg.workers] == [True, True, False, False, False, False, False]
    subscribing = sum(1 for w in cfg.workers if w.subscribe)
    assert subscribing < cfg.fabric.inbox_pool
    # every topic a module subscribes to is declared exactly once
    assert len(cfg.topic_names()) == len(set(cfg.topic_names()))


def test_default_topology_name_is_validated():
    assert default_topology("lab-2").fabric.name == "lab-2"
    with pytest.raises(ConfigError, match=r"^<default topology>: fabric.name: 'bad name' must be"):
        default_topology("bad name")
    with pytest.raises(ConfigError, match="fabric.name"):
        default_topology("n" * 32)
