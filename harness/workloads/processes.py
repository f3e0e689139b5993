"""A workload's process commands: children (fork, forwarding, reaping), races against a
sysfs write, exiting on a condition, a deliberate crash."""
from __future__ import annotations

from harness.access.remote import quote
from harness.workloads.protocol import Reply, WorkloadDied, WorkloadError
from harness.workloads.session import BASE_TIMEOUT, Session, pages_verified


class ProcessCommands(Session):
    """The workload's children and its own end."""

    def fork(self, n: int, timeout: float | None = None) -> list[int]:
        """Fork n children holding copies of every region; they die with the parent."""
        reply = self.command(f"fork {n}", timeout)
        pids = [int(p) for p in reply.fields["pids"].split(",") if p]
        self.children_pids += pids
        return pids

    def children(self, line: str, timeout: float | None = None) -> Reply:
        """Forward one command to every child; one aggregated reply (``ok children=N ...``)."""
        n = max(1, len(self.children_pids))
        return self.command(f"children {line}", timeout or self._timeout(self._pages(None), n))

    def children_verify(self, name: str | None = None, timeout: float | None = None) -> int:
        """Every child verifies its copy; returns the pages each verified."""
        return pages_verified(self.children("verify" + (f" {name}" if name else ""), timeout))

    def children_exit(self, timeout: float | None = None) -> list[int]:
        """Children exit and are reaped; returns their exit statuses (1 = saw corruption)."""
        reply = self.children("exit", timeout)
        self.children_pids = []
        return [int(s) for s in reply.fields["status"].split(",") if s]

    def pids(self) -> tuple[int, list[int]]:
        f = self.command("pids").fields
        return int(f["parent"]), [int(p) for p in f.get("children", "").split(",") if p]

    def race_forks(self, path: str, value: int | str, keep: int,
                   probe: tuple[int, int, int] | None = None, delay_ms: int | None = None,
                   timeout: float = 300.0) -> dict[str, str]:
        """Write VALUE to PATH from a helper (this mm not copied) while forking in a loop until
        the write returns; the first ``keep`` children are kept (see ``children``). probe:
        (pid, addr, pages) whose first and last page are checked for KSM before each fork
        (kpageflags; where it lies, /proc/kpagecount > 1: that pid must have no fork children;
        the reply's probe_by says which). delay_ms: the race forced off (one fork, after the write returned). Returns the
        reply's fields (rc, t0, t1 in guest microseconds, forks, kept, inside, inside_p,
        inside_k, probe_by, probes, pids)."""
        line = f"race {path} {value} fork {int(keep)}"
        if probe is not None:
            line += f" probe={int(probe[0])}:{int(probe[1]):#x}:{int(probe[2])}"
        if delay_ms is not None:
            line += f" delay={int(delay_ms)}"
        fields = self.command(line, timeout).fields
        self.children_pids += [int(p) for p in fields.get("pids", "").split(",") if p]
        return fields

    def kill_write(self, path: str, value: int | str, probe: tuple[int, int, int],
                   limit_ms: int = 60000, timeout: float = 120.0) -> dict[str, str]:
        """Write VALUE to PATH from a helper and SIGKILL it, in the guest, the moment the
        probe (as for :meth:`race_forks`) reads p (the probed mm part-way through being
        unmerged), or after ``limit_ms``. Returns the reply's fields (killed, status
        exit:N|signal:N, state: the probe at the kill or when the write ended first, polls,
        probe_by, t0, tkill)."""
        line = (f"killwrite {path} {value} "
                f"probe={int(probe[0])}:{int(probe[1]):#x}:{int(probe[2])} ms={int(limit_ms)}")
        return self.command(line, timeout).fields

    def exit_when(self, path: str, value: int | None = None, ms: int = 20000) -> None:
        """Send ``exitwhen`` (no wait): poll PATH until it reads ``value`` (None: until it
        moves), then exit at once, hit or not (children die with it); :meth:`exited`."""
        cond = "moved" if value is None else f"eq {int(value)}"
        self.begin(f"exitwhen {quote(path)} {cond} {int(ms)}")

    def exited(self, timeout: float = 80.0) -> tuple[dict[str, str], int]:
        """The reply to :meth:`exit_when` (hit, v0, v, t) and the exit status."""
        fields = self.finish(timeout).fields
        self.children_pids = []
        return fields, self._reap("exitwhen", fields, timeout)

    def sleep(self, ms: int) -> None:
        self.command(f"sleep {ms}", BASE_TIMEOUT + ms / 1000)

    def crash(self, timeout: float = 30.0) -> int | None:
        """Make the C workload die of SIGSEGV; returns its exit status."""
        try:
            self.command("crash", timeout)
        except WorkloadDied as e:
            return e.status
        raise WorkloadError(f"workload '{self.name}' survived 'crash'", self.name, "crash")
