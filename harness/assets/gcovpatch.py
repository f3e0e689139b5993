"""Per-file gcov profiling for the ``gcov`` flavour: ``GCOV_PROFILE_ksm.o := y`` and friends
in the Makefile of each profiled file's directory, as one marked block (replaced, never
duplicated, when the list changes). The block is guarded by ``KSM_HARNESS_GCOV=y``, which
only the gcov flavour's make passes: the unpacked tree is shared by every flavour's O= build,
and the builtin and debug builds must keep compiling the same objects."""
from __future__ import annotations

import os
import re
from collections import defaultdict
from pathlib import Path

from harness.errors import HarnessError

MAKE_VAR = "KSM_HARNESS_GCOV=y"  # on the gcov flavour's make command line only
BEGIN = "# ksm-harness gcov begin: per-file profiling, inert unless make KSM_HARNESS_GCOV=y"
END = "# ksm-harness gcov end"
_PROFILE = re.compile(r"^#\s*gcov-profile:\s*(\S+\.c)\s*$", re.M)
_BLOCK = re.compile(r"\n?" + re.escape(BEGIN) + r"\n.*?" + re.escape(END) + r"\n?", re.S)


def profiled(fragment_text: str) -> list[str]:
    """The ``# gcov-profile: mm/ksm.c`` files a fragment names, in order."""
    return list(dict.fromkeys(_PROFILE.findall(fragment_text)))


def block(files: list[str]) -> str:
    lines = [BEGIN, "ifeq ($(KSM_HARNESS_GCOV),y)"]
    lines += [f"GCOV_PROFILE_{Path(f).stem}.o := y" for f in files]
    return "\n".join([*lines, "endif", END]) + "\n"


def patched(text: str, files: list[str]) -> str:
    """`text` (a Makefile) with our block for `files` in place of any earlier one."""
    rest = _BLOCK.sub("\n", text).rstrip("\n") + "\n"
    return rest + "\n" + block(files)


def apply(tree: Path, files: list[str]) -> list[Path]:
    """Write the blocks into `tree`; returns the Makefiles that changed (none the second
    time). Written by rename: a build of another flavour may be reading them."""
    by_dir: dict[str, list[str]] = defaultdict(list)
    for f in files:
        by_dir[str(Path(f).parent)].append(f)
    changed = []
    for d, group in sorted(by_dir.items()):
        for f in group:
            if not (tree / f).is_file():
                raise HarnessError(f"gcov flavour: {tree / f} does not exist (a kernel "
                                   "version without it? edit guest-images/kernel-gcov.config)")
        makefile = tree / d / "Makefile"
        old = makefile.read_text()
        new = patched(old, group)
        if new != old:
            tmp = makefile.with_name(f".Makefile.ksm-harness.{os.getpid()}")
            tmp.write_text(new)
            tmp.replace(makefile)
            changed.append(makefile)
    return changed
