"""Child process for the cross-process atomics tests: ``python -m tests._atomic_worker <segment> <mode> <n> <procs>``.

Attaches the TEST segment, meets the other workers at a start barrier (a fetch-add
counter in the segment, waited on with a deadline), then runs one compiled loop of
``n`` increments of the int64 cell at ``CELL_OFFSET``:

- ``fetch_add`` — one atomic fetch-add per increment;
- ``cas`` — load, then compare-and-swap ``v -> v + 1`` until it succeeds;
- ``plain`` — a load then a separate store of ``v + 1``. Each access is an (acquire /
  release) atomic *access* so the compiler keeps one load and one store per iteration
  (plain ``mov``s on x86-64), but the increment as a whole is not atomic: concurrent
  increments can be lost. A spin-loop hint between the two (as "some work" would) widens
  the window. The test uses it to show the shared counter really is shared and really is
  raced on.
"""

from __future__ import annotations

import sys
import time

from fabric._atomics import compare_exchange_at, cpu_pause, fetch_add_at, load_acquire_at, store_release_at
from fabric._jit import jit

CELL_OFFSET = 256  # its own cache line pair, after the 128-byte segment header
BARRIER_OFFSET = 512


@jit("void(int64, int64)")
def fetch_add_loop(addr, n):
    for _ in range(n):
        fetch_add_at(addr, 1)


@jit("void(int64, int64)")
def cas_loop(addr, n):
    for _ in range(n):
        while True:
            v = load_acquire_at(addr)
            if compare_exchange_at(addr, v, v + 1) == v:
                break


@jit("void(int64, int64)")
def plain_loop(addr, n):
    for _ in range(n):
        v = load_acquire_at(addr)
        cpu_pause()
        store_release_at(addr, v + 1)


LOOPS = {"fetch_add": fetch_add_loop, "cas": cas_loop, "plain": plain_loop}


def main(argv: list[str]) -> int:
    from fabric._ring_kernels import add_word, read_word
    from fabric.segment import Segment
    from shm_layouts.header import SegmentKind

    name, mode, n, procs = argv[0], argv[1], int(argv[2]), int(argv[3])
    loop = LOOPS[mode]
    seg = Segment.attach(name, SegmentKind.TEST)
    try:
        add_word(seg.address + BARRIER_OFFSET, 1)
        deadline = time.monotonic() + 30.0
        while read_word(seg.address + BARRIER_OFFSET) < procs:
            if time.monotonic() > deadline:
                print("BARRIER-TIMEOUT", flush=True)
                return 2
        loop(seg.address + CELL_OFFSET, n)
        print("RESULT {}", flush=True)
    finally:
        seg.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
