"""Which full scans smart_scan (6.7+) looks at a page in, and whether two identical pages can
ever merge: the schedule of mm/ksm.c's should_skip_rmap_item() and skip_age() (unchanged from
6.7's 5e924ff54d08, "mm/ksm: add smart page scanning mode", to 7.2), written out so a test can
say which twins must merge and check the kernel against it.

A page that has not merged ages by one every full scan, skipped or not. Below age 3 it is
looked at every scan; then, each time it is looked at, it may be skipped skip_age(age) times
(1 up to age 3, 2 up to 5, 4 up to 8, then 8). So a never-merging page created in scan 0 is
looked at in scans 0, 1, 2, 3, 5, 8, 13, then every 9th. Nothing ever sets the age back: an
rmap_item keeps it until the page merges or goes away.

Two identical pages merge only in a scan where both are looked at and neither is at its
first look (cmp_and_merge_page() stores a new page's checksum and stops there): the unstable
tree is emptied at the start of every scan, and a skipped page is taken out of it. A page
lone for long and a twin born later can so settle into different phases of the 9-scan
period and never meet.
"""
from __future__ import annotations

from collections.abc import Iterable

FREE_LOOKS = 3   # ages 0..2 are never skipped ("they need to get a chance to go through the
#                  different phases of the KSM merging")
AGE_MAX = 255    # rmap_age_t is u8 and stops there
PERIOD = 9       # one look and skip_age()'s 8 skips, from age 13 on


def skip_age(age: int) -> int:
    """mm/ksm.c skip_age(): how many scans to skip after looking at a page of this age."""
    if age <= 3:
        return 1
    if age <= 5:
        return 2
    if age <= 8:
        return 4
    return 8


def looks(scans: int) -> list[bool]:
    """For a page that neither changes nor merges, whether ksmd looks at it (True) or skips it
    in each of its first ``scans`` full scans (index 0: the scan that creates its rmap_item)."""
    age = remaining = 0
    seen: list[bool] = []
    for _ in range(scans):
        current = age
        if age != AGE_MAX:
            age += 1
        if current < FREE_LOOKS:
            seen.append(True)
        elif remaining == 0:
            remaining = skip_age(current)
            seen.append(True)
        else:
            remaining -= 1
            seen.append(False)
    return seen


def looked_at(created: int, scan: int) -> bool:
    """Is a page whose rmap_item was created in full scan ``created`` looked at in ``scan``?"""
    if scan < created:
        return False
    return looks(scan - created + 1)[-1]


def first_meeting(created: Iterable[int], until: int) -> int | None:
    """The first scan, up to ``until``, in which identical pages created in the given scans
    can merge (each looked at, none at its first look); None if they never meet by then."""
    births = list(created)
    for scan in range(max(births) + 1, until + 1):
        if all(looked_at(born, scan) for born in births):
            return scan
    return None


def steady_birth(look: int) -> int:
    """A creation scan for a page seen looked at in ``look`` once in its 9-scan period: every
    such page is looked at in the same scans from ``look`` on, whatever its real age."""
    return look - 13 - PERIOD
