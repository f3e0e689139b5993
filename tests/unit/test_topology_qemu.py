"""Topology parsing and the QEMU command line built from it (no QEMU started)."""
from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.machine.qemu import QemuConfig
from harness.machine.topology import Disk, Node, Topology, parse_numa


def test_numa_specs() -> None:
    assert parse_numa("2") == (Node(), Node())
    assert parse_numa("512M:1,1536M:2") == (Node(512, 1), Node(1536, 2))
    assert parse_numa("1G") == (Node(1024, 1),)
    for bad in ("0", "9", "1G:x", "lots", "1G:0"):
        with pytest.raises(HarnessError):
            parse_numa(bad)


def _config(topo: Topology, module_disk: Path | None = Path("/m.ext4")) -> QemuConfig:
    return QemuConfig(kernel=Path("/k"), initrd=Path("/i"), root_disk=Path("/r.qcow2"),
                      module_disk=module_disk, topology=topo, accel="tcg", ssh_port=2222,
                      qmp_socket=Path("/q.sock"), pidfile=Path("/p"), run_dir=Path("/run"))


def _argv(topo: Topology) -> list[str]:
    return _config(topo).argv()


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


def _device_serials(argv: list[str]) -> list[str | None]:
    """The serial= of every virtio-blk device in ``argv``, in order (None: no serial)."""
    serials: list[str | None] = []
    for arg in argv:
        if arg.startswith("virtio-blk-pci"):
            opts = dict(o.partition("=")[::2] for o in arg.split(",")[1:])
            serials.append(opts.get("serial"))
    return serials


@pytest.mark.parametrize("module_disk", [Path("/m.ext4"), None], ids=["modules", "built-in"])
@pytest.mark.parametrize("extra", [(), ("swap",), ("swap", "scratch")])
def test_every_disk_has_a_serial_and_the_initramfs_is_told_them_all(
        module_disk: Path | None, extra: tuple[str, ...]) -> None:
    # the guest finds each disk by serial: its position (vda, vdb...) depends on the set
    topo = Topology(nodes=parse_numa("1"))
    for serial in extra:
        topo = topo.with_disk(serial, 64)
    cfg = _config(topo, module_disk)
    expected = ["root", *(["modules"] if module_disk else []), *extra]
    assert _device_serials(cfg.argv()) == expected
    assert cfg.disk_serials() == expected


def test_extra_disk_serials_are_checked() -> None:
    for bad in ("root", "modules", "", "a,b", "x" * 21, "with space"):
        with pytest.raises(HarnessError):
            Disk(bad, 64)
    with pytest.raises(HarnessError):
        Topology().with_disk("swap", 64).with_disk("swap", 32)


def test_every_disk_reports_host_io_errors_to_the_guest() -> None:
    # QEMU's default (werror=enospc) pauses the VM on a full host disk: the guest must get
    # EIO/ENOSPC instead, on the root overlay, the module disk and every extra disk
    topo = Topology(nodes=parse_numa("1")).with_disk("swap", 64).with_disk("data", 64)
    argv = _argv(topo)
    drives = [argv[i + 1] for i, a in enumerate(argv) if a == "-drive"]
    assert len(drives) == 4
    for drive in drives:
        opts = drive.split(",")
        assert "werror=report" in opts and "rerror=report" in opts, drive


def test_guest_ram_in_files_shared_to_save_a_snapshot_private_to_restore_one() -> None:
    cfg = _config(Topology(nodes=parse_numa("512M:1,1G:1")))
    cfg.ram_dir, cfg.ram_shared = Path("/snap"), True
    argv = " ".join(cfg.argv())
    assert "memory-backend-file,id=mem0,size=512M,mem-path=/snap/ram0,share=on" in argv
    assert "memory-backend-file,id=mem1,size=1024M,mem-path=/snap/ram1,share=on" in argv
    assert "memory-backend-ram" not in argv
    cfg.ram_shared = False  # a restored guest writes to its own copy, never to the snapshot
    assert "mem-path=/snap/ram1,share=off" in " ".join(cfg.argv())
    one = _config(Topology(nodes=parse_numa("1G")))
    one.ram_dir = Path("/snap")
    argv = " ".join(one.argv())
    assert "-numa" not in argv and "-machine memory-backend=mem0" in argv
    assert one.ram_files() == [Path("/snap/ram0")]


def test_a_qmp_socket_path_too_long_for_sun_path_becomes_an_abstract_name() -> None:
    from harness.machine.qmp import SUN_PATH_MAX, abstract_name, qemu_qmp_arg
    short = Path("/root/.cache/ksm-harness/runs/pytest-1/001-test_merge/qmp.sock")
    assert abstract_name(short) is None
    assert qemu_qmp_arg(short) == f"unix:{short},server=on,wait=off"
    deep = Path("/builds/" + "x" * 80 + "/runs/pytest-20261205-023558-26981/001-test_merge/qmp.sock")
    assert len(str(deep)) > SUN_PATH_MAX
    name = abstract_name(deep)
    assert name is not None and len(name) < SUN_PATH_MAX
    assert name != abstract_name(deep.with_name("other.sock"))  # one per run dir
    assert qemu_qmp_arg(deep) == f"unix:{name},abstract=on,server=on,wait=off"
