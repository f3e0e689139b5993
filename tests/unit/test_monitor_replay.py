"""The health monitor on console logs recorded from real guests (data/guest/README.md), with
no VM: its console is a line source played from the file, line by line as the reader thread
would feed it, and its per-test windows open and close at the recorded START/END markers.
Every report must be claimed by the right window, with the right title, exactly once."""
from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from harness import health
from harness.access.port import LineSource
from harness.console.reader import ConsoleTimeout
from harness.findings import Category, Finding
from harness.health import Monitor
from tests.helpers import load_log

DATA = Path(__file__).parent / "data" / "guest"
MARKER = re.compile(r"ksm-harness: (START|END) (\S+)")


class Recording:
    """A LineSource over a recorded console log: :meth:`step` plays the next line."""

    def __init__(self, path: Path) -> None:
        self.pending = load_log(path)[1].split("\n")
        self.lines: list[str] = []
        self.times: list[float] = []
        self._listeners: list[Callable[[str], None]] = []

    @property
    def closed(self) -> bool:
        return not self.pending

    def step(self) -> str:
        line = self.pending.pop(0)
        self.lines.append(line)
        self.times.append(time.time())
        for fn in self._listeners:
            fn(line)
        return line

    def add_listener(self, fn: Callable[[str], None]) -> None:
        for line in self.lines:
            fn(line)
        self._listeners.append(fn)

    def mark(self) -> int:
        return len(self.lines)

    def wait_for(self, pattern: str | re.Pattern[str], timeout: float, start: int = 0,
                 what: str | None = None,
                 abort: Callable[[], str | None] | None = None) -> re.Match[str]:
        for line in self.lines[start:]:
            m = re.search(pattern, line)
            if m:
                return m
        raise ConsoleTimeout(what or str(pattern), 0, self.tail())

    def wait_for_line(self, text: str, timeout: float, start: int = 0) -> int | None:
        return next((i for i in range(start, len(self.lines)) if text in self.lines[i]), None)

    def arrived(self, index: int) -> float | None:
        return self.times[index] if 0 <= index < len(self.times) else None

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.lines[-n:])

    def text(self, start: int = 0, end: int | None = None) -> str:
        return "\n".join(self.lines[start:end])

    def silent_for(self) -> float:
        return 0.0

    def send(self, text: str) -> None:
        raise AssertionError("a recording cannot be typed on")


def replay(name: str, allow: dict[str, tuple[str, ...]] | None = None,
           skip: frozenset[int] = frozenset()
           ) -> tuple[Monitor, list[tuple[str, list[Finding]]]]:
    """Play ``name`` through a Monitor with no runner and no control; each START marker
    opens a window (except the ones numbered in ``skip``), each END closes it; a window
    still open when the recording ends (the guest died) closes there. Returns the monitor
    and every window's findings, in order."""
    source = Recording(DATA / name)
    recording: LineSource = source  # the monitor's port, and nothing more
    monitor = Monitor(recording)
    allow = allow or {}
    closed: list[tuple[str, list[Finding]]] = []
    window: health.TestWindow | None = None
    starts = 0
    while not source.closed:
        m = MARKER.search(source.step())
        if m and m.group(1) == "START":
            starts += 1
            if starts - 1 in skip:
                continue
            window = monitor.open_window(m.group(2), source.mark() - 1)
        elif m and window is not None and m.group(2) == window.name:
            closed.append((window.name, monitor.close_window(
                window, source.mark(), allow.get(window.name, ()))))
            window = None
    if window is not None:
        closed.append((window.name, monitor.close_window(window, source.mark())))
    return monitor, closed


def short(windows: list[tuple[str, list[Finding]]]) -> list[tuple[str, list[tuple[str, str]]]]:
    return [(test.rsplit("::", 1)[1], [(f.category.value, f.title) for f in found])
            for test, found in windows]


def test_oom_kills_claimed_by_their_windows_one_allowed() -> None:
    monitor, windows = replay("memcg_oom.console.log",
                              {"tests/guest/data/monitor_cases.py::test_f_allowed_oom": ("OOM",)})
    oom = [("OOM", "out of memory: killed process python3")]
    assert short(windows) == [
        ("test_d_d_state_hang", []), ("test_e_after_hangs", []), ("test_e_after_hangs", []),
        ("test_f_allowed_oom", []),  # claimed, and dropped: the test allows OOM
        ("test_f_allowed_oom", []),
        ("test_g_oom_not_allowed", oom),
        ("test_g_oom_not_allowed", []),  # its retry: the report is not claimed twice
    ]
    finding = windows[5][1][0]
    assert finding.phase == "" and finding.console is not None
    start, end = finding.console
    assert "invoked oom-killer" in monitor.console.text(start, start + 1)
    assert "ksm-harness: START" in monitor.console.text(start - 1, start)  # inside the window
    assert monitor.fatal is None and monitor.fatal_reason() is None  # an OOM kill is survivable
    assert monitor.claim() == []  # nothing left unclaimed


def test_a_report_between_tests_goes_to_the_next_window() -> None:
    # test_g's first window is never opened: its OOM kill happened "between tests", and the
    # next window to close (test_g's retry) claims it, saying so
    _, windows = replay("memcg_oom.console.log", skip=frozenset({5}))
    assert short(windows)[-2:] == [
        ("test_f_allowed_oom", []),
        ("test_g_oom_not_allowed", [("OOM", "out of memory: killed process python3")])]
    assert windows[-1][1][0].phase == "before the test started"


@pytest.mark.parametrize("name,test,category,title", [
    ("sysrq_panic.console.log", "test_a_panics", Category.PANIC,
     "kernel panic: sysrq triggered crash"),
    ("dstate_hang_sysrq_w.console.log", "test_d_d_state_hang", Category.HUNG_TASK,
     "INFO: task hung in mnt_want_write"),
])
def test_a_fatal_report_ends_the_waits_and_fails_its_test(name: str, test: str,
                                                          category: Category,
                                                          title: str) -> None:
    monitor, windows = replay(name)
    assert short(windows) == [(test, [(category.value, title)])]  # no END: the guest broke
    # the recording ends inside the report: the monitor acted on its header
    assert monitor.broken
    assert monitor.fatal_reason() == f"the kernel is printing a {category.value} report"


def test_the_monitor_reads_a_clean_boot_without_findings() -> None:
    monitor, windows = replay("clean_boot.console.log")
    assert [test.rsplit("::", 1)[1] for test, _ in windows] == [
        "test_a_panics", "test_b_runs_on_a_fresh_vm", "test_b_runs_on_a_fresh_vm",
        "test_c_frozen_qemu"]
    assert all(found == [] for _, found in windows) and not monitor.broken
