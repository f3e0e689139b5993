"""A Markdown summary of a run for a CI job's page (GitHub's $GITHUB_STEP_SUMMARY, GitLab
and Forgejo render the same): the counts, a table of the failures with the kernel report's
title and culprit function, and the skips with their reasons. Read from the records only."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from harness.results.model import Outcome, Result

ORDER = (Outcome.FAILED, Outcome.ERROR, Outcome.XPASSED, Outcome.PASSED, Outcome.XFAILED,
         Outcome.SKIPPED)
TITLE_MAX = 200  # a table cell stays one readable line; the whole text is in the reports


def cell(text: str | None, limit: int = TITLE_MAX) -> str:
    """Text safe inside a table cell: one line, pipes escaped, cut at ``limit``."""
    t = " ".join((text or "").split())
    if len(t) > limit:
        t = t[:limit - 1] + "…"
    return t.replace("\\", "\\\\").replace("|", "\\|") or "-"


def code(text: str) -> str:
    """Inline code (a test id) that survives backticks and pipes inside it."""
    return "<code>" + text.replace("&", "&amp;").replace("<", "&lt;").replace("|", "&#124;") \
        + "</code>"


def culprit(r: Result) -> str:
    """The function the kernel report blames, else the top finding's, else none."""
    report = r.kernel_report
    frame = report.frame if report else (r.top.frame if r.top else None)
    return frame or ""


def counts(results: Iterable[Result]) -> str:
    n: dict[Outcome, int] = {}
    for r in results:
        n[r.outcome] = n.get(r.outcome, 0) + 1
    return ", ".join(f"{n[o]} {o.value}" for o in ORDER if o in n) or "no tests"


def heading(doc: dict[str, Any]) -> str:
    """What ran: the kernel release and the cell (kernel x topology) when known."""
    kernel = (doc.get("kernel") or {}).get("release") or ""
    cell = doc.get("cell") or {}
    where = " ".join(p for p in (kernel, f"numa {cell['numa']}" if cell.get("numa") else "",
                                 f"[{cell['id']}]" if cell.get("id") else "") if p)
    return "## ksm-harness" + (f": {where}" if where else "")


def render(results: list[Result], doc: dict[str, Any]) -> str:
    lines = [heading(doc), "", f"**{counts(results)}**"]
    failed = [r for r in results if r.failed or r.outcome is Outcome.XPASSED]
    if failed:
        lines += ["", "| test | outcome | kernel report | culprit | title |",
                  "|---|---|---|---|---|"]
        for r in failed:
            report = r.kernel_report
            lines.append(f"| {code(r.nodeid)} | {r.outcome.value} | "
                         f"{cell(report.title if report else '')} | {cell(culprit(r))} | "
                         f"{cell(r.title)} |")
    skipped = [r for r in results if r.outcome in (Outcome.SKIPPED, Outcome.XFAILED)]
    if skipped:
        lines += ["", "<details><summary>skipped and expected failures "
                  f"({len(skipped)})</summary>", ""]
        lines += [f"- {code(r.nodeid)} ({r.outcome.value}): {cell(r.reason, 400)}"
                  for r in skipped]
        lines += ["", "</details>"]
    return "\n".join(lines) + "\n\n"
