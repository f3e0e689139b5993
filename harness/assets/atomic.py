"""Build a cached artefact once, whoever asks at the same time (two first runs, xdist
workers): an flock per artefact, a re-check under it, a temporary name of this process's
own in the same directory, and an atomic rename (os.replace) onto the final name."""
from __future__ import annotations

import fcntl
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from harness import faultpoints


def lock_path(out: Path) -> Path:
    return out.with_name(f".{out.name}.lock")


def _tmp_glob(out: Path) -> str:
    return f".{out.name}.tmp-*"


@contextmanager
def building(out: Path) -> Iterator[Path | None]:
    """``with building(out) as tmp:`` then ``if tmp is not None:`` write the artefact to
    ``tmp``. None means ``out`` exists (built before, or by another process while this one
    waited for the lock): use it. When the block ends normally, ``tmp`` (if it was written)
    becomes ``out`` in one rename; when it raises, ``tmp`` is removed. ``out``'s directory
    is created."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path(out), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if out.exists():
                yield None
                return
            # under the lock nobody else writes one: any left is a killed builder's
            for stale in out.parent.glob(_tmp_glob(out)):
                _remove(stale)
            tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
            faultpoints.reached("artefact-build", out.name)
            try:
                yield tmp
            except OSError as exc:
                _remove(tmp)
                if exc.filename is None:  # a write to an open file: name the artefact
                    raise OSError(exc.errno, exc.strerror, str(out)) from None
                raise
            except BaseException:
                _remove(tmp)
                raise
            if tmp.exists():  # the block may decide there is nothing to build
                os.replace(tmp, out)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold ``path``'s lock (the one ``building`` takes) for work that refreshes rather
    than builds once: an apt index brought up to date in place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path(path), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
