"""The gcov side of `ksm-harness coverage` on real data: a tiny C file standing in for
mm/ksm.c, compiled with ``gcc --coverage`` in an out-of-tree "build directory" as Kbuild does,
run twice into two buckets laid out as the guest's /sys/kernel/debug/gcov names them, dumped
in the guest's dump format, then read, summed, merged and reported with the host's real gcov,
gcov-tool and gcovr."""
from __future__ import annotations

import base64
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.access.remote import CommandResult
from harness.coverage import collect, gcovdata, report, sites
from tests.helpers import require_tool

KSM_C = """\
int merged(int x)
{
	if (x > 1)
		return 2;
	return 3;
}

int never(void)
{
	return 7;
}

int main(int argc, char **argv)
{
	(void)argv;
	return merged(argc) == 9;
}
"""


@dataclass
class Built:
    src: Path
    build: Path
    exe: Path
    cc: str  # as CONFIG_CC_VERSION_TEXT has it


def _gcc_version_text() -> str:
    return subprocess.run(["gcc", "--version"], capture_output=True, text=True,
                          check=True).stdout.splitlines()[0]


@pytest.fixture
def built(tmp_path: Path) -> Built:
    require_tool("gcc")
    src, build = tmp_path / "src", tmp_path / "build"
    (src / "mm").mkdir(parents=True)
    (build / "mm").mkdir(parents=True)
    (src / "mm/ksm.c").write_text(KSM_C)
    # Kbuild's O= build: cwd is the build dir, the source named by its absolute path
    subprocess.run(["gcc", "--coverage", "-c", str(src / "mm/ksm.c"), "-o", "mm/ksm.o"],
                   cwd=build, check=True, timeout=60)
    subprocess.run(["gcc", "--coverage", "mm/ksm.o", "-o", "ksm"], cwd=build, check=True,
                   timeout=60)
    cc = _gcc_version_text()
    try:
        gcovdata.tools_for(cc)
    except gcovdata.GcovError as exc:
        pytest.skip(str(exc))
    return Built(src, build, build / "ksm", cc)


class Guest:
    """Answers the dump command with the dump format of the real .gcda the program just
    wrote (what the guest's shell prints), then "resets" by deleting it."""

    def __init__(self, built: Built) -> None:
        self.built = built

    def run(self, cmd: str, timeout: float = 60.0, check: bool = False) -> CommandResult:
        assert cmd == collect.DUMP and timeout == collect.DUMP_TIMEOUT
        gcda = self.built.build / "mm/ksm.gcda"
        data = base64.b64encode(gcda.read_bytes()).decode()
        gcda.unlink()
        path = f"{collect.GCOV_ROOT}{self.built.build}/mm/ksm.gcda"
        return CommandResult(cmd, 0, f"== {path}\n{data}\n", "", 0.1)


def _run(built: Built, *args: str) -> None:
    subprocess.run([str(built.exe), *args], cwd=built.build, timeout=30)


def _collect(built: Built, root: Path) -> collect.Collector:
    col = collect.Collector(root)
    guest = Guest(built)
    _run(built)                      # argc 1: merged() takes "return 3"
    col.checkpoint(guest, "test_a", "001-vm")
    _run(built, "x", "y")            # argc 3: "return 2", twice over
    _run(built, "x", "y")
    col.checkpoint(guest, "test_b", "001-vm")
    return col


def test_buckets_and_index_as_the_guest_names_them(built: Built, tmp_path: Path) -> None:
    col = _collect(built, tmp_path / "gcda")
    index = collect.read_index(tmp_path / "gcda")
    assert [(e["bucket"], e["label"], e["files"]) for e in index] == [
        ("0001", "test_a", 1), ("0002", "test_b", 1)]
    rel = str(built.build).lstrip("/") + "/mm/ksm.gcda"
    assert (tmp_path / "gcda/0002" / rel).is_file()
    assert collect.Collector(tmp_path / "gcda").count == col.count == 2  # resumes numbering


def test_per_bucket_counts_and_their_sum(built: Built, tmp_path: Path) -> None:
    _collect(built, tmp_path / "gcda")
    gcov, _ = gcovdata.tools_for(built.cc)
    a, b = (gcovdata.read_bucket(tmp_path / "gcda" / n, built.build, tmp_path / "w" / n, gcov,
                                 built.src) for n in ("0001", "0002"))
    assert set(a) == {"mm/ksm.c"}  # relative to the source tree, as the sites name it
    assert (a["mm/ksm.c"].lines[5], a["mm/ksm.c"].lines[4]) == (1, 0)   # return 3 / return 2
    assert (b["mm/ksm.c"].lines[5], b["mm/ksm.c"].lines[4]) == (0, 2)
    whole = gcovdata.total([a, b])["mm/ksm.c"]
    assert whole.lines[3] == 3 and whole.functions["merged"] == (1, 3)
    assert whole.functions["never"][1] == 0


def test_report_tables_sites_and_gcovr(built: Built, tmp_path: Path) -> None:
    require_tool("gcov-tool")
    _collect(built, tmp_path / "gcda")
    out = tmp_path / "report"
    out.mkdir()
    site_list = [sites.Site("mm/ksm.c", 4, "merged", "PageKsm", "return 2;"),
                 sites.Site("mm/ksm.c", 10, "never", "PageKsm", "return 7;"),
                 sites.Site("mm/rmap.c", 5, "rmap_walk", "rmap_walk_ksm", "..."),
                 sites.Site("mm/swapfile.c", 5, "unuse_pte", "ksm_might_need_to_copy", "...")]
    lines = report.build_report(tmp_path / "gcda", built.build, built.src, out, built.cc,
                                site_list, html=True, profiled=frozenset({"mm/swapfile.c"}),
                                reasons=[])
    data = json.loads((out / "coverage.json").read_text())
    assert data["ksm_c"] == {"lines_hit": 6, "lines": 8, "functions_hit": 2, "functions": 3}
    assert data["per_test"] == {"test_a": ["main", "merged"], "test_b": ["main", "merged"]}
    assert [(s["status"], s["by"]) for s in data["sites"]] == [
        ("reached", ["test_b"]), ("not reached", []), ("not profiled", []), ("not built", [])]
    # gcovr's lcov and HTML of the merged counts: 3 runs of merged()
    lcov = (out / "coverage.lcov").read_text()
    assert f"SF:{built.src}/mm/ksm.c" in lcov and "FNDA:3,merged" in lcov
    assert (out / "html/index.html").is_file()
    assert lines[0].startswith("mm/ksm.c: lines ") and "functions 2/3" in lines[0]
    assert lines[1] == "mm/ksm.c functions no test reached: never"
    assert lines[2].endswith("1 reached, 0 unreachable with a reason, 3 neither (1 not reached, "
                             "1 not built, 1 not profiled)")
    assert lines[3].startswith("scenarios alone: lines 6/8 (75.0%), functions 2/3")
    assert (out / "functions.txt").read_text().splitlines() == [
        "main: 2 tests: test_a test_b", "merged: 2 tests: test_a test_b", "never: not reached"]


def test_a_gcda_of_another_build_is_one_clear_error(built: Built, tmp_path: Path) -> None:
    _collect(built, tmp_path / "gcda")
    gcov, _ = gcovdata.tools_for(built.cc)
    with pytest.raises(gcovdata.GcovError, match="not an object of the build directory"):
        gcovdata.read_bucket(tmp_path / "gcda/0001", tmp_path / "elsewhere", tmp_path / "w",
                             gcov)


@pytest.mark.parametrize("text,why", [
    ("clang version 16.0.6", "not built by gcc"),
    ("gcc (Debian 99.1.0-1) 99.1.0", "gcov-99 not found"),
])
def test_gcov_must_match_the_kernels_gcc(text: str, why: str) -> None:
    with pytest.raises(gcovdata.GcovError, match=why):
        gcovdata.tools_for(text)


def test_parse_dump_rejects_garbage() -> None:
    assert collect.parse_dump("noise\n== /sys/kernel/debug/gcov/b/mm/x.gcda\nAAEC\n") == {
        "/b/mm/x.gcda": b"\x00\x01\x02"}
    with pytest.raises(collect.CollectError, match="bad base64"):
        collect.parse_dump("== /sys/kernel/debug/gcov/b/x.gcda\n!!!\n")
