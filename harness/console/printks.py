"""Where the classifier's report headers come from: one row per wording a supported kernel
(4.19 to 7.x) prints, with the source file and function that prints it and the versions that
print it.  tests/unit/test_printks.py builds a minimal report from each row and checks that
the kinds table (kinds.py) finds it with the right category and title.

``checked`` says how a row's wording was established: "6.1", "6.12" and "7.2" rows were read
in Debian's linux-source packages (7.2.13 read for the slab wording that changed after 6.12); "memory" rows (older kernels) come from the kernel's history
as remembered, not from a source tree at hand, and deserve a look when one is.  A since/until that falls between two versions read is as
remembered too.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Wording:
    kind: str  # the _KINDS row that must open the report
    source: str  # "file: function()" that prints the header
    header: str  # the header as printed, format filled in (culprit: cmp_and_merge_page)
    title: str  # the classifier's title, before " in <culprit>"
    since: str = "4.19"  # first supported version printing this wording
    until: str = ""  # last version printing it ("": still printed by the newest source read)
    checked: str = "6.1 6.12"
    lead: tuple[str, ...] = ()  # lines the kernel prints just before the header


_GPF = "arch/x86/kernel/traps.c: do_general_protection()/exc_general_protection() -> die()"
_DIE = "arch/x86/kernel/dumpstack.c: __die_header()"
_FAULT = "arch/x86/mm/fault.c: show_fault_oops()"
_LOCKDEP = "kernel/locking/lockdep.c"

WORDINGS: tuple[Wording, ...] = (
    # --- die() banners: "<str>: <err> [#<n>]<flags>"; 6.10 put "Oops: " before <str> ----------
    Wording("gpf", _GPF, "general protection fault: 0000 [#1] SMP KASAN PTI",
            "general protection fault", until="5.4", checked="memory"),
    Wording("gpf", _GPF + " (an out-of-tree backport of the 5.5 hint)",
            "general protection fault for non-canonical address 0xdffffc0000000001: 0000 [#1]"
            " PREEMPT SMP KASAN", "general protection fault", since="5.4", until="5.4",
            checked="issue 20 (syzkaller's corpus)"),
    Wording("gpf", _GPF, "general protection fault, probably for non-canonical address "
            "0xdffffc0000000001: 0000 [#1] PREEMPT SMP KASAN NOPTI", "general protection fault",
            since="5.5", until="6.9", checked="6.1"),
    Wording("gpf", _GPF, "general protection fault, maybe for address 0xffff888012345678: 0000"
            " [#1] SMP", "general protection fault", since="5.5", until="6.9", checked="6.1"),
    Wording("gpf", _GPF, "segment-related general protection fault: 0000 [#1] SMP",
            "general protection fault", since="5.5", until="6.9", checked="6.1"),
    Wording("gpf", _GPF, "Oops: general protection fault, probably for non-canonical address "
            "0xdffffc0000000001: 0000 [#1] PREEMPT SMP KASAN NOPTI", "general protection fault",
            since="6.10", checked="6.12"),
    Wording("gpf", _GPF, "Oops: segment-related general protection fault: 0000 [#1] SMP",
            "general protection fault", since="6.10", checked="6.12"),
    Wording("stack_segment", "arch/x86/kernel/traps.c: do_stack_segment()/exc_stack_segment()",
            "stack segment: 0000 [#1] SMP", "stack segment fault", until="6.9"),
    Wording("stack_segment", "arch/x86/kernel/traps.c: exc_stack_segment() -> " + _DIE,
            "Oops: stack segment: 0000 [#1] SMP", "stack segment fault", since="6.10",
            checked="6.12"),
    Wording("invalid_opcode", "arch/x86/kernel/traps.c: do_invalid_op()/exc_invalid_op()",
            "invalid opcode: 0000 [#1] PREEMPT SMP", "invalid opcode", until="6.9"),
    Wording("invalid_opcode", "arch/x86/kernel/traps.c: exc_invalid_op() -> " + _DIE,
            "Oops: invalid opcode: 0000 [#1] PREEMPT SMP", "invalid opcode", since="6.10",
            checked="6.12"),
    Wording("divide_error", "arch/x86/kernel/traps.c: do_divide_error()/exc_divide_error()",
            "divide error: 0000 [#1] SMP", "divide error", until="6.9"),
    Wording("divide_error", "arch/x86/kernel/traps.c: exc_divide_error() -> " + _DIE,
            "Oops: divide error: 0000 [#1] SMP", "divide error", since="6.10", checked="6.12"),
    Wording("oops", "arch/x86/mm/fault.c: no_context()/page_fault_oops() -> __die(\"Oops\")",
            "Oops: 0000 [#1] SMP KASAN", "Oops", until="6.9"),
    Wording("oops", "arch/x86/mm/fault.c: page_fault_oops() -> __die(\"Oops\") -> " + _DIE,
            "Oops: Oops: 0000 [#1] SMP KASAN", "Oops", since="6.10", checked="6.12"),
    Wording("oops", "arch/x86/mm/fault.c: pgtable_bad() -> " + _DIE,
            "Oops: Bad pagetable: 0009 [#1] SMP", "Oops", since="6.10", checked="6.12"),
    Wording("double_fault", "arch/x86/kernel/traps.c: do_double_fault()/exc_double_fault()",
            "traps: PANIC: double fault, error_code: 0x0", "PANIC: double fault"),
    Wording("stack_overflow", "arch/x86/kernel/traps.c: handle_stack_overflow() -> die()",
            "kernel stack overflow (double-fault): 0000 [#1] SMP", "kernel stack overflow",
            until="5.x", checked="memory"),
    Wording("stack_guard", "arch/x86/kernel/traps.c: handle_stack_overflow()",
            "BUG: stack guard page was hit at 00000000deadbeef (stack is 0000000012345678.."
            "00000000abcdef01)", "BUG: stack guard page was hit", until="5.x", checked="memory"),
    Wording("stack_guard", "arch/x86/kernel/traps.c: handle_stack_overflow()",
            "BUG: TASK stack guard page was hit at 00000000deadbeef (stack is 0000000012345678.."
            "00000000abcdef01)", "BUG: stack guard page was hit", since="5.x"),
    Wording("stack_guard", "arch/x86/kernel/traps.c: handle_stack_overflow()",
            "BUG: IRQ stack guard page was hit at 00000000deadbeef (stack is 0000000012345678.."
            "00000000abcdef01)", "BUG: stack guard page was hit", since="5.x"),
    # --- page faults ----------------------------------------------------------------------
    Wording("null_deref", _FAULT, "BUG: unable to handle kernel NULL pointer dereference at "
            "0000000000000008", "BUG: kernel NULL pointer dereference", until="4.20",
            checked="memory"),
    Wording("null_deref", _FAULT, "BUG: kernel NULL pointer dereference, address: "
            "0000000000000008", "BUG: kernel NULL pointer dereference", since="5.0"),
    Wording("paging", _FAULT, "BUG: unable to handle kernel paging request at ffffc90000a1b000",
            "BUG: unable to handle kernel paging request", until="4.20", checked="memory"),
    Wording("paging", _FAULT, "BUG: unable to handle page fault for address: ffffc90000a1b000",
            "BUG: unable to handle kernel paging request", since="5.0"),
    # --- BUG() and WARN() -----------------------------------------------------------------
    Wording("kernel_bug", "lib/bug.c: report_bug()", "kernel BUG at mm/ksm.c:1234!",
            "kernel BUG"),
    Wording("kernel_bug", "lib/bug.c: report_bug() (no CONFIG_DEBUG_BUGVERBOSE)",
            "Kernel BUG at cmp_and_merge_page+0x12/0x30 [verbose debug info unavailable]",
            "kernel BUG"),
    Wording("warning_at", "kernel/panic.c: __warn()",
            "WARNING: CPU: 1 PID: 35 at mm/ksm.c:1234 cmp_and_merge_page+0x12/0x30", "WARNING"),
    Wording("warning_at", "kernel/panic.c: __warn() (no CONFIG_DEBUG_BUGVERBOSE)",
            "WARNING: CPU: 1 PID: 35 at cmp_and_merge_page+0x12/0x30", "WARNING"),
    Wording("panic", "kernel/panic.c: panic()", "Kernel panic - not syncing: Fatal exception",
            "kernel panic: Fatal exception"),
    Wording("list_corruption", "lib/list_debug.c: __list_add_valid() (6.6: "
            "__list_add_valid_or_report())", "list_add corruption. next->prev should be prev "
            "(ffff888012345678), but was ffff888087654321. (next=ffff888011111111).",
            "BUG: corrupted list"),
    Wording("list_corruption", "lib/list_debug.c: __list_del_entry_valid() (6.6: "
            "__list_del_entry_valid_or_report())", "list_del corruption, ffff888012345678->next "
            "is LIST_POISON1 (dead000000000100)", "BUG: corrupted list"),
    Wording("refcount", "lib/refcount.c: refcount_warn_saturate() (4.19: refcount_*_checked())",
            "refcount_t: underflow; use-after-free.", "WARNING: refcount bug"),
    Wording("refcount_arch", "kernel/panic.c: refcount_error_report() <- arch/x86/mm/extable.c:"
            " ex_handler_refcount()", "refcount_t overflow at cmp_and_merge_page+0x12/0x30 in "
            "ksmd[35], uid/euid: 0/0", "WARNING: refcount bug", until="5.4", checked="memory"),
    Wording("usercopy", "mm/usercopy.c: usercopy_abort()", "usercopy: Kernel memory exposure "
            "attempt detected from SLUB object 'kmalloc-64' (offset 0, size 128)!",
            "BUG: bad usercopy"),
    Wording("vm_bug_on", "mm/debug.c: dump_page() (from VM_BUG_ON_PAGE/VM_BUG_ON_FOLIO)",
            "page dumped because: VM_BUG_ON_PAGE(PageTail(page))", "VM_BUG_ON_PAGE"),
    Wording("vm_bug_on", "mm/debug.c: dump_page() (from VM_BUG_ON_FOLIO)",
            "page dumped because: VM_BUG_ON_FOLIO(!folio_test_locked(folio))",
            "VM_BUG_ON_FOLIO", since="5.16", checked="6.12"),
    # --- sanitizers -----------------------------------------------------------------------
    Wording("kasan", "mm/kasan/report.c: print_error_description()/print_report()",
            "BUG: KASAN: use-after-free in cmp_and_merge_page+0x12/0x30",
            "KASAN: use-after-free Read"),
    Wording("kasan", "mm/kasan/report.c: print_error_description()/print_report()",
            "BUG: KASAN: slab-use-after-free in cmp_and_merge_page+0x12/0x30",
            "KASAN: slab-use-after-free Read", since="6.5", checked="6.12"),
    Wording("kasan", "mm/kasan/report.c: kasan_report_invalid_free()",
            "BUG: KASAN: double-free or invalid-free in cmp_and_merge_page+0x12/0x30",
            "KASAN: double-free or invalid-free", until="6.0", checked="memory"),
    Wording("kasan", "mm/kasan/report.c: kasan_report_invalid_free()",
            "BUG: KASAN: double-free in cmp_and_merge_page+0x12/0x30", "KASAN: double-free",
            since="6.1"),
    Wording("kasan", "mm/kasan/report.c: kasan_report_async() (tag-based modes, arm64)",
            "BUG: KASAN: invalid-access", "KASAN: invalid-access", since="5.0"),
    Wording("kasan", "mm/kasan/report.c: print_error_description()",
            "BUG: KASAN: null-ptr-deref in cmp_and_merge_page+0x12/0x30",
            "KASAN: null-ptr-deref Read"),
    Wording("kfence", "mm/kfence/report.c: kfence_report_error()",
            "BUG: KFENCE: use-after-free read in cmp_and_merge_page+0x12/0x30",
            "KFENCE: use-after-free read", since="5.12"),
    Wording("kmsan", "mm/kmsan/report.c: kmsan_report()",
            "BUG: KMSAN: uninit-value in cmp_and_merge_page+0x12/0x30", "KMSAN: uninit-value",
            since="6.1", checked="6.12"),
    Wording("kmsan", "mm/kmsan/hooks.c: kmsan_copy_to_user() -> kmsan_report()",
            "BUG: KMSAN: kernel-infoleak in _copy_to_iter+0x870/0x1fd0", "KMSAN: kernel-infoleak",
            since="6.1", checked="6.12"),
    Wording("kcsan", "kernel/kcsan/report.c: print_report()", "BUG: KCSAN: data-race in "
            "cmp_and_merge_page / ksm_do_scan", "KCSAN: data-race", since="5.8",
            checked="6.12"),
    Wording("ubsan", "lib/ubsan.c: ubsan_prologue()", "UBSAN: Undefined behaviour in "
            "mm/ksm.c:1234:5", "UBSAN: Undefined behaviour", until="5.9", checked="memory"),
    Wording("ubsan", "lib/ubsan.c: ubsan_prologue()", "UBSAN: shift-out-of-bounds in "
            "mm/ksm.c:1234:5", "UBSAN: shift-out-of-bounds", since="5.10"),
    Wording("ubsan_trap", "arch/x86/kernel/traps.c: handle_bug() with lib/ubsan.c: "
            "report_ubsan_failure()", "UBSAN: array index out of bounds at "
            "cmp_and_merge_page+0x12/0x30", "UBSAN: array index out of bounds", since="6.12",
            checked="6.12"),
    # --- hangs and lockups ----------------------------------------------------------------
    Wording("soft_lockup", "kernel/watchdog.c: watchdog_timer_fn()", "watchdog: BUG: soft "
            "lockup - CPU#1 stuck for 22s! [ksmd:35]", "BUG: soft lockup"),
    Wording("hard_lockup", "kernel/watchdog_hld.c: watchdog_overflow_callback()",
            "NMI watchdog: Watchdog detected hard LOCKUP on cpu 1", "BUG: hard lockup",
            until="6.6", checked="6.1"),
    Wording("hard_lockup", "kernel/watchdog.c: watchdog_hardlockup_check()",
            "watchdog: Watchdog detected hard LOCKUP on cpu 1", "BUG: hard lockup", since="6.7",
            checked="6.12"),
    Wording("hung_task", "kernel/hung_task.c: check_hung_task()", "INFO: task ksmd:35 blocked "
            "for more than 120 seconds.", "INFO: task hung"),
    Wording("rcu_stall", "kernel/rcu/tree_stall.h: print_other_cpu_stall()",
            "rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:", "INFO: rcu detected stall"),
    Wording("rcu_stall", "kernel/rcu/tree_stall.h: print_cpu_stall()",
            "rcu: INFO: rcu_sched self-detected stall on CPU", "INFO: rcu detected stall"),
    Wording("rcu_stall", "kernel/rcu/tree_exp.h: synchronize_rcu_expedited_wait()",
            "rcu: INFO: rcu_preempt detected expedited stalls on CPUs/tasks: {",
            "INFO: rcu detected stall"),
    Wording("rcu_stall", "kernel/rcu/tree_stall.h: print_other_cpu_stall() (4.19: no pr_fmt)",
            "INFO: rcu_sched detected stalls on CPUs/tasks:", "INFO: rcu detected stall",
            until="4.19", checked="memory"),
    Wording("wq_lockup", "kernel/workqueue.c: wq_watchdog_timer_fn()",
            "BUG: workqueue lockup - pool cpus=1 node=0 flags=0x0 nice=0 stuck for 31s!",
            "BUG: workqueue lockup"),
    # --- memory ---------------------------------------------------------------------------
    Wording("bad_page_state", "mm/page_alloc.c: bad_page()", "BUG: Bad page state in process "
            "ksmd  pfn:10a2b3", "BUG: Bad page state"),
    Wording("bad_page_map", "mm/memory.c: print_bad_pte()", "BUG: Bad page map in process ksmd"
            "  pte:8000000010a2b025 pmd:10a2c067", "BUG: Bad page map"),
    Wording("bad_rss", "kernel/fork.c: check_mm()", "BUG: Bad rss-counter state "
            "mm:00000000deadbeef type:MM_ANONPAGES val:1", "BUG: Bad rss-counter state"),
    Wording("mm_counters", "kernel/fork.c: check_mm()", "BUG: non-zero pgtables_bytes on "
            "freeing mm: 4096", "BUG: non-zero pgtables_bytes on freeing mm"),
    Wording("slub", "mm/slub.c: slab_bug()", "BUG kmalloc-64 (Not tainted): Object already "
            "free", "BUG: Object already free"),
    Wording("slub", "mm/slub.c: slab_bug()", "BUG kmalloc-64 (Tainted: G    B   W         ): "
            "Poison overwritten", "BUG: Poison overwritten", until="6.12"),
    # 7.2's check_bytes_and_report() names the object in the header and the overwritten
    # area on the next line ("[Poison overwritten] 0x...-0x... @offset=0. First byte ...")
    Wording("slub", "mm/slub.c: check_bytes_and_report() -> object_err() -> slab_bug()",
            "BUG kmalloc-64 (Tainted: G    B   W         ): Object corrupt",
            "BUG: Object corrupt", since="7.2", checked="7.2"),
    Wording("leaked_object", "mm/kmemleak.c: print_unreferenced()",
            "unreferenced object 0xffff888012345678 (size 64):", "memory leak"),
    Wording("oom_invoked", "mm/oom_kill.c: dump_header()", "ksmd invoked oom-killer: "
            "gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=0",
            "out of memory: ksmd invoked oom-killer"),
    Wording("oom_constraint", "mm/oom_kill.c: dump_oom_summary()", "oom-kill:constraint="
            "CONSTRAINT_NONE,nodemask=(null),cpuset=/,mems_allowed=0-1,global_oom,"
            "task_memcg=/,task=ksm-work,pid=35,uid=0", "out of memory"),
    Wording("oom_killed", "mm/oom_kill.c: oom_kill_process()", "Out of memory: Kill process 35"
            " (ksm-work) score 900 or sacrifice child",
            "out of memory: killed process ksm-work", until="5.0", checked="memory"),
    Wording("oom_killed", "mm/oom_kill.c: __oom_kill_process()", "Out of memory: Killed "
            "process 35 (ksm-work) total-vm:1048576kB, anon-rss:1000000kB, file-rss:0kB",
            "out of memory: killed process ksm-work", since="5.1"),
    # --- locking --------------------------------------------------------------------------
    Wording("deadlock", _LOCKDEP + ": print_circular_bug_header()",
            "WARNING: possible circular locking dependency detected", "possible deadlock"),
    Wording("deadlock", _LOCKDEP + ": print_deadlock_bug()",
            "WARNING: possible recursive locking detected", "possible deadlock"),
    Wording("irq_lock_order", _LOCKDEP + ": print_bad_irq_dependency()",
            "WARNING: HARDIRQ-safe -> HARDIRQ-unsafe lock order detected", "possible deadlock"),
    Wording("deadlock", _LOCKDEP + ": print_irq_inversion_bug()",
            "WARNING: possible irq lock inversion dependency detected", "possible deadlock"),
    Wording("held_lock_freed", _LOCKDEP + ": print_freed_lock_bug()",
            "WARNING: held lock freed!", "WARNING: held lock freed"),
    Wording("locks_held", _LOCKDEP + ": print_held_locks_bug()",
            "WARNING: ksmd/35 still has locks held!", "WARNING: still has locks held"),
    Wording("lock_to_user", _LOCKDEP + ": lockdep_sys_exit()",
            "WARNING: lock held when returning to user space!",
            "WARNING: lock held when returning to user space"),
    Wording("inconsistent_lock", _LOCKDEP + ": print_usage_bug()",
            "WARNING: inconsistent lock state", "inconsistent lock state"),
    Wording("unlock_balance", _LOCKDEP + ": print_unlock_imbalance_bug()",
            "WARNING: bad unlock balance detected!", "WARNING: bad unlock balance"),
    Wording("suspicious_rcu", _LOCKDEP + ": lockdep_rcu_suspicious()",
            "WARNING: suspicious RCU usage", "WARNING: suspicious RCU usage"),
    Wording("wait_context", _LOCKDEP + ": print_lock_invalid_wait_context()",
            "[ BUG: Invalid wait context ]", "BUG: Invalid wait context", since="5.7"),
    Wording("nonstatic_key", _LOCKDEP + ": assign_lock_key()/lockdep_init_map_type()",
            "INFO: trying to register non-static key.", "INFO: trying to register non-static key"),
    Wording("lockdep_limit", _LOCKDEP + ": add_lock_to_list()/alloc_list_entry()",
            "BUG: MAX_LOCKDEP_ENTRIES too low!", "BUG: lockdep limit too low"),
    Wording("lockdep_limit", _LOCKDEP + ": add_chain_cache()/alloc_chain_hlocks()",
            "BUG: MAX_LOCKDEP_CHAINS too low!", "BUG: lockdep limit too low"),
    Wording("spinlock", "kernel/locking/spinlock_debug.c: spin_dump()",
            "BUG: spinlock already unlocked on CPU#1, ksmd/35", "BUG: spinlock already unlocked"),
    Wording("rwlock", "kernel/locking/spinlock_debug.c: rwlock_bug()",
            "BUG: rwlock wrong owner on CPU#1, ksmd/35, 00000000deadbeef",
            "BUG: rwlock wrong owner"),
    Wording("atomic_sleep", "kernel/sched/core.c: __might_resched() (4.19: ___might_sleep())",
            "BUG: sleeping function called from invalid context at mm/ksm.c:1234",
            "BUG: sleeping function called from invalid context"),
    Wording("sched_atomic", "kernel/sched/core.c: __schedule_bug()",
            "BUG: scheduling while atomic: ksmd/35/0x00000002", "BUG: scheduling while atomic"),
    Wording("preemptible", "lib/smp_processor_id.c: check_preemption_disabled()",
            "BUG: using smp_processor_id() in preemptible [00000000] code: ksmd/35",
            "BUG: using smp_processor_id() in preemptible code"),
    Wording("preemptible", "lib/smp_processor_id.c: check_preemption_disabled()",
            "BUG: using __this_cpu_read() in preemptible [00000000] code: ksmd/35",
            "BUG: using __this_cpu_read() in preemptible code"),
    Wording("wq_leak", "kernel/workqueue.c: process_one_work()", "BUG: workqueue leaked lock or"
            " atomic: kworker/1:1/0x00000000/35", "BUG: workqueue leaked lock or atomic",
            until="6.8", checked="6.1"),
    Wording("wq_leak", "kernel/workqueue.c: process_one_work()", "BUG: workqueue leaked atomic, "
            "lock or RCU: kworker/1:1[35]", "BUG: workqueue leaked lock or atomic", since="6.9",
            checked="6.12"),
    # --- files, devices, the unwinder ------------------------------------------------------
    Wording("file_count", "fs/open.c: filp_close() (6.7: filp_flush())",
            "VFS: Close: file count is 0", "VFS: Close: file count is zero", until="5.x",
            checked="memory"),
    Wording("file_count", "fs/open.c: filp_flush()", "VFS: Close: file count is 0 (f_op="
            "shmem_file_operations)", "VFS: Close: file count is zero", since="6.1"),
    Wording("busy_inodes", "fs/super.c: generic_shutdown_super()", "VFS: Busy inodes after "
            "unmount of tmpfs. Self-destruct in 5 seconds.  Have a nice day...",
            "VFS: Busy inodes after unmount", until="5.x", checked="memory"),
    Wording("busy_inodes", "fs/super.c: generic_shutdown_super()", "VFS: Busy inodes after "
            "unmount of tmpfs (tmpfs)", "VFS: Busy inodes after unmount", since="6.1"),
    Wording("dentry_in_use", "fs/dcache.c: umount_check()", "BUG: Dentry 00000000deadbeef{i=2,"
            "n=ksm}  still in use (1) [unmount of tmpfs tmpfs]", "BUG: Dentry still in use"),
    Wording("netdev_wait", "net/core/dev.c: netdev_wait_allrefs()", "unregister_netdevice: "
            "waiting for lo to become free. Usage count = 2",
            "unregister_netdevice: waiting for DEV to become free"),
    Wording("stack_regs", "arch/x86/kernel/unwind_frame.c: unwind_next_frame()",
            "WARNING: kernel stack regs at 00000000deadbeef in ksmd:35 has bad 'bp' value "
            "0000000000000000", "WARNING: kernel stack regs has bad value"),
)
