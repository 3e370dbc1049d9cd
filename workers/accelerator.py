"""The accelerator worker: runs named kernels (``workers._kernels``) on ``accel.work`` items.

Input (its inbox: ``accel.work``, usually sent by ADP with a target mask naming this
worker's component id, and ``egc.decisions``)::

    accel.work     {"item": int, "kernel": str, "inputs": [ndarray | list, ...]}

Output, one reply per item it takes from its inbox::

    accel.results  {"item": int, "worker": int, "ok": bool, "result": ndarray | None,
                    "error": str | None, "duration_ns": int}

``worker`` is this worker's component id (its row in the control block). The reply's target
mask names the component that sent the item (when it is a worker or client id below 64),
so only that ADP (or client) receives it. ``duration_ns``
is the kernel's run time, measured with the worker's ``TimeSource`` around the call
(``slowdown_factor`` runs included). A kernel that raises, an unknown kernel, bad inputs
or a result too large for one record all give ``ok = False`` with ``error`` saying why:
one bad item never stops the worker.

Step: take a batch from the inbox (highest packet priority first), then run items until
the step's time budget (``step_budget_ms``) is spent, so that a long batch still lets the
loop heartbeat; the rest wait for the next step. Replies that the fabric refuses (back
pressure) are kept, in order, and offered again before any new work is done.

Device: ``run_kernel``'s CUDA path when ``numba.cuda`` is available and the kernel has
one (``device = "auto"``, the default), else the CPU; ``device = "cpu"`` forces the CPU.
Counters (its row's ``c``): ``c[0]`` items that succeeded, ``c[1]`` items that failed,
``c[2]`` items run on CUDA, ``c[3]`` items run on the CPU, ``c[4]`` kernel time in µs.

Test and bench hooks: ``slowdown_factor = N`` runs each kernel N times (a slower device);
``fail_every = N`` makes every Nth item this process takes fail (``ok = False``).
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np
from loguru import logger

from fabric.errors import CodecError, RecordTooLargeError
from fabric.packet import PhasePacket
from fabric.wait import Parker
from workers._kernels import KERNELS, cuda_available, run_kernel
from workers.base import Worker, WorkerContext

__all__ = ["AcceleratorWorker", "WORK_TOPIC", "RESULTS_TOPIC"]

WORK_TOPIC = "accel.work"
RESULTS_TOPIC = "accel.results"
DECISIONS_TOPIC = "egc.decisions"

_C_OK, _C_FAILED, _C_CUDA, _C_CPU, _C_BUSY_US = range(5)
_MAX_OUTBOX = 65536


class _InjectedFailure(RuntimeError):
    """Raised on purpose by ``fail_every`` (a test hook)."""


def _as_input(x: Any) -> Any:
    """A kernel input as an array: lists become float64 (complex128 if complex) arrays."""
    if isinstance(x, np.ndarray):
        return x
    arr = np.asarray(x)
    if arr.dtype.kind in "biu":
        return arr.astype(np.float64)
    return arr


def _warm_kernels() -> None:
    """One call of each CPU kernel on a tiny input (loads its compiled code)."""
    x = np.ones((1, 8))
    for name in KERNELS:
        try:
            if name == "fir":
                run_kernel(name, x, np.ones(2), device="cpu")
            elif name == "matvec":
                run_kernel(name, np.ones((2, 8)), x, device="cpu")
            elif name == "fft":
                run_kernel(name, x.astype(np.complex128), device="cpu")
            else:
                run_kernel(name, x, device="cpu")
        except Exception as exc:  # noqa: BLE001 - warming is an optimisation only
            logger.debug("accelerator: warming kernel {} failed: {}", name, exc)


class AcceleratorWorker(Worker):
    """Runs ``accel.work`` items with ``run_kernel`` and replies on ``accel.results``.

    Options
    -------
    batch : int
        Items taken from the inbox per poll (default 32).
    step_budget_ms : float
        Kernel time after which a step returns, leaving the rest of the batch for the
        next step (default 20 ms; at least one item runs per step).
    device : {"auto", "cpu", "cuda"}
        Where kernels run (default "auto": CUDA when available and the kernel has a path).
    slowdown_factor : int
        Run every kernel this many times (benches and tests: a slower accelerator).
    fail_every : int
        Fail every Nth item with an injected error (tests); 0 never.
    warm : bool
        Run every CPU kernel once on a tiny input at start (default True), so that loading
        compiled code (~0.2 s once per process) is not counted in the first item's duration.
    """

    kind = "accelerator"

    def __init__(
        self,
        ctx: WorkerContext,
        *,
        batch: int = 32,
        step_budget_ms: float = 20.0,
        device: str = "auto",
        slowdown_factor: int = 1,
        fail_every: int = 0,
        warm: bool = True,
    ) -> None:
        super().__init__(ctx)
        if int(batch) < 1:
            raise ValueError(f"accelerator: batch must be >= 1, got {batch}")
        if device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"accelerator: device must be 'auto', 'cpu' or 'cuda', got {device!r}")
        if int(slowdown_factor) < 1:
            raise ValueError(f"accelerator: slowdown_factor must be an int >= 1, got {slowdown_factor}")
        if int(fail_every) < 0:
            raise ValueError(f"accelerator: fail_every must be >= 0, got {fail_every}")
        self.batch = int(batch)
        self.step_budget_ns = int(float(step_budget_ms) * 1e6)
        self.slowdown_factor = int(slowdown_factor)
        self.fail_every = int(fail_every)
        self.cuda = device != "cpu" and cuda_available()
        if device == "cuda" and not self.cuda:
            raise ValueError("accelerator: device 'cuda' was asked for, but numba.cuda is not available here")
        if warm:
            _warm_kernels()
        self.inbox = ctx.inbox_reader()
        self.writer = ctx.publisher()
        self.clock = ctx.clock
        self._queue: deque[PhasePacket] = deque()
        self._outbox: deque[PhasePacket] = deque()
        self._taken = 0  # items taken by this process (fail_every counts these)
        self._throttled = False
        self._errors_logged = 0
        logger.info(
            "accelerator {}: component {}, kernels on {}, slowdown x{}",
            ctx.spec.name,
            ctx.component,
            "CUDA (where a kernel has a CUDA path)" if self.cuda else "the CPU",
            self.slowdown_factor,
        )

    # --- step -------------------------------------------------------------------------------

    def step(self, now_ns: int) -> int:
        work = self._flush()
        if self._outbox:
            return work  # back-pressured: do no new work until the replies are out
        if not self._queue and self.inbox is not None:
            pkts = self.inbox.receive_batch(self.batch)
            if pkts:
                self.ctx.counters["received"] += len(pkts)
                work += len(pkts)
                items = []
                for pkt in pkts:
                    if pkt.topic == WORK_TOPIC:
                        items.append(pkt)
                    elif pkt.topic == DECISIONS_TOPIC:
                        self._on_decision(pkt)
                items.sort(key=lambda p: -p.priority)  # stable: FIFO within a priority
                self._queue.extend(items)
        if not self._queue:
            return work
        budget = self.step_budget_ns // 2 if self._throttled else self.step_budget_ns
        start = self.clock.monotonic_ns()
        while self._queue:
            self._run(self._queue.popleft())
            work += 1
            if self._outbox or self.clock.monotonic_ns() - start >= budget:
                break
        return work

    def _run(self, pkt: PhasePacket) -> None:
        c = self.ctx.counters
        payload = pkt.payload
        item = -1
        ok = False
        result = None
        error = None
        duration = 0
        try:
            if not isinstance(payload, dict):
                raise TypeError(f"accel.work payload must be a dict, got {type(payload).__name__}")
            item = int(payload["item"])
            name = payload["kernel"]
            spec = KERNELS.get(name) if isinstance(name, str) else None
            if spec is None:
                raise KeyError(f"unknown kernel {name!r}; known: {sorted(KERNELS)}")
            raw = payload.get("inputs") or []
            if not isinstance(raw, list):
                raise TypeError(f"inputs must be a list, got {type(raw).__name__}")
            inputs = [_as_input(x) for x in raw]
            self._taken += 1
            fail = self.fail_every > 0 and self._taken % self.fail_every == 0
            use_cuda = self.cuda and spec.cuda is not None
            device = "cuda" if use_cuda else "cpu"
            t0 = self.clock.monotonic_ns()
            try:
                for _ in range(self.slowdown_factor):
                    result = run_kernel(name, *inputs, device=device)
                if fail:
                    raise _InjectedFailure(f"injected failure (fail_every={self.fail_every})")
            finally:
                duration = self.clock.monotonic_ns() - t0
                c["c"][_C_BUSY_US] += duration // 1000
                c["c"][_C_CUDA if use_cuda else _C_CPU] += 1
            ok = True
        except Exception as exc:  # noqa: BLE001 - every failure becomes an ok=False reply
            result = None
            error = f"{type(exc).__name__}: {exc}"
            self._log_error(item, error)
        self._reply(pkt, item, ok, result, error, duration)

    def _reply(self, pkt: PhasePacket, item: int, ok: bool, result: Any, error: str | None, duration: int) -> None:
        payload = {
            "item": item,
            "worker": self.ctx.component,
            "ok": ok,
            "result": result if ok else None,
            "error": error,
            "duration_ns": int(duration),
        }
        self._outbox.append(
            PhasePacket(
                id=self.ctx.next_packet_id(),
                source=self.ctx.component,
                priority=pkt.priority,
                targets=1 << pkt.source if 0 <= pkt.source < 64 else 0,
                topic=RESULTS_TOPIC,
                payload=payload,
            )
        )
        self._flush()

    def _flush(self) -> int:
        """Offer queued replies in order; stops at the first refusal (back pressure)."""
        n = 0
        c = self.ctx.counters
        while self._outbox:
            reply = self._outbox[0]
            try:
                r = self.writer.offer(reply)
            except (CodecError, RecordTooLargeError) as exc:
                # The result cannot travel: the item fails instead (the reply itself always fits).
                p = reply.payload
                p["ok"], p["result"], p["error"] = False, None, f"result cannot be sent: {exc}"
                self._log_error(p["item"], p["error"])
                continue
            if r < 0:
                if len(self._outbox) > _MAX_OUTBOX:
                    self._outbox.popleft()
                    c["dropped"] += 1
                break
            self._outbox.popleft()
            c["emitted"] += 1
            c["c"][_C_OK if reply.payload["ok"] else _C_FAILED] += 1
            n += 1
        return n

    def _on_decision(self, pkt: PhasePacket) -> None:
        p = pkt.payload
        if not isinstance(p, dict):
            return
        if p.get("target") in ("accelerator", self.ctx.spec.name):
            action = p.get("action")
            if action in ("throttle", "shed"):
                self._throttled = True
            elif action == "allow":
                self._throttled = False

    def _log_error(self, item: int, error: str) -> None:
        self.ctx.counters["errors"] += 1
        self._errors_logged += 1
        if self._errors_logged <= 10 or self._errors_logged % 1000 == 0:
            logger.warning("accelerator {}: item {} failed: {}", self.ctx.spec.name, item, error)

    # --- lifecycle ---------------------------------------------------------------------------

    def parker(self) -> Parker | None:
        return None if self.inbox is None else self.inbox.reader._parker

    def drain(self, now_ns: int) -> int:
        return self.step(now_ns)

    def close(self) -> None:
        if self.inbox is not None:
            self.inbox.close()
        self.writer.close()
