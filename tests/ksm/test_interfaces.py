"""Scenario 11: the KSM interfaces users have now, comparator edges, and the madvise ABI
(issue 10).

Per-process ``/proc/PID/ksm_stat`` and ``ksm_merging_pages``, the global ``general_profit``/``ksm_zero_pages``, ``prctl
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
ksm_zero_pages) * PAGE_SIZE - ksm_rmap_items * sizeof(ksm_rmap_item)``
(Documentation/admin-guide/mm/ksm.rst, "Monitoring KSM profit"; the size is read from
/sys/kernel/slab/ksm_rmap_item/object_size, 64 bytes on x86_64).

Memory cgroups (Documentation/admin-guide/cgroup-v2.rst, "Memory Ownership": a page is charged
to the cgroup that instantiated it until it is freed): merging keeps one page, the KSM page,
charged to the cgroup of the process whose page it was, and frees the duplicates, so each other
cgroup is uncharged for every page it merged although its processes still map the content;
unmerging (a COW fault in the process's mm, mem_cgroup_charge(..., vma->vm_mm)) charges each
copy to the process's own cgroup again and frees the KSM page.

- Pages that differ from their neighbours in exactly one byte, at offset 0, at 4095 and at a
  word boundary in the middle (2047 | 2048), among identical pages: KSM compares whole pages
  (memcmp_pages, and the checksum it uses to skip volatile pages), so each variant merges only
  with its exact twins, a lone variant stays unshared, and a page that becomes identical again
  (or becomes a variant) moves to that tree on the next scans.
- ``madvise(MADV_MERGEABLE)`` as Documentation/admin-guide/mm/ksm.rst and mm/ksm.c's
  ksm_madvise() define it (6.1): a range with an unmapped gap gives ENOMEM "though working on
  the intervening mapped areas" (madvise_walk_vmas); MAP_SHARED, hugetlb (VM_SHARED,
  VM_MAYSHARE, VM_HUGETLB ...) are "just ignore the advice": 0, no VM_MERGEABLE, never merged.
- MADV_COLLAPSE (6.1 has it) over merged ranges: EINVAL, EAGAIN or a collapse that ksmd
  undoes, depending on how the range maps KSM pages (see the test).
- A userfaultfd-registered (MISSING mode) range: ksm_madvise() does not look at VM_UFFD_*, so
  its present pages merge, and unmerging them (COW faults on present pages) never involves the
  userfaultfd.
"""

from __future__ import annotations

import re
import time

import pytest

from harness import kernel_bugs
from harness.guest_handle import Guest
from harness.guest_mm import MemCgroup
from harness.ksm import ALL_GONE, RUN_UNMERGE, ZERO_COUNTS, Ksm, KsmSnapshot, Layout
from harness.ksm.prepared_guest import KsmGuest
from harness.workloads import Workload, WorkloadError
from tests.ksm.fixture_types import MemcgFactory, WorkloadFactory

PAGE = 4096
RMAP_ITEM_BYTES = 64  # sizeof(struct ksm_rmap_item) on 64-bit kernels up to 6.12 at least


def rmap_items(snap: KsmSnapshot) -> int:
    return sum(snap[n] for n in ("pages_shared", "pages_sharing", "pages_unshared",
                                 "pages_volatile"))


def check_global(snap: KsmSnapshot, item: int, zero_pages: int = 0) -> None:
    """general_profit and ksm_zero_pages, where this kernel has them."""
    if "ksm_zero_pages" in snap:
        assert snap["ksm_zero_pages"] == zero_pages, snap.values
    if "general_profit" in snap:
        want = ((snap["pages_sharing"] + zero_pages) * PAGE
                - rmap_items(snap) * item)
        assert snap["general_profit"] == want, \
            f"general_profit is {snap['general_profit']}, expected {want} ({snap.summary()})"


def check_process(ksm: Ksm, pid: int, rmap: int, merging: int, what: str,
                  item: int) -> dict[str, int]:
    """Every per-process counter this kernel has, exactly."""
    stat = ksm.process_stat(pid)
    want = {"ksm_rmap_items": rmap, "ksm_merging_pages": merging, "ksm_zero_pages": 0,
            "ksm_process_profit": merging * PAGE - rmap * item}
    wrong = {k: (stat[k], v) for k, v in want.items() if k in stat and stat[k] != v}
    assert not wrong, f"/proc/{pid} KSM counters {what}: " + "; ".join(
        f"{k} is {got}, expected {v}" for k, (got, v) in wrong.items()) + f" (all: {stat})"
    return stat


def check_merge_flags(ksm: Ksm, pid: int, merge_any: bool, mergeable: bool,
                      what: str) -> bool:
    """ksm_stat's ksm_merge_any (PR_SET_MEMORY_MERGE set: MMF_VM_MERGE_ANY) and ksm_mergeable
    (some VMA is VM_MERGEABLE: ksm_process_mergeable()), where this kernel prints them (7.2
    does, 6.12 does not); False when it does not."""
    stat = ksm.process_stat(pid)
    if "ksm_merge_any" not in stat or "ksm_mergeable" not in stat:
        return False
    got = (bool(stat["ksm_merge_any"]), bool(stat["ksm_mergeable"]))
    assert got == (merge_any, mergeable), (
        f"/proc/{pid}/ksm_stat {what}: ksm_merge_any {got[0]}, ksm_mergeable {got[1]}; "
        f"expected {merge_any}, {mergeable} (all: {stat})")
    return True


def rmap_item_bytes(ksm_guest: KsmGuest) -> int:
    """sizeof(struct ksm_rmap_item): the slab's object size (slab_nomerge keeps the cache)."""
    r = ksm_guest.sh.run("read -r n < /sys/kernel/slab/ksm_rmap_item/object_size && echo $n")
    return int(r.stdout) if r.ok and r.stdout.strip().isdigit() else RMAP_ITEM_BYTES


def test_ksm_stat_exact_through_cow_fork_unmerge_and_exit(
        ksm: Ksm, workload: WorkloadFactory, ksm_guest: KsmGuest, vm: Guest) -> None:
    item = rmap_item_bytes(ksm_guest)
    p = workload(name="P")
    assert p.pid is not None  # started
    p.alloc("s", 256, "same:121", thp=False)
    p.alloc("u", 64, "unique:121", thp=False)
    check_merge_flags(ksm, p.pid, False, False, "before any madvise")
    for region in ("s", "u"):
        p.madvise(region, "merge")
    check_merge_flags(ksm, p.pid, False, True, "after MADV_MERGEABLE")
    ksm.set("run", 1)
    check_global(ksm.wait_counts(Layout().same("s", 256).unique(64).expected(),
                                 what="P merged"), item)
    stat = check_process(ksm, p.pid, 320, 256, "after merging", item)
    if "ksm_rmap_items" not in stat:
        pytest.skip(f"this kernel has no /proc/PID/ksm_stat ksm_rmap_items (has: {stat})")

    # COW: 10 merged pages rewritten, each with unique content.
    for page in range(0, 100, 10):
        p.write("s", page)
    # A child forked now maps the KSM pages again; the parent's counts don't move.
    (kid,) = p.fork(1)
    check_global(ksm.wait_counts(Layout().same("s", 246).ksm_fork(246).unique(74)
                                 .forked_unmerged(74).expected(),
                                 what="10 COW breaks, child scanned"), item)
    check_process(ksm, p.pid, 320, 246, "after 10 COW breaks and a fork", item)
    bug = kernel_bugs.affected("ksm-fork-counters", vm.spec.kernel.release,
                               ksm_guest.banner)
    if bug is None:
        check_process(ksm, kid, 320, 246, "of the child", item)
    else:  # test_forked_child_has_its_own_ksm_stat is its strict expected failure
        print(f"child's counters not checked: {bug.describe()}")
    assert p.children_exit() == [0]

    # MADV_UNMERGEABLE: the region's rmap items go at ksmd's next pass.
    p.madvise("s", "unmerge")
    check_global(ksm.wait_counts(Layout().unique(64).expected(),
                                 what="child exited, s unmergeable"), item)
    check_process(ksm, p.pid, 64, 0, "after MADV_UNMERGEABLE of s", item)
    check_merge_flags(ksm, p.pid, False, True, "with u still mergeable")
    p.madvise("u", "unmerge")
    check_merge_flags(ksm, p.pid, False, False, "after MADV_UNMERGEABLE of both")
    # no mergeable VMA left: ksmd's next pass drops P's mm from its list and then idles
    check_global(ksm.wait_counts(ALL_GONE, pages=1, min_full_scans=0,
                                 what="s and u unmergeable"), item)
    check_process(ksm, p.pid, 0, 0, "after MADV_UNMERGEABLE of u", item)
    p.verify()

    # run=2 drops every rmap item; exit leaves nothing.
    ksm.set("run", RUN_UNMERGE, timeout=300)
    check_global(ksm.assert_counts(ZERO_COUNTS, "after run=2"), item)
    check_process(ksm, p.pid, 0, 0, "after run=2", item)
    ksm.set("run", 1)
    p.exit()
    check_global(ksm.wait_counts(ALL_GONE, pages=1, min_full_scans=0, what="after P exited"),
                 item)


def test_prctl_memory_merge_across_fork_and_exec(
        ksm_guest: KsmGuest, vm: Guest, request: pytest.FixtureRequest) -> None:
    """PR_SET_MEMORY_MERGE (6.4+) makes every anonymous VMA of the process mergeable without
    madvise; forked children inherit it (6.4+); PR_SET_MEMORY_MERGE 0 unmerges at once.
    Before 6.4 (the upstream version, from the banner) it skips before the KSM fixtures'
    set-up; from 6.4 the kernel's own answer decides (a backport would be tested)."""
    version = kernel_bugs.kernel_version(vm.spec.kernel.release, ksm_guest.banner)
    if version is not None and version < (6, 4, 0):
        pytest.skip(f"PR_SET_MEMORY_MERGE came in 6.4; this kernel is "
                    f"{'.'.join(map(str, version))}")
    ksm: Ksm = request.getfixturevalue("ksm")
    w = request.getfixturevalue("workload")()
    try:
        w.command("prctl get")
    except WorkloadError as e:
        if "EINVAL" in e.reply:
            pytest.skip("this kernel has no PR_SET_MEMORY_MERGE (6.4+): PR_GET_MEMORY_MERGE "
                        "gives EINVAL")
        raise
    # Every anonymous VMA of the process becomes mergeable (heap, stack...): zero-filled ones
    # go to the zero page (use_zero_pages=1), so only region s can make a KSM page.
    ksm.set("use_zero_pages", 1)
    assert w.pid is not None
    has_flags = check_merge_flags(ksm, w.pid, False, False, "before PR_SET_MEMORY_MERGE")
    assert w.command("prctl set").fields["merge"] == "1"
    check_merge_flags(ksm, w.pid, True, True, "after PR_SET_MEMORY_MERGE 1")
    w.alloc("s", 128, "same:122", thp=False)
    assert w.smaps("s")["mergeable"] >= 1, \
        f"PR_SET_MEMORY_MERGE did not make a new anonymous VMA mergeable: {w.smaps('s')}"
    w.fork(1)
    assert w.children("prctl get").fields["merge"] == "1", "the fork lost PR_SET_MEMORY_MERGE"
    assert w.children_exit() == [0]
    # exec keeps it since 6.7 (3c6f33b7273a, "mm/ksm: support fork/exec for prctl"): the new
    # program's anonymous VMAs are mergeable ("mg" in smaps VmFlags)
    spawned = w.command("prctl spawn").number("pid")
    mg = int(ksm_guest.sh.run(f"grep -c '^VmFlags:.* mg' /proc/{spawned}/smaps").stdout or 0)
    ksm_guest.sh.run(f"kill {spawned}")
    if version is None or version >= (6, 7, 0):
        assert mg > 0, f"exec lost PR_SET_MEMORY_MERGE: no mergeable VMA in /proc/{spawned}"
    else:
        print(f"exec before 6.7: {mg} mergeable VMAs after exec (not asserted)")
    ksm.set("run", 1)
    ksm.wait_merged(lambda snap: (snap["pages_shared"], snap["pages_sharing"]) == (1, 127),
                    pages=1024, exact=True, expect="s merged without madvise")
    w.verify()
    assert w.command("prctl clear").fields["merge"] == "0"
    assert w.smaps("s")["mergeable"] == 0, w.smaps("s")
    check_merge_flags(ksm, w.pid, False, False, "after PR_SET_MEMORY_MERGE 0")
    if not has_flags:
        print("ksm_stat has no ksm_merge_any/ksm_mergeable on this kernel (not checked)")
    ksm.wait_counts(ALL_GONE, pages=1, min_full_scans=0, what="after PR_SET_MEMORY_MERGE 0")
    w.verify()


def anon_bytes(group: MemCgroup) -> int:
    return group.keyed("memory.stat")["anon"]


def wait_anon(groups: list[MemCgroup], want: list[int], what: str, timeout: float = 20.0) -> None:
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


def test_memcg_charges_of_merged_pages(ksm: Ksm, workload: WorkloadFactory, memcg: MemcgFactory,
                                       ksm_guest: KsmGuest) -> None:
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


# (offset, what it is): the first byte, the last byte of a word and the first of the next one
# in the middle, the last byte of the page.
EDGES = ((0, "first byte"), (2047, "word end"), (2048, "word start"), (4095, "last byte"))


def poke(w: Workload, region: str, page: int, offset: int, xor: int) -> None:
    w.command(f"poke {region} {page} {offset} {xor}")


def test_pages_one_byte_apart_merge_only_with_their_twins(ksm: Ksm, workload: WorkloadFactory
                                                          ) -> None:
    a, b = workload(name="A"), workload(name="B")
    for w in (a, b):
        w.alloc("s", 32, "same:111", thp=False)
    for i, (off, _) in enumerate(EDGES):
        poke(a, "s", i, off, 0x01)      # a twin in B (below): pairs merge
        poke(b, "s", i, off, 0x01)
        poke(a, "s", 4 + i, off, 0x80)  # one bit off the pair's byte: lone, unshared
    for w in (a, b):
        w.madvise("s", "merge")
    ksm.set("run", 1)
    layout = Layout().same("base", 24 + 28).unique(len(EDGES))
    for off, _ in EDGES:
        layout.same(f"x01@{off}", 2)
    assert layout.expected() == {"pages_shared": 5, "pages_sharing": 55, "pages_unshared": 4,
                                 "pages_volatile": 0, "stable_node_chains": 0,
                                 "stable_node_dups": 0}
    ksm.wait_counts(layout.expected(), what="one-byte variants among identical pages")
    fa, fb = a.pageflags("s"), b.pageflags("s")
    assert (fa["ksm"], fa["ksmpfns"], fb["ksm"], fb["ksmpfns"]) == (28, 5, 32, 5), (fa, fb)
    assert a.pageflags("s", 4, 4)["ksm"] == 0, "a lone one-byte variant was merged"
    assert a.verify() == 32 and b.verify() == 32

    # The lone variants become identical again; four merged base pages become variants.
    for i, (off, _) in enumerate(EDGES):
        poke(a, "s", 4 + i, off, 0x80)
        poke(a, "s", 8 + i, off, 0x01)
    layout = Layout().same("base", 52)
    for off, _ in EDGES:
        layout.same(f"x01@{off}", 3)
    ksm.wait_counts(layout.expected(), what="variants restored and new variants made")
    assert a.pageflags("s", 8, 4)["ksmpfns"] == 4, a.pageflags("s", 8, 4)
    assert (a.pageflags("s")["ksm"], b.pageflags("s")["ksm"]) == (32, 32)
    assert a.verify() == 32 and b.verify() == 32


def test_madvise_mergeable_over_a_hole_on_shared_and_hugetlb_memory(
        ksm: Ksm, workload: WorkloadFactory, ksm_guest: KsmGuest) -> None:
    sh = ksm_guest.sh
    path = "/proc/sys/vm/nr_hugepages"
    if sh.run(f"test -w {path}").status != 0:
        pytest.skip(f"the guest kernel has no hugetlb ({path} missing)")
    saved = int(sh.run(f"cat {path}", check=True).stdout)
    try:
        got = int(sh.run(f"echo {saved + 1} > {path}; cat {path}", check=True).stdout)
        if got <= saved:
            pytest.skip(f"no 2 MiB huge page could be reserved ({path} reads {got})")
        check_madvise_abi(ksm, workload())
    finally:
        sh.run(f"echo {saved} > {path}")


def check_madvise_abi(ksm: Ksm, w: Workload) -> None:
    w.alloc("h", 64, "same:112", thp=False)
    w.command("hole h 32")
    with pytest.raises(WorkloadError) as gap:
        w.madvise("h", "merge")
    assert "ENOMEM" in gap.value.reply, gap.value.reply
    assert (w.smaps("h")["vmas"], w.smaps("h")["mergeable"]) == (2, 2), \
        f"MADV_MERGEABLE over a gap must still mark the mapped parts: {w.smaps('h')}"
    # 0 and nothing else: VM_SHARED / VM_HUGETLB are "just ignore the advice"
    w.alloc("sh", 64, "same:112", shared=True)
    w.command("hugetlb ht 512 same:112")
    for region in ("sh", "ht"):
        w.madvise(region, "merge")
        assert w.smaps(region)["mergeable"] == 0, (region, w.smaps(region))
    ksm.set("run", 1)
    ksm.wait_counts(Layout().same("same:112", 63).expected(), pages=640,
                    what="both sides of the hole merged, shared and hugetlb twins ignored")
    assert w.pageflags("sh")["ksm"] == 0
    w.verify()
    # MADV_UNMERGEABLE over the gap: ENOMEM again, and the mapped parts unmerged at once.
    with pytest.raises(WorkloadError) as gap:
        w.madvise("h", "unmerge")
    assert "ENOMEM" in gap.value.reply, gap.value.reply
    assert (w.smaps("h")["mergeable"], w.pageflags("h")["ksm"]) == (0, 0)
    # (no mergeable VMA left: ksmd drops the mm after one pass and stops counting full scans)
    ksm.wait_counts(ALL_GONE, pages=1, min_full_scans=0,
                    what="after MADV_UNMERGEABLE over the hole")
    w.verify()
    w.free("ht")


def collapse(w: Workload, region: str) -> str:
    """MADV_COLLAPSE of the region: "" when it succeeded, else the errno name."""
    try:
        w.command(f"collapse {region}", 120)
    except WorkloadError as e:
        m = re.search(r"\((E[A-Z]+)\)", e.reply)
        if m is None:
            raise
        if m.group(1) == "ENOMEM":
            pytest.skip(f"MADV_COLLAPSE could not allocate a huge page: {e.reply}")
        return m.group(1)
    return ""


def test_madvise_collapse_over_merged_pages(ksm: Ksm, workload: WorkloadFactory) -> None:
    """What MADV_COLLAPSE does with KSM pages (mm/khugepaged.c), three 2 MiB ranges:
    - every PTE maps a KSM page (write-protected): nothing changes; 6.1 and 6.12 refuse a
      range without a writable PTE (SCAN_PAGE_RO, EINVAL); 7.2's
      __collapse_huge_page_isolate() has no such check and meets, at the second PTE, the
      KSM page its first PTE locked (SCAN_PAGE_LOCK, EAGAIN), as in the next range;
    - one KSM page mapped by 256 PTEs of the range, beside writable pages: isolating its
      second PTE finds the page locked by the first (SCAN_PAGE_LOCK), EAGAIN, nothing
      changes;
    - one PTE maps a KSM page, the others writable: the collapse copies it into a new THP
      (MADV_COLLAPSE ignores max_ptes_shared); ksmd then splits the THP to merge the page
      back, and the counters end where they were."""
    ksm.set("max_page_sharing", 1024)  # one stable node, no chain: re-merging is exact
    w = workload()
    w.alloc("all", 512, "same:114", thp=True)
    w.alloc("half", 512, "half:114", thp=True)   # 256 same:114, 256 unique
    w.alloc("one", 512, "unique:116", thp=True)
    w.write("one", 0, same_seed=114)
    for region in ("all", "half", "one"):
        w.madvise(region, "merge")
    ksm.set("run", 1)
    merged = Layout().same("same:114", 512 + 256 + 1).unique(256 + 511) \
        .expected(max_page_sharing=1024)
    ksm.wait_counts(merged, what="three 2 MiB ranges merged")
    assert [w.pageflags(r)["ksm"] for r in ("all", "half", "one")] == [512, 256, 1]
    ksm.set("run", 0)
    assert collapse(w, "all") in ("EINVAL", "EAGAIN") and collapse(w, "half") == "EAGAIN"
    assert [w.pageflags(r)["ksm"] for r in ("all", "half")] == [512, 256]
    assert collapse(w, "one") == ""
    flags = w.pageflags("one")
    assert (flags["thp"], flags["ksm"]) == (512, 0), f"not collapsed into one THP: {flags}"
    w.verify()
    ksm.set("run", 1)
    ksm.wait_counts(merged, what="after MADV_COLLAPSE, ksmd split the THP and merged again")
    flags = w.pageflags("one")
    assert (flags["thp"], flags["ksm"]) == (0, 1), flags
    w.verify()


def test_userfaultfd_registered_range_merges(ksm: Ksm, workload: WorkloadFactory) -> None:
    w = workload()
    w.alloc("u", 256, "same:115", thp=False)
    try:
        w.command("uffd u")
    except WorkloadError as e:
        if "ENOSYS" in e.reply:
            pytest.skip("the guest kernel has no userfaultfd (CONFIG_USERFAULTFD is off)")
        raise
    w.madvise("u", "merge")
    ksm.set("run", 1)
    ksm.wait_counts(Layout().same("same:115", 256).expected(), what="uffd-registered pages")
    w.verify()
    w.madvise("u", "unmerge")  # COW faults on present pages: no userfault, no hang
    assert w.pageflags("u")["ksm"] == 0
    ksm.wait_counts(ALL_GONE, pages=1, min_full_scans=0,
                    what="after MADV_UNMERGEABLE of the uffd range")
    w.verify()
