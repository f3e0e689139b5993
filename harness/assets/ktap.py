"""The KTAP/TAP output of a kernel selftest (kselftest.h's ``ok N``, ``not ok N``,
``# SKIP``, ``1..N`` and ``# [RUN]`` lines), and the verdict of one run from it and the
program's exit status."""
from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class KtapResult:
    """One KTAP result line; ``test`` is the ``# [RUN] test_x`` line before it, if any
    (ksm_functional_tests gives several results the same description)."""
    number: int
    description: str
    verdict: str  # pass | fail | skip | xfail
    reason: str = ""  # a directive's text: why it was skipped
    test: str = ""

    @property
    def name(self) -> str:
        return " ".join(filter(None, (f"{self.number}", self.test,
                                      self.description or self.reason)))


_RESULT = re.compile(r"^(not ok|ok) (\d+)(?: -)?[ \t]*([^#\n]*?)[ \t]*"
                     r"(?:#[ \t]*(SKIP|XFAIL|TODO)\b[ \t]*(.*))?$", re.M | re.I)
_RUN = re.compile(r"^#\s*\[RUN\]\s*(\S+)")
_PLAN = re.compile(r"^1\.\.(\d+)\s*$", re.M)


def parse_ktap(output: str) -> list[KtapResult]:
    """The KTAP/TAP result lines of ``output``, in order."""
    results, test = [], ""
    for line in output.splitlines():
        line = line.rstrip()
        if m := _RUN.match(line):
            test = m.group(1)
            continue
        m = _RESULT.match(line)
        if m is None:
            continue
        directive = (m.group(4) or "").upper()
        verdict = {"SKIP": "skip", "XFAIL": "xfail"}.get(directive) or (
            "pass" if m.group(1) == "ok" else "fail")
        results.append(KtapResult(int(m.group(2)), m.group(3).strip(), verdict,
                                  (m.group(5) or "").strip(), test))
        test = ""
    return results


def ktap_plan(output: str) -> int | None:
    """The number of results the program announced (``1..N``), if it did."""
    m = _PLAN.search(output)
    return int(m.group(1)) if m else None


KSFT = {0: "pass", 1: "fail", 4: "skip"}  # kselftest's exit codes


def judge(command: str, status: int, output: str) -> tuple[str, str]:
    """A case's outcome (pass, fail or skip) and why, from its program's exit status and
    output: any KTAP failure, an exit other than pass or skip, 6.1's "Not OK", or fewer or
    more results than the plan announced fail it; else any skip (the program's own or a
    KTAP line's) makes it a skip with the reasons, never a pass."""
    results = parse_ktap(output)
    failed = [res.name for res in results if res.verdict == "fail"]
    if failed:
        return "fail", f"{command}: KTAP failures {failed}:\n{output}"
    verdict = KSFT.get(status, f"exit {status}")
    if verdict not in ("pass", "skip"):
        return "fail", f"{command}: {verdict}:\n{output}"
    if "Not OK" in output:  # 6.1's ksm_tests prints no KTAP
        return "fail", f"{command}: Not OK:\n{output}"
    plan = ktap_plan(output)
    if plan is not None and plan != len(results) and verdict != "skip":
        return "fail", f"{command}: announced {plan} results, printed {len(results)}:\n{output}"
    skipped = [res for res in results if res.verdict == "skip"]
    if verdict == "skip" or skipped:
        passed = sum(res.verdict == "pass" for res in results)
        why = "; ".join(f"{res.name}: {res.reason}" for res in skipped) or output[-300:]
        return "skip", f"{command} skipped {len(skipped) or 'itself'} ({passed} passed): {why}"
    return "pass", ""
