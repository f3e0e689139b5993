"""Scenario 8: max_page_sharing (stable node chains and dups) and use_zero_pages.

max_page_sharing caps how many mappings one KSM page takes: more identical pages than that
make a stable node *chain* holding several *dups* (one KSM page each), filled fullest first; a
lone remainder page waits unshared in the unstable tree (harness.ksm.expected_counts has the
arithmetic). Changing the cap is refused while pages are shared. With use_zero_pages=1, zero
pages are merged onto the kernel's zero page instead of a KSM page: they count nowhere, their
rmap items go away, and the pages map the zero page (kpageflags) until written.
"""
from __future__ import annotations

import pytest

from harness.ksm import (
    ALL_GONE,
    RUN_UNMERGE,
    ZERO_COUNTS,
    Ksm,
    KsmWriteError,
    Layout,
)
from harness.pytest_plugin.ksm_scenarios import SCAN_MODES, require_knob
from harness.workloads import Workload
from tests.ksm.fixture_types import WorkloadFactory

# (max_page_sharing, identical pages in each of 3 processes); sizes cover: the minimum limit,
# a remainder of exactly one page (left unshared), and chains spanning processes.
CASES = [(2, 5), (4, 22), (5, 86)]


@SCAN_MODES
def test_max_page_sharing_chains_and_dups(ksm: Ksm, workload: WorkloadFactory) -> None:
    require_knob(ksm, "max_page_sharing")
    procs = [workload(name=f"P{i}") for i in range(3)]
    for mps, pages in CASES:
        ksm.set("run", RUN_UNMERGE, timeout=300)
        ksm.set("max_page_sharing", mps)
        for w in procs:
            w.alloc(f"m{mps}", pages, f"same:{mps}")
            w.madvise(f"m{mps}", "merge")
        ksm.set("run", 1)
        expected = Layout().same(f"same:{mps}", 3 * pages).expected(max_page_sharing=mps)
        snap = ksm.wait_counts(expected, what=f"{3 * pages} identical pages, "
                                              f"max_page_sharing={mps}")
        assert snap["stable_node_chains"] == 1 and snap["stable_node_dups"] >= 2
        for w in procs:
            w.verify()
        # The cap cannot change under shared pages; the same value is no change.
        with pytest.raises(KsmWriteError) as refused:
            ksm.set("max_page_sharing", mps + 1)
        assert refused.value.errno_name == "EBUSY"
        ksm.set("max_page_sharing", mps)
        for w in procs:
            w.free(f"m{mps}")

    # Everything freed: nothing left in the trees; run=2 removes the stale stable nodes.
    ksm.wait_counts(ALL_GONE, pages=1, min_full_scans=0, what="after every region was freed")
    ksm.set("run", RUN_UNMERGE, timeout=300)
    ksm.assert_counts(ZERO_COUNTS, "after run=2")


def test_lone_page_beyond_the_cap_stays_unshared(ksm: Ksm, workload: WorkloadFactory) -> None:
    """4*k+1 identical pages with max_page_sharing=4: k full dups and one unshared page;
    one more page makes it merge into a new dup."""
    ksm.set("max_page_sharing", 4)
    w = workload()
    w.alloc("s", 33, "same:61")
    w.madvise("s", "merge")
    ksm.set("run", 1)
    expected = Layout().same("x", 33).expected(max_page_sharing=4)
    assert (expected["pages_shared"], expected["pages_unshared"]) == (8, 1)
    ksm.wait_counts(expected, what="33 pages, max_page_sharing=4")
    w.alloc("t", 1, "same:61")
    w.madvise("t", "merge")
    ksm.wait_counts(Layout().same("x", 34).expected(max_page_sharing=4),
                    what="34 pages, max_page_sharing=4")
    w.verify()


def test_use_zero_pages(ksm: Ksm, workload: WorkloadFactory) -> None:
    require_knob(ksm, "use_zero_pages")
    ksm.set("use_zero_pages", 1)
    w = workload()
    assert w.pid is not None  # started
    # no THP: since 6.12 splitting a THP maps its zero-filled subpages to the zero page by
    # itself (not KSM), which ksm_zero_pages rightly does not count
    w.alloc("z", 1000, "zero", thp=False)
    w.alloc("s", 10, "same:71")
    w.alloc("u", 10, "unique:71")
    assert w.pageflags("z")["zero"] == 0  # written zeros: real pages for now
    for region in ("z", "s", "u"):
        w.madvise(region, "merge")
    ksm.set("run", 1)
    layout = Layout().zero(1000).same("same:71", 10).unique(10)
    ksm.wait_counts(layout.expected(use_zero_pages=True), what="zero pages onto the zero page")
    flags = w.pageflags("z")
    assert flags["nopfn"] == 0, flags
    assert (flags["zero"], flags["ksm"]) == (1000, 0), f"zero pages not on the zero page: {flags}"
    snap = ksm.exact_counters()
    if "ksm_zero_pages" in snap:  # newer kernels count them
        assert snap["ksm_zero_pages"] == 1000, \
            f"ksm_zero_pages is {snap['ksm_zero_pages']} while KSM mapped 1000 pages to the zero page"
    stat = ksm.process_stat(w.pid)
    if "ksm_rmap_items" in stat:
        assert stat["ksm_rmap_items"] == 20, f"zero-page rmap items were not dropped: {stat}"
    w.verify()

    # A write to a zero-page mapping gets a private page (COW), the rest stays.
    w.write("z", 7)
    layout.groups[("zero", None)] -= 1
    layout.unique(1)
    ksm.wait_counts(layout.expected(use_zero_pages=True), what="after writing one zero page")
    assert w.pageflags("z")["zero"] == 999
    w.verify()

    # Switching use_zero_pages is allowed while merged; new zero pages then make a KSM page.
    ksm.set("use_zero_pages", 0)
    w.alloc("z2", 300, "zero", thp=False)
    w.madvise("z2", "merge")
    # (the 999 pages still on the zero page count nowhere)
    ksm.wait_counts(Layout().same("z2", 300).same("same:71", 10).unique(11).expected(),
                    what="new zero pages with use_zero_pages=0")
    assert w.pageflags("z")["zero"] == 999 and w.pageflags("z2")["ksm"] == 300
    w.verify()

    # Exit: the accounting returns to nothing.
    w.exit()
    ksm.wait_counts(ALL_GONE, pages=1, min_full_scans=0, what="after the process exited")
    snap = ksm.exact_counters()
    if "ksm_zero_pages" in snap:
        assert snap["ksm_zero_pages"] == 0
    ksm.set("run", RUN_UNMERGE, timeout=300)
    ksm.assert_counts(ZERO_COUNTS, "after run=2")


def start_lone_pages_under_smart_scan(ksm: Ksm, workload: WorkloadFactory) -> Workload:
    """smart_scan=1; process A with 512 lone pages and 256 identical ones, merged and settled
    until some lone pages were skipped. Returns A."""
    require_knob(ksm, "smart_scan")
    require_knob(ksm, "pages_skipped")
    ksm.set("smart_scan", 1)
    a = workload(name="A")
    a.alloc("u", 512, "unique:73")
    a.alloc("s", 256, "same:73")
    for region in ("u", "s"):
        a.madvise(region, "merge")
    ksm.set("run", 1)
    snap = ksm.wait_merged(
        lambda s: (s["pages_shared"], s["pages_sharing"]) == (1, 255)
        and s["pages_unshared"] + s["pages_volatile"] == 512 and s["pages_skipped"] > 0,
        pages=768, exact=True, min_full_scans=4,
        expect="256 identical pages merged, 512 lone pages tracked, some skipped")
    assert snap["stable_node_chains"] == 0 and snap["stable_node_dups"] == 0, snap.summary()
    return a


def test_smart_scan_skips_lone_pages_and_accounts_them(ksm: Ksm, workload: WorkloadFactory) -> None:
    """smart_scan (6.7+) skips pages that did not merge, for a growing number of scans. A
    skipped page is out of the unstable tree (it counts as volatile, not unshared); identical
    pages still merge exactly, and run=2 still unmerges everything (the fixture checks)."""
    a = start_lone_pages_under_smart_scan(ksm, workload)
    a.verify()


# Not an expected failure: no kernel is known to have a bug here. Seen once, on 6.12.117 in
# 1 of 3 runs: twins of pages smart_scan skips never merged (4044 full scans). A guess, not
# proven: a long-lone page is looked at once every 9 scans, its twin settles into the same
# period at a phase that depends on timing, and the unstable tree lives for one scan only. If
# it fails again, that failure is the evidence to chase (kernel or test), not to hide.
def test_smart_scan_merges_a_skipped_page_when_its_twin_appears(
        ksm: Ksm, workload: WorkloadFactory) -> None:
    """A skipped page must not be lost: once an identical page appears, both must merge."""
    a = start_lone_pages_under_smart_scan(ksm, workload)
    b = workload(name="B")
    b.alloc("u", 512, "unique:73")
    b.madvise("u", "merge")
    ksm.wait_counts({"pages_shared": 1 + 512, "pages_sharing": 255 + 512,
                     "pages_unshared": 0, "pages_volatile": 0},
                    what="twins of skipped pages merged")
    a.verify()
    b.verify()
