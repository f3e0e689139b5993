"""What decides whether a saved guest fits, and the one-line console command that makes a
restored guest this run's (no VM: the guest side is checked in tests/guest/test_vm.py)."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from harness.assets import keys
from harness.errors import VMError
from harness.machine import snapshot
from harness.machine.restore import Restore


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
                                                                   monkeypatch: pytest.MonkeyPatch
                                                                   ) -> None:
    monkeypatch.setattr(snapshot, "SHM", tmp_path)
    dead = tmp_path / "ksm-harness-ram-999999999-abc"  # no such pid
    live = tmp_path / "ksm-harness-ram-1-abc"          # init
    for d in (dead, live):
        d.mkdir()
        (d / "ram0").write_text("x")
    mine = snapshot.ram_dir(64)
    assert mine is not None and mine.parent == tmp_path and mine.is_dir()
    assert not dead.exists() and live.exists()


def test_no_ram_files_where_the_guests_ram_would_not_fit(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # a guest whose RAM file hits a full filesystem dies of SIGBUS: no snapshot instead
    monkeypatch.setattr(snapshot, "SHM", tmp_path)
    monkeypatch.setattr(snapshot.paths, "cache_dir", lambda: tmp_path)
    assert snapshot.ram_dir(snapshot._free_mb(tmp_path) + 1) is None
    assert not list(tmp_path.iterdir())


# ---- one VM's use of snapshots (harness/machine/restore.py), without QEMU ----

class _Config:
    """The parts of a QemuConfig that the RAM-file choice touches."""

    def __init__(self, mem_mb: int) -> None:
        self.topology = SimpleNamespace(mem_mb=mem_mb)
        self.ram_dir: Path | None = None
        self.ram_shared = False


def _saved(root: Path, key: str, client_key: bytes) -> snapshot.Snapshot:
    snap = snapshot.Snapshot(root / key)
    snap.dir.mkdir(parents=True)
    for path in (snap.state, snap.disk, snap.initrd, snap.console, snap.ram(0)):
        path.write_text("x")
    snap.client_key.write_bytes(client_key)
    snap.host_key.write_bytes(client_key)
    assert snap.complete()
    return snap


def test_an_unusable_snapshot_is_removed_and_the_vm_prepared_again(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch
                                                                   ) -> None:
    monkeypatch.setattr(snapshot, "root", lambda: tmp_path)
    logged: list[str] = []
    restore = Restore(logged.append)
    restore.key = "k1"
    snap = _saved(tmp_path, "k1", b"not a key")
    prepared: list[object] = []

    def prepare() -> Any:
        prepared.append(object())
        return prepared[-1]

    cfg, logins = restore.configure(prepare, tmp_path / "overlay.qcow2", tmp_path / "console.log")
    assert logins is None and restore.restored is None
    assert cfg is prepared[1] and len(prepared) == 2  # prepared again, from scratch
    assert not snap.dir.exists() and "the snapshot is unusable" in logged[0]
    # no snapshot at all: prepared once, booted cold, nothing logged
    cfg, logins = restore.configure(prepare, tmp_path / "overlay.qcow2", tmp_path / "console.log")
    assert logins is None and cfg is prepared[2] and len(logged) == 1


class _Console:
    def __init__(self, text: str) -> None:
        self.text = text

    def tail(self, n: int = 40) -> str:
        return self.text


# what QEMU 7.2 printed for a snapshot whose ram0 was cut to half its size
CUT_SHORT = ("qemu-system-x86_64: -object memory-backend-file,id=m0,size=1024M,mem-path=/c/ram0,"
             "share=off: backing store /c/ram0 size 0x20000000 does not match 'size' option "
             "0x40000000")


def test_a_restore_qemu_refused_removes_its_snapshot_saying_why(tmp_path: Path) -> None:
    logged: list[str] = []
    restore = Restore(logged.append)
    restore.key = "k2"
    restore.restored = _saved(tmp_path, "k2", b"x")
    restore.give_up(VMError("QMP while loading the saved guest: Connection reset by peer"),
                    "QEMU exited (status 1, signal None)",
                    _Console(f"boot line\n{CUT_SHORT}\n"))  # type: ignore[arg-type]
    assert restore.restored is None and not (tmp_path / "k2").exists()
    assert len(logged) == 1 and "removed a snapshot QEMU could not load" in logged[0]
    assert "size 0x20000000 does not match 'size' option" in logged[0]
    assert restore.key == "k2"  # the cold boot saves a new one


def test_a_restore_that_is_only_slow_keeps_its_snapshot(tmp_path: Path) -> None:
    logged: list[str] = []
    restore = Restore(logged.append)
    restore.key = "k3"
    restore.restored = _saved(tmp_path, "k3", b"x")
    restore.give_up(VMError("the saved guest did not load (QEMU status inmigrate; running)"),
                    None, _Console(""))  # type: ignore[arg-type]
    assert restore.restored is None and (tmp_path / "k3").is_dir()
    assert "did not load in time" in logged[0] and "kept" in logged[0]
    assert restore.key is None  # nothing saved over it


def test_a_restore_whose_qemu_was_killed_keeps_its_snapshot(tmp_path: Path) -> None:
    # the fault matrix's qemu-kill@restore: a SIGKILL from outside refused nothing
    logged: list[str] = []
    restore = Restore(logged.append)
    restore.key = "k4"
    restore.restored = _saved(tmp_path, "k4", b"x")
    restore.give_up(VMError("QMP while loading the saved guest: Connection reset by peer"),
                    "QEMU exited (status None, signal 9)", _Console(""),  # type: ignore[arg-type]
                    killed=True)
    assert restore.restored is None and (tmp_path / "k4").is_dir()
    assert len(logged) == 1 and "killed while loading" in logged[0] and "kept" in logged[0]
    assert restore.key is None


def test_ram_files_only_for_a_cold_boot_that_saves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                   ) -> None:
    made: list[Path] = []

    def ram_dir(mem_mb: int) -> Path | None:
        if mem_mb > 100:
            return None
        made.append(tmp_path / f"ram-{len(made)}")
        made[-1].mkdir()
        return made[-1]

    monkeypatch.setattr(snapshot, "ram_dir", ram_dir)
    logged: list[str] = []
    restore = Restore(logged.append)
    cfg: Any = _Config(64)
    restore.ram_for_saving(cfg)
    assert cfg.ram_dir is None and not made  # no key: no snapshot to save
    restore.key = "k3"
    restore.ram_for_saving(cfg)
    assert (cfg.ram_dir, cfg.ram_shared) == (made[0], True)
    restore.ram_for_saving(cfg)  # a new QEMU of the same cold boot: fresh files
    assert cfg.ram_dir == made[1] and not made[0].exists()
    restore.cleanup()
    assert not made[1].exists()
    big: Any = _Config(4096)
    restore.ram_for_saving(big)
    assert big.ram_dir is None and restore.key is None  # no room: no snapshot will be saved
    assert "no snapshot will be saved" in logged[0]


def test_a_failed_ram_copy_says_why_in_cps_words(tmp_path: Path) -> None:
    # the fault matrix's enospc-cache@snapshot-save said only "cp ... returned 1"
    from harness.machine.snapshot import Snapshot, copy_ram
    snap = Snapshot(tmp_path / "snaps" / "k.tmp-1")
    snap.dir.mkdir(parents=True)
    with pytest.raises(OSError, match=r"copying the guest's RAM into .*snaps: cp: .*No such"):
        copy_ram([tmp_path / "no-ram0"], snap)
