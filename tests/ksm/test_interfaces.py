"""The KSM interfaces users read and call (issue 10): per-process ``/proc/PID/ksm_stat`` and
``ksm_merging_pages``, the global ``general_profit``/``ksm_zero_pages``, ``prctl
(PR_SET_MEMORY_MERGE)``, and what a memory cgroup is charged for merged pages.

What each kernel has (checked, never assumed): 6.1 has ``/proc/PID/ksm_merging_pages`` and
``ksm_stat`` with ``ksm_rmap_items`` only (fs/proc/base.c); ``general_profit``,
``ksm_process_profit``, ``ksm_merging_pages`` inside ksm_stat and PR_SET_MEMORY_MERGE came in
6.4, ``ksm_zero_pages`` in 6.10. What a kernel lacks is skipped with the reason, or (for one
line of ksm_stat) not checked.

Exact rules (mm/ksm.c): a process's ``ksm_rmap_items`` counts the rmap items ksmd made for its
mergeable pages (one per page scanned, dropped when the page leaves a mergeable VMA, at run=2
and at exit); ``ksm_merging_pages`` the ones in the stable tree (pages mapping a KSM page);
``general_profit = (pages_sharing + ksm_zero_pages) * PAGE_SIZE - rmap_items *
sizeof(ksm_rmap_item)`` and per process ``ksm_process_profit = (ksm_merging_pages +
ksm_zero_pages) * PAGE_SIZE - ksm_rmap_items * sizeof(ksm_rmap_item)``, 64 bytes on 64-bit
(Documentation/admin-guide/mm/ksm.rst, "Monitoring KSM profit").

Memory cgroups (Documentation/admin-guide/cgroup-v2.rst, "Memory Ownership": a page is charged
to the cgroup that instantiated it until it is freed): merging keeps one page, the KSM page,
charged to the cgroup of the process whose page it was, and frees the duplicates, so each other
cgroup is uncharged for every page it merged although its processes still map the content;
unmerging (a COW fault in the process's mm, mem_cgroup_charge(..., vma->vm_mm)) charges each
copy to the process's own cgroup again and frees the KSM page.
"""
from __future__ import annotations

import time

import pytest

from harness import kernel_bugs
from harness.ksm import ALL_GONE, RUN_UNMERGE, ZERO_COUNTS, Ksm, KsmSnapshot, Layout
from harness.workloads import WorkloadError

PAGE = 4096
RMAP_ITEM_BYTES = 64  # sizeof(struct ksm_rmap_item) on 64-bit (ksm.rst)


def rmap_items(snap: KsmSnapshot) -> int:
    return sum(snap[n] for n in ("pages_shared", "pages_sharing", "pages_unshared",
                                 "pages_volatile"))


def check_global(snap: KsmSnapshot, zero_pages: int = 0) -> None:
    """general_profit and ksm_zero_pages, where this kernel has them."""
    if "ksm_zero_pages" in snap:
        assert snap["ksm_zero_pages"] == zero_pages, snap.values
    if "general_profit" in snap:
        want = ((snap["pages_sharing"] + zero_pages) * PAGE
                - rmap_items(snap) * RMAP_ITEM_BYTES)
        assert snap["general_profit"] == want, \
            f"general_profit is {snap['general_profit']}, expected {want} ({snap.summary()})"


def check_process(ksm: Ksm, pid: int, rmap: int, merging: int, what: str) -> dict[str, int]:
    """Every per-process counter this kernel has, exactly."""
    stat = ksm.process_stat(pid)
    want = {"ksm_rmap_items": rmap, "ksm_merging_pages": merging, "ksm_zero_pages": 0,
            "ksm_process_profit": merging * PAGE - rmap * RMAP_ITEM_BYTES}
    wrong = {k: (stat[k], v) for k, v in want.items() if k in stat and stat[k] != v}
    assert not wrong, f"/proc/{pid} KSM counters {what}: " + "; ".join(
        f"{k} is {got}, expected {v}" for k, (got, v) in wrong.items()) + f" (all: {stat})"
    return stat


def test_ksm_stat_exact_through_cow_fork_unmerge_and_exit(  # type: ignore[no-untyped-def]
        ksm: Ksm, workload, ksm_guest) -> None:
    p = workload(name="P")
    p.alloc("s", 256, "same:121", thp=False)
    p.alloc("u", 64, "unique:121", thp=False)
    for region in ("s", "u"):
        p.madvise(region, "merge")
    ksm.set("run", 1)
    check_global(ksm.wait_counts(Layout().same("s", 256).unique(64).expected(),
                                 what="P merged"))
    stat = check_process(ksm, p.pid, 320, 256, "after merging")
    if "ksm_rmap_items" not in stat:
        pytest.skip(f"this kernel has no /proc/PID/ksm_stat ksm_rmap_items (has: {stat})")

    # COW: 10 merged pages rewritten, each with unique content.
    for page in range(0, 100, 10):
        p.write("s", page)
    alone = Layout().same("s", 246).unique(74)
    check_global(ksm.wait_counts(alone.expected(), what="after 10 COW breaks"))
    check_process(ksm, p.pid, 320, 246, "after 10 COW breaks")

    # A child forked after merging maps the KSM pages again; the parent's counts don't move.
    (kid,) = p.fork(1)
    check_global(ksm.wait_counts(Layout().same("s", 246).ksm_fork(246).unique(74)
                                 .forked_unmerged(74).expected(), what="child scanned"))
    check_process(ksm, p.pid, 320, 246, "after a fork")
    bug = kernel_bugs.affected("ksm-fork-counters", ksm_guest.vm.spec.kernel.release,
                               ksm_guest.banner)
    if bug is None:
        check_process(ksm, kid, 320, 246, "of the child")
    else:  # test_forked_child_has_its_own_ksm_stat is its strict expected failure
        print(f"child's counters not checked: {bug.describe()}")
    assert p.children_exit() == [0]
    check_global(ksm.wait_counts(alone.expected(), what="after the child exited"))
    check_process(ksm, p.pid, 320, 246, "after the child exited")

    # MADV_UNMERGEABLE: the region's rmap items go at ksmd's next pass.
    p.madvise("s", "unmerge")
    check_global(ksm.wait_counts(Layout().unique(64).expected(), what="after unmergeable"))
    check_process(ksm, p.pid, 64, 0, "after MADV_UNMERGEABLE of s")
    p.verify()

    # run=2 drops every rmap item; run=1 scans u again; exit leaves nothing.
    ksm.set("run", RUN_UNMERGE, timeout=300)
    check_global(ksm.assert_counts(ZERO_COUNTS, "after run=2"))
    check_process(ksm, p.pid, 0, 0, "after run=2")
    ksm.set("run", 1)
    ksm.wait_counts(Layout().unique(64).expected(), what="rescanned after run=2")
    check_process(ksm, p.pid, 64, 0, "rescanned after run=2")
    p.verify()
    p.exit()
    check_global(ksm.wait_counts(ALL_GONE, pages=1, min_full_scans=0, what="after P exited"))


def test_prctl_memory_merge_across_fork_and_exec(ksm: Ksm, workload) -> None:  # type: ignore[no-untyped-def]
    """PR_SET_MEMORY_MERGE (6.4+) makes every anonymous VMA of the process mergeable without
    madvise; forked children inherit it (6.4+); PR_SET_MEMORY_MERGE 0 unmerges at once."""
    w = workload()
    try:
        w.command("prctl get")
    except WorkloadError as e:
        if "EINVAL" in e.reply:
            pytest.skip("this kernel has no PR_SET_MEMORY_MERGE (6.4+): PR_GET_MEMORY_MERGE "
                        "gives EINVAL")
        raise
    assert w.command("prctl set").fields["merge"] == "1"
    w.alloc("s", 128, "same:122", thp=False)
    assert w.smaps("s")["mergeable"] >= 1, w.smaps("s")
    w.fork(1)
    assert w.children("prctl get").fields["merge"] == "1", "the fork lost PR_SET_MEMORY_MERGE"
    assert w.children_exit() == [0]
    spawned = w.command("prctl spawn").number("pid")
    stat = ksm.process_stat(spawned)
    if "ksm_merge_any" in stat:  # reported since the exec case is kept (6.7+)
        assert stat["ksm_merge_any"] == 1, f"exec lost PR_SET_MEMORY_MERGE: {stat}"
    else:
        print(f"exec not checked: /proc/{spawned}/ksm_stat has no ksm_merge_any ({stat})")
    ksm.set("run", 1)
    ksm.wait_counts(Layout().same("s", 128).expected(), what="merged without madvise")
    assert w.command("prctl clear").fields["merge"] == "0"
    assert (w.pageflags("s")["ksm"], w.smaps("s")["mergeable"]) == (0, 0)
    ksm.wait_counts(ALL_GONE, pages=1, min_full_scans=0, what="after PR_SET_MEMORY_MERGE 0")
    w.verify()


def anon_bytes(group) -> int:  # type: ignore[no-untyped-def]
    return group.keyed("memory.stat")["anon"]


def wait_anon(groups, want: list[int], what: str, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    """memory.stat is flushed when enough changed or every 2 s (mm/memcontrol.c FLUSH_TIME):
    poll until each group's anon is exactly as expected, or fail with the last values."""
    deadline = time.monotonic() + timeout
    while True:
        got = [anon_bytes(g) for g in groups]
        if got == want:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"memory.stat anon {what}: {got}, expected {want} (bytes; "
                        f"differences {[g - w for g, w in zip(got, want)]})", pytrace=False)
        time.sleep(0.25)


def test_memcg_charges_of_merged_pages(ksm: Ksm, workload, memcg, ksm_guest) -> None:  # type: ignore[no-untyped-def]
    ksm.set("max_page_sharing", 1024)  # one KSM page for all 1024 (no chain of dups)
    groups = [memcg("chargeA"), memcg("chargeB")]
    procs = [workload(name=n, cgroup=g) for n, g in zip("AB", groups)]
    for w in procs:
        w.alloc("s", 512, "same:123", thp=False)
    inode = {int(ksm_guest.sh.run(f"stat -c %i {g.path}", check=True).stdout): i
             for i, g in enumerate(groups)}
    for i, w in enumerate(procs):
        owners = w.command("kpcg s").fields["cgroups"]
        assert owners in (f"{ino}:512" for ino, j in inode.items() if j == i), \
            f"{w.name}'s pages not all charged to its own cgroup: {owners} (inodes {inode})"
    before = [anon_bytes(g) for g in groups]
    for w in procs:
        w.madvise("s", "merge")
    ksm.set("run", 1)
    ksm.wait_counts(Layout().same("s", 1024).expected(max_page_sharing=1024),
                    what="A's and B's pages merged")
    charged = {w.name: w.command("kpcg s").fields["cgroups"] for w in procs}
    assert len(set(charged.values())) == 1, f"A and B map pages of different cgroups: {charged}"
    ino, pages = map(int, charged["A"].split(":"))
    assert pages == 512 and ino in inode, charged
    owner = inode[ino]
    want = [b - (511 if i == owner else 512) * PAGE for i, b in enumerate(before)]
    wait_anon(groups, want, f"after merging (the KSM page charged to {'AB'[owner]})")
    for w in procs:
        w.verify()
    # Unmerged: each copy is charged to its process's own cgroup again.
    ksm.set("run", RUN_UNMERGE, timeout=300)
    wait_anon(groups, before, "after run=2")
    for i, w in enumerate(procs):
        assert w.command("kpcg s").fields["cgroups"] in (
            f"{ino}:512" for ino, j in inode.items() if j == i)
        w.verify()
