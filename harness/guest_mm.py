"""Guest system plumbing the KSM scenarios need besides KSM itself: NUMA facts, memory cgroups,
swap (zram and a virtio disk found by its serial), /proc/vmstat, THP and compaction knobs.

Everything takes a :class:`harness.remote.Runner` (the VM) and raises ``Unavailable`` (which the
fixtures turn into a skip with the reason) when the guest kernel lacks a feature.
"""
from __future__ import annotations

import re
import time

from harness.access.remote import CommandResult, Runner, quote

CGROUP_ROOT = "/sys/fs/cgroup"
THP_ENABLED = "/sys/kernel/mm/transparent_hugepage/enabled"


class Unavailable(Exception):
    """The guest lacks something a scenario needs (NUMA nodes, zram, a swap disk...)."""


class GuestError(Exception):
    """A guest command the scenario depends on failed."""


def sh(vm: Runner, cmd: str, timeout: float = 60.0) -> CommandResult:
    r = vm.run(cmd, timeout=timeout)
    if not r.ok:
        raise GuestError(f"guest command failed (exit {r.status}): {cmd}: "
                         f"{(r.stderr or r.stdout).strip()[-300:]}")
    return r


# ---- NUMA ----

def online_nodes(vm: Runner) -> list[int]:
    text = vm.run("cat /sys/devices/system/node/online", timeout=30).stdout.strip()
    nodes: list[int] = []
    for part in filter(None, text.split(",")):
        lo, _, hi = part.partition("-")
        nodes += range(int(lo), int(hi or lo) + 1)
    return nodes


def node_cpus(vm: Runner, node: int) -> list[int]:
    """The CPUs of a NUMA node (empty for a memory-only node)."""
    r = vm.run(f"cat /sys/devices/system/node/node{int(node)}/cpulist", timeout=30)
    cpus: list[int] = []
    for part in filter(None, r.stdout.strip().split(",")):
        lo, _, hi = part.partition("-")
        cpus += range(int(lo), int(hi or lo) + 1)
    return cpus


def pin(vm: Runner, pid: int, node: int) -> int:
    """Pin a process to the first CPU of ``node`` (its allocations then prefer that node);
    returns the CPU. Unavailable when the node has no CPU."""
    cpus = node_cpus(vm, node)
    if not cpus:
        raise Unavailable(f"NUMA node {node} has no CPU to pin a process to")
    sh(vm, f"taskset -pc {cpus[0]} {int(pid)}")
    return cpus[0]


# ---- /proc/vmstat ----

def vmstat(vm: Runner) -> dict[str, int]:
    out = sh(vm, "cat /proc/vmstat").stdout
    return {k: int(v) for k, v in (line.split() for line in out.splitlines() if line.strip())}


def meminfo_kb(vm: Runner, name: str) -> int:
    """One /proc/meminfo field in kB (e.g. SwapCached)."""
    out = sh(vm, f"grep '^{name}:' /proc/meminfo").stdout.split()
    return int(out[1])


def vmstat_delta(before: dict[str, int], after: dict[str, int], *names: str) -> dict[str, int]:
    return {n: after.get(n, 0) - before.get(n, 0) for n in names}


# ---- memory cgroups (v2) ----

class MemCgroup:
    """A cgroup v2 child with the memory controller. Processes must join it BEFORE they
    allocate: v2 does not move charges with a process."""

    def __init__(self, vm: Runner, name: str) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ValueError(f"bad cgroup name {name!r}")
        self.vm = vm
        self.path = f"{CGROUP_ROOT}/{name}"
        r = vm.run(f"grep -qw memory {CGROUP_ROOT}/cgroup.controllers && "
                   f"/bin/echo +memory > {CGROUP_ROOT}/cgroup.subtree_control && "
                   f"mkdir -p {self.path} && test -e {self.path}/memory.reclaim", timeout=30)
        if not r.ok:
            raise Unavailable(f"no cgroup v2 memory controller with memory.reclaim in the "
                              f"guest: {(r.stderr or r.stdout).strip()[-200:]}")

    def add(self, pid: int) -> None:
        sh(self.vm, f"/bin/echo {int(pid)} > {self.path}/cgroup.procs")

    def write(self, name: str, value: str | int) -> None:
        sh(self.vm, f"/bin/echo {quote(value)} > {self.path}/{name}")

    def read(self, name: str) -> str:
        return sh(self.vm, f"cat {self.path}/{name}").stdout.strip()

    def keyed(self, name: str) -> dict[str, int]:
        """A flat keyed file (memory.events, memory.stat) as numbers."""
        return {k: int(v) for k, v in (line.split() for line in self.read(name).splitlines())}

    def current(self) -> int:
        return int(self.read("memory.current"))

    def reclaim(self, amount: str = "1G", timeout: float = 120.0) -> int:
        """Push the group's memory out (to swap when there is some) with memory.reclaim; the
        kernel says EAGAIN when it could not reclaim the whole amount, which is expected.
        Returns the bytes still charged."""
        r = self.vm.run(f"/bin/echo {quote(amount)} > {self.path}/memory.reclaim",
                        timeout=timeout)
        if not r.ok and "Resource temporarily unavailable" not in r.stderr + r.stdout:
            raise GuestError(f"memory.reclaim of {self.path} failed: "
                             f"{(r.stderr or r.stdout).strip()[-200:]}")
        return self.current()

    def procs(self) -> list[int]:
        return [int(p) for p in self.read("cgroup.procs").split()]

    def remove(self, timeout: float = 60.0) -> None:
        """Kill what is left inside (cgroup.kill) and remove the group, with a deadline."""
        self.vm.run(f"test -d {self.path} || exit 0; "
                    f"[ -e {self.path}/cgroup.kill ] && /bin/echo 1 > {self.path}/cgroup.kill; "
                    f"i=0; while [ -n \"$(cat {self.path}/cgroup.procs)\" ] && [ $i -lt 200 ]; "
                    f"do sleep 0.05; i=$((i+1)); done; rmdir {self.path}", timeout=timeout)


# ---- swap ----

def swaps(vm: Runner) -> dict[str, dict[str, int]]:
    """Active swap devices: {device: {size_kb, used_kb, prio}}."""
    out = sh(vm, "cat /proc/swaps").stdout.splitlines()[1:]
    found = {}
    for line in out:
        parts = line.split()
        if len(parts) >= 5:
            found[parts[0]] = {"size_kb": int(parts[2]), "used_kb": int(parts[3]),
                               "prio": int(parts[4])}
    return found


def disk_by_serial(vm: Runner, serial: str) -> str:
    """/dev/NAME of the virtio disk whose serial is ``serial`` (there is no udev in the guest)."""
    r = vm.run(f"for b in /sys/block/*; do [ \"$(cat $b/serial 2>/dev/null)\" = {quote(serial)} ]"
               f" && echo /dev/${{b##*/}}; done", timeout=30)
    devs = r.stdout.split()
    if not devs:
        raise Unavailable(f"no disk with serial {serial!r} in the guest: boot it with "
                          f"Topology().with_disk({serial!r}, SIZE_MB)")
    return devs[0]


def swapon(vm: Runner, device: str, priority: int = 10) -> None:
    sh(vm, f"mkswap {quote(device)} >/dev/null && swapon -p {priority} {quote(device)}",
       timeout=120)


def swapoff(vm: Runner, device: str, timeout: float = 300.0) -> float:
    t0 = time.monotonic()
    sh(vm, f"grep -q '^{device} ' /proc/swaps || exit 0; swapoff {quote(device)}",
       timeout=timeout)
    return time.monotonic() - t0


def zram_create(vm: Runner, size_mb: int = 256) -> str:
    """A fresh zram device of ``size_mb`` (modprobe zram first unless it is built in, as in
    kernels built with our fragment, which have no module tree); returns /dev/zramN."""
    r = vm.run("test -d /sys/class/zram-control || modprobe zram num_devices=0 2>/dev/null"
               " || modprobe zram", timeout=60)
    if not r.ok:
        raise Unavailable(f"the guest kernel has no zram: {(r.stderr or r.stdout).strip()}")
    r = vm.run(f"zramctl --find --size {int(size_mb)}M", timeout=60)
    if not r.ok or not r.stdout.strip().startswith("/dev/zram"):
        raise Unavailable(f"cannot set up a zram device: {(r.stderr or r.stdout).strip()}")
    return r.stdout.strip()


def zram_remove(vm: Runner, device: str) -> None:
    swapoff(vm, device)
    vm.run(f"zramctl --reset {quote(device)}", timeout=60)


# ---- THP and compaction ----

def selected(text: str) -> str:
    """The selected choice of a sysfs choice file: "always [madvise] never" -> "madvise"."""
    m = re.search(r"\[([^\]]+)\]", text)
    return m.group(1) if m else text.strip()


def read_selected(vm: Runner, path: str) -> str | None:
    r = vm.run(f"cat {path}", timeout=30)
    return selected(r.stdout) if r.ok else None


def write_file(vm: Runner, path: str, value: str | int, timeout: float = 60.0) -> None:
    sh(vm, f"/bin/echo {quote(value)} > {path}", timeout=timeout)


def compact(vm: Runner, timeout: float = 120.0) -> float:
    """Compact all memory (/proc/sys/vm/compact_memory); returns how long it took."""
    t0 = time.monotonic()
    r = vm.run("test -w /proc/sys/vm/compact_memory && echo 1 > /proc/sys/vm/compact_memory",
               timeout=timeout)
    if not r.ok:
        raise Unavailable("the guest kernel has no /proc/sys/vm/compact_memory "
                          "(CONFIG_COMPACTION=n)")
    return time.monotonic() - t0


def compact_node(vm: Runner, node: int, timeout: float = 120.0) -> float:
    """Compact one NUMA node's zones (/sys/devices/system/node/nodeN/compact, the kernel's
    compact_node(): sync, whole zone, skip hints ignored); returns how long it took."""
    path = f"/sys/devices/system/node/node{int(node)}/compact"
    t0 = time.monotonic()
    r = vm.run(f"test -w {path} && echo 1 > {path}", timeout=timeout)
    if not r.ok:
        raise Unavailable(f"the guest kernel has no {path} (CONFIG_COMPACTION=n or no NUMA)")
    return time.monotonic() - t0


# Each CPU keeps freed pages on its own list, up to the zone's low watermark by default (10833
# pages a CPU for a 1 GiB node): pages there are not in the buddy allocator, so compaction's
# free scanner cannot migrate into them. A huge fraction makes that limit 4 batches (~252).
PCP_HIGH_FRACTION = "/proc/sys/vm/percpu_pagelist_high_fraction"
PCP_HIGH_FRACTION_SMALL = 1 << 20


def pcp_high_fraction(vm: Runner) -> str:
    """vm.percpu_pagelist_high_fraction (5.14+; Unavailable before)."""
    r = vm.run(f"cat {PCP_HIGH_FRACTION}", timeout=30)
    if not r.ok:
        raise Unavailable(f"the guest kernel has no {PCP_HIGH_FRACTION} (5.14+)")
    return r.stdout.strip()


# /proc/PID/stat fields after "(comm)": state is the 1st, minflt the 8th, majflt the 10th,
# utime and stime the 12th and 13th (proc(5) numbers them 3, 10, 12, 14, 15)
_STAT_FIELDS = {"state": 0, "minflt": 7, "majflt": 9, "utime": 11, "stime": 12}


def _stat(line: str) -> dict[str, str]:
    rest = line.rsplit(")", 1)[-1].split()
    return {k: rest[i] for k, i in _STAT_FIELDS.items() if i < len(rest)}


def process_progress(vm: Runner, pid: int, interval: float = 1.0, timeout: float = 8.0) -> str:
    """Is a process that stopped answering stuck or only slow? Its state, fault and CPU-time
    counters over ``interval`` seconds, its wchan and kernel stack: one line of evidence for
    a hang verdict ("" when the guest does not answer within ``timeout``)."""
    p = f"/proc/{int(pid)}"
    r = vm.run(f"cat {p}/stat; sleep {interval}; cat {p}/stat; cat {p}/wchan; echo; "
               f"cat {p}/stack", timeout=timeout)  # wchan has no newline of its own
    lines = r.stdout.splitlines()
    if len(lines) < 2 or ")" not in lines[0] or ")" not in lines[1]:
        return f"pid {pid}: no /proc entry ({(r.stderr or r.stdout).strip()[-120:]})"
    a, b = _stat(lines[0]), _stat(lines[1])
    try:
        delta = {k: int(b[k]) - int(a[k]) for k in ("minflt", "majflt", "utime", "stime")}
    except (KeyError, ValueError):
        return f"pid {pid}: unreadable stat: {lines[:2]}"
    moving = any(delta.values())
    wchan = lines[2].strip() if len(lines) > 2 else "?"
    stack = " <- ".join(x.split("]", 1)[-1].strip() for x in lines[3:] if x.strip())[:600]
    return (f"pid {pid} over {interval:g}s after the deadline: state {b.get('state', '?')}, "
            f"minor faults +{delta['minflt']}, major faults +{delta['majflt']}, CPU ticks "
            f"+{delta['utime'] + delta['stime']} ({'still running: slow, not stuck' if moving else 'no progress'}); "
            f"wchan {wchan or '0'}; kernel stack: {stack or '(empty: in user space or running)'}")
