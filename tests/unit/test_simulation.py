"""Deterministic simulation: the same seed replays the same trace; faults are seeded too."""

from __future__ import annotations

import pytest

from fabric.simulation import FaultPlan, Simulation, simulate
from fabric.timesource import MonotonicTimeSource, get_time_source

STEPS = 6_000


def test_the_same_seed_gives_the_same_trace_hash_twice():
    a = simulate(7, STEPS)
    b = simulate(7, STEPS)
    assert a.trace_hash == b.trace_hash
    assert a.published == b.published and a.delivered == b.delivered
    assert a.published > 0 and a.delivered > 0


def test_different_seeds_give_different_traces():
    hashes = {simulate(seed, STEPS).trace_hash for seed in (1, 2, 3)}
    assert len(hashes) == 3


def test_faults_are_injected_and_counted_and_the_run_still_delivers():
    r = simulate(11, STEPS, faults=FaultPlan(delay=0.01, crash=0.002, dropped_wakeup=0.02))
    assert r.faults["crash"] > 0 and r.faults["delay"] > 0
    assert r.delivered > 0
    assert r.counters["scheduler"][2] > 0, "time jumps must produce deadline misses"


def test_without_faults_every_routed_packet_reaches_its_subscribers_exactly_once():
    with Simulation(5, faults=FaultPlan(delay=0.0, crash=0.0, dropped_wakeup=0.0)) as sim:
        seen: dict[int, list[int]] = {}
        record = sim.record

        def spy(subscriber, pkt):
            seen.setdefault(subscriber, []).append(pkt.id)
            record(subscriber, pkt)

        sim.record = spy
        sim.run(STEPS)
    for ids in seen.values():
        assert len(ids) == len(set(ids)), "a packet was delivered twice to one subscriber"


def test_the_simulator_restores_the_process_time_source():
    before = get_time_source()
    simulate(3, 500)
    assert get_time_source() is before or isinstance(get_time_source(), MonotonicTimeSource)


@pytest.mark.parametrize("steps", [0, 1])
def test_tiny_runs_work(steps):
    assert simulate(9, steps).steps == steps
