"""Time sources: the only module in ChronoFabric that reads an operating-system clock.

Every other module asks a ``TimeSource`` for time. Production code uses the
process-wide source (``get_time_source()``), a ``MonotonicTimeSource`` set once
per process (like Rust's ``OnceLock``); tests and the deterministic simulator
use ``SimulatedTimeSource``, which moves only when told.

Two readings exist:

- ``monotonic_ns()`` — for durations, deadlines and timeouts (never jumps).
- ``now_ns()`` — wall-clock-like time for hybrid logical clocks and deadlines
  that cross processes. ``MonotonicTimeSource`` derives it from
  ``CLOCK_MONOTONIC`` anchored once to ``CLOCK_REALTIME``, so that it is
  comparable between processes on one host and never runs backwards.
"""

from __future__ import annotations

import threading
import time as _os_time
from typing import Protocol, runtime_checkable

import msgspec

__all__ = [
    "TimeSource",
    "TimeCheckpoint",
    "MonotonicTimeSource",
    "SimulatedTimeSource",
    "get_time_source",
    "set_time_source",
    "monotonic_ns",
    "now_ns",
    "process_cpu_ns",
]


class TimeCheckpoint(msgspec.Struct, frozen=True):
    """A point in time taken from one source, comparable with others of the same source."""

    source_id: int
    monotonic_ns: int
    now_ns: int

    def coherent_with(self, later: "TimeCheckpoint") -> bool:
        """True when ``later`` comes from the same source and did not run backwards."""
        return (
            later.source_id == self.source_id
            and later.monotonic_ns >= self.monotonic_ns
            and later.now_ns >= self.now_ns
        )


@runtime_checkable
class TimeSource(Protocol):
    """Where ChronoFabric code gets time from."""

    def now_ns(self) -> int:
        """Host-comparable time in nanoseconds since the Unix epoch."""
        ...

    def monotonic_ns(self) -> int:
        """A monotonic reading in nanoseconds, for durations and timeouts."""
        ...

    def create_checkpoint(self) -> TimeCheckpoint:
        """Capture both readings at once."""
        ...

    def advance_simulation(self, delta_ns: int) -> None:
        """Move simulated time forward; real sources raise ``TypeError``."""
        ...


class MonotonicTimeSource:
    """Real time: ``CLOCK_MONOTONIC``, with ``now_ns`` anchored once to the realtime clock.

    Anchoring once means ``now_ns`` never jumps when NTP steps the realtime clock,
    and still agrees between processes on one host to within the anchor's error
    (a few microseconds).
    """

    __slots__ = ("_offset_ns",)

    def __init__(self) -> None:
        mono = _os_time.monotonic_ns()
        real = _os_time.time_ns()
        self._offset_ns = real - mono

    def now_ns(self) -> int:
        return _os_time.monotonic_ns() + self._offset_ns

    def monotonic_ns(self) -> int:
        return _os_time.monotonic_ns()

    def create_checkpoint(self) -> TimeCheckpoint:
        mono = _os_time.monotonic_ns()
        return TimeCheckpoint(id(self), mono, mono + self._offset_ns)

    def advance_simulation(self, delta_ns: int) -> None:
        raise TypeError("a real time source cannot be advanced; use SimulatedTimeSource")


class SimulatedTimeSource:
    """Time that moves only when told: for tests and the deterministic simulator."""

    __slots__ = ("_now_ns", "_lock")

    def __init__(self, start_ns: int = 1_000_000_000) -> None:
        if start_ns < 0:
            raise ValueError(f"start_ns must be >= 0, got {start_ns}")
        self._now_ns = int(start_ns)
        self._lock = threading.Lock()

    def now_ns(self) -> int:
        return self._now_ns

    def monotonic_ns(self) -> int:
        return self._now_ns

    def create_checkpoint(self) -> TimeCheckpoint:
        t = self._now_ns
        return TimeCheckpoint(id(self), t, t)

    def advance_simulation(self, delta_ns: int) -> None:
        if delta_ns < 0:
            raise ValueError(f"simulated time cannot go backwards (delta_ns={delta_ns})")
        with self._lock:
            self._now_ns += int(delta_ns)

    def set_ns(self, t_ns: int) -> None:
        """Jump to an absolute time, forward only."""
        with self._lock:
            if t_ns < self._now_ns:
                raise ValueError(f"simulated time cannot go backwards ({t_ns} < {self._now_ns})")
            self._now_ns = int(t_ns)


_source: TimeSource | None = None
_source_lock = threading.Lock()


def get_time_source() -> TimeSource:
    """The process-wide time source, created on first use (a ``MonotonicTimeSource``)."""
    global _source
    src = _source
    if src is None:
        with _source_lock:
            if _source is None:
                _source = MonotonicTimeSource()
            src = _source
    return src


def set_time_source(source: TimeSource) -> TimeSource:
    """Install the process-wide source; returns the previous one (tests restore it)."""
    global _source
    if not isinstance(source, TimeSource):
        raise TypeError(f"{source!r} does not implement TimeSource")
    with _source_lock:
        previous = _source if _source is not None else MonotonicTimeSource()
        _source = source
    return previous


def monotonic_ns() -> int:
    """Monotonic nanoseconds from the process-wide source."""
    return get_time_source().monotonic_ns()


def now_ns() -> int:
    """Host-comparable nanoseconds from the process-wide source."""
    return get_time_source().now_ns()


def process_cpu_ns() -> int:
    """CPU time this process consumed (for idle-cost measurements)."""
    return _os_time.process_time_ns()
