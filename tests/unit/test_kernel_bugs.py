"""The version gate of known kernel bugs: a strict expected failure inside the affected
versions, an ordinary test (that must pass) outside them."""
from __future__ import annotations

import pytest

from harness import kernel_bugs
from harness.kernel_bugs import kernel_version
from harness.pytest_plugin.ksm_scenarios import xfail_mark
from tests.helpers import REPO

pytest_plugins = ["pytester"]

BUG = "ksm-fork-counters"
DEBIAN_61 = ("6.1.0-57-amd64",  # and its /proc/version: the compiler's version comes first
             "Linux version 6.1.0-57-amd64 (debian-kernel@lists.debian.org) (gcc-12 (Debian "
             "12.2.0-14+deb12u1) 12.2.0, GNU ld (GNU Binutils for Debian) 2.40) #1 SMP "
             "PREEMPT_DYNAMIC Debian 6.1.192-3 (2026-11-26)")


def test_upstream_version_from_release_and_banner() -> None:
    assert kernel_version("6.12.54") == (6, 12, 54)
    assert kernel_version("6.18.0-rc1+") == (6, 18, 0)
    assert kernel_version("6.12.117+deb13-amd64") == (6, 12, 117)
    assert kernel_version(*DEBIAN_61) == (6, 1, 192)   # the release says 6.1.0
    assert kernel_version("ksm-custom") is None


@pytest.mark.parametrize("release", [
    "5.19.0", "6.1.0-57-amd64", "6.1.200", "6.6.112", "6.7.12", "6.12.0", "6.12.53",
    "6.15.3", "6.17.3"])
def test_inside_the_affected_versions_a_strict_xfail(release: str) -> None:
    mark = xfail_mark(BUG, release)
    assert mark is not None
    assert mark.kwargs["strict"] is True and mark.kwargs["raises"] is AssertionError
    assert "4d6fc29f3634" in mark.kwargs["reason"] and release in mark.kwargs["reason"]


@pytest.mark.parametrize("release", [
    "5.18.19", "6.6.113", "6.12.54", "6.12.117+deb13-amd64", "6.17.4", "6.18.0", "6.19.2",
    "7.0", "custom-kernel"])
def test_outside_them_no_excuse(release: str) -> None:
    assert xfail_mark(BUG, release) is None


def test_banner_decides_over_a_debian_release() -> None:
    assert xfail_mark(BUG, *DEBIAN_61) is not None
    assert xfail_mark(BUG, "6.12.0-1-amd64", "#1 SMP PREEMPT_DYNAMIC Debian 6.12.117-1 "
                      "(2026-11-01)") is None
    assert xfail_mark(BUG, "6.12.0-1-amd64", "(gcc-14 (Debian 14.2.0-19) 14.2.0)") is not None


def test_every_known_bug_names_its_fix_and_versions() -> None:
    for bug in kernel_bugs.KNOWN_BUGS.values():
        assert bug.fix and kernel_bugs.parse_version(bug.introduced)
        assert all(kernel_bugs.parse_version(v) for v in bug.fixed_in + bug.fixed_unknown)
        # a bug with no fix says so, and then affects every release since it came in
        assert bug.fixed_in or "no upstream fix" in bug.fix, bug.id
        if not bug.fixed_in:
            assert bug.affects(kernel_bugs.parse_version("7.3")), bug.id


def test_stable_lines_with_an_unknown_fix_release_get_no_excuse() -> None:
    bug = kernel_bugs.KNOWN_BUGS["kpageflags-ksm-all-anon"]
    assert bug.affects(kernel_bugs.parse_version("6.12.117"))
    assert not bug.affects(kernel_bugs.parse_version("6.18.3"))  # fixed somewhere in 6.18.y
    assert not bug.affects(kernel_bugs.parse_version("6.9.4"))   # before it came in
    assert not bug.affects(kernel_bugs.parse_version("7.2"))


GATED_TEST = """
from harness.pytest_plugin.ksm_scenarios import xfail_mark
from tests.helpers import REPO

def test_it(request):
    mark = xfail_mark("ksm-fork-counters", "{release}")
    if mark is not None:
        request.node.add_marker(mark)
    assert {outcome}
"""


@pytest.mark.parametrize(("release", "body_passes", "outcome"), [
    ("6.1.0-57-amd64", False, "xfailed"),  # the bug, as known
    ("6.1.0-57-amd64", True, "failed"),    # the kernel has the fix: a visible XPASS(strict)
    ("6.12.117", False, "failed"),         # a regression on a fixed kernel fails
    ("6.12.117", True, "passed"),
])
def test_the_mark_applied_in_a_test(pytester: pytest.Pytester, release: str,
                                    body_passes: bool, outcome: str) -> None:
    pytester.makepyfile(GATED_TEST.format(release=release, outcome=body_passes))
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(**{outcome: 1})


def test_docs_kernel_bugs_is_generated_from_the_table() -> None:
    committed = (REPO / "docs" / "kernel-bugs.md").read_text()
    assert committed == kernel_bugs.markdown(), (
        f"docs/kernel-bugs.md is out of date with harness/kernel_bugs.py; regenerate it: "
        f"{kernel_bugs.REGENERATE}")


def test_markdown_has_a_row_per_bug_with_its_fix() -> None:
    rows = [line for line in kernel_bugs.markdown().splitlines() if line.startswith("| `")]
    assert len(rows) == len(kernel_bugs.KNOWN_BUGS)
    for row, bug in zip(rows, kernel_bugs.KNOWN_BUGS.values()):
        assert row.startswith(f"| `{bug.id}` |") and bug.fix.split()[0] in row


def test_renderer_refuses_other_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert kernel_bugs.main(["--html"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--markdown" in err
