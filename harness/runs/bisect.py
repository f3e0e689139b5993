"""`git bisect run` support: build the tree, run one scenario N times, and answer with the exit
status git bisect expects -- 0 good, 1 bad, 125 cannot tell (skip this commit).

"Bad" means the failure seen at the known-bad end, not any failure: each failure has a
signature (category plus normalised title: ``WARNING`` / ``WARNING in ksm_scan_thread``, or
``ASSERTION`` / ``pages_shared N != N after unmerge``), recorded once at the bad revision. A
commit is bad only when one of its failures has that signature; a failure with another
signature (an unrelated WARNING), a lost VM, a boot failure or a build failure makes the
commit untestable (125), so the bisection never blames a commit for someone else's bug.

The decision is a pure function over results files (``decide``), tested on recorded results
in tests/unit/data/results/.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from harness import paths
from harness.errors import HarnessError
from harness.findings import Category, Finding, signature
from harness.pytest_plugin import session
from harness.results.model import Outcome, Result, load_results

GOOD, BAD, SKIP = 0, 1, 125
ABORT = 128  # git bisect run stops on statuses above 127: a user error, not the commit's
# failures that say nothing about the kernel under test
INFRASTRUCTURE = frozenset({Category.VM_DEAD.value, Category.BOOT.value, Category.SETUP.value,
                            Category.INFRA.value})


class BisectError(HarnessError):
    pass


@dataclass(frozen=True)
class Signature:
    category: str
    title: str

    def __str__(self) -> str:
        return f"{self.category}: {self.title}"

    @classmethod
    def of(cls, finding: Finding) -> Signature:
        return cls(*signature(finding))

    @classmethod
    def load(cls, path: Path) -> Signature:
        try:
            d = json.loads(Path(path).read_text())
            return cls(d["category"], d["title"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise BisectError(f"--signature {path}: not a signature file ({exc})") from None

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=1) + "\n")


def signatures(r: Result) -> list[Signature]:
    """Every signature of a failed test, its top finding's first (the findings are ranked)."""
    if not r.failed:
        return []
    out: list[Signature] = []
    for f in r.findings:
        sig = Signature.of(f)
        if sig not in out:
            out.append(sig)
    return out


def is_infrastructure(sig: Signature) -> bool:
    return sig.category in INFRASTRUCTURE


@dataclass
class Verdict:
    status: int
    reason: str
    evidence: list[str] = field(default_factory=list)
    signature: Signature | None = None  # the failure that made it bad

    @property
    def name(self) -> str:
        return {GOOD: "good", BAD: "bad", SKIP: "skip"}.get(self.status, "abort")


def decide(runs: list[list[Result]], bad: Signature | None) -> Verdict:
    """The verdict over N runs of the scenario (each a list of its test results).

    bad: the signature of the known-bad end; None while recording it (then any failure
    that is not infrastructure counts)."""
    tests = [r for run in runs for r in run]
    if not tests:
        return Verdict(ABORT, "no test ran: does -k select a scenario of tests/ksm?")
    evidence: list[str] = []
    other: list[str] = []
    matched: Signature | None = None
    for i, run in enumerate(runs, 1):
        for r in run:
            for sig in signatures(r):
                line = f"run {i}: {r.nodeid}: {sig}"
                if (sig == bad) if bad is not None else not is_infrastructure(sig):
                    evidence.append(line + (f"\n{r.text}" if r.text else ""))
                    matched = matched or sig
                    break
            else:
                if r.failed:
                    other.append(f"run {i}: {r.nodeid}: {signatures(r)[0]}")
    if evidence:
        what = str(bad) if bad else "a failure"
        return Verdict(BAD, f"{what} in {len(evidence)} of {len(tests)} test runs", evidence,
                       matched)
    if other:
        return Verdict(SKIP, "only failures unrelated to the bad signature: " + "; ".join(
            o.split(": ", 2)[-1] for o in other[:3]), other)
    if all(r.outcome in (Outcome.SKIPPED, Outcome.XFAILED) for r in tests):
        return Verdict(SKIP, f"the scenario was skipped: {tests[0].reason}")
    return Verdict(GOOD, f"{sum(r.outcome is Outcome.PASSED for r in tests)} test runs passed")


def first_bad_commit(output: str) -> str | None:
    """The commit ``git bisect run`` named, from its output."""
    m = re.search(r"^([0-9a-f]{7,40}) is the first bad commit", output, re.M)
    return m.group(1) if m else None


# --- running the scenario (I/O) ------------------------------------------------------------

def run_scenario(tree: Path, scenario: str, out: Path, extra: Iterable[str] = ()) -> list[Result]:
    """One pytest run of the scenario on the tree's kernel, in a child process."""
    out.unlink(missing_ok=True)
    session.run_child(["-k", scenario, "--kernel", str(tree), "--results-json", str(out),
                       "--report-dir", str(out.parent / out.stem), "-p", "no:cacheprovider",
                       "-q", *extra], ["tests/ksm"], cwd=paths.REPO)
    if not out.is_file():
        return []
    return load_results(out)[1]


GIT_TIMEOUT = 120.0  # seconds: rev-parse and log on a kernel tree take well under one


def _git(tree: Path, *args: str, check: bool = True) -> str:
    try:
        r = subprocess.run(["git", "-C", str(tree), *args], capture_output=True, text=True,
                           timeout=GIT_TIMEOUT)
    except FileNotFoundError:
        raise BisectError("git is not installed (apt-get install git): bisect reads the "
                          "tree's commits with it") from None
    except subprocess.TimeoutExpired:
        raise BisectError(f"git {' '.join(args)} in {tree}: no answer in {GIT_TIMEOUT:.0f}s"
                          ) from None
    if check and r.returncode != 0:
        raise BisectError(f"git {' '.join(args)}: {r.stderr.strip() or r.stdout.strip()}")
    return r.stdout.strip()


def step(tree: Path, scenario: str, runs: int = 1, bad: Signature | None = None,
         report_dir: Path = Path("results"), jobs: int | None = None,
         build_fn: Callable[..., object] | None = None,
         run_fn: Callable[[Path, str, Path], list[Result]] = run_scenario,
         log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)) -> Verdict:
    from harness.assets import kbuild as build_mod
    rev = _git(tree, "rev-parse", "HEAD", check=False) or "unknown"
    out = report_dir / "bisect" / rev[:12]
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    try:
        (build_fn or build_mod.build)(tree, jobs, log=log)
    except build_mod.BuildError as exc:
        verdict = Verdict(SKIP, f"build failed: {str(exc).splitlines()[0]}")
    else:
        results: list[list[Result]] = []
        for i in range(max(1, runs)):
            results.append(run_fn(tree, scenario, out / f"run-{i + 1}.json"))
            verdict = decide(results, bad)
            if verdict.status in (BAD, ABORT):
                break  # one matching failure is enough
        verdict = decide(results, bad)
    (out / "verdict.json").write_text(json.dumps(
        {"commit": rev, "signature": str(verdict.signature or ""), "status": verdict.status, "verdict": verdict.name,
         "reason": verdict.reason, "evidence": verdict.evidence,
         "seconds": round(time.monotonic() - t0, 1)}, indent=1) + "\n")
    log(f"ksm-harness: bisect-step {rev[:12]}: {verdict.name} ({verdict.status}): "
        f"{verdict.reason}")
    return verdict


def bisect(tree: Path, good: str, bad_rev: str, scenario: str, runs: int = 1,
           report_dir: Path = Path("results"), jobs: int | None = None,
           log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)) -> int:
    tree = tree.expanduser().resolve()
    if _git(tree, "rev-parse", "--is-inside-work-tree", check=False) != "true":
        raise BisectError(f"--tree {tree}: not a git work tree")
    good_sha, bad_sha = (_git(tree, "rev-parse", "--verify", f"{r}^{{commit}}")
                         for r in (good, bad_rev))
    if _git(tree, "status", "--porcelain", "--untracked-files=no"):
        raise BisectError(f"--tree {tree}: uncommitted changes; commit or stash them first")
    report_dir = report_dir.resolve()
    if (report_dir / "bisect").is_dir():  # a new bisection replaces the last one's records
        shutil.rmtree(report_dir / "bisect")
    sig_file = report_dir / "bisect" / "signature.json"
    t0 = time.monotonic()
    _git(tree, "checkout", "-q", bad_sha)
    log(f"ksm-harness: recording the failure at the bad end {bad_sha[:12]}")
    v = step(tree, scenario, runs, None, report_dir, jobs, log=log)
    if v.status != BAD:
        raise BisectError(f"{bad_rev} does not fail {scenario!r} ({v.name}: {v.reason}): "
                          "nothing to bisect")
    sig = v.signature
    assert sig is not None
    sig.save(sig_file)
    log(f"ksm-harness: bad signature: {sig}")
    _git(tree, "bisect", "reset", check=False)
    _git(tree, "bisect", "start", bad_sha, good_sha)
    cmd = [sys.executable, "-m", "harness.cli", "bisect-step", "--tree", str(tree),
           "-k", scenario, "--runs", str(runs), "--signature", str(sig_file),
           "--report-dir", str(report_dir)] + (["-j", str(jobs)] if jobs else [])
    r = subprocess.run(["git", "-C", str(tree), "bisect", "run", *cmd], capture_output=True,
                       text=True, cwd=paths.REPO)
    (report_dir / "bisect" / "bisect-run.log").write_text(r.stdout + r.stderr)
    blog = _git(tree, "bisect", "log", check=False)
    (report_dir / "bisect" / "bisect.log").write_text(blog + "\n")
    _git(tree, "bisect", "reset", check=False)
    first = first_bad_commit(r.stdout)
    if first is None:
        raise BisectError(f"git bisect run found no first bad commit (see "
                          f"{report_dir / 'bisect' / 'bisect-run.log'})")
    steps = sum(1 for line in blog.splitlines() if line.startswith("git bisect ") and
                line.split()[2:3] in (["good"], ["bad"], ["skip"]))
    print(f"first bad commit: {_git(tree, 'show', '-s', '--format=%H %s', first)}")
    print(f"signature: {sig}; {steps} steps in {time.monotonic() - t0:.0f}s")
    verdict = report_dir / "bisect" / first[:12] / "verdict.json"
    if verdict.is_file():
        d = json.loads(verdict.read_text())
        print(f"evidence ({d['reason']}):")
        for line in d["evidence"][:3]:
            print("  " + "\n  ".join(line.splitlines()[:25]))
    return 0



def main(args: argparse.Namespace) -> int:
    """``ksm-harness bisect`` and ``bisect-step``."""
    tree = Path(args.tree).expanduser()
    if not tree.is_dir():
        raise HarnessError(f"--tree {tree}: no such directory")
    if args.runs < 1:
        raise HarnessError("--runs must be at least 1")
    if args.cmd == "bisect":
        return bisect(tree, args.good, args.bad, args.scenario, args.runs,
                      Path(args.report_dir), args.jobs)
    # under `git bisect run` any status 1..127 but 125 means "bad": our own errors must abort
    try:
        sig = Signature.load(Path(args.signature)) if args.signature else None
        return step(tree.resolve(), args.scenario, args.runs, sig, Path(args.report_dir),
                    args.jobs).status
    except Exception as exc:  # noqa: BLE001 -- never let a traceback read as "bad"
        print(f"ksm-harness: bisect-step: {exc}", file=sys.stderr)
        return ABORT
