"""One Result record per test feeds every exporter: the failure's title on the terminal, the
JUnit message, the JSON, the matrix and the bisect signature all say the same thing, for a
kernel report (followed by a hang), a hang alone and a counter assertion. A throw-away
pytest run (pytester) whose conftest files findings the way the health monitor does."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness.findings import Category, Finding, rank
from harness.results.model import Outcome, load_results
from harness.runs import bisect, matrix

pytest_plugins = ["pytester"]

CONFTEST = '''
import pytest
from harness.findings import Category, Finding
from harness.pytest_plugin.watch import FINDINGS

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    yield
    filed = item.stash.setdefault(FINDINGS, {}).setdefault("call", [])
    if item.name == "test_bug_then_hang":
        # as the monitor files them: the hang is found first, the report is earlier on the console
        filed.append(Finding(Category.HANG, "guest hung: workload 'A' did not answer", "sysrq"))
        filed.append(Finding(Category.BUG, "kernel BUG at mm/rmap.c:1182", "kernel BUG at ...",
                             "page_add_anon_rmap", (120, 150)))
    if item.name == "test_hang":
        filed.append(Finding(Category.HANG, "guest hung: guest command still running after 60s",
                             "QMP status: running"))
'''

TESTS = '''
from harness.ksm import KsmCountMismatch, KsmSnapshot
from harness.workloads import WorkloadTimeout

def test_bug_then_hang():
    raise WorkloadTimeout("workload 'A' (pid 157) did not answer 'verify n0' within 60s")

def test_hang():
    raise WorkloadTimeout("workload 'B' did not answer")

def test_counter():
    raise KsmCountMismatch("pages_shared is 13, expected 12", KsmSnapshot({}), {})
'''

EXPECTED = {
    "test_bug_then_hang": (Category.BUG, "kernel BUG at mm/rmap.c:1182"),
    "test_hang": (Category.HANG, "guest hung: guest command still running after 60s"),
    "test_counter": (Category.ASSERTION, "pages_shared is 13, expected 12"),
}


@pytest.fixture
def run(pytester: pytest.Pytester, tmp_path: Path) -> tuple[pytest.RunResult, Path]:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_fake=TESTS)
    out = tmp_path / "out"
    res = pytester.runpytest("-p", "harness.pytest_plugin.plugin", "--junitxml", str(out / "junit.xml"),
                             "--results-json", str(out / "results.json"),
                             "--report-dir", str(out / "report"))
    return res, out


def test_every_exporter_reads_the_same_record(run: tuple[pytest.RunResult, Path]) -> None:
    res, out = run
    res.assert_outcomes(failed=3)
    _, results = load_results(out / "results.json")
    records = {r.nodeid.split("::")[1]: r for r in results}
    junit = {c.get("name"): c.find("failure")
             for c in ET.parse(out / "junit.xml").getroot().iter("testcase")}
    column = matrix.Column("6.1", "/k", None, {r.nodeid: r for r in results})
    table = matrix.table([column]).splitlines()
    for name, (category, title) in EXPECTED.items():
        r = records[name]
        assert r.outcome is Outcome.FAILED
        assert (r.category, r.title) == (category, title)             # the JSON record
        failure = junit[name]
        assert failure is not None
        assert (failure.get("type"), failure.get("message")) == (category.value, title)
        assert bisect.signatures(r)[0] == bisect.Signature.of(r.findings[0])  # the signature
        assert any(line.startswith(f"test_fake.py::{name}") and "FAIL" in line
                   for line in table)
        res.stdout.fnmatch_lines([f"_* {name} _*", title])            # the terminal's title
    # the cause first, its consequence after it, both kept
    chain = [f.category for f in records["test_bug_then_hang"].findings]
    assert chain == [Category.BUG, Category.HANG]
    assert bisect.signatures(records["test_hang"])[0] == bisect.Signature("HANG", "guest hung")
    assert bisect.signatures(records["test_counter"])[0] == bisect.Signature(
        "ASSERTION", "pages_shared is N, expected N")


def test_rank_puts_the_kernel_report_before_hangs_assertions_and_infrastructure() -> None:
    found = [Finding(Category.INFRA, "could not replace the guest"),
             Finding(Category.ASSERTION, "pages_shared 3 != 0"),
             Finding(Category.HANG, "guest hung"),
             Finding(Category.TAINT, "kernel tainted during the test: W"),
             Finding(Category.WARNING, "WARNING in b", console=(90, 99)),
             Finding(Category.BUG, "kernel BUG at a", console=(10, 20))]
    assert [f.title for f in rank(found)] == [
        "kernel BUG at a", "WARNING in b", "kernel tainted during the test: W", "guest hung",
        "pages_shared 3 != 0", "could not replace the guest"]
