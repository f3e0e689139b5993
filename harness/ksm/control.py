"""The one place that knows KSM's sysfs (/sys/kernel/mm/ksm) and its per-process files.

What the kernel's counters mean exactly (mm/ksm.c, Documentation/admin-guide/mm/ksm.rst):

- ``pages_shared``: KSM pages in use, i.e. physical pages that back merged content (one per
  stable node, or per stable node *dup* once max_page_sharing split a node into a chain).
- ``pages_sharing``: the extra mappings of those KSM pages, i.e. how many pages are saved. A KSM
  page mapped m times counts 1 in pages_shared and m-1 in pages_sharing.
- ``pages_unshared``: pages ksmd scans repeatedly that found no partner (unique content, sitting
  in the unstable tree).
- ``pages_volatile``: pages whose content changes too fast to be put in a tree (rmap items minus
  the three above).
- ``full_scans``: completed passes over all mergeable areas; ``run=2`` resets it.
- ``stable_node_chains`` / ``stable_node_dups``: nodes turned into chains because more than
  max_page_sharing mappings share one content, and the dups (one KSM page each) they hold.

Knob facts (6.1): ``run`` 0 stop / 1 merge / 2 unmerge everything (blocks until done);
``merge_across_nodes`` and ``max_page_sharing`` only change while nothing is merged (EBUSY
otherwise; max_page_sharing < 2 is EINVAL; writing the current value always succeeds).
"""
from __future__ import annotations

import errno
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from harness.access.remote import (
    CommandFailed,
    CommandResult,
    CommandTimeout,
    Process,
    Runner,
    quote,
)
from harness.errors import KernelError

KSM_DIR = "/sys/kernel/mm/ksm"

# Names this module knows; what a kernel really has is read with ls (never assumed).
KNOBS = (
    "run", "pages_to_scan", "sleep_millisecs", "merge_across_nodes", "max_page_sharing",
    "use_zero_pages", "stable_node_chains_prune_millisecs",
    # newer than 6.1:
    "smart_scan", "advisor_mode", "advisor_max_cpu", "advisor_min_pages_to_scan",
    "advisor_max_pages_to_scan", "advisor_target_scan_time",
)
COUNTERS = (
    "full_scans", "pages_shared", "pages_sharing", "pages_unshared", "pages_volatile",
    "stable_node_chains", "stable_node_dups",
    # newer than 6.1:
    "general_profit", "ksm_zero_pages", "pages_scanned", "pages_skipped",
)
# Knobs that shape the stable tree: they only change while nothing is merged.
TREE_KNOBS = ("merge_across_nodes", "max_page_sharing")

RUN_STOP, RUN_MERGE, RUN_UNMERGE = 0, 1, 2

# Scan cost under TCG: 64 MiB (16384 pages) merged in ~1.1 s at pages_to_scan=10000,
# sleep_millisecs=0, i.e. ~70 us a page; 100 us leaves room for a loaded host.
SCAN_SECONDS_PER_PAGE = 100e-6
DEADLINE_FLOOR = 30.0
DEADLINE_SLACK = 3.0
FAST_PAGES_TO_SCAN = 10000
# Longest pause between two polls of the counters: a snapshot costs ~40 ms over a GuestShell.
POLL_MAX = 0.25
FAST_SLEEP_MILLISECS = 0

# errno names from the strerror texts the guest's shell prints ("echo: I/O error").
_STRERROR = sorted(((os.strerror(code), name) for code, name in errno.errorcode.items()),
                   key=lambda pair: -len(pair[0]))


class KsmError(Exception):
    """KSM did something unexpected (a test failure, possibly a kernel bug)."""


class KsmUnavailable(KernelError):
    """The kernel has no KSM (CONFIG_KSM=n) or lacks a knob a test needs."""


class KsmWriteError(KsmError):
    """The kernel refused a write to a KSM file; ``errno_name`` is e.g. EBUSY or EINVAL."""

    def __init__(self, name: str, value: object, errno_name: str, detail: str) -> None:
        super().__init__(f"writing {value} to KSM's {name} failed: {errno_name} ({detail})")
        self.name = name
        self.value = value
        self.errno_name = errno_name


class KsmTimeout(KsmError, CommandTimeout):
    """A KSM file write (typically run=2) did not return: a hang candidate. Also a
    CommandTimeout, so whatever treats guest command timeouts as hangs (the health monitor's
    hang evidence) treats this one the same way."""

    def __init__(self, message: str, command: str = "", timeout: float = 0.0) -> None:
        Exception.__init__(self, message)
        self.command = command
        self.timeout = timeout


class KsmNoProgress(KsmError):
    """ksmd did not scan, or did not reach the expected state, before the deadline."""

    def __init__(self, message: str, before: KsmSnapshot, after: KsmSnapshot) -> None:
        super().__init__(message)
        self.before = before
        self.after = after


class KsmUnmergeIncomplete(KsmError):
    """run=2 returned but KSM pages remain."""


# ---- pure helpers (unit tested without a guest) ----

@dataclass(frozen=True)
class KsmSnapshot:
    """Every readable file of /sys/kernel/mm/ksm at one moment (raw text values)."""

    values: dict[str, str]
    taken: float = field(default_factory=time.monotonic)

    def __getitem__(self, name: str) -> int:
        if name not in self.values:
            raise KeyError(f"{KSM_DIR}/{name} is not in this kernel's KSM snapshot")
        try:
            return int(self.values[name])
        except ValueError:
            raise KsmError(f"{KSM_DIR}/{name} is not a number: {self.values[name]!r}") from None

    def __contains__(self, name: object) -> bool:
        return name in self.values

    def get(self, name: str, default: int = 0) -> int:
        return self[name] if name in self.values else default

    def text(self, name: str) -> str:
        return self.values[name]

    def counters(self) -> dict[str, int]:
        """The known counters this kernel has, as numbers."""
        return {n: self[n] for n in COUNTERS if n in self.values and _is_int(self.values[n])}

    def summary(self) -> str:
        """One line for failure messages: counters and the scan knobs."""
        keys = [n for n in ("run", "full_scans", "pages_shared", "pages_sharing",
                            "pages_unshared", "pages_volatile", "stable_node_chains",
                            "stable_node_dups", "pages_to_scan", "sleep_millisecs")
                if n in self.values]
        return " ".join(f"{k}={self.values[k]}" for k in keys)


def _is_int(text: str) -> bool:
    return re.fullmatch(r"-?\d+", text.strip()) is not None


def parse_snapshot(text: str) -> dict[str, str]:
    """Parse ``grep -H '' *`` run inside the KSM directory: ``name:value`` lines (a directory
    prefix, if any, is dropped)."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and name:
            values[name.rsplit("/", 1)[-1]] = value.strip()
    return values


def parse_ls(text: str) -> dict[str, bool]:
    """Parse ``ls -l`` of the KSM directory into {file: writable by its owner}."""
    files: dict[str, bool] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0].startswith("-") and len(parts[0]) >= 3:
            files[parts[-1]] = parts[0][2] == "w"
    return files


def parse_process_stat(text: str) -> dict[str, int]:
    """Parse the output of :meth:`Ksm.process_stat`'s command: ``== FILE`` headers followed by
    /proc/PID/ksm_stat lines ("ksm_rmap_items 12", newer kernels "key: value" or yes/no) and
    /proc/PID/ksm_merging_pages (a single number)."""
    stats: dict[str, int] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("== "):
            section = line[3:]
            continue
        if not line:
            continue
        if section == "ksm_merging_pages":
            if _is_int(line):
                stats["ksm_merging_pages"] = int(line)
            continue
        m = re.fullmatch(r"([A-Za-z_]\w*):?\s+(\S+)", line)
        if m is None:
            continue
        value = m.group(2)
        if _is_int(value):
            stats[m.group(1)] = int(value)
        elif value in ("yes", "no"):
            stats[m.group(1)] = int(value == "yes")
    return stats


def _read_all(ksm_dir: str) -> str:
    """Shell that prints ``name:value`` for every readable file of ``ksm_dir`` with builtins
    only (no process to fork: a fork+exec costs ~80 ms in a TCG guest)."""
    return (f"for __kf in {ksm_dir}/*; do if read -r __kv < \"$__kf\"; then "
            f"echo \"${{__kf##*/}}:$__kv\"; fi; done 2>/dev/null")


def errno_from_text(text: str) -> str:
    """The errno name (EBUSY, EINVAL...) whose strerror text appears in ``text``, or "?"."""
    for message, name in _STRERROR:
        if message and message in text:
            return name
    return "?"


def selected_value(text: str) -> str:
    """The writable form of a knob value: "[none] scan-time" selects "none"."""
    m = re.search(r"\[([^\]]+)\]", text)
    return m.group(1) if m else text.strip()


@dataclass(frozen=True)
class ExpectedCounts:
    pages_shared: int
    pages_sharing: int
    stable_node_chains: int
    stable_node_dups: int
    unmerged: int  # identical pages left without a partner (a remainder of 1)


def expected_counts(n_identical_pages: int, max_page_sharing: int) -> ExpectedCounts:
    """What KSM ends with when it merges n distinct pages of identical content, each mapped once
    (use_zero_pages=0 for zero content; one NUMA tree, i.e. merge_across_nodes=1 or all on one
    node).

    Kernel rule (mm/ksm.c): a stable node (or chain dup) accepts another mapping only while its
    rmap_hlist_len < max_page_sharing, and the fullest candidate dup is filled first. So each dup
    holds max_page_sharing mappings: its KSM page counts in pages_shared, the other
    max_page_sharing - 1 in pages_sharing. A new dup needs two pages merging in the unstable
    tree, so a remainder of exactly one page stays unshared. A node becomes a chain (holding the
    dups) only once a second dup exists.

    Not covered: a process forked *after* merging maps the KSM pages again, and those mappings
    join their dup beyond the limit (a "KSM fork": pages_sharing grows, pages_shared does not).
    """
    if max_page_sharing < 2:
        raise ValueError("max_page_sharing is at least 2 (the kernel refuses less)")
    if n_identical_pages < 2:
        return ExpectedCounts(0, 0, 0, 0, max(n_identical_pages, 0))
    full, rest = divmod(n_identical_pages, max_page_sharing)
    dups = full + (1 if rest >= 2 else 0)
    merged = n_identical_pages - (1 if rest == 1 else 0)
    chained = dups >= 2
    return ExpectedCounts(pages_shared=dups, pages_sharing=merged - dups,
                          stable_node_chains=1 if chained else 0,
                          stable_node_dups=dups if chained else 0,
                          unmerged=1 if rest == 1 else 0)


def expected_shared_sharing(n_identical_pages: int, max_page_sharing: int) -> tuple[int, int]:
    """(pages_shared, pages_sharing): 16384 pages at 256 -> (64, 16320)."""
    e = expected_counts(n_identical_pages, max_page_sharing)
    return e.pages_shared, e.pages_sharing


def expected_across_nodes(pages_per_node: Iterable[int], max_page_sharing: int,
                          merge_across_nodes: bool) -> tuple[int, int]:
    """(pages_shared, pages_sharing) for one content spread over NUMA nodes: one tree with
    merge_across_nodes=1, a tree per node with 0 (same content on 2 nodes: 1 vs 2 shared)."""
    counts = list(pages_per_node)
    if merge_across_nodes:
        return expected_shared_sharing(sum(counts), max_page_sharing)
    per_node = [expected_shared_sharing(n, max_page_sharing) for n in counts]
    return sum(s for s, _ in per_node), sum(s for _, s in per_node)


def scan_deadline(pages: int, pages_to_scan: int, sleep_millisecs: int, full_scans: int = 2,
                  floor: float = DEADLINE_FLOOR,
                  seconds_per_page: float = SCAN_SECONDS_PER_PAGE,
                  slack: float = DEADLINE_SLACK) -> float:
    """Seconds to allow for ``full_scans`` scans of ``pages`` mergeable pages (plus the scan in
    progress at the start): ksmd scans pages_to_scan pages per batch, sleeps sleep_millisecs
    between batches, and each page costs about seconds_per_page under TCG."""
    batches = math.ceil(max(pages, 0) / max(pages_to_scan, 1))
    one_scan = batches * max(sleep_millisecs, 0) / 1000 + max(pages, 0) * seconds_per_page
    return max(floor, slack * (full_scans + 1) * one_scan)


# ---- guest access ----

class Ksm:
    """KSM control over a :class:`harness.remote.Runner` (one guest command per call, so
    snapshots are fast and consistent enough; see :meth:`exact_counters` for exact ones)."""

    def __init__(self, runner: Runner, timeout: float = 30.0, ksm_dir: str = KSM_DIR) -> None:
        self.runner = runner
        self.timeout = timeout
        self.dir = ksm_dir  # another directory only for tests on a fake tree
        self._files: dict[str, bool] | None = None

    # -- discovery --

    def files(self) -> dict[str, bool]:
        """{file: writable} for what this kernel has (read once, with ls)."""
        if self._files is None:
            result = self.runner.run(f"ls -l {self.dir}", timeout=self.timeout)
            files = parse_ls(result.stdout) if result.ok else {}
            if not files:
                raise KsmUnavailable(f"this kernel has no KSM ({self.dir} missing or empty: "
                                     f"{(result.stderr or result.stdout).strip()[:200]}); "
                                     "it needs CONFIG_KSM=y")
            self._files = files
        return self._files

    def has(self, name: str) -> bool:
        return name in self.files()

    def require(self, name: str) -> None:
        if not self.has(name):
            raise KsmUnavailable(f"this kernel has no {self.dir}/{name} "
                                 f"(it has: {' '.join(sorted(self.files()))})")

    # -- reading --

    def snapshot(self) -> KsmSnapshot:
        """Every readable KSM file, read in one guest command."""
        files = self.files()
        for _ in range(3):  # a file caught mid-rewrite reads empty (fake trees only): again
            result = self.runner.run(_read_all(self.dir), timeout=self.timeout)
            values = parse_snapshot(result.stdout)
            if not values or all(name in values for name in files):
                break
        if not values:
            raise KsmError(f"could not read {self.dir}: {result.stderr.strip()[:200]}")
        return KsmSnapshot(values)

    def get(self, name: str) -> int:
        """One file's value as a number."""
        return self._read(name)

    def _read(self, name: str) -> int:
        self.require(name)
        result = self.runner.run(f"read -r __k < {self.dir}/{name} && echo \"$__k\"",
                                 timeout=self.timeout, check=True)
        return KsmSnapshot({name: result.stdout.strip()})[name]

    def knobs(self) -> dict[str, str]:
        """Current values of every writable file (the knobs this kernel really has)."""
        snap = self.snapshot()
        return {n: snap.text(n) for n, writable in self.files().items()
                if writable and n in snap}

    def exact_counters(self) -> KsmSnapshot:
        """A snapshot with ksmd paused: counters move while it scans. Sets run=0, reads,
        restores run, all in one guest command (writing run waits for ksmd's current batch)."""
        d, echo = self.dir, self._echo()
        script = (f"__kr=; read -r __kr < {d}/run; __ks=0\n"
                  f"if [ \"$__kr\" = 1 ]; then {echo} 0 > {d}/run || __ks=4; fi\n"
                  f"if [ $__ks = 0 ]; then {_read_all(d)}; fi\n"
                  f"if [ \"$__kr\" = 1 ]; then {echo} 1 > {d}/run || __ks=5; fi\n"
                  f"echo \"saved_run:$__kr\"; echo \"exact_status:$__ks\"")
        result = self._run(script, "exact counters (run=0, read, restore run)", self.timeout * 2)
        values = parse_snapshot(result.stdout)
        status = values.pop("exact_status", "?")
        if status != "0" or not values.get("saved_run"):
            raise KsmError(f"reading exact KSM counters failed (step {status}): "
                           f"{result.stderr.strip()[:200]}")
        values["run"] = values.pop("saved_run")
        return KsmSnapshot(values)

    def process_stat(self, pid: int) -> dict[str, int]:
        """/proc/PID/ksm_stat (e.g. ksm_rmap_items) and /proc/PID/ksm_merging_pages, whichever
        this kernel has; {} when it has neither."""
        d = f"/proc/{int(pid)}"
        script = (f"[ -d {d} ] || exit 3; for f in ksm_stat ksm_merging_pages; do "
                  f"if [ -r {d}/$f ]; then echo \"== $f\"; cat {d}/$f; fi; done")
        result = self.runner.run(script, timeout=self.timeout)
        if result.status == 3:
            raise KsmError(f"no process {pid} in the guest")
        return parse_process_stat(result.stdout)

    # -- writing --

    def set(self, name: str, value: int | str, timeout: float | None = None) -> None:
        """Write one knob and read it back. A refusal raises KsmWriteError with the errno
        (EBUSY: tree knob while pages are merged; EINVAL: bad value)."""
        self.require(name)
        if not self.files()[name]:
            raise KsmWriteError(name, value, "EACCES", "read-only file")
        text = str(value)
        if not re.fullmatch(r"[A-Za-z0-9_-]+", text):
            raise ValueError(f"refusing odd value {text!r} for {name}")
        path = f"{self.dir}/{name}"
        # /bin/echo, not the shell's builtin: dash's echo reports every failed write as
        # "I/O error", coreutils' (and busybox's) print the errno text (EBUSY, EINVAL...).
        result = self._run(f"{self._echo()} {quote(text)} > {path} && read -r __k < {path} "
                           f"&& echo \"$__k\"", f"writing {text} to {path}",
                           timeout or self.timeout)
        if not result.ok:
            detail = (result.stderr or result.stdout).strip()
            raise KsmWriteError(name, value, errno_from_text(detail), detail[-200:])
        got = result.stdout.strip()
        # run=2 reads back 2 once unmerged; other knobs read back what was written.
        if selected_value(got) != text:
            raise KsmWriteError(name, value, "readback", f"reads back {got!r}")

    def _echo(self) -> str:
        # /bin/echo, not the shell's builtin: dash's echo reports every failed write as
        # "I/O error", coreutils' (and busybox's) print the errno text (EBUSY, EINVAL...).
        # bash's builtin does too: a GuestShell (bash) saves the fork+exec.
        return "echo" if getattr(self.runner, "echo_reports_errno", False) else "/bin/echo"

    def _run(self, cmd: str, what: str, timeout: float) -> CommandResult:
        try:
            return self.runner.run(cmd, timeout=timeout)
        except CommandTimeout as e:
            raise KsmTimeout(f"{what} did not return within {timeout:.0f}s "
                             "(KSM or ksmd hung?)") from e

    def unmerge_all(self, timeout: float = 300.0) -> KsmSnapshot:
        """run=2: break every KSM page (blocks until done), then check nothing is left.

        When run is 2 already, it goes through run=0 first: the kernel ignores a write of the
        current value, and a new run=2 also removes the stable nodes a previous one had to
        leave behind (pages still mapped by an mm exiting at that moment)."""
        if self.get("run") == RUN_UNMERGE:
            self.set("run", RUN_STOP)
        self.set("run", RUN_UNMERGE, timeout)
        snap = self.snapshot()
        if snap.get("pages_shared") or snap.get("pages_sharing"):
            raise KsmUnmergeIncomplete(f"run=2 returned but KSM pages remain: {snap.summary()}")
        return snap

    def defaults_capture(self) -> dict[str, str]:
        """Every writable knob's current value, to hand to :meth:`restore` after a test."""
        return {name: selected_value(value) for name, value in self.knobs().items()}

    def restore(self, defaults: dict[str, str], timeout: float = 300.0) -> None:
        """Put the knobs back. Order matters: run=2 first (tree knobs only change while nothing
        is merged, and it leaves no merged pages behind), tree knobs, other knobs, run last."""
        self.unmerge_all(timeout)
        current = self.defaults_capture()
        todo = {n: v for n, v in defaults.items() if n in current and n != "run"}
        order = [n for n in TREE_KNOBS if n in todo] + [n for n in todo if n not in TREE_KNOBS]
        for name in order:
            if current[name] != todo[name]:
                self.set(name, todo[name])
        if "run" in defaults and defaults["run"] != str(RUN_UNMERGE):
            self.set("run", defaults["run"])
        after = self.defaults_capture()
        wrong = {n: (after.get(n), v) for n, v in defaults.items()
                 if n in after and after[n] != v and not (n == "run" and v == str(RUN_UNMERGE))}
        if wrong:
            raise KsmError("KSM knobs not restored: " + ", ".join(
                f"{n}={got} (want {want})" for n, (got, want) in wrong.items()))

    @contextmanager
    def fast_scan(self, pages_to_scan: int = FAST_PAGES_TO_SCAN,
                  sleep_millisecs: int = FAST_SLEEP_MILLISECS) -> Iterator[None]:
        """Scan fast for a test (10000/0 merges 64 MiB in ~1 s under TCG), then put the two
        knobs back."""
        saved = {n: self._read(n) for n in ("pages_to_scan", "sleep_millisecs")}
        try:
            self.set("pages_to_scan", pages_to_scan)
            self.set("sleep_millisecs", sleep_millisecs)
            yield
        finally:
            for name, value in saved.items():
                self.set(name, value)

    # -- waiting --

    def wait_merged(self, predicate: Callable[[KsmSnapshot], bool], min_full_scans: int = 2,
                    timeout: float | None = None, pages: int | None = None,
                    expect: str = "", exact: bool = False) -> KsmSnapshot:
        """Poll until ``min_full_scans`` full scans have completed since the call AND
        ``predicate(snapshot)`` holds; return that snapshot.

        The default deadline follows the scan rate (see :func:`scan_deadline`) for ``pages``
        mergeable pages (default: the rmap items KSM already tracks). ``exact`` re-checks the
        predicate on :meth:`exact_counters` before succeeding. On timeout KsmNoProgress says
        whether ksmd scanned at all, with the counters before and after; ``expect`` describes
        the awaited state in that message."""
        before = self.snapshot()
        if before.get("run") != RUN_MERGE:
            raise KsmError(f"waiting for merges with run={before.text('run')}: ksmd is not "
                           f"merging ({before.summary()})")
        if timeout is None:
            if pages is None:
                pages = sum(before.get(n) for n in ("pages_shared", "pages_sharing",
                                                    "pages_unshared", "pages_volatile"))
            timeout = scan_deadline(pages, before["pages_to_scan"], before["sleep_millisecs"],
                                    min_full_scans)
        start = time.monotonic()
        deadline = start + timeout
        base = before["full_scans"]
        interval = 0.05
        snap = before
        while True:
            snap = self.snapshot()
            scans = snap["full_scans"]
            if scans < base:  # run=2 in between reset full_scans: count from zero
                base = 0
            if scans - base >= min_full_scans and predicate(snap):
                if not exact:
                    return snap
                exact_snap = self.exact_counters()
                if predicate(exact_snap):
                    return exact_snap
            now = time.monotonic()
            if now >= deadline:
                break
            time.sleep(min(interval, deadline - now))  # a poll interval, bounded by deadline
            interval = min(interval * 1.5, POLL_MAX)
        waited = time.monotonic() - start
        done = snap["full_scans"] - base
        goal = f" ({expect})" if expect else ""
        if done <= 0:
            what = (f"ksmd made no progress in {waited:.0f}s: full_scans stayed at "
                    f"{snap['full_scans']}")
        else:
            what = (f"KSM did not reach the expected state{goal} in {waited:.0f}s "
                    f"({done} full scans done, {min_full_scans} required)")
        raise KsmNoProgress(f"{what}; before: {before.summary()}; after: {snap.summary()}",
                            before, snap)

    def wait_counts(self, expected: dict[str, int], pages: int | None = None,
                    timeout: float | None = None, min_full_scans: int = 2,
                    what: str = "") -> KsmSnapshot:
        """Wait (event-driven, with a deadline from the scan rate) until the counters are
        exactly ``expected`` on a snapshot taken with ksmd paused; return that snapshot. On
        timeout raise KsmCountMismatch naming each counter that is off (or KsmNoProgress's
        "ksmd made no progress" message when ksmd did not scan at all)."""
        if pages is None:
            pages = max(expected.get("pages_shared", 0) + expected.get("pages_sharing", 0)
                        + expected.get("pages_unshared", 0), 1)
        try:
            return self.wait_merged(lambda snap: not count_mismatches(snap, expected),
                                    min_full_scans=min_full_scans, timeout=timeout,
                                    pages=pages, exact=True, expect=what)
        except KsmNoProgress as e:
            last = self.exact_counters() if e.after.get("run") == RUN_MERGE else e.after
            wrong = count_mismatches(last, expected)
            if not wrong or e.after["full_scans"] == e.before["full_scans"]:
                raise
            where = f" {what}" if what else ""
            raise KsmCountMismatch(f"KSM counters wrong{where} after waiting "
                                   f"{e.after.taken - e.before.taken:.0f}s: "
                                   f"{describe_mismatches(wrong)} (all: {last.summary()})",
                                   last, wrong) from None

    def assert_counts(self, expected: dict[str, int], what: str = "") -> KsmSnapshot:
        """Read the counters with ksmd paused and check them now (no waiting)."""
        snap = self.exact_counters()
        check_counts(snap, expected, what)
        return snap


# ---- exact expectations (what the kernel defines) ----

# The counters a scenario asserts exactly; the order is the order of failure messages.
EXACT_COUNTERS = ("pages_shared", "pages_sharing", "pages_unshared", "pages_volatile",
                  "stable_node_chains", "stable_node_dups")


class KsmCountMismatch(KsmError):
    """The KSM counters are not what the kernel's rules say they must be. The message names
    every counter that is off, its value and the expected one."""

    def __init__(self, message: str, snapshot: KsmSnapshot,
                 mismatches: dict[str, tuple[int, int]]) -> None:
        super().__init__(message)
        self.snapshot = snapshot
        self.mismatches = mismatches  # counter -> (got, expected)


def count_mismatches(snap: KsmSnapshot, expected: dict[str, int]) -> dict[str, tuple[int, int]]:
    """{counter: (got, expected)} for every expected counter the snapshot does not match (a
    counter this kernel lacks is skipped: detect, don't assume)."""
    return {name: (snap[name], want) for name, want in expected.items()
            if name in snap and snap[name] != want}


def describe_mismatches(mismatches: dict[str, tuple[int, int]]) -> str:
    """``pages_sharing is 4079, expected 4080; pages_unshared is 1, expected 0``."""
    return "; ".join(f"{name} is {got}, expected {want}"
                     for name, (got, want) in mismatches.items())


def check_counts(snap: KsmSnapshot, expected: dict[str, int], what: str = "") -> None:
    """Raise KsmCountMismatch naming each counter that differs from ``expected``."""
    wrong = count_mismatches(snap, expected)
    if wrong:
        where = f" {what}" if what else ""
        raise KsmCountMismatch(f"KSM counters wrong{where}: {describe_mismatches(wrong)} "
                               f"(all: {snap.summary()})", snap, wrong)


class Layout:
    """What the guest maps MADV_MERGEABLE, to derive the counters KSM must end with.

    ``same(content, pages, node)`` adds pages of one identical content (any label: "same:1",
    "zero"...) on a NUMA node (None when the test does not bind them, which needs
    merge_across_nodes=1); ``unique(pages)`` adds pages that match nothing. Each page must be
    mapped once (a process forked after merging maps KSM pages again: see ``ksm_fork``).
    """

    def __init__(self) -> None:
        self.groups: dict[tuple[str, int | None], int] = {}
        self.unique_pages = 0
        self.fork_sharing = 0
        self.forked_volatile = 0

    def same(self, content: str, pages: int, node: int | None = None) -> Layout:
        key = (content, node)
        self.groups[key] = self.groups.get(key, 0) + pages
        return self

    def zero(self, pages: int, node: int | None = None) -> Layout:
        return self.same("zero", pages, node)

    def unique(self, pages: int) -> Layout:
        self.unique_pages += pages
        return self

    def ksm_fork(self, pages: int, children: int = 1) -> Layout:
        """Children forked after ``pages`` pages were merged map those KSM pages again: each
        such mapping joins its KSM page's stable node beyond max_page_sharing (stable_tree_
        search finds the page already is that KSM page), so pages_sharing grows by
        pages * children and nothing else moves."""
        self.fork_sharing += pages * children
        return self

    def forked_unmerged(self, pages: int, children: int = 1) -> Layout:
        """Children forked while ``pages`` pages were in the unstable tree (unique content)
        share those physical pages with the parent (COW). ksmd finds the very same page in the
        unstable tree ("don't substitute a ksm page for a forked page") and leaves the other
        mappings out of every tree: one mapping per page is unshared, the others volatile."""
        self.forked_volatile += pages * children
        return self

    def expected(self, max_page_sharing: int = 256, merge_across_nodes: bool = True,
                 use_zero_pages: bool = False) -> dict[str, int]:
        """The exact counters after at least two full scans with nothing changing.

        Zero-filled content with use_zero_pages=1 maps the kernel's zero page instead of a KSM
        page: it counts nowhere (6.1 has no ksm_zero_pages counter) and its rmap items go away.
        With merge_across_nodes=0 each node has its own stable tree: one content on two nodes
        makes two sets of KSM pages."""
        merged: dict[tuple[str, int | None], int] = {}
        for (content, node), pages in self.groups.items():
            if use_zero_pages and content == "zero":
                continue
            if not merge_across_nodes and node is None:
                raise ValueError(f"content {content!r} has no node: with merge_across_nodes=0 "
                                 "the expectation depends on where pages are")
            key = (content, node if not merge_across_nodes else None)
            merged[key] = merged.get(key, 0) + pages
        out = {name: 0 for name in EXACT_COUNTERS}
        out["pages_unshared"] = self.unique_pages
        for pages in merged.values():
            e = expected_counts(pages, max_page_sharing)
            out["pages_shared"] += e.pages_shared
            out["pages_sharing"] += e.pages_sharing
            out["pages_unshared"] += e.unmerged
            out["stable_node_chains"] += e.stable_node_chains
            out["stable_node_dups"] += e.stable_node_dups
        out["pages_sharing"] += self.fork_sharing
        out["pages_volatile"] += self.forked_volatile
        return out

    @property
    def pages(self) -> int:
        """Mergeable pages in all (to size scan deadlines)."""
        return sum(self.groups.values()) + self.unique_pages + self.fork_sharing


ZERO_COUNTS = {name: 0 for name in EXACT_COUNTERS}
# What "everything gone" means while ksmd runs (run=1), once every mergeable process exited or
# freed its regions: no page in any tree. The stable nodes may linger (6.1): __ksm_exit comes
# before exit_mmap, so ksmd can drop an exiting mm's rmap items while its KSM pages still exist
# and nothing revisits the emptied dups once the pages are freed; and when the last dup of a
# chain goes stale, remove_node_from_stable_tree() only unlinks it, leaving the empty chain.
# A stable tree search prunes them; run=2 removes every stable node (ZERO_COUNTS after it).
# Wait with min_full_scans=0: with no mergeable mm left, ksmd drops the slots and stops.
ALL_GONE = {name: 0 for name in EXACT_COUNTERS if not name.startswith("stable_node_")}


class PendingWrite:
    """A KSM file write running in the background in the guest (``run=2`` blocks until every
    page is unmerged: tests race it with fork, exit, swapoff...)."""

    def __init__(self, proc: Process, name: str, value: int | str, started: float) -> None:
        self.proc = proc
        self.name = name
        self.value = value
        self.started = started
        self.status: int | None = None
        self.detail = ""
        self._early: str | None = None  # a line read by done()

    def done(self) -> bool:
        """True once the write has returned (never blocks for long; the outcome is then
        reported by :meth:`wait`)."""
        if self.status is not None or self._early is not None:
            return True
        try:
            self._early = self.proc.read_line(0.01)
        except CommandTimeout:
            return False
        except (EOFError, OSError):
            self._early = ""
        return True

    def wait(self, timeout: float = 300.0) -> float:
        """Wait for the write to return; raise KsmTimeout past ``timeout`` (a hang candidate)
        or KsmWriteError if the kernel refused it; return how long it took since the start."""
        deadline = time.monotonic() + timeout
        lines: list[str] = []
        while self.status is None:
            left = deadline - time.monotonic()
            try:
                if self._early is not None:
                    line, self._early = self._early, None
                    if not line:
                        raise EOFError
                elif left <= 0:
                    raise CommandTimeout("", timeout)
                else:
                    line = self.proc.read_line(left)
            except CommandTimeout:
                self.proc.kill()
                raise KsmTimeout(f"writing {self.value} to KSM's {self.name} did not return "
                                 f"within {timeout:.0f}s (KSM or ksmd hung?)") from None
            except (EOFError, OSError):
                raise KsmError(f"background write of {self.value} to {self.name} lost its "
                               f"channel; output: {' | '.join(lines)}") from None
            m = re.fullmatch(r"rc=(\d+)", line.strip())
            if m:
                self.status = int(m.group(1))
            else:
                lines.append(line.strip())
        self.detail = " | ".join(lines)
        took = time.monotonic() - self.started
        if self.status != 0:
            raise KsmWriteError(self.name, self.value, errno_from_text(self.detail),
                                self.detail[-200:])
        return took


def write_in_background(runner: Runner, name: str, value: int | str,
                        ksm_dir: str = KSM_DIR) -> PendingWrite:
    """Start ``echo VALUE > /sys/kernel/mm/ksm/NAME`` in the guest without waiting for it."""
    spawn = getattr(runner, "spawn", None)
    if spawn is None:
        raise KsmError("a background KSM write needs a runner that can spawn (a VM)")
    text = str(value)
    if not re.fullmatch(r"[A-Za-z0-9_-]+", text) or not re.fullmatch(r"[a-z_]+", name):
        raise ValueError(f"refusing odd KSM write {name}={text!r}")
    proc = spawn(f"{{ /bin/echo {text} > {ksm_dir}/{name}; }} 2>&1; echo rc=$?")
    return PendingWrite(proc, name, value, time.monotonic())


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
    text of a failed write, so Ksm writes knobs with it (``echo_reports_errno``).
    """

    MARK = "\x01KSMSH"
    echo_reports_errno = True

    def __init__(self, spawner: Runner, shell: str = "bash --noprofile --norc") -> None:
        self.spawner = spawner
        self.shell = shell
        self.proc: Process | None = None
        self.errfile = f"/tmp/.ksm-shell-{os.getpid()}-{id(self):x}.err"
        self.commands = 0

    def _start(self) -> Process:
        spawn = getattr(self.spawner, "spawn", None)
        if spawn is None:
            raise KsmError("GuestShell needs a runner that can spawn (a VM)")
        self.proc = spawn(f"exec {self.shell}")
        return self.proc

    def run(self, cmd: str, timeout: float = 60.0, check: bool = False) -> CommandResult:
        proc = self.proc or self._start()
        t0 = time.monotonic()
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
        except CommandTimeout:
            self.close()
            raise CommandTimeout(cmd, timeout) from None
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

    def spawn(self, cmd: str) -> Process:
        return self.spawner.spawn(cmd)  # type: ignore[attr-defined,no-any-return]

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc = None
