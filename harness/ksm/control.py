"""Driving KSM in a guest: read snapshots, write knobs (errno kept), wait for ksmd with deadlines
derived from the scan rate, unmerge, restore; background writes that race other work."""
from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from harness.access.background import Background, ChannelLost
from harness.access.remote import (
    CommandResult,
    CommandTimeout,
    GuestBroken,
    Runner,
    Spawner,
    quote,
)
from harness.access.shell import GuestShell
from harness.ksm.model import (
    FAST_PAGES_TO_SCAN,
    FAST_SLEEP_MILLISECS,
    POLL_MAX,
    KsmCountMismatch,
    check_counts,
    count_mismatches,
    describe_mismatches,
    scan_deadline,
)
from harness.ksm.sysfs import (
    KSM_DIR,
    RUN_MERGE,
    RUN_STOP,
    RUN_UNMERGE,
    TREE_KNOBS,
    KsmError,
    KsmNoProgress,
    KsmSnapshot,
    KsmTimeout,
    KsmUnavailable,
    KsmUnmergeIncomplete,
    KsmWriteError,
    _read_all,
    errno_from_text,
    parse_ls,
    parse_process_stat,
    parse_snapshot,
    selected_value,
)

# mm/ksm.c skip_age(): a page KSM could not merge for 9 or more scans is skipped for the next
# 8 (then looked at once, then skipped again) while smart_scan is on
SMART_SCAN_SKIPS = 8


def scans_to_allow(before: KsmSnapshot, min_full_scans: int) -> int:
    """Full scans a wait's deadline allows for: with smart_scan on (6.7+) a page that stayed
    unmerged is skipped for up to SMART_SCAN_SKIPS scans, and its twin may be skipped in
    turn after it, so a merge the counters await can come that much later."""
    return min_full_scans + (2 * SMART_SCAN_SKIPS if before.get("smart_scan") else 0)

class Ksm:
    """KSM control over a :class:`harness.remote.Runner` (one guest command per call, so
    snapshots are fast and consistent enough; see :meth:`exact_counters` for exact ones)."""

    def __init__(self, runner: Runner, timeout: float = 30.0, ksm_dir: str = KSM_DIR) -> None:
        self.runner = runner
        self.timeout = timeout
        self.dir = ksm_dir  # another directory only for tests on a fake tree
        self._files: dict[str, bool] | None = None
        # smart_scan=1: expected counts take unshared and volatile pages as one
        self.lumped = False

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
        self.files()  # no KSM at all is KsmUnavailable, not an unreadable directory
        result = self.runner.run(_read_all(self.dir), timeout=self.timeout)
        values = parse_snapshot(result.stdout)
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
        # builtins only (no cat): a fork+exec costs ~80-150 ms in a TCG guest
        script = (f"[ -d {d} ] || exit 3; for f in ksm_stat ksm_merging_pages; do "
                  f"if [ -r {d}/$f ]; then echo \"== $f\"; "
                  f"while read -r __l; do echo \"$__l\"; done < {d}/$f; fi; done")
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
        return "echo" if isinstance(self.runner, GuestShell) else "/bin/echo"

    def _run(self, cmd: str, what: str, timeout: float) -> CommandResult:
        try:
            return self.runner.run(cmd, timeout=timeout)
        except GuestBroken:
            raise
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

    def restore_order(self, knobs: dict[str, str]) -> list[str]:
        """The knobs (run excepted) in the order they can be written back: tree knobs, then
        advisor_mode (switching it resets pages_to_scan, and while the 6.10+ advisor runs,
        pages_to_scan refuses writes), then the rest."""
        first = [*TREE_KNOBS, "advisor_mode"]
        todo = [n for n in knobs if n != "run"]
        return [n for n in first if n in todo] + [n for n in todo if n not in first]

    def restore(self, defaults: dict[str, str], timeout: float = 300.0) -> None:
        """Put the knobs back. Order matters: run=2 first (tree knobs only change while nothing
        is merged, and it leaves no merged pages behind), tree knobs, the advisor, other
        knobs, run last."""
        self.unmerge_all(timeout)
        current = self.defaults_capture()
        for name in self.restore_order(defaults):
            if name in current and current[name] != defaults[name]:
                self.set(name, defaults[name])
                if name == "advisor_mode":
                    current = self.defaults_capture()  # the switch reset pages_to_scan
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
                                    scans_to_allow(before, min_full_scans))
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
            return self.wait_merged(lambda snap: not count_mismatches(snap, expected,
                                                                      self.lumped),
                                    min_full_scans=min_full_scans, timeout=timeout,
                                    pages=pages, exact=True, expect=what)
        except KsmNoProgress as e:
            last = self.exact_counters() if e.after.get("run") == RUN_MERGE else e.after
            wrong = count_mismatches(last, expected, self.lumped)
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
        check_counts(snap, expected, what, self.lumped)
        return snap


# ---- exact expectations (what the kernel defines) ----

# The counters a scenario asserts exactly; the order is the order of failure messages.
class PendingWrite:
    """A KSM file write running in the background in the guest (``run=2`` blocks until every
    page is unmerged: tests race it with fork, exit, swapoff...)."""

    def __init__(self, command: Background, name: str, value: int | str) -> None:
        self.command = command
        self.name = name
        self.value = value
        self.started = command.started
        self.status: int | None = None
        self.detail = ""

    def done(self) -> bool:
        """True once the write has returned (never blocks for long; the outcome is then
        reported by :meth:`wait`)."""
        return self.command.done()

    def wait(self, timeout: float = 300.0) -> float:
        """Wait for the write to return; raise KsmTimeout past ``timeout`` (a hang candidate)
        or KsmWriteError if the kernel refused it; return how long it took since the start."""
        try:
            self.status, output, took = self.command.wait(timeout)
        except GuestBroken:
            raise
        except CommandTimeout:
            raise KsmTimeout(f"writing {self.value} to KSM's {self.name} did not return "
                             f"within {timeout:.0f}s (KSM or ksmd hung?)") from None
        except ChannelLost:
            raise KsmError(f"background write of {self.value} to {self.name} lost its "
                           f"channel; output: {self.command.output}") from None
        self.detail = " | ".join(line.strip() for line in output.splitlines())
        if self.status != 0:
            raise KsmWriteError(self.name, self.value, errno_from_text(self.detail),
                                self.detail[-200:])
        return took


def write_in_background(runner: Spawner, name: str, value: int | str,
                        ksm_dir: str = KSM_DIR) -> PendingWrite:
    """Start ``echo VALUE > /sys/kernel/mm/ksm/NAME`` in the guest without waiting for it."""
    text = str(value)
    if not re.fullmatch(r"[A-Za-z0-9_-]+", text) or not re.fullmatch(r"[a-z_]+", name):
        raise ValueError(f"refusing odd KSM write {name}={text!r}")
    return PendingWrite(Background(runner, f"/bin/echo {text} > {ksm_dir}/{name}"), name, value)
