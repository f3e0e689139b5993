"""The generator's site operations: the interfaces through which the rest of the kernel meets a
KSM page (harness/coverage/ksm_sites.json), each run where the guest's kernel has it (probed:
:func:`probe`) and checked by an oracle of its own, besides the executor's after every step:

- ``hwpoison``: MADV_HWPOISON on a KSM page of a throwaway helper process (memory_failure ->
  hwpoison_user_mappings, which refuses KSM pages on 6.1): EBUSY, and every mapping stays
  readable; or (later kernels) the page poisoned and its only mapper killed with SIGBUS.
- ``soft_offline``: MADV_SOFT_OFFLINE on a page of a process (the page migrates, the old one
  is retired): the content must not change (the executor's verify and peek).
- ``idle``: idle page tracking on a page (page_idle_clear_pte_refs walks a KSM page's
  mappings through its stable node): marked idle and untouched, an LRU page reads idle.
- ``numa_scan``: NUMA balancing on while a process runs (task_numa_work -> change_prot_numa,
  which skips KSM pages), then off again: the scan must run and the content stay.
- ``damon``: DAMON's physical-address monitor over the guest's RAM for a moment
  (damon_pa_mkold / damon_pa_young walk the mappings of the pages it samples).
- ``swap_write`` (the executor's: reclaim, then write): a write fault on a swapped-out page,
  a KSM page's swap entry being shared, through the swap cache (do_swap_page).

Poison is for good: the helper's pages hold content no other region has (its step number), so
nothing merges with a poisoned page, and the helper exits at once."""
from __future__ import annotations

import re
import time
from collections.abc import Callable

from harness.access.remote import Runner, quote
from harness.workloads import Workload
from harness.workloads.protocol import WorkloadDied, WorkloadError

# what each operation needs, as the file its kernel config makes
PROBES = {
    "hwpoison": "/proc/sys/vm/memory_failure_early_kill",     # CONFIG_MEMORY_FAILURE
    "page_idle": "/sys/kernel/mm/page_idle/bitmap",            # CONFIG_IDLE_PAGE_TRACKING
    "numa_balancing": "/proc/sys/kernel/numa_balancing",       # CONFIG_NUMA_BALANCING
    "damon": "/sys/kernel/mm/damon/admin/kdamonds/nr_kdamonds",  # DAMON_SYSFS (+ PADDR)
}
NUMA_DEBUGFS = "/sys/kernel/debug/sched/numa_balancing"
MERGE_SECONDS = 20.0      # the helper's two pages merge within this (ksmd runs, ~2 scans)
NUMA_SECONDS = 5.0        # a busy process is scanned within this once balancing is on
DAMON_SECONDS = 0.5       # kdamond samples (5 ms) this long: a few hundred random pages
KNOB_TIMEOUT = 30.0       # seconds: a sysfs/sysctl write under TCG
HELPER_SEED_BASE = 1000   # helper content: same:BASE+step, no generated region's seed


class SiteOracleFailure(AssertionError):
    """A site operation's own oracle failed."""


def probe(runner: Runner) -> dict[str, bool]:
    """Which site operations this guest's kernel offers (one round trip)."""
    r = runner.run("for f in " + " ".join(quote(p) for p in PROBES.values())
                   + '; do [ -e "$f" ] && echo "$f"; done; true', timeout=KNOB_TIMEOUT)
    have = set(r.stdout.split())
    return {name: path in have for name, path in PROBES.items()}


def hwpoison(start: Callable[[str], Workload], step: int, log: Callable[[str], None]) -> str:
    """A helper with two identical pages; once ksmd merged them, MADV_HWPOISON the KSM page:
    memory_failure must refuse it (EBUSY: hwpoison_user_mappings "can't handle KSM pages")
    and leave both mappings readable. Not merged in time: poison the helper's own page
    anyway (the site runs for any mapped page) and kill it. Returns what happened."""
    helper = start(f"H{step}")
    try:
        helper.alloc("hp", 2, f"same:{HELPER_SEED_BASE + step}")
        helper.madvise("hp", "merge")
        merged = _wait_ksm(helper, MERGE_SECONDS)
        try:
            helper.madvise("hp", "hwpoison", 0, 1)
            poisoned = True
        except WorkloadDied as e:
            # the kernel's other answer (later kernels handle a KSM page): the page poisoned,
            # the helper that mapped it killed with SIGBUS (its KSM page was its own alone:
            # no other workload maps it, and their oracles go on checking them)
            if merged and "SIGBUS" in str(e):
                log("hwpoison: the kernel poisoned the KSM page and killed its only mapper")
                return "ksm-poisoned"
            raise SiteOracleFailure(f"MADV_HWPOISON of a {'KSM' if merged else 'plain'} "
                                    f"page failed: {e}") from None
        except WorkloadError as e:
            if not merged or "EBUSY" not in str(e):
                raise SiteOracleFailure(f"MADV_HWPOISON of a {'KSM' if merged else 'plain'} "
                                        f"page failed: {e}") from None
            poisoned = False
        if merged and poisoned:
            raise SiteOracleFailure("MADV_HWPOISON of a KSM page succeeded: memory_failure "
                                    "unmapped a KSM page (hwpoison_user_mappings refuses them)")
        if not merged:  # its page is gone: any access is SIGBUS
            helper.kill()
            log("hwpoison: the helper's pages did not merge in time: poisoned a plain page")
            return "plain"
        got = helper.verify("hp")
        if got != 2:
            raise SiteOracleFailure(f"after a refused MADV_HWPOISON the helper verified {got} "
                                    "of its 2 pages")
        status = helper.exit(check=False)
        if status != 0:
            raise SiteOracleFailure(f"the helper exited with status {status} after a refused "
                                    "MADV_HWPOISON")
        return "ksm-refused"
    except BaseException:
        helper.kill()
        raise


def _wait_ksm(w: Workload, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        try:
            if w.pageflags("hp").get("ksm", 0) == 2:
                return True
        except WorkloadError:  # kpageflags cannot tell here: treat as not merged
            return False
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)


def soft_offline(w: Workload, region: str, page: int) -> str:
    """MADV_SOFT_OFFLINE one page: migrated and the old frame retired, or refused (EBUSY: it
    would not migrate; EIO: not a page it handles, e.g. the zero page). The content is the
    executor's to check."""
    try:
        w.madvise(region, "soft_offline", page, 1)
        return "offlined"
    except WorkloadError as e:
        if "EBUSY" in str(e) or "EIO" in str(e):
            return "refused"
        raise


def idle(w: Workload, region: str, page: int) -> str:
    """Mark one page idle and read it back: untouched and on the LRU, it must read idle."""
    got = w.idle(region, page)
    if got["pfn"] and got["lru"] == 1 and not got["idle"]:
        raise SiteOracleFailure(f"{region} page {page} (pfn {got['pfn']:#x}, ksm={got['ksm']}) "
                                "was marked idle and not touched since, yet reads not idle")
    return "ksm" if got["ksm"] == 1 else "plain" if got["pfn"] else "absent"


def vmstat(runner: Runner, name: str) -> int:
    r = runner.run(f"grep -m1 '^{name} ' /proc/vmstat", timeout=KNOB_TIMEOUT)
    m = re.match(rf"{name} (\d+)", r.stdout.strip())
    return int(m.group(1)) if m else -1


def numa_setup(runner: Runner) -> None:
    """No scan delay, so that processes started from now on are scanned at their first tick
    with balancing on (inert while it is off, as the harness keeps it)."""
    runner.run("mountpoint -q /sys/kernel/debug || mount -t debugfs none /sys/kernel/debug; "
               f"[ -d {NUMA_DEBUGFS} ] && echo 0 > {NUMA_DEBUGFS}/scan_delay_ms; true",
               timeout=KNOB_TIMEOUT)


def numa_scan(runner: Runner, w: Workload, log: Callable[[str], None]) -> str:
    """kernel.numa_balancing=1 while the process reads its memory (CPU time is what starts a
    scan) until /proc/vmstat's numa_pte_updates moves, then 0 again whatever happened."""
    before = vmstat(runner, "numa_pte_updates")
    runner.run("echo 1 > /proc/sys/kernel/numa_balancing", timeout=KNOB_TIMEOUT, check=True)
    try:
        deadline = time.monotonic() + NUMA_SECONDS
        while time.monotonic() < deadline:
            w.verify()
            if vmstat(runner, "numa_pte_updates") > before:
                return "scanned"
        log("numa_scan: no NUMA scan within the deadline")
        return "not scanned"
    finally:
        runner.run("echo 0 > /proc/sys/kernel/numa_balancing", timeout=KNOB_TIMEOUT,
                   check=True)


def ram_range(runner: Runner) -> tuple[int, int]:
    """The largest 'System RAM' range of /proc/iomem (root: real addresses)."""
    r = runner.run("grep 'System RAM' /proc/iomem", timeout=KNOB_TIMEOUT)
    best = (0, 0)
    for m in re.finditer(r"^\s*([0-9a-f]+)-([0-9a-f]+) : System RAM", r.stdout, re.M):
        lo, hi = int(m.group(1), 16), int(m.group(2), 16) + 1
        if hi - lo > best[1] - best[0]:
            best = (lo, hi)
    if best == (0, 0):
        raise SiteOracleFailure(f"no System RAM in /proc/iomem: {r.stdout.strip()[:200]}")
    return best


def damon(runner: Runner) -> str:
    """One kdamond with the paddr operations over the largest RAM range for a moment: it
    must report on while running and off once stopped."""
    lo, hi = ram_range(runner)
    k = "/sys/kernel/mm/damon/admin/kdamonds"
    c = f"{k}/0/contexts/0"
    setup = (f"echo 1 > {k}/nr_kdamonds && echo 1 > {k}/0/contexts/nr_contexts && "
             f"echo paddr > {c}/operations && echo 1 > {c}/targets/nr_targets && "
             f"echo 1 > {c}/targets/0/regions/nr_regions && "
             f"echo {lo} > {c}/targets/0/regions/0/start && "
             f"echo {hi} > {c}/targets/0/regions/0/end && echo on > {k}/0/state && "
             f"cat {k}/0/state")
    r = runner.run(setup, timeout=KNOB_TIMEOUT)
    try:
        if r.stdout.strip() != "on":
            raise SiteOracleFailure(f"DAMON paddr did not start: {r.stdout.strip()} "
                                    f"{r.stderr.strip()[-200:]}")
        time.sleep(DAMON_SECONDS)
    finally:
        off = runner.run(f"echo off > {k}/0/state; cat {k}/0/state; echo 0 > {k}/nr_kdamonds",
                         timeout=KNOB_TIMEOUT)
    if off.stdout.strip() != "off":
        raise SiteOracleFailure(f"DAMON did not stop: {off.stdout.strip()} "
                                f"{off.stderr.strip()[-200:]}")
    return "sampled"
