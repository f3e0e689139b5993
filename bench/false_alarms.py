"""How often does the suite fail a kernel that has no bug? Runs the KSM suite N times on one
kernel and prints every test that failed (or errored) in any run, with its titles and rate.

    python bench/false_alarms.py --runs 10 [--kernel K] [--seed S] [pytest args, e.g. -k merge]

Each run is a child pytest process writing results/false-alarms/run-<i>/results.json, with a
seed of its own for the generated sequences (test_generated): S, S+1, ... (default S: today's
UTC date, as the main job's). On a clean kernel every row printed is a false alarm of ours: a
flake to fix at its cause.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from figures import from_results, record  # noqa: E402  (bench/figures.py, beside this file)

from harness.pytest_plugin import session  # noqa: E402
from harness.results.model import Result, load_results  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--kernel", default=None)
    p.add_argument("--out", type=Path, default=Path("results/false-alarms"))
    p.add_argument("--seed", type=int, default=None,
                   help="first run's --fuzz-seed (default: today's UTC date as YYYYMMDD)")
    args, rest = p.parse_known_args(argv)
    first = args.seed if args.seed is not None else int(time.strftime("%Y%m%d", time.gmtime()))
    seeds: list[int] = []
    runs: list[list[Result]] = []
    seconds: list[float] = []
    for i in range(1, args.runs + 1):
        out = args.out / f"run-{i}"
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").unlink(missing_ok=True)
        extra = ["--kernel", args.kernel] if args.kernel else []
        seeds.append(first + i - 1)
        extra += ["--fuzz-seed", str(seeds[-1])]
        t0 = time.monotonic()
        session.run_child([*rest, *extra, "-q", "-p", "no:cacheprovider",
                           "--results-json", str(out / "results.json"),
                           "--report-dir", str(out)], ["tests/ksm"], cwd=REPO)
        seconds.append(time.monotonic() - t0)
        results = load_results(out / "results.json")[1] if (out / "results.json").is_file() \
            else []
        runs.append(results)
        bad = sum(r.failed for r in results)
        print(f"run {i}/{args.runs} (fuzz seed {seeds[-1]}): {len(results)} tests, {bad} "
              f"failed, {seconds[-1]:.0f}s", flush=True)
    failed: dict[str, list[str]] = defaultdict(list)
    for results in runs:
        for r in results:
            if r.failed:
                failed[r.nodeid].append(r.title)
    total = sum(len(r) for r in runs)
    out = [f"{args.runs} runs, {total} test runs, kernel {args.kernel or 'default'}, "
           f"{min(seconds, default=0):.0f}-{max(seconds, default=0):.0f}s a run, "
           f"fuzz seeds {seeds[0] if seeds else '-'}..{seeds[-1] if seeds else '-'}"]
    if not failed:
        out.append("no test failed in any run")
    for nodeid, titles in sorted(failed.items(), key=lambda kv: -len(kv[1])):
        out.append(f"{len(titles)}/{args.runs}  {nodeid}")
        for title in sorted(set(titles)):
            out.append(f"        {titles.count(title)}x {title}")
    print("\n" + "\n".join(out))
    kernel, accel = from_results(r for results in runs for r in results)
    record("false_alarms", out, kernel=kernel, accel=accel)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
