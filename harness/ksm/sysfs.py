"""The one place that knows KSM's sysfs (/sys/kernel/mm/ksm) and its per-process files.

What the kernel's counters mean exactly (mm/ksm.c, Documentation/admin-guide/mm/ksm.rst):

- ``pages_shared``: KSM pages in use, i.e. physical pages that back merged content (one per
  stable node, or per stable node *dup* once max_page_sharing split a node into a chain).
- ``pages_sharing``: the extra mappings of those KSM pages, i.e. how many pages are saved. A KSM
  page mapped m times counts 1 in pages_shared and m-1 in pages_sharing.
- ``pages_unshared``: pages ksmd scans repeatedly that found no partner (unique content, sitting
  in the unstable tree).
- ``pages_volatile``: pages whose content changes too fast to be put in a tree (rmap items minus
  the three above).
- ``full_scans``: completed passes over all mergeable areas; ``run=2`` resets it.
- ``stable_node_chains`` / ``stable_node_dups``: nodes turned into chains because more than
  max_page_sharing mappings share one content, and the dups (one KSM page each) they hold.

Knob facts (6.1): ``run`` 0 stop / 1 merge / 2 unmerge everything (blocks until done);
``merge_across_nodes`` and ``max_page_sharing`` only change while nothing is merged (EBUSY
otherwise; max_page_sharing < 2 is EINVAL; writing the current value always succeeds).
"""
from __future__ import annotations

import errno
import os
import re
import time
from dataclasses import dataclass, field

from harness.access.remote import (
    CommandTimeout,
)
from harness.errors import KernelError
from harness.guest_mm import selected

KSM_DIR = "/sys/kernel/mm/ksm"

# Counters this module knows; what a kernel really has is read with ls (never assumed).
COUNTERS = (
    "full_scans", "pages_shared", "pages_sharing", "pages_unshared", "pages_volatile",
    "stable_node_chains", "stable_node_dups",
    # newer than 6.1:
    "general_profit", "ksm_zero_pages", "pages_scanned", "pages_skipped",
)
# Knobs that shape the stable tree: they only change while nothing is merged.
TREE_KNOBS = ("merge_across_nodes", "max_page_sharing")

RUN_STOP, RUN_MERGE, RUN_UNMERGE = 0, 1, 2


# errno names from the strerror texts the guest's shell prints ("echo: I/O error").
_STRERROR = sorted(((os.strerror(code), name) for code, name in errno.errorcode.items()),
                   key=lambda pair: -len(pair[0]))


class KsmError(Exception):
    """KSM did something unexpected (a test failure, possibly a kernel bug)."""


class KsmUnavailable(KernelError):
    """The kernel has no KSM (CONFIG_KSM=n) or lacks a knob a test needs."""


class KsmWriteError(KsmError):
    """The kernel refused a write to a KSM file; ``errno_name`` is e.g. EBUSY or EINVAL."""

    def __init__(self, name: str, value: object, errno_name: str, detail: str) -> None:
        super().__init__(f"writing {value} to KSM's {name} failed: {errno_name} ({detail})")
        self.name = name
        self.value = value
        self.errno_name = errno_name


class KsmTimeout(KsmError, CommandTimeout):
    """A KSM file write (typically run=2) did not return: a hang candidate. Also a
    CommandTimeout, so whatever treats guest command timeouts as hangs (the health monitor's
    hang evidence) treats this one the same way."""

    def __init__(self, message: str, command: str = "", timeout: float = 0.0) -> None:
        Exception.__init__(self, message)
        self.command = command
        self.timeout = timeout


class KsmNoProgress(KsmError):
    """ksmd did not scan, or did not reach the expected state, before the deadline."""

    def __init__(self, message: str, before: KsmSnapshot, after: KsmSnapshot) -> None:
        super().__init__(message)
        self.before = before
        self.after = after


class KsmUnmergeIncomplete(KsmError):
    """run=2 returned but KSM pages remain."""


# ---- pure helpers (unit tested without a guest) ----

@dataclass(frozen=True)
class KsmSnapshot:
    """Every readable file of /sys/kernel/mm/ksm at one moment (raw text values)."""

    values: dict[str, str]
    taken: float = field(default_factory=time.monotonic)

    def __getitem__(self, name: str) -> int:
        if name not in self.values:
            raise KeyError(f"{KSM_DIR}/{name} is not in this kernel's KSM snapshot")
        try:
            return int(self.values[name])
        except ValueError:
            raise KsmError(f"{KSM_DIR}/{name} is not a number: {self.values[name]!r}") from None

    def __contains__(self, name: object) -> bool:
        return name in self.values

    def get(self, name: str, default: int = 0) -> int:
        return self[name] if name in self.values else default

    def text(self, name: str) -> str:
        return self.values[name]

    def counters(self) -> dict[str, int]:
        """The known counters this kernel has, as numbers."""
        return {n: self[n] for n in COUNTERS if n in self.values and _is_int(self.values[n])}

    def summary(self) -> str:
        """One line for failure messages: counters and the scan knobs."""
        keys = [n for n in ("run", "full_scans", "pages_shared", "pages_sharing",
                            "pages_unshared", "pages_volatile", "stable_node_chains",
                            "stable_node_dups", "pages_to_scan", "sleep_millisecs")
                if n in self.values]
        return " ".join(f"{k}={self.values[k]}" for k in keys)


def _is_int(text: str) -> bool:
    return re.fullmatch(r"-?\d+", text.strip()) is not None


def parse_snapshot(text: str) -> dict[str, str]:
    """Parse ``grep -H '' *`` run inside the KSM directory: ``name:value`` lines (a directory
    prefix, if any, is dropped)."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and name:
            values[name.rsplit("/", 1)[-1]] = value.strip()
    return values


def parse_ls(text: str) -> dict[str, bool]:
    """Parse ``ls -l`` of the KSM directory into {file: writable by its owner}."""
    files: dict[str, bool] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0].startswith("-") and len(parts[0]) >= 3:
            files[parts[-1]] = parts[0][2] == "w"
    return files


def parse_process_stat(text: str) -> dict[str, int]:
    """Parse the output of :meth:`Ksm.process_stat`'s command: ``== FILE`` headers followed by
    /proc/PID/ksm_stat lines ("ksm_rmap_items 12", newer kernels "key: value" or yes/no) and
    /proc/PID/ksm_merging_pages (a single number)."""
    stats: dict[str, int] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("== "):
            section = line[3:]
            continue
        if not line:
            continue
        if section == "ksm_merging_pages":
            if _is_int(line):
                stats["ksm_merging_pages"] = int(line)
            continue
        m = re.fullmatch(r"([A-Za-z_]\w*):?\s+(\S+)", line)
        if m is None:
            continue
        value = m.group(2)
        if _is_int(value):
            stats[m.group(1)] = int(value)
        elif value in ("yes", "no"):
            stats[m.group(1)] = int(value == "yes")
    return stats


def _read_all(ksm_dir: str) -> str:
    """Shell that prints ``name:value`` for every readable file of ``ksm_dir`` with builtins
    only (no process to fork: a fork+exec costs ~80 ms in a TCG guest)."""
    return (f"for __kf in {ksm_dir}/*; do if read -r __kv < \"$__kf\"; then "
            f"echo \"${{__kf##*/}}:$__kv\"; fi; done 2>/dev/null")


def errno_from_text(text: str) -> str:
    """The errno name (EBUSY, EINVAL...) whose strerror text appears in ``text``, or "?"."""
    for message, name in _STRERROR:
        if message and message in text:
            return name
    return "?"


# The writable form of a knob value: "[none] scan-time" selects "none".
selected_value = selected


