"""A Runner over one long-lived shell in the guest (see :class:`GuestShell`)."""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

from harness.access.remote import (
    CommandFailed,
    CommandResult,
    CommandTimeout,
    GuestBroken,
    Process,
    Spawner,
)


class GuestShell:
    """A :class:`harness.remote.Runner` over one long-lived bash in the guest.

    Under TCG a new SSH exec costs ~250-350 ms (sshd forks a session, execs a shell, the command
    forks again); a command sent to a shell that is already running costs ~25 ms when it uses
    builtins only. KSM control polls counters in tight loops, hence this. ``put``/``get``/
    ``spawn`` go to the underlying VM.

    Each command runs in the shell itself, inside ``{ ...; }`` with stdin from /dev/null (so a
    command cannot read the protocol), or in a subshell ``( ... )`` when it uses exit, cd, exec,
    set or trap (which would change or end the shared shell). A command past its timeout ends
    the shell (a new one starts with the next command). bash's builtin echo reports the errno
    text of a failed write, so Ksm writes knobs with it.
    """

    MARK = "\x01KSMSH"

    def __init__(self, spawner: Spawner, shell: str = "bash --noprofile --norc") -> None:
        self.spawner = spawner
        self.shell = shell
        self.proc: Process | None = None
        self.errfile = f"/tmp/.ksm-shell-{os.getpid()}-{id(self):x}.err"
        self.commands = 0

    def _start(self, timeout: float) -> Process:
        self.proc = self.spawner.spawn(f"exec {self.shell}", timeout=timeout)
        return self.proc

    def run(self, cmd: str, timeout: float = 60.0, check: bool = False) -> CommandResult:
        t0 = time.monotonic()  # one deadline for starting the shell and running the command
        try:
            proc = self.proc or self._start(timeout)
        except CommandTimeout:
            raise CommandTimeout(cmd, timeout) from None
        isolate = re.search(r"(^|[^\w$-])(exit|cd|exec|set|trap)\b", cmd) is not None
        body = f"( {cmd}\n)" if isolate else f"{{ {cmd}\n}}"
        script = (f"{body} </dev/null 2>{self.errfile}; printf '\\n{self.MARK} %d\\n' $?; "
                  f"while IFS= read -r __l || [ -n \"$__l\" ]; do printf '%s\\n' \"$__l\"; "
                  f"done <{self.errfile}; printf '{self.MARK}E\\n'")
        out: list[str] = []
        err: list[str] = []
        status: int | None = None
        try:
            proc.send_line(script)
            deadline = t0 + timeout
            while True:
                line = proc.read_line(max(deadline - time.monotonic(), 0.001))
                if status is None:
                    if line.startswith(self.MARK + " "):
                        status = int(line.split()[1])
                    else:
                        out.append(line)
                elif line == self.MARK + "E":
                    break
                else:
                    err.append(line)
        except GuestBroken:
            self.close()
            raise
        except CommandTimeout as exc:
            self.close()
            raise _as_command(exc, cmd, timeout) from None
        except (EOFError, OSError) as e:
            self.close()
            status, err = 255, err + [f"guest shell ended ({type(e).__name__})"]
        self.commands += 1
        # Our printf put a newline before the mark: the command's own output is the rest.
        stdout = "".join(line + "\n" for line in out)[:-1] if out else ""
        stderr = "".join(line + "\n" for line in err)
        result = CommandResult(cmd, status, stdout, stderr, time.monotonic() - t0)
        if check and not result.ok:
            raise CommandFailed(result)
        return result

    def put(self, local: Path, remote: str, mode: int = 0o644) -> None:
        self.spawner.put(local, remote, mode)

    def get(self, remote: str, local: Path) -> None:
        self.spawner.get(remote, local)

    def spawn(self, cmd: str, timeout: float = 30.0) -> Process:
        return self.spawner.spawn(cmd, timeout=timeout)

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc = None


def _as_command(exc: CommandTimeout, cmd: str, timeout: float) -> CommandTimeout:
    """The timeout of the shell's line as the command's own, keeping what was said of the
    guest (the console's last line: a stopped QEMU, a stack trace)."""
    out = CommandTimeout(cmd, timeout)
    said = str(exc).partition("; the console's last line: ")[2]
    if said:
        out.args = (f"{out.args[0]}; the console's last line: {said}",)
    return out
