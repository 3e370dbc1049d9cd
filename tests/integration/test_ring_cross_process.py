"""Rings between processes: two producers and a consumer, a slow consumer under each policy.

Every peer is a child process (``tests._ring_peers``); the test owns the ring, starts the
peers, and checks what they report (JSON on stdout) against checksums it computes itself.
Packets carry ``id = source << 32 | seq`` and a payload derived from both, so the consumer
can check per-producer order and payloads, and fold an order-sensitive checksum.
"""

from __future__ import annotations

import json

from fabric.channel import PacketWriter
from fabric.packet import PhasePacket
from fabric.ring import Ring, RingConfig
from tests._fabric_procs import spawn_module, stop_all, wait_until
from tests._ring_peers import TOPIC, expected_checksums, payload_of


def _peer(role: str, ring: Ring, **cfg):
    return spawn_module("tests._ring_peers", role, ring.name, json.dumps(cfg))


def test_two_producer_processes_one_consumer_process_a_million_packets(prefix):
    per_producer = 500_000
    sources = [7, 11]
    cfg = RingConfig(capacity_bytes=1 << 20, multi_producer=True, max_producers=4, max_subscribers=2)
    with Ring.create(f"{prefix}-mp", cfg) as ring:
        children = []
        try:
            consumer = _peer("consumer", ring, total=per_producer * len(sources), deadline_s=120)
            children.append(consumer)
            consumer.wait_line("READY", 30)  # subscribed before anything is sent
            producers = [_peer("producer", ring, source=s, count=per_producer, deadline_s=120) for s in sources]
            children += producers
            sent = [p.result(150) for p in producers]
            got = consumer.result(150)
            for child in children:
                assert child.wait(20) == 0, child.stderr()
        finally:
            stop_all(children)
        stats = ring.statistics()
    assert [s["sent"] for s in sent] == [per_producer] * 2
    assert [s["records"] for s in sent] == [per_producer] * 2
    assert not got["timed_out"] and not got["dropped"]
    assert got["count"] == per_producer * len(sources)
    assert got["per_source"] == {str(s): per_producer for s in sources}
    assert got["order_errors"] == 0 and got["payload_errors"] == 0 and got["malformed"] == 0
    want = expected_checksums(sources, per_producer)
    assert got["fold"] == {str(s): want["fold"][str(s)] for s in sources}
    assert got["id_sum"] == want["id_sum"]
    assert got["payload_sum"] == want["payload_sum"]
    assert stats.records_offered == per_producer * len(sources)
    assert stats.recovered_claims == 0 and stats.dropped_subscribers == 0


def test_two_producers_contending_for_a_tiny_ring_never_deadlock(prefix):
    """A 4 KiB ring is full nearly all the time: the producers race for every bit of room.

    A producer that loses the race for the tail (its CAS fails) and then finds the ring full
    must leave nothing behind that holds the others back.
    """
    per_producer = 50_000
    sources = [21, 22]
    cfg = RingConfig(capacity_bytes=4096, multi_producer=True, max_producers=4, max_subscribers=2)
    with Ring.create(f"{prefix}-tiny", cfg) as ring:
        children = []
        try:
            consumer = _peer("consumer", ring, total=per_producer * len(sources), deadline_s=60)
            children.append(consumer)
            consumer.wait_line("READY", 30)
            producers = [_peer("producer", ring, source=s, count=per_producer, deadline_s=60) for s in sources]
            children += producers
            got = consumer.result(90)
            stats = ring.statistics()
            if got["timed_out"]:
                raise AssertionError(
                    f"the ring stalled after {got['count']} of {per_producer * len(sources)} packets: "
                    f"tail {stats.tail}, subscriber at {[s.position for s in stats.subscribers]}, "
                    f"producer back-pressure counts {[p.back_pressured for p in stats.producers]}"
                )
            for p in producers:
                assert p.result(30)["sent"] == per_producer
            for child in children:
                assert child.wait(20) == 0, child.stderr()
        finally:
            stop_all(children)
    assert got["count"] == per_producer * len(sources)
    assert got["order_errors"] == 0 and got["payload_errors"] == 0
    want = expected_checksums(sources, per_producer)
    assert got["fold"] == {str(s): want["fold"][str(s)] for s in sources}


def test_a_slow_consumer_process_holds_the_producer_back_and_nothing_is_lost(prefix):
    count = 20_000
    cfg = RingConfig(capacity_bytes=1 << 16, slow_subscriber_policy="block")
    with Ring.create(f"{prefix}-blk", cfg) as ring:
        children = []
        try:
            consumer = _peer("consumer", ring, total=count, slow_every=500, slow_sleep_s=0.02, deadline_s=90)
            children.append(consumer)
            consumer.wait_line("READY", 30)
            producer = _peer("producer", ring, source=3, count=count, deadline_s=90)
            children.append(producer)
            sent = producer.result(120)
            got = consumer.result(120)
            for child in children:
                assert child.wait(20) == 0, child.stderr()
        finally:
            stop_all(children)
        stats = ring.statistics()
    assert sent["back_pressured"] > 0, "the producer never waited for the slow consumer"
    assert stats.back_pressured == sent["back_pressured"]
    assert got["count"] == count and got["per_source"] == {"3": count}
    assert got["order_errors"] == 0 and got["payload_errors"] == 0
    assert got["fold"]["3"] == expected_checksums([3], count)["fold"]["3"]
    assert stats.dropped_subscribers == 0


def test_a_slow_consumer_process_is_dropped_and_the_fast_one_gets_everything(prefix):
    count = 5_000
    cfg = RingConfig(capacity_bytes=1 << 16, slow_subscriber_policy="drop")
    with Ring.create(f"{prefix}-drp", cfg) as ring:
        children = []
        try:
            slow = _peer("wait_then_poll", ring)
            fast = _peer("consumer", ring, total=count, deadline_s=90)
            children += [slow, fast]
            slow.wait_line("READY", 30)
            fast.wait_line("READY", 30)
            wait_until(lambda: ring.statistics().subscribers_joined == 2, 10, "both consumers to join")
            writer = PacketWriter(ring.writer())
            for seq in range(count):
                if seq % 32 == 0:
                    # Keep the fast consumer well inside a lap: only the idle one may fall behind.
                    wait_until(
                        lambda: all(s.lag_bytes < ring.capacity_bytes // 4 for s in ring.statistics().subscribers
                                    if s.pid == fast.pid),
                        30,
                        "the fast consumer to keep up",
                        interval_s=0.0005,
                    )
                r = writer.offer(PhasePacket(id=(3 << 32) | seq, source=3, topic=TOPIC, payload=payload_of(3, seq)))
                assert r >= 0, f"offer {seq} refused ({r}): a 'drop' ring drops the laggard instead"
            got = fast.result(90)
            assert ring.statistics().dropped_subscribers == 1
            slow.send_line("GO")
            dropped = slow.result(30)
            for child in children:
                assert child.wait(20) == 0, child.stderr()
        finally:
            stop_all(children)
        stats = ring.statistics()
    assert stats.back_pressured == 0
    assert dropped["dropped"] is True and "dropped" in dropped["error"]
    assert got["count"] == count and got["per_source"] == {"3": count}
    assert got["order_errors"] == 0 and got["payload_errors"] == 0 and not got["dropped"]
    assert got["fold"]["3"] == expected_checksums([3], count)["fold"]["3"]
    assert stats.dropped_subscribers == 1
