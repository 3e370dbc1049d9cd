"""The processes a ChronoFabric supervisor runs: one worker kind per module.

``WORKER_KINDS`` maps a kind name (as written in a topology's ``kind = ...``) to
``"module:Class"``; a kind exists when its module does. Workers are step
functions (``workers.base.Worker``) driven by ``workers.loop`` in a real process,
or by the deterministic simulator in one process.
"""

from __future__ import annotations

import importlib.util

__all__ = ["WORKER_KINDS", "load_worker_class"]

_ALL_KINDS = {
    "router": "workers.router:RouterWorker",
    "scheduler": "workers.scheduler:SchedulerWorker",
    "drpp": "workers.drpp:DrppWorker",
    "adp": "workers.adp:AdpWorker",
    "egc": "workers.egc:EgcWorker",
    "ems": "workers.ems:EmsWorker",
    "accelerator": "workers.accelerator:AcceleratorWorker",
}

WORKER_KINDS = {k: v for k, v in _ALL_KINDS.items() if importlib.util.find_spec(v.split(":")[0]) is not None}


def load_worker_class(kind: str):
    """The class implementing ``kind``."""
    module, cls = WORKER_KINDS[kind].split(":")
    return getattr(importlib.import_module(module), cls)
