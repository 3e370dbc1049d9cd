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
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

import msgspec
import numpy as np
from loguru import logger

from fabric._atomics import compare_exchange_at, fetch_add_at, load_acquire_at, store_release_at
from fabric._jit import jit
from fabric.errors import CausalityViolation, ClosedResourceError, LayoutError
from fabric.segment import Segment
from fabric.timesource import MonotonicTimeSource, SimulatedTimeSource, TimeSource, get_time_source
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
    All state sits behind one ``threading.Lock`` and the physical clock is read inside it,
    so concurrent threads neither reorder readings (which would look like backward jumps)
    nor share a stamp. For a clock shared between processes use ``SharedHybridClock``.
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

    def __init__(
        self,
        *,
        time_source: TimeSource | None = None,
        max_offset_ns: int = DEFAULT_MAX_OFFSET_NS,
        history_size: int = _HISTORY_DEFAULT,
        initial_stamp: int = 0,
    ) -> None:
        if not 0 <= int(max_offset_ns) < STAMP_LIMIT:
            raise ValueError(f"max_offset_ns must be in [0, 2**62), got {max_offset_ns}")
        if int(history_size) < 0:
            raise ValueError(f"history_size must be >= 0, got {history_size}")
        self._source = time_source if time_source is not None else get_time_source()
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
        logger.warning(
            "physical clock went backwards by {} ns ({} -> {}); HLC stamps stay monotonic "
            "(backward jump #{})",
            jump,
            last,
            pt,
            self._backward_jumps,
        )

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
                reason = (
                    f"remote stamp {remote} is {drift} ns ahead of local physical time {pt}, "
                    f"more than max_offset_ns={self._max_offset_ns}"
                )
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
        s = self._stamp
        return f"<HybridLogicalClock l={hlc_physical_ns(s)} c={hlc_logical(s)}>"


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
