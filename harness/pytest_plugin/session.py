"""How the suite is started: pytest's argument list for a run, in this process (``run``,
``selftest``) or in a child process (a matrix column, a bisect step), so that each has a
fresh interpreter and its own results files."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness import paths


def is_test_path(arg: str) -> bool:
    """A test file, directory or node id, as opposed to an option's value."""
    if arg.startswith("-"):
        return False
    path = arg.split("::")[0]
    if "::" in arg or path.endswith(".py"):
        return True
    # a directory counts only inside our tests/: `--kernel ~/linux` is an option's value
    tests = paths.REPO / "tests"
    return os.path.isdir(path) and (Path(path).resolve() == tests
                                    or tests in Path(path).resolve().parents)


def argv(args: list[str], default_paths: list[str]) -> list[str]:
    rest = [a for a in args if a != "--"]
    if not any(is_test_path(a) for a in rest):
        rest += [str(paths.REPO / p) for p in default_paths]
    return ["-c", str(paths.REPO / "tox.ini"), "--rootdir", str(paths.REPO), *rest]


def run(args: list[str], default_paths: list[str]) -> int:
    return int(pytest.main(argv(args, default_paths)))


def run_child(args: list[str], default_paths: list[str], cwd: Path | None = None) -> int:
    cmd = [sys.executable, "-m", "pytest", *argv(args, default_paths)]
    return subprocess.run(cmd, cwd=cwd or Path.cwd()).returncode


def usage_error(args: list[str], default_paths: list[str]) -> str | None:
    """pytest's own complaint about ``args`` (an unknown option, a bad value), from the
    parser the run itself will use, as one line; None when pytest accepts them. Nothing is
    collected or run."""
    from _pytest.config import _prepareconfig  # no public API parses without running
    try:
        config = _prepareconfig(argv(args, default_paths))
    except pytest.UsageError as exc:
        lines = [ln for ln in str(exc).splitlines() if "error: " in ln]
        return lines[0].split("error: ", 1)[1] if lines else str(exc).strip().splitlines()[-1]
    except Exception:  # noqa: BLE001 -- a plugin failing here fails the run itself, visibly
        return None
    config._ensure_unconfigure()
    return None
