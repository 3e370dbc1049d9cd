"""The ``chronofabric`` command: pin, doctor, stat, attach, up --detach / down, demo."""

from __future__ import annotations

import json
import re
import subprocess

import msgspec
import psutil
import pytest

from fabric.config import default_topology
from fabric.control import ControlBlock
from fabric.pinning import available_cpus, plan_pinning
from fabric.stat import FabricSnapshot
from tests.fabric_helpers import (
    REPO_ROOT,
    FabricUp,
    child_env,
    cli,
    cli_argv,
    fabric_name,
    kill_pids,
    pid_gone,
    ring_stat,
    segments,
    stat_snapshot,
    topic_stat,
    wait_pids_gone,
    wait_until,
)


def test_pin_shows_the_plan_for_the_default_topology(prefix):
    name = fabric_name(prefix)
    r = cli("pin", "--name", name)
    out = r.stdout.decode()
    assert r.returncode == 0, r.stderr.decode()
    cores = available_cpus()
    assert f"cores available: {cores}" in out
    for c in cores:
        assert re.search(rf"core {c}: +\d+\.\d% busy", out), out
    assert f"pinning plan for fabric {name!r}:" in out
    cfg = default_topology(name)
    plan = plan_pinning(cfg, cores)
    for w in cfg.workers:
        assert re.search(rf"{re.escape(w.name)} +{re.escape(w.kind)} +-> cpus {re.escape(str(plan.cpus[w.name]))}"
                         + (r" \(critical\)" if w.critical else r"$"), out, re.M), (w.name, out)
    for note in plan.notes:
        assert f"note: {note}" in out


def test_pin_with_a_config_honours_explicit_cpus_and_refuses_missing_ones(tmp_path):
    ok = tmp_path / "ok.toml"
    ok.write_text('[fabric]\nname = "pinned"\n\n[[workers]]\nname = "router"\nkind = "router"\ncpus = [0]\ncritical = true\n',
                  encoding="utf-8")
    r = cli("pin", "--config", str(ok))
    assert r.returncode == 0, r.stderr.decode()
    assert re.search(r"router +router +-> cpus \[0\] \(critical\)", r.stdout.decode()), r.stdout.decode()
    missing = max(available_cpus()) + 1
    bad = tmp_path / "bad.toml"
    bad.write_text(f'[[workers]]\nname = "router"\nkind = "router"\ncpus = [{missing}]\n', encoding="utf-8")
    r = cli("pin", "--config", str(bad))
    err = r.stderr.decode()
    assert r.returncode != 0 and f"cpus [{missing}] are not available here" in err and "Traceback" not in err, err


def test_doctor_checks_the_host():
    r = cli("doctor")
    out = r.stdout.decode()
    assert r.returncode in (0, 1), r.stderr.decode()  # 1 when something (maybe someone else's) is stale
    assert re.search(r"^\[(ok|!!)\] /dev/shm: [\d,]+ MiB, [\d,]+ MiB free", out, re.M), out
    assert "[ok] /dev/shm is writable by this user" in out
    assert re.search(r"^\[(ok|\.\.)\] \d+ cores", out, re.M) and "real-time priority" in out
    assert "stale segments" in out


@pytest.mark.timeout(600)
def test_stat_and_attach_against_a_running_fabric(prefix):
    name = fabric_name(prefix)
    up = FabricUp(name)
    consumer = producer = None
    try:
        # stat --json --once decodes into the library's own snapshot type.
        r = cli("stat", "--name", name, "--json", "--once")
        assert r.returncode == 0, r.stderr.decode()
        snap = msgspec.json.decode(r.stdout.strip(), type=FabricSnapshot)
        up.remember_workers(snap)
        cfg = default_topology(name)
        assert snap.name == name and snap.state == "running" and snap.supervisor_pid == up.pid
        assert [w.name for w in snap.workers] == [w.name for w in cfg.workers]
        assert all(w.state == "running" and w.restarts == 0 and psutil.pid_exists(w.pid) for w in snap.workers)
        assert [w.cpus for w in snap.workers] == [plan_pinning(cfg).cpus[w.name] for w in cfg.workers]
        roles = sorted({r_.role for r_ in snap.rings})
        assert {"router-in", "dead-letter", "inbox"} <= set(roles), roles
        assert sum(1 for r_ in snap.rings if r_.role == "inbox") == cfg.fabric.inbox_pool
        assert set(cfg.topic_names()) <= {t.name for t in snap.topics}
        assert snap.clients == []
        # The text form renders the same fabric.
        r = cli("stat", "--name", name, "--once")
        assert r.returncode == 0 and f"fabric {name!r}" in r.stdout.decode() and "router" in r.stdout.decode()

        # attach --consume, then attach --produce: the counts come back as JSON.
        n = 5000
        consumer = subprocess.Popen(
            cli_argv("attach", "--name", name, "--topic", "demo", "--consume", "--count", str(n), "--json", "--quiet",
                     "--idle-timeout", "120"),
            cwd=REPO_ROOT, env=child_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        demo_id = None
        with ControlBlock.attach(name) as cb:
            demo_id = int(cb.topics[cb.topic_row("demo")]["topic_id"])
            wait_until(lambda: any(int(s["topic_id"]) == demo_id for s in cb.active_subscriptions()), 60,
                       "the consumer to subscribe to demo")
        producer = subprocess.run(
            cli_argv("attach", "--name", name, "--topic", "demo", "--produce", "--count", str(n), "--json", "--quiet"),
            cwd=REPO_ROOT, env=child_env(), stdin=subprocess.DEVNULL, capture_output=True, timeout=120,
        )
        assert producer.returncode == 0, producer.stderr.decode()
        pub = json.loads(producer.stdout.decode().strip().splitlines()[-1])
        assert pub["published"] == n and pub["seconds"] >= 0
        out, err = consumer.communicate(timeout=120)
        assert consumer.returncode == 0, err.decode()
        rec = json.loads(out.decode().strip().splitlines()[-1])
        assert rec["received"] == n

        def routed():
            s = stat_snapshot(name)
            return topic_stat(s, "demo").routed >= n and s

        snap = wait_until(routed, 60, "the router's counters to reach the produced count", interval_s=0.2)
        demo = topic_stat(snap, "demo")
        assert (demo.routed, demo.delivered, demo.no_subscriber) == (n, n, 0)
        assert ring_stat(snap, "router-in").records_in >= n
        assert snap.clients == []  # both detached: their rows went back
        assert up.stop() == 0
        assert segments(name) == []
    finally:
        for p in (consumer,):
            if p is not None and p.poll() is None:
                p.kill()
                p.communicate(timeout=10)
        up.kill()
    assert segments(name) == []


@pytest.mark.timeout(600)
def test_up_detach_then_down(prefix, tmp_path):
    name = fabric_name(prefix)
    log = tmp_path / "fabric.log"
    sup_pid = None
    workers: list[int] = []
    try:
        r = cli("up", "--name", name, "--detach", "--timeout", "300", "--log-file", str(log), "--log-level", "INFO", timeout_s=400)
        out = r.stdout.decode()
        assert r.returncode == 0, r.stderr.decode() + out
        m = re.search(r"fabric '([^']+)' running \(supervisor pid (\d+)\); logs in (.+)$", out.strip(), re.M)
        assert m and m.group(1) == name and m.group(3) == str(log), out
        sup_pid = int(m.group(2))
        # `up --detach` returned: the supervisor is not its child any more (nor ours), and it runs.
        assert not pid_gone(sup_pid)
        snap = stat_snapshot(name)
        workers = [w.pid for w in snap.workers]
        assert snap.supervisor_pid == sup_pid and snap.state == "running"
        assert "running" in log.read_text()
        r = cli("down", "--name", name, "--timeout", "120", timeout_s=180)
        assert r.returncode == 0, r.stderr.decode()
        assert r.stdout.decode().strip() == f"fabric {name!r} stopped; nothing left in /dev/shm"
        assert wait_pids_gone([sup_pid, *workers], 30) == []
        assert segments(name) == []
        # A second down finds nothing to stop.
        r = cli("down", "--name", name)
        assert r.returncode != 0 and f"no fabric named {name!r}" in r.stderr.decode()
    finally:
        if sup_pid is not None and not pid_gone(sup_pid):
            kill_pids([sup_pid])
        kill_pids(wait_pids_gone(workers, 5))
        wait_pids_gone([p for p in [sup_pid, *workers] if p], 10)
        from fabric.segment import unlink_segment

        for s in segments(name):
            unlink_segment(s)
    assert segments(name) == []


@pytest.mark.timeout(600)
def test_readme_demo_runs_and_leaves_dev_shm_clean(prefix):
    name = fabric_name(prefix)
    try:
        r = cli("demo", "--name", name, "--seconds", "5", "--count", "20000", "--log-level", "WARNING", timeout_s=400)
        out = r.stdout.decode()
        assert r.returncode == 0, out[-3000:] + r.stderr.decode()[-3000:]
        m = re.search(r"demo: published (\d+), received (\d+)", out)
        assert m and m.groups() == ("20000", "20000"), out[-2000:]
        assert "demo: fabric stopped; 0 segments left in /dev/shm" in out
        assert f"fabric {name!r}" in out  # at least one live stats table was printed
    finally:
        from fabric.segment import unlink_segment

        leftover = segments(name)
        for s in leftover:
            unlink_segment(s)
    assert leftover == []

