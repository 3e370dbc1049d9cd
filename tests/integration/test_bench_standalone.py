"""The standalone benches run in --quick mode and print one sane JSON line per case (never timed)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.parametrize("module", ["bench.bench_arena", "bench.bench_clogic"])
def test_a_standalone_bench_runs_quick_and_prints_json_lines(module):
    proc = subprocess.run(
        [sys.executable, "-m", module, "--quick"], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, proc.stderr[-3000:]
    for line in lines:
        assert "case" in line
        assert "skipped" in line or any(isinstance(v, (int, float)) and v > 0 for v in line.values()), line
