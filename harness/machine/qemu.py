"""The one place that knows QEMU's command line and the guest kernel's boot parameters
and sysctls."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from harness.machine.qmp import qemu_qmp_arg
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
    # DAMON_STAT (7.x, on by default in Debian's) samples pages' access bits from boot, KSM
    # pages' too, and holds DAMON exclusively: starting DAMON through sysfs is then EBUSY.
    # A dotted parameter no kernel knows is ignored silently (init/main.c).
    "damon_stat.enabled=N",
    "mitigations=off",        # speculative-execution mitigations only slow TCG down
    "random.trust_cpu=on",    # crng ready at once, so sshd does not wait for entropy
    "tsc=reliable",           # no clocksource watchdog noise under TCG's erratic TSC
    # RCU stall reports after 100 s, not 21 s (syzkaller's value for VMs): under TCG a vCPU
    # the host did not run for 21 s was reported ("rcu_preempt kthread starved for 5250
    # jiffies", while a process opened a file), which is no kernel bug.
    "rcupdate.rcu_cpu_stall_timeout=100",
    # Soft lockups after 110 s, not 20 s (syzkaller's VM value; hung tasks come at 140 s,
    # RCU stalls at 100): under TCG the host once ran neither vCPU for 22 s, and the guest
    # reported a soft lockup on both at once, in unrelated code (ext4_readdir, an IRQ's skb
    # allocation), right after a test began: no kernel bug. A real lockup that a test's own
    # deadline meets first is a hang verdict whose evidence is every CPU's backtrace.
    "watchdog_thresh=55",
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


# Guest sysctls, written by the initramfs before anything else runs.
GUEST_SYSCTLS: dict[str, str] = {
    "kernel.numa_balancing": "0",          # no page moves behind a test's back
    "kernel.sysrq": "1",                   # every sysrq function, for hang evidence
    # A D-state task is reported by the kernel itself after 140 s (syzkaller's value for VMs;
    # the kernel's default is 120 s): under TCG the guest runs many times slower than on
    # hardware, and with 30 s ksmd was reported waiting on ksm_thread_mutex while a run=2 ran
    # (busy in the page allocator) for over 30 s, where it takes 0.3-1.3 s (10 s once in 103).
    # Our own deadlines name shorter hangs, with the blocked tasks' stacks (sysrq w via QMP).
    "kernel.hung_task_timeout_secs": "140",
    "kernel.hung_task_warnings": "-1",
    "kernel.panic_on_oops": "0",           # an oops is reported; SSH usually survives it
    "kernel.printk": "7 4 1 7",            # every kernel message reaches the console log
    "vm.swappiness": "100",
}


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
    # Guest RAM in files ram_dir/ram<node> (snapshots, harness/machine/snapshot.py): shared
    # with the file while a snapshot is being made, a private copy-on-write view of the
    # saved file in a restored guest.
    ram_dir: Path | None = None
    ram_shared: bool = False

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
                "-qmp", qemu_qmp_arg(self.qmp_socket),
                "-pidfile", str(self.pidfile)]
        if len(topo.nodes) > 1:
            cpu = 0
            for i, node in enumerate(topo.nodes):
                cpus = f"{cpu}-{cpu + node.cpus - 1}" if node.cpus > 1 else str(cpu)
                cpu += node.cpus
                args += ["-object", self._memory_backend(i, node.mem_mb),
                         "-numa", f"node,nodeid={i},cpus={cpus},memdev=mem{i}"]
        elif self.ram_dir is not None:
            args += ["-object", self._memory_backend(0, topo.mem_mb),
                     "-machine", "memory-backend=mem0"]
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

    def ram_files(self) -> list[Path]:
        """The files that hold the guest's RAM, one per NUMA node (none without ram_dir)."""
        if self.ram_dir is None:
            return []
        return [self.ram_dir / f"ram{i}" for i in range(len(self.topology.nodes))]

    def _memory_backend(self, i: int, mem_mb: int) -> str:
        if self.ram_dir is None:
            return f"memory-backend-ram,id=mem{i},size={mem_mb}M"
        share = "on" if self.ram_shared else "off"
        return (f"memory-backend-file,id=mem{i},size={mem_mb}M,"
                f"mem-path={self.ram_files()[i]},share={share}")
