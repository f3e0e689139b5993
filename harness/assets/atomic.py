"""Build a cached artefact once, whoever asks at the same time (two first runs, xdist
workers): an flock per artefact, a re-check under it, a temporary name of this process's
own in the same directory, and an atomic rename (os.replace) onto the final name.

Each artefact built gets a record beside it (``.<name>.sum``: its size and a checksum),
written before the rename, and ``usable()`` checks it before use: a cached file cut short
or overwritten (a full disk, a crash, a hand) is named in one line, removed and rebuilt,
instead of failing every later run the same way ("cannot mount root disk").

The checksum is sha256 of the whole file up to 8 MiB; above that, of its first and last
MiB and 16 blocks of 64 KiB spread between, with its size. Hashing whole files cost 1.6 s
for the 505 MiB module disk and 0.56 s for the 189 MiB image at every boot (page cache
warm, this host); the samples cost ~2-5 ms per file. They catch a file cut short (its size)
and damage at its head or tail (headers, superblock, tables), not every flipped byte in
between. A directory's checksum covers every file's path and size."""
from __future__ import annotations

import fcntl
import hashlib
import os
import secrets
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from harness import faultpoints

WHOLE = 8 << 20  # files up to this size are hashed whole
EDGE, BLOCK, BLOCKS = 1 << 20, 64 << 10, 16  # sampled: head and tail, blocks between


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
                _write_record(out, digest(tmp))  # first: a record alone means "rebuild"
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


def record_path(out: Path) -> Path:
    return out.with_name(f".{out.name}.sum")


def digest(path: Path) -> str:
    """``size:sha256`` of a file (sampled above WHOLE, see above), or of a directory's list
    of files and their sizes."""
    if path.is_dir():  # a link to one too (the fault matrix's private caches)
        h = hashlib.sha256()
        total = 0
        for top, _dirs, files in sorted(os.walk(path)):
            for name in sorted(files):
                f = Path(top) / name
                size = f.lstat().st_size
                total += size
                h.update(f"{f.relative_to(path)}\0{size}\0".encode())
        return f"{total}:{h.hexdigest()}"
    size = path.stat().st_size
    with open(path, "rb") as fh:
        if size <= WHOLE:
            return f"{size}:{hashlib.file_digest(fh, 'sha256').hexdigest()}"
        h = hashlib.sha256()
        for i in range(BLOCKS + 2):
            at = 0 if i == 0 else size - EDGE if i == BLOCKS + 1 else size * i // (BLOCKS + 1)
            fh.seek(at)
            h.update(fh.read(EDGE if i in (0, BLOCKS + 1) else BLOCK))
        return f"{size}:{h.hexdigest()}"


def record(out: Path) -> None:
    """Record ``out`` as it is now (an artefact made without ``building``)."""
    _write_record(out, digest(out))


def _write_record(out: Path, value: str) -> None:
    tmp = out.with_name(f".{out.name}.sum.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        tmp.write_text(value + "\n")
        os.replace(tmp, record_path(out))
    finally:
        tmp.unlink(missing_ok=True)


def recorded(out: Path) -> str | None:
    """The record of ``out`` (``size:sha256``), None when it has none."""
    try:
        return record_path(out).read_text().strip() or None
    except FileNotFoundError:
        return None


def damage(out: Path) -> str | None:
    """What is wrong with ``out`` against its record, None when nothing is. An artefact with
    no record (made by a harness before records) is taken as it is and recorded now."""
    got = digest(out)
    if recorded(out) is None:
        try:
            with open(lock_path(out), "a") as lock:  # not while a builder writes its record
                fcntl.flock(lock, fcntl.LOCK_EX)
                try:
                    if recorded(out) is None:
                        _write_record(out, got)
                finally:
                    fcntl.flock(lock, fcntl.LOCK_UN)
        except OSError:  # a read-only or full cache: used unchecked, as before records
            return None
    return _mismatch(got, recorded(out))


def _mismatch(got: str, want: str | None) -> str | None:
    if want is None or got == want:
        return None
    size, want_size = int(got.partition(":")[0]), int(want.partition(":")[0])
    if size < want_size:
        return f"truncated: {size} bytes of the {want_size} it had when built"
    if size > want_size:
        return f"{size} bytes where it had {want_size} when built"
    return "corrupted: its checksum is not the one recorded when it was built"


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def usable(out: Path, what: str, log: Callable[[str], None] = _stderr) -> bool:
    """True when ``out`` exists and matches its record. A damaged one is named in one line
    and removed (under its lock, if it is still damaged then: another process may have
    rebuilt it meanwhile), with its record: False, build it again."""
    if not out.exists():
        return False
    why = damage(out)
    if why is None:
        return True
    with open(lock_path(out), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if out.exists() and _mismatch(digest(out), recorded(out)) is None:
                return True  # rebuilt by another process meanwhile
            _remove(out)
            record_path(out).unlink(missing_ok=True)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    log(f"ksm-harness: cached {what} {out} is damaged ({why}); removed, rebuilding it")
    return False
