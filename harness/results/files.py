"""Report files written whole or not at all: a temporary name beside the file, then a rename,
so a full or read-only disk leaves the previous report (never an empty or cut one) and no
temporary file behind."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def replace_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # ENOSPC of a delayed allocation shows here, not after
        os.chmod(tmp, 0o644)  # mkstemp's 0600; a report is read by CI users
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def replace_text(path: Path, text: str) -> None:
    replace_bytes(path, text.encode("utf-8"))
