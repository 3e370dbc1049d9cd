"""Throughput of the C-LOGIC cores and the accelerator kernels, and ADP's policy comparison.

    python -m bench.bench_clogic [--quick]

Prints one JSON line per case to stdout (``{"bench": "clogic", "case": ..., "items_per_s": ...}``,
the first line being ``"case": "environment"``), then a table to stderr. Questions answered:

- resonance: samples/s through ``ResonanceDetector`` (64-bin and full-grid banks) and the raw
  Goertzel bank; pairs/s of transfer entropy.
- governance: STL monitor evaluations/s (push + evaluate per sample), token-bucket decisions/s.
- affect: observations/s.
- kernels: rows/s and samples/s per kernel (CPU path).
- dispatch: p50/p99 response time of JSEQ and round-robin on a simulated skewed workload with
  one worker slowed to a quarter of its speed (deterministic: fixed seeds), and their ratio.

Method: everything runs in this one process, unpinned (these are single-threaded CPU-bound
loops, not cross-core messaging). Every case is called once before timing (JIT compilation and
cache loads are excluded), then timed in ``repeats`` rounds of at least ``min_time`` each; the
reported rate is the median round, with the slowest and fastest alongside. Time comes from
``fabric.timesource`` (the project's only clock reader).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import statistics
import sys
from typing import Any, Callable

import numpy as np

from fabric.timesource import monotonic_ns

__all__ = ["main"]


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


def _measure(fn: Callable[[], Any], items_per_call: int, *, min_time_ns: int, repeats: int) -> dict[str, float]:
    """Median/min/max items per second over ``repeats`` rounds of >= ``min_time_ns`` each."""
    fn()  # warm-up: JIT compile / cache load, first-touch allocations
    rates = []
    for _ in range(repeats):
        calls = 0
        t0 = monotonic_ns()
        elapsed = 0
        while elapsed < min_time_ns:
            fn()
            calls += 1
            elapsed = monotonic_ns() - t0
        rates.append(calls * items_per_call * 1e9 / elapsed)
    return {
        "items_per_s": round(statistics.median(rates), 1),
        "items_per_s_min": round(min(rates), 1),
        "items_per_s_max": round(max(rates), 1),
    }


def _cases_resonance(rng: np.random.Generator, measure: Callable[..., dict]) -> list[dict]:
    from workers._resonance import ResonanceDetector, goertzel_bank, transfer_entropy

    fs, block = 1000.0, 1024
    chunk = np.cos(2 * np.pi * 123.4 * np.arange(8 * block) / fs) + rng.normal(size=8 * block)
    out = []
    for label, kwargs in (
        ("resonance_detector_64bins", dict(frequencies_hz=(52 + np.arange(64)) * fs / block)),
        ("resonance_detector_511bins", {}),
    ):
        det = ResonanceDetector("bench", fs, block_size=block, **kwargs)
        n_bins = det.frequencies_hz.size
        clock = [0]

        def push(det: ResonanceDetector = det) -> None:
            clock[0] += 8 * block * 1_000_000
            det.push(chunk, now_ns=clock[0])

        out.append({"case": label, "unit": "samples", "bins": n_bins, "block": block, **measure(push, chunk.size)})
    blocks = rng.normal(size=(64, block))
    freqs = (52 + np.arange(64)) * fs / block
    spec = np.empty((64, 64), dtype=np.complex128)
    out.append(
        {
            "case": "goertzel_bank_64bins",
            "unit": "samples",
            "bins": 64,
            "block": block,
            **measure(lambda: goertzel_bank(blocks, freqs, fs, out=spec), blocks.size),
        }
    )
    x = rng.normal(size=(16, 4096))
    y = np.roll(x, 1, axis=1) + 0.5 * rng.normal(size=x.shape)
    out.append(
        {
            "case": "transfer_entropy_8bins_4096",
            "unit": "series pairs",
            **measure(lambda: transfer_entropy(x, y, n_bins=8), x.shape[0]),
        }
    )
    return out


def _cases_governance(rng: np.random.Generator, measure: Callable[..., dict]) -> list[dict]:
    from workers._governance import AdmissionController, StlMonitor, TokenBucketLimiter

    out = []
    period_ns = 10_000_000  # 100 Hz metrics: ~100 samples in a 1 s window
    for label, spec in (
        ("stl_monitor_always_1s", "always[0,1s](p99_latency_us < 2000)"),
        (
            "stl_monitor_nested_until",
            "always[0,500ms]((queue_fill < 0.9) until[0,200ms] (drain_rate > 10)) and eventually[0,1s](ok > 0)",
        ),
    ):
        mon = StlMonitor(spec)
        values = rng.uniform(0, 2500, 4096)
        names = mon.signals
        state = {"k": 0}

        def step(mon: StlMonitor = mon, values: np.ndarray = values, names: tuple = names) -> None:
            k = state["k"]
            state["k"] = k + 1
            t = k * period_ns
            mon.push(t, {name: float(values[k % values.size]) for name in names})
            mon.evaluate(t)

        out.append({"case": label, "unit": "evaluations", "formula": spec, **measure(step, 1)})
    tb = TokenBucketLimiter(rate_per_s=1e6, burst=1000)
    keys = [(f"src{i}", f"topic{i % 7}") for i in range(64)]
    tick = {"t": 0}

    def allow_many() -> None:
        t = tick["t"]
        for key in keys:
            t += 100
            tb.allow(key, 1, t)
        tick["t"] = t

    out.append({"case": "token_bucket_allow", "unit": "decisions", **measure(allow_many, len(keys))})
    ac = AdmissionController()
    loads = rng.uniform(0.0, 1.0, 1024).tolist()

    def admission() -> None:
        for i, load in enumerate(loads):
            ac.update(load, i)

    out.append({"case": "admission_update", "unit": "updates", **measure(admission, len(loads))})
    return out


def _cases_affect(measure: Callable[..., dict]) -> list[dict]:
    from workers._affect import AffectModel

    model = AffectModel(half_life_ns=1_000_000_000)
    tick = {"t": 0}

    def observe() -> None:
        tick["t"] += 1_000_000
        model.observe(tick["t"], deadline_hit_ratio=0.98, success_ratio=0.999, load=0.6, latency_ns=1.2e6)

    return [{"case": "affect_observe", "unit": "observations", **measure(observe, 1)}]


def _cases_kernels(rng: np.random.Generator, measure: Callable[..., dict]) -> list[dict]:
    from workers import _kernels as K

    rows, n = 64, 1024
    x64 = rng.normal(size=(rows, n))
    x32 = x64.astype(np.float32)
    taps = rng.normal(size=32)
    mat = rng.normal(size=(64, 64))
    vecs = rng.normal(size=(1024, 64))
    tw = K.fft_twiddles(n)
    out = []
    plans: list[tuple[str, Callable[[], Any], int, int]] = [
        ("kernel_fir_f64_32taps", lambda: K.fir(x64, taps, fir_out64), rows, rows * n),
        ("kernel_fir_f32_32taps", lambda: K.fir(x32, taps, fir_out32), rows, rows * n),
        ("kernel_matvec_f64_64x64", lambda: K.matvec(mat, vecs, mv_out), vecs.shape[0], vecs.size),
        ("kernel_power_spectrum_1024", lambda: K.power_spectrum(x64, ps_out, twiddles=tw), rows, rows * n),
    ]
    fir_out64 = np.empty_like(x64)
    fir_out32 = np.empty_like(x32)
    mv_out = np.empty((vecs.shape[0], mat.shape[0]))
    ps_out = np.empty((rows, n // 2 + 1))
    red_out = np.empty(rows)
    for op in K.REDUCTIONS:
        plans.append((f"kernel_{op}_f64_1024", lambda op=op: K.reduce_rows(x64, op, red_out), rows, rows * n))
    for label, fn, items, samples in plans:
        res = measure(fn, items)
        res["samples_per_s"] = round(res["items_per_s"] * samples / items, 1)
        out.append({"case": label, "unit": "rows", "device": "cpu", **res})
    return out


def _cases_dispatch(quick: bool) -> list[dict]:
    from workers._dispatch import JseqDispatcher, RoundRobinDispatcher, simulate_dispatch

    n = 3000 if quick else 20000
    workers, ms = 4, 1_000_000
    rng = np.random.default_rng(3)
    sizes = np.maximum((rng.lognormal(0.0, 1.0, n) / np.exp(0.5) * ms).astype(np.int64), 1)
    arrivals = np.cumsum(rng.exponential(sizes.mean() / (0.7 * workers), n)).astype(np.int64)
    slow = [(int(arrivals[-1]) // 10, workers - 1, 0.25)]
    res: dict[str, np.ndarray] = {}
    rates: dict[str, float] = {}
    for name, policy in (("jseq", JseqDispatcher), ("round_robin", RoundRobinDispatcher)):
        t0 = monotonic_ns()
        done = simulate_dispatch(policy(workers), arrivals, sizes, [1.0] * workers, slow, seed=7)
        rates[name] = n * 1e9 / (monotonic_ns() - t0)
        res[name] = np.percentile((done - arrivals) / 1e3, [50, 99])  # microseconds
    out = []
    for name in res:
        out.append(
            {
                "case": f"adp_sim_{name}",
                "unit": "items (simulated)",
                "items_per_s": round(rates[name], 1),
                "p50_us": round(float(res[name][0]), 1),
                "p99_us": round(float(res[name][1]), 1),
                "workload": f"{n} items, lognormal(sigma=1) sizes mean 1 ms, 4 workers at 70% load, "
                "worker 3 at 0.25 speed from 10% of the run, seed 7",
            }
        )
    out.append(
        {
            "case": "adp_sim_jseq_vs_round_robin",
            "unit": "ratio (round_robin / jseq; > 1: JSEQ better)",
            "p50_ratio": round(float(res["round_robin"][0] / res["jseq"][0]), 2),
            "p99_ratio": round(float(res["round_robin"][1] / res["jseq"][1]), 2),
        }
    )
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"
    return str(v)


def main(argv: list[str] | None = None) -> int:
    """Run every case; JSON lines to stdout, a table to stderr."""
    parser = argparse.ArgumentParser(prog="python -m bench.bench_clogic", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short rounds (a few seconds in all), for CI")
    args = parser.parse_args(argv)
    min_time_ns = 20_000_000 if args.quick else 300_000_000
    repeats = 3 if args.quick else 5

    def measure(fn: Callable[[], Any], items: int) -> dict:
        return _measure(fn, items, min_time_ns=min_time_ns, repeats=repeats)

    rng = np.random.default_rng(0)
    records: list[dict] = [{"case": "environment", "quick": args.quick, **_environment()}]
    records += _cases_resonance(rng, measure)
    records += _cases_governance(rng, measure)
    records += _cases_affect(measure)
    records += _cases_kernels(rng, measure)
    records += _cases_dispatch(args.quick)
    for rec in records:
        print(json.dumps({"bench": "clogic", **rec}), flush=True)

    width = max(len(r["case"]) for r in records)
    lines = [f"{'case':<{width}}  {'items/s':>14}  {'unit':<18}  detail"]
    for rec in records[1:]:
        detail = ", ".join(
            f"{k}={_fmt(v)}"
            for k, v in rec.items()
            if k in ("samples_per_s", "p50_us", "p99_us", "p50_ratio", "p99_ratio", "bins")
        )
        rate = _fmt(rec["items_per_s"]) if "items_per_s" in rec else "-"
        lines.append(f"{rec['case']:<{width}}  {rate:>14}  {rec['unit'][:18]:<18}  {detail}")
    print("\n".join(lines), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
