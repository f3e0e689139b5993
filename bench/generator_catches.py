"""Does the generator find KSM bugs nobody named? For each ``bench/patches/gen-*.patch`` (a
small, realistic bug in a KSM path no scenario targets; its header says where, what, and
what a user sees): build the cached built-in 6.1 kernel with it, run the generator on it
(``ksm-harness fuzz --minutes M --seed S``), and replay the shrunk reproducer it wrote
(``ksm-harness fuzz --replay FILE --kernel BUILD``). The control: the clean built-in kernel
(source:6.1) with the same seeds must pass.

    .venv/bin/python bench/generator_catches.py [--minutes M] [--seeds 1,2] [--out DIR]
        [--patch bench/patches/gen-x.patch ...] [--reuse] [--no-control]

Each bug is tried with the seeds in order until one catches it. Prints a table: caught or
not, the seed, the time and guest steps to the first failure, the first failing sequence's
length and the shrunk one's, whether the replay failed again the same way (the same
finding: category and normalized title) and the failure. Exits non-zero when a bug is not
caught, a replay does not fail the same way, or the clean kernel fails.

Builds (about 500 MB each) go to DIR/<patch name>/ (default /tmp/ksm-generator-catches);
--reuse keeps a build already there. Needs root (build_broken_kernel.sh bind-mounts).
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from figures import from_results, record  # noqa: E402  (bench/figures.py, beside this file)

from harness.results.model import Result, load_results  # noqa: E402

CLEAN = "source:6.1"
# what test_generated prints (tests/ksm/test_generated.py)
FIRST = re.compile(r"first failure after (\d+)s of generation, at guest step (\d+) "
                   r"\(a sequence of (\d+) steps\)")
MINIMAL = re.compile(r"minimal failing sequence \((\d+) steps\): (\S+)")
STEPS = re.compile(r"fuzz: (\d+) runs, (\d+) steps in (\d+)s")


@dataclass
class Fuzz:
    """One ``ksm-harness fuzz`` run: its exit status, output and results."""

    status: int
    seconds: float
    output: str
    results: list[Result]

    @property
    def result(self) -> Result | None:
        return next((r for r in self.results if "test_generated" in r.nodeid), None)

    @property
    def failed(self) -> bool:
        r = self.result
        return self.status != 0 and (r is None or r.failed)

    def title(self) -> str:
        r = self.result
        return r.title if r is not None else f"no result (exit status {self.status})"

    def match(self, pattern: re.Pattern[str]) -> re.Match[str] | None:
        return pattern.search(self.output)


def fuzz(args: list[str], report: Path, log: Path) -> Fuzz:
    """``ksm-harness fuzz ARGS`` in a child process, results in ``report``."""
    report.mkdir(parents=True, exist_ok=True)
    (report / "results.json").unlink(missing_ok=True)
    cmd = ["nice", "-n", "10", sys.executable, "-m", "harness.cli", "fuzz", *args,
           "--report-dir", str(report)]
    t0 = time.monotonic()
    with log.open("w") as out:
        status = subprocess.run(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT).returncode
    seconds = time.monotonic() - t0
    results = load_results(report / "results.json")[1] if (report / "results.json").is_file() \
        else []
    return Fuzz(status, seconds, log.read_text(errors="replace"), results)


def build(patch: Path, out: Path, reuse: bool) -> Path:
    """The built-in kernel with ``patch``: OUT/build (what --kernel takes)."""
    if reuse and (out / "build" / "vmlinux").is_file():
        return out / "build"
    t0 = time.monotonic()
    r = subprocess.run(["nice", "-n", "10", "sh", str(REPO / "bench/build_broken_kernel.sh"),
                        str(patch), str(out)], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"generator_catches: building {patch.name} failed: "
                         f"{(r.stderr or r.stdout).strip().splitlines()[-1:]}")
    print(f"{patch.stem}: built in {time.monotonic() - t0:.0f}s", flush=True)
    return out / "build"


def kind(failure: str) -> str:
    """What a failure says, without its exception type and numbers: "KSM counters not back to
    their start right after run=N: pages_volatile=N (at the start: N)"."""
    text = re.sub(r"^\w+(\.\w+)*: ", "", failure.strip().splitlines()[0] if failure else "")
    return " ".join(re.sub(r"\d+", "N", text).split())[:70]


def same_failure(failure: str, output: str) -> bool:
    """Did a replay (its whole output) fail the way the reproducer's run did (``failure``, as
    the reproducer file records it)? Hypothesis's own final verdict after shrinking (flaky,
    inconsistent) is no failure of the kernel's, hence the recorded message, not the result."""
    want = kind(failure)
    return bool(want) and want in " ".join(re.sub(r"\d+", "N", output).split())


def effect(patch: Path) -> str:
    """The patch header's "Effect:" paragraph, one line."""
    text = patch.read_text().split("\n--- ", 1)[0]
    m = re.search(r"^Effect:\s*(.*?)(?:\n\n|\Z)", text, flags=re.M | re.S)
    return " ".join(m.group(1).split()) if m else ""


@dataclass
class Row:
    name: str
    seed: int | None = None
    run: Fuzz | None = None
    replay: Fuzz | None = None
    reproducer: Path | None = None

    @property
    def caught(self) -> bool:
        return self.run is not None and self.run.failed

    @property
    def failure(self) -> str:
        """The shrunk sequence's failure, as its reproducer file records it."""
        if self.reproducer is None or not self.reproducer.is_file():
            return ""
        return str(json.loads(self.reproducer.read_text()).get("failure", ""))

    @property
    def same(self) -> bool:
        return (self.caught and self.replay is not None and self.replay.failed
                and same_failure(self.failure, self.replay.output))

    def cells(self) -> list[str]:
        run = self.run
        if run is None or not self.caught:
            steps = run.match(STEPS) if run else None
            return [self.name, "MISSED", str(self.seed or "-"),
                    f"none in {steps.group(3)}s/{steps.group(2)}" if steps else "-", "-", "-",
                    "-"]
        first, minimal = run.match(FIRST), run.match(MINIMAL)
        found = f"{first.group(1)}s/{first.group(2)}" if first else "?"
        lengths = f"{first.group(3) if first else '?'}->{minimal.group(1) if minimal else '?'}"
        again = "-" if self.replay is None else ("same" if self.same else
                                                 ("other" if self.replay.failed else "passed"))
        return [self.name, "caught", str(self.seed), found, lengths, again,
                (self.failure or run.title())[:110]]


def table(rows: list[list[str]]) -> list[str]:
    head = ["bug", "verdict", "seed", "found (s/steps)", "steps (first->shrunk)", "replay",
            "failure"]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head) - 1)]
    return ["  ".join([c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)] + [r[-1]])
            for r in [head, *rows]]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=5.0, help="generation budget per run")
    p.add_argument("--seeds", default="1", help="comma-separated seeds, tried in order")
    p.add_argument("--out", type=Path, default=Path("/tmp/ksm-generator-catches"))
    p.add_argument("--patch", type=Path, action="append",
                   help="only these patches (default: bench/patches/gen-*.patch)")
    p.add_argument("--reuse", action="store_true", help="reuse builds already in --out")
    p.add_argument("--no-control", action="store_true", help="skip the clean kernel")
    args = p.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        p.error(f"--seeds: comma-separated integers, not {args.seeds!r}")
    if args.minutes <= 0 or not seeds:
        p.error("--minutes must be positive and --seeds name at least one seed")
    patches = args.patch or sorted((REPO / "bench/patches").glob("gen-*.patch"))
    if not patches or not all(pt.is_file() for pt in patches):
        p.error(f"no such patch: {[str(pt) for pt in patches if not pt.is_file()] or 'none'}")
    minutes = f"{args.minutes:g}"

    rows: list[Row] = []
    all_results: list[Result] = []
    for patch in patches:
        name = patch.stem
        kernel = build(patch, args.out / name, args.reuse)
        row = Row(name)
        for seed in seeds:
            report = args.out / "runs" / f"{name}-seed{seed}"
            run = fuzz(["--minutes", minutes, "--seed", str(seed), "--kernel", str(kernel)],
                       report, report.with_suffix(".log"))
            row.seed, row.run = seed, run
            all_results += run.results
            print(f"{name}: seed {seed}: {'caught' if run.failed else 'passed'} in "
                  f"{run.seconds:.0f}s: {run.title() if run.failed else ''}", flush=True)
            if run.failed:
                break
        minimal = row.run.match(MINIMAL) if row.run else None
        if row.caught and minimal:
            row.reproducer = Path(minimal.group(2))
            report = args.out / "runs" / f"{name}-replay"
            row.replay = fuzz(["--replay", str(row.reproducer), "--kernel", str(kernel)],
                              report, report.with_suffix(".log"))
            print(f"{name}: replay of {row.reproducer}: "
                  f"{'failed' if row.replay.failed else 'PASSED'}: {row.replay.title()}",
                  flush=True)
        rows.append(row)

    control: list[tuple[int, Fuzz]] = []
    if not args.no_control:
        for seed in sorted({r.seed for r in rows if r.seed is not None}):
            report = args.out / "runs" / f"clean-seed{seed}"
            run = fuzz(["--minutes", minutes, "--seed", str(seed), "--kernel", CLEAN],
                       report, report.with_suffix(".log"))
            control.append((seed, run))
            all_results += run.results
            print(f"clean {CLEAN}: seed {seed}: {'FAILED' if run.failed else 'passed'} in "
                  f"{run.seconds:.0f}s", flush=True)

    out = table([r.cells() for r in rows])
    for r in rows:
        if r.reproducer is not None:
            steps = json.loads(r.reproducer.read_text())["steps"]
            out.append(f"{r.name}: reproducer {r.reproducer} ({len(steps)} steps): "
                       + "; ".join(" ".join(f"{k}={v}" if k != "op" else str(v)
                                            for k, v in s.items()) for s in steps))
        out.append(f"{r.name}: what a user sees: "
                   + effect(REPO / "bench/patches" / f"{r.name}.patch"))
    for seed, run in control:
        steps = run.match(STEPS)
        ran = f"{steps.group(2)} steps in {steps.group(3)}s" if steps else "no steps line"
        verdict = f"FAILED: {run.title()}" if run.failed else "passed"
        out.append(f"control {CLEAN} seed {seed}: {verdict} ({ran})")
    caught = sum(r.caught for r in rows)
    out.append(f"{caught}/{len(rows)} bugs caught by the generator ({minutes} min a run, seeds "
               f"{args.seeds}); replays failing the same way: {sum(r.same for r in rows)}; "
               f"clean kernel: {sum(not run.failed for _, run in control)}/{len(control)} passed")
    print("\n" + "\n".join(out))
    release, accel = from_results(all_results)
    built = ", ".join(pt.stem for pt in patches)
    record("generator_catches", out, kernel=f"{CLEAN} ({release}) with each of {built}"
           + ("" if args.no_control else "; and clean"), accel=accel)
    bad = caught < len(rows) or any(not r.same for r in rows) or any(
        run.failed for _, run in control)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
