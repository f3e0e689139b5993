"""summary.html in a report directory: one table of the run, linking JUnit, the JSON results,
each failure's text, console logs, reproducer and counter plot (when there is one)."""
from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any

from harness.results import files
from harness.results.model import Result
from harness.results.reproducer import slug

COLOURS = {"passed": "#2e7d32", "failed": "#c62828", "error": "#ad1457", "skipped": "#757575",
           "xfailed": "#757575", "xpassed": "#c62828"}


def _link(target: Path, base: Path, label: str) -> str:
    try:
        href = os.path.relpath(target, base)
    except ValueError:
        href = str(target)
    return f'<a href="{html.escape(href)}">{html.escape(label)}</a>'


def render(rdir: Path, doc: dict[str, Any], results: list[Result], junit: Path | None = None,
           results_json: Path | None = None) -> str:
    head = []
    for label, path in (("JUnit", junit), ("results JSON", results_json or rdir / "results.json")):
        if path is not None and Path(path).exists():
            head.append(_link(Path(path).resolve(), rdir.resolve(), label))
    opts = doc.get("options", {})
    summary = ", ".join(f"{n} {k}" for k, n in sorted(doc.get("summary", {}).items()))
    rows = []
    for t in results:
        links = []
        fdir = rdir / "failures" / slug(t.nodeid)
        for name in ("failure.txt", "reproducer.sh"):
            if (fdir / name).exists():
                links.append(_link(fdir / name, rdir, name.split(".")[0]))
        for name in sorted(p.name for p in fdir.glob("console*.log")) if fdir.is_dir() else []:
            links.append(_link(fdir / name, rdir, name))
        if not any("console" in x for x in links) and t.properties.get("console_log"):
            links.append(_link(Path(t.properties["console_log"]), rdir.resolve(), "console"))
        plot = rdir / "plots" / f"{slug(t.nodeid)}.svg"
        if plot.exists():
            links.append(_link(plot, rdir, "counters"))
        colour = COLOURS.get(t.outcome.value, "#000")
        rows.append(
            f"<tr><td><code>{html.escape(t.nodeid)}</code></td>"
            f"<td style=\"color:{colour};font-weight:bold\">{html.escape(t.outcome.value)}</td>"
            f"<td>{t.duration:.1f}s</td><td>{html.escape(t.title)}</td>"
            f"<td>{' '.join(links)}</td></tr>")
    kern: dict[str, str] = next((t.properties for t in results
                                 if "kernel_release" in t.properties), {})
    facts = " · ".join(html.escape(f"{k}: {kern[k]}") for k in
                       ("kernel_release", "kernel_config_hash", "accelerator", "topology")
                       if k in kern)
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>ksm-harness results</title>
<style>body{{font-family:sans-serif;margin:1.5em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.3em .6em;vertical-align:top}}th{{background:#eee}}</style>
</head><body>
<h1>ksm-harness results</h1>
<p>{html.escape(doc.get('created', ''))} · {doc.get('duration', 0):.0f}s · {html.escape(summary)}</p>
<p>{facts}</p>
<p>options: <code>{html.escape(' '.join(map(str, opts.get('args', []))))}</code></p>
<p>{' · '.join(head)}</p>
<table><tr><th>test</th><th>outcome</th><th>time</th><th>message</th><th>files</th></tr>
{chr(10).join(rows)}
</table></body></html>
"""


def write(rdir: Path, doc: dict[str, Any], results: list[Result], junit: Path | None = None,
          results_json: Path | None = None) -> Path:
    out = rdir / "summary.html"
    files.replace_text(out, render(rdir, doc, results, junit, results_json))
    return out
