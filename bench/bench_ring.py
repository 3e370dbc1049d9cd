"""ChronoFabric's rings, asked the same four questions as the peers (``bench/peers.py``).

Every case runs in the harness's process layout (case process = producer/ping on core 0,
endpoint = consumer/pong on core 1, started with ``ctx.start_command``), with the same
message (``RAW_MESSAGE``, or ``make_packet_codec()``'s PhasePacket), the same warm-up
rule (``ctx.warmup``), the same control protocol ("ready", "sent", "warm", "done") and
the same result fields (``throughput_result`` / ``latency_result``), so every ratio in
the table means something. What is driven, case by case:

==========================================  =================================================  ==========================================
case                                        producer / ping                                    consumer / pong
==========================================  =================================================  ==========================================
chronofabric/throughput_raw                 ``RingWriter.offer(RAW_MESSAGE)``, Python loop     ``RingReader.poll(handler)``: one handler
                                            (``send`` with its wait strategy on refusal)       call per record (a memoryview), spinning
chronofabric/throughput_packets             ``PacketWriter.offer(packet(i))``: a fresh         ``PacketReader.receive_batch()``: decodes
                                            PhasePacket built and encoded per message          every packet; ``.id`` of each; last id
chronofabric_batch1024/throughput_raw       ``RingWriter.offer_batch`` of 1,024 records        ``RingReader.read_batch(1024)``; sums the
                                            (Python calls it once per batch)                   first byte of every record (numpy gather)
chronofabric_jit1024/throughput_raw         a jitted loop calling the ``ring_offer_batch``     a jitted loop calling ``ring_poll``; sums
                                            kernel (1,024 records a call)                      the first byte of every record
chronofabric/latency_spin                   ``RingWriter.offer``; ``RingReader.receive``       same, echoing (BusySpinWait)
                                            with ``BusySpinWait``
chronofabric_packets/latency_spin           ``PacketWriter.offer``; ``PacketReader.receive``   decode, re-encode and echo the packet
                                            (BusySpinWait); the packet is built before t0
chronofabric/latency_block                  as latency_spin, ``BlockWait`` (futex park)        same
chronofabric_packets/latency_block          as the packets latency_spin, ``BlockWait``         same
==========================================  =================================================  ==========================================

Every shared-memory segment is named ``<ctx.prefix>-...`` and destroyed in ``finally``
(``ctx.on_cleanup``); the harness sweeps the prefix after a crash.

The ``jit`` case is the kernels' ceiling, not the Python API: its producer and consumer
loops are numba functions that call the compiled ring kernels directly (what a worker
written in numba does). All other cases go through the public Python API.

Run one case by hand: ``python -m bench.bench_ring --case chronofabric/latency_spin [--quick]``.
"""

from __future__ import annotations

import gc
import sys
import time
from typing import Any, Callable

from bench._harness import (
    LATENCY_BLOCK,
    LATENCY_SPIN,
    RAW_MESSAGE,
    THROUGHPUT_PACKETS,
    THROUGHPUT_RAW,
    Case,
    CaseContext,
    Control,
    Endpoint,
    EndpointError,
    drive_pingpong,
    latency_result,
    make_packet_codec,
    measure_idle_cpu,
    serve_pingpong,
    throughput_result,
)

__all__ = ["CASES"]

#: Blocking receives wait at most this long per call, then re-check the deadline (as the peers).
_RECV_TIMEOUT_NS = 200_000_000
#: A producer back-pressured this long means the consumer is gone (as the peers).
_SEND_TIMEOUT_NS = 10_000_000_000
#: A consumer idle this long asks the control channel whether the producer is done (as the harness).
_STALL_NS = 500_000_000
#: Ring data bytes: the library default (``RingConfig.capacity_bytes``).
_RING_BYTES = 1 << 20
#: Ring data bytes of the batch cases. With a small ring the producer is always a ring ahead,
#: gated by the consumer's position line, and both move in lock step (jitted case, quiet VM:
#: 3-9M/s with 1 MiB, 6.5M/s with 4 MiB, 30M/s with 64 MiB); and a scheduling quantum another
#: process steals from one side drains at most one ring (1.7M/s vs 23M/s in one loaded minute).
_BATCH_RING_BYTES = 1 << 26
#: Records per ``offer_batch`` / ``read_batch`` call in the batch cases.
_BATCH = 1024
#: Packet id that ends a packet ping-pong.
_STOP_ID = 1 << 62
#: Jitted loops come back to Python after this many empty polls (deadline and stall checks).
_JIT_SPINS = 200_000
#: ``pause`` instructions the jitted producer waits after a refusal (ring full) before retrying.
_JIT_BACKOFF_PAUSES = 64
#: ``pause`` instructions (~50 us on this EPYC) the jitted consumer waits after a partial batch:
#: caught up, it would poll the very lines the producer is writing, and both slow down (quiet VM,
#: 100M records: median 31M/s without, 40M/s with; the spread between runs is 25-72M/s).
_JIT_CATCHUP_PAUSES = 2048


def _ring_config(**overrides: Any):
    """The rings' configuration: the library's default size (1 MiB), one producer and one
    subscriber slot, single-producer claims (a store instead of a CAS on the tail)."""
    from fabric.ring import RingConfig

    fields = dict(capacity_bytes=_RING_BYTES, max_producers=1, max_subscribers=1, multi_producer=False)
    fields.update(overrides)
    return RingConfig(**fields)


def _config_fields(cfg) -> dict:
    return {"capacity_bytes": cfg.capacity_bytes, "multi_producer": cfg.multi_producer}


def _create_ring(ctx: CaseContext, label: str, cfg):
    """A ring named after the case prefix, destroyed (closed and unlinked) at cleanup."""
    from fabric.ring import Ring

    ring = Ring.create(f"{ctx.prefix}-{label}", cfg)
    ctx.on_cleanup(ring.destroy)
    return ring


def _wait_strategy(mode: str):
    from fabric.wait import BlockWait, BusySpinWait

    return BusySpinWait() if mode == "spin" else BlockWait()


def _latency_mode(ctx: CaseContext) -> str:
    return "spin" if ctx.kind == LATENCY_SPIN else "block"


# =========================================================================== throughput plumbing


def _check_count(phase: str, msg: dict, expected: int) -> None:
    got = msg.get("count")
    if got != expected:
        raise EndpointError(
            f"consumer received {got} of {expected} {phase} messages: the transport lost {expected - (got or 0)}"
        )


def _say_sent(ctl: Control, phase: str) -> None:
    """Tell the consumer that everything of ``phase`` was sent. It only needs this to tell a
    loss from a delay: a consumer that already got everything may have answered and left (its
    answer stays readable), so a closed channel here is not an error; the next expect decides."""
    try:
        ctl.send("sent", phase=phase)
    except (BrokenPipeError, ConnectionResetError):
        pass


def _endpoint_failure(endpoint: Endpoint, exc: BaseException) -> str:
    """Why the control channel broke: the endpoint's own error report if it sent one."""
    exited = endpoint.join(1.0)
    while True:
        try:
            msg = endpoint.ctl.recv(0.0)
        except (TimeoutError, EOFError, OSError):
            break
        if msg.get("op") == "error":
            return f"endpoint failed: {msg.get('error')}"
    return f"endpoint {'exited' if exited else 'stopped answering'} ({type(exc).__name__}: {exc})"


def _drive(ctx: CaseContext, endpoint: Endpoint, produce: Callable[[int, int], None], *, msg_bytes: int,
           expect_last_id: bool = False, check_done: Callable[[dict], None] | None = None, **extra: Any) -> dict:
    """``drive_throughput`` with our own producer loop ``produce(first_index, count)``.

    Same protocol and timing: warm-up acknowledged first, then N messages timed from the
    first send to the consumer's "done"; counts (and the last packet id) are checked.
    """
    ctl = endpoint.ctl
    ctl.expect("ready", ctx.remaining_s())
    gc.disable()
    try:
        produce(0, ctx.warmup)
        _say_sent(ctl, "warm")
        warm = ctl.expect("warm", ctx.remaining_s())
        _check_count("warm-up", warm, ctx.warmup)
        t0 = time.perf_counter_ns()
        produce(ctx.warmup, ctx.n)
        _say_sent(ctl, "done")
        done = ctl.expect("done", ctx.remaining_s())
        elapsed_ns = time.perf_counter_ns() - t0
    except (BrokenPipeError, ConnectionResetError) as exc:
        raise EndpointError(_endpoint_failure(endpoint, exc)) from exc
    finally:
        gc.enable()
    _check_count("measured", done, ctx.n)
    if expect_last_id and done.get("last_id") != ctx.warmup + ctx.n - 1:
        raise EndpointError(f"last decoded packet id {done.get('last_id')}, expected {ctx.warmup + ctx.n - 1}")
    if check_done is not None:
        check_done(done)
    return throughput_result(ctx.n, elapsed_ns, msg_bytes=msg_bytes, **extra)


def _consume(take: Callable[[int], tuple[int, int]], count: int, deadline_ns: int, producer_done) -> tuple[int, int]:
    """Take ``count`` messages; ``take(limit) -> (how many, last packet id or -1)`` never waits long."""
    clock = time.monotonic_ns
    got = 0
    last_id = -1
    idle_since = 0
    while got < count:
        k, lid = take(count - got)
        if not k:
            now = clock()
            if not idle_since:
                idle_since = now
            elif now - idle_since > _STALL_NS:
                if now > deadline_ns:
                    raise TimeoutError(f"consumer got {got} of {count} messages before the deadline")
                if producer_done():
                    break  # everything was sent and nothing came for _STALL_NS: lost
                idle_since = now
            continue
        idle_since = 0
        got += k
        last_id = lid
    return got, last_id


def _serve(ctl: Control, params: dict, take: Callable[[int], tuple[int, int]],
           done_fields: Callable[[], dict] | None = None) -> None:
    """``serve_throughput`` over ``take``: "ready", warm-up count, then the measured count."""
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
    try:
        got, _ = _consume(take, params["warmup"], deadline_ns, producer_done)
        ctl.send("warm", count=got)
        phase = "done"
        got, last_id = _consume(take, params["n"], deadline_ns, producer_done)
    finally:
        gc.enable()
    ctl.send("done", count=got, last_id=last_id, **(done_fields() if done_fields else {}))


# =========================================================================== throughput, per message


def ring_throughput(ctx: CaseContext) -> dict:
    """Per-message API: ``RingWriter.offer`` (raw) or ``PacketWriter.offer`` (packets) in a Python loop."""
    from fabric.wait import AdaptiveWait

    packets = ctx.kind == THROUGHPUT_PACKETS
    cfg = _ring_config()
    ring = _create_ring(ctx, "ring", cfg)
    endpoint = ctx.start_command("bench.bench_ring:_ring_consumer", ctx.endpoint_params(ring=ring.name))
    writer = ring.writer(wait=AdaptiveWait())
    if packets:
        from fabric.channel import PacketWriter

        encode = make_packet_codec()[0]
        packet = encode.packet
        pw = PacketWriter(writer)
        offer, send = pw.offer, pw.send

        def produce(first: int, count: int) -> None:
            for i in range(first, first + count):
                p = packet(i)
                if offer(p) < 0:
                    send(p, timeout_ns=_SEND_TIMEOUT_NS)  # back-pressured: wait (bounded)

        return _drive(ctx, endpoint, produce, msg_bytes=len(encode(0)), expect_last_id=True, consumer="spin",
                      api="PacketWriter.offer / PacketReader.receive_batch", ring=_config_fields(cfg))

    offer, send = writer.offer, writer.send
    msg = RAW_MESSAGE

    def produce(first: int, count: int) -> None:  # noqa: ARG001
        for _ in range(count):
            if offer(msg) < 0:
                send(msg, timeout_ns=_SEND_TIMEOUT_NS)  # back-pressured: wait (bounded)

    return _drive(ctx, endpoint, produce, msg_bytes=len(RAW_MESSAGE), consumer="spin",
                  api="RingWriter.offer / RingReader.poll", ring=_config_fields(cfg))


def _ring_consumer(ctl: Control, params: dict) -> None:
    from fabric.ring import Ring
    from fabric.wait import BusySpinWait

    ring = Ring.attach(params["ring"])
    try:
        reader = ring.reader(wait=BusySpinWait(), batch_records=256)
        if params["packets"]:
            from fabric.channel import PacketReader

            receive_batch = PacketReader(reader).receive_batch

            def take(limit: int) -> tuple[int, int]:
                out = receive_batch(256 if limit > 256 else limit)  # decodes every packet
                last_id = -1
                for pkt in out:
                    last_id = pkt.id
                return len(out), last_id

        else:
            poll = reader.poll

            def handler(view: memoryview, type_id: int) -> None:  # noqa: ARG001
                pass

            def take(limit: int) -> tuple[int, int]:
                return poll(handler, 256 if limit > 256 else limit), -1

        _serve(ctl, params, take)
    finally:
        ring.close()


# =========================================================================== throughput, batch API


def _touch_checker(ctx: CaseContext) -> Callable[[dict], None]:
    """The consumer sums the first byte of every record it took (warm-up included): check it."""
    expected = RAW_MESSAGE[0] * (ctx.warmup + ctx.n)

    def check_done(done: dict) -> None:
        if done.get("touched") != expected:
            raise EndpointError(f"consumer's sum of first bytes {done.get('touched')} != {expected}: records were lost")

    return check_done


def batch_throughput(ctx: CaseContext) -> dict:
    """Python-level batch API: ``offer_batch`` of ``ctx.batch`` records, ``read_batch`` + a numpy touch."""
    import numpy as np

    from fabric.ring import BACK_PRESSURED
    from fabric.wait import AdaptiveWait

    batch = ctx.batch
    cfg = _ring_config(capacity_bytes=_BATCH_RING_BYTES)
    ring = _create_ring(ctx, "ring", cfg)
    endpoint = ctx.start_command("bench.bench_ring:_batch_consumer", ctx.endpoint_params(ring=ring.name))
    writer = ring.writer(wait=AdaptiveWait())
    size = len(RAW_MESSAGE)
    buf = np.frombuffer(RAW_MESSAGE * batch, dtype=np.uint8)
    offsets = np.arange(batch, dtype=np.int64) * size
    lengths = np.full(batch, size, dtype=np.int64)
    offer_batch = writer.offer_batch
    wait = writer.wait
    clock = time.monotonic_ns

    def refused(done: int) -> None:
        """The rest of a batch that was refused (back pressure), bounded by _SEND_TIMEOUT_NS."""
        deadline = clock() + _SEND_TIMEOUT_NS
        wait.reset()
        while done < batch:
            r = offer_batch(buf, offsets[done:], lengths[done:])
            if r > 0:
                done += r
                wait.reset()
                continue
            if r != BACK_PRESSURED or clock() > deadline:
                raise TimeoutError(f"offer_batch refused with code {r} for {_SEND_TIMEOUT_NS / 1e9:.0f} s")
            wait.idle(None)

    def produce(first: int, count: int) -> None:  # noqa: ARG001
        for _ in range(count // batch):
            r = offer_batch(buf, offsets, lengths)
            if r != batch:
                refused(max(r, 0))

    check_done = _touch_checker(ctx)

    return _drive(ctx, endpoint, produce, msg_bytes=size, check_done=check_done, consumer="spin",
                  api="RingWriter.offer_batch / RingReader.read_batch", ring=_config_fields(cfg))


def _batch_consumer(ctl: Control, params: dict) -> None:
    import numpy as np

    from fabric.ring import Ring
    from fabric.wait import BusySpinWait

    batch = params["batch"]
    ring = Ring.attach(params["ring"])
    try:
        reader = ring.reader(wait=BusySpinWait(), batch_records=batch)
        read_batch = reader.read_batch
        u8 = ring.segment.u8
        touched = [0]

        def take(limit: int) -> tuple[int, int]:
            b = read_batch(batch if limit > batch else limit)
            n = b.count
            if n:
                # The first byte of every record, through the batch's offsets array (no Python object per record).
                touched[0] += int(u8[b.offsets].sum())
                b.release()
            return n, -1

        try:
            _serve(ctl, params, take, done_fields=lambda: {"touched": touched[0]})
        finally:
            del u8
    finally:
        ring.close()


# =========================================================================== throughput, jitted loops

_JIT: dict[str, Any] = {}


def _jit_loops() -> dict[str, Any]:
    """The jitted producer and consumer loops, compiled in each process on first use.

    Not ``cache=True``: numba's cache is keyed on this file only, so a cached loop would keep
    the inlined code of ring kernels that changed since (a layout change would corrupt the ring).
    """
    if _JIT:
        return _JIT
    import numba

    from fabric._atomics import cpu_pause
    from fabric._ring_kernels import EMPTY_ATTENTION, WAKE_FLAG, ring_offer_batch, ring_poll

    pos_mask = WAKE_FLAG - 1

    @numba.njit(cache=False, nogil=False, boundscheck=False)
    def produce(base, slot, src_addr, offsets_addr, lengths_addr, batch, total, done, spin_limit):
        """Offer records ``done..total`` in calls of ``batch``; returns the new ``done``
        (``| WAKE_FLAG`` when parked subscribers need a wake), early after ``spin_limit`` refusals."""
        spins = 0
        while done < total:
            k = done % batch
            todo = min(batch - k, total - done)
            r = ring_offer_batch(base, slot, src_addr, offsets_addr + 8 * k, lengths_addr + 8 * k, todo, 0)
            if r >= 0:
                done += r & pos_mask
                spins = 0
                if r & WAKE_FLAG:
                    return done | WAKE_FLAG
            else:
                spins += 1
                if spins > spin_limit:
                    return done
                for _ in range(_JIT_BACKOFF_PAUSES):  # back off: every refusal re-reads the consumer's position line
                    cpu_pause()
        return done

    @numba.njit(cache=False, nogil=False, boundscheck=False)
    def consume(base, slot, pos, desc, max_records, u8, want, spin_limit):
        """Take up to ``want`` records from ``pos``, summing each one's first byte; returns
        (count or a negative ring code, new position, byte sum). Releases what it read."""
        desc_addr = desc.ctypes.data
        got = 0
        total = 0
        spins = 0
        release = -1
        while got < want:
            n = ring_poll(base, slot, pos, release, desc_addr, min(max_records, want - got))
            release = -1
            if n == EMPTY_ATTENTION:  # skipped padding (or a claim in progress): nothing taken
                if desc[0] != pos:
                    pos = desc[0]
                    release = pos
                n = 0
            if n < 0:
                return n, pos, total
            if n == 0:
                spins += 1
                if spins > spin_limit:
                    break
                continue
            spins = 0
            for i in range(n):
                total += u8[desc[2 + 2 * i]]
            pos = desc[0]
            release = pos
            got += n
            if n < max_records:  # caught up: let the producer get a batch ahead (no line ping-pong)
                for _ in range(_JIT_CATCHUP_PAUSES):
                    cpu_pause()
        ring_poll(base, slot, pos, pos, desc_addr, 0)  # publish the release
        return got, pos, total

    _JIT.update(produce=produce, consume=consume, wake=WAKE_FLAG, pos_mask=pos_mask)
    return _JIT


def jit_throughput(ctx: CaseContext) -> dict:
    """Kernel ceiling: jitted loops calling ``ring_offer_batch`` / ``ring_poll`` (no Python per batch)."""
    import numpy as np

    from fabric._futex import futex_wake
    from shm_layouts.ring import WAKE_DOORBELL, WAKE_OFFSET

    jit = _jit_loops()
    produce_jit, wake_flag, pos_mask = jit["produce"], jit["wake"], jit["pos_mask"]
    batch = ctx.batch
    cfg = _ring_config(capacity_bytes=_BATCH_RING_BYTES)
    ring = _create_ring(ctx, "ring", cfg)
    endpoint = ctx.start_command("bench.bench_ring:_jit_consumer", ctx.endpoint_params(ring=ring.name))
    writer = ring.writer()
    base, slot = ring.segment.address, writer.slot
    doorbell = base + WAKE_OFFSET + WAKE_DOORBELL * 8
    size = len(RAW_MESSAGE)
    buf = np.frombuffer(RAW_MESSAGE * batch, dtype=np.uint8)
    offsets = np.arange(batch, dtype=np.int64) * size
    lengths = np.full(batch, size, dtype=np.int64)
    src, offs, lens = buf.ctypes.data, offsets.ctypes.data, lengths.ctypes.data
    produce_jit(base, slot, src, offs, lens, batch, 0, 0, 0)  # compile / load from cache now
    clock = time.monotonic_ns

    def produce(first: int, count: int) -> None:  # noqa: ARG001
        done = 0
        stuck_since = clock()
        while done < count:
            r = produce_jit(base, slot, src, offs, lens, batch, count, done, _JIT_SPINS)
            if r & wake_flag:
                futex_wake(doorbell)
            r &= pos_mask
            if r == done:
                if clock() - stuck_since > _SEND_TIMEOUT_NS:
                    raise TimeoutError(f"the ring refused records for {_SEND_TIMEOUT_NS / 1e9:.0f} s")
            else:
                stuck_since = clock()
            done = r

    check_done = _touch_checker(ctx)

    return _drive(ctx, endpoint, produce, msg_bytes=size, check_done=check_done, consumer="spin",
                  api="jitted loops over the ring_offer_batch / ring_poll kernels", ring=_config_fields(cfg))


def _jit_consumer(ctl: Control, params: dict) -> None:
    import numpy as np

    from fabric.ring import Ring

    consume = _jit_loops()["consume"]
    batch = params["batch"]
    ring = Ring.attach(params["ring"])
    try:
        reader = ring.reader(batch_records=batch)
        base, slot = ring.segment.address, reader.slot
        desc = np.zeros(2 + 2 * batch, dtype=np.int64)
        u8 = ring.segment.u8
        consume(base, slot, reader.position, desc, batch, u8, 0, 0)  # compile / load from cache now
        touched = [0]

        def take(limit: int) -> tuple[int, int]:
            n, pos, total = consume(base, slot, reader.position, desc, batch, u8, limit, _JIT_SPINS)
            if n < 0:
                raise RuntimeError(f"ring_poll returned code {n}")
            reader.position = pos
            touched[0] += total
            return n, -1

        try:
            _serve(ctl, params, take, done_fields=lambda: {"touched": touched[0]})
        finally:
            del u8
    finally:
        ring.close()


# =========================================================================== latency, raw records


def _raw_waiter(reader, deadline_ns: int) -> Callable[[], bytes]:
    """``RingReader.receive`` (the reader's wait strategy) in 0.2 s steps until the case deadline.

    One call layer: ``block_waiter`` over a None-returning ``recv`` (as the peers use) costs a
    second one, ~20 ns a hop at these latencies, which would be the harness's, not the ring's.
    """
    receive = reader.receive
    clock = time.monotonic_ns

    def wait() -> bytes:
        while True:
            try:
                return receive(timeout_ns=_RECV_TIMEOUT_NS)[0]
            except TimeoutError:
                if clock() > deadline_ns:
                    raise TimeoutError("blocking receiver passed the case deadline") from None

    return wait


def ring_latency(ctx: CaseContext) -> dict:
    """Ping-pong over two rings; both readers wait with BusySpinWait (spin) or BlockWait (block)."""
    mode = _latency_mode(ctx)
    cfg = _ring_config()
    ping = _create_ring(ctx, "ping", cfg)
    pong = _create_ring(ctx, "pong", cfg)
    reader = pong.reader(wait=_wait_strategy(mode))  # joined before the pong side can echo
    endpoint = ctx.start_command(
        "bench.bench_ring:_ring_pong", ctx.endpoint_params(ping=ping.name, pong=pong.name, mode=mode)
    )
    writer = ping.writer(wait=_wait_strategy(mode))
    wait = _raw_waiter(reader, ctx.deadline_ns)
    return drive_pingpong(ctx, endpoint, writer.offer, wait, consumer=mode, api="RingWriter.offer / RingReader.receive",
                          wait_strategy=type(reader.wait).__name__, ring=_config_fields(cfg))


def _ring_pong(ctl: Control, params: dict) -> None:
    from fabric.ring import Ring

    mode = params["mode"]
    ping = Ring.attach(params["ping"])
    pong = Ring.attach(params["pong"])
    try:
        reader = ping.reader(wait=_wait_strategy(mode))  # joined before we say "ready"
        writer = pong.writer(wait=_wait_strategy(mode))
        wait = _raw_waiter(reader, params["deadline_ns"])
        serve_pingpong(ctl, params, writer.offer, wait)
    finally:
        ping.close()
        pong.close()


# =========================================================================== latency, PhasePackets


def _packet_receiver(reader, deadline_ns: int) -> Callable[[], Any]:
    """``PacketReader.receive`` (its reader's wait strategy) in 0.2 s steps until the case
    deadline, in one call layer (see ``_raw_waiter``)."""
    receive = reader.receive
    clock = time.monotonic_ns

    def wait():
        while True:
            try:
                return receive(timeout_ns=_RECV_TIMEOUT_NS)
            except TimeoutError:
                if clock() > deadline_ns:
                    raise TimeoutError("blocking receiver passed the case deadline") from None

    return wait


def packet_latency(ctx: CaseContext) -> dict:
    """Ping-pong of PhasePackets: encode (``PacketWriter.offer``) and decode (``PacketReader.receive``)
    on each hop. Timed as ``drive_pingpong``: t0, send, wait for the echo, RTT/2; the packet is
    built before t0 (the echo re-encodes the decoded packet, so both hops pay encode + decode)."""
    from fabric.channel import PacketReader, PacketWriter

    mode = _latency_mode(ctx)
    cfg = _ring_config()
    ping = _create_ring(ctx, "ping", cfg)
    pong = _create_ring(ctx, "pong", cfg)
    reader = PacketReader(pong.reader(wait=_wait_strategy(mode)))
    endpoint = ctx.start_command(
        "bench.bench_ring:_packet_pong", ctx.endpoint_params(ping=ping.name, pong=pong.name, mode=mode)
    )
    writer = PacketWriter(ping.writer(wait=_wait_strategy(mode)))
    packet = make_packet_codec()[0].packet
    offer = writer.offer
    wait = _packet_receiver(reader, ctx.deadline_ns)
    n = ctx.n
    clock = time.perf_counter_ns
    samples = [0] * n
    endpoint.ctl.expect("ready", ctx.remaining_s())
    gc.disable()
    try:
        for i in range(ctx.warmup):
            offer(packet(i))
            wait()
        start = clock()
        for i in range(n):
            pkt = packet(ctx.warmup + i)
            t0 = clock()
            offer(pkt)
            echo = wait()
            samples[i] = clock() - t0
            if echo.id != pkt.id:
                raise EndpointError(f"echo of packet {pkt.id} came back as {echo.id}")
        elapsed_ns = clock() - start
    finally:
        gc.enable()
    idle_cpu_pct = measure_idle_cpu(endpoint.pid, ctx.idle_window_s)
    offer(packet(_STOP_ID))
    done = endpoint.ctl.expect("done", ctx.remaining_s())
    if done.get("count") != ctx.warmup + n:
        raise EndpointError(f"pong echoed {done.get('count')} packets, expected {ctx.warmup + n}")
    return latency_result(samples, elapsed_ns, idle_cpu_pct=idle_cpu_pct, consumer=mode,
                          api="PacketWriter.offer / PacketReader.receive", wait_strategy=type(reader.reader.wait).__name__,
                          msg_bytes=len(make_packet_codec()[0](0)), ring=_config_fields(cfg))


def _packet_pong(ctl: Control, params: dict) -> None:
    from fabric.channel import PacketReader, PacketWriter
    from fabric.ring import Ring

    mode = params["mode"]
    ping = Ring.attach(params["ping"])
    pong = Ring.attach(params["pong"])
    try:
        reader = PacketReader(ping.reader(wait=_wait_strategy(mode)))
        offer = PacketWriter(pong.writer(wait=_wait_strategy(mode))).offer
        wait = _packet_receiver(reader, params["deadline_ns"])
        ctl.send("ready")
        count = 0
        gc.disable()
        try:
            while True:
                pkt = wait()
                if pkt.id == _STOP_ID:
                    break
                offer(pkt)
                count += 1
        finally:
            gc.enable()
        ctl.send("done", count=count)
    finally:
        ping.close()
        pong.close()


# =========================================================================== registry

_TRANSPORT = "ChronoFabric ring"

CASES: list[Case] = [
    Case("chronofabric/throughput_raw", THROUGHPUT_RAW, _TRANSPORT, ring_throughput,
         n=5_000_000, quick_n=10_000, is_peer=False,
         note="RingWriter.offer per message; consumer RingReader.poll(handler), spinning"),
    Case("chronofabric/throughput_packets", THROUGHPUT_PACKETS, _TRANSPORT, ring_throughput,
         n=3_000_000, quick_n=5_000, is_peer=False,
         note="PacketWriter.offer(fresh PhasePacket) per message; PacketReader.receive_batch decodes each, spinning"),
    Case("chronofabric_batch1024/throughput_raw", THROUGHPUT_RAW, "ChronoFabric ring, offer_batch/read_batch (1024)",
         batch_throughput, n=60_000_000, quick_n=20_480, batch=_BATCH, is_peer=False,
         note="Python calls offer_batch / read_batch once per 1,024 records; consumer sums one byte of each"),
    Case("chronofabric_jit1024/throughput_raw", THROUGHPUT_RAW, "ChronoFabric ring, jitted kernel loops (1024)",
         jit_throughput, n=300_000_000, quick_n=20_480, batch=_BATCH, is_peer=False,
         note="kernel ceiling: numba loops call ring_offer_batch / ring_poll; consumer sums one byte of each"),
    Case("chronofabric/latency_spin", LATENCY_SPIN, _TRANSPORT, ring_latency,
         n=200_000, quick_n=200, is_peer=False, note="raw 64-byte records; BusySpinWait on both sides"),
    Case("chronofabric_packets/latency_spin", LATENCY_SPIN, "ChronoFabric ring, PhasePackets", packet_latency,
         n=200_000, quick_n=200, is_peer=False,
         note="PhasePacket encode + decode on each hop; BusySpinWait on both sides"),
    Case("chronofabric/latency_block", LATENCY_BLOCK, _TRANSPORT, ring_latency,
         n=20_000, quick_n=200, is_peer=False, note="raw 64-byte records; BlockWait (futex park/wake) on both sides"),
    Case("chronofabric_packets/latency_block", LATENCY_BLOCK, "ChronoFabric ring, PhasePackets", packet_latency,
         n=20_000, quick_n=200, is_peer=False,
         note="PhasePacket encode + decode on each hop; BlockWait (futex park/wake) on both sides"),
]


if __name__ == "__main__":
    from bench._harness import case_main

    sys.exit(case_main(["--module", "bench.bench_ring", *sys.argv[1:]]))

