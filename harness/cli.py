"""ksm-harness: the command line. Wiring only: each verb's arguments and the function that
does its work (``VERBS``); user errors end in one line `ksm-harness: ...` and a non-zero exit,
never a traceback."""
from __future__ import annotations

import argparse
import importlib
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

from harness import options, reaper
from harness.errors import HarnessError, host_file_line
from harness.version import harness_version

EPILOG = """examples:
  ksm-harness boot -- cat /sys/devices/system/node/online
  ksm-harness boot --kernel ~/linux/arch/x86/boot/bzImage --numa 1G:1,1G:1
  ksm-harness run --junitxml results/junit.xml
  ksm-harness triage --json console.log
"""


def selftest(rest: list[str]) -> int:
    """Ours: host tests, the harness on real guests, the KSM suite itself on the default
    kernel (it must pass there, or the product is broken), with its self-checks (tests
    marked selfcheck, which `run` leaves out), and the fault matrix (tests/faults)."""
    from harness.pytest_plugin import session
    return session.run(["--selfchecks", *rest],
                       ["tests/unit", "tests/guest", "tests/ksm", "tests/faults"])


def _boot(p: argparse.ArgumentParser) -> None:
    options.add_to_argparse(p)
    p.add_argument("--dry-run", action="store_true",
                   help="print a QEMU command line that runs the guest (its files are kept, and "
                        "where is said) and exit")
    p.add_argument("--keep", action="store_true",
                   help="keep the run directory (console log); a failed boot keeps it anyway")
    p.add_argument("--timeout", type=options.seconds, default=600.0,
                   help="seconds for CMD (default 600)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")


def _build(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--tree", metavar="PATH", help="kernel source tree")
    where.add_argument("--source", nargs="?", const="6.1", metavar="SERIES",
                       help="Debian's linux-source-SERIES (default 6.1), fetched, built "
                       "with --flavour (default builtin) and cached: what --kernel "
                       "source:SERIES[+debug] boots")
    p.add_argument("--flavour", choices=["builtin", "debug", "gcov"], default=None,
                   help="builtin: allnoconfig + guest-images/kernel-builtin.config + "
                   "kernel.config, no modules; debug: that + "
                   "guest-images/kernel-debug.config (DEBUG_VM, DEBUG_LIST, KFENCE, ...); gcov: "
                   "builtin + guest-images/kernel-gcov.config (gcov of mm/ksm.c and the "
                   "files that treat KSM pages specially, for `ksm-harness coverage`)")
    p.add_argument("-j", "--jobs", type=int, default=None, help="make -j (default: all CPUs)")
    p.add_argument("--defconfig", action="store_true",
                   help="start from x86_64 defconfig even when the tree has a .config")
    p.add_argument("--slim", action="store_true",
                   help="also merge guest-images/kernel-slim.config (no graphics, sound, USB, "
                   "wireless, ...): about half the build time")


def _bisect_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tree", required=True, metavar="PATH", help="kernel git tree")
    p.add_argument("-k", "--scenario", dest="scenario", required=True, metavar="EXPR",
                   help="pytest -k expression selecting the scenario in tests/ksm (the same "
                        "-k as run's), e.g. -k test_lone_page_beyond_the_cap_stays_unshared")
    p.add_argument("--runs", type=int, default=1, metavar="N",
                   help="run the scenario N times per commit (bad if any run matches)")
    p.add_argument("--report-dir", default="results", metavar="DIR",
                   help="where verdicts, results and the signature go (default results/)")
    p.add_argument("-j", "--jobs", type=int, default=None, help="make -j (default: all CPUs)")


def _bisect_step(p: argparse.ArgumentParser) -> None:
    _bisect_common(p)
    p.add_argument("--signature", metavar="FILE",
                   help="the bad end's failure signature (from `ksm-harness bisect`); without "
                        "it any kernel report or assertion failure is bad")


def _bisect(p: argparse.ArgumentParser) -> None:
    _bisect_common(p)
    p.add_argument("--good", required=True, metavar="REV")
    p.add_argument("--bad", required=True, metavar="REV")


def _plan(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kernel", action="append", metavar="KERNEL",
                   help=options.BY_FLAG["--kernel"].help + "; repeat for more columns")
    p.add_argument("--numa", action="append", metavar="SPEC",
                   help=options.BY_FLAG["--numa"].help + "; repeat for more columns")
    p.add_argument("--modules", metavar="DIR", help=options.BY_FLAG["--modules"].help)
    p.add_argument("--format", choices=("text", "json", "github", "gitlab"), default="text",
                   help="text (default), json, github (a strategy.matrix 'include' list), "
                        "gitlab (a child pipeline: a job per cell, then merge)")
    p.add_argument("--runner-tag", metavar="TAG", help="gitlab: the runners' tag (e.g. kvm)")


def _merge(p: argparse.ArgumentParser) -> None:
    p.add_argument("dirs", nargs="+", metavar="DIR",
                   help="directories holding results.json files (searched recursively), or "
                        "results files")
    p.add_argument("--baseline", metavar="FILE",
                   help="a results.json or matrix.json: only new failures fail the merge")
    p.add_argument("--out", default="results/matrix", metavar="DIR",
                   help="where matrix.json, matrix-junit.xml, matrix.html go (default "
                        "results/matrix)")


def _export(p: argparse.ArgumentParser) -> None:
    esub = p.add_subparsers(dest="format", required=True)
    e = esub.add_parser("kcidb", help="KCIDB I/O data (schema v5) for kcidb-submit")
    e.add_argument("--origin", required=True, metavar="NAME",
                   help="your CI system's KCIDB origin (lower-case letters, digits, _)")
    e.add_argument("results", nargs="*", metavar="RESULTS",
                   help="results.json files or directories holding them (default results/)")
    e.add_argument("-o", "--output", metavar="FILE", help="write here (default stdout)")
    e.add_argument("--artifacts-url", metavar="URL",
                   help="where the results directory is published (e.g. the CI job's "
                        "artifacts URL): output files get URLs under it instead of file://")
    e.add_argument("--artifacts-root", metavar="DIR",
                   help="the local directory --artifacts-url corresponds to (default: the "
                        "current directory)")


def _fuzz(p: argparse.ArgumentParser) -> None:
    options.add_to_argparse(p)
    what = p.add_mutually_exclusive_group()
    what.add_argument("--minutes", type=float, metavar="N",
                      help="generate for N minutes (default 10), then shrink any failure")
    what.add_argument("--replay", metavar="FILE",
                      help="run a reproducer file's steps (written by a failing run)")
    p.add_argument("--seed", type=int, metavar="S",
                   help="the generator's seed (default: today's UTC date, YYYYMMDD)")
    p.add_argument("--report-dir", metavar="DIR",
                   help="results and reproducers (default results/; reproducers in fuzz/)")


def _junit_check(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="XML")


@dataclass(frozen=True)
class Verb:
    help: str
    # "module:function", imported only when the verb runs (boot's imports are heavy)
    run: str | Callable[..., int]
    # its arguments; None: passed through untouched (to triage, pytest) as a list
    declare: Callable[[argparse.ArgumentParser], None] | None = None


VERBS: dict[str, Verb] = {
    "boot": Verb("boot a guest, run CMD (or a shell), exit with its status (255: the guest "
                 "panicked or died; the kernel report's title on stderr)",
                 "harness.runs.boot:main", _boot),
    "triage": Verb("classify kernel reports in a saved console log",
                   "harness.console.triage:main"),
    "run": Verb("run the KSM scenario suite (pytest options pass through)",
                "harness.runs.runargs:main"),
    "selftest": Verb("run ksm-harness's own tests (host, guest, and the KSM suite on the "
                     "default kernel)", selftest),
    "build": Verb("configure (the tree's .config or defconfig, + guest-images/kernel.config, "
                  "checked) and build a kernel tree; or build Debian's linux-source into the "
                  "cache (--source)", "harness.runs.build:main", _build),
    "coverage": Verb("run the suite (or -k ...) on the gcov kernel (source:6.1+gcov): lines "
                     "and functions of mm/ksm.c and KSM sites reached, per test, lcov/HTML",
                     "harness.runs.coverage:main"),
    "bisect-step": Verb("for `git bisect run`: build, run a scenario N times; exit 0 good, 1 "
                        "bad (same failure signature), 125 skip",
                        "harness.runs.bisect:main", _bisect_step),
    "bisect": Verb("record the bad end's failure, drive git bisect, print the first bad "
                   "commit with its evidence", "harness.runs.bisect:main", _bisect),
    "plan": Verb("list the cells (kernel x topology) of a run with their ids, or a CI job "
                 "matrix of them", "harness.runs.cells:plan_main", _plan),
    "merge": Verb("combine cells' and shards' results (from `run --cell` / `run --shard`) "
                  "into the matrix table, matrix.json, JUnit and HTML",
                  "harness.runs.cells:merge_main", _merge),
    "export": Verb("export results in another system's format", "harness.runs.export:main",
                   _export),
    "fuzz": Verb("generate KSM operation sequences checked against a model for N minutes, "
                 "or replay a failure's minimal sequence", "harness.runs.fuzz:main", _fuzz),
    "junit-check": Verb("validate JUnit XML against Jenkins' junit-10.xsd",
                        "harness.results.junit:check", _junit_check),
}


class _Parser(argparse.ArgumentParser):
    """Errors in one line that names the verb and where its syntax is, not argparse's usage
    block and exit status."""

    def error(self, message: str) -> NoReturn:
        verb = self.prog.removeprefix("ksm-harness").strip()
        raise HarnessError(f"{verb + ': ' if verb else ''}{message} (see {self.prog} --help)")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="ksm-harness", epilog=EPILOG, allow_abbrev=False,
                formatter_class=argparse.RawDescriptionHelpFormatter,
                description="Test Linux KSM in real QEMU NUMA guests.")
    p.add_argument("--version", action="version", version=f"ksm-harness {harness_version()}")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="VERB")
    for name, verb in VERBS.items():
        if verb.declare is None:
            sub.add_parser(name, help=verb.help, add_help=False).add_argument(
                "rest", nargs=argparse.REMAINDER)
        else:
            verb.declare(sub.add_parser(name, help=verb.help, allow_abbrev=False))
    return p


def parse(argv: list[str]) -> argparse.Namespace:
    """The verb (``cmd``) and its arguments; a pass-through verb's arguments as ``rest``."""
    if argv[:1] and argv[0] in VERBS and VERBS[argv[0]].declare is None:
        return argparse.Namespace(cmd=argv[0], rest=argv[1:])
    try:
        return parser().parse_args(argv)
    except HarnessError as exc:
        msg = str(exc)
        if argv and argv[0] in VERBS and msg.startswith("unrecognized arguments"):
            # argparse reports a verb's extra arguments on the top parser: name the verb
            msg = f"{argv[0]}: " + msg.replace("(see ksm-harness --help)",
                                               f"(see ksm-harness {argv[0]} --help)")
        raise HarnessError(msg) from None


def handler(verb: Verb) -> Callable[..., int]:
    if callable(verb.run):
        return verb.run
    module, _, name = verb.run.partition(":")
    fn: Callable[..., int] = getattr(importlib.import_module(module), name)
    return fn


_CAUGHT: list[signal.Signals] = []  # the signals that stopped this run, first one first


def _stop(signum: int, _frame: object) -> None:
    """SIGINT and SIGTERM stop the run the same way, through KeyboardInterrupt: pytest then
    records the unfinished tests and writes every report, and QEMUs are stopped. Only the
    first raises: a second one must not cut the report writing short."""
    _CAUGHT.append(signal.Signals(signum))
    if len(_CAUGHT) == 1:
        raise KeyboardInterrupt(_CAUGHT[0].name)  # pytest's records say which


def _interrupted() -> int:
    sig = _CAUGHT[0] if _CAUGHT else signal.SIGINT
    print(f"ksm-harness: interrupted ({sig.name})", file=sys.stderr)
    return 128 + int(sig)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # A shell starts background jobs with SIGINT ignored, and Python then installs no
    # KeyboardInterrupt handler: Ctrl-C (or kill -INT) must always stop us and our QEMUs.
    # SIGTERM (kill, CI cancelling a job) would end us silently, without reports.
    _CAUGHT.clear()
    before = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _main(argv)
    finally:
        for sig, old in before.items():
            signal.signal(sig, old)


def _main(argv: list[str]) -> int:
    try:
        args = parse(argv)
    except HarnessError as exc:
        print(f"ksm-harness: {exc}", file=sys.stderr)
        return exc.exit_code
    verb = VERBS[args.cmd]
    try:
        for msg in reaper.clean_stale():
            print(f"ksm-harness: {msg}", file=sys.stderr)
        status = handler(verb)(args.rest if verb.declare is None else args)
        # pytest catches the KeyboardInterrupt, writes its reports and returns
        return _interrupted() if _CAUGHT else status
    except HarnessError as exc:
        print(f"ksm-harness: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return _interrupted()
    except OSError as exc:
        # the host's file system failed us (full, read-only, no permission): name the file
        line = host_file_line(exc)
        if line is None:
            raise
        print(f"ksm-harness: {line}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
