"""A workload session: the guest program's channel and its line protocol (one command, one
reply, each with a deadline), the errors a reply means, and the program's life (start,
exit, death). The command families build on it (memory, numa, processes; driver)."""
from __future__ import annotations

import re
from types import TracebackType
from typing import Self

from harness.access.remote import CommandTimeout, GuestBroken, Process, Spawner, quote
from harness.workloads.build import GUEST_BINARY, GUEST_PY_WORKER, MAIN_PROGRAM
from harness.workloads.protocol import (
    DataCorruption,
    Reply,
    WorkloadDied,
    WorkloadError,
    WorkloadTimeout,
    parse_corruption,
    refusal,
)

# Deadlines: a fixed part plus a per-page part, generous for TCG (C fills ~5 us/page natively,
# 10-30x that under TCG; Python ~7x slower than C).
BASE_TIMEOUT = 60.0
C_SECONDS_PER_PAGE = 0.0005
PY_SECONDS_PER_PAGE = 0.005


class Session:
    """A running workload in the guest: one command, one reply, each with a deadline."""

    def __init__(self, proc: Process, name: str,
                 seconds_per_page: float = C_SECONDS_PER_PAGE) -> None:
        self.proc = proc
        self.name = name
        self.seconds_per_page = seconds_per_page
        self.pid: int | None = None
        self.regions: dict[str, int] = {}  # name -> pages, to size deadlines
        self.children_pids: list[int] = []
        self.exit_status: int | None = None
        self._unusable: str | None = None
        self._outstanding: str | None = None

    # -- starting and stopping --

    @classmethod
    def start(cls, guest: Spawner, binary_path_in_guest: str = GUEST_BINARY,
              name: str = MAIN_PROGRAM, timeout: float = 30.0) -> Self:
        """Spawn the C workload and wait until it answers ``pid``."""
        return cls._start(guest, f"exec {quote(binary_path_in_guest)}", name, timeout,
                          C_SECONDS_PER_PAGE)

    @classmethod
    def start_python(cls, guest: Spawner, script_path_in_guest: str = GUEST_PY_WORKER,
                     name: str = "ksm_py_worker", timeout: float = 60.0,
                     python: str = "python3") -> Self:
        """Spawn the Python workload (commands: alloc madvise verify write corrupt touch peek
        free sleep pid exit)."""
        return cls._start(guest, f"exec {quote(python)} -u {quote(script_path_in_guest)}",
                          name, timeout, PY_SECONDS_PER_PAGE)

    @classmethod
    def _start(cls, guest: Spawner, cmd: str, name: str, timeout: float,
               seconds_per_page: float) -> Self:
        workload = cls(guest.spawn(cmd), name, seconds_per_page)
        try:
            workload.pid = workload.command("pid", timeout).number("pid")
        except WorkloadError as e:
            workload.kill()
            raise WorkloadError(f"workload '{name}' did not start ({cmd}): {e}", name, cmd,
                                e.reply) from e
        return workload

    def exit(self, timeout: float = 60.0, check: bool = True) -> int:
        """Ask the workload (and its children) to exit; return its status (1 = it detected
        corruption at some point). With ``check``, a non-zero status raises."""
        reply = self.command("exit", timeout)
        status = self._reap("exit", reply.text, timeout)
        if check and status != 0:
            why = " (data corruption detected earlier)" if status == 1 else ""
            raise WorkloadError(f"workload '{self.name}' exited with status {status}{why}",
                                self.name, "exit", reply.text)
        return status

    def _reap(self, line: str, reply: object, timeout: float) -> int:
        """The exit status of a workload that answered ``line`` and is exiting."""
        try:
            status = self.proc.wait(timeout)
        except GuestBroken:
            self._unusable = "the guest broke"
            raise
        except CommandTimeout as exc:
            self.kill()
            raise WorkloadTimeout(f"workload '{self.name}' answered {line} ({reply}) but "
                                  f"still runs after {timeout:.0f}s{exc.starved}", self.name,
                                  line, str(reply), host_starved=exc.host_starved) from None
        self.exit_status = status
        self._unusable = f"it exited with status {status}"
        return status

    def kill(self) -> None:
        self._unusable = self._unusable or "it was killed"
        self.proc.kill()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.exit_status is None:
            self.kill()

    # -- the protocol --

    def command(self, line: str, timeout: float | None = None) -> Reply:
        """Send one command, wait for its reply; raise on ``err``, death or silence."""
        self.begin(line)
        return self.finish(timeout)

    def begin(self, line: str) -> None:
        """Send a command without waiting for its reply (e.g. a long ``churn`` while the test
        flips KSM knobs); :meth:`finish` collects the reply. One command at a time."""
        if self._unusable:
            raise WorkloadError(f"workload '{self.name}' cannot run '{line}': {self._unusable}",
                                self.name, line)
        if self._outstanding is not None:
            raise WorkloadError(f"workload '{self.name}' still runs '{self._outstanding}': "
                                f"cannot send '{line}'", self.name, line)
        try:
            self.proc.send_line(line)
        except (EOFError, OSError) as e:
            raise self._died(line, "", f"closed its input ({type(e).__name__})") from None
        self._outstanding = line

    @property
    def busy(self) -> bool:
        """A command was sent with :meth:`begin` and its reply not collected yet."""
        return self._outstanding is not None

    def finish(self, timeout: float | None = None) -> Reply:
        """The reply to the command sent by :meth:`begin`, with the same checks as
        :meth:`command`."""
        line = self._outstanding
        if line is None:
            raise WorkloadError(f"workload '{self.name}': no command outstanding", self.name)
        self._outstanding = None
        timeout = BASE_TIMEOUT if timeout is None else timeout
        try:
            text = self.proc.read_line(timeout)
        except GuestBroken:  # not the workload's hang: the wait was cut short
            self._unusable = "the guest broke"
            raise
        except CommandTimeout as exc:
            self._unusable = f"'{line}' timed out"
            raise WorkloadTimeout(f"workload '{self.name}' (pid {self.pid}) did not answer "
                                  f"'{line}' within {timeout:.0f}s{exc.starved}", self.name,
                                  line, pid=self.pid, host_starved=exc.host_starved) from None
        except (EOFError, OSError) as e:
            raise self._died(line, "", f"closed its output ({type(e).__name__})") from None
        reply = Reply(line, text)
        if reply.ok:
            return reply
        corruption = parse_corruption(text)
        if corruption is not None:
            raise self._corruption(line, text, corruption)
        if text.startswith("err crashed"):
            raise self._died(line, text, text[4:])
        raise refusal(self.name, line, text)

    def _died(self, line: str, text: str, what: str) -> WorkloadDied:
        self._unusable = "it died"
        try:
            status: int | None = self.proc.wait(10.0)
        except CommandTimeout:
            status = None
        self.exit_status = status
        return WorkloadDied(f"workload '{self.name}' (pid {self.pid}) {what} during '{line}' "
                            f"(exit status {status}){self._stderr_tail()}", self.name, line,
                            text, status)

    def _stderr_tail(self) -> str:
        # why a program would not start
        try:
            text = self.proc.stderr()
        except Exception:  # noqa: BLE001  (diagnostics only: never hide the real failure)
            text = ""
        tail = " | ".join(text.strip().splitlines()[-3:])
        return f"; stderr: {tail}" if tail else ""

    def _corruption(self, line: str, text: str,
                    c: dict[str, int | str | None]) -> DataCorruption:
        child = c["child"]
        where = f" child {child}" if child is not None else ""
        assert isinstance(c["page"], int) and isinstance(c["offset"], int)
        assert isinstance(c["expected"], int) and isinstance(c["got"], int)
        assert isinstance(c["pages"], int) and (child is None or isinstance(child, int))
        msg = (f"DATA CORRUPTION in workload '{self.name}'{where}: region {c['region']} "
               f"page {c['page']} offset {c['offset']}: expected 0x{c['expected']:02x} "
               f"got 0x{c['got']:02x} ({c['pages']} corrupt pages) during '{line}'")
        return DataCorruption(msg, self.name, line, text, str(c["region"]), c["page"],
                              c["offset"], c["expected"], c["got"], c["pages"], child)

    def _timeout(self, pages: int, factor: int = 1) -> float:
        return BASE_TIMEOUT + pages * factor * self.seconds_per_page

    def _pages(self, name: str | None) -> int:
        return self.regions.get(name, 0) if name else sum(self.regions.values())


def range_args(first: int | None, count: int | None) -> str:
    if (first is None) != (count is None):
        raise ValueError("give both first and count, or neither")
    return f" {first} {count}" if first is not None else ""


def pages_verified(reply: Reply) -> int:
    m = re.search(r"verified (\d+) pages", reply.text)
    if m is None:
        raise WorkloadError(f"unexpected reply to '{reply.command}': {reply.text}",
                            command=reply.command, reply=reply.text)
    return int(m.group(1))
