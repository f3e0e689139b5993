"""A guest made ready for KSM scenarios (see :class:`KsmGuest`)."""
from __future__ import annotations

from harness import guest_mm, paths, workloads
from harness.access.port import GuestPort
from harness.access.shell import GuestShell
from harness.ksm import Ksm


class KsmGuest:
    """The module's guest, ready for KSM scenarios: the workloads uploaded (once per VM), a
    long-lived guest shell, and KSM's knobs as the kernel booted with them. When the health
    monitor replaced a crashed or hung VM (the ``vm`` fixture's ``generation`` moved), the next
    :meth:`ensure` redoes all of it on the new VM."""

    def __init__(self, vm: GuestPort) -> None:
        self.vm = vm  # SSH: one exec per command (~300 ms under TCG); spawns workloads
        self.generation: int | None = None  # of the VM the set-up below was done on
        self.sh: GuestShell = GuestShell(vm)  # ~10-50 ms a command: use this one
        self.binary = self.py_worker = ""
        self.boot_knobs: dict[str, str] = {}
        self.nodes: list[int] = []
        self.banner = ""
        self.ensure()

    def ensure(self) -> None:
        self.vm.ensure_running()  # a VM retired after the last test's verdict: its successor
        generation = self.vm.generation
        if generation == self.generation:
            return
        self.sh.close()
        self.sh = GuestShell(self.vm)
        k = Ksm(self.sh)
        k.files()  # KsmUnavailable when the kernel has no KSM (the fixture skips)
        self.binary, self.py_worker = workloads.install(self.vm, paths.cache_dir())
        # KSM's knobs as the kernel booted with them (no test has run in this guest yet).
        self.boot_knobs = k.defaults_capture()
        self.nodes = guest_mm.online_nodes(self.sh)
        # the kernel's banner: Debian's 6.1 releases (6.1.0-N) name the upstream version only
        # there, and harness.kernel_bugs gates expected failures on that version
        self.banner = self.sh.run("cat /proc/version", check=True).stdout.strip()
        self.generation = generation

    @property
    def current(self) -> int:
        """The generation of the VM now under this guest (fixtures note it at set-up)."""
        return self.vm.generation

    def gone_since(self, generation: int) -> bool:
        """The VM a fixture set up on was retired after a fatal report or a hang: its
        teardown has nothing to undo (the next test gets a fresh VM)."""
        return self.vm.gone_since(generation)

    def lost_during(self, generation: int) -> bool:
        """A fixture's undo failed: because its VM went away meanwhile (then that is the
        verdict, named by the watch)?"""
        return self.vm.lost_during(generation)

    def close(self) -> None:
        self.sh.close()
