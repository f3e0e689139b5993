"""A scenario's KSM counters as an SVG a person can read: pages on a log scale (so 13
pages_shared and 3447 pages_sharing are both legible) with decade ticks and gridlines,
full_scans on its own linear axis to the right, seconds along the bottom with ticks, and each
workload command as a dashed line whose label sits in the first free lane above the plot
(labels never overlap; a burst of commands shares one line)."""
from __future__ import annotations

import html
import math
from pathlib import Path

from harness.ksm.timeline import SERIES, Timeline

COLORS = {"pages_shared": "#1f77b4", "pages_sharing": "#d62728", "pages_unshared": "#2ca02c",
          "full_scans": "#7f7f7f"}
PAGE_SERIES = SERIES[:3]
LANES = 4            # rows of phase labels above the plot
LANE_HEIGHT = 12
CHAR_WIDTH = 5.6     # of the 9 px label font
MIN_MARK_GAP = 6.0   # pixels: closer commands share one mark


def nice_step(span: float, ticks: int = 6) -> float:
    """1, 2 or 5 times a power of ten, giving about ``ticks`` ticks over ``span``."""
    raw = max(span, 1e-9) / ticks
    mag = 10 ** math.floor(math.log10(raw))
    return next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)


def _log(v: float) -> float:
    return math.log10(1 + max(v, 0))


def lanes(xs: list[float], labels: list[str], first: float) -> list[int | None]:
    """The label lane of each mark (None: no room, the mark keeps its line)."""
    ends = [first - 1.0] * LANES
    out: list[int | None] = []
    for x, label in zip(xs, labels):
        width = len(label) * CHAR_WIDTH + 4
        lane = next((i for i, end in enumerate(ends) if x >= end), None)
        if lane is not None:
            ends[lane] = x + width
        out.append(lane)
    return out


def svg(timeline: Timeline, title: str, width: int = 960, height: int = 420) -> str:
    left, right, bottom = 70, 70, 55
    top = 28 + LANES * LANE_HEIGHT
    w, h = width - left - right, height - top - bottom
    xs = [t for t, _ in timeline.samples] or [0.0]
    tmax = max(xs[-1], max((t for t, _ in timeline.phases), default=0.0), 1e-3)
    pmax = max([v.get(s, 0) for _, v in timeline.samples for s in PAGE_SERIES] or [0])
    decades = max(1, math.ceil(_log(pmax)))
    scans = [v.get("full_scans", 0) for _, v in timeline.samples] or [0]
    sstep = nice_step(max(max(scans), 1), 5)
    smax = math.ceil(max(max(scans), 1) / sstep) * sstep

    def x(t: float) -> float:
        return left + w * t / tmax

    def yp(v: float) -> float:
        return top + h - h * _log(v) / decades

    def ys(v: float) -> float:
        return top + h - h * v / smax

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           'font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{left}" y="16" font-size="13">{html.escape(title)}</text>']
    # left axis: pages, one tick and gridline per decade
    for d in range(decades + 1):
        y = yp(10 ** d) if d else top + h
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + w}" y2="{y:.1f}" '
                   'stroke="#e4e4e4"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">'
                   f'{0 if d == 0 else f"{10 ** d:,}"}</text>')
    out.append(f'<text x="14" y="{top + h / 2:.0f}" text-anchor="middle" '
               f'transform="rotate(-90 14 {top + h / 2:.0f})">pages (log scale)</text>')
    # right axis: full_scans, linear
    v = 0.0
    while v <= smax + 1e-9:
        out.append(f'<text x="{left + w + 6}" y="{ys(v) + 4:.1f}" '
                   f'fill="{COLORS["full_scans"]}">{v:g}</text>')
        v += sstep
    out.append(f'<text x="{width - 12}" y="{top + h / 2:.0f}" text-anchor="middle" '
               f'fill="{COLORS["full_scans"]}" '
               f'transform="rotate(90 {width - 12} {top + h / 2:.0f})">full_scans</text>')
    # bottom axis: seconds
    step = nice_step(tmax, 8)
    t = 0.0
    while t <= tmax + 1e-9:
        out.append(f'<line x1="{x(t):.1f}" y1="{top}" x2="{x(t):.1f}" y2="{top + h}" '
                   'stroke="#f0f0f0"/>')
        out.append(f'<text x="{x(t):.1f}" y="{top + h + 15}" text-anchor="middle">'
                   f'{t:g}</text>')
        t += step
    out.append(f'<text x="{left + w / 2:.0f}" y="{top + h + 30}" text-anchor="middle">'
               'seconds</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="none" '
               'stroke="#888"/>')
    # phases: one dashed line per burst, labels in lanes
    marks: list[tuple[float, str]] = []
    for t, label in timeline.phases:
        if marks and x(t) - marks[-1][0] < MIN_MARK_GAP:
            continue
        marks.append((x(t), label[:40]))
    placed = lanes([m[0] for m in marks], [m[1] for m in marks], left)
    for (mx, label), lane in zip(marks, placed):
        y_label = 28 + (LANES - 1 - lane) * LANE_HEIGHT + 9 if lane is not None else top
        out.append(f'<line x1="{mx:.1f}" y1="{y_label if lane is not None else top}" '
                   f'x2="{mx:.1f}" y2="{top + h}" stroke="#aaa" stroke-dasharray="3,3"/>')
        if lane is not None:
            out.append(f'<text x="{mx + 2:.1f}" y="{y_label:.1f}" fill="#555" font-size="9">'
                       f'{html.escape(label)}</text>')
    # the series
    for name in SERIES:
        pts = [(x(t), ys(v.get(name, 0)) if name == "full_scans" else yp(v.get(name, 0)))
               for t, v in timeline.samples]
        if pts:
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py in pts)
            dash = ' stroke-dasharray="6,3"' if name == "full_scans" else ""
            out.append(f'<polyline fill="none" stroke="{COLORS[name]}" stroke-width="1.6"'
                       f'{dash} points="{path}"/>')
    lx = float(left)
    for name in SERIES:
        last = timeline.samples[-1][1].get(name, 0) if timeline.samples else 0
        peak = max((v.get(name, 0) for _, v in timeline.samples), default=0)
        text = f"{name} (max {peak:,}, last {last:,})"
        out.append(f'<text x="{lx:.0f}" y="{height - 8}" fill="{COLORS[name]}">'
                   f'{html.escape(text)}</text>')
        lx += len(text) * 6.4 + 18
    out.append("</svg>")
    return "\n".join(out)


def write(timeline: Timeline, title: str, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(svg(timeline, title))
    dest.with_suffix(".json").write_text(timeline.to_json())
    return dest
