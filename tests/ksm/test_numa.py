"""Scenarios 2 and 3: merge_across_nodes on a 2-node guest, and NUMA migration of KSM pages.

Seed 000 (ksm: remove old stable nodes more thoroughly): switching merge_across_nodes after
run=2 could oops on stale stable nodes, left by KSM pages lingering in swapcache, by mms forked
behind the unmerge cursor, or by KSM pages faulted back from swapcache just after the unmerge
passed them. The cycle test recreates all three: KSM pages pushed to zram swap and partly
faulted back (swapcache), processes forked while run=2 runs, a process faulting swapped KSM
pages while run=2 runs; then it checks that no page anywhere still maps a KSM page, switches
merge_across_nodes (which must not be EBUSY) and merges again to exact counters.

Seed 004 (ksm: make !merge_across_nodes migration safe): a KSM page migrated to the other node
leaves its stable node in the wrong tree until ksmd moves it; nothing may merge onto such a
misplaced page. The migration test moves KSM pages between nodes while ksmd runs, with a new
process offering the same content on the old node at that moment.
"""
from __future__ import annotations

import re
import time

import pytest

from harness.ksm import (
    RUN_UNMERGE,
    ZERO_COUNTS,
    Ksm,
    KsmWriteError,
    Layout,
    write_in_background,
)
from harness.ksm.guest import KsmGuest
from harness.pytest_plugin.ksm import require_nodes
from harness.workloads import Workload


@pytest.fixture(autouse=True)
def two_nodes(ksm_guest: KsmGuest) -> None:
    require_nodes(ksm_guest, 2)


def where(w: Workload, region: str) -> tuple[int, int]:
    n = w.nodes(region)
    assert not n.errors and n.other == 0, f"{w.name}/{region}: pages not present? {n}"
    return n.node0, n.node1


def test_merge_across_nodes_one_tree_or_one_per_node(ksm: Ksm, workload) -> None:  # type: ignore[no-untyped-def]
    a, b = workload(name="A"), workload(name="B")
    a.alloc("r", 100, "same:9", node=0)
    b.alloc("r", 100, "same:9", node=1)
    for w in (a, b):
        w.madvise("r", "merge")
    layout = Layout().same("same:9", 100, node=0).same("same:9", 100, node=1)

    # merge_across_nodes=1: one KSM page for both nodes.
    assert ksm.get("merge_across_nodes") == 1
    ksm.set("run", 1)
    ksm.wait_counts(layout.expected(merge_across_nodes=True), what="with merge_across_nodes=1")
    assert ksm.exact_counters()["pages_shared"] == 1
    assert a.pageflags("r")["ksmpfns"] == b.pageflags("r")["ksmpfns"] == 1
    on = {where(a, "r"), where(b, "r")}
    assert on in ({(100, 0)}, {(0, 100)}), f"A and B map one KSM page, on one node: {on}"
    a.verify()
    b.verify()

    # Switching is refused while pages are shared, and nothing changes.
    with pytest.raises(KsmWriteError) as refused:
        ksm.set("merge_across_nodes", 0)
    assert refused.value.errno_name == "EBUSY"
    assert ksm.get("merge_across_nodes") == 1

    # After run=2 it switches; with 0 each node has its own KSM page.
    ksm.set("run", RUN_UNMERGE, timeout=300)
    ksm.assert_counts(ZERO_COUNTS, "after run=2")
    ksm.set("merge_across_nodes", 0)
    ksm.set("run", 1)
    ksm.wait_counts(layout.expected(merge_across_nodes=False), what="with merge_across_nodes=0")
    assert ksm.exact_counters()["pages_shared"] == 2
    assert where(a, "r") == (100, 0) and where(b, "r") == (0, 100), "merged across nodes"
    a.verify()
    b.verify()


def test_merge_across_nodes_cycles_with_swapcache_and_forks_during_unmerge(  # type: ignore[no-untyped-def]
        ksm: Ksm, workload, memcg, zram_swap) -> None:
    group = memcg("mac")
    a = workload(name="A", cgroup=group)  # forks during run=2
    b = workload(name="B", cgroup=group)  # faults swapped KSM pages in during run=2
    d = workload(name="D")  # outside the group: its KSM pages stay present, so run=2 has
    d.alloc("big", 3072, "same:22", node=1)  # real work to do while A forks and B faults
    d.madvise("big", "merge")
    n = 400
    for w, useed in ((a, 1), (b, 2)):
        w.alloc("n0", n, "same:21", node=0)
        w.alloc("n1", n, "same:21", node=1)
        w.alloc("u", 64, f"unique:{useed}", node=0)
        for region in w.regions:
            w.madvise(region, "merge")
    layout = (Layout().same("same:21", 2 * n, node=0).same("same:21", 2 * n, node=1)
              .same("same:22", 3072, node=1).unique(128))
    forked_during_unmerge = []

    for cycle, mac in enumerate((1, 0, 1)):
        ksm.set("merge_across_nodes", mac)  # run=2 came before: it must not be EBUSY
        ksm.set("run", 1)
        ksm.wait_counts(layout.expected(merge_across_nodes=bool(mac)),
                        what=f"cycle {cycle}: merged with merge_across_nodes={mac}")
        # Push the group's pages to zram, fault part back: KSM pages in swap and in swapcache.
        group.reclaim()
        swapped = a.pageflags("n0")["swapped"] + b.pageflags("n1")["swapped"]
        assert swapped > 0, f"cycle {cycle}: memory.reclaim swapped nothing out"
        a.verify("n0")

        # run=2 while A forks (children must be unmerged too) and B faults its swapped pages.
        pending = write_in_background(ksm.runner, "run", RUN_UNMERGE)
        deadline = time.monotonic() + 60
        while ksm.get("run") != RUN_UNMERGE and not pending.done():
            assert time.monotonic() < deadline, "run=2 did not start within 60s"
        forks = 0
        while not pending.done() and forks < 6:
            forked_during_unmerge += a.fork(1)
            forks += 1
            b.verify("n0" if forks % 2 else "n1")
        b.verify()
        took = pending.wait(timeout=300)
        print(f"cycle {cycle} mac={mac}: {swapped} pages swapped, run=2 took {took:.2f}s, "
              f"{forks} forks during it")
        ksm.assert_counts(ZERO_COUNTS, f"cycle {cycle}: after run=2 ({took:.1f}s, {forks} "
                                       "forks during it)")
        # Nothing anywhere still maps a KSM page: parent, children, the faulting process.
        a.verify()
        d.verify()
        dflags = d.pageflags("big")
        assert dflags["ksm"] == 0, (f"cycle {cycle}: D/big (outside the memory cgroup, not "
                                    f"swapped) still maps KSM pages after run=2: {dflags} "
                                    "(unless /proc/kpageflags is wrong: see "
                                    "test_kpageflags_marks_only_ksm_pages)")
        for w in (a, b):
            for region in ("n0", "n1", "u"):
                flags = w.pageflags(region)
                assert flags["nopfn"] == 0, flags
                assert flags["ksm"] == 0, (f"cycle {cycle}: {w.name}/{region} still maps KSM "
                                           f"pages after run=2: {flags}")
        if a.children_pids:
            reply = a.children("pageflags n0").text + " " + a.children("pageflags n1").text
            assert set(re.findall(r"\bksm=(\d+)", reply)) == {"0"}, \
                f"cycle {cycle}: a child forked during run=2 still maps KSM pages: {reply}"
            a.children_verify()
            assert a.children_exit() == [0] * forks
    assert forked_during_unmerge, "no fork happened while run=2 was running"
    ksm.set("merge_across_nodes", 0)
    ksm.set("run", 1)
    ksm.wait_counts(layout.expected(merge_across_nodes=False), what="after the last switch")
    a.verify()
    b.verify()


def move_all(w: Workload, region: str, node: int, timeout: float = 60.0) -> None:
    """move_pages(MPOL_MF_MOVE_ALL) until every page of the region is on ``node``: a KSM page
    being scanned or mapped by many can be busy for a moment."""
    deadline = time.monotonic() + timeout
    pages = w.regions[region]
    while True:
        result = w.move(region, node, move_all=True)
        on = where(w, region)[node]
        if on == pages:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{w.name}/{region}: only {on}/{pages} pages reached node "
                                 f"{node} in {timeout:.0f}s (last move: {result})")


def test_migrated_ksm_pages_stay_per_node(ksm: Ksm, workload) -> None:  # type: ignore[no-untyped-def]
    n = 200  # below max_page_sharing: one KSM page per process region
    ksm.set("merge_across_nodes", 0)
    a, b = workload(name="A"), workload(name="B")
    a.alloc("r", n, "same:31", node=0)
    b.alloc("r", n, "same:31", node=1)
    for w in (a, b):
        w.madvise("r", "merge")
    ksm.set("run", 1)
    ksm.wait_counts(Layout().same("x", n, 0).same("x", n, 1).expected(merge_across_nodes=False),
                    what="A on node 0, B on node 1")

    # A's KSM page moves to node 1 while ksmd runs; at once C offers the same content on
    # node 0, where A's stable node still sits in the tree: C must get a KSM page of node 0.
    move_all(a, "r", 1)
    c = workload(name="C")
    c.alloc("r", n, "same:31", node=0)
    c.madvise("r", "merge")
    # Node 1: A's and B's KSM pages, both with n mappings, end as two dups of one chain.
    expected = dict(pages_shared=3, pages_sharing=3 * (n - 1), pages_unshared=0,
                    pages_volatile=0, stable_node_chains=1, stable_node_dups=2)
    ksm.wait_counts(expected, what="after A's KSM page moved to node 1 and C came on node 0")
    assert (where(a, "r"), where(b, "r"), where(c, "r")) == ((0, n), (0, n), (n, 0)), \
        "a page merged across nodes"
    for w in (a, b, c):
        w.verify()

    # C's KSM page joins node 1 (three dups there), then A's goes back to node 0 alone.
    move_all(c, "r", 1)
    expected.update(stable_node_dups=3)
    ksm.wait_counts(expected, what="after C's KSM page moved to node 1")
    assert where(c, "r") == (0, n)
    move_all(a, "r", 0)
    expected.update(stable_node_dups=2)
    ksm.wait_counts(expected, what="after A's KSM page moved back to node 0")
    assert (where(a, "r"), where(b, "r"), where(c, "r")) == ((n, 0), (0, n), (0, n))
    for w in (a, b, c):
        w.verify()
        assert w.pageflags("r")["ksmpfns"] == 1
