"""``ksm-harness triage [--json] LOG``: list the kernel reports in a console log.

Exit status: 0 when the log is clean, 1 when it holds a report, 2 when LOG
cannot be read.  The first report is the primary one: later ones (a panic
after an oops, say) are often its consequences.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TextIO

from harness.console.classify import Report, classify_text


def _read(path: str) -> str:
    data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    # Consoles carry stray bytes; a report must never be lost to a decode error.
    return data.decode("utf-8", errors="replace")


def _print_text(reports: list[Report], out: TextIO) -> None:
    if not reports:
        print("no kernel reports", file=out)
    for n, r in enumerate(reports, 1):
        notes = [r.category, f"lines {r.start_line + 1}-{r.end_line + 1}"]
        if n == 1 and len(reports) > 1:
            notes.append("primary")
        if r.corrupted:
            notes.append("corrupted")
        print(f"[{n}/{len(reports)}] {r.title}  ({', '.join(notes)})", file=out)
        for line in r.text.split("\n"):
            print(f"    {line}", file=out)
        print(file=out)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ksm-harness triage",
        description="Find kernel crash reports (WARNING, BUG, oops, KASAN, hangs, OOM kills, "
                    "...) in a serial console or dmesg log.",
        epilog="Exit status: 0 clean, 1 reports found, 2 LOG unreadable. Text output numbers "
               "lines from 1; JSON start_line/end_line count from 0.")
    p.add_argument("--json", action="store_true", help="print a JSON list of reports")
    p.add_argument("log", metavar="LOG", help="console log file, or - for stdin")
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # --help or a usage error: argparse already printed why
        return e.code if isinstance(e.code, int) else 2
    try:
        text = _read(args.log)
    except OSError as e:
        print(f"ksm-harness: cannot read {args.log}: {e.strerror or e}", file=sys.stderr)
        return 2
    reports = classify_text(text)
    try:
        if args.json:
            items = [asdict(r) | {"primary": i == 0} for i, r in enumerate(reports)]
            json.dump(items, sys.stdout, indent=2)
            print()
        else:
            _print_text(reports, sys.stdout)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader (say, head) left early; the exit status still tells the story.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 1 if reports else 0


if __name__ == "__main__":
    sys.exit(main())
