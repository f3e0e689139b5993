"""Two first runs at once build each cached artefact once (issue 19, finding 4): the assets
build through harness.assets.atomic.building (an flock per artefact, a re-check under it, a
temporary name of the builder's own, an atomic rename), never into a fixed ``.tmp`` name."""
from __future__ import annotations

import ast
import multiprocessing
import multiprocessing.queues
import multiprocessing.synchronize
import os
import time
from pathlib import Path

import pytest

from harness.assets.atomic import building, lock_path, record_path

pytestmark = pytest.mark.host

ASSETS = Path(__file__).resolve().parents[2] / "harness" / "assets"
CHUNKS = 50


def build(out: str, started: multiprocessing.synchronize.Barrier,
          results: multiprocessing.queues.Queue[str]) -> None:
    """One process's way to the artefact: "built" when it wrote it, "found" when another
    process had."""
    started.wait(30)
    with building(Path(out)) as tmp:
        if tmp is None:
            results.put("found")
            return
        with tmp.open("w") as fh:
            for i in range(CHUNKS):  # slowly: the other process arrives while this one writes
                fh.write(f"{os.getpid()} chunk {i}\n")
                fh.flush()
                time.sleep(0.01)
    results.put("built")


def test_two_processes_building_one_artefact_leave_one_complete_file(tmp_path: Path) -> None:
    out = tmp_path / "cache" / "vmlinux" / "abc.vmlinux"
    ctx = multiprocessing.get_context("spawn")  # real processes, nothing shared but files
    started, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=build, args=(str(out), started, results)) for _ in range(2)]
    for p in procs:
        p.start()
    try:
        outcomes = sorted(results.get(timeout=60) for _ in procs)
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
    assert outcomes == ["built", "found"]
    assert [p.exitcode for p in procs] == [0, 0]
    lines = out.read_text().splitlines()
    assert len(lines) == CHUNKS and len({line.split()[0] for line in lines}) == 1, lines[:3]
    assert sorted(p.name for p in out.parent.iterdir()) == [lock_path(out).name,
                                                            record_path(out).name, out.name]


def test_a_failed_build_leaves_nothing_and_a_killed_ones_tmp_goes(tmp_path: Path) -> None:
    out = tmp_path / "initramfs" / "k.cpio.gz"
    with pytest.raises(RuntimeError, match="mkfs failed"):
        with building(out) as tmp:
            assert tmp is not None and tmp.parent == out.parent and tmp.name != out.name
            tmp.write_text("half")
            raise RuntimeError("mkfs failed")
    assert not out.exists() and [p.name for p in out.parent.iterdir()] == [lock_path(out).name]
    stale = out.with_name(f".{out.name}.tmp-999999-dead")  # a builder killed with SIGKILL
    stale.write_text("half")
    with building(out) as tmp:
        assert tmp is not None and not stale.exists()
        tmp.write_text("whole")
    assert out.read_text() == "whole"
    with building(out) as tmp:
        assert tmp is None  # built: nothing to do
    with building(tmp_path / "nothing") as tmp:
        pass  # the block may decide not to build: nothing appears
    assert not (tmp_path / "nothing").exists()


def fixed_tmp_names(path: Path) -> list[str]:
    """``line: text`` of every string constant naming a fixed temporary file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and node.value.endswith(".tmp"):
            found.append(f"{path.name}:{node.lineno}: {node.value!r}")
    return found


def test_no_asset_builds_into_a_fixed_tmp_name() -> None:
    assert [hit for path in sorted(ASSETS.glob("*.py")) for hit in fixed_tmp_names(path)] == []


@pytest.mark.parametrize("module", ["initramfs", "kernel", "selftests"])
def test_the_cached_builders_go_through_the_helper(module: str) -> None:
    source = (ASSETS / f"{module}.py").read_text()
    assert "with building(" in source, f"harness/assets/{module}.py builds without building()"


def test_a_full_disk_while_building_names_the_artefact(tmp_path: Path) -> None:
    # the fault matrix's enospc-cache@artefact-build: a write to an open file names no file,
    # and the CLI's one line for a host file-system fault needs one (else a traceback)
    import errno

    from harness.errors import host_file_line
    out = tmp_path / "initramfs" / "k.cpio.gz"
    with pytest.raises(OSError) as caught:
        with building(out) as tmp:
            assert tmp is not None
            tmp.write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert caught.value.filename == str(out)
    assert host_file_line(caught.value) == f"no space left on device writing {out}"
    assert list(out.parent.iterdir()) == [out.with_name(f".{out.name}.lock")]
