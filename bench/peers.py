"""The peers: what ChronoFabric is measured against, case by case.

Each transport gets the same four questions (see ``bench._harness.KINDS``):

=====================  ==========================================  =========================
transport              throughput (producer -> consumer)           ping-pong (RTT/2)
=====================  ==========================================  =========================
multiprocessing.Queue  put / get(timeout)                          two Queues
multiprocessing.Pipe   send_bytes / poll(timeout)+recv_bytes       one duplex Pipe
faster-fifo            put / get(timeout); put_many / get_many     two Queues
pyzmq ipc://           PUSH / PULL                                 PAIR
iceoryx2               publish/subscribe, loaned samples,          two services (+ two event
                       RetryUntilDelivered back-pressure           services when blocking)
=====================  ==========================================  =========================

Each peer is used the fastest way its public API allows for bytes: ``Pipe.send_bytes``
rather than ``send`` (no pickle), faster-fifo with ``loads=bytes, dumps=bytes`` instead of
its default pickle, zmq with ``copy=True`` (faster for small frames), iceoryx2 with a
loaned sample written by ``ctypes.memmove``. ``multiprocessing.Queue`` pickles every
message: that is what it is. Receivers spin with the cheapest non-blocking check the API
offers (``empty()``, ``poll()``, ``NOBLOCK``, ``receive() -> None``).

Imports of optional peers happen inside the functions, so this module always imports
and a missing peer is reported as skipped.

Run one case by hand: ``python -m bench.peers --case pyzmq/latency_spin [--quick]``.
"""

from __future__ import annotations

import ctypes
import queue
import struct
import sys
from typing import Any

from bench._harness import (
    LATENCY_BLOCK,
    LATENCY_SPIN,
    THROUGHPUT_PACKETS,
    THROUGHPUT_RAW,
    Case,
    CaseContext,
    Requirement,
    block_waiter,
    drive_pingpong,
    drive_throughput,
    seconds_until,
    serve_pingpong,
    serve_throughput,
    spin_waiter,
)

__all__ = ["CASES"]

_PYZMQ = Requirement("zmq", "pyzmq")
_FASTER_FIFO = Requirement("faster_fifo", "faster-fifo")
_ICEORYX2 = Requirement("iceoryx2", "iceoryx2")

#: Receivers that block do so for at most this long per call, then re-check the deadline.
_RECV_TIMEOUT_S = 0.2
#: A producer blocked by back-pressure this long means the consumer is gone.
_SEND_TIMEOUT_S = 10.0
_FIFO_BYTES = 1_000_000  # faster-fifo's default ring size
_FIFO_BATCH_GET = 1024  # the most messages one get_many takes
#: Throughput consumers use the transport's ordinary blocking receive (with a timeout).
#: Measured on this VM, busy-polling was no faster for any of these peers and slower for
#: some: multiprocessing.Queue 80k vs 137k msgs/s (``empty()`` costs a select per poll),
#: pyzmq 1.05M vs 1.30M (the spinning thread starves libzmq's I/O thread on the same
#: pinned core). iceoryx2 has no blocking receive without an event service: it polls.
_THROUGHPUT_CONSUMER = "block"


def _spawn():
    import multiprocessing

    return multiprocessing.get_context("spawn")


def _latency_mode(ctx: CaseContext) -> str:
    return "spin" if ctx.kind == LATENCY_SPIN else "block"


# =========================================================================== multiprocessing.Queue


def _close_mp_queue(q) -> None:
    q.cancel_join_thread()  # never hang at exit on data the other side will not read
    q.close()


def _mpq_receivers(q):
    get = q.get
    empty = q.empty

    def recv():
        try:
            return get(True, _RECV_TIMEOUT_S)
        except queue.Empty:
            return None

    def poll():
        if empty():
            return None
        return get(True, _RECV_TIMEOUT_S)

    return recv, poll


def mpq_throughput(ctx: CaseContext) -> dict:
    q = _spawn().Queue()
    ctx.on_cleanup(lambda: _close_mp_queue(q))
    endpoint = ctx.start_process(_mpq_consumer, q, params=ctx.endpoint_params(consumer=_THROUGHPUT_CONSUMER))
    return drive_throughput(ctx, endpoint, q.put, consumer=_THROUGHPUT_CONSUMER)


def _mpq_consumer(ctl, params: dict, q) -> None:
    recv, poll = _mpq_receivers(q)
    serve_throughput(ctl, params, poll if params["consumer"] == "spin" else recv)


def mpq_latency(ctx: CaseContext) -> dict:
    mp = _spawn()
    ping_q, pong_q = mp.Queue(), mp.Queue()
    ctx.on_cleanup(lambda: _close_mp_queue(ping_q))
    ctx.on_cleanup(lambda: _close_mp_queue(pong_q))
    mode = _latency_mode(ctx)
    endpoint = ctx.start_process(_mpq_pong, ping_q, pong_q, params=ctx.endpoint_params(mode=mode))
    recv, poll = _mpq_receivers(pong_q)
    wait = spin_waiter(poll, ctx.deadline_ns) if mode == "spin" else block_waiter(recv, ctx.deadline_ns)
    return drive_pingpong(ctx, endpoint, ping_q.put, wait, consumer=mode)


def _mpq_pong(ctl, params: dict, ping_q, pong_q) -> None:
    recv, poll = _mpq_receivers(ping_q)
    deadline_ns = params["deadline_ns"]
    wait = spin_waiter(poll, deadline_ns) if params["mode"] == "spin" else block_waiter(recv, deadline_ns)
    try:
        serve_pingpong(ctl, params, pong_q.put, wait)
    finally:
        pong_q.close()
        pong_q.join_thread()  # flush the last echo before exiting


# =========================================================================== multiprocessing.Pipe


def _pipe_receivers(conn):
    conn_poll = conn.poll
    recv_bytes = conn.recv_bytes

    def recv():
        if conn_poll(_RECV_TIMEOUT_S):
            return recv_bytes()
        return None

    def poll():
        if conn_poll():
            return recv_bytes()
        return None

    return recv, poll


def pipe_throughput(ctx: CaseContext) -> dict:
    reader, writer = _spawn().Pipe(duplex=False)
    ctx.on_cleanup(writer.close)
    endpoint = ctx.start_process(_pipe_consumer, reader, params=ctx.endpoint_params(consumer=_THROUGHPUT_CONSUMER))
    reader.close()  # the consumer owns the read end now: its death breaks our writes
    return drive_throughput(ctx, endpoint, writer.send_bytes, consumer=_THROUGHPUT_CONSUMER)


def _pipe_consumer(ctl, params: dict, reader) -> None:
    recv, poll = _pipe_receivers(reader)
    serve_throughput(ctl, params, poll if params["consumer"] == "spin" else recv)


def pipe_latency(ctx: CaseContext) -> dict:
    mine, theirs = _spawn().Pipe(duplex=True)
    ctx.on_cleanup(mine.close)
    mode = _latency_mode(ctx)
    endpoint = ctx.start_process(_pipe_pong, theirs, params=ctx.endpoint_params(mode=mode))
    theirs.close()
    recv, poll = _pipe_receivers(mine)
    wait = spin_waiter(poll, ctx.deadline_ns) if mode == "spin" else block_waiter(recv, ctx.deadline_ns)
    return drive_pingpong(ctx, endpoint, mine.send_bytes, wait, consumer=mode)


def _pipe_pong(ctl, params: dict, conn) -> None:
    recv, poll = _pipe_receivers(conn)
    deadline_ns = params["deadline_ns"]
    wait = spin_waiter(poll, deadline_ns) if params["mode"] == "spin" else block_waiter(recv, deadline_ns)
    serve_pingpong(ctl, params, conn.send_bytes, wait)


# =========================================================================== faster-fifo


def _fifo_queue():
    import faster_fifo

    # bytes in, bytes out: skip faster-fifo's default pickle (``bytes(b) is b`` for bytes).
    return faster_fifo.Queue(max_size_bytes=_FIFO_BYTES, loads=bytes, dumps=bytes)


def _fifo_sender(q):
    put = q.put
    put_many = q.put_many

    def send(msg):
        put(msg, True, _SEND_TIMEOUT_S)  # raises queue.Full if the consumer stalls that long

    def send_many(msgs):
        put_many(msgs, True, _SEND_TIMEOUT_S)

    return send, send_many


def _fifo_receivers(q):
    get = q.get
    get_many = q.get_many
    empty = q.empty

    def recv():
        try:
            return get(True, _RECV_TIMEOUT_S)
        except queue.Empty:
            return None

    def poll():
        if empty():
            return None
        return get(True, _RECV_TIMEOUT_S)

    def recv_many():
        try:
            return get_many(True, _RECV_TIMEOUT_S, _FIFO_BATCH_GET)
        except queue.Empty:
            return None

    def poll_many():
        if empty():
            return None
        return get_many(True, _RECV_TIMEOUT_S, _FIFO_BATCH_GET)

    return recv, poll, recv_many, poll_many


def fifo_throughput(ctx: CaseContext) -> dict:
    q = _fifo_queue()
    endpoint = ctx.start_process(_fifo_consumer, q, params=ctx.endpoint_params(consumer=_THROUGHPUT_CONSUMER))
    send, send_many = _fifo_sender(q)
    if ctx.batch > 1:
        return drive_throughput(ctx, endpoint, None, send_many=send_many, consumer=_THROUGHPUT_CONSUMER)
    return drive_throughput(ctx, endpoint, send, consumer=_THROUGHPUT_CONSUMER)


def _fifo_consumer(ctl, params: dict, q) -> None:
    recv, poll, recv_many, poll_many = _fifo_receivers(q)
    spin = params["consumer"] == "spin"
    if params["batch"] > 1:
        serve_throughput(ctl, params, poll_many if spin else recv_many, batched=True)
    else:
        serve_throughput(ctl, params, poll if spin else recv)


def fifo_latency(ctx: CaseContext) -> dict:
    ping_q, pong_q = _fifo_queue(), _fifo_queue()
    mode = _latency_mode(ctx)
    endpoint = ctx.start_process(_fifo_pong, ping_q, pong_q, params=ctx.endpoint_params(mode=mode))
    send, _ = _fifo_sender(ping_q)
    recv, poll, _, _ = _fifo_receivers(pong_q)
    wait = spin_waiter(poll, ctx.deadline_ns) if mode == "spin" else block_waiter(recv, ctx.deadline_ns)
    return drive_pingpong(ctx, endpoint, send, wait, consumer=mode)


def _fifo_pong(ctl, params: dict, ping_q, pong_q) -> None:
    recv, poll, _, _ = _fifo_receivers(ping_q)
    send, _ = _fifo_sender(pong_q)
    deadline_ns = params["deadline_ns"]
    wait = spin_waiter(poll, deadline_ns) if params["mode"] == "spin" else block_waiter(recv, deadline_ns)
    serve_pingpong(ctl, params, send, wait)


# =========================================================================== pyzmq


def _zmq_socket(zctx, kind: int):
    import zmq

    sock = zctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, int(_RECV_TIMEOUT_S * 1000))
    sock.setsockopt(zmq.SNDTIMEO, int(_SEND_TIMEOUT_S * 1000))
    return sock


def _zmq_receivers(sock):
    import zmq

    sock_recv = sock.recv
    again = zmq.Again
    noblock = zmq.NOBLOCK

    def recv():
        try:
            return sock_recv()
        except again:
            return None

    def poll():
        try:
            return sock_recv(noblock)
        except again:
            return None

    return recv, poll


def _zmq_close(zctx, *socks) -> None:
    for sock in socks:
        sock.close(linger=0)
    zctx.term()


def zmq_throughput(ctx: CaseContext) -> dict:
    import zmq

    address = f"ipc://{ctx.tmpdir()}/throughput.sock"
    params = ctx.endpoint_params(address=address, consumer=_THROUGHPUT_CONSUMER)
    endpoint = ctx.start_command("bench.peers:_zmq_consumer", params)
    zctx = zmq.Context()
    push = _zmq_socket(zctx, zmq.PUSH)
    ctx.on_cleanup(lambda: _zmq_close(zctx, push))
    push.connect(address)  # PUSH queues (up to its HWM) until the PULL side is there
    return drive_throughput(ctx, endpoint, push.send, consumer=_THROUGHPUT_CONSUMER)


def _zmq_consumer(ctl, params: dict) -> None:
    import zmq

    zctx = zmq.Context()
    pull = _zmq_socket(zctx, zmq.PULL)
    try:
        pull.bind(params["address"])
        recv, poll = _zmq_receivers(pull)
        serve_throughput(ctl, params, poll if params["consumer"] == "spin" else recv)
    finally:
        _zmq_close(zctx, pull)


def zmq_latency(ctx: CaseContext) -> dict:
    import zmq

    mode = _latency_mode(ctx)
    address = f"ipc://{ctx.tmpdir()}/pingpong.sock"
    endpoint = ctx.start_command("bench.peers:_zmq_pong", ctx.endpoint_params(address=address, mode=mode))
    zctx = zmq.Context()
    pair = _zmq_socket(zctx, zmq.PAIR)
    ctx.on_cleanup(lambda: _zmq_close(zctx, pair))
    pair.connect(address)
    recv, poll = _zmq_receivers(pair)
    wait = spin_waiter(poll, ctx.deadline_ns) if mode == "spin" else block_waiter(recv, ctx.deadline_ns)
    return drive_pingpong(ctx, endpoint, pair.send, wait, consumer=mode)


def _zmq_pong(ctl, params: dict) -> None:
    import zmq

    zctx = zmq.Context()
    pair = _zmq_socket(zctx, zmq.PAIR)
    try:
        pair.bind(params["address"])
        recv, poll = _zmq_receivers(pair)
        deadline_ns = params["deadline_ns"]
        wait = spin_waiter(poll, deadline_ns) if params["mode"] == "spin" else block_waiter(recv, deadline_ns)
        serve_pingpong(ctl, params, pair.send, wait)
    finally:
        _zmq_close(zctx, pair)


# =========================================================================== iceoryx2

_U32 = struct.Struct("<I")
_IOX2_BUFFER = 1024  # subscriber queue depth for throughput (back-pressure beyond it)
_IOX2_PACKET_CAPACITY = 124
_IOX2_CREATION_TIMEOUT_S = 5.0  # iceoryx2's default is 1 s
_IOX2_CREATION_ATTEMPTS = 3


class _Raw64(ctypes.Structure):
    """iceoryx2 payload for raw messages: 64 bytes."""

    _fields_ = [("data", ctypes.c_uint8 * 64)]


class _PacketFrame(ctypes.Structure):
    """iceoryx2 payload for encoded packets: u32 length, then up to 124 bytes (128 in all)."""

    _fields_ = [("length", ctypes.c_uint32), ("data", ctypes.c_uint8 * _IOX2_PACKET_CAPACITY)]


class _Iox2:
    """One process's iceoryx2 node, isolated by the case prefix and a private root directory."""

    def __init__(self, params: dict) -> None:
        import iceoryx2 as iox2

        self.iox2 = iox2
        iox2.set_log_level(iox2.LogLevel.Error)
        config = iox2.config.default()
        config.global_cfg.prefix = iox2.FileName.new(f"{params['prefix']}_")
        config.global_cfg.root_path = iox2.Path.new(params["iox2_root"].rstrip("/") + "/")
        config.global_cfg.creation_timeout = iox2.Duration.from_secs_f64(_IOX2_CREATION_TIMEOUT_S)
        self.node = (
            iox2.NodeBuilder.new()
            .config(config)
            .signal_handling_mode(iox2.SignalHandlingMode.Disabled)  # keep Python's SIGTERM handler
            .create(iox2.ServiceType.Ipc)
        )
        self._ports: list[Any] = []
        self._services: list[Any] = []
        self.creation_retries = 0

    def _open_or_create(self, build):
        """``build()`` again when iceoryx2 reports ``HangsInCreation`` (seen under heavy load
        although the creating process had finished and said so); other errors propagate."""
        errors = (self.iox2.PublishSubscribeOpenOrCreateError, self.iox2.EventOpenOrCreateError)
        for attempt in range(_IOX2_CREATION_ATTEMPTS):
            try:
                return build()
            except errors as exc:
                if "HangsInCreation" not in str(exc) or attempt == _IOX2_CREATION_ATTEMPTS - 1:
                    raise
                self.creation_retries += 1
        raise AssertionError("unreachable")

    def pubsub(self, name: str, payload_type, buffer: int):
        iox2 = self.iox2
        service = self._open_or_create(
            lambda: self.node.service_builder(iox2.ServiceName.new(name))
            .publish_subscribe(payload_type)
            .history_size(0)
            .subscriber_max_buffer_size(buffer)
            .enable_safe_overflow(False)  # back-pressure instead of overwriting the oldest
            .open_or_create()
        )
        self._services.append(service)
        return service

    def publisher(self, service):
        iox2 = self.iox2
        port = service.publisher_builder().backpressure_strategy(iox2.BackpressureStrategy.RetryUntilDelivered).create()
        self._ports.append(port)
        return port

    def subscriber(self, service, buffer: int):
        port = service.subscriber_builder().buffer_size(buffer).create()
        self._ports.append(port)
        return port

    def event(self, name: str):
        service = self._open_or_create(
            lambda: self.node.service_builder(self.iox2.ServiceName.new(name)).event().open_or_create()
        )
        self._services.append(service)
        return service

    def notifier(self, service):
        port = service.notifier_builder().create()
        self._ports.append(port)
        return port

    def listener(self, service):
        port = service.listener_builder().create()
        self._ports.append(port)
        return port

    def close(self) -> None:
        """Drop ports, then services, then the node (iceoryx2 removes what it owns)."""
        for port in reversed(self._ports):
            port.delete()
        self._ports.clear()
        self._services.clear()
        self.node = None


def _iox2_sender(publisher, frame: bool):
    loan = publisher.loan_uninit
    memmove = ctypes.memmove
    pack = _U32.pack

    def send_raw(msg: bytes) -> None:
        sample = loan()
        memmove(sample.payload_ptr, msg, 64)
        sample.assume_init().send()

    def send_frame(msg: bytes) -> None:
        if len(msg) > _IOX2_PACKET_CAPACITY:
            raise ValueError(f"encoded packet of {len(msg)} bytes exceeds the {_IOX2_PACKET_CAPACITY}-byte frame")
        sample = loan()
        framed = pack(len(msg)) + msg
        memmove(sample.payload_ptr, framed, len(framed))
        sample.assume_init().send()

    return send_frame if frame else send_raw


def _iox2_poller(subscriber, frame: bool):
    receive = subscriber.receive
    string_at = ctypes.string_at
    unpack_from = _U32.unpack_from

    def poll_raw():
        sample = receive()
        if sample is None:
            return None
        msg = string_at(sample.payload_ptr, 64)
        sample.delete()
        return msg

    def poll_frame():
        sample = receive()
        if sample is None:
            return None
        buf = string_at(sample.payload_ptr, ctypes.sizeof(_PacketFrame))
        sample.delete()
        (length,) = unpack_from(buf)
        return memoryview(buf)[4 : 4 + length]

    return poll_frame if frame else poll_raw


def iox2_throughput(ctx: CaseContext) -> dict:
    frame = ctx.kind == THROUGHPUT_PACKETS
    params = ctx.endpoint_params(iox2_root=ctx.tmpdir())
    endpoint = ctx.start_command("bench.peers:_iox2_consumer", params)
    endpoint.ctl.expect("created", ctx.remaining_s())  # the subscriber exists before we publish
    node = _Iox2(params)
    ctx.on_cleanup(node.close)
    service = node.pubsub("cfb/throughput", _PacketFrame if frame else _Raw64, _IOX2_BUFFER)
    publisher = node.publisher(service)
    endpoint.ctl.send("attached")
    return drive_throughput(
        ctx, endpoint, _iox2_sender(publisher, frame), consumer="spin", iox2_creation_retries=node.creation_retries
    )


def _iox2_consumer(ctl, params: dict) -> None:
    frame = params["packets"]
    node = _Iox2(params)
    try:
        service = node.pubsub("cfb/throughput", _PacketFrame if frame else _Raw64, _IOX2_BUFFER)
        subscriber = node.subscriber(service, _IOX2_BUFFER)
        ctl.send("created")
        # Receive once after the publisher exists: until the subscriber's first receive(),
        # iceoryx2 0.10 discards samples once the buffer is full despite
        # RetryUntilDelivered (measured: ids 1024.. lost with a 1024-deep buffer).
        ctl.expect("attached", seconds_until(params["deadline_ns"]))
        if subscriber.receive() is not None:
            raise RuntimeError("a sample arrived before the producer was told to start")
        # No blocking receive without an event service: the consumer polls.
        serve_throughput(ctl, params, _iox2_poller(subscriber, frame))
    finally:
        node.close()


def _iox2_pingpong_ports(node: _Iox2, *, ping_side: bool, blocking: bool):
    ping = node.pubsub("cfb/ping", _Raw64, 16)
    pong = node.pubsub("cfb/pong", _Raw64, 16)
    out_service, in_service = (ping, pong) if ping_side else (pong, ping)
    publisher = node.publisher(out_service)
    subscriber = node.subscriber(in_service, 16)
    notifier = listener = None
    if blocking:
        ping_ev = node.event("cfb/ping_event")
        pong_ev = node.event("cfb/pong_event")
        out_ev, in_ev = (ping_ev, pong_ev) if ping_side else (pong_ev, ping_ev)
        notifier = node.notifier(out_ev)
        listener = node.listener(in_ev)
    return publisher, subscriber, notifier, listener


def _iox2_pingpong_callables(node: _Iox2, ports, blocking: bool, deadline_ns: int):
    publisher, subscriber, notifier, listener = ports
    send_sample = _iox2_sender(publisher, frame=False)
    poll = _iox2_poller(subscriber, frame=False)
    if not blocking:
        return send_sample, spin_waiter(poll, deadline_ns)
    notify = notifier.notify
    timed_wait = listener.timed_wait
    timeout = node.iox2.Duration.from_secs_f64(_RECV_TIMEOUT_S)

    def send(msg: bytes) -> None:
        send_sample(msg)
        notify()

    def recv():
        msg = poll()
        if msg is None:
            timed_wait(timeout)  # sleeps until notified (drains pending notifications)
            msg = poll()
        return msg

    return send, block_waiter(recv, deadline_ns)


def iox2_latency(ctx: CaseContext) -> dict:
    mode = _latency_mode(ctx)
    blocking = mode == "block"
    params = ctx.endpoint_params(iox2_root=ctx.tmpdir(), mode=mode)
    endpoint = ctx.start_command("bench.peers:_iox2_pong", params)
    endpoint.ctl.expect("created", ctx.remaining_s())
    node = _Iox2(params)
    ctx.on_cleanup(node.close)
    ports = _iox2_pingpong_ports(node, ping_side=True, blocking=blocking)
    send, wait = _iox2_pingpong_callables(node, ports, blocking, ctx.deadline_ns)
    return drive_pingpong(ctx, endpoint, send, wait, consumer=mode, iox2_creation_retries=node.creation_retries)


def _iox2_pong(ctl, params: dict) -> None:
    blocking = params["mode"] == "block"
    node = _Iox2(params)
    try:
        ports = _iox2_pingpong_ports(node, ping_side=False, blocking=blocking)
        ctl.send("created")
        send, wait = _iox2_pingpong_callables(node, ports, blocking, params["deadline_ns"])
        serve_pingpong(ctl, params, send, wait)
    finally:
        node.close()


# =========================================================================== registry


def _four(
    key: str,
    transport: str,
    throughput,
    latency,
    *,
    requires: tuple[Requirement, ...] = (),
    tp_n: int,
    lat_spin_n: int,
    lat_block_n: int,
    note: str = "",
) -> list[Case]:
    return [
        Case(f"{key}/throughput_raw", THROUGHPUT_RAW, transport, throughput, n=tp_n, quick_n=2_000, requires=requires, note=note),
        Case(f"{key}/throughput_packets", THROUGHPUT_PACKETS, transport, throughput, n=tp_n, quick_n=2_000, requires=requires, note=note),
        Case(f"{key}/latency_spin", LATENCY_SPIN, transport, latency, n=lat_spin_n, quick_n=200, requires=requires, note=note),
        Case(f"{key}/latency_block", LATENCY_BLOCK, transport, latency, n=lat_block_n, quick_n=200, requires=requires, note=note),
    ]


CASES: list[Case] = [
    *_four("mp_queue", "multiprocessing.Queue", mpq_throughput, mpq_latency,
           tp_n=300_000, lat_spin_n=30_000, lat_block_n=20_000, note="pickles every message"),
    *_four("mp_pipe", "multiprocessing.Pipe", pipe_throughput, pipe_latency,
           tp_n=600_000, lat_spin_n=50_000, lat_block_n=20_000, note="send_bytes/recv_bytes"),
    *_four("faster_fifo", "faster-fifo put/get", fifo_throughput, fifo_latency, requires=(_FASTER_FIFO,),
           tp_n=800_000, lat_spin_n=50_000, lat_block_n=20_000, note="loads=bytes, dumps=bytes"),
    Case("faster_fifo_many64/throughput_raw", THROUGHPUT_RAW, "faster-fifo put_many/get_many (64)",
         fifo_throughput, n=3_000_000, quick_n=4_096, batch=64, requires=(_FASTER_FIFO,),
         note="batches of 64 per put_many; get_many takes up to 1024"),
    Case("faster_fifo_many64/throughput_packets", THROUGHPUT_PACKETS, "faster-fifo put_many/get_many (64)",
         fifo_throughput, n=2_000_000, quick_n=4_096, batch=64, requires=(_FASTER_FIFO,),
         note="batches of 64 per put_many; get_many takes up to 1024"),
    *_four("pyzmq", "pyzmq ipc:// PUSH/PULL, PAIR", zmq_throughput, zmq_latency, requires=(_PYZMQ,),
           tp_n=2_000_000, lat_spin_n=30_000, lat_block_n=20_000, note="throughput PUSH/PULL, latency PAIR"),
    *_four("iceoryx2", "iceoryx2 publish/subscribe", iox2_throughput, iox2_latency, requires=(_ICEORYX2,),
           tp_n=1_000_000, lat_spin_n=200_000, lat_block_n=20_000,
           note="loaned samples; blocking = event service Listener.timed_wait"),
]


if __name__ == "__main__":
    from bench._harness import case_main

    sys.exit(case_main(["--module", "bench.peers", *sys.argv[1:]]))
