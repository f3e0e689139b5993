"""Fixtures that hand tests a booted guest: ``vm`` (one per module, replaced after a crash
or hang), ``fresh_vm`` (the test's own), ``vm_factory`` (custom topology or command line)."""
from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness import paths, reaper
from harness import spec as spec_mod
from harness.coverage.collect import Collector
from harness.errors import HarnessError
from harness.guest_handle import Guest
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

    def __init__(self, base: VMSpec, run_dir: Path, keep: bool,
                 gcov: Collector | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        self.base, self.run_dir, self.keep = base, run_dir, keep
        self.log = log  # the VMs' one-line notes (None: their default, stderr)
        self.count = 0
        self.live: list[VM] = []
        self.gcov = gcov        # --gcov-dir: counters dumped per test and before a stop
        self.label = "(boot)"   # the test the counters since the last dump belong to

    def boot(self, topology: Topology | None = None, cmdline: tuple[str, ...] = (),
             name: str = "vm") -> VM:
        self.count += 1
        # only the run's own guest is saved and restored: a one-off topology or command
        # line boots (saving it would cost more than it saves)
        spec = VMSpec(kernel=self.base.kernel, base_image=self.base.base_image,
                      accel=self.base.accel, topology=topology or self.base.topology,
                      cmdline=self.base.cmdline + cmdline, boot_timeout=self.base.boot_timeout,
                      snapshots=self.base.snapshots and topology is None and not cmdline)
        vm = (VM(spec, self.run_dir / f"{self.count:03d}-{name}") if self.log is None
              else VM(spec, self.run_dir / f"{self.count:03d}-{name}", log=self.log))
        self.live.append(vm)
        try:
            vm.start()
        except HarnessError as exc:
            raise BootFailed(f"guest failed to boot: {exc}") from None
        self.checkpoint(vm, "(boot)")
        return vm

    def checkpoint(self, vm: VM, label: str) -> None:
        """--gcov-dir: dump and reset the guest's gcov counters, as `label`'s. A guest that
        cannot answer (crashed, hung) loses its counters, not the test its verdict."""
        if self.gcov is None or vm.ssh is None:
            return
        try:
            self.gcov.checkpoint(vm, label, vm.dir.name)
        except Exception as exc:  # noqa: BLE001 - any failure: warn, the run goes on
            print(f"ksm-harness: gcov: no counters from {vm.dir.name} for {label}: {exc}")

    def stop(self, vm: VM) -> None:
        if vm in self.live:
            self.checkpoint(vm, self.label)
        vm.stop()
        if vm in self.live:
            self.live.remove(vm)
        if not self.keep:
            (vm.dir / "qmp.sock").unlink(missing_ok=True)

    def stop_all(self) -> None:
        for vm in list(self.live):
            self.stop(vm)


def _worker_prefix() -> str:
    """``gw0-`` under pytest-xdist (each worker its own bucket numbers), else ''."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    return f"{worker}-" if worker else ""


def _uncaptured(config: pytest.Config) -> Callable[[str], None]:
    """A VM's one-line note on the user's stderr even while pytest captures output (a
    passing test's captured output is never shown)."""
    def say(line: str) -> None:
        capman = config.pluginmanager.getplugin("capturemanager")
        terminal = config.pluginmanager.getplugin("terminalreporter")
        with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
            if terminal is not None:  # on a line of its own, not inside "file.py ..."
                terminal.write_line(line)
            else:
                print(line, file=sys.stderr, flush=True)
    return say


@pytest.fixture(scope="session")
def vm_pool(vm_spec: VMSpec, run_dir: Path, request: pytest.FixtureRequest) -> Iterator[VMPool]:
    gcov_dir = request.config.option.gcov_dir
    pool = VMPool(vm_spec, run_dir, request.config.option.keep_runs,
                  Collector(Path(gcov_dir), _worker_prefix()) if gcov_dir else None,
                  log=_uncaptured(request.config))
    yield pool
    pool.stop_all()


@pytest.fixture(autouse=True)
def _gcov_per_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """--gcov-dir: what each guest test reached, dumped after its teardown (autouse: set up
    first, torn down last); a test without a guest costs nothing."""
    if not request.config.option.gcov_dir or "vm_pool" not in request.fixturenames:
        yield
        return
    pool: VMPool = request.getfixturevalue("vm_pool")
    pool.label = request.node.nodeid
    yield
    for vm in list(pool.live):
        pool.checkpoint(vm, request.node.nodeid)
    pool.label = "(between tests)"


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
