"""The kernel health monitor around every phase of every guest test, and the one place where
a phase's report gets its findings: the monitor's (kernel reports, taint, hangs, a lost VM)
and what the test itself raised, ranked (harness.findings.rank), so the failure's
title is the cause and its consequences follow.

A kernel report fails the test whatever the test did: it is never an expected failure and
never retried away. Reports printed during a fixture's set-up fail the set-up (an error);
between tests they go to the next test; after the last test, to its teardown.
"""
from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Generator
from pathlib import Path

import pluggy
import pytest

from harness import guest_mm
from harness.access.remote import CommandTimeout, GuestBroken, Runner
from harness.findings import Category, Finding, describe, rank
from harness.guest_handle import Guest
from harness.health import INTERRUPTED, TestWindow
from harness.ksm import KsmError
from harness.ksm.leaks import LeakError
from harness.ksm.timeline import Sampler
from harness.pytest_plugin.fixtures import BootFailed
from harness.results import plot
from harness.results.reproducer import slug
from harness.workloads import DataCorruption, WorkloadTimeout

HANG_ERRORS: tuple[type[BaseException], ...] = (CommandTimeout, WorkloadTimeout)
# What a test's own exception says, most specific first; anything else in the call phase is
# an assertion, in set-up or teardown a set-up problem.
EXCEPTION_CATEGORIES: tuple[tuple[type[BaseException], Category], ...] = (
    (BootFailed, Category.BOOT),
    (DataCorruption, Category.CORRUPTION),
    (LeakError, Category.LEAK),
    (KsmError, Category.ASSERTION),
    (AssertionError, Category.ASSERTION),
)
FINDINGS = pytest.StashKey[dict[str, list[Finding]]]()
REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()
WINDOWS = pytest.StashKey[list[tuple[Guest, TestWindow]]]()
PROPERTY = "ksm_harness_findings"  # how findings travel on a report (JSON-able, xdist-safe)
_NOISE = ("AssertionError: ", "Failed: ", "builtins.AssertionError: ")


def _guests(item: pytest.Item) -> list[Guest]:
    found: list[Guest] = []
    for value in getattr(item, "funcargs", {}).values():
        if isinstance(value, Guest) and value not in found:
            found.append(value)
    return found


def _allowed(item: pytest.Item) -> tuple[str, ...]:
    mark = item.get_closest_marker("allow_kernel")
    return tuple(mark.args) if mark else ()


def _test_name(item: pytest.Item) -> str:
    return re.sub(r"[^\w./:\[\]=-]", "_", item.nodeid)[-120:]


def _add(item: pytest.Item, phase: str, findings: list[Finding]) -> None:
    if findings:
        item.stash.setdefault(FINDINGS, {}).setdefault(phase, []).extend(findings)


# --- counter timelines (a nicety: never fails a test) --------------------------------------

def _start_timeline(item: pytest.Item, guest: Guest) -> None:
    """KSM scenarios (tests that use the ``ksm`` fixture) get a counter timeline."""
    if "ksm" not in getattr(item, "fixturenames", ()) or guest.sampler is not None:
        return
    try:
        guest.sampler = Sampler(guest.vm.spawn)
    except Exception:
        guest.sampler = None


def _stop_timeline(item: pytest.Item, guest: Guest) -> None:
    sampler, guest.sampler = guest.sampler, None
    if sampler is None:
        return
    rdir = Path(item.config.getoption("report_dir", None) or "results")
    try:
        plot.write(sampler.stop(), item.nodeid, rdir / "plots" / f"{slug(item.nodeid)}.svg")
    except OSError:
        pass


# --- windows ------------------------------------------------------------------------------

def _open_windows(item: pytest.Item, phase: str) -> None:
    windows = []
    for guest in _guests(item):
        if phase == "teardown" and guest.retired:
            continue  # its VM is gone with the call's verdict; no boot just to watch teardown
        _start_timeline(item, guest)
        _add(item, "call", guest.boot_findings)  # the test runs, and fails for them
        guest.boot_findings = []
        window = guest.monitor.begin(_test_name(item))
        # what the kernel printed before the window: during the fixtures' set-up, between
        # tests, or during the call when this is the teardown's window
        _add(item, phase, guest.monitor.claim(window.start_line, _allowed(item), phase))
        windows.append((guest, window))
    item.stash[WINDOWS] = windows


def _stuck_process(vm: Runner, excinfo: BaseException | None) -> str:
    """For a workload that did not answer: whether it was stuck or only slow (its counters
    over a second, its kernel stack), asked while the guest may still answer."""
    pid = excinfo.pid if isinstance(excinfo, WorkloadTimeout) else None
    if pid is None:
        return ""
    try:
        return guest_mm.process_progress(vm, pid) + "\n"
    except Exception as exc:  # evidence is best effort: the hang verdict stands without it
        return f"pid {pid}: no answer from the guest ({type(exc).__name__})\n"


def _with_holders(guest: Guest, found: list[Finding]) -> list[Finding]:
    """A hung-task report shows the task that waits, not the one it waits for (ksmd blocked
    on ksm_thread_mutex says nothing of the run=2 writer holding it): the other tasks'
    stacks and every CPU's backtrace (sysrq w/l/m through QMP, which a wedged guest still
    answers) are added to the first such report before its VM is retired."""
    for i, f in enumerate(found):
        if f.category is Category.HUNG_TASK:
            try:
                evidence = guest.monitor.hang_evidence()
            except Exception as exc:  # best effort: the report stands without it
                evidence = f"(no sysrq evidence: {type(exc).__name__}: {exc})"
            found[i] = dataclasses.replace(
                f, text=f"{f.text}\n--- the other tasks, after the report ---\n{evidence}")
            break
    return found


def _close_windows(item: pytest.Item, phase: str, excinfo: BaseException | None) -> None:
    findings: list[Finding] = []
    allowed = _allowed(item)
    for guest, window in item.stash.get(WINDOWS, []):
        if phase == "teardown":
            _stop_timeline(item, guest)
        if guest.lost is not None:  # a fixture's teardown found QEMU gone or stopped
            (category, title), guest.lost = guest.lost, None
            findings.append(Finding(category, title, "found by a fixture's teardown",
                                    time=time.time(), phase=phase))
            if not guest.vm.stopped:
                guest.retire()  # the next test boots a fresh VM
        if guest.vm.stopped:  # torn down by its fixture: whatever it printed last counts
            findings += guest.monitor.claim(allow=allowed, phase=phase)
            continue
        dead = guest.alive()
        # after a fatal report the report is the evidence, and the guest is not asked again
        fatal = guest.monitor.broken
        hung = isinstance(excinfo, HANG_ERRORS) and dead is None and not fatal
        # a stopped QEMU answers neither sysrq nor QMP: that it is stopped is the evidence
        frozen = guest.vm.frozen() if hung else None
        evidence = frozen or (_stuck_process(guest.vm, excinfo) + guest.monitor.hang_evidence()
                              if hung else "")
        found = guest.monitor.end(window, allow=allowed, responsive=not (hung or fatal))
        if fatal and dead is None:
            guest.broken = "fatal kernel report"
        elif not hung and dead is None and not window.answered:
            # no answer: usually a panic still being printed; give QEMU a moment to exit
            frozen = guest.vm.frozen()  # a stopped QEMU will neither exit nor answer
            dead = None if frozen else guest.vm.wait_exit(10.0)
            if dead is None:
                hung = True
                evidence = frozen or guest.monitor.hang_evidence()
        if fatal and dead is None:
            found = _with_holders(guest, found)
        found += guest.monitor.claim(allow=allowed, phase=phase)  # printed while we looked
        tail = guest.vm.console.tail(60) if guest.vm.console else ""
        if hung and getattr(excinfo, "host_starved", False):
            # the deadline ran out on its wall-time cap while QEMU waited for a host CPU:
            # the host's verdict, not the kernel's (harness.access.guestclock)
            findings.append(Finding(Category.INFRA, f"host too busy: {excinfo}",
                                    f"{evidence}\n--- console tail ---\n{tail}",
                                    time=time.time(), phase=phase))
            guest.broken = "hung"
        elif hung:
            cause = excinfo if isinstance(excinfo, HANG_ERRORS) else "the guest stopped answering"
            cause = f"{frozen}: {cause}" if frozen else cause
            findings.append(Finding(Category.HANG, f"guest hung: {cause}",
                                    f"{evidence}\n--- console tail ---\n{tail}",
                                    time=time.time(), phase=phase))
            guest.broken = "hung"
        elif dead is not None:
            findings.append(Finding(Category.VM_DEAD, f"guest died: {dead}",
                                    f"--- console tail ---\n{tail}", time=time.time(),
                                    phase=phase))
            guest.broken = "dead"
        findings.extend(found)
        if guest.broken:
            # stopped now, so the verdict does not wait; the next test that uses the guest
            # boots a fresh VM (and fixtures skip undoing their set-up on this one)
            guest.retire()
    item.stash[WINDOWS] = []
    _add(item, phase, findings)


def _excinfo(outcome: pluggy.Result[None]) -> BaseException | None:
    return outcome.exception


def _interrupted(outcome: pluggy.Result[None]) -> bool:
    """Ctrl-C or SIGTERM ended the phase: the guests are not asked again (pytest calls
    pytest_keyboard_interrupt only once the exception has left every hook)."""
    if isinstance(outcome.exception, KeyboardInterrupt):
        INTERRUPTED.set()
    return INTERRUPTED.is_set()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, pluggy.Result[None], None]:
    outcome = yield
    if not _interrupted(outcome):
        _open_windows(item, "setup")  # after fixtures: the guest exists


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, pluggy.Result[None], None]:
    outcome = yield
    if _interrupted(outcome):
        return
    _close_windows(item, "call", _excinfo(outcome))
    _open_windows(item, "teardown")  # teardown (e.g. run=2 in a fixture) is watched too


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, pluggy.Result[None], None]:
    outcome = yield
    if not _interrupted(outcome):
        _close_windows(item, "teardown", _excinfo(outcome))


def pytest_keyboard_interrupt() -> None:
    INTERRUPTED.set()  # Ctrl-C: waits on guests end now; teardown asks no guest again


# --- the phase's report -------------------------------------------------------------------

def title_of(message: str) -> str:
    """The one-line title of an exception message: its first line, without noise."""
    line = next((x.strip() for x in message.splitlines() if x.strip()), "")
    for p in _NOISE:
        line = line.removeprefix(p)
    return line[:300]


def exception_finding(exc: BaseException | None, when: str, text: str) -> Finding:
    """What the test (or a fixture) raised, as a finding."""
    category = Category.ASSERTION if when == "call" else Category.SETUP
    if exc is not None and isinstance(exc, HANG_ERRORS):
        category = Category.HANG
    for kind, cat in EXCEPTION_CATEGORIES:
        if exc is not None and isinstance(exc, kind):
            category = cat
            break
    message = str(exc) if exc is not None and str(exc) else text
    return Finding(category, title_of(message) or type(exc).__name__, text, time=time.time(),
                   phase=when)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, pluggy.Result[pytest.TestReport], None]:
    outcome = yield
    rep = outcome.get_result()
    pending = item.stash.get(FINDINGS, {})
    findings = list(pending.pop(call.when, []))
    if call.when == "teardown":  # a phase that never ran (set-up failed) leaves nothing behind
        for phase in list(pending):
            findings += pending.pop(phase)
    from_monitor = bool(findings)
    if rep.failed:
        exc = call.excinfo.value if call.excinfo is not None else None
        own = exception_finding(exc, call.when, "" if from_monitor else rep.longreprtext)
        # a hang the monitor established is the same event as the test's timeout, and a
        # wait cut short by a fatal report or a dead VM is that report's consequence
        same = (own.category is Category.HANG
                and any(f.category is Category.HANG for f in findings)) \
            or (isinstance(exc, GuestBroken) and from_monitor)
        if not same:
            findings.append(own)
    if findings:
        ranked = rank(findings)
        if not rep.failed:  # a kernel report fails even a passing or expected-failing test
            rep.outcome = "failed"
            if hasattr(rep, "wasxfail"):
                del rep.wasxfail
        if from_monitor:  # the cause first; the test's own traceback after the findings
            traceback = f"\n\n--- the test's own failure ---\n{rep.longreprtext}" \
                if call.excinfo is not None else ""
            rep.longrepr = describe(ranked) + traceback
        else:  # the title first (terminal summaries show the first line), then the traceback
            rep.longrepr = f"{ranked[0].title}\n\n{rep.longreprtext}"
        rep.user_properties.append((PROPERTY, [f.to_dict() for f in ranked]))
    item.stash.setdefault(REPORTS, {})[call.when] = rep
    seed = getattr(item, "ksm_seed", None)  # set by the chaos scenario's seed fixture
    if seed is not None:
        rep.user_properties.append(("seed", str(seed)))
        if rep.failed:
            rep.sections.append(("ksm-seed", f"this test used ksm seed {seed}: rerun with "
                                             f"--ksm-seed={seed}"))


def phase_report(item: pytest.Item, when: str) -> pytest.TestReport | None:
    """The report of a phase that has run (a teardown can ask whether the call passed)."""
    return item.stash.get(REPORTS, {}).get(when)
