"""The builtin ``offer`` and ``receive`` (``fabric._ring_builtins`` over ``fabric._fastcall``).

They must give exactly what the Python closures they fall back to give — results, refusals,
exceptions — for every argument, and leak no reference on any path.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fabric import _fastcall, _ring_builtins
from fabric.errors import ClaimPendingError, ClosedResourceError
from fabric.ring import BACK_PRESSURED, NOT_CONNECTED, Ring, RingConfig
from fabric.wait import BlockWait

pytestmark = pytest.mark.skipif(
    not _ring_builtins.AVAILABLE, reason="builtins off: CPython layout probe failed, or CHRONOFABRIC_NO_BUILTINS is set"
)

CAP = 4096
MAX = CAP // 4


@pytest.fixture
def ring(prefix):
    with Ring.create(f"{prefix}-ring", RingConfig(capacity_bytes=CAP)) as r:
        yield r


def outcome(call):
    """What a call gave: ``("ok", value)`` or ``("raised", exception type, message)``."""
    try:
        return ("ok", call())
    except Exception as exc:  # noqa: BLE001 - the exception is the outcome under comparison
        return ("raised", type(exc), str(exc))


def test_the_layout_probe_holds_on_this_interpreter():
    assert _fastcall.LAYOUT_OK


def test_offer_and_receive_are_builtins_with_their_signatures(ring):
    writer, reader = ring.writer(), ring.reader()
    assert type(writer.offer).__name__ == type(reader.receive).__name__ == "builtin_function_or_method"
    assert str(inspect.signature(writer.offer)) == "(data, type_id=0)"
    assert str(inspect.signature(reader.receive)) == "(*, timeout_ns=5000000000)"
    assert "BACK_PRESSURED" in writer.offer.__doc__ and "TimeoutError" in reader.receive.__doc__


def test_every_buffer_type_and_argument_form_round_trips(ring):
    writer, reader = ring.writer(), ring.reader()
    sent = [
        ((b"bytes",), {}, 0),
        ((bytearray(b"bytearray"), 7), {}, 7),
        ((memoryview(b"view"),), {"type_id": 3}, 3),  # keyword: the Python path
        ((np.arange(5, dtype=np.uint8),), {}, 0),  # ndarray: the Python path
        ((b"",), {}, 0),
        ((b"x" * MAX, 2**31 - 1), {}, 2**31 - 1),
    ]
    for args, kwargs, type_id in sent:
        assert writer.offer(*args, **kwargs) >= 0
        assert reader.receive(timeout_ns=1_000_000) == (bytes(args[0]), type_id)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    kind=st.sampled_from(["bytes", "bytearray", "memoryview", "str", "int"]),
    length=st.integers(0, MAX + 8),
    type_id=st.one_of(st.none(), st.integers(-(2**70), 2**70), st.integers(-2, 2**31 + 1), st.just("1"), st.just(1.0)),
    as_keyword=st.booleans(),
)
def test_the_builtin_offer_gives_what_the_python_offer_gives(prefix, monkeypatch, kind, length, type_id, as_keyword):
    data = {"bytes": bytes(length), "bytearray": bytearray(length), "memoryview": memoryview(bytes(length)),
            "str": "x" * length, "int": length}[kind]
    args, kwargs = (data,), {}
    if type_id is not None:
        if as_keyword:
            kwargs["type_id"] = type_id
        else:
            args += (type_id,)
    outcomes = []
    for use_builtin in (True, False):
        with Ring.create(f"{prefix}-cmp", RingConfig(capacity_bytes=CAP)) as ring:
            try:
                reader = ring.reader()
                writer = ring.writer()
                with monkeypatch.context() as m:
                    m.setattr(_ring_builtins, "AVAILABLE", use_builtin)
                    offer = writer.offer
                assert (type(offer).__name__ == "builtin_function_or_method") == use_builtin
                got = outcome(lambda: offer(*args, **kwargs))
                outcomes.append((got, ring.statistics().tail, outcome(lambda: reader.receive(timeout_ns=0))))
            finally:
                ring.destroy()
    assert outcomes[0] == outcomes[1]


def test_refusals_come_back_as_codes(ring):
    writer = ring.writer()
    assert writer.offer(b"nobody listens") == NOT_CONNECTED
    reader = ring.reader()
    n = 0
    while (r := writer.offer(b"y" * 100)) >= 0:
        n += 1
    assert r == BACK_PRESSURED and n > 0
    assert ring.statistics().producers[0].back_pressured == 1
    reader.close()


def test_a_closed_writer_or_an_open_claim_takes_the_checked_path(ring):
    writer = ring.writer()
    ring.reader()
    offer = writer.offer
    claim = writer.try_claim(8)
    with pytest.raises(ClaimPendingError):
        offer(b"while claimed")
    claim.abort()
    assert offer(b"after") >= 0
    writer.close()
    with pytest.raises(ClosedResourceError):
        offer(b"closed")


def test_receive_arguments_timeouts_and_errors(ring):
    writer, reader = ring.writer(), ring.reader()
    receive = reader.receive
    with pytest.raises(TimeoutError):
        receive(timeout_ns=0)
    with pytest.raises(TimeoutError):
        receive(timeout_ns=-5)
    with pytest.raises(TypeError):
        receive(5)  # keyword-only, as the Python receive
    with pytest.raises(TypeError):
        receive(timeout=5)
    writer.offer(b"a", 1)
    writer.offer(b"b", 2)
    writer.offer(b"c", 3)
    assert receive(timeout_ns=-1) == (b"a", 1)  # a record that is there is taken without waiting
    assert receive(timeout_ns=2**70) == (b"b", 2)  # too big for the kernel: the Python path
    assert receive(**{"".join(["timeout", "_ns"]): 10}) == (b"c", 3)  # a name not interned
    reader.close()
    with pytest.raises(ClosedResourceError):
        receive(timeout_ns=0)


def test_a_parked_reader_is_woken_by_the_builtin_offer(ring):
    writer = ring.writer()
    reader = ring.reader(wait=BlockWait())
    got = []
    t = threading.Thread(target=lambda: got.append(reader.receive(timeout_ns=5_000_000_000)))
    t.start()
    try:
        deadline = 2_000
        while ring.statistics().waiters == 0 and deadline:  # parked on the futex
            deadline -= 1
            threading.Event().wait(0.001)
        assert ring.statistics().waiters == 1
        writer.offer(b"wake up", 4)
    finally:
        t.join(timeout=5)
    assert not t.is_alive() and got == [(b"wake up", 4)]


def test_no_path_leaks_a_reference(ring):
    writer, reader = ring.writer(), ring.reader()
    data, view, big = b"payload-object", memoryview(b"view-object"), 2**40
    before = [sys.getrefcount(x) for x in (data, view, big, writer.offer, reader.receive)]
    for i in range(2_000):
        writer.offer(data)  # kernel path
        writer.offer(view, 9)  # Python path
        try:
            writer.offer(data, big)  # raises in the Python path
        except ValueError:
            pass
        pair = reader.receive(timeout_ns=1_000_000)
        received = pair[0]
        counts = (sys.getrefcount(pair), sys.getrefcount(received))  # outside assert: pytest's rewrite holds values
        assert counts == (2, 3)  # pair: ours and the call's; its bytes: the tuple's, ours and the call's
        del received
        reader.receive(timeout_ns=1_000_000)
        if i % 100 == 0:
            with pytest.raises(TimeoutError):
                reader.receive(timeout_ns=0)
    assert [sys.getrefcount(x) for x in (data, view, big, writer.offer, reader.receive)] == before


# --- PacketWriter.offer -----------------------------------------------------------------------


def _packets():
    from fabric.packet import PhasePacket

    yield "plain", (PhasePacket(id=1, topic="t", payload=b"x" * 32),), {}
    yield "deps and fields", (PhasePacket(id=2, topic="t", priority=7, deadline_ns=5, targets=3, deps=(1, 2)),), {}
    yield "out of range", (PhasePacket(topic="t", priority=999),), {}
    yield "unencodable", (PhasePacket(topic="t", payload={"k": object()}),), {}
    yield "too large", (PhasePacket(topic="t", payload=bytes(MAX)),), {}
    yield "not a packet", ({"topic": "t"},), {}
    yield "keyword", (), {"packet": PhasePacket(id=3, topic="t")}
    yield "two arguments", (PhasePacket(id=4, topic="t"), 1), {}


@pytest.mark.parametrize("name, args, kwargs", list(_packets()), ids=[p[0] for p in _packets()])
def test_the_builtin_packet_offer_gives_what_the_python_offer_gives(prefix, monkeypatch, name, args, kwargs):
    from fabric.channel import PacketReader, PacketWriter

    outcomes = []
    for use_builtin in (True, False):
        with Ring.create(f"{prefix}-pk", RingConfig(capacity_bytes=CAP)) as ring:
            try:
                reader = PacketReader(ring.reader())
                with monkeypatch.context() as m:
                    m.setattr(_ring_builtins, "AVAILABLE", use_builtin)
                    writer = PacketWriter(ring.writer())
                assert (type(writer.offer).__name__ == "builtin_function_or_method") == use_builtin
                got = outcome(lambda: writer.offer(*args, **kwargs))
                outcomes.append((got, ring.statistics().tail, outcome(lambda: reader.receive(timeout_ns=0))))
            finally:
                ring.destroy()
    if outcomes[0][0][0] == "raised":  # same exception type; messages may name the same reason differently
        assert outcomes[0][0][1] is outcomes[1][0][1] and outcomes[0][1:] == outcomes[1][1:]
    else:
        assert outcomes[0] == outcomes[1]


def test_the_packet_offer_refuses_when_closed_or_claimed_and_leaks_nothing(ring):
    from fabric.channel import PacketReader, PacketWriter
    from fabric.packet import PhasePacket

    writer = PacketWriter(ring.writer())
    reader = PacketReader(ring.reader())
    pkt, bad = PhasePacket(id=9, topic="t", payload=b"p" * 16), PhasePacket(topic="t", priority=999)
    before = [sys.getrefcount(x) for x in (pkt, bad, writer.offer)]
    for _ in range(2_000):
        assert writer.offer(pkt) >= 0
        with pytest.raises(ValueError):
            writer.offer(bad)
        assert reader.receive(timeout_ns=1_000_000).id == 9
    assert [sys.getrefcount(x) for x in (pkt, bad, writer.offer)] == before
    claim = writer.writer.try_claim(8)
    with pytest.raises(ClaimPendingError):
        writer.offer(pkt)
    claim.abort()
    writer.close()
    with pytest.raises(ClosedResourceError):
        writer.offer(pkt)


def test_the_environment_can_turn_the_builtins_off():
    code = "from fabric import _ring_builtins as B; print(B.AVAILABLE)"
    for value, expected in (("1", "False"), ("0", "True"), ("", "True")):
        env = {**os.environ, "CHRONOFABRIC_NO_BUILTINS": value}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert out.stdout.strip() == expected, out.stderr
