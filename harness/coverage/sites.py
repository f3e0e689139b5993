"""The KSM sites: every line outside mm/ksm.c where the kernel treats a KSM page specially
(PageKsm, folio_test_ksm, KSM_RUN*, ...) or calls into mm/ksm.c (the functions
include/linux/ksm.h declares), in the .c files of mm/, fs/proc/ and kernel/, with the
function each lies in. Kept as data (``ksm_sites.json``, with the kernel it was taken from);
regenerate from a source tree with ``python -m harness.coverage.sites TREE``."""
from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

SITES_JSON = Path(__file__).with_name("ksm_sites.json")
# why a site cannot be reached in a guest: kept apart, so regenerating the list keeps them
REASONS_JSON = Path(__file__).with_name("ksm_site_reasons.json")
# the special treatments of a KSM page, as named in issue 21
SYMBOLS = ("PageKsm", "folio_test_ksm", "ksm_might_need_to_copy", "ksm_madvise", "ksm_fork",
           "ksm_exit", "KSM_RUN", "rmap_walk_ksm", "folio_migrate_ksm", "ksm_memory_callback")
DIRS = ("mm", "fs/proc", "kernel")
HEADER = "include/linux/ksm.h"
OWN = "mm/ksm.c"  # its own lines are measured by its coverage, not listed as sites
_DECL = re.compile(r"^(?:static\s+inline\s+)?[A-Za-z_][\w\s\*]*?\b(\w+)\s*\(")
_DEF = re.compile(r"^[A-Za-z_][^;]*?\b(\w+)\s*\(")


@dataclass(frozen=True)
class Site:
    file: str       # relative to the source tree
    line: int
    function: str   # the function the line lies in ("" outside any)
    symbol: str     # what it uses: PageKsm, ksm_madvise, KSM_RUN_MERGE, ...
    code: str       # the line, stripped


def header_functions(text: str) -> list[str]:
    """The functions include/linux/ksm.h declares or defines inline: mm/ksm.c's interface."""
    names = [m.group(1) for line in text.splitlines() if (m := _DECL.match(line))]
    return list(dict.fromkeys(n for n in names if n not in ("if", "while", "return")))


def pattern(functions: list[str]) -> re.Pattern[str]:
    words = sorted(set(SYMBOLS) | set(functions), key=lambda w: (-len(w), w))
    return re.compile(r"\b(" + "|".join(map(re.escape, words)) + r")\w*\b")


def enclosing(lines: list[str], index: int) -> str:
    """The function around ``lines[index]`` in kernel style: the nearest line above that
    starts in column 0 with a declarator and no ';'; none past a column-0 '}'."""
    for i in range(index, -1, -1):
        line = lines[i]
        if line.startswith("}") and i != index:
            return ""
        m = _DEF.match(line)
        if m and not line.startswith(("#", "typedef")) \
                and m.group(1) not in ("if", "for", "while", "switch", "return", "sizeof"):
            return m.group(1)
    return ""


def _is_code(line: str) -> bool:
    s = line.strip()
    return bool(s) and not s.startswith(("*", "/*", "//", "#"))


def scan_file(rel: str, text: str, pat: re.Pattern[str]) -> list[Site]:
    lines = text.splitlines()
    out = []
    for i, line in enumerate(lines):
        code = line.split("//")[0].split("/*")[0]
        if not _is_code(line):
            continue
        m = pat.search(code)
        if m:
            out.append(Site(rel, i + 1, enclosing(lines, i), m.group(0), line.strip()))
    return out


def extract(tree: Path) -> tuple[list[str], list[Site]]:
    """(mm/ksm.c's interface functions, the sites) of a kernel source tree."""
    functions = header_functions((tree / HEADER).read_text(errors="replace"))
    pat = pattern(functions)
    sites: list[Site] = []
    for d in DIRS:
        for path in sorted((tree / d).rglob("*.c")):
            rel = path.relative_to(tree).as_posix()
            if rel != OWN:
                sites += scan_file(rel, path.read_text(errors="replace"), pat)
    return functions, sites


def tree_version(tree: Path) -> str:
    """``6.1.192`` from the top Makefile, plus the Debian directory's name when it has one."""
    head = (tree / "Makefile").read_text(errors="replace")[:2000]
    parts = [re.search(rf"^{k}\s*=\s*(\S*)", head, re.M) for k in
             ("VERSION", "PATCHLEVEL", "SUBLEVEL")]
    version = ".".join(m.group(1) for m in parts if m and m.group(1))
    return f"{version} ({tree.name})" if tree.name != "linux" else version


def load(path: Path = SITES_JSON) -> tuple[str, list[Site]]:
    data = json.loads(path.read_text())
    return data["kernel"], [Site(**s) for s in data["sites"]]


@dataclass(frozen=True)
class Reason:
    """Why one site (``file``:``line`` in ``function``) cannot be reached in a guest."""
    file: str
    line: int
    function: str
    reason: str

    @property
    def key(self) -> tuple[str, int]:
        return self.file, self.line


def load_reasons(path: Path = REASONS_JSON) -> list[Reason]:
    return [Reason(**r) for r in json.loads(path.read_text())["reasons"]]


def stale_reasons(reasons: list[Reason], site_list: list[Site]) -> list[str]:
    """The reasons that name no site of the list (same file, line and function): after the
    list is regenerated from another kernel, each must be moved or dropped by hand."""
    known = {(s.file, s.line, s.function) for s in site_list}
    return [f"{r.file}:{r.line} {r.function}" for r in reasons
            if (r.file, r.line, r.function) not in known or not r.reason.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.coverage.sites",
                                description="regenerate the KSM sites list from a source tree")
    p.add_argument("tree", type=Path, help="kernel source tree (e.g. linux-source-6.1)")
    p.add_argument("-o", "--output", type=Path, default=SITES_JSON,
                   help=f"where (default {SITES_JSON})")
    args = p.parse_args(argv)
    if not (args.tree / HEADER).is_file():
        print(f"sites: {args.tree}: no {HEADER}: not a kernel source tree", file=sys.stderr)
        return 2
    functions, sites = extract(args.tree)
    data = {"kernel": tree_version(args.tree),
            "generated_by": "python -m harness.coverage.sites TREE",
            "symbols": list(SYMBOLS), "ksm_functions": functions,
            "sites": [asdict(s) for s in sites]}
    args.output.write_text(json.dumps(data, indent=1) + "\n")
    print(f"sites: {len(sites)} sites in {len({s.file for s in sites})} files -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
