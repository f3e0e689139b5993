"""Every recorded console log under data/ states what the classifier must find in it.

A log file starts with a header, as in syzkaller's report test data, then a blank
line, then the console output exactly as recorded::

    TITLE: WARNING in ksm_scan_thread      (absent: the log holds no report)
    TYPE: WARNING                          (our category of the primary report)
    FRAME: ksm_scan_thread                 (absent: the report names no function)
    CORRUPTED: Y                           (absent: the report is whole)
    REPORTS: 2                             (absent: one report, or none without TITLE)

A clean log has an empty header: the file starts with the blank line.  Tests
that read a log use :func:`load_log` to get the header and the console text.

    python -m tests.unit.test_console_logs --update   # rewrite headers from the classifier
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from harness.console.classify import classify_text
from tests.helpers import LOG_KEYS, load_log

DATA = Path(__file__).resolve().parent / "data"
_KEYS = LOG_KEYS


def log_files() -> list[Path]:
    return sorted([*DATA.glob("*.log"), *(DATA / "guest").glob("*.log")])


def _header_for(body: str) -> str:
    reports = classify_text(body)
    if not reports:
        return ""
    first = reports[0]
    lines = [f"TITLE: {first.title}", f"TYPE: {first.category}"]
    if first.frame:
        lines.append(f"FRAME: {first.frame}")
    if first.corrupted:
        lines.append("CORRUPTED: Y")
    if len(reports) != 1:
        lines.append(f"REPORTS: {len(reports)}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("path", log_files(), ids=lambda p: str(p.relative_to(DATA)))
def test_recorded_log_meets_its_header(path: Path) -> None:
    header, body = load_log(path)
    reports = classify_text(body)
    want_count = int(header.get("REPORTS", "1" if "TITLE" in header else "0"))
    assert len(reports) == want_count, [r.title for r in reports]
    if not reports:
        return
    first = reports[0]
    assert (first.title, first.category, first.frame, first.corrupted) == (
        header["TITLE"], header.get("TYPE"), header.get("FRAME"), header.get("CORRUPTED") == "Y")


def test_there_are_recorded_logs() -> None:
    assert len(log_files()) >= 10


def _update() -> None:
    """Rewrite every header from what the classifier finds now; review the diff."""
    for path in log_files():
        raw = path.read_bytes()  # the console text is kept byte for byte
        if _has_header(path):
            raw = raw[1:] if raw.startswith(b"\n") else raw.split(b"\n\n", 1)[1]
        body = raw.decode("utf-8", errors="replace")
        path.write_bytes((_header_for(body) + "\n").encode() + raw)


def _has_header(path: Path) -> bool:
    first = path.read_bytes().split(b"\n", 1)[0].decode(errors="replace")
    return first == "" or first.partition(": ")[0] in _KEYS


if __name__ == "__main__":
    if sys.argv[1:] != ["--update"]:
        sys.exit(__doc__)
    _update()
