"""The coverage report of a run: buckets read with gcov (harness.coverage.gcovdata), the
figures of mm/ksm.c, a per-test table (which test reached which mm/ksm.c function), the reach
of each KSM site (harness.coverage.sites), and gcovr's lcov and HTML of the merged data."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from harness.coverage import collect, gcovdata, sites
from harness.coverage.gcovdata import Counts, FileCounts

KSM_C = "mm/ksm.c"
GCOVR_TIMEOUT = 900.0  # seconds: gcovr runs gcov on ~15 files and writes the HTML
NEAR = (0, -1, -2, -3, 1)  # a site on a continuation line is counted on its statement's line
GENERATED = "test_generated"  # the generator's test: its buckets are "with the generator"


@dataclass
class Figures:
    lines_hit: int
    lines: int
    functions_hit: int
    functions: int

    def line(self, name: str) -> str:
        def pct(a: int, b: int) -> str:
            return f"{100.0 * a / b:.1f}%" if b else "n/a"
        return (f"{name}: lines {self.lines_hit}/{self.lines} ({pct(self.lines_hit, self.lines)}), "
                f"functions {self.functions_hit}/{self.functions} "
                f"({pct(self.functions_hit, self.functions)})")


def figures(fc: FileCounts | None) -> Figures:
    if fc is None:
        return Figures(0, 0, 0, 0)
    return Figures(sum(1 for c in fc.lines.values() if c), len(fc.lines),
                   sum(1 for _, c in fc.functions.values() if c), len(fc.functions))


@dataclass
class SiteReach:
    site: sites.Site
    status: str           # reached, not reached, not built, not profiled, no code
    by: list[str]         # the labels (tests, "(boot)") whose bucket reached it
    reason: str = ""      # why no guest can reach it (ksm_site_reasons.json), if it has one

    def shown(self) -> str:
        """The status as sites.txt shows it: with its reason when it has one."""
        return (f"{self.status} (reason: {self.reason})" if self.reason
                and self.status != "reached" else self.status)


def site_line(fc: FileCounts, line: int) -> int | None:
    """The instrumented line that counts for `line` (itself, else its statement's)."""
    for d in NEAR:
        if line + d in fc.lines:
            return line + d
    return None


def reach(site_list: list[sites.Site], labelled: list[tuple[str, Counts]], whole: Counts,
          profiled: frozenset[str] = frozenset(),
          reasons: list[sites.Reason] | None = None) -> list[SiteReach]:
    """Each site's status and the labels that reached it. "reached" means its line ran
    (the kernel looked at the page there), not that the KSM branch was taken. A file the
    flavour profiles but the guest has no counters for is "not built" (its config is off).
    A site with a reason carries it (shown unless the site was reached after all)."""
    why = {r.key: r.reason for r in reasons or []}
    out = []
    for r in _reach(site_list, labelled, whole, profiled):
        r.reason = why.get((r.site.file, r.site.line), "")
        out.append(r)
    return out


def tally(reached: list[SiteReach]) -> tuple[int, int, int]:
    """(reached, unreachable with a reason, neither)."""
    hit = sum(1 for r in reached if r.status == "reached")
    reasoned = sum(1 for r in reached if r.status != "reached" and r.reason)
    return hit, reasoned, len(reached) - hit - reasoned


def split_generated(labelled: list[tuple[str, Counts]]) -> list[tuple[str, Counts]]:
    """The buckets of every test but the generator's: today's scenarios alone."""
    return [(label, counts) for label, counts in labelled if GENERATED not in label]


def _reach(site_list: list[sites.Site], labelled: list[tuple[str, Counts]], whole: Counts,
           profiled: frozenset[str]) -> list[SiteReach]:
    out = []
    for s in site_list:
        fc = whole.get(s.file)
        if fc is None:
            out.append(SiteReach(s, "not built" if s.file in profiled else "not profiled", []))
            continue
        line = site_line(fc, s.line)
        if line is None:
            out.append(SiteReach(s, "no code", []))
            continue
        by = list(dict.fromkeys(label for label, counts in labelled
                                if counts.get(s.file, FileCounts()).lines.get(line, 0)))
        out.append(SiteReach(s, "reached" if by else "not reached", by))
    return out


def per_test(labelled: list[tuple[str, Counts]], file: str = KSM_C) -> dict[str, list[str]]:
    """label -> the functions of `file` it reached (buckets of one label summed)."""
    table: dict[str, set[str]] = {}
    for label, counts in labelled:
        fc = counts.get(file)
        hit = {name for name, (_, c) in fc.functions.items() if c} if fc else set()
        table.setdefault(label, set()).update(hit)
    return {label: sorted(fns) for label, fns in table.items()}


def by_function(table: dict[str, list[str]]) -> dict[str, list[str]]:
    """The per-test table turned around: function -> the labels that reached it."""
    out: dict[str, list[str]] = {}
    for label, fns in table.items():
        for fn in fns:
            out.setdefault(fn, []).append(label)
    return dict(sorted(out.items()))


def unreached_functions(fc: FileCounts | None) -> list[str]:
    return sorted(n for n, (_, c) in fc.functions.items() if not c) if fc else []


def gcovr(merged: Path, srctree: Path, out: Path, gcov: str) -> None:
    """lcov and HTML of the merged tree by gcovr, sources from `srctree`; the profiled .c
    files only (the headers they inline would make it ~50 MB of HTML)."""
    html = out / "html"
    shutil.rmtree(html, ignore_errors=True)  # gcovr names pages by hash: no stale ones
    html.mkdir(parents=True)
    cmd = ["gcovr", "--gcov-executable", gcov, "--root", str(srctree), "--lcov",
           str(out / "coverage.lcov"), "--html-details", str(html / "index.html"),
           "--json-summary", str(out / "summary.json"), "--gcov-ignore-parse-errors=all",
           "--filter", re.escape(str(srctree).rstrip("/")) + r"/(mm|fs/proc|kernel)/.*\.c$",
           str(merged)]
    beside = Path(sys.executable).with_name("gcovr")  # the venv's, not whatever is on PATH
    if beside.is_file():
        cmd[0] = str(beside)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=GCOVR_TIMEOUT)
    if r.returncode != 0:
        raise gcovdata.GcovError(f"gcovr failed: {r.stderr.strip()[-400:]}")


def gcovr_figures(summary: Path, file: str) -> Figures | None:
    """`file`'s figures in gcovr's --json-summary (it leaves out lines it deems no code)."""
    for f in json.loads(summary.read_text()).get("files", []):
        if f["filename"] == file:
            return Figures(f["line_covered"], f["line_total"], f["function_covered"],
                           f["function_total"])
    return None


TALLY = ("reached", "with a reason", "neither")


def side_by_side(alone: Figures, alone_sites: tuple[int, int, int], every: Figures,
                 every_sites: tuple[int, int, int]) -> str:
    """Today's scenarios alone, then with the generator (gcov's raw records both)."""
    def part(f: Figures, t: tuple[int, int, int]) -> str:
        return (f.line(KSM_C).removeprefix(f"{KSM_C}: ") + f", sites {t[0]} reached/"
                f"{t[1]} with a reason/{t[2]} neither")
    return (f"scenarios alone: {part(alone, alone_sites)} | with the generator: "
            f"{part(every, every_sites)}")


def build_report(gcda_root: Path, build: Path, srctree: Path, out: Path, cc_version: str,
                 site_list: list[sites.Site] | None = None, html: bool = True,
                 profiled: frozenset[str] = frozenset(),
                 reasons: list[sites.Reason] | None = None) -> list[str]:
    """Read every bucket, write coverage.json, tests.txt, sites.txt (and lcov/HTML); the
    summary lines to print."""
    gcov, gcov_tool = gcovdata.tools_for(cc_version)
    index = collect.read_index(gcda_root)
    if not index:
        raise gcovdata.GcovError(f"{gcda_root}: no gcov data was collected (no "
                                 f"{collect.INDEX})")
    work = out / "work"
    labelled = []
    for entry in index:
        counts = gcovdata.read_bucket(gcda_root / entry["bucket"], build,
                                      work / entry["bucket"], gcov, srctree)
        labelled.append((entry["label"], counts))
    whole = gcovdata.total([c for _, c in labelled])
    site_list = sites.load()[1] if site_list is None else site_list
    reasons = sites.load_reasons() if reasons is None else reasons
    reached = reach(site_list, labelled, whole, profiled, reasons)
    alone = split_generated(labelled)
    alone_whole = gcovdata.total([c for _, c in alone])
    alone_reached = reach(site_list, alone, alone_whole, profiled, reasons)
    table = per_test(labelled)
    ksm = figures(whole.get(KSM_C))
    per_file = {f: asdict(figures(fc)) for f, fc in sorted(whole.items()) if f.endswith(".c")}
    (out / "coverage.json").write_text(json.dumps({
        "ksm_c": asdict(ksm), "files": per_file, "per_test": table,
        "scenarios_alone": {"ksm_c": asdict(figures(alone_whole.get(KSM_C))),
                            "sites": dict(zip(TALLY, tally(alone_reached)))},
        "sites": [{**asdict(r.site), "status": r.status, "by": r.by, "reason": r.reason}
                  for r in reached],
    }, indent=1) + "\n")
    with (out / "tests.txt").open("w") as fh:
        for label, fns in table.items():
            fh.write(f"{label}: {len(fns)} functions of {KSM_C}: {' '.join(fns)}\n")
    never = unreached_functions(whole.get(KSM_C))
    with (out / "functions.txt").open("w") as fh:
        for name, labels in by_function(table).items():
            fh.write(f"{name}: {len(labels)} tests: {' '.join(labels)}\n")
        for name in never:
            fh.write(f"{name}: not reached\n")
    with (out / "sites.txt").open("w") as fh:
        for r in reached:
            s = r.site
            fh.write(f"{r.shown():12} {s.file}:{s.line} {s.function} {s.symbol}"
                     f"{' by ' + ', '.join(r.by) if r.by else ''}\n")
    if html:
        merged = gcovdata.merge_tree([gcda_root / e["bucket"] for e in index], build,
                                     work, gcov_tool)
        gcovr(merged, srctree, out, gcov)
    headline = ksm.line(KSM_C)
    if html:  # gcovr's figures are the ones its HTML shows: lead with them
        g = gcovr_figures(out / "summary.json", KSM_C)
        if g is not None:
            headline = (g.line(KSM_C) + f" (gcovr; gcov's raw records: {ksm.lines_hit}/"
                        f"{ksm.lines} lines, {ksm.functions_hit}/{ksm.functions} functions)")
    neither = {k: n for k in ("not reached", "not built", "not profiled", "no code")
               if (n := sum(1 for r in reached if r.status == k and not r.reason))}
    hit, reasoned, rest = tally(reached)
    return [headline,
            f"{KSM_C} functions no test reached: {', '.join(never) or 'none'}",
            f"KSM sites outside mm/ksm.c: {hit} reached, {reasoned} unreachable with a reason, "
            f"{rest} neither" + (" (" + ", ".join(f"{v} {k}" for k, v in neither.items()) + ")"
                                 if neither else ""),
            side_by_side(figures(alone_whole.get(KSM_C)), tally(alone_reached), ksm,
                         (hit, reasoned, rest)),
            f"per test: {out / 'tests.txt'}; per function: {out / 'functions.txt'}; sites: {out / 'sites.txt'}"
            + (f"; HTML: {out / 'html' / 'index.html'}; lcov: {out / 'coverage.lcov'}"
               if html else "")]
