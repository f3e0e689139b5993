"""Guests started from a snapshot instead of a boot.

The first boot of a (kernel, topology, command line, image, QEMU, harness) saves the ready
guest: QEMU's migration stream to a file (``stop``, ``migrate exec:cat > state``), a copy of
its root overlay and its initrd, and the console text of its boot. Every later guest of the
same key is a restore: a QEMU with the same machine and ``-incoming exec:cat state``, on its
own copy-on-write overlay of the saved disk, its own forwarded port and QMP socket. The
saved guest's sshd is already listening with the keys it was booted with, which the snapshot
keeps beside its initrd (that holds them too, mode 0600 in a 0700 cache): the restored guest
is logged into with them at once, and its first command sets the host's clock. Making new
keys through the serial console and restarting sshd cost ~0.8 s of a ~1.8 s restore under
TCG, for no isolation gained: every guest is on 127.0.0.1 with its own port and its host key
pinned.

Why a migration stream and not a qcow2 internal snapshot (``savevm``): it needs no writable
shared disk (every restored guest has its own overlay over one read-only saved disk).

The guest's RAM is not in the stream. The guest that makes a snapshot keeps its RAM in files
(``memory-backend-file,share=on`` in /dev/shm) and migrates with the ``x-ignore-shared``
capability, so the stream holds only device state; the RAM files are then copied, sparse,
beside it. A restored guest maps them copy-on-write (``share=off``): pages come in from the
host's page cache when the guest first touches them, and many guests share them. Loading the
~120 MB of RAM through the stream cost 0.25-0.5 s of every restore under TCG, 2-3 s once the
stream had left the page cache; now the state loads in ~0.04 s. This is the technique of VM
templating (Kata Containers).

Boot-time kernel messages are checked once, when the snapshot is made; they are written at
the top of every restored guest's console log, so the log still tells the whole story.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from harness import faultpoints, paths
from harness.assets import atomic, initramfs

FORMAT = "3"  # bump when what a snapshot holds changes
STATE, DISK, INITRD, CONSOLE = "state", "disk.qcow2", "initrd.img", "boot-console.log"
CLIENT_KEY, HOST_KEY = "client_key", "host_key"  # OpenSSH private keys of the saved boot
# RAM files of the guest that makes a snapshot: tmpfs, so its pages are never written back
# to a disk while it goes on to run tests
SHM = Path("/dev/shm")
IGNORE_SHARED = [{"capability": "x-ignore-shared", "state": True}]


@cache
def qemu_version(binary: str = "qemu-system-x86_64") -> str:
    try:  # every wait has a timeout: a QEMU that never answers is no version
        r = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "unknown"
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
    for record in artefacts(argv):
        h.update(record.encode() + b"\0")
    return h.hexdigest()[:16]


def artefacts(argv: list[str]) -> list[str]:
    """The records (atomic.py: size and checksum) of the cached files QEMU's command line
    names, the base images under its qcow2 overlays included: a restored guest goes on
    reading its module disk and root image, so an artefact rebuilt since (same path, new
    bytes) must not get the old guest: its new record makes a new key."""
    out = []
    for arg in argv:
        for part in arg.split(","):
            path = Path(part.removeprefix("file="))
            if not (path.is_absolute() and path.is_file()):
                continue
            for file in _backing_chain(path):
                record = atomic.recorded(file)
                if record is not None:
                    out.append(f"{file.name}={record}")
    return out


def _backing_chain(path: Path, depth: int = 8) -> list[Path]:
    """``path`` and the backing files under it, when it is a qcow2 (its header: magic,
    version, then the backing file name's offset and size)."""
    chain = [path]
    while len(chain) <= depth:
        try:
            with open(chain[-1], "rb") as fh:
                head = fh.read(20)
                if len(head) < 20 or head[:4] != b"QFI\xfb":
                    break
                offset, size = int.from_bytes(head[8:16], "big"), int.from_bytes(head[16:20], "big")
                if not offset or not 0 < size < 4096:
                    break
                fh.seek(offset)
                name = fh.read(size).decode(errors="replace")
        except OSError:
            break
        chain.append(chain[-1].parent / name)  # an absolute name stays absolute
    return chain


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

    @property
    def client_key(self) -> Path:
        return self.dir / CLIENT_KEY

    @property
    def host_key(self) -> Path:
        return self.dir / HOST_KEY

    def ram(self, node: int) -> Path:
        return self.dir / f"ram{node}"

    def complete(self) -> bool:
        return all(p.is_file() for p in (self.state, self.disk, self.initrd, self.console,
                                         self.client_key, self.host_key, self.ram(0)))

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


def _free_mb(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize >> 20


def ram_dir(mem_mb: int) -> Path | None:
    """A fresh directory for the RAM files of a guest that will make a snapshot (removed by
    its VM's stop(); one left by a killed harness is removed by the next one): in /dev/shm,
    else in the cache; None when neither has room for all of the guest's RAM (a guest whose
    RAM file hits a full filesystem dies of SIGBUS; a container's /dev/shm is often 64 MB)."""
    for base in (SHM, paths.cache_dir()):
        if not (base.is_dir() and os.access(base, os.W_OK)):
            continue
        for old in base.glob("ksm-harness-ram-*"):
            pid = old.name.split("-")[3]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                shutil.rmtree(old, ignore_errors=True)
        if _free_mb(base) >= mem_mb + 256:
            return Path(tempfile.mkdtemp(prefix=f"ksm-harness-ram-{os.getpid()}-", dir=base))
    return None


RAM_COPY_TIMEOUT = 300  # seconds; ~120 MB touched of RAM copies in about a second here


def copy_ram(files: list[Path], snap: Snapshot) -> None:
    """Copy the stopped guest's RAM files into the snapshot, holes kept (a booted guest has
    touched ~120 MB of its RAM)."""
    for i, src in enumerate(files):
        try:
            r = subprocess.run(["cp", "--sparse=always", str(src), str(snap.ram(i))],
                               capture_output=True, text=True, timeout=RAM_COPY_TIMEOUT)
        except subprocess.TimeoutExpired:  # a hung or starved disk: no snapshot, no hang
            raise OSError(f"copying the guest's RAM into {snap.dir.parent}: not done after "
                          f"{RAM_COPY_TIMEOUT}s") from None
        if r.returncode != 0:  # cp's own words say why (a full cache: "No space left")
            raise OSError(f"copying the guest's RAM into {snap.dir.parent}: "
                          f"{r.stderr.strip() or f'cp exit {r.returncode}'}")


def save(snap: Snapshot, command: Callable[..., Any], *, ram: list[Path], disk: Path,
         initrd: Path, console_text: str, keys: tuple[bytes, bytes]) -> str:
    """Pause the guest (``command`` is QMP.command), write its device state into ``snap``
    and copy its RAM files, disk, initrd, boot console and SSH keys beside it, resume it;
    the migration's final status."""
    command("stop")
    try:
        command("migrate-set-capabilities", capabilities=IGNORE_SHARED)  # RAM: the files
        command("migrate", uri=f"exec:cat > {shlex.quote(str(snap.state))}")
        status = wait_migration(command, 120)
        if status == "completed":
            faultpoints.reached("snapshot-save")
            copy_ram(ram, snap)
            shutil.copyfile(disk, snap.disk)
            shutil.copyfile(initrd, snap.initrd)
            snap.console.write_text(console_text + "\n")
            snap.client_key.write_bytes(keys[0])
            snap.host_key.write_bytes(keys[1])
            for path in (snap.initrd, snap.client_key, snap.host_key):  # secrets
                os.chmod(path, 0o600)
    finally:
        command("cont")
    return status


def load(snap: Snapshot, command: Callable[..., Any]) -> None:
    """Start loading ``snap`` into a QEMU started with ``-incoming defer`` and its RAM
    files (``command`` is QMP.command); QEMU runs the guest once it is loaded."""
    command("migrate-set-capabilities", capabilities=IGNORE_SHARED)
    command("migrate-incoming", uri=f"exec:cat {shlex.quote(str(snap.state))}")


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


def clock_command(epoch: float) -> str:
    """The restored guest's first SSH command: set its clock to the host's ``epoch`` (a
    restored guest's clock goes on from the moment it was saved). A lone simple command:
    the login shell execs it in place, without a fork, which is ~0.03 s under TCG."""
    return f"date -s @{epoch:.3f}"
