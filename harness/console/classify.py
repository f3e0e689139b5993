"""Find kernel crash reports in console or dmesg output.

The kernel prints every failure (WARN, BUG, oops, sanitizer report, hang
detector, OOM kill, ...) as a header line followed by registers and stack
traces.  We spot those headers, gather the lines that belong to each report
and name it: a category (WARNING, BUG, KASAN, HUNG_TASK, OOM, ...), a title
("WARNING in ksm_scan_thread") and the culprit function, found by skipping the
reporting machinery and generic helpers in the stack.

Input may carry ``[ 12.345678]`` timestamps, ``[ T123]``/``[ C1]`` caller ids,
``<4>`` levels, ``\\r``, interleaved CPUs and cut lines.  With caller ids,
lines of other tasks are kept out of a report; on a timestamped console,
unprefixed lines are userspace output and are ignored.

Reports come in log order and the first is the primary one: a panic that an
oops causes is part of the oops' report.  Each OOM kill is its own report of
category OOM, so a caller can allow them.  :class:`StreamClassifier` works line
by line on a live console; :func:`classify` is the batch wrapper.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Report:
    """One kernel report; the first of a log is the primary one."""

    category: str
    title: str
    frame: str | None
    corrupted: bool
    start_line: int
    end_line: int
    text: str


# --- console lines -----------------------------------------------------------

_PREFIX = re.compile(
    r"(?:\*\* \d+ printk messages dropped \*\* )?"
    r"(?:\d{4}/\d\d/\d\d \d\d:\d\d:\d\d )?"  # the fuzzer's own log time
    r"(?:\S+ login: )?"
    r"(?:[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \S+ kernel: )?"  # syslog copy
    r"(?P<lvl><\d{1,3}>)?"
    r"(?:\[ *(?P<ts>\d+\.\d+)\])?"
    r"(?: ?\[ *(?P<ctx>[CT]\d+)\])?"
    r"(?: *\[\d+:[^\]]*: *\d+\])?"  # Android's [cpu:comm:pid]
)
# A kernel line glued after other output, like a shell prompt: "# [   9.91] ...".
_GLUED = re.compile(r"(?:<\d{1,3}>)?\[ *\d+\.\d{6}\]")
# Old lockdep put its headers in brackets: "[ INFO: ... ]".
_BRACKETED = re.compile(r"\[ (.*\S) \]$")


@dataclass(frozen=True)
class _Line:
    idx: int
    raw: str
    msg: str  # without the console prefix, indentation kept
    text: str  # msg stripped
    ctx: str  # caller id ("T123", "C1") or ""
    prefixed: bool  # carries a kernel timestamp, level or caller id
    glued: bool  # the prefix came after other text on the line


def _parse_line(idx: int, raw: str) -> _Line:
    raw = raw.rstrip("\n").replace("\r", "")
    m = _PREFIX.match(raw)
    assert m is not None  # every part is optional
    glued = False
    if not (m["ts"] or m["ctx"]) and (g := _GLUED.search(raw, 1)):
        m, glued = _PREFIX.match(raw, g.start()), True
        assert m is not None
    msg = raw[m.end():]
    if (m["ts"] or m["ctx"]) and msg.startswith(" "):
        msg = msg[1:]
    text = msg.strip()
    if b := _BRACKETED.match(text):
        text = b[1]
    return _Line(idx, raw, msg, text, m["ctx"] or "",
                 bool(m["lvl"] or m["ts"] or m["ctx"]), glued)


# --- stack frames ------------------------------------------------------------

_SYM = r"[A-Za-z_$][\w.$]*"
_FRAME = re.compile(
    rf"(?:\[<?[0-9a-fx]+>?\]\s*){{0,2}}(?P<q>\?\s*)?(?P<fn>{_SYM})"
    r"(?:\+0x[0-9a-f]+/0x[0-9a-f]+|\s+\S+:\d+\s+\[inline\])"
)
_ARM_FRAME = re.compile(
    rf"(?:\[<[0-9a-f]+>\] )?\(?(?P<fn>{_SYM})(?:\+0x[0-9a-f]+/0x[0-9a-f]+)?\)? from "
)
_RIP = re.compile(
    r"(?:RIP|IP|EIP|NIP|EIP is at|PC is at|pc\s*:|epc\s*:)\s*:?\s*"
    r"(?:[0-9a-f]{4}:)?(?:\[<?[0-9a-f]+>?\]\s*){0,2}"
    rf"(?P<fn>{_SYM})\+0x"
)
_STACK_START = re.compile(
    r"(?:Call Trace|Call trace|Backtrace|backtrace(?: \(crc \w+\))?|stack backtrace)\s*:?$"
)
# Lines after which the first stack of a report is over.
_BREAK = re.compile(
    r"(?:Allocated by task|Freed by task|allocated by task|freed by task|kfence-#\d+"
    r"|The buggy address|Memory state around|Showing all locks|Local variable"
    r"|Uninit was|value changed|Reported by|NMI backtrace|Sending NMI|Kernel panic"
    r"|---\[ end|Last potentially related|Second to last|Bytes b4|INFO: "
    r"|irq event stamp|RIP: 00(?:33|23|2b):|(?:read|write)(?:-write)?(?: \(marked\))? to 0x"
    r"|Object 0x|Redzone|Padding|page last (?:allocated|free)|\d+ locks? held by"
    r"|Disabling lock debugging|Call Trace:|Call trace:)"
)
_SUFFIX = re.compile(r"(?:\.(?:isra|constprop|part|cold|lto_priv|llvm|localalias|\d+)\w*)+$")


def _clean(fn: str) -> str:
    return _SUFFIX.sub("", fn)


_CONTEXT_MARK = re.compile(r"(?:<(?:IRQ|EOI|NMI|TASK|SOFTIRQ)>\s*)+")


def _frame_of(text: str) -> str | None:
    """The function of a reliable stack frame line, else None."""
    if text.startswith("<"):
        text = _CONTEXT_MARK.sub("", text, count=1)
    if m := _FRAME.match(text):
        if m["q"] or text.endswith("(unreliable)"):
            return None
        return _clean(m["fn"])
    if m := _ARM_FRAME.match(text):
        return _clean(m["fn"])
    return None


def _rip_of(text: str) -> str | None:
    m = _RIP.match(text)
    return _clean(m["fn"]) if m else None


def _is_frame_line(text: str) -> bool:
    if text.startswith("<"):
        text = _CONTEXT_MARK.sub("", text, count=1)
    return bool(_FRAME.match(text) or _ARM_FRAME.match(text))


# Frames of the reporting machinery itself: never the culprit.
_NEVER = re.compile("|".join([
    r"^_*dump_stack", r"^_*show_stack", r"^dump_backtrace", r"^_*warn(?:_slowpath\w*)?$",
    r"^__warn_printk", r"report_bug", r"^handle_bug", r"fixup_bug", r"^do_error_trap",
    r"^do_trap", r"invalid_op", r"^exc_", r"^asm_", r"panic", r"^_*die(?:_\w+)?$", r"^oops_",
    r"bug_handler", r"^brk_handler", r"^do_debug_exception", r"^el1_", r"kasan", r"__asan",
    r"kmsan", r"__msan", r"kfence", r"ubsan", r"__sanitizer", r"kcsan", r"check_memory_region",
    r"print_address_description", r"^print_report", r"^print_trailer", r"^object_err",
    r"lockdep", r"printk", r"^print_\w*bug", r"^check_(?:noncircular|prevs?_add|irq_usage"
    r"|usage_\w+|flags)$", r"^validate_chain", r"^_*lock_(?:acquire|release|acquired|contended"
    r"|is_held|downgrade)", r"^mark_lock", r"^mark_usage", r"^look_up_lock_class",
    r"^register_lock_class", r"^__lock_\w+", r"^__pfx_", r"^__cfi_", r"stack_chk_fail",
    r"should_fail", r"^fail_dump", r"trace_hardirqs", r"_indirect_thunk_", r"^perf_trace_",
    r"panicking", r"rust_begin_unwind", r"rust_helper_BUG", r"^entry_SYS", r"^do_syscall_",
    r"^x64_sys_call", r"^ret_from_fork", r"^_*schedule_bug", r"^spin_dump", r"^walk_stackframe",
    r"^__do_kernel_fault", r"^do_kernel_fault", r"^warn_bogus_irq_restore", r"assertfail",
    r"^warn_alloc", r"^debug_print_object", r"^__debug_object", r"^do_tag_check_fault",
    r"^do_mem_abort", r"^el1h_", r"^do_bad_area", r"^do_translation_fault", r"^__do_page_fault",
    r"^do_sea$", r"^do_user_addr_fault", r"^handle_page_fault", r"^exc_page_fault", r"fortify",
    r"hwasan", r"^stack_trace_\w+", r"^arch_stack_walk",
]))
# Generic helpers: the caller is a better name, but they beat nothing.
_HELPER = re.compile(r"(?:^|_)(?:" + "|".join([
    r"spin_(?:lock|unlock|trylock)\w*", r"raw_spin\w*", r"queued_\w*lock\w*", r"do_raw_\w+",
    r"(?:read|write)_(?:lock|unlock)\w*", r"mutex_(?:lock|unlock|trylock|remove_waiter)\w*",
    r"mutex_optimistic_spin", r"down(?:_\w+)?$",
    r"up(?:_read|_write)?$", r"rwsem\w*", r"osq_(?:lock|unlock)", r"might_(?:sleep|fault|resched)",
    r"mem(?:cpy|set|move|cmp|chr|scan)\w*", r"str(?:n?cpy|lcpy|scpy|n?cmp|n?len|r?chr|n?str"
    r"|l?cat)\w*", r"copy_(?:to|from)_user\w*", r"(?:get|put)_user\w*", r"refcount_\w+",
    r"list_(?:add|del|replace|move|splice)\w*", r"list_\w+_valid\w*", r"v?sn?printf",
    r"v?scnprintf", r"k?v?asprintf", r"string(?:_nocheck)?$", r"pointer$", r"debug_object\w*",
    r"wake_up\w*", r"rb_(?:erase|insert|first|next|prev|last|replace)\w*", r"klist_\w+",
    r"test_and_(?:set|clear|change)_bit", r"atomic_dec_and\w*",
    r"del_timer\w*", r"timer_delete\w*", r"flush_work\w*", r"cancel_\w*work\w*",
    r"try_to_grab_pending", r"flush_workqueue", r"drain_workqueue", r"destroy_workqueue",
    r"finish_wait", r"wait_for_completion\w*", r"kthread_stop\w*", r"kobject_(?:del|put"
    r"|release|cleanup|uevent\w*|add\w*)", r"add_uevent_var", r"get_device_parent",
    r"device_(?:add|del|unregister|destroy|for_each_child|remove_file)", r"sysfs_remove\w*",
    r"rollback_registered\w*", r"unregister_netdevice\w*", r"unregister_netdev",
    r"hwrng_unregister", r"i2c_del_adapter", r"tty_unregister_device", r"usb_kill_urb",
    r"usb_kill_anchored_urbs", r"usb_control_msg", r"usb_hcd_submit_urb", r"usb_submit_urb",
    r"usb_start_wait_urb", r"usb_(?:bulk|interrupt)_msg",
    r"dummy_urb_enqueue", r"devres_release_all", r"kill_fasync", r"ref_tracker_free",
    r"timer_is_static_object", r"work_is_static_object", r"(?:read|write)[bwlq]$", r"iput$",
    r"kfree_skb\w*", r"skb_release\w*", r"unregister_client", r"device_release",
    r"skb_(?:put|push|pull|over_panic|under_panic)", r"local_bh_enable\w*", r"(?:in|out)[bwl]$",
    r"k[vz]?free\w*", r"vfree", r"kmem_cache_(?:alloc|free)\w*", r"kmem_cache\w*", r"slab_\w+",
    r"k[mzc]alloc\w*", r"kv[mz]alloc\w*", r"krealloc\w*", r"v[mz]alloc\w*", r"alloc_pages\w*",
    r"alloc_frozen_pages\w*", r"free_large_kmalloc", r"get_page_from_freelist", r"mod_timer\w*",
    r"lock_timer_base", r"add_timer\w*", r"memdup_user\w*", r"strndup_user", r"kmemdup\w*",
]) + r")")


# Source files of generic code; symbolized frames name them.
_HELPER_FILE = re.compile(
    r"(?:lib/|mm/(?:sl[aou]b\w*|util|vmalloc|percpu\w*|filemap"
    r"|mempool)\.c|kernel/(?:locking|rcu|printk)/|kernel/(?:panic|kcov|kthread|stacktrace)\.c"
    r"|kernel/time/timer\.c|fs/(?:inode|dcache|buffer)\.c|arch/[^/]+/(?:kernel/traps|mm/fault)\.c)"
)
_FRAME_PATH = re.compile(
    rf"(?:\[<?[0-9a-fx]+>?\]\s*){{0,2}}({_SYM})(?:\+0x[0-9a-f]+/0x[0-9a-f]+)?\s+([\w./+-]+):\d+")


def _helper_funcs(texts: list[str]) -> set[str]:
    """Functions that symbolized frames place in generic source files."""
    return {_clean(m[1]) for t in texts if (m := _FRAME_PATH.match(t)) and _HELPER_FILE.match(m[2])}


def _generic(fn: str, helpers: set[str] | frozenset[str] = frozenset()) -> bool:
    return bool(_NEVER.search(fn) or _HELPER.search(fn) or fn in helpers)


def _pick(cands: Iterable[str], skip: re.Pattern[str] | None,
          helpers: set[str] | frozenset[str] = frozenset()) -> str | None:
    """First candidate that is not machinery or helper; else the first helper."""
    helper = None
    for fn in cands:
        if _NEVER.search(fn) or (skip and skip.search(fn)):
            continue
        if _HELPER.search(fn) or fn in helpers:
            helper = helper or fn
            continue
        return fn
    return helper


# --- kinds of report ---------------------------------------------------------


@dataclass(frozen=True)
class _Kind:
    """A report header and how to read the report it opens."""

    name: str
    category: str
    regex: re.Pattern[str]
    title: str  # format over the header's named groups; " in <frame>" is appended
    how: str = "stack"  # culprit: header|rip|stack|at|stall|hang|last|none
    skip: re.Pattern[str] | None = None  # culprit candidates to pass over
    stack: bool = True  # a whole report carries a stack trace
    direct: bool = False  # frames follow the header without a "Call Trace:" line
    follow: tuple[str, ...] = ()  # joins an open report of these categories ("*": any)
    preamble: bool = False  # the oops printed right after it is part of it
    generic: bool = False  # loose wording: trusted only on a kernel-prefixed line
    corrupted: bool = False  # this header alone means the real one was lost
    gap: int = 10  # unrelated lines tolerated inside the report


def _k(name: str, category: str, regex: str, title: str, skip: str | None = None,
       **kw: Any) -> _Kind:
    return _Kind(name, category, re.compile(regex), title,
                 skip=re.compile(skip) if skip else None, **kw)


_OOPS_NAMES = frozenset({"kernel_bug", "warning_at", "oops", "invalid_opcode",
                         "internal_error", "stack_overflow"})
_ALLOC_SKIP = (r"kmemleak|alloc|kmem|slab|mmap|create_object|idr_get|list_lru_init"
               r"|kasprintf|pcpu_create|strn?dup|memdup")

_KINDS: tuple[_Kind, ...] = (
    _k("kasan", "KASAN", rf"BUG: KASAN: (?P<bug>.+?)(?: in (?P<fn>{_SYM})| on address| at addr|$)",
       "KASAN: {bug}{access}", how="header"),
    _k("kfence", "KFENCE", rf"BUG: KFENCE: (?P<bug>.+?) in (?P<fn>{_SYM})", "KFENCE: {bug}",
       how="header", direct=True),
    _k("kmsan", "KMSAN", rf"BUG: KMSAN: (?P<bug>.+?) in (?P<fn>{_SYM})", "KMSAN: {bug}",
       how="header", direct=True),
    _k("kcsan", "KCSAN", rf"BUG: KCSAN: (?P<bug>.+?) in (?P<fn>{_SYM})", "KCSAN: {bug}",
       how="header", direct=True),
    _k("ubsan", "UBSAN", r"UBSAN: (?P<bug>.+?) in \S+", "UBSAN: {bug}"),
    _k("null_deref", "NULL_DEREF", r"BUG: (?:unable to handle )?kernel NULL pointer dereference",
       "BUG: kernel NULL pointer dereference", how="rip", preamble=True),
    _k("paging", "PAGING_REQUEST",
       r"BUG: unable to handle (?:kernel paging request|page fault for address)",
       "BUG: unable to handle kernel paging request", how="rip", preamble=True),
    _k("paging_cut", "PAGING_REQUEST", r"BUG: unable to handle kernel",
       "BUG: unable to handle kernel", how="rip", preamble=True, corrupted=True),
    _k("arm_null", "NULL_DEREF", r"Unable to handle kernel NULL pointer dereference",
       "BUG: kernel NULL pointer dereference", how="rip", preamble=True),
    _k("arm_paging", "PAGING_REQUEST", r"Unable to handle kernel (?:paging request|\w+ (?:to|from))",
       "BUG: unable to handle kernel paging request", how="rip", preamble=True),
    # die()'s banner: "[Oops: ][segment-related ]general protection fault[, probably for
    # ...]: 0000 [#1]"; a user task's fault ("comm[pid] general protection fault ip:") is not one.
    _k("gpf", "GPF", r"(?:Oops: )?(?:segment-related )?general protection fault[:,]",
       "general protection fault", how="rip"),
    _k("stack_segment", "GPF", r"(?:Oops: )?stack segment: ", "stack segment fault", how="rip"),
    _k("stack_overflow", "PANIC", r"kernel stack overflow \(double-fault\)",
       "kernel stack overflow", how="rip", follow=("*",)),
    _k("double_fault", "PANIC", r"(?:traps: )?PANIC: double fault", "PANIC: double fault",
       how="rip", follow=("*",)),
    _k("kernel_bug", "BUG", r"[Kk]ernel BUG at (?P<src>\S+?)!?(?: |$)", "kernel BUG", how="rip"),
    _k("invalid_opcode", "OOPS", r"(?:Oops: )?invalid opcode: ", "invalid opcode", how="rip",
       follow=("*",)),
    _k("divide_error", "OOPS", r"(?:Oops: )?divide[ _]error: ", "divide error", how="rip"),
    _k("oops", "OOPS", r"Oops(?: - \w+)?: .*\[#\d+\]", "Oops", how="rip", follow=("*",)),
    _k("internal_error", "OOPS", r"Internal error: .*\[#\d+\]", "Internal error", how="rip",
       follow=("*",)),
    _k("unhandled_fault", "OOPS", r"Unhandled fault: ", "Unhandled fault", how="rip",
       preamble=True),
    _k("alignment_trap", "OOPS", r"Alignment trap: ", "Alignment trap", how="rip", preamble=True),
    _k("list_corruption", "LIST_CORRUPTION",
       r"(?:slab \S+ )?(?:__)?list_\w+ (?:corruption|double add)", "BUG: corrupted list",
       how="rip", skip=r"list", preamble=True, follow=("*",)),
    _k("refcount", "REFCOUNT", r"refcount_t: ", "WARNING: refcount bug", how="rip",
       skip=r"refcount|kobject_", preamble=True, follow=("*",)),
    _k("usercopy", "BUG", r"(?i:usercopy: kernel memory (?:exposure|overwrite) attempt)",
       "BUG: bad usercopy", how="rip", skip=r"usercopy|__check|check_\w+_object|virt_addr_valid",
       preamble=True, follow=("*",)),
    _k("vm_bug_on", "VM_BUG_ON", r"page dumped because: (?P<macro>VM_BUG_ON\w*)", "{macro}",
       how="rip", preamble=True),
    _k("warning_at", "WARNING",
       r"WARNING: (?:CPU: \d+ (?:UID: \d+ )?PID: \d+ )?(?:at )?(?P<src>[\w./+-]+:\d+)"
       rf"(?: (?:at )?(?P<fn>{_SYM}))?", "WARNING", how="header"),
    _k("deadlock", "LOCKDEP",
       r"(?:WARNING|INFO): (?:possible circular locking dependency|possible recursive locking"
       r"|possible irq lock inversion dependency) detected", "possible deadlock", how="at", gap=30,
       skip=r"process_one_work|flush_workqueue|drain_workqueue|destroy_workqueue"),
    # The irq-safe lock's user, running in interrupt context, closes the cycle.
    _k("irq_lock_order", "LOCKDEP",
       r"(?:WARNING|INFO): (?:SOFT|HARD)IRQ-safe -> (?:SOFT|HARD)IRQ-unsafe lock order detected",
       "possible deadlock", how="irqsafe", gap=30),
    _k("inconsistent_lock", "LOCKDEP", r"(?:WARNING|INFO): inconsistent lock state",
       "inconsistent lock state", how="at", gap=30),
    _k("suspicious_rcu", "LOCKDEP", r"(?:WARNING|INFO|BUG): suspicious RCU usage",
       "WARNING: suspicious RCU usage", skip=r"rcu|kmem|slab|kmalloc|vmalloc|kcalloc|kzalloc",
       gap=30),
    _k("unlock_balance", "LOCKDEP", r"(?:WARNING|BUG): bad unlock balance detected",
       "WARNING: bad unlock balance", how="at", gap=30),
    _k("held_lock_freed", "LOCKDEP", r"(?:WARNING|BUG): held lock freed",
       "WARNING: held lock freed", how="at", gap=30),
    _k("locks_held", "LOCKDEP", r"(?:WARNING|BUG): .*still has locks held",
       "WARNING: still has locks held", how="at", gap=30),
    _k("lock_to_user", "LOCKDEP", r"(?:WARNING|BUG): lock held when returning to user space",
       "WARNING: lock held when returning to user space", how="at", stack=False, gap=30),
    _k("wait_context", "LOCKDEP", r"(?:WARNING|BUG): Invalid wait context",
       "BUG: Invalid wait context", gap=30),
    _k("stack_regs", "WARNING", r"WARNING: kernel stack (?:regs|frame pointer) at .* has bad",
       "WARNING: kernel stack regs has bad value", how="none", stack=False, gap=3),
    _k("lockdep_limit", "LOCKDEP", r"BUG: MAX_\w+ too low", "BUG: lockdep limit too low",
       how="none", stack=False, gap=3),
    _k("nonstatic_key", "LOCKDEP", r"INFO: trying to register non-static key",
       "INFO: trying to register non-static key", skip=r"stack|lock|IRQ"),
    _k("spinlock", "LOCKDEP", r"BUG: spinlock (?P<what>.+?) on CPU", "BUG: spinlock {what}",
       skip=r"spin|_(?:un)?lock(?:_\w+)?$"),
    _k("atomic_sleep", "ATOMIC_SLEEP", r"BUG: sleeping function called from invalid context",
       "BUG: sleeping function called from invalid context"),
    _k("sched_atomic", "ATOMIC_SLEEP", r"BUG: scheduling while atomic",
       "BUG: scheduling while atomic", skip=r"schedule|cond_resched"),
    _k("preemptible", "ATOMIC_SLEEP",
       r"BUG: using (?P<op>smp_processor_id|__this_cpu_\w+)\(\) in preemptible",
       "BUG: using {op}() in preemptible code",
       skip=r"preempt|debug_smp_processor_id|this_cpu"),
    _k("wq_leak", "LOCKDEP", r"BUG: workqueue leaked lock or atomic",
       "BUG: workqueue leaked lock or atomic", how="last", stack=False),
    _k("wq_lockup", "HUNG_TASK", r"BUG: workqueue lockup", "BUG: workqueue lockup", how="none",
       stack=False, gap=3),
    _k("soft_lockup", "SOFT_LOCKUP", r"(?:NMI )?(?:watchdog: )?BUG: soft lockup", "BUG: soft lockup",
       how="stall", gap=20),
    _k("hard_lockup", "HARD_LOCKUP", r"(?:NMI )?(?:watchdog: )?Watchdog detected hard LOCKUP",
       "BUG: hard lockup", how="stall", gap=20),
    _k("rcu_stall", "RCU_STALL", r"(?:rcu: )?INFO: rcu_?\w* (?:self-)?detected (?:expedited )?stall",
       "INFO: rcu detected stall", how="stall", skip=r"rcu|apic_timer_interrupt", gap=20),
    _k("hung_task", "HUNG_TASK", r"INFO: task (?P<comm>.+?):\d+ blocked .*for more than \d+ sec",
       "INFO: task hung", how="hang", gap=20),
    _k("task_cant_die", "HUNG_TASK", r"INFO: task (?P<comm>.+?):\d+ can't die for more than",
       "INFO: task can't die", how="hang", gap=20),
    _k("bad_rss", "BAD_RSS_COUNTER", r"BUG: Bad rss-counter state", "BUG: Bad rss-counter state",
       how="none", stack=False, gap=3),
    _k("bad_page_state", "BAD_PAGE_STATE", r"BUG: Bad page state", "BUG: Bad page state",
       skip=r"bad_page|free_\w*page|free_unref|__free|free_pcp|folio_put|put_page|release_pages"
       r"|page_cache_release|check_new_page|free_one_page|alloc_pages|get_page_from_freelist"
       r"|rmqueue|prep_new_page|post_alloc_hook|page_expected_state"),
    _k("bad_page_map", "BAD_PAGE_MAP", r"BUG: Bad page map", "BUG: Bad page map",
       skip=r"print_bad_p[tm]e|vm_normal_(?:page|folio)|zap_\w*pte|unmap_page_range"),
    _k("memory_leak", "MEMORY_LEAK", r"BUG: memory leak", "memory leak", skip=_ALLOC_SKIP,
       direct=True, preamble=True),
    _k("leaked_object", "MEMORY_LEAK", r"unreferenced object 0x[0-9a-f]+ \(size \d+\)",
       "memory leak", skip=_ALLOC_SKIP, direct=True, follow=("MEMORY_LEAK",)),
    _k("stack_guard", "BUG", r"BUG: (?:TASK )?stack guard page was hit", "BUG: stack guard page was hit",
       how="stall", preamble=True),
    _k("dentry_in_use", "BUG", r"BUG: Dentry .* still in use", "BUG: Dentry still in use",
       how="rip", preamble=True),
    _k("mm_counters", "BUG", r"BUG: non-zero (?P<what>\w+) on freeing mm",
       "BUG: non-zero {what} on freeing mm", how="none", stack=False, gap=3),
    # Old KASAN announced itself through SLUB's banner ("BUG cache (...): kasan: bad access
    # detected") before its own report: that line alone is no report.
    _k("slub", "BUG", r"BUG \S+ \((?:Not t|T)ainted.*\): (?!kasan: bad access)(?P<what>.+)",
       "BUG: {what}", how="none",
       stack=False),
    _k("slub_info", "BUG", rf"INFO: (?P<what>Allocated|Freed) in (?P<fn>{_SYM})",
       "INFO: {what}", how="header", follow=("*",), corrupted=True),
    _k("file_count", "BUG", r"VFS: Close: file count is 0", "VFS: Close: file count is zero",
       how="rip", skip=r"filp_(?:flush|close)", stack=False, preamble=True),
    # A device that is never released: netdev_wait_allrefs() repeats this every 10 s.
    _k("netdev_wait", "NETDEV_WAIT", r"unregister_netdevice: waiting for (?P<dev>\S+) to become free",
       "unregister_netdevice: waiting for DEV to become free", how="none", stack=False, gap=3,
       follow=("NETDEV_WAIT",)),
    _k("busy_inodes", "BUG", r"VFS: Busy inodes after unmount", "VFS: Busy inodes after unmount",
       how="none", stack=False, gap=3),
    _k("panic", "PANIC", r"Kernel panic - not syncing: ?(?P<why>.*)", "kernel panic: {why}",
       how="none", stack=False, follow=("*",)),
    _k("oom_invoked", "OOM", r"(?P<comm>.*?) invoked oom-killer: ", "out of memory",
       how="none", stack=False, gap=500),
    _k("oom_killed", "OOM", r"(?:Memory cgroup )?[Oo]ut of memory(?: \([\w ]+\))?: Kill(?:ed)? "
       r"process \d+ \((?P<comm>[^)]*)\)", "out of memory", how="none", stack=False,
       follow=("OOM",)),
    _k("oom_constraint", "OOM", r"oom-kill:constraint=", "out of memory", how="none",
       stack=False, follow=("OOM",), gap=500),
    _k("warning", "WARNING", r"WARNING: (?P<what>\S.*)", "WARNING: {what}", stack=False,
       generic=True),
    _k("bug", "BUG", r"BUG: (?P<what>\S.*)", "BUG: {what}", stack=False, generic=True),
)

# Cheap test before trying every header: each header holds one of these.
_HEADER_WORDS = (
    "BUG", "WARNING:", "INFO:", "UBSAN:", "panic", "PANIC", "Oops", "protection fault",
    "divide", "invalid opcode", "stack segment", "stack overflow", "corruption", "double add",
    "refcount_t:", "sercopy:", "oom-kill", "ut of memory", "Unable to handle", "Alignment trap",
    "Internal error", "Unhandled fault", "unreferenced object", "VFS: Busy", "VFS: Close", "unregister_netdevice", "LOCKUP",
    "dumped because",
)
_BENIGN = re.compile(
    r"WARNING: /etc/ssh/moduli does not exist|WARNING: [Tt]he mand mount option"
    r"|WARNING: fbcon: |WARNING: workqueue cpumask:|INFO: lockdep is turned off"
    r"|INFO: NMI handler .* took too long|INFO: Stall ended before state dump"
    r"|INFO: recovery required|BUG: no syscalls can create resource"
    r"|(?:WARNING|BUG|INFO): .*not present in /proc/kallsyms"
)
_CONSEQUENCE = re.compile(
    r"Fatal exception|panic_on_\w+ set|hung_task: blocked tasks|softlockup: hung tasks"
    r"|RCU Stall|Attempted to kill init|Aiee, killing interrupt handler|Machine halted"
)


# Headers count only at the start of a console line, where the kernel prints them.  The
# one exception: die()'s banner ("<what>: <code> [#<n>]"), which nothing but the kernel
# prints, may follow a message that lost its newline.
_MIDLINE = re.compile(
    r"(?:Oops: )?(?:segment-related )?general protection fault|Oops: |invalid opcode: "
    r"|divide[ _]error: |stack segment: |Internal error: "
)
_DIE_COUNTER = re.compile(r".*\[#\d+\]")


def _match_header(line: _Line, trusted: bool) -> tuple[_Kind, re.Match[str]] | None:
    """The kind of report a line opens.  Only ``trusted`` lines (kernel-prefixed,
    or any line of an unprefixed log) may use loose wording or a mid-line die() banner."""
    text = line.text
    if not any(w in text for w in _HEADER_WORDS) or _BENIGN.match(text):
        return None
    for kind in _KINDS:
        if (trusted or not kind.generic) and (m := kind.regex.match(text)):
            return kind, m
    if not trusted:
        return None
    for tok in _MIDLINE.finditer(text, 1):
        rest = text[tok.start():]
        if not _DIE_COUNTER.match(rest):
            continue
        for kind in _KINDS:
            if not kind.generic and (m := kind.regex.match(rest)):
                return kind, m
    return None


# --- report-shaped lines -----------------------------------------------------

_REPORT_LINE = re.compile(
    r"(?:Call Trace|Call trace|</?(?:IRQ|TASK|NMI|EOI|SOFTIRQ)>|Code:|R[A-Z0-9]{2}:|EFLAGS"
    r"|FS:|CS:|CR\d:|DR\d:|[A-Z]?IP:|PC is at|LR is at|pc :|lr :|sp :|[xr]\d+\s*:|Modules linked in"
    r"|CPU: ?\d+|Hardware name|Workqueue:|task:|Comm:|Dumping ftrace|\(ftrace buffer empty\)"
    r"|Kernel Offset|Memory Limit|Rebooting in|---\[ end|#PF:|PGD |Oops|Stack:|Process "
    r"|Flags:|Control:|Exception stack|[Bb]acktrace|irq event stamp|hardirqs last|softirqs last"
    r"|Showing all locks|\d+ locks? held by|#\d+:|-> #\d+|\*\*\* DEADLOCK|other info that might"
    r"|Possible unsafe locking|the existing dependency|which lock already depends"
    r"|but task is already|Chain exists of|lock\(|rcu: |NMI backtrace|Sending NMI"
    r"|Allocated by|Freed by|Last potentially related|Second to last|The buggy address"
    r"|Memory state around|[0-9a-f]{4,16}:\s|page:|folio:|flags:|raw:|head:|memcg:|page dumped"
    r"|page_owner|page last|pfn:|(?:Read|Write) of size|Disabling lock debugging|Kernel panic"
    r"|Tainted:|Not tainted|-{8,}|={8,}|.*cut here|Local variable|Uninit was|Bytes b4|Object "
    r"|Redzone|Padding|INFO: |value changed|Reported by|race at|kfence-#|unreferenced object"
    r"|comm \"|hex dump|Mem-Info|Node \d|lowmem_reserve|active_anon|\[ *\d+\]|oom|Out of memory"
    r"|Tasks state|\d+ pages|Free swap|Total swap|[0-9a-f]{8,16}(?: [0-9a-f]{8,16})+"
    r"|Unable to handle|Internal error|ESR|FAR|SError|Mem abort|Data abort|[A-Z]{2,3}\s*=|\S+:\d+$"
    r"|last function:|irq \d+|hung_task_timeout_secs|RIP|---- ----|\S+ [0-9a-f]+ [0-9a-f]+)"
    r"|.*(?:is trying to (?:acquire|release)|just changed the state|is freeing memory"
    r"|leaving the kernel with locks|held lock|invoked oom-killer|at: |\+0x[0-9a-f]+/0x)"
)
_LEAD_IN = re.compile(
    r"-+\[ cut here \]-+|\d*<?-+ cut here -+|={8,}|-{8,}|page:|folio:|flags:|raw:|head:"
    r"|memcg:|anon |aops:|page_owner|page dumped because|ODEBUG:"
)
_END = re.compile(r"---\[ end |Kernel Offset:|Rebooting in ")
_BANNER = re.compile(r"={8,}$")
_TIMESTAMP = re.compile(r"\[ *\d+\.\d+\]")
_MAX_FOREIGN = 300
_MAX_TITLE = 160
_INTERLEAVED = re.compile(r"vmalloc: allocation failure|FAULT_INJECTION: forcing a failure"
                          r"|page allocation failure|FAULT_FLAG_ALLOW_RETRY missing")
# Reports between two "=====" lines (and OOM dumps) go on after their stack.
_BANNERED = frozenset({"KASAN", "KFENCE", "KMSAN", "KCSAN", "UBSAN", "OOM"})


def _report_like(line: _Line) -> bool:
    return line.msg[:1] in (" ", "\t") or bool(_REPORT_LINE.match(line.text))


# --- open reports ------------------------------------------------------------


@dataclass
class _Pending:
    kind: _Kind
    match: re.Match[str]
    ctx: str
    lines: list[_Line]
    head: int  # index in lines of the header
    last_like: int  # input index of the last line that looks like the report
    gap: int = 0
    frames: int = 0  # stack frame lines so far
    foreign: int = 0  # unprefixed lines seen while open
    tail: bool = False  # an end marker was seen: stop at the first foreign line
    cpu_lines: bool = False  # take other CPUs' lines (NMI backtraces)

    def add(self, line: _Line, like: bool) -> None:
        self.lines.append(line)
        self.frames += _is_frame_line(line.text)
        if like:
            self.last_like = line.idx
            self.gap = 0
        elif line.text:
            self.gap += 1

    def joins(self, kind: _Kind) -> bool:
        """Whether a header belongs to this report rather than opening another."""
        if self.kind.category == "OOM":  # one report per kill: a second kill starts anew
            return "OOM" in kind.follow and not self.tail
        if "*" in kind.follow or self.kind.category in kind.follow:
            return True
        if self.kind.preamble and kind.name in _OOPS_NAMES:
            return not any(_is_frame_line(ln.text) for ln in self.lines[self.head + 1:])
        return False

    def over(self) -> bool:
        limit = 1 if self.tail else self.kind.gap
        if self.kind.stack and not self.frames:
            limit = max(limit, 30)  # other CPUs' chatter may come before the stack
        return self.gap >= limit or len(self.lines) > 20000


class StreamClassifier:
    """Classify a console stream line by line.

    ``feed`` returns the reports that the new line completed (usually when
    ordinary chatter resumes after a report); ``flush`` ends the stream.
    """

    def __init__(self) -> None:
        self._n = 0
        self._open: dict[str, _Pending] = {}
        self._recent: dict[str, deque[_Line]] = {}
        self._prefixed = False

    def feed(self, line: str) -> list[Report]:
        ln = _parse_line(self._n, line)
        self._n += 1
        self._prefixed |= ln.prefixed
        done: list[Report] = []
        # On a timestamped console an unprefixed "WARNING: ..." is likely a userspace echo;
        # a glued line may be a syslog copy, so it only gets strict headers too.
        hit = _match_header(ln, trusted=(ln.prefixed and not ln.glued) or not self._prefixed)
        owner = self._owner(ln)
        if hit:
            kind, m = hit
            if owner is not None and owner.joins(kind):
                owner.add(ln, True)
                if kind.name == "oom_killed":
                    owner.tail = True
                return done
            lead: list[_Line] = []
            if owner is not None:
                lead = self._take_lead_in(owner)
                done.append(self._close(owner))
            self._start(kind, m, ln, lead)
            return done
        if owner is None:
            self._remember(ln)
            return done
        if self._prefixed and not ln.prefixed and ln.text:
            # Userspace output on a timestamped console: neither part of the
            # report nor a sign that it ended (unless it goes on and on).
            owner.foreign += 1
            if owner.foreign > _MAX_FOREIGN:
                done.append(self._close(owner))
            return done
        like = _report_like(ln)
        owner.add(ln, like)
        if "Sending NMI from CPU" in ln.text or "NMI backtrace" in ln.text:
            owner.cpu_lines = True
        if _END.match(ln.text) or (_BANNER.match(ln.text) and len(owner.lines) - owner.head > 3):
            owner.tail = True
        elif ln.text == "</TASK>" and owner.kind.category not in _BANNERED:
            owner.tail = True  # the stack is over; what follows must look like the report
        if owner.over():
            done.append(self._close(owner))
        return done

    def flush(self) -> list[Report]:
        reports = [self._close(p) for p in list(self._open.values())]
        return sorted(reports, key=lambda r: r.start_line)

    def _owner(self, ln: _Line) -> _Pending | None:
        if ln.ctx:
            if p := self._open.get(ln.ctx):
                return p
            if ln.ctx.startswith("C"):
                for p in self._open.values():
                    if p.cpu_lines or p.kind.how == "stall":
                        return p
            return None
        if "" in self._open:
            return self._open[""]
        return None

    def _remember(self, ln: _Line) -> None:
        # Keep only a run of banner-like lines: the next report may start with them.
        if ln.text and not _LEAD_IN.match(ln.text):
            self._recent.pop(ln.ctx, None)
        else:
            self._recent.setdefault(ln.ctx, deque(maxlen=40)).append(ln)

    def _take_lead_in(self, p: _Pending) -> list[_Line]:
        """Hand the banner lines the last report swallowed to the next one."""
        lead: list[_Line] = []
        while len(p.lines) - 1 > p.head and _LEAD_IN.match(p.lines[-1].text):
            lead.insert(0, p.lines.pop())
        if lead:
            kept = [ln.idx for ln in p.lines[p.head + 1:] if _report_like(ln)]
            p.last_like = max(kept, default=p.lines[p.head].idx)
        return lead

    def _start(self, kind: _Kind, m: re.Match[str], ln: _Line, lead: list[_Line]) -> None:
        if not lead:
            lead = list(self._recent.get(ln.ctx, ()))
            while lead and not lead[0].text:
                lead.pop(0)
        self._recent.pop(ln.ctx, None)
        p = _Pending(kind, m, ln.ctx, [*lead, ln], head=len(lead), last_like=ln.idx)
        if kind.name == "oom_killed":
            p.tail = True
        self._open[ln.ctx] = p

    def _close(self, p: _Pending) -> Report:
        del self._open[p.ctx]
        return _finish(p)


def classify(lines: Iterable[str]) -> list[Report]:
    """All reports in a log, in order: the first one is the primary."""
    sc = StreamClassifier()
    reports: list[Report] = []
    for line in lines:
        reports.extend(sc.feed(line))
    reports.extend(sc.flush())
    return sorted(reports, key=lambda r: r.start_line)


def classify_text(text: str) -> list[Report]:
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return classify(lines)


# --- naming a finished report ------------------------------------------------

# WARN/BUG sites that mean a known kind of bug; the culprit is their caller.
_BY_SOURCE: tuple[tuple[re.Pattern[str], str, str, re.Pattern[str]], ...] = tuple(
    (re.compile(src), cat, title, re.compile(skip)) for src, cat, title, skip in (
        (r"lib/list_debug\.c", "LIST_CORRUPTION", "BUG: corrupted list", r"list"),
        (r"lib/refcount\.c", "REFCOUNT", "WARNING: refcount bug", r"refcount|kobject_"),
        (r"lib/debugobjects\.c", "WARNING", "WARNING: ODEBUG bug",
         r"debug_|rcu|hrtimer_|timer_|work_|percpu_|kmem_|slab_|kfree|vunmap|vfree|__free_"
         r"|kobject_|free_object"),
        (r"lib/kobject\.c", "WARNING", "WARNING: kobject bug", r"kobject_"),
        (r"mm/usercopy\.c", "BUG", "BUG: bad usercopy", r"usercopy|__check|check_\w+_object"),
        (r"kernel/locking/lockdep\.c", "LOCKDEP", "WARNING: locking bug",
         r"lock_sock|release_sock"),
    ))
_KMALLOC = re.compile(r"_*k\w?[mcz]?alloc|_*kv?[mz]alloc|vmalloc|krealloc|kmem_cache|slab")
_USB_SUBMIT = re.compile(r"usb_submit_urb|usb_start_wait_urb|usb_bulk_msg|usb_interrupt_msg"
                         r"|usb_control_msg")
_ACCESS = re.compile(r"\b(Read|Write) (?:of size|at addr)")


def _finish(p: _Pending) -> Report:
    kind = p.kind
    groups = {k: v or "" for k, v in p.match.groupdict().items()}
    texts = [ln.text for ln in p.lines[p.head:]]  # from the header on
    category, title, skip = kind.category, kind.title, kind.skip
    if kind.name in ("warning_at", "kernel_bug"):
        category, title, skip = _by_source(p, groups, category, title, skip)
    elif kind.name == "slub" and "kasan" in groups["what"]:
        category = "KASAN"
    elif kind.name == "kasan":
        access = next((m[1] for t in texts[:30] if (m := _ACCESS.search(t))), "")
        groups["access"] = f" {access}" if access else ""

    frame: str | None = None
    if kind.category == "OOM":
        title = _oom_title(p)
    elif kind.name == "panic":
        title, frame = _panic_name(groups["why"], texts)
    else:
        title = title.format(**groups)[:_MAX_TITLE]
        if frame := _culprit(p, texts, skip):
            title = f"{title} in {frame}"

    corrupted = (
        kind.corrupted
        or bool(_TIMESTAMP.search(texts[0]))  # another message got into the header line
        or (kind.stack and not any(_is_frame_line(t) for t in texts[1:]))
        or any(_INTERLEAVED.search(t) for t in texts[1:])  # another report got mixed in
        or (kind.name == "panic" and bool(_CONSEQUENCE.search(groups["why"])))  # its oops is lost
    )
    lines = [ln for ln in p.lines if ln.idx <= p.last_like]
    return Report(category, title, frame, corrupted, lines[0].idx, p.last_like,
                  "\n".join(ln.raw for ln in lines))


def _by_source(p: _Pending, groups: dict[str, str], category: str, title: str,
               skip: re.Pattern[str] | None) -> tuple[str, str, re.Pattern[str] | None]:
    src, fn = groups.get("src", ""), _clean(groups.get("fn", ""))
    for src_re, cat, ttl, skp in _BY_SOURCE:
        if src_re.search(src):
            return cat, ttl, skp
    if src.startswith("mm/") and _KMALLOC.match(fn):
        return category, "WARNING: kmalloc bug", _KMALLOC
    if _USB_SUBMIT.fullmatch(fn):
        return category, title, _USB_SUBMIT
    lead = " ".join(ln.text for ln in p.lines[:p.head])
    if p.kind.name == "kernel_bug" and (m := re.search(r"(VM_BUG_ON\w*)", lead)):
        return "VM_BUG_ON", m[1], skip
    return category, title, skip


def _oom_title(p: _Pending) -> str:
    for ln in p.lines:
        if m := re.search(r"[Kk]ill(?:ed)? process \d+ \(([^)]*)\)", ln.text):
            return f"out of memory: killed process {m[1]}"
    if m := re.match(r"(\S+) invoked oom-killer", p.lines[p.head].text):
        return f"out of memory: {m[1]} invoked oom-killer"
    return "out of memory"


def _panic_name(why: str, texts: list[str]) -> tuple[str, str | None]:
    """Title and culprit of a panic; only stack corruption panics name a function."""
    frame = None
    if m := re.search(rf"stack is corrupted in: (?P<fn>{_SYM})\+0x", why):
        frame = _clean(m["fn"])
    elif "stack-protector" in why:
        frame = _pick(_stack(texts, False), re.compile(r"stack_chk"))
    elif "corrupted stack end" in why:
        frame = _stall_frame(texts, re.compile(r"schedule|retint_kernel"), interrupted=False)
    if frame:
        what = "stack is corrupted" if "stack-protector" in why else "corrupted stack end"
        return f"kernel panic: {what} in {frame}", frame
    return "kernel panic: " + why.rstrip(" .")[:_MAX_TITLE], None


def _culprit(p: _Pending, texts: list[str], skip: re.Pattern[str] | None) -> str | None:
    """The function to blame, by the kind's ``how``; texts[0] is the header."""
    how = p.kind.how
    helpers = _helper_funcs(texts)
    if how == "none":
        return None
    if how == "last":  # workqueue reports name the work function
        m = next((m for t in texts if (m := re.search(rf"last function: ({_SYM})", t))), None)
        return _clean(m[1]) if m else None
    if how == "stall":
        return _stall_frame(texts, skip, helpers=helpers)
    if how == "hang":
        return _hang_frame(texts, helpers)
    cands: list[str] = []
    if how == "at":
        cands = _at_frames(texts)
    elif how == "irqsafe":
        at = next((i for i, t in enumerate(texts) if re.search(r"which became \S+-safe at:", t)), 0)
        cands = _stack(texts[at:], True) + _at_frames(texts)
    elif how == "header" and p.match.groupdict().get("fn"):
        cands = [_clean(p.match["fn"])]
    if how in ("header", "rip"):
        cands += [fn for t in texts if (fn := _rip_of(t))][:1]
        src = p.match.groupdict().get("src") or ""
        if re.fullmatch(r"[\w./+-]+\.c:\d+", src) and _HELPER_FILE.match(src):
            helpers.update(cands)  # a WARN/BUG site in generic code blames its caller
    return _pick(cands + _stack(texts, p.kind.direct), skip, helpers)


def _stack(texts: list[str], direct: bool, rip: bool = False) -> list[str]:
    """Functions of the report's first stack trace, innermost first.

    texts[0] is the header.  Unless ``direct``, frames count only after a
    "Call Trace:" line; ``rip`` also takes kernel RIP/PC lines as frames.
    """
    frames: list[str] = []
    started = direct
    only_rip = True  # the RIP line comes before the "Call Trace:" it belongs to
    for t in texts[1:]:
        if _STACK_START.match(t):
            if frames and not only_rip:
                break
            started = True
            continue
        if frames and not only_rip and _BREAK.match(t):
            break
        if not started:
            continue
        if fn := _frame_of(t):
            frames.append(fn)
            only_rip = False
        elif rip and (fn := _rip_of(t)):
            frames.append(fn)
    if not frames and not direct:
        return _stack(texts, True, rip)
    return frames


_AT_TRIGGER = re.compile(
    r".*(?:is trying to acquire|but task is already holding|just changed the state of lock|takes:"
    r"|is trying to release lock|is freeing memory|locks? held by|leaving the kernel with locks"
    r"|still has locks held)"
)
_AT_FUNC = re.compile(rf"(?:^|[\s>\]])({_SYM})\+0x[0-9a-f]+/0x")


def _at_frames(texts: list[str]) -> list[str]:
    """Lock sites lockdep names in "at: func+0x.." lines, the acquired one first."""
    sites: list[str] = []
    for i, t in enumerate(texts):
        if len(sites) == 2:
            break
        if _AT_TRIGGER.match(t):
            m = next((m for t2 in texts[i + 1:i + 16] if (m := _AT_FUNC.search(t2))), None)
            if m:
                sites.append(_clean(m[1]))
    return sites


# Stalls loop across many functions; the caller of the first dispatcher frame
# (syscall entry, work item, timer, ...) names them better than the top frame.
_STALL_ANCHOR = re.compile("|".join([
    r"process_one_work", r"do_syscall_", r"do_fast_syscall_", r"x64_sys_call", r"invoke_syscall",
    r"el0_svc", r"netif_receive_skb", r"do_softirq", r"call_timer_fn", r"_run_timers",
    r"run_timer_softirq", r"run_ksoftirqd", r"smpboot_thread_fn", r"kthread$",
    r"start_secondary", r"cpu_startup_entry", r"ret_from_fork", r"vfs_write", r"vfs_read",
    r"vfs_iter_(?:read|write)", r"do_iter_(?:read|write)", r"vfs_ioctl", r"blkdev_(?:driver_)?ioctl",
    r"^call_(?:read|write)_iter", r"do_iter_readv_writev", r"^call_mmap", r"mmap_region",
    r"do_mmap", r"do_dentry_open", r"vfs_open", r"^_*sock_sendmsg", r"^_*sock_recvmsg",
    r"^_*sock_release", r"__sys_setsockopt", r"kernel_setsockopt", r"sock_common_setsockopt",
    r"__sys_listen", r"kernel_listen", r"sk_common_release", r"^sock_mmap", r"__sys_accept",
    r"kernel_accept", r"^sock_do_ioctl", r"^sock_ioctl", r"^compat_sock_ioctl",
    r"^nfnetlink_rcv_msg", r"^(?:compat_)?(?:SYSC|SyS|__sys|___sys|__do_sys|__se_sys|__x64_sys)"
    r"_(?:socketpair|connect|ioctl)", r"__do_fault", r"handle_mm_fault", r"do_page_fault",
    r"^page_fault$", r"__fput", r"task_work_run", r"exit_to_user_?mode", r"compat_\w*ioctl$",
    r"^ksys_ioctl$", r"^rtnetlink_rcv_msg$", r"tasklet_action", r"^new_sync_(?:read|write)",
]))
_IRQ_EXIT = re.compile(r"</IRQ>|<EOI>|RIP: 0010:|RIP: \w+\+0x")
_TIMER_IRQ = re.compile(r"(?:^|_)apic_timer_interrupt|gic_handle_irq|el1_interrupt")


_FAULT_ENTRY = re.compile(r"(?:asm_)?exc_page_fault|(?:async_)?page_fault|el1_abort|do_mem_abort")


def _stall_frame(texts: list[str], skip: re.Pattern[str] | None, interrupted: bool = True,
                 helpers: set[str] | frozenset[str] = frozenset()) -> str | None:
    start = 0
    if interrupted:  # look at the interrupted code, not at the timer interrupt that noticed
        for i, t in enumerate(texts):
            if _IRQ_EXIT.match(t):
                start = i - 1
                break
            if (fn := _frame_of(t)) and _TIMER_IRQ.search(fn):
                start = i
                while start + 1 < len(texts) and _TIMER_IRQ.search(_frame_of(texts[start + 1]) or ""):
                    start += 1
                break
    frames = _stack(texts[start:], True, rip=True)
    # A page fault taken inside the loop (say, by copy_from_user) is a detour.
    faults = [i for i, f in enumerate(frames) if _FAULT_ENTRY.fullmatch(f)]
    if faults and faults[-1] + 1 < len(frames):
        frames = frames[faults[-1] + 1:]
    prev = first = None
    for f in frames:
        if _STALL_ANCHOR.search(f) and prev:
            return prev
        if not (_generic(f, helpers) or (skip and skip.search(f))):
            if f.startswith("smp_call_function") and not first:
                return f  # spinning on other CPUs' answer: that wait is the story
            prev = f
            first = first or f
    return first


# A hung task sleeps in generic waiting code; blame who waits.
_HANG_SKIP = re.compile(r"sched|_lock|slowlock|(?:^|_)down|completion|kthread|wait|synchronize"
                        r"|context_switch|switch_to|cancel_delayed_work|io_schedule|freezer"
                        r"|refrigerator")


def _hang_frame(texts: list[str], helpers: set[str]) -> str | None:
    frames = _stack(texts, False)
    for f in frames:
        if f.startswith("rtnl_lock"):
            return "rtnl_lock"
        if re.match(r"synchronize_(?:rcu|srcu|net|sched)", f):
            return "synchronize_rcu"  # one bucket: hangs waiting for a grace period
    return _pick(frames, _HANG_SKIP, helpers)
