"""Causal delivery: hold packets until every packet they depend on was delivered.

A ``PhasePacket`` names in ``deps`` the ids of packets that must be delivered
before it. ``CausalQueue`` is the delivery point that enforces this::

    offer(id, deps, now) --+-- all deps delivered ------------------> READY ----+
                           |                                                   |
                           +-- some missing --> WAITING --(last dep delivered)-+
                                                  |                            v
                                  expire(now): waited > timeout_ns      pop_ready() -> ids,
                                                  |                     in delivery order,
                             policy RELEASE ------+-> READY (counted)   each marked delivered
                             policy DEAD_LETTER --+-> dead-lettered (counted), and so is
                                                      every packet waiting on it (cascade)

Guarantee: under ``TimeoutPolicy.DEAD_LETTER`` no packet is ever handed out
before all of its dependencies (property-tested). ``TimeoutPolicy.RELEASE``
trades that for liveness: a packet whose dependency never arrives is handed
out after ``timeout_ns`` anyway, flagged by the ``released`` list of
``expire`` and the ``released_on_timeout`` counter.

Delivery order: ``pop_ready`` hands packets out first-ready first-out and marks
each delivered as it goes, so packets it makes ready come later in the same
call: every list it returns is a topological order. ``mark_delivered`` records
ids delivered by another path (a packet that never entered this queue).

Memory is bounded
-----------------
- at most ``max_waiting`` packets wait for dependencies: an offer that would
  have to wait when the limit is reached returns ``OfferStatus.FULL`` (counted;
  the caller keeps the packet and retries, or drops it: back pressure, never a
  silent drop). Packets ready at once do not count against it, so the packet
  everyone waits for always gets in.
- at most ``max_ready`` packets are ready and not yet popped: an offer of a
  ready packet beyond that returns ``FULL``. Promotions from waiting to ready
  are never refused, so ``waiting + ready <= max_waiting + max_ready``.
- the last ``delivered_window`` settled ids (delivered or dead-lettered) are
  remembered, oldest forgotten first (counted in ``forgotten``). A dependency
  on an id that is no longer remembered counts as missing: the packet waits
  and its timeout policy applies. It is never delivered early; size the window
  to cover the arrival rate times the oldest dependency a packet may name.

Arrival times should not decrease; a smaller ``now_ns`` than the last offer's
is treated as equal to it (the timeout scan relies on arrival order).
"""

from __future__ import annotations

import enum
from collections import deque
from typing import Iterable

import msgspec

__all__ = [
    "TimeoutPolicy",
    "OfferStatus",
    "ExpiryReport",
    "CausalQueueStatistics",
    "CausalQueue",
]


class TimeoutPolicy(enum.Enum):
    """What ``expire`` does with a packet whose dependencies did not all arrive in time."""

    RELEASE = "release"
    """Hand it out anyway (it may then precede a dependency that arrives later)."""

    DEAD_LETTER = "dead_letter"
    """Never hand it out; report it, and every packet waiting on it, as dead-lettered."""


class OfferStatus(enum.IntEnum):
    """Result of ``CausalQueue.offer`` (negative: the packet was not taken)."""

    READY = 1
    """All dependencies delivered: it is ready to pop."""

    WAITING = 2
    """Held until its missing dependencies are delivered."""

    DUPLICATE = -1
    """This id is already held, or was already delivered or dead-lettered."""

    FULL = -2
    """The waiting (or ready) table is full: back pressure, retry later."""

    INVALID = -3
    """The packet names itself as a dependency (it could never be delivered)."""

    DEAD_LETTERED = -4
    """A dependency was dead-lettered, so this packet is dead-lettered at once."""


class ExpiryReport(msgspec.Struct, frozen=True, gc=False):
    """What one ``expire`` call did."""

    released: list[int]
    """Ids handed to the ready list although a dependency is missing (RELEASE policy)."""

    dead_lettered: list[int]
    """Ids removed for good (DEAD_LETTER policy), timed-out ones first, then cascades."""


class CausalQueueStatistics(msgspec.Struct, frozen=True, gc=False):
    """Counters and current sizes of a ``CausalQueue``."""

    offered: int
    delivered: int
    delivered_elsewhere: int
    duplicates: int
    refused_full: int
    invalid: int
    released_on_timeout: int
    dead_lettered: int
    forgotten: int
    waiting: int
    ready: int
    remembered: int


_DELIVERED = True
_DEAD = False


class _Waiting:
    __slots__ = ("deps", "missing", "arrival_ns")

    def __init__(self, deps: tuple[int, ...], missing: int, arrival_ns: int) -> None:
        self.deps = deps
        self.missing = missing
        self.arrival_ns = arrival_ns


class CausalQueue:
    """A bounded delivery queue that releases packets in causal order.

    Parameters
    ----------
    timeout_ns:
        How long a packet may wait for its dependencies before ``expire`` applies
        ``policy`` to it.
    policy:
        ``TimeoutPolicy.DEAD_LETTER`` (default: causal order is never broken) or
        ``TimeoutPolicy.RELEASE``.
    max_waiting:
        Most packets held waiting for dependencies.
    max_ready:
        Most ready packets not yet popped (default: ``max_waiting``).
    delivered_window:
        How many settled (delivered or dead-lettered) ids are remembered.

    Not thread-safe: one delivery point per thread (the subscriber's poll loop).
    """

    __slots__ = (
        "_timeout_ns",
        "_policy",
        "_max_waiting",
        "_max_ready",
        "_window",
        "_waiting",
        "_waiters",
        "_ready",
        "_ready_set",
        "_arrivals",
        "_settled",
        "_settled_order",
        "_last_arrival",
        "_offered",
        "_delivered",
        "_delivered_elsewhere",
        "_duplicates",
        "_refused_full",
        "_invalid",
        "_released",
        "_dead",
        "_forgotten",
    )

    def __init__(
        self,
        *,
        timeout_ns: int,
        policy: TimeoutPolicy = TimeoutPolicy.DEAD_LETTER,
        max_waiting: int = 4096,
        max_ready: int | None = None,
        delivered_window: int = 65536,
    ) -> None:
        if int(timeout_ns) <= 0:
            raise ValueError(f"timeout_ns must be > 0, got {timeout_ns}")
        if not isinstance(policy, TimeoutPolicy):
            raise TypeError(f"policy must be a TimeoutPolicy, got {policy!r}")
        if int(max_waiting) < 1:
            raise ValueError(f"max_waiting must be >= 1, got {max_waiting}")
        max_ready = int(max_waiting) if max_ready is None else int(max_ready)
        if max_ready < 1:
            raise ValueError(f"max_ready must be >= 1, got {max_ready}")
        if int(delivered_window) < 1:
            raise ValueError(f"delivered_window must be >= 1, got {delivered_window}")
        self._timeout_ns = int(timeout_ns)
        self._policy = policy
        self._max_waiting = int(max_waiting)
        self._max_ready = max_ready
        self._window = int(delivered_window)
        self._waiting: dict[int, _Waiting] = {}
        self._waiters: dict[int, list[int]] = {}  # missing dep id -> waiting packet ids
        self._ready: deque[int] = deque()
        self._ready_set: set[int] = set()
        self._arrivals: deque[tuple[int, int]] = deque()  # (arrival_ns, id), lazily pruned
        self._settled: dict[int, bool] = {}  # id -> _DELIVERED / _DEAD
        self._settled_order: deque[int] = deque()
        self._last_arrival = 0
        self._offered = 0
        self._delivered = 0
        self._delivered_elsewhere = 0
        self._duplicates = 0
        self._refused_full = 0
        self._invalid = 0
        self._released = 0
        self._dead = 0
        self._forgotten = 0

    # --- accessors -------------------------------------------------------------------------

    @property
    def policy(self) -> TimeoutPolicy:
        """The timeout policy."""
        return self._policy

    @property
    def timeout_ns(self) -> int:
        """How long a packet may wait for dependencies."""
        return self._timeout_ns

    def __len__(self) -> int:
        """Packets held (waiting plus ready)."""
        return len(self._waiting) + len(self._ready)

    def is_delivered(self, packet_id: int) -> bool:
        """True if ``packet_id`` was delivered and is still remembered."""
        return self._settled.get(int(packet_id)) is _DELIVERED

    def missing_dependencies(self, packet_id: int) -> tuple[int, ...]:
        """The dependencies a waiting packet still waits for (empty if it is not waiting)."""
        entry = self._waiting.get(int(packet_id))
        if entry is None:
            return ()
        return tuple(d for d in entry.deps if self._settled.get(d) is not _DELIVERED)

    # --- internals -------------------------------------------------------------------------

    def _held(self, packet_id: int) -> bool:
        return packet_id in self._waiting or packet_id in self._ready_set

    def _settle(self, packet_id: int, state: bool) -> None:
        settled = self._settled
        if packet_id not in settled:
            self._settled_order.append(packet_id)
        settled[packet_id] = state
        while len(self._settled_order) > self._window:
            old = self._settled_order.popleft()
            del settled[old]
            self._forgotten += 1

    def _make_ready(self, packet_id: int) -> None:
        self._ready.append(packet_id)
        self._ready_set.add(packet_id)

    def _wake_waiters(self, dep_id: int) -> None:
        for waiter in self._waiters.pop(dep_id, ()):
            entry = self._waiting.get(waiter)
            if entry is None:
                continue
            entry.missing -= 1
            if entry.missing == 0:
                del self._waiting[waiter]
                self._make_ready(waiter)

    def _unregister(self, packet_id: int, entry: _Waiting) -> None:
        for dep in entry.deps:
            waiters = self._waiters.get(dep)
            if waiters is not None:
                try:
                    waiters.remove(packet_id)
                except ValueError:
                    continue
                if not waiters:
                    del self._waiters[dep]

    def _compact_arrivals(self) -> None:
        if len(self._arrivals) > 2 * len(self._waiting) + 64:
            self._arrivals = deque(item for item in self._arrivals if item[1] in self._waiting)

    # --- operations ------------------------------------------------------------------------

    def offer(self, packet_id: int, deps: Iterable[int], now_ns: int) -> OfferStatus:
        """Hand a packet to the queue.

        Parameters
        ----------
        packet_id:
            The packet's id.
        deps:
            Ids of packets that must be delivered first (duplicates are ignored).
        now_ns:
            Arrival time, in the same time base as ``expire``'s ``now_ns``.

        Returns
        -------
        OfferStatus
            ``READY`` or ``WAITING`` when taken; ``DUPLICATE``, ``FULL``, ``INVALID`` or
            ``DEAD_LETTERED`` (each counted) when not.
        """
        packet_id = int(packet_id)
        self._offered += 1
        if packet_id in self._settled or self._held(packet_id):
            self._duplicates += 1
            return OfferStatus.DUPLICATE
        dep_set = {int(d) for d in deps}
        if packet_id in dep_set:
            self._invalid += 1
            return OfferStatus.INVALID
        settled = self._settled
        missing = []
        for dep in dep_set:
            state = settled.get(dep)
            if state is _DELIVERED:
                continue
            if state is _DEAD:
                self._dead += 1
                self._settle(packet_id, _DEAD)
                return OfferStatus.DEAD_LETTERED
            missing.append(dep)
        if not missing:
            if len(self._ready) >= self._max_ready:
                self._refused_full += 1
                return OfferStatus.FULL
            self._make_ready(packet_id)
            return OfferStatus.READY
        if len(self._waiting) >= self._max_waiting:
            self._refused_full += 1
            return OfferStatus.FULL
        now_ns = max(int(now_ns), self._last_arrival)
        self._last_arrival = now_ns
        self._waiting[packet_id] = _Waiting(tuple(sorted(dep_set)), len(missing), now_ns)
        for dep in missing:
            self._waiters.setdefault(dep, []).append(packet_id)
        self._arrivals.append((now_ns, packet_id))
        self._compact_arrivals()
        return OfferStatus.WAITING

    def pop_ready(self, max_count: int | None = None) -> list[int]:
        """Hand out ready packets in delivery order, marking each delivered.

        Packets made ready by one handed out in this call follow it in the same list,
        so the list is a topological order of the dependencies.

        Parameters
        ----------
        max_count:
            Most ids to return (default: all that are, or become, ready).
        """
        limit = len(self._waiting) + len(self._ready) if max_count is None else int(max_count)
        out: list[int] = []
        ready = self._ready
        while ready and len(out) < limit:
            packet_id = ready.popleft()
            self._ready_set.discard(packet_id)
            out.append(packet_id)
            self._delivered += 1
            self._settle(packet_id, _DELIVERED)
            self._wake_waiters(packet_id)
        return out

    def mark_delivered(self, packet_id: int) -> int:
        """Record that ``packet_id`` was delivered by another path; returns how many packets it made ready.

        If the packet is held here it is removed (it must not be delivered twice);
        this is counted in ``delivered_elsewhere``. Idempotent.
        """
        packet_id = int(packet_id)
        if self._settled.get(packet_id) is _DELIVERED:
            return 0
        entry = self._waiting.pop(packet_id, None)
        if entry is not None:
            self._unregister(packet_id, entry)
        elif packet_id in self._ready_set:
            self._ready_set.discard(packet_id)
            self._ready.remove(packet_id)
        self._delivered_elsewhere += 1
        self._settle(packet_id, _DELIVERED)
        before = len(self._ready)
        self._wake_waiters(packet_id)
        return len(self._ready) - before

    def expire(self, now_ns: int) -> ExpiryReport:
        """Apply the timeout policy to packets that waited more than ``timeout_ns``.

        Returns
        -------
        ExpiryReport
            Ids released (RELEASE) or dead-lettered (DEAD_LETTER, including every packet
            that was waiting on a dead-lettered one).
        """
        now_ns = int(now_ns)
        released: list[int] = []
        dead: list[int] = []
        arrivals = self._arrivals
        while arrivals and arrivals[0][0] + self._timeout_ns <= now_ns:
            arrival_ns, packet_id = arrivals.popleft()
            entry = self._waiting.get(packet_id)
            if entry is None or entry.arrival_ns != arrival_ns:
                continue  # promoted or removed since (lazily pruned), or a later offer of a reused id
            del self._waiting[packet_id]
            self._unregister(packet_id, entry)
            if self._policy is TimeoutPolicy.RELEASE:
                self._released += 1
                self._make_ready(packet_id)
                released.append(packet_id)
            else:
                dead.append(packet_id)
        # Cascade: whoever waits on a dead-lettered packet can never be delivered.
        i = 0
        while i < len(dead):
            dead_id = dead[i]
            i += 1
            self._dead += 1
            self._settle(dead_id, _DEAD)
            for waiter in self._waiters.pop(dead_id, ()):
                entry = self._waiting.pop(waiter, None)
                if entry is not None:
                    self._unregister(waiter, entry)
                    dead.append(waiter)
        return ExpiryReport(released, dead)

    def statistics(self) -> CausalQueueStatistics:
        """A snapshot of the counters and sizes."""
        return CausalQueueStatistics(
            offered=self._offered,
            delivered=self._delivered,
            delivered_elsewhere=self._delivered_elsewhere,
            duplicates=self._duplicates,
            refused_full=self._refused_full,
            invalid=self._invalid,
            released_on_timeout=self._released,
            dead_lettered=self._dead,
            forgotten=self._forgotten,
            waiting=len(self._waiting),
            ready=len(self._ready),
            remembered=len(self._settled),
        )

    def __repr__(self) -> str:
        return f"<CausalQueue waiting={len(self._waiting)} ready={len(self._ready)} policy={self._policy.value}>"
