"""The KSM sites list: extracted from real lines of linux-source-6.1 (tests/unit/data/
ksm-sites: excerpts of include/linux/ksm.h, mm/rmap.c, mm/ksm.c, kernel/fork.c), and the
committed list is well-formed and from a 6.1 tree."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.coverage import sites
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
