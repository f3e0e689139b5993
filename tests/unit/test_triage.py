"""Tests for ``ksm-harness triage`` run as ``python -m harness.triage``."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import load_log

REPO = Path(__file__).resolve().parents[2]
DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture()
def log_path(tmp_path: Path) -> Callable[[str], Path]:
    """The console text of a recorded log, as a file the CLI can read."""
    def path(name: str) -> Path:
        out = tmp_path / name
        out.write_text(load_log(DATA / name)[1])
        return out
    return path


def triage(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness.console.triage", *args], cwd=REPO,
                          input=stdin, capture_output=True, text=True, timeout=60)


def test_clean_log_exits_0(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_text("[    0.000000] Linux version 6.8.0\n[    1.000000] EXT4-fs (vda): mounted\n")
    res = triage(str(log))
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""


def test_report_exits_1_and_prints_title_category_span_text(log_path: Any) -> None:
    res = triage(str(log_path("ksm_warning.log")))
    assert res.returncode == 1, res.stderr
    first = res.stdout.splitlines()[0]
    assert "WARNING in ksm_scan_thread" in first
    assert "WARNING" in first and "lines 4-25" in first
    assert "ksm_scan_thread+0x1/0x2" in res.stdout


def test_json_output(log_path: Any) -> None:
    res = triage("--json", str(log_path("oops_fatal_exception.log")))
    assert res.returncode == 1, res.stderr
    items = json.loads(res.stdout)
    assert isinstance(items, list) and items
    first = items[0]
    for key in ("category", "title", "frame", "corrupted", "start_line", "end_line", "text"):
        assert key in first
    assert first["category"] == "NULL_DEREF"
    assert first["frame"] == "cmp_and_merge_page"
    assert first["corrupted"] is False
    assert first["primary"] is True
    assert first["start_line"] == 0 and first["end_line"] >= first["start_line"]


def test_json_clean_log_is_empty_list() -> None:
    res = triage("--json", "-", stdin="[    1.000000] random: crng init done\n")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == []


def test_stdin() -> None:
    res = triage("--json", "-", stdin=load_log(DATA / "oom_kill.log")[1])
    assert res.returncode == 1, res.stderr
    assert [r["category"] for r in json.loads(res.stdout)] == ["OOM"]


def test_missing_file_exits_2_with_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope.log"
    res = triage(str(missing))
    assert res.returncode == 2
    assert res.stdout == ""
    lines = res.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"ksm-harness: cannot read {missing}: ")


def test_undecodable_bytes_are_tolerated(tmp_path: Path) -> None:
    log = tmp_path / "binary.log"
    log.write_bytes(b"\xff\xfe garbage\n" + load_log(DATA / "sysrq_crash.log")[1].encode())
    res = triage("--json", str(log))
    assert res.returncode == 1, res.stderr
    assert json.loads(res.stdout)[0]["title"] == "kernel panic: sysrq triggered crash"


def test_main_is_callable_in_process(capsys: pytest.CaptureFixture[str], log_path: Any) -> None:
    from harness.console.triage import main

    assert main([str(log_path("hung_ksmd.log"))]) == 1
    assert "INFO: task hung in ksm_scan_thread" in capsys.readouterr().out
    assert main(["--json", str(log_path("hung_ksmd.log"))]) == 1
    assert json.loads(capsys.readouterr().out)[0]["category"] == "HUNG_TASK"
    assert main([str(DATA / "missing.log")]) == 2
    assert capsys.readouterr().err.startswith("ksm-harness: cannot read ")
