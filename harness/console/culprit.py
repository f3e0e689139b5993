"""Naming a finished report: its category, title and culprit function, chosen the way the
kernel's own report says (the frame after the report's machinery, lockdep's and RCU's own
formats, the caller of a known WARN/BUG site)."""
from __future__ import annotations

import re
from dataclasses import dataclass

from harness.console import machinery as mc
from harness.console.kinds import (
    _CONSEQUENCE,
    _INTERLEAVED,
    _MAX_TITLE,
    _OOPS_NAMES,
    _TIMESTAMP,
    _Kind,
)
from harness.console.lines import (
    _BREAK,
    _HELPER_FILE,
    _STACK_START,
    _SYM,
    Report,
    _clean,
    _frame_of,
    _generic,
    _helper_funcs,
    _is_frame_line,
    _Line,
    _pick,
    _rip_of,
)

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


# --- naming a finished report ------------------------------------------------

# WARN/BUG sites that mean a known kind of bug; the culprit is their caller.
_BY_SOURCE: tuple[tuple[re.Pattern[str], str, str, re.Pattern[str]], ...] = tuple(
    (re.compile(src), cat, title, re.compile(skip)) for src, cat, title, skip in (
        (r"lib/list_debug\.c", "LIST_CORRUPTION", "BUG: corrupted list", mc.pattern(mc.LIST)),
        (r"lib/refcount\.c", "REFCOUNT", "WARNING: refcount bug", mc.pattern(mc.REFCOUNT)),
        (r"lib/debugobjects\.c", "WARNING", "WARNING: ODEBUG bug",
         r"debug_|rcu|hrtimer_|timer_|work_|percpu_|kmem_|slab_|kfree|vunmap|vfree|__free_"
         r"|kobject_|free_object"),
        (r"lib/kobject\.c", "WARNING", "WARNING: kobject bug", r"kobject_"),
        (r"mm/usercopy\.c", "BUG", "BUG: bad usercopy", mc.pattern(mc.USERCOPY)),
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
    src, fn = groups.get("src", ""), _clean(groups.get("fn") or groups.get("sym", ""))
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
    elif how == "header" and (named := p.match.groupdict().get("fn") or p.match.groupdict().get("sym")):
        cands = [_clean(named)]
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
