"""A saved guest that cannot be loaded is removed and the guest boots cold, saying why in
QEMU's own words; one that is only slow to load is kept. Real QEMU on a snapshot of a cache
of our own (the shared cache's snapshots serve other runs): its kernels and images are the
shared cache's, linked."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import paths
from tests.helpers import REPO, children_named, harness_cmd, run_harness

QEMU = "qemu-system-x86_64"


@pytest.fixture
def own_cache() -> Iterator[dict[str, str]]:
    """The environment of a harness whose snapshots (and runs) are its own; short paths: a
    QMP socket lives in the run directory (< 108 bytes)."""
    real = paths.cache_dir()
    cache = Path(tempfile.mkdtemp(prefix="ksm-snap-"))
    for entry in real.iterdir():
        if entry.name not in ("snapshots", "runs"):
            (cache / entry.name).symlink_to(entry)
    yield {"KSM_HARNESS_CACHE": str(cache)}
    shutil.rmtree(cache, ignore_errors=True)


def _snapshot(env: dict[str, str]) -> Path:
    snaps = [p for p in (Path(env["KSM_HARNESS_CACHE"]) / "snapshots").iterdir() if p.is_dir()]
    assert len(snaps) == 1, snaps
    return snaps[0]


def _boot(env: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    return run_harness("boot", "--numa", "1", *extra, "--", "true", env=env, timeout=600)


def _saved(env: dict[str, str]) -> Path:
    r = _boot(env)
    assert r.returncode == 0 and "saved the ready guest" in r.stderr, r.stderr
    return _snapshot(env)


def test_a_snapshot_cut_short_is_removed_and_the_guest_boots_cold(
        own_cache: dict[str, str]) -> None:
    snap = _saved(own_cache)
    ram = snap / "ram0"
    size = ram.stat().st_size
    os.truncate(ram, size // 2)
    r = _boot(own_cache)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    said = [ln for ln in r.stderr.splitlines() if "snapshot" in ln and "saved the" not in ln]
    assert len(said) == 1 and "does not match" in said[0], r.stderr  # QEMU's own words
    # removed, and the cold boot saved a whole one in its place
    assert _snapshot(own_cache) == snap and ram.stat().st_size == size
    r = _boot(own_cache)
    assert r.returncode == 0 and "snapshot" not in r.stderr, r.stderr  # restored, silently


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_a_restore_that_is_only_slow_keeps_the_snapshot(own_cache: dict[str, str]) -> None:
    snap = _saved(own_cache)
    before = {p.name: p.stat().st_ino for p in snap.iterdir()}
    proc = subprocess.Popen(harness_cmd("boot", "--numa", "1", "--boot-timeout", "4", "--",
                                        "true"), cwd=REPO, env={**os.environ, **own_cache},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stopped: list[int] = []
    try:
        end = time.monotonic() + 60
        while not stopped and time.monotonic() < end and proc.poll() is None:
            for pid in children_named(proc.pid, QEMU):
                if b"-incoming" not in _cmdline(pid):
                    continue  # not the guest's QEMU (e.g. `qemu-system-x86_64 --version`)
                os.kill(pid, signal.SIGSTOP)  # the restoring QEMU freezes: slow, not broken
                stopped.append(pid)
            time.sleep(0.005)
        assert stopped, "no QEMU to stop"
        _out, err = proc.communicate(timeout=300)
    finally:
        for pid in stopped:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in err, err
    assert snap.is_dir() and {p.name: p.stat().st_ino for p in snap.iterdir()} == before, err
