"""guestsys.process_progress, on real processes of this host (a guest's /proc reads the same):
a sleeping process shows no progress, a busy one shows CPU time."""
from __future__ import annotations

import subprocess
import sys

from harness import guestsys
from tests.fakes import LocalSpawner


def test_a_sleeping_process_shows_no_progress_and_a_busy_one_does() -> None:
    sleeper = subprocess.Popen(["sleep", "30"])
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        quiet = guestsys.process_progress(LocalSpawner(), sleeper.pid, interval=0.5)
        loud = guestsys.process_progress(LocalSpawner(), busy.pid, interval=0.5)
    finally:
        sleeper.kill()
        busy.kill()
    assert f"pid {sleeper.pid}" in quiet and "state S" in quiet and "no progress" in quiet, quiet
    assert "still running: slow, not stuck" in loud, loud
    gone = guestsys.process_progress(LocalSpawner(), 2**22 + 7)
    assert "no /proc entry" in gone, gone
