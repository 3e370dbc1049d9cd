"""The worker process: attach, pin, build the worker, drive its steps, heartbeat, exit cleanly.

Run by the supervisor as ``python -m workers.loop --fabric NAME --row I`` (a fresh
interpreter: spawn semantics, never fork). Exit codes: 0 stopped on request,
3 the supervisor died, 4 the worker raised (logged with its traceback).

Idle: the fabric's wait strategy (adaptive by default: spin, yield, park) with
parks capped at half the heartbeat interval, so a parked worker still heartbeats.

After a partial batch: a worker with a ``full_batch`` attribute (the router) returns
how many records a step consumed; a step that took fewer than ``full_batch`` drained
its input, and the loop calls ``sched_yield`` before polling again. On a machine with
fewer cores than busy processes (2 here: publisher, router, subscriber) this hands the
core to whoever shares it, typically the subscriber the router just delivered to,
instead of polling an input that was just found empty; meanwhile packets accumulate,
so the next step routes a larger batch. On a core of its own the yield returns at once
(a syscall, ~0.5 us).
"""

from __future__ import annotations

import argparse
import os
import sys

from loguru import logger

from fabric.control import ControlBlock
from fabric.logging import configure_logging
from fabric.pinning import mask_to_cpus
from fabric.timesource import get_time_source
from fabric.wait import wait_strategy_from_name
from shm_layouts.control import FabricState, WorkerState
from workers import load_worker_class
from workers.base import WorkerContext

__all__ = ["run_worker", "main"]

EXIT_STOPPED = 0
EXIT_SUPERVISOR_GONE = 3
EXIT_FAILED = 4
EXIT_INTERRUPTED = 130


def _pin(cpus: list[int]) -> None:
    if cpus:
        try:
            os.sched_setaffinity(0, cpus)
        except OSError as exc:
            logger.warning("could not pin to cpus {}: {}", cpus, exc)


def run_worker(fabric: str, row: int) -> int:
    """Run worker ``row`` of fabric ``fabric`` until asked to stop; returns the exit code."""
    control = ControlBlock.attach(fabric)
    ctx = None
    worker = None
    counters = None
    stopped = False  # a requested stop: only then give durable slots up
    try:
        spec_name = control.workers[row]["name"].decode()
        cfg = control.config()
        spec = cfg.worker(spec_name)
        _pin(mask_to_cpus(int(control.workers[row]["cpus_mask"])))
        clock = get_time_source()
        ctx = WorkerContext(control, row, spec, clock)
        worker = load_worker_class(spec.kind)(ctx, **spec.options)
        wait = wait_strategy_from_name(cfg.fabric.wait_strategy)
        hb_ns = cfg.fabric.heartbeat_interval_ms * 1_000_000
        counters = control.workers[row]
        sup_check_every = max(1, 500_000_000 // hb_ns)
        full_batch = int(getattr(worker, "full_batch", 0))
        sched_yield = os.sched_yield
        beats = 0
        next_beat = 0
        steps = 0
        logger.info("worker {} ({}) running as pid {}", spec.name, spec.kind, os.getpid())
        while True:
            now = clock.monotonic_ns()
            if now >= next_beat:
                counters["heartbeat_ns"] = now
                counters["steps"] += steps
                steps = 0
                next_beat = now + hb_ns
                beats += 1
                if int(counters["state"]) == WorkerState.STOPPING or control.state == FabricState.STOPPING:
                    _drain(worker, clock, cfg.fabric.drain_timeout_ms * 1_000_000)
                    logger.info("worker {} stopped on request", spec.name)
                    stopped = True
                    return EXIT_STOPPED
                if beats % sup_check_every == 0 and not control.supervisor_alive():
                    logger.error("worker {}: supervisor is gone; exiting", spec.name)
                    return EXIT_SUPERVISOR_GONE
            done = worker.step(now)
            steps += 1
            if done:
                wait.reset()
                if done < full_batch:
                    sched_yield()  # drained the input: let the core's other process run (module doc)
            else:
                wait.idle(worker.parker(), max_park_ns=hb_ns // 2)
    except KeyboardInterrupt:
        logger.warning("worker row {} interrupted", row)
        return EXIT_INTERRUPTED
    except Exception:
        logger.exception("worker row {} failed", row)
        if control.workers is not None:
            control.workers[row]["errors"] += 1
        return EXIT_FAILED
    finally:
        # On a requested stop the worker closes (durable slots are given up: the fabric is
        # stopping). On a failure it must not: its successor adopts those slots and resumes.
        if worker is not None and stopped:
            worker.close()
        if ctx is not None:
            ctx.close()
        del counters  # views into the control block must go before it unmaps
        control.close()


def _drain(worker, clock, timeout_ns: int) -> None:
    deadline = clock.monotonic_ns() + timeout_ns
    while clock.monotonic_ns() < deadline:
        if worker.drain(clock.monotonic_ns()) == 0:
            return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="workers.loop", description="run one ChronoFabric worker")
    parser.add_argument("--fabric", required=True)
    parser.add_argument("--row", type=int, required=True)
    parser.add_argument("--log-level", default=os.environ.get("CHRONOFABRIC_LOG", "INFO"))
    args = parser.parse_args(argv)
    configure_logging(args.log_level, tag=f"worker[{args.row}]")
    return run_worker(args.fabric, args.row)


if __name__ == "__main__":
    sys.exit(main())
