"""Cached artefacts are checked on use (issue 19: "a truncated cached root image says 'cannot
mount root disk' and stays cached"): each one built records its size and checksum beside it,
a damaged one is named in one line, removed and rebuilt, and a snapshot taken over the old
one is not restored over the new one (its key holds the records)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness.assets import atomic
from harness.machine import snapshot

pytestmark = pytest.mark.host


def built(out: Path, data: bytes) -> Path:
    with atomic.building(out) as tmp:
        assert tmp is not None
        tmp.write_bytes(data)
    return out


def overwrite(path: Path, at: int, data: bytes) -> None:
    with open(path, "r+b") as fh:
        fh.seek(at)
        fh.write(data)


def check(out: Path, what: str = "module disk") -> tuple[bool, list[str]]:
    said: list[str] = []
    return atomic.usable(out, what, said.append), said


def test_a_built_artefact_is_recorded_and_usable(tmp_path: Path) -> None:
    out = built(tmp_path / "module-disks" / "k.ext4", b"ext4" * 1000)
    assert atomic.recorded(out) == atomic.digest(out)
    assert atomic.digest(out).startswith("4000:")
    assert check(out) == (True, [])


def test_a_truncated_artefact_is_named_removed_and_built_again(tmp_path: Path) -> None:
    out = built(tmp_path / "module-disks" / "k.ext4", b"x" * 5000)
    os.truncate(out, 2500)
    ok, said = check(out)
    assert not ok and len(said) == 1, said
    assert said[0] == (f"ksm-harness: cached module disk {out} is damaged (truncated: 2500 "
                       "bytes of the 5000 it had when built); removed, rebuilding it")
    assert not out.exists() and atomic.recorded(out) is None
    built(out, b"y" * 5000)  # the caller builds it again: recorded anew
    assert check(out) == (True, [])


@pytest.mark.parametrize("at", [1024, 5 << 20, (40 << 20) - 100])  # head, middle, tail
def test_a_corrupted_artefact_is_found_where_the_matrix_damages_it(tmp_path: Path,
                                                                    at: int) -> None:
    # 40 MiB: above WHOLE, so sampled; the fault matrix writes 64 KiB of garbage at 1 KiB
    out = tmp_path / "images" / "base.qcow2"
    with atomic.building(out) as tmp:
        assert tmp is not None
        with open(tmp, "wb") as fh:
            fh.write(os.urandom(1 << 20))
            fh.truncate(40 << 20)  # holes read as zeros, as in a sparse image
    garbage = os.urandom(65536 if at < (39 << 20) else 100)
    overwrite(out, at, garbage)
    ok, said = check(out, "guest image")
    if at == 5 << 20:  # between two samples: a flipped block there is not seen (the cost)
        assert ok
        return
    assert not ok and "corrupted: its checksum is not the one recorded" in said[0], said


def test_sampling_is_cheap_and_a_small_file_is_hashed_whole(tmp_path: Path) -> None:
    small = built(tmp_path / "initramfs" / "k.cpio.gz", b"\0" * (1 << 20))
    overwrite(small, 700_000, b"\1")  # anywhere in a small file
    assert not check(small, "initramfs")[0]


def test_an_artefact_from_before_records_is_taken_and_recorded(tmp_path: Path) -> None:
    old = tmp_path / "vmlinux" / "abc.vmlinux"
    old.parent.mkdir()
    old.write_bytes(b"\x7fELF" + b"k" * 100)  # made by a harness that wrote no record
    assert check(old, "vmlinux") == (True, [])
    assert atomic.recorded(old) == atomic.digest(old)
    overwrite(old, 10, b"X")
    ok, said = check(old, "vmlinux")
    assert not ok and "corrupted" in said[0]


def test_a_kernel_tree_with_a_module_cut_short_is_damaged(tmp_path: Path) -> None:
    tree = tmp_path / "kernels" / "linux-image-6.1"
    mod = tree / "lib/modules/6.1/kernel/ext4.ko"
    mod.parent.mkdir(parents=True)
    mod.write_bytes(b"m" * 300)
    (tree / ".complete").write_text("linux-image-6.1\n")
    atomic.record(tree)
    assert check(tree, "kernel package tree") == (True, [])
    os.truncate(mod, 100)
    ok, said = check(tree, "kernel package tree")
    assert not ok and "truncated" in said[0] and not tree.exists()


def qcow2_over(path: Path, backing: Path) -> Path:
    """A qcow2 header naming its backing file (what ``qemu-img create -b`` writes first)."""
    name = str(backing).encode()
    head = b"QFI\xfb" + (3).to_bytes(4, "big") + (512).to_bytes(8, "big") \
        + len(name).to_bytes(4, "big")
    path.write_bytes(head.ljust(512, b"\0") + name)
    return path


def test_a_rebuilt_artefact_does_not_get_the_old_snapshot(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    monkeypatch.setattr(snapshot, "qemu_version", lambda binary="": "QEMU 7.2")
    mods = built(tmp_path / "module-disks" / "k.ext4", b"modules v1")
    base = built(tmp_path / "images" / "base.qcow2", b"root v1")
    run = tmp_path / "run"
    run.mkdir()
    overlay = qcow2_over(run / "root-overlay.qcow2", base)
    argv = ["qemu-system-x86_64", "-kernel", "/k/vmlinux",
            "-drive", f"if=none,id=root,file={overlay},format=qcow2",
            "-drive", f"if=none,id=mods,file={mods},format=raw,readonly=on"]
    assert [r.split("=")[0] for r in snapshot.artefacts(argv)] == [base.name, mods.name]
    first = snapshot.key(argv, run, {})
    assert snapshot.key(argv, run, {}) == first  # stable while nothing is rebuilt
    for art in (mods, base):
        overwrite(art, 0, b"X")
        assert not atomic.usable(art, art.name, lambda _: None)
        built(art, b"rebuilt " + art.name.encode())
        again = snapshot.key(argv, run, {})
        assert again != first, f"rebuilt {art.name}: the old snapshot's key"
        first = again


def test_a_cache_that_cannot_take_a_record_is_used_unchecked(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    old = tmp_path / "images" / "base.qcow2"
    old.parent.mkdir()
    old.write_bytes(b"QFI\xfb")

    def read_only(out: Path, value: str) -> None:
        raise OSError(30, "Read-only file system", str(atomic.record_path(out)))
    monkeypatch.setattr(atomic, "_write_record", read_only)
    assert check(old, "guest image") == (True, [])  # as before records: no new failure


def test_a_full_run_directory_names_the_initrd_it_could_not_write(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the fault matrix's enospc-run@artefact-build: a write to an open file names no file,
    # and the CLI's one line for a host file-system fault needs one (else a traceback)
    from harness.assets import initramfs
    from harness.errors import host_file_line
    part = tmp_path / "part.cpio.gz"
    part.write_bytes(b"\x1f\x8b" + b"\0" * 100)
    monkeypatch.setattr(initramfs, "kernel_part", lambda kernel: part)
    monkeypatch.setattr(initramfs, "open_private", lambda path: open("/dev/full", "wb"))
    out = tmp_path / "run" / "initrd.img"
    with pytest.raises(OSError) as caught:
        initramfs.compose(None, {"x": (b"y", 0o644)}, out)  # type: ignore[arg-type]
    assert host_file_line(caught.value) == f"no space left on device writing {out}"
