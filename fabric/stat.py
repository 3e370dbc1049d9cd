"""Read-only snapshots of a running fabric: what ``chronofabric stat`` shows (like AeronStat).

``snapshot(control)`` reads the control block and every ring's counters without
writing anything; ``rates(before, after)`` turns two snapshots into per-second rates.
"""

from __future__ import annotations

import msgspec

from fabric.control import ControlBlock
from fabric.errors import FabricError
from fabric.pinning import mask_to_cpus
from fabric.ring import Ring
from fabric.timesource import get_time_source
from shm_layouts.control import MAX_CLIENTS, ClientState, FabricState, RingRole, RowState, WorkerState

# Names of each worker kind's five kind-specific counters (the `c` column of its row).
KIND_COUNTERS: dict[str, tuple[str, ...]] = {
    "router": ("unknown_topic", "inbox_gone", "", "", ""),
    "scheduler": ("shed", "late", "degraded", "escalated", "causal_timeouts"),
    "drpp": ("samples", "blocks", "events", "te", "streams"),
    "adp": ("assigned", "completed", "reassigned", "duplicates", "refused"),
    "egc": ("decisions", "alerts", "level", "rate_limited", "verdicts"),
    "ems": ("observations", "published", "valence_u", "arousal_u", "decisions"),
    "accelerator": ("ok", "failed", "cuda", "cpu", "busy_us"),
}

__all__ = ["ArenaStat", "KIND_COUNTERS", "WorkerStat", "RingStat", "TopicStat", "ClientStat", "FabricSnapshot", "snapshot", "rates", "RingReaderMap"]


class WorkerStat(msgspec.Struct):
    row: int
    name: str
    kind: str
    pid: int
    cpus: list[int]
    state: str
    restarts: int
    heartbeat_age_ms: float
    received: int
    emitted: int
    errors: int
    dead_lettered: int
    deadline_misses: int
    dropped: int
    counters: dict[str, int]


class RingStat(msgspec.Struct):
    name: str
    role: str
    capacity_bytes: int
    fill_bytes: int
    fill_ratio: float
    records_in: int
    back_pressured: int
    recovered_claims: int
    dropped_subscribers: int
    max_lag_bytes: int
    subscribers: int


class TopicStat(msgspec.Struct):
    name: str
    routed: int
    delivered: int
    no_subscriber: int
    filtered: int
    bytes: int


class ClientStat(msgspec.Struct):
    row: int
    pid: int
    published: int
    refused: int
    received: int
    malformed: int


class ArenaStat(msgspec.Struct):
    capacity_bytes: int
    bytes_in_use: int
    blobs: int
    allocations: int
    frees: int
    failures: int


class FabricSnapshot(msgspec.Struct):
    name: str
    state: str
    supervisor_pid: int
    uptime_s: float
    at_ns: int
    dead_lettered: int
    workers: list[WorkerStat]
    rings: list[RingStat]
    topics: list[TopicStat]
    clients: list[ClientStat]
    arena: ArenaStat | None = None


class RingReaderMap:
    """Attached rings kept open between refreshes (``stat`` in live mode)."""

    def __init__(self) -> None:
        self.rings: dict[str, Ring] = {}
        self._arena = None

    def get(self, name: str) -> Ring | None:
        ring = self.rings.get(name)
        if ring is None:
            try:
                ring = self.rings[name] = Ring.attach(name, timeout_ns=200_000_000)
            except FabricError:
                return None
        return ring

    def arena(self, name: str):
        """The blob arena, attached once (None if it cannot be)."""
        from fabric.arena import BlobArena

        a = self._arena
        if a is None:
            try:
                a = self._arena = BlobArena.attach(name, timeout_ns=200_000_000)
            except FabricError:
                return None
        return a

    def close(self) -> None:
        for r in self.rings.values():
            r.close()
        self.rings.clear()
        if self._arena is not None:
            self._arena.close()
            self._arena = None


def snapshot(control: ControlBlock, rings: RingReaderMap | None = None) -> FabricSnapshot:
    """Everything the fabric counts, now."""
    clock = get_time_source()
    now = clock.monotonic_ns()
    h = control.header[0]
    cfg = control.config()
    own = rings is None
    rings = rings or RingReaderMap()
    try:
        workers = []
        for row in range(int(h["n_workers"])):
            w = control.workers[row]
            spec = cfg.workers[row]
            hb = int(w["heartbeat_ns"])
            workers.append(
                WorkerStat(
                    row=row,
                    name=w["name"].decode(),
                    kind=spec.kind,
                    pid=int(w["pid"]),
                    cpus=mask_to_cpus(int(w["cpus_mask"])),
                    state=WorkerState.NAMES.get(int(w["state"]), "?"),
                    restarts=int(w["restarts"]),
                    heartbeat_age_ms=(now - hb) / 1e6 if hb else -1.0,
                    received=int(w["received"]),
                    emitted=int(w["emitted"]),
                    errors=int(w["errors"]),
                    dead_lettered=int(w["dead_lettered"]),
                    deadline_misses=int(w["deadline_misses"]),
                    dropped=int(w["dropped"]),
                    counters={
                        name: int(x)
                        for name, x in zip(KIND_COUNTERS.get(spec.kind, ("c0", "c1", "c2", "c3", "c4")), w["c"])
                        if name
                    },
                )
            )
        ring_stats = []
        arena = None
        for role, _index, name in control.ring_rows():
            if role == RingRole.ARENA:
                arena = rings.arena(name)
                continue
            ring = rings.get(name)
            if ring is None:
                continue
            st = ring.statistics()
            lags = [s.lag_bytes for s in st.subscribers]
            ring_stats.append(
                RingStat(
                    name=name,
                    role=RingRole.NAMES.get(role, str(role)),
                    capacity_bytes=st.capacity_bytes,
                    fill_bytes=st.fill_bytes,
                    fill_ratio=st.fill_bytes / st.capacity_bytes,
                    records_in=st.records_offered,
                    back_pressured=st.back_pressured,
                    recovered_claims=st.recovered_claims,
                    dropped_subscribers=st.dropped_subscribers,
                    max_lag_bytes=max(lags) if lags else 0,
                    subscribers=st.subscribers_joined,
                )
            )
        topics = [
            TopicStat(
                name=t["name"].decode(),
                routed=int(t["routed"]),
                delivered=int(t["delivered"]),
                no_subscriber=int(t["no_subscriber"]),
                filtered=int(t["filtered"]),
                bytes=int(t["bytes"]),
            )
            for t in control.topics
            if int(t["state"]) == RowState.ACTIVE
        ]
        clients = [
            ClientStat(
                row=row,
                pid=int(c["pid"]),
                published=int(c["published"]),
                refused=int(c["refused"]),
                received=int(c["received"]),
                malformed=int(c["malformed"]),
            )
            for row, c in enumerate(control.clients[:MAX_CLIENTS])
            if int(c["state"]) != ClientState.FREE
        ]
        started = int(h["started_ns"])
        return FabricSnapshot(
            name=control.fabric,
            state=FabricState.NAMES.get(control.state, "?"),
            supervisor_pid=int(h["supervisor_pid"]),
            uptime_s=(now - started) / 1e9 if started else 0.0,
            at_ns=now,
            dead_lettered=int(h["dead_lettered"]),
            workers=workers,
            rings=ring_stats,
            topics=topics,
            clients=clients,
            arena=None
            if arena is None
            else ArenaStat(**{f: getattr(arena.statistics(), f) for f in ArenaStat.__struct_fields__}),
        )
    finally:
        if own:
            rings.close()


def rates(before: FabricSnapshot, after: FabricSnapshot) -> dict[str, float]:
    """Per-second rates between two snapshots: ``{"worker:<name>": received/s, "topic:<name>": routed/s, ...}``."""
    dt = (after.at_ns - before.at_ns) / 1e9
    if dt <= 0:
        return {}
    out: dict[str, float] = {}
    prev_w = {w.name: w for w in before.workers}
    for w in after.workers:
        p = prev_w.get(w.name)
        if p is not None and p.pid == w.pid:
            out[f"worker:{w.name}"] = max(0, w.received - p.received) / dt
    prev_t = {t.name: t for t in before.topics}
    for t in after.topics:
        p = prev_t.get(t.name)
        if p is not None:
            out[f"topic:{t.name}"] = max(0, t.routed - p.routed) / dt
    prev_r = {r.name: r for r in before.rings}
    for r in after.rings:
        p = prev_r.get(r.name)
        if p is not None:
            out[f"ring:{r.name}"] = max(0, r.records_in - p.records_in) / dt
    return out
