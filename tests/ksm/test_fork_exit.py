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
)
from harness.ksm.race import (
    Interval,
    RaceNotExercised,
    RaceRecord,
    TimedCommand,
    ksm_file,
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


def merged_parent(ksm: Ksm, workload, name: str):  # type: ignore[no-untyped-def]
    p = workload(name=name)
    p.alloc("s", 2048, "same:54")
    p.alloc("u", 128, "unique:54")
    p.madvise("s", "merge")
    p.madvise("u", "merge")
    ksm.set("run", 1)
    ksm.wait_counts(PARENT_ONLY, what=f"{name} merged")
    return p


PARENT_ONLY = Layout().same("x", 2048).unique(128).expected()
MERGING = "/proc/self/ksm_merging_pages"


def test_exits_during_scan_and_during_unmerge(ksm: Ksm, workload, ksm_guest,  # type: ignore[no-untyped-def]
                                              request) -> None:
    """Children exit while ksmd scans them, then while run=2 unmerges them. Preconditions,
    from guest timestamps: during the scan, a child exited the moment its own
    ksm_merging_pages moved (ksmd inside its mm: __ksm_exit's slow path, the slot at the
    cursor); during unmerge, a child saw run read 2 and was reaped before run=2's write
    returned. Otherwise "race not exercised" after RACE_ATTEMPTS tries."""
    p = merged_parent(ksm, workload, "P")
    if "ksm_merging_pages" not in ksm.process_stat(p.pid or 0):
        pytest.skip("needs /proc/PID/ksm_merging_pages (5.19+) to see ksmd in a child's mm")

    def scan(i: int) -> RaceRecord:
        p.fork(8)
        got = p.children_exit_when(MERGING, ms=5000)
        rec = RaceRecord("children exit while ksmd scans them")
        rec.add(Interval("children's exits (first hit .. last reaped)", min(got["t"]),
                         max(got["reaped"])))
        rec.facts.update({"exited inside their own scan": f"{got['hits'][0]}/8",
                          "merged at exit": [v - v0 for v, v0 in zip(got["v"], got["v0"])]})
        assert got["status"] == [0] * 8, f"children's exit statuses: {got}"
        if not got["hits"][0]:
            ksm.wait_counts(PARENT_ONLY, what="after the children exited (a miss)")
            raise RaceNotExercised(f"no child saw ksmd in its mm before 5 s ({rec.summary()})")
        rec.exercised()
        ksm.wait_counts(PARENT_ONLY, what=f"after children exited during a scan "
                                          f"({rec.summary()})")
        p.verify()
        return rec

    exercise_race(request.node, "exits during a scan of their mm", scan)

    def unmerge(i: int) -> RaceRecord:
        q = p if i == 0 else merged_parent(ksm, workload, f"P{i}")
        q.fork(8)
        ksm.wait_counts(Layout().same("x", 2048).ksm_fork(2048, 8).unique(128)
                        .forked_unmerged(128, 8).expected(), what="8 children merged")
        parent = TimedCommand(ksm.runner, ksm_guest.binary, "exit of the parent", "waitexit",
                              str(q.pid))
        parent.wait_for_line("armed")
        q.begin(f"kidsexitwhen {ksm_file('run')} eq {RUN_UNMERGE} 20000")
        write = timed_ksm_write(ksm.runner, ksm_guest.binary, "run", RUN_UNMERGE)
        got = q.finish(80).fields
        q.children_pids = []
        q.exit()  # the parent, right after its children
        rec = RaceRecord("children and parent exit during run=2")
        run2 = rec.add(write_interval(write, "run", RUN_UNMERGE, timeout=300))
        ts, reaped = ([int(x) for x in got[k].split(",")] for k in ("t", "reaped"))
        rec.add(Interval("children's exits (saw run=2 .. last reaped)", min(ts), max(reaped)))
        _, stamps = parent.wait(60)
        inside = sum(run2.t0 <= t and r <= run2.t1 for t, r in zip(ts, reaped))
        rec.facts.update({"children exited inside run=2": f"{inside}/8",
                          "parent's exit inside": run2.contains(int(stamps["t"]))})
        assert got["status"] == ",".join(["0"] * 8), f"children's exit statuses: {got}"
        if not inside:
            raise RaceNotExercised(f"no child's exit lay inside run=2 ({rec.summary()})")
        rec.exercised()
        # Nothing merged is left. Stable nodes may be: remove_all_stable_nodes() at the end
        # of run=2 refuses to drop a node whose page an exiting mm still maps (between
        # ksm_exit() and exit_mmap()); the next run=2, with the exits done, must remove every
        # one of them.
        snap = ksm.assert_counts(ALL_GONE, f"after exits during run=2 ({rec.summary()})")
        print(f"stable nodes left by run=2 racing the exits: chains="
              f"{snap['stable_node_chains']} dups={snap['stable_node_dups']}")
        ksm.unmerge_all()
        ksm.assert_counts(ZERO_COUNTS, "after a second run=2, the exits done")
        return rec

    exercise_race(request.node, "exits during run=2", unmerge)


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
