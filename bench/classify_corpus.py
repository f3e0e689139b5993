"""Score harness.console.classify on a corpus of kernel console logs.

    python bench/classify_corpus.py [CORPUS_DIR]

The corpus is syzkaller's report test data (see its README.md): each file is a
header (TITLE/ALT/TYPE/FRAME/CORRUPTED ...), a blank line, then the raw log,
optionally followed by a "REPORT:" section with the expected report text.
Prints recall on crash logs, false positives on clean logs, culprit-function
agreement, the category confusion and the time per log.
"""

from __future__ import annotations

import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from harness.console.classify import Report, classify_text  # noqa: E402

DEFAULT_CORPUS = REPO.parent / "shared" / "oops-corpus"


@dataclass(frozen=True)
class Case:
    name: str
    title: str | None  # None (or an empty TITLE): a clean log
    alts: tuple[str, ...]
    type: str | None
    frame: str | None  # FRAME: header, if any
    corrupted: bool
    log: str


def load_case(path: Path) -> Case:
    text = path.read_bytes().decode("utf-8", errors="replace")
    if text.startswith("\n"):  # an empty header: a clean log
        head, log = "", text[1:]
    else:
        head, _, log = text.partition("\n\n")
    log = re.split(r"^REPORT:\n", log, maxsplit=1, flags=re.M)[0]
    fields: dict[str, list[str]] = {}
    for line in head.splitlines():
        key, sep, value = line.partition(": ")
        if sep and key.isupper():
            fields.setdefault(key, []).append(value.strip())

    def one(key: str) -> str | None:
        return fields.get(key, [None])[0]

    return Case(path.name, one("TITLE") or None, tuple(fields.get("ALT", [])), one("TYPE"),
                one("FRAME"), one("CORRUPTED") == "Y", log)


def load_corpus(directory: Path) -> list[Case]:
    files = [p for p in directory.rglob("*") if p.is_file() and p.name != "README.md"]
    return [load_case(p) for p in sorted(files, key=lambda p: (len(p.name), p.name))]


_SYS = re.compile(r"^(?:__(?:x64|ia32|arm64|se|do|s390x?|riscv)_)?(?:compat_)?(?:sys|SyS|SYSC)_")


def norm(fn: str) -> str:
    """Compare culprits modulo compiler suffixes and syscall-wrapper prefixes."""
    fn = re.sub(r"(?:\.(?:isra|constprop|part|cold|llvm)\w*)+$", "", fn)
    return _SYS.sub("", fn)


def _frame_in_title(title: str) -> str | None:
    if " in " not in title:
        return None
    fn = title.rsplit(" in ", 1)[1].split()[0].split("/")[0]
    return None if fn == "corrupted" else fn


def expected_frames(case: Case) -> set[str]:
    """Culprits the corpus accepts for a case (empty: it names none)."""
    if case.frame and case.frame != "corrupted":
        return {norm(case.frame)}
    names = [_frame_in_title(t) for t in (case.title or "", *case.alts)]
    return {norm(n) for n in names if n}


@dataclass
class Score:
    crash_logs: int = 0
    clean_logs: int = 0
    missed: list[str] = field(default_factory=list)
    false_positives: list[str] = field(default_factory=list)
    frame_total: int = 0
    frame_ok: int = 0
    frame_wrong: list[tuple[str, str | None, str]] = field(default_factory=list)
    confusion: Counter[tuple[str, str]] = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def recall(self) -> float:
        return 1 - len(self.missed) / self.crash_logs if self.crash_logs else 1.0

    @property
    def frame_agreement(self) -> float:
        return self.frame_ok / self.frame_total if self.frame_total else 1.0


def score(cases: list[Case]) -> Score:
    s = Score()
    for case in cases:
        t0 = time.perf_counter()
        reports = classify_text(case.log)
        s.seconds += time.perf_counter() - t0
        if case.title is None:
            s.clean_logs += 1
            if reports:
                s.false_positives.append(case.name)
            continue
        s.crash_logs += 1
        if not reports:
            s.missed.append(case.name)
            continue
        first: Report = reports[0]
        s.confusion[(case.type or "-", first.category)] += 1
        if want := expected_frames(case):
            s.frame_total += 1
            if first.frame and norm(first.frame) in want:
                s.frame_ok += 1
            else:
                s.frame_wrong.append((case.name, first.frame, "|".join(sorted(want))))
    return s


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    directory = Path(args[0]) if args else DEFAULT_CORPUS
    if not directory.is_dir():
        print(f"classify_corpus: no corpus at {directory}", file=sys.stderr)
        return 2
    cases = load_corpus(directory)
    s = score(cases)
    summary = [
        f"corpus: {directory} ({len(cases)} logs: {s.crash_logs} crash, {s.clean_logs} clean)",
        f"recall: {s.crash_logs - len(s.missed)}/{s.crash_logs} = {s.recall:.1%}"
        + (f"  missed: {' '.join(s.missed)}" if s.missed else ""),
        f"false positives: {len(s.false_positives)}/{s.clean_logs}"
        + (f"  {' '.join(s.false_positives)}" if s.false_positives else ""),
        f"culprit function agreement: {s.frame_ok}/{s.frame_total} = {s.frame_agreement:.1%}",
        f"time: {s.seconds * 1000 / max(len(cases), 1):.2f} ms/log",
    ]
    print("\n".join(summary))
    # imported here: tests/unit/test_classify.py loads this file for score() alone, from a
    # path where bench/ is not importable
    from figures import record  # bench/figures.py, beside this file
    record("classify_corpus", summary, kernel="none (host only)", accel="none (host only)",
           command=args)
    print("\ncategory confusion (corpus TYPE -> our category of the first report):")
    for (want, got), n in sorted(s.confusion.items()):
        print(f"  {want:<40} {got:<16} {n}")
    if s.frame_wrong:
        print("\nculprit disagreements (log: ours vs corpus):")
        for name, ours, theirs in s.frame_wrong:
            print(f"  {name:<6} {ours} vs {theirs}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # piped into head
        sys.exit(0)
