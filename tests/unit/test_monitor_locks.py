"""The health monitor and the console reader share two locks: a claim while kernel reports
stream in must not deadlock them (it did: CI stop 17, a run stuck for 25 minutes)."""
from __future__ import annotations

import sys
import threading
from pathlib import Path

import pexpect

from harness.console.reader import Console
from harness.health import Monitor

REPORT = ("WARNING: CPU: 1 PID: 77 at mm/ksm.c:2291 cmp_and_merge_page+0x2f1/0x4c0\\n"
          "Modules linked in:\\n"
          "CPU: 1 PID: 77 Comm: ksmd Not tainted 6.1.0 #1\\n"
          "RIP: 0010:cmp_and_merge_page+0x2f1/0x4c0\\n"
          "---[ end trace 0000000000000000 ]---\\n")


def test_claims_while_reports_stream_in(tmp_path: Path) -> None:
    script = f"import sys\nfor i in range(4000): sys.stdout.write('{REPORT}')\n"
    child = pexpect.spawn(sys.executable, ["-c", script], echo=False, timeout=None)
    console = Console(child, tmp_path / "console.log")
    monitor = Monitor(console)
    claimed: list[int] = []

    def claim_until_done() -> None:
        while not console.closed:
            claimed.append(len(monitor.claim()))
        claimed.append(len(monitor.claim()))

    t = threading.Thread(target=claim_until_done, daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "claim() and the console reader deadlocked"
    console.close()
    assert sum(claimed) == 4000
