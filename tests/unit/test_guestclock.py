"""Deadlines that count the time the guest could run: measured on real host processes (a
busy loop sharing one CPU with three others is kept waiting about 3/4 of the time; a sleeping one
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

CPU = min(os.sched_getaffinity(0))  # a CPU this process may use (CPU 0 may not be ours)
SPIN = f"import os; os.sched_setaffinity(0, {{{CPU}}})\nwhile True: pass"
RIVALS = 3  # the starved process runs about 1/(RIVALS+1) of the time: 75 % kept waiting


@pytest.fixture
def starved() -> Iterator[int]:
    """A busy process and RIVALS busy rivals on one CPU: it waits for it about 3/4 of the
    time, far from the 2/3 at which a 3x cap and a budget's own end would meet (with one
    rival, at 1/2, other load on that CPU decided which came first)."""
    if not os.path.exists(f"/proc/{os.getpid()}/schedstat"):
        pytest.skip("this host kernel has no schedstat (CONFIG_SCHED_INFO)")
    procs = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(1 + RIVALS)]
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
