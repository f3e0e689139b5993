"""Generated operation sequences checked against a model (harness.fuzz): no scenario names
the bug. Hypothesis draws steps over the workload protocol and KSM's knobs (several processes,
regions, forks, exits, knob flips, NUMA moves, reclaim to zram), each step is checked against
the host's model of every page and the counter invariants, and a failure is shrunk to a
minimal sequence written as a reproducer (``ksm-harness fuzz --replay FILE``).

In a suite run it is a slice of a fixed time budget (--fuzz-minutes, default 1.25) with the
night's seed (--fuzz-seed, default today's UTC date), printed."""
from __future__ import annotations

import datetime
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.fuzz import machine as gen
from harness.fuzz.executor import GuestSteps
from harness.fuzz.model import Model
from harness.fuzz.replay import Reproducer, load
from harness.ksm import Ksm
from harness.ksm.prepared_guest import KsmGuest
from tests.ksm.fixture_types import MemcgFactory, WorkloadFactory
from tests.ksm.guest_env import guest_env

SLICE_MINUTES = 1.25


def fuzz_seed(config: pytest.Config) -> int:
    given = config.getoption("--fuzz-seed", default=None)
    if given is not None:
        return int(given)
    return int(datetime.datetime.now(datetime.UTC).strftime("%Y%m%d"))


def test_generated(ksm_guest: KsmGuest, ksm: Ksm, workload: WorkloadFactory,
                   memcg: MemcgFactory, small_zram_swap: bool,
                   request: pytest.FixtureRequest) -> None:
    config = request.config
    env, cgroup = guest_env(ksm, ksm_guest, memcg, small_zram_swap, "fuzz", "no reclaim steps")

    def make() -> GuestSteps:
        return GuestSteps(ksm, lambda name: workload(name=name, cgroup=cgroup), env,
                          ksm_guest.sh, cgroup)

    replay = config.getoption("--fuzz-replay", default=None)
    if replay:
        run_reproducer(load(Path(replay)), make)
        return
    seed = fuzz_seed(config)
    minutes = config.getoption("--fuzz-minutes", default=None) or SLICE_MINUTES
    request.node.ksm_seed = seed  # named in the failure report, as the chaos seed is
    print(f"fuzz seed {seed}, budget {minutes:g} min, guest {env}")
    budget, recorder = gen.Budget(minutes * 60), gen.Recorder()
    t0 = time.monotonic()
    try:
        gen.run(gen.machine(make, env, budget, recorder), seed, budget)
    except BaseException:
        if recorder.steps is not None:
            path = write_reproducer(config, ksm_guest, seed, recorder)
            print(f"first failure after {recorder.first_seconds:.0f}s of generation, at guest "
                  f"step {recorder.first_step} (a sequence of {recorder.first} steps)")
            print(f"minimal failing sequence ({len(recorder.steps)} steps): {path}\n"
                  f"replay: ksm-harness fuzz --replay {path}")
        raise
    finally:
        took = time.monotonic() - t0
        rate = recorder.step_count / (recorder.step_seconds / 60) if recorder.step_seconds else 0
        print(f"fuzz: {recorder.runs} runs, {recorder.step_count} steps in {took:.0f}s "
              f"({recorder.step_count / took * 60:.0f} steps/min overall, {rate:.0f} in the "
              f"steps themselves); steps: "
              f"{' '.join(f'{k}:{v}' for k, v in sorted(recorder.ops.items()))}; peaks: "
              f"{' '.join(f'{k}={v}' for k, v in sorted(recorder.peaks.items()))}")
    assert recorder.step_count > 0, "the budget ran out before any step ran"


def run_reproducer(rep: Reproducer, make: Callable[[], GuestSteps]) -> None:
    guest = make()
    model: Model = guest.begin()
    print(f"replaying {len(rep.steps)} steps (seed {rep.seed}, kernel {rep.kernel}); it "
          f"failed with: {rep.failure}")
    try:
        for step in rep.steps:
            guest.step(model, step)
        guest.end(model)
    except BaseException:
        guest.abandon()
        raise


def write_reproducer(config: pytest.Config, ksm_guest: KsmGuest, seed: int,
                     recorder: gen.Recorder) -> Path:
    assert recorder.steps is not None
    kernel = config.getoption("--kernel", default=None) or "debian"
    report = Path(config.getoption("--report-dir", default=None) or "results")
    rep = Reproducer(tuple(recorder.steps), seed, kernel, recorder.error[:2000])
    return rep.write(report / "fuzz" / f"reproducer-{seed}-{os.getpid()}.json")
