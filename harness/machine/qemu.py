"""The one place that knows QEMU's command line and the guest kernel's boot parameters."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from harness.machine.topology import MODULES_SERIAL, ROOT_SERIAL, Topology

QEMU = "qemu-system-x86_64"
# A host write or read error (the run directory's disk full) goes to the guest as EIO/ENOSPC.
# QEMU's default (werror=enospc) pauses the VM instead, and the user sees only a command
# that never ends.
DISK_ERRORS = "werror=report,rerror=report"

# Boot parameters, each chosen on purpose:
BASE_CMDLINE: tuple[str, ...] = (
    "console=ttyS0,115200",   # the serial console is our record of every kernel report
    "panic=-1",               # with QEMU's -no-reboot, a panic ends QEMU at once (~0.2 s)
    "panic_on_warn=0",        # a WARNING is reported and the run goes on to the next test
    "printk.devkmsg=on",      # test start/end markers written to /dev/kmsg are never dropped
    "printk.time=1",          # timestamps let reports be placed between test markers
    "slab_nomerge",           # keep ksm_rmap_item/ksm_stable_node/ksm_mm_slot slabs visible
    "numa_balancing=disable",  # it moves pages between nodes behind a test's back
    "mitigations=off",        # speculative-execution mitigations only slow TCG down
    "random.trust_cpu=on",    # crng ready at once, so sshd does not wait for entropy
    "tsc=reliable",           # no clocksource watchdog noise under TCG's erratic TSC
    # RCU stall reports after 100 s, not 21 s (syzkaller's value for VMs): under TCG a vCPU
    # the host did not run for 21 s was reported ("rcu_preempt kthread starved for 5250
    # jiffies", while a process opened a file), which is no kernel bug.
    "rcupdate.rcu_cpu_stall_timeout=100",
    "no_timer_check",
    "i8042.noaux", "i8042.nomux", "i8042.nopnp",  # no PS/2 mouse probing (the keyboard
                                                  # stays: QMP send-key delivers sysrq)
    "acpi=noirq",             # PCI IRQ routing without ACPI link objects: ~0.3 s each in TCG
    "cryptomgr.notests",      # crypto self-tests cost ~0.6 s of boot under TCG
    "loglevel=5",             # boot chatter stays in dmesg, off the slow serial port; warnings
                              # and worse reach the console from the start, and the guest
                              # raises the console level to 7 before any test runs
    "rw",
)


@dataclass
class QemuConfig:
    kernel: Path
    initrd: Path
    root_disk: Path              # the qcow2 overlay
    module_disk: Path | None
    topology: Topology
    accel: str                   # "kvm" or "tcg"
    ssh_port: int
    qmp_socket: Path
    pidfile: Path
    run_dir: Path
    cmdline_extra: tuple[str, ...] = ()
    name: str = "ksm-guest"
    extra_args: list[str] = field(default_factory=list)

    def disk_serials(self) -> list[str]:
        """The serial of every disk attached, in argv() order; the initramfs waits for each
        and finds the root and module disks by theirs."""
        mods = [MODULES_SERIAL] if self.module_disk is not None else []
        return [ROOT_SERIAL, *mods, *(d.serial for d in self.topology.disks)]

    def kernel_cmdline(self) -> str:
        parts = [p for p in BASE_CMDLINE if p] + list(self.topology.cmdline) + list(self.cmdline_extra)
        return " ".join(parts)

    def argv(self) -> list[str]:
        topo = self.topology
        ncpu = topo.cpus
        args = [QEMU, "-name", self.name, "-M", "pc", "-accel", self.accel,
                # no ERMS under TCG: the kernel then clears a page with 512 stores (rep
                # stosq), not 4096 (rep stosb): under TCG a fault that cleared one page at
                # times took up to ~1 s with rep stosb (README "Boot parameters")
                "-cpu", "max,-erms" if self.accel == "tcg" else "host",
                # one CPU per socket: CPUs on different NUMA nodes must not share an LLC,
                # or every kernel prints a topology_sane WARNING at boot
                "-smp", f"{ncpu},sockets={ncpu},cores=1,threads=1",
                "-m", f"{topo.mem_mb}M",
                "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
                "-kernel", str(self.kernel), "-initrd", str(self.initrd),
                "-append", self.kernel_cmdline(),
                "-chardev", "stdio,id=con0,signal=off", "-serial", "chardev:con0",
                "-qmp", f"unix:{self.qmp_socket},server=on,wait=off",
                "-pidfile", str(self.pidfile)]
        if len(topo.nodes) > 1:
            cpu = 0
            for i, node in enumerate(topo.nodes):
                cpus = f"{cpu}-{cpu + node.cpus - 1}" if node.cpus > 1 else str(cpu)
                cpu += node.cpus
                args += ["-object", f"memory-backend-ram,id=mem{i},size={node.mem_mb}M",
                         "-numa", f"node,nodeid={i},cpus={cpus},memdev=mem{i}"]
        # Every disk has a serial, by which the guest finds it: its guest-side name (vda,
        # vdb, ...) follows PCI slot order and so depends on which disks are attached.
        slot = 4
        args += ["-drive", f"if=none,id=root,file={self.root_disk},format=qcow2,cache=unsafe,"
                           f"discard=unmap,{DISK_ERRORS}",
                 "-device", f"virtio-blk-pci,drive=root,serial={ROOT_SERIAL},addr={slot:#x}"]
        if self.module_disk is not None:
            slot += 1
            args += ["-drive", f"if=none,id=mods,file={self.module_disk},format=raw,readonly=on,"
                             f"{DISK_ERRORS}",
                     "-device", f"virtio-blk-pci,drive=mods,serial={MODULES_SERIAL},"
                                f"addr={slot:#x}"]
        for disk in topo.disks:
            slot += 1
            path = self.run_dir / f"disk-{disk.serial}.raw"
            args += ["-drive", f"if=none,id=d-{disk.serial},file={path},format=raw,cache=unsafe,"
                             f"{DISK_ERRORS}",
                     "-device", f"virtio-blk-pci,drive=d-{disk.serial},serial={disk.serial},"
                                f"addr={slot:#x}"]
        # user networking, isolated (restrict=on): only the SSH port forward reaches the guest
        args += ["-netdev", f"user,id=net0,restrict=on,"
                            f"hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22",
                 "-device", "virtio-net-pci,netdev=net0,romfile=,addr=0x3"]
        return args + self.extra_args
