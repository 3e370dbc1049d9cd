"""``chronofabric``: run a fabric, watch it, attach to it, pin it, check the host, benchmark.

Commands::

    chronofabric up [--name N] [--config topology.toml] [--detach]     start the supervisor
    chronofabric down [--name N]                                       drain, stop, unlink
    chronofabric stat [--name N] [--json] [--once]                     live counters (like AeronStat)
    chronofabric attach --topic T (--produce | --consume) [...]        a demo producer or consumer
    chronofabric pin [--config F]                                      the pinning plan, the cores' state
    chronofabric doctor [--clean] [--yes]                              host checks, stale segments
    chronofabric bench [--quick] [...]                                 throughput/latency vs the peers
    chronofabric simulate --seed N --steps M                           replay a topology deterministically
    chronofabric demo [--seconds S]                                    the whole thing, end to end

The CLI prints (the library never does) and logs through loguru.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time

import msgspec

from fabric.timesource import monotonic_ns, now_ns

__all__ = ["main"]

DEFAULT_NAME = os.environ.get("CHRONOFABRIC_NAME", "chronofabric")


def _mono() -> float:
    """Monotonic seconds, from the time source (the only module that reads a clock)."""
    return monotonic_ns() / 1e9


# --- helpers ------------------------------------------------------------------------------------


def _config(args) -> "TopologyConfig":  # noqa: F821
    from fabric.config import default_topology, load_config

    if getattr(args, "config", None):
        cfg = load_config(args.config)
        if args.name:
            from fabric.config import validate_topology

            cfg = msgspec.structs.replace(cfg, fabric=msgspec.structs.replace(cfg.fabric, name=args.name))
            validate_topology(cfg, source="--name")
        return cfg
    return default_topology(args.name or DEFAULT_NAME)


def _fail(msg: str, code: int = 1) -> int:
    print(f"chronofabric: {msg}", file=sys.stderr)
    return code


def _wait_state(name: str, want: int, timeout_s: float) -> bool:
    from fabric.control import ControlBlock
    from fabric.errors import FabricError

    end = _mono() + timeout_s
    while _mono() < end:
        try:
            cb = ControlBlock.attach(name, timeout_ns=100_000_000)
        except FabricError:
            time.sleep(0.05)
            continue
        try:
            if cb.state == want:
                return True
            if not cb.supervisor_alive():
                return False
        finally:
            cb.close()
        time.sleep(0.05)
    return False


def _fmt_rate(v: float) -> str:
    if v >= 1e6:
        return f"{v / 1e6:.2f}M/s"
    if v >= 1e3:
        return f"{v / 1e3:.1f}k/s"
    return f"{v:.0f}/s"


# --- up / down ----------------------------------------------------------------------------------


def cmd_up(args) -> int:
    from fabric.errors import FabricError
    from fabric.logging import configure_logging

    cfg = _config(args)
    name = cfg.fabric.name
    if args.detach:
        log_file = args.log_file or os.path.join(os.environ.get("TMPDIR", "/tmp"), f"chronofabric-{name}.log")
        cmd = [sys.executable, "-m", "fabric.cli", "up", "--name", name, "--log-level", args.log_level, "--log-file", log_file]
        if args.config:
            cmd += ["--config", args.config]
        with open(log_file, "ab") as log:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        from shm_layouts.control import FabricState

        if not _wait_state(name, FabricState.RUNNING, args.timeout):
            if proc.poll() is None:
                proc.terminate()
            return _fail(f"fabric {name!r} did not start within {args.timeout:.0f} s; see {log_file}")
        print(f"fabric {name!r} running (supervisor pid {proc.pid}); logs in {log_file}")
        return 0
    if args.log_file:
        from loguru import logger

        configure_logging(args.log_level, tag="supervisor")
        logger.add(args.log_file, level=args.log_level.upper())
    else:
        configure_logging(args.log_level, tag="supervisor")
    from fabric.supervisor import Supervisor

    sup = Supervisor(cfg, log_level=args.log_level)

    def _abort_start(*_):
        raise SystemExit(_fail("stopped during start-up", 143))

    previous = signal.signal(signal.SIGTERM, _abort_start)  # start() cleans up on any exception
    try:
        sup.start()
    except FabricError as exc:
        return _fail(str(exc))
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(f"fabric {name!r} running: {len(cfg.workers)} workers; Ctrl-C or `chronofabric down --name {name}` stops it",
          file=sys.stderr)
    sup.run(duration_ns=None if args.duration is None else int(args.duration * 1e9))
    return 0


def cmd_down(args) -> int:
    from fabric.control import ControlBlock, segment_prefix
    from fabric.errors import FabricNotRunningError
    from fabric.segment import list_segments
    from fabric.supervisor import reclaim_stale_fabric

    name = args.name or DEFAULT_NAME
    try:
        cb = ControlBlock.attach(name, timeout_ns=1_000_000_000)
    except FabricNotRunningError:
        left = reclaim_stale_fabric(name)
        if left:
            print(f"fabric {name!r} was not running; removed {len(left)} stale segments")
            return 0
        return _fail(f"no fabric named {name!r} is running")
    pid = cb.supervisor_pid
    alive = cb.supervisor_alive()
    cb.close()
    if not alive:
        left = reclaim_stale_fabric(name)
        print(f"fabric {name!r}: its supervisor was gone; removed {len(left)} stale segments")
        return 0
    os.kill(pid, signal.SIGTERM)
    end = _mono() + args.timeout
    while _mono() < end:
        if not list_segments(segment_prefix(name)):
            print(f"fabric {name!r} stopped; nothing left in /dev/shm")
            return 0
        time.sleep(0.05)
    return _fail(f"fabric {name!r} did not stop within {args.timeout:.0f} s (supervisor pid {pid})")


# --- stat ---------------------------------------------------------------------------------------


def _render(snap, rates: dict) -> str:
    lines = [
        f"fabric {snap.name!r}  state {snap.state}  supervisor pid {snap.supervisor_pid}  uptime {snap.uptime_s:.1f} s  "
        f"dead-lettered {snap.dead_lettered}",
        "",
        f"{'worker':<12} {'kind':<11} {'pid':>7} {'cpus':<7} {'state':<10} {'restarts':>8} {'hb ms':>7} "
        f"{'in/s':>10} {'received':>11} {'emitted':>11} {'misses':>7} {'dropped':>8} {'errors':>6}",
    ]
    for w in snap.workers:
        lines.append(
            f"{w.name:<12} {w.kind:<11} {w.pid:>7} {','.join(map(str, w.cpus)):<7} {w.state:<10} {w.restarts:>8} "
            f"{w.heartbeat_age_ms:>7.0f} {_fmt_rate(rates.get('worker:' + w.name, 0.0)):>10} {w.received:>11} "
            f"{w.emitted:>11} {w.deadline_misses:>7} {w.dropped:>8} {w.errors:>6}  "
            + " ".join(f"{k}={v}" for k, v in w.counters.items() if v)
        )
    lines += ["", f"{'ring':<28} {'role':<12} {'in/s':>10} {'records':>11} {'fill':>6} {'max lag B':>10} "
                  f"{'subs':>4} {'backpr':>8} {'recov':>5}"]
    for r in snap.rings:
        if r.role == "inbox" and r.subscribers == 0 and r.records_in == 0:
            continue
        lines.append(
            f"{r.name:<28} {r.role:<12} {_fmt_rate(rates.get('ring:' + r.name, 0.0)):>10} {r.records_in:>11} "
            f"{r.fill_ratio:>6.1%} {r.max_lag_bytes:>10} {r.subscribers:>4} {r.back_pressured:>8} {r.recovered_claims:>5}"
        )
    lines += ["", f"{'topic':<20} {'routed/s':>10} {'routed':>11} {'delivered':>11} {'no sub':>8} {'filtered':>9}"]
    for t in snap.topics:
        lines.append(
            f"{t.name:<20} {_fmt_rate(rates.get('topic:' + t.name, 0.0)):>10} {t.routed:>11} {t.delivered:>11} "
            f"{t.no_subscriber:>8} {t.filtered:>9}"
        )
    if snap.arena is not None:
        a = snap.arena
        lines += ["", f"blob arena: {a.blobs} blobs, {a.bytes_in_use / 2**20:.1f} of {a.capacity_bytes / 2**20:.0f} MiB in use, "
                      f"{a.allocations} allocated, {a.frees} freed, {a.failures} refused (no room)"]
    if snap.clients:
        lines += ["", f"{'client':<8} {'pid':>7} {'published':>11} {'received':>11} {'refused':>8} {'malformed':>9}"]
        for c in snap.clients:
            lines.append(f"{c.row:<8} {c.pid:>7} {c.published:>11} {c.received:>11} {c.refused:>8} {c.malformed:>9}")
    return "\n".join(lines)


def cmd_stat(args) -> int:
    from fabric.control import ControlBlock
    from fabric.errors import FabricError
    from fabric.stat import RingReaderMap, rates, snapshot

    name = args.name or DEFAULT_NAME
    try:
        cb = ControlBlock.attach(name, timeout_ns=1_000_000_000)
    except FabricError as exc:
        return _fail(str(exc))
    rings = RingReaderMap()
    try:
        if args.once:
            snap = snapshot(cb, rings)
            if args.json:
                print(msgspec.json.encode(snap).decode())
            else:
                print(_render(snap, {}))
            return 0
        prev = snapshot(cb, rings)
        end = None if args.duration is None else _mono() + args.duration
        while end is None or _mono() < end:
            time.sleep(args.interval)
            snap = snapshot(cb, rings)
            if args.json:
                print(msgspec.json.encode(snap).decode(), flush=True)
            else:
                sys.stdout.write("\x1b[H\x1b[2J" if sys.stdout.isatty() else "\n")
                print(_render(snap, rates(prev, snap)), flush=True)
            prev = snap
            if not cb.supervisor_alive():
                return _fail(f"fabric {name!r}: the supervisor is gone")
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        rings.close()
        cb.close()


# --- attach -------------------------------------------------------------------------------------


def cmd_attach(args) -> int:
    import fabric
    from fabric.errors import FabricError

    name = args.name or DEFAULT_NAME
    try:
        client = fabric.attach(name, timeout_ns=int(args.timeout * 1e9))
    except FabricError as exc:
        return _fail(str(exc))
    try:
        if args.produce:
            return _produce(client, args)
        return _consume(client, args)
    except FabricError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return 0
    finally:
        client.close()


def _produce(client, args) -> int:
    payload = b"\x00" * args.payload_size
    interval = 1.0 / args.rate if args.rate else 0.0
    t0 = _mono()
    last = t0
    n = 0
    with client.publisher(args.topic, priority=args.priority) as pub:
        while args.count == 0 or n < args.count:
            pub.publish(payload, timeout_ns=int(args.timeout * 1e9))
            n += 1
            now = _mono()
            if interval:
                ahead = t0 + n * interval - now
                if ahead > 0:
                    time.sleep(ahead)
            if not args.quiet and now - last >= 0.5:
                print(f"\rpublished {n} on {args.topic!r} ({n / (now - t0):,.0f}/s)", end="", file=sys.stderr, flush=True)
                last = now
    dt = _mono() - t0
    print(f"\rpublished {n} on {args.topic!r} in {dt:.2f} s ({n / max(dt, 1e-9):,.0f}/s)", file=sys.stderr)
    if args.json:
        print(json.dumps({"published": n, "seconds": dt}))
    return 0


def _consume(client, args) -> int:
    t0 = _mono()
    last = t0
    n = 0
    with client.subscribe(args.topic) as sub:
        idle_deadline = _mono() + args.idle_timeout
        while args.count == 0 or n < args.count:
            batch = sub.receive_batch(256)
            if not batch:
                if _mono() > idle_deadline:
                    break
                sub._reader.reader.wait_readable(timeout_ns=50_000_000)
                continue
            idle_deadline = _mono() + args.idle_timeout
            n += len(batch)
            now = _mono()
            if not args.quiet and now - last >= 0.5:
                print(f"\rreceived {n} on {args.topic!r} ({n / (now - t0):,.0f}/s)", end="", file=sys.stderr, flush=True)
                last = now
    dt = _mono() - t0
    print(f"\rreceived {n} on {args.topic!r} in {dt:.2f} s", file=sys.stderr)
    if args.json:
        print(json.dumps({"received": n, "seconds": dt}))
    return 0 if (args.count == 0 or n >= args.count) else 2


# --- pin / doctor / bench / demo ----------------------------------------------------------------


def cmd_pin(args) -> int:
    import psutil

    from fabric.pinning import available_cpus, isolated_cpus, plan_pinning

    cfg = _config(args)
    cores = available_cpus()
    plan = plan_pinning(cfg, cores)
    load = psutil.cpu_percent(interval=0.3, percpu=True)
    iso = isolated_cpus()
    print(f"cores available: {cores}   isolated (isolcpus): {iso or 'none'}")
    for c in cores:
        print(f"  core {c}: {load[c] if c < len(load) else 0:5.1f}% busy")
    print(f"\npinning plan for fabric {cfg.fabric.name!r}:")
    for w in cfg.workers:
        crit = " (critical)" if w.critical else ""
        print(f"  {w.name:<12} {w.kind:<11} -> cpus {plan.cpus[w.name]}{crit}")
    for note in plan.notes:
        print(f"  note: {note}")
    if not iso:
        print("\nno isolated cores: pinned workers still share their cores with the rest of the system "
              "(boot with isolcpus=... for real isolation)")
    return 0


def cmd_doctor(args) -> int:
    from fabric.segment import SHM_DIR, list_segments, unlink_segment

    problems = 0
    st = os.statvfs(SHM_DIR)
    free_mib = st.f_bavail * st.f_frsize / 2**20
    size_mib = st.f_blocks * st.f_frsize / 2**20
    ok = free_mib >= 256
    problems += not ok
    print(f"[{'ok' if ok else '!!'}] {SHM_DIR}: {size_mib:,.0f} MiB, {free_mib:,.0f} MiB free (a default fabric needs ~30 MiB)")
    writable = os.access(SHM_DIR, os.W_OK)
    problems += not writable
    print(f"[{'ok' if writable else '!!'}] {SHM_DIR} is {'writable' if writable else 'NOT writable'} by this user")
    n = os.cpu_count() or 1
    print(f"[{'ok' if n >= 2 else '..'}] {n} cores (router and producer want one each; workers share the rest)")
    soft, _hard = resource.getrlimit(resource.RLIMIT_RTPRIO)
    rt = os.geteuid() == 0 or soft > 0
    print(f"[{'ok' if rt else '..'}] real-time priority {'permitted' if rt else 'not permitted (RLIMIT_RTPRIO=0): workers run at normal priority'}")
    # A segment is stale when the process that created it is gone (its header says who): one
    # rule for control blocks, rings and arenas, and no race with a fabric that is starting.
    from fabric._process import is_alive
    from fabric.segment import peek_creator

    stale = []
    by_fabric: dict[str, list[str]] = {}
    for seg in list_segments("cf-"):
        creator = peek_creator(seg)
        if creator is not None and is_alive(*creator):
            continue
        if creator is None and now_ns() / 1e9 - os.stat(os.path.join(SHM_DIR, seg)).st_mtime < 5:
            continue  # being created right now: not stale
        stale.append(seg)
        m = re.match(r"^cf-(.+?)-(control|router-in|scheduler-in|dead-letter|arena|inbox-\d+)$", seg)
        by_fabric.setdefault(m.group(1) if m else "?", []).append(seg)
    for fab, segs in sorted(by_fabric.items()):
        print(f"[!!] {len(segs)} stale segments of fabric {fab!r} (their creator is gone)")
    if not stale:
        print("[ok] no stale segments")
        return 1 if problems else 0
    if not args.clean:
        print(f"\n{len(stale)} stale segments; `chronofabric doctor --clean` removes them")
        return 1
    if not args.yes and sys.stdin.isatty():
        if input(f"remove {len(stale)} stale segments? [y/N] ").strip().lower() != "y":
            return 1
    removed = sum(unlink_segment(s) for s in stale)
    print(f"removed {removed} stale segments")
    return 0


def cmd_simulate(args) -> int:
    from fabric.simulation import FaultPlan, simulate

    faults = FaultPlan() if not args.no_faults else FaultPlan(delay=0.0, crash=0.0, dropped_wakeup=0.0)
    result = simulate(args.seed, args.steps, faults=faults)
    if args.json:
        print(msgspec.json.encode(result).decode())
        return 0
    print(f"seed {result.seed}: {result.steps} steps, {result.simulated_ns / 1e6:.1f} ms simulated, "
          f"{result.published} published, {result.delivered} delivered")
    print(f"faults injected: {result.faults}")
    for name, c in result.counters.items():
        print(f"  {name:<10} received {c[0]}, emitted {c[1]}, deadline misses {c[2]}, dropped {c[3]}")
    print(f"trace hash {result.trace_hash}")
    return 0


def cmd_bench(args, extra: list[str]) -> int:
    return subprocess.call([sys.executable, "-m", "bench", *extra])


def cmd_demo(args) -> int:
    """The README's main job: fabric up, a producer and a subscriber, live stats, a clean stop."""
    from fabric.control import ControlBlock
    from fabric.errors import FabricError
    from fabric.logging import configure_logging
    from fabric.stat import RingReaderMap, rates, snapshot
    from fabric.supervisor import Supervisor

    configure_logging(args.log_level, tag="supervisor")
    cfg = _config(args)
    name = cfg.fabric.name
    sup = Supervisor(cfg, log_level=args.log_level)
    try:
        sup.start()
    except FabricError as exc:
        return _fail(str(exc))
    procs = []
    cb = None
    rings = RingReaderMap()
    code = 0
    try:
        base = [sys.executable, "-m", "fabric.cli", "attach", "--name", name, "--topic", "demo", "--quiet", "--json"]
        consumer = subprocess.Popen(base + ["--consume", "--count", str(args.count), "--idle-timeout", "10"],
                                    stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        procs.append(consumer)
        time.sleep(1.0)  # let the subscriber register before the producer starts
        producer = subprocess.Popen(base + ["--produce", "--count", str(args.count), "--rate", str(args.rate)],
                                    stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        procs.append(producer)
        cb = ControlBlock.attach(name)
        prev = snapshot(cb, rings)
        end = _mono() + args.seconds
        while _mono() < end:
            for _ in range(int(args.interval / 0.02)):
                sup.tick()
                time.sleep(0.02)
            snap = snapshot(cb, rings)
            print("\n" + _render(snap, rates(prev, snap)), flush=True)
            prev = snap
            if consumer.poll() is not None and producer.poll() is not None:
                break
        out_p = producer.communicate(timeout=30)[0]
        out_c = consumer.communicate(timeout=30)[0]
        pub = json.loads(out_p or b"{}")
        rec = json.loads(out_c or b"{}")
        print(f"\ndemo: published {pub.get('published', 0)}, received {rec.get('received', 0)} "
              f"({rec.get('received', 0) / max(rec.get('seconds', 1e-9), 1e-9):,.0f}/s at the subscriber)")
        if rec.get("received") != args.count:
            code = 2
    except subprocess.TimeoutExpired:
        code = _fail("demo producer/consumer did not finish in time")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=5)
        rings.close()
        if cb is not None:
            cb.close()
        sup.shutdown()
    from fabric.control import segment_prefix
    from fabric.segment import list_segments

    left = list_segments(segment_prefix(name))
    print(f"demo: fabric stopped; {len(left)} segments left in /dev/shm")
    return code or (1 if left else 0)


# --- main ---------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="chronofabric", description="ChronoFabric: shared-memory messaging for real-time Python")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp, config=True):
        sp.add_argument("--name", default=None, help=f"fabric name (default {DEFAULT_NAME!r})")
        if config:
            sp.add_argument("--config", default=None, help="topology TOML file (default: the embedded topology)")
        sp.add_argument("--log-level", default=os.environ.get("CHRONOFABRIC_LOG", "INFO"))

    up = sub.add_parser("up", help="start the supervisor")
    common(up)
    up.add_argument("--detach", action="store_true", help="run in the background and return once it runs")
    up.add_argument("--log-file", default=None)
    up.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    up.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for a detached start")

    down = sub.add_parser("down", help="drain, stop, unlink every segment")
    common(down, config=False)
    down.add_argument("--timeout", type=float, default=30.0)

    st = sub.add_parser("stat", help="live counters")
    common(st, config=False)
    st.add_argument("--json", action="store_true")
    st.add_argument("--once", action="store_true")
    st.add_argument("--interval", type=float, default=1.0)
    st.add_argument("--duration", type=float, default=None)

    at = sub.add_parser("attach", help="a demo producer or consumer")
    common(at, config=False)
    at.add_argument("--topic", default="demo")
    role = at.add_mutually_exclusive_group(required=True)
    role.add_argument("--produce", action="store_true")
    role.add_argument("--consume", action="store_true")
    at.add_argument("--rate", type=float, default=0.0, help="packets per second (0: as fast as possible)")
    at.add_argument("--count", type=int, default=0, help="stop after this many (0: forever)")
    at.add_argument("--payload-size", type=int, default=32)
    at.add_argument("--priority", type=int, default=0)
    at.add_argument("--timeout", type=float, default=10.0)
    at.add_argument("--idle-timeout", type=float, default=3600.0, help="consumer: stop after this long with nothing")
    at.add_argument("--quiet", action="store_true")
    at.add_argument("--json", action="store_true", help="print a JSON summary on stdout at the end")

    pin = sub.add_parser("pin", help="the pinning plan and the cores' state")
    common(pin)

    doc = sub.add_parser("doctor", help="check the host; find and clean stale segments")
    doc.add_argument("--clean", action="store_true")
    doc.add_argument("--yes", action="store_true")

    sub.add_parser("bench", help="throughput and latency beside the peers (args go to `python -m bench`)")

    sim = sub.add_parser("simulate", help="deterministic simulation of a topology: same seed, same trace hash")
    sim.add_argument("--seed", type=int, required=True)
    sim.add_argument("--steps", type=int, default=100_000)
    sim.add_argument("--no-faults", action="store_true", help="no injected delays, crashes or dropped wake-ups")
    sim.add_argument("--json", action="store_true")

    demo = sub.add_parser("demo", help="fabric up, a producer and a subscriber, live stats, clean stop")
    common(demo)
    demo.add_argument("--seconds", type=float, default=15.0)
    demo.add_argument("--interval", type=float, default=2.0)
    demo.add_argument("--count", type=int, default=200_000)
    demo.add_argument("--rate", type=float, default=0.0)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        return cmd_bench(None, argv[1:])
    args = _parser().parse_args(argv)
    handlers = {"up": cmd_up, "down": cmd_down, "stat": cmd_stat, "attach": cmd_attach, "pin": cmd_pin,
                "doctor": cmd_doctor, "demo": cmd_demo, "simulate": cmd_simulate}
    if args.command in ("attach", "stat", "down", "pin", "doctor"):
        from fabric.logging import configure_logging

        configure_logging(getattr(args, "log_level", None) or "WARNING", tag=args.command)
    from fabric.errors import FabricError

    try:
        return handlers[args.command](args)
    except FabricError as exc:  # the CLI's last line: a clear message, not a traceback
        return _fail(str(exc))


if __name__ == "__main__":
    sys.exit(main())
