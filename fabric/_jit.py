"""One place for numba JIT options, so every kernel compiles the same way.

``cache=True`` stores compiled machine code beside the sources, so a worker
process starts in ~0.5 s instead of ~2 s (measured, PERFORMANCE-NOTES). Kernels
that take addresses as integers (not arrays) stay cacheable because nothing
process-specific is baked into them.
"""

from __future__ import annotations

import numba

__all__ = ["jit", "KERNEL_OPTIONS"]

# nogil=False by default: releasing and re-taking the GIL costs ~100 ns a call (measured:
# a one-int kernel call went from 170 to 70 ns), more than a ring operation itself. Kernels
# that run for long (accelerator batches) pass nogil=True.
KERNEL_OPTIONS = dict(nopython=True, nogil=False, cache=True, error_model="numpy", boundscheck=False)


def jit(*args, **overrides):
    """``numba.jit`` with the project's options; keyword overrides win."""
    opts = dict(KERNEL_OPTIONS)
    opts.update(overrides)
    return numba.jit(*args, **opts)
