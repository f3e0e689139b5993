"""Shared helpers for ksm-harness's own tests."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from harness import deps

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"


T = TypeVar("T")


def harness_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "harness.cli", *args]


def run_harness(*args: str, env: dict[str, str] | None = None, timeout: float = 600
                ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(harness_cmd(*args), cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def require_tool(name: str) -> None:
    """Skip a host test that runs the host's real ``name`` (e.g. make on a fake kernel tree)
    where it is not installed: a fresh machine lacks what the harness installs only when a
    verb needs it (make for `build`). Probing by running it would raise instead."""
    if shutil.which(name) is None:
        pytest.skip(f"{name} is not installed (Debian package {deps.TOOLS.get(name, name)})")


def children_named(pid: int, name: str) -> list[int]:
    """PIDs of direct children of ``pid`` whose command is ``name``."""
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            comm = (proc / "comm").read_text().strip()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid and comm.startswith(name[:15]):
            out.append(int(proc.name))
    return out


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


# Header keys of a recorded console log (syzkaller's test data style).
LOG_KEYS = ("TITLE", "TYPE", "FRAME", "CORRUPTED", "REPORTS")


def load_log(path: Path) -> tuple[dict[str, str], str]:
    """A recorded log's header fields and its console text (the part after the header)."""
    text = path.read_bytes().decode("utf-8", errors="replace")
    head, sep, body = text.partition("\n\n") if not text.startswith("\n") else ("", "\n", text[1:])
    assert sep, f"{path}: no blank line after the header"
    header: dict[str, str] = {}
    for line in head.splitlines():
        key, colon, value = line.partition(": ")
        assert colon and key in LOG_KEYS, f"{path}: not a header line: {line!r}"
        header[key] = value.strip()
    return header, body
