"""Kernel bugs the suite knows, each with the kernel versions that have it and the fix.

A test that meets a known bug asks :func:`xfail_mark` with the guest's kernel release: inside
the affected versions it gets a *strict* expected failure (a kernel carrying the fix makes the
test XPASS, which fails the run: the table below needs updating); outside them the test must
pass like any other. The symptom alone never makes a test an expected failure.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

Version = tuple[int, int, int]


def parse_version(text: str) -> Version | None:
    """``6.12.54`` -> (6, 12, 54); ``6.1`` -> (6, 1, 0); None when it starts otherwise."""
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", text.strip())
    if not m:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def kernel_version(release: str, banner: str = "") -> Version | None:
    """The upstream version of a kernel from its release (``uname -r``) and, if known, its
    banner (/proc/version, ``uname -v``). Debian's 6.1 releases are ``6.1.0-N-amd64``: the
    upstream sublevel is only in the banner's last words (``... Debian 6.1.192-3
    (2026-11-26)``; the compiler's "Debian 12.2.0-14" comes earlier)."""
    found = re.findall(r"Debian (\d+\.\d+\.\d+)\S* \(\d{4}-\d\d-\d\d\)", banner)
    if found:
        return parse_version(found[-1])
    return parse_version(release)


@dataclass(frozen=True)
class KernelBug:
    id: str
    summary: str
    introduced: str            # first upstream version with the bug
    fix: str                   # the upstream commit that removes it: "<sha> (\"subject\")"
    fixed_in: tuple[str, ...]  # first fixed release of each line: stable (6.12.54), mainline;
    #                            () while no fix is known (then ``fix`` says so)
    evidence: str = ""         # where the versions come from
    # stable lines ("6.18") whose fix was queued at a release not known here: no excuse is
    # claimed there (the test must pass; where it fails, that is a red verdict, not a guess)
    fixed_unknown: tuple[str, ...] = ()

    def affects(self, version: Version | None) -> bool:
        if version is None:
            return False  # unknown kernel: no excuse, the test must pass
        if version < _v(self.introduced):
            return False
        if any(version[:2] == _v(line)[:2] for line in self.fixed_unknown):
            return False
        if not self.fixed_in:
            return True  # no upstream fix known: every release since it came in
        fixes = sorted(_v(f) for f in self.fixed_in)
        if version >= fixes[-1]:
            return False  # at or past the mainline fix
        for fixed in fixes:
            if version[:2] == fixed[:2]:
                return version < fixed  # a stable line that got the fix
        return True  # a line that never got it

    def describe(self) -> str:
        if not self.fixed_in:
            return (f"known kernel bug {self.id}: {self.summary}; affects {self.introduced} "
                    f"on, {self.fix}")
        return (f"known kernel bug {self.id}: {self.summary}; affects {self.introduced} up to "
                f"the fix {self.fix}, in {', '.join(self.fixed_in)}")


def _v(text: str) -> Version:
    v = parse_version(text)
    assert v is not None, text
    return v


KNOWN_BUGS: dict[str, KernelBug] = {bug.id: bug for bug in (
    KernelBug(
        id="ksm-fork-counters",
        summary="a forked child inherits its parent's ksm_merging_pages and ksm_rmap_items "
                "(/proc/PID/ksm_merging_pages, /proc/PID/ksm_stat)",
        introduced="5.19",  # 7609385337a4 ("ksm: count ksm merging pages for each process")
        fix='4d6fc29f3634 ("mm/ksm: fix incorrect KSM counter handling in mm_struct during '
            'fork")',
        # mainline 6.18-rc1; Cc stable 6.6+, so 6.1 never got it. 6.12.54 and 6.17.4 carry it
        # (their stable review shortlogs, 2025-10-17); 6.6.113 is the same stable cycle.
        fixed_in=("6.6.113", "6.12.54", "6.17.4", "6.18"),
        evidence="seen on Debian 6.1.0-x (upstream 6.1.192); passes on Debian 6.12.117",
    ),
    KernelBug(
        id="mbind-ksm-page-node",
        summary="mbind(MPOL_MF_MOVE_ALL) migrates a KSM page to the calling task's node, not "
                "to the new policy's: mbind's new_page() looks for the page's address in each "
                "VMA with page_address_in_vma(), which fails for a KSM page (it has no "
                "anon_vma), and then allocates by the task's policy (later releases before "
                "the fix give up on the page instead)",
        introduced="3.9",  # KSM pages became migratable: "ksm: enable KSM page migration"
        fix='72e315f7a750 ("mempolicy: mmap_lock is not needed while migrating folios"; '
            'mbind allocates by the new policy, alloc_migration_target_by_mpol())',
        # mainline 6.7-rc1 (Hugh Dickins' mempolicy series), not sent to stable
        fixed_in=("6.7",),
        evidence="seen on Debian 6.1.0-57 (upstream 6.1.192) and source:6.1 with the caller "
                 "pinned to node 0: the KSM page moved (new PFN) and stayed on node 0; "
                 "passes on Debian 6.12.117",
    ),
    KernelBug(
        id="kpageflags-ksm-all-anon",
        summary="/proc/kpageflags sets KPF_KSM on every anonymous page: stable_page_flags() "
                "tests mapping & PAGE_MAPPING_KSM (the ANON and MOVABLE bits), true for any "
                "anonymous folio, instead of comparing both bits",
        introduced="6.10",  # dee3d0bef2b0 ("proc: rewrite stable_page_flags()"), v6.10-rc1
        fix='81401cebfc15 ("fs/proc: fix KPF_KSM reported for all anonymous pages")',
        # mainline after 7.2-rc2 (Cc stable); the 6.18.y and 7.1.y stable queues carried it
        # on 2026-07-22, releases not known here
        fixed_in=("7.2",),
        fixed_unknown=("6.18", "7.1"),
        evidence="seen on Debian 6.12.117 (every never-merged anonymous page flagged); not on "
                 "6.1; a 6.18.44 host reads 0 for a never-merged page",
    ),
    KernelBug(
        id="ksm-page-outside-mergeable-vma",
        summary="run=2 leaves a KSM page mapped where the area is no longer mergeable: KSM "
                "turns the page it merges first into a KSM page in place "
                "(try_to_merge_one_page), so a page a fork left shared becomes a KSM page for "
                "the other process's mapping too, even after that process's MADV_UNMERGEABLE; "
                "run=2 and MADV_UNMERGEABLE only walk VM_MERGEABLE areas, so the page stays a "
                "KSM page, its stable node stays (busy), and merge_across_nodes can no longer "
                "be switched (EBUSY) with every counter at 0",
        introduced="2.6.32",  # KSM's in-place conversion of the first page merged
        fix="no upstream fix known (2026-12; found here, not yet reported)",
        fixed_in=(),
        evidence="found by the knob chaos (seed 167548195) on Debian 6.1.192, source:6.1 and "
                 "Debian 6.12.117, same counts each time; reduced to "
                 "test_run2_unmerges_pages_a_fork_shared_outside_mergeable_areas",
    ),
    KernelBug(
        id="smart-scan-twin-never-merges",
        summary="with smart_scan=1, a page lone for long and an identical page born later "
                "can never merge: should_skip_rmap_item() looks at an unmerged page once "
                "every 9 full scans from age 13 on and never sets the age back, a new page is "
                "looked at in its scans 0-3, 5, 8, 13 and then every 9th, and the unstable "
                "tree lives for one scan; for 3 of the 9 phases a twin can be born in, the "
                "two are never looked at in the same scan (harness/ksm/smart_scan.py)",
        introduced="6.7",  # 5e924ff54d08 ("mm/ksm: add smart page scanning mode")
        fix="no upstream fix known (2026-12; found here, not yet reported)",
        fixed_in=(),
        evidence="Debian 6.12.117/118 and 7.2.13: twins born 1, 2 and 8 scans after the old "
                 "page's look never merged in 40 scans, the 6 other phases merged, as the "
                 "schedule says; first seen as 1 of 3 runs of the earlier, timing-placed test "
                 "failing (4044 full scans)",
    ),
)}


def affected(bug_id: str, release: str, banner: str = "") -> KernelBug | None:
    """The bug when this kernel is known to have it, else None."""
    bug = KNOWN_BUGS[bug_id]
    return bug if bug.affects(kernel_version(release, banner)) else None


# The table in docs/kernel-bugs.md is generated from KNOWN_BUGS, never written by hand, so
# the documented versions are the ones the xfail gate uses (tests/unit/test_kernel_bugs.py
# fails when the committed file is stale).
REGENERATE = "python -m harness.kernel_bugs --markdown > docs/kernel-bugs.md"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _affected_range(bug: KernelBug) -> str:
    if not bug.fixed_in:
        return f"{bug.introduced} and every later release (no fix known)"
    text = f"{bug.introduced} up to the fix; fixed in {', '.join(bug.fixed_in)}"
    if bug.fixed_unknown:
        text += (f"; {', '.join(bug.fixed_unknown)}: fixed at a release not known here, "
                 "no excuse claimed")
    return text


def markdown() -> str:
    """docs/kernel-bugs.md: every known bug, the versions that have it, its fix."""
    lines = [
        "# Known kernel bugs",
        "",
        f"Generated from `harness/kernel_bugs.py` by `{REGENERATE}`; do not edit by hand.",
        "",
        "A test that checks one of these bugs is a strict expected failure (xfail) on the",
        "affected versions only. Elsewhere it must pass, and a kernel that carries the fix",
        "shows an XPASS, which fails the run: update the table in `harness/kernel_bugs.py`.",
        "The upstream version of a Debian kernel is read from its banner (`/proc/version`).",
        "",
        "| id | bug | affected versions | fix | evidence |",
        "| --- | --- | --- | --- | --- |",
    ]
    for bug in KNOWN_BUGS.values():
        lines.append("| " + " | ".join(_cell(c) for c in (
            f"`{bug.id}`", bug.summary, _affected_range(bug), bug.fix, bug.evidence)) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    import sys

    args = sys.argv[1:] if argv is None else argv
    if args != ["--markdown"]:
        print("python -m harness.kernel_bugs: give --markdown (prints docs/kernel-bugs.md); "
              f"got {' '.join(args) or 'nothing'}", file=sys.stderr)
        return 2
    sys.stdout.write(markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
