"""No QEMU outlives the harness, however the harness ends (real QEMU processes)."""
from __future__ import annotations

import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import pytest

from harness import reaper
from tests.helpers import REPO, children_named, harness_cmd, pid_alive, wait_until

QEMU = "qemu-system-x86_64"
BOOT_DEADLINE = 300.0


def _wait_for_output(proc: subprocess.Popen[str], stream: IO[str] | None, needle: str,
                     timeout: float) -> str:
    assert stream is not None  # a pipe (stdout=PIPE)
    seen = ""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        ready, _, _ = select.select([stream], [], [], 0.5)
        if ready:
            line = stream.readline()
            seen += line
            if needle in line:
                return seen
        if proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"no {needle!r} within {timeout:.0f}s; output:\n{seen[-3000:]}")


def _qemu_of(pid: int) -> int:
    found = wait_until(lambda: children_named(pid, QEMU), 10, f"the QEMU child of {pid}")
    return found[0]


def test_sigkill_of_pytest_leaves_no_qemu() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-c", str(REPO / "tox.ini"), "--rootdir", str(REPO),
         "-s", "-q", "-p", "no:cacheprovider", str(REPO / "tests/guest/data/hold_vm.py"),
         "--numa", "1"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for_output(proc, proc.stdout, "VM-READY", BOOT_DEADLINE)
    qemu = _qemu_of(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    wait_until(lambda: not pid_alive(qemu), 10, f"QEMU {qemu} to die after pytest's SIGKILL")


@pytest.mark.parametrize("sig,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_cli_stops_its_qemu(sig: signal.Signals, status: int) -> None:
    proc = subprocess.Popen(harness_cmd("boot", "--numa", "1", "--", "sleep", "600"), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_output(proc, proc.stderr, "guest ready in", BOOT_DEADLINE)
    qemu = _qemu_of(proc.pid)
    proc.send_signal(sig)  # what Ctrl-C or `kill` does to the harness (QEMU has its own pty)
    assert proc.wait(timeout=30) == status
    wait_until(lambda: not pid_alive(qemu), 10, f"QEMU {qemu} to stop")


def test_ctrl_c_during_a_guest_wait_stops_the_run_at_once(tmp_path: Path) -> None:
    # Ctrl-C while a test waits 600 s on the guest: the run stops within seconds (teardown
    # does not wait on the guest again), writes its JUnit file and leaves no QEMU.
    junit = tmp_path / "junit.xml"
    proc = subprocess.Popen(
        harness_cmd("run", str(REPO / "tests/guest/data/hold_vm.py"), "--numa", "1", "-s",
                    "-p", "no:cacheprovider", "--junitxml", str(junit)),
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for_output(proc, proc.stdout, "VM-READY", BOOT_DEADLINE)
    qemu = _qemu_of(proc.pid)
    time.sleep(1)  # the test is now inside its 600 s wait
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    took = time.monotonic() - t0
    assert took < 10, f"the run took {took:.1f}s to stop after Ctrl-C"
    assert junit.is_file()
    wait_until(lambda: not pid_alive(qemu), 10, f"QEMU {qemu} to stop")


def test_next_run_kills_a_stale_qemu(tmp_path: Path) -> None:
    # A run directory whose owner PID is dead, holding a live QEMU: what a harness killed in
    # a way PDEATHSIG could not cover would leave. The next run's clean-up must kill it.
    dead = subprocess.Popen(["true"])
    dead.wait()
    run = tmp_path / f"pytest-20260101-000000-{dead.pid}"
    run.mkdir()
    pidfile = run / "qemu.pid"
    qemu = subprocess.Popen([QEMU, "-M", "none", "-display", "none", "-nodefaults", "-S",
                             "-pidfile", str(pidfile)], start_new_session=True)
    try:
        wait_until(pidfile.exists, 10, "the stale QEMU's pidfile")
        msgs = reaper.clean_stale(tmp_path)
        assert any(str(qemu.pid) in m for m in msgs), msgs
        assert qemu.wait(timeout=10) == -signal.SIGKILL
        assert not pidfile.exists()
    finally:
        if qemu.poll() is None:
            qemu.kill()
