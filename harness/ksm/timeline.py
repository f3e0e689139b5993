"""KSM counters over a scenario's life, and a plot of them.

One python3 in the guest reads the counters every ``interval`` and prints a line: one
process for the whole test, because a fork/exec per sample would cost a third of a TCG CPU
and disturb the very scanning we measure. Phases come from the workload commands the
harness sent (see ``Guest.spawn``).
"""
from __future__ import annotations

import html
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from harness.access.remote import Process
from harness.ksm.sysfs import KSM_DIR

SERIES = ("pages_shared", "pages_sharing", "pages_unshared", "full_scans")
COLORS = {"pages_shared": "#1f77b4", "pages_sharing": "#d62728", "pages_unshared": "#2ca02c",
          "full_scans": "#7f7f7f"}
_SAMPLER = ("import os,sys,time\n"
            f"d='{KSM_DIR}'\n"
            "while True:\n"
            " v={}\n"
            " for n in os.listdir(d):\n"
            "  try: v[n]=open(os.path.join(d,n)).read().strip()\n"
            "  except OSError: pass\n"
            " print(' '.join(k+'='+x for k,x in sorted(v.items()) if x.lstrip('-').isdigit()),"
            " flush=True)\n"
            " time.sleep({interval})\n")


@dataclass
class Timeline:
    samples: list[tuple[float, dict[str, int]]] = field(default_factory=list)
    phases: list[tuple[float, str]] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps({"samples": self.samples, "phases": self.phases})


class Sampler:
    def __init__(self, spawn: Callable[[str], Process], interval: float = 0.5) -> None:
        self.timeline = Timeline()
        self.t0 = time.monotonic()
        self._proc: Process = spawn("python3 -u -c " + _shell_quote(
            _SAMPLER.replace("{interval}", str(interval))))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="ksm-sampler", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                line = self._proc.read_line(timeout=5)
            except Exception:
                if self._stop.is_set():
                    return
                continue
            values = {}
            for part in line.split():
                name, _, value = part.partition("=")
                try:
                    values[name] = int(value)
                except ValueError:
                    pass
            if values:
                self.timeline.samples.append((time.monotonic() - self.t0, values))

    def phase(self, label: str, at: float | None = None) -> None:
        self.timeline.phases.append(((at or time.monotonic()) - self.t0, label))

    def stop(self) -> Timeline:
        self._stop.set()
        try:
            self._proc.kill()
        except Exception:
            pass
        self._thread.join(timeout=6)
        return self.timeline


def _shell_quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


def svg(timeline: Timeline, title: str, width: int = 900, height: int = 360) -> str:
    """Counters (left axis, pages) and full_scans (right axis) over seconds; phases as
    dashed vertical lines with their labels."""
    left, right, top, bottom = 70, 70, 30, 40
    w, h = width - left - right, height - top - bottom
    xs = [t for t, _ in timeline.samples] or [0.0]
    tmax = max(xs[-1], max((t for t, _ in timeline.phases), default=0.0), 1e-3)
    pages = [v.get(s, 0) for _, v in timeline.samples for s in SERIES[:3]] or [0]
    pmax = max(max(pages), 1)
    scans = [v.get("full_scans", 0) for _, v in timeline.samples] or [0]
    smin, smax = min(scans), max(max(scans), min(scans) + 1)

    def x(t: float) -> float:
        return left + w * t / tmax

    def y(v: float, vmax: float, vmin: float = 0.0) -> float:
        return top + h - h * (v - vmin) / (vmax - vmin)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           'font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{left}" y="18" font-size="13">{html.escape(title)}</text>',
           f'<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="none" stroke="#999"/>',
           f'<text x="{left - 5}" y="{top + 8}" text-anchor="end">{pmax}</text>',
           f'<text x="{left - 5}" y="{top + h}" text-anchor="end">0</text>',
           f'<text x="{left + w + 5}" y="{top + 8}" fill="{COLORS["full_scans"]}">{smax}</text>',
           f'<text x="{left + w + 5}" y="{top + h}" fill="{COLORS["full_scans"]}">{smin}</text>',
           f'<text x="{left + w}" y="18" text-anchor="end">seconds 0 - {tmax:.1f}</text>']
    last_x = -100.0
    for t, label in timeline.phases:
        if x(t) - last_x < 8:  # a burst of commands: one line, one label
            continue
        last_x = x(t)
        out.append(f'<line x1="{x(t):.1f}" y1="{top}" x2="{x(t):.1f}" y2="{top + h}" '
                   'stroke="#bbb" stroke-dasharray="3,3"/>')
        out.append(f'<text x="{x(t) + 2:.1f}" y="{top + 12}" fill="#666" font-size="9" '
                   f'transform="rotate(90 {x(t) + 2:.1f} {top + 12})">'
                   f'{html.escape(label[:40])}</text>')
    for i, name in enumerate(SERIES):
        pts = [(x(t), y(v.get(name, 0), smax, smin) if name == "full_scans"
                else y(v.get(name, 0), pmax)) for t, v in timeline.samples]
        if pts:
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py in pts)
            out.append(f'<polyline fill="none" stroke="{COLORS[name]}" stroke-width="1.5" '
                       f'points="{path}"/>')
        out.append(f'<text x="{left + 10 + i * 130}" y="{top + h + 25}" '
                   f'fill="{COLORS[name]}">{name}</text>')
    out.append("</svg>")
    return "\n".join(out)


def write(timeline: Timeline, title: str, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(svg(timeline, title))
    dest.with_suffix(".json").write_text(timeline.to_json())
    return dest
