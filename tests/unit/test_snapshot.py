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


def test_restored_guest_first_command_sets_the_hosts_clock() -> None:
    assert snapshot.clock_command(1796134246.9) == "date -s @1796134246.900"


def test_a_snapshot_without_its_boot_keys_is_not_complete(tmp_path: Path) -> None:
    snap = snapshot.Snapshot(tmp_path)
    for name in (snapshot.STATE, snapshot.DISK, snapshot.INITRD, snapshot.CONSOLE):
        (tmp_path / name).write_text("x")
    assert not snap.complete()  # a restored guest's sshd knows only these keys
    pair = keys.generate("ksm-harness")
    for path in (snap.client_key, snap.host_key):
        path.write_bytes(pair.private_openssh)
    assert not snap.complete()  # nor without the guest's RAM
    snap.ram(0).write_text("x")
    assert snap.complete()
    assert keys.load(snap.client_key.read_bytes()).get_base64() == pair.pkey.get_base64()


def test_a_dead_harness_ram_files_are_removed_and_a_live_ones_kept(tmp_path: Path,
                                                                    monkeypatch) -> None:
    monkeypatch.setattr(snapshot, "SHM", tmp_path)
    dead = tmp_path / "ksm-harness-ram-999999999-abc"  # no such pid
    live = tmp_path / "ksm-harness-ram-1-abc"          # init
    for d in (dead, live):
        d.mkdir()
        (d / "ram0").write_text("x")
    mine = snapshot.ram_dir(64)
    assert mine is not None and mine.parent == tmp_path and mine.is_dir()
    assert not dead.exists() and live.exists()


def test_no_ram_files_where_the_guests_ram_would_not_fit(tmp_path: Path, monkeypatch) -> None:
    # a guest whose RAM file hits a full filesystem dies of SIGBUS: no snapshot instead
    monkeypatch.setattr(snapshot, "SHM", tmp_path)
    monkeypatch.setattr(snapshot.paths, "cache_dir", lambda: tmp_path)
    assert snapshot.ram_dir(snapshot._free_mb(tmp_path) + 1) is None
    assert not list(tmp_path.iterdir())
