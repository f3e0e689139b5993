"""The KSM sites list: extracted from real lines of linux-source-6.1 (tests/unit/data/
ksm-sites: excerpts of include/linux/ksm.h, mm/rmap.c, mm/ksm.c, kernel/fork.c), and the
committed list is well-formed and from a 6.1 tree."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.coverage import gcovdata, report, sites
from harness.coverage.gcovdata import FileCounts
from tests.helpers import REPO

TREE = REPO / "tests/unit/data/ksm-sites"


def test_header_functions_are_ksm_c_interface() -> None:
    funcs = sites.header_functions((TREE / "include/linux/ksm.h").read_text())
    assert funcs == ["ksm_madvise", "__ksm_enter", "__ksm_exit", "ksm_fork", "ksm_exit"]


def test_sites_of_the_excerpts() -> None:
    _, found = sites.extract(TREE)
    got = [(s.file, s.line, s.function, s.symbol) for s in found]
    assert got == [
        ("mm/rmap.c", 15, "page_add_anon_rmap", "PageKsm"),
        ("mm/rmap.c", 31, "rmap_walk", "folio_test_ksm"),
        ("mm/rmap.c", 32, "rmap_walk", "rmap_walk_ksm"),
        ("mm/rmap.c", 43, "rmap_walk_locked", "folio_test_ksm"),
        ("kernel/fork.c", 13, "__mmput", "ksm_exit"),
    ]
    # comments naming PageKsm are not sites, nor is anything in mm/ksm.c itself
    assert all("*" not in s.code[:2] for s in found)
    assert not any(s.file == "mm/ksm.c" for s in found)


def test_regenerating_writes_the_list_with_its_kernel(tmp_path: Path) -> None:
    out = tmp_path / "sites.json"
    assert sites.main([str(TREE), "-o", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["kernel"] == "6.1.192 (ksm-sites)"
    assert len(data["sites"]) == 5 and data["symbols"] == list(sites.SYMBOLS)


def test_not_a_tree_is_one_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert sites.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a kernel source tree" in err[0]


def test_committed_list_is_from_6_1_and_loads() -> None:
    kernel, found = sites.load()
    assert kernel.startswith("6.1.")
    assert len(found) >= 20 and all(s.function for s in found)
    files = {s.file for s in found}
    assert {"mm/memory.c", "mm/rmap.c", "mm/migrate.c", "kernel/fork.c"} <= files
    assert "mm/ksm.c" not in files


def test_every_reason_names_a_site_of_the_committed_list() -> None:
    """A reason for a line the list no longer has (regenerated from another kernel) fails
    here instead of going stale silently."""
    _, found = sites.load()
    reasons = sites.load_reasons()
    assert reasons and sites.stale_reasons(reasons, found) == []
    moved = [sites.Reason(r.file, r.line + 1, r.function, r.reason) for r in reasons]
    assert sites.stale_reasons(moved, found) == [f"{r.file}:{r.line} {r.function}"
                                                 for r in moved]
    assert sites.stale_reasons([sites.Reason(r.file, r.line, r.function, " ")
                                for r in reasons], found)


def _fc(lines: dict[int, int], functions: dict[str, tuple[int, int]] | None = None
        ) -> FileCounts:
    return FileCounts(dict(lines), dict(functions or {}))


def test_sites_tally_reached_reasoned_and_neither() -> None:
    site_list = [sites.Site("mm/a.c", 10, "f", "PageKsm", ""),
                 sites.Site("mm/a.c", 20, "g", "PageKsm", ""),
                 sites.Site("mm/a.c", 30, "h", "PageKsm", ""),
                 sites.Site("mm/b.c", 5, "k", "PageKsm", "")]
    labelled = [("t1", {"mm/a.c": _fc({10: 1, 20: 0, 30: 0})})]
    whole = gcovdata.total([c for _, c in labelled])
    reasons = [sites.Reason("mm/a.c", 20, "g", "only in a bug report"),
               sites.Reason("mm/a.c", 10, "f", "thought unreachable")]
    got = report.reach(site_list, labelled, whole, frozenset({"mm/b.c"}), reasons)
    assert [(r.status, r.reason != "") for r in got] == [
        ("reached", True), ("not reached", True), ("not reached", False), ("not built", False)]
    assert got[0].shown() == "reached"  # reached after all: its reason is moot
    assert got[1].shown() == "not reached (reason: only in a bug report)"
    assert report.tally(got) == (1, 1, 2)


def test_scenarios_alone_then_with_the_generator() -> None:
    """The generator's buckets are left out of the first figure, whatever else runs."""
    ksm = {"mm/ksm.c": _fc({1: 1, 2: 0, 3: 0, 4: 1}, {"a": (1, 1), "b": (2, 0)}),
           "mm/a.c": _fc({10: 0})}
    gen = {"mm/ksm.c": _fc({1: 0, 2: 3, 3: 0, 4: 0}, {"a": (1, 0), "b": (2, 3)}),
           "mm/a.c": _fc({10: 2})}
    labelled = [("(boot)", ksm), ("tests/ksm/test_generated.py::test_generated", gen),
                ("tests/ksm/test_merge.py::test_x", ksm)]
    alone = report.split_generated(labelled)
    assert [label for label, _ in alone] == ["(boot)", "tests/ksm/test_merge.py::test_x"]
    a = report.figures(gcovdata.total([c for _, c in alone])["mm/ksm.c"])
    w = report.figures(gcovdata.total([c for _, c in labelled])["mm/ksm.c"])
    assert (a.lines_hit, a.functions_hit, w.lines_hit, w.functions_hit) == (2, 1, 3, 2)
    site = [sites.Site("mm/a.c", 10, "f", "PageKsm", "")]
    line = report.side_by_side(a, report.tally(report.reach(site, alone, gcovdata.total(
        [c for _, c in alone]))), w, report.tally(report.reach(
            site, labelled, gcovdata.total([c for _, c in labelled]))))
    assert line == ("scenarios alone: lines 2/4 (50.0%), functions 1/2 (50.0%), sites 0 "
                    "reached/0 with a reason/1 neither | with the generator: lines 3/4 (75.0%), "
                    "functions 2/2 (100.0%), sites 1 reached/0 with a reason/0 neither")
