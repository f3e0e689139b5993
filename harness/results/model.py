"""A test's result as one record: outcome, ranked findings, properties, durations.

Every exporter (JUnit, JSON, KTAP, HTML, the matrix, bisect signatures, reproducers) reads
:class:`Result` records; none parses text another module wrote.
"""
from __future__ import annotations

import enum
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.findings import Category, Finding, rank, signature

RESULTS_VERSION = 2


class Outcome(enum.Enum):
    PASSED = "passed"
    FAILED = "failed"      # the test (its call phase) failed
    ERROR = "error"        # set-up or teardown failed
    SKIPPED = "skipped"
    XFAILED = "xfailed"    # a known kernel bug, still there
    XPASSED = "xpassed"    # a known kernel bug that this kernel has fixed (strict: a failure)

    @property
    def failed(self) -> bool:
        return self in (Outcome.FAILED, Outcome.ERROR)


@dataclass
class Result:
    nodeid: str
    outcome: Outcome = Outcome.PASSED
    findings: list[Finding] = field(default_factory=list)  # ranked: the cause first
    reason: str = ""               # why it was skipped or is an expected failure
    when: str = ""                 # the phase that decided the outcome
    durations: dict[str, float] = field(default_factory=dict)  # per phase, seconds
    start: float | None = None     # host time the test started
    properties: dict[str, str] = field(default_factory=dict)
    text: str = ""                 # the whole failure text (findings, traceback, output)

    @property
    def failed(self) -> bool:
        return self.outcome.failed

    @property
    def top(self) -> Finding | None:
        return self.findings[0] if self.findings else None

    @property
    def title(self) -> str:
        """The one line a person reads first: the top finding, else the reason."""
        return self.top.title if self.top else self.reason

    @property
    def category(self) -> Category | None:
        return self.top.category if self.top else None

    @property
    def kernel_report(self) -> Finding | None:
        return next((f for f in self.findings if f.is_kernel_report), None)

    def signature(self) -> tuple[str, str] | None:
        """The top finding's (category, normalized title): two failures with the same one
        failed for the same reason (what the matrix's baseline and bisect compare)."""
        return signature(self.top) if self.top else None

    @property
    def duration(self) -> float:
        return sum(self.durations.values())

    def add(self, findings: Iterable[Finding]) -> None:
        self.findings = rank([*self.findings, *findings])

    def to_dict(self) -> dict[str, Any]:
        top = self.top
        return {
            "nodeid": self.nodeid, "outcome": self.outcome.value,
            "title": self.title,
            "category": top.category.value if top else None,
            "kernel_report": (kr.title if (kr := self.kernel_report) else None),
            "findings": [f.to_dict() for f in self.findings],
            "reason": self.reason, "when": self.when,
            "duration": round(self.duration, 3),
            "durations": {k: round(v, 3) for k, v in self.durations.items()},
            "start": self.start, "properties": self.properties, "text": self.text,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Result:
        return cls(nodeid=d["nodeid"], outcome=Outcome(d["outcome"]),
                   findings=[Finding.from_dict(f) for f in d.get("findings", [])],
                   reason=d.get("reason", ""), when=d.get("when", ""),
                   durations=dict(d.get("durations", {})), start=d.get("start"),
                   properties=dict(d.get("properties", {})), text=d.get("text", ""))


def results_document(results: Iterable[Result], meta: dict[str, Any]) -> dict[str, Any]:
    tests = [r.to_dict() for r in results]
    counts: dict[str, int] = {}
    for t in tests:
        counts[t["outcome"]] = counts.get(t["outcome"], 0) + 1
    return {"version": RESULTS_VERSION, **meta, "summary": counts, "tests": tests}


def load_results(path: Path | str) -> tuple[dict[str, Any], list[Result]]:
    """A results file written by ``--results-json``: (its metadata, its records)."""
    try:
        doc = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:  # cut short (a full disk, a killed writer): name it
        raise ValueError(f"{path}: not JSON ({exc}): a results file cut short?") from None
    if not isinstance(doc, dict) or "tests" not in doc:
        raise ValueError(f"{path}: not a ksm-harness results file")
    if doc.get("version") != RESULTS_VERSION:
        raise ValueError(f"{path}: results format {doc.get('version')}, this harness reads "
                         f"{RESULTS_VERSION}")
    return doc, [Result.from_dict(t) for t in doc["tests"]]
