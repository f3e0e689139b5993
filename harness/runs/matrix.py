"""The matrix of a run's cells (kernel x topology, see harness.runs.cells): a scenario x
kernel table, the failures that are new against a baseline, and the files (``matrix.json``,
``matrix-junit.xml``, ``matrix.html``). Exit status 1 when anything new failed (without a
baseline: when anything failed), 2 when a cell produced no results.

The table and the comparison are pure functions over results records, tested on recorded
ones; ``report`` is the one place that turns columns into files and an exit status (used by
``run`` over several cells and by ``merge``).
"""
from __future__ import annotations

import html
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.findings import Category, Finding
from harness.results import junit
from harness.results.model import Outcome, Result

SHORT = {Outcome.PASSED: "pass", Outcome.FAILED: "FAIL", Outcome.ERROR: "ERROR",
         Outcome.SKIPPED: "skip", Outcome.XFAILED: "xfail", Outcome.XPASSED: "XPASS"}


@dataclass
class Column:
    label: str               # what the table shows: kernel release (and topology)
    kernel: str | None
    numa: str | None
    results: dict[str, Result]
    cell: str | None = None             # the cell id (harness.cellplan)
    facts: dict[str, str] = field(default_factory=dict)  # release, commit, compiler, host
    dirs: list[Path] = field(default_factory=list)       # its report directories


def label_for(results: list[Result], kernel: str | None, numa: str | None,
              several_numas: bool) -> str:
    rel = next((r.properties["kernel_release"] for r in results
                if "kernel_release" in r.properties), None)
    label = rel or (Path(kernel).name if kernel else "default")
    return f"{label} numa={numa}" if several_numas and numa else label


def table(columns: list[Column], new: set[tuple[str, str]] = frozenset()) -> str:  # type: ignore[assignment]
    """Scenario x kernel; a new failure is marked with '*'."""
    nodeids: list[str] = []
    for c in columns:
        for n in c.results:
            if n not in nodeids:
                nodeids.append(n)
    names = [n.split("/")[-1] for n in nodeids]
    w0 = max([len("scenario")] + [len(n) for n in names])
    widths = [max(len(c.label), 6) for c in columns]
    lines = ["  ".join(["scenario".ljust(w0)] + [c.label.ljust(w) for c, w in
                                                 zip(columns, widths)]).rstrip()]
    for nodeid, name in zip(nodeids, names):
        cells = []
        for c, w in zip(columns, widths):
            r = c.results.get(nodeid)
            cell = SHORT[r.outcome] if r else "-"
            if (c.label, nodeid) in new:
                cell += "*"
            cells.append(cell.ljust(w))
        lines.append("  ".join([name.ljust(w0)] + cells).rstrip())
    return "\n".join(lines)


Before = dict[str, Result]  # nodeid -> the baseline's record


def _before(tests: dict[str, Any]) -> Before:
    """A matrix.json column's tests as records: outcome and top finding (its category and
    title are all a signature needs)."""
    return {n: Result(n, Outcome(d["outcome"]),
                      [Finding(Category.of(d["category"]), d.get("title") or "")]
                      if d.get("category") else [])
            for n, d in tests.items()}


def load_baseline(path: Path) -> dict[str, Any]:
    """A results file (one run) or a matrix.json (several columns)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise HarnessError(f"--baseline {path}: {exc}") from None
    if isinstance(doc, dict) and "columns" in doc:
        return {"columns": {c["label"]: _before(c["tests"]) for c in doc["columns"]},
                "by_kernel": {_kernel_key(c.get("kernel"), c.get("numa")): _before(c["tests"])
                              for c in doc["columns"] if c.get("kernel")}}
    if isinstance(doc, dict) and "tests" in doc:
        return {"single": {t["nodeid"]: Result.from_dict(t) for t in doc["tests"]}}
    raise HarnessError(f"--baseline {path}: neither a results file nor a matrix.json")


def _kernel_key(kernel: str | None, numa: str | None) -> str:
    """A column by what the user asked for (--kernel, --numa), not by the release it built."""
    return f"{kernel} {numa}"


def _strip_numa(label: str) -> str:
    return re.sub(r" numa=\S+$", "", label)


def new_failures(columns: list[Column], baseline: dict[str, Any] | None) -> set[tuple[str, str]]:
    """(column label, nodeid) of failures the baseline did not have: a test that did not fail
    there, or that fails now with another signature (Result.signature(), as bisect compares:
    category and title, numbers and addresses aside; a new oops in a test that used to fail
    on a counter is new). Without a baseline every failure
    is new; a test the baseline did not run counts as new when it fails; a column the
    baseline does not know by label (kernel release) is compared with the baseline column of
    the same --kernel argument (a nightly tree rebuilt at a new commit has a new release
    string), else with the baseline's single run if it has one, else all of its failures are
    new."""
    new: set[tuple[str, str]] = set()
    for c in columns:
        before: Before | None = None
        if baseline is not None:
            cols = baseline.get("columns", {})
            before = cols.get(c.label) or cols.get(_strip_numa(c.label)) \
                or baseline.get("by_kernel", {}).get(_kernel_key(c.kernel, c.numa)) \
                or baseline.get("single")
        for nodeid, r in c.results.items():
            if not r.failed:
                continue
            was = before.get(nodeid) if before is not None else None
            if was is None or not was.failed or was.signature() != r.signature():
                new.add((c.label, nodeid))
    return new


def matrix_document(columns: list[Column]) -> dict[str, Any]:
    return {"version": 2, "columns": [
        {"label": c.label, "kernel": c.kernel, "numa": c.numa, "cell": c.cell, **c.facts,
         "tests": {n: {"outcome": r.outcome.value, "title": r.title,
                       "category": r.category.value if r.category else None}
                   for n, r in c.results.items()}} for c in columns]}


def matrix_junit(columns: list[Column]) -> str:
    """One JUnit document for the whole matrix (harness.results.junit, the same writer as a
    run's): a test suite per kernel (and topology), a test case per scenario."""
    return junit.to_string(
        junit.Suite(c.label, sorted(c.results.values(), key=lambda r: r.nodeid),
                    {"kernel": c.kernel or "default", "numa": c.numa or "default"},
                    prefix=c.label) for c in columns)


def matrix_html(columns: list[Column], new: set[tuple[str, str]], out: Path) -> str:
    """matrix.html: the table, each cell linking its column's summary.html."""
    nodeids: list[str] = []
    for c in columns:
        nodeids += [n for n in c.results if n not in nodeids]
    colour = {"pass": "#2e7d32", "FAIL": "#c62828", "ERROR": "#ad1457", "XPASS": "#c62828"}

    def link(c: Column, text: str) -> str:
        """The column's summary page; a sharded column's other parts as [2], [3], ..."""
        pages = [d / "summary.html" for d in c.dirs if (d / "summary.html").exists()]
        hrefs = [html.escape(os.path.relpath(page, out)) for page in pages]
        if not hrefs:
            return text
        return f'<a href="{hrefs[0]}">{text}</a>' + "".join(
            f' <a href="{h}">[{i}]</a>' for i, h in enumerate(hrefs[1:], 2))

    head = "".join(f"<th>{link(c, html.escape(c.label))}<br><small>{html.escape(c.cell or '')}"
                   f"</small></th>" for c in columns)
    rows = []
    for n in nodeids:
        tds = []
        for c in columns:
            r = c.results.get(n)
            short = SHORT[r.outcome] if r else "-"
            mark = "*" if (c.label, n) in new else ""
            title = html.escape(r.title if r else "", quote=True)
            tds.append(f'<td title="{title}" style="color:{colour.get(short, "#555")}">'
                       f"{short}{mark}</td>")
        rows.append(f"<tr><td><code>{html.escape(n)}</code></td>{''.join(tds)}</tr>")
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>ksm-harness matrix</title>
<style>body{{font-family:sans-serif;margin:1.5em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.3em .6em}}th{{background:#eee}}</style></head><body>
<h1>ksm-harness matrix</h1><p>* = new failure; hover a cell for its title</p>
<table><tr><th>scenario</th>{head}</tr>
{chr(10).join(rows)}
</table></body></html>
"""


def report(columns: list[Column], baseline: dict[str, Any] | None, out: Path | None,
           say: Any = print) -> int:
    """Print the table and the new failures; write the matrix files into ``out`` (when
    given); the exit status: 1 new failures, 2 a column without results, else 0."""
    new = new_failures(columns, baseline)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "matrix.json").write_text(json.dumps(matrix_document(columns), indent=1) + "\n")
        (out / "matrix-junit.xml").write_text(matrix_junit(columns))
        (out / "matrix.html").write_text(matrix_html(columns, new, out))
        (out / "matrix.txt").write_text(table(columns, new) + "\n")
    say(table(columns, new))
    if out is not None:
        say(f"(matrix.json, matrix-junit.xml, matrix.html in {out})")
    if new:
        what = "new failure" if baseline else "failure"
        say(f"{len(new)} {what}{'s' if len(new) > 1 else ''}"
            f"{' against the baseline' if baseline else ''} (*):")
        for label, nodeid in sorted(new):
            r = next(c for c in columns if c.label == label).results[nodeid]
            say(f"  {label}: {nodeid}: {r.title}")
        return 1
    empty = [c.label for c in columns if not c.results]
    if empty:
        say(f"ksm-harness: no results for {', '.join(empty)} (see its output)")
        return 2
    return 0
