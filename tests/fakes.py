"""Fakes shared by host tests: the guest's Spawner protocol served by local processes, so
the workloads, GuestShell and background writes are tested without QEMU."""
from __future__ import annotations

import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path

from harness.access.remote import CommandResult, CommandTimeout


class LocalProcess:
    """harness.remote.Process over a local subprocess; a reader thread gives read timeouts."""

    def __init__(self, cmd: str) -> None:
        self.popen = subprocess.Popen(["sh", "-c", cmd], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True, bufsize=1)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def send_line(self, line: str) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(line + "\n")
        self.popen.stdin.flush()

    def read_line(self, timeout: float) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise CommandTimeout("read_line", timeout) from None
        if line is None:
            self.lines.put(None)  # stay at EOF
            raise EOFError
        return line

    def wait(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise CommandTimeout("wait", timeout) from None

    def stderr(self) -> str:
        return ""  # not captured: the host test's own stderr shows it

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)


class LocalSpawner:
    """harness.remote.Spawner on the host."""

    def __init__(self) -> None:
        self.spawned: list[LocalProcess] = []

    def run(self, cmd: str, timeout: float = 60.0, check: bool = False) -> CommandResult:
        t0 = time.monotonic()
        p = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True,
                           check=False, timeout=timeout)
        return CommandResult(cmd, p.returncode, p.stdout, p.stderr, time.monotonic() - t0)

    def put(self, local: Path, remote: str, mode: int = 0o644) -> None:
        shutil.copyfile(local, remote)
        os.chmod(remote, mode)

    def get(self, remote: str, local: Path) -> None:
        shutil.copyfile(remote, local)

    def spawn(self, cmd: str, timeout: float = 30.0) -> LocalProcess:
        proc = LocalProcess(cmd)
        self.spawned.append(proc)
        return proc
