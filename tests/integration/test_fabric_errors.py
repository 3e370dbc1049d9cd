"""Errors a user meets, from Python and from the CLI: each says what is wrong and what to do."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time

import pytest

import fabric
from fabric.config import default_topology, load_config
from fabric.control import control_segment_name
from fabric.errors import (
    ConfigError,
    FabricAlreadyRunningError,
    FabricError,
    FabricNotRunningError,
    UnknownTopicError,
    VersionMismatchError,
)
from fabric.segment import Segment, unlink_segment
from fabric.supervisor import Supervisor
from shm_layouts.control import CONTROL_BYTES
from shm_layouts.header import LAYOUT_VERSION_MAJOR, VERSION_WORD, SegmentKind
from tests.fabric_helpers import (
    REPO_ROOT,
    FabricUp,
    child_env,
    cli,
    cli_argv,
    fabric_name,
    segments,
    stat_snapshot,
    stop_stray_up,
    wait_pids_gone,
)

GOOD_WORKERS = '[[workers]]\nname = "router"\nkind = "router"\ncritical = true\n'

# (case id, TOML text, the field the message must name, a fragment of the reason)
BAD_CONFIGS = [
    (
        "wrong-type",
        '[[topics]]\nname = "demo"\n\n[[workers]]\nname = "router"\nkind = "router"\ncpus = ["1"]\n',
        "workers[0].cpus[0]",
        "Expected `int`, got `str`",
    ),
    (
        "wrong-type-fabric",
        '[fabric]\ninbox_pool = "many"\n\n' + GOOD_WORKERS,
        "fabric.inbox_pool",
        "Expected `int`, got `str`",
    ),
    (
        "unknown-kind",
        GOOD_WORKERS + '\n[[workers]]\nname = "w1"\nkind = "teleporter"\n',
        "workers[1].kind",
        "unknown kind 'teleporter'",
    ),
    (
        "undeclared-topic",
        '[[topics]]\nname = "demo"\n\n[[workers]]\nname = "router"\nkind = "router"\nsubscribe = ["nope"]\n',
        "workers[0].subscribe[0]",
        "topic 'nope' is not declared",
    ),
    (
        "two-routers",
        GOOD_WORKERS + '\n[[workers]]\nname = "router2"\nkind = "router"\n',
        "workers",
        "exactly one worker of kind 'router', found 2",
    ),
    (
        "unknown-field",
        '[fabric]\ninbox_pol = 8\n\n' + GOOD_WORKERS,
        "fabric",
        "unknown field `inbox_pol`",
    ),
]


@pytest.mark.parametrize("case,text,field,reason", BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config_names_the_field_from_python_and_from_up(case, text, field, reason, tmp_path, prefix):
    path = tmp_path / f"{case}.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: {field}: "), msg
    assert reason in msg, msg
    # The CLI: a non-zero exit, the same message on stderr, no traceback, and nothing created.
    name = fabric_name(prefix)
    r = cli("up", "--name", name, "--config", str(path), timeout_s=300)
    err = r.stderr.decode()
    assert r.returncode != 0
    assert f"{field}: " in err and reason in err, err
    assert "Traceback" not in err, err
    assert segments(name) == []


def test_config_file_missing_or_not_toml(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "absent.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[fabric\nname = 1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    r = cli("up", "--config", str(tmp_path / "absent.toml"), "--name", "tnever", timeout_s=300)
    assert r.returncode != 0 and "no such file" in r.stderr.decode()


def test_up_name_override_is_validated_like_the_file(tmp_path, prefix):
    """`up --config F --name N` must apply the fabric-name rule to N (1-31 letters, digits, '_' or '-')."""
    path = tmp_path / "ok.toml"
    path.write_text('[[topics]]\nname = "demo"\n\n' + GOOD_WORKERS, encoding="utf-8")
    long_name = fabric_name(prefix) + "x" * 40  # valid characters, too long
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(cli_argv("up", "--config", str(path), "--name", long_name), cwd=REPO_ROOT, env=child_env(),
                            stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        # Either `up` exits (refused) or the control segment of the over-long name appears (the bug).
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline and not segments(long_name):
            time.sleep(0.1)
        started = proc.poll() is None
        assert not started, f"`up --name <{len(long_name)} chars>` started a fabric instead of refusing the name"
        log.seek(0)
        err = log.read().decode()
        assert proc.returncode != 0
        assert "fabric.name" in err, err
    finally:
        stop_stray_up(proc, long_name)
        log.close()


def test_attach_to_a_missing_fabric(prefix):
    name = fabric_name(prefix, "m")
    with pytest.raises(FabricNotRunningError) as info:
        fabric.attach(name, timeout_ns=500_000_000)
    msg = str(info.value)
    assert repr(name) in msg and f"chronofabric up --name {name}" in msg, msg
    r = cli("stat", "--name", name, "--once", "--json")
    assert r.returncode != 0 and f"no fabric named {name!r}" in r.stderr.decode()
    r = cli("down", "--name", name)
    assert r.returncode != 0 and f"no fabric named {name!r}" in r.stderr.decode()


@pytest.mark.timeout(600)
def test_unknown_topic_and_second_up_while_running(prefix):
    name = fabric_name(prefix)
    up = FabricUp(name)
    try:
        with fabric.attach(name) as fab:
            with pytest.raises(UnknownTopicError) as info:
                fab.publisher("nope")
            msg = str(info.value)
            assert msg.startswith(f"fabric {name!r} has no topic 'nope'"), msg
            assert "known: " in msg and "demo" in msg, msg
            assert "[[topics]]" in msg and "declare_topic" in msg, msg
            assert isinstance(info.value, KeyError)  # dict-like lookups can catch it
            with pytest.raises(UnknownTopicError, match="no topic 'nope'"):
                fab.subscribe(["demo", "nope"])
            fab.declare_topic("nope")  # the remedy the message names works
            with fab.publisher("nope") as pub:
                pub.publish(1)

        # A second supervisor of the same name refuses, from Python ...
        with pytest.raises(FabricAlreadyRunningError) as info:
            Supervisor(default_topology(name), log_level="ERROR").start()
        msg = str(info.value)
        assert "already running" in msg and str(up.pid) in msg and f"chronofabric down --name {name}" in msg, msg
        # ... and from the CLI, with a non-zero exit and the same advice.
        r = cli("up", "--name", name, timeout_s=300)
        assert r.returncode != 0
        err = r.stderr.decode()
        assert "already running" in err and f"chronofabric down --name {name}" in err and "Traceback" not in err, err
        # The refusals touched nothing: the first fabric still runs and routes.
        snap = stat_snapshot(name)
        assert snap.supervisor_pid == up.pid and snap.state == "running"
        with fabric.attach(name) as fab:
            with fab.subscribe("demo") as sub, fab.publisher("demo") as pub:
                pub.publish("still here")
                assert sub.receive(timeout_ns=30_000_000_000).payload == "still here"
        assert up.stop() == 0
        assert segments(name) == []
    finally:
        up.kill()
    assert segments(name) == []


def _lines_about(out: str, name: str) -> list[str]:
    return [line for line in out.splitlines() if repr(name) in line or f"cf-{name}-" in line]


@pytest.mark.timeout(600)
def test_doctor_reports_and_cleans_a_crashed_fabric(prefix):
    name = fabric_name(prefix)
    up = FabricUp(name)
    try:
        snap = stat_snapshot(name)
        up.remember_workers(snap)
        r = cli("doctor")
        out = r.stdout.decode()
        assert "[ok]" in out and not any("stale" in line for line in _lines_about(out, name)), out
        os.kill(up.pid, signal.SIGKILL)
        up.proc.wait(timeout=10)
        assert wait_pids_gone([w.pid for w in snap.workers], 15) == []
        left = segments(name)
        assert left, "a SIGKILLed supervisor cleans nothing up"
        r = cli("doctor")
        out = r.stdout.decode()
        assert r.returncode != 0, out
        about = [line for line in _lines_about(out, name) if "[!!]" in line and "stale" in line]
        assert about, f"doctor does not report fabric {name!r} as stale:\n{out}"
        assert str(len(left)) in about[0], (about, left)
        assert "chronofabric doctor --clean" in out, out
        assert segments(name) == left  # doctor without --clean removes nothing
        r = cli("doctor", "--clean", "--yes")
        out = r.stdout.decode()
        assert r.returncode == 0, out + r.stderr.decode()
        assert "removed" in out and "stale segments" in out, out
        assert segments(name) == []
    finally:
        up.kill()
    assert segments(name) == []


def _craft_control(name: str, major: int) -> Segment:
    seg = Segment.create(control_segment_name(name), CONTROL_BYTES, SegmentKind.CONTROL, mark_ready=False)
    seg.words[VERSION_WORD] = (major << 16) | 3
    seg.mark_ready()
    return seg


def test_attach_to_another_layout_version(prefix):
    name = fabric_name(prefix)
    other = LAYOUT_VERSION_MAJOR + 1
    seg = _craft_control(name, other)
    try:
        with pytest.raises(VersionMismatchError) as info:
            fabric.attach(name, timeout_ns=1_000_000_000)
        msg = str(info.value)
        assert f"layout version {other}.3" in msg and f"speaks {LAYOUT_VERSION_MAJOR}." in msg, msg
        assert "run the same chronofabric version on both sides" in msg and "restart the fabric" in msg, msg
        r = cli("stat", "--name", name, "--once", "--json")
        assert r.returncode != 0 and "layout version" in r.stderr.decode() and "Traceback" not in r.stderr.decode()
    finally:
        seg.close()
        unlink_segment(seg.name)
    assert segments(name) == []


@pytest.mark.timeout(600)
def test_up_does_not_unlink_a_live_fabric_of_another_layout_version(prefix):
    """A control segment of another layout version whose creator (this process) is alive is not stale:
    `chronofabric up` with that name must refuse, not unlink it and start over it."""
    name = fabric_name(prefix)
    seg = _craft_control(name, LAYOUT_VERSION_MAJOR + 1)
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(cli_argv("up", "--name", name, "--log-level", "WARNING"), cwd=REPO_ROOT, env=child_env(),
                            stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        # Either `up` exits (refused) or a fabric of this name comes up over ours (the bug).
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline and _is_our_segment(seg):
            time.sleep(0.1)
        refused = proc.poll() is not None and proc.returncode != 0
        still_there = _is_our_segment(seg)
        log.seek(0)
        err = log.read()
        assert refused and still_there, (
            "`chronofabric up` unlinked the control segment of a live fabric of another layout version "
            f"and {'started its own' if not refused else 'failed'} (exit {proc.poll()})"
        )
        assert "version" in err.decode(), err.decode()
    finally:
        stop_stray_up(proc, name)
        log.close()
        seg.close()
        for s in segments(name):
            unlink_segment(s)
    assert segments(name) == []


def _is_our_segment(seg: Segment) -> bool:
    """True if /dev/shm/<name> is still the segment we created (not a new one of the same name)."""
    if not os.path.exists(f"/dev/shm/{seg.name}"):
        return False
    try:
        other = Segment.attach(seg.name, timeout_ns=200_000_000)
    except VersionMismatchError:
        return True  # another version: only ours could be
    except FabricError:
        return False
    try:
        return int(other.words[VERSION_WORD]) == int(seg.words[VERSION_WORD])
    finally:
        other.close()

