"""Every registered benchmark case still runs end to end (``python -m bench --quick``).

Benches are never timed tests: these tests assert that each case produced one sane JSON
line (numbers > 0, percentiles in order) or an explicit skip reason, never how fast
anything was. The suite fixture in ``tests/conftest.py`` checks that the run left no
process and no /dev/shm entry behind.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench._harness import (
    KINDS,
    LATENCY_BLOCK,
    LATENCY_SPIN,
    THROUGHPUT_PACKETS,
    THROUGHPUT_RAW,
    discover_cases,
    latency_result,
    make_packet_codec,
    one_way_latency_result,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
# The quick run takes ~15 s on the 2-vCPU VM; generous, but under pytest's 180 s timeout.
QUICK_RUN_TIMEOUT_S = 150


def _run_quick_bench() -> tuple[subprocess.CompletedProcess, list[dict]]:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--json"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=QUICK_RUN_TIMEOUT_S,
    )
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    return proc, lines


def _problems_with(line: dict) -> list[str]:
    """What is wrong with one result line (empty when it is sane)."""
    if "skipped" in line:
        return [] if isinstance(line["skipped"], str) and line["skipped"] else ["empty skip reason"]
    if "error" in line:
        return [f"error: {line['error']}\n{line.get('stderr_tail', '')}"]
    problems = []
    if line.get("bench") not in KINDS:
        problems.append(f"unknown kind {line.get('bench')!r}")
    if line.get("impl") not in ("peer", "chronofabric"):
        problems.append(f"unknown impl {line.get('impl')!r}")
    if not line.get("transport"):
        problems.append("no transport")
    if not (isinstance(line.get("n"), int) and line["n"] > 0):
        problems.append(f"n={line.get('n')!r}")
    if not (isinstance(line.get("msgs_per_s"), (int, float)) and line["msgs_per_s"] > 0):
        problems.append(f"msgs_per_s={line.get('msgs_per_s')!r}")
    if line.get("bench") in (LATENCY_SPIN, LATENCY_BLOCK):
        pcts = [line.get(k) for k in ("p50_ns", "p90_ns", "p99_ns", "p999_ns", "max_ns")]
        if not all(isinstance(p, int) and p > 0 for p in pcts):
            problems.append(f"latency fields {pcts}")
        elif pcts != sorted(pcts):
            problems.append(f"percentiles out of order {pcts}")
        if not (isinstance(line.get("idle_cpu_pct"), (int, float)) and line["idle_cpu_pct"] >= 0):
            problems.append(f"idle_cpu_pct={line.get('idle_cpu_pct')!r}")
    elif line.get("bench") in (THROUGHPUT_RAW, THROUGHPUT_PACKETS):
        if not (isinstance(line.get("msg_bytes"), int) and line["msg_bytes"] > 0):
            problems.append(f"msg_bytes={line.get('msg_bytes')!r}")
    return problems


@pytest.mark.slow
def test_quick_run_emits_one_sane_line_or_skip_reason_per_registered_case():
    cases, module_errors = discover_cases()
    assert not module_errors, module_errors
    assert cases, "no benchmark case is registered"

    proc, lines = _run_quick_bench()

    stderr_tail = proc.stderr[-4000:]
    import_errors = [line for line in lines if "case" not in line]
    assert not import_errors, import_errors
    names = [line["case"] for line in lines]
    assert sorted(names) == sorted(c.name for c in cases), stderr_tail
    problems = {line["case"]: p for line in lines if (p := _problems_with(line))}
    # Our cases must run and be sane: that is what keeps them from rotting. A peer can fail for
    # reasons of its own (iceoryx2 HangsInCreation, a faster-fifo broken pipe under load): it is
    # reported here, not held against ChronoFabric.
    peers = {c.name for c in cases if c.is_peer}
    ours = {case: p for case, p in problems.items() if case not in peers}
    peer_failures = {case: p for case, p in problems.items() if case in peers}
    if peer_failures:
        print("peer cases that failed in this quick run:", json.dumps(peer_failures, indent=2))
    assert not ours, json.dumps(ours, indent=2)
    assert proc.returncode == 0 or peer_failures, stderr_tail


def test_every_peer_transport_answers_all_four_questions():
    cases, _ = discover_cases()
    kinds_by_transport: dict[str, set[str]] = {}
    for case in cases:
        if case.is_peer and case.batch == 1:
            kinds_by_transport.setdefault(case.transport, set()).add(case.kind)
    assert kinds_by_transport
    for transport, kinds in kinds_by_transport.items():
        assert kinds == set(KINDS), (transport, kinds)


def test_packet_codec_round_trips_the_index():
    encode, decode = make_packet_codec()
    for i in (0, 1, 2**40):
        buf = encode(i)
        assert decode(buf).id == i
        assert decode(memoryview(buf)).id == i


@pytest.mark.parametrize(
    "result_of, samples, messages_per_sample",
    [
        (latency_result, [2 * v for v in range(1, 1001)], 2),  # round trips: halved, two messages each
        (lambda s, elapsed_ns: one_way_latency_result(s, elapsed_ns, measured="one-way"), list(range(1000, 0, -1)), 1),
    ],
    ids=["round-trip", "one-way"],
)
def test_latency_percentiles_are_observed_one_way_samples_by_rank(result_of, samples, messages_per_sample):
    result = result_of(samples, elapsed_ns=1_000_000)  # one-way 1..1000 ns either way
    assert (result["p50_ns"], result["p90_ns"], result["p99_ns"], result["p999_ns"], result["max_ns"]) == (
        500,
        900,
        990,
        999,
        1000,
    )
    assert result["min_ns"] == 1 and result["n"] == 1000
    assert result["msgs_per_s"] == pytest.approx(messages_per_sample * 1000 / 1e-3)
