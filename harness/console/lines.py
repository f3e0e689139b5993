"""Console lines and stack frames as the classifier reads them: the prefixes a console puts
before a kernel line, frame syntax, and the frames that are never a culprit (generic helpers)."""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass


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
    # lib/iov_iter.c and include/linux/{uio,iov_iter,instrumented}.h: copying to and from
    # an iov_iter for the caller (what KMSAN's kernel-infoleak and KASAN catch in them)
    r"copy_(?:mc_)?(?:to|from)_iter\w*", r"copy_page_(?:to|from)_iter\w*", r"copy(?:out|in)\w*",
    r"iterate_(?:iovec|kvec|bvec|xarray|ubuf|discard|folioq|and_advance)\w*", r"instrument_\w+",
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


