"""The shared HLC across processes: 4 producers stamp through one clock word in shared memory.

Two drivers: the Python handle (``SharedHybridClock.tick``, ~0.5 us a stamp, so CAS collisions
are rare) and ``tick_shared`` in a jitted tight loop (a few ns a stamp: the producers collide on
the CAS constantly and the logical counter carries, exercising the retry and carry paths).

Layout of the test segment (int64 cells)::

    byte 0     128              256                 512
    | header   | HLC region      | control           | results: producer k's stamps at
    |          | (16 cells)      | ready, go         | 512 + k * COUNT * 8
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from fabric._ring_kernels import publish_word, read_word
from fabric.hlc import HLC_REGION_BYTES, SharedHybridClock
from fabric.segment import Segment
from fabric.timesource import monotonic_ns
from shm_layouts.header import SEGMENT_HEADER_BYTES, SegmentKind

REPO_ROOT = Path(__file__).resolve().parents[2]
PRODUCERS = 4
COUNT = 20_000
CONTROL_OFFSET = SEGMENT_HEADER_BYTES + HLC_REGION_BYTES  # 256
READY_OFFSET = CONTROL_OFFSET
GO_OFFSET = CONTROL_OFFSET + 8
RESULTS_OFFSET = 512
START_TIMEOUT_NS = 60 * 10**9  # spawning 4 interpreters with numba on 2 shared cores
RUN_TIMEOUT_S = 60
JIT_COUNT = 500_000

PRODUCER = r"""
import sys
from fabric._ring_kernels import add_word, read_word
from fabric.hlc import SharedHybridClock
from fabric.segment import Segment
from fabric.timesource import monotonic_ns

name, index, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ready_off, go_off, results_off, mode = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), sys.argv[7]
if mode == "jit":
    import numba
    from fabric.hlc import tick_shared

    @numba.njit(cache=False)
    def run(addr, physical_ns, out):
        for i in range(out.shape[0]):
            out[i] = tick_shared(addr, physical_ns)

seg = Segment.attach(name)
try:
    clock = SharedHybridClock.attach(seg)
    if mode == "jit":
        import numpy as np

        run(clock.address, 0, np.zeros(0, dtype=np.int64))  # compile before reporting ready
    base = seg.address
    add_word(base + ready_off, 1)
    deadline = monotonic_ns() + 60 * 10**9
    while read_word(base + go_off) != 1:
        if monotonic_ns() > deadline:
            sys.exit("producer %d: no go signal within 60 s" % index)
    words = seg.words
    first = (results_off + index * count * 8) // 8
    if mode == "python":
        tick = clock.tick
        for i in range(first, first + count):
            words[i] = tick()
    else:
        run(clock.address, 0, words[first : first + count])  # physical time 0: every stamp from the counter
    del words
    clock.close()
finally:
    seg.close()
"""


def run_producers(prefix: str, mode: str, count: int) -> tuple[np.ndarray, object]:
    """Start PRODUCERS processes on one shared clock; returns their stamps and the clock's statistics."""
    name = f"{prefix}-shared-hlc"
    seg = Segment.create(name, RESULTS_OFFSET + PRODUCERS * count * 8, SegmentKind.TEST, mark_ready=False)
    procs: list[subprocess.Popen] = []
    try:
        owner_clock = SharedHybridClock.create(seg)
        seg.mark_ready()  # only now may producers attach: the clock region is initialised
        start = owner_clock.tick()
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    PRODUCER,
                    name,
                    str(k),
                    str(count),
                    str(READY_OFFSET),
                    str(GO_OFFSET),
                    str(RESULTS_OFFSET),
                    mode,
                ],
                cwd=REPO_ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for k in range(PRODUCERS)
        ]
        deadline = monotonic_ns() + START_TIMEOUT_NS
        while read_word(seg.address + READY_OFFSET) != PRODUCERS:
            dead = [p for p in procs if p.poll() is not None]
            assert not dead, f"a producer exited before it was ready: {dead[0].communicate()}"
            assert monotonic_ns() < deadline, "producers did not get ready in time"
        publish_word(seg.address + GO_OFFSET, 1)  # all start together: maximum contention
        for p in procs:
            out, err = p.communicate(timeout=RUN_TIMEOUT_S)
            assert p.returncode == 0, err[-3000:]

        words = seg.words
        first = RESULTS_OFFSET // 8
        stamps = words[first : first + PRODUCERS * count].reshape(PRODUCERS, count).copy()
        del words
        stats = owner_clock.statistics()
        owner_clock.close()
        assert stamps.min() > start
        return stamps, stats
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
        seg.destroy()


def assert_unique_and_increasing(stamps: np.ndarray) -> None:
    for k in range(stamps.shape[0]):
        assert np.all(np.diff(stamps[k]) > 0), f"producer {k}'s stamps are not strictly increasing"
    assert np.unique(stamps).size == stamps.size, "two producers were handed the same stamp"


def test_four_processes_stamping_20000_times_each_get_unique_increasing_stamps(prefix):
    stamps, stats = run_producers(prefix, "python", COUNT)
    assert_unique_and_increasing(stamps)
    assert stats.stamp == stamps.max()
    assert stats.rejections == 0


def test_producers_colliding_on_the_cas_in_tight_loops_still_get_unique_stamps(prefix):
    stamps, stats = run_producers(prefix, "jit", JIT_COUNT)
    assert_unique_and_increasing(stamps)
    assert stats.stamp == stamps.max()
    # Physical time 0 (behind the clock): 2M stamps from the counter overflow it at least 30 times.
    assert stats.logical_carries >= stamps.size // 65536
    # Collisions are what this test is for; on a machine with one core there may be none.
    print(f"CAS retries under contention: {stats.cas_retries}, logical carries: {stats.logical_carries}")
