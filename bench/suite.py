"""Wall time of the KSM scenario suite and where it goes: boot, set-up, tests, teardown.

    .venv/bin/python bench/suite.py [pytest args...]     e.g. -k numa, --kernel K

Runs the suite in a child pytest (``tests/ksm`` plus the given arguments) with a results
file, then prints the wall time, each test's set-up / call / teardown, the total per module,
and the split over the run: guest boots (QEMU start to first SSH command, counted once per
boot), the rest of set-up (workload upload, KSM reset, cgroups...), the tests themselves and
teardown. Goals: under 10 minutes (issue "scenarios"), under 3 minutes ("verdicts in
seconds"). Other guests on the host slow it down, so the load average is printed too.
Exits with pytest's status.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from figures import from_results, record  # noqa: E402  (bench/figures.py, beside this file)

from harness.pytest_plugin import session  # noqa: E402
from harness.results.model import Result, load_results  # noqa: E402

GOALS = (180.0, 600.0)


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def run_suite(argv: list[str]) -> tuple[float, int, list[Result]]:
    """Run tests/ksm with ``argv`` in a child pytest: (wall seconds, exit status, results)."""
    with tempfile.TemporaryDirectory(prefix="ksm-suite-") as tmp:
        out = Path(tmp) / "results.json"
        t0 = time.monotonic()
        status = session.run_child([*argv, "-q", "-p", "no:cacheprovider", "--results-json",
                                    str(out), "--report-dir", str(Path(tmp) / "report")],
                                   ["tests/ksm"], cwd=REPO)
        wall = time.monotonic() - t0
        return wall, status, load_results(out)[1] if out.is_file() else []


def outcome_summary(results: list[Result]) -> str:
    """e.g. "2 failed, 41 passed, 3 skipped"."""
    counts: dict[str, int] = defaultdict(int)
    for r in results:
        counts[r.outcome.value] += 1
    return ", ".join(f"{n} {what}" for what, n in sorted(counts.items()))


def main(argv: list[str]) -> int:
    load_start = load()
    print(f"suite: host load average at start: {load_start}", flush=True)
    wall, status, results = run_suite(argv)

    split: dict[str, float] = defaultdict(float)
    per_module: dict[str, float] = defaultdict(float)
    print("\nper test: setup / call / teardown (boot)")
    for r in results:
        d = r.durations
        boot = sum(float(v) for k, v in r.properties.items() if k.startswith("boot_seconds"))
        split["boot"] += boot
        split["set-up"] += max(0.0, d.get("setup", 0.0) - boot)
        split["tests"] += d.get("call", 0.0)
        split["teardown"] += d.get("teardown", 0.0)
        per_module[r.nodeid.split("::")[0].rsplit("/", 1)[-1]] += r.duration
        print(f"  {d.get('setup', 0):6.1f} {d.get('call', 0):6.1f} {d.get('teardown', 0):6.1f}"
              f"{f' ({boot:.1f})' if boot else '':9}  {r.outcome.value:8}  "
              f"{r.nodeid.split('/')[-1]}")
    print("\nper module:")
    for module, seconds in sorted(per_module.items(), key=lambda kv: -kv[1]):
        print(f"  {seconds:7.1f}s  {module}")
    counted = sum(split.values()) or 1.0
    goals = "; ".join(f"{'within' if wall <= g else 'OVER'} the {g / 60:.0f}-minute goal"
                      for g in GOALS)
    summary = [
        "where the time goes: " + ", ".join(
            f"{k} {v:.0f}s ({100 * v / counted:.0f}%)" for k, v in split.items()),
        f"suite: {len(results)} tests ({outcome_summary(results)}); pytest exit status "
        f"{status}",
        f"suite: host load average at start: {load_start}; at end: {load()}",
        f"suite: wall time {wall:.1f}s ({wall / 60:.1f} min): {goals}",
    ]
    print("\n" + "\n".join(summary))
    kernel, accel = from_results(results)
    record("suite", summary, kernel=kernel, accel=accel)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
