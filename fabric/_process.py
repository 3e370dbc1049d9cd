"""Process identity and liveness: pid plus start time, so a reused pid is not mistaken for a live peer."""

from __future__ import annotations

import os

import psutil

__all__ = ["process_start_ms", "is_alive", "self_identity"]


def process_start_ms(pid: int) -> int:
    """The process's start time in milliseconds since the epoch, or 0 if it does not exist."""
    try:
        return int(round(psutil.Process(pid).create_time() * 1000.0))
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, ValueError):
        return 0


def is_alive(pid: int, start_ms: int = 0) -> bool:
    """True if ``pid`` runs, is not a zombie, and (when given) started at ``start_ms`` (±1 s jitter)."""
    if pid <= 0:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        if start_ms and abs(int(round(proc.create_time() * 1000.0)) - start_ms) > 1000:
            return False
        return True
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:
        return True  # it exists; we just may not inspect it


_self: tuple[int, int] | None = None


def self_identity() -> tuple[int, int]:
    """``(pid, start_ms)`` of this process (cached; recomputed after fork)."""
    global _self
    pid = os.getpid()
    if _self is None or _self[0] != pid:
        _self = (pid, process_start_ms(pid))
    return _self
