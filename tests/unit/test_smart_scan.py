"""harness.ksm.smart_scan: the schedule of mm/ksm.c's should_skip_rmap_item(), and which
twins it lets meet."""
from __future__ import annotations

from harness.ksm.smart_scan import PERIOD, first_meeting, looked_at, looks, steady_birth


def test_a_lone_page_is_looked_at_on_the_kernels_schedule() -> None:
    # ages 0-2 free, then skip_age(): 1 skip after age 3, 2 after 5, 4 after 8, 8 from 13 on
    assert [i for i, seen in enumerate(looks(50)) if seen] == [0, 1, 2, 3, 5, 8, 13, 22, 31,
                                                               40, 49]


def test_the_age_stops_at_255_and_the_period_stays() -> None:
    seen = [i for i, s in enumerate(looks(600)) if s]
    assert all(b - a == PERIOD for a, b in zip(seen[6:], seen[7:]))


def test_pages_born_in_one_scan_meet_in_the_next() -> None:
    assert first_meeting([40, 40], 100) == 41


def test_a_twin_meets_a_long_lone_page_only_in_six_of_nine_phases() -> None:
    look = 200  # the old page is looked at here, then every 9th scan
    never = [o for o in range(PERIOD)
             if first_meeting([steady_birth(look), look + o + 1], look + 400) is None]
    assert never == [1, 2, 8]


def test_steady_birth_gives_the_seen_look_and_its_period() -> None:
    born = steady_birth(77)
    assert looked_at(born, 77) and looked_at(born, 86)
    assert not any(looked_at(born, s) for s in range(78, 86))
