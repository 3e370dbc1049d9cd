"""Test seam for the compiled path of ``HybridLogicalClock`` (``fabric/hlc.py``).

The compiled path reads ``CLOCK_MONOTONIC`` inside its kernels, so a ``SimulatedTimeSource``
cannot drive it. Two seams reach its rule code with a physical time the test controls:

- ``scripted_compiled_clock(ts)``: a real compiled-path clock whose ``tick`` and whose
  module-level entry points (``_TICK_N_NOW``, ``_MERGE_NOW``, ``_TRY_UPDATE_NOW``,
  ``_VALIDATE_NOW``) are replaced, for the duration of the ``with``, by the rule kernels
  they inline (``_tick_at``, ``_tick_n_at``, ``_merge_at``, ``_try_update_at``,
  ``_validate_at``) fed ``ts.now_ns()``. Every Python method of the compiled clock (result
  decoding, rejection logs, statistics, history) runs unchanged; only where the reading
  comes from differs. The reading is taken in Python before the kernel, so this seam is for
  single-threaded tests; thread tests use the real clock.
- ``clock._shift_physical_ns(delta)`` (in fabric): moves the real compiled clock's time by
  changing the anchor its kernels add to ``CLOCK_MONOTONIC``; a negative delta is a backward
  jump seen by the real kernels.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

import fabric.hlc as hlc
from fabric.timesource import MonotonicTimeSource


@contextmanager
def scripted_compiled_clock(ts: Any, **kwargs: Any) -> Iterator[hlc.HybridLogicalClock]:
    """A compiled-path clock whose physical readings are ``ts.now_ns()`` inside the ``with``."""
    clock = hlc.HybridLogicalClock(time_source=MonotonicTimeSource(), **kwargs)
    assert type(clock) is hlc._CompiledHybridLogicalClock, "the compiled path is not in use"
    addr = clock._addr
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(hlc, "_TICK_N_NOW", lambda a, n: hlc._tick_n_at(a, ts.now_ns(), n))
        mp.setattr(hlc, "_MERGE_NOW", lambda a, r: hlc._merge_at(a, r, ts.now_ns()))
        mp.setattr(hlc, "_TRY_UPDATE_NOW", lambda a, r: hlc._try_update_at(a, r, ts.now_ns()))
        mp.setattr(hlc, "_VALIDATE_NOW", lambda a, s: hlc._validate_at(a, s, ts.now_ns()))
        real_tick = clock.tick
        clock.tick = lambda: hlc._tick_at(addr, ts.now_ns())
        try:
            yield clock
        finally:
            clock.tick = real_tick
