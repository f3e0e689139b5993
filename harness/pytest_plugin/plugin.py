"""pytest integration: command-line options choose the kernel, topology and accelerator;
fixtures hand tests a booted guest (one per module by default, a fresh one on request).

Markers: ``guest`` (needs a VM; added automatically to tests using a VM fixture) and
``host`` (pure host test). ``-m 'not guest'`` runs only what needs no QEMU.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness import paths
from harness import spec as spec_mod
from harness.access.remote import CommandTimeout
from harness.errors import HarnessError
from harness.guest import Guest
from harness.health import Finding, TestWindow
from harness.ksm import timeline
from harness.ksm.timeline import Sampler
from harness.machine import reaper
from harness.machine.topology import Topology
from harness.machine.vm import VM, VMSpec
from harness.workloads import WorkloadTimeout

VM_FIXTURES = {"vm", "fresh_vm", "vm_factory", "vm_spec"}


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("ksm-harness", "ksm-harness guest options")
    g.addoption("--kernel", default=os.environ.get("KSM_HARNESS_KERNEL"),
                help="bzImage, vmlinux or kernel tree (default: Debian's linux-image-amd64)")
    g.addoption("--modules", default=None, help="module tree for --kernel")
    g.addoption("--numa", default="2", help="NUMA topology, e.g. 2 or 1G:1,1G:1")
    g.addoption("--accel", default="auto", choices=["auto", "kvm", "tcg"])
    g.addoption("--append", default="", help="extra kernel command line")
    g.addoption("--image", default=None, help="base qcow2 image instead of the recipe's")
    g.addoption("--boot-timeout", type=float, default=0.0)
    g.addoption("--ksm-seed", type=int, default=None,
                help="seed of the KSM knob-chaos scenario (default: $KSM_SEED, else random; "
                     "a failure prints the seed to rerun with)")
    g.addoption("--keep-runs", action="store_true",
                help="keep each VM's run directory (overlay, initrd) after the run")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "guest: needs a booted QEMU guest")
    config.addinivalue_line("markers", "host: runs on the host only, no QEMU")
    config.addinivalue_line("markers", "fresh_vm: give this test its own VM")
    config.addinivalue_line("markers", "allow_kernel(*categories): kernel reports of these "
                            "categories (e.g. OOM) do not fail the test")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if VM_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.guest)
        elif not item.get_closest_marker("guest"):
            item.add_marker(pytest.mark.host)


@pytest.fixture(scope="session")
def run_dir() -> Iterator[Path]:
    for msg in reaper.clean_stale():
        print(f"ksm-harness: {msg}")
    path = paths.new_run_dir("pytest")
    yield path


@pytest.fixture(scope="session")
def vm_spec(request: pytest.FixtureRequest) -> VMSpec:
    o = request.config.option
    opts = spec_mod.Options(kernel=o.kernel, modules=o.modules, numa=o.numa, accel=o.accel,
                            append=o.append, image=o.image, boot_timeout=o.boot_timeout)
    try:
        return spec_mod.build(opts)
    except HarnessError as exc:
        pytest.exit(f"ksm-harness: {exc}", returncode=2)


class VMPool:
    """Boots VMs into numbered run sub-directories and stops them all at the end."""

    def __init__(self, base: VMSpec, run_dir: Path, keep: bool) -> None:
        self.base, self.run_dir, self.keep = base, run_dir, keep
        self.count = 0
        self.live: list[VM] = []

    def boot(self, topology: Topology | None = None, cmdline: tuple[str, ...] = (),
             name: str = "vm") -> VM:
        self.count += 1
        spec = VMSpec(kernel=self.base.kernel, base_image=self.base.base_image,
                      accel=self.base.accel, topology=topology or self.base.topology,
                      cmdline=self.base.cmdline + cmdline, boot_timeout=self.base.boot_timeout)
        vm = VM(spec, self.run_dir / f"{self.count:03d}-{name}")
        self.live.append(vm)
        try:
            vm.start()
        except HarnessError as exc:
            pytest.fail(f"guest failed to boot: {exc}", pytrace=False)
        return vm

    def stop(self, vm: VM) -> None:
        vm.stop()
        if vm in self.live:
            self.live.remove(vm)
        if not self.keep:
            for name in ("qmp.sock",):
                (vm.dir / name).unlink(missing_ok=True)

    def stop_all(self) -> None:
        for vm in list(self.live):
            self.stop(vm)


@pytest.fixture(scope="session")
def vm_pool(vm_spec: VMSpec, run_dir: Path, request: pytest.FixtureRequest) -> Iterator[VMPool]:
    pool = VMPool(vm_spec, run_dir, request.config.option.keep_runs)
    yield pool
    pool.stop_all()


def _guest(pool: VMPool, name: str, topology: Topology | None = None,
           cmdline: tuple[str, ...] = ()) -> Guest:
    return Guest(lambda: pool.boot(topology=topology, cmdline=cmdline, name=name), pool.stop)


@pytest.fixture(scope="module")
def vm(vm_pool: VMPool, request: pytest.FixtureRequest) -> Iterator[Guest]:
    """One booted guest shared by the tests of a module (replaced after a crash or hang)."""
    guest = _guest(vm_pool, Path(str(request.module.__file__)).stem)
    yield guest
    guest.close()


@pytest.fixture
def fresh_vm(vm_pool: VMPool, request: pytest.FixtureRequest) -> Iterator[Guest]:
    """A guest of this test's own."""
    guest = _guest(vm_pool, request.node.name[:40])
    yield guest
    guest.close()


@pytest.fixture
def vm_factory(vm_pool: VMPool, request: pytest.FixtureRequest) -> Iterator[Callable[..., Guest]]:
    """Boot guests with a custom topology/cmdline: ``vm_factory(topology=..., cmdline=...)``."""
    made: list[Guest] = []

    def make(topology: Topology | None = None, cmdline: tuple[str, ...] = ()) -> Guest:
        guest = _guest(vm_pool, request.node.name[:40], topology, cmdline)
        made.append(guest)
        return guest

    yield make
    for guest in made:
        guest.close()


# --- the kernel health monitor around every guest test ------------------------------------

HANG_ERRORS: tuple[type[BaseException], ...] = (CommandTimeout, WorkloadTimeout)
FINDINGS = pytest.StashKey[dict[str, list[Finding]]]()
WINDOWS = pytest.StashKey[list[tuple[Guest, TestWindow]]]()


def _guests(item: pytest.Item) -> list[Guest]:
    found: list[Guest] = []
    for value in getattr(item, "funcargs", {}).values():
        if isinstance(value, Guest) and value not in found:
            found.append(value)
    return found


def _allowed(item: pytest.Item) -> tuple[str, ...]:
    mark = item.get_closest_marker("allow_kernel")
    return tuple(mark.args) if mark else ()


def _test_name(item: pytest.Item) -> str:
    return re.sub(r"[^\w./:\[\]=-]", "_", item.nodeid)[-120:]


def _start_timeline(item: pytest.Item, guest: Guest) -> None:
    """KSM scenarios get a counter timeline (see harness/timeline.py)."""
    if "tests/ksm/" not in item.nodeid or guest.sampler is not None:
        return
    try:
        guest.sampler = Sampler(guest.vm.spawn)
    except Exception:
        guest.sampler = None  # a plot is a nicety; never fail a test for it


def _stop_timeline(item: pytest.Item, guest: Guest) -> None:
    sampler, guest.sampler = guest.sampler, None
    if sampler is None:
        return
    from harness.results.report import (
        slug,  # imported late: pytest registers harness.results.report itself
    )
    tl = sampler.stop()
    rdir = Path(item.config.getoption("report_dir", None) or "results")
    try:
        timeline.write(tl, item.nodeid, rdir / "plots" / f"{slug(item.nodeid)}.svg")
    except OSError:
        pass


def _open_windows(item: pytest.Item) -> None:
    windows = []
    for guest in _guests(item):
        _start_timeline(item, guest)
        if guest.boot_findings:
            item.stash.setdefault(FINDINGS, {}).setdefault("call", []).extend(
                guest.boot_findings)
            guest.boot_findings = []
        windows.append((guest, guest.monitor.begin(_test_name(item))))
    item.stash[WINDOWS] = windows


def _close_windows(item: pytest.Item, phase: str, excinfo: BaseException | None) -> None:
    findings: list[Finding] = []
    for guest, window in item.stash.get(WINDOWS, []):
        if phase == "teardown":
            _stop_timeline(item, guest)
        if guest.vm.stopped:  # torn down by its fixture: only its last reports count
            findings += [Finding(r.title, r.category, r.text, r) for r in guest.monitor.flush()
                         if r.start_line >= window.start_line
                         and r.category not in _allowed(item)]
            continue
        dead = guest.alive()
        hung = isinstance(excinfo, HANG_ERRORS) and dead is None
        evidence = guest.monitor.hang_evidence() if hung else ""
        found = guest.monitor.end(window, allow=_allowed(item), responsive=not hung)
        if not hung and dead is None and not window.answered:
            # no answer: usually a panic still being printed; give QEMU a moment to exit
            dead = guest.vm.wait_exit(10.0)
            if dead is None:
                hung = True
                evidence = guest.monitor.hang_evidence()
        tail = guest.vm.console.tail(60) if guest.vm.console else ""
        found = found or [Finding(f"at the end of the test: {r.title}", r.category, r.text, r)
                          for r in guest.monitor.flush()
                          if r.start_line >= window.start_line and r.category not in _allowed(item)]
        if hung:
            cause = excinfo if isinstance(excinfo, HANG_ERRORS) else "the guest stopped answering"
            findings.append(Finding(f"guest hung: {cause}", "HANG",
                                    f"{evidence}\n--- console tail ---\n{tail}"))
            guest.broken = "hung"
        elif dead is not None:
            if not found:
                findings.append(Finding(f"guest died: {dead}", "VM_DEAD",
                                        f"--- console tail ---\n{tail}"))
            guest.broken = "dead"
        findings.extend(found)
        if found and (dead or hung):
            found[0].details += f"\n--- console tail ---\n{tail}"
        if guest.broken:
            try:
                guest.replace()  # the next test gets a fresh VM
            except HarnessError as exc:
                findings.append(Finding(f"could not replace the guest: {exc}", "VM_DEAD", ""))
    item.stash[WINDOWS] = []
    if findings:
        item.stash.setdefault(FINDINGS, {}).setdefault(phase, []).extend(findings)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    yield
    _open_windows(item)  # after fixtures: the guest exists; setup output is boot-time noise


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    outcome = yield
    _close_windows(item, "call", outcome.excinfo[1] if outcome.excinfo else None)
    _open_windows(item)  # teardown (e.g. run=2 in a fixture) is watched too


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    outcome = yield
    _close_windows(item, "teardown", outcome.excinfo[1] if outcome.excinfo else None)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    rep: pytest.TestReport = outcome.get_result()
    findings = item.stash.get(FINDINGS, {}).get(call.when, [])
    if not findings:
        return
    first = findings[0]
    body = "\n\n".join(f"[{f.category}] {f.title}\n{f.details}" for f in findings)
    if rep.failed and rep.longrepr is not None and call.when == "call":
        body += f"\n\n--- the test's own failure ---\n{rep.longrepr}"
    rep.outcome = "failed"
    rep.longrepr = f"{first.title}\n\n{body}"
    rep.user_properties.append(("kernel_report", first.title))


# --- reports (JUnit properties and titles, JSON, KTAP, reproducers): harness/report.py -----
pytest_plugins = ["harness.results.report"]
