"""KSM: the one layer that knows /sys/kernel/mm/ksm and the per-process KSM files.

- ``sysfs``: names, knobs, counters, errors, snapshots and parsers;
- ``model``: what the counters must read (chains, dups, layouts), pure;
- ``control``: :class:`Ksm`, driving KSM in a guest with deadlines;
- ``leaks``: counters and KSM slabs back at their baseline;
- ``timeline``: counters sampled over a test's life;
- ``prepared_guest``: a guest made ready for KSM scenarios (KsmGuest).

The public names of sysfs, model and control are re-exported here.
"""
from __future__ import annotations

from harness.ksm.control import (
    Ksm,
    PendingWrite,
    write_in_background,
)
from harness.ksm.model import (
    ALL_GONE,
    DEADLINE_FLOOR,
    DEADLINE_SLACK,
    EXACT_COUNTERS,
    FAST_PAGES_TO_SCAN,
    FAST_SLEEP_MILLISECS,
    POLL_MAX,
    SCAN_SECONDS_PER_PAGE,
    ZERO_COUNTS,
    ExpectedCounts,
    KsmCountMismatch,
    Layout,
    check_counts,
    count_mismatches,
    describe_mismatches,
    expected_across_nodes,
    expected_counts,
    expected_shared_sharing,
    scan_deadline,
)
from harness.ksm.sysfs import (
    COUNTERS,
    KSM_DIR,
    RUN_MERGE,
    RUN_STOP,
    RUN_UNMERGE,
    TREE_KNOBS,
    KsmError,
    KsmNoProgress,
    KsmSnapshot,
    KsmTimeout,
    KsmUnavailable,
    KsmUnmergeIncomplete,
    KsmWriteError,
    errno_from_text,
    parse_ls,
    parse_process_stat,
    parse_snapshot,
    selected_value,
)

__all__ = [
    "RUN_MERGE",
    "RUN_STOP",
    "RUN_UNMERGE",
    "ALL_GONE",
    "COUNTERS",
    "DEADLINE_FLOOR",
    "DEADLINE_SLACK",
    "EXACT_COUNTERS",
    "ExpectedCounts",
    "FAST_PAGES_TO_SCAN",
    "FAST_SLEEP_MILLISECS",
    "KSM_DIR",
    "Ksm",
    "KsmCountMismatch",
    "KsmError",
    "KsmNoProgress",
    "KsmSnapshot",
    "KsmTimeout",
    "KsmUnavailable",
    "KsmUnmergeIncomplete",
    "KsmWriteError",
    "Layout",
    "POLL_MAX",
    "PendingWrite",
    "SCAN_SECONDS_PER_PAGE",
    "TREE_KNOBS",
    "ZERO_COUNTS",
    "check_counts",
    "count_mismatches",
    "describe_mismatches",
    "errno_from_text",
    "expected_across_nodes",
    "expected_counts",
    "expected_shared_sharing",
    "parse_ls",
    "parse_process_stat",
    "parse_snapshot",
    "scan_deadline",
    "selected_value",
    "write_in_background",
]
