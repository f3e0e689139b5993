"""A report directory on a full file system (a real 64 KiB tmpfs, filled): one line names the
directory, the previous report stays whole (never replaced by an empty one), no temporary
file is left, and the results go where they fit: a run directory, else stdout."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import REPO

PAYLOAD = "def test_ok():\n    pass\n\n\ndef test_bad():\n    assert 1 == 2\n"
OLD_XML = "<?xml version='1.0' encoding='utf-8'?>\n<testsuites name='old run'/>\n"


@pytest.fixture
def full_dir(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of 64 KiB holding an old junit.xml and results.json, then filled up."""
    mnt = tmp_path / "full"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip() or r.returncode}")
    try:
        (mnt / "j.xml").write_text(OLD_XML)
        (mnt / "rep").mkdir()
        (mnt / "rep" / "results.json").write_text('{"old": true}\n')
        try:
            with open(mnt / "filler", "wb") as f:
                while True:
                    f.write(b"\0" * 4096)
                    f.flush()
        except OSError:
            pass  # full
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _run(tmp_path: Path, out: Path, runs: Path) -> subprocess.CompletedProcess[str]:
    payload = tmp_path / "test_payload.py"
    payload.write_text(PAYLOAD)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "-p", "harness.pytest_plugin.plugin", "--rootdir", str(tmp_path), str(payload),
         "--junitxml", str(out / "j.xml"), "--report-dir", str(out / "rep")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**os.environ, "KSM_HARNESS_RUNS": str(runs), "PYTHONPATH": str(REPO)})


def _unharmed(out: Path) -> None:
    assert (out / "j.xml").read_text() == OLD_XML
    assert (out / "rep" / "results.json").read_text() == '{"old": true}\n'
    left = [p.name for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert not left, left


def test_a_full_report_disk_keeps_the_old_reports_and_the_results(
        tmp_path: Path, full_dir: Path) -> None:
    runs = tmp_path / "runs"
    r = _run(tmp_path, full_dir, runs)
    assert r.returncode == 1, r.stdout + r.stderr  # the failing test's verdict, not a crash
    assert "Traceback" not in r.stdout + r.stderr, r.stdout + r.stderr
    said = [ln for ln in r.stderr.splitlines() if str(full_dir) in ln]
    assert said and all("No space left on device" in ln for ln in said), r.stderr
    _unharmed(full_dir)
    kept = list(runs.glob("results-*/results.json"))
    assert len(kept) == 1 and f"the results are in {kept[0]}" in r.stderr, r.stderr
    doc = json.loads(kept[0].read_text())
    assert doc["summary"] == {"passed": 1, "failed": 1}, doc["summary"]


def test_with_nowhere_to_write_the_results_go_to_stdout(tmp_path: Path, full_dir: Path) -> None:
    r = _run(tmp_path, full_dir, full_dir / "runs")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr, r.stdout + r.stderr
    _unharmed(full_dir)
    start = r.stdout.index('{\n "version"')
    doc, _ = json.JSONDecoder().raw_decode(r.stdout[start:])
    assert doc["summary"] == {"passed": 1, "failed": 1}, doc["summary"]
