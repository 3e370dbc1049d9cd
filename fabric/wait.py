"""Wait strategies: what a consumer (or a back-pressured producer) does when there is no work.

- ``BusySpinWait`` — spin with the CPU's pause hint. Lowest latency; burns a core.
- ``YieldWait`` — ``sched_yield`` between checks. Gives the core away when others want it.
- ``BlockWait`` — park on the ring's doorbell (a futex) until a producer rings it. The
  producer rings only when a subscriber has flagged that it sleeps, so a busy ring
  costs no syscall per message. Waking a sleeping process costs 25–35 µs here.
- ``AdaptiveWait`` (the default) — spin a little, then yield, then park: low latency
  under load, ~0% CPU when idle. On a 2-core machine nothing may burn a core idle.

A strategy is a small state machine driven by the caller's loop::

    wait.reset()
    while not condition():
        wait.idle(parker)          # parker: how to sleep on this resource, or None

``idle(parker)`` does one step of waiting. ``parker`` is an object with
``park(timeout_ns) -> None`` that sleeps until woken or the timeout passes (for a
ring subscriber: announce, re-check, futex-wait). Strategies read no clock: they
count iterations; deadlines belong to the caller.
"""

from __future__ import annotations

import os
from typing import Protocol

__all__ = [
    "Parker",
    "WaitStrategy",
    "BusySpinWait",
    "YieldWait",
    "BlockWait",
    "AdaptiveWait",
    "BackoffParker",
    "default_wait_strategy",
    "wait_strategy_from_name",
]


class Parker(Protocol):
    """Something a waiter can sleep on until a producer signals it."""

    def park(self, timeout_ns: int) -> None:
        """Sleep until signalled or ``timeout_ns`` passes (may return early)."""
        ...


def _spin_pause(iterations: int) -> None:
    for _ in range(iterations):
        pass


class WaitStrategy:
    """Base class: ``reset()`` after work was found, ``idle(parker)`` when there was none.

    ``spin_checks`` is the strategy's spin phase counted in re-checks of the resource:
    callers that can re-check in compiled code (a ring's ``receive``) spin that many
    first and then call ``spun()``, so ``idle`` goes on from the next phase.
    """

    name = "base"
    spin_checks = 0

    def reset(self) -> None:
        """Work was found: start the next wait from the cheapest phase."""

    def spun(self) -> None:
        """The caller has spun ``spin_checks`` re-checks itself: skip the spin phase."""

    def idle(self, parker: Parker | None, max_park_ns: int = 10_000_000) -> None:
        """Wait one step; ``max_park_ns`` caps a park so callers can check deadlines."""
        raise NotImplementedError


class BusySpinWait(WaitStrategy):
    """Never sleeps: lowest latency, one core at 100% while idle."""

    name = "spin"
    #: Re-checks per compiled spin (~0.1-0.3 ms): the caller looks at its deadline between them.
    spin_checks = 10_000

    def idle(self, parker: Parker | None, max_park_ns: int = 10_000_000) -> None:
        spin = getattr(parker, "spin", None)
        if spin is not None:
            spin(self.spin_checks)  # compiled: a record is seen within a cache-line transfer
        else:
            _spin_pause(8)


class YieldWait(WaitStrategy):
    """``sched_yield`` between checks: cheap when others need the core, still 100% alone."""

    name = "yield"

    def idle(self, parker: Parker | None, max_park_ns: int = 10_000_000) -> None:
        os.sched_yield()


class BlockWait(WaitStrategy):
    """Park on the doorbell at once: ~0% CPU idle, a 25–35 µs wake-up."""

    name = "block"

    def __init__(self, park_timeout_ns: int = 100_000_000) -> None:
        self.park_timeout_ns = park_timeout_ns

    def idle(self, parker: Parker | None, max_park_ns: int = 10_000_000) -> None:
        if parker is None:
            os.sched_yield()
            return
        parker.park(min(self.park_timeout_ns, max_park_ns))


class AdaptiveWait(WaitStrategy):
    """Spin, then yield, then park (with growing park timeouts up to ``park_timeout_ns``).

    Defaults: ~2,000 spin checks (tens of µs: a wake-up from a real sleep costs
    25–35 µs here, so spinning that long first pays off under load), 50 yields, then park.
    A parker that can spin in compiled code (``spin(checks)``, a ring's) runs the whole
    spin phase in one call.
    """

    name = "adaptive"

    def __init__(self, spin_checks: int = 2_000, yield_checks: int = 50, park_timeout_ns: int = 100_000_000) -> None:
        self.spin_checks = spin_checks
        self.yield_checks = yield_checks
        self.park_timeout_ns = park_timeout_ns
        self._count = 0

    def reset(self) -> None:
        self._count = 0

    def spun(self) -> None:
        self._count = max(self._count, self.spin_checks)

    def idle(self, parker: Parker | None, max_park_ns: int = 10_000_000) -> None:
        c = self._count
        if c < self.spin_checks:
            spin = getattr(parker, "spin", None)
            if spin is not None:
                spin(self.spin_checks - c)  # the whole spin phase in one compiled call
                self._count = self.spin_checks
                return
            self._count = c + 1
            _spin_pause(4)
            return
        self._count = c = c + 1
        if c <= self.spin_checks + self.yield_checks or parker is None:
            os.sched_yield()
        else:
            parker.park(min(self.park_timeout_ns, max_park_ns))


class BackoffParker:
    """A parker for waits nobody will signal (a producer waiting for room, a router waiting for
    a full inbox): sleeps 50 us, doubling to 1 ms, so a long wait costs ~no CPU and a short
    one adds little latency. ``reset()`` after progress."""

    __slots__ = ("delay_ns", "min_ns", "max_ns")

    def __init__(self, min_ns: int = 50_000, max_ns: int = 1_000_000) -> None:
        self.min_ns = min_ns
        self.max_ns = max_ns
        self.delay_ns = min_ns

    def reset(self) -> None:
        self.delay_ns = self.min_ns

    def park(self, timeout_ns: int) -> None:
        import time

        time.sleep(min(self.delay_ns, timeout_ns) / 1e9)  # a bounded sleep parks the thread; it reads no clock
        self.delay_ns = min(self.delay_ns * 2, self.max_ns)


def default_wait_strategy() -> WaitStrategy:
    """A fresh ``AdaptiveWait`` (strategies hold per-waiter state: never share one)."""
    return AdaptiveWait()


def wait_strategy_from_name(name: str) -> WaitStrategy:
    """``"spin" | "yield" | "block" | "adaptive"`` → a fresh strategy."""
    table = {"spin": BusySpinWait, "yield": YieldWait, "block": BlockWait, "adaptive": AdaptiveWait}
    try:
        return table[name]()
    except KeyError:
        raise ValueError(f"unknown wait strategy {name!r}; choose one of {sorted(table)}") from None
