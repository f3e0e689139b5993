"""The host side of the gcov data: a bucket of .gcda files from the guest is matched with the
.gcno files of the build directory and read with ``gcov --json-format`` of the gcc that built
the kernel; buckets are summed into per-line and per-function counts, and merged into one
tree of .gcda (``gcov-tool merge``) for gcovr's lcov and HTML."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import HarnessError

GCOV_TIMEOUT = 120.0  # seconds for one gcov or gcov-tool run


class GcovError(HarnessError):
    """The gcov data cannot be read (no matching gcov, a .gcda without its .gcno, ...)."""


def tools_for(cc_version_text: str) -> tuple[str, str]:
    """(gcov, gcov-tool) of the gcc named by CONFIG_CC_VERSION_TEXT ("gcc (Debian 12.2.0-14)
    12.2.0"): a .gcda is only readable by the gcov of the compiler that wrote the .gcno."""
    m = re.search(r"\b(\d+)\.\d+\.\d+\s*$", cc_version_text.strip())
    if not cc_version_text.startswith("gcc") or m is None:
        raise GcovError(f"the kernel was not built by gcc ({cc_version_text!r}): gcov needs gcc")
    major = m.group(1)
    found = []
    for tool in ("gcov", "gcov-tool"):
        exe = shutil.which(f"{tool}-{major}")
        if exe is None:
            raise GcovError(f"{tool}-{major} not found (the kernel was built by gcc {major}): "
                            f"install Debian's gcc-{major}")
        found.append(exe)
    return found[0], found[1]


@dataclass
class FileCounts:
    """One source file's counts: line -> count, function -> (first line, count)."""
    lines: dict[int, int] = field(default_factory=dict)
    functions: dict[str, tuple[int, int]] = field(default_factory=dict)

    def add(self, other: FileCounts) -> None:
        for n, c in other.lines.items():
            self.lines[n] = self.lines.get(n, 0) + c
        for name, (line, c) in other.functions.items():
            self.functions[name] = (line, self.functions.get(name, (line, 0))[1] + c)


Counts = dict[str, FileCounts]  # source path (relative to the source tree) -> counts


def relative(object_path: str, build: Path) -> str | None:
    """``/root/.cache/.../builds/linux-...-gcov-x/mm/ksm.gcda`` -> ``mm/ksm.gcda`` when it
    lies under `build` (as the guest kernel names it: the build directory's absolute path)."""
    prefix = str(build).strip("/") + "/"
    path = object_path.strip("/")
    return path[len(prefix):] if path.startswith(prefix) else None


def stage(bucket: Path, build: Path, work: Path) -> list[Path]:
    """Copy the bucket's .gcda files to `work` under their object paths, beside a link to
    the build's .gcno; returns the staged .gcda files."""
    staged = []
    for gcda in sorted(bucket.rglob("*.gcda")):
        rel = relative(str(gcda.relative_to(bucket)), build)
        if rel is None:
            raise GcovError(f"{gcda}: not an object of the build directory {build} (was the "
                            "guest's kernel built there?)")
        gcno = build / rel[:-len(".gcda")]
        gcno = gcno.with_name(gcno.name + ".gcno")
        if not gcno.is_file():
            raise GcovError(f"{gcno}: missing (the .gcda comes from another build)")
        dest = work / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(gcda, dest)
        link = dest.with_suffix(".gcno")
        link.unlink(missing_ok=True)
        link.symlink_to(gcno)
        staged.append(dest)
    return staged


def source_key(path: str, srctree: Path | None) -> str:
    """A source file as gcov names it, relative to the source tree when under it."""
    if srctree is not None:
        prefix = str(srctree).rstrip("/") + "/"
        if path.startswith(prefix):
            return path[len(prefix):]
    return path


def read_gcda(gcda: Path, gcov: str, srctree: Path | None = None) -> Counts:
    """One .gcda (staged beside its .gcno) through ``gcov --json-format --stdout``; counts
    per source file, headers' inline functions included under the header's name."""
    r = subprocess.run([gcov, "--json-format", "--stdout", gcda.name], cwd=gcda.parent,
                       capture_output=True, text=True, timeout=GCOV_TIMEOUT)
    if r.returncode != 0 or not r.stdout.strip():
        raise GcovError(f"{gcov} {gcda}: {(r.stderr or 'no output').strip()[-300:]}")
    out: Counts = {}
    for doc in r.stdout.splitlines():
        if not doc.strip():
            continue
        for f in json.loads(doc)["files"]:
            fc = out.setdefault(source_key(f["file"], srctree), FileCounts())
            for ln in f["lines"]:
                n = ln["line_number"]
                fc.lines[n] = fc.lines.get(n, 0) + ln["count"]
            for fn in f["functions"]:
                name = fn["demangled_name"]
                line, c = fc.functions.get(name, (fn["start_line"], 0))
                fc.functions[name] = (line, c + fn["execution_count"])
    return out


def read_bucket(bucket: Path, build: Path, work: Path, gcov: str,
                srctree: Path | None = None) -> Counts:
    out: Counts = defaultdict(FileCounts)
    for gcda in stage(bucket, build, work):
        for src, fc in read_gcda(gcda, gcov, srctree).items():
            out[src].add(fc)
    return dict(out)


def total(per_bucket: list[Counts]) -> Counts:
    out: Counts = defaultdict(FileCounts)
    for counts in per_bucket:
        for src, fc in counts.items():
            out[src].add(fc)
    return dict(out)


def merge_tree(buckets: list[Path], build: Path, work: Path, gcov_tool: str) -> Path:
    """All buckets summed into one staged tree (``gcov-tool merge``, pairwise), .gcno links
    beside: what gcovr reads."""
    if not buckets:
        raise GcovError("no gcov data was collected")
    merged = work / "merged"
    shutil.rmtree(merged, ignore_errors=True)
    first = work / "m0"
    shutil.rmtree(first, ignore_errors=True)
    stage(buckets[0], build, first)
    current = first
    for i, bucket in enumerate(buckets[1:], 1):
        nxt = work / f"m{i}"
        shutil.rmtree(nxt, ignore_errors=True)
        stage(bucket, build, work / "in")
        r = subprocess.run([gcov_tool, "merge", "-o", str(nxt), str(current), str(work / "in")],
                           capture_output=True, text=True, timeout=GCOV_TIMEOUT)
        if r.returncode != 0:
            raise GcovError(f"gcov-tool merge: {r.stderr.strip()[-300:]}")
        shutil.rmtree(work / "in")
        shutil.rmtree(current)
        current = nxt
    current.rename(merged)
    for gcda in merged.rglob("*.gcda"):  # gcov-tool writes the .gcda only
        rel = gcda.relative_to(merged).with_suffix(".gcno")
        link = gcda.with_suffix(".gcno")
        if not link.exists():
            link.symlink_to(build / rel)
    return merged
