"""``ksm-harness coverage [--out DIR] [RUN OPTIONS]``: the suite (or a ``-k`` selection) on
a gcov kernel (default ``source:6.1+gcov``, built once and cached), the guest's counters
dumped per test (``--gcov-dir``), then the report (harness.coverage.report): lcov and HTML by
gcovr, a per-test table, the reach of each KSM site, and mm/ksm.c's figures printed last."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

from harness import options
from harness.errors import HarnessError

DEFAULT_KERNEL = "source:6.1+gcov"
USAGE = """\
usage: ksm-harness coverage [--out DIR] [--no-html] [RUN OPTIONS] [PYTEST OPTIONS]

Run the KSM suite (or a -k selection) on a gcov kernel (default --kernel source:6.1+gcov:
Debian's linux-source-6.1 built with guest-images/kernel-gcov.config, once) and report which
lines and functions of mm/ksm.c, and which KSM sites (harness/coverage/ksm_sites.json), each
test reached. Every `ksm-harness run` option works, for one kernel and one topology.

  --out DIR   where the report goes (default results/coverage): coverage.json, tests.txt,
              sites.txt, coverage.lcov, html/index.html, and the raw counters in gcda/
  --no-html   only the tables and figures (no gcovr run)

example:
  ksm-harness coverage -k test_merge
"""


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def split(argv: list[str]) -> tuple[Path, bool, str, list[str]]:
    """(--out, html, --kernel, the rest for pytest) of the verb's arguments."""
    out, html, rest = Path("results/coverage"), True, []
    it = iter(argv)
    for a in it:
        flag, eq, inline = a.partition("=")
        if flag == "--out":
            value = inline if eq else next(it, None)
            if not value:
                raise HarnessError("coverage: --out needs a directory (see ksm-harness "
                                   "coverage --help)")
            out = Path(value)
        elif a == "--no-html":
            html = False
        elif flag == options.BY_FLAG["--gcov-dir"].flag:
            raise HarnessError("coverage: --gcov-dir is set by coverage itself (DIR/gcda of "
                               "--out)")
        else:
            rest.append(a)
    found, rest = options.split_repeated(rest)
    if len(found["kernel"]) > 1 or len(found["numa"]) > 1:
        raise HarnessError("coverage: one --kernel and one --numa (a matrix of coverage "
                           "runs is several coverage runs)")
    kernel = found["kernel"][0] if found["kernel"] else DEFAULT_KERNEL
    numa = ["--numa", found["numa"][0]] if found["numa"] else []
    return out, html, kernel, [*numa, *rest]


def profiled_files() -> frozenset[str]:
    from harness.assets import gcovpatch, kbuild
    return frozenset(gcovpatch.profiled(kbuild.GCOV.read_text()))


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE, end="")
        return 0
    out, html, spec, rest = split(argv)
    from harness.assets import kernel as kernel_mod
    from harness.coverage import report
    from harness.pytest_plugin import session
    kernel = kernel_mod.choose(spec, log=_log)
    if kernel.builtin("CONFIG_GCOV_KERNEL") is not True or kernel.tree is None:
        raise HarnessError(f"coverage: --kernel {spec} is not a gcov kernel build tree "
                           f"(CONFIG_GCOV_KERNEL=y, with its .gcno files): use "
                           f"{DEFAULT_KERNEL}")
    build = kernel.tree.resolve()
    srctree = (build / "source").resolve() if (build / "source").exists() else build
    gcda = out / "gcda"
    shutil.rmtree(gcda, ignore_errors=True)  # a report is of one run
    rc = session.run([*rest, "--kernel", spec, "--gcov-dir", str(gcda)], ["tests/ksm"])
    _log(f"ksm-harness: coverage: reading the counters with gcov (of {kernel.compiler})")
    lines = report.build_report(gcda, build, srctree, out, kernel.compiler, html=html,
                                profiled=profiled_files())
    for line in lines:
        print(f"ksm-harness: coverage: {line}")
    return rc
