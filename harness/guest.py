"""A test's handle on "the guest": delegates to the current VM and its monitor, and can
replace a crashed or hung VM with a fresh one, so objects that hold the guest (KSM control,
fixtures) keep working across the replacement.

A broken VM is retired at once (QEMU stopped when the test's verdict is made) and its
successor booted only when something next uses the guest, usually the next test's set-up: the
failing test's verdict does not wait for a boot, and its fixtures' teardowns, which have
nothing to undo on a VM that is gone, ask :meth:`Guest.gone_since` and skip."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from harness.access.remote import Process
from harness.findings import Finding
from harness.health import Monitor
from harness.ksm.timeline import Sampler
from harness.machine.vm import VM


class Guest:
    def __init__(self, boot: Callable[[], VM], stop: Callable[[VM], None]) -> None:
        self._boot, self._stop = boot, stop
        self.broken: str | None = None   # why the VM must be replaced before the next test
        self.sampler: Sampler | None = None  # KSM counter timeline of the running test
        self.generation = 0
        self.retired = False  # the VM was stopped; the next use boots a fresh one
        self._start()

    def _start(self) -> None:
        vm = self._boot()
        self._vm = vm
        self._monitor = Monitor(vm)
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
        """The VM of ``generation`` was retired or replaced (a fixture's teardown has
        nothing to undo on it); never boots."""
        return self.retired or self.generation != generation

    def spawn(self, cmd: str, timeout: float = 30.0) -> Process:
        """Like VM.spawn; while a timeline sampler is attached, every line sent to the
        program (a workload command) is recorded as a phase."""
        proc = self.vm.spawn(cmd, timeout)
        sampler = self.sampler
        if sampler is not None:
            send = proc.send_line

            def send_and_mark(line: str) -> None:
                sampler.phase(" ".join(line.split()[:2]))
                send(line)
            proc.send_line = send_and_mark  # type: ignore[method-assign]
        return proc

    def close(self) -> None:
        self._stop(self._vm)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # not set yet (a boot failed in __init__): no recursion
            raise AttributeError(name)
        # run, put, get, spawn, console, console_run, config, port, ssh, alive, ...
        return getattr(self.vm, name)
