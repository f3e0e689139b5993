"""Scenarios 2 and 3: merge_across_nodes on a 2-node guest, and NUMA migration of KSM pages.

Seed 000 (ksm: remove old stable nodes more thoroughly): switching merge_across_nodes after
run=2 could oops on stale stable nodes, left by KSM pages lingering in swapcache, by mms forked
behind the unmerge cursor, or by KSM pages faulted back from swapcache just after the unmerge
passed them. The cycle test forces the second with evidence: a process still mapping KSM pages
forks in a loop for the whole of run=2, and a fork lands while run=2 is part-way through an
earlier mm (guest timestamps and a probe of that mm's pages; otherwise "race not exercised",
a skip); KSM pages also go to zram and come back. Then no page anywhere (children included)
may map a KSM page, merge_across_nodes switches (not EBUSY) and merges again exactly. A KSM
page in swapcache while run=2 passes (the third cause) needs a swap disk: test_swap.py.

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
    KsmSnapshot,
    KsmWriteError,
    Layout,
)
from harness.ksm.model import check_counts, count_mismatches, describe_mismatches
from harness.ksm.race import Interval, RaceNotExercised, RaceRecord, ksm_file
from harness.pytest_plugin.ksm_scenarios import exercise_race, on_nodes
from harness.workloads import Workload
from tests.ksm.fixture_types import MemcgFactory, WorkloadFactory

pytestmark = pytest.mark.usefixtures("two_nodes")


def test_merge_across_nodes_one_tree_or_one_per_node(ksm: Ksm, workload: WorkloadFactory) -> None:
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
    on = {on_nodes(a, "r"), on_nodes(b, "r")}
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
    assert on_nodes(a, "r") == (100, 0) and on_nodes(b, "r") == (0, 100), "merged across nodes"
    a.verify()
    b.verify()


def runs(text: str) -> str:
    """Run-length form of a probe string: "kkkkpppu" -> "k4p3u1"."""
    return "".join(f"{m.group(1)}{len(m.group(0))}" for m in re.finditer(r"(.)\1*", text))


def forks_during_unmerge(a: Workload, d: Workload, region: str, addr: int, keep: int,
                         forced_off: bool = False) -> tuple[RaceRecord, int]:
    """run=2 while ``a`` forks in a loop for the whole of it (seed 000, cause 2: mms forked
    behind the unmerge cursor were missed). ``d`` is earlier in KSM's mm list (it madvised
    first), so run=2 unmerges it before ``a``. Precondition, asserted before any outcome:
    every page of d/region mapped a KSM page just before run=2; the forks began before run=2
    and ended after it; a fork landed while run=2 was part-way through d/region (its first
    page no longer KSM, its last one still KSM: the earlier mm being unmerged while a later
    one forks); a kept child was forked inside run=2 while d still had KSM pages (so ``a``,
    later in the list, still mapped KSM pages too). The forking mm cannot be the one being
    unmerged: fork takes its mmap_lock for writing, run=2 holds it for reading for the whole
    mm (seen: a probe on the forker itself went from all-KSM to none in one fork).
    forced_off: fork only after run=2 returned. Returns the record and the kept children
    forked inside run=2 from KSM pages; RaceNotExercised when missed."""
    pages = d.regions[region]
    before = d.pageflags(region)
    if before["ksm"] != pages or before["present"] != pages:
        raise RaceNotExercised(f"{d.name}/{region}: {before['ksm']}/{pages} pages mapped a "
                               f"KSM page before run=2 ({before})")
    f = a.race_forks(ksm_file("run"), RUN_UNMERGE, keep, probe=(d.pid or 0, addr, pages),
                     delay_ms=200 if forced_off else None)
    if f["rc"] != "0":
        raise KsmWriteError("run", RUN_UNMERGE, f["rc"], f"run=2 racing forks: {f}")
    rec = RaceRecord("forks during run=2")
    run2 = rec.add(Interval("run=2", int(f["t0"]), int(f["t1"])))
    forks = rec.add(Interval("forks", int(f["first"]), int(f["last"])))
    kept_ksm = int(f["kept_inside_ksm"])
    rec.facts.update({"forks": int(f["forks"]), "inside run=2": int(f["inside"]),
                      f"inside while {d.name}/{region} was part-unmerged": int(f["inside_p"]),
                      "kept children forked inside from KSM pages": kept_ksm,
                      f"probes of {d.name}/{region}": runs(f["probes"]),
                      "probed by": f.get("probe_by", "?")})
    missed = []
    if not (forks.t0 <= run2.t0 and forks.t1 >= run2.t1):
        missed.append("the forks did not cover the whole of run=2")
    if int(f["inside_p"]) < 1:
        missed.append(f"no fork while run=2 was part-way through {d.name}/{region}")
    if kept_ksm < 1:
        missed.append("no kept child was forked inside run=2 from KSM pages")
    if missed:
        if a.children_pids:
            a.children_exit()
        raise RaceNotExercised(f"{'; '.join(missed)} ({rec.summary()})")
    return rec.exercised(), kept_ksm


def assert_run2_left_nothing(ksm: Ksm, left: KsmSnapshot, rec: RaceRecord, what: str) -> None:
    """Every counter 0 after run=2 (``left``, read as it returned). One exception, from
    mm/ksm.c: a KSM page still mapped by an mm exiting at that moment (A's children exit
    all through run=2, and __mmput calls ksm_exit before exit_mmap) is busy for
    remove_stable_node(), which run=2 ignores ("don't worry if some are still busy") and
    remove_all_stable_nodes() stops that node's tree there: stable nodes stay, seen as
    stable_node_chains/dups with every page counter 0 (under load: chains 5, dups 4). Those
    children are gone now, so a second run=2 must remove them; a counter it leaves is wrong.
    Called after every mapping is checked: a live process still mapping a KSM page fails
    there, before a second run=2 could unmerge it."""
    wrong = count_mismatches(left, ZERO_COUNTS, ksm.lumped)
    if wrong and all(name.startswith("stable_node_") for name in wrong):
        rec.facts["stable nodes run=2 left busy"] = describe_mismatches(wrong)
        left = ksm.unmerge_all()
        what += " twice (the first left stable nodes an exiting child still mapped)"
    check_counts(left, ZERO_COUNTS, f"{what} ({rec.summary()})", ksm.lumped)


def test_merge_across_nodes_cycles_with_swapcache_and_forks_during_unmerge(
        ksm: Ksm, workload: WorkloadFactory, memcg: MemcgFactory, zram_swap: str,
        request: pytest.FixtureRequest) -> None:
    """Seed 000 on two nodes, three merge_across_nodes cycles. A (outside the memory cgroup,
    so its KSM pages stay present) forks in a loop for the whole of each run=2 (cause 2; the
    race's precondition is asserted, see forks_during_unmerge); B's KSM pages are pushed to
    zram and faulted back during and after it. zram frees a swapped page at once, so no KSM
    page sits in swapcache here: that precondition (cause 3) is forced with a swap disk in
    test_swap.py::test_ksm_page_in_swapcache_when_run2_passes."""
    group = memcg("mac")
    d = workload(name="D")  # first in KSM's mm list: run=2 is part-way through it while A forks
    big = 6144
    addr = d.alloc("big", big, "same:22", node=1)
    d.madvise("big", "merge")
    a = workload(name="A")  # forks during run=2
    b = workload(name="B", cgroup=group)  # swapped to zram, faulted in
    n = 400
    # A and B hold different contents. A KSM page stays charged to the memory cgroup of the
    # page KSM turned into it, and which page that is depends on scan order: shared with A,
    # B's pages were at times all charged outside B's group, and memory.reclaim found none.
    for w, same, useed in ((a, "same:21", 1), (b, "same:25", 2)):
        w.alloc("n0", n, same, node=0)
        w.alloc("n1", n, same, node=1)
        w.alloc("u", 64, f"unique:{useed}", node=0)
        for region in w.regions:
            w.madvise(region, "merge")
    layout = (Layout().same("same:21", n, node=0).same("same:21", n, node=1)
              .same("same:25", n, node=0).same("same:25", n, node=1)
              .same("same:22", big, node=1).unique(128))
    records = []

    for cycle, mac in enumerate((1, 0, 1)):
        def attempt(i: int, cycle: int = cycle, mac: int = mac) -> RaceRecord:
            # An attempt whose race was missed ends early, with B's pages still in zram: read
            # back, they are present again, as the layout's counts assume (ksmd scans present
            # pages only). Seen under load: attempt 2.1 short of B's 64 unique pages.
            b.verify()
            ksm.set("merge_across_nodes", mac)  # run=2 came before: it must not be EBUSY
            ksm.set("run", 1)
            ksm.wait_counts(layout.expected(merge_across_nodes=bool(mac)),
                            what=f"cycle {cycle}.{i}: merged with merge_across_nodes={mac}")
            group.reclaim()  # B's KSM pages to zram; part of them faulted back
            flags = {r: b.pageflags(r) for r in ("n0", "n1")}
            swapped = flags["n0"]["swapped"] + flags["n1"]["swapped"]
            if swapped == 0:  # a precondition (seen once in ~90 runs, cause not known yet)
                stat = group.keyed("memory.stat")
                raise RaceNotExercised(
                    f"memory.reclaim swapped none of B's pages out (B/n0 {flags['n0']}, "
                    f"B/n1 {flags['n1']}; B's group: memory.current {group.current()}, "
                    + ", ".join(f"{k} {stat.get(k)}" for k in
                                ("anon", "active_anon", "inactive_anon", "swapcached"))
                    + ")")
            b.verify("n0")
            rec, kept_ksm = forks_during_unmerge(a, d, "big", addr, keep=6)
            rec.scenario = f"cycle {cycle} mac={mac}: " + rec.scenario
            rec.facts["B swapped"] = swapped
            # The outcome. Nothing anywhere still maps a KSM page: A, its children (those
            # forked inside run=2 from KSM pages too), B faulting its swapped pages now.
            left = ksm.exact_counters()
            b.verify()
            a.verify()
            d.verify()
            for w in (a, b, d):
                for region in w.regions:
                    pflags = w.pageflags(region)
                    assert pflags["nopfn"] == 0, pflags
                    assert pflags["ksm"] == 0, (f"cycle {cycle}: {w.name}/{region} still maps "
                                                f"KSM pages after run=2: {pflags}")
            reply = " ".join(a.children(f"pageflags {r}").text for r in a.regions)
            assert set(re.findall(r"\bksm=(\d+)", reply)) == {"0"}, \
                (f"cycle {cycle}: a child forked during run=2 ({kept_ksm} of them from KSM "
                 f"pages) still maps KSM pages: {reply}")
            a.children_verify()
            assert set(a.children_exit()) == {0}
            assert_run2_left_nothing(ksm, left, rec, f"cycle {cycle}: after run=2")
            return rec

        records.append(exercise_race(request.node, f"cycle {cycle}: forks during run=2",
                                     attempt))
    ksm.set("merge_across_nodes", 0)
    ksm.set("run", 1)
    ksm.wait_counts(layout.expected(merge_across_nodes=False), what="after the last switch")
    for w in (a, b, d):
        w.verify()


@pytest.mark.selfcheck
def test_forks_after_unmerge_are_race_not_exercised(ksm: Ksm, workload: WorkloadFactory,
                                                    request: pytest.FixtureRequest) -> None:
    """Self-check of the race machinery (selftest only): the race forced off (A forks only
    after run=2 returned) must end as "race not exercised", which in a scenario is a skip,
    never a pass. Here that skip is the expected outcome: anything else fails."""
    d = workload(name="D")
    addr = d.alloc("big", 512, "same:23", node=1)
    d.madvise("big", "merge")
    a = workload(name="A")
    a.alloc("s", 64, "same:23", node=1)
    a.madvise("s", "merge")

    def attempt(i: int) -> RaceRecord:
        ksm.set("run", 1)
        ksm.wait_counts(Layout().same("x", 576, node=1).expected(), what=f"merged ({i})")
        rec, _ = forks_during_unmerge(a, d, "big", addr, keep=1, forced_off=True)
        return rec  # not reached: the forks all came after run=2

    with pytest.raises(pytest.skip.Exception,
                       match=r"^race not exercised: forks during run=2 \(forced off\): "):
        exercise_race(request.node, "forks during run=2 (forced off)", attempt, attempts=2)


def move_all(w: Workload, region: str, node: int, timeout: float = 60.0) -> None:
    """move_pages(MPOL_MF_MOVE_ALL) until every page of the region is on ``node``: a KSM page
    being scanned or mapped by many can be busy for a moment."""
    deadline = time.monotonic() + timeout
    pages = w.regions[region]
    while True:
        result = w.move(region, node, move_all=True)
        on = on_nodes(w, region)[node]
        if on == pages:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{w.name}/{region}: only {on}/{pages} pages reached node "
                                 f"{node} in {timeout:.0f}s (last move: {result})")


def test_migrated_ksm_pages_stay_per_node(ksm: Ksm, workload: WorkloadFactory) -> None:
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
    assert (on_nodes(a, "r"), on_nodes(b, "r"), on_nodes(c, "r")) == ((0, n), (0, n), (n, 0)), \
        "a page merged across nodes"
    for w in (a, b, c):
        w.verify()

    # C's KSM page joins node 1 (three dups there), then A's goes back to node 0 alone.
    move_all(c, "r", 1)
    expected.update(stable_node_dups=3)
    ksm.wait_counts(expected, what="after C's KSM page moved to node 1")
    assert on_nodes(c, "r") == (0, n)
    move_all(a, "r", 0)
    expected.update(stable_node_dups=2)
    ksm.wait_counts(expected, what="after A's KSM page moved back to node 0")
    assert (on_nodes(a, "r"), on_nodes(b, "r"), on_nodes(c, "r")) == ((n, 0), (0, n), (0, n))
    for w in (a, b, c):
        w.verify()
        assert w.pageflags("r")["ksmpfns"] == 1
