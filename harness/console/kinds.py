"""The kinds of kernel report, as data: a table row per kind (header regex, category, title,
frames to skip), and the lines that belong to a report.  Which kernel function prints each
header, in which versions: printks.py; the frames each kind skips: machinery.py."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from harness.console import machinery as mc
from harness.console.lines import _SYM, _Line

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
_ALLOC_SKIP = mc.pattern(mc.ALLOCATION)

_KINDS: tuple[_Kind, ...] = (
    _k("kasan", "KASAN", rf"BUG: KASAN: (?P<bug>.+?)(?: in (?P<fn>{_SYM})| on address| at addr|$)",
       "KASAN: {bug}{access}", how="header"),
    _k("kfence", "KFENCE", rf"BUG: KFENCE: (?P<bug>.+?) in (?P<fn>{_SYM})", "KFENCE: {bug}",
       how="header", direct=True),
    _k("kmsan", "KMSAN", rf"BUG: KMSAN: (?P<bug>.+?) in (?P<fn>{_SYM})", "KMSAN: {bug}",
       how="header", direct=True),
    _k("kcsan", "KCSAN", rf"BUG: KCSAN: (?P<bug>.+?) in (?P<fn>{_SYM})", "KCSAN: {bug}",
       how="header", direct=True),
    # A trapping UBSAN check (6.12 x86, arm64): handle_bug() names the check and the site.
    _k("ubsan_trap", "UBSAN", rf"UBSAN: (?P<bug>.+?) at (?P<fn>{_SYM})\+0x", "UBSAN: {bug}",
       how="header"),
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
    # die()'s banner "<desc>: <err> [#<n>]" (6.10+: "Oops: " first), where <desc> is
    # "[segment-related ]general protection fault" and, since 5.5, a hint about the address
    # (", probably for non-canonical address 0x..", ", maybe for address 0x.."; some 5.4
    # backports: " for non-canonical address 0x.."): any hint, so no wording is missed.  A
    # user task's fault starts with its name ("comm[pid] general protection fault ip:").
    _k("gpf", "GPF", r"(?:Oops: )?(?:segment-related )?general protection fault\b",
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
       how="rip", skip=mc.pattern(mc.LIST), preamble=True, follow=("*",)),
    # x86's own refcount_t (4.14 to 5.4, CONFIG_ARCH_HAS_REFCOUNT): kernel/panic.c's
    # refcount_error_report() WARNs "refcount_t <what> at <site> in <comm>[<pid>]".
    _k("refcount_arch", "REFCOUNT", rf"refcount_t (?P<what>[\w ]+?) at (?P<fn>{_SYM})\+0x",
       "WARNING: refcount bug", how="header", skip=mc.pattern(mc.REFCOUNT), preamble=True,
       follow=("*",)),
    _k("refcount", "REFCOUNT", r"refcount_t: ", "WARNING: refcount bug", how="rip",
       skip=mc.pattern(mc.REFCOUNT), preamble=True, follow=("*",)),
    _k("usercopy", "BUG", r"(?i:usercopy: kernel memory (?:exposure|overwrite) attempt)",
       "BUG: bad usercopy", how="rip", skip=mc.pattern(mc.USERCOPY),
       preamble=True, follow=("*",)),
    _k("vm_bug_on", "VM_BUG_ON", r"page dumped because: (?P<macro>VM_BUG_ON\w*)", "{macro}",
       how="rip", preamble=True),
    # __warn(): "at <file>:<line> <caller>", or "at <caller>" without CONFIG_DEBUG_BUGVERBOSE.
    _k("warning_at", "WARNING",
       r"WARNING: (?:CPU: \d+ (?:UID: \d+ )?PID: \d+ )?(?:at )?(?:(?P<src>[\w./+-]+:\d+)"
       rf"(?: (?:at )?(?P<fn>{_SYM}))?|(?P<sym>{_SYM})\+0x)", "WARNING", how="header"),
    _k("deadlock", "LOCKDEP",
       r"(?:WARNING|INFO): (?:possible circular locking dependency|possible recursive locking"
       r"|possible irq lock inversion dependency) detected", "possible deadlock", how="at", gap=30,
       skip=mc.pattern(mc.WORKQUEUE_LOCKDEP)),
    # The irq-safe lock's user, running in interrupt context, closes the cycle.
    _k("irq_lock_order", "LOCKDEP",
       r"(?:WARNING|INFO): (?:SOFT|HARD)IRQ-safe -> (?:SOFT|HARD)IRQ-unsafe lock order detected",
       "possible deadlock", how="irqsafe", gap=30),
    _k("inconsistent_lock", "LOCKDEP", r"(?:WARNING|INFO): inconsistent lock state",
       "inconsistent lock state", how="at", gap=30),
    _k("suspicious_rcu", "LOCKDEP", r"(?:WARNING|INFO|BUG): suspicious RCU usage",
       "WARNING: suspicious RCU usage", skip=mc.pattern(mc.RCU_SUSPICIOUS),
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
       "INFO: trying to register non-static key", skip=mc.pattern(mc.LOCK_CLASS)),
    _k("spinlock", "LOCKDEP", r"BUG: spinlock (?P<what>.+?) on CPU", "BUG: spinlock {what}",
       skip=mc.pattern(mc.SPINLOCK)),
    _k("rwlock", "LOCKDEP", r"BUG: rwlock (?P<what>.+?) on CPU", "BUG: rwlock {what}",
       skip=mc.pattern(mc.RWLOCK)),
    _k("atomic_sleep", "ATOMIC_SLEEP", r"BUG: sleeping function called from invalid context",
       "BUG: sleeping function called from invalid context"),
    _k("sched_atomic", "ATOMIC_SLEEP", r"BUG: scheduling while atomic",
       "BUG: scheduling while atomic", skip=mc.pattern(mc.SCHEDULE)),
    _k("preemptible", "ATOMIC_SLEEP",
       r"BUG: using (?P<op>smp_processor_id|__this_cpu_\w+)\(\) in preemptible",
       "BUG: using {op}() in preemptible code",
       skip=mc.pattern(mc.PREEMPT_CHECK)),
    _k("wq_leak", "LOCKDEP", r"BUG: workqueue leaked (?:lock or atomic|atomic, lock or RCU)",
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
       skip=mc.pattern(mc.BAD_PAGE)),
    _k("bad_page_map", "BAD_PAGE_MAP", r"BUG: Bad page map", "BUG: Bad page map",
       skip=mc.pattern(mc.BAD_PAGE_MAP)),
    _k("memory_leak", "MEMORY_LEAK", r"BUG: memory leak", "memory leak", skip=_ALLOC_SKIP,
       direct=True, preamble=True),
    _k("leaked_object", "MEMORY_LEAK", r"unreferenced object 0x[0-9a-f]+ \(size \d+\)",
       "memory leak", skip=_ALLOC_SKIP, direct=True, follow=("MEMORY_LEAK",)),
    _k("stack_guard", "BUG", r"BUG: (?:\S+ )?stack guard page was hit", "BUG: stack guard page was hit",
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
    "refcount_t", "sercopy:", "oom-kill", "ut of memory", "Unable to handle", "Alignment trap",
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


