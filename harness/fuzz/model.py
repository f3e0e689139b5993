"""The host-side model of a generated run: which processes live, what every page of every
process (and of its forked children) must hold, and the KSM knobs. Steps are plain data
(:class:`Step`, JSON-able); :meth:`Model.refuse` is every step's precondition (what the
kernel and the workload can do here), :meth:`Model.apply` its effect on the model."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from harness.fuzz import content

PROCS = ("P0", "P1", "P2")
REGIONS = ("r0", "r1", "r2")
MAX_PAGES = 256
MAX_CHILDREN = 2
ADVICE = ("merge", "unmerge", "cold", "pageout")
# Knob values the generator picks from: fast enough to scan under TCG, small enough
# max_page_sharing to build chains out of a few hundred pages.
KNOB_VALUES: dict[str, tuple[int, ...]] = {
    "run": (0, 1, 2),
    "pages_to_scan": (100, 1000, 10000),
    "sleep_millisecs": (0, 5, 20),
    "use_zero_pages": (0, 1),
    "max_page_sharing": (2, 3, 256),
    "merge_across_nodes": (0, 1),
    # stable_node_dup() prunes a chain's stale dups, and collapses a chain down to one dup,
    # only once per this many ms (6.1's default 2000): 0 prunes at every search
    "stable_node_chains_prune_millisecs": (0, 10, 2000),
}
# Where every generated run starts (written in this order by the executor).
INITIAL_KNOBS = {"run": 2, "merge_across_nodes": 1, "max_page_sharing": 256,
                 "use_zero_pages": 0, "pages_to_scan": 10000, "sleep_millisecs": 0,
                 "stable_node_chains_prune_millisecs": 2000}
# The site operations (harness.fuzz.siteops) on one page of a region; hwpoison and damon take
# no process, numa_scan a process.
SITE_PAGE_OPS = ("soft_offline", "idle", "swap_write")
# Only while nothing is merged (mm/ksm.c answers EBUSY otherwise): after run=2.
TREE_KNOBS = ("merge_across_nodes", "max_page_sharing")


@dataclass(frozen=True)
class Step:
    """One operation: ``op`` and its arguments, e.g. Step("write", {"proc": "P0", ...})."""

    op: str
    args: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"op": self.op, **self.args}

    @classmethod
    def from_json(cls, data: Any) -> Step:
        if not isinstance(data, dict) or not isinstance(data.get("op"), str):
            raise ValueError(f"a step is an object with an 'op': {data!r}")
        return cls(data["op"], {k: v for k, v in data.items() if k != "op"})

    def __str__(self) -> str:
        return " ".join([self.op, *(f"{k}={v}" for k, v in self.args.items())])


@dataclass(frozen=True)
class Env:
    """What the guest offers: the KSM files, NUMA nodes, swap, a memory cgroup."""

    knobs: frozenset[str]
    nodes: int = 1
    swap: bool = False
    cgroup: bool = False
    # the site operations' interfaces (harness.fuzz.siteops.probe)
    hwpoison: bool = False        # MADV_HWPOISON / MADV_SOFT_OFFLINE (CONFIG_MEMORY_FAILURE)
    page_idle: bool = False       # /sys/kernel/mm/page_idle/bitmap
    numa_balancing: bool = False  # kernel.numa_balancing
    damon: bool = False           # DAMON's sysfs with the paddr operations


@dataclass
class Region:
    pages: int
    kind: str
    seed: int
    overrides: dict[int, int] = field(default_factory=dict)  # page -> key set by write
    mergeable: bool = False  # MADV_MERGEABLE, not undone by MADV_UNMERGEABLE since
    locked: bool = False  # mlock, not undone by munlock since

    @property
    def pattern(self) -> str:
        return "zero" if self.kind == "zero" else f"{self.kind}:{self.seed}"

    def page(self, p: int) -> bytes:
        """Every byte page ``p`` must hold (ksmwork_content.c's page_expect)."""
        skey = content.seedkey(self.seed)
        if p in self.overrides:
            return content.page_bytes(self.overrides[p])
        if self.kind == "zero":
            return content.page_bytes(0)
        if self.kind == "same" or (self.kind == "half" and p < self.pages // 2):
            return content.page_bytes(skey)
        if self.kind == "lastbyte":
            return content.page_bytes(skey, content.tail(skey, p))
        return content.page_bytes(content.unique_key(skey, p))


@dataclass
class Proc:
    regions: dict[str, Region] = field(default_factory=dict)
    writes: int = 0  # ksmwork's write counter (unique writes so far)

    def mergeable(self) -> bool:
        """KSM keeps this mm (or a child's) only while it has a VM_MERGEABLE area: a full
        scan that finds none drops it (scan_get_next_rmap_item, 6.1)."""
        return any(r.mergeable for r in (*self.regions.values(),
                                         *(self.child_regions.values() if self.children
                                           else ())))
    children: int = 0
    child_regions: dict[str, Region] = field(default_factory=dict)  # copies at the fork

    def pages(self) -> int:
        return sum(r.pages for r in self.regions.values())


@dataclass
class Model:
    env: Env
    procs: dict[str, Proc] = field(default_factory=dict)
    knobs: dict[str, int] = field(default_factory=dict)
    # True from a run=2 until the next run=1: ksmd has not scanned, so nothing is tracked
    clean: bool = True

    def __post_init__(self) -> None:
        if not self.knobs:
            self.knobs = {k: v for k, v in INITIAL_KNOBS.items() if k in self.env.knobs}

    def region(self, step: Step) -> Region:
        return self.procs[step.args["proc"]].regions[step.args["region"]]

    # -- preconditions --

    def refuse(self, step: Step) -> str | None:
        """Why ``step`` cannot run in this state on this guest; None when it can."""
        a, env = step.args, self.env
        proc = self.procs.get(a.get("proc", ""))
        if step.op == "start":
            return "running already" if a.get("proc") in self.procs else None
        if step.op == "knob":
            return self._refuse_knob(a.get("name", ""), a.get("value"))
        if step.op == "wait":
            if self.knobs.get("run") != 1:
                return "ksmd is not running (run != 1)"
            if not any(p.mergeable() for p in self.procs.values()):
                return "no VM_MERGEABLE area left: KSM drops the mm, ksmd sleeps"
            return None
        if step.op == "reclaim":
            return None if env.swap and env.cgroup and self.procs else "no swap or no cgroup"
        site = self._refuse_site(step)
        if site != "":
            return site
        if proc is None:
            return f"no process {a.get('proc')!r}"
        if step.op in ("exit",):
            return None
        if step.op == "fork":
            return "has children" if proc.children else (
                None if 1 <= a.get("n", 0) <= MAX_CHILDREN else "bad n")
        if step.op in ("children_exit", "children_verify"):
            return None if proc.children else "no children"
        if step.op == "migrate":
            return None if env.nodes >= 2 and a.get("src") != a.get("dst") else "needs 2 nodes"
        if step.op == "alloc":
            if a.get("region") in proc.regions or a.get("region") not in REGIONS:
                return "region exists or bad name"
            ok = a.get("kind") in content.KINDS and 1 <= a.get("pages", 0) <= MAX_PAGES
            return None if ok else "bad kind or pages"
        region = proc.regions.get(a.get("region", ""))
        if region is None:
            return f"no region {a.get('region')!r}"
        if step.op == "write":
            return None if 0 <= a.get("page", -1) < region.pages else "page out of range"
        if step.op == "madvise":
            if a.get("advice") not in ADVICE:
                return "bad advice"
            if a["advice"] in ("cold", "pageout") and region.locked:
                # madvise_cold/pageout: can_madv_lru_vma() refuses VM_LOCKED areas
                return f"MADV_{a['advice'].upper()} of an mlocked area is EINVAL"
            return "pageout needs swap" if a["advice"] == "pageout" and not env.swap else None
        if step.op == "move":
            return None if env.nodes >= 2 and 0 <= a.get("node", -1) < 2 else "needs 2 nodes"
        if step.op in ("free", "touch", "mlock", "munlock"):
            return None
        if step.op in SITE_PAGE_OPS:
            return None if 0 <= a.get("page", -1) < region.pages else "page out of range"
        return f"unknown op {step.op!r}"

    def _refuse_site(self, step: Step) -> str | None:
        """The site operations' preconditions on the guest ("": not a site operation, or
        one whose process and region the common checks look at)."""
        env, op = self.env, step.op
        need = {"hwpoison": env.hwpoison, "soft_offline": env.hwpoison,
                "idle": env.page_idle, "numa_scan": env.numa_balancing, "damon": env.damon,
                "swap_write": env.swap and env.cgroup}
        if op not in need:
            return ""
        if not need[op]:
            return f"this guest has no interface for {op}"
        if op == "hwpoison":  # its helper's pages merge only while ksmd runs
            return None if self.knobs.get("run") == 1 else "ksmd is not running (run != 1)"
        if op == "damon":
            return None
        if step.args.get("proc") not in self.procs:
            return f"no process {step.args.get('proc')!r}"
        return None if op == "numa_scan" else ""

    def _refuse_knob(self, name: str, value: Any) -> str | None:
        if name not in self.env.knobs:
            return f"this kernel has no {name}"
        if value not in KNOB_VALUES.get(name, ()):
            return f"value {value!r} not generated for {name}"
        if value == self.knobs.get(name):
            return "unchanged"
        if name in TREE_KNOBS and not (self.clean and self.knobs.get("run") == 2):
            return f"{name} changes only after run=2"
        if name == "merge_across_nodes" and self.env.nodes < 2:
            return "merge_across_nodes needs 2 nodes"
        return None

    # -- effects --

    def apply(self, step: Step) -> None:
        a = step.args
        if step.op == "start":
            self.procs[a["proc"]] = Proc()
        elif step.op == "exit":
            del self.procs[a["proc"]]
        elif step.op == "knob":
            self.knobs[a["name"]] = a["value"]
            if a["name"] == "run":
                self.clean = a["value"] == 2 or (self.clean and a["value"] == 0)
        elif step.op == "alloc":
            self.procs[a["proc"]].regions[a["region"]] = Region(
                a["pages"], a["kind"], 0 if a["kind"] == "zero" else a.get("seed", 0))
        elif step.op == "free":
            del self.procs[a["proc"]].regions[a["region"]]
        elif step.op in ("write", "swap_write"):
            proc, region = self.procs[a["proc"]], self.region(step)
            if a.get("same") is not None:
                key = content.seedkey(a["same"])
            else:
                proc.writes += 1
                key = content.write_key(content.seedkey(region.seed), proc.writes)
            region.overrides[a["page"]] = key
        elif step.op == "madvise" and a["advice"] in ("merge", "unmerge"):
            self.region(step).mergeable = a["advice"] == "merge"
        elif step.op in ("mlock", "munlock"):
            self.region(step).locked = step.op == "mlock"
        elif step.op == "fork":
            proc = self.procs[a["proc"]]
            proc.children = a["n"]
            proc.child_regions = copy.deepcopy(proc.regions)
        elif step.op == "children_exit":
            proc = self.procs[a["proc"]]
            proc.children, proc.child_regions = 0, {}
        # other madvise, touch, mlock, munlock, move, migrate, wait, reclaim, children_verify,
        # and the site operations but swap_write (a write): the content stays what it was
        # (that is what the oracles check)
