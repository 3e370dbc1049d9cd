"""ChronoFabric end to end: a running fabric (supervisor + router), a client publishing
PhasePackets and a subscriber process receiving them, beside the direct-ring cases of
``bench/bench_ring.py`` so the cost of each hop shows.

Layout (the harness's, plus the fabric's own processes)::

    case process, core 0          Supervisor(default_topology(<prefix>)).start()   (idle during timing)
                                  fabric.attach(name).publisher("demo").publish(payload)
    router worker                 the core the fabric's pinning plan gives it (recorded as "router_cpus");
                                  latency_spin pins it to core 1 and has no endpoint process
    endpoint process, core 1      fabric.attach(name).subscribe("demo").receive_batch() / .receive()
                                  (latency_spin: the subscriber is in the case process, beside the publisher)

Every packet is built by the client's ``Publisher`` (id, HLC stamp, source) around the
same 32-byte payload as ``make_packet_codec()``'s packet, encoded into the router's
input ring, routed by topic into the subscriber's inbox ring, and decoded there: one
encode, one decode, two ring hops and the router in between.

Latency, two ways:

- ``latency_spin`` (the target figure): ONE client, the case process on core 0, holds a
  ``Publisher`` and a spinning ``Subscriber`` on ``demo``; the router runs alone on core 1.
  Each sample is ``t0; publish; receive; now - t0``: one packet's trip publisher -> router ->
  subscriber, timed one way with one clock. Two busy processes on two cores, each owning one.
- ``latency_pingpong``: the case process publishes on ``demo`` and waits for the echo on
  ``bench-echo`` (declared at run time); the endpoint receives on ``demo`` and publishes the
  echo; one-way = RTT/2, every one-way trip crosses the router once. Three busy processes
  (ping, router, pong) on two cores: it measures core sharing as much as the fabric.

The fabric's segments are named ``cf-<name>-...`` with ``name = ctx.prefix``: the harness's
prefix sweep does not match them, so the case unlinks them itself after
``Supervisor.shutdown()`` (which normally does it).

Run one case by hand: ``python -m bench.bench_fabric --case chronofabric_fabric/latency_spin [--quick]``
(or ``.../latency_pingpong``, ``.../throughput_packets``).
"""

from __future__ import annotations

import gc
import sys
import time
from typing import Any, Callable

from bench._harness import (
    LATENCY_SPIN,
    THROUGHPUT_PACKETS,
    Case,
    CaseContext,
    Control,
    EndpointError,
    block_waiter,
    latency_result,
    make_packet_codec,
    measure_idle_cpu,
    one_way_latency_result,
)
from bench.bench_ring import _drive, _serve

__all__ = ["CASES"]

_TOPIC = "demo"
_ECHO_TOPIC = "bench-echo"
_RECV_TIMEOUT_NS = 200_000_000
_SEND_TIMEOUT_NS = 10_000_000_000
#: Payload that ends a ping-pong (the packets otherwise carry ``_payload()``).
_STOP_PAYLOAD = b"stop"


def _payload() -> bytes:
    """The same 32-byte payload as ``make_packet_codec()``'s packet."""
    return make_packet_codec()[0].packet(0).payload


#: The default topology's workers that the cases keep: those on the path of topic "demo".
FABRIC_WORKER_KINDS = ("router",)


def _fabric_name(ctx: CaseContext) -> str:
    # ctx.prefix is "cfb-" + 6 hex digits: letters, digits and dashes, well under 31 characters.
    return ctx.prefix


def _start_fabric(ctx: CaseContext, *, wait_strategy: str | None = None, router_core: int | None = None) -> tuple[Any, dict]:
    """Start a supervisor with the default topology; returns it and where its workers run.

    ``wait_strategy`` replaces the topology's ``fabric.wait_strategy`` (how idle workers wait);
    ``router_core`` pins the router there instead of where the pinning plan puts it.
    """
    import msgspec
    import psutil

    from fabric.config import default_topology
    from fabric.control import segment_prefix
    from fabric.segment import list_segments, unlink_segment
    from fabric.supervisor import Supervisor

    name = _fabric_name(ctx)

    def unlink_leftovers() -> None:
        for seg in list_segments(segment_prefix(name)):
            unlink_segment(seg)

    ctx.on_cleanup(unlink_leftovers)  # runs last: after shutdown, in case it failed half-way
    topology = default_topology(name)
    # Only the workers on the demo path: the module workers (drpp, adp, ...) subscribe to other
    # topics, so they would idle; each costs an interpreter start (7 of them took ~25 s on the
    # loaded 2-core VM, over --quick's 30 s bound) and time-slices on the two cores.
    topology = msgspec.structs.replace(topology, workers=[w for w in topology.workers if w.kind in FABRIC_WORKER_KINDS])
    if wait_strategy is not None:
        topology = msgspec.structs.replace(
            topology, fabric=msgspec.structs.replace(topology.fabric, wait_strategy=wait_strategy)
        )
    if router_core is not None:
        workers = [msgspec.structs.replace(w, cpus=[router_core]) if w.kind == "router" else w for w in topology.workers]
        topology = msgspec.structs.replace(topology, workers=workers)
    sup = Supervisor(topology, log_level="WARNING")
    ctx.on_cleanup(sup.shutdown)
    # The pinning plan reads the supervisor's own affinity: started from this process (pinned to
    # the producer core) it would see one core. Plan and spawn as a supervisor started from a
    # shell would, over every online core, then pin this process back to the producer core.
    me = psutil.Process()
    pinned = me.cpu_affinity()
    me.cpu_affinity([])  # psutil: an empty list means every eligible core
    try:
        sup.start()
    finally:
        me.cpu_affinity(pinned)
    workers = {}
    for wp in sup.workers:
        try:
            actual = sorted(psutil.Process(wp.proc.pid).cpu_affinity())
        except psutil.Error:
            actual = None
        workers[wp.name] = {"planned_cpus": wp.cpus, "cpus": actual}
    return sup, {"fabric": name, "workers": workers, "supervisor_core": ctx.producer_core,
                 "router_cpus": workers.get("router", {}).get("cpus"),
                 "wait_strategy": sup.config.fabric.wait_strategy}


def _participant_wait(name: str):
    from fabric.wait import wait_strategy_from_name

    return wait_strategy_from_name(name)


def _attach(name: str):
    import fabric

    return fabric.attach(name)


# =========================================================================== throughput


#: The fabric's idle strategy in the throughput case (None: the topology's default, "adaptive").
THROUGHPUT_ROUTER_WAIT: str | None = None
#: How the subscriber idles (None: "yield" when it shares the router's core, else "spin").
THROUGHPUT_SUB_WAIT: str | None = None


def fabric_throughput(ctx: CaseContext) -> dict:
    """Publisher -> router-in ring -> router -> inbox ring -> subscriber, per message."""
    _, where = _start_fabric(ctx, wait_strategy=THROUGHPUT_ROUTER_WAIT)
    # A subscriber sharing the router's core yields when it finds nothing; alone, it spins.
    sub_wait = THROUGHPUT_SUB_WAIT or ("yield" if ctx.consumer_core in (where["router_cpus"] or []) else "spin")
    client = _attach(_fabric_name(ctx))
    ctx.on_cleanup(client.close)
    pub = client.publisher(_TOPIC)
    endpoint = ctx.start_command(
        "bench.bench_fabric:_subscriber", ctx.endpoint_params(fabric=_fabric_name(ctx), wait=sub_wait)
    )
    publish = pub.publish
    payload = _payload()
    last = [-1]

    def produce(first: int, count: int) -> None:  # noqa: ARG001
        pid = -1
        for _ in range(count):
            pid = publish(payload, timeout_ns=_SEND_TIMEOUT_NS)  # waits (bounded) only when back-pressured
        last[0] = pid

    def check_done(done: dict) -> None:
        if done.get("last_id") != last[0]:
            raise EndpointError(f"last received packet id {done.get('last_id')}, last published {last[0]}")

    return _drive(ctx, endpoint, produce, msg_bytes=len(make_packet_codec()[0](0)), check_done=check_done,
                  consumer=sub_wait, api="Publisher.publish / Subscriber.receive_batch", **where)


def _subscriber(ctl: Control, params: dict) -> None:
    import os

    client = _attach(params["fabric"])
    sub = None
    try:
        sub = client.subscribe(_TOPIC, wait=_participant_wait(params["wait"]))  # routed to from now on
        receive_batch = sub.receive_batch
        # Sharing its core with the router, the subscriber gives the core away when it finds nothing.
        idle = os.sched_yield if params["wait"] == "yield" else None

        def take(limit: int) -> tuple[int, int]:
            out = receive_batch(256 if limit > 256 else limit)  # decodes every packet
            if not out:
                if idle is not None:
                    idle()
                return 0, -1
            last_id = -1
            for pkt in out:
                last_id = pkt.id
            return len(out), last_id

        _serve(ctl, params, take)
    finally:
        _close_subscriber(sub)
        client.close()


def _close_subscriber(sub) -> None:
    """Close a subscriber before its client. A failure here comes after the measurement:
    print it (stderr), do not fail the case."""
    if sub is None:
        return
    try:
        sub.close()
    except Exception as exc:  # noqa: BLE001
        print(f"bench: Subscriber.close() failed: {exc!r}", file=sys.stderr)


# =========================================================================== latency


def _receiver(sub, deadline_ns: int) -> Callable[[], Any]:
    """``Subscriber.receive`` (its wait strategy) with the harness's 0.2 s bound."""
    receive = sub.receive

    def recv():
        try:
            return receive(timeout_ns=_RECV_TIMEOUT_NS)
        except TimeoutError:
            return None

    return block_waiter(recv, deadline_ns)


#: How the fabric's workers wait in the ping-pong case, and where the router runs (None: the plan).
#: Three spinning processes on two cores: whoever shares the router's core gives it the core
#: between polls (``YieldWait``). The router keeps the topology's default ("adaptive"): it spins
#: in compiled code while idle (the pong has nothing to do then either) and yields after each
#: partial batch (workers.loop), which hands the core to the pong it just delivered to.
#: Measured (loaded VM, 2 runs each): p50 8.3 us with "adaptive" and with "yield", p99
#: 17 us against 20-23 us. Before the router yielded after partial batches "adaptive" kept the
#: pong off the core for milliseconds (p50 2 ms) and "yield" was needed.
LATENCY_ROUTER_WAIT: str | None = None
LATENCY_ROUTER_CORE: int | None = None


def fabric_latency_pingpong(ctx: CaseContext) -> dict:
    """Ping-pong through the router: publish on ``demo``, the echo comes back on ``bench-echo``."""
    _, where = _start_fabric(ctx, wait_strategy=LATENCY_ROUTER_WAIT, router_core=LATENCY_ROUTER_CORE)
    router = where["router_cpus"] or []
    # The side that shares the router's core yields between polls; a side alone on its core busy-spins.
    ping_wait = "yield" if ctx.producer_core in router else "spin"
    pong_wait = "yield" if ctx.consumer_core in router else "spin"
    client = _attach(_fabric_name(ctx))
    ctx.on_cleanup(client.close)
    client.declare_topic(_ECHO_TOPIC)
    sub = client.subscribe(_ECHO_TOPIC, wait=_participant_wait(ping_wait))  # routed to before the pong can echo
    ctx.on_cleanup(lambda: _close_subscriber(sub))
    pub = client.publisher(_TOPIC)
    endpoint = ctx.start_command(
        "bench.bench_fabric:_pong", ctx.endpoint_params(fabric=_fabric_name(ctx), wait=pong_wait)
    )
    publish = pub.publish
    wait = _receiver(sub, ctx.deadline_ns)
    payload = _payload()
    n = ctx.n
    clock = time.perf_counter_ns
    samples = [0] * n
    endpoint.ctl.expect("ready", ctx.remaining_s())
    gc.disable()
    try:
        for _ in range(ctx.warmup):
            publish(payload)
            wait()
        start = clock()
        for i in range(n):
            t0 = clock()
            publish(payload)
            wait()
            samples[i] = clock() - t0
        elapsed_ns = clock() - start
    finally:
        gc.enable()
    idle_cpu_pct = measure_idle_cpu(endpoint.pid, ctx.idle_window_s)
    publish(_STOP_PAYLOAD)
    done = endpoint.ctl.expect("done", ctx.remaining_s())
    if done.get("count") != ctx.warmup + n:
        raise EndpointError(f"pong echoed {done.get('count')} packets, expected {ctx.warmup + n}")
    return latency_result(samples, elapsed_ns, idle_cpu_pct=idle_cpu_pct, consumer=f"spin (ping {ping_wait}, pong {pong_wait})",
                          api="Publisher.publish / Subscriber.receive",
                          msg_bytes=len(make_packet_codec()[0](0)), **where)


def _pong(ctl: Control, params: dict) -> None:
    client = _attach(params["fabric"])
    sub = None
    try:
        sub = client.subscribe(_TOPIC, wait=_participant_wait(params["wait"]))  # routed to before we say "ready"
        publish = client.publisher(_ECHO_TOPIC).publish
        wait = _receiver(sub, params["deadline_ns"])
        ctl.send("ready")
        count = 0
        gc.disable()
        try:
            while True:
                pkt = wait()
                if pkt.payload == _STOP_PAYLOAD:
                    break
                publish(pkt.payload)
                count += 1
        finally:
            gc.enable()
        ctl.send("done", count=count)
    finally:
        _close_subscriber(sub)
        client.close()


#: How the router waits in the one-process case (None: the topology's default, "adaptive": between
#: two packets of the loop, a few us apart, it stays in its compiled spin phase; its yield after
#: each partial batch returns at once on a core of its own).
LOOPBACK_ROUTER_WAIT: str | None = None
#: How the subscriber waits: it owns its core (shared only with the idle supervisor).
LOOPBACK_SUB_WAIT = "spin"


def _router_pid(sup) -> int:
    for wp in sup.workers:
        if wp.kind == "router" and wp.proc is not None:
            return wp.proc.pid
    raise RuntimeError(f"fabric {sup.name!r} has no running router worker")


def fabric_latency_loopback(ctx: CaseContext) -> dict:
    """One packet publisher -> router -> subscriber, both ends in this process, one clock.

    The router runs alone on the consumer core and this process (publisher and spinning
    subscriber) on the producer core: every busy process owns a core. Each sample times
    ``publish`` to the matching ``receive``: one way, not half a round trip.
    """
    sup, where = _start_fabric(ctx, wait_strategy=LOOPBACK_ROUTER_WAIT, router_core=ctx.consumer_core)
    if where["router_cpus"] != [ctx.consumer_core]:
        raise RuntimeError(
            f"the router runs on cpus {where['router_cpus']}, not alone on core {ctx.consumer_core}: "
            "this case measures a router with a core of its own"
        )
    client = _attach(_fabric_name(ctx))
    ctx.on_cleanup(client.close)
    sub = client.subscribe(_TOPIC, wait=_participant_wait(LOOPBACK_SUB_WAIT))  # routed to from now on
    ctx.on_cleanup(lambda: _close_subscriber(sub))
    publish = client.publisher(_TOPIC).publish
    wait = _receiver(sub, ctx.deadline_ns)  # 0.2 s receives, up to the case deadline
    payload = _payload()
    n = ctx.n
    clock = time.perf_counter_ns
    samples = [0] * n
    gc.disable()
    try:
        for _ in range(ctx.warmup):
            sent = publish(payload)
            got = wait().id
            if got != sent:
                raise EndpointError(f"warm-up: received packet {got}, just published {sent}")
        start = clock()
        for i in range(n):
            t0 = clock()
            sent = publish(payload)
            pkt = wait()
            samples[i] = clock() - t0
            if pkt.id != sent:  # outside the timed span
                raise EndpointError(f"sample {i}: received packet {pkt.id}, just published {sent}")
        elapsed_ns = clock() - start
    finally:
        gc.enable()
    # The router idles now (nothing is published): what its wait strategy costs a core.
    idle_cpu_pct = measure_idle_cpu(_router_pid(sup), ctx.idle_window_s)
    return one_way_latency_result(
        samples, elapsed_ns, idle_cpu_pct=idle_cpu_pct, idle_cpu_of="router", consumer=LOOPBACK_SUB_WAIT,
        measured="one-way, one clock (publisher and subscriber in one process)",
        router_core=ctx.consumer_core, client_core=ctx.producer_core,
        wait_strategies={"router": where["wait_strategy"], "subscriber": LOOPBACK_SUB_WAIT},
        api="Publisher.publish / Subscriber.receive", msg_bytes=len(make_packet_codec()[0](0)), **where,
    )


# =========================================================================== registry

_TRANSPORT = "ChronoFabric fabric (client -> router -> subscriber)"

CASES: list[Case] = [
    Case("chronofabric_fabric/throughput_packets", THROUGHPUT_PACKETS, _TRANSPORT, fabric_throughput,
         n=2_000_000, quick_n=5_000, is_peer=False,
         note="default topology's router; Publisher.publish per message, router routes, Subscriber.receive_batch decodes"),
    Case("chronofabric_fabric/latency_spin", LATENCY_SPIN, _TRANSPORT, fabric_latency_loopback,
         n=100_000, quick_n=200, is_peer=False,
         note="one client (core 0) publishes and spin-receives its own packet through the router, alone on core 1: "
              "one way, one clock; idle CPU is the router's"),
    Case("chronofabric_fabric/latency_pingpong", LATENCY_SPIN, _TRANSPORT, fabric_latency_pingpong,
         n=100_000, quick_n=200, is_peer=False,
         note="ping-pong through the router (RTT/2, one router hop each way): three spinning processes (ping, router, "
              "pong) share two cores, so it includes core sharing; default router placement; idle CPU is the pong's"),
]


if __name__ == "__main__":
    from bench._harness import case_main

    sys.exit(case_main(["--module", "bench.bench_fabric", *sys.argv[1:]]))

