"""A test's handle on "the guest": delegates to the current VM and its monitor, and can
replace a crashed or hung VM with a fresh one, so objects that hold the guest (KSM control,
fixtures) keep working across the replacement."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from harness.access.remote import Process
from harness.console.findings import Finding
from harness.health import Monitor
from harness.ksm.timeline import Sampler
from harness.machine.vm import VM


class Guest:
    def __init__(self, boot: Callable[[], VM], stop: Callable[[VM], None]) -> None:
        self._boot, self._stop = boot, stop
        self.broken: str | None = None   # why the VM must be replaced before the next test
        self.sampler: Sampler | None = None  # KSM counter timeline of the running test
        self.generation = 0
        self._start()

    def _start(self) -> None:
        self.vm = self._boot()
        self.monitor = Monitor(self.vm)
        if self.vm.ssh is not None:  # every wait on this guest ends on a fatal report
            self.vm.ssh.abort = self.monitor.fatal_reason
        # reports printed while booting go to the first test that uses this guest
        self.boot_findings: list[Finding] = self.monitor.claim(phase="at boot")
        self.generation += 1
        # QEMU start to first SSH command; reported once, by the next test that uses it
        self.boot_seconds: float | None = self.vm.timings.get("ssh_ready")

    def replace(self) -> None:
        self._stop(self.vm)
        self.broken = None
        self._start()

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
        self._stop(self.vm)

    def __getattr__(self, name: str) -> Any:
        # run, put, get, spawn, console, console_run, config, port, ssh, alive, ...
        return getattr(self.vm, name)
