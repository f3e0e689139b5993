"""Progress lines for long steps (image build output, matrix cells): shown on a terminal,
quiet in a CI log unless asked for (``KSM_HARNESS_PROGRESS=1``; ``0`` silences a terminal).
Facts (what was built, where the results are) are printed regardless, by their callers."""
from __future__ import annotations

import os
import sys
from typing import TextIO


def enabled(stream: TextIO | None = None) -> bool:
    env = os.environ.get("KSM_HARNESS_PROGRESS")
    if env in ("0", "1"):
        return env == "1"
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def say(msg: str) -> None:
    if enabled():
        print(f"ksm-harness: {msg}", file=sys.stderr, flush=True)


def duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"
