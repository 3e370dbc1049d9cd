"""``python -m bench``: run every registered case, each in its own process, and compare.

    python -m bench [--quick] [--json] [--only SUBSTR] [--versions] [--save] [--list]

Cases come from the ``CASES`` lists of the ``bench`` modules (``bench/peers.py`` now,
ChronoFabric's ``bench/bench_ring.py`` and others later; see ``bench/_harness.py``).
Each case prints one JSON line; this runner collects them and prints a table per kind
with a "vs best peer" column, where >1 always means better than the best peer:

- throughput: ``msgs_per_s / best peer msgs_per_s``
- latency:    ``best peer p50 / p50``

Like msgspec's ``bench_validation``: ``--json`` prints only the JSON lines, ``--versions``
prints the machine and versions. ``--save`` appends the lines, after one ``"bench": "env"``
line, to ``bench/results/<date>-<host>.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from bench._harness import (
    KIND_TITLES,
    KINDS,
    LATENCY_BLOCK,
    LATENCY_SPIN,
    discover_cases,
    environment,
    run_case,
)

__all__ = ["main", "add_ratios", "format_table", "format_environment"]

#: Above this much CPU used by other processes during a case, the table flags it.
_NOISY_PCT = 10.0
_RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def _is_ok(rec: dict) -> bool:
    return "error" not in rec and "skipped" not in rec and rec.get("msgs_per_s")


def _best_peer(records: list[dict], kind: str) -> dict | None:
    peers = [r for r in records if r.get("bench") == kind and r.get("impl") == "peer" and _is_ok(r)]
    if not peers:
        return None
    if kind in (LATENCY_SPIN, LATENCY_BLOCK):
        return min(peers, key=lambda r: r["p50_ns"])
    return max(peers, key=lambda r: r["msgs_per_s"])


def add_ratios(records: list[dict]) -> None:
    """Set ``vs_best_peer`` (and ``best_peer``) on every measured record; >1 means better."""
    for kind in KINDS:
        best = _best_peer(records, kind)
        if best is None:
            continue
        for rec in records:
            if rec.get("bench") != kind or not _is_ok(rec):
                continue
            if kind in (LATENCY_SPIN, LATENCY_BLOCK):
                rec["vs_best_peer"] = round(best["p50_ns"] / rec["p50_ns"], 3)
            else:
                rec["vs_best_peer"] = round(rec["msgs_per_s"] / best["msgs_per_s"], 3)
            rec["best_peer"] = best["case"]


# --------------------------------------------------------------------------- table


def _us(ns) -> str:
    if ns is None:
        return "-"
    us = ns / 1000.0
    return f"{us:.2f}" if us < 10 else f"{us:.1f}" if us < 1000 else f"{us:,.0f}"


def _pct(value) -> str:
    return "-" if value is None else f"{value:.0f}%"


def _ratio(rec: dict) -> str:
    ratio = rec.get("vs_best_peer")
    if ratio is None:
        return "-"
    mark = ""
    if rec.get("best_peer") == rec.get("case"):
        mark = "  (best peer)"
    elif rec.get("impl") != "peer":
        mark = "  ours"
    return f"{ratio:.2f}x{mark}"


def _fmt_rows(headers: list[str], rows: list[list[str]], right: set[int], notes: list[list[str]]) -> list[str]:
    """Align ``rows`` under ``headers``; ``notes`` rows (case, transport, text) align their first two cells."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    for note in notes:
        widths[0] = max(widths[0], len(note[0]))
        widths[1] = max(widths[1], len(note[1]))
    out = []
    for row in [headers, *rows]:
        cells = [c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(row)]
        out.append("  " + "  ".join(cells).rstrip())
    for case, transport, text in notes:
        out.append(f"  {case.ljust(widths[0])}  {transport.ljust(widths[1])}  {text}")
    return out


def _status(rec: dict) -> str | None:
    if "skipped" in rec:
        return f"skipped: {rec['skipped']}"
    if "error" in rec:
        return f"ERROR: {rec['error'].splitlines()[0][:90]}"
    return None


def format_table(records: list[dict]) -> str:
    lines: list[str] = []
    for kind in KINDS:
        recs = [r for r in records if r.get("bench") == kind]
        if not recs:
            continue
        latency = kind in (LATENCY_SPIN, LATENCY_BLOCK)
        ok = [r for r in recs if _is_ok(r)]
        ok.sort(key=(lambda r: r["p50_ns"]) if latency else (lambda r: -r["msgs_per_s"]))
        bad = [r for r in recs if not _is_ok(r)]
        lines += ["", KIND_TITLES[kind]]
        if latency:
            headers = ["case", "transport", "p50 us", "p90", "p99", "p99.9", "max", "n", "idle CPU", "other CPU", "vs best peer"]
            rows = [
                [
                    r["case"],
                    r["transport"],
                    _us(r["p50_ns"]),
                    _us(r["p90_ns"]),
                    _us(r["p99_ns"]),
                    _us(r["p999_ns"]),
                    _us(r["max_ns"]),
                    f"{r['n']:,}",
                    "-" if r.get("idle_cpu_pct") is None else f"{r['idle_cpu_pct']:.0f}%",
                    _pct(r.get("foreign_cpu_pct")),
                    _ratio(r),
                ]
                for r in ok
            ]
            right = {2, 3, 4, 5, 6, 7, 8, 9}
        else:
            headers = ["case", "transport", "msgs/s", "MB/s", "msg bytes", "n", "other CPU", "vs best peer"]
            rows = [
                [
                    r["case"],
                    r["transport"],
                    f"{r['msgs_per_s']:,.0f}",
                    f"{r.get('bytes_per_s', 0) / 1e6:,.1f}",
                    str(r.get("msg_bytes", "-")),
                    f"{r['n']:,}",
                    _pct(r.get("foreign_cpu_pct")),
                    _ratio(r),
                ]
                for r in ok
            ]
            right = {2, 3, 4, 5, 6}
        notes = [[r["case"], r.get("transport", ""), _status(r) or ""] for r in bad]
        lines += _fmt_rows(headers, rows, right, notes)
    noisy = [r["case"] for r in records if (r.get("foreign_cpu_pct") or 0) > _NOISY_PCT]
    if noisy:
        lines += [
            "",
            f"WARNING: other processes used more than {_NOISY_PCT:.0f}% of a core during {len(noisy)} case(s) "
            "(column 'other CPU'); their figures are disturbed: " + ", ".join(noisy),
        ]
    return "\n".join(lines)


def format_environment(env: dict) -> str:
    v = env["versions"]
    peers = ", ".join(f"{k} {v[k] or 'not installed'}" for k in ("pyzmq", "libzmq", "faster-fifo", "iceoryx2") if k in v)
    return "\n".join(
        [
            f"host {env['host']}: {env['kernel']} {env['machine']}, {env['cpu_model']}, "
            f"{env['cpus_online']} CPUs online, clocksource {env['clocksource']}, "
            f"perf_counter_ns {env['perf_counter_ns_cost_ns']} ns/read",
            f"{env['python']}; numpy {v['numpy']}, numba {v['numba']}, msgspec {v['msgspec']}, psutil {v['psutil']}, "
            f"chronofabric {v['chronofabric']}",
            f"peers: {peers}",
            f"date {env['date_utc']}",
        ]
    )


# --------------------------------------------------------------------------- main


def _save(records: list[dict], env: dict, results_dir: str, quick: bool) -> str:
    os.makedirs(results_dir, exist_ok=True)
    path = os.path.join(results_dir, f"{time.strftime('%Y-%m-%d')}-{env['host']}.jsonl")
    with open(path, "a") as f:
        f.write(json.dumps({"bench": "env", "quick": quick, **env}) + "\n")
        for rec in records:
            f.write(json.dumps(rec) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny N, to check every case still runs (not a measurement)")
    parser.add_argument("--json", action="store_true", help="print the JSON lines instead of the table")
    parser.add_argument("--only", metavar="SUBSTR", help="run only cases whose name contains SUBSTR")
    parser.add_argument("--versions", action="store_true", help="print machine and versions, then exit")
    parser.add_argument("--save", action="store_true", help="append the JSON lines to bench/results/<date>-<host>.jsonl")
    parser.add_argument("--results-dir", default=_RESULTS_DIR, help=argparse.SUPPRESS)
    parser.add_argument("--list", action="store_true", help="list the registered cases, then exit")
    args = parser.parse_args(argv)

    if args.versions:
        env = environment()
        print(json.dumps(env, indent=2) if args.json else format_environment(env))
        return 0

    cases, module_errors = discover_cases()
    if args.only:
        cases = [c for c in cases if args.only in c.name]
        if not cases:
            print(f"no case name contains {args.only!r}", file=sys.stderr)
            return 2
    if args.list:
        for c in cases:
            print(f"{c.name:40s} {c.kind:20s} {c.impl:13s} {c.transport}")
        for e in module_errors:
            print(f"{e['module']}: {e['error']}")
        return 1 if module_errors else 0

    env = environment()
    records: list[dict] = []
    records.extend(module_errors)
    started = time.monotonic()
    for i, case in enumerate(cases, 1):
        t0 = time.monotonic()
        print(f"[{i}/{len(cases)}] {case.name} ...", end="", file=sys.stderr, flush=True)
        rec = run_case(case, quick=args.quick)
        records.append(rec)
        print(f" {_status(rec) or 'ok'} ({time.monotonic() - t0:.1f} s)", file=sys.stderr, flush=True)
    add_ratios(records)
    if args.json:
        for rec in records:
            print(json.dumps(rec))
    print(f"{len(cases)} cases in {time.monotonic() - started:.0f} s", file=sys.stderr)

    if not args.json:
        print(format_environment(env))
        if args.quick:
            print("QUICK RUN: tiny N, the figures below are not measurements")
        print(format_table(records))
    if args.save:
        path = _save(records, env, args.results_dir, args.quick)
        print(f"saved {path}", file=sys.stderr)
    failed = [r for r in records if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
