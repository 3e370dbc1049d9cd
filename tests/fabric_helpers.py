"""Parent-side helpers for the fabric integration tests (test-only).

- ``fabric_name(prefix)``: a unique, valid fabric name for one test.
- ``Peer``: one child process (``python -m tests.fabric_peers ...`` or the CLI) with a
  line reader on stdout; every read has a deadline, ``stop()`` kills and reaps.
- ``FabricUp``: ``chronofabric up --name N`` as a subprocess; ``stop()`` sends SIGTERM
  and waits (with a deadline), then checks that /dev/shm holds none of its segments.
- ``cli(...)``: run one ``chronofabric`` command to completion (with a timeout).
- ``stat_snapshot(name)``: ``chronofabric stat --name N --json --once`` decoded into
  ``fabric.stat.FabricSnapshot``.
- ``wait_until(predicate, timeout_s, what)``: poll with a deadline.
- ``wait_pids_gone(pids, timeout_s)``: wait (psutil) until processes that are not our
  children have exited.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import msgspec
import psutil

REPO_ROOT = Path(__file__).resolve().parents[1]
CHRONOFABRIC = str(Path(sys.executable).with_name("chronofabric"))
# Deadlines for a fresh interpreter to attach (imports, numba cache loads -- or recompiles after a
# kernel edit -- on a busy 2-core host). Generous on purpose: they bound a hang, they measure nothing.
START_S = 180.0


def fabric_name(prefix: str, tag: str = "") -> str:
    """``cft-3f9a1c`` -> ``t3f9a1c`` (+ tag): 1-31 letters, digits, '_' or '-'."""
    name = prefix.replace("cft-", "t").replace("cf", "t") + tag
    assert len(name) <= 31, name
    return name


def cli_argv(*args: str) -> list[str]:
    """The ``chronofabric`` console script (the README's entry point) with ``args``."""
    if os.path.exists(CHRONOFABRIC):
        return [CHRONOFABRIC, *args]
    return [sys.executable, "-m", "fabric.cli", *args]


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("CHRONOFABRIC_LOG", "WARNING")
    env.update(extra)
    return env


def segments(name: str) -> list[str]:
    """The fabric's segments in /dev/shm now."""
    from fabric.control import segment_prefix
    from fabric.segment import list_segments

    return list_segments(segment_prefix(name))


def wait_until(predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last_exc: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except AssertionError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported if the deadline passes
            last_exc = exc
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}" + (f" (last error: {last_exc!r})" if last_exc else ""))
        time.sleep(interval_s)


def pid_gone(pid: int) -> bool:
    try:
        p = psutil.Process(pid)
        return p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_pids_gone(pids: Iterable[int], timeout_s: float) -> list[int]:
    """Wait until every pid has exited (or is a zombie); returns the ones still alive at the deadline."""
    pids = list(pids)
    deadline = time.monotonic() + timeout_s
    while True:
        alive = [p for p in pids if not pid_gone(p)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.05)


def kill_pids(pids: Iterable[int]) -> None:
    """SIGKILL processes we know by pid (workers of a supervisor that is not our child)."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


class Peer:
    """One child process with a line reader on its stdout; stdin is a pipe for GO/EXIT."""

    def __init__(self, argv: list[str], *, stdin: bool = True) -> None:
        self.argv = argv
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            env=child_env(),
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )
        self.pid = self.proc.pid
        self._buf = b""
        self.lines: list[str] = []
        self._eof = False

    @classmethod
    def producer(cls, name: str, k: int, topics: list[str], count: int, **opts: Any) -> "Peer":
        argv = [sys.executable, "-m", "tests.fabric_peers", "producer", "--name", name, "--k", str(k),
                "--topics", ",".join(topics), "--count", str(count)]
        for key, value in opts.items():
            argv += [f"--{key.replace('_', '-')}", str(value)]
        return cls(argv)

    @classmethod
    def subscriber(cls, name: str, topics: list[str], plan: list[dict], *, at_least_once: bool = False,
                   **opts: Any) -> "Peer":
        argv = [sys.executable, "-m", "tests.fabric_peers", "subscriber", "--name", name,
                "--topics", ",".join(topics), "--plan", json.dumps(plan)]
        if at_least_once:
            argv.append("--at-least-once")
        for key, value in opts.items():
            argv += [f"--{key.replace('_', '-')}", str(value)]
        return cls(argv)

    def _read_some(self, timeout_s: float) -> None:
        if self._eof:
            time.sleep(min(timeout_s, 0.05))
            return
        fd = self.proc.stdout.fileno()
        ready, _, _ = select.select([fd], [], [], max(0.0, timeout_s))
        if not ready:
            return
        chunk = os.read(fd, 65536)
        if not chunk:
            self._eof = True
            return
        self._buf += chunk
        while b"\n" in self._buf:
            line, self._buf = self._buf.split(b"\n", 1)
            self.lines.append(line.decode("utf-8", "replace"))

    def wait_line(self, tag: str, timeout_s: float) -> str:
        """The first unread line starting with ``tag`` (rest of the line); fails after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            for idx, line in enumerate(self.lines):
                if line.startswith(tag):
                    self.lines.pop(idx)
                    return line[len(tag):].strip()
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (self._eof and self.proc.poll() is not None):
                raise AssertionError(
                    f"child {self.pid} ({' '.join(self.argv[2:6])}) printed no {tag!r} line within {timeout_s} s "
                    f"(exit code {self.proc.poll()}); stdout tail: {self.lines[-10:]}\nstderr tail: {self.stderr()[-3000:]}"
                )
            self._read_some(min(remaining, 0.2))

    def wait_json(self, tag: str, timeout_s: float) -> dict:
        return json.loads(self.wait_line(tag, timeout_s))

    def send(self, line: str) -> None:
        if self.proc.stdin is None or self.proc.poll() is not None:
            return
        try:
            self.proc.stdin.write(line.encode() + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", "replace")

    def wait_exit(self, timeout_s: float) -> int:
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"child {self.pid} did not exit within {timeout_s} s; stderr: {self.stderr()[-3000:]}") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def stop(self) -> None:
        """Kill (if still running) and reap; close the pipes. Idempotent."""
        self.kill()
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass
        if not self._stderr.closed:
            self._stderr.close()


def cli(*args: str, timeout_s: float = 180.0, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    """Run ``chronofabric args...`` to completion (fails the test after ``timeout_s``)."""
    return subprocess.run(
        cli_argv(*args),
        cwd=REPO_ROOT,
        env=child_env(),
        input=stdin if stdin is not None else b"",
        capture_output=True,
        timeout=timeout_s,
        check=False,
    )


def stat_snapshot(name: str, timeout_s: float = 180.0):
    """``chronofabric stat --name N --json --once`` as a ``FabricSnapshot``."""
    from fabric.stat import FabricSnapshot

    r = cli("stat", "--name", name, "--json", "--once", timeout_s=timeout_s)
    assert r.returncode == 0, f"stat failed ({r.returncode}): {r.stderr.decode()[-2000:]}"
    return msgspec.json.decode(r.stdout.strip().splitlines()[-1], type=FabricSnapshot)


def control_snapshot(name: str):
    """A ``FabricSnapshot`` read in this process (cheap, for polling progress)."""
    from fabric.control import ControlBlock
    from fabric.stat import snapshot

    with ControlBlock.attach(name, timeout_ns=1_000_000_000) as cb:
        return snapshot(cb)


def topic_stat(snap, topic: str):
    for t in snap.topics:
        if t.name == topic:
            return t
    raise AssertionError(f"topic {topic!r} not in stat: {[t.name for t in snap.topics]}")


def client_by_pid(snap, pid: int):
    for c in snap.clients:
        if c.pid == pid:
            return c
    return None


def worker_stat(snap, name: str = "router"):
    for w in snap.workers:
        if w.name == name:
            return w
    raise AssertionError(f"worker {name!r} not in stat")


def ring_stat(snap, role: str, name_suffix: str | None = None):
    for r in snap.rings:
        if r.role == role and (name_suffix is None or r.name.endswith(name_suffix)):
            return r
    raise AssertionError(f"no ring of role {role!r} in stat")


def write_topology(path: Path, name: str, topics: list[str], extra_fabric: str = "", workers: str | None = None) -> Path:
    """A topology TOML with the router and ``topics``."""
    lines = ["[fabric]", f'name = "{name}"', extra_fabric, ""]
    for t in topics:
        lines += ["[[topics]]", f'name = "{t}"', ""]
    lines += [workers if workers is not None else '[[workers]]\nname = "router"\nkind = "router"\ncritical = true\n']
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


class FabricUp:
    """``chronofabric up --name N [--config F]`` as a foreground subprocess (stopped with SIGTERM)."""

    def __init__(self, name: str, *, config: Path | None = None, start_timeout_s: float = 300.0) -> None:
        self.name = name
        argv = ["up", "--name", name, "--log-level", "INFO"]
        if config is not None:
            argv += ["--config", str(config)]
        self._log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(cli_argv(*argv), cwd=REPO_ROOT, env=child_env(), stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=self._log)
        self.pid = self.proc.pid
        self.worker_pids: set[int] = set()
        try:
            self.wait_running(start_timeout_s)
        except BaseException:
            self.kill()
            raise

    def log(self) -> str:
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace")

    def wait_running(self, timeout_s: float) -> None:
        from fabric.control import ControlBlock
        from fabric.errors import FabricError
        from shm_layouts.control import FabricState

        def running() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"`chronofabric up` exited with {self.proc.returncode}: {self.log()[-3000:]}")
            try:
                cb = ControlBlock.attach(self.name, timeout_ns=100_000_000)
            except FabricError:
                return False
            try:
                if cb.supervisor_pid != self.pid or cb.state != FabricState.RUNNING:
                    return False
                n = int(cb.header[0]["n_workers"])
                self.worker_pids |= {int(cb.workers[r]["pid"]) for r in range(n)}
                return True
            finally:
                cb.close()

        wait_until(running, timeout_s, f"fabric {self.name!r} to run", interval_s=0.05)

    def remember_workers(self, snap) -> None:
        self.worker_pids |= {w.pid for w in snap.workers if w.pid > 0}

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, wait (deadline), then check nothing of the fabric is left in /dev/shm."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"`chronofabric up` did not stop within {timeout_s} s after SIGTERM: {self.log()[-3000:]}")
        return code

    def _read_worker_pids(self) -> None:
        from fabric.control import ControlBlock
        from fabric.errors import FabricError

        try:
            with ControlBlock.attach(self.name, timeout_ns=200_000_000) as cb:
                self.worker_pids |= {int(cb.workers[r]["pid"]) for r in range(int(cb.header[0]["n_workers"]))}
        except (FabricError, OSError, ValueError):
            pass
        self.worker_pids.discard(0)

    def kill(self) -> None:
        """Cleanup (finally): stop the supervisor (SIGTERM, then SIGKILL), kill every worker we know
        of, reap, unlink leftovers. Idempotent."""
        if self.proc.poll() is None:
            self._read_worker_pids()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self._read_worker_pids()
                self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        alive = wait_pids_gone(self.worker_pids, 5.0)
        kill_pids(alive)
        wait_pids_gone(alive, 5.0)
        from fabric.segment import unlink_segment

        for s in segments(self.name):
            unlink_segment(s)
        if not self._log.closed:
            self._log.close()


class Mismatches:
    """Collects ``label: got != want`` so one test reports every disagreement (and still cleans up)."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def eq(self, label: str, got: Any, want: Any) -> None:
        if got != want:
            self.items.append(f"{label}: got {got!r}, want {want!r}")

    def check(self, label: str, ok: bool) -> None:
        if not ok:
            self.items.append(label)

    def assert_none(self, context: str = "") -> None:
        assert not self.items, (context + "\n" if context else "") + "\n".join(self.items)


def run_all(*steps: Callable[[], Any]) -> None:
    """Run every cleanup step even if some fail; then raise the first failure."""
    first: BaseException | None = None
    for step in steps:
        try:
            step()
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            if first is None:
                first = exc
    if first is not None:
        raise first


def stop_stray_up(proc: subprocess.Popen, name: str, timeout_s: float = 120.0) -> None:
    """Stop an ``up`` process a test did not expect to run: let it finish starting (a SIGTERM
    during start-up is not handled), SIGTERM it, reap it and its workers, unlink what is left."""
    from fabric.control import ControlBlock
    from fabric.errors import FabricError
    from fabric.segment import unlink_segment
    from shm_layouts.control import FabricState

    workers: set[int] = set()

    def settled() -> bool:
        if proc.poll() is not None:
            return True
        try:
            with ControlBlock.attach(name, timeout_ns=100_000_000) as cb:
                workers.update(int(cb.workers[r]["pid"]) for r in range(int(cb.header[0]["n_workers"])))
                return cb.state == FabricState.RUNNING
        except FabricError:
            return False

    deadline = time.monotonic() + timeout_s
    while not settled() and time.monotonic() < deadline:
        time.sleep(0.1)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    workers.discard(0)
    alive = wait_pids_gone(workers, 5.0)
    kill_pids(alive)
    wait_pids_gone(alive, 5.0)
    for s in segments(name):
        unlink_segment(s)
