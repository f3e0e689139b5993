"""harness.access.console_shell on a real shell behind a pty, read by the real Console (the
guest's root shell on ttyS0 is the same: a POSIX shell reading lines from a tty)."""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from harness.access import console_shell
from harness.access.remote import CommandTimeout
from harness.console.reader import Console


@pytest.fixture
def console(tmp_path: Path) -> Iterator[Console]:
    # no prompt: the guest's tty echoes the typed line after its prompt, this pty does not
    child = pexpect.spawn("/bin/sh", echo=False, timeout=None,
                          env={"PS1": "", "PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    c = Console(child, tmp_path / "console.log")
    yield c
    child.close(force=True)
    c.close()


def test_status_and_output(console: Console) -> None:
    console.send("echo noise before the command\n")
    r = console_shell.run(console, "printf 'a\\nb\\n'; false", timeout=10)
    assert (r.status, r.stdout, r.stderr) == (1, "a\nb\n", "")


def test_a_command_past_its_deadline(console: Console) -> None:
    with pytest.raises(CommandTimeout, match=r"\(console\) sleep 5"):
        console_shell.run(console, "sleep 5", timeout=0.5)
