"""Run by tests/guest/test_monitor.py in a child pytest: tests that break the guest on
purpose. Their outcomes are asserted from the outside."""
import os
import signal

import pytest


def test_a_panics(vm):
    vm.run("echo c > /proc/sysrq-trigger", timeout=60)


def test_b_runs_on_a_fresh_vm(vm):
    assert vm.generation == 2
    assert vm.run("cat /sys/devices/system/node/online", check=True).stdout.strip() == "0-1"


def test_c_frozen_qemu(vm):
    os.kill(vm.child.pid, signal.SIGSTOP)  # the whole machine stops answering
    try:
        vm.run("true", timeout=10)
    finally:
        os.kill(vm.child.pid, signal.SIGCONT) if os.environ.get("KSM_TEST_CONT") else None


def test_d_d_state_hang(vm):
    # A real in-guest hang: a writer blocks in D state on a frozen file system; the kernel's
    # hung-task detector (30 s in our guests) reports it by itself.
    vm.run("fsfreeze -f /", timeout=30, check=True)
    vm.run("echo x > /root/blocked", timeout=50)


def test_e_after_hangs(vm):
    assert vm.generation == 4
    assert vm.run("echo alive", check=True).stdout == "alive\n"


@pytest.mark.allow_kernel("OOM")
def test_f_allowed_oom(vm):
    # A real OOM kill inside a small memory cgroup: allowed here, by the marker.
    vm.run("mkdir -p /sys/fs/cgroup/oomt && echo 32M > /sys/fs/cgroup/oomt/memory.max "
           "&& echo 0 > /sys/fs/cgroup/oomt/memory.swap.max", check=True)
    r = vm.run("sh -c 'echo $$ > /sys/fs/cgroup/oomt/cgroup.procs && "
               "exec python3 -c \"b = bytearray(200 << 20)\"'", timeout=120)
    assert r.status != 0  # killed


def test_g_oom_not_allowed(vm):
    vm.run("sh -c 'echo $$ > /sys/fs/cgroup/oomt/cgroup.procs && "
           "exec python3 -c \"b = bytearray(200 << 20)\"'", timeout=120)
