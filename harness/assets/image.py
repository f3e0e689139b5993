"""The guest image: built once from a recipe in guest-images/, cached by the recipe's hash,
and only ever used through a throw-away qcow2 overlay so the cached base is never written.

No loop mount: mmdebstrap fills a directory, `mkfs.ext4 -d` turns it into a file system.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

from harness import deps, progress
from harness.assets.atomic import building, usable
from harness.errors import ImageError
from harness.paths import REPO, cache_dir

RECIPE_DIR = REPO / "guest-images"
DEFAULT_RECIPE = RECIPE_DIR / "bookworm.toml"
BUILDER_VERSION = "1"  # bump when the build steps below change

Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def recipe_hash(recipe: Path = DEFAULT_RECIPE) -> str:
    h = hashlib.sha256(BUILDER_VERSION.encode())
    for part in (recipe, RECIPE_DIR / "customize.sh"):
        h.update(part.read_bytes())
    return h.hexdigest()[:16]


def image_path(recipe: Path = DEFAULT_RECIPE) -> Path:
    return cache_dir() / "images" / f"{recipe.stem}-{recipe_hash(recipe)}.qcow2"


def ensure(recipe: Path = DEFAULT_RECIPE, log: Log = _stderr) -> Path:
    """The cached base image for ``recipe``, built first if needed (or again if damaged)."""
    out = image_path(recipe)
    if usable(out, "guest image", log):
        return out
    with building(out) as tmp:  # parallel runs (xdist, two terminals) build it once
        if tmp is not None:
            build(recipe, tmp, log)
    return out


def _stream(cmd: list[str], log: Log, prefix: str) -> None:
    """Run a build step with its progress visible, and its tail kept for the error."""
    tail: list[str] = []
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        tail = (tail + [line])[-8:]
        if line.startswith(("E:", "W:")) or (line.startswith("I:") and progress.enabled()):
            log(f"{prefix} {line}")
    if proc.wait() != 0:
        raise ImageError(f"{cmd[0]} failed (exit {proc.returncode}): " + " | ".join(tail[-3:]))


def build(recipe: Path, out: Path, log: Log = _stderr) -> None:
    deps.ensure(["mmdebstrap", "mkfs.ext4", "qemu-img"])
    spec = tomllib.loads(recipe.read_text())
    work = out.parent / f"build-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    rootdir = work / "root"
    t0 = time.monotonic()
    log(f"ksm-harness: building guest image {image_path(recipe).name} from {recipe.name} "
        "(once; takes about a minute)")
    try:
        cmd = ["mmdebstrap", "--variant=apt", "--mode=root" if os.geteuid() == 0 else "--mode=unshare",
               "--aptopt=APT::Install-Recommends \"false\"",
               "--include=" + ",".join(spec["packages"]),
               f"--customize-hook={RECIPE_DIR / 'customize.sh'} \"$1\""]
        cmd += [f"--dpkgopt=path-exclude={p}" for p in spec.get("exclude_paths", [])]
        cmd += [spec.get("suite", "bookworm"), str(rootdir)]
        _stream(cmd, log, "  mmdebstrap")
        raw = work / "root.ext4"
        log(f"ksm-harness: mkfs.ext4 -d ({time.monotonic() - t0:.0f}s so far)")
        _stream(["mkfs.ext4", "-q", "-F", "-L", "ksm-root", "-E", "root_owner=0:0",
                 "-d", str(rootdir), str(raw), f"{spec.get('size_mb', 2048)}M"], log, "  mkfs")
        tmp = work / "base.qcow2"
        _stream(["qemu-img", "convert", "-O", "qcow2", str(raw), str(tmp)], log, "  qemu-img")
        tmp.replace(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log(f"ksm-harness: guest image ready in {time.monotonic() - t0:.0f}s")


def overlay(base: Path, dest: Path) -> Path:
    """A copy-on-write overlay; QEMU opens the backing file read-only through it."""
    deps.ensure(["qemu-img"])
    r = subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base.resolve()),
                        "-F", "qcow2", str(dest)], capture_output=True, text=True)
    if r.returncode != 0:
        raise ImageError(f"qemu-img create overlay failed: {r.stderr.strip()}")
    return dest


def check(path: Path) -> None:
    """A broken or foreign image gets one clear line, not a guest that never boots."""
    r = subprocess.run(["qemu-img", "info", "--output=json", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise ImageError(f"{path}: not a usable disk image: {r.stderr.strip().splitlines()[-1:]}")
