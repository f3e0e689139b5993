"""The counter plot is drawn from samples and phases (no guest needed), and stays legible:
a log scale for pages, ticks on every axis, phase labels that never overlap."""
from __future__ import annotations

import xml.etree.ElementTree as ET

from harness.ksm.timeline import SERIES, Timeline
from harness.results import plot

NS = "{http://www.w3.org/2000/svg}"


def test_svg_has_a_line_per_series_and_phase_marks() -> None:
    tl = Timeline(
        samples=[(0.0, {"pages_shared": 0, "pages_sharing": 0, "full_scans": 0}),
                 (1.0, {"pages_shared": 4, "pages_sharing": 60, "full_scans": 2}),
                 (2.0, {"pages_shared": 0, "pages_sharing": 0, "full_scans": 0})],
        phases=[(0.2, "alloc a"), (0.21, "madvise a"), (1.5, "unmerge")])
    root = ET.fromstring(plot.svg(tl, "scenario"))
    assert len(root.findall(f"{NS}polyline")) == len(SERIES)
    marks = [e for e in root.findall(f"{NS}line") if e.get("stroke-dasharray")]
    assert len(marks) == 2  # the burst at 0.2 s collapses into one mark
    texts = [t.text or "" for t in root.findall(f"{NS}text")]
    assert {"0", "10", "100"} <= set(texts)  # decades of the log axis
    assert any("pages_sharing (max 60" in t for t in texts)
    assert {"0", "0.2", "1", "2"} & set(texts)  # seconds ticks


def test_small_and_large_counts_are_both_legible() -> None:
    # 13 pages_shared beside 3447 pages_sharing: on a linear axis the first is a flat line
    tl = Timeline(samples=[(0.0, {"pages_shared": 0, "pages_sharing": 0}),
                           (1.0, {"pages_shared": 13, "pages_sharing": 3447})])
    svg = plot.svg(tl, "t", height=420)
    root = ET.fromstring(svg)
    shared = next(p for p in root.findall(f"{NS}polyline")
                  if p.get("stroke") == plot.COLORS["pages_shared"])
    ys = [float(pt.split(",")[1]) for pt in (shared.get("points") or "").split()]
    rise = ys[0] - ys[1]
    assert rise > 60  # a linear axis of ~290 px would give 13 of 3447 pages about 1 px


def test_phase_labels_never_overlap() -> None:
    xs = [100.0, 104.0, 108.0, 112.0, 116.0, 400.0]
    labels = ["alloc s1", "alloc s2", "madvise s1", "madvise s2", "fork 1", "exit"]
    placed = plot.lanes(xs, labels, 70.0)
    spans: dict[int, list[tuple[float, float]]] = {}
    for x, label, lane in zip(xs, labels, placed):
        if lane is None:
            continue
        end = x + len(label) * plot.CHAR_WIDTH
        assert all(end <= a or x >= b for a, b in spans.get(lane, [])), (label, lane)
        spans.setdefault(lane, []).append((x, end))
    assert placed[-1] == 0  # room again further right
    assert None in placed  # five labels within 16 px: one goes without (its line stays)


def test_a_phased_process_records_each_command_then_sends_it() -> None:
    # the program is a real one (cat answers each line); the sampler's samples do not
    # matter here, its program ends at once
    from harness.ksm.timeline import PhasedProcess, Sampler
    from tests.fakes import LocalProcess
    sampler = Sampler(lambda cmd: LocalProcess("true"))
    proc = PhasedProcess(LocalProcess("cat"), sampler)
    try:
        proc.send_line("alloc a 100 same:1")
        assert proc.read_line(10) == "alloc a 100 same:1"
        proc.send_line("madvise a merge")
        assert proc.read_line(10) == "madvise a merge"
    finally:
        proc.kill()
        timeline = sampler.stop()
    assert [label for _, label in timeline.phases] == ["alloc a", "madvise a"]
