"""Issue 10: KSM pages migrated by every route, with merge_across_nodes 1 and 0 (seed 004).

Seed 004 (ksm: make !merge_across_nodes migration safe): a KSM page migrated to another node
keeps its stable node in the old node's tree until ksmd finds it misplaced, either when it
next scans one of the page's rmap items or when a stable tree search for another page meets
it; nothing may merge onto a misplaced page, and the stable node must end in the tree of the
node the page is on. Compaction moves a KSM page within its node: the stable node's kpfn must
follow it, or the next search finds a stale node.

Each route moves a merged KSM page and proves it moved (every mapping now at another PFN,
still one KSM page; and for a node route, move_pages(nodes=NULL) puts every page on the new
node) before the outcome: exact counters right after the move and once ksmd has caught up, a
process merging the same content on the old node (with 0: its own KSM page there; with 1:
onto the moved page), one on the new node (onto the moved page), and every sharer's data.
ksmd is stopped while the page moves and the old node's process arrives, so ksmd's first
scan finds the misplaced stable node by either path (whichever comes first in its mm list).

Compaction only moves pages below the point where its two scanners meet, and its free
scanner only takes free pages in partly used pageblocks that sit in the buddy allocator: the
test surrounds the KSM pages with zero-filled fillers, punches holes in them and shrinks the
per-CPU free lists; if compaction still moved no KSM page, the attempt is "race not
exercised" (retried, then a skip), never a pass.
"""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from harness import guest_mm
from harness.access.remote import Runner
from harness.ksm import RUN_UNMERGE, ZERO_COUNTS, Ksm, Layout
from harness.ksm.prepared_guest import KsmGuest
from harness.ksm.race import RaceNotExercised, RaceRecord
from harness.pytest_plugin.ksm_scenarios import exercise_race, on_nodes, skip_unless
from harness.workloads import Workload
from tests.ksm.fixture_types import KnownBug, WorkloadFactory

ROUTES = ("move_pages", "mbind", "migrate_pages")


pytestmark = pytest.mark.usefixtures("two_nodes")


def migrate(w: Workload, region: str, to: int, route: str, attempts: int = 5) -> int:
    """Move the region's pages to node ``to`` by ``route`` (as root: a page mapped more than
    once, a KSM page, moves only with MPOL_MF_MOVE_ALL); returns the calls it took. A call
    that migrated nothing (a page busy at that moment) is retried; one that migrated the
    page somewhere else fails at once."""
    pages = w.regions[region]
    w.kpf_save(region)
    for call in range(1, attempts + 1):
        if route == "move_pages":
            w.move(region, to, move_all=True)
        elif route == "mbind":
            w.mbind(region, to, move_all=True)
        elif route == "migrate_pages":  # the whole process, MPOL_MF_MOVE_ALL as root
            w.migrate(1 - to, to)
        else:
            raise ValueError(f"no route {route!r}")
        on = on_nodes(w, region)
        if on[to] == pages:
            return call
        moved = w.moved(region)
        assert moved["changed"] == 0, \
            (f"{route} migrated {w.name}/{region} but not to node {to}: pages per node "
             f"{on}, PFNs {moved}")
    raise AssertionError(f"{route}: {w.name}/{region} still not on node {to} after "
                         f"{attempts} calls: pages per node {on}")


def free_all(*ws: Workload) -> None:
    for w in ws:
        for region in list(w.regions):
            w.free(region)


def assert_one_ksm_page_moved(w: Workload, region: str) -> None:
    """Every page of the region maps one KSM page, and at another PFN than kpf_save saw."""
    pages = w.regions[region]
    moved, flags = w.moved(region), w.pageflags(region)
    assert (moved["changed_ksm"], moved["gone"]) == (pages, 0), \
        f"{w.name}/{region}: the KSM page did not move: {moved}"
    assert (flags["ksm"], flags["ksmpfns"]) == (pages, 1), \
        f"{w.name}/{region}: not one KSM page after the move: {flags}"


def test_ksm_pages_migrate_to_the_other_node_by_every_route(ksm: Ksm, workload: WorkloadFactory,
                                                            ksm_guest: KsmGuest) -> None:
    """Per route (move_pages, mbind, migrate_pages), its own content: A_route's KSM page (n
    mappings, node 0) moves to node 1 by that route; then C merges each content on node 0
    (the old node) and B on node 1; merge_across_nodes 1, then 0."""
    n = 64  # 3n <= max_page_sharing: one KSM page per content and tree
    movers = {route: workload(name=f"A_{route}") for route in ROUTES}
    # Before 6.7 mbind allocates a KSM page's new copy by the task's policy, on the node it
    # runs on (kernel_bugs "mbind-ksm-page-node"): on node 1's CPU every kernel moves it to
    # node 1; test_mbind_moves_a_ksm_page_to_the_policy_node checks the policy itself.
    with skip_unless():
        guest_mm.pin(ksm_guest.sh, movers["mbind"].pid or 0, 1)
    c, b = workload(name="C"), workload(name="B")
    for mac in (1, 0):
        ksm.set("merge_across_nodes", mac)  # nothing merged: the fixture's or run=2's start
        across = bool(mac)
        content = {route: f"same:{50 + 3 * mac + i}" for i, route in enumerate(ROUTES)}
        layout = Layout()
        for route, a in movers.items():
            a.alloc(route, n, content[route], node=0)
            a.madvise(route, "merge")
            layout.same(content[route], n, 0)
        ksm.set("run", 1)
        ksm.wait_counts(layout.expected(merge_across_nodes=across),
                        what=f"mac={mac}: A_* merged on node 0")

        ksm.set("run", 0)  # ksmd finds the misplaced stable nodes only once C is in place
        layout = Layout()
        for route, a in movers.items():
            calls = migrate(a, route, 1, route)
            assert_one_ksm_page_moved(a, route)
            print(f"mac={mac}: {route} moved {a.name}'s KSM page in {calls} call(s)")
            layout.same(content[route], n, 1)
        ksm.assert_counts(layout.expected(merge_across_nodes=across),
                          f"mac={mac}: right after the KSM pages moved to node 1")
        for route in ROUTES:  # the old node
            c.alloc(route, n, content[route], node=0)
            c.madvise(route, "merge")
            layout.same(content[route], n, 0)
        ksm.set("run", 1)
        ksm.wait_counts(layout.expected(merge_across_nodes=across),
                        what=f"mac={mac}: C merged on node 0 after the KSM pages moved")
        for route, a in movers.items():
            # 1: C merged onto A's KSM page, on node 1; 0: C has its own KSM page on node 0.
            assert (on_nodes(a, route), on_nodes(c, route)) == ((0, n), (0, n) if mac else (n, 0)), \
                f"mac={mac}, {route}: C's pages on the wrong node"
            b.alloc(route, n, content[route], node=1)  # the new node: onto A's moved page
            b.madvise(route, "merge")
            layout.same(content[route], n, 1)
        ksm.wait_counts(layout.expected(merge_across_nodes=across),
                        what=f"mac={mac}: B merged on node 1")
        for route in ROUTES:  # with the counters: B maps A's KSM page, none other
            assert on_nodes(b, route) == (0, n), f"mac={mac}, {route}: B's pages"
        for w in (*movers.values(), b, c):
            w.verify()
        ksm.set("run", RUN_UNMERGE, timeout=300)
        ksm.assert_counts(ZERO_COUNTS, f"mac={mac}: after run=2")
        free_all(*movers.values(), b, c)


def test_mbind_moves_a_ksm_page_to_the_policy_node(ksm: Ksm, workload: WorkloadFactory,
                                                   ksm_guest: KsmGuest, known_bug: KnownBug
                                                   ) -> None:
    """mbind(MPOL_BIND node 1, MPOL_MF_MOVE_ALL) by a task running on node 0: its KSM page
    must go to node 1, the policy's node (a known bug before 6.7 sends it to node 0)."""
    n = 64
    a = workload(name="A")
    with skip_unless():
        cpu = guest_mm.pin(ksm_guest.sh, a.pid or 0, 0)
    a.alloc("r", n, "same:49", node=0)
    a.madvise("r", "merge")
    ksm.set("run", 1)
    ksm.wait_counts(Layout().same("same:49", n, 0).expected(), what="A merged on node 0")
    ksm.set("run", 0)
    a.kpf_save("r")
    known_bug("mbind-ksm-page-node")
    a.mbind("r", 1, move_all=True)
    on, moved = on_nodes(a, "r"), a.moved("r")
    assert on == (0, n), \
        (f"mbind(MPOL_BIND node 1, MPOL_MF_MOVE_ALL) by a task on CPU {cpu} (node 0) left "
         f"A's KSM page on node 0 ({'migrated there' if moved['changed'] else 'not moved'}): "
         f"pages per node {on}, PFNs {moved}")
    assert_one_ksm_page_moved(a, "r")
    ksm.assert_counts(Layout().same("same:49", n, 1).expected(), "after mbind moved it")
    ksm.set("run", 1)
    ksm.wait_counts(Layout().same("same:49", n, 1).expected(), what="after mbind, ksmd on")
    a.verify()


@pytest.fixture
def small_pcp_lists(ksm_guest: KsmGuest) -> Iterator[None]:
    """Freed pages go straight back to the buddy allocator (see guest_mm.PCP_HIGH_FRACTION)
    for the test; the boot value comes back after it."""
    sh = ksm_guest.sh
    with skip_unless():
        saved = guest_mm.pcp_high_fraction(sh)
    guest_mm.write_file(sh, guest_mm.PCP_HIGH_FRACTION, guest_mm.PCP_HIGH_FRACTION_SMALL)
    yield
    guest_mm.write_file(sh, guest_mm.PCP_HIGH_FRACTION, saved)


def per_page(m: int, node: int, sharers: int, layout: Layout | None = None) -> Layout:
    """m distinct contents (unique:SEED page p in every process), each ``sharers`` times."""
    layout = layout or Layout()
    for p in range(m):
        layout.same(f"page {p}", sharers, node)
    return layout


def compaction_moves_ksm_pages(ksm: Ksm, sh: Runner, f: Workload, a: Workload, b: Workload,
                               c: Workload, mac: int, attempt: int) -> RaceRecord:
    """A and B merge m pages pairwise on node 1, between two filler regions of F punched full
    of holes; node 1 is compacted. Precondition: some of those KSM pages moved (new PFN,
    still KSM), else RaceNotExercised. Then exact counters, C on node 1 merging onto every
    KSM page (moved or not), and C on node 0 (1: onto them too; 0: its pages stay unshared)."""
    m, node, across = 256, 1, bool(mac)
    seed = f"unique:{60 + 2 * attempt + mac}"
    f.alloc("low", 2048, "zero", node=node, thp=False)  # soaks up holes left low down
    for w in (a, b):
        w.alloc("p", m, seed, node=node, thp=False)
    f.alloc("high", 8192, "zero", node=node, thp=False)  # above the KSM pages: their holes
    for w in (a, b):
        w.madvise("p", "merge")
    ksm.set("run", 1)
    layout = per_page(m, node, 2)
    ksm.wait_counts(layout.expected(merge_across_nodes=across),
                    what=f"mac={mac}: A and B merged pairwise")
    for region in ("low", "high"):  # an odd stride: the free scanner samples every 32nd page
        f.punch(region, 7)
    for w in (a, b):
        w.kpf_save("p")
    before = guest_mm.vmstat(sh)
    with skip_unless():
        took = guest_mm.compact_node(sh, node)
    stats = guest_mm.vmstat_delta(before, guest_mm.vmstat(sh), "compact_migrate_scanned",
                                  "compact_isolated", "pgmigrate_success", "pgmigrate_fail")
    ma, mb = a.moved("p"), b.moved("p")
    rec = RaceRecord(f"compaction of node {node} (merge_across_nodes={mac})")
    rec.facts.update({"KSM pages moved": ma["changed_ksm"], "of": m,
                      "compaction s": round(took, 2), **stats})
    if ma["changed_ksm"] == 0:
        ksm.set("run", RUN_UNMERGE, timeout=300)
        free_all(f, a, b)
        raise RaceNotExercised(f"compaction moved none of the {m} KSM pages (they sat where "
                               f"its scanners met, or above): {rec.summary()}")
    rec.exercised()
    # The moved pages are still KSM pages, A and B still share each one (the same ones moved
    # for both), and the counters did not move.
    assert (ma["ksm"], ma["gone"]) == (m, 0) and ma == mb, \
        f"mac={mac}: after compaction A: {ma}, B: {mb}"
    ksm.assert_counts(layout.expected(merge_across_nodes=across),
                      f"mac={mac}: right after compaction moved {ma['changed_ksm']} KSM pages")
    c.alloc("p", m, seed, node=node, thp=False)  # the same node: onto every KSM page
    c.alloc("q", m, seed, node=1 - node, thp=False)  # the other node
    for region in ("p", "q"):
        c.madvise(region, "merge")
    per_page(m, node, 1, layout)
    per_page(m, 1 - node, 1, layout)
    ksm.wait_counts(layout.expected(merge_across_nodes=across),
                    what=f"mac={mac}: C merged on both nodes after compaction")
    assert c.pageflags("p")["ksm"] == m, f"mac={mac}: C did not merge on node {node}"
    assert on_nodes(c, "q") == ((0, m) if mac else (m, 0)), f"mac={mac}: C's pages of node 0"
    assert c.pageflags("q")["ksm"] == (m if mac else 0), f"mac={mac}: C's pages of node 0"
    for w in (a, b, c):
        w.verify()
    ksm.set("run", RUN_UNMERGE, timeout=300)
    ksm.assert_counts(ZERO_COUNTS, f"mac={mac}: after run=2")
    free_all(f, a, b, c)
    return rec


def test_compaction_moves_ksm_pages(ksm: Ksm, workload: WorkloadFactory, ksm_guest: KsmGuest,
                                    small_pcp_lists: None, request: pytest.FixtureRequest) -> None:
    f, a, b, c = (workload(name=name) for name in ("F", "A", "B", "C"))
    for mac in (1, 0):
        ksm.set("merge_across_nodes", mac)
        def attempt(i: int, mac: int = mac) -> RaceRecord:
            return compaction_moves_ksm_pages(ksm, ksm_guest.sh, f, a, b, c, mac, i)

        exercise_race(request.node, f"compaction moves KSM pages (merge_across_nodes={mac})",
                      attempt)
