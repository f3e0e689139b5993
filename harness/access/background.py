"""A guest command running on its own channel while the test does other things (``run=2``
racing fork, exit or swapoff); :meth:`Background.wait` returns its status and output with a
deadline (a command that does not return is a hang candidate)."""
from __future__ import annotations

import re
import time

from harness.access.remote import CommandTimeout, GuestBroken, Spawner

_RC = re.compile(r"__rc=(\d+)")


class ChannelLost(Exception):
    """The command's channel closed before it reported its exit status."""


class Background:
    def __init__(self, spawner: Spawner, cmd: str) -> None:
        self.cmd = cmd
        self.started = time.monotonic()
        self.proc = spawner.spawn(f"{{ {cmd}\n}} 2>&1; echo \"__rc=$?\"")
        self.lines: list[str] = []
        self.status: int | None = None
        self.took: float | None = None

    def _take(self, line: str) -> None:
        m = _RC.fullmatch(line.strip())
        if m:
            self.status = int(m.group(1))
            self.took = time.monotonic() - self.started
        else:
            self.lines.append(line)

    def done(self) -> bool:
        """True once the command has returned (waits at most ~10 ms)."""
        while self.status is None:
            try:
                self._take(self.proc.read_line(0.01))
            except GuestBroken:
                return True  # wait() raises it
            except CommandTimeout:
                return False
            except (EOFError, OSError):
                return True  # wait() reports the lost channel
        return True

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait(self, timeout: float = 300.0) -> tuple[int, str, float]:
        """(exit status, output, seconds since the start); CommandTimeout past ``timeout``
        (the command is killed), ChannelLost if its channel closed first."""
        deadline = time.monotonic() + timeout
        while self.status is None:
            try:
                self._take(self.proc.read_line(max(deadline - time.monotonic(), 0.001)))
            except GuestBroken:
                raise
            except CommandTimeout:
                self.proc.kill()
                raise CommandTimeout(self.cmd, timeout) from None
            except (EOFError, OSError):
                raise ChannelLost(f"background command lost its channel: {self.cmd}: "
                                  f"{' | '.join(self.lines[-3:])}") from None
        assert self.took is not None
        return self.status, self.output, self.took
