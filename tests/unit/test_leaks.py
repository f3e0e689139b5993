"""Leak checks name the counter or cache, the expected and the actual value."""
from __future__ import annotations

from harness.ksm import leaks


def test_idle_problems_name_counter_and_values() -> None:
    counters = {"pages_shared": 3, "pages_sharing": 0, "pages_unshared": 0,
                "pages_volatile": 0, "stable_node_chains": 0, "stable_node_dups": 1,
                "full_scans": 9}
    assert leaks.ksm_idle_problems(counters) == ["pages_shared 3 != 0 after unmerge",
                                                 "stable_node_dups 1 != 0 after unmerge"]


def test_slab_residue_within_slack_is_not_a_leak() -> None:
    base = {"ksm_rmap_item": 120, "ksm_stable_node": 40, "ksm_mm_slot": 10}
    assert leaks.slab_problems(base, {"ksm_rmap_item": 180, "ksm_stable_node": 40,
                                      "ksm_mm_slot": 12}, slack=64) == []
    assert leaks.slab_problems(base, {"ksm_rmap_item": 4216, "ksm_stable_node": 40,
                                      "ksm_mm_slot": 10}, slack=64) == [
        "slab ksm_rmap_item 4216 objects > baseline 120 + 64"]
