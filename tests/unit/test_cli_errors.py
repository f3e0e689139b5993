"""Bad input gets one clear line and a non-zero exit, never a traceback (no QEMU needed)."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from tests.helpers import run_harness


def _one_clear_line(stderr: str, startswith: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert lines and lines[-1].startswith(startswith), stderr


def test_missing_kernel_path(tmp_path: Path) -> None:
    r = run_harness("boot", "--kernel", str(tmp_path / "nope"), "--", "true")
    assert r.returncode == 2
    _one_clear_line(r.stderr, f"ksm-harness: kernel not found: {tmp_path / 'nope'}")


def test_file_that_is_not_a_kernel(tmp_path: Path) -> None:
    fake = tmp_path / "bzImage"
    fake.write_bytes(b"this is not a kernel\n" * 100)
    r = run_harness("boot", "--kernel", str(fake), "--", "true")
    assert r.returncode == 2
    _one_clear_line(r.stderr, f"ksm-harness: {fake} is not a Linux kernel")


def test_elf_that_is_not_a_kernel(tmp_path: Path) -> None:
    fake = tmp_path / "vmlinux"
    shutil.copy(sys.executable if not os.path.islink(sys.executable)
                else os.path.realpath(sys.executable), fake)
    r = run_harness("boot", "--kernel", str(fake), "--", "true")
    assert r.returncode == 2
    _one_clear_line(r.stderr, "ksm-harness: ")
    assert "not a Linux kernel" in r.stderr


def test_missing_debian_package_names_the_apt_line(tmp_path: Path) -> None:
    # A PATH without QEMU, and installing forbidden: the user gets the exact command.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    r = run_harness("boot", "--", "true",
                    env={"PATH": str(bindir), "KSM_HARNESS_NO_INSTALL": "1"})
    assert r.returncode == 2
    _one_clear_line(r.stderr, "ksm-harness: missing Debian package(s) qemu-system-x86")
    assert "apt-get install -y --no-install-recommends qemu-system-x86" in r.stderr


def test_bad_numa_spec() -> None:
    r = run_harness("boot", "--numa", "lots", "--", "true")
    assert r.returncode == 2
    _one_clear_line(r.stderr, "ksm-harness: --numa lots: bad node 'lots'; use a node count")
    assert "MEM[:CPUS]" in r.stderr


def test_kernel_without_ksm_is_refused(tmp_path: Path) -> None:
    from harness.assets import kernel
    real = kernel.default()
    shutil.copy(real.path, tmp_path / "bzImage")
    (tmp_path / ".config").write_text("CONFIG_NUMA=y\n# CONFIG_KSM is not set\nCONFIG_KSM=n\n")
    r = run_harness("boot", "--kernel", str(tmp_path / "bzImage"), "--", "true")
    assert r.returncode == 2
    _one_clear_line(r.stderr, "ksm-harness: kernel 6.")
    assert "without CONFIG_KSM=y" in r.stderr


def test_triage_options_pass_through(tmp_path: Path) -> None:
    import json

    from tests.helpers import load_log
    log = tmp_path / "ksm_warning.log"
    log.write_text(load_log(Path(__file__).parent / "data" / "ksm_warning.log")[1])
    r = run_harness("triage", "--json", str(log))
    assert r.returncode == 1, r.stderr
    assert json.loads(r.stdout)[0]["title"] == "WARNING in ksm_scan_thread"
