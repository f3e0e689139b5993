"""Host-only checks of the suite's own machinery (no QEMU): the counter arithmetic of
harness.ksm.Layout, the counter mismatch messages, GuestShell and background KSM writes over a
local shell, the workload's background commands and its pageflags report."""
from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import workloads as wl
from harness.access.remote import CommandTimeout
from harness.access.shell import GuestShell
from harness.ksm import (
    ALL_GONE,
    EXACT_COUNTERS,
    KsmCountMismatch,
    KsmError,
    KsmSnapshot,
    KsmTimeout,
    KsmWriteError,
    Layout,
    check_counts,
    count_mismatches,
    write_in_background,
)
from harness.workloads import Workload, WorkloadError
from tests.fakes import LocalSpawner

pytestmark = pytest.mark.host


def test_layout_of_scenario_one() -> None:
    layout = (Layout().same("same:1", 2624).same("same:2", 336).same("same:7", 256).zero(256)
              .unique(1024))
    assert layout.expected() == {"pages_shared": 15, "pages_sharing": 3457,
                                 "pages_unshared": 1024, "pages_volatile": 0,
                                 "stable_node_chains": 2, "stable_node_dups": 13}


def test_layout_numa_zero_pages_and_forks() -> None:
    two_nodes = Layout().same("c", 100, node=0).same("c", 100, node=1)
    assert two_nodes.expected(merge_across_nodes=True)["pages_shared"] == 1
    assert two_nodes.expected(merge_across_nodes=False)["pages_shared"] == 2
    with pytest.raises(ValueError, match="no node"):
        Layout().same("c", 10).expected(merge_across_nodes=False)
    zero = Layout().zero(1000).same("s", 10)
    assert zero.expected(use_zero_pages=True)["pages_shared"] == 1
    assert zero.expected(use_zero_pages=False)["pages_shared"] == 4 + 1
    forked = Layout().same("s", 1024).ksm_fork(1024, 16).unique(128).forked_unmerged(128, 8)
    e = forked.expected()
    assert (e["pages_shared"], e["pages_sharing"]) == (4, 1020 + 16 * 1024)
    assert (e["pages_unshared"], e["pages_volatile"]) == (128, 1024)
    assert Layout().same("x", 33).expected(max_page_sharing=4)["pages_unshared"] == 1
    assert set(ALL_GONE) == set(EXACT_COUNTERS) - {"stable_node_chains", "stable_node_dups"}


def test_mismatch_message_names_each_counter() -> None:
    snap = KsmSnapshot({"pages_shared": "4", "pages_sharing": "4079", "pages_unshared": "0",
                        "run": "1", "full_scans": "9"})
    check_counts(snap, {"pages_shared": 4, "pages_sharing": 4079, "general_profit": 5})
    with pytest.raises(KsmCountMismatch) as info:
        check_counts(snap, {"pages_shared": 4, "pages_sharing": 4080, "pages_unshared": 2},
                     "after merging")
    msg = str(info.value)
    assert msg.startswith("KSM counters wrong after merging: pages_sharing is 4079, expected "
                          "4080; pages_unshared is 0, expected 2 (all: run=1 full_scans=9")
    assert info.value.mismatches == {"pages_sharing": (4079, 4080), "pages_unshared": (0, 2)}


def test_smart_scan_counts_skipped_lone_pages_as_unshared_or_volatile() -> None:
    # smart_scan=1: lone pages skipped this scan are volatile, not unshared
    snap = KsmSnapshot({"pages_shared": "1", "pages_sharing": "9", "pages_unshared": "300",
                        "pages_volatile": "724", "run": "1", "full_scans": "9"})
    expected = {"pages_shared": 1, "pages_sharing": 9, "pages_unshared": 1024,
                "pages_volatile": 0}
    assert count_mismatches(snap, expected) == {"pages_unshared": (300, 1024),
                                                "pages_volatile": (724, 0)}
    check_counts(snap, expected, lumped=True)
    with pytest.raises(KsmCountMismatch) as info:  # a page gone missing is still caught
        check_counts(snap, {**expected, "pages_unshared": 1025}, lumped=True)
    assert info.value.mismatches == {"pages_unshared": (1024, 1025)}


@pytest.fixture
def shell() -> Iterator[GuestShell]:
    sh = GuestShell(LocalSpawner())
    yield sh
    sh.close()


def test_guest_shell_separates_output_status_and_survives(shell: GuestShell) -> None:
    r = shell.run("echo out; echo err >&2; false")
    assert (r.status, r.stdout, r.stderr) == (1, "out\n", "err\n")
    assert shell.run("printf 'a\\nb'").stdout == "a\nb"
    assert shell.run("printf ''").stdout == ""
    assert shell.run("exit 7").status == 7  # in a subshell: the shell goes on
    assert shell.run("cd / && pwd").stdout == "/\n"
    assert shell.run("pwd").stdout != "/\n" or os.getcwd() == "/"
    assert shell.run("x=5; echo $x; cat").stdout == "5\n"  # stdin is /dev/null
    multi = shell.run("for i in 1 2; do\n  echo $i\ndone")
    assert multi.stdout == "1\n2\n"
    assert shell.commands == 8


def test_guest_shell_timeout_starts_a_new_shell(shell: GuestShell) -> None:
    t0 = time.monotonic()
    with pytest.raises(CommandTimeout):
        shell.run("sleep 5", timeout=0.5)
    assert time.monotonic() - t0 < 3
    assert shell.run("echo again").stdout == "again\n"


def test_background_write_reports_success_errno_and_hangs(tmp_path: Path) -> None:
    spawner = LocalSpawner()
    (tmp_path / "run").write_text("0\n")
    pending = write_in_background(spawner, "run", 2, ksm_dir=str(tmp_path))
    assert pending.wait(10) >= 0
    assert (tmp_path / "run").read_text() == "2\n"
    (tmp_path / "use_zero_pages").mkdir()
    refused = write_in_background(spawner, "use_zero_pages", 1, ksm_dir=str(tmp_path))
    deadline = time.monotonic() + 10
    while not refused.done():
        assert time.monotonic() < deadline
    with pytest.raises(KsmWriteError) as info:
        refused.wait(10)
    assert info.value.errno_name == "EISDIR"
    os.mkfifo(tmp_path / "sleep_millisecs")  # a write that blocks, like a hung run=2
    hung = write_in_background(spawner, "sleep_millisecs", 5, ksm_dir=str(tmp_path))
    with pytest.raises(KsmTimeout) as timeout:
        hung.wait(0.5)
    assert isinstance(timeout.value, CommandTimeout)  # the monitor treats it as a hang


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the workload")
    return wl.build(tmp_path_factory.mktemp("build"))


def test_background_commands_of_a_workload(binary: Path) -> None:
    w = Workload.start(LocalSpawner(), str(binary))
    try:
        w.alloc("s", 64, "same:1")
        w.begin("churn s 200")
        assert w.busy
        with pytest.raises(WorkloadError, match="still runs 'churn s 200'"):
            w.begin("verify")
        assert w.finish(10).fields["passes"] != "0"
        assert not w.busy
        assert w.verify() == 64
        flags = w.pageflags("s")
        assert flags["present"] == 64 and flags["swapped"] == 0
        if os.geteuid() == 0:  # PFNs (and kpageflags) need CAP_SYS_ADMIN
            assert flags["nopfn"] == 0 and flags["ksm"] == 0, flags
        assert w.exit() == 0
    finally:
        w.kill()


class _Node:
    def __init__(self) -> None:
        self.user_properties: list[tuple[str, object]] = []


def test_a_race_is_retried_then_recorded_or_skipped_never_passed() -> None:
    from harness.ksm.race import Interval, RaceNotExercised, RaceRecord
    from harness.pytest_plugin.ksm_scenarios import exercise_race

    tries: list[int] = []

    def twice_missed(i: int) -> RaceRecord:
        tries.append(i)
        if i < 2:
            raise RaceNotExercised(f"no fork inside run=2 (try {i})")
        rec = RaceRecord("forks during run=2", facts={"inside": 3})
        rec.add(Interval("run=2", 1_000_000, 1_500_000))
        rec.add(Interval("forks", 1_200_000, 1_700_000))
        assert rec.overlap("run=2", "forks") == pytest.approx(0.3)
        return rec

    node = _Node()
    record = exercise_race(node, "forks", twice_missed)
    assert tries == [0, 1, 2] and record.facts == {"inside": 3}
    (name, value), = node.user_properties
    assert name == "race_overlap" and "run=2 [+0.000s, +0.500s]" in str(value)
    assert "after 2 misses" in str(value)
    exercise_race(node, "again", lambda i: record)
    (name, value), = node.user_properties  # one property, both races in it
    assert str(value).count("forks during run=2:") == 2 and " | " in str(value)

    def never(i: int) -> RaceRecord:
        raise RaceNotExercised("the KSM page left swapcache before run=2")

    node = _Node()
    with pytest.raises(pytest.skip.Exception, match=r"^race not exercised: swapcache: "
                       r"attempt 3: the KSM page left swapcache before run=2 \(3 attempts\)"):
        exercise_race(node, "swapcache", never)
    assert node.user_properties[0][0] == "race_overlap"

    def broken(i: int) -> RaceRecord:  # a failed outcome is a failure, not a miss
        raise AssertionError("child still maps KSM pages")

    with pytest.raises(AssertionError):
        exercise_race(_Node(), "forks", broken)


def test_race_command_and_timed_writes(binary: Path, tmp_path: Path) -> None:
    from harness.ksm.race import timed_ksm_write, write_interval

    (tmp_path / "run").write_text("0\n")
    spawner = LocalSpawner()
    iv = write_interval(timed_ksm_write(spawner, str(binary), "run", 2, str(tmp_path)),
                        "run", 2, timeout=10)
    assert iv.t1 >= iv.t0 > 0 and (tmp_path / "run").read_text().startswith("2")
    with pytest.raises(KsmWriteError) as refused:
        write_interval(timed_ksm_write(spawner, str(binary), "nosuch", 1, str(tmp_path)),
                       "nosuch", 1, timeout=10)
    assert refused.value.errno_name == "ENOENT"
    w = Workload.start(spawner, str(binary))
    try:
        w.alloc("s", 64, "same:1")
        fifo = tmp_path / "fifo"  # a write that blocks until the test reads it: a long run=2
        os.mkfifo(fifo)
        w.begin(f"race {fifo} 2 fork 4")
        time.sleep(0.5)
        assert fifo.read_text() == "2"
        got = w.finish(10).fields
        assert got["rc"] == "0" and int(got["forks"]) >= 2 and got["kept"] == "4", got
        assert int(got["inside"]) >= 1 and int(got["t1"]) - int(got["t0"]) >= 400_000, got
        w.children_pids += [int(p) for p in got["pids"].split(",")]
        assert w.children_verify() == 64 and w.children_exit() == [0] * 4
        # The race forced off: the write returns before the only fork.
        off = w.race_forks(str(tmp_path / "run"), 1, keep=1, delay_ms=20)
        assert off["inside"] == "0" and off["forks"] == "2", off  # the one before, one after
        assert int(off["first"]) < int(off["t0"]) and int(off["last"]) > int(off["t1"])
        assert w.children_exit() == [0]
    finally:
        w.kill()


def test_swapoff_begins_inside_the_write(binary: Path, tmp_path: Path) -> None:
    """swapoff-during: the write's child signals after its t0, so swapoff's t0 is later."""
    from harness.ksm.race import swapoff_during_write, swapoff_write_intervals

    fifo = tmp_path / "run"
    os.mkfifo(fifo)
    cmd = swapoff_during_write(LocalSpawner(), str(binary), "run", 2, "/dev/ksm-no-such-swap",
                               str(tmp_path))
    assert fifo.read_text() == "2"  # the writer's open blocks until this reader comes
    with pytest.raises(KsmError, match="swapoff failed with ENOENT"):
        swapoff_write_intervals(cmd, "run", 2, timeout=10)
    _, stamps = cmd.wait(1)
    assert int(stamps["wt0"]) < int(stamps["t0"]), stamps
