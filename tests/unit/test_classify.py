"""Tests for harness.console.classify: focused cases, then the shared kernel-log corpus."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from harness.console.classify import Report, StreamClassifier, classify, classify_text
from tests.helpers import load_log

DATA = Path(__file__).resolve().parent / "data"
REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO.parent / "shared" / "oops-corpus"

CATEGORIES = {
    "WARNING", "BUG", "OOPS", "PANIC", "KASAN", "KFENCE", "KMSAN", "KCSAN", "UBSAN", "GPF",
    "PAGING_REQUEST", "NULL_DEREF", "HUNG_TASK", "SOFT_LOCKUP", "HARD_LOCKUP", "RCU_STALL",
    "BAD_PAGE_STATE", "BAD_PAGE_MAP", "BAD_RSS_COUNTER", "LIST_CORRUPTION", "REFCOUNT",
    "LOCKDEP", "ATOMIC_SLEEP", "MEMORY_LEAK", "VM_BUG_ON", "OOM", "NETDEV_WAIT",
}


def data(name: str) -> str:
    """A recorded console log without its header."""
    return load_log(DATA / name)[1]


def only(reports: list[Report]) -> Report:
    assert len(reports) == 1, [r.title for r in reports]
    return reports[0]


# --- focused cases -------------------------------------------------------------


def test_ksm_warning() -> None:
    text = data("ksm_warning.log")
    r = only(classify_text(text))
    assert (r.category, r.title, r.frame, r.corrupted) == (
        "WARNING", "WARNING in ksm_scan_thread", "ksm_scan_thread", False)
    lines = text.splitlines()
    assert "cut here" in lines[r.start_line]  # the banner belongs to the report
    assert "end trace" in lines[r.end_line]
    assert r.text == "\n".join(lines[r.start_line:r.end_line + 1])


def test_single_warning_line_from_brief() -> None:
    r = only(classify(["WARNING: CPU: 0 PID: 1 at mm/ksm.c:123 ksm_scan_thread+0x1/0x2"]))
    assert (r.category, r.title, r.frame) == ("WARNING", "WARNING in ksm_scan_thread",
                                              "ksm_scan_thread")
    assert r.corrupted  # no stack trace at all


@pytest.mark.parametrize("prefix", ["", "[   12.345678] ", "<4>[   12.345678] ",
                                    "[   12.345678][    T1] ", "<4>[   12.345678][    C0] "])
def test_console_prefixes_do_not_matter(prefix: str) -> None:
    lines = [re.sub(r"^\[ *[\d.]+\] ", prefix, ln) for ln in data("ksm_warning.log").splitlines()]
    r = only(classify(lines))
    assert (r.title, r.frame, r.corrupted) == ("WARNING in ksm_scan_thread", "ksm_scan_thread",
                                               False)


def test_caller_ids_keep_other_tasks_out_and_crlf() -> None:
    text = data("caller_ids.log").replace("\n", "\r\n")
    r = only(classify_text(text))
    assert (r.category, r.title, r.frame) == ("WARNING", "WARNING in break_ksm", "break_ksm")
    assert "audit" not in r.text and "\r" not in r.text
    assert "unmerge_ksm_pages" in r.text
    assert (r.start_line, r.end_line) == (0, 13)


def test_kernel_line_glued_after_a_shell_prompt() -> None:
    # The serial console is shared with a shell: "# " may precede a kernel line.
    lines = data("ksm_warning.log").splitlines()
    lines[4] = "# " + lines[4]
    r = only(classify(lines))
    assert (r.title, r.start_line, r.corrupted) == ("WARNING in ksm_scan_thread", 3, False)


def test_glued_loose_warning_is_not_trusted() -> None:
    # A syslog copy of a harmless message, shouting: not a kernel report.
    log = ("[   53.5] cfg80211: warning: `syz' uses wireless extensions\n"
           "DEC  4 17:33:14 HOST KERN.WARN KERNEL: [   53.573906] WARNING: `SYZ' USES WIRELESS\n")
    assert classify_text(log) == []


def test_userspace_output_inside_a_report_is_skipped() -> None:
    # Unprefixed lines on a timestamped console come from userspace, as here
    # a program echoing to the serial console in the middle of the report.
    lines = data("ksm_warning.log").splitlines()
    at = next(i for i, ln in enumerate(lines) if "Call Trace" in ln)
    noise = [f"+ ./ksm_test --merge-across-nodes {i}" for i in range(40)]
    r = only(classify(lines[:at] + noise + lines[at:]))
    assert (r.frame, r.corrupted) == ("ksm_scan_thread", False)
    assert "ksm_test" not in r.text


def test_interleaved_cpus_without_caller_ids() -> None:
    # Another CPU's report lines are mixed in; the first report stays primary.
    log = """\
[   10.000000] BUG: unable to handle page fault for address: ffffffffff600000
[   10.000001] #PF: supervisor read access in kernel mode
[   10.000002] Oops: 0000 [#1] PREEMPT SMP
[   10.000003] PANIC: double fault, error_code: 0x0
[   10.000004] CPU: 1 PID: 42 Comm: ksmd Not tainted 6.8.0 #1
[   10.000005] CPU: 0 PID: 0 Comm: swapper/0 Not tainted 6.8.0 #1
[   10.000006] RIP: 0010:get_ksm_page+0x11/0x80
[   10.000007] RIP: 0010:native_safe_halt+0xb/0x10
[   10.000008] Call Trace:
[   10.000009] Call Trace:
[   10.000010]  stable_tree_search+0x7f/0x600
[   10.000011] Kernel panic - not syncing: Machine halted.
"""
    reports = classify_text(log)
    assert reports[0].category == "PAGING_REQUEST"
    assert reports[0].frame == "get_ksm_page"


def test_cut_report_is_corrupted() -> None:
    lines = data("ksm_warning.log").splitlines()[:7]  # stops after "CPU: ..."
    r = only(classify(lines))
    assert r.title == "WARNING in ksm_scan_thread"
    assert r.corrupted


def test_oom_kill_is_one_oom_report() -> None:
    r = only(classify_text(data("oom_kill.log")))
    assert r.category == "OOM"
    assert r.title == "out of memory: killed process stress"
    assert "oom_reaper" in r.text


def test_oom_kill_lines_without_the_dump() -> None:
    log = ("[   50.1] oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),task=stress,pid=400\n"
           "[   50.2] Out of memory: Killed process 400 (stress) total-vm:2000000kB\n"
           "[   60.0] Memory cgroup out of memory: Killed process 500 (ksm-test) total-vm:10kB\n")
    reports = classify_text(log)
    assert [r.category for r in reports] == ["OOM", "OOM"]
    assert reports[1].title == "out of memory: killed process ksm-test"


def test_oom_then_a_real_bug_are_separate() -> None:
    lines = data("oom_kill.log").splitlines() + data("ksm_warning.log").splitlines()[3:]
    reports = classify(lines)
    assert [r.category for r in reports] == ["OOM", "WARNING"]


def test_sysrq_panic() -> None:
    r = only(classify_text(data("sysrq_crash.log")))
    assert (r.category, r.title, r.frame, r.corrupted) == (
        "PANIC", "kernel panic: sysrq triggered crash", None, False)


def test_panic_after_oops_does_not_hide_it() -> None:
    reports = classify_text(data("oops_fatal_exception.log"))
    first = reports[0]
    assert first.category == "NULL_DEREF"
    assert first.title == "BUG: kernel NULL pointer dereference in cmp_and_merge_page"
    assert "Kernel panic - not syncing: Fatal exception" in first.text


def test_panic_after_a_closed_report_comes_second() -> None:
    lines = data("ksm_warning.log").splitlines()
    lines += ["[   14.000000] systemd[1]: Reached target Multi-User System."] * 3
    lines += ["[   15.000000] Kernel panic - not syncing: Fatal exception"]
    reports = classify(lines)
    assert [r.category for r in reports] == ["WARNING", "PANIC"]
    assert reports[1].corrupted  # the oops it ends is not in its text


def test_hung_task() -> None:
    r = only(classify_text(data("hung_ksmd.log")))
    assert (r.category, r.title, r.frame) == ("HUNG_TASK", "INFO: task hung in ksm_scan_thread",
                                              "ksm_scan_thread")
    assert r.text.splitlines()[0].endswith("INFO: task ksmd:42 blocked for more than 122 seconds.")


def test_bad_rss_counter_and_bad_page_state() -> None:
    rss, page = classify_text(data("bad_rss_and_page_state.log"))
    assert (rss.category, rss.title, rss.frame, rss.corrupted) == (
        "BAD_RSS_COUNTER", "BUG: Bad rss-counter state", None, False)
    assert (rss.start_line, rss.end_line) == (0, 0)
    assert (page.category, page.frame, page.corrupted) == ("BAD_PAGE_STATE", "replace_page", False)
    assert page.title == "BUG: Bad page state in replace_page"
    assert "page dumped because: nonzero mapcount" in page.text


def test_vm_bug_on_page_with_its_page_dump() -> None:
    text = data("vm_bug_on_page.log")
    r = only(classify_text(text))
    assert (r.category, r.title, r.frame) == (
        "VM_BUG_ON", "VM_BUG_ON_PAGE in try_to_merge_one_page", "try_to_merge_one_page")
    assert text.splitlines()[r.start_line].endswith("page: refcount:3 mapcount:1 "
                                                   "mapping:0000000000000000 index:0x7f1234567 "
                                                   "pfn:0x10a2b3")


def test_kasan_names_the_caller_of_memcmp() -> None:
    r = only(classify_text(data("kasan_uaf.log")))
    assert (r.category, r.title, r.frame) == (
        "KASAN", "KASAN: slab-use-after-free Read in pages_identical", "pages_identical")
    assert "Freed by task 42" in r.text and "systemd" not in r.text


def test_refcount_warning_blames_the_caller() -> None:
    log = """\
[    7.0] refcount_t: underflow; use-after-free.
[    7.1] WARNING: CPU: 1 PID: 42 at lib/refcount.c:28 refcount_warn_saturate+0xba/0x110
[    7.2] RIP: 0010:refcount_warn_saturate+0xba/0x110
[    7.3] Call Trace:
[    7.4]  <TASK>
[    7.5]  ksm_put_mm_slot+0x5f/0x70
[    7.6]  ksm_exit+0x9d/0x1d0
[    7.7]  </TASK>
[    7.8] ---[ end trace 0000000000000000 ]---
"""
    r = only(classify_text(log))
    assert (r.category, r.title, r.frame) == ("REFCOUNT", "WARNING: refcount bug in ksm_put_mm_slot",
                                              "ksm_put_mm_slot")


def test_benign_lines_are_not_reports() -> None:
    log = """\
[    0.000000] Linux version 6.8.0 (build@host) #1 SMP PREEMPT_DYNAMIC
[    0.100000] calibrate_delay_direct() failed to get a good estimate for loops_per_jiffy.
[    0.200000] PCI: Using host bridge windows from ACPI; if necessary, use "pci=nocrs" and report a bug
[    0.300000] Speculative Return Stack Overflow: WARNING: kernel not compiled with CPU_SRSO.
[    0.400000] ACPI BIOS Error (bug): Could not resolve symbol [\\_SB.PCI0], AE_NOT_FOUND
[    0.500000] Kernel command line: console=ttyS0 oops=panic panic_on_warn=1
[    1.000000] INFO: lockdep is turned off.
[    2.000000] ksm: ksm_test[301]: merged 1024 pages
root@guest:~# echo "WARNING: CPU: looks scary"
WARNING: the test harness prints this
BUG: in a userspace tool's output
[    3.000000] EXT4-fs (vda): mounted filesystem with ordered data mode.
"""
    assert classify_text(log) == []


def test_headers_count_only_where_the_kernel_prints_them() -> None:
    # A user task's fault, reported by the kernel in one line, and sanitizer words
    # inside other messages are not reports.
    log = """\
[   10.100000] traps: a.out[123] general protection fault ip:7f00 sp:7ff0 error:0 in libc.so.6
[   10.200000] kasan: CONFIG_KASAN_INLINE enabled
[   10.300000] audit: comm="x" msg='BUG: KASAN: use-after-free in foo'
[   10.400000] BUG UNIX (Not tainted): kasan: bad access detected
"""
    assert classify_text(log) == []


def test_die_banner_after_a_message_that_lost_its_newline() -> None:
    log = """\
[   44.1] kasan: GPF could be caused by NULL-ptr deref or user memory accessgeneral protection fault: 0000 [#1] SMP KASAN
[   44.2] RIP: 0010:stable_tree_search+0x1f/0x600
[   44.3] Call Trace:
[   44.4]  ksm_do_scan+0x50/0x100
"""
    r = only(classify_text(log))
    assert (r.category, r.frame) == ("GPF", "stable_tree_search")


def test_segment_related_gpf() -> None:
    log = ("[   37.3] segment-related general protection fault: beec [#2] PREEMPT SMP KASAN PTI\n"
           "[   37.4] RIP: 0010:break_ksm+0x1f/0x600\n")
    assert only(classify_text(log)).frame == "break_ksm"


def test_netdev_refcount_wait() -> None:
    log = ("[  208.6] unregister_netdevice: waiting for macsec0 to become free. Usage count = 1\n"
           "[  218.7] unregister_netdevice: waiting for macsec0 to become free. Usage count = 1\n")
    r = only(classify_text(log))
    assert (r.category, r.title, r.frame, r.corrupted) == (
        "NETDEV_WAIT", "unregister_netdevice: waiting for DEV to become free", None, False)


def test_file_count_zero_with_and_without_its_warning() -> None:
    old = "[   50.0] VFS: Close: file count is 0\n"
    r = only(classify_text(old))
    assert (r.category, r.title, r.corrupted) == ("BUG", "VFS: Close: file count is zero", False)
    new = """\
[   50.0] VFS: Close: file count is 0 (f_op=iommufd_fops [iommufd])
[   50.1] WARNING: CPU: 48 PID: 2369 at fs/open.c:1507 filp_flush+0x3c/0xf0
[   50.2] RIP: 0010:filp_flush+0x3c/0xf0
[   50.3] Call Trace:
[   50.4]  <TASK>
[   50.5]  filp_close+0x1f/0x60
[   50.6]  ksm_close_files+0x34/0x98
[   50.7]  </TASK>
[   50.8] ---[ end trace 0000000000000000 ]---
"""
    r = only(classify_text(new))
    assert (r.category, r.title, r.frame) == ("BUG", "VFS: Close: file count is zero in "
                                              "ksm_close_files", "ksm_close_files")


def test_stream_emits_when_chatter_resumes() -> None:
    lines = data("ksm_warning.log").splitlines()
    sc = StreamClassifier()
    emitted = {i: sc.feed(ln) for i, ln in enumerate(lines)}
    done = {i: rs for i, rs in emitted.items() if rs}
    assert list(done) == [len(lines) - 1]  # the line after "---[ end trace"
    assert only(done[len(lines) - 1]).frame == "ksm_scan_thread"
    assert sc.flush() == []


def test_stream_flush_emits_the_pending_report() -> None:
    sc = StreamClassifier()
    for ln in data("ksm_warning.log").splitlines()[:12]:
        assert sc.feed(ln) == []
    r = only(sc.flush())
    assert r.corrupted and r.frame == "ksm_scan_thread"


# --- the shared corpus -------------------------------------------------------

# Crash logs we do not report, each with its reason.  Keep this short.
EXPECTED_MISSES = {
    "660": "syzkaller's executor failing (SYZFATAL), no kernel report",
    "716": "syzkaller's executor failing (SYZFAIL), no kernel report",
}
MIN_FRAME_AGREEMENT = 0.94  # the bar issue 20 sets; measured 94.9% (279/294)


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("classify_corpus",
                                                  REPO / "bench" / "classify_corpus.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def corpus_score() -> Any:
    if not CORPUS.is_dir():
        pytest.skip(f"kernel log corpus not found at {CORPUS}")
    bench = _bench()
    return bench.score(bench.load_corpus(CORPUS))


def test_corpus_recall(corpus_score: Any) -> None:
    assert sorted(corpus_score.missed) == sorted(EXPECTED_MISSES)


def test_corpus_no_false_positives(corpus_score: Any) -> None:
    assert corpus_score.false_positives == []


def test_corpus_culprit_agreement(corpus_score: Any) -> None:
    assert corpus_score.frame_agreement >= MIN_FRAME_AGREEMENT, corpus_score.frame_wrong


def test_corpus_categories_are_known(corpus_score: Any) -> None:
    assert {cat for (_, cat) in corpus_score.confusion} <= CATEGORIES
