"""Topology parsing and the QEMU command line built from it (no QEMU started)."""
from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.machine.qemu import QemuConfig
from harness.machine.topology import Node, Topology, parse_numa


def test_numa_specs() -> None:
    assert parse_numa("2") == (Node(), Node())
    assert parse_numa("512M:1,1536M:2") == (Node(512, 1), Node(1536, 2))
    assert parse_numa("1G") == (Node(1024, 1),)
    for bad in ("0", "9", "1G:x", "lots", "1G:0"):
        with pytest.raises(HarnessError):
            parse_numa(bad)


def _argv(topo: Topology) -> list[str]:
    cfg = QemuConfig(kernel=Path("/k"), initrd=Path("/i"), root_disk=Path("/r.qcow2"),
                     module_disk=Path("/m.ext4"), topology=topo, accel="tcg", ssh_port=2222,
                     qmp_socket=Path("/q.sock"), pidfile=Path("/p"), run_dir=Path("/run"))
    return cfg.argv()


def test_each_node_gets_its_own_socket_and_memory() -> None:
    argv = " ".join(_argv(Topology(nodes=parse_numa("512M:1,1G:2"))))
    # one CPU per socket avoids the topology_sane boot WARNING
    assert "-smp 3,sockets=3,cores=1,threads=1" in argv
    assert "-m 1536M" in argv
    assert "node,nodeid=0,cpus=0,memdev=mem0" in argv
    assert "node,nodeid=1,cpus=1-2,memdev=mem1" in argv
    assert "hostfwd=tcp:127.0.0.1:2222-:22" in argv and "restrict=on" in argv
    assert "-no-reboot" in argv and "panic=-1" in argv


def test_single_node_has_no_numa_options_and_disks_keep_their_order() -> None:
    argv = _argv(Topology(nodes=parse_numa("1")).with_disk("swap", 256).with_disk("b", 64))
    assert "-numa" not in argv
    devices = [a for a in argv if a.startswith("virtio-blk-pci")]
    assert [d.split(",")[1] for d in devices] == ["drive=root", "drive=mods", "drive=d-swap",
                                                  "drive=d-b"]
