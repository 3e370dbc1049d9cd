"""Atomic operations on shared memory, as numba intrinsics emitting LLVM atomics.

This is the only module in ChronoFabric that emits IR or reasons about memory
order. Everything else calls these functions from ``@jit`` kernels.

Two flavours of every operation:

- array flavour — ``load_acquire(arr, i)`` on cell ``i`` of a C-contiguous
  ``int64`` numpy array (typically a view over a shared-memory segment);
- address flavour — ``load_acquire_at(addr)`` on the ``int64`` at a raw address.
  Kernels on the hot path take addresses as plain integers: unboxing an ``int``
  costs ~15 ns where unboxing a numpy array costs ~90 ns (measured here).

Assumptions (checked by the callers' layouts, stated here once):

- x86-64 or AArch64, little-endian; every cell is 8-byte aligned (layout offsets
  are multiples of 8 and segments are page-aligned), so a plain ``mov`` is atomic.
- On x86-64 ``acquire`` loads and ``release`` stores compile to plain moves;
  ``fetch_add``/``compare_exchange`` are ``lock``-prefixed; ``fence`` is ``mfence``.
- Memory is shared between processes by ``mmap(MAP_SHARED)``: LLVM atomics on it
  are atomic across processes exactly as across threads.

Safety: the address flavour has no bounds check. Callers validate every offset
they derive from shared memory before using it.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = [
    "load_acquire",
    "load_relaxed",
    "store_release",
    "fetch_add",
    "compare_exchange",
    "exchange",
    "load_acquire_at",
    "store_release_at",
    "fetch_add_at",
    "fetch_or_at",
    "fetch_and_at",
    "compare_exchange_at",
    "fence",
    "cpu_pause",
    "copy_bytes",
    "i64_array_at",
    "u8_array_at",
    "data_address",
]

_I64 = ir.IntType(64)
_I8P = ir.IntType(8).as_pointer()


def _is_i64_array(arr) -> bool:
    return isinstance(arr, types.Array) and arr.dtype == types.int64 and arr.ndim == 1


def _cell_pointer(context, builder, aryty, ary_val, idx_val):
    ary = context.make_array(aryty)(context, builder, ary_val)
    return cgutils.get_item_pointer(context, builder, aryty, ary, [idx_val])


def _addr_pointer(builder, addr_val):
    return builder.inttoptr(addr_val, _I64.as_pointer())


# --- array flavour -------------------------------------------------------------------------


@intrinsic
def load_acquire(typingctx, arr, idx):
    """``arr[idx]`` with acquire ordering: later reads are not hoisted above it."""
    if not (_is_i64_array(arr) and isinstance(idx, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        ptr = _cell_pointer(context, builder, sig.args[0], args[0], args[1])
        return builder.load_atomic(ptr, "acquire", 8)

    return types.int64(arr, idx), codegen


@intrinsic
def load_relaxed(typingctx, arr, idx):
    """``arr[idx]`` read atomically (no tearing) with no ordering."""
    if not (_is_i64_array(arr) and isinstance(idx, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        ptr = _cell_pointer(context, builder, sig.args[0], args[0], args[1])
        return builder.load_atomic(ptr, "monotonic", 8)

    return types.int64(arr, idx), codegen


@intrinsic
def store_release(typingctx, arr, idx, value):
    """``arr[idx] = value`` with release ordering: earlier writes are visible first."""
    if not (_is_i64_array(arr) and isinstance(idx, types.Integer) and isinstance(value, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        ptr = _cell_pointer(context, builder, sig.args[0], args[0], args[1])
        val = context.cast(builder, args[2], sig.args[2], types.int64)
        builder.store_atomic(val, ptr, "release", 8)
        return context.get_dummy_value()

    return types.void(arr, idx, value), codegen


@intrinsic
def fetch_add(typingctx, arr, idx, delta):
    """Atomically ``arr[idx] += delta`` (sequentially consistent); returns the old value."""
    if not (_is_i64_array(arr) and isinstance(idx, types.Integer) and isinstance(delta, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        ptr = _cell_pointer(context, builder, sig.args[0], args[0], args[1])
        val = context.cast(builder, args[2], sig.args[2], types.int64)
        return builder.atomic_rmw("add", ptr, val, "seq_cst")

    return types.int64(arr, idx, delta), codegen


@intrinsic
def exchange(typingctx, arr, idx, value):
    """Atomically swap ``arr[idx]`` with ``value`` (sequentially consistent); returns the old value."""
    if not (_is_i64_array(arr) and isinstance(idx, types.Integer) and isinstance(value, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        ptr = _cell_pointer(context, builder, sig.args[0], args[0], args[1])
        val = context.cast(builder, args[2], sig.args[2], types.int64)
        return builder.atomic_rmw("xchg", ptr, val, "seq_cst")

    return types.int64(arr, idx, value), codegen


@intrinsic
def compare_exchange(typingctx, arr, idx, expected, desired):
    """If ``arr[idx] == expected`` store ``desired``; returns the value seen (== expected on success)."""
    if not (
        _is_i64_array(arr)
        and isinstance(idx, types.Integer)
        and isinstance(expected, types.Integer)
        and isinstance(desired, types.Integer)
    ):
        return None

    def codegen(context, builder, sig, args):
        ptr = _cell_pointer(context, builder, sig.args[0], args[0], args[1])
        exp = context.cast(builder, args[2], sig.args[2], types.int64)
        des = context.cast(builder, args[3], sig.args[3], types.int64)
        pair = builder.cmpxchg(ptr, exp, des, "seq_cst", "seq_cst")
        return builder.extract_value(pair, 0)

    return types.int64(arr, idx, expected, desired), codegen


# --- address flavour -----------------------------------------------------------------------


@intrinsic
def load_acquire_at(typingctx, addr):
    """The ``int64`` at ``addr`` with acquire ordering."""
    if not isinstance(addr, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        return builder.load_atomic(_addr_pointer(builder, args[0]), "acquire", 8)

    return types.int64(addr), codegen


@intrinsic
def store_release_at(typingctx, addr, value):
    """Store ``value`` at ``addr`` with release ordering."""
    if not (isinstance(addr, types.Integer) and isinstance(value, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        val = context.cast(builder, args[1], sig.args[1], types.int64)
        builder.store_atomic(val, _addr_pointer(builder, args[0]), "release", 8)
        return context.get_dummy_value()

    return types.void(addr, value), codegen


def _rmw_at(op: str, doc: str):
    """An intrinsic doing the LLVM atomic read-modify-write ``op`` on the int64 at an address."""

    def typer(typingctx, addr, value):
        if not (isinstance(addr, types.Integer) and isinstance(value, types.Integer)):
            return None

        def codegen(context, builder, sig, args):
            val = context.cast(builder, args[1], sig.args[1], types.int64)
            return builder.atomic_rmw(op, _addr_pointer(builder, args[0]), val, "seq_cst")

        return types.int64(addr, value), codegen

    typer.__doc__ = doc
    return intrinsic(typer)


fetch_add_at = _rmw_at("add", "Atomically add ``value`` to the ``int64`` at ``addr``; returns the old value.")
fetch_or_at = _rmw_at("or", "Atomically OR ``value`` into the ``int64`` at ``addr``; returns the old value.")
fetch_and_at = _rmw_at("and", "Atomically AND ``value`` into the ``int64`` at ``addr``; returns the old value.")


@intrinsic
def compare_exchange_at(typingctx, addr, expected, desired):
    """CAS on the ``int64`` at ``addr``; returns the value seen (== expected on success)."""
    if not (isinstance(addr, types.Integer) and isinstance(expected, types.Integer) and isinstance(desired, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        exp = context.cast(builder, args[1], sig.args[1], types.int64)
        des = context.cast(builder, args[2], sig.args[2], types.int64)
        pair = builder.cmpxchg(_addr_pointer(builder, args[0]), exp, des, "seq_cst", "seq_cst")
        return builder.extract_value(pair, 0)

    return types.int64(addr, expected, desired), codegen


# --- fences, pause, copies, views ----------------------------------------------------------


@intrinsic
def fence(typingctx):
    """A full (sequentially consistent) fence: orders an earlier store before a later load.

    Needed exactly where a store must be visible before a load of another cell (the
    doorbell's "I am going to sleep" flag against the producer's commit); release and
    acquire alone do not order store→load.
    """

    def codegen(context, builder, sig, args):
        builder.fence("seq_cst")
        return context.get_dummy_value()

    return types.void(), codegen


@intrinsic
def cpu_pause(typingctx):
    """The spin-loop hint (``pause`` on x86); a no-op elsewhere.

    Inline asm aborts LLVM here (PERFORMANCE-NOTES), so this calls the
    ``llvm.x86.sse2.pause`` intrinsic.
    """

    def codegen(context, builder, sig, args):
        import platform

        if platform.machine() in ("x86_64", "AMD64", "i686"):
            fnty = ir.FunctionType(ir.VoidType(), [])
            fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.x86.sse2.pause")
            builder.call(fn, [])
        return context.get_dummy_value()

    return types.void(), codegen


@intrinsic
def copy_bytes(typingctx, dst_addr, src_addr, nbytes):
    """``memcpy(dst, src, n)`` between raw addresses (~8x numba's element loop)."""
    if not (isinstance(dst_addr, types.Integer) and isinstance(src_addr, types.Integer) and isinstance(nbytes, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        dst = builder.inttoptr(args[0], _I8P)
        src = builder.inttoptr(args[1], _I8P)
        n = context.cast(builder, args[2], sig.args[2], types.int64)
        cgutils.raw_memcpy(builder, dst, src, n, 1)
        return context.get_dummy_value()

    return types.void(dst_addr, src_addr, nbytes), codegen


@intrinsic
def data_address(typingctx, buf):
    """The address of a numba buffer's first byte (array, ``bytes``, ``bytearray``, memoryview)."""
    if not isinstance(buf, types.Buffer):
        return None

    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        return builder.ptrtoint(ary.data, _I64)

    return types.int64(buf), codegen


@intrinsic
def _i64_pointer(typingctx, addr):
    if not isinstance(addr, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        return builder.inttoptr(args[0], _I64.as_pointer())

    return types.CPointer(types.int64)(addr), codegen


@intrinsic
def _u8_pointer(typingctx, addr):
    if not isinstance(addr, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        return builder.inttoptr(args[0], _I8P)

    return types.CPointer(types.uint8)(addr), codegen


def _carray_factory():
    from numba import carray
    from numba.extending import register_jitable

    @register_jitable
    def i64_array_at(addr, count):
        """An ``int64[count]`` array viewing the memory at ``addr`` (no copy, no bounds check)."""
        return carray(_i64_pointer(addr), count)

    @register_jitable
    def u8_array_at(addr, count):
        """A ``uint8[count]`` array viewing the memory at ``addr`` (no copy, no bounds check)."""
        return carray(_u8_pointer(addr), count)

    return i64_array_at, u8_array_at


i64_array_at, u8_array_at = _carray_factory()
