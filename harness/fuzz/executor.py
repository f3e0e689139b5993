"""Runs generated steps on a real guest and checks the oracles after each: every byte of
every process equals the model, read three ways (the process's own ``verify``, ``peek``
checked on the host against :mod:`harness.fuzz.content`, the forked children's
``children_verify``); the KSM counter invariants (:mod:`harness.fuzz.invariants`) on a
snapshot taken with ksmd paused; every knob write within its deadline (Ksm.set's). At the
end: every workload exits with status 0, run=2 brings every counter back to where the run's
first run=2 left it (0, unless an earlier run on this guest leaked) and the KSM slabs back to
their baseline."""
from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

from harness.access.remote import Runner
from harness.fuzz import siteops
from harness.fuzz.invariants import (
    liveness_problems,
    mergeable_rss_pages,
    sample_problems,
    sequence_problems,
)
from harness.fuzz.model import INITIAL_KNOBS, Env, Model, Region, Step
from harness.guest_mm import MemCgroup
from harness.ksm import RUN_MERGE, RUN_UNMERGE, ZERO_COUNTS, Ksm, count_mismatches, leaks
from harness.ksm.model import EXACT_COUNTERS, describe_mismatches
from harness.workloads import Workload

PEEK_LEN = 64
PEAKS = ("pages_shared", "pages_sharing", "stable_node_chains", "stable_node_dups",
         "full_scans")
SLAB_SLACK = 64  # as the ksm fixture: per-cpu slabs keep a residue
SITE_OPS = ("hwpoison", "damon", "numa_scan", "soft_offline", "idle", "swap_write")
SWAP_WRITE_RECLAIM_KB = 16384  # more than every generated page (3 x 3 x 256 pages, 9 MiB)


class OracleFailure(AssertionError):
    """The guest disagrees with the model or an invariant."""


class GuestSteps:
    """One generated run on the guest: :meth:`begin`, :meth:`step` each step, :meth:`end`
    (or :meth:`abandon` after a failure)."""

    def __init__(self, ksm: Ksm, start: Callable[[str], Workload], env: Env, runner: Runner,
                 cgroup: MemCgroup | None = None,
                 log: Callable[[str], None] = lambda _: None) -> None:
        self.ksm, self.start, self.env, self.runner = ksm, start, env, runner
        self.cgroup, self.log = cgroup, log
        self.workloads: dict[str, Workload] = {}
        self.samples: list[tuple[dict[str, int], bool]] = []
        self.slabs: dict[str, int] = {}
        # the exact counters after this run's first run=2: 0 on a sound kernel; what an earlier
        # run of this guest leaked otherwise, so that each run (and each shrinking attempt) is
        # judged by what it does itself, not by what a previous one left
        self.base: dict[str, int] = {}
        self.count = 0
        self.seconds = 0.0
        # what the run reached, for the summary: steps per op, counter peaks
        self.ops: Counter[str] = Counter()
        self.peaks: Counter[str] = Counter()

    def begin(self) -> Model:
        """Nothing merged, the initial knobs (tree knobs while run=2): a fresh model."""
        snap = self.ksm.unmerge_all()
        self.base = {n: snap[n] for n in EXACT_COUNTERS if n in snap}
        for name, value in INITIAL_KNOBS.items():
            if name != "run" and name in self.env.knobs and self.ksm.get(name) != value:
                self.ksm.set(name, value)
        if self.env.numa_balancing:
            siteops.numa_setup(self.runner)
        self.slabs = leaks.slab_objects(self.runner)
        model = Model(self.env)
        self._sample(model, reset=True)
        return model

    def step(self, model: Model, step: Step) -> None:
        why = model.refuse(step)
        if why is not None:
            raise ValueError(f"step '{step}' cannot run here: {why}")
        t0 = time.monotonic()
        self.log(f"step {self.count}: {step}")
        self._do(model, step)
        model.apply(step)
        self._check(model, step)
        self.count += 1
        self.ops[step.op if step.op != "knob" else f"{step.args['name']}={step.args['value']}"] += 1
        self.seconds += time.monotonic() - t0

    # -- doing --

    def _do(self, model: Model, step: Step) -> None:
        a = step.args
        if step.op == "start":
            self.workloads[a["proc"]] = self.start(a["proc"])
            return
        if step.op == "knob":
            self._knob(a["name"], a["value"])
            return
        if step.op == "wait":
            pages = sum(p.pages() * (1 + p.children) for p in model.procs.values())
            self.ksm.wait_merged(lambda _: True, min_full_scans=a.get("scans", 1),
                                 pages=max(pages, 1), expect="full scans")
            if a.get("scans", 1) >= 2:  # the second scan began after the wait did
                self._liveness(model)
            return
        if step.op == "reclaim":
            assert self.cgroup is not None
            self.cgroup.reclaim(f"{int(a['kb'])}K")
            return
        if step.op in SITE_OPS:
            self.ops[f"{step.op}->{self._site(step)}"] += 1
            return
        w = self.workloads[a["proc"]]
        if step.op == "exit":
            status = w.exit(check=False)
            del self.workloads[a["proc"]]
            if status != 0:
                raise OracleFailure(f"{a['proc']} exited with status {status} (1: it saw "
                                    "corruption)")
        elif step.op == "alloc":
            pattern = "zero" if a["kind"] == "zero" else f"{a['kind']}:{a['seed']}"
            w.alloc(a["region"], a["pages"], pattern)
        elif step.op == "free":
            w.free(a["region"])
        elif step.op == "madvise":
            w.madvise(a["region"], a["advice"])
        elif step.op == "write":
            w.write(a["region"], a["page"], a.get("same"))
        elif step.op == "touch":
            w.touch(a["region"])
        elif step.op == "mlock":
            w.mlock(a["region"])
        elif step.op == "munlock":
            w.munlock(a["region"])
        elif step.op == "fork":
            w.fork(a["n"])
        elif step.op == "children_exit":
            statuses = w.children_exit()
            if any(statuses):
                raise OracleFailure(f"{a['proc']}'s children exited with {statuses} "
                                    "(1: a child saw corruption)")
        elif step.op == "move":
            w.move(a["region"], a["node"])
        elif step.op == "migrate":
            w.migrate(a["src"], a["dst"])
        elif step.op != "children_verify":
            raise ValueError(f"unknown op {step.op!r}")

    def _site(self, step: Step) -> str:
        """A site operation (harness.fuzz.siteops); what happened, for the summary."""
        a = step.args
        if step.op == "hwpoison":
            return siteops.hwpoison(self.start, self.count, self.log)
        if step.op == "damon":
            return siteops.damon(self.runner)
        w = self.workloads[a["proc"]]
        if step.op == "numa_scan":
            return siteops.numa_scan(self.runner, w, self.log)
        if step.op == "soft_offline":
            return siteops.soft_offline(w, a["region"], a["page"])
        if step.op == "idle":
            return siteops.idle(w, a["region"], a["page"])
        assert step.op == "swap_write" and self.cgroup is not None
        # as much of the group as goes out, so that the page's swap entry, shared by every
        # mapping of a KSM page, is what the write faults on
        self.cgroup.reclaim(f"{SWAP_WRITE_RECLAIM_KB}K")
        w.write(a["region"], a["page"], a.get("same"))
        return "written"

    def _knob(self, name: str, value: int) -> None:
        if name == "run" and value == RUN_UNMERGE:
            snap = self.ksm.unmerge_all()  # blocks until every page is unmerged
            self._zero(snap.counters(), "right after run=2")
        else:
            self.ksm.set(name, value)

    # -- oracles --

    def _check(self, model: Model, step: Step) -> None:
        for name, proc in model.procs.items():
            w = self.workloads[name]
            if proc.regions:
                got = w.verify()
                if got != proc.pages():
                    raise OracleFailure(f"{name} verified {got} pages, the model has "
                                        f"{proc.pages()}")
                self._peek(name, w, proc.regions, step)
            if proc.children:
                got = w.children_verify()
                want = sum(r.pages for r in proc.child_regions.values())
                if got != want:
                    raise OracleFailure(f"{name}'s children verified {got} pages, the model "
                                        f"has {want}")
        self._sample(model, reset=step.op == "knob" and step.args.get("name") == "run"
                     and step.args.get("value") == RUN_UNMERGE)

    def _liveness(self, model: Model) -> None:
        """Every process with a present page in a VM_MERGEABLE area has rmap_items
        (harness.fuzz.invariants' liveness; skipped on a kernel without ksm_stat)."""
        seen: dict[str, tuple[int, int]] = {}
        for name, proc in model.procs.items():
            if not proc.mergeable():
                continue
            pid = self.workloads[name].pid
            items = self.ksm.process_stat(pid).get("ksm_rmap_items") if pid else None
            if items is None:
                return
            # builtins only (no grep): a fork+exec costs ~100 ms in a TCG guest
            smaps = self.runner.run(f"while read -r __a __r; do case $__a in Rss:|VmFlags:) "
                                    f"echo \"$__a $__r\";; esac; done < /proc/{pid}/smaps",
                                    timeout=self.ksm.timeout)
            seen[name] = (mergeable_rss_pages(smaps.stdout), items)
        problems = liveness_problems(seen)
        if problems:
            raise OracleFailure("KSM liveness broken: " + "; ".join(problems))

    def _peek(self, name: str, w: Workload, regions: dict[str, Region], step: Step) -> None:
        """One page of the process read from outside its verify, against the host's model:
        the page the step wrote, else one chosen by the step number (replays choose the
        same)."""
        if step.op == "write" and step.args["proc"] == name:
            rname, page = step.args["region"], step.args["page"]
        else:
            rname = sorted(regions)[self.count % len(regions)]
            page = (self.count * 7919) % regions[rname].pages
        offset = (self.count * PEEK_LEN) % 4096
        got = w.peek(rname, page, offset, PEEK_LEN)
        want = regions[rname].page(page)[offset:offset + PEEK_LEN]
        if got != want:
            raise OracleFailure(f"{name} {rname} page {page} offset {offset}: peek read "
                                f"{got.hex()}, the model says {want.hex()}")

    def _sample(self, model: Model, reset: bool) -> None:
        running = model.knobs.get("run") == RUN_MERGE
        snap = self.ksm.exact_counters() if running else self.ksm.snapshot()
        values = {n: snap[n] for n in snap.values if snap.values[n].lstrip("-").isdigit()}
        self.samples.append((values, reset))
        for name in PEAKS:
            self.peaks[name] = max(self.peaks[name], values.get(name, 0))
        problems = sample_problems(values, model.clean, model.knobs, self.base)
        problems += sequence_problems(self.samples[-2:])
        if problems:
            raise OracleFailure("KSM invariant broken: " + "; ".join(problems)
                                + f" (all: {snap.summary()})")

    def _zero(self, counters: dict[str, int], when: str) -> None:
        wrong = count_mismatches_dict(counters, self.base)
        if wrong:
            raise OracleFailure(f"KSM counters not back to their start {when}: {wrong}")

    # -- the end --

    def end(self, model: Model) -> None:
        """While ksmd runs, a last wait of two full scans and its liveness check (the state a
        run built up, e.g. a process ksmd lost, is seen before the exits undo it); every
        workload exits cleanly; run=2: every counter 0 and the slabs back."""
        last = Step("wait", {"scans": 2})
        if model.refuse(last) is None:
            self.step(model, last)
        for name in list(self.workloads):
            self.step(model, Step("exit", {"proc": name}))
        snap = self.ksm.unmerge_all()
        left = count_mismatches(self.ksm.exact_counters(), {**ZERO_COUNTS, **self.base})
        if left:
            raise OracleFailure(f"after every exit and run=2: {describe_mismatches(left)} "
                                f"({snap.summary()})")
        problems = leaks.slab_problems(self.slabs, leaks.slab_objects(self.runner),
                                       SLAB_SLACK)
        if problems:
            raise OracleFailure("KSM objects leaked: " + "; ".join(problems))

    def abandon(self) -> None:
        """After a failure: kill what runs, unmerge (best effort, the failure is reported)."""
        for w in self.workloads.values():
            w.kill()
        self.workloads.clear()
        try:
            self.ksm.unmerge_all()
        except Exception:  # noqa: BLE001 -- the step's failure is the verdict
            pass


def count_mismatches_dict(counters: dict[str, int], base: dict[str, int] | None = None) -> str:
    """e.g. "pages_volatile=185 (at the start: 0)": the counters not back at ``base`` (0)."""
    base = base or {}
    return ", ".join(f"{n}={counters[n]} (at the start: {base.get(n, 0)})" for n in ZERO_COUNTS
                     if counters.get(n, 0) != base.get(n, 0))
