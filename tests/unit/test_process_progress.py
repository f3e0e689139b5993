"""guest_mm.process_progress, on real processes of this host (a guest's /proc reads the same):
a sleeping process shows no progress, a busy one shows CPU time."""
from __future__ import annotations

import subprocess
import sys

from harness import guest_mm
from tests.fakes import LocalSpawner


def test_a_sleeping_process_shows_no_progress_and_a_busy_one_does() -> None:
    sleeper = subprocess.Popen(["sleep", "30"])
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        # generous: on a loaded host (load 8 on 2 cores) a busy loop got no tick in 0.5 s,
        # or the reads missed an 8 s deadline; this is not a timing test
        quiet = guest_mm.process_progress(LocalSpawner(), sleeper.pid, interval=0.5, timeout=60)
        loud = guest_mm.process_progress(LocalSpawner(), busy.pid, interval=2.0, timeout=60)
    finally:
        sleeper.kill()
        busy.kill()
    assert f"pid {sleeper.pid}" in quiet and "state S" in quiet and "no progress" in quiet, quiet
    assert "still running: slow, not stuck" in loud, loud
    gone = guest_mm.process_progress(LocalSpawner(), 2**22 + 7)
    assert "no /proc entry" in gone, gone


def test_a_workload_timeout_is_followed_up_by_its_pid() -> None:
    from harness.pytest_plugin import watch
    from harness.workloads import WorkloadTimeout
    vm = LocalSpawner()  # the guest's Runner, on this host
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        timeout = WorkloadTimeout("workload 'A' did not answer", "A", "verify", pid=sleeper.pid)
        evidence = watch._stuck_process(vm, timeout)
    finally:
        sleeper.kill()
    assert f"pid {sleeper.pid}" in evidence and "no progress" in evidence, evidence
    # the message is not parsed: a pid only in the text is not followed up
    assert watch._stuck_process(vm, WorkloadTimeout("(pid 1) no answer")) == ""
