"""The benchmark harness: case registry, process layout, pinning, drivers and JSON results.

Every case runs in a fresh process tree so no case inherits another's warm caches,
JIT state, threads or leaked resources::

    python -m bench  (parent: registry, table, hard timeout, sweep)
      |
      |  subprocess, own session   python -c <case_main> --module M --case NAME --prefix P
      v
    case process  -- pinned to core 0: producer / ping, runs Case.run(ctx)
      |
      |  ctx.start_process()  (multiprocessing "spawn": transports whose handles must be inherited)
      |  ctx.start_command()  (plain subprocess, JSON params on argv: no pickle anywhere)
      v
    endpoint process -- pinned to core 1: consumer / pong
      ^
      |  Control: JSON messages over a socket/pipe ("ready", "warm", "done", "error")

The case process prints exactly one JSON line on its stdout (everything else it or its
libraries print is routed to stderr) and cleans up in ``finally``; the parent enforces a
hard timeout (SIGTERM, then SIGKILL of the whole session) and afterwards sweeps any
``/dev/shm/<prefix>*`` entry and ``$TMPDIR/<prefix>*`` directory the case left.

Registry
--------
Each non-underscore module of the ``bench`` package may expose ``CASES``: a list of
:class:`Case`. ``bench/peers.py`` fills it with the alternatives; ChronoFabric's own
cases (``bench/bench_ring.py`` and later) do the same with ``is_peer=False``. Nothing
else is needed: ``python -m bench`` discovers them, and their rows get a "vs best peer"
ratio. A case is a function ``run(ctx: CaseContext) -> dict`` that returns the fields of
:func:`throughput_result`, :func:`latency_result` (round trips) or
:func:`one_way_latency_result` (samples already one way); the harness adds the identity fields.

JSON line
---------
``{"bench": kind, "case": name, "transport": ..., "impl": "peer"|"chronofabric",
"msgs_per_s": ..., "p50_ns": ..., "p90_ns": ..., "p99_ns": ..., "p999_ns": ..., "max_ns": ...,
"n": ..., ...}``; latency fields are ``null`` in throughput cases. A case that cannot run
prints ``{"case": ..., "skipped": "<reason>"}``; one that failed prints ``"error"``.

Benches may read clocks directly (``time.perf_counter_ns``): they are not library code.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import importlib
import importlib.metadata
import importlib.util
import json
import math
import multiprocessing
import multiprocessing.connection
import os
import pkgutil
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Any, Callable, Sequence

import msgspec
import psutil

__all__ = [
    "THROUGHPUT_RAW",
    "THROUGHPUT_PACKETS",
    "LATENCY_SPIN",
    "LATENCY_BLOCK",
    "KINDS",
    "KIND_TITLES",
    "RAW_MESSAGE",
    "STOP_MESSAGE",
    "PacketModel",
    "make_packet_codec",
    "Requirement",
    "Case",
    "CaseContext",
    "Control",
    "Endpoint",
    "EndpointError",
    "discover_cases",
    "pin_to_core",
    "seconds_until",
    "spin_waiter",
    "block_waiter",
    "drive_throughput",
    "serve_throughput",
    "drive_pingpong",
    "serve_pingpong",
    "throughput_result",
    "latency_result",
    "one_way_latency_result",
    "measure_idle_cpu",
    "case_main",
    "endpoint_main",
    "run_case",
    "sweep_prefix",
    "environment",
]

# --------------------------------------------------------------------------- kinds

THROUGHPUT_RAW = "throughput_raw"
THROUGHPUT_PACKETS = "throughput_packets"
LATENCY_SPIN = "latency_spin"
LATENCY_BLOCK = "latency_block"
KINDS = (THROUGHPUT_RAW, THROUGHPUT_PACKETS, LATENCY_SPIN, LATENCY_BLOCK)
KIND_TITLES = {
    THROUGHPUT_RAW: "Throughput, raw 64-byte messages",
    THROUGHPUT_PACKETS: "Throughput, msgspec packets (encode on producer + decode on consumer, per message)",
    LATENCY_SPIN: "Latency one way (RTT/2; timed one way where a line says \"measured\"), spinning/polling receivers",
    LATENCY_BLOCK: "Latency one way (RTT/2), blocking receivers (wake-up latency)",
}

#: The raw message: 64 bytes. Its first byte is never 0xFF, which marks ``STOP_MESSAGE``.
RAW_MESSAGE = bytes([0x50]) + bytes(range(1, 64))
#: Sent by the ping side to make the pong side leave its loop (same size as a raw message).
STOP_MESSAGE = b"\xff" * 64

#: Where the case process and its endpoint sit. Core 0/1 as in iceoryx2's
#: ``--cpu-core-participant-1/2``; missing cores fall back (see ``_choose_cores``).
PRODUCER_CORE = 0
CONSUMER_CORE = 1

_QUICK_IDLE_WINDOW_S = 0.05
_FULL_IDLE_WINDOW_S = 1.0
_CHILD_GRACE_S = 5.0  # between the case's own deadline and the parent's hard kill

# --------------------------------------------------------------------------- packet codec


class PacketModel(msgspec.Struct, array_like=True, gc=False):
    """Stand-in shaped like ChronoFabric's ``PhasePacket`` (array_like, gc=False, msgpack)."""

    id: int
    hlc: int
    source: int
    targets: int
    topic: str
    priority: int
    deadline_ns: int
    deps: tuple[int, ...]
    payload: bytes


def make_packet_codec() -> tuple[Callable[[int], bytes], Callable[[Any], Any]]:
    """``(encode(i) -> bytes, decode(buffer) -> packet)`` used by every "packets" case.

    The message is ChronoFabric's own ``fabric.packet.PhasePacket`` (topic ``"demo"``,
    ``id``, ``hlc`` and ``source`` set, a 32-byte ``bytes`` payload; 55 bytes encoded):
    peers and ChronoFabric cases all call this, so they carry the identical message and
    pay the identical msgspec cost. ``encode`` builds a fresh packet and encodes it with
    one reused ``msgspec.msgpack.Encoder``; ``decode`` is one reused
    ``msgspec.msgpack.Decoder(PhasePacket)`` and accepts ``bytes`` or an exact
    ``memoryview``, returning the packet (``.id``). ``encode.packet(i)`` builds the same
    packet without encoding it, for cases whose transport encodes it itself
    (``fabric.channel.PacketWriter.offer``).
    """
    from fabric.packet import PhasePacket

    encoder = msgspec.msgpack.Encoder()
    decoder = msgspec.msgpack.Decoder(PhasePacket)
    payload = bytes(range(32))
    hlc0 = 1_700_000_000_000_000_000 & ~0xFFFF  # physical ns with the low 16 bits as the logical counter
    encode_struct = encoder.encode

    def packet(i: int) -> PhasePacket:
        return PhasePacket(id=i, hlc=hlc0 + i, source=3, topic="demo", payload=payload)

    def encode(i: int) -> bytes:
        return encode_struct(PhasePacket(id=i, hlc=hlc0 + i, source=3, topic="demo", payload=payload))

    encode.packet = packet  # type: ignore[attr-defined]
    return encode, decoder.decode


# --------------------------------------------------------------------------- registry


@dataclasses.dataclass(frozen=True)
class Requirement:
    """An optional import a case needs; missing means the case is skipped, not failed."""

    module: str
    dist: str

    def missing(self) -> bool:
        return importlib.util.find_spec(self.module) is None


@dataclasses.dataclass(frozen=True)
class Case:
    """One benchmark case: one question about one transport.

    ``run`` executes inside the case process (pinned to the producer core) and must be a
    module-level function of the module that lists the case in ``CASES``.
    """

    name: str
    kind: str
    transport: str
    run: Callable[["CaseContext"], dict]
    n: int
    quick_n: int
    warmup: int = 0  # 0: derived from n (see ``CaseContext``)
    requires: tuple[Requirement, ...] = ()
    is_peer: bool = True
    batch: int = 1
    timeout_s: float = 90.0
    note: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"case {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.n <= 0 or self.quick_n <= 0 or self.batch <= 0:
            raise ValueError(f"case {self.name!r}: n, quick_n and batch must be > 0")

    @property
    def module(self) -> str:
        return self.run.__module__

    @property
    def impl(self) -> str:
        return "peer" if self.is_peer else "chronofabric"


def _defines_cases(name: str) -> bool:
    """Whether ``bench/<name>.py`` assigns ``CASES`` at top level (read, not imported:
    other bench scripts in the package may be heavy or standalone)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
    try:
        with open(path, encoding="utf-8") as f:
            source = f.read()
    except OSError:
        return False
    return re.search(r"^CASES\b", source, re.MULTILINE) is not None


def discover_cases() -> tuple[list[Case], list[dict]]:
    """All registered cases, plus one error record per ``bench`` module that failed to import.

    Modules are the public (non-underscore) modules of the ``bench`` package whose source
    assigns ``CASES`` at top level; others (standalone bench scripts) are not imported.
    Names must be unique.
    """
    import bench

    cases: list[Case] = []
    errors: list[dict] = []
    for info in sorted(pkgutil.iter_modules(bench.__path__), key=lambda m: m.name):
        if info.name.startswith("_") or not _defines_cases(info.name):
            continue
        modname = f"bench.{info.name}"
        try:
            module = importlib.import_module(modname)
        except Exception as exc:  # a broken module must not hide the other cases
            errors.append({"module": modname, "error": f"import failed: {exc!r}"})
            continue
        cases.extend(getattr(module, "CASES", ()))
    seen: set[str] = set()
    for case in cases:
        if case.name in seen:
            raise ValueError(f"duplicate bench case name {case.name!r}")
        seen.add(case.name)
    return cases, errors


# --------------------------------------------------------------------------- pinning


def pin_to_core(core: int | None) -> int | None:
    """Pin this process to ``core``; returns the core, or None when pinning is impossible."""
    if core is None:
        return None
    try:
        psutil.Process().cpu_affinity([core])
    except (AttributeError, ValueError, OSError, psutil.Error):
        return None
    return core


def _online_cores() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:
        return list(range(os.cpu_count() or 1))


def _choose_cores() -> tuple[int, int]:
    """Producer on core 0 and consumer on core 1 when they exist; else the first distinct ones."""
    cores = _online_cores()
    producer = PRODUCER_CORE if PRODUCER_CORE in cores else cores[0]
    if CONSUMER_CORE in cores and CONSUMER_CORE != producer:
        consumer = CONSUMER_CORE
    else:
        consumer = next((c for c in cores if c != producer), producer)
    return producer, consumer


# --------------------------------------------------------------------------- control channel


class EndpointError(RuntimeError):
    """The endpoint process reported a failure (its traceback is in the message)."""


class Control:
    """JSON messages over a ``multiprocessing.connection.Connection`` (bytes only, no pickle)."""

    def __init__(self, conn: multiprocessing.connection.Connection) -> None:
        self._conn = conn

    def send(self, op: str, **fields: Any) -> None:
        self._conn.send_bytes(json.dumps({"op": op, **fields}).encode())

    def recv(self, timeout_s: float) -> dict:
        """The next message; ``TimeoutError`` if none came in time, ``EOFError`` if the peer left."""
        if not self._conn.poll(max(0.0, timeout_s)):
            raise TimeoutError(f"no control message within {timeout_s:.1f} s")
        return json.loads(self._conn.recv_bytes())

    def expect(self, op: str, timeout_s: float) -> dict:
        """Wait for message ``op``; raises ``EndpointError`` if the endpoint reported an error."""
        try:
            msg = self.recv(timeout_s)
        except EOFError:
            raise EndpointError(f"endpoint exited while the case waited for {op!r}") from None
        if msg.get("op") == "error":
            raise EndpointError(msg.get("error", "unknown endpoint error"))
        if msg.get("op") != op:
            raise EndpointError(f"expected control message {op!r}, got {msg!r}")
        return msg

    def close(self) -> None:
        self._conn.close()


class Endpoint:
    """The consumer/pong process of a case: its ``Control`` and its lifetime."""

    def __init__(self, ctl: Control, proc: Any) -> None:
        self.ctl = ctl
        self._proc = proc  # multiprocessing.Process or subprocess.Popen

    @property
    def pid(self) -> int:
        return self._proc.pid

    def join(self, timeout_s: float) -> bool:
        """Wait for exit; True if it exited."""
        if isinstance(self._proc, subprocess.Popen):
            try:
                self._proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                return False
            return True
        self._proc.join(timeout_s)
        return self._proc.exitcode is not None

    def stop(self, grace_s: float = 3.0) -> None:
        """Join; if it does not leave in ``grace_s``, terminate, then kill."""
        if self.join(grace_s):
            return
        with contextlib.suppress(ProcessLookupError, OSError):
            self._proc.terminate()
        if self.join(1.0):
            return
        with contextlib.suppress(ProcessLookupError, OSError):
            self._proc.kill()
        self.join(1.0)


def _endpoint_body(core: int | None, ctl: Control, target: Callable, params: dict, args: tuple) -> None:
    pin_to_core(core)
    try:
        target(ctl, params, *args)
    except BaseException as exc:
        with contextlib.suppress(OSError, ValueError):
            ctl.send("error", error=f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
        raise
    finally:
        ctl.close()


def _process_endpoint(core: int | None, conn, target: Callable, params: dict, args: tuple) -> None:
    """multiprocessing child entry (module-level so spawn can find it)."""
    _endpoint_body(core, Control(conn), target, params, args)


def endpoint_main(argv: Sequence[str] | None = None) -> int:
    """Entry of a ``ctx.start_command`` endpoint: ``<module:function> <core> <fd> <params-json>``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    target_name, core_s, fd_s, params_json = argv
    modname, _, funcname = target_name.partition(":")
    target = getattr(importlib.import_module(modname), funcname)
    core = None if core_s == "-" else int(core_s)
    ctl = Control(multiprocessing.connection.Connection(int(fd_s)))
    _endpoint_body(core, ctl, target, json.loads(params_json), ())
    return 0


_ENDPOINT_BOOT = "import sys; from bench._harness import endpoint_main; sys.exit(endpoint_main())"
_CASE_BOOT = "import sys; from bench._harness import case_main; sys.exit(case_main())"


# --------------------------------------------------------------------------- case context


class CaseContext:
    """What a case's ``run`` gets: sizes, deadline, cores, a name prefix, and owned resources.

    Everything started or registered through the context is torn down by ``close()``
    (endpoints first, then cleanup callbacks in reverse order, then private temp dirs and
    any ``/dev/shm/<prefix>*`` entry), whatever happened in the case.
    """

    def __init__(self, case: Case, *, quick: bool, prefix: str, timeout_s: float) -> None:
        self.case = case
        self.quick = quick
        self.prefix = prefix
        self.kind = case.kind
        self.batch = case.batch
        n = case.quick_n if quick else case.n
        if case.batch > 1:
            n = -(-n // case.batch) * case.batch  # whole batches
        self.n = n
        if case.warmup:
            warmup = case.warmup
        elif case.kind in (LATENCY_SPIN, LATENCY_BLOCK):
            warmup = max(50, min(2_000, n // 5))
        else:
            warmup = max(100, min(20_000, n // 10))
        if quick:
            warmup = min(warmup, 100)
        if case.batch > 1:
            warmup = -(-warmup // case.batch) * case.batch
        self.warmup = warmup
        self.idle_window_s = _QUICK_IDLE_WINDOW_S if quick else _FULL_IDLE_WINDOW_S
        self.deadline_ns = time.monotonic_ns() + int(timeout_s * 1e9)
        self.producer_core, self.consumer_core = _choose_cores()
        self._endpoints: list[Endpoint] = []
        self._cleanups: list[Callable[[], Any]] = []
        self._tmpdirs: list[str] = []
        self._closed = False

    # -- time
    def remaining_s(self) -> float:
        """Seconds left before this case's own deadline (never negative)."""
        return max(0.0, (self.deadline_ns - time.monotonic_ns()) / 1e9)

    # -- resources
    def tmpdir(self) -> str:
        """A private directory named after the prefix (for ipc:// sockets, iceoryx2 roots)."""
        path = tempfile.mkdtemp(prefix=f"{self.prefix}-")
        self._tmpdirs.append(path)
        return path

    def on_cleanup(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` at ``close()`` (after the endpoints have exited), last registered first."""
        self._cleanups.append(fn)

    def endpoint_params(self, **extra: Any) -> dict:
        """The JSON-able parameters every endpoint gets (plus ``extra``)."""
        return {
            "case": self.case.name,
            "kind": self.kind,
            "n": self.n,
            "warmup": self.warmup,
            "batch": self.batch,
            "prefix": self.prefix,
            "deadline_ns": self.deadline_ns,
            "packets": self.kind == THROUGHPUT_PACKETS,
            **extra,
        }

    def start_process(self, target: Callable, *args: Any, params: dict | None = None) -> Endpoint:
        """Start ``target(ctl, params, *args)`` in a spawned process pinned to the consumer core.

        For transports whose handles must be inherited (multiprocessing queues and pipes,
        faster-fifo): multiprocessing pickles ``args`` to the child, as those peers require.
        """
        mp = multiprocessing.get_context("spawn")
        mine, theirs = mp.Pipe(duplex=True)
        proc = mp.Process(
            target=_process_endpoint,
            args=(self.consumer_core, theirs, target, params or self.endpoint_params(), args),
            name=f"bench-endpoint-{self.case.name}",
            daemon=True,
        )
        proc.start()
        theirs.close()
        endpoint = Endpoint(Control(mine), proc)
        self._endpoints.append(endpoint)
        return endpoint

    def start_command(self, target: str, params: dict | None = None) -> Endpoint:
        """Start ``module:function(ctl, params)`` as a plain subprocess pinned to the consumer core.

        No pickle: ``params`` travel as JSON on argv and the control channel is a socket
        pair. Use this for ChronoFabric endpoints and for peers that attach by name.
        """
        mine, theirs = socket.socketpair()
        cmd = [
            sys.executable,
            "-c",
            _ENDPOINT_BOOT,
            target,
            str(self.consumer_core),
            str(theirs.fileno()),
            json.dumps(params or self.endpoint_params()),
        ]
        try:
            proc = subprocess.Popen(cmd, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
        finally:
            theirs.close()
        endpoint = Endpoint(Control(multiprocessing.connection.Connection(mine.detach())), proc)
        self._endpoints.append(endpoint)
        return endpoint

    def close(self, *, failed: bool = False) -> list[str]:
        """Tear everything down (idempotent); returns what the prefix sweep had to remove.

        After a failure the endpoints get a short grace before SIGTERM: they are likely
        waiting for messages that will never come.
        """
        if self._closed:
            return []
        self._closed = True
        for endpoint in self._endpoints:
            endpoint.stop(0.3 if failed else 3.0)
            endpoint.ctl.close()
        while self._cleanups:
            fn = self._cleanups.pop()
            try:
                fn()
            except Exception as exc:  # keep cleaning up; report on stderr
                print(f"bench: cleanup {fn!r} failed: {exc!r}", file=sys.stderr)
        for path in self._tmpdirs:
            shutil.rmtree(path, ignore_errors=True)
        return sweep_prefix(self.prefix)


# --------------------------------------------------------------------------- waiting


def seconds_until(deadline_ns: int) -> float:
    """Seconds from now to a ``time.monotonic_ns()`` deadline (0 when passed); for endpoints."""
    return max(0.0, (deadline_ns - time.monotonic_ns()) / 1e9)


def spin_waiter(poll: Callable[[], Any], deadline_ns: int) -> Callable[[], Any]:
    """``wait()`` that busy-polls ``poll() -> message | None``; ``TimeoutError`` past the deadline."""
    clock = time.monotonic_ns

    def wait() -> Any:
        msg = poll()
        if msg is not None:
            return msg
        spins = 0
        while True:
            msg = poll()
            if msg is not None:
                return msg
            spins += 1
            if not spins & 0x3FF and clock() > deadline_ns:
                raise TimeoutError("spinning receiver passed the case deadline")

    return wait


def block_waiter(recv: Callable[[], Any], deadline_ns: int) -> Callable[[], Any]:
    """``wait()`` over ``recv() -> message | None`` (a receive that blocks with a short timeout)."""
    clock = time.monotonic_ns

    def wait() -> Any:
        msg = recv()
        while msg is None:
            if clock() > deadline_ns:
                raise TimeoutError("blocking receiver passed the case deadline")
            msg = recv()
        return msg

    return wait


# --------------------------------------------------------------------------- drivers


def _produce(send, send_many, encode, start: int, count: int, batch: int) -> None:
    if batch == 1:
        if encode is None:
            msg = RAW_MESSAGE
            for _ in range(count):
                send(msg)
        else:
            for i in range(start, start + count):
                send(encode(i))
    else:
        if encode is None:
            chunk = [RAW_MESSAGE] * batch
            for _ in range(count // batch):
                send_many(chunk)
        else:
            for first in range(start, start + count, batch):
                send_many([encode(i) for i in range(first, first + batch)])


def drive_throughput(
    ctx: CaseContext,
    endpoint: Endpoint,
    send: Callable[[bytes], Any] | None,
    *,
    send_many: Callable[[list], Any] | None = None,
    consumer: str = "spin",
    **extra: Any,
) -> dict:
    """Producer side of a throughput case; the endpoint runs :func:`serve_throughput`.

    ``warmup`` messages first, acknowledged by the consumer ("warm"), so that connection
    set-up and first-call costs stay out of the timing; then ``n`` messages timed from the
    first send to the consumer's "done". After each phase the producer says "sent", so a
    consumer that waits in vain for messages the transport lost stops after
    ``_STALL_NS`` and the case fails with the loss, not with a timeout. Every ``send``
    must bound its own blocking.
    """
    packets = ctx.kind == THROUGHPUT_PACKETS
    encode = make_packet_codec()[0] if packets else None
    msg_bytes = len(encode(0)) if encode else len(RAW_MESSAGE)
    ctl = endpoint.ctl
    ctl.expect("ready", ctx.remaining_s())
    gc.disable()
    try:
        _produce(send, send_many, encode, 0, ctx.warmup, ctx.batch)
        ctl.send("sent", phase="warm")
        warm = ctl.expect("warm", ctx.remaining_s())
        _check_count("warm-up", warm, ctx.warmup)
        t0 = time.perf_counter_ns()
        _produce(send, send_many, encode, ctx.warmup, ctx.n, ctx.batch)
        ctl.send("sent", phase="done")
        done = ctl.expect("done", ctx.remaining_s())
        elapsed_ns = time.perf_counter_ns() - t0
    finally:
        gc.enable()
    _check_count("measured", done, ctx.n)
    if packets and done.get("last_id") != ctx.warmup + ctx.n - 1:
        raise EndpointError(f"last decoded packet id {done.get('last_id')}, expected {ctx.warmup + ctx.n - 1}")
    return throughput_result(ctx.n, elapsed_ns, msg_bytes=msg_bytes, consumer=consumer, **extra)


def _check_count(phase: str, msg: dict, expected: int) -> None:
    got = msg.get("count")
    if got != expected:
        raise EndpointError(
            f"consumer received {got} of {expected} {phase} messages: the transport lost {expected - (got or 0)}"
        )


#: A consumer idle this long asks the control channel whether the producer is done.
_STALL_NS = 500_000_000


def _consume(recv, count: int, decode, batched: bool, deadline_ns: int, producer_done) -> tuple[int, int]:
    """Receive ``count`` messages (decoding each if ``decode``); stop early if they were lost."""
    clock = time.monotonic_ns
    got = 0
    last_id = -1
    idle_since = 0
    while got < count:
        msg = recv()
        if not msg:  # None, or an empty batch
            now = clock()
            if not idle_since:
                idle_since = now
            elif now - idle_since > _STALL_NS:
                if now > deadline_ns:
                    raise TimeoutError(f"consumer got {got} of {count} messages before the deadline")
                if producer_done():
                    break  # the producer sent everything and nothing came for _STALL_NS: lost
                idle_since = now
            continue
        idle_since = 0
        if batched:
            if decode is not None:
                for one in msg:
                    last_id = decode(one).id
            got += len(msg)
        else:
            if decode is not None:
                last_id = decode(msg).id
            got += 1
    return got, last_id


def serve_throughput(ctl: Control, params: dict, recv: Callable[[], Any], *, batched: bool = False) -> None:
    """Consumer side of a throughput case.

    ``recv()`` returns one message (or, when ``batched``, a list of messages) or a falsy
    value when nothing is there: a non-blocking poll (spinning consumer) or a receive
    that blocks for a short timeout. Packets are decoded one by one.
    """
    decode = make_packet_codec()[1] if params["packets"] else None
    deadline_ns = params["deadline_ns"]
    phases_sent: set[str] = set()
    phase = "warm"

    def producer_done() -> bool:
        while True:
            try:
                msg = ctl.recv(0.0)
            except TimeoutError:
                break
            if msg.get("op") == "sent":
                phases_sent.add(msg.get("phase"))
        return phase in phases_sent

    ctl.send("ready")
    gc.disable()
    got, _ = _consume(recv, params["warmup"], decode, batched, deadline_ns, producer_done)
    ctl.send("warm", count=got)
    phase = "done"
    got, last_id = _consume(recv, params["n"], decode, batched, deadline_ns, producer_done)
    gc.enable()
    ctl.send("done", count=got, last_id=last_id)


def drive_pingpong(
    ctx: CaseContext,
    endpoint: Endpoint,
    send: Callable[[bytes], Any],
    wait: Callable[[], Any],
    **extra: Any,
) -> dict:
    """Ping side of a latency case; the endpoint runs :func:`serve_pingpong`.

    Each of ``warmup + n`` round trips sends ``RAW_MESSAGE`` and waits for its echo; the
    ``n`` measured round-trip times are halved into one-way latencies (Aeron Ping/Pong).
    Then the endpoint's CPU use is sampled over an idle window (what a waiting receiver
    costs) before ``STOP_MESSAGE`` ends it.
    """
    n = ctx.n
    msg = RAW_MESSAGE
    clock = time.perf_counter_ns
    samples = [0] * n
    endpoint.ctl.expect("ready", ctx.remaining_s())
    gc.disable()
    try:
        for _ in range(ctx.warmup):
            send(msg)
            wait()
        start = clock()
        for i in range(n):
            t0 = clock()
            send(msg)
            wait()
            samples[i] = clock() - t0
        elapsed_ns = clock() - start
    finally:
        gc.enable()
    idle_cpu_pct = measure_idle_cpu(endpoint.pid, ctx.idle_window_s)
    send(STOP_MESSAGE)
    done = endpoint.ctl.expect("done", ctx.remaining_s())
    if done.get("count") != ctx.warmup + n:
        raise EndpointError(f"pong echoed {done.get('count')} messages, expected {ctx.warmup + n}")
    return latency_result(samples, elapsed_ns, idle_cpu_pct=idle_cpu_pct, **extra)


def serve_pingpong(ctl: Control, params: dict, send: Callable[[bytes], Any], wait: Callable[[], Any]) -> None:
    """Pong side of a latency case: echo every message until ``STOP_MESSAGE``."""
    ctl.send("ready")
    count = 0
    gc.disable()
    while True:
        msg = wait()
        if msg[0] == 0xFF:
            break
        send(msg)
        count += 1
    gc.enable()
    ctl.send("done", count=count)


# --------------------------------------------------------------------------- results


def _nearest_rank(sorted_ns, q: float) -> int:
    """The q-quantile by nearest rank on sorted samples (an observed value, like HdrHistogram)."""
    idx = max(0, min(len(sorted_ns) - 1, math.ceil(q * len(sorted_ns)) - 1))
    return int(sorted_ns[idx])


def latency_result(rtt_ns: Sequence[int], elapsed_ns: int, **extra: Any) -> dict:
    """Fields of a latency line from round-trip samples: one-way = RTT/2, percentiles by rank."""
    import numpy as np

    return _latency_fields(np.asarray(rtt_ns, dtype=np.int64) // 2, elapsed_ns, msgs_per_sample=2, extra=extra)


def one_way_latency_result(one_way_ns: Sequence[int], elapsed_ns: int, **extra: Any) -> dict:
    """Fields of a latency line from samples that are already one way (not halved).

    For a case that times one message's whole trip with one clock (its sender and its
    receiver in one process), where :func:`latency_result` would halve what needs no
    halving. Same fields and percentiles; ``msgs_per_s`` counts one message per sample
    (N / elapsed), as ``latency_result`` counts two per round trip.
    """
    import numpy as np

    return _latency_fields(np.asarray(one_way_ns, dtype=np.int64), elapsed_ns, msgs_per_sample=1, extra=extra)


def _latency_fields(one_way_ns, elapsed_ns: int, *, msgs_per_sample: int, extra: dict) -> dict:
    """The latency line from one-way samples (a numpy int64 array, any order): nearest-rank percentiles."""
    import numpy as np

    one_way = np.sort(one_way_ns)
    n = int(one_way.size)
    if n == 0:
        raise ValueError("no latency samples")
    return {
        "msgs_per_s": msgs_per_sample * n / (elapsed_ns / 1e9),
        "p50_ns": _nearest_rank(one_way, 0.50),
        "p90_ns": _nearest_rank(one_way, 0.90),
        "p99_ns": _nearest_rank(one_way, 0.99),
        "p999_ns": _nearest_rank(one_way, 0.999),
        "max_ns": int(one_way[-1]),
        "min_ns": int(one_way[0]),
        "n": n,
        **extra,
    }


def throughput_result(n: int, elapsed_ns: int, *, msg_bytes: int, **extra: Any) -> dict:
    """Fields of a throughput line (latency fields are null)."""
    seconds = elapsed_ns / 1e9
    return {
        "msgs_per_s": n / seconds,
        "bytes_per_s": n * msg_bytes / seconds,
        "msg_bytes": msg_bytes,
        "p50_ns": None,
        "p90_ns": None,
        "p99_ns": None,
        "p999_ns": None,
        "max_ns": None,
        "n": n,
        "elapsed_s": seconds,
        **extra,
    }


def measure_idle_cpu(pid: int, window_s: float) -> float | None:
    """CPU % (user+system, 100 = one full core) that ``pid`` used over ``window_s`` of idleness."""
    try:
        proc = psutil.Process(pid)
        before = proc.cpu_times()
        t0 = time.monotonic()
        time.sleep(window_s)
        after = proc.cpu_times()
        wall = time.monotonic() - t0
    except psutil.Error:
        return None
    used = (after.user + after.system) - (before.user + before.system)
    return round(100.0 * used / wall, 1)


# --------------------------------------------------------------------------- case process


class _Terminated(BaseException):
    """Raised by the SIGTERM handler so ``finally`` blocks clean up."""


def _on_sigterm(signum, frame):  # noqa: ARG001
    raise _Terminated(f"signal {signum}")


def _identity(case: Case) -> dict:
    return {"bench": case.kind, "case": case.name, "transport": case.transport, "impl": case.impl}


def _skipped_line(case: Case, reason: str) -> dict:
    return {**_identity(case), "skipped": reason}


def _error_line(case: Case, error: str) -> dict:
    return {**_identity(case), "error": error}


def case_main(argv: Sequence[str] | None = None) -> int:
    """Entry of a case process: run one case, print one JSON line on the real stdout."""
    parser = argparse.ArgumentParser(prog="bench case")
    parser.add_argument("--module", required=True)
    parser.add_argument("--case", required=True)
    parser.add_argument("--prefix", default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--timeout", type=float, default=None, help="seconds for the case's own deadline")
    args = parser.parse_args(argv)

    # Keep fd 1 for the result line only: whatever else this process, its libraries
    # (Rust/C loggers) or its children print goes to stderr.
    result_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def emit(line: dict) -> None:
        os.write(result_fd, (json.dumps(line) + "\n").encode())

    module = importlib.import_module(args.module)
    case = next((c for c in getattr(module, "CASES", ()) if c.name == args.case), None)
    if case is None:
        emit({"case": args.case, "error": f"no case {args.case!r} in {args.module}"})
        return 2
    for req in case.requires:
        if req.missing():
            emit(_skipped_line(case, f"{req.dist} not installed"))
            return 0

    from fabric.testing import unique_prefix

    prefix = args.prefix or unique_prefix("b")
    timeout_s = args.timeout if args.timeout is not None else case.timeout_s - _CHILD_GRACE_S
    signal.signal(signal.SIGTERM, _on_sigterm)
    ctx = CaseContext(case, quick=args.quick, prefix=prefix, timeout_s=timeout_s)
    pinned = pin_to_core(ctx.producer_core)
    line = _identity(case)
    status = 0
    try:
        fields = case.run(ctx)
        line.update(fields)
    except (Exception, _Terminated) as exc:
        traceback.print_exc()
        line["error"] = f"{type(exc).__name__}: {exc}"
        status = 1
    finally:
        swept = ctx.close(failed=status != 0)
    line.update(
        {
            "batch": case.batch,
            "warmup": ctx.warmup,
            "quick": args.quick,
            "cores": {"producer": pinned, "consumer": ctx.consumer_core},
        }
    )
    if ctx.producer_core == ctx.consumer_core:
        line["note"] = "single core available: producer and consumer share it"
    elif case.note:
        line["note"] = case.note
    if swept:
        line["swept"] = swept
    emit(line)
    return status


# --------------------------------------------------------------------------- parent side


def sweep_prefix(prefix: str) -> list[str]:
    """Remove ``/dev/shm/<prefix>*`` (and ``sem.<prefix>*``) and ``$TMPDIR/<prefix>*``; returns what went."""
    removed: list[str] = []
    shm = "/dev/shm"
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(shm):
            if name.startswith(prefix) or name.startswith(f"sem.{prefix}"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(shm, name))
                    removed.append(os.path.join(shm, name))
    tmp = tempfile.gettempdir()
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(tmp):
            if name.startswith(prefix):
                path = os.path.join(tmp, name)
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
                removed.append(path)
    return removed


def _group_members(pgid: int) -> list[psutil.Process]:
    members = []
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if os.getpgid(proc.pid) == pgid:
                members.append(proc)
        except (ProcessLookupError, psutil.Error):
            continue
    return members


def _reap_group(pgid: int, grace_s: float) -> list[int]:
    """Let the case's session finish on its own for ``grace_s``, then SIGKILL what is left."""
    deadline = time.monotonic() + grace_s
    while True:
        members = _group_members(pgid)
        if not members:
            return []
        if time.monotonic() > deadline:
            break
        time.sleep(0.02)
    pids = [p.pid for p in members]
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    psutil.wait_procs(members, timeout=2.0)
    return pids


class _NoiseMeter:
    """CPU time the rest of the machine used while a case ran (100 = one full core).

    ``foreign_cpu_pct`` is all busy CPU time minus what the case's process tree (reaped
    children) and this runner used; ``steal_pct`` is time the hypervisor gave elsewhere.
    On a shared 2-vCPU guest either one above a few percent means the figures are disturbed.
    """

    def __init__(self) -> None:
        self._t0 = time.monotonic()
        self._cpu0 = psutil.cpu_times()
        self._own0 = self._own()

    @staticmethod
    def _own() -> float:
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        me = resource.getrusage(resource.RUSAGE_SELF)
        return kids.ru_utime + kids.ru_stime + me.ru_utime + me.ru_stime

    @staticmethod
    def _busy(t) -> float:
        return t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)

    def finish(self) -> dict:
        wall = max(1e-9, time.monotonic() - self._t0)
        cpu1 = psutil.cpu_times()
        foreign = (self._busy(cpu1) - self._busy(self._cpu0)) - (self._own() - self._own0)
        steal = getattr(cpu1, "steal", 0.0) - getattr(self._cpu0, "steal", 0.0)
        return {
            "foreign_cpu_pct": round(max(0.0, 100.0 * foreign / wall), 1),
            "steal_pct": round(100.0 * steal / wall, 1),
            "loadavg_1m": round(os.getloadavg()[0], 2),
        }


def _repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_case(case: Case, *, quick: bool = False, timeout_s: float | None = None) -> dict:
    """Run one case in a fresh process session with a hard timeout; returns its JSON record.

    Never raises for a failing case: failures come back as ``{"error": ...}`` records.
    """
    for req in case.requires:
        if req.missing():
            return _skipped_line(case, f"{req.dist} not installed")
    from fabric.testing import unique_prefix

    hard_timeout_s = timeout_s if timeout_s is not None else (min(case.timeout_s, 30.0) if quick else case.timeout_s)
    prefix = unique_prefix("b")
    cmd = [
        sys.executable,
        "-c",
        _CASE_BOOT,
        "--module",
        case.module,
        "--case",
        case.name,
        "--prefix",
        prefix,
        "--timeout",
        str(max(1.0, hard_timeout_s - _CHILD_GRACE_S)),
    ]
    if quick:
        cmd.append("--quick")
    record: dict | None = None
    killed: list[int] = []
    noise = _NoiseMeter()
    proc = subprocess.Popen(
        cmd,
        cwd=_repo_root(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        try:
            out, err = proc.communicate(timeout=hard_timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)  # the case process cleans up in ``finally``
            try:
                out, err = proc.communicate(timeout=_CHILD_GRACE_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                out, err = proc.communicate(timeout=5.0)
            record = _error_line(case, f"timed out after {hard_timeout_s:.0f} s")
    except BaseException:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5.0)
        raise
    finally:
        killed = _reap_group(proc.pid, grace_s=3.0)
        swept = sweep_prefix(prefix)
    if record is None:
        for raw in reversed(out.decode(errors="replace").splitlines()):
            with contextlib.suppress(ValueError):
                parsed = json.loads(raw)
                if isinstance(parsed, dict) and parsed.get("case") == case.name:
                    record = parsed
                    break
        if record is None:
            record = _error_line(case, f"no result line (exit code {proc.returncode})")
    if ("error" in record) and err:
        record["stderr_tail"] = err.decode(errors="replace")[-2000:]
    record.update(noise.finish())
    if killed:
        record["killed_pids"] = killed
    if swept:
        record["swept_by_parent"] = swept
    return record


# --------------------------------------------------------------------------- environment


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _read_first_line(path: str) -> str | None:
    with contextlib.suppress(OSError):
        with open(path) as f:
            return f.readline().strip()
    return None


def _dist_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _clock_read_ns() -> float:
    """Cost of one ``perf_counter_ns()`` call from Python, loop overhead subtracted."""
    clock = time.perf_counter_ns
    n = 200_000
    t0 = clock()
    for _ in range(n):
        pass
    t1 = clock()
    for _ in range(n):
        clock()
    t2 = clock()
    return round(max(0.0, ((t2 - t1) - (t1 - t0)) / n), 1)


def environment() -> dict:
    """Machine and versions, as msgspec's ``docs/benchmarks.rst`` lists them."""
    uname = platform.uname()
    versions = {
        dist: _dist_version(dist)
        for dist in ("numpy", "numba", "msgspec", "psutil", "pyzmq", "faster-fifo", "iceoryx2", "chronofabric")
    }
    if importlib.util.find_spec("zmq") is not None:
        with contextlib.suppress(ImportError):
            import zmq

            versions["libzmq"] = zmq.zmq_version()
    return {
        "host": uname.node,
        "kernel": f"{uname.system} {uname.release}",
        "machine": uname.machine,
        "cpu_model": _cpu_model(),
        "cpus_online": len(_online_cores()),
        "clocksource": _read_first_line("/sys/devices/system/clocksource/clocksource0/current_clocksource"),
        "perf_counter_ns_cost_ns": _clock_read_ns(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "versions": versions,
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
