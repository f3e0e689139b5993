"""Fixtures that hand tests a booted guest: ``vm`` (one per module, replaced after a crash
or hang), ``fresh_vm`` (the test's own), ``vm_factory`` (custom topology or command line)."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness import paths, reaper
from harness import spec as spec_mod
from harness.errors import HarnessError
from harness.guest import Guest
from harness.health import INTERRUPTED
from harness.machine.topology import Topology
from harness.machine.vm import VM, VMSpec

VM_FIXTURES = {"vm", "fresh_vm", "vm_factory", "vm_spec"}


class BootFailed(HarnessError):
    """The guest did not come up (a BOOT finding: says nothing about KSM)."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if VM_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.guest)
        elif not item.get_closest_marker("guest"):
            item.add_marker(pytest.mark.host)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """After Ctrl-C or SIGTERM, pytest tears the fixtures of the unfinished test down here,
    and an exception from one of them would end the run before any report is written:
    tear them down first, each failure one line (the interrupt is the verdict)."""
    if not INTERRUPTED.is_set():
        return
    try:
        session._setupstate.teardown_exact(None)
  # what pytest's own sessionfinish does
    except BaseException as exc:  # noqa: BLE001 -- a second signal included
        line = next((ln for ln in str(exc).splitlines() if ln.strip()), "")
        print(f"\nksm-harness: a teardown after the interrupt failed: "
              f"{type(exc).__name__}: {line}")


@pytest.fixture(scope="session")
def run_dir() -> Iterator[Path]:
    for msg in reaper.clean_stale():
        print(f"ksm-harness: {msg}")
    path = paths.new_run_dir("pytest")
    yield path


@pytest.fixture(scope="session")
def vm_spec(request: pytest.FixtureRequest) -> VMSpec:
    try:
        return spec_mod.build(spec_mod.Options.of(request.config.option))
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
        # only the run's own guest is saved and restored: a one-off topology or command
        # line boots (saving it would cost more than it saves)
        spec = VMSpec(kernel=self.base.kernel, base_image=self.base.base_image,
                      accel=self.base.accel, topology=topology or self.base.topology,
                      cmdline=self.base.cmdline + cmdline, boot_timeout=self.base.boot_timeout,
                      snapshots=self.base.snapshots and topology is None and not cmdline)
        vm = VM(spec, self.run_dir / f"{self.count:03d}-{name}")
        self.live.append(vm)
        try:
            vm.start()
        except HarnessError as exc:
            raise BootFailed(f"guest failed to boot: {exc}") from None
        return vm

    def stop(self, vm: VM) -> None:
        vm.stop()
        if vm in self.live:
            self.live.remove(vm)
        if not self.keep:
            (vm.dir / "qmp.sock").unlink(missing_ok=True)

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
    guest = _guest(vm_pool, request.node.name[:24])
    yield guest
    guest.close()


@pytest.fixture
def vm_factory(vm_pool: VMPool, request: pytest.FixtureRequest) -> Iterator[Callable[..., Guest]]:
    """Boot guests with a custom topology/cmdline: ``vm_factory(topology=..., cmdline=...)``."""
    made: list[Guest] = []

    def make(topology: Topology | None = None, cmdline: tuple[str, ...] = ()) -> Guest:
        guest = _guest(vm_pool, request.node.name[:24], topology, cmdline)
        made.append(guest)
        return guest

    yield make
    for guest in made:
        guest.close()
