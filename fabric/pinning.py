"""CPU pinning: which cores each worker runs on, and the plan when there are more workers than cores.

Rules, in order:

1. ``cpus = [...]`` in a worker's spec is honoured (cores that do not exist are an error).
2. Critical workers (router, scheduler) without cpus get a core each, from the highest
   core down (core 0 takes most interrupts and the supervisor), as long as cores last.
3. Everyone else shares the cores no critical worker holds exclusively — or, when
   critical workers took every core, all cores — and the plan says so.

On a 2-core machine with router, scheduler and five module workers: the router gets
core 1, the scheduler core 0, and the five share cores 0-1: the plan is logged so
nobody mistakes it for isolation.
"""

from __future__ import annotations

import os

import msgspec
import psutil

from fabric.config import TopologyConfig
from fabric.errors import ConfigError

__all__ = ["PinPlan", "plan_pinning", "available_cpus", "cpus_to_mask", "mask_to_cpus", "isolated_cpus"]


class PinPlan(msgspec.Struct, frozen=True):
    """The cores each worker gets, with notes explaining sharing."""

    cpus: dict[str, list[int]]
    notes: list[str]


def available_cpus() -> list[int]:
    """Cores this process may run on."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(psutil.cpu_count() or 1))


def isolated_cpus() -> list[int]:
    """Cores the kernel isolated from the scheduler (``isolcpus=``), if any."""
    try:
        with open("/sys/devices/system/cpu/isolated", encoding="ascii") as f:
            text = f.read().strip()
    except OSError:
        return []
    out: list[int] = []
    for part in filter(None, text.split(",")):
        if "-" in part:
            a, b = part.split("-")
            out.extend(range(int(a), int(b) + 1))
        else:
            out.append(int(part))
    return out


def cpus_to_mask(cpus: list[int]) -> int:
    mask = 0
    for c in cpus:
        mask |= 1 << c
    return mask


def mask_to_cpus(mask: int) -> list[int]:
    return [c for c in range(64) if mask >> c & 1]


def plan_pinning(cfg: TopologyConfig, cpus: list[int] | None = None) -> PinPlan:
    """Assign cores to every worker of ``cfg`` (see the module doc for the rules)."""
    cores = sorted(cpus if cpus is not None else available_cpus())
    plan: dict[str, list[int]] = {}
    notes: list[str] = []
    for w in cfg.workers:
        if w.cpus is not None:
            missing = sorted(set(w.cpus) - set(cores))
            if missing:
                raise ConfigError(f"worker {w.name!r}: cpus {missing} are not available here (available: {cores})")
            plan[w.name] = sorted(w.cpus)
    free = [c for c in reversed(cores) if not any(c in v for v in plan.values())]
    exclusive: set[int] = set()
    for w in cfg.workers:
        if w.name in plan or not w.critical:
            continue
        if free:
            core = free.pop(0)
            plan[w.name] = [core]
            exclusive.add(core)
        else:
            plan[w.name] = list(cores)
            notes.append(f"critical worker {w.name!r} shares all cores {cores}: no core was left for it alone")
    shared = [c for c in cores if c not in exclusive] or list(cores)
    rest = [w.name for w in cfg.workers if w.name not in plan]
    for name in rest:
        plan[name] = shared
    if rest:
        if shared == cores and exclusive:
            notes.append(
                f"{len(rest)} workers ({', '.join(rest)}) share cores {shared} with the critical workers: "
                f"there are {len(cores)} cores for {len(cfg.workers)} workers"
            )
        elif len(rest) > len(shared):
            notes.append(f"{len(rest)} workers ({', '.join(rest)}) share cores {shared}")
    if len(cfg.workers) > len(cores):
        notes.append(
            f"{len(cfg.workers)} workers on {len(cores)} cores: idle workers park (adaptive wait), "
            "busy ones time-share"
        )
    return PinPlan(cpus=plan, notes=notes)
