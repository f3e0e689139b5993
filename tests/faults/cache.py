"""Private caches for the fault matrix: the shared cache's kernels, images and built workloads
linked (read only), everything else the cell's own; what a cell may leave behind and change."""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from harness import paths

# not needed to boot the default kernel, or the cell's own (snapshots, runs)
LEFT_OUT = ("snapshots", "runs", "dry-run", "builds", "source", "apt")
SHM = Path("/dev/shm")


def shared() -> Path:
    """The shared cache (KSM_HARNESS_CACHE of the session, else ~/.cache/ksm-harness)."""
    return paths.cache_dir()


def private(fresh: tuple[str, ...] = ()) -> Path:
    """A new cache whose directories are its own, linking the shared one's artefacts one
    by one (so what the harness writes beside an artefact, its record of size and checksum
    or its lock, stays in the private cache); ``fresh`` entries start empty (their
    artefacts are built). A short path: QMP sockets live under it (< 108 bytes)."""
    cache = Path(tempfile.mkdtemp(prefix="ksm-f-"))
    for entry in shared().iterdir():
        if entry.name in LEFT_OUT or entry.name.endswith(".lock"):
            continue
        if not entry.is_dir():
            (cache / entry.name).symlink_to(entry)
            continue
        (cache / entry.name).mkdir()
        if entry.name in fresh:
            continue
        for item in entry.iterdir():
            if not item.name.endswith((".lock", ".sum")) and ".tmp" not in item.name:
                (cache / entry.name / item.name).symlink_to(item)
    return cache


def env(cache: Path) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("KSM_HARNESS_")}
    return out | {"KSM_HARNESS_CACHE": str(cache), "KSM_HARNESS_RUNS": str(cache / "runs")}


def remove(cache: Path) -> None:
    shutil.rmtree(cache, ignore_errors=True)  # links are removed, not followed


def _files(cache: Path) -> Iterator[Path]:
    for top, dirs, files in os.walk(cache, followlinks=True):
        if Path(top) == cache:
            dirs[:] = [d for d in dirs if d != "runs"]
        for name in files:
            # locks, builders' temporary files and the KVM probe's verdict change by design
            if not (name.endswith(".lock") or ".tmp" in name or name == "kvm-probe.json"):
                yield Path(top) / name


def fingerprint(cache: Path) -> dict[str, tuple[int, int, int]]:
    """Every cached file (runs and locks aside) as (size, mtime, inode): a file damaged,
    rewritten or replaced differs."""
    out = {}
    for path in _files(cache):
        try:
            st = path.stat()
        except OSError:
            continue
        out[str(path.relative_to(cache))] = (st.st_size, st.st_mtime_ns, st.st_ino)
    return out


def changed(before: dict[str, tuple[int, int, int]],
            after: dict[str, tuple[int, int, int]]) -> list[str]:
    """Files there before that are gone or differ (new files are fine: a snapshot saved)."""
    return sorted(f"{name} {'gone' if name not in after else 'changed'}"
                  for name, fp in before.items() if after.get(name) != fp)


def qemus(cache: Path) -> list[int]:
    """QEMUs whose command line names this cache (their run directories are in it)."""
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if b"qemu-system" in cmd and str(cache).encode() in cmd and state != "Z":
            out.append(int(proc.name))
    return out


def leftovers(cache: Path) -> list[str]:
    """What a run that ended must not leave: its QEMU, RAM files of a dead harness in
    /dev/shm or the cache, temporary files or directories in the cache."""
    left = [f"QEMU {pid}" for pid in qemus(cache)]
    for base in (SHM, cache):
        for ram in base.glob("ksm-harness-ram-*"):
            pid = ram.name.split("-")[3]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                left.append(str(ram))
    for path in _files_and_dirs(cache):
        if ".tmp" in path.name:
            left.append(str(path.relative_to(cache)))
    return left


def _files_and_dirs(cache: Path) -> Iterator[Path]:
    for top, dirs, files in os.walk(cache):  # links not followed: the shared cache is not ours
        if Path(top) == cache:
            dirs[:] = [d for d in dirs if d != "runs"]
        for name in dirs + files:
            yield Path(top) / name
