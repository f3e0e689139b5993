"""The one line that says why apt-get failed, from what it printed.

apt-get prints warnings before its errors, and a root download into a directory its
sandbox user cannot read always warns ("W: Download is performed unsandboxed as root ...
(13: Permission denied)"): the tail of its stderr cut to a length began mid-word in that
warning, and the real cause ("E: ... No space left on device") was past the line's end.
So: the line is chosen by what it says (an error naming a cause first, then any error,
then a warning), and shortened at word boundaries, its end (where apt puts the cause) kept.
"""
from __future__ import annotations

import re

# what makes an apt error a cause worth naming first
CAUSE = re.compile(r"No space left|Permission denied|Read-only file system|Disk quota|"
                   r"Could not resolve|Temporary failure resolving|Connection (?:failed|timed"
                   r" out|refused)|404\s+Not Found|Hash Sum mismatch|Unable to locate|"
                   r"Unable to fetch|File has unexpected size", re.I)
LIMIT = 300


def _errs(lines: list[str]) -> list[str]:
    """``Err:`` lines with the indented detail apt prints under each on stdout."""
    out = []
    for i, ln in enumerate(lines):
        if ln.startswith("Err:"):
            detail = lines[i + 1].strip() if i + 1 < len(lines) and \
                lines[i + 1].startswith(" ") else ""
            out.append(f"{ln} {detail}".strip())
    return out


def cause(stderr: str, stdout: str = "", returncode: int | None = None) -> str:
    """apt-get's line that says why it failed, whole words only, at most LIMIT chars."""
    lines = [ln.rstrip() for ln in (stderr + "\n" + stdout).splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("E:")]
    warnings = [ln for ln in lines if ln.startswith("W:")]
    others = [ln for ln in lines if not ln.startswith(("W:", " ", "Get:", "Ign:", "Hit:"))]
    for group in ([ln for ln in errors if CAUSE.search(ln)], errors,
                  [ln for ln in _errs(lines) if CAUSE.search(ln)], _errs(lines),
                  [ln for ln in others if CAUSE.search(ln)], warnings, others):
        if group:
            return shorten(group[-1])
    return f"exit {returncode}" if returncode is not None else "no message"


def shorten(line: str, limit: int = LIMIT) -> str:
    """``line`` within ``limit`` chars, words from its middle left out (" ... "), never a
    word cut: its start says what failed, its end why."""
    line = " ".join(line.split())
    if len(line) <= limit:
        return line
    words = line.split(" ")
    head: list[str] = []
    tail: list[str] = []
    room = limit - len(" ... ")
    while words:
        take_tail = len(" ".join(tail)) < 2 * len(" ".join(head))  # 1/3 head, 2/3 tail
        word = words[-1] if take_tail else words[0]
        if len(" ".join(head + tail)) + len(word) + 1 > room:
            break
        if take_tail:
            tail.insert(0, words.pop())
        else:
            head.append(words.pop(0))
    if not head and not tail:  # one word longer than the limit: its end
        return "..." + line[-(limit - 3):]
    return f"{' '.join(head)} ... {' '.join(tail)}".strip()
