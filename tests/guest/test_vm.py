"""The VM layer on real QEMU guests: topology, both channels, isolation of the base image,
guests side by side."""
from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.access.remote import Runner
from harness.assets import initramfs
from harness.guest_handle import Guest
from harness.ksm import KSM_DIR
from harness.machine.topology import Topology, parse_numa
from harness.machine.vm import VM, VMSpec
from harness.pytest_plugin.fixtures import VMPool


def test_guest_has_the_declared_numa_topology(vm: VM) -> None:
    r = vm.run("cat /sys/devices/system/node/online; nproc; "
               "cat /sys/devices/system/node/node0/cpulist /sys/devices/system/node/node1/cpulist",
               check=True)
    assert r.stdout.split() == ["0-1", "2", "0", "1"]


def test_boot_is_clean(vm: VM) -> None:
    # The topology flags avoid the topology_sane WARNING; nothing else may warn at boot.
    r = vm.run("dmesg | grep -E 'WARNING|BUG|Oops|Call Trace' || true", check=True)
    assert r.stdout == "", r.stdout


def test_run_returns_status_stdout_stderr(vm: VM) -> None:
    r = vm.run("echo out; echo err >&2; exit 7")
    assert (r.status, r.stdout, r.stderr) == (7, "out\n", "err\n")


def test_put_and_get(vm: VM, tmp_path: Path) -> None:
    src = tmp_path / "blob"
    src.write_bytes(bytes(range(256)) * 64)
    vm.put(src, "/tmp/blob", mode=0o755)
    assert vm.run("stat -c %a /tmp/blob", check=True).stdout.strip() == "755"
    vm.get("/tmp/blob", tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == src.read_bytes()


def test_console_is_a_second_channel(vm: VM) -> None:
    r = vm.console_run("cat /proc/sys/kernel/hostname")
    assert r.status == 0 and r.stdout.strip() == "ksm-guest"


def test_ssh_is_bound_to_loopback_and_host_key_pinned(vm: VM) -> None:
    assert vm.config is not None
    assert f"hostfwd=tcp:127.0.0.1:{vm.port}-:22" in " ".join(vm.config.argv())
    assert vm.ssh is not None and vm.ssh.conn is not None
    keys = vm.ssh.conn.client.get_host_keys()
    assert keys.lookup(f"[127.0.0.1]:{vm.port}") is not None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def test_base_image_is_untouched(vm_factory: Callable[..., Guest], vm_spec: VMSpec) -> None:
    before = _sha256(vm_spec.base_image)
    guest = vm_factory(topology=Topology(nodes=parse_numa("1")))
    guest.run("dd if=/dev/urandom of=/root/junk bs=1M count=16 && rm -rf /usr/share/zoneinfo "
              "&& sync", check=True, timeout=120)
    guest.close()
    assert _sha256(vm_spec.base_image) == before


def test_two_guests_side_by_side(vm_pool: VMPool) -> None:
    a = VM(vm_pool.base, vm_pool.run_dir / "side-a")
    b = VM(vm_pool.base, vm_pool.run_dir / "side-b")
    vm_pool.live += [a, b]
    try:
        a.launch()
        b.launch()  # both QEMUs run before either is ready
        a.wait_ready()
        b.wait_ready()
        assert a.port != b.port
        assert a.run("echo a", check=True).stdout == "a\n"
        assert b.run("echo b", check=True).stdout == "b\n"
    finally:
        vm_pool.stop(a)
        vm_pool.stop(b)


def _disks(vm: Runner) -> dict[str, tuple[str, int]]:
    """serial -> (/dev/NAME, size in bytes) of every virtio disk the guest sees."""
    r = vm.run("for b in /sys/block/vd*; do echo ${b##*/} $(cat $b/size) $(cat $b/serial); done",
               check=True)
    found = {}
    for line in r.stdout.splitlines():
        name, sectors, *serial = line.split()
        found[serial[0] if serial else f"(none: {name})"] = (f"/dev/{name}", int(sectors) * 512)
    return found


def _mounted(vm: Runner) -> dict[str, str]:
    """mount point -> source, from the guest's /proc/mounts."""
    lines = vm.run("cat /proc/mounts", check=True).stdout.splitlines()
    return {f[1]: f[0] for f in (line.split() for line in lines)}


def test_disks_are_mounted_by_serial(vm: VM) -> None:
    disks, mounts = _disks(vm), _mounted(vm)
    assert set(disks) == {"root", "modules"}, disks
    assert mounts["/"] == disks["root"][0]
    # the file system holding the module tree (/lib is /usr/lib in a merged-/usr image)
    r = vm.run("findmnt -n -o SOURCE -T /lib/modules/$(uname -r)", check=True)
    assert r.stdout.strip() == disks["modules"][0]


def test_disk_roles_ignore_position(vm_factory: Callable[..., Guest],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a module disk (as for a kernel with everything built in) the disk after the
    root is an extra one: a by-position init mounted it as the module tree and failed. Debian's
    kernel still boots without its module disk: its boot modules are in the initramfs."""
    monkeypatch.setattr(initramfs, "module_disk", lambda kernel: None)
    guest = vm_factory(topology=Topology(nodes=parse_numa("1")).with_disk("swap", 64)
                       .with_disk("scratch", 32))
    assert guest.config is not None and guest.config.module_disk is None
    disks, mounts = _disks(guest), _mounted(guest)
    assert set(disks) == {"root", "swap", "scratch"}, disks
    assert disks["swap"][1] == 64 << 20 and disks["scratch"][1] == 32 << 20
    assert mounts["/"] == disks["root"][0]
    assert not any("lib/modules" in m for m in mounts), mounts
    assert not {disks["swap"][0], disks["scratch"][0]} & set(mounts.values()), mounts
    # the guest's root disk is the host's qcow2 overlay of the base image
    assert guest.qmp is not None
    blocks = {b["device"]: b["inserted"] for b in guest.qmp.command("query-block")}
    assert Path(blocks["root"]["file"]).name == "root-overlay.qcow2"
    assert blocks["root"]["image"]["virtual-size"] == disks["root"][1]


def test_restored_guest_is_a_fresh_one(vm_factory: Callable[..., Guest], vm_spec: VMSpec) -> None:
    # Two guests of the run's own kernel and topology: the second starts from the snapshot
    # (the first saved it, or an earlier one did) and keeps nothing of the first: no file it
    # wrote, no KSM state, no dmesg line; its clock is the host's. (Its SSH keys are the
    # saved boot's, by design: see harness/machine/snapshot.py.)
    if not vm_spec.snapshots:
        pytest.skip("snapshots are off (--snapshot off)")
    first = vm_factory()
    first.run("echo left-behind > /root/marker; echo '<5>ksm-harness: from the first guest' "
              f"> /dev/kmsg; echo 1 > {KSM_DIR}/run", check=True)
    first.close()
    second = vm_factory()
    assert second.vm.restored is not None, "the second guest was booted, not restored"
    assert not second.run("test -e /root/marker").ok
    assert second.run(f"cat {KSM_DIR}/run", check=True).stdout.strip() == "0"
    assert "from the first guest" not in second.run("dmesg", check=True).stdout
    assert abs(float(second.run("date +%s.%N", check=True).stdout) - time.time()) < 5
    assert "KSM-HARNESS-READY" in second.vm.console_log.read_text()  # the saved boot, on top
