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

Compiled code reads the same clock through ``clock_monotonic_ns()``, an intrinsic that
calls ``clock_gettime(CLOCK_MONOTONIC)`` (what ``time.monotonic_ns`` calls on Linux):
``clock_monotonic_ns() + source.anchor_ns`` is ``source.now_ns()`` of a
``MonotonicTimeSource``. Kernels that must read time inside their own critical section
(the hybrid logical clock's compiled path) use it; ``compiled_clock_available()`` says
whether it may be used on this platform and agrees with the Python reading.
"""

from __future__ import annotations

import sys
import threading
import time as _os_time
from typing import Protocol, runtime_checkable

import msgspec
from llvmlite import ir
from loguru import logger
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from fabric._jit import jit

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
    "clock_monotonic_ns",
    "compiled_now_ns",
    "compiled_clock_available",
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

    @property
    def anchor_ns(self) -> int:
        """``now_ns() - monotonic_ns()``, fixed at construction (realtime minus monotonic then).

        Compiled code reproduces ``now_ns()`` as ``clock_monotonic_ns() + anchor_ns``.
        """
        return self._offset_ns

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


# ----------------------------------------------------------------------------- compiled reading

# CLOCK_MONOTONIC's id on this platform (1 on Linux); a constant, not a clock read.
_CLOCK_MONOTONIC_ID = int(getattr(_os_time, "CLOCK_MONOTONIC", 1))


@intrinsic
def clock_monotonic_ns(typingctx):
    """``CLOCK_MONOTONIC`` in ns, for compiled code: ``clock_gettime`` called from the kernel.

    The clock ``MonotonicTimeSource.monotonic_ns`` reads (``time.monotonic_ns`` calls
    ``clock_gettime(CLOCK_MONOTONIC)`` on Linux). Assumes a 64-bit ``struct timespec``
    (``{int64 tv_sec; int64 tv_nsec}``: Linux on x86-64 and AArch64); use it only when
    ``compiled_clock_available()`` says so. The struct is zeroed first, so a failing call
    (impossible for CLOCK_MONOTONIC on Linux) would read 0, never garbage.
    ~20-30 ns here (vDSO), no GIL release.
    """
    sig = types.int64()

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        i64 = ir.IntType(64)
        timespec = ir.LiteralStructType([i64, i64])
        fnty = ir.FunctionType(i32, [i32, timespec.as_pointer()])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "clock_gettime")
        ts = cgutils.alloca_once(builder, timespec, zfill=True)
        builder.call(fn, [ir.Constant(i32, _CLOCK_MONOTONIC_ID), ts])
        sec = builder.load(cgutils.gep_inbounds(builder, ts, 0, 0))
        nsec = builder.load(cgutils.gep_inbounds(builder, ts, 0, 1))
        return builder.add(builder.mul(sec, ir.Constant(i64, 1_000_000_000)), nsec)

    return sig, codegen


@jit("int64(int64)")
def compiled_now_ns(anchor_ns):  # pragma: no cover - compiled
    """``clock_monotonic_ns() + anchor_ns``: a ``MonotonicTimeSource``'s ``now_ns`` read in compiled code."""
    return clock_monotonic_ns() + anchor_ns


_compiled_ok: bool | None = None


def compiled_clock_available() -> bool:
    """Whether compiled code may read ``CLOCK_MONOTONIC`` through ``clock_monotonic_ns``.

    True on 64-bit Linux when a compiled reading falls between two Python readings of the
    same clock (checked once per process; a disagreement is logged and disables it).
    """
    global _compiled_ok
    ok = _compiled_ok
    if ok is None:
        ok = False
        if sys.platform.startswith("linux") and sys.maxsize > 2**32:
            before = _os_time.monotonic_ns()
            reading = int(compiled_now_ns(0))
            after = _os_time.monotonic_ns()
            ok = before <= reading <= after
            if not ok:
                logger.warning(
                    "the compiled CLOCK_MONOTONIC reading {} is not between the Python readings {} and {}; "
                    "compiled clock reads are disabled in this process",
                    reading,
                    before,
                    after,
                )
        _compiled_ok = ok
    return ok
