"""Scenarios 4 and 5: KSM pages in swap (a virtio swap disk and zram), swapoff racing run=2,
compaction moving zram's non-LRU pages while KSM merges, and THP split by KSM.

Pages reach swap through a memory cgroup's memory.reclaim (memory.max squeezes KSM pages
badly: they are charged once). While they are out, ksmd drops their rmap items; faulted back
(copied when the KSM page's anon_vma differs: vmstat ksm_swpin_copy) they merge again.

Seeds 000 and 003: a KSM page faulted back from swapcache after run=2's unmerge passed it, and
swapoff's unuse_pte() bringing a KSM page back from swapcache while run=2 unmerges, must both
get a private copy: after run=2, no page anywhere may map a KSM page. Both scenarios first put
KSM pages in swapcache (the disk, MADV_PAGEOUT; checked through pagemap and kpageflags) and
prove the overlap with guest timestamps, or end as "race not exercised" (a skip). Seed 001 (non-LRU movable pages, e.g.
zsmalloc's): compaction migrates zram's pages while KSM pages are swapped out, in and merged.

This module's guest has a 512 MiB raw disk with serial "swap" (found in /sys/block/*/serial).
"""
from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest

from harness import guest_mm
from harness.guest_handle import Guest
from harness.guest_mm import MemCgroup
from harness.ksm import RUN_UNMERGE, ZERO_COUNTS, Ksm, Layout
from harness.ksm.prepared_guest import KsmGuest
from harness.ksm.race import (
    RaceNotExercised,
    RaceRecord,
    swapoff_during_write,
    swapoff_write_intervals,
    timed_ksm_write,
    write_interval,
)
from harness.machine.vm import VMSpec
from harness.pytest_plugin.fixtures import VMPool
from harness.pytest_plugin.ksm_scenarios import exercise_race, skip_unless
from harness.workloads import Workload
from tests.ksm.fixture_types import MemcgFactory, ThpMode, WorkloadFactory

SWAP_DISK_MB = 512
# After reclaim only D's 2048 pages (one content, 8 full dups) are still in the trees; the
# stable nodes of the swapped KSM pages may linger (not counted in pages_*).
ALL_BUT_D = {"pages_shared": 8, "pages_sharing": 2040, "pages_unshared": 0,
             "pages_volatile": 0}


@pytest.fixture(scope="module")
def vm(vm_pool: VMPool, vm_spec: VMSpec) -> Iterator[Guest]:
    """This module's guest: the default topology plus a swap disk."""
    topology = vm_spec.topology.with_disk("swap", SWAP_DISK_MB)
    guest = Guest(lambda: vm_pool.boot(topology=topology, name="test_swap"), vm_pool.stop)
    yield guest
    guest.close()


@pytest.fixture
def swap_disk(ksm_guest: KsmGuest) -> Iterator[str]:
    sh = ksm_guest.sh
    with skip_unless():
        dev = guest_mm.disk_by_serial(sh, "swap")
    guest_mm.swapon(sh, dev, priority=10)
    generation = ksm_guest.current
    yield dev
    if not ksm_guest.gone_since(generation):  # else the swap went with its VM
        guest_mm.swapoff(sh, dev)


@pytest.fixture(params=["disk", "zram"])
def swap_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def swap_device(swap_kind: str, request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("swap_disk" if swap_kind == "disk" else "zram_swap"))


def populate(workload: WorkloadFactory, group: MemCgroup
             ) -> tuple[tuple[Workload, Workload, Workload], Layout]:
    """A and B in the cgroup (to be swapped), D outside it (stays present, so run=2 has work
    while other pages come back from swap)."""
    a = workload(name="A", cgroup=group)
    b = workload(name="B", cgroup=group)
    d = workload(name="D")
    a.alloc("s", 1536, "same:81")
    a.alloc("u", 256, "unique:81")
    b.alloc("s", 1024, "same:81")
    b.alloc("h", 512, "half:83")
    d.alloc("s", 2048, "same:82")
    for w in (a, b, d):
        for region in w.regions:
            w.madvise(region, "merge")
    layout = (Layout().same("same:81", 2560).unique(256).same("same:83", 256).unique(256)
              .same("same:82", 2048))
    return (a, b, d), layout


def swapped_out(*regions: tuple[Workload, str]) -> int:
    return sum(w.pageflags(name)["swapped"] for w, name in regions)


def push_to_swap(group: MemCgroup, want: int, *regions: tuple[Workload, str], timeout: float = 60.0
                 ) -> int:
    """memory.reclaim until at least ``want`` pages of ``regions`` are swap entries (a disk
    under TCG writes slowly: one reclaim may give up with EAGAIN early)."""
    deadline = time.monotonic() + timeout
    while True:
        group.reclaim()
        out = swapped_out(*regions)
        if out >= want:
            return out
        assert time.monotonic() < deadline, \
            f"only {out} of {want} pages went to swap in {timeout:.0f}s"


def test_merged_pages_swap_out_and_back(ksm: Ksm, workload: WorkloadFactory, memcg: MemcgFactory,
                                        swap_device: str, ksm_guest: KsmGuest) -> None:
    sh = ksm_guest.sh
    group = memcg("swap")
    (a, b, d), layout = populate(workload, group)
    ksm.set("run", 1)
    ksm.wait_counts(layout.expected(), what="merged")
    before = guest_mm.vmstat(sh)
    out = push_to_swap(group, 3328, (a, "s"), (a, "u"), (b, "s"), (b, "h"))
    assert guest_mm.swaps(sh)[swap_device]["used_kb"] > 0
    # While they are out ksmd forgets them; D's pages stay merged.
    ksm.wait_counts(ALL_BUT_D, pages=2048, what="A's and B's pages in swap")
    for w in (a, b, d):  # faults everything back in
        w.verify()
    delta = guest_mm.vmstat_delta(before, guest_mm.vmstat(sh), "pswpout", "pswpin",
                                  "ksm_swpin_copy")
    assert delta["pswpout"] > 0 and delta["pswpin"] > 0, delta
    print(f"{swap_device}: {out} pages swapped out; vmstat {delta}")
    wait_accounted_then_exact(ksm, layout, "swap-in", (a, b, d))


def wait_accounted_then_exact(ksm: Ksm, layout: Layout, after: str, workloads: tuple[Workload, ...]
                              ) -> None:
    """After pages came back from swap, only the invariant is exact: every page is under KSM
    again and none is volatile. The dups of a max_page_sharing chain regroup in whatever
    order pages come back, and a KSM page faulted back from swapcache rejoins its KSM page
    past the limit (cmp_and_merge_page's max_page_sharing_bypass for a page that is already
    KSM): a chain may end with fewer, fuller dups, and a last page of its content may find
    no dup with room and no unstable twin, so it stays unshared. Seen: 17 dups + 1 unshared
    page, and 17 dups holding 2 more sharers, where a fresh merge gives 18 dups. Then, after
    a full unmerge of pages that went through swap (seed 000), a fresh merge must reach the
    exact counts again."""
    exp = layout.expected()
    total = sum(exp[k] for k in ("pages_shared", "pages_sharing", "pages_unshared"))
    ksm.wait_merged(lambda c: c["pages_volatile"] == 0 and total == sum(
        c[k] for k in ("pages_shared", "pages_sharing", "pages_unshared")), pages=total,
        expect=f"all {total} pages under KSM again after {after}", exact=True)
    for w in workloads:
        w.verify()
    ksm.unmerge_all()
    ksm.set("run", 1)
    ksm.wait_counts(exp, what=f"merged again after {after} and a full unmerge")
    for w in workloads:
        w.verify()



# KSM pages mapped once each (MADV_PAGEOUT skips a page mapped more than once), swapped out
# to the disk: its writeback is asynchronous, so each stays in swapcache, unmapped, still a
# KSM page (zram completes the write at once and the page is freed: never in swapcache).
PAIRS = 256
D_PAGES = 4096  # D: one content, present: run=2 has this much to break while the race runs


def ksm_pages_in_swapcache(ksm: Ksm, workload: WorkloadFactory, attempt: int,
                           fault_back: bool = False) -> tuple[Workload, Workload, dict[str, int]]:
    """A's region "k": PAIRS KSM pages, swapped out and still in swapcache (checked: A's
    pagemap shows PAIRS swap entries and no present page; kpageflags of the PFNs A mapped
    before shows KSM + SwapCache). D keeps D_PAGES of one content merged and present.
    fault_back: A touches its pages again first (the precondition forced off). A retried
    attempt starts from nothing (exercise_race stops an earlier attempt's workloads)."""
    a = workload(name=f"A{attempt}")
    b = workload(name=f"B{attempt}")
    d = workload(name=f"D{attempt}")
    for w in (a, b):
        w.alloc("k", PAIRS, f"unique:{85 + attempt}")  # A's page i == B's page i
        w.madvise("k", "merge")
    d.alloc("s", D_PAGES, "same:86")
    d.madvise("s", "merge")
    layout = Layout().same("same:86", D_PAGES)
    for i in range(PAIRS):
        layout.same(f"pair{i}", 2)
    ksm.set("run", 1)
    ksm.wait_counts(layout.expected(), what="A's and B's pages merged in pairs, D merged")
    assert a.kpf_save("k") == PAIRS
    ksm.set("run", 0)
    b.free("k")  # A's KSM pages are now mapped once each
    a.madvise("k", "pageout")
    if fault_back:
        a.verify("k")
    return a, d, swapcache_state(a)


def swapcache_state(a: Workload) -> dict[str, int]:
    """A/k's swap entries (pagemap) and what its saved PFNs are now (kpf; its repr names how
    their KSM pages were found)."""
    where = a.kpf("k")
    where["pagemap"] = a.pageflags("k")["swapped"]
    return where


def assert_in_swapcache(where: dict[str, int], when: str) -> None:
    """The precondition: every page of A/k is a swap entry and at least one of the KSM pages
    it mapped is still in swapcache."""
    if where["pagemap"] != PAIRS or where["ksm_swapcache"] < 1:
        raise RaceNotExercised(f"{when}: A/k has {where['pagemap']}/{PAIRS} swap entries and "
                               f"{where['ksm_swapcache']} KSM pages in swapcache ({where})")


# forced_off is a self-check of the race machinery (selftest only, see its docstring)
@pytest.mark.parametrize("forced_off", [
    pytest.param(False, id="race"),
    pytest.param(True, id="forced_off", marks=pytest.mark.selfcheck),
])
def test_ksm_page_in_swapcache_when_run2_passes(ksm: Ksm, workload: WorkloadFactory, swap_disk: str,
                                                ksm_guest: KsmGuest, request: pytest.FixtureRequest,
                                                forced_off: bool) -> None:
    """Seed 000, cause 3: a KSM page in swapcache while run=2 walks past it (run=2 breaks
    mapped KSM pages only; the stable node of a swapcache page goes at its end), then faulted
    back: it must come back as a private copy. Precondition, asserted before and after run=2:
    the KSM pages are unmapped in swapcache throughout. forced_off: A faults them back
    first, so the scenario must end as "race not exercised" (a skip), which that self-check
    expects: it passes on that skip and fails on anything else."""
    sh = ksm_guest.sh

    def attempt(i: int) -> RaceRecord:
        a, d, before = ksm_pages_in_swapcache(ksm, workload, i, fault_back=forced_off)
        assert_in_swapcache(before, "before run=2")
        swap_cached = guest_mm.meminfo_kb(sh, "SwapCached")
        vm_before = guest_mm.vmstat(sh)
        run2 = write_interval(timed_ksm_write(ksm_guest.sh, ksm_guest.binary, "run",
                                              RUN_UNMERGE), "run", RUN_UNMERGE)
        after = swapcache_state(a)
        rec = RaceRecord("KSM pages in swapcache while run=2 passes")
        rec.add(run2)
        rec.facts.update({"KSM pages in swapcache before": before["ksm_swapcache"],
                          "in swapcache after": after["swapcache"],
                          "SwapCached kB": swap_cached})
        if after["pagemap"] != PAIRS or after["swapcache"] < 1:
            raise RaceNotExercised(f"the pages left swapcache during run=2: {after} "
                                   f"({rec.summary()})")
        rec.exercised()
        # The outcome: nothing merged, and A's pages fault back as private copies.
        ksm.assert_counts(ZERO_COUNTS, f"after run=2 passed KSM pages in swapcache "
                                       f"({rec.summary()})")
        a.verify()
        flags = a.pageflags("k")
        copies = guest_mm.vmstat_delta(vm_before, guest_mm.vmstat(sh), "ksm_swpin_copy")
        rec.facts.update(copies)
        assert flags["present"] == PAIRS and flags["ksm"] == 0, \
            f"A maps KSM pages faulted back from swapcache after run=2: {flags} ({copies})"
        d.verify()
        assert d.pageflags("s")["ksm"] == 0
        return rec

    what = "a KSM page in swapcache during run=2"
    if not forced_off:
        exercise_race(request.node, what, attempt, attempts=2)
        return
    with pytest.raises(pytest.skip.Exception, match=f"^race not exercised: {re.escape(what)}: "):
        exercise_race(request.node, what, attempt, attempts=1)


def test_swapoff_races_unmerge(ksm: Ksm, workload: WorkloadFactory, swap_disk: str,
                               ksm_guest: KsmGuest, request: pytest.FixtureRequest) -> None:
    """Seed 003: swapoff's unuse_pte() brings back a KSM page from swapcache while run=2
    unmerges: it must map a private copy. Precondition, asserted: KSM pages unmapped in
    swapcache just before; swapoff(2) began after run=2's write began and before it
    returned (guest timestamps). One guest program starts both (swapoff just after the
    write's child took its t0), so the host's latency cannot let swapoff finish first."""
    sh = ksm_guest.sh

    def attempt(i: int) -> RaceRecord:
        if swap_disk not in guest_mm.swaps(sh):
            guest_mm.swapon(sh, swap_disk, priority=10)
        a, d, before = ksm_pages_in_swapcache(ksm, workload, i)
        assert_in_swapcache(before, "before run=2 and swapoff")
        vm_before = guest_mm.vmstat(sh)
        both = swapoff_during_write(ksm_guest.sh, ksm_guest.binary, "run", RUN_UNMERGE,
                                    swap_disk)
        run2, swapoff = swapoff_write_intervals(both, "run", RUN_UNMERGE)
        rec = RaceRecord("swapoff during run=2")
        rec.add(run2)
        rec.add(swapoff)
        rec.facts.update({"KSM pages in swapcache before": before["ksm_swapcache"],
                          "overlap s": round(run2.overlap(swapoff), 3)})
        if not run2.t0 < swapoff.t0 < run2.t1:
            raise RaceNotExercised(f"swapoff did not start while run=2 ran ({rec.summary()})")
        rec.exercised()
        # The outcome: nothing merged, no page of A in swap nor mapping a KSM page.
        ksm.assert_counts(ZERO_COUNTS, f"after run=2 raced swapoff ({rec.summary()})")
        rec.facts.update(guest_mm.vmstat_delta(vm_before, guest_mm.vmstat(sh),
                                               "ksm_swpin_copy"))
        for w, region in ((a, "k"), (d, "s")):
            w.verify()
            flags = w.pageflags(region)
            assert flags["swapped"] == 0, flags
            assert flags["ksm"] == 0, (f"{w.name}/{region} maps KSM pages after run=2 and "
                                       f"swapoff: {flags} ({rec.summary()})")
        return rec

    exercise_race(request.node, "swapoff during run=2", attempt)


@pytest.mark.parametrize("rounds", [3])
def test_compaction_of_zram_pages_while_merging(ksm: Ksm, workload: WorkloadFactory,
                                                memcg: MemcgFactory, zram_swap: str,
                                                ksm_guest: KsmGuest, rounds: int) -> None:
    sh = ksm_guest.sh
    group = memcg("compact")
    (a, b, d), layout = populate(workload, group)
    ksm.set("run", 1)
    ksm.wait_counts(layout.expected(), what="merged")
    before = guest_mm.vmstat(sh)
    for r in range(rounds):
        group.reclaim()  # zsmalloc pages (non-LRU movable) fill zram
        a.verify("s")    # some come back while the others stay in zram
        with skip_unless():
            took = guest_mm.compact(sh)  # migrates LRU and non-LRU movable pages
        # zsmalloc's own compaction moves zram's objects between its pages too.
        sh.run(f"echo 1 > /sys/block/{zram_swap.rsplit('/', 1)[-1]}/compact", timeout=120)
        b.verify()
        print(f"round {r}: compaction took {took:.2f}s")
    delta = guest_mm.vmstat_delta(before, guest_mm.vmstat(sh), "compact_migrate_scanned",
                                  "compact_isolated", "pgmigrate_success", "pswpout",
                                  "ksm_swpin_copy")
    mm_stat = sh.run(f"cat /sys/block/{zram_swap.rsplit('/', 1)[-1]}/mm_stat").stdout.split()
    print(f"vmstat: {delta}; zram mm_stat: {mm_stat}")
    assert delta["compact_migrate_scanned"] > 0 and delta["pswpout"] > 0, delta
    for w in (a, b, d):
        w.verify()
    wait_accounted_then_exact(ksm, layout, "compaction rounds", (a, b, d))


def test_thp_split_and_merged(ksm: Ksm, workload: WorkloadFactory, thp_mode: ThpMode) -> None:
    thp_mode("always")
    w = workload()
    w.alloc("t", 2048, "same:91", thp=True)  # 4 huge pages of one content
    w.alloc("h", 1024, "half:92", thp=True)  # huge pages half identical, half unique
    got = w.pageflags("t")["thp"] + w.pageflags("h")["thp"]
    if got == 0:
        pytest.skip("no transparent huge page could be allocated in the guest")
    w.madvise("t", "merge")
    w.madvise("h", "merge")
    ksm.set("run", 1)
    layout = Layout().same("same:91", 2048).same("same:92", 512).unique(512)
    ksm.wait_counts(layout.expected(), what=f"THP regions merged ({got} pages were in THPs)")
    t, h = w.pageflags("t"), w.pageflags("h")
    assert (t["thp"], t["ksm"]) == (0, 2048), f"merged pages still in THPs: {t}"
    assert h["ksm"] == 512 and h["thp"] <= 512, h
    w.verify()
    # Unmerged, the data is intact and the pages are ordinary again.
    ksm.set("run", RUN_UNMERGE, timeout=300)
    assert w.pageflags("t")["ksm"] == 0
    w.verify()
