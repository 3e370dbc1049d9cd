"""Hybrid logical clocks: causality-respecting timestamps close to physical time.

A hybrid logical clock (HLC; S. Kulkarni, M. Demirbas, D. Madappa, B. Avva and
M. Leone, "Logical Physical Clocks", OPODIS 2014) stamps every event with a pair
``(l, c)``: ``l`` is the largest physical time the event knows of, ``c`` a
counter that orders events sharing the same ``l``. If event e happened before
event f, then ``stamp(e) < stamp(f)``; and ``l`` never runs ahead of the fastest
physical clock in the system by more than that clock's skew.

Stamp encoding
--------------
A stamp is ONE non-negative int64: the physical component in nanoseconds with
its low 16 bits replaced by the logical counter (the 48+16 packing Kulkarni et
al. discuss)::

    63 62                                          16 15              0
    +--+---------------------------------------------+----------------+
    |0 |  l: physical ns, granularity 2**16 ns        |  c: logical    |
    |  |  (65.536 us; bits 62..16 of the ns reading)  |  0 .. 0xFFFF   |
    +--+---------------------------------------------+----------------+

    stamp = (l & ~0xFFFF) | c          ordering stamps == ordering ints

Valid stamps lie in ``[0, STAMP_LIMIT)`` with ``STAMP_LIMIT = 2**62`` (ns since
the Unix epoch up to the year 2116), so ``stamp + 1`` never overflows.

**Logical carry.** When ``c`` would exceed ``0xFFFF`` the increment carries
into ``l``: ``stamp + 1`` moves ``l`` on by one 65.5 us grain and resets ``c``
to 0. Ordering is preserved (the stamp is still ``old + 1``); the price is that
``l`` runs ahead of physical time by one grain per 65,536 events that share a
grain. That takes a billion events a second on one clock, so it does not happen
in practice; every carry is counted (``logical_carries``) so it is visible.

Rules (Kulkarni's, in packed form)
----------------------------------
With ``pt`` the physical reading truncated to the grain (``pt & ~0xFFFF``):

- send or local event (``tick``):  ``new = max(old + 1, pt)``
- receive of ``remote`` (``update``): ``new = max(old + 1, remote + 1, pt)``

These are exactly Kulkarni's Fig. 5 rules: ``l' = max(l, l_m, pt)`` and ``c'``
is ``max(c, c_m) + 1``, ``c + 1``, ``c_m + 1`` or 0 depending on which of the
three supplied ``l'``; packing turns all four cases into one ``max``, which is
what lets the shared-memory clock update with a single compare-and-swap.

Max offset
----------
A remote stamp whose physical part is more than ``max_offset_ns`` ahead of
the local physical reading is **rejected**: the clock is left unchanged (so a
peer with a broken clock cannot drag every clock in the system into the
future), the rejection is counted and logged at DEBUG. ``update`` raises
``CausalityViolation``; ``try_update`` returns a ``CausalityResult`` with
``accepted=False`` and the reason instead (the hot-path flavour: no exception).
The default, 500 ms, is CockroachDB's default maximum clock offset.

Backward jumps of the physical clock (a ``TimeSource`` whose ``now_ns`` went
down) cannot make stamps go backwards (the rules take a ``max``), but they mean
the host clock is misbehaving: each is counted and logged at WARNING.

The shared clock (``SharedHybridClock``)
---------------------------------------
Many processes share one clock through a 128-byte region of shared memory
(normally at ``SEGMENT_HEADER_BYTES`` in a ``Segment``)::

    cell  byte  name                  written by           how
    ----  ----  --------------------  -------------------  -----------------------
      0     0   CLOCK                 every tick/update    CAS on the packed stamp
      1     8   MAGIC "CFHLC001"      creator, last        release store (ready)
      2    16   MAX_OFFSET_NS         creator              before MAGIC
      3    24   REJECTIONS            update_shared        fetch_add (rare)
      4    32   BACKWARD_JUMPS        any handle           fetch_add (rare)
      5    40   MAX_BACKWARD_JUMP_NS  any handle           CAS max (rare)
      6    48   LOGICAL_CARRIES       tick/update          fetch_add (rare)
      7    56   CAS_RETRIES           tick/update          fetch_add, once per call,
                                                           only when a CAS lost
      8    64   MAX_DRIFT_NS          update_shared        CAS max: largest lead of a
                                                           remote over local time
      9..15     reserved (zero)

The clock word shares its cache line with the counters on purpose: the
counters are written only on rare events, and ``update_shared`` reads
``MAX_OFFSET_NS`` from the line it is about to CAS anyway, so the check costs
no extra cache miss.

**Why CAS on one packed word and not a seqlock.** The whole clock state is
one 64-bit word, so a single ``lock cmpxchg`` moves ``l`` and ``c`` together:
readers need one atomic load and never retry or see a torn pair, and writers
are lock-free (a failed CAS means another process made progress; the loser
recomputes ``max`` from the value it saw and tries again). A seqlock would
need writers to exclude each other (a lock in disguise), and a writer process
that dies between the two sequence increments leaves the sequence odd and
every reader spinning forever; here a process can die at any instruction and
the clock stays valid. Uniqueness across processes follows from the CAS: every
successful CAS installs a value strictly greater than the one it replaced, so
no two callers are ever handed the same stamp.

``causal_dependencies`` (in-process clock only): the clock keeps a bounded
history (``history_size`` entries, oldest dropped first) of the remote stamps
it merged and the local stamp each merge produced. For a stamp ``s`` this clock
issued, ``causal_dependencies(s)`` lists the remote stamps merged at or before
``s`` and still in the window: the direct cross-node predecessors of ``s``
(every event that happened before one of them also happened before ``s``).
Local predecessors are implicit: every earlier local stamp.

Two implementations of the in-process clock
-------------------------------------------
``HybridLogicalClock(...)`` picks one when it is built; both follow the rules above
and keep the same counters and history:

- **compiled** (``time_source`` is exactly a ``MonotonicTimeSource``, the production
  default): the clock's state is a small process-local int64 array and every operation
  that changes it (``tick``, ``tick_n``, ``try_update``/``update``/``merge``,
  ``validate_causality``'s jump check) is ONE numba kernel call that reads the
  physical clock itself (``fabric.timesource.clock_monotonic_ns() + anchor_ns``, the
  source's own ``now_ns``) and applies the rule. Kernels run holding the GIL
  (``nogil=False``, fabric/_jit.py), so each call is atomic with respect to every other
  Python thread: that is the critical section, with the reading inside it, and no
  ``threading.Lock`` is needed. Reads (``statistics``, ``causal_dependencies``) copy
  the state in one kernel call too. ``tick`` is the compiled entry point itself, bound
  to the state (no Python frame): ~0.09 us instead of ~0.44 us (measured here).
  A backward jump is counted by the kernel and logged (WARNING) from inside it, after
  the state update, through a numba ``objmode`` block; rejections come back as a
  negative result and are logged by the Python method. The compiled path is not used
  on an interpreter without a GIL (``sys._is_gil_enabled()`` false) or where
  ``fabric.timesource.compiled_clock_available()`` says no.
- **locked** (any other time source: ``SimulatedTimeSource``, tests' scripted sources,
  user sources): the state sits behind a ``threading.Lock`` and the source is called
  inside it. This is also the reference the compiled path is tested against.
"""

from __future__ import annotations

import functools
import sys
import threading
from collections import deque
from typing import Any

import msgspec
import numpy as np
from loguru import logger
from numba import objmode

from fabric._atomics import compare_exchange_at, fetch_add_at, i64_array_at, load_acquire_at, store_release_at
from fabric._jit import jit
from fabric.errors import CausalityViolation, ClosedResourceError, LayoutError
from fabric.segment import Segment
from fabric.timesource import (
    MonotonicTimeSource,
    SimulatedTimeSource,
    TimeSource,
    clock_monotonic_ns,
    compiled_clock_available,
    get_time_source,
)
from shm_layouts.header import SEGMENT_HEADER_BYTES

__all__ = [
    "LOGICAL_BITS",
    "LOGICAL_MASK",
    "PHYSICAL_MASK",
    "STAMP_LIMIT",
    "DEFAULT_MAX_OFFSET_NS",
    "hlc_physical_ns",
    "hlc_logical",
    "make_stamp",
    "CausalityResult",
    "HlcStatistics",
    "HybridLogicalClock",
    "SharedHlcStatistics",
    "SharedHybridClock",
    "tick_shared",
    "tick_shared_n",
    "update_shared",
    "REJECTED",
    "INVALID_STAMP",
    "HLC_REGION_BYTES",
    "HLC_MAGIC",
    "CLOCK_CELL",
    "MAGIC_CELL",
    "MAX_OFFSET_CELL",
    "REJECTIONS_CELL",
    "BACKWARD_JUMPS_CELL",
    "MAX_BACKWARD_JUMP_CELL",
    "LOGICAL_CARRIES_CELL",
    "CAS_RETRIES_CELL",
    "MAX_DRIFT_CELL",
]

LOGICAL_BITS = 16
LOGICAL_MASK = (1 << LOGICAL_BITS) - 1  # 0xFFFF
PHYSICAL_MASK = ~LOGICAL_MASK  # ...FFFF0000 (as a negative Python int: & keeps bits 16..63)
STAMP_LIMIT = 1 << 62
DEFAULT_MAX_OFFSET_NS = 500_000_000

# Shared region: 16 int64 cells (see the module docstring).
HLC_REGION_BYTES = 128
HLC_MAGIC = int.from_bytes(b"CFHLC001", "little")
CLOCK_CELL = 0
MAGIC_CELL = 1
MAX_OFFSET_CELL = 2
REJECTIONS_CELL = 3
BACKWARD_JUMPS_CELL = 4
MAX_BACKWARD_JUMP_CELL = 5
LOGICAL_CARRIES_CELL = 6
CAS_RETRIES_CELL = 7
MAX_DRIFT_CELL = 8

# Return codes of update_shared (stamps are never negative).
REJECTED = -1  # remote physical part more than max_offset ahead of local physical time
INVALID_STAMP = -2  # remote outside [0, STAMP_LIMIT)

_HISTORY_DEFAULT = 1024


# ----------------------------------------------------------------------------- stamp helpers


def hlc_physical_ns(stamp: int) -> int:
    """The physical component of a stamp, in ns (low 16 bits zero)."""
    return int(stamp) & PHYSICAL_MASK


def hlc_logical(stamp: int) -> int:
    """The logical counter of a stamp (0 .. 0xFFFF)."""
    return int(stamp) & LOGICAL_MASK


def make_stamp(physical_ns: int, logical: int = 0) -> int:
    """Pack a physical time and a logical counter into a stamp.

    Parameters
    ----------
    physical_ns:
        Physical time in ns; its low 16 bits are dropped (65.5 us granularity).
    logical:
        The logical counter, 0 .. 0xFFFF.

    Returns
    -------
    int
        ``(physical_ns & ~0xFFFF) | logical``.

    Raises
    ------
    ValueError
        ``logical`` is outside 0 .. 0xFFFF or the stamp would fall outside
        ``[0, STAMP_LIMIT)``.
    """
    physical_ns = int(physical_ns)
    logical = int(logical)
    if not 0 <= logical <= LOGICAL_MASK:
        raise ValueError(f"logical counter must be in 0..{LOGICAL_MASK}, got {logical}")
    if not 0 <= physical_ns < STAMP_LIMIT:
        raise ValueError(f"physical_ns must be in [0, 2**62), got {physical_ns}")
    return (physical_ns & PHYSICAL_MASK) | logical


def _check_stamp(stamp: Any, what: str = "stamp") -> int:
    if isinstance(stamp, bool) or not isinstance(stamp, (int, np.integer)):
        raise TypeError(f"{what} must be an int, got {type(stamp).__name__}")
    s = int(stamp)
    if not 0 <= s < STAMP_LIMIT:
        raise ValueError(f"{what} {s} is not a valid HLC stamp (valid stamps lie in [0, 2**62))")
    return s


def _log_backward_jump(jump: int, last: int, pt: int, count: int) -> None:
    """The WARNING both in-process implementations give for a backward jump (the compiled one from objmode)."""
    logger.warning(
        "physical clock went backwards by {} ns ({} -> {}); HLC stamps stay monotonic (backward jump #{})",
        jump,
        last,
        pt,
        count,
    )


def _rejection_reason(remote: int, drift: int, pt: int, max_offset_ns: int) -> str:
    return (
        f"remote stamp {remote} is {drift} ns ahead of local physical time {pt}, "
        f"more than max_offset_ns={max_offset_ns}"
    )


def _gil_enabled() -> bool:
    check = getattr(sys, "_is_gil_enabled", None)
    return True if check is None else bool(check())


def _use_compiled_path(source: TimeSource) -> bool:
    """The compiled path reads CLOCK_MONOTONIC itself: only for the real monotonic source, with a GIL."""
    return type(source) is MonotonicTimeSource and _gil_enabled() and compiled_clock_available()


def _check_clock_args(max_offset_ns: int, history_size: int) -> None:
    """The constructor arguments both in-process clocks validate the same way."""
    if not 0 <= int(max_offset_ns) < STAMP_LIMIT:
        raise ValueError(f"max_offset_ns must be in [0, 2**62), got {max_offset_ns}")
    if int(history_size) < 0:
        raise ValueError(f"history_size must be >= 0, got {history_size}")


def _int_reader(source: TimeSource):
    """``source.now_ns`` as a callable that returns a Python int.

    The library's own sources already return ints, so their bound method is used as is
    (an ``int()`` per reading costs ~40 ns on the publish path); any other source's
    reading is converted.
    """
    if type(source) in (MonotonicTimeSource, SimulatedTimeSource):
        return source.now_ns
    now = source.now_ns
    return lambda: int(now())


# ----------------------------------------------------------------------------- results


class CausalityResult(msgspec.Struct, frozen=True, gc=False):
    """What merging a remote stamp did.

    Attributes
    ----------
    stamp:
        The local stamp of the receive event; when rejected, the unchanged current stamp.
    remote:
        The remote stamp offered.
    accepted:
        False when the remote stamp was rejected (too far ahead); the clock did not move.
    drift_ns:
        Physical part of ``remote`` minus the local physical reading: positive when the
        remote clock is ahead.
    remote_ahead:
        True when the remote stamp was larger than the local stamp before the merge, i.e.
        the local clock was pulled forward by the remote one.
    reason:
        Empty when accepted; otherwise why it was rejected.
    """

    stamp: int
    remote: int
    accepted: bool
    drift_ns: int
    remote_ahead: bool
    reason: str = ""


class HlcStatistics(msgspec.Struct, frozen=True, gc=False):
    """Counters of a ``HybridLogicalClock``."""

    stamp: int
    ticks: int
    updates: int
    rejections: int
    backward_jumps: int
    max_backward_jump_ns: int
    logical_carries: int
    max_drift_ns: int
    max_offset_ns: int
    history_len: int


class SharedHlcStatistics(msgspec.Struct, frozen=True, gc=False):
    """Counters of a ``SharedHybridClock``: shared cells plus this handle's own counts."""

    stamp: int
    max_offset_ns: int
    rejections: int
    backward_jumps: int
    max_backward_jump_ns: int
    logical_carries: int
    cas_retries: int
    max_drift_ns: int
    handle_ticks: int
    handle_updates: int


# ----------------------------------------------------------------------------- in-process clock


class HybridLogicalClock:
    """A hybrid logical clock for one process (thread-safe).

    Parameters
    ----------
    time_source:
        Where physical time comes from (``now_ns()``); default: the process-wide source,
        resolved once here.
    max_offset_ns:
        Largest lead of a remote stamp's physical part over local physical time that
        ``update`` accepts.
    history_size:
        How many merges ``causal_dependencies`` remembers (0 disables the history).
    initial_stamp:
        Start from this stamp (e.g. the last stamp persisted before a restart).

    Notes
    -----
    Every change of state happens in one critical section with the physical reading
    inside it, so concurrent threads neither reorder readings (which would look like
    backward jumps) nor share a stamp. With a ``MonotonicTimeSource`` (the default in
    production) the critical section is one compiled kernel call holding the GIL and the
    instance is a ``HybridLogicalClock`` subclass whose ``tick`` attribute is that kernel
    bound to the clock's state; with any other source it is a ``threading.Lock`` around
    the source's ``now_ns`` (see the module docstring). For a clock shared between
    processes use ``SharedHybridClock``.
    """

    __slots__ = (
        "_source",
        "_now",
        "_max_offset_ns",
        "_lock",
        "_acquire",
        "_release",
        "_stamp",
        "_last_pt",
        "_ticks",
        "_updates",
        "_rejections",
        "_backward_jumps",
        "_max_backward_ns",
        "_carries",
        "_max_drift_ns",
        "_history",
        "_history_on",
    )

    def __new__(
        cls,
        *,
        time_source: TimeSource | None = None,
        max_offset_ns: int = DEFAULT_MAX_OFFSET_NS,
        history_size: int = _HISTORY_DEFAULT,
        initial_stamp: int = 0,
    ) -> "HybridLogicalClock":
        # The source is resolved once, here, so the implementation chosen and the source
        # used agree even if the process-wide source is replaced meanwhile.
        source = time_source if time_source is not None else get_time_source()
        if cls is HybridLogicalClock and _use_compiled_path(source):
            cls = _CompiledHybridLogicalClock
        self = object.__new__(cls)
        self._source = source
        return self

    def __init__(
        self,
        *,
        time_source: TimeSource | None = None,
        max_offset_ns: int = DEFAULT_MAX_OFFSET_NS,
        history_size: int = _HISTORY_DEFAULT,
        initial_stamp: int = 0,
    ) -> None:
        _check_clock_args(max_offset_ns, history_size)
        # self._source was resolved by __new__ (time_source, else the process-wide source).
        self._now = _int_reader(self._source)
        self._max_offset_ns = int(max_offset_ns)
        self._lock = threading.Lock()
        # tick/try_update take the lock through bound methods: ~60 ns less than ``with``.
        self._acquire = self._lock.acquire
        self._release = self._lock.release
        self._stamp = _check_stamp(initial_stamp, "initial_stamp")
        self._last_pt = -1
        self._ticks = 0
        self._updates = 0
        self._rejections = 0
        self._backward_jumps = 0
        self._max_backward_ns = 0
        self._carries = 0
        self._max_drift_ns = 0
        self._history: deque[tuple[int, int]] = deque(maxlen=int(history_size))
        self._history_on = bool(history_size)

    # --- accessors -------------------------------------------------------------------------

    @property
    def last_stamp(self) -> int:
        """The most recent stamp issued (or merged); does not tick."""
        return self._stamp

    @property
    def max_offset_ns(self) -> int:
        """Largest accepted lead of a remote stamp over local physical time."""
        return self._max_offset_ns

    @property
    def time_source(self) -> TimeSource:
        """The source physical time is read from."""
        return self._source

    # --- internals (call with the lock held) -----------------------------------------------

    def _read_physical(self) -> int:
        pt = self._now()
        if pt < self._last_pt:
            self._backward_jump(pt)
        self._last_pt = pt
        return pt

    def _backward_jump(self, pt: int) -> None:
        last = self._last_pt
        jump = last - pt
        self._backward_jumps += 1
        if jump > self._max_backward_ns:
            self._max_backward_ns = jump
        _log_backward_jump(jump, last, pt, self._backward_jumps)

    # --- rules -----------------------------------------------------------------------------

    def tick(self) -> int:
        """Stamp a local or send event: ``new = max(old + 1, pt)``.

        Returns
        -------
        int
            The new stamp, strictly greater than every stamp this clock issued or merged.
        """
        # The publish hot path: _read_physical and the carry test are written out here
        # (each method call costs ~60 ns). Same lock, same reading inside it, same rule.
        self._acquire()
        try:
            pt = self._now()
            if pt < self._last_pt:
                self._backward_jump(pt)
            self._last_pt = pt
            tp = pt & PHYSICAL_MASK
            new = self._stamp + 1
            if tp > new:
                new = tp
            elif not new & LOGICAL_MASK and new != tp:
                # old + 1 crossed into the next grain ahead of physical time: a logical carry.
                self._carries += 1
            self._stamp = new
            self._ticks += 1
            return new
        finally:
            self._release()

    def tick_n(self, n: int) -> int:
        """Stamp ``n`` local events at once; returns the first stamp.

        The stamps are ``first, first + 1, ..., first + n - 1`` (as if ``tick`` had been
        called ``n`` times at the same physical reading).

        Raises
        ------
        ValueError
            ``n`` is outside ``1 .. 65536``.
        """
        n = int(n)
        if not 1 <= n <= LOGICAL_MASK + 1:
            raise ValueError(f"n must be in 1..{LOGICAL_MASK + 1}, got {n}")
        with self._lock:
            tp = self._read_physical() & PHYSICAL_MASK
            old = self._stamp
            first = old + 1
            if tp > first:
                first = tp
            last = first + n - 1
            if (last & PHYSICAL_MASK) > max(old & PHYSICAL_MASK, tp):
                self._carries += 1
            self._stamp = last
            self._ticks += n
            return first

    def try_update(self, remote: int) -> CausalityResult:
        """Merge a remote stamp (receive event) without raising on a causality violation.

        ``new = max(old + 1, remote + 1, pt)`` unless ``remote`` is more than
        ``max_offset_ns`` ahead of local physical time, in which case the clock does not
        move and the result has ``accepted=False``.

        Raises
        ------
        TypeError, ValueError
            ``remote`` is not an int in ``[0, 2**62)`` (a malformed stamp, not a causality
            question).
        """
        if remote.__class__ is not int or not 0 <= remote < STAMP_LIMIT:
            remote = _check_stamp(remote, "remote stamp")  # raises unless a numpy integer in range
        self._acquire()
        try:
            pt = self._now()
            if pt < self._last_pt:
                self._backward_jump(pt)
            self._last_pt = pt
            drift = (remote & PHYSICAL_MASK) - pt
            if drift > self._max_drift_ns:
                self._max_drift_ns = drift
            old = self._stamp
            if drift > self._max_offset_ns:
                self._rejections += 1
                reason = _rejection_reason(remote, drift, pt, self._max_offset_ns)
                logger.debug("HLC rejected a remote stamp: {}", reason)
                return CausalityResult(old, remote, False, drift, remote > old, reason)
            tp = pt & PHYSICAL_MASK
            new = old + 1
            if remote >= new:
                new = remote + 1
            if tp > new:
                new = tp
            elif not new & LOGICAL_MASK and new != tp:
                # the increment crossed into the next grain ahead of physical time: a carry
                self._carries += 1
            self._stamp = new
            self._updates += 1
            if self._history_on:
                self._history.append((new, remote))
            return CausalityResult(new, remote, True, drift, remote > old)
        finally:
            self._release()

    def update(self, remote: int) -> CausalityResult:
        """Merge a remote stamp (receive event): ``new = max(old + 1, remote + 1, pt)``.

        Parameters
        ----------
        remote:
            The stamp carried by the received message.

        Returns
        -------
        CausalityResult
            With ``accepted=True``; ``stamp`` is greater than both ``remote`` and every
            earlier local stamp.

        Raises
        ------
        CausalityViolation
            ``remote``'s physical part is more than ``max_offset_ns`` ahead of local
            physical time; the clock did not move and the rejection was counted.
        TypeError, ValueError
            ``remote`` is not a valid stamp.
        """
        result = self.try_update(remote)
        if not result.accepted:
            raise CausalityViolation(result.reason)
        return result

    def merge(self, remote: int) -> int:
        """Merge a remote stamp like ``try_update`` without building a result (the per-packet path).

        Same rule, counters, history and DEBUG log of a rejection as ``try_update``.

        Returns
        -------
        int
            The new local stamp, or ``REJECTED`` (-1) when ``remote`` is more than
            ``max_offset_ns`` ahead of local physical time (the clock did not move).

        Raises
        ------
        TypeError, ValueError
            ``remote`` is not a valid stamp.
        """
        result = self.try_update(remote)
        return result.stamp if result.accepted else REJECTED

    # --- queries ---------------------------------------------------------------------------

    def validate_causality(self, stamp: int) -> bool:
        """Whether ``update(stamp)`` would accept ``stamp`` now (does not move the clock).

        True when the stamp's physical part is at most ``max_offset_ns`` ahead of the
        local physical reading. Reads the physical clock (a backward jump is detected
        here too).

        Raises
        ------
        TypeError, ValueError
            ``stamp`` is not a valid stamp.
        """
        stamp = _check_stamp(stamp)
        with self._lock:
            pt = self._read_physical()
        return (stamp & PHYSICAL_MASK) - pt <= self._max_offset_ns

    def causal_dependencies(self, stamp: int) -> list[int]:
        """Remote stamps merged into this clock at or before local stamp ``stamp``.

        For a stamp this clock issued, these are its direct cross-node causal
        predecessors still in the bounded history window (oldest first). Merges older
        than the window are forgotten (``history_size``).

        Raises
        ------
        TypeError, ValueError
            ``stamp`` is not a valid stamp.
        """
        stamp = _check_stamp(stamp)
        with self._lock:
            return [remote for local, remote in self._history if local <= stamp]

    def statistics(self) -> HlcStatistics:
        """A snapshot of the counters."""
        with self._lock:
            return HlcStatistics(
                stamp=self._stamp,
                ticks=self._ticks,
                updates=self._updates,
                rejections=self._rejections,
                backward_jumps=self._backward_jumps,
                max_backward_jump_ns=self._max_backward_ns,
                logical_carries=self._carries,
                max_drift_ns=self._max_drift_ns,
                max_offset_ns=self._max_offset_ns,
                history_len=len(self._history),
            )

    def __repr__(self) -> str:
        s = self.last_stamp
        return f"<HybridLogicalClock l={hlc_physical_ns(s)} c={hlc_logical(s)}>"


# ----------------------------------------------------------------------------- in-process kernels
#
# The compiled path's state: one process-local int64 array, header cells then the history
# ring ((local, remote) pairs). Only these kernels touch it after construction, each in
# one call that holds the GIL (nogil=False): the calls are the critical sections.

_S_STAMP = 0
_S_LAST_PT = 1  # -1 before the first reading
_S_TICKS = 2
_S_UPDATES = 3
_S_REJECTIONS = 4
_S_JUMPS = 5
_S_MAX_JUMP = 6
_S_CARRIES = 7
_S_MAX_DRIFT = 8
_S_MAX_OFFSET = 9
_S_ANCHOR = 10  # the time source's anchor_ns: physical time = CLOCK_MONOTONIC + this
_S_HIST_CAP = 11
_S_HIST_COUNT = 12  # merges ever recorded (the ring holds the last min(count, cap))
_S_HEADER = 16


@jit("void(int64, int64, int64, int64)")
def _report_backward_jump(jump, last, pt, count):  # pragma: no cover - compiled
    """Log a backward jump from compiled code. Callers have finished updating the state:
    Python code runs here, so another thread may run too."""
    with objmode():
        _log_backward_jump(jump, last, pt, count)


@jit("int64(int64, int64)", inline="always")
def _observe_pt(addr, pt):  # pragma: no cover - compiled
    """Record the physical reading ``pt``; count a backward jump. Returns the jump (0: none)."""
    s = i64_array_at(addr, _S_HEADER)
    last = s[_S_LAST_PT]
    s[_S_LAST_PT] = pt
    if pt < last:
        jump = last - pt
        s[_S_JUMPS] += 1
        if jump > s[_S_MAX_JUMP]:
            s[_S_MAX_JUMP] = jump
        return jump
    return 0


@jit("int64(int64, int64)", inline="always")
def _tick_at(addr, pt):  # pragma: no cover - compiled
    """``tick`` at physical reading ``pt``: ``new = max(old + 1, pt)``; returns ``new``."""
    s = i64_array_at(addr, _S_HEADER)
    jump = _observe_pt(addr, pt)
    tp = pt & PHYSICAL_MASK
    new = s[_S_STAMP] + 1
    if tp > new:
        new = tp
    elif (new & LOGICAL_MASK) == 0 and new != tp:
        s[_S_CARRIES] += 1  # old + 1 crossed into the next grain ahead of physical time
    s[_S_STAMP] = new
    s[_S_TICKS] += 1
    if jump > 0:
        _report_backward_jump(jump, pt + jump, pt, s[_S_JUMPS])
    return new


@jit("int64(int64, int64, int64)", inline="always")
def _tick_n_at(addr, pt, n):  # pragma: no cover - compiled
    """``tick_n(n)`` at physical reading ``pt`` (``1 <= n <= 65536``); returns the first stamp."""
    s = i64_array_at(addr, _S_HEADER)
    jump = _observe_pt(addr, pt)
    tp = pt & PHYSICAL_MASK
    old = s[_S_STAMP]
    first = old + 1
    if tp > first:
        first = tp
    last = first + n - 1
    hi = old & PHYSICAL_MASK
    if tp > hi:
        hi = tp
    if (last & PHYSICAL_MASK) > hi:
        s[_S_CARRIES] += 1
    s[_S_STAMP] = last
    s[_S_TICKS] += n
    if jump > 0:
        _report_backward_jump(jump, pt + jump, pt, s[_S_JUMPS])
    return first


@jit("int64(int64, int64, int64)", inline="always")
def _merge_at(addr, remote, pt):  # pragma: no cover - compiled
    """Receive rule at physical reading ``pt``: ``new = max(old + 1, remote + 1, pt)``.

    Returns ``new`` (>= 0), or ``-drift`` (<= -1) when ``remote`` is more than the max
    offset ahead of ``pt`` (rejected: only the rejection and max-drift counters move).
    ``remote`` must be a valid stamp (the Python methods check).
    """
    s = i64_array_at(addr, _S_HEADER)
    jump = _observe_pt(addr, pt)
    drift = (remote & PHYSICAL_MASK) - pt
    if drift > s[_S_MAX_DRIFT]:
        s[_S_MAX_DRIFT] = drift
    if drift > s[_S_MAX_OFFSET]:
        s[_S_REJECTIONS] += 1
        result = -drift  # drift > max_offset >= 0, so this is <= -1
    else:
        tp = pt & PHYSICAL_MASK
        new = s[_S_STAMP] + 1
        if remote >= new:
            new = remote + 1
        if tp > new:
            new = tp
        elif (new & LOGICAL_MASK) == 0 and new != tp:
            s[_S_CARRIES] += 1
        s[_S_STAMP] = new
        s[_S_UPDATES] += 1
        cap = s[_S_HIST_CAP]
        if cap > 0:
            h = i64_array_at(addr, _S_HEADER + 2 * cap)
            i = _S_HEADER + 2 * (s[_S_HIST_COUNT] % cap)
            h[i] = new
            h[i + 1] = remote
            s[_S_HIST_COUNT] += 1
        result = new
    if jump > 0:
        _report_backward_jump(jump, pt + jump, pt, s[_S_JUMPS])
    return result


@jit("UniTuple(int64, 3)(int64, int64, int64)", inline="always")
def _try_update_at(addr, remote, pt):  # pragma: no cover - compiled
    """``_merge_at`` plus what ``try_update`` reports: (result, stamp before, ``pt``)."""
    old = i64_array_at(addr, _S_HEADER)[_S_STAMP]
    return _merge_at(addr, remote, pt), old, pt


@jit("int64(int64, int64, int64)", inline="always")
def _validate_at(addr, stamp, pt):  # pragma: no cover - compiled
    """1 when ``stamp`` is at most the max offset ahead of ``pt`` (records ``pt``), else 0."""
    s = i64_array_at(addr, _S_HEADER)
    jump = _observe_pt(addr, pt)
    ok = 1 if (stamp & PHYSICAL_MASK) - pt <= s[_S_MAX_OFFSET] else 0
    if jump > 0:
        _report_backward_jump(jump, pt + jump, pt, s[_S_JUMPS])
    return ok


@jit("int64(int64)", inline="always")
def _physical_now(addr):  # pragma: no cover - compiled
    """The source's ``now_ns``: CLOCK_MONOTONIC plus the anchor kept in the state."""
    return clock_monotonic_ns() + i64_array_at(addr, _S_HEADER)[_S_ANCHOR]


@jit("int64(int64)")
def _tick_now(addr):  # pragma: no cover - compiled
    """``tick`` of the compiled clock whose state is at ``addr``: read the clock, apply, return."""
    return _tick_at(addr, _physical_now(addr))


@jit("int64(int64, int64)")
def _tick_n_now(addr, n):  # pragma: no cover - compiled
    return _tick_n_at(addr, _physical_now(addr), n)


@jit("int64(int64, int64)")
def _merge_now(addr, remote):  # pragma: no cover - compiled
    return _merge_at(addr, remote, _physical_now(addr))


@jit("UniTuple(int64, 3)(int64, int64)")
def _try_update_now(addr, remote):  # pragma: no cover - compiled
    return _try_update_at(addr, remote, _physical_now(addr))


@jit("int64(int64, int64)")
def _validate_now(addr, stamp):  # pragma: no cover - compiled
    return _validate_at(addr, stamp, _physical_now(addr))


@jit("void(int64, int64)")
def _snapshot(addr, out_addr):  # pragma: no cover - compiled
    """Copy the header cells to ``out_addr`` (one consistent snapshot)."""
    s = i64_array_at(addr, _S_HEADER)
    out = i64_array_at(out_addr, _S_HEADER)
    for i in range(_S_HEADER):
        out[i] = s[i]


@jit("int64(int64, int64, int64)")
def _history_select(addr, stamp, out_addr):  # pragma: no cover - compiled
    """Write the remotes merged at or before local ``stamp``, oldest first, to ``out_addr``
    (room for the history capacity); returns how many."""
    s = i64_array_at(addr, _S_HEADER)
    cap = s[_S_HIST_CAP]
    if cap == 0:
        return 0
    h = i64_array_at(addr, _S_HEADER + 2 * cap)
    out = i64_array_at(out_addr, cap)
    count = s[_S_HIST_COUNT]
    held = count if count < cap else cap
    n = 0
    for k in range(count - held, count):
        i = _S_HEADER + 2 * (k % cap)
        if h[i] <= stamp:
            out[n] = h[i + 1]
            n += 1
    return n


@jit("void(int64, int64)")
def _shift_anchor(addr, delta_ns):  # pragma: no cover - compiled
    """Move the compiled clock's physical time by ``delta_ns`` (a test seam: a negative delta
    is a backward jump of the host clock)."""
    i64_array_at(addr, _S_HEADER)[_S_ANCHOR] += delta_ns


def _entry(dispatcher):
    """The compiled entry of a kernel with one explicit signature (skips numba's dispatch, ~100 ns)."""
    (overload,) = dispatcher.overloads.values()
    return overload.entry_point


_TICK_NOW = _entry(_tick_now)
_TICK_N_NOW = _entry(_tick_n_now)
_MERGE_NOW = _entry(_merge_now)
_TRY_UPDATE_NOW = _entry(_try_update_now)
_VALIDATE_NOW = _entry(_validate_now)


class _CompiledHybridLogicalClock(HybridLogicalClock):
    """``HybridLogicalClock`` on a ``MonotonicTimeSource``: each operation is one kernel call.

    Built by ``HybridLogicalClock(...)``, never directly. The state lives in ``_state``
    (see the cell constants above) and only kernels change it. ``tick`` is an instance
    attribute: the compiled ``_tick_now`` bound to the state's address by a
    ``functools.partial`` that also holds the array (so a saved ``clock.tick`` keeps the
    memory it writes alive).

    The other operations call the module's ``_*_NOW`` entry points (``f(addr, ...)``; a
    global lookup is ~15 ns cheaper than an attribute here). Tests substitute those, and
    ``tick``, with the ``_*_at`` kernels fed a scripted physical reading: the same rule
    code, driven by a time the test controls.
    """

    __slots__ = ("tick", "_state", "_addr", "_history_cap")

    def __init__(
        self,
        *,
        time_source: TimeSource | None = None,
        max_offset_ns: int = DEFAULT_MAX_OFFSET_NS,
        history_size: int = _HISTORY_DEFAULT,
        initial_stamp: int = 0,
    ) -> None:
        _check_clock_args(max_offset_ns, history_size)
        source = self._source  # resolved by __new__: a MonotonicTimeSource
        self._max_offset_ns = int(max_offset_ns)
        cap = int(history_size)
        state = np.zeros(_S_HEADER + 2 * cap, dtype=np.int64)
        state[_S_STAMP] = _check_stamp(initial_stamp, "initial_stamp")
        state[_S_LAST_PT] = -1
        state[_S_MAX_OFFSET] = self._max_offset_ns
        state[_S_ANCHOR] = source.anchor_ns
        state[_S_HIST_CAP] = cap
        self._state = state
        self._addr = int(state.ctypes.data)
        self._history_cap = cap
        tick = functools.partial(_TICK_NOW, self._addr)
        tick._keepalive = state  # type: ignore[attr-defined]  # partial objects take attributes
        self.tick = tick

    @property
    def last_stamp(self) -> int:
        """The most recent stamp issued (or merged); does not tick."""
        return int(self._state[_S_STAMP])

    def tick_n(self, n: int) -> int:
        """Stamp ``n`` local events at once; returns the first stamp (see ``HybridLogicalClock.tick_n``)."""
        n = int(n)
        if not 1 <= n <= LOGICAL_MASK + 1:
            raise ValueError(f"n must be in 1..{LOGICAL_MASK + 1}, got {n}")
        return _TICK_N_NOW(self._addr, n)

    def try_update(self, remote: int) -> CausalityResult:
        """Merge a remote stamp without raising on a causality violation (see ``HybridLogicalClock.try_update``)."""
        if remote.__class__ is not int or not 0 <= remote < STAMP_LIMIT:
            remote = _check_stamp(remote, "remote stamp")
        r, old, pt = _TRY_UPDATE_NOW(self._addr, remote)
        if r >= 0:
            return CausalityResult(r, remote, True, (remote & PHYSICAL_MASK) - pt, remote > old)
        reason = _rejection_reason(remote, -r, pt, self._max_offset_ns)
        logger.debug("HLC rejected a remote stamp: {}", reason)
        return CausalityResult(old, remote, False, -r, remote > old, reason)

    def merge(self, remote: int) -> int:
        """Merge a remote stamp; the new stamp or ``REJECTED`` (see ``HybridLogicalClock.merge``)."""
        if remote.__class__ is not int or not 0 <= remote < STAMP_LIMIT:
            remote = _check_stamp(remote, "remote stamp")
        r = _MERGE_NOW(self._addr, remote)
        if r >= 0:
            return r
        drift = -r
        reason = _rejection_reason(remote, drift, (remote & PHYSICAL_MASK) - drift, self._max_offset_ns)
        logger.debug("HLC rejected a remote stamp: {}", reason)
        return REJECTED

    def validate_causality(self, stamp: int) -> bool:
        """Whether ``update(stamp)`` would accept ``stamp`` now (see ``HybridLogicalClock.validate_causality``)."""
        stamp = _check_stamp(stamp)
        return _VALIDATE_NOW(self._addr, stamp) == 1

    def causal_dependencies(self, stamp: int) -> list[int]:
        """Remote stamps merged at or before local ``stamp`` (see ``HybridLogicalClock.causal_dependencies``)."""
        stamp = _check_stamp(stamp)
        cap = self._history_cap
        if cap == 0:
            return []
        out = np.empty(cap, dtype=np.int64)
        n = int(_history_select(self._addr, stamp, out.ctypes.data))
        return out[:n].tolist()

    def statistics(self) -> HlcStatistics:
        """A snapshot of the counters (copied in one kernel call)."""
        snap = np.empty(_S_HEADER, dtype=np.int64)
        _snapshot(self._addr, snap.ctypes.data)
        v = snap.tolist()
        return HlcStatistics(
            stamp=v[_S_STAMP],
            ticks=v[_S_TICKS],
            updates=v[_S_UPDATES],
            rejections=v[_S_REJECTIONS],
            backward_jumps=v[_S_JUMPS],
            max_backward_jump_ns=v[_S_MAX_JUMP],
            logical_carries=v[_S_CARRIES],
            max_drift_ns=v[_S_MAX_DRIFT],
            max_offset_ns=v[_S_MAX_OFFSET],
            history_len=min(v[_S_HIST_COUNT], v[_S_HIST_CAP]),
        )

    def _shift_physical_ns(self, delta_ns: int) -> None:
        """Test seam: move this clock's physical time by ``delta_ns`` (negative: a backward jump)."""
        _shift_anchor(self._addr, int(delta_ns))


# ----------------------------------------------------------------------------- shared kernels


@jit("void(int64, int64)", inline="always")
def _cas_max(addr, value):  # pragma: no cover - compiled
    """Raise the int64 at ``addr`` to ``value`` if it is smaller (lock-free)."""
    seen = load_acquire_at(addr)
    while value > seen:
        prev = compare_exchange_at(addr, seen, value)
        if prev == seen:
            return
        seen = prev


@jit("int64(int64, int64)")
def tick_shared(addr, physical_ns):  # pragma: no cover - compiled
    """Send/local rule on the shared clock word at ``addr``: ``max(old + 1, pt)`` by CAS.

    Safety: ``addr`` must be the CLOCK cell of an initialised 128-byte HLC region that
    stays mapped for the duration of the call.
    """
    tp = physical_ns & PHYSICAL_MASK
    old = load_acquire_at(addr)
    retries = 0
    while True:
        new = old + 1
        if tp > new:
            new = tp
        # SYNC POINT: the CAS is seq_cst; it pairs with every other handle's CAS on CLOCK.
        seen = compare_exchange_at(addr, old, new)
        if seen == old:
            break
        old = seen
        retries += 1
    if retries > 0:
        fetch_add_at(addr + CAS_RETRIES_CELL * 8, retries)
    hi = old & PHYSICAL_MASK
    if tp > hi:
        hi = tp
    if (new & PHYSICAL_MASK) > hi:
        fetch_add_at(addr + LOGICAL_CARRIES_CELL * 8, 1)
    return new


@jit("int64(int64, int64, int64)")
def tick_shared_n(addr, physical_ns, n):  # pragma: no cover - compiled
    """Reserve ``n`` consecutive stamps with one CAS; returns the first.

    The stamps ``first .. first + n - 1`` are ``n`` local events at one physical reading.
    Safety: as ``tick_shared``; ``n >= 1``.
    """
    tp = physical_ns & PHYSICAL_MASK
    old = load_acquire_at(addr)
    retries = 0
    while True:
        first = old + 1
        if tp > first:
            first = tp
        last = first + n - 1
        seen = compare_exchange_at(addr, old, last)
        if seen == old:
            break
        old = seen
        retries += 1
    if retries > 0:
        fetch_add_at(addr + CAS_RETRIES_CELL * 8, retries)
    hi = old & PHYSICAL_MASK
    if tp > hi:
        hi = tp
    if (last & PHYSICAL_MASK) > hi:
        fetch_add_at(addr + LOGICAL_CARRIES_CELL * 8, 1)
    return first


@jit("int64(int64, int64, int64)")
def update_shared(addr, remote, physical_ns):  # pragma: no cover - compiled
    """Receive rule on the shared clock word: ``max(old + 1, remote + 1, pt)`` by CAS.

    Returns the new stamp, or ``REJECTED`` (-1; counted in REJECTIONS) when the remote
    physical part is more than MAX_OFFSET_NS ahead of ``physical_ns``, or
    ``INVALID_STAMP`` (-2) when ``remote`` is outside ``[0, STAMP_LIMIT)``.
    Safety: as ``tick_shared``.
    """
    if remote < 0 or remote >= STAMP_LIMIT:
        return INVALID_STAMP
    drift = (remote & PHYSICAL_MASK) - physical_ns
    if drift > 0 and drift > load_acquire_at(addr + MAX_DRIFT_CELL * 8):
        _cas_max(addr + MAX_DRIFT_CELL * 8, drift)
    if drift > load_acquire_at(addr + MAX_OFFSET_CELL * 8):
        fetch_add_at(addr + REJECTIONS_CELL * 8, 1)
        return REJECTED
    tp = physical_ns & PHYSICAL_MASK
    r1 = remote + 1
    old = load_acquire_at(addr)
    retries = 0
    while True:
        new = old + 1
        if r1 > new:
            new = r1
        if tp > new:
            new = tp
        # SYNC POINT: seq_cst CAS, pairs with every other handle's CAS on CLOCK.
        seen = compare_exchange_at(addr, old, new)
        if seen == old:
            break
        old = seen
        retries += 1
    if retries > 0:
        fetch_add_at(addr + CAS_RETRIES_CELL * 8, retries)
    hi = old & PHYSICAL_MASK
    rp = remote & PHYSICAL_MASK
    if rp > hi:
        hi = rp
    if tp > hi:
        hi = tp
    if (new & PHYSICAL_MASK) > hi:
        fetch_add_at(addr + LOGICAL_CARRIES_CELL * 8, 1)
    return new


@jit("void(int64, int64)")
def _note_backward_jump(region, jump_ns):  # pragma: no cover - compiled
    fetch_add_at(region + BACKWARD_JUMPS_CELL * 8, 1)
    _cas_max(region + MAX_BACKWARD_JUMP_CELL * 8, jump_ns)


@jit("int64(int64)")
def _load_cell(addr):  # pragma: no cover - compiled
    return load_acquire_at(addr)


@jit("void(int64, int64)")
def _store_cell(addr, value):  # pragma: no cover - compiled
    store_release_at(addr, value)


# ----------------------------------------------------------------------------- shared clock


class SharedHybridClock:
    """A hybrid logical clock shared by processes through one int64 word in shared memory.

    Build it with ``create`` (initialise a region of a segment you own), ``attach`` (a
    region someone else initialised), or ``create_at``/``attach_at`` (a raw address plus
    an object that keeps the memory alive, e.g. a numpy array).

    Safety: one handle per thread. The handle keeps the last physical reading to detect
    backward jumps; two threads sharing one handle would see each other's readings as
    jumps. Handles are cheap: attach one per thread.

    Parameters
    ----------
    address:
        Address of the 128-byte region (its CLOCK cell); 8-byte aligned.
    keepalive:
        The object that owns the mapping (a ``Segment`` is checked for ``closed`` on every
        call, so a closed segment raises ``ClosedResourceError`` instead of faulting).
    time_source:
        Where physical time comes from; default: the process-wide source.
    """

    __slots__ = ("_addr", "_keepalive", "_segment", "_source", "_last_pt", "_ticks", "_updates", "_closed")

    def __init__(self, address: int, keepalive: object, *, time_source: TimeSource | None = None) -> None:
        address = int(address)
        if address <= 0 or address % 8:
            raise ValueError(f"the HLC region address must be positive and 8-byte aligned, got {address:#x}")
        self._addr = address
        self._keepalive = keepalive
        self._segment = keepalive if isinstance(keepalive, Segment) else None
        self._source = time_source if time_source is not None else get_time_source()
        self._last_pt = -1
        self._ticks = 0
        self._updates = 0
        self._closed = False
        if _load_cell(address + MAGIC_CELL * 8) != HLC_MAGIC:
            raise LayoutError(
                f"no initialised HLC region at {address:#x} (magic missing): create it with "
                "SharedHybridClock.create / create_at first"
            )

    # --- factories -------------------------------------------------------------------------

    @staticmethod
    def _region_address(segment: Segment, offset_bytes: int) -> int:
        if offset_bytes < 0 or offset_bytes % 8 or offset_bytes + HLC_REGION_BYTES > segment.size_bytes:
            raise ValueError(
                f"offset_bytes={offset_bytes} must be 8-byte aligned with {HLC_REGION_BYTES} bytes of "
                f"room in segment {segment.name!r} ({segment.size_bytes} bytes)"
            )
        return segment.words.ctypes.data + offset_bytes

    @classmethod
    def create_at(
        cls,
        address: int,
        keepalive: object,
        *,
        max_offset_ns: int = DEFAULT_MAX_OFFSET_NS,
        initial_stamp: int = 0,
        time_source: TimeSource | None = None,
    ) -> "SharedHybridClock":
        """Initialise the region at ``address`` and return a handle on it.

        Safety: only one process initialises a region, before any other attaches; the
        magic cell is written last (release) so an attacher that sees it sees the rest.
        """
        address = int(address)
        if address <= 0 or address % 8:
            raise ValueError(f"the HLC region address must be positive and 8-byte aligned, got {address:#x}")
        if not 0 <= int(max_offset_ns) < STAMP_LIMIT:
            raise ValueError(f"max_offset_ns must be in [0, 2**62), got {max_offset_ns}")
        initial_stamp = _check_stamp(initial_stamp, "initial_stamp")
        for cell in range(HLC_REGION_BYTES // 8):
            if cell != MAGIC_CELL:
                _store_cell(address + cell * 8, 0)
        _store_cell(address + MAX_OFFSET_CELL * 8, int(max_offset_ns))
        _store_cell(address + CLOCK_CELL * 8, initial_stamp)
        # SYNC POINT: release store of MAGIC pairs with the acquire load in __init__ (attach).
        _store_cell(address + MAGIC_CELL * 8, HLC_MAGIC)
        logger.trace("initialised shared HLC region at {:#x} (max offset {} ns)", address, max_offset_ns)
        return cls(address, keepalive, time_source=time_source)

    @classmethod
    def attach_at(
        cls, address: int, keepalive: object, *, time_source: TimeSource | None = None
    ) -> "SharedHybridClock":
        """A handle on an initialised region at ``address``.

        Raises
        ------
        LayoutError
            The region was never initialised.
        """
        return cls(address, keepalive, time_source=time_source)

    @classmethod
    def create(
        cls,
        segment: Segment,
        *,
        offset_bytes: int = SEGMENT_HEADER_BYTES,
        max_offset_ns: int = DEFAULT_MAX_OFFSET_NS,
        initial_stamp: int = 0,
        time_source: TimeSource | None = None,
    ) -> "SharedHybridClock":
        """Initialise the HLC region at ``offset_bytes`` of ``segment`` (default: just after the header).

        Create the segment with ``mark_ready=False`` and call ``segment.mark_ready()`` after
        this, so that no process attaches before the region is initialised (an early
        ``attach`` raises ``LayoutError``).
        """
        return cls.create_at(
            cls._region_address(segment, offset_bytes),
            segment,
            max_offset_ns=max_offset_ns,
            initial_stamp=initial_stamp,
            time_source=time_source,
        )

    @classmethod
    def attach(
        cls,
        segment: Segment,
        *,
        offset_bytes: int = SEGMENT_HEADER_BYTES,
        time_source: TimeSource | None = None,
    ) -> "SharedHybridClock":
        """A handle on the HLC region at ``offset_bytes`` of ``segment``, initialised by another handle.

        Raises
        ------
        LayoutError
            No initialised region there.
        """
        return cls(cls._region_address(segment, offset_bytes), segment, time_source=time_source)

    # --- lifetime --------------------------------------------------------------------------

    def close(self) -> None:
        """Drop this handle (idempotent). The region and the segment are untouched."""
        self._closed = True
        self._keepalive = None
        self._segment = None

    def __enter__(self) -> "SharedHybridClock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check(self) -> None:
        if self._closed:
            raise ClosedResourceError("this SharedHybridClock handle is closed")
        seg = self._segment
        if seg is not None and seg.closed:
            raise ClosedResourceError(f"segment {seg.name!r} holding the shared HLC is closed")

    def _read_physical(self) -> int:
        pt = int(self._source.now_ns())
        last = self._last_pt
        if pt < last:
            jump = last - pt
            _note_backward_jump(self._addr, jump)
            logger.warning("physical clock went backwards by {} ns ({} -> {}); shared HLC stays monotonic", jump, last, pt)
        self._last_pt = pt
        return pt

    # --- rules -----------------------------------------------------------------------------

    @property
    def address(self) -> int:
        """Address of the CLOCK cell (for kernels that stamp in batches)."""
        return self._addr

    @property
    def last_stamp(self) -> int:
        """The clock word now (one acquire load; does not tick)."""
        self._check()
        return int(_load_cell(self._addr))

    @property
    def max_offset_ns(self) -> int:
        """The region's max offset."""
        self._check()
        return int(_load_cell(self._addr + MAX_OFFSET_CELL * 8))

    def tick(self) -> int:
        """Stamp a local or send event (lock-free CAS); unique across every handle on the region."""
        self._check()
        pt = self._read_physical()
        self._ticks += 1
        return int(tick_shared(self._addr, pt))

    def tick_n(self, n: int) -> int:
        """Reserve ``n`` consecutive stamps (``1 <= n <= 65536``) with one CAS; returns the first."""
        n = int(n)
        if not 1 <= n <= LOGICAL_MASK + 1:
            raise ValueError(f"n must be in 1..{LOGICAL_MASK + 1}, got {n}")
        self._check()
        pt = self._read_physical()
        self._ticks += n
        return int(tick_shared_n(self._addr, pt, n))

    def try_update(self, remote: int) -> CausalityResult:
        """Merge a remote stamp; a stamp too far ahead gives ``accepted=False`` (no exception).

        Raises
        ------
        TypeError, ValueError
            ``remote`` is not a valid stamp.
        """
        remote = _check_stamp(remote, "remote stamp")
        self._check()
        pt = self._read_physical()
        before = int(_load_cell(self._addr))
        got = int(update_shared(self._addr, remote, pt))
        drift = (remote & PHYSICAL_MASK) - pt
        if got == REJECTED:
            max_off = int(_load_cell(self._addr + MAX_OFFSET_CELL * 8))
            reason = (
                f"remote stamp {remote} is {drift} ns ahead of local physical time {pt}, "
                f"more than max_offset_ns={max_off}"
            )
            logger.debug("shared HLC rejected a remote stamp: {}", reason)
            return CausalityResult(before, remote, False, drift, remote > before, reason)
        self._updates += 1
        return CausalityResult(got, remote, True, drift, remote > before)

    def update(self, remote: int) -> CausalityResult:
        """Merge a remote stamp: ``max(old + 1, remote + 1, pt)`` by CAS.

        Raises
        ------
        CausalityViolation
            ``remote`` is more than the region's max offset ahead of local physical time
            (counted in the shared REJECTIONS cell; the clock did not move).
        TypeError, ValueError
            ``remote`` is not a valid stamp.
        """
        result = self.try_update(remote)
        if not result.accepted:
            raise CausalityViolation(result.reason)
        return result

    def merge(self, remote: int) -> int:
        """Merge a remote stamp like ``try_update``; returns the new stamp or ``REJECTED`` (-1).

        Raises
        ------
        TypeError, ValueError
            ``remote`` is not a valid stamp.
        """
        result = self.try_update(remote)
        return result.stamp if result.accepted else REJECTED

    def validate_causality(self, stamp: int) -> bool:
        """Whether ``update(stamp)`` would accept ``stamp`` now (does not move the clock)."""
        stamp = _check_stamp(stamp)
        self._check()
        pt = self._read_physical()
        return (stamp & PHYSICAL_MASK) - pt <= int(_load_cell(self._addr + MAX_OFFSET_CELL * 8))

    def statistics(self) -> SharedHlcStatistics:
        """The shared counters plus this handle's tick and update counts."""
        self._check()
        a = self._addr

        def cell(i: int) -> int:
            return int(_load_cell(a + i * 8))

        return SharedHlcStatistics(
            stamp=cell(CLOCK_CELL),
            max_offset_ns=cell(MAX_OFFSET_CELL),
            rejections=cell(REJECTIONS_CELL),
            backward_jumps=cell(BACKWARD_JUMPS_CELL),
            max_backward_jump_ns=cell(MAX_BACKWARD_JUMP_CELL),
            logical_carries=cell(LOGICAL_CARRIES_CELL),
            cas_retries=cell(CAS_RETRIES_CELL),
            max_drift_ns=cell(MAX_DRIFT_CELL),
            handle_ticks=self._ticks,
            handle_updates=self._updates,
        )

    def __repr__(self) -> str:
        if self._closed:
            return "<SharedHybridClock closed>"
        return f"<SharedHybridClock at {self._addr:#x}>"
