"""Fixtures of the KSM scenario suite.

- ``ksm_guest`` (module): the module's guest, checked for KSM, with the workloads uploaded once
  and KSM's boot-time knob values recorded.
- ``two_nodes``: skips a test whose guest has fewer than two NUMA nodes.
- ``ksm`` (test): a :class:`harness.ksm.Ksm` for that guest. Before the test: nothing merged,
  knobs at their boot values, then fast scanning (pages_to_scan=10000, sleep_millisecs=0),
  smart_scan=0 where the kernel has it (6.7+; ``scan_mode``: a test with @SCAN_MODES runs
  with smart_scan=1 and the advisor too) and run=0 (the test starts ksmd when its
  workload is in place). After the test: run=2 first (so
  merge_across_nodes and max_page_sharing can change back), every knob restored, nothing left
  merged.
- ``workload``: a factory starting the C workload (or its Python twin) in the guest, optionally
  inside a memory cgroup; every workload still running is told to exit (then killed) after the
  test.
- ``memcg``, ``zram_swap``, ``thp_mode``: memory cgroups, a zram swap device and the THP mode,
  each undone after the test.
- ``ksm_seed``: the chaos seed, from ``--ksm-seed`` (or $KSM_SEED), random otherwise; a failing
  test that used it gets a report section naming it.

A scenario whose kernel lacks a feature (a knob, NUMA nodes, zram, a swap disk) is skipped with
the reason; see :func:`skip_unless`.
"""
from __future__ import annotations

import os
import random
from collections.abc import Iterator

import pytest

from harness import guest_mm
from harness.access.remote import CommandFailed, CommandTimeout
from harness.guest_handle import Guest
from harness.guest_mm import MemCgroup, Unavailable
from harness.ksm import (
    FAST_PAGES_TO_SCAN,
    FAST_SLEEP_MILLISECS,
    ZERO_COUNTS,
    Ksm,
    KsmError,
    count_mismatches,
    describe_mismatches,
    leaks,
)
from harness.ksm.prepared_guest import KsmGuest
from harness.pytest_plugin.ksm_scenarios import (
    KSM_OF_TEST,
    WORKLOADS_OF_TEST,
    apply_scan_mode,
    require_nodes,
    require_scan_mode,
    skip_unless,
    xfail_mark,
)
from harness.pytest_plugin.watch import phase_report
from harness.workloads import Workload, WorkloadError, WorkloadTimeout
from tests.ksm.fixture_types import KnownBug, MemcgFactory, ThpMode, WorkloadFactory


@pytest.fixture(scope="module")
def ksm_guest(vm: Guest) -> Iterator[KsmGuest]:
    """The module's guest made ready for KSM scenarios (see KsmGuest)."""
    with skip_unless():
        guest = KsmGuest(vm)
    yield guest
    guest.close()


@pytest.fixture
def two_nodes(ksm_guest: KsmGuest) -> None:
    """Skips the test, with the reason, on a guest with fewer than two NUMA nodes (a
    module's ``pytestmark = pytest.mark.usefixtures("two_nodes")``)."""
    require_nodes(ksm_guest, 2)


@pytest.fixture
def known_bug(ksm_guest: KsmGuest, vm: Guest, request: pytest.FixtureRequest) -> KnownBug:
    """``known_bug(bug_id)``: on a kernel that harness.kernel_bugs lists as having the bug,
    the test becomes a strict expected failure (it must fail; passing is an XPASS that fails
    the run); on any other kernel nothing changes and the test must pass. ``raises``: the
    failures the bug explains (any other failure stays a failure)."""
    def mark(bug_id: str,
             raises: type[BaseException] | tuple[type[BaseException], ...] = AssertionError,
             ) -> None:
        ksm_guest.ensure()
        xfail = xfail_mark(bug_id, vm.spec.kernel.release, ksm_guest.banner, raises=raises)
        if xfail is not None:
            request.node.add_marker(xfail)
    return mark


@pytest.fixture
def scan_mode(request: pytest.FixtureRequest) -> str:
    """How ksmd scans in this test: "plain" unless the test has @SCAN_MODES."""
    return str(getattr(request, "param", "plain"))


@pytest.fixture
def ksm(ksm_guest: KsmGuest, scan_mode: str, request: pytest.FixtureRequest) -> Iterator[Ksm]:
    ksm_guest.ensure()
    k = Ksm(ksm_guest.sh)
    request.node.stash[KSM_OF_TEST] = k  # a retried race attempt resets KSM through it
    require_scan_mode(k, scan_mode)
    boot = ksm_guest.boot_knobs
    # A clean start: nothing merged, the boot knob values (a previous test's restore failing
    # is reported there; here we only refuse to run on top of its leftovers).
    left = k.unmerge_all()
    rest = count_mismatches(left, ZERO_COUNTS)
    if rest:
        pytest.fail(f"KSM not clean before the test (run=2 left {describe_mismatches(rest)})",
                    pytrace=False)
    now = k.defaults_capture()
    for name in k.restore_order(boot):
        if now.get(name) != boot[name]:
            k.set(name, boot[name])
    k.set("pages_to_scan", FAST_PAGES_TO_SCAN)
    k.set("sleep_millisecs", FAST_SLEEP_MILLISECS)
    apply_scan_mode(k, scan_mode, FAST_PAGES_TO_SCAN)
    k.set("run", 0)
    slabs = leaks.slab_objects(ksm_guest.sh)
    generation = ksm_guest.current
    yield k
    if ksm_guest.gone_since(generation):
        return  # the VM died with a kernel report or hang: that is the verdict
    try:
        k.restore(boot)
        left = k.exact_counters()
    except (CommandFailed, CommandTimeout):
        if ksm_guest.lost_during(generation):
            return  # QEMU exited or stopped while we undid: the watch names it
        raise
    rest = count_mismatches(left, ZERO_COUNTS)
    if rest:
        raise KsmError(f"KSM counters not back to 0 after the test and run=2: "
                       f"{describe_mismatches(rest)}")
    # stable nodes of pages an exiting process still mapped go only at the next run=2
    k.unmerge_all()
    problems = leaks.slab_problems(slabs, leaks.slab_objects(ksm_guest.sh), slack=64)
    if problems:
        raise leaks.LeakError("KSM objects leaked: " + "; ".join(problems))


@pytest.fixture
def workload(ksm_guest: KsmGuest, ksm: Ksm,
             request: pytest.FixtureRequest) -> Iterator[WorkloadFactory]:
    """``workload(python=False, cgroup=None)`` starts a workload in the guest (inside the
    memory cgroup before it allocates anything). All are stopped after the test, before the
    ``ksm`` fixture restores KSM."""
    started: list[Workload] = []
    request.node.stash[WORKLOADS_OF_TEST] = started  # a retried race attempt stops its own

    def start(python: bool = False, cgroup: MemCgroup | None = None,
              name: str | None = None) -> Workload:
        if python:
            w = Workload.start_python(ksm_guest.vm, ksm_guest.py_worker,
                                      name=name or f"py{len(started)}")
        else:
            w = Workload.start(ksm_guest.vm, ksm_guest.binary, name=name or f"c{len(started)}")
        started.append(w)
        if cgroup is not None:
            assert w.pid is not None
            cgroup.add(w.pid)
        return w

    generation = ksm_guest.current
    yield start
    if ksm_guest.gone_since(generation):
        return  # the workloads went with their VM
    corrupt = []
    hung: WorkloadTimeout | None = None
    for w in reversed(started):
        if w.exit_status is not None:
            continue
        try:
            if w.busy:  # a command sent with begin() and never collected (the test failed)
                w.finish(timeout=120)
        except WorkloadError:
            pass
        try:
            if w.exit(timeout=120, check=False) == 1:
                corrupt.append(w.name)
        except WorkloadTimeout as exc:  # an exit that never returns is a hang, not a pass
            w.kill()
            hung = hung or exc
        except WorkloadError:
            w.kill()
    if hung is not None:
        raise hung
    call = phase_report(request.node, "call")
    if corrupt and call is not None and call.passed:
        pytest.fail(f"workload(s) {', '.join(corrupt)} exited with status 1: they detected "
                    "data corruption the test did not check", pytrace=False)


@pytest.fixture
def memcg(ksm_guest: KsmGuest) -> Iterator[MemcgFactory]:
    """``memcg(name)``: a memory cgroup, removed (its processes killed) after the test."""
    made: list[MemCgroup] = []

    def make(name: str) -> MemCgroup:
        with skip_unless():
            group = MemCgroup(ksm_guest.sh, f"ksmtest-{name}")
        made.append(group)
        return group

    generation = ksm_guest.current
    yield make
    if ksm_guest.gone_since(generation):
        return
    for group in made:
        group.remove()


@pytest.fixture
def zram_swap(ksm_guest: KsmGuest) -> Iterator[str]:
    """A 256 MiB zram swap device, switched on for the test and reset after it."""
    vm = ksm_guest.sh
    with skip_unless():
        dev = guest_mm.zram_create(vm, 256)
    guest_mm.swapon(vm, dev, priority=20)
    generation = ksm_guest.current
    yield dev
    if not ksm_guest.gone_since(generation):
        guest_mm.zram_remove(vm, dev)


SMALL_ZRAM_MB = 64


@pytest.fixture
def small_zram_swap(ksm_guest: KsmGuest) -> Iterator[bool]:
    """A 64 MiB zram swap device when the kernel has zram (False without: the generated
    sequences then draw no pageout, reclaim or swap-in step)."""
    try:
        dev = guest_mm.zram_create(ksm_guest.sh, SMALL_ZRAM_MB)
    except Unavailable as e:
        print(f"no swap steps: {e}")
        yield False
        return
    guest_mm.swapon(ksm_guest.sh, dev, priority=20)
    generation = ksm_guest.current
    yield True
    if not ksm_guest.gone_since(generation):
        guest_mm.zram_remove(ksm_guest.sh, dev)


@pytest.fixture
def thp_mode(ksm_guest: KsmGuest) -> Iterator[ThpMode]:
    """``thp_mode("always"|"madvise"|"never")`` for the test; the boot value comes back."""
    vm = ksm_guest.sh
    saved = guest_mm.read_selected(vm, guest_mm.THP_ENABLED)
    if saved is None:
        pytest.skip("the guest kernel has no transparent hugepages")

    def set_mode(mode: str) -> None:
        guest_mm.write_file(vm, guest_mm.THP_ENABLED, mode)

    generation = ksm_guest.current
    yield set_mode
    if not ksm_guest.gone_since(generation):
        guest_mm.write_file(vm, guest_mm.THP_ENABLED, saved)


@pytest.fixture
def ksm_seed(request: pytest.FixtureRequest) -> int:
    """The chaos seed (reported with any failure of the test that uses it)."""
    given = request.config.getoption("--ksm-seed", default=None)
    if given is None and os.environ.get("KSM_SEED"):
        given = int(os.environ["KSM_SEED"])
    seed = given if given is not None else random.SystemRandom().randrange(1, 2**31)
    request.node.ksm_seed = seed
    print(f"ksm seed {seed}")
    return seed
