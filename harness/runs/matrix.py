"""The nightly matrix: ``ksm-harness run --kernel A --kernel B [--numa 2 --numa 1G:1,3G:1]
[--baseline results.json] [pytest options]`` runs the suite once per kernel (and topology),
one after the other, each pytest run writing its own results; then prints a scenario x kernel
table and the failures that are new against the baseline. Exit status 1 when anything new
failed (without a baseline: when anything failed).

The table and the comparison are pure functions over results files, tested on recorded ones.
"""
from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import options
from harness.console.findings import normalize
from harness.errors import HarnessError
from harness.pytest_plugin import session
from harness.results import junit
from harness.results.model import Outcome, Result, load_results

SHORT = {Outcome.PASSED: "pass", Outcome.FAILED: "FAIL", Outcome.ERROR: "ERROR",
         Outcome.SKIPPED: "skip", Outcome.XFAILED: "xfail", Outcome.XPASSED: "XPASS"}
FAILED = ("failed", "error")


@dataclass
class Column:
    label: str               # what the table shows: kernel release (and topology)
    kernel: str | None
    numa: str | None
    results: dict[str, Result]


def wanted(argv: list[str]) -> bool:
    """Matrix mode: more than one --kernel or --numa, or a --baseline."""
    kernels, numas, baseline, _ = split_args(argv)
    return len(kernels) > 1 or len(numas) > 1 or baseline is not None


def split_args(argv: list[str]) -> tuple[list[str], list[str], str | None, list[str]]:
    """(kernels, topologies, baseline, the other pytest arguments)."""
    try:
        found, rest = options.split_repeated(argv)
    except ValueError as exc:
        raise HarnessError(str(exc)) from None
    baseline = found["baseline"][-1] if found["baseline"] else None
    return found["kernel"], found["numa"], baseline, rest


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


Before = dict[str, tuple[str, str]]  # nodeid -> (outcome, normalized top title)


def _before(tests: dict[str, Any]) -> Before:
    return {n: (d["outcome"], normalize(d.get("title") or "")) for n, d in tests.items()}


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
        return {"single": _before({t["nodeid"]: t for t in doc["tests"]})}
    raise HarnessError(f"--baseline {path}: neither a results file nor a matrix.json")


def _kernel_key(kernel: str | None, numa: str | None) -> str:
    """A column by what the user asked for (--kernel, --numa), not by the release it built."""
    return f"{kernel} {numa}"


def _strip_numa(label: str) -> str:
    return re.sub(r" numa=\S+$", "", label)


def new_failures(columns: list[Column], baseline: dict[str, Any] | None) -> set[tuple[str, str]]:
    """(column label, nodeid) of failures the baseline did not have: a test that did not fail
    there, or that fails now with another top title (numbers and addresses aside: a new
    oops in a test that used to fail on a counter is new). Without a baseline every failure
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
            if was is None or was[0] not in FAILED or was[1] != normalize(r.title):
                new.add((c.label, nodeid))
    return new


def matrix_document(columns: list[Column]) -> dict[str, Any]:
    return {"version": 2, "columns": [
        {"label": c.label, "kernel": c.kernel, "numa": c.numa,
         "tests": {n: {"outcome": r.outcome.value, "title": r.title}
                   for n, r in c.results.items()}} for c in columns]}


def matrix_junit(columns: list[Column]) -> str:
    """One JUnit document for the whole matrix (harness.results.junit, the same writer as a
    run's): a test suite per kernel (and topology), a test case per scenario."""
    return junit.to_string(
        junit.Suite(c.label, sorted(c.results.values(), key=lambda r: r.nodeid),
                    {"kernel": c.kernel or "default", "numa": c.numa or "default"},
                    prefix=c.label) for c in columns)


def run_one(kernel: str | None, numa: str | None, rest: list[str], out: Path) -> list[Result]:
    args = [*rest]
    if kernel:
        args += ["--kernel", kernel]
    if numa:
        args += ["--numa", numa]
    args += ["--results-json", str(out / "results.json"), "--junitxml", str(out / "junit.xml"),
             "--report-dir", str(out)]
    print(f"ksm-harness: matrix: {' '.join(args)}", file=sys.stderr, flush=True)
    (out / "results.json").unlink(missing_ok=True)
    session.run_child(args, ["tests/ksm"])
    if not (out / "results.json").is_file():
        return []
    return load_results(out / "results.json")[1]


def main(argv: list[str], report_root: Path | None = None) -> int:
    kernels, numas, baseline_path, rest = split_args(argv)
    baseline = load_baseline(Path(baseline_path)) if baseline_path else None
    root = report_root or Path("results") / "matrix"
    columns: list[Column] = []
    for i, kernel in enumerate(kernels or [None]):
        for j, numa in enumerate(numas or [None]):
            out = root / f"{i + 1}-{j + 1}"
            out.mkdir(parents=True, exist_ok=True)
            results = run_one(kernel, numa, rest, out)
            label = label_for(results, kernel, numa, len(numas) > 1)
            if any(c.label == label for c in columns):
                label = f"{label} #{i + 1}"
            columns.append(Column(label, kernel, numa, {r.nodeid: r for r in results}))
    new = new_failures(columns, baseline)
    (root / "matrix.json").write_text(json.dumps(matrix_document(columns), indent=1) + "\n")
    (root / "matrix-junit.xml").write_text(matrix_junit(columns))
    print(table(columns, new))
    print(f"(matrix.json, matrix-junit.xml and per-column results in {root})")
    if new:
        what = "new failure" if baseline else "failure"
        print(f"{len(new)} {what}{'s' if len(new) > 1 else ''}"
              f"{' against the baseline' if baseline else ''} (*):")
        for label, nodeid in sorted(new):
            r = next(c for c in columns if c.label == label).results[nodeid]
            print(f"  {label}: {nodeid}: {r.title}")
        return 1
    if any(not c.results for c in columns):
        print("ksm-harness: a column produced no results (see its output above)")
        return 2
    return 0
