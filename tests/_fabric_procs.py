"""Test-only helpers for tests that run fabric peers in child processes.

Children are started fresh (``python -m tests.<module>`` or ``python -c``), never forked
after numba or threads. Every wait here has a deadline; ``stop()`` kills and reaps.
Children report with text lines on stdout (``READY``, ``CLAIMED 123``, ``RESULT {json}``);
their stderr goes to a temporary file, read back only to explain a failure.
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
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


class Child:
    """One child process with a line reader on its stdout (every read has a deadline)."""

    def __init__(self, argv: list[str]) -> None:
        self._stderr = tempfile.TemporaryFile()
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        env.setdefault("PYTHONUNBUFFERED", "1")
        self.proc = subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )
        self.pid = self.proc.pid
        self._buf = b""
        self.lines: list[str] = []

    # --- reading ------------------------------------------------------------------------------

    def _read_some(self, timeout_s: float) -> bool:
        """Read what is there within ``timeout_s``; False at EOF."""
        fd = self.proc.stdout.fileno()
        ready, _, _ = select.select([fd], [], [], max(0.0, timeout_s))
        if not ready:
            return True
        chunk = os.read(fd, 65536)
        if not chunk:
            return False
        self._buf += chunk
        while b"\n" in self._buf:
            line, self._buf = self._buf.split(b"\n", 1)
            self.lines.append(line.decode("utf-8", "replace"))
        return True

    def wait_line(self, prefix: str, timeout_s: float) -> str:
        """The first unread line starting with ``prefix`` (waits up to ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        seen = 0
        while True:
            for i in range(seen, len(self.lines)):
                if self.lines[i].startswith(prefix):
                    line = self.lines.pop(i)
                    return line[len(prefix) :].strip()
            seen = len(self.lines)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"child {self.pid} printed no {prefix!r} line within {timeout_s} s; "
                    f"stdout: {self.lines[-20:]}\nstderr: {self.stderr()}"
                )
            if not self._read_some(min(remaining, 0.2)):
                # EOF: the child ended without the line.
                rc = self.proc.wait(timeout=5)
                raise AssertionError(
                    f"child {self.pid} exited (rc {rc}) without a {prefix!r} line; "
                    f"stdout: {self.lines[-20:]}\nstderr: {self.stderr()}"
                )

    def result(self, timeout_s: float) -> dict:
        """The JSON of the child's ``RESULT`` line."""
        return json.loads(self.wait_line("RESULT", timeout_s))

    def send_line(self, text: str) -> None:
        self.proc.stdin.write(text.encode() + b"\n")
        self.proc.stdin.flush()

    def stderr(self) -> str:
        try:
            self._stderr.seek(0)
            return self._stderr.read().decode("utf-8", "replace")[-4000:]
        except ValueError:
            return "<closed>"

    # --- ending ----------------------------------------------------------------------------

    def wait(self, timeout_s: float) -> int:
        """Wait for a normal exit; fails the test (after killing it) when it does not end in time."""
        try:
            rc = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"child {self.pid} did not exit within {timeout_s} s; stderr: {self.stderr()}")
        return rc

    def sigkill(self) -> None:
        """SIGKILL the child and reap it."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def kill(self) -> None:
        """Kill (if still running), reap and close the pipes (idempotent)."""
        if self.proc.poll() is None:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - a SIGKILLed process always ends
            pass
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
        self._stderr.close()


def spawn_module(module: str, *args: str) -> Child:
    """``python -m <module> args...`` from the repository root."""
    return Child([sys.executable, "-m", module, *[str(a) for a in args]])


def spawn_code(code: str, *args: str) -> Child:
    """``python -c <code> args...`` from the repository root."""
    return Child([sys.executable, "-c", code, *[str(a) for a in args]])


def stop_all(children: list[Child]) -> None:
    """Kill and reap every child (for ``finally`` blocks)."""
    for child in children:
        child.kill()


def wait_until(predicate, timeout_s: float, what: str, interval_s: float = 0.002) -> None:
    """Poll ``predicate()`` until it is true; fail with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)
