"""Every site operation of the generator (harness.fuzz.siteops) once, on KSM pages, in a fixed
sequence: where the rest of the kernel meets a KSM page (memory_failure, idle page tracking,
NUMA balancing's scan, DAMON's physical-address sampling, a write fault through the swap
cache) is reached by every run, not only when the generator's draw falls on it (measured on
source:6.1+gcov: every site but do_swap_page's swap-cache check, which only the generator
reached that run: reclaim need not swap the KSM page out before the write). Each step
goes through the generator's executor, so every oracle of a generated step holds after it
(every byte equals the model, read two ways; the counter invariants) and at the end (every
counter 0 after run=2, the KSM slabs back). An operation the guest's kernel lacks is skipped
and named."""
from __future__ import annotations

import pytest

from harness.fuzz.executor import GuestSteps
from harness.fuzz.model import Step
from harness.ksm import Ksm
from harness.ksm.prepared_guest import KsmGuest
from tests.ksm.fixture_types import MemcgFactory, WorkloadFactory
from tests.ksm.guest_env import guest_env

PAGES = 64
SETUP = (Step("start", {"proc": "P0"}), Step("start", {"proc": "P1"}),
         *(Step(op, {"proc": p, "region": "r0", **args}) for p in ("P0", "P1")
           for op, args in (("alloc", {"pages": PAGES, "kind": "same", "seed": 1}),
                            ("madvise", {"advice": "merge"}))),
         Step("knob", {"name": "run", "value": 1}), Step("wait", {"scans": 2}))
SITES = (Step("idle", {"proc": "P0", "region": "r0", "page": 5}),
         Step("numa_scan", {"proc": "P0"}),
         Step("damon"),
         Step("hwpoison"),
         Step("soft_offline", {"proc": "P1", "region": "r0", "page": 7}),
         Step("swap_write", {"proc": "P0", "region": "r0", "page": 3, "same": None}),
         Step("idle", {"proc": "P1", "region": "r0", "page": 9}))


def test_site_operations_on_ksm_pages(ksm_guest: KsmGuest, ksm: Ksm, workload: WorkloadFactory,
                                      memcg: MemcgFactory, small_zram_swap: bool) -> None:
    env, cgroup = guest_env(ksm, ksm_guest, memcg, small_zram_swap, "sites", "no swap_write")
    guest = GuestSteps(ksm, lambda name: workload(name=name, cgroup=cgroup), env,
                       ksm_guest.sh, cgroup, log=print)
    model = guest.begin()
    ran, skipped = [], []
    try:
        for step in SETUP:
            guest.step(model, step)
        merged = ksm.snapshot()
        assert merged["pages_sharing"] > 0, f"nothing merged to begin with: {merged.summary()}"
        for step in SITES:
            why = model.refuse(step)
            if why is not None:
                skipped.append(f"{step.op} ({why})")
                continue
            guest.step(model, step)
            ran.append(step.op)
        guest.end(model)
    except BaseException:
        guest.abandon()
        raise
    print(f"site operations: ran {', '.join(k for k in guest.ops if '->' in k) or 'none'}; "
          f"skipped {', '.join(skipped) or 'none'}")
    if not ran:
        pytest.skip(f"this guest offers none of the site operations: {', '.join(skipped)}")
