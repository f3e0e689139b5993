"""The Markdown summary for CI job pages (harness.results.markdown), from real records: a
kernel report with its culprit, an assertion, a skip; and through the writer registry, the
way the plugin writes it (appended, as $GITHUB_STEP_SUMMARY expects)."""
from __future__ import annotations

from pathlib import Path

import pytest

from harness.findings import Category, Finding
from harness.options import BY_FLAG
from harness.results import markdown, writers
from harness.results.model import Outcome, Result, results_document

WARNING = Finding(Category.WARNING, "WARNING in ksm_scan_thread",
                  "WARNING: CPU: 0 PID: 31 at mm/ksm.c:2500 ksm_scan_thread+0x1/0x2",
                  "ksm_scan_thread", (10, 14), phase="call")
HANG = Finding(Category.HANG, "guest hung: ssh command 'x' timed out after 60s", phase="call")


def records() -> list[Result]:
    return [
        Result("tests/ksm/test_merge.py::test_ok", Outcome.PASSED, durations={"call": 1.0}),
        Result("tests/ksm/test_merge.py::test_warns", Outcome.FAILED, [WARNING, HANG],
               when="call"),
        Result("tests/ksm/test_numa.py::test_counter[a|b]", Outcome.FAILED,
               [Finding(Category.ASSERTION, "pages_shared 3 != 0 | after unmerge")],
               when="call"),
        Result("tests/ksm/test_swap.py::test_zram", Outcome.SKIPPED,
               reason="no zram in this kernel", when="setup"),
    ]


def test_summary_names_counts_failures_with_culprit_and_skips() -> None:
    results = records()
    doc = results_document(results, {"kernel": {"release": "6.1.0-test"},
                                      "cell": {"id": "debian-2n", "numa": "2"}})
    text = markdown.render(results, doc)
    lines = text.splitlines()
    assert lines[0] == "## ksm-harness: 6.1.0-test numa 2 [debian-2n]"
    assert "**2 failed, 1 passed, 1 skipped**" in lines
    rows = [line for line in lines if line.startswith("| <code>")]
    assert len(rows) == 2  # the failures only
    warns = next(r for r in rows if "test_warns" in r)
    assert warns.split(" | ")[1:4] == ["failed", "WARNING in ksm_scan_thread",
                                       "ksm_scan_thread"]
    counter = next(r for r in rows if "test_counter" in r)
    # an assertion has no kernel report; pipes neither split the row nor vanish
    assert "test_counter[a&#124;b]" in counter
    assert counter.endswith("| - | - | pages_shared 3 != 0 \\| after unmerge |")
    assert counter.count(" | ") == 4
    assert "- <code>tests/ksm/test_swap.py::test_zram</code> (skipped): no zram in this kernel" \
        in lines
    assert "test_ok" not in text


def test_all_passed_has_no_failure_table() -> None:
    ok = [Result("t.py::a"), Result("t.py::b")]
    text = markdown.render(ok, results_document(ok, {}))
    assert text.startswith("## ksm-harness\n\n**2 passed**")
    assert "|" not in text and "<details>" not in text


def test_registered_writer_appends_one_section_per_run(tmp_path: Path) -> None:
    assert BY_FLAG.get("--markdown") is None  # declared with its writer, not in the table
    writer = next(w for w in writers.WRITERS if w.name == "markdown")
    assert writer.option.flag == "--markdown"
    summary = tmp_path / "step-summary.md"
    summary.write_text("earlier step output\n")
    results = records()
    run = writers.Run(results, results_document(results, {}))
    writers.write_all({"markdown": str(summary)}.get, run)
    writers.write_all({"markdown": str(summary)}.get, run)
    text = summary.read_text()
    assert text.startswith("earlier step output\n")
    assert text.count("## ksm-harness") == 2


@pytest.mark.parametrize("text,limit,want", [
    ("a\nb  c", 50, "a b c"), ("x" * 10, 5, "xxxx…"), ("", 5, "-"), ("a|b", 5, "a\\|b")])
def test_cell(text: str, limit: int, want: str) -> None:
    assert markdown.cell(text, limit) == want
