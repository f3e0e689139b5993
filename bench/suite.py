"""Wall time of the KSM scenario suite and where it goes.

    .venv/bin/python bench/suite.py [pytest args...]     e.g. -k numa, --ksm-seed 7

Runs ``python -m pytest -c tox.ini tests/ksm -q`` (plus the given arguments) from the repo,
then prints the wall time, each test's duration (setup + call + teardown: a module's first
test also carries its guest's boot and the workload upload) with its outcome, and the total
per module. The goal is under 10 minutes under TCG on 2 host cores; other guests running on
the host at the same time slow it down, so the host's load average is printed too. Exits with
pytest's status.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GOAL_SECONDS = 600.0


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def parse(junit: Path) -> list[tuple[str, str, float, str]]:
    """(module, test, seconds, outcome) per test case."""
    rows = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        module = case.get("classname", "").rsplit(".", 1)[-1]
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "FAILED" if child.tag == "failure" else "ERROR"
                break
            if child.tag == "skipped":
                outcome = ("xfailed" if child.get("type") == "pytest.xfail"
                           else "skipped")
        rows.append((module, case.get("name", "?"), float(case.get("time", 0)), outcome))
    return rows


def main(argv: list[str]) -> int:
    python = REPO / ".venv" / "bin" / "python"
    if not python.exists():
        python = Path(sys.executable)
    with tempfile.TemporaryDirectory(prefix="ksm-suite-") as tmp:
        junit = Path(tmp) / "junit.xml"
        cmd = [str(python), "-m", "pytest", "-c", "tox.ini", "tests/ksm", "-q",
               f"--junitxml={junit}", *argv]
        print(f"suite: {' '.join(cmd)}", flush=True)
        print(f"suite: host load average at start: {load()}", flush=True)
        t0 = time.monotonic()
        status = subprocess.run(cmd, cwd=REPO, check=False).returncode
        wall = time.monotonic() - t0
        rows = parse(junit) if junit.exists() else []

    print("\nper test (setup + call + teardown):")
    for module, name, seconds, outcome in rows:
        print(f"  {seconds:7.1f}s  {outcome:8}  {module}::{name}")
    per_module: dict[str, float] = defaultdict(float)
    for module, _, seconds, _ in rows:
        per_module[module] += seconds
    print("\nper module:")
    for module, seconds in sorted(per_module.items(), key=lambda kv: -kv[1]):
        print(f"  {seconds:7.1f}s  {module}")
    counts: dict[str, int] = defaultdict(int)
    for *_, outcome in rows:
        counts[outcome] += 1
    summary = ", ".join(f"{n} {what}" for what, n in sorted(counts.items()))
    print(f"\nsuite: {len(rows)} tests ({summary}); pytest exit status {status}")
    print(f"suite: host load average at end: {load()}")
    verdict = "within" if wall <= GOAL_SECONDS else "OVER"
    print(f"suite: wall time {wall:.1f}s ({wall / 60:.1f} min), {verdict} the "
          f"{GOAL_SECONDS / 60:.0f}-minute goal")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
