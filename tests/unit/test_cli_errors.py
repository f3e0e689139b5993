"""Bad input gets one clear line and a non-zero exit, never a traceback (no QEMU needed)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import run_harness


def _one_clear_line(stderr: str, startswith: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert lines and lines[-1].startswith(startswith), stderr


def test_missing_kernel_path(tmp_path: Path) -> None:
    r = run_harness("boot", "--kernel", str(tmp_path / "nope"), "--", "true")
    assert r.returncode == 2
    _one_clear_line(r.stderr, f"ksm-harness: --kernel {tmp_path / 'nope'}: no such file")
    assert "debian[:PACKAGE]" in r.stderr  # the syntax


def test_file_that_is_not_a_kernel(tmp_path: Path) -> None:
    fake = tmp_path / "bzImage"
    fake.write_bytes(b"this is not a kernel\n" * 100)
    r = run_harness("boot", "--kernel", str(fake), "--", "true")
    assert r.returncode == 2
    _one_clear_line(r.stderr, f"ksm-harness: --kernel {fake}: not a Linux kernel")


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


def _only_line(r: subprocess.CompletedProcess[str], startswith: str) -> None:
    """Exactly one line on stderr, status 2, nothing on stdout: pytest never started."""
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith(startswith), r.stderr
    assert r.stdout == "", r.stdout


def test_run_refuses_a_file_that_is_not_a_kernel_before_pytest() -> None:
    r = run_harness("run", "--kernel", "/etc/passwd")
    _only_line(r, "ksm-harness: --kernel /etc/passwd: not a Linux kernel")


def test_run_refuses_an_unknown_option_in_one_line() -> None:
    r = run_harness("run", "--bogus")
    _only_line(r, "ksm-harness: run: unrecognized arguments: --bogus (see ksm-harness run --help)")
    r = run_harness("run", "--ksm-seed", "x")
    _only_line(r, "ksm-harness: run: argument --ksm-seed: invalid int value: 'x'")
    r = run_harness("run", "--accel", "fast")
    _only_line(r, "ksm-harness: run: argument --accel: invalid choice: 'fast'")


def test_run_refuses_a_report_path_it_cannot_make_before_booting(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    r = run_harness("run", "--report-dir", str(blocker / "reports"))
    _only_line(r, f"ksm-harness: run: --report-dir: cannot make the directory {blocker}/reports")
    r = run_harness("run", "--junitxml", str(blocker / "j" / "junit.xml"))
    _only_line(r, f"ksm-harness: run: --junitxml: cannot make the directory {blocker}/j")
    r = run_harness("run", "--ktap", str(blocker / "k" / "out.ktap"))
    _only_line(r, f"ksm-harness: run: --ktap: cannot make the directory {blocker}/k")


def test_run_numa_error_names_the_option_and_syntax() -> None:
    r = run_harness("run", "--numa", "garbage")
    _only_line(r, "ksm-harness: --numa garbage: ")
    assert "MEM[:CPUS]" in r.stderr


def test_every_matrix_kernel_is_checked_before_the_first_cell(tmp_path: Path) -> None:
    r = run_harness("run", "--kernel", "debian", "--kernel", "debian:linux-image-nope!",
                    "--kernel", str(tmp_path / "missing"))
    _only_line(r, "ksm-harness: --kernel debian:linux-image-nope!: ")
    r = run_harness("run", "--shard", "3/2")
    _only_line(r, "ksm-harness: --shard 3/2: use I/N")


def test_run_help_shows_our_options_first() -> None:
    r = run_harness("run", "--help")
    assert r.returncode == 0
    out = r.stdout
    for text in ("guest:", "--kernel KERNEL", "--numa SPEC", "--shard I/N", "--cell ID",
                 "--baseline FILE", "-k EXPR", "--help-pytest", "modes:"):
        assert text in out, text
    assert "--last-failed" not in out and "--capture" not in out  # behind --help-pytest
    r = run_harness("run", "--help-pytest")
    assert r.returncode == 0 and "--last-failed" in r.stdout and "--kernel" in r.stdout


def test_k_means_a_pytest_expression_everywhere() -> None:
    r = run_harness("bisect", "--help")
    assert "-k EXPR, --scenario EXPR" in r.stdout and "pytest -k expression" in r.stdout
    r = run_harness("boot", "-k", "x")  # boot has no -k (it was never --kernel)
    _only_line(r, "ksm-harness: boot: unrecognized arguments: -k (see ksm-harness boot --help)")
    r = run_harness("boot", "--ker", "x")  # no abbreviations: --ker is not --kernel
    _only_line(r, "ksm-harness: boot: unrecognized arguments: --ker")


def test_verb_errors_name_the_verb() -> None:
    r = run_harness("bisect", "--tree", "/tmp")
    _only_line(r, "ksm-harness: bisect: the following arguments are required: -k/--scenario")
    r = run_harness("merge", "/nonexistent")
    _only_line(r, "ksm-harness: merge: /nonexistent: no such file or directory")
    r = run_harness("plan", "--format", "yaml")
    _only_line(r, "ksm-harness: plan: argument --format: invalid choice: 'yaml'")


def test_source_kernels_pass_the_early_check_and_bad_ones_say_why() -> None:
    from harness.assets.kernel import check_spec
    from harness.errors import KernelError
    check_spec("source:6.1")
    check_spec("source:6.1+debug")
    with pytest.raises(KernelError, match="unknown flavour 'fast'"):
        check_spec("source:6.1+fast")


def test_version() -> None:
    r = run_harness("--version")
    assert r.returncode == 0 and r.stdout.startswith("ksm-harness "), r.stdout + r.stderr


def test_run_prints_no_assert_rewrite_warning() -> None:
    # the plugin used to be imported before pytest registered it (a warning on every run)
    r = run_harness("run", "--co", "-q", "-p", "no:cacheprovider",
                    str(Path(__file__).with_name("test_timeline.py")))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "PytestAssertRewriteWarning" not in r.stdout + r.stderr
