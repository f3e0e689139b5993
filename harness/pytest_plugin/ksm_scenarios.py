"""Helpers for KSM scenarios that speak pytest: a missing kernel feature becomes a skip that
says what is missing. Loaded as a plugin: a check the kernel cannot answer truthfully
(:class:`harness.workloads.CheckUnavailable`) skips the test with the reason."""
from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from typing import Protocol

import pytest

from harness import kernel_bugs
from harness.guest_mm import Unavailable
from harness.ksm import Ksm, KsmUnavailable
from harness.ksm.prepared_guest import KsmGuest
from harness.ksm.race import Afresh, RaceNotExercised, RaceRecord
from harness.workloads import CheckUnavailable, Workload

# A race scenario tries this often to reach its precondition (each try costs a merge and an
# unmerge under TCG: keep it small, the suite's budget is 10 minutes).
RACE_ATTEMPTS = 3

# What a retried race attempt must undo (see exercise_race), put on the test's item by the
# ``ksm`` fixture (the guest's KSM) and the ``workload`` fixture (the workloads it started).
KSM_OF_TEST = pytest.StashKey[Ksm]()
WORKLOADS_OF_TEST = pytest.StashKey[list[Workload]]()


class RaceNode(Protocol):
    """What exercise_race needs of the test's item (a pytest.Item is one): its properties,
    and optionally a ``stash`` with KSM_OF_TEST to retry from nothing."""

    user_properties: list[tuple[str, object]]


@contextmanager
def skip_unless() -> Iterator[None]:
    """Turn a missing kernel feature into a skip that says what is missing."""
    try:
        yield
    except (Unavailable, KsmUnavailable) as e:
        pytest.skip(str(e))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    try:
        return (yield)
    except CheckUnavailable as exc:
        pytest.skip(str(exc))


def require_knob(k: Ksm, name: str) -> None:
    with skip_unless():
        k.require(name)


# The core scenarios once more as kernels run KSM by default now: ``@SCAN_MODES`` on a test
# that uses the ``ksm`` fixture runs it plain (smart_scan=0, every page looked at on every
# scan), with smart_scan=1 (6.7+, the default there) and with the scan-time advisor (6.10+)
# tuning pages_to_scan; a kernel without the knob skips that case with the reason.
SCAN_MODES = pytest.mark.parametrize("scan_mode", ["plain", "smart_scan", "advisor"],
                                     indirect=True)


def require_scan_mode(k: Ksm, mode: str) -> None:
    """Skip unless the kernel has the knobs of ``mode`` (first thing in the fixture: nothing
    to undo yet)."""
    if mode not in ("plain", "smart_scan", "advisor"):
        raise ValueError(f"unknown scan mode {mode!r}")
    if mode != "plain":
        require_knob(k, "advisor_mode" if mode == "advisor" else "smart_scan")


def apply_scan_mode(k: Ksm, mode: str, pages_to_scan: int) -> None:
    """Set the knobs of ``mode`` (see SCAN_MODES) after the fast-scanning ones."""
    if mode == "plain":
        if k.has("smart_scan"):
            # 6.7+ skips pages that did not merge for a growing number of scans; skipped
            # pages are out of the unstable tree and count as volatile, not unshared. The
            # exact accounting scenarios want every page looked at on every scan.
            k.set("smart_scan", 0)
        return
    k.set("smart_scan", 1)
    k.lumped = True  # a skipped lone page counts volatile instead of unshared
    if mode == "advisor":
        # the advisor picks pages_to_scan between these to scan everything in the target
        # time; the floor keeps the suite's deadlines (they follow the scan rate)
        k.set("advisor_min_pages_to_scan", pages_to_scan)
        k.set("advisor_max_pages_to_scan", pages_to_scan * 3)
        k.set("advisor_target_scan_time", 1)
        k.set("advisor_mode", "scan-time")


def require_nodes(ksm_guest: KsmGuest, count: int) -> list[int]:
    if len(ksm_guest.nodes) < count:
        pytest.skip(f"needs {count} NUMA nodes, the guest has {len(ksm_guest.nodes)}: boot "
                    f"with --numa {count}")
    return ksm_guest.nodes


def on_nodes(w: Workload, region: str) -> tuple[int, int]:
    """(pages on node 0, pages on node 1) of a workload's region, from move_pages(nodes=NULL);
    every page must be present and on one of the two."""
    n = w.nodes(region)
    assert not n.errors and n.other == 0, f"{w.name}/{region}: pages not present? {n}"
    return n.node0, n.node1


def xfail_mark(bug_id: str, release: str, banner: str = "",
               raises: type[BaseException] | tuple[type[BaseException], ...] = AssertionError,
               ) -> pytest.MarkDecorator | None:
    """A strict xfail for a kernel known to have the bug (harness.kernel_bugs), None for any
    other kernel. Apply it with ``request.node.add_marker(mark)`` before the test checks the
    buggy behaviour."""
    bug = kernel_bugs.affected(bug_id, release, banner)
    if bug is None:
        return None
    version = ".".join(map(str, kernel_bugs.kernel_version(release, banner) or ()))
    return pytest.mark.xfail(strict=True, raises=raises,
                             reason=f"{bug.describe()} (this kernel: {release}, {version})")


def exercise_race(node: RaceNode, what: str, attempt: Callable[[int], RaceRecord],
                  attempts: int = RACE_ATTEMPTS) -> RaceRecord:
    """Run ``attempt(i)`` until it returns (the race happened, its precondition asserted, the
    outcome checked) or ``attempts`` tries all raised RaceNotExercised: then the test is
    skipped with "race not exercised: WHAT: REASON", never passed. Any other exception (a
    failed outcome, a kernel report) ends it at once. The measured overlap (or each miss) is
    printed and kept as the test's ``race_overlap`` property.

    Every retry starts from nothing: before it, the workloads the missed attempt started
    are stopped, everything is unmerged and KSM is back where it was before the first
    attempt (see :class:`harness.ksm.race.Afresh`; the ``ksm`` and ``workload`` fixtures
    say what the test's KSM and workloads are)."""
    misses: list[str] = []
    afresh = _afresh(node) if attempts > 1 else None
    for i in range(attempts):
        if i and afresh is not None:
            print(f"retry {i + 1}/{attempts} from nothing: {afresh.restore()}")
        try:
            record = attempt(i)
        except RaceNotExercised as miss:
            misses.append(f"attempt {i + 1}: {miss}")
            print(f"race not exercised ({what}), attempt {i + 1}/{attempts}: {miss}")
            continue
        summary = record.summary() + (f" (after {i} misses: {'; '.join(misses)})"
                                      if misses else "")
        print(f"race overlap: {summary}")
        _record(node, summary)
        return record
    reason = f"race not exercised: {what}: {misses[-1]} ({attempts} attempts)"
    _record(node, "; ".join([reason, *misses[:-1]]))
    pytest.skip(reason)


def _afresh(node: RaceNode) -> Afresh | None:
    """The way back to the state before the first attempt; None for a test without the
    ``ksm`` fixture (no KSM of its own to reset)."""
    stash = getattr(node, "stash", None)
    if stash is None or KSM_OF_TEST not in stash:
        return None
    return Afresh(stash[KSM_OF_TEST], stash.get(WORKLOADS_OF_TEST, []))


def _record(node: RaceNode, text: str) -> None:
    """One ``race_overlap`` property per test (the records keep one value per name): a test
    with several races gets them joined by " | "."""
    props = node.user_properties
    for i, (name, value) in enumerate(props):
        if name == "race_overlap":
            props[i] = (name, f"{value} | {text}")
            return
    props.append(("race_overlap", text))
