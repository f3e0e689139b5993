"""`ksm-harness coverage` end to end on the gcov kernel: one real scenario, its counters
dumped from the guest, read with the host's gcov: mm/ksm.c is reached, the per-test table
names the scenario, and the /proc/kpageflags site it exists for is reached by it.

Needs the gcov kernel in the cache (a cold build is ~25 CPU-minutes: not something a test
starts); skips with the command that builds it otherwise."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.assets import source
from harness.paths import cache_dir
from tests.helpers import run_harness

SCENARIO = "test_kpageflags_marks_only_ksm_pages"


def _gcov_kernel_built() -> bool:
    spec = source.parse_spec("source:6.1+gcov")
    for tree in (cache_dir() / "source").glob(f"{spec.package}_*/.complete"):
        version = tree.parent.name.split("_", 1)[1]
        if (source.build_dir(spec, version) / ".complete").is_file():
            return True
    return False


def test_coverage_of_one_scenario(tmp_path: Path) -> None:
    if not _gcov_kernel_built():
        pytest.skip("no gcov kernel in the cache: ksm-harness build --source 6.1 --flavour gcov")
    out = tmp_path / "cov"
    r = run_harness("coverage", "--out", str(out), "--no-html", "-k", SCENARIO,
                    "--report-dir", str(tmp_path / "results"), timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "ksm-harness: coverage: mm/ksm.c: lines " in r.stdout
    data = json.loads((out / "coverage.json").read_text())
    assert data["ksm_c"]["lines_hit"] > 100 and data["ksm_c"]["functions_hit"] > 10
    label = f"tests/ksm/test_merge.py::{SCENARIO}"
    assert {"cmp_and_merge_page", "try_to_merge_one_page"} <= set(data["per_test"][label])
    kpageflags = [s for s in data["sites"] if s["file"] == "fs/proc/page.c"]
    assert kpageflags and all(s["status"] == "reached" and label in s["by"] for s in kpageflags)
