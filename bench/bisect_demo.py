#!/usr/bin/env python3
"""A real bisection, end to end: a kernel git tree made from Debian's linux-source-6.1 with a
KSM regression committed among a dozen harmless commits, bisected by ``ksm-harness bisect``.

    bench/bisect_demo.py [--work /var/tmp/ksm-bisect-demo] [--bad-at 8] [--runs 1]

The regression is an off-by-one in mm/ksm.c's __is_page_sharing_candidate() (``<`` becomes
``<=``): every KSM page then takes max_page_sharing + 1 mappings, so the stable-node chain
arithmetic of the max_page_sharing scenario comes out wrong. The harmless commits touch
documentation, selftests and comments in compiled mm/ files (so bisect steps really rebuild
something). Prints: which commit was found, whether it is the injected one, steps and time.
The first build of the tree (defconfig + our fragment) is the expensive part; it is done
before the clock starts and reported separately."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from figures import record  # bench/figures.py, beside this file

REPO = Path(__file__).resolve().parents[1]
SOURCE = Path("/usr/src/linux-source-6.1.tar.xz")
SCENARIO = "test_lone_page_beyond_the_cap_stays_unshared"
REGRESSION = "mm/ksm: simplify the max_page_sharing check in is_page_sharing_candidate()"


def git(tree: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(tree), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def replace(path: str, old: str, new: str) -> Callable[[Path], None]:
    def edit(tree: Path) -> None:
        f = tree / path
        text = f.read_text()
        if old not in text:
            raise SystemExit(f"bisect_demo: {path} lacks {old!r}: not the expected source")
        f.write_text(text.replace(old, new, 1))
    return edit


def append(path: str, text: str) -> Callable[[Path], None]:
    def edit(tree: Path) -> None:
        with (tree / path).open("a") as fh:
            fh.write(text)
    return edit


HARMLESS: list[tuple[str, Callable[[Path], None]]] = [
    ("Documentation: ksm: mention the per-process ksm_stat file",
     append("Documentation/admin-guide/mm/ksm.rst",
            "\n/proc/<pid>/ksm_stat shows how many pages of a process KSM merged.\n")),
    ("mm/ksm: fix a typo in a comment",
     replace("mm/ksm.c", "there's no much point", "there's not much point")),
    ("selftests/vm: ksm_tests: describe the merge_across_nodes test",
     append("tools/testing/selftests/vm/ksm_tests.c",
            "\n/* check_ksm_numa_merge() needs two NUMA nodes with free memory. */\n")),
    ("mm/migrate: comment on KSM pages in migration",
     append("mm/migrate.c", "\n/* KSM pages are migrated by ksm_migrate_page() via folio_migrate_ksm(). */\n")),
    ("Documentation/mm: ksm: note on stable node chains",
     append("Documentation/mm/ksm.rst",
            "\nA stable node chain holds several dups once max_page_sharing is reached.\n")),
    ("mm/swapfile: comment on swapoff and KSM pages",
     append("mm/swapfile.c", "\n/* try_to_unuse() may meet KSM pages: ksm_might_need_to_copy(). */\n")),
    ("README: point at the KSM documentation",
     append("README", "\nKSM: Documentation/admin-guide/mm/ksm.rst\n")),
    ("mm/ksm: comment on merge_across_nodes switching",
     replace("mm/ksm.c", "static ssize_t merge_across_nodes_store(",
             "/* Switching needs an empty stable tree: see remove_all_stable_nodes(). */\n"
             "static ssize_t merge_across_nodes_store(")),
    ("mm/compaction: comment on KSM pages",
     append("mm/compaction.c", "\n/* KSM pages are movable: compaction migrates them too. */\n")),
    ("Documentation: sysctl/vm: cross-reference KSM",
     append("Documentation/admin-guide/sysctl/vm.rst",
            "\nSee Documentation/admin-guide/mm/ksm.rst for KSM's own knobs.\n")),
    ("selftests/vm: Makefile: comment on ksm_tests",
     append("tools/testing/selftests/vm/Makefile", "\n# ksm_tests needs libnuma\n")),
    ("mm/ksm: comment on ksm_max_page_sharing's default",
     replace("mm/ksm.c", "static int ksm_max_page_sharing = 256;",
             "/* 256: long enough chains stay cheap to walk */\n"
             "static int ksm_max_page_sharing = 256;")),
]

BUG = replace("mm/ksm.c", "stable_node->rmap_hlist_len + offset < ksm_max_page_sharing;",
              "stable_node->rmap_hlist_len + offset <= ksm_max_page_sharing;")


def make_tree(work: Path, bad_at: int) -> Path:
    tree = work / "linux-source-6.1"
    if subprocess.run(["git", "-C", str(tree), "rev-parse", "-q", "--verify", "demo-bad"],
                      capture_output=True).returncode == 0:
        print(f"bisect_demo: reusing {tree}")
        return tree
    if (tree / ".git").is_dir():  # a tree made by hand from the same source: add the history
        return add_history(tree, bad_at)
    if not SOURCE.is_file():
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends",
                        "linux-source-6.1"], check=True)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    subprocess.run(["tar", "xJf", str(SOURCE), "-C", str(work)], check=True)
    # Debian's .gitignore ignores everything at the top level (its packaging repo's view)
    gi = tree / ".gitignore"
    text = gi.read_text()
    if "# Debian packaging" in text:
        gi.write_text(text[:text.index("#\n# Debian packaging")])
    git(tree, "init", "-q")
    git(tree, "config", "user.name", "ksm-harness bisect demo")
    git(tree, "config", "user.email", "bisect-demo@ksm-harness.invalid")
    git(tree, "add", "-A")
    git(tree, "commit", "-q", "-m", "Debian linux-source-6.1 (base)")
    print(f"bisect_demo: base tree in {time.monotonic() - t0:.0f}s")
    return add_history(tree, bad_at)


def add_history(tree: Path, bad_at: int) -> Path:
    git(tree, "tag", "demo-good")
    history = list(HARMLESS)
    history.insert(bad_at - 1, (REGRESSION, BUG))
    for message, edit in history:
        edit(tree)
        git(tree, "commit", "-q", "-a", "-m", message)
    git(tree, "tag", "demo-bad")
    print(f"bisect_demo: {len(history)} commits on top, the regression is number {bad_at}")
    return tree


def harness(*args: str) -> list[str]:
    return [str(REPO / ".venv" / "bin" / "ksm-harness"), *args]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/var/tmp/ksm-bisect-demo"))
    ap.add_argument("--bad-at", type=int, default=8, help="position of the regression (1-13)")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--report-dir", type=Path, default=Path("results/bisect-demo"))
    args = ap.parse_args()
    tree = make_tree(args.work, args.bad_at)
    git(tree, "checkout", "-q", "demo-good")
    t0 = time.monotonic()
    subprocess.run(harness("build", "--tree", str(tree)), check=True)
    first_build = time.monotonic() - t0
    t1 = time.monotonic()
    r = subprocess.run(harness("bisect", "--tree", str(tree), "--good", "demo-good",
                               "--bad", "demo-bad", "-k", SCENARIO, "--runs", str(args.runs),
                               "--report-dir", str(args.report_dir)),
                       capture_output=True, text=True)
    bisect_s = time.monotonic() - t1
    sys.stdout.write(r.stdout)
    found = next((line.split()[4:] for line in r.stdout.splitlines()
                  if line.startswith("first bad commit:")), None)
    steps = sorted((args.report_dir / "bisect").glob("*/verdict.json"),
                   key=lambda p: p.stat().st_mtime)
    out = [f"first build (defconfig + fragment, ccache cold or warm): {first_build:.0f}s"]
    for v in steps:
        d = json.loads(v.read_text())
        subject = git(tree, "show", "-s", "--format=%s", d["commit"])
        out.append(f"  step {d['commit'][:12]} {d['verdict']:>4} {d['seconds']:>6.0f}s  "
                   f"{subject}")
    out.append(f"bisect (bad end recorded + {len(steps) - 1} steps): {bisect_s:.0f}s")
    ok = r.returncode == 0 and found is not None and " ".join(found) == REGRESSION
    out.append(f"found the injected commit: {'yes' if ok else 'NO'}")
    print("\n" + "\n".join(out)
          + ("" if r.returncode == 0 else f" (ksm-harness bisect exit {r.returncode}:\n"
             + r.stderr[-3000:] + ")"))
    record("bisect_demo", out, kernel=f"{tree} (demo-good..demo-bad)", accel="auto")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
