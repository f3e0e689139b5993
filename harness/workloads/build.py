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
    """Compile every ``sources/*.c`` statically into ``cache_dir``; return ksmwork's path.

    Binaries are kept under a key made of the sources, the flags and the gcc version, so they
    are rebuilt only when one of those changes."""
    return build_all(cache_dir, sources)[MAIN_PROGRAM]


def build_all(cache_dir: Path, sources: Path = WORKLOADS_DIR) -> dict[str, Path]:
    """Like :func:`build`, returning every program by name (the .c file's stem)."""
    c_files = sorted(sources.glob("*.c"))
    if not c_files:
        raise BuildError(f"no workload sources (*.c) in {sources}")
    gcc = _require_gcc()
    out_dir = Path(cache_dir) / f"workloads-{_build_key(gcc, c_files)}"
    out_dir.mkdir(parents=True, exist_ok=True)
    built = {}
    for src in c_files:
        target = out_dir / src.stem
        if not _is_executable(target):
            _compile(gcc, src, target)
        built[src.stem] = target
    return built


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


def _build_key(gcc: str, c_files: list[Path]) -> str:
    version = subprocess.run([gcc, "--version"], capture_output=True, text=True,
                             check=False, timeout=30).stdout
    digest = hashlib.sha256()
    digest.update(version.encode())
    digest.update(" ".join(CFLAGS).encode())
    for src in c_files:
        digest.update(src.name.encode() + b"\0" + src.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _compile(gcc: str, src: Path, target: Path) -> None:
    # Compile to a temporary name and rename: concurrent builds never see half a binary.
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    try:
        result = subprocess.run([gcc, *CFLAGS, "-o", tmp, str(src)], capture_output=True,
                                text=True, check=False, timeout=300)
        if result.returncode != 0:
            text = result.stderr + result.stdout
            if re.search(r"fatal error: \S+\.h: No such file|cannot find -lc\b", text):
                raise MissingPackageError(
                    f"C headers or static libc missing to build {src.name}: {APT_INSTALL}")
            tail = " | ".join(text.strip().splitlines()[-5:])
            raise BuildError(f"gcc failed on {src}: {tail}")
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


