"""Wait strategies: their phases, parking on a ring's doorbell, wake-ups across threads and processes.

No test here asserts how fast anything is. The idle-CPU check is a resource check: a parked
reader must leave the core to others (2 cores on this machine), measured from the child's
own CPU time over half a second of idling.
"""

from __future__ import annotations

import json
import threading
import time

import psutil
import pytest

from fabric._ring_kernels import read_word
from fabric.ring import Ring, RingConfig
from fabric.wait import (
    AdaptiveWait,
    BlockWait,
    BusySpinWait,
    YieldWait,
    default_wait_strategy,
    wait_strategy_from_name,
)
from shm_layouts.ring import WAKE_DOORBELL, WAKE_OFFSET
from tests._fabric_procs import spawn_module, stop_all, wait_until

STRATEGIES = ["spin", "yield", "block", "adaptive"]
PARKING = ["block", "adaptive"]


class FakeParker:
    def __init__(self) -> None:
        self.parks: list[int] = []

    def park(self, timeout_ns: int) -> None:
        self.parks.append(timeout_ns)


def doorbell(ring: Ring) -> int:
    return read_word(ring.segment.address + WAKE_OFFSET + WAKE_DOORBELL * 8)


@pytest.fixture
def ring(prefix):
    with Ring.create(f"{prefix}-wait", RingConfig(capacity_bytes=1 << 16)) as r:
        yield r


class TestStrategyPhases:
    def test_spin_and_yield_never_park(self):
        for strategy in (BusySpinWait(), YieldWait()):
            parker = FakeParker()
            strategy.reset()
            for _ in range(100):
                strategy.idle(parker)
            assert parker.parks == []

    def test_block_parks_at_once_capped_by_the_callers_limit(self):
        parker = FakeParker()
        wait = BlockWait(park_timeout_ns=30_000_000)
        wait.idle(parker)
        wait.idle(parker, max_park_ns=5_000_000)
        wait.idle(parker, max_park_ns=10**12)
        assert parker.parks == [10_000_000, 5_000_000, 30_000_000]
        wait.idle(None)  # nothing to park on: it yields instead of sleeping

    def test_adaptive_spins_then_yields_then_parks_and_reset_starts_over(self):
        parker = FakeParker()
        wait = AdaptiveWait(spin_checks=3, yield_checks=2, park_timeout_ns=7_000_000)
        for _ in range(5):
            wait.idle(parker)
        assert parker.parks == []
        wait.idle(parker)
        wait.idle(parker, max_park_ns=1_000)
        assert parker.parks == [7_000_000, 1_000]
        wait.reset()
        for _ in range(5):
            wait.idle(parker)
        assert len(parker.parks) == 2
        for _ in range(20):
            wait.idle(None)  # without a parker it never sleeps
        assert len(parker.parks) == 2

    def test_a_spinning_parker_gets_the_whole_spin_phase_in_one_call(self):
        """Adaptive: one compiled spin of the remaining checks, then yields, then parks."""

        class SpinningParker(FakeParker):
            def __init__(self) -> None:
                super().__init__()
                self.spins: list[int] = []

            def spin(self, checks: int) -> bool:
                self.spins.append(checks)
                return False

        parker = SpinningParker()
        wait = AdaptiveWait(spin_checks=100, yield_checks=2, park_timeout_ns=7_000_000)
        wait.idle(parker)
        assert parker.spins == [100] and parker.parks == []
        wait.idle(parker)
        wait.idle(parker)  # the two yields
        assert parker.spins == [100] and parker.parks == []
        wait.idle(parker)
        assert parker.parks == [7_000_000]
        wait.reset()
        wait.spun()  # the caller spun the phase itself (a ring's receive): yields come next
        wait.idle(parker)
        wait.idle(parker)
        wait.idle(parker)
        assert parker.spins == [100] and parker.parks == [7_000_000] * 2
        spin = BusySpinWait()
        for _ in range(3):
            spin.idle(parker)
        assert parker.spins == [100] + [spin.spin_checks] * 3 and len(parker.parks) == 2
        assert BlockWait.spin_checks == YieldWait.spin_checks == 0

    def test_strategies_by_name(self):
        kinds = {"spin": BusySpinWait, "yield": YieldWait, "block": BlockWait, "adaptive": AdaptiveWait}
        for name, cls in kinds.items():
            s = wait_strategy_from_name(name)
            assert type(s) is cls and s.name == name
        with pytest.raises(ValueError, match="unknown wait strategy"):
            wait_strategy_from_name("nap")
        a, b = default_wait_strategy(), default_wait_strategy()
        assert isinstance(a, AdaptiveWait) and a is not b  # per-waiter state: never shared


class TestWaitReadable:
    @pytest.mark.parametrize("name", STRATEGIES)
    def test_times_out_cleanly(self, ring, name):
        reader = ring.reader(wait=wait_strategy_from_name(name))
        writer = ring.writer()
        assert reader.wait_readable(timeout_ns=30_000_000) is False
        assert ring.statistics().waiters == 0  # nobody is left marked as sleeping
        with pytest.raises(TimeoutError):
            reader.receive(timeout_ns=10_000_000)
        writer.offer(b"after", 1)
        assert reader.wait_readable(timeout_ns=1_000_000_000) is True
        assert reader.receive(timeout_ns=1_000_000_000) == (b"after", 1)

    @pytest.mark.parametrize("name", STRATEGIES)
    def test_returns_at_once_when_a_record_is_there(self, ring, name):
        reader = ring.reader(wait=wait_strategy_from_name(name))
        ring.writer().offer(b"ready", 1)
        assert reader.wait_readable(timeout_ns=0) is True

    @pytest.mark.parametrize("name", STRATEGIES)
    def test_woken_by_a_producer_thread(self, ring, name):
        reader = ring.reader(wait=wait_strategy_from_name(name))
        writer = ring.writer()
        bell = doorbell(ring)
        errors: list[BaseException] = []

        def produce():
            try:
                if name in PARKING:
                    wait_until(lambda: ring.statistics().waiters >= 1, 10, "the reader to park")
                else:
                    time.sleep(0.05)
                writer.offer(b"wake", 3)
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

        t = threading.Thread(target=produce)
        t.start()
        try:
            assert reader.receive(timeout_ns=10_000_000_000) == (b"wake", 3)
        finally:
            t.join(timeout=15)
        assert not errors, errors
        if name in PARKING:
            assert doorbell(ring) > bell  # the producer rang the doorbell for the sleeper
        assert ring.statistics().waiters == 0


class TestAcrossProcesses:
    @pytest.mark.parametrize("name", PARKING)
    def test_a_parked_reader_idles_without_cpu_and_is_woken_by_another_process(self, ring, name):
        writer = ring.writer()
        children = []
        try:
            child = spawn_module("tests._ring_peers", "parked_reader", ring.name, json.dumps({"wait": name, "timeout_s": 30}))
            children.append(child)
            child.wait_line("READY", 30)
            wait_until(lambda: ring.statistics().waiters >= 1, 20, "the child reader to park")
            proc = psutil.Process(child.pid)
            before = proc.cpu_times()
            time.sleep(0.5)
            after = proc.cpu_times()
            used = (after.user - before.user) + (after.system - before.system)
            assert used < 0.1, f"a parked {name} reader used {used:.3f} s of CPU in 0.5 s of idling"
            # Parks are bounded (50 ms here): between two, for some tens of microseconds, the
            # reader is not counted. It must be counted again, not at one sampled instant.
            wait_until(lambda: ring.statistics().waiters >= 1, 5, "the child reader to park again")
            writer.offer(b"\x01\x02wake", 4)
            assert child.wait_line("GOT", 20) == "0102" + b"wake".hex() + " 4"
            child.result(10)
            assert child.wait(10) == 0
        finally:
            stop_all(children)

    @pytest.mark.parametrize("name", PARKING)
    def test_a_parked_reader_is_woken_by_a_producer_process(self, ring, name):
        reader = ring.reader(wait=wait_strategy_from_name(name))
        children = []
        try:
            child = spawn_module("tests._ring_peers", "producer_after_park", ring.name, json.dumps({"payload_hex": "beef"}))
            children.append(child)
            child.wait_line("READY", 30)
            assert reader.receive(timeout_ns=20_000_000_000) == (b"\xbe\xef", 5)
            result = child.result(10)
            assert result["parked"] >= 1  # it offered while we slept
            assert child.wait(10) == 0
        finally:
            stop_all(children)
