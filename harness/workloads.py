"""Build the guest workloads and drive them over their line protocol.

``workloads/ksmwork.c`` (static C) and ``workloads/ksm_py_worker.py`` (stdlib Python) read one
command per line and answer one line, ``ok ...`` or ``err ...`` (the protocol is documented at
the top of ksmwork.c). :class:`Workload` sends one command at a time and turns replies into
values or exceptions: ``err corrupt`` is :class:`DataCorruption`, any other ``err`` is
:class:`WorkloadError`, silence past the deadline is :class:`WorkloadTimeout`.

The harness uploads the binary itself: :func:`build` gives the host path, :data:`GUEST_BINARY`
and :data:`GUEST_PY_WORKER` say where the workloads are expected in the guest.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from harness.access.remote import CommandTimeout, Process, Runner, Spawner, quote
from harness.errors import HarnessError, MissingPackageError

WORKLOADS_DIR = Path(__file__).resolve().parent.parent / "workloads"
PY_WORKER_SOURCE = WORKLOADS_DIR / "ksm_py_worker.py"
GUEST_DIR = "/opt/ksm"
GUEST_BINARY = f"{GUEST_DIR}/ksmwork"
GUEST_PY_WORKER = f"{GUEST_DIR}/ksm_py_worker.py"
MAIN_PROGRAM = "ksmwork"
CFLAGS = ("-static", "-O2", "-Wall", "-Wextra", "-Werror")
APT_INSTALL = "apt-get install -y gcc libc6-dev"

# Deadlines: a fixed part plus a per-page part, generous for TCG (C fills ~5 us/page natively,
# 10-30x that under TCG; Python ~7x slower than C).
BASE_TIMEOUT = 60.0
C_SECONDS_PER_PAGE = 0.0005
PY_SECONDS_PER_PAGE = 0.005


class BuildError(HarnessError):
    """A workload did not compile (with gcc and libc6-dev present)."""


class WorkloadError(Exception):
    """A workload refused a command, died, or hung. Not a HarnessError: inside a test it is a
    test failure (possibly the kernel's fault), not a usage error."""

    def __init__(self, message: str, workload: str = "", command: str = "",
                 reply: str = "") -> None:
        super().__init__(message)
        self.workload = workload
        self.command = command
        self.reply = reply


class DataCorruption(WorkloadError):
    """Memory did not hold what the workload wrote: the bug KSM tests exist to catch."""

    def __init__(self, message: str, workload: str, command: str, reply: str,
                 region: str, page: int, offset: int, expected: int, got: int,
                 pages: int, child: int | None) -> None:
        super().__init__(message, workload, command, reply)
        self.region = region
        self.page = page
        self.offset = offset
        self.expected = expected
        self.got = got
        self.pages = pages
        self.child = child


class WorkloadTimeout(WorkloadError):
    """No reply before the deadline; the workload is unusable afterwards (a late reply would
    answer the wrong command)."""


class WorkloadDied(WorkloadError):
    """The workload exited or crashed while a command was outstanding."""

    def __init__(self, message: str, workload: str, command: str, reply: str,
                 status: int | None) -> None:
        super().__init__(message, workload, command, reply)
        self.status = status


_CORRUPT = re.compile(r"corrupt (?P<region>\S+) page (?P<page>\d+) offset (?P<offset>\d+) "
                      r"expected 0x(?P<expected>[0-9a-f]+) got 0x(?P<got>[0-9a-f]+)")
_FIELD = re.compile(r"(?<!\S)([A-Za-z_][A-Za-z0-9_]*)=(\S*)")


# ---- building ----

def build(cache_dir: Path, sources: Path = WORKLOADS_DIR) -> Path:
    """Compile every ``sources/*.c`` statically into ``cache_dir``; return ksmwork's path.

    Binaries are kept under a key made of the sources, the flags and the gcc version, so they
    are rebuilt only when one of those changes."""
    return build_all(cache_dir, sources)[MAIN_PROGRAM]


def build_all(cache_dir: Path, sources: Path = WORKLOADS_DIR) -> dict[str, Path]:
    """Like :func:`build`, returning every program by name (the .c file's stem)."""
    c_files = sorted(sources.glob("*.c"))
    if not c_files:
        raise BuildError(f"no workload sources (*.c) in {sources}")
    gcc = _require_gcc()
    out_dir = Path(cache_dir) / f"workloads-{_build_key(gcc, c_files)}"
    out_dir.mkdir(parents=True, exist_ok=True)
    built = {}
    for src in c_files:
        target = out_dir / src.stem
        if not _is_executable(target):
            _compile(gcc, src, target)
        built[src.stem] = target
    return built


def install(guest: Runner, cache_dir: Path, guest_dir: str = GUEST_DIR) -> tuple[str, str]:
    """Build if needed and upload ksmwork and the Python worker into ``guest_dir``; returns
    their guest paths (GUEST_BINARY, GUEST_PY_WORKER with the default directory)."""
    binary = build(cache_dir)
    guest.run(f"mkdir -p {quote(guest_dir)}", timeout=30, check=True)
    paths = (f"{guest_dir}/{MAIN_PROGRAM}", f"{guest_dir}/{PY_WORKER_SOURCE.name}")
    guest.put(binary, paths[0], 0o755)
    guest.put(PY_WORKER_SOURCE, paths[1], 0o755)
    return paths


def _require_gcc() -> str:
    gcc = shutil.which("gcc")
    if gcc is None:
        raise MissingPackageError(f"gcc is needed to build the guest workloads: {APT_INSTALL}")
    libc = subprocess.run([gcc, "-print-file-name=libc.a"], capture_output=True, text=True,
                          check=False, timeout=30).stdout.strip()
    if not os.path.isabs(libc):  # gcc echoes the bare name when it cannot find it
        raise MissingPackageError(
            f"static libc (libc.a) is needed to build the guest workloads: {APT_INSTALL}")
    return gcc


def _build_key(gcc: str, c_files: list[Path]) -> str:
    version = subprocess.run([gcc, "--version"], capture_output=True, text=True,
                             check=False, timeout=30).stdout
    digest = hashlib.sha256()
    digest.update(version.encode())
    digest.update(" ".join(CFLAGS).encode())
    for src in c_files:
        digest.update(src.name.encode() + b"\0" + src.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _compile(gcc: str, src: Path, target: Path) -> None:
    # Compile to a temporary name and rename: concurrent builds never see half a binary.
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    try:
        result = subprocess.run([gcc, *CFLAGS, "-o", tmp, str(src)], capture_output=True,
                                text=True, check=False, timeout=300)
        if result.returncode != 0:
            text = result.stderr + result.stdout
            if re.search(r"fatal error: \S+\.h: No such file|cannot find -lc\b", text):
                raise MissingPackageError(
                    f"C headers or static libc missing to build {src.name}: {APT_INSTALL}")
            tail = " | ".join(text.strip().splitlines()[-5:])
            raise BuildError(f"gcc failed on {src}: {tail}")
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# ---- replies ----

@dataclass(frozen=True)
class Reply:
    """One reply line, e.g. ``ok moved=3 already=0 ...``."""

    command: str
    text: str

    @property
    def ok(self) -> bool:
        return self.text == "ok" or self.text.startswith("ok ")

    @property
    def body(self) -> str:
        return self.text.split(" ", 1)[1] if " " in self.text else ""

    @property
    def fields(self) -> dict[str, str]:
        """key=value words; the first wins ("ok bye status=0 children: ok ... status=0,0")."""
        found: dict[str, str] = {}
        for key, value in _FIELD.findall(self.text):
            found.setdefault(key, value)
        return found

    def number(self, key: str) -> int:
        value = self.fields.get(key)
        if value is None:
            raise WorkloadError(f"reply to '{self.command}' lacks {key}=: {self.text}",
                                command=self.command, reply=self.text)
        return int(value, 0)


@dataclass(frozen=True)
class MoveResult:
    """What move_pages(2) did to a region: see ``move`` in ksmwork.c."""

    moved: int
    already: int
    failed: int
    unattempted: int
    notmoved: int
    errors: dict[str, int] = field(default_factory=dict)  # errno name -> pages, e.g. EBUSY

    @property
    def on_target(self) -> int:
        return self.moved + self.already


@dataclass(frozen=True)
class NodeCounts:
    node0: int
    node1: int
    other: int
    errors: dict[str, int] = field(default_factory=dict)  # e.g. ENOENT: pages not present


def _errno_fields(fields: dict[str, str]) -> dict[str, int]:
    return {k: int(v) for k, v in fields.items() if re.fullmatch(r"E[A-Z0-9]+", k)}


def parse_corruption(text: str) -> dict[str, int | str | None] | None:
    """The details of an ``err corrupt ...`` reply, or None if it is not one."""
    if not text.startswith("err corrupt"):
        return None
    m = _CORRUPT.search(text)
    fields = dict(_FIELD.findall(text))
    if m is None:
        return {"region": "?", "page": -1, "offset": -1, "expected": -1, "got": -1,
                "pages": int(fields.get("pages", "0")), "child": None}
    return {"region": m["region"], "page": int(m["page"]), "offset": int(m["offset"]),
            "expected": int(m["expected"], 16), "got": int(m["got"], 16),
            "pages": int(fields.get("pages", "1")),
            "child": int(fields["child"]) if "child" in fields else None}


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
        try:
            status = self.proc.wait(timeout)
        except CommandTimeout:
            self.kill()
            raise WorkloadTimeout(f"workload '{self.name}' answered exit ({reply.text}) but "
                                  f"still runs after {timeout:.0f}s", self.name, "exit",
                                  reply.text) from None
        self.exit_status = status
        self._unusable = f"it exited with status {status}"
        if check and status != 0:
            why = " (data corruption detected earlier)" if status == 1 else ""
            raise WorkloadError(f"workload '{self.name}' exited with status {status}{why}",
                                self.name, "exit", reply.text)
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
        except CommandTimeout:
            self._unusable = f"'{line}' timed out"
            raise WorkloadTimeout(f"workload '{self.name}' (pid {self.pid}) did not answer "
                                  f"'{line}' within {timeout:.0f}s", self.name, line) from None
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
        raise WorkloadError(f"workload '{self.name}' refused '{line}': {text}", self.name,
                            line, text)

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
        return {k: int(v) for k, v in f.items()}

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
