"""harness.faultpoints: silent unless KSM_HARNESS_INJECT names the phase; then at the nth time
it marks the moment (stderr and the mark file) and does the fault to its own process group.
Each case runs in a child of its own session: the fault must hit that child only."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from harness import faultpoints

CALLS = ("from harness import faultpoints as f\n"
         "for _ in range(3): f.reached('restore')\n"
         "print('went on')\n")


def _child(spec: str, mark: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, faultpoints.ENV: spec, faultpoints.MARK_ENV: str(mark)}
    return subprocess.run([sys.executable, "-c", CALLS], env=env, capture_output=True, text=True,
                          timeout=30, start_new_session=True)


def test_silent_without_the_variable(tmp_path: Path) -> None:
    r = _child("", tmp_path / "mark")
    assert r.returncode == 0 and r.stdout == "went on\n" and r.stderr == ""
    assert not (tmp_path / "mark").exists()


def test_another_phase_is_not_hit(tmp_path: Path) -> None:
    r = _child("teardown:sigkill", tmp_path / "mark")
    assert r.returncode == 0 and not (tmp_path / "mark").exists()


@pytest.mark.parametrize("fault,sig", [("sigterm", signal.SIGTERM), ("sigkill", signal.SIGKILL),
                                       ("sigint", signal.SIGINT)])
def test_the_nth_time_signals_its_own_group(tmp_path: Path, fault: str, sig: int) -> None:
    r = _child(f"restore:{fault}:2", tmp_path / "mark")
    assert "went on" not in r.stdout
    if sig == signal.SIGINT:  # Python's KeyboardInterrupt, not the signal's default action
        assert "KeyboardInterrupt" in r.stderr
    else:
        assert r.returncode == -sig
    line = f"{faultpoints.MARKER} {fault} at restore"
    assert (tmp_path / "mark").read_text() == line + "\n"
    assert r.stderr.count(line) == 1


def test_a_qemu_fault_without_qemu_says_it_did_nothing(tmp_path: Path) -> None:
    r = _child("restore:qemu-stop", tmp_path / "mark")
    assert r.returncode == 0 and "fault not injected: qemu-stop at restore" in r.stderr
    assert not (tmp_path / "mark").exists()  # a cell whose fault never fired fails


def test_qemu_faults_hit_the_registered_qemu(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # a child of ours stands for QEMU: the fault goes to the registered pid, nothing else
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        with monkeypatch.context() as m:
            m.setenv(faultpoints.ENV, "cold-boot:qemu-kill")
            m.setenv(faultpoints.MARK_ENV, str(tmp_path / "mark"))
            m.setattr(faultpoints, "_seen", {})
            faultpoints.qemu_started(sleeper.pid)
            faultpoints.reached("cold-boot")
        assert sleeper.wait(10) == -signal.SIGKILL
    finally:
        faultpoints.qemu_stopped(sleeper.pid)
        sleeper.kill()
        sleeper.wait()


def test_fill_makes_the_file_system_full(tmp_path: Path) -> None:
    # a real, tiny file system: a 1 MiB tmpfs needs root; elsewhere a file of 1 MiB is enough
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=True)
    try:
        faultpoints.fill(small)
        with pytest.raises(OSError, match="No space left"):
            (small / "x").write_bytes(b"\0" * 65536)
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_a_bad_spec_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as m:  # undone before this test's own teardown phase
        m.setenv(faultpoints.ENV, "boot:sigint")
        with pytest.raises(ValueError, match="want PHASE:FAULT"):
            faultpoints.reached("restore")
