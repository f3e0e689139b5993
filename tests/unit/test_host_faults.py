"""Host faults (full disk, truncated kernel, oversized topology, ...) end in one clear line
and a non-zero exit, never a traceback; secret files are 0600 and run directories 0700."""
from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from harness import cli, paths
from harness import spec as spec_mod


def _one_line(err: str, startswith: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert lines and lines[-1].startswith(startswith), err


def test_full_disk_while_preparing_a_run(monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str],
                                         tmp_path: Path) -> None:
    target = tmp_path / "runs" / "boot-1" / "initrd.img"

    def full(*_a: object, **_k: object) -> Path:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))

    monkeypatch.setattr(spec_mod, "build", lambda _opts: None)
    monkeypatch.setattr(paths, "new_run_dir", full)
    assert cli.main(["boot", "--", "true"]) == 2
    _one_line(capsys.readouterr().err, f"ksm-harness: no space left on device writing {target}")


def test_runs_directory_that_cannot_be_made(monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str],
                                            tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("KSM_HARNESS_RUNS", str(blocker / "runs"))
    monkeypatch.setattr(spec_mod, "build", lambda _opts: None)
    assert cli.main(["boot", "--", "true"]) == 2
    err = capsys.readouterr().err
    _one_line(err, "ksm-harness: not a directory writing ")
    assert str(blocker / "runs") in err


def _fake_bzimage(size_promised: int) -> bytes:
    """A bzImage boot header (setup sectors, 'HdrS', a version string) promising
    ``size_promised`` bytes of protected-mode kernel after 4 setup sectors."""
    data = bytearray(0x1000)
    data[0x1F1] = 4
    data[0x1F4:0x1F8] = (size_promised // 16).to_bytes(4, "little")
    data[0x202:0x206] = b"HdrS"
    data[0x20E:0x210] = (0x400 - 0x200).to_bytes(2, "little")
    version = b"6.1.0-fake (x@y) #1 SMP\0"
    data[0x400:0x400 + len(version)] = version
    return bytes(data)


def _fake_vmlinux() -> bytes:
    """A 64-bit ELF header whose one program header promises a PT_NOTE past the end."""
    import struct
    hdr = bytearray(0x200)
    hdr[:5] = b"\x7fELF\x02"
    struct.pack_into("<QQ", hdr, 0x20, 0x40, 0)             # e_phoff, e_shoff
    struct.pack_into("<HHHH", hdr, 0x36, 56, 1, 64, 0)      # phentsize, phnum, shentsize, shnum
    struct.pack_into("<IIQQQQ", hdr, 0x40, 4, 0, 0x1000, 0, 0, 0x10000)
    return bytes(hdr) + b"Linux version 6.1.0-fake (x@y) (gcc) #1\0"


def test_truncated_bzimage_is_one_line(tmp_path: Path) -> None:
    from tests.helpers import run_harness
    fake = tmp_path / "bzImage"
    fake.write_bytes(_fake_bzimage(1 << 20))
    r = run_harness("boot", "--kernel", str(fake), "--", "true")
    assert r.returncode == 2
    _one_line(r.stderr, f"ksm-harness: --kernel {fake}: not a complete kernel image (4096 bytes "
                        f"where its header promises {5 * 512 + (1 << 20)})")


def test_truncated_vmlinux_is_one_line(tmp_path: Path) -> None:
    from harness.assets import kernel
    from harness.errors import KernelError
    fake = tmp_path / "vmlinux"
    fake.write_bytes(_fake_vmlinux())
    with pytest.raises(KernelError, match="not a complete kernel image"):
        kernel.check_spec(str(fake))
    with pytest.raises(KernelError, match="not a complete kernel image"):
        kernel.load(fake)
    # the note reader itself no longer lets struct.error escape
    with pytest.raises(KernelError, match="not a complete kernel image"):
        kernel.elf_has_pvh_note(_fake_vmlinux()[:0x60])


def test_topology_larger_than_the_host(monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    from harness.machine import topology
    monkeypatch.setattr(topology, "host_mem_available_mb", lambda: 24 * 1024)
    assert cli.main(["boot", "--numa", "20G:1,20G:1", "--", "true"]) == 2
    _one_line(capsys.readouterr().err,
              "ksm-harness: --numa 20G:1,20G:1: the guest needs 40960 MiB but the host has "
              "only 24576 MiB available")


def test_host_meminfo_reader(tmp_path: Path) -> None:
    from harness.machine.topology import host_mem_available_mb
    info = tmp_path / "meminfo"
    info.write_text("MemTotal:       25165824 kB\nMemFree:  1000 kB\n"
                    "MemAvailable:   20971520 kB\n")
    assert host_mem_available_mb(str(info)) == 20480
    info.write_text("MemTotal:       25165824 kB\n")  # before MemAvailable existed
    assert host_mem_available_mb(str(info)) == 24576 - 512
    assert host_mem_available_mb(str(tmp_path / "none")) is None


def test_forced_kvm_on_a_host_where_the_probe_failed(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from harness.errors import HarnessError
    from harness.machine import accel
    monkeypatch.setenv("KSM_HARNESS_CACHE", str(tmp_path))
    monkeypatch.setattr(accel, "_boot_id", lambda: "boot-1")
    monkeypatch.setattr(accel, "probe_kvm", lambda: pytest.fail("--accel kvm must not probe"))
    cache = tmp_path / "kvm-probe.json"
    # never probed, or probed fine: obeyed
    assert accel.choose("kvm").name == "kvm"
    cache.write_text(json.dumps({"boot_id": "boot-1", "failure": None}))
    assert accel.choose("kvm").name == "kvm"
    # probed in an earlier host boot: that verdict no longer holds
    cache.write_text(json.dumps({"boot_id": "boot-0", "failure": "no /dev/kvm"}))
    assert accel.choose("kvm").name == "kvm"
    # probed broken this host boot: refused in one line naming the reason
    why = "a KVM guest printed nothing within 4s (host KVM module: kvm_pvm)"
    cache.write_text(json.dumps({"boot_id": "boot-1", "failure": why}))
    with pytest.raises(HarnessError) as exc:
        accel.choose("kvm")
    assert str(exc.value).startswith(f"--accel kvm: KVM does not work on this host ({why};")
    assert "\n" not in str(exc.value)
    assert accel.choose("tcg").name == "tcg"
    assert accel.choose("auto").name == "tcg"


def test_failed_kernel_download_leaves_no_partial_deb(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.assets import kernel
    from harness.errors import KernelError
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "apt-get"
    fake.write_text("#!/bin/sh\nhead -c 4096 /dev/zero > \"$2\"_1_amd64.deb\n"
                    "echo 'E: connection reset' >&2\nexit 100\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.setenv("KSM_HARNESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(kernel, "_apt_target", lambda package: "linux-image-fake")
    with pytest.raises(KernelError, match="apt-get download linux-image-fake failed: "
                                          "E: connection reset"):
        kernel.default(log=lambda msg: None)
    assert not list((tmp_path / "cache").rglob("*.deb"))
    assert not (tmp_path / "cache" / "kernels" / "linux-image-fake").exists()
    # a download that arrives but does not unpack: one line, nothing left either
    fake.write_text("#!/bin/sh\nhead -c 4096 /dev/zero > \"$2\"_1_amd64.deb\n")
    with pytest.raises(KernelError, match="dpkg-deb -x .* failed"):
        kernel.default(log=lambda msg: None)
    assert not (tmp_path / "cache" / "kernels" / "linux-image-fake").exists()


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_run_directories_are_0700_and_secret_files_0600(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import pexpect

    from harness.assets import initramfs
    from harness.assets.kernel import Kernel
    from harness.console.reader import Console
    old = os.umask(0o022)
    try:
        monkeypatch.setenv("KSM_HARNESS_RUNS", str(tmp_path / "runs"))
        run = paths.new_run_dir("boot")
        assert _mode(run) == 0o700
        loose = tmp_path / "dry-run"
        loose.mkdir(mode=0o755)
        assert _mode(paths.private_dir(loose)) == 0o700
        # the initrd holds the guest's private host key
        part = tmp_path / "kernel-part.cpio"
        part.write_bytes(b"\0" * 512)
        monkeypatch.setattr(initramfs, "kernel_part", lambda kernel: part)
        some = Kernel(path=tmp_path / "vmlinux", boot_image=tmp_path / "vmlinux", release="6.1")
        initrd = initramfs.compose(some, {"ssh_host_ecdsa_key": (b"secret", 0o600)},
                                   run / "initrd.img")
        assert _mode(initrd) == 0o600 and b"secret" in initrd.read_bytes()
        # the console log, also when a restored snapshot wrote it first
        log = run / "console.log"
        log.write_bytes(b"restored\n")
        log.chmod(0o644)
        child = pexpect.spawn("echo", ["hello"])
        console = Console(child, log)
        assert console.wait_for_line("hello", timeout=10) is not None
        console.close()
        assert _mode(log) == 0o600
        assert log.read_bytes().startswith(b"restored\n") and b"hello" in log.read_bytes()
    finally:
        os.umask(old)


def test_module_decompression_by_suffix(monkeypatch: pytest.MonkeyPatch) -> None:
    import gzip
    import lzma
    import shutil
    import subprocess

    from harness import deps
    from harness.assets.initramfs import decompress_module
    from harness.errors import KernelError, MissingPackageError
    plain = b"\x7fELF" + bytes(range(256)) * 8
    assert decompress_module("a.ko", plain) == plain
    assert decompress_module("a.ko.xz", lzma.compress(plain)) == plain
    assert decompress_module("a.ko.gz", gzip.compress(plain)) == plain
    with pytest.raises(KernelError, match=r"^module a.ko.xz: cannot decompress"):
        decompress_module("a.ko.xz", b"not xz")
    if shutil.which("zstd"):
        zst = subprocess.run(["zstd", "-c"], input=plain, capture_output=True, check=True).stdout
        assert decompress_module("a.ko.zst", zst) == plain
        with pytest.raises(KernelError, match=r"^module a.ko.zst: cannot decompress: zstd"):
            decompress_module("a.ko.zst", b"not zstd")
    # without the tool: the apt line, not a FileNotFoundError
    monkeypatch.setenv("KSM_HARNESS_NO_INSTALL", "1")
    monkeypatch.setattr(deps, "_present", lambda tool: tool != "zstd")
    with pytest.raises(MissingPackageError, match="zstd"):
        decompress_module("a.ko.zst", b"")


def test_zstd_kernel_payload_needs_the_tool(monkeypatch: pytest.MonkeyPatch) -> None:
    from harness import deps
    from harness.assets import kimage
    from harness.errors import MissingPackageError
    monkeypatch.setenv("KSM_HARNESS_NO_INSTALL", "1")
    monkeypatch.setattr(deps, "_present", lambda tool: tool != "zstd")
    # silently booting the slow bzImage path is what this replaces
    with pytest.raises(MissingPackageError, match="zstd"):
        kimage.extract_vmlinux(b"\0" * 64 + b"\x28\xb5\x2f\xfd" + b"\0" * 64)


def test_bootstrap_installs_zstd() -> None:
    from harness.paths import REPO
    text = (REPO / "ksm-harness").read_text()
    packages = text.split("packages=(", 1)[1].split(")", 1)[0].split()
    assert "zstd" in packages


def test_a_later_run_removes_what_a_killed_save_left(monkeypatch: pytest.MonkeyPatch) -> None:
    # the fault matrix's sigkill@snapshot-save: snapshots/<key>.tmp-<pid> and the guest's RAM
    # files stay until a later run; a live harness's are left alone
    from harness import reaper
    monkeypatch.setattr(reaper, "SHM", paths.cache_dir() / "shm")  # not the host's /dev/shm
    gone = _dead_pid()
    snaps = paths.cache_dir() / "snapshots"
    made = [snaps / f"0123.tmp-{gone}", paths.cache_dir() / f"ksm-harness-ram-{gone}-ab",
            reaper.SHM / f"ksm-harness-ram-{gone}-cd"]
    live = [snaps / f"4567.tmp-{os.getpid()}", reaper.SHM / f"ksm-harness-ram-{os.getpid()}-ef"]
    for d in made + live:
        d.mkdir(parents=True)
        (d / "ram0").write_bytes(b"x")
    said = reaper.clean_stale()
    assert [d for d in made if d.exists()] == [] and all(d.is_dir() for d in live)
    assert len(said) == 3 and all("of a killed run" in s for s in said)


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_merge_of_a_results_file_cut_short_names_it(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    # issue 19 item 7: `merge` on a corrupt results.json did not say which file
    cut = tmp_path / "cell" / "results.json"
    cut.parent.mkdir()
    cut.write_text('{"version": 1, "tests": [')
    assert cli.main(["merge", str(tmp_path / "cell"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(cut) in err[0] and "cut short" in err[0], err
