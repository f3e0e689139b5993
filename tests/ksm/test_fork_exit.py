"""Scenarios 6 and 7: fork and exit around KSM, OOM kills during unmerge, mlockall exits.

Seed 002 (ksm: fix oom deadlock): ksmd or run=2 breaking KSM pages in an mm that becomes the
OOM victim, while the victim's exit waits for ksm_thread_mutex, deadlocked. The OOM test makes
run=2 itself push a memory cgroup over its limit so that the OOM killer picks the process
being unmerged; run=2 must return, the victim must be gone, nothing may stay merged.

Forks after merging map the KSM pages again ("KSM fork": the child's mappings join their
page's dup beyond max_page_sharing), so the counters stay exact through a fork storm.
"""
from __future__ import annotations

import time

import pytest

from harness.ksm import (
    ALL_GONE,
    RUN_UNMERGE,
    ZERO_COUNTS,
    Ksm,
    KsmWriteError,
    Layout,
    write_in_background,
)
from harness.ksm.race import (
    Interval,
    RaceNotExercised,
    RaceRecord,
    TimedCommand,
    timed_ksm_write,
    write_interval,
)
from harness.pytest_plugin.ksm import exercise_race
from harness.workloads import WorkloadError


def test_fork_storm_of_a_merged_process(ksm: Ksm, workload) -> None:  # type: ignore[no-untyped-def]
    p = workload(name="P")
    p.alloc("s", 1024, "same:51")
    p.madvise("s", "merge")
    ksm.set("run", 1)
    parent_only = Layout().same("same:51", 1024).expected()
    ksm.wait_counts(parent_only, what="parent merged")

    kids = p.fork(16)
    storm = Layout().same("same:51", 1024).ksm_fork(1024, children=16)
    ksm.wait_counts(storm.expected(), what="16 children forked after merging")
    assert p.children_verify() == 1024
    p.verify()

    # Every child rewrites page 5 with one new content: the children's copies merge together.
    p.children("write s 5 same:52")
    split = (Layout().same("same:51", 1024).ksm_fork(1023, children=16)
             .same("same:52", 16))
    ksm.wait_counts(split.expected(), what="after each child rewrote one page")
    p.children_verify()
    p.verify()

    # The children exit (ksmd scans all the while: sleep_millisecs=0).
    assert len(kids) == 16
    assert p.children_exit() == [0] * 16
    ksm.wait_counts(parent_only, what="after the children exited")
    p.verify()


def test_forked_child_has_its_own_ksm_stat(ksm: Ksm, workload, known_bug) -> None:  # type: ignore[no-untyped-def]
    """/proc/PID/ksm_merging_pages and ksm_stat of a child forked after merging count the
    child's own merged pages, not the parent's too. Kernels from 5.19 until the fix
    (harness.kernel_bugs, "ksm-fork-counters") copy the parent's counters into the child:
    there this test is a strict expected failure."""
    known_bug("ksm-fork-counters")
    p = workload(name="P")
    p.alloc("s", 256, "same:53")
    p.madvise("s", "merge")
    ksm.set("run", 1)
    ksm.wait_counts(Layout().same("x", 256).expected(), what="parent merged")
    (kid,) = p.fork(1)
    ksm.wait_counts(Layout().same("x", 256).ksm_fork(256).expected(), what="child scanned")
    parent, child = ksm.process_stat(p.pid), ksm.process_stat(kid)
    if not child:
        pytest.skip("this kernel has no /proc/PID/ksm_stat nor ksm_merging_pages")
    assert parent.get("ksm_merging_pages", 256) == 256, parent
    got = child.get("ksm_merging_pages", 256), child.get("ksm_rmap_items", 256)
    assert got == (256, 256), f"child {kid}: {child} (the parent's: {parent})"


def test_exits_during_scan_and_during_unmerge(ksm: Ksm, workload) -> None:  # type: ignore[no-untyped-def]
    p = workload(name="P")
    p.alloc("s", 2048, "same:54")
    p.alloc("u", 128, "unique:54")
    p.madvise("s", "merge")
    p.madvise("u", "merge")
    ksm.set("run", 1)
    parent_only = Layout().same("x", 2048).unique(128).expected()
    ksm.wait_counts(parent_only, what="parent merged")

    # Children exit while ksmd is in the middle of scanning them.
    base = ksm.snapshot()
    p.fork(8)
    deadline = time.monotonic() + 60
    while ksm.snapshot()["pages_sharing"] <= base["pages_sharing"]:
        assert time.monotonic() < deadline, "ksmd never reached the children"
    mid = ksm.snapshot()
    assert p.children_exit() == [0] * 8
    print(f"children exited at pages_sharing={mid['pages_sharing']} "
          f"(parent alone: {base['pages_sharing']}, all: {base['pages_sharing'] + 8 * 2048})")
    ksm.wait_counts(parent_only, what="after children exited during a scan")
    p.verify()

    # Children, then the parent, exit while run=2 unmerges them.
    p.fork(8)
    ksm.wait_counts(Layout().same("x", 2048).ksm_fork(2048, 8).unique(128)
                    .forked_unmerged(128, 8).expected(), what="8 children merged")
    pending = write_in_background(ksm.runner, "run", RUN_UNMERGE)
    deadline = time.monotonic() + 60
    while ksm.get("run") != RUN_UNMERGE and not pending.done():
        assert time.monotonic() < deadline, "run=2 did not start"
    during = not pending.done()
    p.children_exit()
    p.exit()
    took = pending.wait(timeout=300)
    print(f"run=2 took {took:.2f}s; exits started while it ran: {during}")
    # Nothing merged is left. Stable nodes may be: remove_all_stable_nodes() at the end of
    # run=2 refuses to drop a node whose page an exiting mm still maps (between ksm_exit()
    # and exit_mmap()); the next run=2, with the exits done, must remove every one of them.
    snap = ksm.assert_counts(ALL_GONE, "after exits during run=2")
    print(f"stable nodes left by run=2 racing the exits: chains="
          f"{snap['stable_node_chains']} dups={snap['stable_node_dups']}")
    ksm.unmerge_all()
    ksm.assert_counts(ZERO_COUNTS, "after a second run=2, the exits done")


@pytest.mark.allow_kernel("OOM")
def test_oom_kill_while_run2_unmerges(ksm: Ksm, workload, memcg, ksm_guest,  # type: ignore[no-untyped-def]
                                      request) -> None:
    """Seed 002. Precondition, asserted from guest timestamps: an OOM kill in the group, and a
    killed process's exit completed after run=2's write began and before it returned (while
    run=2 held ksm_thread_mutex, which the exit path once waited for: the deadlock). run=2
    may give up with ENOMEM (a break_ksm fault the memory cgroup could not charge), which the
    record says; it must return, and a second run=2 must leave nothing."""
    def attempt(i: int) -> RaceRecord:
        group = memcg(f"oom{i}")
        group.write("memory.swap.max", 0)
        victim = workload(name=f"victim{i}", cgroup=group)
        victim.alloc("s", 8192, "same:55")  # 32 MiB of one content
        victim.madvise("s", "merge")
        ksm.set("run", 1)
        ksm.wait_counts(Layout().same("x", 8192).expected(), what="victim merged")
        victim.fork(2)  # more mappings to break: 3 x 32 MiB once unmerged
        ksm.wait_counts(Layout().same("x", 8192).ksm_fork(8192, 2).expected(),
                        what="victim's children merged")
        charged = group.current()
        pids = group.procs()
        watchers = [TimedCommand(ksm.runner, ksm_guest.binary, f"exit of {pid}", "waitexit",
                                 str(pid)) for pid in pids]
        for w in watchers:
            w.wait_for_line("armed")
        group.write("memory.max", "16M")  # fits merged (well under 1 MiB), not unmerged
        before = group.keyed("memory.events")
        rec = RaceRecord("OOM kill during run=2")
        write = timed_ksm_write(ksm.runner, ksm_guest.binary, "run", RUN_UNMERGE)
        try:
            rec.add(write_interval(write, "run", RUN_UNMERGE, timeout=300))
            rec.facts["run=2"] = "returned 0"
        except KsmWriteError as refused:  # unmerge_ksm_pages() gave up: ENOMEM, nothing else
            assert refused.errno_name == "ENOMEM", str(refused)
            _, stamps = write.wait(1)
            rec.add(Interval("run=2 (ENOMEM)", int(stamps["t0"]), int(stamps["t1"])))
            rec.facts["run=2"] = "ENOMEM"
        run2 = rec.intervals[0]
        events = group.keyed("memory.events")
        rec.facts.update({"oom_kill": events["oom_kill"] - before.get("oom_kill", 0),
                          "charged merged": charged})
        deaths = {}
        for w in watchers:
            rc, stamps = w.wait(60)  # the killed and their children: all gone
            assert rc == "0", f"{w.what}: waitexit failed with {rc}"
            deaths[w.what] = int(stamps["t"])
        inside = [what for what, t in deaths.items() if run2.contains(t)]
        rec.facts.update({k + " at": f"{(t - run2.t0) / 1e6:+.3f}s" for k, t in deaths.items()})
        if ksm.get("run") != RUN_UNMERGE:  # after ENOMEM run is 0: unmerge what is left
            ksm.set("run", RUN_UNMERGE, timeout=300)
        if not rec.facts["oom_kill"] or not inside:
            raise RaceNotExercised(f"no OOM-killed exit completed inside run=2 "
                                   f"({rec.summary()})")
        rec.exercised()
        # The outcome: the victims are gone (their exits did not hang), nothing merged.
        deadline = time.monotonic() + 60
        while group.procs():
            assert time.monotonic() < deadline, f"OOM victims still there: {group.procs()}"
            time.sleep(0.1)
        with pytest.raises(WorkloadError):
            victim.verify()
        # As with any exit during run=2, stable nodes of pages the victim still mapped may
        # stay until the next run=2 (see test_exits_during_scan_and_during_unmerge).
        ksm.assert_counts(ALL_GONE, f"after the OOM kill ({rec.summary()})")
        ksm.unmerge_all()
        ksm.assert_counts(ZERO_COUNTS, "after a second run=2")
        return rec

    exercise_race(request.node, "OOM kill during run=2", attempt, attempts=2)


@pytest.mark.parametrize("when", ["before_merge", "after_merge"])
def test_mlockall_process_exits(ksm: Ksm, workload, when: str) -> None:  # type: ignore[no-untyped-def]
    """An mlockall(MCL_CURRENT|MCL_FUTURE) process with merged pages exits without hanging,
    whether it locked before KSM merged its pages or after."""
    w = workload()
    w.alloc("s", 2048, "same:56")
    w.alloc("u", 64, "unique:56")
    w.madvise("s", "merge")
    w.madvise("u", "merge")
    if when == "before_merge":
        w.mlockall(future=True)
    ksm.set("run", 1)
    layout = Layout().same("x", 2048).unique(64)
    ksm.wait_counts(layout.expected(), what=f"merged (mlockall {when})")
    if when == "after_merge":
        w.mlockall(future=True)
        w.alloc("late", 64, "same:56")  # MCL_FUTURE: locked at once
        w.madvise("late", "merge")
        layout.same("x", 64)
        ksm.wait_counts(layout.expected(), what="merged after mlockall")
    smaps = w.smaps("s")  # Locked is proportional (PSS): merged pages count 4 KiB/mapcount
    # All resident; whether the adjacent 'u' mapping shares the VMA varies (6.1 merges the
    # two VMAs, 6.12 keeps them apart after mlockall).
    assert smaps["locked_kb"] > 0 and smaps["rss_kb"] in (4 * 2048, 4 * (2048 + 64)), smaps
    w.verify()
    kid = w.fork(1)  # mlock is not inherited: a child of a locked parent, exiting first
    assert kid
    w.children_exit()
    t0 = time.monotonic()
    assert w.exit(timeout=60) == 0
    print(f"mlockall ({when}) process exited in {time.monotonic() - t0:.2f}s")
    ksm.wait_counts(ALL_GONE, pages=1, min_full_scans=0, what="after the locked process exited")


def test_workload_death_is_reported(ksm: Ksm, workload) -> None:  # type: ignore[no-untyped-def]
    """A workload killed under a test (here: on purpose) is reported as such, not as a
    hang or as wrong counters."""
    w = workload()
    w.alloc("s", 64, "same:57")
    w.madvise("s", "merge")
    ksm.set("run", 1)
    ksm.wait_counts(Layout().same("x", 64).expected(), what="merged")
    status = w.crash()
    assert status != 0, status
    with pytest.raises(WorkloadError, match="cannot run"):
        w.verify()
    ksm.wait_counts(ALL_GONE, pages=1, min_full_scans=0, what="after the crash")
