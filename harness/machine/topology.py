"""The VM's shape, declared rather than assembled at call sites: NUMA nodes, CPUs, memory,
extra disks and kernel command-line additions."""
from __future__ import annotations

import re
from dataclasses import dataclass, replace

from harness.errors import HarnessError


@dataclass(frozen=True)
class Node:
    mem_mb: int = 1024
    cpus: int = 1


# Serials of the disks every guest may have; the guest finds each disk by its virtio serial
# (/sys/block/*/serial), never by its position (vda, vdb, ...), which depends on which
# disks are attached.
ROOT_SERIAL = "root"        # the qcow2 overlay of the guest image
MODULES_SERIAL = "modules"  # the kernel's module tree, when the kernel has one
RESERVED_SERIALS = (ROOT_SERIAL, MODULES_SERIAL)


@dataclass(frozen=True)
class Disk:
    """An extra raw disk; the guest finds it by serial in /sys/block/*/serial."""
    serial: str
    size_mb: int

    def __post_init__(self) -> None:
        # virtio-blk serials are at most 20 bytes; the serial also names QEMU's drive id
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,20}", self.serial):
            raise HarnessError(f"disk serial {self.serial!r}: use 1-20 of A-Z a-z 0-9 _ . -")
        if self.serial in RESERVED_SERIALS:
            raise HarnessError(f"disk serial {self.serial!r} is the harness's own "
                               f"(reserved: {', '.join(RESERVED_SERIALS)})")


@dataclass(frozen=True)
class Topology:
    nodes: tuple[Node, ...] = (Node(), Node())
    disks: tuple[Disk, ...] = ()
    cmdline: tuple[str, ...] = ()

    @property
    def cpus(self) -> int:
        return sum(n.cpus for n in self.nodes)

    @property
    def mem_mb(self) -> int:
        return sum(n.mem_mb for n in self.nodes)

    def with_disk(self, serial: str, size_mb: int) -> Topology:
        if any(d.serial == serial for d in self.disks):
            raise HarnessError(f"two disks with serial {serial!r}")
        return replace(self, disks=self.disks + (Disk(serial, size_mb),))

    def describe(self) -> str:
        nodes = ",".join(f"{n.mem_mb}M:{n.cpus}" for n in self.nodes)
        disks = "".join(f" +disk {d.serial}={d.size_mb}M" for d in self.disks)
        return f"{len(self.nodes)} node(s) [{nodes}] {self.cpus} cpu(s){disks}"


def parse_size_mb(text: str) -> int:
    m = re.fullmatch(r"(\d+)([MmGg]?)", text.strip())
    if not m:
        raise HarnessError(f"bad size {text!r}: use e.g. 512M or 1G")
    n = int(m.group(1))
    return n * 1024 if m.group(2).lower() == "g" else n


NUMA_SYNTAX = ("a node count (2: two nodes of 1 GiB and 1 CPU each), or MEM[:CPUS] per node, "
               "comma separated (512M:1,1536M:1)")


def parse_numa(spec: str) -> tuple[Node, ...]:
    """``2`` (two default nodes), or per node ``MEM[:CPUS]`` separated by commas:
    ``1G,1G``, ``512M:1,1536M:2``. Errors name ``--numa`` and its syntax."""
    spec = spec.strip()
    if re.fullmatch(r"\d+", spec):
        count = int(spec)
        if not 1 <= count <= 8:
            raise HarnessError(f"--numa {spec}: between 1 and 8 nodes")
        return tuple(Node() for _ in range(count))
    nodes = []
    for part in spec.split(","):
        mem, _, cpus = part.partition(":")
        if not re.fullmatch(r"\d+[MmGg]?", mem.strip()):
            raise HarnessError(f"--numa {spec}: bad node {part!r}; use {NUMA_SYNTAX}")
        if cpus and not cpus.isdigit():
            raise HarnessError(f"--numa {spec}: bad CPU count {cpus!r}; use {NUMA_SYNTAX}")
        nodes.append(Node(mem_mb=parse_size_mb(mem), cpus=int(cpus) if cpus else 1))
    if any(n.cpus < 1 for n in nodes):
        raise HarnessError(f"--numa {spec}: every node needs at least one CPU")
    if any(n.mem_mb < 1 for n in nodes):
        raise HarnessError(f"--numa {spec}: every node needs memory")
    return tuple(nodes)


def canonical_numa(spec: str) -> str:
    """The topology in one spelling (``2`` and ``1G,1G`` are the same machine)."""
    return ",".join(f"{n.mem_mb}M:{n.cpus}" for n in parse_numa(spec))


def host_mem_available_mb(meminfo: str = "/proc/meminfo") -> int | None:
    """The host's MemAvailable (or MemTotal less 512 MiB on old kernels) in MiB; None when
    /proc/meminfo cannot be read."""
    fields: dict[str, int] = {}
    try:
        with open(meminfo) as fh:
            for line in fh:
                name, _, rest = line.partition(":")
                if rest.split() and rest.split()[0].isdigit():
                    fields[name] = int(rest.split()[0]) // 1024
    except OSError:
        return None
    if "MemAvailable" in fields:
        return fields["MemAvailable"]
    return max(fields["MemTotal"] - 512, 0) if "MemTotal" in fields else None


def check_fits_host(spec: str, nodes: tuple[Node, ...], available_mb: int | None) -> None:
    """Refuse a guest larger than the host's available memory: QEMU would start it and the
    host would swap or the OOM killer end it, without a word from us."""
    want = sum(n.mem_mb for n in nodes)
    if available_mb is not None and want > available_mb:
        raise HarnessError(f"--numa {spec}: the guest needs {want} MiB but the host has only "
                           f"{available_mb} MiB available (MemAvailable); use smaller nodes")
