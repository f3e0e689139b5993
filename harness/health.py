"""Kernel health monitor: watches a guest's console for the whole run, marks each test's
start and end in the kernel log, and tells which test a kernel report, a taint or a hang
belongs to. Reporting stays out of here: callers get ``Finding`` records.

Nothing is dropped: every kernel report is claimed exactly once, by the first window that
closes after it was printed (a report between two tests, or during a fixture, goes to the
next window to close, marked with when it was printed).

The monitor knows the guest through ports (harness.access.port): the console's lines, a
runner for the markers and the taint, and optionally the machine's control (liveness, sysrq).
Its accounting (:meth:`Monitor.open_window`, :meth:`Monitor.close_window`, claims) needs only
the lines, so it runs on a recorded console log too.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from harness.access.port import ControlError, LineSource, MachineControl, Runner
from harness.console.classify import Report, StreamClassifier
from harness.findings import Category, Finding

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
    """One per VM; fed by the console's reader thread. Without a ``runner`` it only reads:
    no markers are written and no taint is read (windows are what the caller opens)."""

    def __init__(self, console: LineSource, runner: Runner | None = None,
                 control: MachineControl | None = None) -> None:
        self.console = console
        self.runner = runner
        self.control = control
        self.reports: list[Report] = []
        self._claimed = 0  # reports[:_claimed] belong to a window already
        self.fatal: Report | None = None  # the first report after which waits end
        self.fatal_open: str | None = None  # the category of such a report still printing
        self._lock = threading.Lock()
        self._classifier = StreamClassifier()
        self.current: TestWindow | None = None
        console.add_listener(self._feed)  # the boot's lines first, none lost between

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
        return self.control.alive() if self.control is not None else None

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
        return [report_finding(r, phase, self.console.arrived(r.start_line)) for r in mine]

    # --- per-test windows -----------------------------------------------------------------
    def _kmsg(self, what: str, test: str) -> str:
        text = MARK.format(what=what, test=test).replace("'", "")
        return f"echo '{text}' > /dev/kmsg"

    @staticmethod
    def _mark_text(what: str, test: str) -> str:
        """What the marker looks like on the console (without the level prefix)."""
        return MARK.format(what=what, test=test).replace("'", "").split(">", 1)[1][:60]

    def _taint(self) -> int | None:
        if self.runner is None:
            return None
        try:
            r = self.runner.run("cat /proc/sys/kernel/tainted", timeout=20)
            return int(r.stdout.strip()) if r.ok else None
        except Exception:
            return None

    def begin(self, test: str) -> TestWindow:
        """Open a test's window: read the taint and mark START in the kernel log, in one
        command; the window starts at the START line once it came through the console, so
        everything the kernel printed before it (a fixture's set-up) is before the window."""
        console = self.console
        start = console.mark()
        taint: int | None = None
        if self.runner is not None:
            try:
                r = self.runner.run(f"cat /proc/sys/kernel/tainted; {self._kmsg('START', test)}",
                                    timeout=20)
                words = r.stdout.split()
                taint = int(words[0]) if r.ok and words and words[0].isdigit() else None
                line = console.wait_for_line(self._mark_text("START", test), START_TIMEOUT,
                                             start)
                start = line if line is not None else console.mark()
            except Exception:
                pass  # a dead guest shows up at end()
        return self.open_window(test, start, taint)

    def end(self, window: TestWindow, allow: tuple[str, ...] = (),
            responsive: bool = True) -> list[Finding]:
        """Close the window: wait for the END marker to come through the console (so every
        earlier kernel line has), then collect reports and taint. ``responsive=False`` (a
        hung guest) skips what needs the guest to answer."""
        console, runner = self.console, self.runner
        if responsive and runner is not None and \
                (self.control is None or self.control.alive() is None):
            try:
                runner.run(self._kmsg("END", window.name), timeout=20, check=True)
                window.answered = console.wait_for_line(
                    self._mark_text("END", window.name), END_TIMEOUT, window.start_line
                ) is not None
            except Exception:
                pass  # a hung or dying guest: the reports so far still count
        self.close_window(window, console.mark(), allow)
        if window.answered:
            self.note_taint(window, self._taint())
        return window.findings

    def open_window(self, test: str, start_line: int, taint_before: int | None = None
                    ) -> TestWindow:
        """A test's window from console line ``start_line`` (its START marker)."""
        self.current = TestWindow(test, start_line, taint_before)
        return self.current

    def close_window(self, window: TestWindow, end_line: int, allow: tuple[str, ...] = ()
                     ) -> list[Finding]:
        """Close ``window`` at console line ``end_line`` (past its END marker): it claims
        every report not claimed yet that starts before that line."""
        window.end_line = end_line
        window.findings += self.claim(window.start_line, allow, "before the test started")
        window.findings += self.claim(end_line, allow)
        self.current = None
        return window.findings

    @staticmethod
    def note_taint(window: TestWindow, after: int | None) -> None:
        """A TAINT finding for taint bits set during the window that no report explains."""
        before = window.taint_before
        if after is not None and before is not None and after & ~before:
            new = after & ~before
            if not any(f.is_kernel_report for f in window.findings):
                window.findings.append(Finding(
                    Category.TAINT, f"kernel tainted during the test: {taint_letters(new)}",
                    f"/proc/sys/kernel/tainted {before} -> {after}: "
                    f"newly set {taint_meaning(new)}"))

    # --- hangs ----------------------------------------------------------------------------
    def hang_evidence(self, settle: float = 2.0, limit: float = 30.0) -> str:
        """sysrq w (blocked tasks), l (all CPUs' backtraces), m (memory) through the
        emulated keyboard, which works with userspace dead; the QMP status; the console."""
        console = self.console
        start = console.mark()
        parts = []
        status = "unknown"
        if self.control is not None:
            try:
                now = self.control.status()
                if now is not None:  # None: the machine has no control channel (yet)
                    status = now
                    for key in ("w", "l", "m"):
                        self.control.sysrq(key)
            except ControlError as exc:
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
