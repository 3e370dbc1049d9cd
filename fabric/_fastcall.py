"""CPython builtin functions whose body is a numba ``cfunc``: the cheapest way in from Python.

Calling a numba ``entry_point`` costs ~45 ns before the kernel runs: numba packs the
arguments in a tuple, unboxes each one (10-20 ns more for every big integer), and boxes the
result. A builtin made here is called by CPython's vectorcall (``METH_FASTCALL |
METH_KEYWORDS``): the cfunc gets the caller's argument array as object pointers, reads
only what it needs, and returns a new reference. Measured here, one process, 64-byte
records: ``offer`` + ``receive`` 480 ns a pair through numba entries and Python closures,
120 ns as builtins.

How a builtin is made::

    PyMethodDef {name, cfunc address, METH_FASTCALL | METH_KEYWORDS, doc}   one per kind, for life
    PyCFunction_NewEx(&def, bound, NULL)                                    one per handle

``bound`` is the builtin's ``self``: a tuple ``(state address, fallback, ...)``. The state
is int64 words the handle owns (a reader's cursor, a writer's state); the fallback is the
handle's Python implementation of the same call. A cfunc handles the common case only
(the expected argument types, an open handle, a result that needs no Python) and hands
every other call to the fallback unchanged, so errors, waits and refusals keep one
implementation, in Python.

Safety, stated once:

- Object pointers are int64 addresses inside the kernels. The caller's arguments are
  borrowed references, alive for the call; the GIL is held throughout (cfuncs never release
  it), so nothing moves or is freed under a kernel.
- A cfunc returns a new reference, or 0 with a Python exception set (only ever the
  fallback's own, or a failed allocation).
- Object layouts read here (``ob_type``, tuple items) are probed at import; where they
  differ (not CPython, not 64-bit) ``LAYOUT_OK`` is False and callers keep their Python
  implementations. CPython's C-API functions are called by name; numba's own wrappers
  link to them the same way, so cached kernels stay valid across processes.
"""

from __future__ import annotations

import ctypes
import sys

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from fabric import _pyobject

__all__ = [
    "LAYOUT_OK",
    "FASTCALL_SIGNATURE",
    "TYPE_OFFSET",
    "TUPLE_ITEMS_OFFSET",
    "builtin",
    "address",
    "as_object",
    "long_value",
    "new_long",
    "new_bytes",
    "new_pair",
    "clear_error",
    "call_fallback",
    "call_noargs",
    "call2",
    "decref",
]

_I8P = ir.IntType(8).as_pointer()
_I64 = ir.IntType(64)
_I32 = ir.IntType(32)

#: ``(self, args, nargs, kwnames) -> object``: the C signature of a METH_FASTCALL | METH_KEYWORDS function.
FASTCALL_SIGNATURE = types.voidptr(types.voidptr, types.CPointer(types.voidptr), types.intp, types.voidptr)
_METH_FASTCALL_KEYWORDS = 0x0080 | 0x0002

TYPE_OFFSET = 8  # ob_type, after ob_refcnt
TUPLE_ITEMS_OFFSET = tuple.__basicsize__  # ob_item[0], after the PyVarObject head


def _layout_matches() -> bool:
    """True when the offsets above find what CPython says is there."""
    if not _pyobject.LAYOUT_OK or sys.implementation.name != "cpython" or tuple.__itemsize__ != 8:
        return False
    probe = (object(), "probe", 3)
    for i, item in enumerate(probe):
        if ctypes.c_void_p.from_address(id(probe) + TUPLE_ITEMS_OFFSET + 8 * i).value != id(item):
            return False
    return ctypes.c_void_p.from_address(id(probe) + TYPE_OFFSET).value == id(tuple)


LAYOUT_OK = _layout_matches()


class _MethodDef(ctypes.Structure):
    _fields_ = [
        ("ml_name", ctypes.c_char_p),
        ("ml_meth", ctypes.c_void_p),
        ("ml_flags", ctypes.c_int),
        ("ml_doc", ctypes.c_char_p),
    ]


_new_cfunction = ctypes.pythonapi.PyCFunction_NewEx
_new_cfunction.restype = ctypes.py_object
_new_cfunction.argtypes = [ctypes.POINTER(_MethodDef), ctypes.py_object, ctypes.c_void_p]
# A builtin points into its PyMethodDef for as long as it lives: they are kept here for the
# life of the process, one per (kernel, name, doc), however many handles are made.
_METHOD_DEFS: dict[tuple[int, str, str], _MethodDef] = {}


def builtin(kernel, name: str, doc: str, bound: tuple):
    """A builtin function calling the cfunc ``kernel`` with ``self = bound``.

    ``doc`` may start with ``name(signature)\\n--\\n\\n`` (CPython's ``__text_signature__``
    convention) so ``inspect.signature`` works on the builtin.
    """
    if not LAYOUT_OK:
        raise RuntimeError("fastcall builtins need CPython's 64-bit object layout (check LAYOUT_OK first)")
    key = (kernel.address, name, doc)
    method = _METHOD_DEFS.get(key)
    if method is None:
        method = _METHOD_DEFS[key] = _MethodDef(name.encode(), kernel.address, _METH_FASTCALL_KEYWORDS, doc.encode())
    return _new_cfunction(ctypes.byref(method), bound, None)


# --- intrinsics: objects as int64 addresses, CPython's C API by name ------------------------


def _capi(builder, name: str, ret, argtys, args):
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, argtys), name)
    return builder.call(fn, args)


@intrinsic
def address(typingctx, ptr):
    """A pointer (``voidptr``) as an int64 address."""
    if ptr != types.voidptr:
        return None

    def codegen(context, builder, sig, args):
        return builder.ptrtoint(args[0], _I64)

    return types.int64(ptr), codegen


@intrinsic
def as_object(typingctx, addr):
    """An int64 address as the ``voidptr`` a cfunc returns."""
    if not isinstance(addr, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        return builder.inttoptr(args[0], _I8P)

    return types.voidptr(addr), codegen


@intrinsic
def long_value(typingctx, obj):
    """``PyLong_AsLongLong(obj)``: -1 with an exception set on overflow (see ``clear_error``)."""
    if not isinstance(obj, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        return _capi(builder, "PyLong_AsLongLong", _I64, [_I8P], [builder.inttoptr(args[0], _I8P)])

    return types.int64(obj), codegen


@intrinsic
def clear_error(typingctx):
    """``PyErr_Clear()``."""

    def codegen(context, builder, sig, args):
        _capi(builder, "PyErr_Clear", ir.VoidType(), [], [])
        return context.get_dummy_value()

    return types.void(), codegen


@intrinsic
def new_long(typingctx, value):
    """``PyLong_FromLongLong(value)``: a new reference, or 0 (MemoryError set)."""
    if not isinstance(value, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        return builder.ptrtoint(_capi(builder, "PyLong_FromLongLong", _I8P, [_I64], [args[0]]), _I64)

    return types.int64(value), codegen


@intrinsic
def new_bytes(typingctx, data_addr, size):
    """``PyBytes_FromStringAndSize``: a copy of ``size`` bytes at ``data_addr``, or 0."""
    if not (isinstance(data_addr, types.Integer) and isinstance(size, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        res = _capi(builder, "PyBytes_FromStringAndSize", _I8P, [_I8P, _I64], [builder.inttoptr(args[0], _I8P), args[1]])
        return builder.ptrtoint(res, _I64)

    return types.int64(data_addr, size), codegen


@intrinsic
def new_pair(typingctx, first, second):
    """``(first, second)`` as a new tuple, taking over both references; 0 if it cannot be
    made (both references are then dropped)."""
    if not (isinstance(first, types.Integer) and isinstance(second, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        pair = _capi(builder, "PyTuple_New", _I8P, [_I64], [ir.Constant(_I64, 2)])
        ok = builder.icmp_unsigned("!=", pair, ir.Constant(_I8P, None))
        with builder.if_else(ok) as (then, otherwise):
            with then:
                for i, item in enumerate(args):  # PyTuple_SetItem steals the reference
                    _capi(builder, "PyTuple_SetItem", _I32, [_I8P, _I64, _I8P],
                          [pair, ir.Constant(_I64, i), builder.inttoptr(item, _I8P)])
            with otherwise:
                for item in args:
                    _capi(builder, "Py_DecRef", ir.VoidType(), [_I8P], [builder.inttoptr(item, _I8P)])
        return builder.ptrtoint(pair, _I64)

    return types.int64(first, second), codegen


@intrinsic
def call_fallback(typingctx, func, args, nargs, kwnames):
    """``PyObject_Vectorcall(func, args, nargs, kwnames)``: hand a call on unchanged
    (``kwnames`` as an address, 0 for none)."""
    if not (isinstance(func, types.Integer) and args == types.CPointer(types.voidptr) and isinstance(kwnames, types.Integer)):
        return None

    def codegen(context, builder, sig, a):
        res = _capi(builder, "PyObject_Vectorcall", _I8P, [_I8P, _I8P.as_pointer(), _I64, _I8P],
                    [builder.inttoptr(a[0], _I8P), a[1], a[2], builder.inttoptr(a[3], _I8P)])
        return builder.ptrtoint(res, _I64)

    return types.int64(func, args, nargs, kwnames), codegen


@intrinsic
def call_noargs(typingctx, func):
    """``PyObject_CallNoArgs(func)``: a new reference, or 0 with an exception set."""
    if not isinstance(func, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        res = _capi(builder, "PyObject_CallNoArgs", _I8P, [_I8P], [builder.inttoptr(args[0], _I8P)])
        return builder.ptrtoint(res, _I64)

    return types.int64(func), codegen


@intrinsic
def call2(typingctx, func, first, second):
    """``func(first, second)`` by vectorcall (borrowed arguments): a new reference, or 0."""
    if not all(isinstance(t, types.Integer) for t in (func, first, second)):
        return None

    def codegen(context, builder, sig, args):
        stack = cgutils.alloca_once(builder, _I8P, size=2)
        builder.store(builder.inttoptr(args[1], _I8P), stack)
        builder.store(builder.inttoptr(args[2], _I8P), builder.gep(stack, [ir.Constant(_I32, 1)]))
        res = _capi(builder, "PyObject_Vectorcall", _I8P, [_I8P, _I8P.as_pointer(), _I64, _I8P],
                    [builder.inttoptr(args[0], _I8P), stack, ir.Constant(_I64, 2), ir.Constant(_I8P, None)])
        return builder.ptrtoint(res, _I64)

    return types.int64(func, first, second), codegen


@intrinsic
def decref(typingctx, obj):
    """``Py_DecRef(obj)`` (accepts 0)."""
    if not isinstance(obj, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        _capi(builder, "Py_DecRef", ir.VoidType(), [_I8P], [builder.inttoptr(args[0], _I8P)])
        return context.get_dummy_value()

    return types.void(obj), codegen
