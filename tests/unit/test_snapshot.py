"""What decides whether a saved guest fits, and the one-line console command that makes a
restored guest this run's (no VM: the guest side is checked in tests/guest/test_vm.py)."""
from __future__ import annotations

from pathlib import Path

from harness.assets import keys
from harness.machine import snapshot


def argv(run: Path, port: int, kernel: str = "/k/vmlinux") -> list[str]:
    return ["qemu-system-x86_64", "-kernel", kernel, "-initrd", f"{run}/initrd.img",
            "-drive", f"file={run}/root-overlay.qcow2", "-append", "console=ttyS0 panic=-1",
            "-netdev", f"user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22"]


def test_the_key_ignores_this_runs_paths_and_port_but_not_the_machine(tmp_path: Path) -> None:
    inputs = {"guest-init.sh": b"#!/bin/sh\n", "sysctl.list": b"/proc/sys/x 1\n"}
    a = snapshot.key(argv(tmp_path / "a", 2222), tmp_path / "a", inputs)
    assert a == snapshot.key(argv(tmp_path / "b", 3333), tmp_path / "b", inputs)
    assert a != snapshot.key(argv(tmp_path / "a", 2222, "/k/other"), tmp_path / "a", inputs)
    assert a != snapshot.key(argv(tmp_path / "a", 2222), tmp_path / "a",
                             {**inputs, "sysctl.list": b"/proc/sys/x 2\n"})


def test_restore_command_is_one_line_with_this_runs_keys() -> None:
    client, host = keys.generate("ksm-harness"), keys.generate("ksm-guest")
    cmd = snapshot.restore_script(client.public_line, host.private_openssh, host.public_line,
                                  1796134246.9)
    assert "\n" not in cmd  # continuation prompts would interleave with the markers
    assert client.public_line in cmd and host.public_line in cmd
    assert "BEGIN OPENSSH PRIVATE KEY-----\\n" in cmd  # printf %b restores the newlines
    assert "date -s @1796134246.900" in cmd and cmd.endswith("sshd -r -f /run/ksm/sshd_config")
