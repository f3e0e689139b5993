"""pytest integration: command-line options choose the kernel, topology and accelerator;
fixtures hand tests a booted guest (one per module by default, a fresh one on request).

Markers: ``guest`` (needs a VM; added automatically to tests using a VM fixture) and
``host`` (pure host test). ``-m 'not guest'`` runs only what needs no QEMU.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator

import pytest

from . import paths, reaper, spec as spec_mod
from .errors import HarnessError
from .topology import Topology
from .vm import VM, VMSpec

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
    g.addoption("--keep-runs", action="store_true",
                help="keep each VM's run directory (overlay, initrd) after the run")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "guest: needs a booted QEMU guest")
    config.addinivalue_line("markers", "host: runs on the host only, no QEMU")
    config.addinivalue_line("markers", "fresh_vm: give this test its own VM")


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


@pytest.fixture(scope="module")
def vm(vm_pool: VMPool, request: pytest.FixtureRequest) -> Iterator[VM]:
    """One booted guest shared by the tests of a module."""
    name = Path(str(request.module.__file__)).stem
    guest = vm_pool.boot(name=name)
    yield guest
    vm_pool.stop(guest)


@pytest.fixture
def fresh_vm(vm_pool: VMPool, request: pytest.FixtureRequest) -> Iterator[VM]:
    """A guest of this test's own."""
    guest = vm_pool.boot(name=request.node.name[:40])
    yield guest
    vm_pool.stop(guest)


@pytest.fixture
def vm_factory(vm_pool: VMPool, request: pytest.FixtureRequest) -> Iterator[Callable[..., VM]]:
    """Boot guests with a custom topology/cmdline: ``vm_factory(topology=..., cmdline=...)``."""
    made: list[VM] = []

    def make(topology: Topology | None = None, cmdline: tuple[str, ...] = ()) -> VM:
        guest = vm_pool.boot(topology=topology, cmdline=cmdline, name=request.node.name[:40])
        made.append(guest)
        return guest

    yield make
    for guest in made:
        vm_pool.stop(guest)
