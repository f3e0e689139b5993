"""One VM's use of snapshots, across the QEMUs it starts: whether it starts from a saved guest
(and the cold boot when that fails), the RAM files of a cold boot that will save one, loading
the saved guest, saving the ready one. What a snapshot holds and the QMP steps are snapshot.py's;
vm.py calls these at the points of its lifecycle."""
from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import paramiko

from harness.assets import image, keys
from harness.console.reader import Console
from harness.errors import VMError
from harness.machine import snapshot
from harness.machine.qemu import QemuConfig
from harness.machine.qmp import QMP, QMPError

SECRET_FILES = ("authorized_keys", "ssh_host_ecdsa_key", "ssh_host_ecdsa_key.pub")
Logins = tuple[paramiko.PKey, paramiko.PKey]  # (client key, host key) to log into the guest


def qemu_said(console: Console | None, wait: float = 1.0) -> str | None:
    """QEMU's last error line on the console (its stderr), e.g. "backing store ... size
    0x20000000 does not match 'size' option 0x40000000"; the reader may still be reading
    what a QEMU that just exited wrote, hence ``wait``."""
    end = time.monotonic() + wait
    while console is not None:
        said = [ln.strip() for ln in console.tail(20).splitlines()
                if ln.startswith("qemu-system")]
        if said or time.monotonic() > end:
            return said[-1].split(": ", 1)[-1] if said else None
        time.sleep(0.05)
    return None


class Restore:
    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log
        self.key: str | None = None  # None: this VM neither starts from nor saves a snapshot
        self.restored: snapshot.Snapshot | None = None  # the snapshot this guest started from
        self._ram_dir: Path | None = None  # RAM files of a guest that makes a snapshot

    def keyed(self, argv: list[str], run_dir: Path, files: dict[str, tuple[bytes, int]]) -> None:
        """Take the snapshot key of a prepared VM: its QEMU command line and the files its
        initramfs sets the guest up from (SSH keys left out)."""
        self.key = snapshot.key(
            argv, run_dir, {n: v for n, (v, _) in files.items() if n not in SECRET_FILES})

    def configure(self, prepare: Callable[[], QemuConfig], overlay: Path,
                  console_log: Path) -> tuple[QemuConfig, Logins | None]:
        """``prepare()`` the VM and, when a snapshot of its key is saved, point the config at
        it; the saved boot's SSH keys, None for a cold boot. An unusable snapshot is removed
        and the VM prepared again, to boot cold and save a new one."""
        cfg = prepare()
        snap = snapshot.find(self.key) if self.key else None
        if snap is None:
            return cfg, None
        try:
            return cfg, self._use(cfg, snap, overlay, console_log)
        except (OSError, ValueError, paramiko.SSHException) as exc:  # unreadable keys
            self.log(f"ksm-harness: the snapshot is unusable ({exc}); booting cold and "
                     "saving a new one")
            snap.remove()
            self.restored = None
            return prepare(), None

    def _use(self, cfg: QemuConfig, snap: snapshot.Snapshot, overlay: Path,
             console_log: Path) -> Logins:
        """Start from ``snap``: its own overlay of the saved disk, the saved initrd (the
        machine must match the saved one), the saved boot at the top of the log."""
        # the saved guest's sshd knows only the keys it was booted with
        logins = (keys.load(snap.client_key.read_bytes()), keys.load(snap.host_key.read_bytes()))
        overlay.unlink(missing_ok=True)
        image.overlay(snap.disk, overlay)
        cfg.initrd = snap.initrd
        cfg.ram_dir, cfg.ram_shared = snap.dir, False  # the saved RAM, copy-on-write
        # the stream is loaded once QMP has set x-ignore-shared (load)
        cfg.extra_args = [*cfg.extra_args, "-incoming", "defer"]
        console_log.write_bytes(snap.console.read_bytes())
        self.restored = snap
        return logins

    def give_up(self, why: VMError, gone: str | None, console: Console | None,
                killed: bool = False) -> None:
        """The restore failed; the VM boots cold. QEMU ``gone`` (why, else None): it refused
        the snapshot (a RAM file cut short, a stream it cannot read, ...) and said why on
        its stderr, the console: the snapshot is removed and the cold boot saves a new one.
        QEMU still there: the restore was only slow (a loaded host, a stopped QEMU), which
        says nothing against the snapshot: it is kept, and this VM saves none. QEMU
        ``killed`` by a signal from outside (SIGKILL, ...) refused nothing: kept too."""
        snap, self.restored = self.restored, None
        if killed:
            self.log(f"ksm-harness: the saved guest's QEMU was killed while loading ({gone}); "
                     "booting cold (the snapshot is kept)")
            self.key = None
            return
        if gone is None:
            self.log(f"ksm-harness: the saved guest did not load in time ({why}); booting "
                     "cold (the snapshot is kept)")
            self.key = None
            return
        cause = qemu_said(console) or gone
        self.log(f"ksm-harness: removed a snapshot QEMU could not load ({cause}); booting "
                 "cold and saving a new one")
        if snap is not None:
            snap.remove()

    def ram_for_saving(self, cfg: QemuConfig) -> None:
        """A cold boot that will save a snapshot keeps its RAM in shared files, so that the
        snapshot's migration stream can leave RAM out (snapshot.py). Called for every new
        QEMU: fresh, zeroed RAM files."""
        if self.key is None or self.restored is not None:
            return
        self.cleanup()  # the files of the QEMU this one replaces
        self._ram_dir = snapshot.ram_dir(cfg.topology.mem_mb)
        if self._ram_dir is None:
            self.log("ksm-harness: no snapshot will be saved: neither /dev/shm nor the cache "
                     f"has {cfg.topology.mem_mb} MiB free for the guest's RAM")
            self.key = None
            return
        cfg.ram_dir, cfg.ram_shared = self._ram_dir, True

    def load(self, qmp: QMP, deadline: float, alive: Callable[[], str | None],
             console: Console) -> None:
        """Load the saved guest into the QEMU started for it and resume it (QMPError, or
        VMError when it does not load by ``deadline``)."""
        assert self.restored is not None
        snapshot.load(self.restored, qmp.command)
        status = qmp.status()
        while status in ("inmigrate", "prelaunch") and time.monotonic() < deadline:
            if alive():
                break
            time.sleep(0.02)
            status = qmp.status()
        if status not in ("paused", "running", "postmigrate"):
            raise VMError(f"the saved guest did not load (QEMU status {status}; "
                          f"{alive() or 'running'}): {console.tail(5)}")
        if status != "running":
            qmp.command("cont")

    def save(self, qmp: QMP | None, cfg: QemuConfig | None, console: Console | None,
             disk: Path, private_keys: tuple[bytes, bytes]) -> None:
        """Save the ready guest of a cold boot for later VMs of the same key (pause, migrate
        to a file, copy the disk and initrd, resume); a failure only costs the speed-up."""
        if self.key is None or qmp is None or console is None or cfg is None:
            return
        t0 = time.monotonic()
        with snapshot.locked(self.key) as snap:
            if snap is None:
                return
            try:
                status = snapshot.save(snap, qmp.command, ram=cfg.ram_files(), disk=disk,
                                       initrd=cfg.initrd, console_text=console.text(),
                                       keys=private_keys)
            except (QMPError, OSError, subprocess.CalledProcessError) as exc:
                self.log(f"ksm-harness: no snapshot saved: {exc}")
                return
            if status != "completed":
                self.log(f"ksm-harness: no snapshot saved: migration {status}")
                return
            size = sum(p.stat().st_blocks * 512 for p in snap.dir.iterdir()) >> 20
        self.log(f"ksm-harness: saved the ready guest ({size} MiB, {time.monotonic() - t0:.1f}s):"
                 " later guests of this kernel and topology start from it")

    def cleanup(self) -> None:
        """Remove the RAM files of a guest that made (or was to make) a snapshot."""
        if self._ram_dir is not None:
            shutil.rmtree(self._ram_dir, ignore_errors=True)
            self._ram_dir = None
