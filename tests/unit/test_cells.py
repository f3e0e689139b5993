"""Cells, shards and merge on constructed results (no VM): two shards run as separate
invocations and merged give the same table, matrix files and exit status as one unsharded
run; ids are stable; every argument is checked before the first cell runs."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from harness import cellplan
from harness.errors import HarnessError
from harness.findings import Category, Finding
from harness.results.model import Outcome, Result, results_document
from harness.runs import cells as cell_runs
from tests.helpers import require_tool

TESTS = [f"tests/ksm/test_{m}.py::test_{t}" for m in ("merge", "numa") for t in "abc"][:5]


def fake_bzimage(path: Path, release: str) -> Path:
    data = bytearray(0x400)
    data[0x1F1] = 1  # one setup sector, no payload: the header's size matches the file
    data[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", data, 0x20E, 0x100)
    text = f"{release} (ci@host) #1 SMP\0".encode()
    data[0x300:0x300 + len(text)] = text
    path.write_bytes(bytes(data))
    return path


def truth(kernel: str, numa: str | None) -> list[Result]:
    """What the suite "finds" in a cell: B's WARNING on every topology, a boot failure on
    B's second topology, a skip on A."""
    out = []
    for i, nodeid in enumerate(TESTS):
        r = Result(nodeid, start=1000.0 + i, durations={"call": 1.0},
                   properties={"kernel_release": Path(kernel).name + "-rel"})
        if kernel.endswith("B") and i == 1:
            r.outcome = Outcome.FAILED
            r.add([Finding(Category.WARNING, "WARNING in cmp_and_merge_page", phase="call")])
        elif kernel.endswith("B") and i == 3 and numa and "512M" in numa:
            r.outcome = Outcome.ERROR
            r.add([Finding(Category.BOOT, "guest did not boot", phase="setup")])
        elif kernel.endswith("A") and i == 4:
            r.outcome, r.reason = Outcome.SKIPPED, "no zram"
        out.append(r)
    return out


def fake_pytest(args: list[str], default_paths: list[str]) -> int:
    """The plugin's part of a cell run, as harness.pytest_plugin does it: select this
    shard's block, record the cell, write results.json."""
    def opt(flag: str) -> str | None:
        return args[args.index(flag) + 1] if flag in args else None
    kernel, numa = opt("--kernel"), opt("--numa")
    items = truth(kernel or "debian", numa)
    given = opt("--shard")
    shard = cellplan.parse_shard(given) if given else None
    if shard:
        keep = cellplan.shard_items(len(items), shard, cellplan.position_of(opt("--cell-position")
                                                                      or "0/1"))
        items = items[keep.start:keep.stop]
    plan = cellplan.read_plan(Path(opt("--cell-plan") or ""))
    meta = {"options": {"kernel": kernel, "numa": numa}, "host": "h",
            "kernel": {"release": f"{kernel}-rel", "commit": "abc"},
            "cell": cellplan.meta(cellplan.Cell(kernel, numa), plan, shard, len(items))}
    path = Path(opt("--results-json") or "")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results_document(items, meta)))
    return 1 if any(r.failed for r in items) else 0


@pytest.fixture
def kernels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setattr(cell_runs.session, "run_child", fake_pytest)
    return [str(fake_bzimage(tmp_path / k, f"6.1.0-{k}")) for k in ("A", "B")]


def _argv(kernels: list[str]) -> list[str]:
    return ["--kernel", kernels[0], "--kernel", kernels[1], "--numa", "2",
            "--numa", "512M:1,1536M:1", "-k", "not slow"]


def _matrix(root: Path) -> tuple[str, dict]:
    return ((root / "matrix.txt").read_text(), json.loads((root / "matrix.json").read_text()))


@pytest.mark.parametrize("total", [2, 3])
def test_shards_merged_equal_one_unsharded_run(tmp_path: Path, kernels: list[str],
                                               total: int) -> None:
    whole = cell_runs.run(_argv(kernels), root=tmp_path / "whole", env={})
    # each shard on "its own machine" (its own directory), one invocation each
    for i in range(1, total + 1):
        part = cell_runs.run(_argv(kernels) + ["--shard", f"{i}/{total}"],
                             root=tmp_path / f"shard{i}", env={})
        assert part in (0, 1)
    merged = cell_runs.merge([tmp_path / f"shard{i}" / "cells" for i in range(1, total + 1)],
                             None, tmp_path / "merged")
    assert whole == merged == 1
    assert _matrix(tmp_path / "whole" / "matrix") == _matrix(tmp_path / "merged")
    table = (tmp_path / "merged" / "matrix.txt").read_text()
    assert "FAIL*" in table and "ERROR*" in table and "skip" in table
    # and against a baseline of the unsharded run: nothing new, both exit 0
    base = str(tmp_path / "whole" / "matrix" / "matrix.json")
    again = cell_runs.merge([tmp_path / f"shard{i}" / "cells" for i in range(1, total + 1)],
                            base, tmp_path / "merged2")
    assert again == 0


def test_shards_from_the_ci_environment_in_one_workspace(tmp_path: Path,
                                                         kernels: list[str]) -> None:
    """GitLab `parallel: 2` (1-based) and a Kubernetes Indexed Job (0-based) name the same
    shards; two shards one after the other in one directory do not erase each other."""
    cell_runs.run(_argv(kernels), root=tmp_path / "whole", env={})
    cell_runs.run(_argv(kernels), root=tmp_path / "ws", env={"CI_NODE_INDEX": "1",
                                                               "CI_NODE_TOTAL": "2"})
    cell_runs.run(_argv(kernels), root=tmp_path / "ws", env={"JOB_COMPLETION_INDEX": "1",
                                                               cellplan.SHARDS_ENV: "2"})
    assert cell_runs.merge([tmp_path / "ws" / "cells"], None, tmp_path / "m") == 1
    assert _matrix(tmp_path / "whole" / "matrix") == _matrix(tmp_path / "m")


def test_a_missing_shard_or_cell_is_not_hidden(tmp_path: Path, kernels: list[str],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    cell_runs.run(_argv(kernels) + ["--shard", "1/2"], root=tmp_path / "s1", env={})
    capsys.readouterr()
    assert cell_runs.merge([tmp_path / "s1" / "cells"], None, tmp_path / "m") in (1, 2)
    assert "no results from shard(s) 2/2" in capsys.readouterr().out
    # one --cell job of four: the other three cells of the plan show as missing
    plan = cellplan.plan(kernels, ["2", "512M:1,1536M:1"])
    one = plan[0].id
    assert cell_runs.run(_argv(kernels) + ["--cell", one], root=tmp_path / "c", env={}) == 0
    assert cell_runs.merge([tmp_path / "c" / "cells"], None, tmp_path / "m2") == 2
    assert "no results files" in capsys.readouterr().out


def test_cell_ids_are_stable_and_canonical(tmp_path: Path) -> None:
    assert cellplan.cell_id(None, None) == cellplan.cell_id("debian", "2") \
        == cellplan.cell_id("debian:linux-image-amd64", "1G,1G") == cellplan.cell_id("debian", "1G:1,1024M")
    assert cellplan.cell_id(None, None) == "debian-2node-" + cellplan.cell_id(None, None)[-6:]
    assert cellplan.cell_id("debian:linux-image-6.12-amd64", "512M:1,1536M:1").startswith(
        "debian-6.12-amd64-512m1c-1536m1c-")
    assert cellplan.cell_id("/a/linux", "2") != cellplan.cell_id("/b/linux", "2")
    assert cellplan.cell_id("/src/linux/arch/x86/boot/bzImage", "1").startswith("linux-1node-")


def test_shard_blocks_cover_every_pair_once() -> None:
    for n_cells, count, total in ((1, 2, 2), (4, 5, 3), (3, 7, 8), (2, 0, 2)):
        seen = []
        for i in range(1, total + 1):
            for c in range(n_cells):
                r = cellplan.shard_items(count, cellplan.Shard(i, total), (c, n_cells))
                seen += [(c, t) for t in r]
        assert sorted(seen) == [(c, t) for c in range(n_cells) for t in range(count)]
    # N shards of N equal cells are the cells
    assert cellplan.shard_items(5, cellplan.Shard(2, 2), (1, 2)) == range(0, 5)
    assert cellplan.shard_items(5, cellplan.Shard(2, 2), (0, 2)) == range(0, 0)


def test_shard_arguments_and_environment() -> None:
    assert cellplan.shard_from_env({}) is None
    assert cellplan.shard_from_env({"CI_NODE_INDEX": "3", "CI_NODE_TOTAL": "4"}) == cellplan.Shard(3, 4)
    assert cellplan.shard_from_env({"JOB_COMPLETION_INDEX": "0", cellplan.SHARDS_ENV: "4"}) \
        == cellplan.Shard(1, 4)
    with pytest.raises(HarnessError, match=cellplan.SHARDS_ENV):
        cellplan.shard_from_env({"JOB_COMPLETION_INDEX": "0"})
    for bad in ("0/2", "3/2", "x", "1/0"):
        with pytest.raises(HarnessError, match="--shard .*I/N"):
            cellplan.parse_shard(bad)


def test_every_argument_is_checked_before_the_first_cell(tmp_path: Path, kernels: list[str],
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    ran: list[list[str]] = []
    def run_child(a: list[str], d: list[str]) -> int:
        ran.append(a)
        return 0
    monkeypatch.setattr(cell_runs.session, "run_child", run_child)
    for bad, match in (([*kernels, "/etc/passwd"], "--kernel /etc/passwd: not a Linux kernel"),
                       ([*kernels, str(tmp_path / "nope")], "no such file"),
                       ([*kernels, "debian:foo"], "not a Debian kernel image package"),
                       ([*kernels, "debian:linux-image-6.12-amd64"], None)):
        argv = [a for k in bad for a in ("--kernel", k)] + ["--numa", "2"]
        if match is None:  # every kernel fine: the last topology is not
            argv += ["--numa", "garbage"]
        with pytest.raises(HarnessError, match=match or "--numa garbage: .*MEM\\[:CPUS\\]"):
            cell_runs.run(argv, root=tmp_path, env={})
    with pytest.raises(HarnessError, match="--cell nope: not a cell .* debian-2node-"):
        cell_runs.run(["--cell", "nope"], root=tmp_path, env={})
    assert ran == []  # no cell started, nothing downloaded


def test_merge_reads_results_files_from_before_cells() -> None:
    """A results file without cell metadata is placed by its --kernel/--numa options."""
    data = Path(__file__).parent / "data" / "results"
    columns, problems = cell_runs.columns_of([data / "good.json"])
    assert [c.cell for c in columns] == [cellplan.cell_id("/src/linux", "2")]
    assert problems == []


def test_plan_formats(tmp_path: Path, kernels: list[str]) -> None:
    plan = cellplan.plan(kernels, ["2", "512M:1,1536M:1"])
    argv = ["--kernel", kernels[0], "--kernel", kernels[1], "--numa", "2",
            "--numa", "512M:1,1536M:1"]
    gh = json.loads(cell_runs.plan_output(plan, "github", argv, None))
    assert [i["cell"] for i in gh["include"]] == [c.id for c in plan]
    assert [c["id"] for c in json.loads(cell_runs.plan_output(plan, "json", argv, None))] \
        == [c.id for c in plan]
    lab = cell_runs.plan_output(plan, "gitlab", argv, "kvm")
    for c in plan:
        assert f"cell-{c.id}:" in lab and f'KSM_CELL: "{c.id}"' in lab
    assert 'tags: ["kvm"]' in lab and "./ksm-harness merge results/cells" in lab
    text = cell_runs.plan_output(plan, "text", argv, None).splitlines()
    assert text[0].split() == ["cell", "kernel", "numa"] and len(text) == 5


def test_kernel_facts_of_a_build_tree(tmp_path: Path) -> None:
    """A tree's git commit and its compiler (CONFIG_CC_VERSION_TEXT) reach the results."""
    import subprocess

    require_tool("git")

    from harness.assets import kernel
    tree = tmp_path / "linux"
    (tree / "arch/x86/boot").mkdir(parents=True)
    fake_bzimage(tree / "arch/x86/boot/bzImage", "6.1.0-tree")
    (tree / "Makefile").write_text("VERSION = 6\n")
    (tree / ".config").write_text('CONFIG_KSM=y\nCONFIG_CC_VERSION_TEXT="gcc (GCC) 14.2.0"\n')
    git = ["git", "-C", str(tree), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    for given in (tree, tree / "arch/x86/boot/bzImage"):
        k = kernel.load(given)
        assert (k.release, k.commit, k.compiler) == ("6.1.0-tree", head, "gcc (GCC) 14.2.0")
    assert kernel.banner_compiler(
        "Linux version 6.1.0 (u@h) (gcc-12 (Debian 12.2.0-14) 12.2.0, GNU ld 2.40) #1 SMP") \
        == "gcc-12 (Debian 12.2.0-14) 12.2.0"


def test_cell_progress_lines_only_when_asked_or_on_a_terminal(
        tmp_path: Path, kernels: list[str], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("KSM_HARNESS_PROGRESS", "0")
    cell_runs.run(_argv(kernels), root=tmp_path / "quiet", env={})
    assert "cell 1/4" not in capsys.readouterr().err  # a CI log: no progress lines
    monkeypatch.setenv("KSM_HARNESS_PROGRESS", "1")
    cell_runs.run(_argv(kernels), root=tmp_path / "loud", env={})
    err = capsys.readouterr().err
    assert "cell 1/4: " in err and "cell 4/4: " in err and "3 done in " in err
    assert " left -> " in err


def test_report_dir_is_the_root_of_a_cell_run(tmp_path: Path, kernels: list[str]) -> None:
    cell_runs.run(_argv(kernels) + ["--report-dir", str(tmp_path / "nightly")],
                  root=tmp_path / "unused", env={})
    assert (tmp_path / "nightly" / "matrix" / "matrix.json").is_file()
    assert len(list((tmp_path / "nightly" / "cells").glob("*/results.json"))) == 4
    assert not (tmp_path / "unused").exists()
