"""What a broken kernel costs: the suite on a clean kernel and on a broken one, side by side in
one run, and how long after the kernel's report each failing test got its verdict.

    .venv/bin/python bench/broken_kernel.py --clean K --broken K [pytest args...]

e.g. ``--clean source:6.1 --broken ~/linux-bug`` plus ``tests/ksm/test_swap.py``-style
selections through ``-k``. Prints both wall times and their ratio (goal of the issue
"verdicts in seconds": the broken kernel's suite in at most 2x the clean one's), every failing
test with its title, and for each failure caused by a kernel report the time from the report's
first line reaching the host to the test's verdict (goal: the first under 5 s).

How the README's broken kernel was made: ``sh bench/build_broken_kernel.sh`` (the cached
built-in 6.1 with ``bench/patches/ksm-swapin-bug.patch``: ``BUG_ON(page_stable_node(page))``
in mm/ksm.c's ksm_might_need_to_copy(), so a KSM page faulted back from swapcache BUGs),
rebuilt incrementally in about a minute of CPU.
"""
from __future__ import annotations

import argparse
import os
import sys

from figures import from_results, record  # bench/figures.py, beside this file
from suite import outcome_summary, run_suite  # bench/suite.py, beside this file

from harness.results.model import Result


def verdict_time(r: Result) -> float | None:
    """Host time the test's deciding phase ended."""
    if r.start is None:
        return None
    total = 0.0
    for phase in ("setup", "call", "teardown"):
        total += r.durations.get(phase, 0.0)
        if phase == (r.when or "call"):
            break
    return r.start + total


def report_latency(r: Result) -> float | None:
    """Seconds from the kernel report's arrival on the console to the test's verdict."""
    report, end = r.kernel_report, verdict_time(r)
    if report is None or report.time is None or end is None or report.time > end:
        return None
    return end - report.time


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clean", required=True, help="a kernel with no known KSM bug")
    p.add_argument("--broken", required=True, help="the same kernel with a bug patched in")
    args, rest = p.parse_known_args(argv)
    runs = {}
    for name, kernel in (("clean", args.clean), ("broken", args.broken)):
        print(f"{name}: --kernel {kernel}; load {os.getloadavg()[0]:.2f}", flush=True)
        runs[name] = run_suite([*rest, "--kernel", kernel])
        wall, status, results = runs[name]
        print(f"{name}: {wall:.1f}s, {len(results)} tests ({outcome_summary(results)}), "
              f"exit status {status}", flush=True)

    clean_wall, broken_wall = runs["clean"][0], runs["broken"][0]
    failed = sorted((r for r in runs["broken"][2] if r.failed),
                    key=lambda r: verdict_time(r) or 0.0)
    out = [f"broken kernel: {len(failed)} tests failed"]
    latencies = []
    for r in failed:
        lat = report_latency(r)
        if lat is not None:
            latencies.append(lat)
        shown = f"{lat:5.1f}s after the report" if lat is not None else "  (no kernel report)"
        out.append(f"  {shown}  {r.nodeid.split('/')[-1]}: {r.title}")
    if latencies:
        out.append(f"report -> verdict: first {latencies[0]:.1f}s, worst {max(latencies):.1f}s "
                   f"(goal: first under 5 s)")
    ratio = broken_wall / clean_wall if clean_wall else float("inf")
    out.append(f"suite: clean {clean_wall:.1f}s, broken {broken_wall:.1f}s, ratio {ratio:.2f} "
               f"({'within' if ratio <= 2 else 'OVER'} the 2x goal)")
    print("\n" + "\n".join(out))
    kernel, accel = from_results(runs["broken"][2])
    record("broken_kernel", out, kernel=f"clean {args.clean}, broken {args.broken} ({kernel})",
           accel=accel)
    return 0 if failed else 1  # a broken kernel that fails nothing is the finding


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
