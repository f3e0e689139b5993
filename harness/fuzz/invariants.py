"""KSM counter invariants: pure functions of counter samples (one snapshot each, taken with
ksmd paused or stopped, so that the counters in it belong to one moment).

What always holds, from mm/ksm.c (6.1):

- pages_shared counts stable nodes (plain or dup) with at least one rmap item, and
  pages_sharing counts each such node's rmap items beyond its first (stable_tree_append,
  remove_rmap_item_from_tree): pages_sharing > 0 only when pages_shared > 0. NOT
  pages_sharing >= pages_shared: a KSM page whose other sharers left has one item
  (shared 1, sharing 0) until it is freed.
- a dup is always linked to its chain (stable_node_chain_add_dup; a chain is freed only
  once it holds none): stable_node_dups > 0 only when stable_node_chains > 0. NOT dups >=
  chains: an emptied chain stays until the next stable tree search prunes it.
- nothing is tracked without ksmd scanning: from a completed run=2 until the next run=1 every
  exact counter is 0 (run=2 removes every rmap item and stable node; run=0 scans nothing).
- full_scans never goes down except that run=2 sets it back to 0
  (unmerge_and_remove_all_rmap_items: ksm_scan.seqnr = 0).
- a knob reads back the last value written (knobs only change by writes).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from harness.ksm.model import EXACT_COUNTERS


def sample_problems(counters: Mapping[str, int], clean: bool,
                    knobs: Mapping[str, int] | None = None,
                    base: Mapping[str, int] | None = None) -> list[str]:
    """What is wrong with one sample; ``clean``: no run=1 since the last run=2; ``knobs``:
    the values last written (compared with the sample's, for those it has); ``base``: what
    the exact counters read after the first run=2 (not 0 only on a kernel that leaked
    before), taken off them, so that a leak is reported by the run that made it."""
    c = {n: v - (base or {}).get(n, 0) if n in EXACT_COUNTERS else v
         for n, v in counters.items()}
    problems = []
    if c.get("pages_sharing", 0) > 0 and c.get("pages_shared", 0) == 0:
        problems.append(f"pages_sharing={c['pages_sharing']} with pages_shared=0")
    if c.get("stable_node_dups", 0) > 0 and c.get("stable_node_chains", 0) == 0:
        problems.append(f"stable_node_dups={c['stable_node_dups']} with "
                        "stable_node_chains=0")
    if clean:
        problems += [f"{n}={c[n]} though ksmd has not run since run=2"
                     for n in EXACT_COUNTERS if c.get(n, 0) != 0]
    for name, value in (knobs or {}).items():
        if name in c and c[name] != value:
            problems.append(f"knob {name} reads {c[name]}, last written {value}")
    return problems


def sequence_problems(samples: Sequence[tuple[Mapping[str, int], bool]]) -> list[str]:
    """What is wrong across samples in order: (counters, run=2 written since the previous
    sample)."""
    problems = []
    prev: int | None = None
    for i, (c, reset) in enumerate(samples):
        scans = c.get("full_scans")
        if scans is None:
            continue
        if prev is not None and not reset and scans < prev:
            problems.append(f"full_scans went down from {prev} to {scans} (sample {i}) "
                            "without run=2")
        prev = scans
    return problems


# -- liveness: ksmd scans every process that asked for it --
#
# From mm/ksm.c (6.1): ksm_madvise(MADV_MERGEABLE) puts the mm on ksmd's list (__ksm_enter)
# unless MMF_VM_MERGEABLE says it is there already; scan_get_next_rmap_item() walks every
# VM_MERGEABLE vma of every mm on the list and gives each address where it finds a present
# pte of a normal anon page (ksm_next_page_pmd_entry in 6.1.192, follow_page before: not
# the zero page, via vm_normal_page) an rmap_item (get_next_rmap_item: mm->ksm_rmap_items++,
# /proc/PID/ksm_stat's ksm_rmap_items). An item is freed only when a later scan
# passes its address and finds no anon page there (get_next_rmap_item's loop,
# remove_trailing_rmap_items), by run=2 or at exit. So once a full scan has begun and ended
# after the process last changed, a process with a present page in a VM_MERGEABLE area
# (counted in that area's Rss: neither the zero page, which use_zero_pages maps, nor a
# swapped-out page is) has at least one rmap_item. Not "one item per present page": a page
# under migration at the moment the scan passes it loses its item until the next scan.


def mergeable_rss_pages(smaps: str, page_kb: int = 4) -> int:
    """Pages present in the VM_MERGEABLE areas of a /proc/PID/smaps text (its "Rss:" and
    "VmFlags:" lines suffice): the Rss of every area whose VmFlags has "mg"."""
    pages, rss = 0, 0
    for line in smaps.splitlines():
        key, _, rest = line.partition(":")
        if key == "Rss":
            rss = int(rest.split()[0])
        elif key == "VmFlags":
            if "mg" in rest.split():
                pages += rss // page_kb
            rss = 0
    return pages


def liveness_problems(procs: Mapping[str, tuple[int, int]]) -> list[str]:
    """What is wrong after a full scan that began after the last step: ``procs`` maps a
    process to (pages present in its VM_MERGEABLE areas, its ksm_rmap_items)."""
    return [f"{name} has {present} pages present in VM_MERGEABLE areas but ksm_rmap_items=0 "
            "after a whole full scan: ksmd does not scan it"
            for name, (present, items) in sorted(procs.items()) if present > 0 and items == 0]
