"""The supervisor: owns every segment of a fabric, runs its workers, heals it, cleans up.

Start-up::

    reclaim a stale fabric of the same name (its supervisor is dead)  ── or refuse: one is running
    compile / load every kernel from cache (workers then start in ~0.5 s)
    create the control block, router-in, scheduler-in, dead-letter and the inbox pool
    declare topics; give subscribing workers an inbox and their subscriptions
    plan pinning; spawn each worker (a fresh interpreter, never fork); pin it
    wait for every worker's first heartbeat; state RUNNING

Watch (every ``tick``): heartbeat; a worker whose process exited, or whose
heartbeat is older than ``hung_timeout_ms``, is killed and restarted after an
exponential backoff (counted in its row); dead clients' rows, subscriptions and
inboxes are reclaimed; malformed records are drained from the dead-letter ring.

Shutdown (SIGTERM, SIGINT or ``chronofabric down``): state STOPPING, workers drain
and exit (killed after ``drain_timeout_ms``), every segment is unlinked.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import deque

import msgspec
from loguru import logger

from fabric._process import is_alive
from fabric.config import TopologyConfig
from fabric.control import ControlBlock, control_segment_name, ring_segment_name, segment_prefix
from fabric.errors import FabricAlreadyRunningError, FabricError, SegmentExistsError, VersionMismatchError
from fabric.pinning import PinPlan, cpus_to_mask, plan_pinning
from fabric.ring import Ring, RingConfig
from fabric.segment import list_segments, unlink_segment
from fabric.timesource import get_time_source
from shm_layouts.control import FabricState, RingRole, WorkerState, client_component

__all__ = ["Supervisor", "WorkerProcess", "reclaim_stale_fabric", "warm_kernels"]

_STARTUP_TIMEOUT_NS = 120_000_000_000  # first start may compile every kernel on a cold cache
_INBOX_MAX_PRODUCERS = 8  # the router, plus slots its restarts take before dead ones are reclaimed
_INGRESS_MAX_PRODUCERS = 96  # every client and worker publishes into router-in
_STARTUP_RESTARTS = 3


def warm_kernels() -> None:
    """Compile (or load from numba's cache) every kernel, so workers do not pay for it."""
    import fabric._packet_kernels  # noqa: F401
    import fabric._ring_kernels  # noqa: F401
    import fabric.routing  # noqa: F401
    from workers import WORKER_KINDS, load_worker_class

    for kind in WORKER_KINDS:
        load_worker_class(kind)  # importing a worker module compiles its kernels


def reclaim_stale_fabric(fabric: str) -> list[str]:
    """Unlink the segments of a fabric whose supervisor is dead; returns their names.

    Liveness comes from the control segment's header (its creator's pid and start time),
    not from attaching to it: a live fabric of another layout version, or one still
    starting, is never mistaken for a stale one.

    Raises ``FabricAlreadyRunningError`` when its supervisor lives.
    """
    from fabric.segment import peek_creator

    prefix = segment_prefix(fabric)
    names = list_segments(prefix)
    if not names:
        return []
    creator = peek_creator(control_segment_name(fabric)) if control_segment_name(fabric) in names else None
    if creator is not None and is_alive(*creator):
        detail = ""
        try:
            ControlBlock.attach(fabric, timeout_ns=100_000_000).close()
        except VersionMismatchError as exc:
            detail = f"; it runs another layout version ({exc}): stop it with the chronofabric that started it"
        except FabricError:
            detail = "; it is still starting"
        raise FabricAlreadyRunningError(
            f"fabric {fabric!r} is already running (supervisor pid {creator[0]}){detail}; "
            f"stop it with `chronofabric down --name {fabric}` or pick another --name"
        )
    for n in names:
        owner = peek_creator(n)
        if owner is not None and is_alive(*owner):
            continue  # a live process made it (e.g. a fabric starting right now): not ours to remove
        unlink_segment(n)
    logger.warning("reclaimed the stale segments of fabric {!r}", fabric)
    return names


class WorkerProcess:
    """The supervisor's handle on one worker row: its process, restarts and backoff."""

    def __init__(self, row: int, name: str, kind: str, cpus: list[int], restart: bool, critical: bool) -> None:
        self.row = row
        self.name = name
        self.kind = kind
        self.cpus = cpus
        self.restart = restart
        self.critical = critical
        self.proc: subprocess.Popen | None = None
        self.started_ns = 0
        self.restart_at_ns = 0
        self.restarts = 0


class Supervisor:
    """Runs one fabric. Use ``start()``, then ``run()`` (or ``tick()`` in your own loop), then ``shutdown()``."""

    def __init__(self, config: TopologyConfig, *, log_level: str = "INFO") -> None:
        self.config = config
        self.name = config.fabric.name
        self.log_level = log_level
        self.clock = get_time_source()
        self.control: ControlBlock | None = None
        self.rings: list[Ring] = []
        self.workers: list[WorkerProcess] = []
        self.plan: PinPlan | None = None
        self.dead_letters: deque[bytes] = deque(maxlen=100)
        self._dl_reader = None
        self.arena = None
        self._stop_requested = False
        self._last_reclaim_ns = 0

    # --- start ----------------------------------------------------------------------------

    def start(self) -> None:
        """Create every segment, spawn and pin every worker, wait until all run."""
        cfg = self.config
        reclaim_stale_fabric(self.name)
        warm_kernels()
        self.plan = plan_pinning(cfg)
        for note in self.plan.notes:
            logger.info("pinning: {}", note)
        try:
            self.create_segments()
            self._spawn_all()
            self._wait_running()
        except BaseException:
            self.shutdown()
            raise
        self.control.header[0]["heartbeat_ns"] = self.clock.monotonic_ns()
        self.control.set_state(FabricState.RUNNING)
        logger.info("fabric {!r} running: {} workers", self.name, len(self.workers))

    def create_segments(self) -> None:
        """Create every segment of the fabric without spawning workers (start() calls it; so do the
        deterministic simulator and in-process test harnesses). ``self.plan`` must be set."""
        cfg = self.config
        f = cfg.fabric
        try:
            self.control = ControlBlock.create(self.name, cfg)
        except SegmentExistsError as exc:
            raise FabricAlreadyRunningError(f"fabric {self.name!r} already exists: {exc}") from exc
        cb = self.control
        cb.header[0]["started_ns"] = self.clock.monotonic_ns()

        def make(role: int, label: str, capacity: int, *, producers: int, subscribers: int, index: int = 0) -> Ring:
            name = ring_segment_name(self.name, label)
            ring = Ring.create(
                name,
                RingConfig(
                    capacity_bytes=capacity,
                    max_record_bytes=f.max_record_bytes,
                    max_producers=producers,
                    max_subscribers=subscribers,
                    multi_producer=True,
                ),
            )
            self.rings.append(ring)
            cb.add_ring(role, name, capacity, index)
            return ring

        make(RingRole.ROUTER_IN, "router-in", f.ingress_capacity_bytes, producers=_INGRESS_MAX_PRODUCERS, subscribers=2)
        if any(w.kind == "scheduler" for w in cfg.workers):
            make(RingRole.SCHEDULER_IN, "scheduler-in", f.ingress_capacity_bytes, producers=_INGRESS_MAX_PRODUCERS, subscribers=2)
        dead_letter = make(RingRole.DEAD_LETTER, "dead-letter", f.inbox_capacity_bytes, producers=8, subscribers=2)
        for i in range(f.inbox_pool):
            make(RingRole.INBOX, f"inbox-{i}", f.inbox_capacity_bytes, producers=_INBOX_MAX_PRODUCERS, subscribers=2, index=i)
        cb.header[0]["n_inboxes"] = f.inbox_pool
        self._dl_reader = dead_letter.reader()
        if f.arena_bytes:
            from fabric.arena import BlobArena

            name = ring_segment_name(self.name, "arena")
            self.arena = BlobArena.create(name, f.arena_bytes, f.arena_slots)
            cb.add_ring(RingRole.ARENA, name, f.arena_bytes)
        for t in cfg.topics:
            cb.declare_topic(t.name)
        for row, w in enumerate(cfg.workers):
            cpus = self.plan.cpus[w.name]
            r = cb.workers[row]
            r["name"] = w.name.encode()
            r["kind"] = row
            r["cpus_mask"] = cpus_to_mask(cpus)
            r["state"] = WorkerState.STARTING
            if w.subscribe:
                inbox = cb.claim_inbox(row)
                r["inbox"] = inbox
                for topic in w.subscribe:
                    cb.add_subscription(topic, inbox, row)
            self.workers.append(WorkerProcess(row, w.name, w.kind, cpus, w.restart, w.critical))
        cb.header[0]["n_workers"] = len(cfg.workers)

    def _spawn(self, wp: WorkerProcess) -> None:
        cb = self.control
        env = dict(os.environ)
        env.setdefault("CHRONOFABRIC_LOG", self.log_level)
        wp.proc = subprocess.Popen(
            [sys.executable, "-m", "workers.loop", "--fabric", self.name, "--row", str(wp.row)],
            stdin=subprocess.DEVNULL,
            env=env,
        )
        wp.started_ns = self.clock.monotonic_ns()
        r = cb.workers[wp.row]
        r["pid"] = wp.proc.pid
        r["heartbeat_ns"] = 0
        r["state"] = WorkerState.STARTING
        self._set_priority(wp)
        logger.info("spawned worker {} ({}) pid {} on cpus {}", wp.name, wp.kind, wp.proc.pid, wp.cpus)

    def _set_priority(self, wp: WorkerProcess) -> None:
        prio = self.config.fabric.realtime_priority
        if not prio or not wp.critical:
            return
        try:
            os.sched_setscheduler(wp.proc.pid, os.SCHED_FIFO, os.sched_param(prio))
            logger.info("worker {} runs at SCHED_FIFO priority {}", wp.name, prio)
        except (PermissionError, OSError) as exc:
            logger.warning(
                "worker {}: real-time priority not permitted ({}); it runs at normal priority "
                "(grant CAP_SYS_NICE or an rtprio limit to allow it)",
                wp.name,
                exc.strerror or exc,
            )

    def _spawn_all(self) -> None:
        for wp in self.workers:
            self._spawn(wp)

    def _wait_running(self) -> None:
        """Wait for every worker's first heartbeat; a worker that dies meanwhile is restarted (backoff).

        Start-up fails only when a worker keeps dying (``_STARTUP_RESTARTS`` times) or the
        start-up deadline passes: a transient failure must not take the fabric down.
        """
        deadline = self.clock.monotonic_ns() + _STARTUP_TIMEOUT_NS
        cb = self.control
        while True:
            self.tick()
            for wp in self.workers:
                state = int(cb.workers[wp.row]["state"])
                if state == WorkerState.FAILED or wp.restarts > _STARTUP_RESTARTS:
                    raise FabricError(
                        f"worker {wp.name!r} ({wp.kind}) kept failing during start-up "
                        f"(exit code {int(cb.workers[wp.row]['exit_code'])}); see its log lines above"
                    )
            if all(int(cb.workers[wp.row]["state"]) == WorkerState.RUNNING for wp in self.workers):
                return
            if self.clock.monotonic_ns() > deadline:
                slow = [wp.name for wp in self.workers if int(cb.workers[wp.row]["state"]) != WorkerState.RUNNING]
                raise FabricError(f"workers {slow} did not start within the start-up deadline")
            _sleep_ms(5)

    # --- watch ----------------------------------------------------------------------------

    def request_stop(self, *_: object) -> None:
        """Ask ``run()`` to shut down (signal-safe)."""
        self._stop_requested = True

    def run(self, *, duration_ns: int | None = None, tick_ms: int = 20) -> None:
        """Watch the fabric until SIGTERM/SIGINT, ``request_stop()`` or ``duration_ns``; then shut down."""
        old_term = signal.signal(signal.SIGTERM, self.request_stop)
        old_int = signal.signal(signal.SIGINT, self.request_stop)
        end = None if duration_ns is None else self.clock.monotonic_ns() + duration_ns
        try:
            while not self._stop_requested:
                self.tick()
                if end is not None and self.clock.monotonic_ns() >= end:
                    break
                _sleep_ms(tick_ms)
        finally:
            signal.signal(signal.SIGTERM, old_term)
            signal.signal(signal.SIGINT, old_int)
            self.shutdown()

    def tick(self) -> None:
        """One round of watching: heartbeat, dead/hung workers, dead clients, dead letters."""
        cb = self.control
        now = self.clock.monotonic_ns()
        cb.header[0]["heartbeat_ns"] = now
        hung_ns = self.config.fabric.hung_timeout_ms * 1_000_000
        for wp in self.workers:
            row = cb.workers[wp.row]
            state = int(row["state"])
            if state == WorkerState.FAILED:
                continue
            if state == WorkerState.RESTARTING:
                if now >= wp.restart_at_ns:
                    self._spawn(wp)
                continue
            code = wp.proc.poll()
            if code is None:
                hb = int(row["heartbeat_ns"])
                if state == WorkerState.STARTING and hb > 0:
                    row["state"] = WorkerState.RUNNING
                elif state == WorkerState.RUNNING and now - hb > hung_ns:
                    logger.error("worker {} is hung (no heartbeat for {:.1f} s): killing it", wp.name, (now - hb) / 1e9)
                    wp.proc.kill()
                    code = wp.proc.wait(timeout=5)
                elif state == WorkerState.STARTING and now - wp.started_ns > _STARTUP_TIMEOUT_NS:
                    wp.proc.kill()
                    code = wp.proc.wait(timeout=5)
            if code is not None:
                self._worker_died(wp, code, now)
        if now - self._last_reclaim_ns > 200_000_000:
            self._last_reclaim_ns = now
            for client, inboxes in cb.reclaim_dead_clients():
                held = self.arena.release_client(client_component(client), inboxes) if self.arena is not None else 0
                for ring in self._inbox_rings(inboxes):
                    ring.reclaim_dead()  # its subscriber slot there would gate the router forever
                logger.info("reclaimed dead client row {} (and {} blob holds)", client, held)
        self._drain_dead_letters()

    def _inbox_rings(self, mask: int) -> list[Ring]:
        names = {self.control.ring_name(RingRole.INBOX, i) for i in range(64) if mask >> i & 1}
        return [r for r in self.rings if r.name in names]

    def _worker_died(self, wp: WorkerProcess, code: int, now: int) -> None:
        cb = self.control
        row = cb.workers[wp.row]
        row["exit_code"] = code
        if not wp.restart or wp.restarts >= self.config.fabric.max_restarts:
            row["state"] = WorkerState.FAILED
            logger.error("worker {} exited with code {} and will not be restarted", wp.name, code)
            return
        lo, hi = self.config.fabric.restart_backoff_ms
        backoff_ms = min(hi, lo * (2 ** min(wp.restarts, 20)))
        wp.restarts += 1
        row["restarts"] = wp.restarts
        row["state"] = WorkerState.RESTARTING
        wp.restart_at_ns = now + backoff_ms * 1_000_000
        logger.warning("worker {} exited with code {}; restart {} in {} ms", wp.name, code, wp.restarts, backoff_ms)

    def _drain_dead_letters(self) -> None:
        if self._dl_reader is None:
            return

        def keep(view: memoryview, type_id: int) -> None:
            self.dead_letters.append(bytes(view[:256]))

        n = self._dl_reader.poll(keep, 64)
        if n:
            self.control.header[0]["dead_lettered"] += n
            logger.warning("{} malformed records went to the dead-letter ring", n)

    # --- stop -----------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Drain and stop every worker, then unlink every segment (idempotent)."""
        cb = self.control
        if cb is None:
            self._unlink_all()
            return
        cb.set_state(FabricState.STOPPING)
        for wp in self.workers:
            cb.workers[wp.row]["state"] = WorkerState.STOPPING
        deadline = self.clock.monotonic_ns() + (self.config.fabric.drain_timeout_ms + 3000) * 1_000_000
        for wp in self.workers:
            if wp.proc is None:
                continue
            remaining_s = max(0.0, (deadline - self.clock.monotonic_ns()) / 1e9)
            try:
                wp.proc.wait(timeout=remaining_s)
            except subprocess.TimeoutExpired:
                logger.warning("worker {} did not stop in time: killing it", wp.name)
                wp.proc.kill()
                wp.proc.wait(timeout=5)
            cb.workers[wp.row]["state"] = WorkerState.EXITED
        cb.set_state(FabricState.STOPPED)
        if self._dl_reader is not None:
            self._dl_reader.close()
            self._dl_reader = None
        for ring in self.rings:
            ring.close()
        self.rings.clear()
        if self.arena is not None:
            self.arena.close()
            self.arena = None
        cb.close()
        self.control = None
        self._unlink_all()
        logger.info("fabric {!r} stopped; every segment unlinked", self.name)

    def _unlink_all(self) -> None:
        for name in list_segments(segment_prefix(self.name)):
            unlink_segment(name)

    def statistics(self) -> dict:
        """A plain-data snapshot (what ``chronofabric stat --json`` prints)."""
        from fabric.stat import snapshot

        return msgspec.to_builtins(snapshot(self.control))


def _sleep_ms(ms: float) -> None:
    import time

    time.sleep(ms / 1000.0)


_ = is_alive
