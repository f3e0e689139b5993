"""What the generator may draw on this guest (shared by test_generated and test_sites): its
KSM knobs, NUMA nodes, swap, a memory cgroup when one can be made, and the site operations
the kernel offers."""
from __future__ import annotations

import pytest

from harness.fuzz import siteops
from harness.fuzz.model import Env
from harness.guest_mm import MemCgroup
from harness.ksm import Ksm
from harness.ksm.prepared_guest import KsmGuest
from tests.ksm.fixture_types import MemcgFactory


def guest_env(ksm: Ksm, ksm_guest: KsmGuest, memcg: MemcgFactory, swap: bool, group: str,
              without: str) -> tuple[Env, MemCgroup | None]:
    """The Env and the cgroup (None, printing ``without`` and why, when none can be made)."""
    try:
        cgroup: MemCgroup | None = memcg(group)
    except pytest.skip.Exception as e:
        print(f"{without}: {e}")
        cgroup = None
    env = Env(knobs=frozenset(n for n, w in ksm.files().items() if w),
              nodes=len(ksm_guest.nodes), swap=swap, cgroup=cgroup is not None,
              **siteops.probe(ksm_guest.sh))  # the site operations this kernel offers
    return env, cgroup
