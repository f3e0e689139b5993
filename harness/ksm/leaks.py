"""Reusable leak checks for after a scenario. Each returns problems as messages that name
the counter, the expected and the actual value; ``check_*`` raise LeakError with them."""
from __future__ import annotations

import time

from harness.access.remote import Runner
from harness.ksm.control import Ksm
from harness.ksm.model import EXACT_COUNTERS
from harness.ksm.sysfs import RUN_UNMERGE

# After run=2 and the workloads' exit, every counter KSM defines exactly is 0.
IDLE_COUNTERS = EXACT_COUNTERS
KSM_SLABS = ("ksm_rmap_item", "ksm_stable_node", "ksm_mm_slot")


class LeakError(AssertionError):
    pass


def ksm_counters(runner: Runner) -> dict[str, int]:
    return Ksm(runner).snapshot().counters()


def ksm_idle_problems(counters: dict[str, int]) -> list[str]:
    return [f"{name} {counters[name]} != 0 after unmerge"
            for name in IDLE_COUNTERS if counters.get(name, 0) != 0]


def check_ksm_idle(runner: Runner, unmerge_timeout: float = 300.0) -> dict[str, int]:
    """run=2 (unmerge everything), then every KSM counter must read 0."""
    Ksm(runner).set("run", RUN_UNMERGE, unmerge_timeout)
    counters = ksm_counters(runner)
    problems = ksm_idle_problems(counters)
    if problems:
        raise LeakError("; ".join(problems))
    return counters


def slab_objects(runner: Runner, caches: tuple[str, ...] = KSM_SLABS) -> dict[str, int]:
    """Active objects of the KSM caches (visible because we boot with slab_nomerge), or of
    ``caches`` (e.g. ``mm_struct``), after a SLUB shrink: objects freed onto per-cpu slabs
    otherwise still count as active."""
    # No process is started between the shrink and the read (shell builtins only): a fork
    # allocates an mm_struct, and a slab taken onto a CPU counts every free object in it as
    # active (seen: mm_struct 28 against 16 with the same processes, read with cat).
    shrink = " ".join(f"/sys/kernel/slab/{c}/shrink" for c in caches)
    names = "|".join(caches)
    r = runner.run(f"for f in {shrink}; do [ -w $f ] && echo 1 > $f; done; "
                   f"while read -r __n __a __rest; do case $__n in {names}) "
                   f"echo \"$__n $__a\";; esac; done < /proc/slabinfo", timeout=30)
    counts: dict[str, int] = {}
    for line in r.stdout.splitlines():
        fields = line.split()
        if fields and fields[0] in caches:
            counts[fields[0]] = int(fields[1])
    return counts


def slab_problems(baseline: dict[str, int], now: dict[str, int], slack: int = 256) -> list[str]:
    """Per-cpu slabs keep a residue of objects after everything is freed, so compare with
    the baseline plus ``slack``, not with 0 (a leaked workload leaves thousands). Every
    cache of the baseline is compared."""
    problems = []
    for name in baseline:
        if name in baseline and now.get(name, 0) > baseline[name] + slack:
            problems.append(f"slab {name} {now[name]} objects > baseline "
                            f"{baseline[name]} + {slack}")
    return problems


def wait_slabs_back(runner: Runner, baseline: dict[str, int], slack: dict[str, int],
                    timeout: float = 20.0) -> dict[str, int]:
    """Poll until every cache of ``baseline`` is at most its baseline plus its ``slack``
    (an exited mm_struct can stay a few milliseconds as a CPU's lazy TLB mm, until that CPU
    runs another task); LeakError naming each cache still above it at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        now = slab_objects(runner, tuple(baseline))
        problems = [p for name in baseline
                    for p in slab_problems({name: baseline[name]}, now, slack.get(name, 0))]
        if not problems:
            return now
        if time.monotonic() > deadline:
            raise LeakError(f"after {timeout:.0f}s: " + "; ".join(problems))
        time.sleep(0.2)
