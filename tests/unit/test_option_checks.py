"""Every guest option is checked before anything starts, by `run` as by `boot`: a bad value
is one line naming the option, exit 2, nothing on stdout (pytest never started, no package
installed, no guest booted). A PATH without QEMU proves nothing could have started."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import run_harness

BAD = [
    ("--boot-timeout", "-5"),
    ("--numa", "4096G:1,4096G:1"),  # more than any host running these tests has
    ("--swap-disk", "lots"),
    ("--image", "/etc/passwd"),
    ("--modules", "/nonexistent"),
]


def _refused(verb: str, flag: str, value: str, tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    args = [verb, flag, value] + (["--", "true"] if verb == "boot" else [])
    r = run_harness(*args, env={"PATH": str(bindir), "KSM_HARNESS_NO_INSTALL": "1"},
                    timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stdout == "", r.stdout
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ksm-harness: "), r.stderr
    assert flag in lines[0] and value in lines[0], lines[0]


@pytest.mark.parametrize("flag,value", BAD, ids=[f for f, _ in BAD])
def test_run_checks_every_option_first(flag: str, value: str, tmp_path: Path) -> None:
    _refused("run", flag, value, tmp_path)


@pytest.mark.parametrize("flag,value", [*BAD, ("--timeout", "-1")],
                         ids=[f for f, _ in BAD] + ["--timeout"])
def test_boot_checks_every_option_first(flag: str, value: str, tmp_path: Path) -> None:
    _refused("boot", flag, value, tmp_path)
