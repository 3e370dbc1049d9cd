"""Large arrays between two processes: the blob arena (zero copy out) vs copying through a ring vs peers.

    .venv/bin/python -m bench.bench_arena [--quick]

Each case moves N arrays of 1 MiB and of 16 MiB from a producer process (core 0) to a
consumer process (core 1), which touches every array (reads its first and last element)
before taking the next. Prints one JSON line per case (arrays/s, GB/s, and the ratio to the
arena) and a table on stderr. Cases:

- ``arena``: the producer ``put``s the array once into the arena and sends the 8-byte
  reference through a ring; the consumer maps a read-only view (no copy) and releases it.
- ``ring_copy``: the array travels inside a PhasePacket through a ring (encode copies it in,
  decode copies it out).
- ``zmq``: pyzmq ipc:// PUSH/PULL, ``send(array, copy=False)`` / ``np.frombuffer(recv())``.
- ``pipe``: ``multiprocessing.Pipe`` ``send_bytes`` / ``recv_bytes``.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import secrets
import sys
import time

import numpy as np

SIZES = {"1MiB": 1 << 20, "16MiB": 16 << 20}


def _pin(core: int) -> None:
    try:
        os.sched_setaffinity(0, [core % os.cpu_count()])
    except OSError:
        pass


def _consume_ring(ring_name, arena_name, n, kind, ready, done):
    _pin(1)
    from fabric.arena import BlobArena
    from fabric.channel import PacketReader
    from fabric.ring import Ring

    ring = Ring.attach(ring_name)
    arena = BlobArena.attach(arena_name) if arena_name else None
    reader = ring.reader() if kind == "arena" else None  # an idle extra reader would gate the producer
    packets = PacketReader(ring.reader()) if kind == "ring_copy" else None
    ready.set()
    got = 0
    checksum = 0.0
    while got < n:
        if kind == "arena":
            data, _ = reader.receive(timeout_ns=30_000_000_000)
            ref = int.from_bytes(data, "little")
            v = arena.view(ref)
            checksum += float(v[0]) + float(v[-1])
            del v
            arena.release(ref, inbox=0)
        else:
            p = packets.receive(timeout_ns=30_000_000_000)
            checksum += float(p.payload[0]) + float(p.payload[-1])
        got += 1
    done.put(checksum)
    if reader:
        reader.close()
    if packets:
        packets.close()
    if arena:
        arena.close()
    ring.close()


def _run_fabric_case(kind: str, nbytes: int, n: int) -> float:
    from fabric.arena import BlobArena
    from fabric.channel import PacketWriter
    from fabric.errors import CapacityError
    from fabric.packet import PhasePacket
    from fabric.ring import Ring, RingConfig

    _pin(0)
    tag = secrets.token_hex(3)
    cap = 1 << max(20, (3 * nbytes).bit_length())
    ring = Ring.create(f"cfb-{tag}-ring", RingConfig(capacity_bytes=cap, max_record_bytes=nbytes + (1 << 16)))
    arena = BlobArena.create(f"cfb-{tag}-arena", 4 * nbytes + (1 << 20), slots=16) if kind == "arena" else None
    ctx = mp.get_context("spawn")
    ready, done = ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=_consume_ring, args=(ring.name, arena.segment.name if arena else None, n, kind, ready, done))
    proc.start()
    try:
        ready.wait(60)
        time.sleep(0.2)  # the consumer's reader has joined
        arr = np.arange(nbytes // 8, dtype=np.float64)
        writer = ring.writer()
        pw = PacketWriter(ring.writer()) if kind == "ring_copy" else None
        t0 = time.perf_counter()
        for i in range(n):
            if kind == "arena":
                while True:
                    try:
                        ref = arena.put(arr, owner=1)
                        break
                    except CapacityError:  # no room yet: the consumer has not released
                        time.sleep(0.0001)
                # What the router does per delivery, by hand (no router here): the consumer's reader
                # stands for inbox 0, so give it the hold and drop the in-flight one before it can see it.
                from fabric import _ring_kernels as K
                from shm_layouts.arena import B_HOLDERS, IN_FLIGHT

                K.add_word(arena._slot_addr((ref & 0xFFFFF) - 1) + B_HOLDERS * 8, 1 - IN_FLIGHT)
                writer.send(ref.to_bytes(8, "little"), timeout_ns=30_000_000_000)
            else:
                pw.send(PhasePacket(topic="bulk", id=i, payload=arr), timeout_ns=30_000_000_000)
        done.get(timeout=120)
        elapsed = time.perf_counter() - t0
        writer.close()
        if pw:
            pw.close()
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.kill()
        ring.destroy()
        if arena:
            arena.destroy()
    return elapsed


def _consume_zmq(addr, n, ready, done):
    _pin(1)
    import zmq

    ctx = zmq.Context()
    s = ctx.socket(zmq.PULL)
    s.connect(addr)
    ready.set()
    checksum = 0.0
    for _ in range(n):
        a = np.frombuffer(s.recv(copy=False).buffer, dtype=np.float64)
        checksum += float(a[0]) + float(a[-1])
    done.put(checksum)
    s.close(0)
    ctx.term()


def _run_zmq(nbytes: int, n: int) -> float:
    import zmq

    _pin(0)
    path = f"/tmp/cfb-{secrets.token_hex(3)}.ipc"
    ctx = zmq.Context()
    s = ctx.socket(zmq.PUSH)
    s.bind(f"ipc://{path}")
    mpctx = mp.get_context("spawn")
    ready, done = mpctx.Event(), mpctx.Queue()
    proc = mpctx.Process(target=_consume_zmq, args=(f"ipc://{path}", n, ready, done))
    proc.start()
    try:
        ready.wait(60)
        time.sleep(0.2)
        arr = np.arange(nbytes // 8, dtype=np.float64)
        t0 = time.perf_counter()
        for _ in range(n):
            s.send(arr, copy=False)
        done.get(timeout=120)
        return time.perf_counter() - t0
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.kill()
        s.close(0)
        ctx.term()
        if os.path.exists(path):
            os.unlink(path)


def _consume_pipe(conn, n, done):
    _pin(1)
    checksum = 0.0
    for _ in range(n):
        a = np.frombuffer(conn.recv_bytes(), dtype=np.float64)
        checksum += float(a[0]) + float(a[-1])
    done.put(checksum)


def _run_pipe(nbytes: int, n: int) -> float:
    _pin(0)
    ctx = mp.get_context("spawn")
    a, b = ctx.Pipe()
    done = ctx.Queue()
    proc = ctx.Process(target=_consume_pipe, args=(b, n, done))
    proc.start()
    try:
        arr = np.arange(nbytes // 8, dtype=np.float64)
        t0 = time.perf_counter()
        for _ in range(n):
            a.send_bytes(arr)
        done.get(timeout=120)
        return time.perf_counter() - t0
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.kill()


def main(argv: list[str] | None = None) -> int:
    quick = "--quick" in (argv if argv is not None else sys.argv[1:])
    rows = []
    for label, nbytes in SIZES.items():
        n = 5 if quick else (400 if nbytes < (4 << 20) else 40)
        results = {}
        for kind in ("arena", "ring_copy", "zmq", "pipe"):
            try:
                if kind in ("arena", "ring_copy"):
                    elapsed = _run_fabric_case(kind, nbytes, n)
                elif kind == "zmq":
                    elapsed = _run_zmq(nbytes, n)
                else:
                    elapsed = _run_pipe(nbytes, n)
            except ImportError as exc:
                print(json.dumps({"bench": "arena", "case": f"{kind}/{label}", "skipped": str(exc)}))
                continue
            results[kind] = n / elapsed
        for kind, rate in results.items():
            line = {
                "bench": "arena",
                "case": f"{kind}/{label}",
                "array_bytes": nbytes,
                "n": n,
                "arrays_per_s": round(rate, 1),
                "gb_per_s": round(rate * nbytes / 1e9, 3),
                "arena_speedup": round(results.get("arena", 0) / rate, 2) if rate else None,
            }
            rows.append(line)
            print(json.dumps(line), flush=True)
    print(f"\n{'case':<18} {'arrays/s':>10} {'GB/s':>8} {'arena is x faster':>18}", file=sys.stderr)
    for r in rows:
        print(f"{r['case']:<18} {r['arrays_per_s']:>10,.1f} {r['gb_per_s']:>8.2f} {r['arena_speedup']:>18}", file=sys.stderr)
    if quick:
        print("QUICK RUN: tiny N, not measurements", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
