"""apt-get's failure in one line that names the cause (issue 19, finding 7: a cache on a full
disk said ``apt-get download ... failed: dn't be accessed by user '_apt'``, the cause ``No
space left`` on the next line). The data is apt-get's real output: ``apt-get download
linux-image-6.1.0-57-amd64`` as root into a 0700 directory on a 4 MiB tmpfs."""
from __future__ import annotations

from pathlib import Path

import pytest

from harness.assets import aptlog

pytestmark = pytest.mark.host

DATA = Path(__file__).parent / "data" / "apt"
ERR = (DATA / "download-enospc.stderr").read_text()
OUT = (DATA / "download-enospc.stdout").read_text()


def test_the_recorded_output_is_the_finding() -> None:
    # what the old code printed: the last 300 characters, starting mid-word in the warning
    assert ERR.strip()[-300:].startswith("dn't be accessed by user '_apt'")
    assert ERR.startswith("W: Download is performed unsandboxed")


def test_a_full_disk_is_named_not_the_sandbox_warning() -> None:
    line = aptlog.cause(ERR, OUT, 100)
    assert line.startswith("E: Failed to fetch http://deb.debian.org/"), line
    assert "No space left on device" in line and "\n" not in line and len(line) <= 300


def test_without_stderr_the_err_line_and_its_detail_from_stdout() -> None:
    line = aptlog.cause("", OUT, 100)
    assert line.startswith("Err:1 ") and line.endswith(
        "Error writing to file - write (28: No space left on device) [IP: 203.0.113.80 80]")


def test_an_error_naming_a_cause_beats_a_later_error_and_any_warning() -> None:
    err = ("W: Download is performed unsandboxed (13: Permission denied)\n"
           "E: Could not resolve 'deb.debian.org'\nE: Some index files failed to download\n")
    assert aptlog.cause(err) == "E: Could not resolve 'deb.debian.org'"
    assert aptlog.cause("W: only a warning\n") == "W: only a warning"
    assert aptlog.cause("", "", 100) == "exit 100"


def test_a_long_line_loses_words_from_its_middle_never_part_of_one() -> None:
    words = [f"word{i:03d}" for i in range(100)]
    line = " ".join(words) + " (28: No space left on device)"
    short = aptlog.shorten(line, 120)
    assert len(short) <= 120 and " ... " in short
    assert short.endswith("(28: No space left on device)") and short.startswith("word000 ")
    assert all(w in words or w == "..." or w in line.split() for w in short.split())
    assert aptlog.shorten("x" * 400, 50) == "..." + "x" * 47
