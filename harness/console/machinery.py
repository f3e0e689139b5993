"""The kernel functions that sit between a report's printer and the code to blame, per kind of
report, as the kernel sources call them (6.1 and 6.12 read; 4.19 names as remembered).  A
culprit is the first frame that is none of these; the kinds table (kinds.py) and the
WARN/BUG-site rules (culprit.py) build their skip patterns here.

Each entry is a tuple of regex fragments matched against a whole function name (after the
compiler's .isra/.constprop/... suffixes are gone); 6.10+ allocation wrappers carry a
"_noprof" suffix, which every name may have.
"""
from __future__ import annotations

import re

# lib/list_debug.c checks, called by include/linux/list.h and rculist.h inlines that
# become frames when not inlined (4.19: __list_add_valid; 6.6+: *_or_report).
LIST = (
    r"__list_(?:add|del_entry)_valid(?:_or_report)?", r"_*list_(?:add|del)\w*",
    r"list_(?:move|replace|splice|swap|cut|bulk_move|rotate)\w*", r"__list_del\w*",
)
# lib/refcount.c (4.19: refcount_*_checked(); 5.5+: refcount_warn_saturate()) called by
# include/linux/refcount.h inlines; include/linux/kref.h and lib/kobject.c's get/put wrap them.
REFCOUNT = (r"_*refcount_\w+", r"kref_\w+", r"kobject_(?:get|put)\w*")
# mm/usercopy.c: usercopy_abort() <- __check_object_size() <- check_object_size()
# <- check_copy_size() <- copy_{to,from}_user() (include/linux/uaccess.h); the object checks
# it calls: __check_heap_object() (mm/slub.c), check_stack_object(), virt_addr_valid().
USERCOPY = (
    r"usercopy_\w+", r"_*check_(?:object_size|copy_size|heap_object|stack_object"
    r"|kernel_text_object|bogus_address|page_span)", r"_*virt_addr_valid",
    r"_*copy_(?:to|from)_user\w*", r"_*copy_(?:to|from)_iter\w*",
)
# mm/page_alloc.c: bad_page() <- free_page_is_bad_report()/free_tail_page_prepare()
# (6.1: free_tail_pages_check()) <- free_pages_prepare() <- the page freeing paths; or
# <- check_new_page_bad() <- check_new_page(s)() <- rmqueue*() <- get_page_from_freelist().
# The freeing entry points that drop the last reference: mm/swap.c, include/linux/mm.h.
BAD_PAGE = (
    r"bad_page", r"free_page_is_bad\w*", r"free_tail_pages?_\w+", r"free_pages_prepare",
    r"free_pages_check\w*", r"__free_pages\w*", r"free_unref_\w+", r"free_one_page",
    r"free_pcppages_bulk", r"free_pages", r"__free_one_page", r"free_the_page",
    r"__folio_put\w*", r"folio_put\w*", r"folios_put\w*", r"__put_page\w*", r"put_page\w*",
    r"release_pages", r"free_compound_page", r"destroy_large_folio", r"free_frozen_pages",
    r"check_new_pages?\w*", r"rmqueue\w*", r"get_page_from_freelist", r"prep_new_page",
    r"post_alloc_hook", r"page_expected_state", r"__alloc_pages\w*", r"alloc_pages\w*",
)
# mm/memory.c: print_bad_pte() <- vm_normal_page()/vm_normal_folio() <- zap_pte_range()
# <- zap_pmd_range() <- ... <- unmap_page_range().
BAD_PAGE_MAP = (
    r"print_bad_p[tm]e", r"vm_normal_(?:page|folio)\w*", r"zap_\w*_range\w*",
    r"unmap_page_range", r"unmap_single_vma", r"unmap_vmas",
)
# The allocation stack kmemleak records: kmemleak_alloc*() (mm/kmemleak.c) <- the slab,
# vmalloc and percpu allocators (mm/slub.c, mm/slab_common.c, mm/vmalloc.c, mm/percpu.c)
# <- include/linux/slab.h's inline entry points; and library code that allocates on its
# caller's behalf: mm/util.c (kstrdup, kmemdup, memdup_user, kvmalloc), lib/kasprintf.c,
# lib/radix-tree.c and lib/idr.c (radix_tree_node_alloc <- idr_get_free), mm/list_lru.c.
ALLOCATION = (
    r"kmemleak\w*", r"create_object\w*", r"\w*alloc\w*", r"kmem_cache\w*", r"\w*slab\w*",
    r"kstrn?dup\w*", r"kmemdup\w*", r"v?memdup_user\w*", r"strndup_user", r"kv?asprintf\w*",
    r"idr_get\w*", r"__?list_lru_init\w*", r"pcpu_\w+",
)
# kernel/locking/spinlock_debug.c: spin_bug()/rwlock_bug() <- debug_spin_lock_before()
# <- do_raw_spin_lock() <- __raw_spin_lock() <- _raw_spin_lock*() <- spin_lock*() inlines,
# and the subsystems' own wrappers that take a lock for their caller, named so by kernel
# convention (kernel/sched: raw_spin_rq_lock_nested() <- __task_rq_lock(), rq_lock_irqsave()).
_LOCK_WRAPPER = r"\w*_(?:un)?lock(?:_\w+)?"
SPINLOCK = (r"spin_\w+", r"\w*_spin_\w*lock\w*", r"debug_spin_\w+", _LOCK_WRAPPER)
RWLOCK = (r"rwlock_\w+", r"\w*_(?:read|write)_(?:un|try)?lock\w*", r"debug_(?:read|write)_\w+",
          _LOCK_WRAPPER)


def pattern(*groups: tuple[str, ...]) -> str:
    """A regex matching a whole function name that belongs to any of ``groups``."""
    names = "|".join(f for g in groups for f in g)
    return rf"^(?:{names})(?:_noprof)?$"


def compiled(*groups: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile(pattern(*groups))

# kernel/sched/core.c: __schedule_bug() <- schedule_debug() <- __schedule() <- schedule()
# and the ways in: preempt_schedule*(), __cond_resched(), schedule_timeout(), io_schedule().
SCHEDULE = (r"__schedule_bug", r"schedule_debug", r"\w*schedule\w*", r"_*cond_resched\w*")
# kernel/sched/core.c: __might_resched() (4.19: ___might_sleep()) <- __might_sleep()
# <- might_sleep()/might_alloc() users: the allocators' pre-alloc hooks and entry points.
MIGHT_SLEEP = (r"_*might_\w+", r"slab_pre_alloc_hook", r"slab_alloc\w*", r"kmem_cache_\w+",
               r"_*kv?[mzc]alloc\w*", r"_*v[mz]alloc\w*", r"kmalloc_\w+", r"__alloc_pages\w*")
# kernel/locking/lockdep.c: lockdep_rcu_suspicious(), reached through RCU_LOCKDEP_WARN()
# inlined in the caller, in RCU's own functions (kernel/rcu/, rcupdate.h), or in
# rcu_sleep_check() from schedule_debug() and __might_resched().
RCU_SUSPICIOUS = (r"lockdep_rcu_suspicious", r"\w*rcu\w*", *SCHEDULE, *MIGHT_SLEEP)
# lib/smp_processor_id.c: check_preemption_disabled() <- debug_smp_processor_id() or
# __this_cpu_preempt_check(), called from the smp_processor_id()/__this_cpu_*() macros,
# and the out-of-line this_cpu_*() helpers of include/linux/percpu-defs.h users.
PREEMPT_CHECK = (r"check_preemption_disabled", r"debug_smp_processor_id",
                 r"__this_cpu_preempt_check", r"\w*this_cpu_\w+")
# kernel/locking/lockdep.c: "trying to register non-static key" from assign_lock_key()
# <- register_lock_class() <- __lock_acquire() <- lock_acquire() <- the lock primitives;
# or from lockdep_init_map_type() <- the lock initialisers.
LOCK_CLASS = (
    r"assign_lock_key", r"register_lock_class", r"look_up_lock_class", r"_*lock_acquire\w*",
    r"lock_(?:release|acquired|contended)", r"lockdep_init_map\w*", r"_*(?:raw_)?spin_lock_init",
    r"__mutex_init", r"__init_rwsem", r"lock_map_\w+", r"_*mutex_\w+", r"_*down_\w+",
    r"_*up_\w+", r"_*down", r"_*up", r"rwsem_\w+", *SPINLOCK, *RWLOCK,
)
# kernel/workqueue.c: lockdep maps that stand for a work item or a workqueue, acquired in
# process_one_work() and in the flush/cancel paths (touch_{wq,work}_lockdep_map() in 6.x).
WORKQUEUE_LOCKDEP = (
    r"process_one_work", r"_*flush_work\w*", r"start_flush_work", r"_*flush_workqueue",
    r"drain_workqueue", r"destroy_workqueue", r"touch_\w*lockdep_map", r"_*cancel_\w*work\w*",
)
