"""A frozen guest never hangs the harness (issue 19, finding 1): QEMU stopped (SIGSTOP) while
a command's exec request is in flight, the command ends within its deadline (+5 s) with an
error that says which command, which step and for how long; then no QEMU is left.

The stop lands exactly there: right after the harness's own channel open returned, before
the exec request (paramiko's exec_command waits for the answer with no timeout at all)."""
from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from harness.access.remote import CommandTimeout
from harness.guest_handle import Guest
from tests.helpers import pid_alive, wait_until

DEADLINE = 10.0


@pytest.mark.parametrize("how", ["run", "spawn"])
def test_a_guest_frozen_during_an_exec_request_ends_the_command_in_time(
        fresh_vm: Guest, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    vm = fresh_vm.vm
    assert vm.child is not None and vm.ssh is not None
    qemu = vm.child.pid
    open_channel = vm.ssh._channel

    def open_then_freeze(timeout: float, cmd: str = "") -> object:
        chan = open_channel(timeout, cmd)
        if cmd == "echo thawed":  # only the test's command (the monitor has its own)
            os.kill(qemu, signal.SIGSTOP)  # the exec request now goes to a frozen guest
        return chan

    monkeypatch.setattr(vm.ssh, "_channel", open_then_freeze)
    outcome: list[BaseException | str] = []

    def command() -> None:
        try:
            if how == "run":
                vm.run("echo thawed", timeout=DEADLINE)
            else:
                vm.spawn("echo thawed", timeout=DEADLINE)
            outcome.append("returned")
        except BaseException as exc:  # noqa: BLE001 -- reported by the main thread
            outcome.append(exc)

    t0 = time.monotonic()
    worker = threading.Thread(target=command, daemon=True)
    worker.start()
    try:
        worker.join(DEADLINE + 5)
        took = time.monotonic() - t0
        hung = worker.is_alive()
    finally:
        os.kill(qemu, signal.SIGCONT)  # a hung call gets its answer now and returns
        worker.join(30)
    assert not hung, f"{how}() of a frozen guest gave no verdict within {DEADLINE + 5:.0f}s"
    error = outcome[0]
    assert isinstance(error, CommandTimeout), f"{how}() of a frozen guest: {error!r}"
    text = str(error)
    assert "echo thawed" in text and "exec request" in text, text
    assert "the console's last line: '" in text, text
    assert took >= DEADLINE - 1, f"gave up after {took:.1f}s, before the {DEADLINE:.0f}s deadline"
    vm.stop()
    wait_until(lambda: not pid_alive(qemu), 10, f"QEMU {qemu} to be gone")
