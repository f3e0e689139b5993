"""A guest command that never reads its stdin (issue 19's fault "guest cmd ignores stdin",
at the one place the harness writes much to a guest command's stdin: a file upload's
``cat > FILE``, put()): the write fills SSH's window and blocks; the command must end at
its own deadline, with CommandTimeout naming the command, and the guest stay usable.

A workload's control channel is not a case: the protocol has one command outstanding at a
time, one line (< 4 KiB, far below the window), so a workload that stops reading is one
that does not answer, the hang verdict's case (test_monitor)."""
from __future__ import annotations

import time

import pytest

from harness.access.remote import CommandTimeout
from harness.guest_handle import Guest

DEADLINE = 10.0
GRACE = 5.0
BIG = 8 << 20  # bytes: several times SSH's channel window (2 MiB in OpenSSH)


def test_a_command_that_never_reads_its_stdin_ends_at_its_deadline(vm: Guest) -> None:
    ssh = vm.vm.ssh
    assert ssh is not None
    t0 = time.monotonic()
    with pytest.raises(CommandTimeout) as stuck:
        ssh.exec("sleep 600", DEADLINE, stdin=b"x" * BIG)
    took = time.monotonic() - t0
    assert took <= DEADLINE + GRACE, f"ended after {took:.1f}s, deadline {DEADLINE}s"
    assert "sleep 600" in str(stuck.value) and f"of the {BIG} bytes of its input" in \
        str(stuck.value), str(stuck.value)
    # the connection the harness gave up on is replaced: the guest answers
    r = vm.vm.run("echo alive; pkill -x sleep; true", timeout=60)
    assert "alive" in r.stdout, r
