"""Scenario 10: the kernel's own KSM selftests, built from Debian's linux-source of the guest
kernel's series and run in the guest, each invocation (or each KTAP result, for sources whose
tests print KTAP) a test case of ours.

Debian's linux-source-6.1 has tools/testing/selftests/vm/ksm_tests.c (ksm_functional_tests.c
came with 6.2); it is built statically on the host (gcc, libc6-dev, libnuma-dev) in about a
second once the source is fetched (``apt-get download``, ~140 MB) and the few files it needs
are unpacked (~20 s, cached under the harness cache). The cases are run_vmtests.sh's. Anything
missing on the host makes these tests skip with the reason.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from harness import paths
from harness.access.remote import quote
from harness.ksm import Ksm
from harness.ksm.guest import KsmGuest

# run_vmtests.sh's ksm_tests invocations (6.1).
CASES = ["-M -p 10", "-U", "-Z -p 10 -z 0", "-Z -p 10 -z 1", "-N -m 1", "-N -m 0"]
KSFT = {0: "pass", 1: "fail", 4: "skip"}
GUEST_PATH = "/opt/ksm/ksm_tests"
SOURCES = ("tools/testing/selftests/vm/ksm_tests.c", "tools/testing/selftests/vm/util.h",
           "tools/testing/selftests/kselftest.h", "include/vdso/")


class Unbuildable(Exception):
    pass


def _run(cmd: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          check=False)


def build_ksm_tests(series: str) -> Path:
    """ksm_tests from linux-source-SERIES, built once and cached."""
    root = paths.cache_dir() / "selftests" / series
    binary = root / "ksm_tests"
    if binary.is_file():
        return binary
    root.mkdir(parents=True, exist_ok=True)
    for tool in ("apt-get", "dpkg-deb", "gcc"):
        if shutil.which(tool) is None:
            raise Unbuildable(f"{tool} is missing on the host")
    package = f"linux-source-{series}"
    debs = sorted(root.glob(f"{package}_*.deb"))
    if not debs:
        r = _run(["apt-get", "download", package], root)
        debs = sorted(root.glob(f"{package}_*.deb"))
        if r.returncode != 0 or not debs:
            raise Unbuildable(f"apt-get download {package} failed (run 'apt-get update'?): "
                              f"{r.stderr.strip()[-200:]}")
    tarball = root / f"linux-source-{series}.tar.xz"
    if not tarball.is_file():
        r = _run(["sh", "-c", f"dpkg-deb --fsys-tarfile {quote(debs[-1])} | tar -xO "
                              f"./usr/src/linux-source-{series}.tar.xz > {quote(tarball)}"],
                 root)
        if r.returncode != 0:
            tarball.unlink(missing_ok=True)
            raise Unbuildable(f"no source tarball in {debs[-1].name}: {r.stderr[-200:]}")
    src = root / "src"
    if not (src / SOURCES[0]).is_file():
        top = f"linux-source-{series}"
        unpacked = root / "unpacked"
        shutil.rmtree(unpacked, ignore_errors=True)
        unpacked.mkdir()
        r = _run(["tar", "-xJf", str(tarball), "-C", str(unpacked),
                  *[f"{top}/{name.rstrip('/')}" for name in SOURCES]], root)
        if r.returncode != 0 or not (unpacked / top / SOURCES[0]).is_file():
            raise Unbuildable(f"{package} has no {SOURCES[0]} (or unpacking failed: "
                              f"{r.stderr.strip()[-200:]})")
        shutil.rmtree(src, ignore_errors=True)
        (unpacked / top).rename(src)
    if not Path("/usr/include/numa.h").exists():
        raise Unbuildable("libnuma-dev is missing on the host: apt-get install libnuma-dev")
    tmp = root / "ksm_tests.tmp"
    r = _run(["gcc", "-static", "-O2", "-I.", "-o", str(tmp), SOURCES[0], "-lnuma"], src)
    if r.returncode != 0:
        raise Unbuildable(f"building ksm_tests failed: {r.stderr.strip()[-300:]}")
    tmp.rename(binary)
    for done in (*debs, tarball, root / "unpacked"):  # ~280 MB no longer needed
        if done.is_dir():
            shutil.rmtree(done, ignore_errors=True)
        else:
            done.unlink(missing_ok=True)
    return binary


@pytest.fixture(scope="module")
def ksm_tests(ksm_guest: KsmGuest) -> str:
    release = ksm_guest.sh.run("uname -r", check=True).stdout.strip()
    m = re.match(r"(\d+\.\d+)", release)
    if m is None:
        pytest.skip(f"cannot tell the kernel series of {release!r}")
    try:
        binary = build_ksm_tests(m.group(1))
    except (Unbuildable, OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"the kernel's KSM selftests cannot be built: {e}")
    ksm_guest.vm.put(binary, GUEST_PATH, 0o755)
    return GUEST_PATH


def parse_ktap(output: str) -> dict[str, str]:
    """{description: pass|fail|skip} from KTAP/TAP result lines."""
    results = {}
    for m in re.finditer(r"^(not ok|ok) \d+ (?:- )?(.*?)(\s+# (SKIP|skip).*)?$", output, re.M):
        verdict = "skip" if m.group(4) else ("pass" if m.group(1) == "ok" else "fail")
        results[m.group(2).strip()] = verdict
    return results


@pytest.mark.parametrize("args", CASES)
def test_kernel_ksm_selftest(ksm: Ksm, ksm_tests: str, ksm_guest: KsmGuest, args: str) -> None:
    r = ksm_guest.sh.run(f"{ksm_tests} {args} -l 120 2>&1", timeout=300)
    output = r.stdout.strip()
    ktap = parse_ktap(output)
    failed = [name for name, verdict in ktap.items() if verdict == "fail"]
    assert not failed, f"ksm_tests {args}: KTAP failures {failed}:\n{output}"
    verdict = KSFT.get(r.status, f"exit {r.status}")
    if verdict == "skip":
        pytest.skip(f"ksm_tests {args} skipped itself: {output[-300:]}")
    assert verdict == "pass" and "Not OK" not in output, \
        f"ksm_tests {args}: {verdict}:\n{output}"
