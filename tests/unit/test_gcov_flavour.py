"""The gcov flavour without building it: its fragment, the per-file profiling block written
into the shared tree's Makefiles (idempotent, valid make, inert without KSM_HARNESS_GCOV=y),
and that every KSM site's file is profiled."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from harness.assets import gcovpatch
from harness.assets import kbuild as build
from harness.coverage import sites
from harness.errors import HarnessError
from tests.helpers import require_tool

# the head of linux-source-6.1's mm/Makefile, as it is
MM_MAKEFILE = """\
# SPDX-License-Identifier: GPL-2.0
#
# Makefile for the linux memory manager.
#

KASAN_SANITIZE_slab_common.o := n
KASAN_SANITIZE_slab.o := n
KASAN_SANITIZE_slub.o := n
KCSAN_SANITIZE_kmemleak.o := n
"""


def _tree(tmp_path: Path) -> Path:
    tree = tmp_path / "linux"
    for f in ("mm/ksm.c", "mm/rmap.c", "kernel/fork.c"):
        (tree / f).parent.mkdir(parents=True, exist_ok=True)
        (tree / f).write_text("")
    (tree / "mm/Makefile").write_text(MM_MAKEFILE)
    (tree / "kernel/Makefile").write_text("obj-y = fork.o\n")
    return tree


def test_patch_is_idempotent_and_replaces_an_older_list(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    files = ["mm/ksm.c", "mm/rmap.c", "kernel/fork.c"]
    changed = gcovpatch.apply(tree, files)
    assert sorted(p.relative_to(tree).as_posix() for p in changed) == ["kernel/Makefile",
                                                                       "mm/Makefile"]
    once = (tree / "mm/Makefile").read_text()
    assert once.startswith(MM_MAKEFILE) and "GCOV_PROFILE_ksm.o := y" in once
    assert "GCOV_PROFILE_fork.o" not in once  # each directory gets its own files only
    assert gcovpatch.apply(tree, files) == []
    assert (tree / "mm/Makefile").read_text() == once
    gcovpatch.apply(tree, ["mm/ksm.c"])  # a shorter list replaces the block, no second one
    text = (tree / "mm/Makefile").read_text()
    assert text.count(gcovpatch.BEGIN) == 1 and "rmap.o" not in text
    assert text.startswith(MM_MAKEFILE)


@pytest.mark.parametrize("args,want", [([gcovpatch.MAKE_VAR], "[y]"), ([], "[]")])
def test_block_is_make_syntax_and_inert_without_the_variable(tmp_path: Path, args: list[str],
                                                             want: str) -> None:
    require_tool("make")
    tree = _tree(tmp_path)
    gcovpatch.apply(tree, ["mm/ksm.c"])
    mk = tree / "mm/Makefile"
    mk.write_text(mk.read_text() + "show:\n\t@echo [$(GCOV_PROFILE_ksm.o)]\n")
    r = subprocess.run(["make", "-s", "-f", str(mk), *args, "show"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == want


def test_a_missing_file_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(HarnessError, match=r"mm/nope.c does not exist"):
        gcovpatch.apply(_tree(tmp_path), ["mm/nope.c"])


def test_gcov_step_patches_and_switches_profiling_on(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    (tree / "mm/ksm.c").write_text("")
    for f in gcovpatch.profiled(build.GCOV.read_text()):
        (tree / f).parent.mkdir(parents=True, exist_ok=True)
        (tree / f).touch()
        (tree / f).with_name("Makefile").touch()
    assert build.gcov_step(tree, "gcov", lambda m: None) == ["KSM_HARNESS_GCOV=y"]
    assert "GCOV_PROFILE_ksm.o := y" in (tree / "mm/Makefile").read_text()
    assert build.gcov_step(tree, "builtin", lambda m: None) == []


def test_gcov_fragment_profiles_ksm_only_per_file() -> None:
    frag = build.parse_fragment(build.GCOV.read_text())
    assert frag["CONFIG_GCOV_KERNEL"] == "y" and frag["CONFIG_DEBUG_FS"] == "y"
    assert frag["CONFIG_GCOV_PROFILE_ALL"] is None
    assert build.FLAVOURS["gcov"] == (build.BUILTIN, build.FRAGMENT, build.GCOV)
    assert gcovpatch.profiled(build.GCOV.read_text())[0] == "mm/ksm.c"


def test_every_sites_file_is_profiled() -> None:
    """A site in a file the flavour does not profile could only ever say "not profiled"."""
    profiled = set(gcovpatch.profiled(build.GCOV.read_text()))
    data = json.loads(sites.SITES_JSON.read_text())
    assert data["kernel"].startswith("6.1.")
    missing = {s["file"] for s in data["sites"]} - profiled
    assert not missing, f"add to guest-images/kernel-gcov.config: {sorted(missing)}"
