"""The generator: a hypothesis RuleBasedStateMachine whose rules draw steps the model allows
(a step the guest cannot run is never drawn), run them on the guest with
:class:`harness.fuzz.executor.GuestSteps` and keep the failing sequences, shortest last, for
the reproducer file. Generation on the guest stops at a time budget; once something failed,
hypothesis shrinks it (bounded by its own 5 minutes) before the test fails."""
from __future__ import annotations

import copy
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from hypothesis import HealthCheck, Phase, assume, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    rule,
    run_state_machine_as_test,
)

from harness.fuzz import content
from harness.fuzz.executor import GuestSteps
from harness.fuzz.model import ADVICE, KNOB_VALUES, MAX_PAGES, PROCS, REGIONS, Env, Model, Step

# Long enough for a state to build up and be undone within one run (a chain made, its
# sharers gone, pruned; a process's last mergeable area gone and a new one madvised):
# measured at 20, such sequences were too rare to be drawn in 5 minutes; at 40 hypothesis
# shrank a planted bug to 12-19 steps, not 5-7.
STEPS_PER_RUN = 30
MIN_RUN_SECONDS = 1.0  # a run on a TCG guest takes longer (measured: 2 s)
SEEDS = st.integers(1, 3)
MAX_PAGE_SHARING_FIRST = (256, 2, 3)  # KNOB_VALUES's, the default (no step) first
# stable_node_dup() prunes a chain (drops stale dups, collapses it to its last dup) once per
# stable_node_chains_prune_millisecs, 2000 by default: a run of steps at ~0.3 s each saw few
# prunes. Two runs in three prune at every search; the default first.
PRUNE_FIRST = (2000, 0, 10)
# Region sizes: half the time a few pages, so that a chain can come down to one dup with
# room left (its collapse), a dup hold a whole region, a lone page sit beyond the cap;
# uniform over 1..256 made chains of ~100 dups that never came down to one (measured: no
# collapse in 50 runs); else up to the most a region has.
PAGES = st.integers(1, 8) | st.integers(1, MAX_PAGES)
# How often each op is drawn where it can run: memory ops and waiting for ksmd (where the
# merging happens) most, knob flips and processes coming and going less.
WEIGHTS = (("start", 3), ("alloc", 5), ("write", 5), ("wait", 6), ("run", 3), ("stop", 1),
           ("madvise", 2), ("free", 4), ("region_op", 2), ("fork", 2), ("children", 2),
           ("knob", 2), ("move", 1), ("migrate", 1), ("reclaim", 1), ("exit", 1),
           # the site operations (harness.fuzz.siteops), where the guest has them
           ("hwpoison", 1), ("soft_offline", 1), ("idle", 1), ("numa_scan", 1), ("damon", 1),
           ("swap_write", 1))  # few seeds: regions of different processes match, and merge
# ksmd running is where merging, chains and their pruning happen: "run" (while it is
# stopped) starts it more often than "stop" (while it runs) stops it. Measured: as one op
# drawing another run value, every draw while ksmd ran stopped it, and it ran at the end of
# few runs (7 waits in 1224 steps).
RUN_VALUES = (1, 1, 2, 0)
STOP_VALUES = (2, 0)


@dataclass
class Budget:
    """Generation stops at ``deadline``; after a failure, shrinking is hypothesis's."""

    seconds: float
    started: float = field(default_factory=time.monotonic)
    failed: bool = False

    def open(self) -> bool:
        return self.failed or time.monotonic() - self.started < self.seconds


@dataclass
class Recorder:
    """The shortest failing sequence so far, its error, and what ran."""

    steps: list[Step] | None = None
    first: int = 0  # steps of the first failing sequence found (before shrinking)
    first_seconds: float = 0.0  # from the start of generation to that first failure
    first_step: int = 0  # guest steps run up to it, every run counted (the cost to find it)
    error: str = ""
    runs: int = 0
    step_count: int = 0
    step_seconds: float = 0.0
    ops: Counter[str] = field(default_factory=Counter)
    peaks: Counter[str] = field(default_factory=Counter)

    def failed(self, steps: list[Step], exc: BaseException, seconds: float = 0.0) -> None:
        """``seconds``: since generation started (kept for the first failure only)."""
        if not self.first:
            self.first, self.first_seconds = len(steps), seconds
            self.first_step = self.step_count + len(steps)
        if self.steps is None or len(steps) <= len(self.steps):
            self.steps, self.error = list(steps), f"{type(exc).__name__}: {exc}"


def machine(make: Callable[[], GuestSteps], env: Env, budget: Budget,
            recorder: Recorder) -> type[RuleBasedStateMachine]:
    """The state machine class for one guest (``make`` gives a fresh GuestSteps per run)."""

    class Generated(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.guest: GuestSteps | None = None
            self.model: Model = Model(env)
            self.steps: list[Step] = []
            self.broken = False
            self.ran: Model | None = None  # the model when the budget cut this run short

        @initialize(data=st.data())
        def begin(self, data: st.DataObject) -> None:
            # past the budget a run draws the same steps on the model alone: hypothesis
            # sees the same data for the same choices (no flakiness) and ends quickly
            if budget.open():
                self.guest = make()
                self.model = self.guest.begin()
                recorder.runs += 1
            # Stable node chains (and their dups, pruning, collapse) need a small
            # max_page_sharing, which only changes before the first run=1: as one knob draw
            # among many it came too seldom (measured: no chain in 379 steps), so each run
            # starts by drawing it. The default first: what shrinking goes back to.
            mps = data.draw(st.sampled_from(MAX_PAGE_SHARING_FIRST), label="max_page_sharing")
            if self.model.refuse(Step("knob", {"name": "max_page_sharing", "value": mps})) is None:
                self.do("knob", name="max_page_sharing", value=mps)
            # ksmd is where merging happens, but as one draw of the run knob among all the
            # ops run=1 came late or never (measured: 9 of 25 runs ever had ksmd running):
            # two runs in three start it here. Without it first: what shrinking goes back to.
            prune = data.draw(st.sampled_from(PRUNE_FIRST), label="prune millisecs")
            step = Step("knob", {"name": "stable_node_chains_prune_millisecs", "value": prune})
            if self.model.refuse(step) is None:
                self.do("knob", **step.args)
            if data.draw(st.sampled_from((False, True, True)), label="ksmd from the start"):
                self.do("knob", name="run", value=1)

        def do(self, op: str, **args: object) -> None:
            step = Step(op, dict(args))
            assume(self.model.refuse(step) is None)
            # The budget ends a run on the guest mid-way too, so that a long sequence does not
            # run the slice past it: the rest of the run goes on on the model alone (the same
            # draws, as hypothesis requires: an assume() here made it "inconsistent data
            # generation"), and the teardown checks the guest against the model as it was.
            if self.guest is not None and self.ran is None and not budget.open():
                self.ran = copy.deepcopy(self.model)
            if self.guest is None or self.ran is not None:
                self.model.apply(step)
                return
            self.steps.append(step)
            try:
                self.guest.step(self.model, step)
            except BaseException as e:
                self.broken = budget.failed = True
                recorder.failed(self.steps, e, time.monotonic() - budget.started)
                raise

        # -- what can be drawn here --
        def live(self) -> list[str]:
            return sorted(self.model.procs)

        def with_regions(self) -> list[tuple[str, str]]:
            return [(p, r) for p in self.live() for r in sorted(self.model.procs[p].regions)]

        def enabled(self, op: str) -> bool:
            m = self.model
            procs = m.procs.values()
            return {
                "start": len(m.procs) < len(PROCS),
                "exit": bool(m.procs),
                "fork": any(not p.children for p in procs),
                "children": any(p.children for p in procs),
                "alloc": any(len(p.regions) < len(REGIONS) for p in procs),
                "free": bool(self.with_regions()),
                "region_op": bool(self.with_regions()),
                "madvise": bool(self.with_regions()),
                "write": bool(self.with_regions()),
                "move": m.env.nodes >= 2 and bool(self.with_regions()),
                "migrate": m.env.nodes >= 2 and bool(m.procs),
                "reclaim": m.env.swap and m.env.cgroup and bool(m.procs),
                "run": m.knobs.get("run") != 1,
                "stop": m.knobs.get("run") == 1,
                "knob": True,
                "wait": m.refuse(Step("wait", {"scans": 1})) is None,
                "hwpoison": m.refuse(Step("hwpoison")) is None,
                "damon": m.env.damon,
                "numa_scan": m.env.numa_balancing and bool(m.procs),
                "soft_offline": m.env.hwpoison and bool(self.with_regions()),
                "idle": m.env.page_idle and bool(self.with_regions()),
                "swap_write": m.env.swap and m.env.cgroup and bool(self.with_regions()),
            }[op]

        @rule(data=st.data())
        def step(self, data: st.DataObject) -> None:
            """One step: the op drawn by weight among those possible here, then its
            arguments (one rule, so that the weights, not hypothesis's uniform choice among
            rules, say how often each op runs)."""
            ops = [op for op, weight in WEIGHTS for _ in range(weight) if self.enabled(op)]
            getattr(self, f"draw_{data.draw(st.sampled_from(ops), label='op')}")(data)

        # -- processes --
        def draw_start(self, data: st.DataObject) -> None:
            free = [p for p in PROCS if p not in self.model.procs]
            self.do("start", proc=data.draw(st.sampled_from(free)))

        def draw_exit(self, data: st.DataObject) -> None:
            self.do("exit", proc=data.draw(st.sampled_from(self.live())))

        def draw_fork(self, data: st.DataObject) -> None:
            procs = [p for p in self.live() if not self.model.procs[p].children]
            self.do("fork", proc=data.draw(st.sampled_from(procs)),
                    n=data.draw(st.integers(1, 2)))

        def draw_children(self, data: st.DataObject) -> None:
            procs = [p for p in self.live() if self.model.procs[p].children]
            op = "children_verify" if data.draw(st.booleans()) else "children_exit"
            self.do(op, proc=data.draw(st.sampled_from(procs)))

        # -- memory --
        def draw_alloc(self, data: st.DataObject) -> None:
            procs = [p for p in self.live() if len(self.model.procs[p].regions) < len(REGIONS)]
            proc = data.draw(st.sampled_from(procs))
            region = data.draw(st.sampled_from(
                [r for r in REGIONS if r not in self.model.procs[proc].regions]))
            kind = data.draw(st.sampled_from(content.KINDS))
            self.do("alloc", proc=proc, region=region, pages=data.draw(PAGES),
                    kind=kind, seed=0 if kind == "zero" else data.draw(SEEDS))
            if data.draw(st.integers(0, 3)):  # mostly MADV_MERGEABLE at once
                self.do("madvise", proc=proc, region=region, advice="merge")

        def draw_region_op(self, data: st.DataObject) -> None:
            proc, region = data.draw(st.sampled_from(self.with_regions()))
            op = data.draw(st.sampled_from(["touch", "mlock", "munlock"]))
            self.do(op, proc=proc, region=region)

        def draw_free(self, data: st.DataObject) -> None:
            # its own op (it was one of four region ops), weight 4: a process's last
            # mergeable area going away, and a chain's sharers with it, are what mm/ksm.c's
            # drop and prune paths need (a process losing its last mergeable area while ksmd
            # ran, then madvising a new one: 9% of runs at weight 2, 17% at 4, on the model)
            proc, region = data.draw(st.sampled_from(self.with_regions()))
            self.do("free", proc=proc, region=region)

        def draw_madvise(self, data: st.DataObject) -> None:
            proc, region = data.draw(st.sampled_from(self.with_regions()))
            self.do("madvise", proc=proc, region=region,
                    advice=data.draw(st.sampled_from(ADVICE)))

        def draw_write(self, data: st.DataObject) -> None:
            proc, region = data.draw(st.sampled_from(self.with_regions()))
            pages = self.model.procs[proc].regions[region].pages
            self.do("write", proc=proc, region=region,
                    page=data.draw(st.integers(0, pages - 1)),
                    same=data.draw(st.none() | SEEDS))

        # -- the site operations --
        def draw_hwpoison(self, data: st.DataObject) -> None:
            self.do("hwpoison")

        def draw_damon(self, data: st.DataObject) -> None:
            self.do("damon")

        def draw_numa_scan(self, data: st.DataObject) -> None:
            self.do("numa_scan", proc=data.draw(st.sampled_from(self.live())))

        def draw_soft_offline(self, data: st.DataObject) -> None:
            self.draw_page_op("soft_offline", data)

        def draw_idle(self, data: st.DataObject) -> None:
            self.draw_page_op("idle", data)

        def draw_swap_write(self, data: st.DataObject) -> None:
            self.draw_page_op("swap_write", data, same=data.draw(st.none() | SEEDS))

        def draw_page_op(self, op: str, data: st.DataObject, **extra: object) -> None:
            proc, region = data.draw(st.sampled_from(self.with_regions()))
            pages = self.model.procs[proc].regions[region].pages
            self.do(op, proc=proc, region=region, page=data.draw(st.integers(0, pages - 1)),
                    **extra)

        def draw_move(self, data: st.DataObject) -> None:
            proc, region = data.draw(st.sampled_from(self.with_regions()))
            self.do("move", proc=proc, region=region, node=data.draw(st.integers(0, 1)))

        def draw_migrate(self, data: st.DataObject) -> None:
            src = data.draw(st.integers(0, 1))
            self.do("migrate", proc=data.draw(st.sampled_from(self.live())), src=src,
                    dst=1 - src)

        def draw_reclaim(self, data: st.DataObject) -> None:
            self.do("reclaim", kb=data.draw(st.sampled_from([256, 1024, 4096])))

        # -- KSM --
        def draw_run(self, data: st.DataObject) -> None:
            values = [v for v in RUN_VALUES if v != self.model.knobs.get("run")]
            self.do("knob", name="run", value=data.draw(st.sampled_from(values)))

        def draw_stop(self, data: st.DataObject) -> None:
            self.do("knob", name="run", value=data.draw(st.sampled_from(STOP_VALUES)))

        def draw_knob(self, data: st.DataObject) -> None:
            choices = [Step("knob", {"name": n, "value": v}) for n, vs in KNOB_VALUES.items()
                       if n != "run" for v in vs]
            choices = [s for s in choices if self.model.refuse(s) is None]
            assume(choices)
            self.do("knob", **data.draw(st.sampled_from(choices)).args)

        def draw_wait(self, data: st.DataObject) -> None:
            # two: the second full scan began after the wait did (the liveness oracle's need)
            self.do("wait", scans=2)

        def teardown(self) -> None:
            guest = self.guest
            if guest is None:
                return
            try:
                if not self.broken:
                    guest.end(self.ran if self.ran is not None else self.model)
            except BaseException as e:
                self.broken = budget.failed = True
                recorder.failed(self.steps, e, time.monotonic() - budget.started)
                raise
            finally:
                if self.broken:
                    guest.abandon()
                recorder.step_count += guest.count
                recorder.step_seconds += guest.seconds
                recorder.ops.update(guest.ops)
                recorder.peaks |= guest.peaks

    return Generated


def run(cls: type[RuleBasedStateMachine], seed: int, budget: Budget,
        steps: int = STEPS_PER_RUN, examples: int | None = None) -> None:
    """Hypothesis runs the machine on the guest until the budget closes (the remaining runs
    are on the model alone, instantly) or something fails (then it shrinks). Derandomized
    from ``seed``; no example database."""
    hypothesis_seed(seed)(cls)
    run_state_machine_as_test(cls, settings=settings(
        # the budget, not this, ends generation on the guest; the cap bounds the model-only
        # runs after it
        max_examples=examples or max(2, int(budget.seconds / MIN_RUN_SECONDS)),
        stateful_step_count=steps, deadline=None, database=None,
        suppress_health_check=list(HealthCheck), print_blob=False,
        phases=(Phase.generate, Phase.shrink), report_multiple_bugs=False))
