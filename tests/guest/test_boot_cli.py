"""The CLI end to end on a real guest: the command's output and exit status come back."""
from __future__ import annotations

from tests.helpers import run_harness


def test_boot_runs_command_and_sees_two_nodes() -> None:
    r = run_harness("boot", "--", "cat", "/sys/devices/system/node/online")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "0-1"
    assert "accel tcg" in r.stderr or "accel kvm" in r.stderr  # the accelerator is named
    assert "guest ready in" in r.stderr


def test_boot_returns_the_guest_command_status() -> None:
    r = run_harness("boot", "--numa", "1", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert r.returncode == 3, r.stderr
    assert r.stdout == "out\n"
    assert "err" in r.stderr


def test_dry_run_prints_the_qemu_command_line() -> None:
    r = run_harness("boot", "--dry-run", "--numa", "512M:1,512M:1,1G:2")
    assert r.returncode == 0, r.stderr
    line = r.stdout.strip()
    assert line.startswith("qemu-system-x86_64 ")
    assert "-smp 4,sockets=4,cores=1,threads=1" in line
    assert "node,nodeid=2,cpus=2-3,memdev=mem2" in line
    assert "hostfwd=tcp:127.0.0.1:" in line
