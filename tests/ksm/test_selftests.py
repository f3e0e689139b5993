"""Scenario 10: the kernel's own KSM selftests, built from Debian's linux-source of the guest
kernel's series and run in the guest, each run_vmtests.sh invocation a test case of ours,
each KTAP result line of it recorded with the case.

``ksm_tests`` (and ``ksm_functional_tests``, from 6.2) are built statically on the host (gcc,
libc6-dev, libnuma-dev) from tools/testing/selftests/vm/ (mm/ since 6.3) of
linux-source-SERIES: 6.1 and 6.12 from the host's suites, a series they lack (7.2) from
Debian unstable (``apt-get download``, ~150 MB, then ~20 s to unpack the few files the build
needs; cached under the harness cache). Anything missing on the host makes these tests skip
with the reason.

The cases are the KSM lines of the series' own run_vmtests.sh: pytest needs them before a
guest boots, so :data:`CASES` lists them for every series we run (6.1's six ksm_tests lines;
6.12 and 7.2 add -H, -P and ksm_functional_tests), a case runs only where the guest's series
has it, and ``test_run_vmtests_runs_no_case_we_lack`` fails when the script runs one this list
lacks. A KTAP "skip" (a feature the kernel lacks) makes the case a skip with its reason,
never a pass.

The build fixes bugs of the tests' own (harness.assets.selftests.FIXES: -U checked the
counters before ksmd had scanned the written pages again: a false "Not OK" in 117 of 800
runs under TCG); a case a fix changes carries the fix's name in its ``ksm_tests_fixes`` property.
"""
from __future__ import annotations

import contextlib
import re
import subprocess

import pytest

from harness import paths
from harness.assets import selftests
from harness.assets.ktap import judge, parse_ktap
from harness.assets.selftests import (
    FIXES,
    PROGRAMS,
    Built,
    Unbuildable,
    apply_fixes,
    fixes_of,
)
from harness.ksm import Ksm
from harness.ksm.prepared_guest import KsmGuest

# run_vmtests.sh's KSM invocations, in its order (6.12 and 7.2; 6.1 lacks the first two and
# the last); see the module's docstring
CASES = ["-H -s 100", "-P -s 100", "-M -p 10", "-U", "-Z -p 10 -z 0", "-Z -p 10 -z 1",
         "-N -m 1", "-N -m 0", "ksm_functional_tests"]
GUEST_DIR = "/opt/ksm/selftests"  # ksm_functional_tests execs ./ksm_functional_tests


def series_of(ksm_guest: KsmGuest) -> str:
    release = ksm_guest.sh.run("uname -r", check=True).stdout.strip()
    m = re.match(r"(\d+\.\d+)", release)
    if m is None:
        pytest.skip(f"cannot tell the kernel series of {release!r}")
    return m.group(1)


@pytest.fixture(scope="module")
def built(ksm_guest: KsmGuest) -> Built:
    try:
        b = selftests.build(series_of(ksm_guest))
    except (Unbuildable, OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"the kernel's KSM selftests cannot be built: {e}")
    ksm_guest.sh.run(f"mkdir -p {GUEST_DIR}", check=True)
    for program in b.programs():
        ksm_guest.vm.put(program, f"{GUEST_DIR}/{program.name}", 0o755)
    return b


@pytest.mark.parametrize("case", CASES)
def test_kernel_ksm_selftest(ksm: Ksm, built: Built, ksm_guest: KsmGuest, case: str,
                             request: pytest.FixtureRequest) -> None:
    found = {inv.case: inv for inv in built.cases()}
    if case not in found:
        pytest.skip(f"{built.series}'s run_vmtests.sh does not run {case}")
    inv = found[case]
    fixes = built.fixes_applied(case)
    if fixes:  # in the record and the JUnit case's system-out
        request.node.user_properties.append(
            ("ksm_tests_fixes", ", ".join(fix.name for fix in fixes)))
    command = f"./{inv.program} {inv.args}".strip()
    r = ksm_guest.sh.run(f"cd {GUEST_DIR} && {command} 2>&1", timeout=600)
    output = r.stdout.strip()
    results = parse_ktap(output)
    for res in results:  # each KTAP line, in the record and the JUnit case's system-out
        request.node.user_properties.append(
            (f"ktap_{res.number}", " ".join(filter(None, (res.verdict, res.test,
                                                          res.description, res.reason)))))
    outcome, why = judge(command, r.status, output)
    assert outcome != "fail", why
    if outcome == "skip":
        pytest.skip(why)


def test_run_vmtests_runs_no_case_we_lack(built: Built) -> None:
    """The series' run_vmtests.sh runs no KSM program that :data:`CASES` lacks (a new
    invocation must become a case, not go unrun)."""
    cases = [inv.case for inv in built.cases()]
    assert cases, f"{built.series}'s run_vmtests.sh runs no KSM selftest: the parser is wrong"
    assert [c for c in cases if c not in CASES] == []


@pytest.mark.selfcheck
def test_our_fixes_apply_once_to_the_real_source(ksm_guest: KsmGuest) -> None:
    """Self-check (selftest only): each fix matches the guest series' real source once and
    changes nothing else. The build refuses a fix that does not match, and the cases above
    then skip; here that is a failure (the unit tests check fixes on made-up text)."""
    series = series_of(ksm_guest)
    with contextlib.suppress(Unbuildable, OSError, subprocess.TimeoutExpired):
        selftests.build(series)  # fetches and unpacks the source if it can
    tree = paths.cache_dir() / "selftests" / series / "tree"
    if not tree.is_dir():
        pytest.skip(f"linux-source-{series} could not be fetched: no {tree}")
    sdir = selftests.selftest_dir(tree)
    for program in PROGRAMS:
        if not (sdir / f"{program}.c").is_file():
            continue  # a program this series lacks (6.1: ksm_functional_tests): its fixes
            # are for the series that have it, checked on their guests
        original = (sdir / f"{program}.c").read_text()
        fixed = apply_fixes(original, fixes_of(program))  # Unbuildable: 0 or 2+ places
        ours = [fix for fix in fixes_of(program) if fix.old in original]
        for fix in fixes_of(program):
            if fix in ours:
                assert fixed.count(fix.new) == 1 and fix.old not in fixed, fix.name
            else:  # the kernel's own fix is there instead
                assert original.count(fix.upstream) == 1, fix.name
        restored = fixed
        for fix in reversed(ours):
            restored = restored.replace(fix.new, fix.old)
        assert restored == original, program  # nothing outside the fixes changed
    assert {fix.program for fix in FIXES} <= set(PROGRAMS)
