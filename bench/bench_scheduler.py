"""Cost of deadline scheduling and HLC stamping, and the annealer's schedules against EDF.

    python -m bench.bench_scheduler [--quick]

Prints one JSON line per case to stdout (``{"bench": "scheduler", "case": ..., ...}``, the first
line being ``"case": "environment"``), then a table to stderr. Questions answered:

- scheduler_push_pop_b<B>_depth<D>: the cost of scheduling one packet (one push and one pop) in
  batches of B through ``DeadlineScheduler.push_batch``/``pop_batch`` with D entries resident
  (random deadlines and priorities, no shedding, no misses). Per batch: (push + pop time) / B;
  reported as p50/p99 over batches, and packets/s over the whole run. The brief's targets are
  p99 < 1 us per operation and > 1,000,000 operations/s.
- anneal_vs_edf_n<N>: on seeded overloaded single-machine task sets (N tasks, about 1.5x more
  work than fits before the deadlines, weights 1..10), total weighted tardiness and miss ratio of
  the EDF order and of ``fabric.oracle.optimize_schedule`` (simulated annealing from EDF), their
  ratio, and the optimiser's run time.
- hlc_*: ns per stamp for ``HybridLogicalClock.tick``/``update`` (in-process, lock + time read),
  ``SharedHybridClock.tick``/``update`` (Python handle: time read + one CAS kernel call), the raw
  ``tick_shared`` kernel called from Python with a fixed time, and ``tick_shared`` in a jitted
  loop (the CAS alone, uncontended). Reported as p50/p99 over rounds of calls.

Method: one process, unpinned (these are single-threaded loops, not cross-core messaging). Every
case runs untimed first (JIT compilation and cache loads are excluded). Time comes from
``fabric.timesource`` (the project's only clock reader); a reading costs ~0.1 us, negligible
against batches and rounds of 1,000 calls. The shared clock lives in a plain int64 array here:
the kernels see only an address, so the cost is the same as in a shared segment (uncontended).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import sys
from typing import Any

import numpy as np

from fabric._jit import jit
from fabric.deadline import DeadlineScheduler
from fabric.hlc import HLC_REGION_BYTES, HybridLogicalClock, SharedHybridClock, make_stamp, tick_shared
from fabric.oracle import optimize_schedule
from fabric.timesource import MonotonicTimeSource, monotonic_ns

__all__ = ["main"]

MS = 1_000_000


def _environment() -> dict[str, Any]:
    def version(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    uname = platform.uname()
    return {
        "host": uname.node,
        "kernel": f"{uname.system} {uname.release}",
        "machine": uname.machine,
        "cpus": os.cpu_count(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "versions": {d: version(d) for d in ("numpy", "numba", "msgspec", "chronofabric")},
    }


def _percentiles(per_op_ns: list[float]) -> dict[str, float]:
    arr = np.asarray(per_op_ns, dtype=np.float64)
    return {
        "p50_ns_per_op": round(float(np.percentile(arr, 50)), 1),
        "p90_ns_per_op": round(float(np.percentile(arr, 90)), 1),
        "p99_ns_per_op": round(float(np.percentile(arr, 99)), 1),
        "max_ns_per_op": round(float(arr.max()), 1),
    }


# ----------------------------------------------------------------------------- scheduler


def _case_push_pop(batch: int, depth: int, rounds: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    capacity = depth + 2 * batch
    sched = DeadlineScheduler(capacity, high_watermark=capacity, low_watermark=capacity - 1)
    horizon = 10 * MS
    pre = depth
    sched.push_batch(
        np.arange(pre, dtype=np.int64),
        rng.integers(1, horizon, pre, dtype=np.int64),
        rng.integers(0, 256, pre, dtype=np.int64),
        np.zeros(pre, dtype=np.int64),
        0,
    )
    warm = max(3, rounds // 10)
    total_rounds = warm + rounds
    ids = np.arange(pre, pre + total_rounds * batch, dtype=np.int64).reshape(total_rounds, batch)
    deadlines = rng.integers(1, horizon, (total_rounds, batch), dtype=np.int64)
    priorities = rng.integers(0, 256, (total_rounds, batch), dtype=np.int64)
    classes = np.zeros(batch, dtype=np.int64)
    out = np.zeros(batch, dtype=np.int64)
    flags = np.zeros(batch, dtype=np.int64)
    dropped = np.zeros(batch, dtype=np.int64)
    per_op: list[float] = []
    elapsed = 0
    for r in range(total_rounds):
        i_r, d_r, p_r = ids[r], deadlines[r], priorities[r]
        t0 = monotonic_ns()
        sched.push_batch(i_r, d_r, p_r, classes, 0)
        sched.pop_batch(0, out, flags, out_dropped=dropped)
        dt = monotonic_ns() - t0
        if r >= warm:
            per_op.append(dt / batch)
            elapsed += dt
    st = sched.statistics()
    if st.shed or st.missed or len(sched) != depth:
        raise RuntimeError(f"bench invariant broken: {st}")
    return {
        "case": f"scheduler_push_pop_b{batch}_depth{depth}",
        "unit": "ns per packet (one push + one pop), per batch",
        "batch": batch,
        "depth": depth,
        "n": rounds * batch,
        **_percentiles(per_op),
        "ops_per_s": round(rounds * batch * 1e9 / elapsed, 1),
    }


# ----------------------------------------------------------------------------- annealing vs EDF


def _overloaded_set(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    p = rng.integers(10_000, 100_000, n).astype(np.int64)  # 10..100 us
    total = int(p.sum())
    d = rng.integers(total // 20, int(total / 1.5), n).astype(np.int64)  # ~1.5x overloaded
    w = rng.integers(1, 11, n).astype(np.float64)
    return p, d, w


def _case_anneal(n: int, sets: int) -> dict[str, Any]:
    rng = np.random.default_rng(20240601 + n)
    edf_t, sa_t, edf_miss, sa_miss, ratios, run_ns = [], [], [], [], [], []
    optimize_schedule(*_overloaded_set(np.random.default_rng(1), n), seed=0)  # warm-up (cache load)
    for k in range(sets):
        p, d, w = _overloaded_set(rng, n)
        t0 = monotonic_ns()
        res = optimize_schedule(p, d, w, seed=k)
        run_ns.append(monotonic_ns() - t0)
        edf_t.append(res.edf_weighted_tardiness)
        sa_t.append(res.total_weighted_tardiness)
        edf_miss.append(res.edf_tardy_tasks / n)
        sa_miss.append(res.tardy_tasks / n)
        ratios.append(res.total_weighted_tardiness / res.edf_weighted_tardiness if res.edf_weighted_tardiness else 1.0)
    return {
        "case": f"anneal_vs_edf_n{n}",
        "unit": "total weighted tardiness (ns x weight), mean over sets",
        "tasks": n,
        "sets": sets,
        "edf_weighted_tardiness": round(float(np.mean(edf_t)), 1),
        "anneal_weighted_tardiness": round(float(np.mean(sa_t)), 1),
        "anneal_over_edf": round(float(np.mean(ratios)), 3),
        "anneal_over_edf_worst": round(float(np.max(ratios)), 3),
        "edf_miss_ratio": round(float(np.mean(edf_miss)), 3),
        "anneal_miss_ratio": round(float(np.mean(sa_miss)), 3),
        "anneal_ms_p50": round(float(np.median(run_ns)) / 1e6, 2),
    }


# ----------------------------------------------------------------------------- HLC


@jit("int64(int64, int64, int64)", cache=False)
def _tick_loop(addr, physical_ns, n):  # pragma: no cover - compiled
    last = 0
    for _ in range(n):
        last = tick_shared(addr, physical_ns)
    return last


def _rounds(fn, calls: int, rounds: int) -> list[float]:
    fn(calls)  # warm-up
    per_op = []
    for _ in range(rounds):
        t0 = monotonic_ns()
        fn(calls)
        per_op.append((monotonic_ns() - t0) / calls)
    return per_op


def _hlc_cases(rounds: int) -> list[dict[str, Any]]:
    calls = 1000
    src = MonotonicTimeSource()
    clock = HybridLogicalClock(time_source=src)
    region = np.zeros(HLC_REGION_BYTES // 8, dtype=np.int64)
    shared = SharedHybridClock.create_at(region.ctypes.data, region, time_source=src)
    addr = shared.address
    behind = make_stamp(src.now_ns() - 10 * MS, 3)
    pt = src.now_ns()

    def tick_local(k: int) -> None:
        t = clock.tick
        for _ in range(k):
            t()

    def update_local(k: int) -> None:
        u = clock.update
        for _ in range(k):
            u(behind)

    def tick_shared_handle(k: int) -> None:
        t = shared.tick
        for _ in range(k):
            t()

    def update_shared_handle(k: int) -> None:
        u = shared.update
        for _ in range(k):
            u(behind)

    def tick_shared_raw(k: int) -> None:
        for _ in range(k):
            tick_shared(addr, pt)

    def tick_shared_jitted(k: int) -> None:
        _tick_loop(addr, pt, k)

    cases = [
        ("hlc_tick_in_process", tick_local, "HybridLogicalClock.tick: lock + time read + rule"),
        ("hlc_update_in_process", update_local, "HybridLogicalClock.update (remote behind), result object"),
        ("hlc_tick_shared_handle", tick_shared_handle, "SharedHybridClock.tick: time read + CAS kernel call"),
        ("hlc_update_shared_handle", update_shared_handle, "SharedHybridClock.update, result object"),
        ("hlc_tick_shared_kernel_call", tick_shared_raw, "tick_shared(addr, pt) called from Python"),
        ("hlc_tick_shared_jitted_loop", tick_shared_jitted, "tick_shared inside a jitted loop: the CAS alone"),
    ]
    out = []
    for name, fn, what in cases:
        k = calls * 100 if name.endswith("jitted_loop") else calls
        per_op = _rounds(fn, k, rounds)
        out.append(
            {
                "case": name,
                "unit": "ns per stamp, per round of calls",
                "what": what,
                "n": k * rounds,
                **_percentiles(per_op),
                "ops_per_s": round(1e9 / float(np.mean(per_op)), 1),
            }
        )
    shared.close()
    return out


# ----------------------------------------------------------------------------- main


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"
    return str(v)


def main(argv: list[str] | None = None) -> int:
    """Run every case; JSON lines to stdout, a table to stderr."""
    parser = argparse.ArgumentParser(prog="python -m bench.bench_scheduler", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs (a few seconds in all), for CI")
    args = parser.parse_args(argv)
    quick = args.quick

    records: list[dict[str, Any]] = [{"case": "environment", "quick": quick, **_environment()}]
    if quick:
        records.append(_case_push_pop(256, 1024, rounds=200, seed=1))
    else:
        for batch in (64, 256, 1024):
            for depth in (1024, 16384):
                records.append(_case_push_pop(batch, depth, rounds=2000, seed=batch + depth))
    for n in (50,) if quick else (50, 200):
        records.append(_case_anneal(n, sets=4 if quick else 20))
    records += _hlc_cases(rounds=20 if quick else 200)
    for rec in records:
        print(json.dumps({"bench": "scheduler", **rec}), flush=True)

    width = max(len(r["case"]) for r in records)
    lines = [f"{'case':<{width}}  {'p50 ns/op':>10}  {'p99 ns/op':>10}  {'ops/s':>14}  detail"]
    for rec in records[1:]:
        if "p50_ns_per_op" in rec:
            lines.append(
                f"{rec['case']:<{width}}  {_fmt(rec['p50_ns_per_op']):>10}  {_fmt(rec['p99_ns_per_op']):>10}  "
                f"{_fmt(rec['ops_per_s']):>14}  {rec.get('what', rec['unit'])}"
            )
        else:
            lines.append(
                f"{rec['case']:<{width}}  {'-':>10}  {'-':>10}  {'-':>14}  "
                f"TWT anneal/EDF {rec['anneal_over_edf']} (worst {rec['anneal_over_edf_worst']}), "
                f"miss ratio EDF {rec['edf_miss_ratio']} -> anneal {rec['anneal_miss_ratio']}, "
                f"{rec['anneal_ms_p50']} ms per optimisation"
            )
    print("\n".join(lines), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
