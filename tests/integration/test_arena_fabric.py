"""Zero-copy large arrays through a running fabric: holds per inbox, release on death."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fabric
from fabric.config import default_topology
from fabric.supervisor import Supervisor
from fabric.timesource import get_time_source


@pytest.fixture
def running(prefix):
    name = prefix.replace("cft-", "ta")
    sup = Supervisor(default_topology(name))
    sup.start()
    try:
        yield sup, name
    finally:
        sup.shutdown()


def _wait(pred, sup, timeout_ns=10_000_000_000):
    clock = get_time_source()
    end = clock.monotonic_ns() + timeout_ns
    while not pred():
        sup.tick()
        assert clock.monotonic_ns() < end, "condition not met before the deadline"
        import time

        time.sleep(0.01)


def test_two_subscribers_read_the_same_memory_and_the_last_release_frees_it(running):
    sup, name = running
    with fabric.attach(name) as c:
        s1, s2 = c.subscribe("demo"), c.subscribe("demo")
        arr = np.random.default_rng(1).random((512, 512))
        c.publisher("demo").publish_array(arr, {"frame": 1})
        p1 = s1.receive(timeout_ns=5_000_000_000)
        p2 = s2.receive(timeout_ns=5_000_000_000)
        v1, v2 = s1.view(p1), s2.view(p2)
        assert p1.payload == {"frame": 1}
        assert np.array_equal(v1, arr) and np.shares_memory(v1, v2)
        del v1, v2
        s1.release(p1)
        assert c.arena.statistics().blobs == 1
        s2.release(p2)
        assert c.arena.statistics().blobs == 0


def test_a_blob_nobody_subscribed_to_is_freed_by_the_router(running):
    sup, name = running
    with fabric.attach(name) as c:
        c.publisher("demo").publish_array(np.zeros(1 << 16))
        _wait(lambda: c.arena.statistics().blobs == 0, sup)


def test_a_subscriber_that_dies_holding_a_blob_releases_it(running):
    sup, name = running
    code = textwrap.dedent(
        f"""
        import sys, time, fabric
        c = fabric.attach({name!r})
        s = c.subscribe("demo")
        print("ready", flush=True)
        p = s.receive(timeout_ns=10_000_000_000)
        v = s.view(p)
        print("holding", flush=True)
        time.sleep(60)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        with fabric.attach(name) as c:
            c.publisher("demo").publish_array(np.ones(1 << 16))
            assert child.stdout.readline().strip() == "holding"
            assert c.arena.statistics().blobs == 1
            child.kill()
            child.wait(timeout=10)
            _wait(lambda: c.arena.statistics().blobs == 0, sup)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=10)
        child.stdout.close()


def test_a_worker_that_receives_blobs_drops_its_holds(running):
    """Workers never read blobs: the holds the router took for their inboxes are dropped as the
    packets arrive, so arrays published to a worker's topic do not fill the arena."""
    sup, name = running
    topic = next(w.subscribe[0] for w in sup.config.workers if w.kind == "egc")
    with fabric.attach(name) as c:
        pub = c.publisher(topic)
        for i in range(5):
            pub.publish_array(np.zeros(50_000), {"frame": i})
        _wait(lambda: c.arena.statistics().blobs == 0, sup)
        stats = c.arena.statistics()
        assert stats.allocations == 5 and stats.frees == 5 and stats.bytes_in_use == 0
