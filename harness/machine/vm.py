"""One guest: prepare its throw-away files, start QEMU, wait until SSH works, run commands,
stop it. Nothing here knows KSM."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pexpect

from harness import faultpoints, paths, reaper
from harness.access import console_shell
from harness.access.remote import CommandResult
from harness.access.ssh import SSH, SSHProcess, SSHUnavailable
from harness.assets import image, initramfs, keys
from harness.assets.kernel import Kernel
from harness.console.reader import Console, ConsoleTimeout
from harness.errors import PortTaken, VMError
from harness.machine import snapshot
from harness.machine.accel import Accel
from harness.machine.qemu import GUEST_SYSCTLS, QemuConfig
from harness.machine.qmp import QMP, QMPError
from harness.machine.restore import Restore
from harness.machine.topology import Topology

READY = r"KSM-HARNESS-READY"
QEMU_CRASH_SIGNALS = (signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS, signal.SIGILL)
# signals that end a QEMU from outside (the OOM killer, a user): not the snapshot's fault
KILLED_FROM_OUTSIDE = (signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
RUN_DIR_LOW = 1 << 20  # bytes: less free than this in a run directory is "full"

def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class VMSpec:
    kernel: Kernel
    base_image: Path
    accel: Accel
    topology: Topology = field(default_factory=Topology)
    cmdline: tuple[str, ...] = ()
    sysctls: dict[str, str] = field(default_factory=lambda: dict(GUEST_SYSCTLS))
    boot_timeout: float = 120.0
    name: str = "ksm-guest"
    snapshots: bool = False      # start from a saved guest when one fits (and save one)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VM:
    """Context manager; ``start()`` returns once a command over SSH has succeeded."""

    def __init__(self, spec: VMSpec, run_dir: Path, log: Callable[[str], None] = _log) -> None:
        self.spec = spec
        self.dir = paths.private_dir(run_dir)  # 0700: the initrd holds a private key
        self.log = log
        self._told_full = False  # the run directory's full disk said once
        self.console_log = self.dir / "console.log"
        self.child: pexpect.spawn | None = None
        self.console: Console | None = None
        self.ssh: SSH | None = None
        self.qmp: QMP | None = None
        self.port = 0
        self.timings: dict[str, float] = {}
        self._reaper_key: int | None = None
        self.config: QemuConfig | None = None
        self.stopped = False  # stop() was called: QEMU's exit is ours, not a crash
        self.restore = Restore(log)  # snapshots: started from one, or saving one

    # --- preparation ------------------------------------------------------------------
    def _prepare(self) -> QemuConfig:
        spec = self.spec
        missing = initramfs.missing_boot_drivers(spec.kernel)
        if missing:
            raise VMError(f"kernel {spec.kernel.release} has neither built in nor as modules: "
                          f"{', '.join(missing)} (see guest-images/kernel.config)")
        client, host = keys.generate("ksm-harness"), keys.generate("ksm-guest")
        self._keys = (client, host)
        self._client_key, self._host_key = client.pkey, host.pkey
        sysctl = "".join(f"/proc/sys/{k.replace('.', '/')} {v}\n"
                         for k, v in spec.sysctls.items())
        init_dir = initramfs.INIT_DIR
        files = {
            "guest-init.sh": ((init_dir / "guest-init.sh").read_bytes(), 0o755),
            "sshd_config": ((init_dir / "sshd_config").read_bytes(), 0o644),
            "authorized_keys": ((client.public_line + "\n").encode(), 0o600),
            "ssh_host_ecdsa_key": (host.private_openssh, 0o600),
            "ssh_host_ecdsa_key.pub": ((host.public_line + "\n").encode(), 0o644),
            "sysctl.list": (sysctl.encode(), 0o644),
        }
        overlay = image.overlay(spec.base_image, self.dir / "root-overlay.qcow2")
        for disk in spec.topology.disks:
            with open(self.dir / f"disk-{disk.serial}.raw", "wb") as fh:
                fh.truncate(disk.size_mb * 2**20)
        cfg = QemuConfig(kernel=spec.kernel.boot_image, initrd=self.dir / "initrd.img",
                         root_disk=overlay, module_disk=initramfs.module_disk(spec.kernel),
                         topology=spec.topology, accel=spec.accel.name, ssh_port=0,
                         qmp_socket=self.dir / "qmp.sock", pidfile=self.dir / "qemu.pid",
                         run_dir=self.dir, cmdline_extra=spec.cmdline, name=spec.name)
        # the initramfs finds each disk by serial: it is told which ones are attached
        files["disks.list"] = ("".join(f"{s}\n" for s in cfg.disk_serials()).encode(), 0o644)
        initramfs.compose(spec.kernel, files, cfg.initrd)
        if spec.snapshots:
            self.restore.keyed(cfg.argv(), self.dir, files)
        return cfg

    @property
    def restored(self) -> snapshot.Snapshot | None:
        """The snapshot this guest started from (None: it booted)."""
        return self.restore.restored

    def dry_run(self) -> list[str]:
        cfg = self._prepare()
        cfg.ssh_port = _free_port()
        return cfg.argv()

    # --- lifecycle ----------------------------------------------------------------------
    def _running(self) -> bool:
        """pexpect's isalive(), safe against the race with the console thread: its
        read_nonblocking() calls isalive() too and may reap QEMU first, after which ours
        raises "no child process" (seen once in CI)."""
        if self.child is None:
            return False
        try:
            return bool(self.child.isalive())
        except (pexpect.ExceptionPexpect, ChildProcessError):
            return False

    def _console_line(self) -> str:
        """The console's last line (for the message of a command the guest froze under),
        after what stopped QEMU, if it is stopped."""
        line = self.console.tail(1) if self.console is not None else ""
        frozen = self.frozen()
        return f"[{frozen}] {line.strip()}" if frozen else line

    def frozen(self) -> str | None:
        """Why a QEMU that has not exited makes no progress: it is stopped (SIGSTOP, a
        debugger); None when it is not (or is gone). A stopped QEMU answers neither SSH nor
        QMP, so this is what the harness can say of it."""
        if self.child is None:
            return None
        try:
            stat = Path(f"/proc/{self.child.pid}/stat").read_text()
            state = stat.rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return None
        if state not in ("T", "t"):
            return None
        return f"QEMU {self.child.pid} is stopped (SIGSTOP or a debugger: state {state})"

    def alive(self) -> str | None:
        """None while QEMU runs, else why it is gone."""
        if self.child is None:
            return "QEMU not started"
        if self._running():
            return None
        return f"QEMU exited (status {self.child.exitstatus}, signal {self.child.signalstatus})"

    def wait_exit(self, timeout: float) -> str | None:
        """Wait up to ``timeout`` for QEMU to exit (e.g. after a panic); alive() after."""
        end = time.monotonic() + timeout
        while self.alive() is None and time.monotonic() < end:
            time.sleep(0.05)
        return self.alive()

    def start(self) -> VM:
        self.launch()
        return self.wait_ready()

    def launch(self) -> None:
        """Prepare files and start QEMU without waiting. Call from the main thread: the
        kernel kills QEMU when the thread that forked it exits (PR_SET_PDEATHSIG)."""
        t0 = time.monotonic()
        self.config, logins = self.restore.configure(
            self._prepare, self.dir / "root-overlay.qcow2", self.console_log)
        if logins is not None:
            self._client_key, self._host_key = logins
        self.timings["prepare"] = time.monotonic() - t0
        self.config.ssh_port = self.port = _free_port()
        self._spawn(self.config)

    def wait_ready(self) -> VM:
        """Wait for the guest's ready marker and a working SSH login."""
        assert self.config is not None
        if self.restored is not None:
            try:
                self._wait_restored()
                return self
            except VMError as exc:  # a broken snapshot, or a slow restore: boot cold, once
                # QEMU that refused the snapshot is exiting: a moment to tell from a slow one
                gone = self.wait_exit(2.0)
                sig = self.child.signalstatus if self.child is not None else None
                self.restore.give_up(exc, gone, self.console,
                                     killed=sig is not None and sig in KILLED_FROM_OUTSIDE)
                self._cold_again()
        crashes = 0
        for attempt in range(5):
            try:
                self._wait_ready()
                self.restore.save(self.qmp, self.config, self.console,
                                  self.dir / "root-overlay.qcow2",
                                  (self._keys[0].private_openssh, self._keys[1].private_openssh))
                frozen = self.frozen()
                if frozen:  # stopped while being saved: it would only time out every command
                    raise VMError(f"the guest booted, then {frozen}")
                return self
            except VMError as exc:
                if isinstance(exc, PortTaken) and attempt < 4:
                    self._respawn()  # the port was taken meanwhile: try another
                    continue
                sig = self.child.signalstatus if self.child is not None else None
                if sig in QEMU_CRASH_SIGNALS and crashes == 0 and attempt < 4:
                    # QEMU itself crashed (seen: TCG SIGSEGV, ~1 boot in 60), not the guest
                    crashes += 1
                    self.log(f"ksm-harness: QEMU crashed with signal {sig} while booting; "
                             "booting once more (the crash stays in the console log)")
                    self._respawn()
                    continue
                self.stop()
                raise
        raise VMError("no free port for SSH forwarding after 5 tries")

    def _spawn(self, cfg: QemuConfig) -> None:
        self.restore.ram_for_saving(cfg)  # every new QEMU of a cold boot: fresh RAM files
        argv = cfg.argv()
        (self.dir / "qemu-cmdline.txt").write_text(" ".join(argv) + "\n")
        self.t_spawn = time.monotonic()
        self.child = pexpect.spawn(argv[0], argv[1:], echo=False, timeout=None,
                                   preexec_fn=reaper.die_with_parent, dimensions=(24, 240))
        self._reaper_key = reaper.register(self.stop)
        faultpoints.qemu_started(self.child.pid)
        self.console = Console(self.child, self.console_log)

    def _wait_ready(self) -> None:
        assert self.console is not None
        spec = self.spec
        start = time.monotonic()
        faultpoints.reached("cold-boot")

        def failed() -> str | None:
            why = self.alive()
            if why:
                return why
            lines = self.console.lines if self.console else []
            for line in lines[-20:]:
                if "ksm-initramfs:" in line or "Kernel panic" in line:
                    return line.strip()
            return None

        try:
            self.console.wait_for(READY, spec.boot_timeout, what="the guest's ready marker",
                                  abort=failed)
        except ConsoleTimeout as exc:
            tail = self.console.tail(25)
            if "host forwarding" in tail:
                raise PortTaken("host forwarding rule failed") from None
            frozen = self.frozen()
            raise VMError(f"guest did not boot: {exc.what} after {exc.timeout:.1f}s "
                          f"[{self.spec.accel.name}]{f': {frozen}' if frozen else ''}; "
                          f"console tail:\n{tail}") from None
        self.timings["console_ready"] = time.monotonic() - self.t_spawn
        self.ssh = SSH(self.port, self._client_key, self._host_key)
        self.ssh.console = self._console_line
        self.ssh.qemu_pid = self.child.pid if self.child is not None else None
        try:
            self.ssh.connect(max(5.0, spec.boot_timeout - (time.monotonic() - start)),
                             alive=self.alive)
            self.ssh.run("true", timeout=30, check=True)
        except (SSHUnavailable, Exception) as exc:
            raise VMError(f"guest booted but SSH failed: {exc}; console tail:\n"
                          f"{self.console.tail(25)}") from None
        self.timings["ssh_ready"] = time.monotonic() - self.t_spawn
        self.qmp = QMP(self.config.qmp_socket) if self.config else None
        if self.qmp is not None:
            try:
                self.qmp.connect(5)
            except QMPError:
                self.qmp = None

    def _wait_restored(self) -> None:
        """Load the saved guest, resume it, log in with its keys, set its clock."""
        assert self.config is not None and self.console is not None
        deadline = time.monotonic() + self.spec.boot_timeout
        qmp = QMP(self.config.qmp_socket)
        faultpoints.reached("restore")  # QEMU started on the snapshot, which it may refuse
        try:
            qmp.connect(10)
            self.timings["qmp_connected"] = time.monotonic() - self.t_spawn
            self.restore.load(qmp, deadline, self.alive, self.console)
        except (QMPError, OSError) as exc:  # OSError: QEMU refused the snapshot and quit
            raise VMError(f"QMP while loading the saved guest: {exc}") from None
        self.timings["console_ready"] = time.monotonic() - self.t_spawn
        self.ssh = SSH(self.port, self._client_key, self._host_key)
        self.ssh.console = self._console_line
        self.ssh.qemu_pid = self.child.pid if self.child is not None else None
        try:
            self.ssh.connect(max(5.0, deadline - time.monotonic()), alive=self.alive)
            self.timings["ssh_connected"] = time.monotonic() - self.t_spawn
            self.ssh.run(snapshot.clock_command(time.time()), timeout=30, check=True)
        except (SSHUnavailable, Exception) as exc:
            raise VMError(f"restored guest, but SSH failed: {exc}; console tail:\n"
                          f"{self.console.tail(10)}") from None
        self.timings["ssh_ready"] = time.monotonic() - self.t_spawn
        self.qmp = qmp

    def _cold_again(self) -> None:
        """Give up the restore: a new QEMU that boots the kernel (same run directory)."""
        self._kill()
        self.config = self._prepare()
        self.config.ssh_port = self.port = _free_port()
        self.console_log.unlink(missing_ok=True)
        self._spawn(self.config)

    def _respawn(self) -> None:
        """Kill this QEMU and start it again on a fresh SSH port (same files)."""
        assert self.config is not None
        self._kill()
        self.config.ssh_port = self.port = _free_port()
        self._spawn(self.config)

    def _kill(self) -> None:
        if self.child is not None:
            faultpoints.qemu_stopped(self.child.pid)
        if self._running():
            assert self.child is not None
            self.child.kill(9)
        if self._reaper_key is not None:
            reaper.unregister(self._reaper_key)
            self._reaper_key = None

    def _run_dir_full(self) -> str:
        """What to say when the run directory has no room left: the guest's disk overlay and
        the console log there may have been cut short without a failed write of ours to
        show it; "" when there is room."""
        try:
            st = os.statvfs(self.dir)
        except OSError:
            return ""
        if st.f_bavail * st.f_frsize >= RUN_DIR_LOW:
            return ""
        return (f"the run directory {self.dir} is full: No space left on device "
                f"({st.f_bavail * st.f_frsize // 1024} KiB free) for the console log and the "
                "guest's disk overlay; the guest's I/O errors, if any, are the host's")

    def stop(self, timeout: float = 5.0) -> None:
        """Quit QEMU (QMP quit, then SIGKILL past ``timeout``); safe to call twice."""
        self.stopped = True
        if self.child is not None:
            faultpoints.qemu_stopped(self.child.pid)
        if self.ssh is not None:
            try:
                self.ssh.close()
            except Exception:
                pass
            self.ssh = None
        if self._running() and self.frozen():  # it would answer no quit: ~10 s for nothing
            self._kill()
        if self._running():
            assert self.child is not None
            if self.qmp is not None:
                try:
                    self.qmp.command("quit")
                except QMPError:
                    pass
            end = time.monotonic() + timeout
            while self._running() and time.monotonic() < end:
                time.sleep(0.02)
            if self._running():
                self.child.kill(9)
        if self.child is not None:
            try:
                self.child.close(force=True)
            except Exception:
                pass
        if self.qmp is not None:
            self.qmp.close()
            self.qmp = None
        if self.console is not None:
            self.console.close()
        if self._reaper_key is not None:
            reaper.unregister(self._reaper_key)
            self._reaper_key = None
        if self.console is not None and not self._told_full:
            # before the overlay goes: it may be what filled the disk
            note = self.console.log_error or self._run_dir_full()
            if note:
                self._told_full = True
                self.log(f"ksm-harness: {note}")
        for name in ("root-overlay.qcow2", "initrd.img"):
            (self.dir / name).unlink(missing_ok=True)
        for disk in self.dir.glob("disk-*.raw"):
            disk.unlink(missing_ok=True)
        self.restore.cleanup()

    def __enter__(self) -> VM:
        return self.start() if self.child is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- guest access (remote.Spawner) ----------------------------------------------------
    def run(self, cmd: str, timeout: float = 60.0, check: bool = False) -> CommandResult:
        if self.ssh is None:
            raise VMError("guest has no SSH connection")
        return self.ssh.run(cmd, timeout=timeout, check=check)

    def put(self, local: Path, remote: str, mode: int = 0o644) -> None:
        assert self.ssh is not None
        self.ssh.put(local, remote, mode)

    def get(self, remote: str, local: Path) -> None:
        assert self.ssh is not None
        self.ssh.get(remote, local)

    def spawn(self, cmd: str, timeout: float = 30.0) -> SSHProcess:
        assert self.ssh is not None
        return self.ssh.spawn(cmd, timeout)

    def console_run(self, cmd: str, timeout: float = 30.0) -> CommandResult:
        assert self.console is not None
        return console_shell.run(self.console, cmd, timeout)


def remove_run_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
