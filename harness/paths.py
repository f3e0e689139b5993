"""Where the harness keeps things: a persistent cache and one directory per run."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import BinaryIO

REPO = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    """Kernels, images and built workloads, reused across runs (``KSM_HARNESS_CACHE``)."""
    base = os.environ.get("KSM_HARNESS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ksm-harness")
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path


def runs_root() -> Path:
    """Per-run temporary state (overlays, sockets, keys, console logs)."""
    path = Path(os.environ.get("KSM_HARNESS_RUNS") or cache_dir() / "runs")
    path.mkdir(parents=True, exist_ok=True)
    return path


def new_run_dir(prefix: str = "run") -> Path:
    """A fresh directory for one harness process; its name carries our PID so a later run
    can tell whether its owner is still alive (see ``harness.reaper``)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = runs_root() / f"{prefix}-{stamp}-{os.getpid()}"
    path.mkdir(parents=True, exist_ok=False, mode=0o700)
    path.chmod(0o700)  # the umask may have taken more; never less than ours alone
    return path


def private_dir(path: Path) -> Path:
    """Make (or tighten) a directory only we can enter: a run's initrd holds the guest's
    private host key and its console log what the guest printed."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)
    return path


def open_private(path: Path, append: bool = False) -> BinaryIO:
    """Open ``path`` for writing as mode 0600 (tightened if it already existed)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "ab" if append else "wb", buffering=0 if append else -1)
