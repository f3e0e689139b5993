"""The contract every way of running a command in the guest honours (SSH, serial console).

Code that drives the guest (KSM control, workloads, the monitor) depends only on this, so it
does not care how a command reaches the machine.
"""
from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class CommandResult:
    command: str
    status: int
    stdout: str
    stderr: str
    duration: float

    @property
    def ok(self) -> bool:
        return self.status == 0


class CommandFailed(Exception):
    """A guest command exited non-zero where success was required."""

    def __init__(self, result: CommandResult) -> None:
        self.result = result
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        super().__init__(f"guest command failed (exit {result.status}): {result.command}"
                         + (f": {' | '.join(tail)}" if tail else ""))


class CommandTimeout(Exception):
    """A guest command did not finish before its deadline (a hang candidate)."""

    def __init__(self, command: str, timeout: float) -> None:
        self.command = command
        self.timeout = timeout
        # set when the deadline ended on the wall-time cap while the host kept the guest
        # off its CPUs (harness.access.guestclock): says nothing of the kernel under test
        self.host_starved = False
        self.starved = ""  # "; the host starved the guest: ..." when it did
        super().__init__(f"guest command still running after {timeout:.0f}s: {command}")


class GuestBroken(CommandTimeout):
    """A wait ended early because the guest is known broken (the kernel reported a fatal
    error, or QEMU is gone): waiting out the deadline would only delay the verdict. A
    CommandTimeout, so whatever treats a command that did not finish treats this one too."""

    def __init__(self, command: str, reason: str) -> None:
        self.reason = reason
        super().__init__(command, 0.0)
        self.args = (f"stopped waiting for {command}: {reason}",)

    def __str__(self) -> str:
        return str(self.args[0])


Abort = Callable[[], "str | None"]  # a reason to stop waiting on the guest, or None


class Runner(Protocol):
    def run(self, cmd: str, timeout: float = 60.0, check: bool = False) -> CommandResult:
        """Run ``cmd`` with the guest's /bin/sh; raise CommandTimeout past ``timeout``;
        raise CommandFailed on non-zero exit when ``check``."""
        ...

    def put(self, local: Path, remote: str, mode: int = 0o644) -> None: ...

    def get(self, remote: str, local: Path) -> None: ...


def quote(arg: object) -> str:
    return shlex.quote(str(arg))


class Process(Protocol):
    """A long-running guest program driven line by line (a workload's control channel)."""

    def send_line(self, line: str) -> None: ...

    def read_line(self, timeout: float) -> str:
        """Next line of stdout without its newline; CommandTimeout past ``timeout``;
        EOFError when the program closed stdout."""
        ...

    def wait(self, timeout: float) -> int:
        """Exit status; CommandTimeout past ``timeout``."""
        ...

    def kill(self) -> None: ...

    def stderr(self) -> str:
        """What the program wrote to stderr so far, as far as it is known ('' if not):
        diagnostics for a program that would not start."""
        ...


class Spawner(Runner, Protocol):
    def spawn(self, cmd: str, timeout: float = 30.0) -> Process:
        """Start ``cmd`` on its own channel; CommandTimeout when that takes past
        ``timeout`` (a frozen guest)."""
        ...
