"""Find kernel crash reports in console or dmesg output.

The kernel prints every failure (WARN, BUG, oops, sanitizer report, hang
detector, OOM kill, ...) as a header line followed by registers and stack
traces.  We spot those headers, gather the lines that belong to each report
and name it: a category (WARNING, BUG, KASAN, HUNG_TASK, OOM, ...), a title
("WARNING in ksm_scan_thread") and the culprit function, found by skipping the
reporting machinery and generic helpers in the stack.

Input may carry ``[ 12.345678]`` timestamps, ``[ T123]``/``[ C1]`` caller ids,
``<4>`` levels, ``\\r``, interleaved CPUs and cut lines.  With caller ids,
lines of other tasks are kept out of a report; on a timestamped console,
unprefixed lines are userspace output and are ignored.

Reports come in log order and the first is the primary one: a panic that an
oops causes is part of the oops' report.  Each OOM kill is its own report of
category OOM, so a caller can allow them.  :class:`StreamClassifier` works line
by line on a live console; :func:`classify` is the batch wrapper.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable

from harness.console.culprit import _finish, _Pending
from harness.console.kinds import (
    _BANNER,
    _BANNERED,
    _END,
    _LEAD_IN,
    _MAX_FOREIGN,
    _Kind,
    _match_header,
    _report_like,
)
from harness.console.lines import Report, _Line, _parse_line


class StreamClassifier:
    """Classify a console stream line by line.

    ``feed`` returns the reports that the new line completed (usually when
    ordinary chatter resumes after a report); ``flush`` ends the stream.
    """

    def __init__(self) -> None:
        self._n = 0
        self._open: dict[str, _Pending] = {}
        self._recent: dict[str, deque[_Line]] = {}
        self._prefixed = False

    def feed(self, line: str) -> list[Report]:
        ln = _parse_line(self._n, line)
        self._n += 1
        self._prefixed |= ln.prefixed
        done: list[Report] = []
        # On a timestamped console an unprefixed "WARNING: ..." is likely a userspace echo;
        # a glued line may be a syslog copy, so it only gets strict headers too.
        hit = _match_header(ln, trusted=(ln.prefixed and not ln.glued) or not self._prefixed)
        owner = self._owner(ln)
        if hit:
            kind, m = hit
            if owner is not None and owner.joins(kind):
                owner.add(ln, True)
                if kind.name == "oom_killed":
                    owner.tail = True
                return done
            lead: list[_Line] = []
            if owner is not None:
                lead = self._take_lead_in(owner)
                done.append(self._close(owner))
            self._start(kind, m, ln, lead)
            return done
        if owner is None:
            self._remember(ln)
            return done
        if self._prefixed and not ln.prefixed and ln.text:
            # Userspace output on a timestamped console: neither part of the
            # report nor a sign that it ended (unless it goes on and on).
            owner.foreign += 1
            if owner.foreign > _MAX_FOREIGN:
                done.append(self._close(owner))
            return done
        like = _report_like(ln)
        owner.add(ln, like)
        if "Sending NMI from CPU" in ln.text or "NMI backtrace" in ln.text:
            owner.cpu_lines = True
        if _END.match(ln.text) or (_BANNER.match(ln.text) and len(owner.lines) - owner.head > 3):
            owner.tail = True
        elif ln.text == "</TASK>" and owner.kind.category not in _BANNERED:
            owner.tail = True  # the stack is over; what follows must look like the report
        if owner.over():
            done.append(self._close(owner))
        return done

    def flush(self) -> list[Report]:
        reports = [self._close(p) for p in list(self._open.values())]
        return sorted(reports, key=lambda r: r.start_line)

    def _owner(self, ln: _Line) -> _Pending | None:
        if ln.ctx:
            if p := self._open.get(ln.ctx):
                return p
            if ln.ctx.startswith("C"):
                for p in self._open.values():
                    if p.cpu_lines or p.kind.how == "stall":
                        return p
            return None
        if "" in self._open:
            return self._open[""]
        return None

    def _remember(self, ln: _Line) -> None:
        # Keep only a run of banner-like lines: the next report may start with them.
        if ln.text and not _LEAD_IN.match(ln.text):
            self._recent.pop(ln.ctx, None)
        else:
            self._recent.setdefault(ln.ctx, deque(maxlen=40)).append(ln)

    def _take_lead_in(self, p: _Pending) -> list[_Line]:
        """Hand the banner lines the last report swallowed to the next one."""
        lead: list[_Line] = []
        while len(p.lines) - 1 > p.head and _LEAD_IN.match(p.lines[-1].text):
            lead.insert(0, p.lines.pop())
        if lead:
            kept = [ln.idx for ln in p.lines[p.head + 1:] if _report_like(ln)]
            p.last_like = max(kept, default=p.lines[p.head].idx)
        return lead

    def _start(self, kind: _Kind, m: re.Match[str], ln: _Line, lead: list[_Line]) -> None:
        if not lead:
            lead = list(self._recent.get(ln.ctx, ()))
            while lead and not lead[0].text:
                lead.pop(0)
        self._recent.pop(ln.ctx, None)
        p = _Pending(kind, m, ln.ctx, [*lead, ln], head=len(lead), last_like=ln.idx)
        if kind.name == "oom_killed":
            p.tail = True
        self._open[ln.ctx] = p

    def open_categories(self) -> list[str]:
        """Categories of the reports still being printed (their header seen, their end not):
        a live console can act on a panic or a BUG before its last line arrives."""
        return [p.kind.category for p in self._open.values()]

    def _close(self, p: _Pending) -> Report:
        del self._open[p.ctx]
        return _finish(p)


def classify(lines: Iterable[str]) -> list[Report]:
    """All reports in a log, in order: the first one is the primary."""
    sc = StreamClassifier()
    reports: list[Report] = []
    for line in lines:
        reports.extend(sc.feed(line))
    reports.extend(sc.flush())
    return sorted(reports, key=lambda r: r.start_line)


def classify_text(text: str) -> list[Report]:
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return classify(lines)


