"""Every header wording a supported kernel prints (harness/console/printks.py) opens a report
of the right kind, category and title: a minimal report is built from each, the header and
the lines the kernel prints after it (registers, a Call Trace through the reporting
machinery down to the culprit)."""
from __future__ import annotations

import re

import pytest

from harness.console import machinery as mc
from harness.console.classify import classify
from harness.console.kinds import _KINDS, _match_header
from harness.console.lines import _parse_line
from harness.console.printks import WORDINGS, Wording

KIND = {k.name: k for k in _KINDS}
CULPRIT = "cmp_and_merge_page"
CALLERS = ["ksm_do_scan+0x5c/0x90", "ksm_scan_thread+0x9e/0x230", "kthread+0xe8/0x120",
           "ret_from_fork+0x1f/0x30"]
# The reporting machinery a kind's report runs through before its culprit, as the kernel
# calls it (6.x names; the skip rules must pass over them).
MACHINERY = {
    "KASAN": ["dump_stack_lvl+0x48/0x70", "print_report+0xc3/0x620", "kasan_report+0xb0/0xe0",
              "__asan_load8+0x6e/0xa0"],
    "KFENCE": [],  # kfence prints the frames after its own
    # kmsan_copy_to_user() <- instrument_copy_to_user() <- the iov_iter copy helpers
    "KMSAN": ["_copy_to_iter+0x870/0x1fd0", "simple_copy_to_iter+0x68/0xa0"], "KCSAN": [],
    "UBSAN": ["dump_stack_lvl+0x48/0x70", "ubsan_epilogue+0x9/0x40",
              "__ubsan_handle_shift_out_of_bounds+0x15a/0x1a0"],
    "LIST_CORRUPTION": ["__list_add_valid_or_report+0x7b/0xb0"],
    "LOCKDEP": ["dump_stack_lvl+0x48/0x70", "lockdep_rcu_suspicious+0x1f2/0x240"],
    "ATOMIC_SLEEP": ["dump_stack_lvl+0x48/0x70", "__might_resched+0x1c5/0x1e0",
                     "__might_sleep+0x43/0x70"],
    "BAD_PAGE_STATE": ["dump_stack_lvl+0x48/0x70", "bad_page+0x6c/0x110",
                       "free_page_is_bad_report+0x85/0xa0", "free_unref_page+0x35/0x1a0"],
    "BAD_PAGE_MAP": ["dump_stack_lvl+0x48/0x70", "print_bad_pte+0x1a5/0x260",
                     "vm_normal_page+0x8e/0xc0"],
}


def _body(w: Wording) -> tuple[list[str], str | None]:
    """The lines after the header, and the culprit the classifier must then name."""
    kind = KIND[w.kind]
    rip = [f"RIP: 0010:{CULPRIT}+0x12/0x30", "RSP: 0018:ffffc90000a1bd48 EFLAGS: 00010246"]
    trace = ["Call Trace:", " <TASK>",
             *(f" {f}" for f in MACHINERY.get(kind.category, [])),
             f" {CULPRIT}+0x12/0x30", *(f" {f}" for f in CALLERS), " </TASK>"]
    cpu = "CPU: 1 PID: 35 Comm: ksmd Not tainted 6.1.0-26-amd64 #1 Debian 6.1.112-1"
    if kind.how == "none":
        return [], None
    if kind.how == "last":
        return [f"    last function: {CULPRIT}", cpu, *trace], CULPRIT
    if kind.how == "hang":
        return ['"echo 0 > /proc/sys/kernel/hung_task_timeout_secs" disables this message.',
                "task:ksmd state:D stack:0 pid:35 ppid:2 flags:0x00004000", "Call Trace:",
                " <TASK>", " __schedule+0x34d/0x9e0", " schedule+0x5a/0xd0",
                " schedule_preempt_disabled+0x11/0x20", " __mutex_lock+0x3c2/0x8a0",
                f" {CULPRIT}+0x12/0x30", *(f" {f}" for f in CALLERS), " </TASK>"], CULPRIT
    if kind.how == "at":
        return ["ksmd/35 is trying to acquire lock:",
                f"ffff888012345678 (&mm->mmap_lock){{++++}}-{{3:3}}, at: {CULPRIT}+0x12/0x30",
                "", "but task is already holding lock:",
                "ffff888087654321 (ksm_thread_mutex){+.+.}-{3:3}, at: ksm_do_scan+0x5c/0x90",
                cpu, *trace], CULPRIT
    if w.title.endswith(" Read"):  # KASAN names the access in the line after its header
        return ["Read of size 8 at addr ffff888012345678 by task ksmd/35", "", cpu, *trace], CULPRIT
    if kind.how == "stall":  # a stall blames the loop: the frame before the dispatcher
        return [cpu, *rip, *trace], "ksm_scan_thread"
    return [cpu, *rip, *trace], CULPRIT


def _id(w: Wording) -> str:
    return f"{w.kind}:{w.since}-{w.until}:{w.header[:40]}"


@pytest.mark.parametrize("w", WORDINGS, ids=_id)
def test_header_opens_its_kind(w: Wording) -> None:
    hit = _match_header(_parse_line(0, w.header), trusted=True)
    assert hit is not None, f"{w.source} prints a header we do not see"
    assert hit[0].name == w.kind


@pytest.mark.parametrize("prefix", ["", "[   41.123456] ", "<4>[   41.123456][    T35] "])
@pytest.mark.parametrize("w", WORDINGS, ids=_id)
def test_minimal_report_is_classified(w: Wording, prefix: str) -> None:
    body, culprit = _body(w)
    lines = [f"{prefix}{ln}" for ln in (*w.lead, w.header, *body)]
    reports = classify(["[   40.000000] ksm: started", *lines] if prefix else lines)
    assert reports, f"no report for {w.header!r}"
    r = reports[0]
    want = f"{w.title} in {culprit}" if culprit else w.title
    assert (r.category, r.title, r.frame) == (KIND[w.kind].category, want, culprit)


def test_every_kind_has_its_printk() -> None:
    """A header we look for and no kernel source prints would be fitted to examples."""
    # Kinds that are not one printk of x86 Linux: other arches' wordings, loose fallbacks,
    # and lines printed by tools rather than the kernel.
    not_x86_printk = {"arm_null", "arm_paging", "internal_error", "unhandled_fault",
                      "alignment_trap", "paging_cut", "warning", "bug", "slub_info",
                      "memory_leak"}
    have = {w.kind for w in WORDINGS}
    assert not have - set(KIND), "rows naming no kind"
    not_mainline = {"task_cant_die"}  # a linux-next hung_task.c patch syzbot's kernels carry
    assert set(KIND) - have - not_x86_printk - not_mainline == set()


@pytest.mark.parametrize(("group", "chain"), [
    # the frames between each report's printer and its caller, 4.19 and 6.12 names
    ("LIST", ["__list_add_valid", "__list_add_valid_or_report", "__list_del_entry_valid",
              "list_del", "list_add_tail_rcu", "list_move"]),
    ("REFCOUNT", ["refcount_warn_saturate", "refcount_sub_and_test_checked", "__refcount_add",
                  "kref_put", "kobject_put"]),
    ("USERCOPY", ["usercopy_abort", "__check_heap_object", "__check_object_size",
                  "check_copy_size", "_copy_to_user", "__virt_addr_valid"]),
    ("BAD_PAGE", ["bad_page", "free_page_is_bad_report", "free_pages_prepare",
                  "free_unref_page", "__folio_put", "release_pages", "check_new_pages"]),
    ("ALLOCATION", ["kmemleak_alloc", "slab_post_alloc_hook", "kmem_cache_alloc_noprof",
                    "__kmalloc_cache_noprof", "kstrdup", "kasprintf", "pcpu_alloc"]),
    ("SPINLOCK", ["do_raw_spin_lock", "_raw_spin_lock_irqsave", "raw_spin_rq_lock_nested",
                  "__task_rq_lock"]),
    ("SCHEDULE", ["__schedule_bug", "schedule_debug", "__schedule", "schedule",
                  "preempt_schedule_common", "__cond_resched", "schedule_timeout"]),
    ("RCU_SUSPICIOUS", ["lockdep_rcu_suspicious", "rcu_note_context_switch", "__might_resched",
                        "___might_sleep", "__might_sleep", "slab_pre_alloc_hook",
                        "kmem_cache_alloc_noprof", "__kmalloc_noprof"]),
    ("PREEMPT_CHECK", ["check_preemption_disabled", "debug_smp_processor_id",
                       "__this_cpu_preempt_check"]),
    ("LOCK_CLASS", ["assign_lock_key", "register_lock_class", "__lock_acquire", "lock_acquire",
                    "_raw_spin_lock", "__mutex_lock", "mutex_lock_nested", "down_write",
                    "lockdep_init_map_type", "__raw_spin_lock_init"]),
    ("WORKQUEUE_LOCKDEP", ["process_one_work", "__flush_work", "flush_work",
                           "__flush_workqueue", "touch_work_lockdep_map",
                           "__cancel_work_timer", "cancel_work_sync"]),
])
def test_machinery_covers_the_kernels_chain(group: str, chain: list[str]) -> None:
    skip = mc.compiled(getattr(mc, group))
    assert [f for f in chain if not skip.match(f)] == []
    assert not skip.match(CULPRIT) and not skip.match("ksm_do_scan")


def test_x86_refcount_names_the_site_not_the_warn() -> None:
    # 4.14..5.4: the WARN is in kernel/panic.c; the message names the faulting refcount site.
    r = classify([
        "[   41.0] refcount_t overflow at cmp_and_merge_page+0x12/0x30 in ksmd[35], uid/euid: 0/0",
        "[   41.0] WARNING: CPU: 1 PID: 35 at kernel/panic.c:672 refcount_error_report+0x9d/0xb0",
        "[   41.0] RIP: 0010:refcount_error_report+0x9d/0xb0",
        "[   41.0] Call Trace:",
        "[   41.0]  ex_handler_refcount+0x63/0x70",
        "[   41.0]  fixup_exception+0x32/0x40",
        "[   41.0]  do_trap+0x4a/0x160",
        "[   41.0]  do_error_trap+0x83/0xf0",
        "[   41.0]  invalid_op+0x14/0x20",
        "[   41.0]  ksm_do_scan+0x5c/0x90",
    ])[0]
    assert (r.category, r.title, r.frame) == ("REFCOUNT", "WARNING: refcount bug in "
                                              "cmp_and_merge_page", "cmp_and_merge_page")


def test_gpf_with_kasans_range_hint_is_one_report() -> None:
    # 5.5+: mm/kasan/report.c kasan_non_canonical_hook() follows the banner with a hint.
    reports = classify([
        "[   41.0] Oops: general protection fault, probably for non-canonical address "
        "0xdffffc0000000001: 0000 [#1] PREEMPT SMP KASAN NOPTI",
        "[   41.0] KASAN: null-ptr-deref in range [0x0000000000000008-0x000000000000000f]",
        "[   41.0] CPU: 1 UID: 0 PID: 35 Comm: ksmd Not tainted 6.12.0 #1",
        "[   41.0] RIP: 0010:cmp_and_merge_page+0x12/0x30",
        "[   41.0] Call Trace:",
        "[   41.0]  <TASK>",
        "[   41.0]  ksm_do_scan+0x5c/0x90",
        "[   41.0]  </TASK>",
    ])
    assert [(r.category, r.title) for r in reports] == [
        ("GPF", "general protection fault in cmp_and_merge_page")]


def test_rows_say_where_and_when() -> None:
    version = re.compile(r"\d\.(?:\d+|x)")
    for w in WORDINGS:
        assert re.match(r"(?:arch/x86|lib|kernel|mm|fs|net)/[\w/.-]+\.[ch]: ", w.source), w
        assert version.fullmatch(w.since) and (not w.until or version.fullmatch(w.until)), w
        assert w.checked in ("6.1 6.12", "6.1", "6.12", "7.2", "memory") or \
            w.checked.startswith("issue"), w
