"""Build the guest workloads and drive them over their line protocol.

``workloads/ksmwork.c`` (static C) and ``workloads/ksm_py_worker.py`` (stdlib Python) read one
command per line and answer one line, ``ok ...`` or ``err ...`` (the protocol is documented at
the top of ksmwork.c). :class:`Workload` sends one command at a time and turns replies into
values or exceptions: ``err corrupt`` is :class:`DataCorruption`, any other ``err`` is
:class:`WorkloadError`, silence past the deadline is :class:`WorkloadTimeout`.

The harness uploads the binary itself: :func:`build` gives the host path, :data:`GUEST_BINARY`
and :data:`GUEST_PY_WORKER` say where the workloads are expected in the guest.
"""
from __future__ import annotations

from harness.workloads.build import (
    APT_INSTALL,
    CFLAGS,
    GUEST_BINARY,
    GUEST_DIR,
    GUEST_PY_WORKER,
    MAIN_PROGRAM,
    PY_WORKER_SOURCE,
    WORKLOADS_DIR,
    BuildError,
    build,
    build_all,
    install,
)
from harness.workloads.driver import (
    BASE_TIMEOUT,
    C_SECONDS_PER_PAGE,
    PY_SECONDS_PER_PAGE,
    Workload,
)
from harness.workloads.protocol import (
    CheckUnavailable,
    DataCorruption,
    MoveResult,
    NodeCounts,
    PageCounts,
    Reply,
    WorkloadDied,
    WorkloadError,
    WorkloadTimeout,
    parse_corruption,
)

__all__ = [
    "APT_INSTALL",
    "BASE_TIMEOUT",
    "BuildError",
    "CFLAGS",
    "C_SECONDS_PER_PAGE",
    "CheckUnavailable",
    "DataCorruption",
    "GUEST_BINARY",
    "GUEST_DIR",
    "GUEST_PY_WORKER",
    "MAIN_PROGRAM",
    "MoveResult",
    "NodeCounts",
    "PageCounts",
    "PY_SECONDS_PER_PAGE",
    "PY_WORKER_SOURCE",
    "Reply",
    "WORKLOADS_DIR",
    "Workload",
    "WorkloadDied",
    "WorkloadError",
    "WorkloadTimeout",
    "build",
    "build_all",
    "install",
    "parse_corruption",
]
