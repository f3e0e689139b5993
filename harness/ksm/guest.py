"""A guest made ready for KSM scenarios (see :class:`KsmGuest`)."""
from __future__ import annotations

from typing import Any

from harness import guestsys, paths, workloads
from harness.access.shell import GuestShell
from harness.ksm import Ksm


class KsmGuest:
    """The module's guest, ready for KSM scenarios: the workloads uploaded (once per VM), a
    long-lived guest shell, and KSM's knobs as the kernel booted with them. When the health
    monitor replaced a crashed or hung VM (the ``vm`` fixture's ``generation`` moved), the next
    :meth:`ensure` redoes all of it on the new VM."""

    def __init__(self, vm: Any) -> None:
        self.vm = vm  # SSH: one exec per command (~300 ms under TCG); spawns workloads
        self.generation: object = None
        self.sh: GuestShell = GuestShell(vm)  # ~10-50 ms a command: use this one
        self.binary = self.py_worker = ""
        self.boot_knobs: dict[str, str] = {}
        self.nodes: list[int] = []
        self.banner = ""
        self.ensure()

    def ensure(self) -> None:
        running = getattr(self.vm, "ensure_running", None)
        if running is not None:
            running()  # a VM retired after the last test's verdict: boot its successor
        generation = getattr(self.vm, "generation", 0)
        if generation == self.generation:
            return
        self.sh.close()
        self.sh = GuestShell(self.vm)
        k = Ksm(self.sh)
        k.files()  # KsmUnavailable when the kernel has no KSM (the fixture skips)
        self.binary, self.py_worker = workloads.install(self.vm, paths.cache_dir())
        # KSM's knobs as the kernel booted with them (no test has run in this guest yet).
        self.boot_knobs = k.defaults_capture()
        self.nodes = guestsys.online_nodes(self.sh)
        # the kernel's banner: Debian's 6.1 releases (6.1.0-N) name the upstream version only
        # there, and harness.kernel_bugs gates expected failures on that version
        self.banner = self.sh.run("cat /proc/version", check=True).stdout.strip()
        self.generation = generation

    @property
    def current(self) -> int:
        """The generation of the VM now under this guest (fixtures note it at set-up)."""
        return int(getattr(self.vm, "generation", 0))

    def gone_since(self, generation: int) -> bool:
        """The VM a fixture set up on was retired after a fatal report or a hang: its
        teardown has nothing to undo (the next test gets a fresh VM)."""
        gone = getattr(self.vm, "gone_since", None)
        return bool(gone is not None and gone(generation))

    def close(self) -> None:
        self.sh.close()
