"""The report files a run can write, registered in one place: each writer with the option
that names its file. pytest's options, ``run --help`` and the end of a run all read
``WRITERS``, so a new output format is a module with a ``write`` plus one entry here.

(JUnit is not here: ``--junitxml`` is pytest's own option, and the plugin writes it in place
of pytest's writer. The report directory is not one file: see reporting.)
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.options import Option
from harness.results import files, ktap, markdown
from harness.results.model import Result


@dataclass(frozen=True)
class Run:
    """What a writer reads: a run's records and its results document (records + metadata)."""
    results: list[Result]
    doc: dict[str, Any]


@dataclass(frozen=True)
class Writer:
    option: Option                       # the option naming its file (dest: the writer's name)
    write: Callable[[Path, Run], None]

    @property
    def name(self) -> str:
        return self.option.dest


def _replace(path: Path, text: str) -> None:
    files.replace_text(path, text)


def _json(path: Path, run: Run) -> None:
    _replace(path, json.dumps(run.doc, indent=1) + "\n")


def _ktap(path: Path, run: Run) -> None:
    _replace(path, ktap.render(run.results))


def _markdown(path: Path, run: Run) -> None:
    # appended: $GITHUB_STEP_SUMMARY is shared by a step's writers, and each cell of a
    # matrix run adds its own section
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(markdown.render(run.results, run.doc))


WRITERS: tuple[Writer, ...] = (
    Writer(Option("results_json", "every result record (outcome, findings, title, "
                  "properties) as JSON", metavar="PATH", group="reports"), _json),
    Writer(Option("ktap", "KTAP version 1", metavar="PATH", group="reports"), _ktap),
    Writer(Option("markdown", "a Markdown summary (counts, failures with the kernel report "
                  "and culprit, skips with reasons), appended to PATH: e.g. "
                  "$GITHUB_STEP_SUMMARY", metavar="PATH", group="reports"), _markdown),
)
OPTIONS: tuple[Option, ...] = tuple(w.option for w in WRITERS)


def write_all(given: Callable[[str], Any], run: Run) -> None:
    """Every writer whose option ``given(name)`` names a file."""
    for w in WRITERS:
        path = given(w.name)
        if path:
            w.write(Path(path), run)
