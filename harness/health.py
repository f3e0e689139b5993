"""Kernel health monitor: watches a guest's console for the whole run, marks each test's
start and end in the kernel log, and tells which test a kernel report, a taint or a hang
belongs to. Reporting stays out of here: callers get ``Finding`` records.

Nothing is dropped: every kernel report is claimed exactly once, by the first window that
closes after it was printed (a report between two tests, or during a fixture, goes to the
next window to close, marked with when it was printed).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from harness.console.classify import Report, StreamClassifier
from harness.findings import Category, Finding
from harness.machine.qmp import QMPError

if TYPE_CHECKING:
    from harness.machine.vm import VM

# Taint flags (Documentation/admin-guide/tainted-kernels.rst), bit -> letter, meaning.
TAINT_FLAGS = {
    0: ("P", "proprietary module"), 1: ("F", "module force loaded"), 2: ("S", "SMP unsafe"),
    3: ("R", "module force unloaded"), 4: ("M", "machine check"), 5: ("B", "bad page"),
    6: ("U", "user request"), 7: ("D", "kernel died (oops/BUG)"), 8: ("A", "ACPI overridden"),
    9: ("W", "kernel warning"), 10: ("C", "staging driver"), 11: ("I", "firmware workaround"),
    12: ("O", "out-of-tree module"), 13: ("E", "unsigned module"), 14: ("L", "soft lockup"),
    15: ("K", "live patched"), 16: ("X", "auxiliary"), 17: ("T", "randstruct"),
    18: ("N", "test module"),
}
# A test marker; notice level so that it reaches a console at loglevel 7.
MARK = "<5>ksm-harness: {what} {test}"
# Set when the user interrupted the run (Ctrl-C): every wait on every guest ends at once, so
# the teardown that follows does not wait on a guest again.
INTERRUPTED = threading.Event()
END_TIMEOUT = 30.0
START_TIMEOUT = 10.0


def taint_letters(value: int) -> str:
    return "".join(TAINT_FLAGS.get(b, ("?", ""))[0] for b in range(32) if value >> b & 1)


def taint_meaning(value: int) -> str:
    return ", ".join(f"{TAINT_FLAGS.get(b, ('?', f'bit {b}'))[0]} ({TAINT_FLAGS.get(b, ('', f'bit {b}'))[1]})"
                     for b in range(32) if value >> b & 1)


@dataclass
class TestWindow:
    name: str
    start_line: int
    taint_before: int | None
    end_line: int | None = None
    findings: list[Finding] = field(default_factory=list)
    answered: bool = False  # the guest ran the END marker command: it is alive and usable


def report_finding(r: Report, phase: str = "", arrived: float | None = None) -> Finding:
    """``arrived``: when the report's first line reached the host (else: now)."""
    return Finding(Category.of(r.category), r.title, r.text, r.frame,
                   (r.start_line, r.end_line), arrived or time.time(), phase)


class Monitor:
    """One per VM; fed by the console's reader thread."""

    def __init__(self, vm: VM) -> None:
        self.vm = vm
        self.reports: list[Report] = []
        self._claimed = 0  # reports[:_claimed] belong to a window already
        self.fatal: Report | None = None  # the first report after which waits end
        self.fatal_open: str | None = None  # the category of such a report still printing
        self._lock = threading.Lock()
        self._classifier = StreamClassifier()
        self.current: TestWindow | None = None
        assert vm.console is not None
        vm.console.add_listener(self._feed)  # the boot's lines first, none lost between

    def _feed(self, line: str) -> None:
        with self._lock:
            new = self._classifier.feed(line)
            self.reports.extend(new)
            if self.fatal is None:
                self.fatal = next((r for r in new if Category.of(r.category).fatal), None)
            if self.fatal is None and self.fatal_open is None:
                self.fatal_open = next((c for c in self._classifier.open_categories()
                                        if Category.of(c).fatal), None)

    def fatal_reason(self) -> str | None:
        """Why waiting on this guest is pointless (for access.ssh's abort hook): a fatal
        kernel report, or QEMU gone; else None."""
        if INTERRUPTED.is_set():
            return "the run was interrupted"
        fatal = self.fatal
        if fatal is not None:
            return f"the kernel reported: {fatal.title}"
        if self.fatal_open is not None:
            return f"the kernel is printing a {self.fatal_open} report"
        return self.vm.alive()

    @property
    def broken(self) -> bool:
        """A fatal report came, or is coming: the guest is not to be asked again."""
        return self.fatal is not None or self.fatal_open is not None

    def flush(self) -> list[Report]:
        with self._lock:
            self.reports.extend(self._classifier.flush())
            return list(self.reports)

    def claim(self, before_line: int | None = None, allow: tuple[str, ...] = (),
              phase: str = "") -> list[Finding]:
        """Every report not claimed yet that starts before ``before_line`` (all of them when
        None), as findings; allowed categories are claimed and dropped."""
        reports = self.flush()
        mine = []
        with self._lock:
            while self._claimed < len(reports):
                r = reports[self._claimed]
                if before_line is not None and r.start_line >= before_line:
                    break
                self._claimed += 1
                if r.category not in allow:
                    mine.append(r)
        # The console's lock is taken only after ours is released: its reader thread holds
        # the console's lock while it feeds us (taking ours), so the other order deadlocks
        # the run (seen in CI: a claim while sysrq output streamed in).
        console = self.vm.console
        return [report_finding(r, phase, console.arrived(r.start_line) if console else None)
                for r in mine]

    # --- per-test windows -----------------------------------------------------------------
    def _kmsg(self, what: str, test: str) -> str:
        text = MARK.format(what=what, test=test).replace("'", "")
        return f"echo '{text}' > /dev/kmsg"

    @staticmethod
    def _mark_text(what: str, test: str) -> str:
        """What the marker looks like on the console (without the level prefix)."""
        return MARK.format(what=what, test=test).replace("'", "").split(">", 1)[1][:60]

    def _taint(self) -> int | None:
        try:
            r = self.vm.run("cat /proc/sys/kernel/tainted", timeout=20)
            return int(r.stdout.strip()) if r.ok else None
        except Exception:
            return None

    def begin(self, test: str) -> TestWindow:
        """Open a test's window: read the taint and mark START in the kernel log, in one
        command; the window starts at the START line once it came through the console, so
        everything the kernel printed before it (a fixture's set-up) is before the window."""
        console = self.vm.console
        assert console is not None
        start = console.mark()
        taint: int | None = None
        try:
            r = self.vm.run(f"cat /proc/sys/kernel/tainted; {self._kmsg('START', test)}",
                            timeout=20)
            words = r.stdout.split()
            taint = int(words[0]) if r.ok and words and words[0].isdigit() else None
            line = console.wait_for_line(self._mark_text("START", test), START_TIMEOUT, start)
            start = line if line is not None else console.mark()
        except Exception:
            pass  # a dead guest shows up at end()
        self.current = TestWindow(test, start, taint)
        return self.current

    def end(self, window: TestWindow, allow: tuple[str, ...] = (),
            responsive: bool = True) -> list[Finding]:
        """Close the window: wait for the END marker to come through the console (so every
        earlier kernel line has), then collect reports and taint. ``responsive=False`` (a
        hung guest) skips what needs the guest to answer."""
        console = self.vm.console
        assert console is not None
        responsive = responsive and self.vm.alive() is None
        if responsive:
            try:
                self.vm.run(self._kmsg("END", window.name), timeout=20, check=True)
                window.answered = console.wait_for_line(
                    self._mark_text("END", window.name), END_TIMEOUT, window.start_line
                ) is not None
            except Exception:
                pass  # a hung or dying guest: the reports so far still count
        window.end_line = console.mark()
        window.findings += self.claim(window.start_line, allow, "before the test started")
        window.findings += self.claim(window.end_line, allow)
        if window.answered:
            after = self._taint()
            before = window.taint_before
            if after is not None and before is not None and after & ~before:
                new = after & ~before
                if not any(f.is_kernel_report for f in window.findings):
                    window.findings.append(Finding(
                        Category.TAINT, f"kernel tainted during the test: {taint_letters(new)}",
                        f"/proc/sys/kernel/tainted {before} -> {after}: "
                        f"newly set {taint_meaning(new)}"))
        self.current = None
        return window.findings

    # --- hangs ----------------------------------------------------------------------------
    def hang_evidence(self, settle: float = 2.0, limit: float = 30.0) -> str:
        """sysrq w (blocked tasks), l (all CPUs' backtraces), m (memory) through the
        emulated keyboard, which works with userspace dead; the QMP status; the console."""
        console = self.vm.console
        assert console is not None
        start = console.mark()
        parts = []
        status = "unknown"
        if self.vm.qmp is not None:
            try:
                status = self.vm.qmp.status()
                for key in ("w", "l", "m"):
                    self.vm.qmp.sysrq(key)
            except QMPError as exc:
                status = f"QMP failed: {exc}"
        # The console was silent through the hang, so first wait for the kernel's answer
        # to begin, then until it stops coming; both bounded.
        end = time.monotonic() + limit
        first = time.monotonic() + min(10.0, limit)
        while time.monotonic() < first and console.mark() == start:
            time.sleep(0.1)
        while time.monotonic() < end and console.mark() > start \
                and console.silent_for() < settle:
            time.sleep(0.1)
        parts.append(f"QMP status: {status}")
        dumped = console.text(start)
        parts.append("sysrq w/l/m output:\n" + (dumped or "(nothing: the kernel did not answer)"))
        return "\n".join(parts)
