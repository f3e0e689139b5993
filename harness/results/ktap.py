"""KTAP version 1 (Documentation/dev-tools/ktap.rst): a line per test, the failure's title
as diagnostics before it; directives SKIP and XFAIL as kselftest prints them."""
from __future__ import annotations

import re

from harness.results.model import Outcome, Result


def name(nodeid: str) -> str:
    return re.sub(r"[^\w.:\[\]=-]+", "_", nodeid)


def _reason(text: str) -> str:
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return first.replace("#", "")


def render(results: list[Result]) -> str:
    out = ["KTAP version 1", f"1..{len(results)}"]
    for i, r in enumerate(results, 1):
        n = name(r.nodeid)
        if r.failed or r.outcome is Outcome.XPASSED:
            for line in (r.title or r.outcome.value).splitlines():
                out.append(f"# {line}")
            out.append(f"not ok {i} {n}")
        elif r.outcome is Outcome.SKIPPED:
            out.append(f"ok {i} {n} # SKIP {_reason(r.reason)}".rstrip())
        elif r.outcome is Outcome.XFAILED:
            out.append(f"ok {i} {n} # XFAIL {_reason(r.reason)}".rstrip())
        else:
            out.append(f"ok {i} {n}")
    return "\n".join(out) + "\n"
