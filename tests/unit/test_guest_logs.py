"""The classifier on console logs recorded from our own guests (see data/guest/README.md)."""
from __future__ import annotations

from pathlib import Path

import pytest

from harness.console.classify import classify_text
from tests.helpers import load_log

DATA = Path(__file__).parent / "data" / "guest"


def _reports(name: str) -> list[tuple[str, str]]:
    text = load_log(DATA / name)[1]
    return [(r.category, r.title) for r in classify_text(text)]


@pytest.mark.parametrize("name,expected", [
    ("clean_boot.console.log", []),
    ("sysrq_panic.console.log", [("PANIC", "kernel panic: sysrq triggered crash")]),
    ("memcg_oom.console.log", [("OOM", "out of memory: killed process python3")] * 2),
    # the sysrq-w dump is evidence, not a report; the kernel's hung-task report is
    ("dstate_hang_sysrq_w.console.log", [("HUNG_TASK", "INFO: task hung in mnt_want_write")]),
])
def test_recorded_guest_console(name: str, expected: list[tuple[str, str]]) -> None:
    assert _reports(name) == expected
