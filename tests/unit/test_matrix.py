"""The nightly matrix's table and baseline comparison, on recorded results (no VM)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness import cellplan
from harness.errors import HarnessError
from harness.results.model import load_results
from harness.runs import matrix

DATA = Path(__file__).parent / "data" / "results"


def column(name: str, label: str) -> matrix.Column:
    results = load_results(DATA / f"{name}.json")[1]
    return matrix.Column(label, f"/k/{label}", None, {r.nodeid: r for r in results})


def test_table_scenario_by_kernel() -> None:
    cols = [column("good", "6.1.0-a"), column("bad_warning", "6.1.0-b"),
            column("skipped", "6.1.0-c")]
    text = matrix.table(cols, {("6.1.0-b", "tests/ksm/test_merge.py::test_merge_across_nodes_cycle")})
    lines = text.splitlines()
    assert lines[0].split() == ["scenario", "6.1.0-a", "6.1.0-b", "6.1.0-c"]
    assert lines[1].split() == ["test_merge.py::test_merge_across_nodes_cycle", "pass", "FAIL*",
                                "skip"]
    assert lines[2].split() == ["test_merge.py::test_unmerge_counts", "pass", "pass", "-"]


def test_new_failure_against_a_single_run_baseline(tmp_path: Path) -> None:
    cols = [column("good", "6.1.0-a"), column("bad_warning", "6.1.0-b")]
    base = matrix.load_baseline(DATA / "good.json")
    assert matrix.new_failures(cols, base) == {
        ("6.1.0-b", "tests/ksm/test_merge.py::test_merge_across_nodes_cycle")}


def test_known_failure_is_not_new() -> None:
    cols = [column("bad_warning", "6.1.0-b")]
    assert matrix.new_failures(cols, matrix.load_baseline(DATA / "bad_warning.json")) == set()
    assert matrix.new_failures(cols, None) == {
        ("6.1.0-b", "tests/ksm/test_merge.py::test_merge_across_nodes_cycle")}


@pytest.mark.parametrize("before,now,new", [
    ("counter_mismatch", "counter_mismatch_other_count", False),  # numbers aside
    ("bad_warning", "bad_warning_other_pid", False),
    ("bad_warning", "unrelated_warning", True),                   # another function warns
    ("counter_mismatch", "bad_warning", True),                    # a test that passed there
    ("hung", "bad_warning", True),                                # another category
])
def test_a_failure_is_new_by_its_signature_as_bisect_sees_it(before: str, now: str,
                                                             new: bool, tmp_path: Path) -> None:
    from harness.runs import bisect
    cols = [column(now, "6.1.0-a")]
    as_matrix = tmp_path / "matrix.json"
    as_matrix.write_text(json.dumps(matrix.matrix_document([column(before, "6.1.0-a")])))
    for baseline in (DATA / f"{before}.json", as_matrix):  # a run's file, or a matrix's
        assert bool(matrix.new_failures(cols, matrix.load_baseline(baseline))) is new
    # the same verdict bisect gives a commit failing like ``now`` when ``before`` was bad
    bad = bisect.signatures(next(r for r in column(before, "x").results.values() if r.failed))
    assert (bisect.decide([list(cols[0].results.values())], bad[0]).status
            != bisect.BAD) is new


def test_matrix_baseline_compares_column_by_column(tmp_path: Path) -> None:
    old = [column("bad_warning", "6.1.0-a"), column("good", "6.1.0-b")]
    path = tmp_path / "matrix.json"
    path.write_text(json.dumps(matrix.matrix_document(old)))
    now = [column("bad_warning", "6.1.0-a"), column("bad_warning", "6.1.0-b")]
    assert matrix.new_failures(now, matrix.load_baseline(path)) == {
        ("6.1.0-b", "tests/ksm/test_merge.py::test_merge_across_nodes_cycle")}


def test_rebuilt_tree_is_compared_with_the_same_kernel_argument(tmp_path: Path) -> None:
    """A tree rebuilt at a new commit reports a new release; its column is matched by the
    --kernel argument, so a failure it already had last night is not new."""
    old = [column("good", "6.1.0-a"), column("bad_warning", "6.1.0-tree-old")]
    old[1].kernel = "/k/tree"
    path = tmp_path / "matrix.json"
    path.write_text(json.dumps(matrix.matrix_document(old)))
    now = [column("bad_warning", "6.1.0-a"), column("bad_warning", "6.1.0-tree-new")]
    now[1].kernel = "/k/tree"
    assert matrix.new_failures(now, matrix.load_baseline(path)) == {
        ("6.1.0-a", "tests/ksm/test_merge.py::test_merge_across_nodes_cycle")}


def test_bad_baseline_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text("[1]")
    with pytest.raises(HarnessError, match="neither a results file"):
        matrix.load_baseline(tmp_path / "x.json")


def test_run_exits_1_on_a_new_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    from harness.runs import cells as cell_runs
    runs = {"A": "good", "B": "bad_warning"}

    def fake(cell: cellplan.Cell, rest: list[str], out: Path, plan_file: Path,
             shard: cellplan.Shard | None, position: tuple[int, int]) -> Path:
        out.mkdir(parents=True, exist_ok=True)
        assert cell.kernel is not None
        doc = json.loads((DATA / f"{runs[cell.kernel]}.json").read_text())
        doc["cell"] = {**cell.to_dict(), "plan": json.loads(plan_file.read_text())}
        (out / "results.json").write_text(json.dumps(doc))
        return out / "results.json"

    for k in runs:
        (tmp_path / k).write_bytes(b"")
    monkeypatch.setattr(cell_runs.cellplan.kernel_mod, "check_spec", lambda spec, modules: None)
    monkeypatch.setattr(cell_runs, "run_cell", fake)
    status = cell_runs.run(["--kernel", "A", "--kernel", "B", "--baseline",
                            str(DATA / "good.json")], root=tmp_path, env={})
    out = capsys.readouterr().out
    assert status == 1
    assert "FAIL*" in out and "WARNING in cmp_and_merge_page" in out
    # both kernels report the same release in the recorded files: labels stay distinct
    assert "6.1.0-ksmtest #2" in out
    assert (tmp_path / "matrix" / "matrix.json").is_file()
    assert (tmp_path / "matrix" / "matrix.html").is_file()


def test_matrix_junit_has_a_case_per_scenario_per_kernel() -> None:
    import xml.etree.ElementTree as ET
    cols = [column("good", "6.1.0-a"), column("bad_warning", "6.1.0-b")]
    root = ET.fromstring(matrix.matrix_junit(cols))
    suites = root.findall("testsuite")
    assert [s.get("name") for s in suites] == ["6.1.0-a", "6.1.0-b"]
    bad = suites[1].findall("testcase")
    failed = [c for c in bad if c.find("failure") is not None]
    assert failed and failed[0].get("classname", "").startswith("6.1.0-b.")
    failure = failed[0].find("failure")
    assert failure is not None and failure.get("message", "").startswith("WARNING")
    assert all(c.find("failure") is None for c in suites[0].findall("testcase"))
