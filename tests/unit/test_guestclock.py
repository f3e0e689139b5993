"""Deadlines that count the time the guest could run: measured on real host processes (a
busy loop sharing one CPU with another is kept waiting about half the time; a sleeping one
is not), no QEMU needed."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from harness.access import guestclock
from harness.access.guestclock import Budget

SPIN = "import os; os.sched_setaffinity(0, {0})\nwhile True: pass"


@pytest.fixture
def starved() -> Iterator[int]:
    """A busy process and a rival on the same CPU: each waits for it about half the time."""
    if not os.path.exists(f"/proc/{os.getpid()}/schedstat"):
        pytest.skip("this host kernel has no schedstat (CONFIG_SCHED_INFO)")
    procs = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(2)]
    try:
        yield procs[0].pid
    finally:
        for p in procs:
            p.kill()
            p.wait()


def wait_until(budget: Budget, limit: float) -> float:
    t0 = time.monotonic()
    while not budget.over():
        assert time.monotonic() - t0 < limit, "the budget never ended"
        time.sleep(0.02)
    return time.monotonic() - t0


def test_without_a_pid_a_budget_is_wall_time() -> None:
    waited = wait_until(Budget(0.3), 5)
    assert 0.3 <= waited < 1.0


def test_a_sleeping_process_is_not_starved() -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        budget = Budget(0.6, sleeper.pid)
        waited = wait_until(budget, 5)
        assert waited < 1.5
        assert budget.note() == ""
        assert not budget.capped()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_process_kept_off_its_cpu_gets_its_time_back(starved: int) -> None:
    budget = Budget(1.0, starved)
    time.sleep(1.2)
    assert 0.2 < budget.starved() <= budget.wall()
    assert not budget.over()  # it ran only part of the 1.2 s
    wait_until(budget, 10)
    assert budget.wall() > 1.2
    assert "the host starved the guest" in budget.note()


def test_the_cap_ends_a_budget_whatever_the_host_does(starved: int) -> None:
    budget = Budget(0.5, starved, cap=1.5)
    waited = wait_until(budget, 5)
    assert waited < 1.5 + 2 * guestclock.SAMPLE_EVERY
    assert budget.capped() and budget.used() < budget.seconds


def test_a_gone_process_keeps_its_last_figure() -> None:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    budget = Budget(0.2, p.pid)
    assert budget.starved() == 0.0
    wait_until(budget, 5)
