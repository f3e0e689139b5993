"""Scenario 1: merge and unmerge with exact counters; the knobs refuse bad values; and proof that
the suite's two checks (data verification, exact counters) fire.

Several processes (two C workloads and the Python worker) map several page classes: identical
pages shared across processes, unique pages, zero pages, pages differing only in their last
bytes, and half-identical regions. The kernel defines the counters exactly once ksmd has done
two full scans with nothing changing (see harness.ksm.Layout): every phase asserts all six with
ksmd paused, and every phase verifies every byte of every process.
"""
from __future__ import annotations

import pytest

from harness.ksm import (
    RUN_UNMERGE,
    ZERO_COUNTS,
    Ksm,
    KsmCountMismatch,
    KsmNoProgress,
    KsmWriteError,
    Layout,
    count_mismatches,
    selected_value,
)
from harness.ksm.race import RaceNotExercised, RaceRecord, ksm_file
from harness.pytest_plugin.ksm_scenarios import SCAN_MODES, exercise_race
from harness.workloads import DataCorruption, Workload
from tests.ksm.fixture_types import KnownBug, WorkloadFactory

# (knob, value the kernel must refuse with EINVAL). Values are what mm/ksm.c's parsers reject:
# kstrtouint/kstrtoul/kstrtoint failures, run > 2, merge_across_nodes > 1, max_page_sharing < 2,
# kstrtobool on anything but 0/1/y/n/on/off.
INVALID = [
    ("run", "3"), ("run", "-1"), ("run", "x"),
    ("pages_to_scan", "-1"), ("pages_to_scan", "many"), ("pages_to_scan", "4294967296"),
    ("sleep_millisecs", "-5"), ("sleep_millisecs", "1e3"),
    ("merge_across_nodes", "2"), ("merge_across_nodes", "-1"),
    ("max_page_sharing", "1"), ("max_page_sharing", "0"), ("max_page_sharing", "-3"),
    ("max_page_sharing", "lots"),
    ("use_zero_pages", "2"), ("use_zero_pages", "maybe"),
    ("stable_node_chains_prune_millisecs", "-1"), ("stable_node_chains_prune_millisecs", "x"),
]


def build_processes(workload: WorkloadFactory
                    ) -> tuple[tuple[Workload, Workload, Workload], Layout]:
    """Three processes and their page classes; returns (workloads, layout) with
    max_page_sharing=256 in mind (no group leaves a lone page unmerged)."""
    a, b, p = workload(name="A"), workload(name="B"), workload(python=True, name="P")
    a.alloc("s1", 1536, "same:1")     # shared with B and P
    a.alloc("u", 512, "unique:11")
    a.alloc("z", 256, "zero")
    a.alloc("lb", 256, "lastbyte:5")  # identical but for the last 8 bytes: all unique
    a.alloc("h", 512, "half:7")       # 256 pages same:7, 256 unique
    b.alloc("s1", 1024, "same:1")
    b.alloc("s2", 300, "same:2")
    p.alloc("s1", 64, "same:1")      # the Python worker is slow (~5 ms a page under TCG)
    p.alloc("s2", 36, "same:2")
    for w in (a, b, p):
        for name in w.regions:
            w.madvise(name, "merge")
    layout = (Layout().same("same:1", 1536 + 1024 + 64).same("same:2", 300 + 36)
              .same("same:7", 256).zero(256).unique(512 + 256 + 256))
    return (a, b, p), layout


def verify_all(*ws: Workload) -> None:
    for w in ws:
        assert w.verify() == sum(w.regions.values())


def wait_chains_accounted(ksm: Ksm, exp: dict[str, int], what: str) -> None:
    """After sharers left a max_page_sharing chain, only its totals are exact: ksmd never
    repacks the dups, so they keep the holes the leavers made, and how many dups that leaves
    depends on which dups held them (scan order). Seen on 6.12.117: 11 dups where a fresh
    merge gives 10, with one sharer fewer and one KSM page more. Exact: every page accounted
    for, none volatile, the chains, and the KSM pages outside chains; the dups at least the
    packed number."""
    plain = exp["pages_shared"] - exp["stable_node_dups"]
    merged = exp["pages_shared"] + exp["pages_sharing"]
    exact = {k: exp[k] for k in ("pages_unshared", "pages_volatile", "stable_node_chains")}
    ksm.wait_merged(lambda c: not count_mismatches(c, exact, ksm.lumped)
                    and c["pages_shared"] + c["pages_sharing"] == merged
                    and c["pages_shared"] - c["stable_node_dups"] == plain
                    and c["stable_node_dups"] >= exp["stable_node_dups"],
                    pages=merged + exp["pages_unshared"], exact=True,
                    expect=f"{merged} pages merged, {plain} KSM pages outside chains, at least "
                           f"{exp['stable_node_dups']} dups {what}")


@SCAN_MODES
def test_merge_unmerge_exact_counters(ksm: Ksm, workload: WorkloadFactory) -> None:
    (a, b, p), layout = build_processes(workload)
    expected = layout.expected()
    assert expected == {"pages_shared": 11 + 2 + 1 + 1, "pages_sharing": 2613 + 334 + 255 + 255,
                        "pages_unshared": 1024, "pages_volatile": 0,
                        "stable_node_chains": 2, "stable_node_dups": 13}
    ksm.set("run", 1)
    ksm.wait_counts(expected, what="after merging three processes")
    verify_all(a, b, p)

    # Per process: every mergeable page has an rmap item; the merged ones count in
    # ksm_merging_pages (when this kernel has the files).
    assert a.pid is not None  # started
    stat = ksm.process_stat(a.pid)
    if "ksm_merging_pages" in stat:
        assert stat["ksm_merging_pages"] == 1536 + 256 + 256, stat
    if "ksm_rmap_items" in stat:
        assert stat["ksm_rmap_items"] == 1536 + 512 + 256 + 256 + 512, stat

    # Writes break KSM pages (COW): 10 pages of B's s1 get unique content.
    for page in range(10):
        b.write("s1", page * 50)
    layout.groups[("same:1", None)] -= 10
    layout.unique(10)
    ksm.wait_counts(layout.expected(), what="after B rewrote 10 merged pages")
    verify_all(a, b, p)

    # MADV_UNMERGEABLE breaks B's s2 pages at once; ksmd drops their rmap items on its scan.
    b.madvise("s2", "unmerge")
    layout.groups[("same:2", None)] -= 300
    ksm.wait_counts(layout.expected(), what="after B's MADV_UNMERGEABLE of s2")
    verify_all(a, b, p)

    # The Python process exits: its 100 pages leave the trees.
    p.exit()
    layout.groups[("same:1", None)] -= 64
    layout.groups[("same:2", None)] -= 36
    wait_chains_accounted(ksm, layout.expected(), "after P exited")
    verify_all(a, b)

    # run=2 unmerges everything; then run=0: every counter stays 0.
    ksm.set("run", RUN_UNMERGE, timeout=300)
    ksm.set("run", 0)
    snap = ksm.assert_counts(ZERO_COUNTS, "after run=2 then run=0")
    assert snap["full_scans"] == 0, "run=2 resets full_scans"
    verify_all(a, b)

    # And KSM merges it all again.
    ksm.set("run", 1)
    ksm.wait_counts(layout.expected(), what="after merging again")
    verify_all(a, b)


def test_invalid_knob_values_are_einval_and_change_nothing(ksm: Ksm) -> None:
    """Every knob refuses values its parser rejects with EINVAL, and nothing changes."""
    before = ksm.knobs()
    wrong = []
    tried = 0
    for knob, value in INVALID:
        if not ksm.has(knob):
            continue
        tried += 1
        try:
            ksm.set(knob, value)
            wrong.append(f"{knob}={value} was accepted")
        except KsmWriteError as refused:
            if refused.errno_name != "EINVAL":
                wrong.append(f"{knob}={value} gave {refused.errno_name}, not EINVAL: {refused}")
        after = ksm.knobs()
        if after != before:
            changed = {n: (before.get(n), v) for n, v in after.items() if before.get(n) != v}
            wrong.append(f"{knob}={value} changed knobs (was, now): {changed}")
            for name, (was, _) in changed.items():
                if was is not None:
                    ksm.set(name, selected_value(was))
    assert tried >= 10
    assert not wrong, "\n".join(wrong)


def test_tree_knobs_refuse_change_while_shared(ksm: Ksm, workload: WorkloadFactory) -> None:
    """merge_across_nodes and max_page_sharing: EBUSY while pages are shared (state
    unchanged), the current value is always accepted, and run=2 makes them changeable."""
    w = workload()
    w.alloc("s", 512, "same:3", node=0)
    w.madvise("s", "merge")
    ksm.set("run", 1)
    expected = Layout().same("same:3", 512).expected()
    ksm.wait_counts(expected, what="merged")
    for knob, other in (("merge_across_nodes", 0), ("max_page_sharing", 100)):
        current = ksm.get(knob)
        with pytest.raises(KsmWriteError) as refused:
            ksm.set(knob, other)
        assert refused.value.errno_name == "EBUSY", str(refused.value)
        assert ksm.get(knob) == current
        ksm.set(knob, current)  # writing the current value is not a change
    ksm.assert_counts(expected, "after the refused writes")
    ksm.set("run", RUN_UNMERGE, timeout=300)
    ksm.set("max_page_sharing", 100)
    ksm.set("merge_across_nodes", 0)
    ksm.set("run", 1)
    again = Layout().same("same:3", 512, node=0).expected(max_page_sharing=100,
                                                          merge_across_nodes=False)
    assert (again["pages_shared"], again["stable_node_chains"]) == (6, 1)
    ksm.wait_counts(again, what="merged again with max_page_sharing=100, merge_across_nodes=0")
    w.verify()


# ---- the checks can fire ----

def test_corruption_check_fires(ksm: Ksm, workload: WorkloadFactory) -> None:
    """A byte flipped behind the workload's back (in a merged page, in the parent and in a
    child) is reported as DataCorruption with its place: the verification is not a no-op."""
    w = workload()
    w.alloc("s", 256, "same:4")
    w.madvise("s", "merge")
    ksm.set("run", 1)
    ksm.wait_counts(Layout().same("same:4", 256).expected(), what="merged")
    w.corrupt("s", 17, 99)
    with pytest.raises(DataCorruption) as found:
        w.verify()
    c = found.value
    assert (c.region, c.page, c.offset, c.pages, c.child) == ("s", 17, 99, 1, None), str(c)
    assert "DATA CORRUPTION" in str(c)
    # The same check runs in forked children, and their verdict reaches the parent.
    w.write("s", 17, same_seed=4)  # repair: expectation and content agree again
    w.verify()
    (child,) = w.fork(1)
    w.children("corrupt s 200")
    with pytest.raises(DataCorruption) as found:
        w.children_verify()
    assert (found.value.page, found.value.child) == (200, child), str(found.value)
    assert w.children_exit() == [1]  # the child exits with the corruption status
    assert w.exit(check=False) == 1  # and so does the parent


def test_wrong_counter_expectation_names_the_counter(ksm: Ksm, workload: WorkloadFactory) -> None:
    """A deliberately wrong expectation fails with a message naming the counter, its value and
    the expected one."""
    w = workload()
    w.alloc("s", 300, "same:5")
    w.alloc("u", 20, "unique:5")
    w.madvise("s", "merge")
    w.madvise("u", "merge")
    ksm.set("run", 1)
    right = Layout().same("same:5", 300).unique(20).expected()
    ksm.wait_counts(right, what="merged")
    wrong = dict(right, pages_sharing=right["pages_sharing"] + 1)
    with pytest.raises(KsmCountMismatch) as mismatch:
        ksm.wait_counts(wrong, timeout=3, what="with a wrong expectation")
    message = str(mismatch.value)
    assert (f"pages_sharing is {right['pages_sharing']}, expected {right['pages_sharing'] + 1}"
            in message), message
    assert mismatch.value.mismatches == {
        "pages_sharing": (right["pages_sharing"], right["pages_sharing"] + 1)}
    with pytest.raises(KsmCountMismatch, match="pages_unshared is 20, expected 0"):
        ksm.assert_counts(dict(right, pages_unshared=0))
    w.verify()


def test_stalled_ksmd_is_reported_not_waited_for(ksm: Ksm, workload: WorkloadFactory) -> None:
    """When ksmd cannot finish a scan, the wait ends at its deadline with "ksmd made no
    progress" and the counters, instead of hanging."""
    w = workload()
    w.alloc("s", 64, "same:6")
    w.madvise("s", "merge")
    ksm.set("pages_to_scan", 1)
    ksm.set("sleep_millisecs", 600000)
    ksm.set("run", 1)
    with pytest.raises(KsmNoProgress, match="ksmd made no progress") as stalled:
        ksm.wait_counts(Layout().same("same:6", 64).expected(), timeout=3)
    assert "full_scans=" in str(stalled.value)


def test_ksm_pages_told_by_every_method(ksm: Ksm, workload: WorkloadFactory) -> None:
    """Which pages are KSM pages, by each method this kernel has (ksmwork_ksmpages.c): the
    default one (kpageflags where it can be believed, checked against the others; where it
    lies, the mappings completed by smaps' KSM:) and the mappings and smaps alone. They
    agree on A's merged pages, each proven by its mappings (one KSM page at 252 addresses of
    A/s; A/u's pages mapped by B too); on B's pages whose A twin a write took back (a KSM
    page mapped once: only smaps counts it); and on pages that are not KSM pages: never
    merged, or rewritten: none by any method."""
    a, b = workload(name="A"), workload(name="B")
    a.alloc("plain", 64, "same:91")  # one content, never madvised: never merged
    a.alloc("s", 256, "same:92")
    for w in (a, b):
        w.alloc("u", 128, "unique:93")  # A's page i == B's page i
    for w, region in ((a, "s"), (a, "u"), (b, "u")):
        w.madvise(region, "merge")
    layout = Layout().same("same:92", 256)
    for i in range(128):
        layout.same(f"pair{i}", 2)
    ksm.set("run", 1)
    ksm.wait_counts(layout.expected(), what="A/s merged, A/u and B/u merged in pairs")
    ksm.set("run", 0)
    for page in range(8):  # COW: A's copies are private again, B's stay KSM pages
        a.write("u", page)
    for page in range(4):
        a.write("s", page)

    default = {r: a.pageflags(r) for r in ("plain", "s", "u")}
    got = [(default[r]["ksm"], default[r]["ksm_maps"]) for r in ("plain", "s", "u")]
    assert got == [(0, 0), (252, 252), (120, 120)], default
    assert (default["s"]["ksmpfns"], default["u"]["ksmpfns"]) == (1, 120), default
    rewritten = a.pageflags("u", 0, 8), a.pageflags("s", 0, 4)
    assert [f["ksm"] for f in rewritten] == [0, 0], f"rewritten pages count as KSM: {rewritten}"
    bu = b.pageflags("u")
    assert (bu["ksm"], bu["ksm_maps"]) == (128, 120), f"B/u: {bu}"
    smaps = bu["ksm_smaps"] >= 0  # "KSM:" from 6.6 on
    if smaps:
        assert bu["ksm_smaps"] == 128, f"B/u: {bu}"

    for w in (a, b):
        w.trust_kpageflags(False)
    alone = {r: a.pageflags(r) for r in ("plain", "s", "u")}
    assert [alone[r]["ksm_maps"] for r in alone] == [0, 252, 120], alone
    if smaps:  # else the mappings only prove, and the counts are refused (ksm_unknown)
        assert [alone[r]["ksm"] for r in alone] == [0, 252, 120], alone
        assert alone["u"].method == "maps+smaps", alone
        bu = b.pageflags("u")
        assert (bu["ksm"], bu.method) == (128, "smaps"), f"B/u: {bu}"
        assert a.pageflags("u", 0, 8)["ksm"] == 0
    a.verify()
    b.verify()


def test_kpageflags_marks_only_ksm_pages(ksm: Ksm, workload: WorkloadFactory, known_bug: KnownBug
                                         ) -> None:
    """The suite's "no KSM page mapped" checks read /proc/kpageflags (KPF_KSM) where it can be
    believed, so that ABI is checked first: pages never merged are not KSM pages; merged ones are, on exactly
    pages_shared distinct PFNs; after run=2 none is. Broken from 6.10 until 81401cebfc15
    (kernel_bugs ``kpageflags-ksm-all-anon``): every anonymous page is flagged. On such a
    kernel the other scenarios find KSM pages by their mappings and smaps' KSM: count (the
    workload checks one page of its own first; ksmwork_ksmpages.c); this one reads the flags
    anyway, unchecked."""
    known_bug("kpageflags-ksm-all-anon")
    w = workload()
    w.trust_kpageflags()
    w.alloc("plain", 256, "unique:81")  # never madvised: KSM never looks at it
    w.alloc("s", 512, "same:81")
    w.madvise("s", "merge")
    plain = w.pageflags("plain")
    assert plain["nopfn"] == 0, plain
    assert plain["ksm"] == 0, (f"/proc/kpageflags marks {plain['ksm']} of 256 never-merged "
                               f"anonymous pages KPF_KSM: {plain}")
    ksm.set("run", 1)
    snap = ksm.wait_counts(Layout().same("s", 512).expected(), what="512 identical pages")
    merged = w.pageflags("s")
    assert (merged["ksm"], merged["ksmpfns"]) == (512, snap["pages_shared"]), merged
    ksm.set("run", RUN_UNMERGE, timeout=300)
    after = w.pageflags("s")
    assert after["ksm"] == 0, f"KSM pages still mapped after run=2: {after}"
    w.verify()


def test_run2_killed_part_way_leaves_ksm_usable(ksm: Ksm, workload: WorkloadFactory,
                                                request: pytest.FixtureRequest) -> None:
    """run=2 killed with SIGKILL part-way (unmerge_ksm_pages() sees the signal and gives up):
    precondition, asserted each round, the writer died of the signal with D's pages partly
    unmerged (pagemap + kpageflags: the counters only move once a whole mm is done). The kill
    is aimed in the guest (killwrite: at the first probe that sees D part-way), not by a
    delay from the host: the whole run=2 lasts ~1 s on 6.1 under TCG, far less on 6.12,
    where a fixed delay always came too late. Then every KSM knob write returns within a
    deadline, run reads a sane value, and at the end a full run=2 leaves every counter,
    chain and dup at 0 (the ksm fixture checks the KSM slabs against their baseline after
    the test)."""
    d = workload(name="D")
    addr = d.alloc("s", 8192, "same:58")  # 32 dups of one content
    d.madvise("s", "merge")
    k = workload(name="K")  # kills the writer; maps nothing mergeable
    merged = Layout().same("same:58", 8192).expected()
    rounds = []
    for r in range(3):
        def attempt(i: int, r: int = r) -> RaceRecord:
            ksm.set("run", 1)
            ksm.wait_counts(merged, what=f"round {r}.{i}: merged")
            f = k.kill_write(ksm_file("run"), RUN_UNMERGE, probe=(d.pid or 0, addr, 8192))
            snap = ksm.snapshot()
            # The counters only move once a whole mm is done: D's own pages show the progress.
            left = d.pageflags("s")["ksm"]
            rec = RaceRecord(f"round {r}: run=2 killed", facts={
                "writer": f["status"], "probe at the kill": f["state"], "polls": f["polls"],
                "D pages still KSM": left, "of": 8192, "pages_sharing": snap["pages_sharing"],
                "run reads": snap.text("run")})
            if f["status"] != "signal:9" or not 0 < left < 8192:
                ksm.unmerge_all()
                raise RaceNotExercised(f"not killed part-way ({rec.summary()})")
            rec.exercised()
            # The outcome: run reads a sane value, every knob write returns in time.
            assert ksm.get("run") in (0, 1, 2), snap.text("run")
            for name, value in ksm.knobs().items():
                if name != "run":
                    ksm.set(name, selected_value(value), timeout=30)
            d.verify()
            return rec

        rounds.append(exercise_race(request.node, f"round {r}: run=2 killed part-way",
                                    attempt))
    ksm.unmerge_all()
    ksm.assert_counts(ZERO_COUNTS, "after a full run=2 following the killed ones")
    d.verify()
    assert d.pageflags("s")["ksm"] == 0
