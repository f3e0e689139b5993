"""Scenario 10: the kernel's own KSM selftests, built from Debian's linux-source of the guest
kernel's series and run in the guest, each invocation (or each KTAP result, for sources whose
tests print KTAP) a test case of ours.

Debian's linux-source-6.1 has tools/testing/selftests/vm/ksm_tests.c (ksm_functional_tests.c
came with 6.2); it is built statically on the host (gcc, libc6-dev, libnuma-dev) in about a
second once the source is fetched (``apt-get download``, ~140 MB) and the few files it needs
are unpacked (~20 s, cached under the harness cache). The cases are run_vmtests.sh's. Anything
missing on the host makes these tests skip with the reason.

The build fixes bugs of the test's own (harness.assets.selftests.FIXES: -U checked the
counters before ksmd had scanned the written pages again: a false "Not OK" in 117 of 800
runs under TCG); a case a fix changes carries the fix's name in its ``ksm_tests_fixes`` property.
"""
from __future__ import annotations

import contextlib
import re
import subprocess

import pytest

from harness import paths
from harness.assets.selftests import (
    FIXES,
    SOURCES,
    Unbuildable,
    apply_fixes,
    build_ksm_tests,
    fixes_for,
    parse_ktap,
)
from harness.ksm import Ksm
from harness.ksm.prepared_guest import KsmGuest

# run_vmtests.sh's ksm_tests invocations (6.1).
CASES = ["-M -p 10", "-U", "-Z -p 10 -z 0", "-Z -p 10 -z 1", "-N -m 1", "-N -m 0"]
KSFT = {0: "pass", 1: "fail", 4: "skip"}
GUEST_PATH = "/opt/ksm/ksm_tests"
def series_of(ksm_guest: KsmGuest) -> str:
    release = ksm_guest.sh.run("uname -r", check=True).stdout.strip()
    m = re.match(r"(\d+\.\d+)", release)
    if m is None:
        pytest.skip(f"cannot tell the kernel series of {release!r}")
    return m.group(1)


@pytest.fixture(scope="module")
def ksm_tests(ksm_guest: KsmGuest) -> str:
    try:
        binary = build_ksm_tests(series_of(ksm_guest))
    except (Unbuildable, OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"the kernel's KSM selftests cannot be built: {e}")
    ksm_guest.vm.put(binary, GUEST_PATH, 0o755)
    return GUEST_PATH


@pytest.mark.parametrize("args", CASES)
def test_kernel_ksm_selftest(ksm: Ksm, ksm_tests: str, ksm_guest: KsmGuest, args: str,
                             request: pytest.FixtureRequest) -> None:
    fixes = fixes_for(args)
    if fixes:  # in the record and the JUnit case's system-out
        request.node.user_properties.append(
            ("ksm_tests_fixes", ", ".join(fix.name for fix in fixes)))
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


@pytest.mark.selfcheck
def test_our_fixes_apply_once_to_the_real_source(ksm_guest: KsmGuest) -> None:
    """Self-check (selftest only): each fix matches the guest series' real ksm_tests.c once
    and changes nothing else. The build refuses a fix that does not match, and the cases
    above then skip; here that is a failure (the unit tests check fixes on made-up text)."""
    series = series_of(ksm_guest)
    with contextlib.suppress(Unbuildable, OSError, subprocess.TimeoutExpired):
        build_ksm_tests(series)  # fetches and unpacks the source if it can
    source = paths.cache_dir() / "selftests" / series / "src" / SOURCES[0]
    if not source.is_file():
        pytest.skip(f"linux-source-{series} could not be fetched: no {source}")
    original = source.read_text()
    fixed = apply_fixes(original)  # Unbuildable: a fix matches 0 or 2+ places
    for fix in FIXES:
        assert fixed.count(fix.new) == 1 and fix.old not in fixed, fix.name
    restored = fixed
    for fix in reversed(FIXES):
        restored = restored.replace(fix.new, fix.old)
    assert restored == original  # nothing outside the fixes changed
