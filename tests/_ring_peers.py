"""Child-process peers for the cross-process ring tests: ``python -m tests._ring_peers <role> <ring> [json]``.

Each role attaches to an existing ring, says ``READY`` (or ``CLAIMED <pos>``) on stdout
once it holds its slot, does its part, and ends with ``RESULT {json}``. Every loop has
a deadline; the parent kills and reaps every child in a ``finally``.

Packets carry ``id = source << 32 | seq`` and ``payload = payload_of(source, seq)`` so a
consumer can check per-producer order and the parent can recompute every checksum.
"""

from __future__ import annotations

import json
import sys
import time

MASK64 = (1 << 64) - 1
FNV_PRIME = 0x100000001B3
FNV_OFFSET = 0xCBF29CE484222325
TOPIC = "cross.process"


def payload_of(source: int, seq: int) -> int:
    """The payload a producer sends for ``seq`` (the consumer checks it)."""
    return (seq * 2654435761 + source * 97) & 0xFFFFFFFFFFFF


def fold(h: int, value: int) -> int:
    """An order-sensitive checksum step (FNV-style over 64-bit values)."""
    return ((h ^ value) * FNV_PRIME) & MASK64


def expected_checksums(sources: list[int], count: int) -> dict:
    """What a consumer that got ``count`` packets from each source, in order, reports."""
    per_source = {}
    id_sum = 0
    payload_sum = 0
    for src in sources:
        h = FNV_OFFSET
        for seq in range(count):
            pid = (src << 32) | seq
            pay = payload_of(src, seq)
            h = fold(fold(h, pid), pay)
            id_sum += pid
            payload_sum += pay
        per_source[str(src)] = h
    return {"fold": per_source, "id_sum": id_sum & MASK64, "payload_sum": payload_sum & MASK64}


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _result(obj: dict) -> None:
    _say("RESULT " + json.dumps(obj))


# --- roles ----------------------------------------------------------------------------------


def consumer(ring_name: str, cfg: dict) -> None:
    """Receive ``total`` packets (verifying order, payloads and checksums), optionally slowly."""
    from fabric.channel import PacketReader
    from fabric.errors import SubscriberDroppedError
    from fabric.ring import Ring

    total = cfg["total"]
    slow_every = cfg.get("slow_every", 0)
    slow_sleep_s = cfg.get("slow_sleep_s", 0.0)
    deadline = time.monotonic() + cfg.get("deadline_s", 60.0)
    ring = Ring.attach(ring_name)
    reader = ring.reader()
    preader = PacketReader(reader)
    _say("READY")
    next_seq: dict[int, int] = {}
    folds: dict[int, int] = {}
    order_errors = payload_errors = 0
    id_sum = payload_sum = 0
    count = 0
    dropped = False
    timed_out = False
    try:
        while count < total:
            if time.monotonic() > deadline:
                timed_out = True
                break
            batch = preader.receive_batch(64 if slow_every else 256)
            if not batch:
                reader.wait_readable(timeout_ns=50_000_000)
                continue
            for p in batch:
                src = p.source
                seq = p.id & 0xFFFFFFFF
                if p.id >> 32 != src or seq != next_seq.get(src, 0):
                    order_errors += 1
                next_seq[src] = seq + 1
                if p.payload != payload_of(src, seq):
                    payload_errors += 1
                folds[src] = fold(fold(folds.get(src, FNV_OFFSET), p.id), p.payload)
                id_sum += p.id
                payload_sum += p.payload
                count += 1
                if slow_every and count % slow_every == 0:
                    time.sleep(slow_sleep_s)
    except SubscriberDroppedError:
        dropped = True
    _result(
        {
            "count": count,
            "per_source": {str(k): v for k, v in next_seq.items()},
            "order_errors": order_errors,
            "payload_errors": payload_errors,
            "fold": {str(k): v for k, v in folds.items()},
            "id_sum": id_sum & MASK64,
            "payload_sum": payload_sum & MASK64,
            "malformed": preader.malformed,
            "dropped": dropped,
            "timed_out": timed_out,
        }
    )
    preader.close()
    ring.close()


def wait_then_poll(ring_name: str, cfg: dict) -> None:
    """Join, say READY, do nothing until the parent says GO on stdin, then poll once."""
    from fabric.errors import SubscriberDroppedError
    from fabric.ring import Ring

    ring = Ring.attach(ring_name)
    reader = ring.reader()
    _say("READY")
    sys.stdin.readline()  # the parent always sends a line (or closes stdin / kills us)
    outcome = {"dropped": False, "error": ""}
    try:
        outcome["received"] = reader.poll(lambda view, type_id: None)
    except SubscriberDroppedError as exc:
        outcome["dropped"] = True
        outcome["error"] = str(exc)
    _result(outcome)
    reader.close()
    ring.close()


def producer(ring_name: str, cfg: dict) -> None:
    """Send ``count`` packets from ``source`` (blocking sends), then report the writer's counters."""
    from fabric.channel import PacketWriter
    from fabric.packet import PhasePacket
    from fabric.ring import Ring

    src = cfg["source"]
    count = cfg["count"]
    pace_pid = cfg.get("pace_pid", 0)
    ring = Ring.attach(ring_name)
    writer = PacketWriter(ring.writer())
    _say("READY")
    deadline = time.monotonic() + cfg.get("deadline_s", 60.0)
    for seq in range(count):
        if pace_pid and seq % 32 == 0:
            _pace(ring, pace_pid, deadline)
        pkt = PhasePacket(id=(src << 32) | seq, source=src, topic=TOPIC, payload=payload_of(src, seq))
        writer.send(pkt, timeout_ns=max(1, int((deadline - time.monotonic()) * 1e9)))
    stats = writer.writer.statistics()
    _result({"sent": count, "records": stats.records, "back_pressured": stats.back_pressured})
    writer.close()
    ring.close()


def _pace(ring, pid: int, deadline: float) -> None:
    """Wait until the subscriber of ``pid`` is less than a quarter of the ring behind."""
    limit = ring.capacity_bytes // 4
    while time.monotonic() < deadline:
        lag = [s.lag_bytes for s in ring.statistics().subscribers if s.pid == pid]
        if not lag or lag[0] < limit:
            return
        time.sleep(0.0005)


def raw_offerer(ring_name: str, cfg: dict) -> None:
    """Offer ``count`` raw records ``b'B' + seq (8 bytes LE)`` with blocking sends."""
    from fabric.ring import Ring

    count = cfg["count"]
    type_id = cfg.get("type_id", 2)
    ring = Ring.attach(ring_name)
    writer = ring.writer()
    _say("READY")
    if cfg.get("wait_go"):
        sys.stdin.readline()
    deadline = time.monotonic() + cfg.get("deadline_s", 30.0)
    for seq in range(count):
        writer.send(b"B" + seq.to_bytes(8, "little"), type_id, timeout_ns=max(1, int((deadline - time.monotonic()) * 1e9)))
    _result({"sent": count})
    writer.close()
    ring.close()


def claim_and_hang(ring_name: str, cfg: dict) -> None:
    """Claim a record, fill half of it, say CLAIMED <pos>, then sleep (the parent SIGKILLs us)."""
    from fabric.ring import Ring

    ring = Ring.attach(ring_name)
    writer = ring.writer()
    length = cfg["length"]
    claim = writer.try_claim(length, cfg.get("type_id", 9))
    if claim is None:
        _say("REFUSED")
        return
    half = length // 2
    claim.buffer[:half] = b"\xab" * half
    if cfg.get("unmark"):
        # As if killed between moving the tail and writing the in-progress marker: the slot
        # keeps a word of no lap (never this position's commit or marker).
        from fabric._ring_kernels import publish_word

        publish_word(ring.segment.address + ring.data_offset + (claim.position & (ring.capacity_bytes - 1)), 0x5A5A)
    _say(f"CLAIMED {claim.position}")
    time.sleep(cfg.get("sleep_s", 60.0))


def span_and_hang(ring_name: str, cfg: dict) -> None:
    """Leave exactly the state ``offer_batch``'s kernel leaves when killed mid-span, then sleep.

    A span of ``records`` records of ``length`` bytes is claimed (tail moved, claim record
    set); the first ``committed`` are committed (type 7, payload ``bytes([i]) * length``); the
    next has its meta written (if ``meta``) and half its payload, but no commit word; the
    claim record names it, as the kernel's does. Says ``CLAIMED <span start>``.
    """
    from fabric._ring_kernels import publish_word, read_word
    from fabric.ring import Ring
    from shm_layouts.record import RECORD_HEADER_BYTES, align_record
    from shm_layouts.ring import P_CLAIM_LEN, P_CLAIM_POS, TAIL_OFFSET

    ring = Ring.attach(ring_name)
    writer = ring.writer()
    base, salt = ring.segment.address, ring._salt
    length, records, committed = cfg["length"], cfg["records"], cfg["committed"]
    step = align_record(length + RECORD_HEADER_BYTES)
    t = read_word(base + TAIL_OFFSET)
    assert (t % ring.capacity_bytes) + records * step <= ring.capacity_bytes, "the span must not wrap"
    total = records * step
    publish_word(ring._producer_addr(writer.slot, P_CLAIM_LEN), total)
    publish_word(ring._producer_addr(writer.slot, P_CLAIM_POS), t)
    publish_word(base + TAIL_OFFSET, t + total)
    u8 = ring.segment.u8
    rec = t
    for i in range(committed + 1):
        slot = ring.data_offset + (rec % ring.capacity_bytes)
        if i < committed or cfg.get("meta"):
            publish_word(base + slot + 8, (length + RECORD_HEADER_BYTES) | (7 << 32))
        n = length if i < committed else length // 2
        u8[slot + RECORD_HEADER_BYTES : slot + RECORD_HEADER_BYTES + n] = i
        if i < committed:
            publish_word(base + slot, rec ^ salt)
            rec += step
            publish_word(ring._producer_addr(writer.slot, P_CLAIM_LEN), t + total - rec)
            publish_word(ring._producer_addr(writer.slot, P_CLAIM_POS), rec)
    _say(f"CLAIMED {t}")
    time.sleep(cfg.get("sleep_s", 60.0))


def slow_commit(ring_name: str, cfg: dict) -> None:
    """Claim, fill half, say CLAIMED; on the parent's COMMIT line fill the rest and commit."""
    from fabric.ring import Ring

    ring = Ring.attach(ring_name)
    writer = ring.writer()
    length = cfg["length"]
    claim = writer.try_claim(length, cfg.get("type_id", 9))
    if claim is None:
        _say("REFUSED")
        return
    pattern = bytes((i * 7 + 3) & 0xFF for i in range(length))
    half = length // 2
    claim.buffer[:half] = pattern[:half]
    _say(f"CLAIMED {claim.position}")
    sys.stdin.readline()
    claim.buffer[half:] = pattern[half:]
    pos = claim.commit()
    _say(f"COMMITTED {pos}")
    sys.stdin.readline()  # stay alive (holding the slot) until the parent is done
    writer.close()
    ring.close()


def idle_subscriber(ring_name: str, cfg: dict) -> None:
    """Join as a subscriber, say READY, then never read (the parent SIGKILLs us)."""
    from fabric.ring import Ring

    ring = Ring.attach(ring_name)
    ring.reader()
    _say("READY")
    time.sleep(cfg.get("sleep_s", 60.0))


def parked_reader(ring_name: str, cfg: dict) -> None:
    """Join with a wait strategy, say READY, then ``receive`` ``count`` records (printing GOT <hex>)."""
    from fabric.ring import Ring
    from fabric.wait import wait_strategy_from_name

    ring = Ring.attach(ring_name)
    reader = ring.reader(wait=wait_strategy_from_name(cfg.get("wait", "block")))
    _say("READY")
    for _ in range(cfg.get("count", 1)):
        try:
            data, type_id = reader.receive(timeout_ns=int(cfg.get("timeout_s", 20.0) * 1e9))
        except TimeoutError:
            _say("TIMEOUT")
            break
        _say(f"GOT {data.hex()} {type_id}")
    _result({"done": True})
    reader.close()
    ring.close()


def producer_after_park(ring_name: str, cfg: dict) -> None:
    """Wait (with a deadline) until a subscriber parks on the ring, then offer one record."""
    from fabric.ring import Ring

    ring = Ring.attach(ring_name)
    writer = ring.writer()
    _say("READY")
    deadline = time.monotonic() + cfg.get("deadline_s", 20.0)
    parked = ring.statistics().waiters
    while parked < 1 and time.monotonic() < deadline:
        time.sleep(0.001)
        parked = ring.statistics().waiters  # what we saw just before offering
    pos = writer.offer(bytes.fromhex(cfg["payload_hex"]), cfg.get("type_id", 5))
    _result({"parked": parked, "position": pos})
    writer.close()
    ring.close()


ROLES = {
    "consumer": consumer,
    "wait_then_poll": wait_then_poll,
    "producer": producer,
    "raw_offerer": raw_offerer,
    "claim_and_hang": claim_and_hang,
    "span_and_hang": span_and_hang,
    "slow_commit": slow_commit,
    "idle_subscriber": idle_subscriber,
    "parked_reader": parked_reader,
    "producer_after_park": producer_after_park,
}


def main(argv: list[str]) -> None:
    role, ring_name = argv[0], argv[1]
    cfg = json.loads(argv[2]) if len(argv) > 2 else {}
    ROLES[role](ring_name, cfg)


if __name__ == "__main__":
    main(sys.argv[1:])
