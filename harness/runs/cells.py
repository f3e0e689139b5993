"""Running cells and shards, and merging their results.

``run --kernel A --kernel B --numa 2 --numa 512M:1,1536M:1`` runs every cell (kernel x
topology, harness.cellplan) one after the other, each in its own pytest process writing
``results/cells/<id>/``, then merges them into ``results/matrix/``. ``run --cell ID`` runs
one cell, ``run --shard I/N`` (or CI_NODE_INDEX/CI_NODE_TOTAL, JOB_COMPLETION_INDEX) one
shard, into ``results/cells/<id>/shard-I-of-N/``; ``merge DIR...`` combines such
directories -- from any number of machines -- into the same table, files and exit status as
one unsharded run (harness.runs.matrix).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import socket
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harness import cellplan, options, progress
from harness.errors import HarnessError
from harness.machine.topology import canonical_numa
from harness.pytest_plugin import session
from harness.results.model import Result, load_results, results_document
from harness.runs import matrix
from harness.version import harness_version

SKIP_DIRS = ("failures", "rerun", "plots")  # report-dir parts that are not a cell's results


def split_args(argv: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """(--kernel, --numa, --baseline, --cell and --shard values; the pytest arguments)."""
    try:
        return options.split_repeated(argv, extra=("--baseline", "--cell", "--shard"))
    except ValueError as exc:
        raise HarnessError(str(exc)) from None


def wanted(argv: list[str], env: Mapping[str, str] = os.environ) -> bool:
    """Cell mode: several kernels or topologies, a baseline, --cell, --shard, or a CI
    shard in the environment."""
    found, _ = split_args(argv)
    return (len(found["kernel"]) > 1 or len(found["numa"]) > 1 or bool(found["baseline"])
            or bool(found["cell"]) or bool(found["shard"])
            or cellplan.shard_from_env(env) is not None)


def option_value(argv: list[str], flag: str) -> str | None:
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(flag + "="):
            return a.partition("=")[2]
    return None


def _without(argv: list[str], flag: str) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == flag:
            skip = True
        elif not a.startswith(flag + "="):
            out.append(a)
    return out


def note(msg: str) -> None:
    print(f"ksm-harness: {msg}", file=sys.stderr, flush=True)


def _clean(cell_dir: Path, shard: cellplan.Shard | None) -> None:
    """Results of another layout of the same cell would double its tests in a merge: an
    unsharded run drops old shard directories; a shard drops an unsharded result and other
    shard counts (shards of the same count stay: they may run one after the other here)."""
    if not cell_dir.is_dir():
        return
    for d in cell_dir.glob("shard-*-of-*"):
        if shard is None or not d.name.endswith(f"-of-{shard.total}"):
            shutil.rmtree(d, ignore_errors=True)
    if shard is not None:
        (cell_dir / "results.json").unlink(missing_ok=True)


def run_cell(cell: cellplan.Cell, rest: list[str], out: Path, plan_file: Path,
             shard: cellplan.Shard | None, position: tuple[int, int]) -> Path:
    """One cell (or its part of a shard) in a child pytest; its results.json, written by
    the plugin or, when pytest wrote none, a record of that."""
    args = [*rest]
    if cell.kernel:
        args += ["--kernel", cell.kernel]
    if cell.numa:
        args += ["--numa", cell.numa]
    args += ["--results-json", str(out / "results.json"), "--junitxml", str(out / "junit.xml"),
             "--report-dir", str(out), "--cell-plan", str(plan_file)]
    if shard:
        args += ["--shard", str(shard), "--cell-position", f"{position[0]}/{position[1]}"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").unlink(missing_ok=True)
    status = session.run_child(args, ["tests/ksm"])
    path = out / "results.json"
    if not path.is_file():
        meta = {"created": time.strftime("%Y-%m-%dT%H:%M:%S"), "exitstatus": status,
                "error": f"pytest exited {status} without writing results",
                "options": {"kernel": cell.kernel, "numa": cell.numa, "args": args},
                "host": socket.gethostname(), "harness_version": harness_version(),
                "cell": cellplan.meta(cell, cellplan.read_plan(plan_file), shard, None)}
        path.write_text(json.dumps(results_document([], meta), indent=1) + "\n")
    return path


def run(argv: list[str], root: Path = Path("results"),
        env: Mapping[str, str] = os.environ) -> int:
    found, rest = split_args(argv)
    given = option_value(rest, "--report-dir")
    if given:  # the run's root: cells/ and matrix/ go under it
        root, rest = Path(given), _without(rest, "--report-dir")
    plan = cellplan.plan(found["kernel"], found["numa"], option_value(rest, "--modules"))
    chosen = cellplan.select(plan, found["cell"]) if found["cell"] else plan
    shard = cellplan.parse_shard(found["shard"][-1]) if found["shard"] else cellplan.shard_from_env(env)
    baseline = matrix.load_baseline(Path(found["baseline"][-1])) if found["baseline"] else None
    plan_file = cellplan.write_plan(root / "cells" / "plan.json", plan)
    dirs = []
    t0 = time.monotonic()
    for pos, cell in enumerate(chosen):
        cell_dir = root / "cells" / cell.id
        _clean(cell_dir, shard)
        out = cell_dir / shard.dirname if shard else cell_dir
        took = time.monotonic() - t0
        eta = (f", {pos} done in {progress.duration(took)}, about "
               f"{progress.duration(took / pos * (len(chosen) - pos))} left" if pos else "")
        progress.say(f"cell {pos + 1}/{len(chosen)}: {cell.describe()} [{cell.id}]"
                     + (f", shard {shard}" if shard else "") + f"{eta} -> {out}")
        run_cell(cell, rest, out, plan_file, shard, (pos, len(chosen)))
        dirs.append(out)
    if found["cell"] or shard:
        # a part of the run: its own table and status; `merge` makes the matrix
        columns, problems = columns_of(result_files(dirs), whole_plan=False)
        for p in problems:
            note(p)
        status = matrix.report(columns, baseline, None)
        note("a part of the run: combine the parts with `ksm-harness merge "
                 f"{root / 'cells'} ...`")
        return status or (2 if problems else 0)
    return merge(dirs, found["baseline"][-1] if found["baseline"] else None, root / "matrix")


# --- merge -------------------------------------------------------------------------------

def result_files(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            files += sorted(f for f in p.rglob("results.json")
                            if not set(f.relative_to(p).parts[:-1]) & set(SKIP_DIRS))
        else:
            raise HarnessError(f"merge: {p}: no such file or directory")
    return files


def _cell_of(doc: dict[str, Any], path: Path) -> dict[str, Any]:
    """A file's cell; a results file from before cells is placed by its options."""
    meta = doc.get("cell")
    if isinstance(meta, dict) and meta.get("id"):
        return meta
    opts = doc.get("options", {})
    try:
        return cellplan.meta(cellplan.Cell(opts.get("kernel"), opts.get("numa")), None, None, None)
    except HarnessError as exc:
        raise HarnessError(f"merge: {path}: {exc}") from None


def _shard_key(meta: dict[str, Any]) -> int:
    return int(str(meta.get("shard") or "0/1").split("/")[0])


def columns_of(files: list[Path], whole_plan: bool = True
               ) -> tuple[list[matrix.Column], list[str]]:
    """One column per cell, in plan order; the problems a merge must not hide (a planned
    cell without results, a missing shard, tests a shard selected but never reported).
    ``whole_plan=False`` (a part of the run): only the cells this part ran tests of."""
    groups: dict[str, list[tuple[dict[str, Any], dict[str, Any], list[Result], Path]]] = {}
    order: list[dict[str, Any]] = []
    for f in files:
        try:
            doc, results = load_results(f)
        except (OSError, ValueError) as exc:
            raise HarnessError(f"merge: {exc}") from None
        meta = _cell_of(doc, f)
        groups.setdefault(meta["id"], []).append((meta, doc, results, f))
        for entry in meta.get("plan") or [meta]:
            if entry["id"] not in [o["id"] for o in order]:
                order.append({k: entry.get(k) for k in ("id", "kernel", "numa")})
    if not whole_plan:
        order = [o for o in order if o["id"] in groups]
    problems: list[str] = []
    numas = {canonical_numa(o.get("numa") or cellplan.DEFAULT_NUMA) for o in order}
    columns: list[matrix.Column] = []
    for pos, o in enumerate(order):
        parts = sorted(groups.get(o["id"], []), key=lambda g: _shard_key(g[0]))
        merged: dict[str, Result] = {}
        facts: dict[str, str] = {}
        totals: dict[int, set[int]] = {}
        for meta, doc, results, f in parts:
            for r in results:
                if r.nodeid in merged:
                    raise HarnessError(f"merge: {r.nodeid} of cell {o['id']} is in two files "
                                       f"(one is {f}): merge the directories of one run")
                merged[r.nodeid] = r
            k = doc.get("kernel") or {}
            for key in ("release", "commit", "compiler", "banner"):
                if k.get(key):
                    facts.setdefault(key, k[key])
            if doc.get("host"):
                facts.setdefault("host", doc["host"])
            if meta.get("shard"):
                i, n = (int(x) for x in str(meta["shard"]).split("/"))
                totals.setdefault(n, set()).add(i)
            if isinstance(meta.get("selected"), int) and meta["selected"] > len(results):
                problems.append(f"cell {o['id']} ({f}): {meta['selected'] - len(results)} of "
                                f"{meta['selected']} selected tests have no result")
            if doc.get("error"):
                problems.append(f"cell {o['id']} ({f}): {doc['error']}")
        if not whole_plan and not merged and parts and not any(
                g[1].get("error") or g[0].get("selected") for g in parts):
            continue  # this part of the run selected none of the cell's tests
        for n, seen in totals.items() if whole_plan else ():
            missing = sorted(set(range(1, n + 1)) - seen)
            if missing:
                problems.append(f"cell {o['id']}: no results from shard(s) "
                                f"{', '.join(f'{i}/{n}' for i in missing)}")
        if not parts:
            problems.append(f"cell {o['id']} ({o['kernel'] or 'debian'} on numa "
                            f"{o['numa'] or cellplan.DEFAULT_NUMA}): no results files")
        label = matrix.label_for(list(merged.values()), o["kernel"], o["numa"], len(numas) > 1)
        if any(c.label == label for c in columns):
            label = f"{label} #{pos + 1}"
        columns.append(matrix.Column(label, o["kernel"], o["numa"], merged, cell=o["id"],
                                     facts=facts, dirs=[g[3].parent for g in parts]))
    return columns, problems


def merge_main(args: argparse.Namespace) -> int:
    return merge([Path(d) for d in args.dirs], args.baseline, Path(args.out))


def merge(paths: list[Path], baseline: str | None, out: Path) -> int:
    """``ksm-harness merge DIR...``: the matrix of every results file under the DIRs."""
    base = matrix.load_baseline(Path(baseline)) if baseline else None
    files = result_files([Path(p) for p in paths])
    if not files:
        raise HarnessError(f"merge: no results.json under {' '.join(map(str, paths))}")
    columns, problems = columns_of(files)
    status = matrix.report(columns, base, out)
    for p in problems:
        print(f"ksm-harness: {p}")
    return status or (2 if problems else 0)


# --- plan --------------------------------------------------------------------------------

def plan_main(args: argparse.Namespace) -> int:
    """``ksm-harness plan``: the cells of --kernel x --numa, in --format."""
    plan = cellplan.plan(args.kernel or [], args.numa or [], args.modules)
    argv = [a for k in args.kernel or [] for a in ("--kernel", k)] + \
        [a for n in args.numa or [] for a in ("--numa", n)]
    print(plan_output(plan, args.format, argv, args.runner_tag))
    return 0


def plan_output(plan: list[cellplan.Cell], fmt: str, argv: list[str], tag: str | None) -> str:
    """The cells as text, JSON, a GitHub Actions matrix or a GitLab child pipeline."""
    if fmt == "json":
        return json.dumps([c.to_dict() for c in plan], indent=1)
    if fmt == "github":  # strategy.matrix: ${{ fromJSON(needs.plan.outputs.matrix) }}
        return json.dumps({"include": [{"cell": c.id, "kernel": c.kernel or "debian",
                                        "numa": c.numa or cellplan.DEFAULT_NUMA} for c in plan]},
                          separators=(",", ":"))
    if fmt == "gitlab":
        args = shlex.join(argv)
        lines = ["# ksm-harness plan --format gitlab: a child pipeline, one job per cell, then",
                 "# the merge (ksm-harness merge; its exit status is the matrix's)",
                 "stages: [cells, merge]", "", ".ksm-cell:", "  stage: cells"]
        if tag:
            lines.append(f"  tags: [{json.dumps(tag)}]")
        lines += ["  script:",
                  f"    - ./ksm-harness run --cell \"$KSM_CELL\" {args}",
                  "  artifacts:", "    when: always", "    paths: [results/cells/]",
                  "    reports:", "      junit: results/cells/*/junit.xml", ""]
        for c in plan:
            lines += [f"cell-{c.id}:", "  extends: .ksm-cell",
                      f"  variables: {{KSM_CELL: {json.dumps(c.id)}}}", ""]
        lines += ["merge:", "  stage: merge", "  when: always"]
        if tag:
            lines.append(f"  tags: [{json.dumps(tag)}]")
        lines += ["  script:",
                  "    - ./ksm-harness merge results/cells "
                  "${KSM_BASELINE:+--baseline \"$KSM_BASELINE\"}",
                  "  artifacts:", "    when: always", "    paths: [results/matrix/]",
                  "    reports:", "      junit: results/matrix/matrix-junit.xml"]
        return "\n".join(lines)
    rows = [("cell", "kernel", "numa")] + [(c.id, c.kernel or "debian",
                                            c.numa or cellplan.DEFAULT_NUMA) for c in plan]
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  ".join(v.ljust(w[i]) for i, v in enumerate(r)).rstrip() for r in rows)
