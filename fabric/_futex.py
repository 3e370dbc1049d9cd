"""Linux futex wait/wake on a 32-bit word in shared memory: the doorbell of a ring.

Why a futex and not a named POSIX semaphore: a futex lives in the ring's own
memory, so there is no second named resource to create, clean up or leak after a
crash. Waits are always bounded (``timeout_ns``) so a lost wake-up — which the
ring protocol prevents, see ``ring_park_begin`` — could only ever cost one timeout.

Calls go through ctypes (~1.5 µs each, measured here), which is fine: they run
only when a subscriber parks or a producer must wake a parked one.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import platform

__all__ = ["futex_wait", "futex_wake", "FUTEX_AVAILABLE"]

_SYS_FUTEX = {"x86_64": 202, "aarch64": 98, "arm64": 98}.get(platform.machine())
_FUTEX_WAIT = 0
_FUTEX_WAKE = 1
_INT_MAX = 2**31 - 1

FUTEX_AVAILABLE = _SYS_FUTEX is not None and platform.system() == "Linux"


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


if FUTEX_AVAILABLE:
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    _syscall = _libc.syscall
    _syscall.restype = ctypes.c_long
    _syscall.argtypes = [
        ctypes.c_long,
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_int,
    ]


def futex_wait(addr: int, expected: int, timeout_ns: int) -> bool:
    """Sleep while the 32-bit word at ``addr`` equals ``expected``, at most ``timeout_ns``.

    Returns True when woken or the word had changed, False on timeout. Shared
    (not private) futex: works across processes mapping the same memory.
    """
    if not FUTEX_AVAILABLE:
        raise OSError(errno.ENOSYS, "futex is only available on Linux x86-64/aarch64")
    ts = _Timespec(timeout_ns // 1_000_000_000, timeout_ns % 1_000_000_000)
    exp = ctypes.c_int(expected & 0xFFFFFFFF).value  # as a signed 32-bit value
    rc = _syscall(_SYS_FUTEX, addr, _FUTEX_WAIT, exp, ctypes.addressof(ts), None, 0)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err == errno.ETIMEDOUT:
        return False
    if err in (errno.EAGAIN, errno.EINTR):
        return True
    raise OSError(err, f"futex wait failed: {errno.errorcode.get(err, err)}")


def futex_wake(addr: int, count: int = _INT_MAX) -> int:
    """Wake up to ``count`` sleepers on the word at ``addr``; returns how many woke."""
    if not FUTEX_AVAILABLE:
        raise OSError(errno.ENOSYS, "futex is only available on Linux x86-64/aarch64")
    rc = _syscall(_SYS_FUTEX, addr, _FUTEX_WAKE, count, None, None, 0)
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"futex wake failed: {errno.errorcode.get(err, err)}")
    return rc
