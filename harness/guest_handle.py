"""A test's handle on "the guest": delegates to the current VM and its monitor, and can
replace a crashed or hung VM with a fresh one, so objects that hold the guest (KSM control,
fixtures) keep working across the replacement.

A broken VM is retired at once (QEMU stopped when the test's verdict is made) and its
successor booted only when something next uses the guest, usually the next test's set-up: the
failing test's verdict does not wait for a boot, and its fixtures' teardowns, which have
nothing to undo on a VM that is gone, ask :meth:`Guest.gone_since` and skip.

Every use of the guest that needs the machine (a command, the console, QMP) goes through
:attr:`Guest.vm`, which boots the successor of a retired VM first."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from harness.access.port import ControlError, GuestPort
from harness.access.remote import CommandResult, Process
from harness.access.ssh import SSH
from harness.console.reader import Console
from harness.findings import Category, Finding
from harness.health import INTERRUPTED, Monitor
from harness.ksm.timeline import PhasedProcess, Sampler
from harness.machine.qemu import QemuConfig
from harness.machine.qmp import QMP, QMPError
from harness.machine.vm import VM, VMSpec


class QemuControl:
    """The machine control (harness.access.port.MachineControl) of one VM: liveness from its
    QEMU process, run state and sysrq keys through QMP."""

    def __init__(self, vm: VM) -> None:
        self.vm = vm

    def alive(self) -> str | None:
        return self.vm.alive()

    def status(self) -> str | None:
        qmp = self.vm.qmp
        if qmp is None:
            return None
        try:
            return qmp.status()
        except QMPError as exc:
            raise ControlError(str(exc)) from None

    def sysrq(self, key: str) -> None:
        qmp = self.vm.qmp
        if qmp is None:
            raise ControlError("no QMP connection")
        try:
            qmp.sysrq(key)
        except QMPError as exc:
            raise ControlError(str(exc)) from None


class Guest(GuestPort):
    def __init__(self, boot: Callable[[], VM], stop: Callable[[VM], None]) -> None:
        self._boot, self._stop = boot, stop
        self.broken: str | None = None   # why the VM must be replaced before the next test
        # (category, why): a fixture's teardown found its QEMU exited or stopped (the watch
        # reports it, even once the VM's fixture has stopped it)
        self.lost: tuple[Category, str] | None = None
        self.sampler: Sampler | None = None  # KSM counter timeline of the running test
        self.generation = 0
        self.retired = False  # the VM was stopped; the next use boots a fresh one
        self._start()

    def _start(self) -> None:
        vm = self._boot()
        self._vm = vm
        assert vm.console is not None  # a booted VM has its console
        self._monitor = Monitor(vm.console, vm, QemuControl(vm))
        if vm.ssh is not None:  # every wait on this guest ends on a fatal report
            vm.ssh.abort = self._monitor.fatal_reason
        # reports printed while booting go to the first test that uses this guest
        self.boot_findings: list[Finding] = self._monitor.claim(phase="at boot")
        self.generation += 1
        self.retired = False
        # QEMU start to first SSH command; reported once, by the next test that uses it
        self.boot_seconds: float | None = vm.timings.get("ssh_ready")

    def ensure_running(self) -> None:
        """Boot the successor of a retired VM (a no-op otherwise)."""
        if self.retired:
            self._start()

    @property
    def vm(self) -> VM:
        """The current VM; a retired one is replaced by a fresh boot here."""
        self.ensure_running()
        return self._vm

    @property
    def monitor(self) -> Monitor:
        self.ensure_running()
        return self._monitor

    def retire(self) -> None:
        """Stop the broken VM now; the guest's next use boots a fresh one."""
        self._stop(self._vm)
        self.broken = None
        self.retired = True

    def replace(self) -> None:
        self.retire()
        self._start()

    def gone_since(self, generation: int) -> bool:
        """The VM of ``generation`` was retired or replaced, or the run was interrupted (its
        VMs are about to be stopped): a fixture's teardown has nothing to undo on it; never
        boots."""
        if self.retired or self.generation != generation or INTERRUPTED.is_set():
            return True
        # its QEMU exited or is stopped: nothing there can be undone (the watch says which)
        vm = self._vm
        if vm is None:
            return False
        dead, frozen = vm.alive(), vm.frozen()
        if dead is not None:
            self.lost = (Category.VM_DEAD, f"guest died: {dead}")
        elif frozen is not None:
            self.lost = (Category.HANG, f"guest hung: {frozen}")
        return self.lost is not None

    def lost_during(self, generation: int, wait: float = 15.0) -> bool:
        """After a guest command of a fixture's undo failed: was it because QEMU was exiting
        or stopped meanwhile (waiting up to ``wait`` for a killed QEMU to finish exiting)?
        Then, as with :meth:`gone_since`, the watch names it and there is nothing to undo."""
        if self._vm is not None and self._vm.frozen() is None:
            self._vm.wait_exit(wait)
        return self.gone_since(generation)

    def close(self) -> None:
        self._stop(self._vm)

    # --- commands (harness.access.remote.Spawner) -------------------------------------------
    def run(self, cmd: str, timeout: float = 60.0, check: bool = False) -> CommandResult:
        return self.vm.run(cmd, timeout, check)

    def put(self, local: Path, remote: str, mode: int = 0o644) -> None:
        self.vm.put(local, remote, mode)

    def get(self, remote: str, local: Path) -> None:
        self.vm.get(remote, local)

    def spawn(self, cmd: str, timeout: float = 30.0) -> Process:
        """Like VM.spawn; while a timeline sampler is attached, every line sent to the
        program (a workload command) is recorded as a phase."""
        proc = self.vm.spawn(cmd, timeout)
        return proc if self.sampler is None else PhasedProcess(proc, self.sampler)

    def console_run(self, cmd: str, timeout: float = 30.0) -> CommandResult:
        """A command through the root shell on the serial console (the second channel)."""
        return self.vm.console_run(cmd, timeout)

    # --- the machine ------------------------------------------------------------------------
    def alive(self) -> str | None:
        """None while QEMU runs, else why it is gone."""
        return self.vm.alive()

    @property
    def console(self) -> Console | None:
        return self.vm.console

    @property
    def console_log(self) -> Path:
        return self.vm.console_log

    @property
    def spec(self) -> VMSpec:
        return self.vm.spec

    @property
    def config(self) -> QemuConfig | None:
        return self.vm.config

    @property
    def port(self) -> int:
        """The host port forwarded to the guest's sshd."""
        return self.vm.port

    @property
    def ssh(self) -> SSH | None:
        return self.vm.ssh

    @property
    def qmp(self) -> QMP | None:
        return self.vm.qmp
