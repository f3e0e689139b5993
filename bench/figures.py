"""One shared way for the bench scripts to keep what they measured: bench/FIGURES.md, one
section per bench (``## boot``), newest entry first, each entry headed by the date and the
harness commit and saying on what it ran (CPUs, memory, CPU model, accelerator, kernel) and
how (the command). A figure without its machine and date cannot be compared with a later one.

    from figures import record            # a bench script, run as bench/NAME.py
    record("boot", lines, kernel=..., accel=...)

KSM_BENCH_FIGURES=PATH writes elsewhere; KSM_BENCH_FIGURES=off writes nothing.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

FIGURES = Path(__file__).resolve().with_name("FIGURES.md")
HEADER = """\
# Measured figures

Written by the scripts in `bench/` (`bench/figures.py`): a section per bench, newest entry
first, each with the date, the harness commit, the machine, the accelerator and the kernel.
Absolute times differ a lot between machines and days (TCG on 2 shared cores); compare
figures side by side in one entry, or on the same machine.
"""


def _first(path: str, key: str) -> str | None:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def machine() -> str:
    """e.g. "2 CPUs, 7.8 GiB, AMD EPYC 7B13"."""
    mem = _first("/proc/meminfo", "MemTotal")
    gib = f"{int(mem.split()[0]) / 2**20:.1f} GiB" if mem else "memory unknown"
    model = _first("/proc/cpuinfo", "model name") or "CPU model unknown"
    return f"{os.cpu_count()} CPUs, {gib}, {model}"


def commit() -> str:
    """The harness commit the figures were measured at (``+dirty`` with local changes)."""
    repo = FIGURES.parent.parent
    try:
        sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short=12", "HEAD"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain",
                                "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "commit unknown"
    return (sha or "commit unknown") + ("+dirty" if sha and dirty else "")


def from_results(results: Iterable[Any]) -> tuple[str, str]:
    """(kernel release, accelerator) from a run's result records' run-wide properties."""
    for r in results:
        props = r.properties
        if props.get("kernel_release") or props.get("accelerator"):
            return (str(props.get("kernel_release") or "unknown"),
                    str(props.get("accelerator") or "unknown"))
    return "unknown", "unknown"


def entry(lines: Sequence[str], *, kernel: str, accel: str, command: str,
          when: str | None = None, at: str | None = None) -> str:
    when = when or time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    head = [f"### {when}, {at or commit()}", "",
            f"- machine: {machine()}; accelerator: {accel}",
            f"- kernel: {kernel}",
            f"- command: `{command}`", "", "```"]
    return "\n".join([*head, *lines, "```", ""])


def insert(text: str, bench: str, new_entry: str) -> str:
    """``text`` (a FIGURES.md) with ``new_entry`` first in ``bench``'s section, which is added
    at the end when missing."""
    text = text or HEADER
    heading = f"## {bench}\n"
    m = re.search(rf"^## {re.escape(bench)}\n", text, flags=re.M)
    if m is None:
        return text.rstrip("\n") + f"\n\n{heading}\n{new_entry}"
    return text[:m.end()] + "\n" + new_entry + "\n" + text[m.end():].lstrip("\n")


def record(bench: str, lines: Sequence[str], *, kernel: str, accel: str,
           command: Sequence[str] | None = None) -> Path | None:
    """Put this run's figures (the lines the bench printed) first in its section."""
    target = os.environ.get("KSM_BENCH_FIGURES") or str(FIGURES)
    if target == "off":
        return None
    path = Path(target)
    cmd = " ".join(["bench/" + Path(sys.argv[0]).name, *(sys.argv[1:] if command is None
                                                          else command)])
    text = path.read_text() if path.is_file() else ""
    path.write_text(insert(text, bench, entry(lines, kernel=kernel, accel=accel, command=cmd)))
    print(f"{bench}: figures recorded in {path}", file=sys.stderr)
    return path
