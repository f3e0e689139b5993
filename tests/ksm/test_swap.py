"""Scenarios 4 and 5: KSM pages in swap (a virtio swap disk and zram), swapoff racing run=2,
and THP split by KSM (compaction of zram's pages: `test_zram_compaction.py`).

Pages reach swap through a memory cgroup's memory.reclaim (memory.max squeezes KSM pages
badly: they are charged once). While they are out, ksmd drops their rmap items; faulted back
(copied when the KSM page's anon_vma differs: vmstat ksm_swpin_copy) they merge again.

Seeds 000 and 003: a KSM page faulted back from swapcache after run=2's unmerge passed it, and
swapoff's unuse_pte() bringing a KSM page back from swapcache while run=2 unmerges, must both
get a private copy: after run=2, no page anywhere may map a KSM page. Both scenarios first put
KSM pages in swapcache (the disk, MADV_PAGEOUT; checked through pagemap and kpageflags) and
prove the overlap with guest timestamps, or end as "race not exercised" (a skip).

This module's guest has a 512 MiB raw disk with serial "swap" (found in /sys/block/*/serial).
"""
from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from harness import guestsys
from harness.guest import Guest
from harness.ksm import RUN_UNMERGE, ZERO_COUNTS, Ksm, Layout
from harness.ksm.guest import KsmGuest
from harness.ksm.race import (
    RaceNotExercised,
    RaceRecord,
    swapoff_during_write,
    swapoff_write_intervals,
    timed_ksm_write,
    write_interval,
)
from harness.pytest_plugin.ksm import exercise_race, skip_unless
from harness.workloads import Workload
from tests.ksm.swapping import populate, wait_accounted_then_exact

SWAP_DISK_MB = 512
# After reclaim only D's 2048 pages (one content, 8 full dups) are still in the trees; the
# stable nodes of the swapped KSM pages may linger (not counted in pages_*).
ALL_BUT_D = {"pages_shared": 8, "pages_sharing": 2040, "pages_unshared": 0,
             "pages_volatile": 0}


@pytest.fixture(scope="module")
def vm(vm_pool, vm_spec) -> Iterator[Guest]:  # type: ignore[no-untyped-def]
    """This module's guest: the default topology plus a swap disk."""
    topology = vm_spec.topology.with_disk("swap", SWAP_DISK_MB)
    guest = Guest(lambda: vm_pool.boot(topology=topology, name="test_swap"), vm_pool.stop)
    yield guest
    guest.close()


@pytest.fixture
def swap_disk(ksm_guest: KsmGuest) -> Iterator[str]:
    sh = ksm_guest.sh
    with skip_unless():
        dev = guestsys.disk_by_serial(sh, "swap")
    guestsys.swapon(sh, dev, priority=10)
    generation = ksm_guest.current
    yield dev
    if not ksm_guest.gone_since(generation):  # else the swap went with its VM
        guestsys.swapoff(sh, dev)


@pytest.fixture(params=["disk", "zram"])
def swap_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def swap_device(swap_kind: str, request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("swap_disk" if swap_kind == "disk" else "zram_swap"))


def swapped_out(*regions) -> int:  # type: ignore[no-untyped-def]
    return sum(w.pageflags(name)["swapped"] for w, name in regions)


def push_to_swap(group, want: int, *regions, timeout: float = 60.0) -> int:  # type: ignore[no-untyped-def]
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


def test_merged_pages_swap_out_and_back(ksm: Ksm, workload, memcg, swap_device: str,  # type: ignore[no-untyped-def]
                                        ksm_guest: KsmGuest) -> None:
    sh = ksm_guest.sh
    group = memcg("swap")
    (a, b, d), layout = populate(workload, group)
    ksm.set("run", 1)
    ksm.wait_counts(layout.expected(), what="merged")
    before = guestsys.vmstat(sh)
    out = push_to_swap(group, 3328, (a, "s"), (a, "u"), (b, "s"), (b, "h"))
    assert guestsys.swaps(sh)[swap_device]["used_kb"] > 0
    # While they are out ksmd forgets them; D's pages stay merged.
    ksm.wait_counts(ALL_BUT_D, pages=2048, what="A's and B's pages in swap")
    for w in (a, b, d):  # faults everything back in
        w.verify()
    delta = guestsys.vmstat_delta(before, guestsys.vmstat(sh), "pswpout", "pswpin",
                                  "ksm_swpin_copy")
    assert delta["pswpout"] > 0 and delta["pswpin"] > 0, delta
    print(f"{swap_device}: {out} pages swapped out; vmstat {delta}")
    wait_accounted_then_exact(ksm, layout, "swap-in", (a, b, d))


# KSM pages mapped once each (MADV_PAGEOUT skips a page mapped more than once), swapped out
# to the disk: its writeback is asynchronous, so each stays in swapcache, unmapped, still a
# KSM page (zram completes the write at once and the page is freed: never in swapcache).
PAIRS = 256
D_PAGES = 4096  # D: one content, present: run=2 has this much to break while the race runs


def ksm_pages_in_swapcache(ksm: Ksm, workload, attempt: int, fault_back: bool = False,  # type: ignore[no-untyped-def]
                           previous: list[Workload] | None = None,
                           ) -> tuple[Workload, Workload, dict[str, int]]:
    """A's region "k": PAIRS KSM pages, swapped out and still in swapcache (checked: A's
    pagemap shows PAIRS swap entries and no present page; kpageflags of the PFNs A mapped
    before shows KSM + SwapCache). D keeps D_PAGES of one content merged and present.
    fault_back: A touches its pages again first (the precondition forced off).
    previous: the workloads of an earlier attempt, which exit first (a retried attempt
    starts from nothing: their merged pages would otherwise count in this one's layout)."""
    if previous:
        while previous:
            previous.pop().exit(timeout=120, check=False)
        ksm.unmerge_all()
    a = workload(name=f"A{attempt}")
    b = workload(name=f"B{attempt}")
    d = workload(name=f"D{attempt}")
    if previous is not None:
        previous.extend((a, b, d))
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
    return a, d, {"pagemap": a.pageflags("k")["swapped"], **a.kpf("k")}


def assert_in_swapcache(where: dict[str, int], when: str) -> None:
    """The precondition: every page of A/k is a swap entry and at least one of the KSM pages
    it mapped is still in swapcache."""
    if where["pagemap"] != PAIRS or where["ksm_swapcache"] < 1:
        raise RaceNotExercised(f"{when}: A/k has {where['pagemap']}/{PAIRS} swap entries and "
                               f"{where['ksm_swapcache']} KSM pages in swapcache ({where})")


@pytest.mark.parametrize("forced_off", [False, True], ids=["race", "forced_off"])
def test_ksm_page_in_swapcache_when_run2_passes(ksm: Ksm, workload, swap_disk: str,  # type: ignore[no-untyped-def]
                                                ksm_guest: KsmGuest, request,
                                                forced_off: bool) -> None:
    """Seed 000, cause 3: a KSM page in swapcache while run=2 walks past it (run=2 breaks
    mapped KSM pages only; the stable node of a swapcache page goes at its end), then faulted
    back: it must come back as a private copy. Precondition, asserted before and after run=2:
    the KSM pages are unmapped in swapcache throughout. forced_off: A faults them back
    first, so the scenario must say "race not exercised"."""
    sh = ksm_guest.sh

    started: list[Workload] = []  # the last attempt's workloads (see ksm_pages_in_swapcache)

    def attempt(i: int) -> RaceRecord:
        a, d, before = ksm_pages_in_swapcache(ksm, workload, i, fault_back=forced_off,
                                              previous=started)
        assert_in_swapcache(before, "before run=2")
        swap_cached = guestsys.meminfo_kb(sh, "SwapCached")
        vm_before = guestsys.vmstat(sh)
        run2 = write_interval(timed_ksm_write(ksm.runner, ksm_guest.binary, "run",
                                              RUN_UNMERGE), "run", RUN_UNMERGE)
        after = {"pagemap": a.pageflags("k")["swapped"], **a.kpf("k")}
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
        copies = guestsys.vmstat_delta(vm_before, guestsys.vmstat(sh), "ksm_swpin_copy")
        rec.facts.update(copies)
        assert flags["present"] == PAIRS and flags["ksm"] == 0, \
            f"A maps KSM pages faulted back from swapcache after run=2: {flags} ({copies})"
        d.verify()
        assert d.pageflags("s")["ksm"] == 0
        return rec

    exercise_race(request.node, "a KSM page in swapcache during run=2", attempt,
                  attempts=1 if forced_off else 2)
    assert not forced_off, "the precondition was forced off, yet the race counted as exercised"


def test_swapoff_races_unmerge(ksm: Ksm, workload, swap_disk: str,  # type: ignore[no-untyped-def]
                               ksm_guest: KsmGuest, request) -> None:
    """Seed 003: swapoff's unuse_pte() brings back a KSM page from swapcache while run=2
    unmerges: it must map a private copy. Precondition, asserted: KSM pages unmapped in
    swapcache just before; swapoff(2) began after run=2's write began and before it
    returned (guest timestamps). One guest program starts both (swapoff just after the
    write's child took its t0), so the host's latency cannot let swapoff finish first."""
    sh = ksm_guest.sh

    started: list[Workload] = []  # the last attempt's workloads (see ksm_pages_in_swapcache)

    def attempt(i: int) -> RaceRecord:
        if swap_disk not in guestsys.swaps(sh):
            guestsys.swapon(sh, swap_disk, priority=10)
        a, d, before = ksm_pages_in_swapcache(ksm, workload, i, previous=started)
        assert_in_swapcache(before, "before run=2 and swapoff")
        vm_before = guestsys.vmstat(sh)
        both = swapoff_during_write(ksm.runner, ksm_guest.binary, "run", RUN_UNMERGE,
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
        rec.facts.update(guestsys.vmstat_delta(vm_before, guestsys.vmstat(sh),
                                               "ksm_swpin_copy"))
        for w, region in ((a, "k"), (d, "s")):
            w.verify()
            flags = w.pageflags(region)
            assert flags["swapped"] == 0, flags
            assert flags["ksm"] == 0, (f"{w.name}/{region} maps KSM pages after run=2 and "
                                       f"swapoff: {flags} ({rec.summary()})")
        return rec

    exercise_race(request.node, "swapoff during run=2", attempt)


def test_thp_split_and_merged(ksm: Ksm, workload, thp_mode) -> None:  # type: ignore[no-untyped-def]
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
