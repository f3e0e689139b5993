"""Ctrl-C (SIGINT) or SIGTERM to `ksm-harness run` while a KSM test runs on a real guest: the
run stops at once, says so in one line, exits 128 + the signal, writes every report with the
unfinished test recorded as interrupted, and leaves no QEMU behind."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.helpers import REPO, children_named, harness_cmd, pid_alive, wait_until

QEMU = "qemu-system-x86_64"
TEST = "test_merge_unmerge_exact_counters"
BOOT_DEADLINE = 400.0
STOP_DEADLINE = 2.0  # from the signal to the harness's exit, reports written


def _started(runs: Path) -> bool:
    """The test body runs: its START marker came back through a guest's console."""
    for log in runs.glob("*/*/console.log"):
        try:
            text = log.read_text(errors="replace")
        except OSError:
            continue
        if any("ksm-harness: START " in ln and f"::{TEST}[" in ln for ln in text.splitlines()):
            return True
    return False


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_mid_test_keeps_every_report(tmp_path: Path, sig: signal.Signals) -> None:
    rep, junit = tmp_path / "rep", tmp_path / "j.xml"
    # short: QEMU's QMP socket lives in the run directory (a UNIX socket path < 108 bytes)
    runs = Path(tempfile.mkdtemp(prefix="ksm-int-"))
    env = {**os.environ, "KSM_HARNESS_RUNS": str(runs)}
    proc = subprocess.Popen(
        harness_cmd("run", "-k", TEST, "--numa", "2", "-p", "no:cacheprovider",
                    "--report-dir", str(rep), "--junitxml", str(junit)),
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)  # setsid: the signal goes to the group, as a terminal's does
    try:
        wait_until(lambda: _started(runs) or proc.poll() is not None, BOOT_DEADLINE,
                   f"the START marker of {TEST}", interval=0.1)
        assert proc.poll() is None, proc.communicate()
        qemus = children_named(proc.pid, QEMU)
        assert qemus, "no QEMU child while the test runs"
        t0 = time.monotonic()
        os.killpg(proc.pid, sig)
        out, err = proc.communicate(timeout=60)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(runs, ignore_errors=True)
    assert proc.returncode == 128 + sig, (proc.returncode, err[-3000:], out[-3000:])
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("ksm-harness: interrupted"), err[-3000:]
    assert sig.name in lines[0], lines[0]
    assert "Traceback" not in out + err
    assert took < STOP_DEADLINE, f"the run took {took:.1f}s to stop after {sig.name}"
    for pid in qemus:
        wait_until(lambda: not pid_alive(pid), 5, f"QEMU {pid} to be gone")  # noqa: B023
    case = next(c for c in ET.parse(junit).getroot().iter("testcase") if TEST in c.get("name", ""))
    error = case.find("error")
    assert error is not None and "interrupted" in (error.get("message") or ""), ET.tostring(case)
    doc = json.loads((rep / "results.json").read_text())
    record = next(r for r in doc["tests"] if TEST in r["nodeid"])
    assert record["outcome"] == "error" and "interrupted" in record["title"], record
