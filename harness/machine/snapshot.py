"""Guests started from a snapshot instead of a boot.

The first boot of a (kernel, topology, command line, image, QEMU, harness) saves the ready
guest: QEMU's migration stream to a file (``stop``, ``migrate exec:cat > state``), a copy of
its root overlay and its initrd, and the console text of its boot. Every later guest of the
same key is a restore: a QEMU with the same machine and ``-incoming exec:cat state``, on its
own copy-on-write overlay of the saved disk, its own forwarded port and QMP socket; then,
through the serial console's root shell, the guest gets this run's SSH keys (the snapshot's
are never used again), the host's clock, and a restarted sshd.

Why a migration stream and not a qcow2 internal snapshot (``savevm``): it needs no writable
shared disk (every restored guest has its own overlay over one read-only saved disk), and the
saved memory holds only the pages the guest touched (zero pages are not written): ~130 MB for
a 2 GiB guest after boot, loaded in ~0.5-1.5 s under TCG.

Boot-time kernel messages are checked once, when the snapshot is made; they are written at
the top of every restored guest's console log, so the log still tells the whole story.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from harness import paths
from harness.assets import initramfs

FORMAT = "1"  # bump when what a snapshot holds changes
STATE, DISK, INITRD, CONSOLE = "state", "disk.qcow2", "initrd.img", "boot-console.log"


@cache
def qemu_version(binary: str = "qemu-system-x86_64") -> str:
    r = subprocess.run([binary, "--version"], capture_output=True, text=True)
    return r.stdout.splitlines()[0] if r.returncode == 0 and r.stdout else "unknown"


def key(argv: list[str], run_dir: Path, inputs: dict[str, bytes]) -> str:
    """What a saved guest depends on: QEMU's command line with this run's paths and port
    left out (kernel, image, topology, kernel command line stay in), QEMU's version, and
    the content of every file the initramfs set the guest up from, keys excepted."""
    h = hashlib.sha256(f"{FORMAT}\n{qemu_version(argv[0])}\n".encode())
    for arg in argv:
        arg = arg.replace(str(run_dir), "RUN")
        if "hostfwd=" in arg:
            arg = arg.split("hostfwd=")[0]
        h.update(arg.encode() + b"\0")
    for name in sorted(inputs):
        h.update(name.encode() + b"\0" + inputs[name] + b"\0")
    h.update((initramfs.INIT_DIR / "initramfs-init.sh").read_bytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class Snapshot:
    dir: Path

    @property
    def state(self) -> Path:
        return self.dir / STATE

    @property
    def disk(self) -> Path:
        return self.dir / DISK

    @property
    def initrd(self) -> Path:
        return self.dir / INITRD

    @property
    def console(self) -> Path:
        return self.dir / CONSOLE

    def complete(self) -> bool:
        return all(p.is_file() for p in (self.state, self.disk, self.initrd, self.console))

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def root() -> Path:
    path = paths.cache_dir() / "snapshots"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def find(k: str) -> Snapshot | None:
    snap = Snapshot(root() / k)
    return snap if snap.complete() else None


@contextmanager
def locked(k: str) -> Iterator[Snapshot | None]:
    """Hold the key's lock while making a snapshot: yields None when another process made
    it meanwhile (or is making it), else the place to write it."""
    lock = root() / f"{k}.lock"
    with open(lock, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield None
            return
        if find(k) is not None:
            yield None
            return
        tmp = root() / f"{k}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(mode=0o700)
        try:
            yield Snapshot(tmp)
            if Snapshot(tmp).complete():
                os.replace(tmp, root() / k)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def wait_migration(command: Callable[..., Any], timeout: float) -> str:
    """Poll query-migrate (``command`` is QMP.command) until it completed or failed; the
    final status."""
    end = time.monotonic() + timeout
    status = "unknown"
    while time.monotonic() < end:
        status = str(command("query-migrate").get("status"))
        if status in ("completed", "failed", "cancelled"):
            return status
        time.sleep(0.05)
    return f"{status} after {timeout:.0f}s"


def restore_script(authorized_key: str, host_key: bytes, host_pub: str, epoch: float) -> str:
    """The console command (one line: a multi-line command would interleave the shell's
    continuation prompts with its output) that makes a restored guest this run's: new SSH
    keys (the snapshot's stay unused), the host's clock, sshd restarted on them."""
    private = host_key.decode().strip().replace("\n", "\\n")
    for text in (authorized_key, private, host_pub):
        assert "'" not in text and "\n" not in text
    return (
        "umask 077; "
        f"printf '%s\\n' '{authorized_key}' > /run/ksm/authorized_keys; "
        f"printf '%b\\n' '{private}' > /run/ksm/ssh_host_ed25519_key; "
        f"printf '%s\\n' '{host_pub}' > /run/ksm/ssh_host_ed25519_key.pub; "
        f"date -s @{epoch:.3f} >/dev/null; "
        "read pid < /run/sshd.pid; kill $pid; while kill -0 $pid 2>/dev/null; do :; done; "
        "/usr/sbin/sshd -r -f /run/ksm/sshd_config"
    )
