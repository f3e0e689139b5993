"""Comparator edges and the madvise ABI around KSM (issue 10).

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

import pytest

from harness.ksm import ALL_GONE, Ksm, Layout
from harness.workloads import WorkloadError

# (offset, what it is): the first byte, the last byte of a word and the first of the next one
# in the middle, the last byte of the page.
EDGES = ((0, "first byte"), (2047, "word end"), (2048, "word start"), (4095, "last byte"))


def poke(w, region: str, page: int, offset: int, xor: int) -> None:  # type: ignore[no-untyped-def]
    w.command(f"poke {region} {page} {offset} {xor}")


def test_pages_one_byte_apart_merge_only_with_their_twins(ksm: Ksm, workload) -> None:  # type: ignore[no-untyped-def]
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


def test_madvise_mergeable_over_a_hole_and_on_shared_memory(ksm: Ksm, workload) -> None:  # type: ignore[no-untyped-def]
    w = workload()
    w.alloc("h", 64, "same:112", thp=False)
    w.command("hole h 32")
    with pytest.raises(WorkloadError) as gap:
        w.madvise("h", "merge")
    assert "ENOMEM" in gap.value.reply, gap.value.reply
    assert (w.smaps("h")["vmas"], w.smaps("h")["mergeable"]) == (2, 2), \
        f"MADV_MERGEABLE over a gap must still mark the mapped parts: {w.smaps('h')}"
    w.alloc("sh", 64, "same:112", shared=True)
    w.madvise("sh", "merge")  # 0: "just ignore the advice"
    assert w.smaps("sh")["mergeable"] == 0, w.smaps("sh")
    ksm.set("run", 1)
    ksm.wait_counts(Layout().same("same:112", 63).expected(),
                    what="both sides of the hole merged, the shared mapping ignored")
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


def test_madvise_mergeable_on_hugetlb_is_ignored(ksm: Ksm, workload, ksm_guest) -> None:  # type: ignore[no-untyped-def]
    sh = ksm_guest.sh
    path = "/proc/sys/vm/nr_hugepages"
    if sh.run(f"test -w {path}").status != 0:
        pytest.skip(f"the guest kernel has no hugetlb ({path} missing)")
    saved = sh.run(f"cat {path}", check=True).stdout.strip()
    try:
        got = sh.run(f"echo 1 > {path}; cat {path}", check=True).stdout.strip()
        if int(got) < 1:
            pytest.skip(f"no 2 MiB huge page could be reserved ({path} reads {got})")
        w = workload()
        w.command("hugetlb ht 512 same:113")
        w.alloc("s", 16, "same:113", thp=False)
        w.madvise("ht", "merge")  # 0: VM_HUGETLB is "just ignore the advice"
        assert w.smaps("ht")["mergeable"] == 0, w.smaps("ht")
        w.madvise("s", "merge")
        ksm.set("run", 1)
        ksm.wait_counts(Layout().same("same:113", 16).expected(), pages=528,
                        what="the hugetlb twins of 16 pages were not merged")
        w.verify()
        w.free("ht")
    finally:
        sh.run(f"echo {int(saved)} > {path}")


def collapse(w, region: str) -> str:  # type: ignore[no-untyped-def]
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


def test_madvise_collapse_over_merged_pages(ksm: Ksm, workload) -> None:  # type: ignore[no-untyped-def]
    """What 6.1's MADV_COLLAPSE does with KSM pages (mm/khugepaged.c), three 2 MiB ranges:
    - every PTE maps a KSM page (write-protected): no writable PTE, SCAN_PAGE_RO, EINVAL,
      nothing changes;
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
    assert (collapse(w, "all"), collapse(w, "half")) == ("EINVAL", "EAGAIN")
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


def test_userfaultfd_registered_range_merges(ksm: Ksm, workload) -> None:  # type: ignore[no-untyped-def]
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
