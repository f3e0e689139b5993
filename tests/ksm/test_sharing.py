"""Scenario 8: max_page_sharing (stable node chains and dups) and use_zero_pages.

max_page_sharing caps how many mappings one KSM page takes: more identical pages than that
make a stable node *chain* holding several *dups* (one KSM page each), filled fullest first; a
lone remainder page waits unshared in the unstable tree (harness.ksm.expected_counts has the
arithmetic). Changing the cap is refused while pages are shared. With use_zero_pages=1, zero
pages are merged onto the kernel's zero page instead of a KSM page: they count nowhere, their
rmap items go away, and the pages map the zero page (kpageflags) until written.
"""
from __future__ import annotations

import time

import pytest

from harness.ksm import (
    ALL_GONE,
    RUN_UNMERGE,
    ZERO_COUNTS,
    Ksm,
    KsmError,
    KsmWriteError,
    Layout,
)
from harness.ksm.smart_scan import PERIOD, first_meeting, steady_birth
from harness.pytest_plugin.ksm_scenarios import SCAN_MODES, require_knob
from harness.workloads import Workload
from tests.ksm.fixture_types import KnownBug, WorkloadFactory

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


class TwinNeverMerged(AssertionError):
    """A twin the schedule says can never meet its lone page did not merge: the known
    smart_scan gap (harness.kernel_bugs "smart-scan-twin-never-merges"), nothing else."""


TWINS = PERIOD        # one twin born in each phase of the lone pages' 9-scan period
TWIN_SEED = 7300      # page k of A and of B: same:TWIN_SEED+k, and no other page like it
AGED_SCANS = 16       # A's pages are created in scan 1 or 2: from age 13 on, one look in 9
STEP_MS = 2500        # ksmd's sleep while twins are born: the host's window between scans
SETTLE_SCANS = 4 * PERIOD + 4  # the last twin's 22nd scan, and more


def _scan_state(ksm: Ksm) -> tuple[int, int] | None:
    """(full_scans, pages_skipped) read between two scans, None when a scan ended mid-read."""
    d = ksm.dir
    out = ksm.runner.run(f"cat {d}/full_scans {d}/pages_skipped {d}/full_scans",
                         timeout=ksm.timeout, check=True).stdout.split()
    first, skipped, again = map(int, out)
    return (first, skipped) if first == again else None


def _next_scan(ksm: Ksm, after: int, what: str) -> tuple[int, int]:
    """Poll (event-driven) until a full scan past ``after`` has ended; its state."""
    deadline = time.monotonic() + 10 * STEP_MS / 1000 + 30
    while time.monotonic() < deadline:
        state = _scan_state(ksm)
        if state is not None and state[0] > after:
            return state
        time.sleep(0.05)
    raise KsmError(f"ksmd ended no full scan past {after} in {10 * STEP_MS / 1000 + 30:.0f}s "
                   f"(sleep_millisecs={STEP_MS}) while {what}")


def test_smart_scan_merges_a_skipped_page_when_its_twin_appears(
        ksm: Ksm, workload: WorkloadFactory, known_bug: KnownBug) -> None:
    """A skipped page must not be lost: once an identical page appears, both must merge.

    Process A's 9 lone pages are aged until smart_scan looks at them once every 9 scans; the
    scan in which pages_skipped does not move is their look. Then, with ksmd slowed so the
    host works between scans, process B writes one twin in each of the 9 scans that follow,
    each at a known phase. harness.ksm.smart_scan says which twins can meet their page (a
    twin the schedule lets meet must merge, or the test fails as itself) and the test wants
    them all merged; on kernels with the gap, twins of 3 phases never are."""
    require_knob(ksm, "smart_scan")
    require_knob(ksm, "pages_skipped")
    ksm.set("smart_scan", 1)
    ksm.set("pages_to_scan", 1000)  # one scan per wakeup: the window between scans is whole
    ksm.set("sleep_millisecs", 20)
    a = workload(name="A")
    a.alloc("l", TWINS, "unique:73", thp=False)
    for k in range(TWINS):
        a.write("l", k, same_seed=TWIN_SEED + k)
    a.madvise("l", "merge")
    b = workload(name="B")
    b.alloc("t", TWINS + 1, "zero", thp=False)
    b.punch("t", TWINS + 2)  # pages 1..TWINS absent: a twin's rmap_item is born when written
    b.madvise("t", "merge", first=1, count=TWINS)
    ksm.set("run", 1)
    ksm.wait_merged(lambda s: s["pages_skipped"] > 0, min_full_scans=AGED_SCANS, pages=TWINS,
                    expect="A's lone pages aged")
    known_bug("smart-scan-twin-never-merges", raises=TwinNeverMerged)

    ksm.set("sleep_millisecs", STEP_MS)
    seen = _next_scan(ksm, -1, "waiting for a first scan")
    look = None
    for _ in range(3 * PERIOD):
        now = _next_scan(ksm, seen[0], "looking for the scan that looks at A's pages")
        if now[0] == seen[0] + 1:  # one scan: its skips are A's 9 or none
            skipped = now[1] - seen[1]
            assert skipped in (0, TWINS), (f"scan {now[0]} skipped {skipped} pages; only A's "
                                           f"{TWINS} lone pages are tracked")
            if skipped == 0:
                look = now[0]
                break
        seen = now
    assert look is not None, f"A's pages were never looked at in {3 * PERIOD} scans"

    born: dict[int, set[int]] = {}  # twin -> the scans its rmap_item may have been born in
    scans = look
    for k in range(TWINS):
        if k:
            scans = _next_scan(ksm, scans, f"placing twin {k}")[0]
        b.write("t", k + 1, same_seed=TWIN_SEED + k)
        after = _scan_state(ksm)
        born[k] = {scans + 1} if after is not None and after[0] == scans else \
            {scans + 1, scans + 2}  # a scan began while it was written
        scans = after[0] if after is not None else scans + 1
    ksm.set("sleep_millisecs", 20)
    ksm.wait_merged(lambda s: True, min_full_scans=SETTLE_SCANS, pages=2 * TWINS,
                    expect="the last twin past its 22nd scan")

    merged = {k: b.pageflags("t", k + 1, 1)["ksm"] == 1 for k in range(TWINS)}
    until = max(max(v) for v in born.values()) + SETTLE_SCANS
    meets = {k: {first_meeting([steady_birth(look), s], until) is not None for s in scans_}
             for k, scans_ in born.items()}
    phases = {k: sorted(s - look - 1 for s in v) for k, v in born.items()}
    print(f"A looked at in scan {look}; twins born at phases {phases}; merged {merged}")
    lost = [k for k in range(TWINS) if meets[k] == {True} and not merged[k]]
    assert not lost, (f"twins {lost} (phases {[phases[k] for k in lost]}) never merged though "
                      "the smart_scan schedule has them looked at with their page: not the "
                      "known gap")
    never = [k for k in range(TWINS) if not merged[k]]
    if never:
        raise TwinNeverMerged(
            f"{len(never)} of {TWINS} twins never merged with their lone page in "
            f"{SETTLE_SCANS} scans: born {[phases[k] for k in never]} scans after its look "
            "(smart_scan looks at a long-lone page once in 9 scans and at a new one in its "
            "scans 0-3, 5, 8, 13, then every 9th: they never meet)")
    a.verify()
    b.verify()
