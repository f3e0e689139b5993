"""The fixes our build of the kernel's ksm_tests carries: each applies exactly once or the
build refuses (never a silent unfixed binary), a changed fix never reuses an old binary, and
the case whose verdict a fix changes is named. That they apply to the real source is a
self-check of the KSM suite (tests/ksm/test_selftests.py): host tests never read the cache."""
from __future__ import annotations

from dataclasses import replace

import pytest

from harness.assets import selftests
from harness.assets.selftests import FIXES, Unbuildable, apply_fixes, fixes_for, fixes_of

UNMERGE = FIXES[0]
KSM_TESTS = fixes_of("ksm_tests")


def around(text: str) -> str:
    return "static int check_ksm_unmerge(void)\n{\n" + text + "\t\tgoto err_out;\n}\n"


def test_the_unmerge_fix_waits_two_increments_of_full_scans() -> None:
    fixed = apply_fixes(around(UNMERGE.old), KSM_TESTS)
    assert "ksm_do_scan(2, start_time, timeout)" in fixed
    assert "ksm_do_scan(1, start_time, timeout)" not in fixed
    assert fixed.startswith("static int check_ksm_unmerge(void)\n{\n")
    assert fixed.endswith("\t\tgoto err_out;\n}\n")


@pytest.mark.parametrize("times", [0, 2])
def test_a_fix_that_does_not_match_once_refuses_the_build(times: int) -> None:
    with pytest.raises(Unbuildable, match=f"{UNMERGE.name}.*matches {times} places"):
        apply_fixes(around(UNMERGE.old * times), KSM_TESTS)


def test_an_already_fixed_source_is_refused_not_fixed_twice() -> None:
    with pytest.raises(Unbuildable):
        apply_fixes(apply_fixes(around(UNMERGE.old), KSM_TESTS), KSM_TESTS)


def test_the_case_a_fix_changes_is_named() -> None:
    assert [f.name for f in fixes_for("-U")] == ["unmerge-waits-a-whole-scan"]
    for case in ("-M -p 10", "-Z -p 10 -z 0", "-Z -p 10 -z 1", "-N -m 1", "-N -m 0"):
        assert fixes_for(case) == []


def test_a_changed_fix_is_a_different_binary() -> None:
    changed = (replace(UNMERGE, new=UNMERGE.new.replace("(2,", "(3,")),)
    assert selftests._fingerprint(FIXES) != selftests._fingerprint(changed)
    assert selftests._fingerprint(FIXES) != selftests._fingerprint(())
    assert selftests._fingerprint(FIXES) == selftests._fingerprint(tuple(FIXES))
