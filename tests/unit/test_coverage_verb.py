"""`ksm-harness coverage` without a guest: its arguments (one kernel, one topology, --gcov-dir
its own), its errors in one line, and the pool's gcov checkpoints (a guest that cannot answer
costs its counters, never the run)."""
from __future__ import annotations

from pathlib import Path

import pytest

from harness.access.remote import CommandResult
from harness.coverage.collect import DUMP, Collector, read_index
from harness.errors import HarnessError
from harness.pytest_plugin.fixtures import VMPool
from harness.runs import coverage
from tests.helpers import run_harness


def test_split_defaults_to_the_gcov_kernel() -> None:
    out, html, kernel, rest = coverage.split(["-k", "test_merge", "--numa", "2", "--no-html"])
    assert (out, html, kernel) == (Path("results/coverage"), False, "source:6.1+gcov")
    assert rest == ["--numa", "2", "-k", "test_merge"]
    assert coverage.split(["--out=x", "--kernel", "/k"])[::2] == (Path("x"), "/k")


@pytest.mark.parametrize("argv,why", [
    (["--kernel", "a", "--kernel", "b"], "one --kernel and one --numa"),
    (["--gcov-dir", "d"], "--gcov-dir is set by coverage itself"),
    (["--out"], "--out needs a directory"),
])
def test_split_refuses(argv: list[str], why: str) -> None:
    with pytest.raises(HarnessError, match=why):
        coverage.split(argv)


def test_help_and_a_bad_kernel_are_one_clear_answer(tmp_path: Path) -> None:
    r = run_harness("coverage", "--help")
    assert r.returncode == 0 and "source:6.1+gcov" in r.stdout
    r = run_harness("coverage", "--kernel", str(tmp_path / "nope"))
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert lines[-1].startswith(f"ksm-harness: kernel not found: {tmp_path / 'nope'}")


def test_the_gcov_flavour_profiles_what_the_report_calls_not_built() -> None:
    assert "mm/ksm.c" in coverage.profiled_files()


class _VM:
    def __init__(self, tmp: Path, answer: CommandResult | Exception) -> None:
        self.ssh, self.dir, self.answer, self.stopped = object(), tmp / "001-vm", answer, False

    def run(self, cmd: str, timeout: float = 60.0, check: bool = False) -> CommandResult:
        assert cmd == DUMP
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer

    def stop(self) -> None:
        self.stopped = True


def _pool(tmp_path: Path) -> VMPool:
    return VMPool(None, tmp_path, keep=True, gcov=Collector(tmp_path / "gcda"))  # type: ignore[arg-type]


def test_stop_dumps_the_counters_as_the_current_tests(tmp_path: Path) -> None:
    pool = _pool(tmp_path)
    vm = _VM(tmp_path, CommandResult(DUMP, 0, "== /sys/kernel/debug/gcov/b/mm/ksm.gcda\nAAE=\n",
                                     "", 0.1))
    pool.live.append(vm)  # type: ignore[arg-type]
    pool.label = "tests/ksm/test_merge.py::test_x"
    pool.stop(vm)  # type: ignore[arg-type]
    assert vm.stopped and [e["label"] for e in read_index(tmp_path / "gcda")] == [pool.label]
    assert (tmp_path / "gcda/0001/b/mm/ksm.gcda").read_bytes() == b"\x00\x01"


def test_a_guest_that_cannot_answer_loses_its_counters_not_the_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pool = _pool(tmp_path)
    vm = _VM(tmp_path, TimeoutError("guest hung"))
    pool.live.append(vm)  # type: ignore[arg-type]
    pool.stop(vm)  # type: ignore[arg-type]
    assert vm.stopped and read_index(tmp_path / "gcda") == []
    assert "gcov: no counters from 001-vm for (boot): guest hung" in capsys.readouterr().out


def test_parallel_workers_number_their_own_buckets(tmp_path: Path) -> None:
    answer = CommandResult(DUMP, 0, "== /sys/kernel/debug/gcov/b/mm/ksm.gcda\nAAE=\n", "", 0.1)
    for worker in ("gw0-", "gw1-"):
        Collector(tmp_path, worker).checkpoint(_VM(tmp_path, answer), worker)
    assert [e["bucket"] for e in read_index(tmp_path)] == ["gw0-0001", "gw1-0001"]


def test_gcov_flavour_leaves_a_users_tree_alone(tmp_path: Path) -> None:
    (tmp_path / "Makefile").write_text("")
    (tmp_path / "Kconfig").write_text("")
    r = run_harness("build", "--tree", str(tmp_path), "--flavour", "gcov")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(
        "ksm-harness: --flavour gcov is for --source")
    assert (tmp_path / "Makefile").read_text() == ""
