"""Host tests run with a cache and runs directory of their own (tests/conftest.py), never the
user's: a fresh machine, or another harness running at the same time, changes nothing."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness import paths


@pytest.mark.parametrize("turn", [1, 2])  # the second turn sees nothing the first left
def test_a_host_test_has_a_cache_and_runs_directory_of_its_own(
        turn: int, tmp_path_factory: pytest.TempPathFactory) -> None:
    base = tmp_path_factory.getbasetemp()
    cache, runs = paths.cache_dir(), paths.runs_root()
    for path, var in ((cache, "KSM_HARNESS_CACHE"), (runs, "KSM_HARNESS_RUNS")):
        assert Path(os.environ[var]) == path and path.is_relative_to(base), (var, path)
    assert list(cache.iterdir()) == [] and list(runs.iterdir()) == []
    (cache / "left-by-a-test").write_text(f"turn {turn}\n")
    paths.new_run_dir("test")
