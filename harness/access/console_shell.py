"""A command through the root shell on the serial console: the second channel into the guest
when SSH is dead (no stderr split: the console is a tty)."""
from __future__ import annotations

import time
import uuid

from harness.access.port import LineSource
from harness.access.remote import CommandResult, CommandTimeout
from harness.console.reader import ConsoleTimeout


def run(console: LineSource, cmd: str, timeout: float = 30.0) -> CommandResult:
    """Run ``cmd`` in the console's root shell; CommandTimeout past ``timeout``."""
    tag = uuid.uuid4().hex[:8]
    start = console.mark()
    t0 = time.monotonic()
    # the quotes keep the shell's echo of this line from matching the markers
    console.send(f"echo KSM''BEGIN{tag}; {cmd}; echo KSM''END{tag}:$?\n")
    try:
        console.wait_for(f"^KSMBEGIN{tag}$", timeout, start)
        end = console.wait_for(f"KSMEND{tag}:(\\d+)", timeout - (time.monotonic() - t0), start)
    except ConsoleTimeout:
        raise CommandTimeout(f"(console) {cmd}", timeout) from None
    lines = console.text(start).split("\n")
    begin = next(i for i, line in enumerate(lines) if line == f"KSMBEGIN{tag}")
    out = []
    for line in lines[begin + 1:]:
        if f"KSMEND{tag}:" in line:
            out.append(line.split(f"KSMEND{tag}:")[0])
            break
        out.append(line)
    stdout = "\n".join(x for x in out if x) + ("\n" if any(out) else "")
    return CommandResult(cmd, int(end.group(1)), stdout, "", time.monotonic() - t0)
