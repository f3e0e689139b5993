"""Drive a workload in the guest, one command at a time, with deadlines: :class:`Workload`
is the session (harness.workloads.session) with every command family."""
from __future__ import annotations

from harness.workloads.memory import MemoryCommands
from harness.workloads.numa import NumaCommands
from harness.workloads.processes import ProcessCommands
from harness.workloads.session import BASE_TIMEOUT, C_SECONDS_PER_PAGE, PY_SECONDS_PER_PAGE

__all__ = ["BASE_TIMEOUT", "C_SECONDS_PER_PAGE", "PY_SECONDS_PER_PAGE", "Workload"]


class Workload(MemoryCommands, NumaCommands, ProcessCommands):
    """A running workload in the guest (the C program or its Python twin): start it with
    :meth:`start` or :meth:`start_python`, then call its commands."""
