"""Suite-wide guards: every test must leave no process and no /dev/shm entry behind."""

from __future__ import annotations

import os

import psutil
import pytest
from hypothesis import HealthCheck, settings

from fabric.testing import live_children, shm_entries, unique_prefix

settings.register_profile(
    "ci",
    deadline=None,  # 2 shared cores: wall-clock deadlines per example would be flaky, not informative
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=False,
    print_blob=True,
)
settings.load_profile("ci")

# Helper processes the standard library keeps for the whole session (not leaks of ours).
_EXEMPT_CMDLINE = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")


def _is_exempt(proc: psutil.Process) -> bool:
    try:
        cmd = " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return True
    return any(tag in cmd for tag in _EXEMPT_CMDLINE)


def _owner(name: str, family: set[int]) -> str:
    """Whose leftover is this? ``"ours"``: a ChronoFabric segment created by this run (us, a
    descendant) or by a process now dead — deleted and reported. ``"foreign"``: a ChronoFabric
    segment of a live process outside this run (a concurrent run, a running fabric) — left alone.
    ``"unknown"``: anything else (a peer's resource) — reported, never deleted."""
    from fabric._process import is_alive
    from fabric.segment import peek_creator

    try:
        creator = peek_creator(name)
    except (ValueError, OSError):
        return "unknown"
    if creator is None:
        return "unknown"
    pid, start_ms = creator
    return "ours" if pid in family or not is_alive(pid, start_ms) else "foreign"


@pytest.fixture(autouse=True)
def no_leftovers(request):
    """Fail the test if it leaves a child process or a /dev/shm entry behind (and clean up what is ours)."""
    shm_before = shm_entries()
    family = {os.getpid()}
    yield
    leaked_procs = []
    deadline_s = 5.0
    children = live_children()
    family.update(p.pid for p in children)
    for proc in children:
        if _is_exempt(proc):
            continue
        try:
            proc.wait(timeout=deadline_s)
        except psutil.TimeoutExpired:
            leaked_procs.append(proc)
        except psutil.NoSuchProcess:
            pass
        deadline_s = 0.5
    for proc in leaked_procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    leaked_shm = []
    for name in sorted(shm_entries() - shm_before):
        owner = _owner(name, family)
        if owner == "foreign":
            continue
        leaked_shm.append(name)
        if owner == "ours":
            try:
                os.unlink(os.path.join("/dev/shm", name))
            except FileNotFoundError:
                pass
    problems = []
    if leaked_procs:
        problems.append(f"left processes behind: {[p.pid for p in leaked_procs]}")
    if leaked_shm:
        problems.append(f"left /dev/shm entries behind: {leaked_shm}")
    if problems:
        pytest.fail(f"{request.node.nodeid}: " + "; ".join(problems))


@pytest.fixture
def prefix() -> str:
    """A unique name prefix for this test's segments."""
    return unique_prefix()
