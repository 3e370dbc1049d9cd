"""Child-process roles for the fabric integration tests: a producer and a subscriber.

Run as ``python -m tests.fabric_peers producer|subscriber --name N ...`` (a fresh
interpreter, never a fork). The protocol, on stdout one line each::

    READY {json}     attached (and subscribed): component, row, pid, inbox
    RESULT {json}    done: counts and the checks' verdicts
    PROGRESS {json}  (producer, with --progress-every) how many it published so far

A producer waits for ``GO`` on stdin before publishing. Both wait for ``EXIT`` on stdin
(or EOF) before detaching, so the test can read ``chronofabric stat`` while their
client rows still exist. Every wait has a deadline; EOF on stdin (the test died)
ends the child.

Payloads are ``[k, i]``: ``k`` the producer's index in the test's plan, ``i`` its
packet number (0, 1, 2, ...). Producer ``k`` publishes packet ``i`` on topic
``topics[i % len(topics)]``. A subscriber, given the whole plan, knows which ``i``
of each producer it must see and in which order, so it checks exactly-once (or
at-least-once with ``--at-least-once``), no gaps, and per-producer order, and it also
checks that the packet id's sequence (``id & (2**40 - 1)``) grows per source.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import sys
import time

_SEQ_MASK = (1 << 40) - 1


def _emit(tag: str, obj: dict) -> None:
    sys.stdout.write(f"{tag} {json.dumps(obj)}\n")
    sys.stdout.flush()


def _wait_stdin(word: str, timeout_s: float) -> bool:
    """Wait for a line ``word`` on stdin; False on EOF or timeout."""
    deadline = time.monotonic() + timeout_s
    fd = sys.stdin.fileno()
    buf = b""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        ready, _, _ = select.select([fd], [], [], min(remaining, 1.0))
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            return False
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if line.decode().strip() == word:
                return True


def _attach(name: str, timeout_s: float):
    import fabric

    return fabric.attach(name, timeout_ns=int(timeout_s * 1e9))


# --- producer ---------------------------------------------------------------------------------


def run_producer(args) -> int:
    topics = args.topics.split(",")
    client = _attach(args.name, args.attach_timeout)
    try:
        pubs = {t: client.publisher(t, priority=args.priority) for t in topics}
        _emit("READY", {"component": client.component, "row": client.row, "pid": os.getpid(), "epoch": client.epoch})
        if not _wait_stdin("GO", args.go_timeout):
            return 5
        pad = b"\x5a" * args.pad if args.pad else None
        t0 = time.monotonic()
        n = 0
        period = len(topics)
        interval = 1.0 / args.rate if args.rate else 0.0
        timeout_ns = int(args.publish_timeout * 1e9)
        count = args.count
        every = args.progress_every
        while count < 0 or n < count:
            t = topics[n % period]
            payload = [args.k, n] if pad is None else [args.k, n, pad]
            pubs[t].publish(payload, timeout_ns=timeout_ns)
            n += 1
            if every and n % every == 0:
                _emit("PROGRESS", {"published": n})
            if interval:
                ahead = t0 + n * interval - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
        dt = time.monotonic() - t0
        _emit("RESULT", {"published": n, "seconds": dt, "component": client.component, "pid": os.getpid()})
        _wait_stdin("EXIT", args.exit_timeout)
        return 0
    finally:
        client.close()


# --- subscriber -------------------------------------------------------------------------------


class _Expect:
    """Which packet numbers of one producer a subscriber must see, as ranks 0, 1, 2, ..."""

    def __init__(self, topics: list[str], count: int, mine: set[str]) -> None:
        self.period = len(topics)
        self.topics = topics
        self.mine_offsets = [r for r, t in enumerate(topics) if t in mine]
        self.rank_of_offset = {r: j for j, r in enumerate(self.mine_offsets)}
        self.per_period = len(self.mine_offsets)
        self.count = count  # -1: unknown (a producer that may die)
        if count < 0:
            self.total = -1
        else:
            full, part = divmod(count, self.period)
            self.total = full * self.per_period + sum(1 for r in self.mine_offsets if r < part)

    def rank(self, i: int) -> int:
        """The rank of packet ``i`` among the packets this subscriber must see, -1 if not one of them."""
        j = self.rank_of_offset.get(i % self.period)
        if j is None:
            return -1
        return (i // self.period) * self.per_period + j


def run_subscriber(args) -> int:
    from fabric.errors import FabricError

    plan = json.loads(args.plan)  # [{"topics": [...], "count": n}, ...] indexed by k
    mine = set(args.topics.split(","))
    expects = [_Expect(p["topics"], int(p["count"]), mine) for p in plan]
    client = _attach(args.name, args.attach_timeout)
    try:
        sub = client.subscribe(sorted(mine))
        _emit("READY", {"component": client.component, "row": client.row, "pid": os.getpid(), "inbox": sub.inbox})
        known_total = sum(e.total for e in expects if e.total >= 0)
        nxt = [0] * len(expects)  # next rank expected, per producer
        counts = [0] * len(expects)
        dups = [0] * len(expects)
        sources: list[int | None] = [None] * len(expects)
        last_seq: dict[tuple[int, int], int] = {}
        errors: list[str] = []
        seq_regress = 0
        received = 0
        new = 0  # first deliveries of the known producers
        deadline = time.monotonic() + args.timeout
        linger_until = None
        idle_since = time.monotonic()

        def note(msg: str) -> None:
            if len(errors) < 20:
                errors.append(msg)

        while True:
            now = time.monotonic()
            if now > deadline:
                note(f"deadline: {new} of {known_total} first deliveries after {args.timeout} s")
                break
            if linger_until is None and new >= known_total:
                linger_until = now + args.linger
            if linger_until is not None and now >= linger_until and now - idle_since >= args.linger:
                break
            try:
                batch = sub.receive_batch(256)
                if not batch:
                    try:
                        batch = [sub.receive(timeout_ns=100_000_000)]
                    except TimeoutError:
                        batch = []
            except FabricError as exc:
                note(f"{type(exc).__name__}: {exc}")
                break
            if not batch:
                continue
            idle_since = time.monotonic()
            for pkt in batch:
                received += 1
                payload = pkt.payload
                k, i = int(payload[0]), int(payload[1])
                # A client row (and so a source id) can be reused after its owner died; the
                # epoch above the sequence tells the attachments apart.
                seq = pkt.id & _SEQ_MASK
                who = (pkt.source, pkt.id >> 40)
                prev = last_seq.get(who)
                if prev is not None and seq <= prev and not args.at_least_once:
                    seq_regress += 1
                    note(f"id sequence of source {pkt.source} (epoch {(pkt.id >> 40) & 0xFFFF}) went from {prev} to {seq}")
                if prev is None or seq > prev:
                    last_seq[who] = seq
                if not 0 <= k < len(expects):
                    note(f"packet from unknown producer {k}")
                    continue
                e = expects[k]
                if sources[k] is None:
                    sources[k] = pkt.source
                elif sources[k] != pkt.source:
                    note(f"producer {k} came from sources {sources[k]} and {pkt.source}")
                if e.topics[i % e.period] != pkt.topic:
                    note(f"producer {k} packet {i} arrived on topic {pkt.topic!r}")
                r = e.rank(i)
                if r < 0:
                    note(f"producer {k} packet {i} on {pkt.topic!r} is not for this subscriber")
                    continue
                if r == nxt[k]:
                    nxt[k] += 1
                    counts[k] += 1
                    if e.total >= 0:
                        new += 1
                        if e.total >= 0 and nxt[k] > e.total:
                            note(f"producer {k}: more packets than it published ({i})")
                elif r < nxt[k]:
                    dups[k] += 1
                    if not args.at_least_once:
                        note(f"producer {k}: packet {i} again (or out of order) after rank {nxt[k] - 1}")
                else:
                    note(f"producer {k}: gap: expected rank {nxt[k]}, got packet {i} (rank {r})")
                    nxt[k] = r + 1
                    counts[k] += 1
                    if e.total >= 0:
                        new += 1
        result = {
            "pid": os.getpid(),
            "component": client.component,
            "inbox": sub.inbox,
            "received": received,
            "first_deliveries": new,
            "expected": known_total,
            "per_producer": counts,
            "duplicates": dups,
            "next_rank": nxt,
            "sources": sources,
            "seq_regressions": seq_regress,
            "errors": errors,
        }
        _emit("RESULT", result)
        _wait_stdin("EXIT", args.exit_timeout)
        return 0
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tests.fabric_peers")
    sub = p.add_subparsers(dest="role", required=True)

    def common(sp):
        sp.add_argument("--name", required=True)
        sp.add_argument("--topics", required=True, help="comma-separated")
        sp.add_argument("--attach-timeout", type=float, default=30.0)
        sp.add_argument("--exit-timeout", type=float, default=120.0)

    pr = sub.add_parser("producer")
    common(pr)
    pr.add_argument("--k", type=int, required=True)
    pr.add_argument("--count", type=int, required=True, help="-1: until killed")
    pr.add_argument("--priority", type=int, default=0)
    pr.add_argument("--pad", type=int, default=0, help="bytes of padding in each payload")
    pr.add_argument("--rate", type=float, default=0.0, help="packets/s (0: as fast as possible)")
    pr.add_argument("--go-timeout", type=float, default=120.0)
    pr.add_argument("--publish-timeout", type=float, default=60.0)
    pr.add_argument("--progress-every", type=int, default=0)

    su = sub.add_parser("subscriber")
    common(su)
    su.add_argument("--plan", required=True, help='JSON: [{"topics": [...], "count": n}, ...]')
    su.add_argument("--timeout", type=float, default=120.0)
    su.add_argument("--linger", type=float, default=0.5, help="keep reading this long after the last expected one")
    su.add_argument("--at-least-once", action="store_true", help="count re-deliveries instead of failing on them")

    args = p.parse_args(argv)
    return run_producer(args) if args.role == "producer" else run_subscriber(args)


if __name__ == "__main__":
    sys.exit(main())
