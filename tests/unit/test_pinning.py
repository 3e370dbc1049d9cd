"""The pinning plan: explicit cpus honoured, critical workers first from the highest core, stated sharing."""

from __future__ import annotations

import os

import pytest

import workers
from fabric.config import FabricSpec, TopologyConfig, WorkerSpec, default_topology
from fabric.errors import ConfigError
from fabric.pinning import (
    PinPlan,
    available_cpus,
    cpus_to_mask,
    isolated_cpus,
    mask_to_cpus,
    plan_pinning,
)


def _topo(*specs: WorkerSpec) -> TopologyConfig:
    # The planner reads names, cpus and the critical flag only; kinds are not validated here.
    return TopologyConfig(fabric=FabricSpec(name="pin"), workers=list(specs))


def W(name: str, *, critical: bool = False, cpus: list[int] | None = None) -> WorkerSpec:  # noqa: N802
    return WorkerSpec(name=name, kind="router", critical=critical, cpus=cpus)


def test_the_docstring_example_two_cores_seven_workers(monkeypatch):
    monkeypatch.setattr(workers, "WORKER_KINDS", dict(workers._ALL_KINDS))
    cfg = default_topology("pin")
    plan = plan_pinning(cfg, [0, 1])
    assert plan.cpus["router"] == [1]  # the highest core: core 0 takes interrupts and the supervisor
    assert plan.cpus["scheduler"] == [0]
    for name in ("drpp", "adp", "egc", "ems", "accel-0"):
        assert plan.cpus[name] == [0, 1]
    assert set(plan.cpus) == {w.name for w in cfg.workers}
    assert any("5 workers (drpp, adp, egc, ems, accel-0) share cores [0, 1] with the critical workers" in n
               and "2 cores for 7 workers" in n for n in plan.notes), plan.notes
    assert any("7 workers on 2 cores" in n for n in plan.notes), plan.notes


def test_critical_workers_take_cores_from_the_highest_down():
    plan = plan_pinning(_topo(W("a", critical=True), W("b", critical=True), W("c"), W("d")), [0, 1, 2, 3])
    assert plan.cpus == {"a": [3], "b": [2], "c": [0, 1], "d": [0, 1]}
    assert plan.notes == []  # four workers on four cores, two sharing two cores: nothing to explain


def test_critical_order_follows_the_topology_order():
    plan = plan_pinning(_topo(W("x"), W("late", critical=True), W("early", critical=True)), [0, 1, 2])
    assert plan.cpus["late"] == [2] and plan.cpus["early"] == [1] and plan.cpus["x"] == [0]


def test_explicit_cpus_are_honoured_sorted_and_kept_out_of_the_automatic_plan():
    plan = plan_pinning(_topo(W("fixed", cpus=[3, 2]), W("crit", critical=True), W("rest")), [0, 1, 2, 3])
    assert plan.cpus["fixed"] == [2, 3]
    assert plan.cpus["crit"] == [1]  # the highest core nobody pinned explicitly
    assert plan.cpus["rest"] == [0, 2, 3]  # everything no critical worker holds alone


def test_explicit_cpus_win_even_for_critical_workers():
    plan = plan_pinning(_topo(W("router", critical=True, cpus=[0]), W("sched", critical=True)), [0, 1])
    assert plan.cpus == {"router": [0], "sched": [1]}


def test_explicit_cpus_may_overlap():
    plan = plan_pinning(_topo(W("a", cpus=[1]), W("b", cpus=[1])), [0, 1])
    assert plan.cpus == {"a": [1], "b": [1]}


@pytest.mark.parametrize("cpus,missing", [([7], [7]), ([1, 5, 9], [5, 9]), ([2], [2])])
def test_cpus_that_do_not_exist_are_a_config_error(cpus, missing):
    with pytest.raises(ConfigError) as info:
        plan_pinning(_topo(W("router", cpus=cpus)), [0, 1])
    msg = str(info.value)
    assert f"worker 'router': cpus {missing} are not available here (available: [0, 1])" == msg


def test_cpus_outside_this_process_affinity_are_refused():
    here = available_cpus()
    absent = max(here) + 1
    with pytest.raises(ConfigError, match=rf"cpus \[{absent}\] are not available here"):
        plan_pinning(_topo(W("router", cpus=[absent])))


def test_more_critical_workers_than_cores_share_all_cores_with_a_note():
    plan = plan_pinning(_topo(W("a", critical=True), W("b", critical=True), W("c", critical=True)), [0, 1])
    assert plan.cpus == {"a": [1], "b": [0], "c": [0, 1]}
    assert any("critical worker 'c' shares all cores [0, 1]" in n for n in plan.notes), plan.notes
    assert any("3 workers on 2 cores" in n for n in plan.notes), plan.notes


def test_when_critical_workers_hold_every_core_the_rest_share_all_of_them():
    plan = plan_pinning(_topo(W("a", critical=True), W("b", critical=True), W("c"), W("d")), [0, 1])
    assert plan.cpus["c"] == plan.cpus["d"] == [0, 1]
    assert any("2 workers (c, d) share cores [0, 1] with the critical workers: there are 2 cores for 4 workers" in n
               for n in plan.notes), plan.notes


def test_more_sharing_workers_than_shared_cores_is_stated():
    plan = plan_pinning(_topo(W("crit", critical=True), W("c"), W("d"), W("e")), [0, 1, 2])
    assert plan.cpus["crit"] == [2]
    assert plan.cpus["c"] == plan.cpus["d"] == plan.cpus["e"] == [0, 1]
    assert "3 workers (c, d, e) share cores [0, 1]" in plan.notes
    assert any("4 workers on 3 cores" in n for n in plan.notes)


def test_one_core_everyone_shares_it():
    plan = plan_pinning(_topo(W("r", critical=True), W("s")), [0])
    assert plan.cpus == {"r": [0], "s": [0]}
    assert any("2 workers on 1 cores" in n or "2 workers on 1 core" in n for n in plan.notes), plan.notes


def test_no_notes_when_nothing_is_shared():
    plan = plan_pinning(_topo(W("a", critical=True), W("b")), [0, 1, 2, 3])
    assert plan.cpus == {"a": [3], "b": [0, 1, 2]}
    assert plan.notes == []


def test_cores_are_taken_from_the_given_list_not_assumed_contiguous():
    plan = plan_pinning(_topo(W("a", critical=True), W("b")), [5, 2, 9])
    assert plan.cpus == {"a": [9], "b": [2, 5]}


def test_default_cores_are_this_process_affinity():
    here = available_cpus()
    assert here == sorted(os.sched_getaffinity(0))
    plan = plan_pinning(_topo(W("router", critical=True), W("x")))
    assert plan.cpus["router"] == [here[-1]]
    assert set(plan.cpus["x"]) <= set(here)


def test_plan_is_plain_data():
    plan = plan_pinning(_topo(W("router", critical=True)), [0, 1])
    assert isinstance(plan, PinPlan)
    with pytest.raises(AttributeError):
        plan.cpus = {}  # frozen


@pytest.mark.parametrize("cpus", [[], [0], [1, 3], [0, 63], list(range(64))])
def test_mask_round_trip(cpus):
    assert mask_to_cpus(cpus_to_mask(cpus)) == sorted(cpus)


def test_mask_values():
    assert cpus_to_mask([0, 1]) == 3 and cpus_to_mask([2]) == 4 and mask_to_cpus(0b1010) == [1, 3]


def test_isolated_cpus_reads_the_kernel_list():
    iso = isolated_cpus()
    assert all(isinstance(c, int) and c >= 0 for c in iso)
