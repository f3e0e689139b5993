"""KTAP version 1 (Documentation/dev-tools/ktap.rst): a line per test, the failure's title
as diagnostics before it; directives SKIP and XFAIL as kselftest prints them, and on a
"not ok" line TIMEOUT (the guest hung: a HANG finding) and ERROR (the test could not run for
a reason that is not the kernel's: BOOT, SETUP, INFRA, or a VM lost without a kernel
report), with the reason as diagnostic data. A kernel report or an assertion is a plain
"not ok"."""
from __future__ import annotations

import re

from harness.findings import Category
from harness.results.model import Outcome, Result

NOT_THE_KERNEL = frozenset({Category.BOOT, Category.SETUP, Category.INFRA, Category.VM_DEAD})


def directive(r: Result) -> str:
    """TIMEOUT, ERROR or '' for a failed test, from its top finding (the cause)."""
    if not r.failed or r.category is None:
        return ""
    if r.category is Category.HANG:
        return "TIMEOUT"
    if r.category in NOT_THE_KERNEL:
        return "ERROR"
    return ""


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
            d = directive(r)
            out.append(f"not ok {i} {n} # {d} {_reason(r.title)}".rstrip() if d
                       else f"not ok {i} {n}")
        elif r.outcome is Outcome.SKIPPED:
            out.append(f"ok {i} {n} # SKIP {_reason(r.reason)}".rstrip())
        elif r.outcome is Outcome.XFAILED:
            out.append(f"ok {i} {n} # XFAIL {_reason(r.reason)}".rstrip())
        else:
            out.append(f"ok {i} {n}")
    return "\n".join(out) + "\n"
