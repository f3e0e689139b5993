"""Waits that end on the kernel's verdict: a fatal report (even one still being printed) makes
every wait on the guest raise GuestBroken at once instead of running to its deadline."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from harness.access.background import Background
from harness.access.remote import CommandResult, CommandTimeout, GuestBroken
from harness.access.ssh import SSHProcess
from harness.console.classify import StreamClassifier
from harness.findings import Category


class SilentChannel:
    """A paramiko channel of a guest that never answers."""

    def exec_command(self, cmd: str) -> None:
        pass

    def settimeout(self, t: float) -> None:
        self.t = t

    def recv(self, n: int) -> bytes:
        time.sleep(self.t)
        raise TimeoutError

    def exit_status_ready(self) -> bool:
        return False

    def recv_ready(self) -> bool:
        return False

    def close(self) -> None:
        pass


def test_fatal_categories() -> None:
    assert Category.BUG.fatal and Category.PANIC.fatal and Category.SOFT_LOCKUP.fatal
    assert Category.HUNG_TASK.fatal and Category.RCU_STALL.fatal
    assert not Category.WARNING.fatal and not Category.OOM.fatal and not Category.KASAN.fatal


def test_a_report_is_known_from_its_header() -> None:
    sc = StreamClassifier()
    assert sc.feed("[   12.000000] kernel BUG at mm/rmap.c:1182!") == []
    assert sc.open_categories() == ["BUG"]  # before its last line arrives


@pytest.mark.parametrize("call", ["read_line", "wait"])
def test_a_wait_ends_within_a_poll_of_the_abort(call: str) -> None:
    reason: list[str] = []
    proc = SSHProcess(SilentChannel(), "ksmwork", lambda: reason[0] if reason else None)
    with pytest.raises(CommandTimeout) as no:
        getattr(proc, call)(0.3)  # no abort: the deadline
    assert not isinstance(no.value, GuestBroken)
    reason.append("the kernel reported: kernel BUG at mm/rmap.c:1182")
    t0 = time.monotonic()
    with pytest.raises(GuestBroken, match="kernel BUG"):
        getattr(proc, call)(120.0)
    assert time.monotonic() - t0 < 1.0


def test_background_command_reports_the_broken_guest() -> None:
    class GoneGuest:
        """A Spawner whose guest is gone: only spawn is used by Background."""

        def run(self, cmd: str, timeout: float = 60.0, check: bool = False) -> CommandResult:
            raise NotImplementedError

        def put(self, local: Path, remote: str, mode: int = 0o644) -> None:
            raise NotImplementedError

        def get(self, remote: str, local: Path) -> None:
            raise NotImplementedError

        def spawn(self, cmd: str, timeout: float = 30.0) -> SSHProcess:
            return SSHProcess(SilentChannel(), cmd, lambda: "QEMU exited (status 1)")

    bg = Background(GoneGuest(), "swapoff /dev/vdc")
    assert bg.done()  # it will not come back: wait() says why
    with pytest.raises(GuestBroken, match="QEMU exited"):
        bg.wait(120.0)
