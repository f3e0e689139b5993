"""Build the guest workloads on the host (static C, cached by content) and upload them."""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from harness import paths
from harness.access.remote import Runner, quote
from harness.errors import HarnessError, MissingPackageError

WORKLOADS_DIR = paths.REPO / "workloads"
PY_WORKER_SOURCE = WORKLOADS_DIR / "ksm_py_worker.py"
GUEST_DIR = "/opt/ksm"
GUEST_BINARY = f"{GUEST_DIR}/ksmwork"
GUEST_PY_WORKER = f"{GUEST_DIR}/ksm_py_worker.py"
MAIN_PROGRAM = "ksmwork"
CFLAGS = ("-static", "-O2", "-Wall", "-Wextra", "-Werror")
APT_INSTALL = "apt-get install -y gcc libc6-dev"


class BuildError(HarnessError):
    """A workload did not compile (with gcc and libc6-dev present)."""


# ---- building ----

def build(cache_dir: Path, sources: Path = WORKLOADS_DIR) -> Path:
    """Compile the programs of ``sources`` statically into ``cache_dir``; return ksmwork's path.

    Binaries are kept under a key made of the sources (every ``*.c`` and ``*.h``), the flags
    and the gcc version, so they are rebuilt only when one of those changes."""
    return build_all(cache_dir, sources)[MAIN_PROGRAM]


def build_all(cache_dir: Path, sources: Path = WORKLOADS_DIR) -> dict[str, Path]:
    """Like :func:`build`, returning every program by name (see :func:`programs`)."""
    c_files = sorted(sources.glob("*.c"))
    if not c_files:
        raise BuildError(f"no workload sources (*.c) in {sources}")
    gcc = _require_gcc()
    key = _build_key(gcc, sorted([*c_files, *sources.glob("*.h")]))
    out_dir = Path(cache_dir) / f"workloads-{key}"
    out_dir.mkdir(parents=True, exist_ok=True)
    built = {}
    for name, units in programs(c_files).items():
        target = out_dir / name
        if not _is_executable(target):
            _compile(gcc, units, target)
        built[name] = target
    return built


def programs(c_files: list[Path]) -> dict[str, list[Path]]:
    """Program name -> its translation units, ``NAME.c`` first. ``A_B.c`` is a part of
    program ``A`` (linked into it, one file per command family) when ``A.c`` exists, else a
    program of its own; with several such prefixes the shortest one owns it."""
    stems = {src.stem for src in c_files}

    def owner(stem: str) -> str:
        parts = stem.split("_")
        return next((prefix for prefix in ("_".join(parts[:i]) for i in range(1, len(parts)))
                     if prefix in stems), stem)

    found: dict[str, list[Path]] = {}
    for src in sorted(c_files, key=lambda p: (owner(p.stem) != p.stem, p.name)):
        found.setdefault(owner(src.stem), []).append(src)
    return found


def install(guest: Runner, cache_dir: Path, guest_dir: str = GUEST_DIR) -> tuple[str, str]:
    """Build if needed and upload ksmwork and the Python worker into ``guest_dir``; returns
    their guest paths (GUEST_BINARY, GUEST_PY_WORKER with the default directory)."""
    binary = build(cache_dir)
    guest.run(f"mkdir -p {quote(guest_dir)}", timeout=30, check=True)
    paths = (f"{guest_dir}/{MAIN_PROGRAM}", f"{guest_dir}/{PY_WORKER_SOURCE.name}")
    guest.put(binary, paths[0], 0o755)
    guest.put(PY_WORKER_SOURCE, paths[1], 0o755)
    return paths


def _require_gcc() -> str:
    gcc = shutil.which("gcc")
    if gcc is None:
        raise MissingPackageError(f"gcc is needed to build the guest workloads: {APT_INSTALL}")
    libc = subprocess.run([gcc, "-print-file-name=libc.a"], capture_output=True, text=True,
                          check=False, timeout=30).stdout.strip()
    if not os.path.isabs(libc):  # gcc echoes the bare name when it cannot find it
        raise MissingPackageError(
            f"static libc (libc.a) is needed to build the guest workloads: {APT_INSTALL}")
    return gcc


def _build_key(gcc: str, files: list[Path]) -> str:
    version = subprocess.run([gcc, "--version"], capture_output=True, text=True,
                             check=False, timeout=30).stdout
    digest = hashlib.sha256()
    digest.update(version.encode())
    digest.update(" ".join(CFLAGS).encode())
    for src in files:
        digest.update(src.name.encode() + b"\0" + src.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _own_header(name: str | None, units: list[Path]) -> bool:
    """Whether a header gcc did not find is one of ours (``#include "name"``), not libc's."""
    return name is not None and any(f'#include "{name}"' in src.read_text() for src in units)


def _compile(gcc: str, units: list[Path], target: Path) -> None:
    # Compile to a temporary name and rename: concurrent builds never see half a binary.
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    try:
        result = subprocess.run([gcc, *CFLAGS, "-o", tmp, *map(str, units)],
                                capture_output=True, text=True, check=False, timeout=300)
        if result.returncode != 0:
            text = result.stderr + result.stdout
            missing = re.search(r"fatal error: (\S+\.h): No such file|cannot find -lc\b", text)
            if missing and not _own_header(missing.group(1), units):
                raise MissingPackageError(
                    f"C headers or static libc missing to build {target.name}: {APT_INSTALL}")
            tail = " | ".join(text.strip().splitlines()[-5:])
            raise BuildError(f"gcc failed on {units[0]}: {tail}")
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


