"""The generator: a hypothesis RuleBasedStateMachine whose rules draw steps the model allows
(a step the guest cannot run is never drawn), run them on the guest with
:class:`harness.fuzz.executor.GuestSteps` and keep the failing sequences, shortest last, for
the reproducer file. Generation stops at a time budget; once something failed, hypothesis
shrinks it (bounded by its own 5 minutes) before the test fails."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from hypothesis import HealthCheck, Phase, assume, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    precondition,
    rule,
    run_state_machine_as_test,
)

from harness.fuzz import content
from harness.fuzz.executor import GuestSteps
from harness.fuzz.model import ADVICE, KNOB_VALUES, PROCS, REGIONS, Env, Model, Step

STEPS_PER_RUN = 20
MIN_RUN_SECONDS = 5.0  # a run on a TCG guest takes at least this
SEEDS = st.integers(1, 3)  # few seeds: regions of different processes match, and merge


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
    error: str = ""
    runs: int = 0
    step_count: int = 0
    step_seconds: float = 0.0

    def failed(self, steps: list[Step], exc: BaseException) -> None:
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

        @initialize()
        def begin(self) -> None:
            assume(budget.open())
            self.guest = make()
            self.model = self.guest.begin()
            recorder.runs += 1

        def do(self, op: str, **args: object) -> None:
            step = Step(op, dict(args))
            assume(self.model.refuse(step) is None)
            assert self.guest is not None
            self.steps.append(step)
            try:
                self.guest.step(self.model, step)
            except BaseException as e:
                self.broken = budget.failed = True
                recorder.failed(self.steps, e)
                raise

        # -- processes --
        def live(self) -> list[str]:
            return sorted(self.model.procs)

        def with_regions(self) -> list[tuple[str, str]]:
            return [(p, r) for p in self.live() for r in sorted(self.model.procs[p].regions)]

        @precondition(lambda self: len(self.model.procs) < len(PROCS))
        @rule(data=st.data())
        def start(self, data: st.DataObject) -> None:
            free = [p for p in PROCS if p not in self.model.procs]
            self.do("start", proc=data.draw(st.sampled_from(free)))

        @precondition(lambda self: bool(self.model.procs))
        @rule(data=st.data())
        def exit(self, data: st.DataObject) -> None:
            self.do("exit", proc=data.draw(st.sampled_from(self.live())))

        @precondition(lambda self: any(not p.children for p in self.model.procs.values()))
        @rule(data=st.data(), n=st.integers(1, 2))
        def fork(self, data: st.DataObject, n: int) -> None:
            procs = [p for p in self.live() if not self.model.procs[p].children]
            self.do("fork", proc=data.draw(st.sampled_from(procs)), n=n)

        @precondition(lambda self: any(p.children for p in self.model.procs.values()))
        @rule(data=st.data(), verify=st.booleans())
        def children(self, data: st.DataObject, verify: bool) -> None:
            procs = [p for p in self.live() if self.model.procs[p].children]
            op = "children_verify" if verify else "children_exit"
            self.do(op, proc=data.draw(st.sampled_from(procs)))

        # -- memory --
        @precondition(lambda self: any(len(p.regions) < len(REGIONS)
                                       for p in self.model.procs.values()))
        @rule(data=st.data(), pages=st.integers(1, 256), kind=st.sampled_from(content.KINDS),
              seed=SEEDS)
        def alloc(self, data: st.DataObject, pages: int, kind: str, seed: int) -> None:
            procs = [p for p in self.live() if len(self.model.procs[p].regions) < len(REGIONS)]
            proc = data.draw(st.sampled_from(procs))
            region = data.draw(st.sampled_from(
                [r for r in REGIONS if r not in self.model.procs[proc].regions]))
            self.do("alloc", proc=proc, region=region, pages=pages, kind=kind,
                    seed=0 if kind == "zero" else seed)

        @precondition(lambda self: bool(self.with_regions()))
        @rule(data=st.data(), op=st.sampled_from(["free", "touch", "mlock", "munlock"]))
        def region_op(self, data: st.DataObject, op: str) -> None:
            proc, region = data.draw(st.sampled_from(self.with_regions()))
            self.do(op, proc=proc, region=region)

        @precondition(lambda self: bool(self.with_regions()))
        @rule(data=st.data(), advice=st.sampled_from(ADVICE))
        def madvise(self, data: st.DataObject, advice: str) -> None:
            proc, region = data.draw(st.sampled_from(self.with_regions()))
            self.do("madvise", proc=proc, region=region, advice=advice)

        @precondition(lambda self: bool(self.with_regions()))
        @rule(data=st.data(), same=st.none() | SEEDS)
        def write(self, data: st.DataObject, same: int | None) -> None:
            proc, region = data.draw(st.sampled_from(self.with_regions()))
            pages = self.model.procs[proc].regions[region].pages
            self.do("write", proc=proc, region=region,
                    page=data.draw(st.integers(0, pages - 1)), same=same)

        @precondition(lambda self: self.model.env.nodes >= 2 and bool(self.with_regions()))
        @rule(data=st.data(), node=st.integers(0, 1))
        def move(self, data: st.DataObject, node: int) -> None:
            proc, region = data.draw(st.sampled_from(self.with_regions()))
            self.do("move", proc=proc, region=region, node=node)

        @precondition(lambda self: self.model.env.nodes >= 2 and bool(self.model.procs))
        @rule(data=st.data(), src=st.integers(0, 1))
        def migrate(self, data: st.DataObject, src: int) -> None:
            self.do("migrate", proc=data.draw(st.sampled_from(self.live())), src=src,
                    dst=1 - src)

        @precondition(lambda self: self.model.env.swap and self.model.env.cgroup
                      and bool(self.model.procs))
        @rule(kb=st.sampled_from([256, 1024, 4096]))
        def reclaim(self, kb: int) -> None:
            self.do("reclaim", kb=kb)

        # -- KSM --
        @rule(value=st.sampled_from(KNOB_VALUES["run"]))
        def run(self, value: int) -> None:
            self.do("knob", name="run", value=value)

        @rule(data=st.data())
        def knob(self, data: st.DataObject) -> None:
            choices = [Step("knob", {"name": n, "value": v}) for n, vs in KNOB_VALUES.items()
                       if n != "run" for v in vs]
            choices = [s for s in choices if self.model.refuse(s) is None]
            assume(choices)
            step = data.draw(st.sampled_from(choices))
            self.do("knob", **step.args)

        @precondition(lambda self: self.model.knobs.get("run") == 1)
        @rule(scans=st.integers(1, 2))
        def wait(self, scans: int) -> None:
            self.do("wait", scans=scans)

        def teardown(self) -> None:
            guest = self.guest
            if guest is None:
                return
            try:
                if not self.broken:
                    guest.end(self.model)
            except BaseException as e:
                self.broken = budget.failed = True
                recorder.failed(self.steps, e)
                raise
            finally:
                if self.broken:
                    guest.abandon()
                recorder.step_count += guest.count
                recorder.step_seconds += guest.seconds

    return Generated


def run(cls: type[RuleBasedStateMachine], seed: int, budget: Budget,
        steps: int = STEPS_PER_RUN) -> None:
    """Hypothesis runs the machine until the budget closes (then every run is rejected) or
    something fails (then it shrinks). Derandomized from ``seed``; no example database."""
    hypothesis_seed(seed)(cls)
    run_state_machine_as_test(cls, settings=settings(
        # a run costs seconds on a guest: the budget, not this, ends generation; the cap
        # bounds the cheap rejected runs after it (hypothesis allows 10 per example)
        max_examples=max(2, int(budget.seconds / MIN_RUN_SECONDS)), stateful_step_count=steps, deadline=None, database=None,
        suppress_health_check=list(HealthCheck), print_blob=False,
        phases=(Phase.generate, Phase.shrink), report_multiple_bugs=False))
