"""Drive a workload in the guest, one command at a time, with deadlines."""
from __future__ import annotations

import re
from types import TracebackType
from typing import Self

from harness.access.remote import CommandTimeout, GuestBroken, Process, Spawner, quote
from harness.workloads.build import GUEST_BINARY, GUEST_PY_WORKER, MAIN_PROGRAM
from harness.workloads.protocol import (
    DataCorruption,
    MoveResult,
    NodeCounts,
    PageCounts,
    Reply,
    WorkloadDied,
    WorkloadError,
    WorkloadTimeout,
    _errno_fields,
    parse_corruption,
    refusal,
)

# Deadlines: a fixed part plus a per-page part, generous for TCG (C fills ~5 us/page natively,
# 10-30x that under TCG; Python ~7x slower than C).
BASE_TIMEOUT = 60.0
C_SECONDS_PER_PAGE = 0.0005
PY_SECONDS_PER_PAGE = 0.005


# ---- the driver ----

class Workload:
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
              name: str = MAIN_PROGRAM, timeout: float = 30.0) -> Workload:
        """Spawn the C workload and wait until it answers ``pid``."""
        return cls._start(guest, f"exec {quote(binary_path_in_guest)}", name, timeout,
                          C_SECONDS_PER_PAGE)

    @classmethod
    def start_python(cls, guest: Spawner, script_path_in_guest: str = GUEST_PY_WORKER,
                     name: str = "ksm_py_worker", timeout: float = 60.0,
                     python: str = "python3") -> Workload:
        """Spawn the Python workload (commands: alloc madvise verify write corrupt touch peek
        free sleep pid exit)."""
        return cls._start(guest, f"exec {quote(python)} -u {quote(script_path_in_guest)}",
                          name, timeout, PY_SECONDS_PER_PAGE)

    @classmethod
    def _start(cls, guest: Spawner, cmd: str, name: str, timeout: float,
               seconds_per_page: float) -> Workload:
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
        except CommandTimeout:
            self.kill()
            raise WorkloadTimeout(f"workload '{self.name}' answered {line} ({reply}) but "
                                  f"still runs after {timeout:.0f}s", self.name, line,
                                  str(reply)) from None
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
        except CommandTimeout:
            self._unusable = f"'{line}' timed out"
            raise WorkloadTimeout(f"workload '{self.name}' (pid {self.pid}) did not answer '{line}' "
                                  f"within {timeout:.0f}s", self.name, line, pid=self.pid) from None
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
        # Not in the Process protocol, but SSHProcess has it: why a program would not start.
        read = getattr(self.proc, "stderr", None)
        try:
            text = str(read()) if callable(read) else ""
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

    # -- typed commands --

    def alloc(self, name: str, pages: int, pattern: str, node: int | None = None,
              thp: bool | None = None, shared: bool = False,
              timeout: float | None = None) -> int:
        """mmap and fill a region; PATTERN: same:SEED unique:SEED zero lastbyte:SEED
        half:SEED; thp: True MADV_HUGEPAGE, False MADV_NOHUGEPAGE, None the system's THP
        mode. Returns its address (0 from the Python worker, which has no addresses)."""
        parts = ["alloc", name, str(pages), pattern]
        parts += [f"node={node}"] if node is not None else []
        parts += [] if thp is None else ["thp" if thp else "nothp"]
        parts += ["shared"] if shared else []
        reply = self.command(" ".join(parts), timeout or self._timeout(pages))
        self.regions[name] = pages
        return int(reply.fields.get("addr", "0"), 16)

    def free(self, name: str) -> None:
        self.command(f"free {name}")
        self.regions.pop(name, None)

    def madvise(self, name: str, advice: str, first: int | None = None,
                count: int | None = None, timeout: float | None = None) -> None:
        """advice: merge unmerge hugepage nohugepage pageout cold willneed. Unmerge and
        pageout do real work (copies, swap-out), hence the per-page deadline."""
        line = f"madvise {name} {advice}" + _range(first, count)
        self.command(line, timeout or self._timeout(count or self._pages(name)))

    def verify(self, name: str | None = None, timeout: float | None = None) -> int:
        """Check every byte; return the pages verified or raise DataCorruption."""
        reply = self.command("verify" + (f" {name}" if name else ""),
                             timeout or self._timeout(self._pages(name)))
        return _verified(reply)

    def write(self, name: str, page: int, same_seed: int | None = None) -> None:
        """New content for one page (unique, or same:SEED's), expectation updated."""
        self.command(f"write {name} {page}" + (f" same:{same_seed}" if same_seed is not None
                                               else ""))

    def corrupt(self, name: str, page: int, offset: int | None = None) -> None:
        """Flip one byte WITHOUT updating the expectation: proves the check fires."""
        self.command(f"corrupt {name} {page}" + (f" {offset}" if offset is not None else ""))

    def touch(self, name: str, timeout: float | None = None) -> None:
        self.command(f"touch {name}", timeout or self._timeout(self._pages(name)))

    def churn(self, name: str, ms: int, timeout: float | None = None) -> int:
        """Rewrite the region's expected content in a loop for ``ms`` ms (C workload): writes
        break KSM pages while ksmd merges them back. Returns the page writes done."""
        pages = self._pages(name)
        reply = self.command(f"churn {name} {ms}", timeout or self._timeout(pages) + ms / 1000)
        return reply.number("writes")

    def peek(self, name: str, page: int, offset: int = 0, length: int = 16) -> bytes:
        return bytes.fromhex(self.command(f"peek {name} {page} {offset} {length}")
                             .fields["hex"])

    def mlock(self, name: str) -> None:
        self.command(f"mlock {name}", self._timeout(self._pages(name)))

    def munlock(self, name: str) -> None:
        self.command(f"munlock {name}", self._timeout(self._pages(name)))

    def mlockall(self, future: bool = False) -> None:
        self.command("mlockall" + (" future" if future else ""), self._timeout(self._pages(None)))

    def munlockall(self) -> None:
        self.command("munlockall", self._timeout(self._pages(None)))

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
        return _verified(self.children("verify" + (f" {name}" if name else ""), timeout))

    def children_exit(self, timeout: float | None = None) -> list[int]:
        """Children exit and are reaped; returns their exit statuses (1 = saw corruption)."""
        reply = self.children("exit", timeout)
        self.children_pids = []
        return [int(s) for s in reply.fields["status"].split(",") if s]

    def pids(self) -> tuple[int, list[int]]:
        f = self.command("pids").fields
        return int(f["parent"]), [int(p) for p in f.get("children", "").split(",") if p]

    def move(self, name: str, node: int, move_all: bool = False, first: int | None = None,
             count: int | None = None, timeout: float | None = None) -> MoveResult:
        """move_pages(2) the region to ``node`` (MPOL_MF_MOVE_ALL with move_all)."""
        line = f"move {name} {node}" + (" all" if move_all else "") + _range(first, count)
        f = self.command(line, timeout or self._timeout(count or self._pages(name), 4)).fields
        return MoveResult(int(f["moved"]), int(f["already"]), int(f["failed"]),
                          int(f["unattempted"]), int(f["notmoved"]), _errno_fields(f))

    def nodes(self, name: str, first: int | None = None, count: int | None = None) -> NodeCounts:
        """Where the region's pages are (move_pages with nodes=NULL)."""
        line = f"nodes {name}" + _range(first, count)
        f = self.command(line, self._timeout(count or self._pages(name))).fields
        return NodeCounts(int(f["node0"]), int(f["node1"]), int(f["other"]), _errno_fields(f))

    def mbind(self, name: str, node: int, move_all: bool = False,
              timeout: float | None = None) -> None:
        """mbind(2) the region to ``node`` (MPOL_BIND) with MPOL_MF_MOVE (|MOVE_ALL); where
        the pages went is for :meth:`nodes` to say."""
        self.command(f"mbind {name} {node}" + (" all" if move_all else ""),
                     timeout or self._timeout(self._pages(name), 4))

    def moved(self, name: str) -> dict[str, int]:
        """The region's PFNs against :meth:`kpf_save`'s: same, changed, gone, ksm (now a KSM
        page), changed_ksm, unreadable."""
        f = self.command(f"moved {name}", self._timeout(self._pages(name))).fields
        return PageCounts(f, ("ksm", "changed_ksm"), self.name, f"moved {name}")

    def punch(self, name: str, stride: int = 2) -> int:
        """MADV_DONTNEED all but every ``stride``-th page of a zero-filled region (holes that
        compaction can migrate into); returns the pages freed."""
        reply = self.command(f"punch {name} {int(stride)}", self._timeout(self._pages(name)))
        return reply.number("pages")

    def policy(self, name: str) -> tuple[str, list[int]]:
        f = self.command(f"policy {name}").fields
        return f["mode"], [int(n) for n in f.get("nodes", "").split(",") if n]

    def migrate(self, from_node: int, to_node: int, timeout: float | None = None) -> int:
        """migrate_pages(2) of the whole process; returns pages not moved."""
        reply = self.command(f"migrate {from_node} {to_node}",
                             timeout or self._timeout(self._pages(None), 4))
        return reply.number("notmoved")

    def smaps(self, name: str) -> dict[str, int]:
        """rss_kb anon_kb anonhuge_kb swap_kb locked_kb, vmas and mergeable (VMAs flagged mg)."""
        return {k: int(v) for k, v in self.command(f"smaps {name}").fields.items()}

    def pageflags(self, name: str, first: int | None = None,
                  count: int | None = None) -> dict[str, int]:
        """What backs the region's pages (C workload, root in the guest): present, swapped,
        ksm (pages mapping a KSM page), ksmpfns (distinct KSM pages), thp, zero (the zero
        page), nopfn (PFN hidden or unreadable)."""
        line = f"pageflags {name}" + _range(first, count)
        f = self.command(line, self._timeout(count or self._pages(name))).fields
        return PageCounts(f, ("ksm", "ksmpfns"), self.name, line)

    def trust_kpageflags(self) -> None:
        """Read KPF_KSM even on a kernel known to set it on every anonymous page (the test of
        that ABI); otherwise such readings raise CheckUnavailable."""
        self.command("kpftrust")

    def kpf_save(self, name: str) -> int:
        """Remember the PFNs of the region's present pages; returns how many."""
        return self.command(f"kpf {name} save", self._timeout(self._pages(name))).number("saved")

    def kpf(self, name: str) -> dict[str, int]:
        """/proc/kpageflags of the PFNs saved by :meth:`kpf_save`, mapped or not: saved, ksm,
        swapcache, ksm_swapcache (both), mapped, unreadable."""
        f = self.command(f"kpf {name}", self._timeout(self._pages(name))).fields
        # all about KSM pages, and copied whole by its callers: refuse at once where it lies
        return PageCounts(f, ("ksm", "ksm_swapcache"), self.name, f"kpf {name}").known()

    def race_forks(self, path: str, value: int | str, keep: int,
                   probe: tuple[int, int, int] | None = None, delay_ms: int | None = None,
                   timeout: float = 300.0) -> dict[str, str]:
        """Write VALUE to PATH from a helper (this mm not copied) while forking in a loop until
        the write returns; the first ``keep`` children are kept (see ``children``). probe:
        (pid, addr, pages) whose first and last page are checked for KSM before each fork.
        delay_ms: the race forced off (one fork, after the write returned). Returns the
        reply's fields (rc, t0, t1 in guest microseconds, forks, kept, inside, inside_p,
        inside_k, probes, pids)."""
        line = f"race {path} {value} fork {int(keep)}"
        if probe is not None:
            line += f" probe={int(probe[0])}:{int(probe[1]):#x}:{int(probe[2])}"
        if delay_ms is not None:
            line += f" delay={int(delay_ms)}"
        fields = self.command(line, timeout).fields
        self.children_pids += [int(p) for p in fields.get("pids", "").split(",") if p]
        return fields

    def reserve(self, name: str, pages: int, prot: str, merge: bool = False,
                lock: str = "") -> dict[str, str]:
        """An mmap never touched (prot "none" or "rw"), not a region (verify skips it);
        lock: "lock" (mlock) or "lockonfault". The reply says locked=1 when VM_LOCKED."""
        line = f"reserve {name} {pages} {prot}" + (" merge" if merge else "")
        return self.command(line + (f" {lock}" if lock else "")).fields

    def vmop(self, name: str, op: str, first: int | None = None, count: int | None = None,
             pages: int | None = None) -> dict[str, str]:
        """munmap|dontneed|unmergeable|protro|protnone|protrw FIRST COUNT, move, shrink PAGES:
        one syscall with guest timestamps (t0, t1). munmap and dontneed split the region (the
        reply's tail= and zeroed= name the new pieces); region sizes follow."""
        line = f"vmop {name} {op}" + _range(first, count) + (f" {pages}" if pages else "")
        f = self.command(line, self._timeout(self._pages(name))).fields
        self.regions[name] = int(f["pages"])
        self.regions.update({f[k]: 0 for k in ("tail", "zeroed") if k in f})
        return f

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


def _range(first: int | None, count: int | None) -> str:
    if (first is None) != (count is None):
        raise ValueError("give both first and count, or neither")
    return f" {first} {count}" if first is not None else ""


def _verified(reply: Reply) -> int:
    m = re.search(r"verified (\d+) pages", reply.text)
    if m is None:
        raise WorkloadError(f"unexpected reply to '{reply.command}': {reply.text}",
                            command=reply.command, reply=reply.text)
    return int(m.group(1))
