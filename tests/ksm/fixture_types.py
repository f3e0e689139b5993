"""The types of the KSM suite's fixtures (tests/ksm/conftest.py), for the tests' hints:
a test module imports these, never the conftest itself."""
from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from harness.guest_mm import MemCgroup
from harness.workloads import Workload


class WorkloadFactory(Protocol):
    """The ``workload`` fixture: starts a workload in the guest (C, or its Python twin),
    inside ``cgroup`` when given."""

    def __call__(self, python: bool = False, cgroup: MemCgroup | None = None,
                 name: str | None = None) -> Workload: ...


MemcgFactory = Callable[[str], MemCgroup]  # ``memcg(name)``
KnownBug = Callable[..., None]  # ``known_bug(bug_id, raises=AssertionError)``
ThpMode = Callable[[str], None]  # ``thp_mode("always"|"madvise"|"never")``
