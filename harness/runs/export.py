"""``ksm-harness export kcidb``: results files -> KCIDB I/O data, checked against KCIDB's own
schema when kcidb-io is installed, written to a file or stdout."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.results import kcidb
from harness.results.model import Result, load_results
from harness.runs.cells import result_files

DEFAULT_DIRS = ["results"]


def load(paths: list[str]) -> list[tuple[dict[str, Any], list[Result], Path]]:
    """Every results file under ``paths``: (its metadata, its records, its directory)."""
    files = []
    for f in result_files([Path(p) for p in paths]):
        try:
            doc, results = load_results(f)
        except (OSError, ValueError) as exc:
            raise HarnessError(f"export: {exc}") from None
        files.append((doc, results, f.parent))
    if not files:
        raise HarnessError(f"export: no results.json under {' '.join(paths)}")
    return files


def validate(data: dict[str, Any]) -> None:
    """KCIDB's schema, when the dev extra (kcidb-io) is installed; else our own checks only."""
    try:
        import kcidb_io
    except ImportError:
        return
    try:
        kcidb_io.schema.V5_0.validate_exactly(data)
    except Exception as exc:  # noqa: BLE001 -- jsonschema's ValidationError
        raise HarnessError(f"export kcidb: invalid against KCIDB's schema: "
                           f"{str(exc).splitlines()[0]}") from None


def main(args: argparse.Namespace) -> int:
    files = load(args.results or DEFAULT_DIRS)
    try:
        data = kcidb.export(files, args.origin, args.artifacts_url,
                            Path(args.artifacts_root) if args.artifacts_root else None)
    except ValueError as exc:
        raise HarnessError(str(exc)) from None
    validate(data)
    text = json.dumps(data, indent=1) + "\n"
    if args.output and args.output != "-":
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text)
        print(f"ksm-harness: {len(data['tests'])} tests, {len(data['builds'])} build(s) in "
              f"{args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
