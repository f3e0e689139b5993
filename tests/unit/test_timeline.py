"""The counter plot is drawn from samples and phases (no guest needed)."""
from __future__ import annotations

import xml.etree.ElementTree as ET

from harness.ksm import timeline


def test_svg_has_a_line_per_series_and_phase_marks() -> None:
    tl = timeline.Timeline(
        samples=[(0.0, {"pages_shared": 0, "pages_sharing": 0, "full_scans": 0}),
                 (1.0, {"pages_shared": 4, "pages_sharing": 60, "full_scans": 2}),
                 (2.0, {"pages_shared": 0, "pages_sharing": 0, "full_scans": 0})],
        phases=[(0.2, "alloc a"), (0.21, "madvise a"), (1.5, "unmerge")])
    root = ET.fromstring(timeline.svg(tl, "scenario"))
    ns = "{http://www.w3.org/2000/svg}"
    assert len(root.findall(f"{ns}polyline")) == len(timeline.SERIES)
    marks = [e for e in root.findall(f"{ns}line") if e.get("stroke-dasharray")]
    assert len(marks) == 2  # the burst at 0.2 s collapses into one mark
    assert "60" in [t.text for t in root.findall(f"{ns}text")]  # the left axis' maximum
