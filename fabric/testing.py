"""Helpers for tests of ChronoFabric and of code built on it.

- ``unique_prefix()``: a short, collision-free name prefix for segments.
- ``shm_entries()``: what lies in /dev/shm now (the suite asserts nothing new is left).
- ``live_children()``: descendant processes still running.
"""

from __future__ import annotations

import os
import secrets

import psutil

__all__ = ["unique_prefix", "shm_entries", "live_children", "SHM_DIR"]

SHM_DIR = "/dev/shm"


def unique_prefix(tag: str = "t") -> str:
    """A fresh name prefix like ``cft-3f9a1c``: segment names built on it cannot collide."""
    return f"cf{tag}-{secrets.token_hex(3)}"


def shm_entries() -> set[str]:
    """Names in /dev/shm (POSIX shared memory and named semaphores)."""
    try:
        return set(os.listdir(SHM_DIR))
    except FileNotFoundError:
        return set()


def live_children() -> list[psutil.Process]:
    """Descendants of this process that are still running (zombies excluded)."""
    out = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                out.append(child)
        except psutil.NoSuchProcess:
            pass
    return out
