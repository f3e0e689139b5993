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
    os.kill(vm.vm.child.pid, signal.SIGSTOP)  # the whole machine stops answering
    try:
        vm.run("true", timeout=10)
    finally:
        os.kill(vm.vm.child.pid, signal.SIGCONT) if os.environ.get("KSM_TEST_CONT") else None


def test_d_d_state_hang(vm):
    # A real in-guest hang: a writer blocks in D state on a frozen file system; the kernel's
    # hung-task detector reports it by itself (10 s here: 140 s in our guests, past this
    # wait's deadline).
    vm.run("echo 10 > /proc/sys/kernel/hung_task_timeout_secs && fsfreeze -f /", timeout=30,
           check=True)
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


# Reports written to /dev/kmsg take the kernel's own path to the serial console: the monitor
# cannot tell them from the kernel's, which is what these cases need (a report at a chosen
# moment, on a real guest).
WARNING_LINES = [
    "WARNING: CPU: 1 PID: 77 at mm/ksm.c:2291 cmp_and_merge_page+0x2f1/0x4c0",
    "Modules linked in:",
    "CPU: 1 PID: 77 Comm: ksmd Not tainted 6.1.0 #1",
    "RIP: 0010:cmp_and_merge_page+0x2f1/0x4c0",
    "Call Trace:",
    " <TASK>",
    " ksm_scan_thread+0x1a3/0x2a0",
    " kthread+0xe6/0x110",
    " </TASK>",
    "---[ end trace 0000000000000000 ]---",
]
BUG_LINES = [
    "kernel BUG at mm/rmap.c:1182!",
    "invalid opcode: 0000 [#1] PREEMPT SMP NOPTI",
    "CPU: 0 PID: 157 Comm: ksmwork Not tainted 6.1.0 #1",
    "RIP: 0010:page_add_anon_rmap+0x1f5/0x200",
    "Call Trace:",
    " <TASK>",
    " do_swap_page+0x6a3/0xb50",
    " __handle_mm_fault+0x7a2/0xe40",
    " handle_mm_fault+0xd0/0x2c0",
    " </TASK>",
    "---[ end trace 0000000000000000 ]---",
]


def kmsg(vm, lines):
    vm.run("; ".join(f"echo '<4>{line}' > /dev/kmsg" for line in lines), check=True)


@pytest.fixture
def warns_in_setup(vm):
    kmsg(vm, WARNING_LINES)  # during the fixture's set-up: the test must error in set-up
    yield


def test_h_warning_in_fixture_setup(vm, warns_in_setup):
    pass


def test_i_warning_then_hang(vm):
    kmsg(vm, WARNING_LINES)
    os.kill(vm.vm.child.pid, signal.SIGSTOP)  # then the machine stops answering
    vm.run("true", timeout=10)


def test_j_bug_ends_the_wait(vm):
    kmsg(vm, BUG_LINES)  # a fatal report: the 120 s wait must end within seconds
    vm.run("sleep 120", timeout=150)
