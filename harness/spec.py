"""From user options (CLI flags or pytest options) to a VM spec; shared so both front ends
choose the kernel, image, accelerator and topology the same way."""
from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import deps, options
from harness.assets import image
from harness.assets import kernel as kernel_mod
from harness.errors import HarnessError
from harness.machine import accel, topology
from harness.machine.topology import Topology, parse_numa, parse_size_mb
from harness.machine.vm import VMSpec


@dataclass
class Options(options.GuestOptions):
    """The guest options' values (each declared, typed, in harness.options.GuestOptions), and
    what a caller adds to the kernel command line."""
    extra_cmdline: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, source: object = None, **given: Any) -> Options:
        """From an argparse Namespace or pytest's option object (or defaults), then
        ``given`` on top."""
        return cls(**{**options.values(source), **given})


QCOW2_MAGIC = b"QFI\xfb"


def check(vals: Mapping[str, Any], numas: Iterable[str] | None = None) -> None:
    """Every guest option's value (the table is harness.options'), cheaply: nothing is
    downloaded, built or started. Each error is one line naming the option (HarnessError):
    what `boot` and `run` check before anything starts. ``numas``: every --numa of a
    matrix (default: ``vals["numa"]``)."""
    timeout = vals.get("boot_timeout")
    if timeout is not None and not 0 <= float(timeout) < float("inf"):
        raise HarnessError(f"--boot-timeout {timeout}: not a number of seconds >= 0 "
                           "(0: chosen from the accelerator)")
    available = topology.host_mem_available_mb()
    for spec in numas if numas is not None else [vals.get("numa") or options.DEFAULT_NUMA]:
        topology.check_fits_host(spec, topology.parse_numa(spec), available)
    swap = vals.get("swap_disk")
    if swap:
        try:
            topology.parse_size_mb(swap)
        except HarnessError as exc:
            raise HarnessError(f"--swap-disk {swap}: {exc}") from None
    img = vals.get("image")
    if img:
        path = os.path.expanduser(img)
        try:
            with open(path, "rb") as fh:
                magic = fh.read(4)
        except OSError as exc:
            raise HarnessError(f"--image {img}: {(exc.strerror or str(exc)).lower()}") from None
        if magic != QCOW2_MAGIC:
            raise HarnessError(f"--image {img}: not a qcow2 image")
    mods = vals.get("modules")
    if mods and not os.path.isdir(os.path.expanduser(mods)):
        raise HarnessError(f"--modules {mods}: no such directory (give DIR/lib/modules/"
                           "<release> or DIR)")


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build(opts: Options, log: Callable[[str], None] = _stderr) -> VMSpec:
    if opts.accel not in ("auto", "kvm", "tcg"):
        raise HarnessError(f"--accel {opts.accel}: choose auto, kvm or tcg")
    # cheap checks first: a typo must not wait for a kernel download or an image build
    check(vars(opts))
    deps.ensure(["qemu-system-x86_64", "qemu-img"])
    topo = Topology(nodes=parse_numa(opts.numa))
    topology.check_fits_host(opts.numa, topo.nodes, topology.host_mem_available_mb())
    if opts.swap_disk:
        topo = topo.with_disk("swap", parse_size_mb(opts.swap_disk))
    kernel_mod.check_spec(opts.kernel, opts.modules)  # names --kernel, before any download
    kern = kernel_mod.choose(opts.kernel, opts.modules, log)
    if opts.image:
        base = Path(opts.image).expanduser()
        if not base.is_file():
            raise HarnessError(f"image not found: {base}")
        image.check(base)
    else:
        base = image.ensure(log=log)
    acc = accel.choose(opts.accel)
    cmdline = tuple(opts.append.split()) + tuple(opts.extra_cmdline)
    timeout = opts.boot_timeout or (60.0 if acc.name == "kvm" else 180.0)
    log(f"ksm-harness: kernel {kern.describe()}; accel {acc.describe()}; "
        f"topology {topo.describe()}")
    return VMSpec(kernel=kern, base_image=base, accel=acc, topology=topo, cmdline=cmdline,
                  snapshots=opts.snapshot == "auto",
                  boot_timeout=timeout)
