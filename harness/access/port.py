"""What a guest offers the code that drives and watches it, as protocols: commands
(:class:`Runner`, :class:`Spawner`), the console's lines (:class:`LineSource`) and the machine
around the kernel (:class:`MachineControl`).

The health monitor, KSM control and the workloads are written against these, not against a
VM: the monitor runs on a recorded console log as well as on a live guest.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import Protocol

from harness.access.remote import Process, Runner, Spawner

__all__ = ["ControlError", "GuestPort", "LineSource", "MachineControl", "Process",
           "Replaceable", "Runner", "Spawner"]

Listener = Callable[[str], None]


class LineSource(Protocol):
    """The kernel's console as numbered lines (harness.console.reader.Console is one)."""

    @property
    def closed(self) -> bool:
        """No line will come any more (QEMU is gone, the recording is over)."""
        ...

    def add_listener(self, fn: Listener) -> None:
        """Call ``fn`` with every line so far, then with each new one (``fn`` must not wait
        on this source: it is called with the source's lock held)."""
        ...

    def mark(self) -> int:
        """Index of the next line."""
        ...

    def wait_for(self, pattern: str | re.Pattern[str], timeout: float, start: int = 0,
                 what: str | None = None,
                 abort: Callable[[], str | None] | None = None) -> re.Match[str]:
        """First line from ``start`` (or the line still printing) matching ``pattern``;
        ConsoleTimeout past ``timeout``, when ``abort`` gives a reason or the source closed."""
        ...

    def wait_for_line(self, text: str, timeout: float, start: int = 0) -> int | None:
        """Index of the first complete line from ``start`` containing ``text``; None past
        ``timeout`` or once the source closed."""
        ...

    def arrived(self, index: int) -> float | None:
        """Host wall time at which line ``index`` arrived, if it has."""
        ...

    def tail(self, n: int = 40) -> str: ...

    def text(self, start: int = 0, end: int | None = None) -> str: ...

    def silent_for(self) -> float:
        """Seconds since the last output."""
        ...

    def send(self, text: str) -> None:
        """Type ``text`` on the console (a no-op once it is closed)."""
        ...


class ControlError(Exception):
    """The machine control could not be asked (its channel failed)."""


class MachineControl(Protocol):
    """The machine around the guest kernel (QEMU through QMP for a VM)."""

    def alive(self) -> str | None:
        """None while the machine runs, else why it is gone."""
        ...

    def status(self) -> str | None:
        """The machine's run state ("running", "paused", ...); None when it has no control
        channel; ControlError when the channel fails."""
        ...

    def sysrq(self, key: str) -> None:
        """Press Alt-SysRq-``key`` on the emulated keyboard (answered by a kernel whose
        userspace is dead); ControlError when the channel fails."""
        ...


class Replaceable(Protocol):
    """A guest whose machine may be replaced by a fresh one after a fatal report or a hang
    (harness.guest_handle.Guest); what was set up on the old machine is gone with it."""

    generation: int  # counts the machines this guest has had

    def ensure_running(self) -> None:
        """Boot the successor of a retired machine (a no-op otherwise)."""
        ...

    def gone_since(self, generation: int) -> bool:
        """The machine of ``generation`` was retired or replaced."""
        ...

    def lost_during(self, generation: int) -> bool:
        """After a failed undo: the machine of ``generation`` went away meanwhile."""
        ...


class GuestPort(Spawner, Replaceable, Protocol):
    """A guest as KSM scenarios use it: commands, files and programs on a machine that may be
    replaced between tests (harness.guest_handle.Guest implements it)."""
