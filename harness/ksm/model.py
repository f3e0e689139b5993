"""What the counters must read: the chain arithmetic of max_page_sharing, expected counts of a
layout of regions, scan deadlines, and the messages of a mismatch. Pure: no guest."""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from harness.ksm.sysfs import KsmError, KsmSnapshot

# Scan cost under TCG: 64 MiB (16384 pages) merged in ~1.1 s at pages_to_scan=10000,
# sleep_millisecs=0, i.e. ~70 us a page; 100 us leaves room for a loaded host.
SCAN_SECONDS_PER_PAGE = 100e-6
DEADLINE_FLOOR = 30.0
DEADLINE_SLACK = 3.0
FAST_PAGES_TO_SCAN = 10000
# Longest pause between two polls of the counters: a snapshot costs ~40 ms over a GuestShell.
POLL_MAX = 0.25
FAST_SLEEP_MILLISECS = 0


@dataclass(frozen=True)
class ExpectedCounts:
    pages_shared: int
    pages_sharing: int
    stable_node_chains: int
    stable_node_dups: int
    unmerged: int  # identical pages left without a partner (a remainder of 1)


def expected_counts(n_identical_pages: int, max_page_sharing: int) -> ExpectedCounts:
    """What KSM ends with when it merges n distinct pages of identical content, each mapped once
    (use_zero_pages=0 for zero content; one NUMA tree, i.e. merge_across_nodes=1 or all on one
    node).

    Kernel rule (mm/ksm.c): a stable node (or chain dup) accepts another mapping only while its
    rmap_hlist_len < max_page_sharing, and the fullest candidate dup is filled first. So each dup
    holds max_page_sharing mappings: its KSM page counts in pages_shared, the other
    max_page_sharing - 1 in pages_sharing. A new dup needs two pages merging in the unstable
    tree, so a remainder of exactly one page stays unshared. A node becomes a chain (holding the
    dups) only once a second dup exists.

    Not covered: a process forked *after* merging maps the KSM pages again, and those mappings
    join their dup beyond the limit (a "KSM fork": pages_sharing grows, pages_shared does not).
    """
    if max_page_sharing < 2:
        raise ValueError("max_page_sharing is at least 2 (the kernel refuses less)")
    if n_identical_pages < 2:
        return ExpectedCounts(0, 0, 0, 0, max(n_identical_pages, 0))
    full, rest = divmod(n_identical_pages, max_page_sharing)
    dups = full + (1 if rest >= 2 else 0)
    merged = n_identical_pages - (1 if rest == 1 else 0)
    chained = dups >= 2
    return ExpectedCounts(pages_shared=dups, pages_sharing=merged - dups,
                          stable_node_chains=1 if chained else 0,
                          stable_node_dups=dups if chained else 0,
                          unmerged=1 if rest == 1 else 0)


def expected_shared_sharing(n_identical_pages: int, max_page_sharing: int) -> tuple[int, int]:
    """(pages_shared, pages_sharing): 16384 pages at 256 -> (64, 16320)."""
    e = expected_counts(n_identical_pages, max_page_sharing)
    return e.pages_shared, e.pages_sharing


def expected_across_nodes(pages_per_node: Iterable[int], max_page_sharing: int,
                          merge_across_nodes: bool) -> tuple[int, int]:
    """(pages_shared, pages_sharing) for one content spread over NUMA nodes: one tree with
    merge_across_nodes=1, a tree per node with 0 (same content on 2 nodes: 1 vs 2 shared)."""
    counts = list(pages_per_node)
    if merge_across_nodes:
        return expected_shared_sharing(sum(counts), max_page_sharing)
    per_node = [expected_shared_sharing(n, max_page_sharing) for n in counts]
    return sum(s for s, _ in per_node), sum(s for _, s in per_node)


def scan_deadline(pages: int, pages_to_scan: int, sleep_millisecs: int, full_scans: int = 2,
                  floor: float = DEADLINE_FLOOR,
                  seconds_per_page: float = SCAN_SECONDS_PER_PAGE,
                  slack: float = DEADLINE_SLACK) -> float:
    """Seconds to allow for ``full_scans`` scans of ``pages`` mergeable pages (plus the scan in
    progress at the start): ksmd scans pages_to_scan pages per batch, sleeps sleep_millisecs
    between batches, and each page costs about seconds_per_page under TCG."""
    batches = math.ceil(max(pages, 0) / max(pages_to_scan, 1))
    one_scan = batches * max(sleep_millisecs, 0) / 1000 + max(pages, 0) * seconds_per_page
    return max(floor, slack * (full_scans + 1) * one_scan)


# ---- guest access ----

EXACT_COUNTERS = ("pages_shared", "pages_sharing", "pages_unshared", "pages_volatile",
                  "stable_node_chains", "stable_node_dups")


class KsmCountMismatch(KsmError):
    """The KSM counters are not what the kernel's rules say they must be. The message names
    every counter that is off, its value and the expected one."""

    def __init__(self, message: str, snapshot: KsmSnapshot,
                 mismatches: dict[str, tuple[int, int]]) -> None:
        super().__init__(message)
        self.snapshot = snapshot
        self.mismatches = mismatches  # counter -> (got, expected)


def count_mismatches(snap: KsmSnapshot, expected: dict[str, int], lumped: bool = False
                     ) -> dict[str, tuple[int, int]]:
    """{counter: (got, expected)} for every expected counter the snapshot does not match (a
    counter this kernel lacks is skipped: detect, don't assume). ``lumped``: unshared and
    volatile pages count as one, ``pages_unshared`` (with smart_scan, a lone page skipped
    this scan is out of the unstable tree: volatile, not unshared). The kernel derives
    volatile as rmap items - shared - sharing - unshared, so the lumped check asserts the
    rmap items' total and shared and sharing exactly, not how the rest is split."""
    got = {name: snap[name] for name in expected if name in snap}
    want = dict(expected)
    if lumped and "pages_unshared" in got and "pages_volatile" in snap:
        got["pages_unshared"] += snap["pages_volatile"]
        want["pages_unshared"] += want.pop("pages_volatile", 0)
        got.pop("pages_volatile", None)
    return {name: (got[name], w) for name, w in want.items() if name in got and got[name] != w}


def describe_mismatches(mismatches: dict[str, tuple[int, int]]) -> str:
    """``pages_sharing is 4079, expected 4080; pages_unshared is 1, expected 0``."""
    return "; ".join(f"{name} is {got}, expected {want}"
                     for name, (got, want) in mismatches.items())


def check_counts(snap: KsmSnapshot, expected: dict[str, int], what: str = "",
                 lumped: bool = False) -> None:
    """Raise KsmCountMismatch naming each counter that differs from ``expected``."""
    wrong = count_mismatches(snap, expected, lumped)
    if wrong:
        where = f" {what}" if what else ""
        raise KsmCountMismatch(f"KSM counters wrong{where}: {describe_mismatches(wrong)} "
                               f"(all: {snap.summary()})", snap, wrong)


class Layout:
    """What the guest maps MADV_MERGEABLE, to derive the counters KSM must end with.

    ``same(content, pages, node)`` adds pages of one identical content (any label: "same:1",
    "zero"...) on a NUMA node (None when the test does not bind them, which needs
    merge_across_nodes=1); ``unique(pages)`` adds pages that match nothing. Each page must be
    mapped once (a process forked after merging maps KSM pages again: see ``ksm_fork``).
    """

    def __init__(self) -> None:
        self.groups: dict[tuple[str, int | None], int] = {}
        self.unique_pages = 0
        self.fork_sharing = 0
        self.forked_volatile = 0

    def same(self, content: str, pages: int, node: int | None = None) -> Layout:
        key = (content, node)
        self.groups[key] = self.groups.get(key, 0) + pages
        return self

    def zero(self, pages: int, node: int | None = None) -> Layout:
        return self.same("zero", pages, node)

    def unique(self, pages: int) -> Layout:
        self.unique_pages += pages
        return self

    def ksm_fork(self, pages: int, children: int = 1) -> Layout:
        """Children forked after ``pages`` pages were merged map those KSM pages again: each
        such mapping joins its KSM page's stable node beyond max_page_sharing (stable_tree_
        search finds the page already is that KSM page), so pages_sharing grows by
        pages * children and nothing else moves."""
        self.fork_sharing += pages * children
        return self

    def forked_unmerged(self, pages: int, children: int = 1) -> Layout:
        """Children forked while ``pages`` pages were in the unstable tree (unique content)
        share those physical pages with the parent (COW). ksmd finds the very same page in the
        unstable tree ("don't substitute a ksm page for a forked page") and leaves the other
        mappings out of every tree: one mapping per page is unshared, the others volatile."""
        self.forked_volatile += pages * children
        return self

    def expected(self, max_page_sharing: int = 256, merge_across_nodes: bool = True,
                 use_zero_pages: bool = False) -> dict[str, int]:
        """The exact counters after at least two full scans with nothing changing.

        Zero-filled content with use_zero_pages=1 maps the kernel's zero page instead of a KSM
        page: it counts nowhere (6.1 has no ksm_zero_pages counter) and its rmap items go away.
        With merge_across_nodes=0 each node has its own stable tree: one content on two nodes
        makes two sets of KSM pages."""
        merged: dict[tuple[str, int | None], int] = {}
        for (content, node), pages in self.groups.items():
            if use_zero_pages and content == "zero":
                continue
            if not merge_across_nodes and node is None:
                raise ValueError(f"content {content!r} has no node: with merge_across_nodes=0 "
                                 "the expectation depends on where pages are")
            key = (content, node if not merge_across_nodes else None)
            merged[key] = merged.get(key, 0) + pages
        out = {name: 0 for name in EXACT_COUNTERS}
        out["pages_unshared"] = self.unique_pages
        for pages in merged.values():
            e = expected_counts(pages, max_page_sharing)
            out["pages_shared"] += e.pages_shared
            out["pages_sharing"] += e.pages_sharing
            out["pages_unshared"] += e.unmerged
            out["stable_node_chains"] += e.stable_node_chains
            out["stable_node_dups"] += e.stable_node_dups
        out["pages_sharing"] += self.fork_sharing
        out["pages_volatile"] += self.forked_volatile
        return out

    @property
    def pages(self) -> int:
        """Mergeable pages in all (to size scan deadlines)."""
        return sum(self.groups.values()) + self.unique_pages + self.fork_sharing


ZERO_COUNTS = {name: 0 for name in EXACT_COUNTERS}
# What "everything gone" means while ksmd runs (run=1), once every mergeable process exited or
# freed its regions: no page in any tree. The stable nodes may linger (6.1): __ksm_exit comes
# before exit_mmap, so ksmd can drop an exiting mm's rmap items while its KSM pages still exist
# and nothing revisits the emptied dups once the pages are freed; and when the last dup of a
# chain goes stale, remove_node_from_stable_tree() only unlinks it, leaving the empty chain.
# A stable tree search prunes them; run=2 removes every stable node (ZERO_COUNTS after it).
# Wait with min_full_scans=0: with no mergeable mm left, ksmd drops the slots and stops.
ALL_GONE = {name: 0 for name in EXACT_COUNTERS if not name.startswith("stable_node_")}


