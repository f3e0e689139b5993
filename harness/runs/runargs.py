"""``ksm-harness run``'s arguments. Ours (the guest options of harness.options, selection,
cells and shards, reports) are declared here for ``run --help`` and checked before pytest
starts -- every --kernel and --numa cheaply (harness.cellplan) --; everything else goes to
pytest unchanged, checked first by pytest's own parser, so a typo is one line, not a run."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, NoReturn

from harness import cellplan, options, spec
from harness.errors import HarnessError
from harness.pytest_plugin import session
from harness.results import writers
from harness.runs import cells as cell_runs

DESCRIPTION = """\
Run the KSM scenario suite (tests/ksm) in QEMU guests.

modes:
  one --kernel and one --numa: one pytest run; reports in results/ (--report-dir)
  several --kernel / --numa, or --baseline: one cell per kernel x topology, each in
      results/cells/<id>/, then the matrix (table, matrix.json, JUnit, matrix.html) in
      results/matrix/; exit 1 on a (new) failure, 2 when a cell produced no results
  --cell ID: only that cell (ids: ksm-harness plan --kernel ... --numa ...)
  --shard I/N: the I-th of N slices of the run's (cell, test) pairs, into
      results/cells/<id>/shard-I-of-N/; by default from CI_NODE_INDEX/CI_NODE_TOTAL (GitLab
      parallel, 1-based) or JOB_COMPLETION_INDEX (Kubernetes, 0-based) with KSM_HARNESS_SHARDS;
      combine the parts with ksm-harness merge
"""
EPILOG = """\
examples:
  ksm-harness run -k merge_across_nodes --kernel ~/linux
  ksm-harness run --kernel debian --kernel debian:linux-image-6.12-amd64 --baseline old.json
  ksm-harness run --shard 2/4 --kernel debian --numa 2 --numa 512M:1,1536M:1

Every pytest option works too (-x, -v, -n 2, --lf, ...): ksm-harness run --help-pytest
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise HarnessError(f"run: {message} (see ksm-harness run --help)")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="ksm-harness run", add_help=False, allow_abbrev=False,
                usage="ksm-harness run [OPTIONS] [PYTEST OPTIONS] [TESTS...]",
                description=DESCRIPTION, epilog=EPILOG,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-h", "--help", action="store_true", help="show this help")
    p.add_argument("--help-pytest", action="store_true",
                   help="show pytest's own options (all of them work with run)")
    groups = {name: p.add_argument_group(name) for name in ("guest", "selection")}
    for o in options.VM_OPTIONS:
        kw: dict[str, Any] = o.kwargs()
        if o.matrix:
            kw.update(action="append", default=None, help=kw["help"] + "; repeat: one cell each")
        groups["guest"].add_argument(o.flag, **kw)
    s = groups["selection"]
    s.add_argument("-k", metavar="EXPR", dest="keyword",
                   help="pytest -k expression over scenario names, e.g. 'merge and not numa' "
                        "(the same -k as bisect's)")
    s.add_argument("-m", metavar="MARKEXPR", dest="markexpr", help="pytest -m marker expression")
    c = groups["cells"] = p.add_argument_group("cells, shards and the matrix")
    c.add_argument("--cell", action="append", metavar="ID", help="run only this cell")
    c.add_argument("--baseline", metavar="FILE",
                   help="a results.json or matrix.json: only new failures fail the run")
    r = groups["reports"] = p.add_argument_group("reports")
    r.add_argument("--junitxml", metavar="PATH", help="JUnit XML (Jenkins' junit-10.xsd)")
    for o in options.RUN_OPTIONS + writers.OPTIONS:
        groups[o.group].add_argument(o.flag, **o.kwargs())
    return p


def check(argv: list[str]) -> argparse.Namespace | None:
    """The parsed arguments, every one checked; None when help was printed."""
    p = parser()
    ns, _rest = p.parse_known_args(argv)
    if ns.help:
        p.print_help()
        return None
    if ns.help_pytest:
        session.run(["--help"], ["tests/ksm"])
        return None
    if ns.shard:
        cellplan.parse_shard(ns.shard)
    cellplan.validate(ns.kernel or [], ns.numa or [], ns.modules)
    spec.check(vars(ns), ns.numa or [options.DEFAULT_NUMA])
    check_report_paths(ns)
    found, pytest_args = options.split_repeated(argv, extra=("--baseline", "--cell", "--shard"))
    complaint = session.usage_error(pytest_args, ["tests/ksm"])
    if complaint:
        raise HarnessError(f"run: {complaint} (see ksm-harness run --help)")
    return ns


def check_report_paths(ns: argparse.Namespace) -> None:
    """A report whose directory cannot be made is bad input: said now, before a kernel boots.
    (A directory that fills up or refuses a file during the run costs one line and a rescue
    of the results: harness.pytest_plugin.reporting.)"""
    wanted = [("--report-dir", Path(ns.report_dir))] if getattr(ns, "report_dir", None) else []
    for flag, dest in (("--junitxml", "junitxml"),
                       *((w.option.flag, w.name) for w in writers.WRITERS)):
        if getattr(ns, dest, None):
            wanted.append((flag, Path(getattr(ns, dest)).parent))
    for flag, directory in wanted:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise HarnessError(f"run: {flag}: cannot make the directory {directory}: "
                               f"{exc.strerror or exc}") from None


def main(argv: list[str]) -> int:
    """``ksm-harness run``: one pytest run, or cells and shards (harness.runs.cells)."""
    if check(argv) is None:
        return 0  # help printed
    if cell_runs.wanted(argv):
        return cell_runs.run(argv)
    return session.run(argv, ["tests/ksm"])
