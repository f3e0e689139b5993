"""`export kcidb`: KCIDB I/O data (schema v5) from results records, checked against the
kcidb-io package's schema (the dev extra) and against the schema's rules written out here
(so the rules hold where kcidb-io is not installed)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from harness.findings import Category, Finding
from harness.results import kcidb
from harness.results.model import Outcome, Result, load_results
from tests.helpers import run_harness

DATA = Path(__file__).parent / "data" / "results"
# The schema's rules (kcidb-io, schema v5.0): what every exporter must respect
ORIGIN = re.compile(r"^[a-z0-9_]+$")
ORIGIN_ID = re.compile(r"^[a-z0-9_]+:[^\0]*$")
TEST_PATH = re.compile(r"^([a-zA-Z0-9_-]+(\.[a-zA-Z0-9_-]+)*)?$")
STATUSES = {"FAIL", "ERROR", "MISS", "PASS", "DONE", "SKIP"}
RESOURCE_NAME = re.compile(r"^[^/\0]+$")
EXCERPT_MAX = 16384
REQUIRED = {"checkouts": {"id", "origin"}, "builds": {"checkout_id", "id", "origin"},
            "tests": {"build_id", "id", "origin"}}


def files(*names: str) -> list[tuple[dict, list[Result], Path]]:
    out = []
    for n in names:
        doc, results = load_results(DATA / f"{n}.json")
        out.append((doc, results, DATA))
    return out


def check_rules(data: dict) -> None:
    assert data["version"]["major"] == 5
    assert set(data) <= {"version", "checkouts", "builds", "tests", "issues", "incidents"}
    ids = {k: {o["id"] for o in data[k]} for k in REQUIRED}
    for kind, required in REQUIRED.items():
        for obj in data[kind]:
            assert required <= set(obj), (kind, obj)
            assert ORIGIN.match(obj["origin"]) and ORIGIN_ID.match(obj["id"])
            assert obj["id"].startswith(obj["origin"] + ":")
            assert len(obj.get("log_excerpt", "")) <= EXCERPT_MAX
            for f in obj.get("output_files", []):
                assert RESOURCE_NAME.match(f["name"]) and f["url"]
    assert len(ids["tests"]) == len(data["tests"])  # unique
    for b in data["builds"]:
        assert b["checkout_id"] in ids["checkouts"]
    for t in data["tests"]:
        assert t["build_id"] in ids["builds"]
        assert TEST_PATH.match(t["path"]) and t["status"] in STATUSES


def test_paths_are_dotted() -> None:
    assert kcidb.test_path("tests/ksm/test_numa.py::test_migrated_pages_stay_per_node") \
        == "ksm.numa.migrated_pages_stay_per_node"
    assert kcidb.test_path("tests/ksm/test_swap.py::test_swapoff_races_unmerge[zram-2]") \
        == "ksm.swap.swapoff_races_unmerge.zram-2"
    assert kcidb.test_path("tests/ksm/test_selftests.py::test_ksm_tests[-M -p 10]") \
        == "ksm.selftests.ksm_tests.-M_-p_10"


def test_status_follows_the_schema() -> None:
    by = {n: kcidb.status(load_results(DATA / f"{n}.json")[1][0]) for n in
          ("good", "bad_warning", "counter_mismatch", "hung", "boot_failed", "lost_vm",
           "skipped")}
    assert by == {"good": "PASS", "bad_warning": "FAIL", "counter_mismatch": "FAIL",
                  "hung": "FAIL", "boot_failed": "MISS", "lost_vm": "ERROR", "skipped": "SKIP"}
    setup = Result("t", Outcome.ERROR, [Finding(Category.SETUP, "fixture failed")])
    infra = Result("t", Outcome.FAILED, [Finding(Category.INFRA, "host out of disk")])
    known = Result("t", Outcome.XFAILED, reason="known bug: ksm_stat inherited")
    fixed = Result("t", Outcome.XPASSED, reason="known bug: ksm_stat inherited")
    assert [kcidb.status(r) for r in (setup, infra, known, fixed, Result("t", Outcome.ERROR))] \
        == ["MISS", "MISS", "FAIL", "PASS", "ERROR"]


def test_export_respects_the_schema_rules(tmp_path: Path) -> None:
    data = kcidb.export(files("good", "bad_warning", "boot_failed", "lost_vm", "skipped",
                              "empty"), "ksm_ci")
    check_rules(data)
    assert len(data["builds"]) == 1 and len(data["checkouts"]) == 1
    bad = next(t for t in data["tests"] if t["status"] == "FAIL")
    assert bad["path"] == "ksm.merge.merge_across_nodes_cycle"
    assert bad["log_excerpt"].startswith("WARNING in cmp_and_merge_page")
    assert bad["misc"]["kernel_report"] == "WARNING in cmp_and_merge_page"


def test_a_huge_report_is_cut_to_the_limit() -> None:
    r = Result("tests/ksm/test_merge.py::test_x", Outcome.FAILED,
               [Finding(Category.BUG, "BUG: x", "line\n" * 10000 + "\0")])
    ex = kcidb.excerpt(r)
    assert len(ex) <= kcidb.EXCERPT_MAX and "\0" not in ex and ex.endswith("[... truncated]")


def test_console_log_and_reproducer_are_output_files(tmp_path: Path) -> None:
    nodeid = "tests/ksm/test_merge.py::test_merge_across_nodes_cycle"
    fdir = tmp_path / "failures" / "test_merge.py_test_merge_across_nodes_cycle"
    fdir.mkdir(parents=True)
    for name in ("console.log", "reproducer.sh", "failure.txt"):
        (fdir / name).write_text("x\n")
    doc, results = load_results(DATA / "bad_warning.json")
    data = kcidb.export([(doc, results, tmp_path)], "ksm_ci",
                        artifacts_url="https://ci.example/job/1/artifacts", artifacts_root=tmp_path)
    t = next(t for t in data["tests"] if t["misc"]["nodeid"] == nodeid)
    names = {f["name"]: f["url"] for f in t["output_files"]}
    assert set(names) == {"console.log", "reproducer.sh", "failure.txt"}
    assert names["console.log"] == ("https://ci.example/job/1/artifacts/failures/"
                                    "test_merge.py_test_merge_across_nodes_cycle/console.log")
    assert t["log_url"] == names["console.log"]
    check_rules(data)


def test_bad_origin_is_refused() -> None:
    with pytest.raises(ValueError, match="--origin"):
        kcidb.export([], "My CI")


def test_valid_against_kcidb_io(tmp_path: Path) -> None:
    kcidb_io = pytest.importorskip("kcidb_io", reason="kcidb-io (the dev extra) not installed")
    data = kcidb.export(files("good", "bad_warning", "boot_failed", "lost_vm", "skipped", "hung",
                              "counter_mismatch"), "ksm_ci")
    kcidb_io.schema.V5_0.validate_exactly(data)
    kcidb_io.schema.LATEST.validate(kcidb_io.schema.LATEST.upgrade(data))
    # and a broken one is caught (the validation is real)
    data["tests"][0]["path"] = "ksm/merge"
    with pytest.raises(Exception, match="does not match"):
        kcidb_io.schema.V5_0.validate_exactly(data)


def test_export_command(tmp_path: Path) -> None:
    out = tmp_path / "kcidb.json"
    r = run_harness("export", "kcidb", "--origin", "ksm_ci", str(DATA / "bad_warning.json"),
                    "-o", str(out))
    assert r.returncode == 0, r.stderr
    check_rules(json.loads(out.read_text()))
    r = run_harness("export", "kcidb", "--origin", "Bad Origin", str(DATA / "good.json"))
    assert r.returncode == 2 and r.stderr.startswith("ksm-harness: --origin 'Bad Origin'")
