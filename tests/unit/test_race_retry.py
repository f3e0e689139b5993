"""A retried race attempt starts from nothing (issue 19, finding 8): the workloads a missed
attempt started are stopped and KSM is unmerged and back at its baseline before the next
attempt, by exercise_race itself, for every scenario.

Real workload processes on the host and a real shell; KSM's directory is a plain directory in
which run=2 unmerges nothing, so a small Ksm subclass does what the kernel's run=2 does before
the write returns (every counter to 0), and records the writes of ``run``.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import workloads as wl
from harness.access.shell import GuestShell
from harness.ksm import EXACT_COUNTERS, RUN_UNMERGE, Ksm
from harness.ksm.race import RaceNotExercised, RaceRecord
from harness.pytest_plugin.ksm_scenarios import KSM_OF_TEST, WORKLOADS_OF_TEST, exercise_race
from harness.workloads import Workload, WorkloadError
from tests.fakes import LocalSpawner

pytestmark = pytest.mark.host


class FakeKernelKsm(Ksm):
    """Ksm over a plain directory; run=2 zeroes the counters as the kernel's does."""

    def __init__(self, shell: GuestShell, tree: Path) -> None:
        super().__init__(shell, ksm_dir=str(tree))
        self.tree = tree
        self.run_writes: list[str] = []

    def set(self, name: str, value: int | str, timeout: float | None = None) -> None:
        super().set(name, value, timeout)
        if name == "run":
            self.run_writes.append(str(value))
            if str(value) == str(RUN_UNMERGE):
                merged(self.tree, 0)


def merged(tree: Path, pages: int) -> None:
    """The fake tree's counters as if ``pages`` pages shared one KSM page."""
    for name in EXACT_COUNTERS:
        (tree / name).write_text("0\n")
    (tree / "pages_shared").write_text(f"{min(pages, 1)}\n")
    (tree / "pages_sharing").write_text(f"{max(pages - 1, 0)}\n")


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the workload")
    return wl.build(tmp_path_factory.mktemp("build"))


@pytest.fixture
def shell() -> Iterator[GuestShell]:
    sh = GuestShell(LocalSpawner())
    yield sh
    sh.close()


@pytest.fixture
def ksm(shell: GuestShell, tmp_path: Path) -> FakeKernelKsm:
    tree = tmp_path / "ksm"
    tree.mkdir()
    for name, value in (("run", "0"), ("full_scans", "0"), ("pages_to_scan", "100"),
                        ("sleep_millisecs", "20")):
        (tree / name).write_text(value + "\n")
    merged(tree, 0)
    return FakeKernelKsm(shell, tree)


@pytest.fixture
def started(request: pytest.FixtureRequest, ksm: FakeKernelKsm) -> Iterator[list[Workload]]:
    """The test's workloads, told to exercise_race as the ``workload`` fixture does."""
    workloads: list[Workload] = []
    request.node.stash[KSM_OF_TEST] = ksm
    request.node.stash[WORKLOADS_OF_TEST] = workloads
    yield workloads
    for w in workloads:
        w.kill()


def alive(w: Workload) -> bool:
    try:
        os.kill(w.pid or 0, 0)
    except ProcessLookupError:
        return False
    return w.exit_status is None


def test_a_retried_attempt_starts_from_nothing(request: pytest.FixtureRequest, binary: Path,
                                               ksm: FakeKernelKsm,
                                               started: list[Workload]) -> None:
    earlier = Workload.start(LocalSpawner(), str(binary), name="E")  # the test's own, kept
    started.append(earlier)
    earlier.alloc("s", 16, "same:1")
    seen: list[dict[str, object]] = []

    def attempt(i: int) -> RaceRecord:
        w = Workload.start(LocalSpawner(), str(binary), name=f"W{i}")
        started.append(w)
        w.alloc("s", 64, "same:1")
        seen.append({"alive": [x.name for x in started[:-1] if alive(x)],
                     "sharing": ksm.get("pages_sharing"), "run": ksm.get("run"),
                     "run writes": list(ksm.run_writes)})
        ksm.set("run", 1)
        merged(ksm.tree, 80)  # the earlier workload's and this attempt's pages
        if i < 2:
            raise RaceNotExercised(f"missed {i}")
        return RaceRecord("forks during run=2")

    exercise_race(request.node, "forks", attempt)
    assert seen == [
        {"alive": ["E"], "sharing": 0, "run": 0, "run writes": []},
        # each retry: W0 (then W1) stopped, run=2 then back to 0, nothing merged
        {"alive": ["E"], "sharing": 0, "run": 0, "run writes": ["1", "2", "0"]},
        {"alive": ["E"], "sharing": 0, "run": 0, "run writes": ["1", "2", "0"] * 2},
    ]
    assert [w.exit_status for w in started[1:]] == [0, 0, None]
    assert alive(earlier) and earlier.verify() == 16


def test_corruption_seen_by_a_missed_attempt_is_a_failure(request: pytest.FixtureRequest,
                                                          binary: Path, ksm: FakeKernelKsm,
                                                          started: list[Workload]) -> None:
    def attempt(i: int) -> RaceRecord:
        w = Workload.start(LocalSpawner(), str(binary), name=f"W{i}")
        started.append(w)
        w.alloc("s", 4, "same:1")
        w.corrupt("s", 2)
        with pytest.raises(WorkloadError):
            w.verify()  # it remembers: its exit status will be 1
        raise RaceNotExercised("missed")

    with pytest.raises(WorkloadError, match="W0 exited with status 1 after a missed race "
                                            "attempt: the workload detected data corruption"):
        exercise_race(request.node, "forks", attempt)
