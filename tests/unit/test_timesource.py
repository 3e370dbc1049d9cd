"""Time sources, and the rule that only ``fabric/timesource.py`` reads an operating-system clock.

The rule is enforced by walking the syntax tree of every ``.py`` file in ``fabric/``,
``workers/`` and ``shm_layouts/``: any use of a clock-reading function (``time.time``,
``time.monotonic_ns``, ``time.perf_counter``, ``time.clock_gettime``, ``datetime.now`` ...),
however it was imported or aliased, fails the test with file and line. ``time.sleep`` is
allowed: it parks a thread, it does not read time.
"""

from __future__ import annotations

import ast
import threading
from pathlib import Path

import pytest

from fabric.timesource import (
    MonotonicTimeSource,
    SimulatedTimeSource,
    TimeCheckpoint,
    TimeSource,
    compiled_clock_available,
    compiled_now_ns,
    get_time_source,
    monotonic_ns,
    now_ns,
    set_time_source,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
CHECKED_PACKAGES = ("fabric", "workers", "shm_layouts")
ALLOWED_FILE = REPO_ROOT / "fabric" / "timesource.py"

_TIME_READERS = {
    "time",
    "time_ns",
    "monotonic",
    "monotonic_ns",
    "perf_counter",
    "perf_counter_ns",
    "process_time",
    "process_time_ns",
    "thread_time",
    "thread_time_ns",
    "clock_gettime",
    "clock_gettime_ns",
}
FORBIDDEN = {f"time.{name}" for name in _TIME_READERS} | {
    "datetime.datetime.now",
    "datetime.datetime.utcnow",
    "datetime.datetime.today",
    "datetime.date.today",
}


class ClockReadFinder(ast.NodeVisitor):
    """Finds uses of clock-reading functions, resolving ``import x as y`` and ``from x import y``."""

    def __init__(self) -> None:
        self.aliases: dict[str, str] = {}  # local name -> dotted origin
        self.hits: list[tuple[int, str]] = []

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.asname:
                self.aliases[alias.asname] = alias.name
            else:
                top = alias.name.split(".")[0]
                self.aliases[top] = top
        self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.module and node.level == 0:
            for alias in node.names:
                origin = f"{node.module}.{alias.name}"
                if origin in FORBIDDEN:
                    self.hits.append((node.lineno, origin))
                self.aliases[alias.asname or alias.name] = origin
        self.generic_visit(node)

    def _dotted(self, node: ast.AST) -> str | None:
        parts = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name) or node.id not in self.aliases:
            return None
        parts.append(self.aliases[node.id])
        return ".".join(reversed(parts))

    def visit_Attribute(self, node: ast.Attribute) -> None:
        dotted = self._dotted(node)
        if dotted in FORBIDDEN:
            self.hits.append((node.lineno, dotted))
            return
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        origin = self.aliases.get(node.id)
        if origin in FORBIDDEN and isinstance(node.ctx, ast.Load):
            self.hits.append((node.lineno, origin))


def clock_reads(source: str) -> list[tuple[int, str]]:
    finder = ClockReadFinder()
    finder.visit(ast.parse(source))
    return sorted(set(finder.hits))


def checked_files() -> list[Path]:
    files = []
    for package in CHECKED_PACKAGES:
        files += sorted((REPO_ROOT / package).rglob("*.py"))
    return files


class TestNoDirectClockReads:
    def test_no_module_outside_timesource_reads_an_os_clock(self):
        files = checked_files()
        assert len(files) > 10, "the walk found too few files: is REPO_ROOT right?"
        offenders = []
        for path in files:
            if path == ALLOWED_FILE:
                continue
            for line, what in clock_reads(path.read_text(encoding="utf-8")):
                offenders.append(f"{path.relative_to(REPO_ROOT)}:{line}: {what}")
        assert not offenders, "read time through fabric.timesource instead:\n" + "\n".join(offenders)

    def test_the_timesource_module_itself_is_seen_reading_clocks(self):
        hits = {what for _, what in clock_reads(ALLOWED_FILE.read_text(encoding="utf-8"))}
        assert {"time.monotonic_ns", "time.time_ns"} <= hits

    @pytest.mark.parametrize(
        "snippet",
        [
            "import time\nt = time.monotonic_ns()",
            "import time as _t\nt = _t.perf_counter()",
            "from time import time_ns\nt = time_ns()",
            "from time import monotonic as m\nm()",
            "import time\nf = time.process_time_ns",
            "import time\ntime.clock_gettime(time.CLOCK_MONOTONIC)",
            "import datetime\nd = datetime.datetime.now()",
            "from datetime import datetime\nd = datetime.utcnow()",
            "from datetime import datetime as dt\nd = dt.now()",
            "from datetime import date\nd = date.today()",
            "def f():\n    import time\n    return time.time()",
        ],
    )
    def test_the_walker_catches_every_spelling_of_a_clock_read(self, snippet):
        assert clock_reads(snippet), snippet

    @pytest.mark.parametrize(
        "snippet",
        [
            "import time\ntime.sleep(0.01)",
            "from fabric import timesource\nt = timesource.monotonic_ns()",
            "from fabric.timesource import monotonic_ns\nt = monotonic_ns()",
            "clock = object()\nt = clock.time",
            "import datetime\nd = datetime.timedelta(seconds=1)",
        ],
    )
    def test_the_walker_allows_sleeping_and_the_time_source(self, snippet):
        assert clock_reads(snippet) == [], snippet


class TestMonotonicTimeSource:
    def test_monotonic_readings_never_decrease(self):
        src = MonotonicTimeSource()
        readings = [src.monotonic_ns() for _ in range(1000)]
        assert readings == sorted(readings)

    def test_now_is_anchored_to_the_realtime_clock_and_never_decreases(self):
        src = MonotonicTimeSource()
        readings = [src.now_ns() for _ in range(1000)]
        assert readings == sorted(readings)
        assert readings[0] > 1_600_000_000 * 10**9  # after September 2020: an epoch time, not uptime

    def test_checkpoints_of_one_source_are_coherent_in_order(self):
        src = MonotonicTimeSource()
        a = src.create_checkpoint()
        b = src.create_checkpoint()
        assert a.coherent_with(b)
        assert not a.coherent_with(MonotonicTimeSource().create_checkpoint())

    def test_a_real_source_cannot_be_advanced(self):
        with pytest.raises(TypeError):
            MonotonicTimeSource().advance_simulation(1)

    def test_the_anchor_is_now_minus_monotonic(self):
        src = MonotonicTimeSource()
        cp = src.create_checkpoint()  # both readings from one clock read
        assert cp.now_ns - cp.monotonic_ns == src.anchor_ns


class TestCompiledReading:
    """``clock_monotonic_ns`` (compiled code) reads the clock ``MonotonicTimeSource`` reads."""

    def test_the_compiled_clock_is_available_on_this_platform(self):
        assert compiled_clock_available() is True

    def test_a_compiled_reading_falls_between_two_python_readings_of_the_same_source(self):
        src = MonotonicTimeSource()
        for _ in range(1000):
            before = src.now_ns()
            reading = compiled_now_ns(src.anchor_ns)
            after = src.now_ns()
            assert before <= reading <= after

    def test_compiled_readings_never_decrease(self):
        readings = [compiled_now_ns(0) for _ in range(1000)]
        assert readings == sorted(readings)


class TestSimulatedTimeSource:
    def test_time_moves_only_when_told(self):
        src = SimulatedTimeSource(start_ns=5_000)
        assert src.now_ns() == src.monotonic_ns() == 5_000
        src.advance_simulation(250)
        assert src.now_ns() == 5_250
        src.set_ns(9_000)
        assert src.create_checkpoint() == TimeCheckpoint(id(src), 9_000, 9_000)

    def test_simulated_time_never_goes_backwards(self):
        src = SimulatedTimeSource(start_ns=100)
        with pytest.raises(ValueError):
            src.advance_simulation(-1)
        with pytest.raises(ValueError):
            src.set_ns(99)
        with pytest.raises(ValueError):
            SimulatedTimeSource(start_ns=-1)

    def test_concurrent_advances_are_not_lost(self):
        src = SimulatedTimeSource(start_ns=0)

        def advance() -> None:
            for _ in range(5_000):
                src.advance_simulation(1)

        threads = [threading.Thread(target=advance) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert src.now_ns() == 20_000

    def test_both_sources_implement_the_protocol(self):
        assert isinstance(SimulatedTimeSource(), TimeSource)
        assert isinstance(MonotonicTimeSource(), TimeSource)


class TestProcessWideSource:
    def test_the_process_wide_source_is_replaceable_and_restorable(self):
        sim = SimulatedTimeSource(start_ns=42)
        previous = set_time_source(sim)
        try:
            assert get_time_source() is sim
            assert (monotonic_ns(), now_ns()) == (42, 42)
        finally:
            set_time_source(previous)
        assert get_time_source() is previous

    def test_installing_something_that_is_not_a_time_source_is_refused(self):
        with pytest.raises(TypeError):
            set_time_source(object())  # type: ignore[arg-type]
