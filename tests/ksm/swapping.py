"""Set-up and the final check shared by the scenarios that push merged pages to swap and
bring them back (`test_swap.py`, `test_zram_compaction.py`)."""
from __future__ import annotations

from harness.ksm import Ksm, Layout


def populate(workload, group):  # type: ignore[no-untyped-def]
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



def wait_accounted_then_exact(ksm: Ksm, layout: Layout, after: str, workloads) -> None:  # type: ignore[no-untyped-def]
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
