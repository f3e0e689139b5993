"""The workloads on the host: a real Linux with one NUMA node and KSM left alone.

A small local driver stands in for the guest (it implements harness.access.remote's Spawner and
Process over subprocess), so these tests exercise ksmwork.c, ksm_py_worker.py and
harness.workloads together, with no QEMU. Nothing here touches /sys/kernel/mm/ksm: MADV_MERGEABLE
only flags the memory.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness import workloads as wl
from harness.errors import MissingPackageError
from harness.workloads import DataCorruption, Workload, WorkloadError, WorkloadTimeout
from harness.workloads.build import programs
from harness.workloads.protocol import refusal
from tests.fakes import LocalSpawner

sys.path.insert(0, str(wl.WORKLOADS_DIR))
import ksm_py_worker

pytestmark = pytest.mark.host

PATTERNS = ("same:1", "unique:2", "zero", "lastbyte:3", "half:4")


def wait_until(check: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture(scope="session")
def binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip(f"gcc missing: {wl.APT_INSTALL}")
    return wl.build(tmp_path_factory.mktemp("cache"))


@pytest.fixture
def spawner() -> Iterator[LocalSpawner]:
    s = LocalSpawner()
    yield s
    for proc in s.spawned:
        proc.kill()


@pytest.fixture
def work(binary: Path, spawner: LocalSpawner) -> Iterator[Workload]:
    with Workload.start(spawner, str(binary)) as w:
        yield w


@pytest.fixture
def pywork(spawner: LocalSpawner) -> Iterator[Workload]:
    with Workload.start_python(spawner, str(wl.PY_WORKER_SOURCE), python=sys.executable) as w:
        yield w


def raw(binary: Path, *commands: str) -> tuple[list[str], int]:
    """Run the binary on a fixed script: (reply lines, exit status)."""
    p = subprocess.run([str(binary)], input="".join(c + "\n" for c in commands),
                       capture_output=True, text=True, check=False, timeout=60)
    return p.stdout.splitlines(), p.returncode


# ---- build ----

def test_build_is_cached_by_content(binary: Path, tmp_path: Path) -> None:
    again = wl.build(binary.parent.parent)
    assert again == binary and os.access(binary, os.X_OK)
    src = tmp_path / "src"
    shutil.copytree(wl.WORKLOADS_DIR, src, ignore=shutil.ignore_patterns("__pycache__"))
    seen = {binary.parent}
    for name in ("ksmwork.c", "ksmwork_numa.c", "ksmwork.h"):  # main, a part, the header
        (src / name).write_text((src / name).read_text() + "\n/* changed */\n")
        changed = wl.build(binary.parent.parent, src)
        assert changed.parent not in seen, f"{name} changed but the binary was not rebuilt"
        seen.add(changed.parent)


def test_a_program_is_its_file_and_its_parts() -> None:
    names = ["b_x.c", "ksmwork_race.c", "a_b_c.c", "ksmwork.c", "a.c", "a_b.c", "ksm_y.c"]
    found = programs([Path(n) for n in names])
    assert {k: [p.name for p in v] for k, v in found.items()} == {
        "a": ["a.c", "a_b.c", "a_b_c.c"], "b_x": ["b_x.c"],  # no b.c: a program of its own
        "ksm_y": ["ksm_y.c"], "ksmwork": ["ksmwork.c", "ksmwork_race.c"]}


def test_parts_and_header_are_linked_into_their_program(tmp_path: Path) -> None:
    if shutil.which("gcc") is None:
        pytest.skip("no gcc")
    (tmp_path / "prog.h").write_text("int answer(void);\n")
    (tmp_path / "prog.c").write_text('#include <stdio.h>\n#include "prog.h"\n'
                                     'int main(void) { printf("%d\\n", answer()); return 0; }\n')
    (tmp_path / "prog_part.c").write_text('#include "prog.h"\nint answer(void) { return 42; }\n')
    (tmp_path / "other.c").write_text("int main(void) { return 3; }\n")
    built = wl.build_all(tmp_path / "cache", tmp_path)
    assert set(built) == {"prog", "other"}
    assert subprocess.run([built["prog"]], capture_output=True, text=True,
                          timeout=10).stdout == "42\n"
    assert subprocess.run([built["other"]], timeout=10).returncode == 3
    (tmp_path / "prog.h").unlink()  # our own header missing: a build error, not a package
    with pytest.raises(wl.BuildError, match="prog.h"):
        wl.build_all(tmp_path / "cache", tmp_path)


def test_build_without_gcc_names_the_packages(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(MissingPackageError, match="apt-get install -y gcc libc6-dev"):
        wl.build(tmp_path)


def test_install_uploads_both_workloads(binary: Path, spawner: LocalSpawner,
                                        tmp_path: Path) -> None:
    guest_dir = tmp_path / "opt" / "ksm"
    paths = wl.install(spawner, binary.parent.parent, str(guest_dir))
    assert paths == (f"{guest_dir}/ksmwork", f"{guest_dir}/ksm_py_worker.py")
    assert os.access(paths[0], os.X_OK)
    with Workload.start(spawner, paths[0]) as w:
        w.alloc("a", 2, "zero")
        assert w.exit() == 0


def test_build_failure_is_a_build_error(tmp_path: Path) -> None:
    if shutil.which("gcc") is None:
        pytest.skip("no gcc")
    (tmp_path / "ksmwork.c").write_text("int main(void) { return undeclared; }\n")
    with pytest.raises(wl.BuildError, match="undeclared"):
        wl.build(tmp_path / "cache", tmp_path)


# ---- the C workload ----

@pytest.mark.parametrize("pattern", PATTERNS)
def test_every_pattern_verifies(work: Workload, pattern: str) -> None:
    addr = work.alloc("r", 64, pattern)
    assert addr > 0 and addr % 4096 == 0
    assert work.verify("r") == 64
    work.touch("r")
    assert work.verify() == 64


def test_patterns_have_the_promised_shape(work: Workload) -> None:
    work.alloc("s", 4, "same:7")
    work.alloc("u", 4, "unique:7")
    work.alloc("l", 4, "lastbyte:7")
    work.alloc("h", 4, "half:7")
    work.alloc("z", 2, "zero")
    head = {name: [work.peek(name, p, 0, 32) for p in range(4 if name != "z" else 2)]
            for name in "sulhz"}
    tail = {name: [work.peek(name, p, 4088, 8) for p in range(4)] for name in "sl"}
    assert len(set(head["s"])) == 1 and len(set(head["u"])) == 4
    assert head["l"] == head["s"] and len(set(tail["l"])) == 4
    assert set(tail["l"]).isdisjoint(tail["s"])
    assert head["h"][:2] == head["s"][:2] and len(set(head["h"])) == 3
    assert head["z"] == [bytes(32)] * 2


def test_thp_region_verifies(work: Workload) -> None:
    addr = work.alloc("t", 1024, "same:5", thp=True)
    assert addr % (2 << 20) == 0
    work.madvise("t", "nohugepage")
    assert work.verify("t") == 1024


def test_corrupt_is_detected_and_fails_the_exit(binary: Path) -> None:
    lines, status = raw(binary, "alloc a 8 unique:1", "corrupt a 3 17", "verify a", "exit")
    assert lines[1].startswith("ok corrupted a page 3 offset 17")
    assert lines[2].startswith("err corrupt a page 3 offset 17 expected 0x")
    assert lines[3] == "ok bye status=1" and status == 1


def test_corruption_raises_with_details(work: Workload) -> None:
    work.alloc("a", 16, "same:9")
    before = work.peek("a", 5, 200, 1)[0]
    work.corrupt("a", 5, 200)
    with pytest.raises(DataCorruption) as info:
        work.verify()
    e = info.value
    assert (e.region, e.page, e.offset, e.expected, e.got, e.pages) == \
        ("a", 5, 200, before, before ^ 0xFF, 1)
    assert "region a page 5 offset 200" in str(e) and e.child is None
    assert work.exit(check=False) == 1


def test_write_keeps_verify_passing(work: Workload) -> None:
    work.alloc("a", 8, "same:1")
    work.alloc("b", 8, "unique:2")
    old = work.peek("a", 2)
    work.write("a", 2)
    assert work.peek("a", 2) != old
    work.write("b", 3, same_seed=1)  # now identical to region a's pages
    assert work.peek("b", 3, 0, 64) == work.peek("a", 0, 0, 64)
    assert work.verify() == 16
    assert work.exit() == 0


def test_fork_children_verify_and_report_corruption(work: Workload) -> None:
    work.alloc("a", 32, "half:3")
    work.madvise("a", "merge")
    pids = work.fork(2)
    parent, children = work.pids()
    assert parent == work.pid and children == pids and len(pids) == 2
    assert work.children_verify() == 32
    work.children("write a 1")
    assert work.children_verify("a") == 32
    assert work.verify() == 32  # the parent's copy is untouched
    work.children("corrupt a 7")
    with pytest.raises(DataCorruption) as info:
        work.children_verify()
    assert info.value.child in pids and info.value.page == 7
    assert work.children_exit() == [1, 1]
    assert work.pids()[1] == []
    assert work.exit(check=False) == 1  # the children's verdict is the parent's


def test_churn_keeps_data_intact(work: Workload) -> None:
    work.alloc("a", 64, "half:2")
    work.madvise("a", "merge")
    assert work.churn("a", 100) >= 64
    work.fork(2)
    assert work.children("churn a 50").ok
    assert work.children_verify() == 64 and work.verify() == 64


def test_children_die_with_the_parent(work: Workload) -> None:
    work.alloc("a", 4, "same:1")
    pids = work.fork(3)
    assert all(pid_alive(p) for p in pids)
    assert work.pid is not None
    os.kill(work.pid, signal.SIGKILL)
    wait_until(lambda: not any(pid_alive(p) for p in pids), 10, "children to die")


def test_dead_child_is_reported(work: Workload) -> None:
    work.alloc("a", 4, "same:1")
    pids = work.fork(2)
    os.kill(pids[0], signal.SIGKILL)
    with pytest.raises(WorkloadError, match=f"child {pids[0]} died .*signal 9"):
        work.children_verify()
    assert work.pids()[1] == [pids[1]]
    assert work.children_verify() == 4


def test_numa_queries_on_a_one_node_host(work: Workload) -> None:
    work.alloc("a", 40, "unique:1")
    assert work.nodes("a") == wl.NodeCounts(40, 0, 0, {})
    moved = work.move("a", 0)
    assert (moved.already, moved.moved, moved.failed, moved.unattempted) == (40, 0, 0, 0)
    assert work.move("a", 0, move_all=True, first=10, count=5).on_target == 5
    assert work.nodes("a", 0, 10).node0 == 10
    assert work.migrate(0, 0) == 0
    work.alloc("b", 4, "same:2", node=0)
    assert work.policy("b") == ("bind", [0])
    assert work.policy("a")[0] == "default"
    assert work.verify() == 44


def test_mbind_punch_and_moved_on_a_one_node_host(work: Workload) -> None:
    work.alloc("z", 20, "zero", thp=False)
    assert work.punch("z", 7) == 17  # all but pages 0, 7 and 14
    assert work.verify("z") == 20  # the punched pages read zeros again
    work.alloc("u", 4, "unique:3")
    # not zero-filled, a stride below 2, nothing saved yet, no node 1 here
    for line in ("punch u 3", "punch z 1", "moved u", "mbind u 1"):
        with pytest.raises(WorkloadError):
            work.command(line)
    work.mbind("u", 0)
    assert work.policy("u") == ("bind", [0])
    work.kpf_save("u")
    moved = work.moved("u")  # all zeros without the privilege to read PFNs
    assert (moved["changed"], moved["gone"], moved["changed_ksm"]) == (0, 0, 0), moved
    assert work.verify() == 24


def test_bad_commands_are_errors(work: Workload) -> None:
    for line in ("bogus", "alloc a 0 same:1", "alloc a 4 nope:1", "alloc a 4 zero:1",
                 "alloc a 4 same:x", "verify nothere", "write nothere 1", "fork 0",
                 "children verify", "madvise nothere merge", "peek x 0 0 1"):
        with pytest.raises(WorkloadError) as info:
            work.command(line)
        assert not isinstance(info.value, DataCorruption), line
        assert info.value.reply.startswith("err "), line
    work.alloc("a", 4, "same:1")
    for line in ("alloc a 4 same:1", "write a 4", "corrupt a 0 4096", "madvise a sideways",
                 "move a 1", "nodes a 3 5", "alloc b 4 same:1 node=7"):
        with pytest.raises(WorkloadError):
            work.command(line)
    assert work.verify() == 4  # still serving


def test_madvise_mlock_and_smaps(work: Workload) -> None:
    work.alloc("a", 64, "same:1")
    assert work.smaps("a")["mergeable"] == 0
    work.madvise("a", "merge")
    info = work.smaps("a")
    assert info["mergeable"] == 1 and info["rss_kb"] == 256
    work.madvise("a", "unmerge", 0, 32)
    for advice in ("cold", "pageout", "hugepage", "nohugepage", "willneed"):
        work.madvise("a", advice)
    work.mlock("a")
    assert work.smaps("a")["locked_kb"] == 256
    work.munlock("a")
    work.mlockall()
    work.munlockall()
    work.free("a")
    assert work.verify() == 0


def test_timeout_names_the_command_and_retires_the_workload(work: Workload) -> None:
    with pytest.raises(WorkloadTimeout, match="'sleep 3000' within 0s") as hung:
        work.command("sleep 3000", timeout=0.3)
    assert hung.value.pid == work.pid and work.pid is not None  # what the hang's evidence asks
    with pytest.raises(WorkloadError, match="timed out"):
        work.verify()


def test_crash_is_reported(work: Workload) -> None:
    assert work.crash() == -signal.SIGSEGV  # Popen's way of saying "killed by SIGSEGV"


def test_eof_exits_cleanly(binary: Path) -> None:
    lines, status = raw(binary, "alloc a 4 zero", "verify")
    assert lines == [lines[0], lines[1]] and lines[1].startswith("ok verified 4 pages")
    assert status == 0


def test_start_fails_clearly_for_a_missing_binary(spawner: LocalSpawner) -> None:
    with pytest.raises(WorkloadError, match="did not start"):
        Workload.start(spawner, "/nonexistent/ksmwork", timeout=10)


# ---- the Python workload ----

@pytest.mark.parametrize("pattern", PATTERNS)
def test_python_worker_patterns_verify(pywork: Workload, pattern: str) -> None:
    pywork.alloc("r", 16, pattern)
    pywork.madvise("r", "merge")
    assert pywork.verify() == 16
    pywork.madvise("r", "unmerge")


def test_python_worker_write_corrupt_exit(pywork: Workload) -> None:
    pywork.alloc("a", 8, "same:4")
    pywork.write("a", 1)
    pywork.write("a", 2, same_seed=9)
    assert pywork.verify("a") == 8
    pywork.corrupt("a", 6, 4095)
    with pytest.raises(DataCorruption) as info:
        pywork.verify("a")
    assert (info.value.region, info.value.page, info.value.offset) == ("a", 6, 4095)
    with pytest.raises(WorkloadError):
        pywork.command("fork 2")  # not in the Python subset
    assert pywork.exit(check=False) == 1


def test_python_and_c_pages_are_identical(work: Workload, pywork: Workload) -> None:
    for w in (work, pywork):
        w.alloc("s", 2, "same:11")
        w.alloc("l", 3, "lastbyte:11")
        w.alloc("u", 3, "unique:11")
    for name, page in (("s", 1), ("l", 2), ("u", 2)):
        for offset in (0, 2048, 4032):
            assert work.peek(name, page, offset, 64) == pywork.peek(name, page, offset, 64)
    expected = ksm_py_worker.key_page(ksm_py_worker.seedkey(11))
    assert work.peek("s", 0, 0, 64) == expected[:64]


def test_poke_and_hole_keep_verify_exact(work: Workload) -> None:
    """poke changes one byte with the expectation (the same poke again restores the page);
    hole unmaps one page that verify, touch and churn skip; a corrupted poked byte is still
    found."""
    work.alloc("p", 8, "same:9")
    before = work.peek("p", 1, 4088, 8)
    work.command("poke p 1 4095 128")
    work.command("poke p 2 0 1")
    assert work.peek("p", 1, 4088, 8) == before[:7] + bytes([before[7] ^ 0x80])
    work.command("hole p 5")
    work.touch("p")
    assert work.verify("p") == 8
    work.command("poke p 1 4095 128")
    assert work.peek("p", 1, 4088, 8) == before
    with pytest.raises(WorkloadError):
        work.command("poke p 2 7 1")  # a second offset on a poked page is refused
    with pytest.raises(WorkloadError):
        work.command("poke p 5 0 1")  # a hole
    work.corrupt("p", 2, 0)
    with pytest.raises(DataCorruption) as bad:
        work.verify("p")
    assert (bad.value.page, bad.value.offset) == (2, 0)


def test_page_counts_say_their_method_and_refuse_what_no_method_could_tell() -> None:
    # recorded from Debian 6.12.118 (KPF_KSM on every anonymous page): one VMA of 32 pages
    # merged with another process's, smaps counted them but the mappings proved only some
    # (the rest mapped once each), so which distinct KSM pages is unknown, the count is not
    reply = ("ok present=32 swapped=0 ksm=32 ksmpfns=0 thp=0 zero=0 nopfn=0 ksm_by=smaps "
             "ksm_maps=30 ksm_smaps=32 ksm_unknown=ksmpfns")
    fields = wl.Reply("pageflags s", reply).fields
    counts = wl.PageCounts(fields, ("ksm", "ksmpfns"), "c0", "pageflags s")
    assert counts["ksm"] == 32 and counts["ksm_maps"] == 30 and counts.method == "smaps"
    assert "ksm_by: smaps" in repr(counts) and "ksmpfns" not in counts
    for read in (lambda: counts["ksmpfns"], lambda: counts.get("ksmpfns"), counts.known):
        with pytest.raises(wl.CheckUnavailable, match="cannot check on this kernel: ksmpfns: "
                           "this kernel's /proc/kpageflags .*/smaps' KSM: count"):
            read()
    proven = wl.PageCounts(wl.Reply("pageflags s", reply.replace(" ksm_unknown=ksmpfns", "")
                                    .replace("ksm_by=smaps", "ksm_by=maps+smaps")).fields,
                           ("ksm", "ksmpfns"))
    assert proven.known() is proven and proven["ksmpfns"] == 0
    assert proven.method == "maps+smaps" and "ksm_by: maps+smaps" in repr(proven)
    old = wl.PageCounts({"present": "4", "ksm": "4"}, ("ksm",))  # a reply without ksm_by
    assert repr(old) == "{'present': 4, 'ksm': 4}" and old.known() is old


def test_pageflags_finds_ksm_pages_without_kpageflags_and_not_where_there_are_none(
        work: Workload) -> None:
    # The maps method alone (as where KPF_KSM lies), on pages KSM never merged: same-content
    # pages at distinct PFNs, the zero page mapped at ten addresses, pages shared with forked
    # children (mapped 3 times, all explained by fork): none may count as KSM pages.
    work.alloc("s", 16, "same:1")
    work.alloc("z", 20, "zero", thp=False)
    assert work.punch("z", 2) == 10 and work.verify("z") == 20  # ten zero-page mappings
    work.trust_kpageflags(False)
    work.fork(2)
    for name in ("s", "z"):
        flags = work.pageflags(name)
        if flags["nopfn"]:
            pytest.skip("PFNs are hidden here (no CAP_SYS_ADMIN)")
        assert flags.method in ("maps+smaps", "maps"), flags
        assert (flags["ksm_maps"], flags.get("ksm", 0)) == (0, 0), flags
    assert work.pageflags("z")["zero"] == 10
    work.children_exit()
    with pytest.raises(WorkloadError, match="usage: kpftrust"):
        work.command("kpftrust maybe")


def test_pageflags_checks_kpageflags_once_and_says_so(work: Workload) -> None:
    work.alloc("r", 8, "unique:5")
    flags = work.pageflags("r")
    assert flags["present"] == 8
    if os.geteuid() == 0 and flags["nopfn"] == 0:  # PFNs readable: the self-check ran
        assert flags["ksm"] == 0  # this host's kernel reads a never-merged page right
        assert flags.method.startswith("kpageflags,checked:maps"), flags
    work.trust_kpageflags()
    assert work.pageflags("r")["present"] == 8


def test_race_probe_refusal_is_a_skip_with_the_reason() -> None:
    e = refusal("c0", "race /x 2 fork 1", "err race: probe: kpageflags-ksm-unreliable, "
                "/proc/kpagecount: ENOENT")
    assert isinstance(e, wl.CheckUnavailable)
    assert str(e).startswith("cannot check on this kernel: race: probe: this kernel's /proc/")
    other = refusal("c0", "alloc r 1 x", "err alloc: bad pattern")
    assert type(other) is WorkloadError and "refused 'alloc r 1 x'" in str(other)


def test_help_lists_every_command_the_loop_knows(binary: Path) -> None:
    """help is read from the dispatch table: each name it lists is a command (a bare call
    gets its usage or runs, never "unknown command"), and a name it omits is unknown."""
    lines, _ = raw(binary, "help")
    names = lines[0].removeprefix("ok commands:").split()
    assert {"alloc", "race", "killwrite", "vmop", "exit"} <= set(names)
    calls = [n for n in names if n not in ("exit", "crash", "sleep", "churn")]
    replies, _ = raw(binary, *calls, "nosuchcommand")
    unknown = [c for c, r in zip(calls, replies) if "unknown command" in r]
    assert unknown == [] and "unknown command" in replies[len(calls)]
