"""``ksm-harness fuzz``: the generated operation sequences (tests/ksm/test_generated.py) for
a long run (--minutes, --seed), or a reproducer file's steps again (--replay FILE, on the
kernel it names unless --kernel says otherwise)."""
from __future__ import annotations

import argparse
from pathlib import Path

from harness import options, paths
from harness.errors import HarnessError
from harness.fuzz.replay import load
from harness.pytest_plugin import session

TEST = "tests/ksm/test_generated.py"


def pytest_args(args: argparse.Namespace) -> list[str]:
    """The suite run's arguments for ``args`` (checked: a bad file or value is one line)."""
    argv = options.to_argv(options.values(args))
    if args.replay:
        rep = load(Path(args.replay))  # HarnessError naming what is wrong with it
        if args.kernel is None and rep.kernel and rep.kernel != "debian":
            argv += ["--kernel", rep.kernel]
        argv += ["--fuzz-replay", str(Path(args.replay).resolve())]
    else:
        if args.minutes is not None and args.minutes <= 0:
            raise HarnessError(f"fuzz: --minutes must be positive, not {args.minutes:g}")
        argv += ["--fuzz-minutes", str(args.minutes or 10.0)]
        if args.seed is not None:
            argv += ["--fuzz-seed", str(args.seed)]
    if args.report_dir:
        argv += ["--report-dir", args.report_dir]
    return [*argv, "-s", str(paths.REPO / TEST)]


def main(args: argparse.Namespace) -> int:
    return session.run(pytest_args(args), [TEST])
