"""The CLI end to end on a real guest: the command's output and exit status come back."""
from __future__ import annotations

import io
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path
from typing import cast

from tests.helpers import run_harness


def _kept_dir(stderr: str) -> Path:
    m = re.search(r"files \(overlay, initrd\) are in (\S+):", stderr)
    assert m, stderr
    return Path(m.group(1))


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
    shutil.rmtree(_kept_dir(r.stderr))


def test_dry_run_command_runs_and_nothing_else_is_left_behind(tmp_path: Path) -> None:
    # a runs directory of its own: the user's may change under us (another harness running)
    runs = tmp_path / "runs"
    runs.mkdir()
    r = run_harness("boot", "--dry-run", "--numa", "1", env={"KSM_HARNESS_RUNS": str(runs)})
    assert r.returncode == 0, r.stderr
    kept = _kept_dir(r.stderr)
    try:
        assert (kept / "initrd.img").is_file() and (kept / "root-overlay.qcow2").is_file()
        assert list(runs.iterdir()) == []  # no run directory of its own
        # the printed command boots the guest as it is (console on stdio)
        qemu = subprocess.Popen(shlex.split(r.stdout.strip()), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        seen, end = b"", time.monotonic() + 240
        try:
            assert qemu.stdout is not None
            while b"KSM-HARNESS-READY" not in seen and time.monotonic() < end:
                # Popen's pipe (default bufsize) is a BufferedReader: read1 returns what the
                # pipe has, without waiting for 4096 bytes
                chunk = cast(io.BufferedReader, qemu.stdout).read1(4096)
                if not chunk:
                    break
                seen += chunk
        finally:
            qemu.kill()
            qemu.wait()
        assert b"KSM-HARNESS-READY" in seen, seen[-2000:].decode(errors="replace")
    finally:
        shutil.rmtree(kept, ignore_errors=True)


def test_a_guest_panic_exits_255_with_the_report_title() -> None:
    r = run_harness("boot", "--numa", "1", "--", "sh", "-c", "echo c > /proc/sysrq-trigger")
    assert r.returncode == 255, r.stderr
    assert "ksm-harness: guest failed: kernel panic: sysrq triggered crash" in r.stderr
    m = re.search(r"console log kept: (\S+)", r.stderr)
    assert m and "Kernel panic - not syncing: sysrq triggered crash" in Path(m.group(1)).read_text(errors="replace")
    shutil.rmtree(Path(m.group(1)).parent)


def test_a_failed_boot_keeps_its_console_log() -> None:
    # cold (a restored guest can be ready within 2 s), so the boot cannot finish in time
    r = run_harness("boot", "--numa", "1", "--snapshot", "off", "--boot-timeout", "2", "--",
                    "true")
    assert r.returncode == 255, r.stderr
    assert "ksm-harness: guest failed: guest did not boot" in r.stderr
    m = re.search(r"console log kept: (\S+)", r.stderr)
    assert m and Path(m.group(1)).is_file()
    shutil.rmtree(Path(m.group(1)).parent)
