"""Self-checks of the harness (tests marked ``selfcheck``: a race forced off must end as "race
not exercised", our ksm_tests fixes apply to the real source) run in ``selftest`` and never
in a user's ``run``. Checked on the verbs' own argument path with ``--collect-only``: nothing
boots."""
from __future__ import annotations

import subprocess
from pathlib import Path

from tests.helpers import harness_cmd

SELF_CHECKS = {
    "tests/ksm/test_numa.py::test_forks_after_unmerge_are_race_not_exercised",
    "tests/ksm/test_swap.py::test_ksm_page_in_swapcache_when_run2_passes[forced_off]",
    "tests/ksm/test_selftests.py::test_our_fixes_apply_once_to_the_real_source",
}


def collected(cwd: Path, verb: str, *args: str) -> set[str]:
    r = subprocess.run(harness_cmd(verb, "--collect-only", "-q", "-p", "no:cacheprovider",
                                   *args), cwd=cwd, capture_output=True, text=True, timeout=120)
    assert r.returncode in (0, 5), r.stdout[-2000:] + r.stderr[-2000:]  # 5: none collected
    return {line for line in r.stdout.splitlines() if "::" in line}


def test_run_collects_no_self_check(tmp_path: Path) -> None:
    ids = collected(tmp_path, "run")
    assert "tests/ksm/test_swap.py::test_ksm_page_in_swapcache_when_run2_passes[race]" in ids
    assert not ids & SELF_CHECKS
    assert collected(tmp_path, "run", "-m", "selfcheck") == set()


def test_selftest_collects_every_self_check(tmp_path: Path) -> None:
    assert SELF_CHECKS <= collected(tmp_path, "selftest")
    # these are all of them: a new self-check is named here, and so checked above
    assert collected(tmp_path, "selftest", "-m", "selfcheck") == SELF_CHECKS


def test_the_fault_matrix_runs_in_selftest_only(tmp_path: Path) -> None:
    from tests.faults.matrix import CELLS
    cells = {i for i in collected(tmp_path, "selftest") if i.startswith("tests/faults/")}
    assert cells == {f"tests/faults/test_matrix.py::test_cell[{c.id}]" for c in CELLS}
    assert not any(i.startswith("tests/faults/") for i in collected(tmp_path, "run"))
