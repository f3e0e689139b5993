"""The ksm-harness pytest plugin (loaded by the root conftest.py).

- options and markers (declared here, once; the guest options come from harness.options),
- ``fixtures``: booted guests for tests (one per module by default, a fresh one on request),
- ``watch``: the kernel health monitor around every phase of every guest test, turning
  what it finds and what the test raised into ranked findings on the phase's report,
- ``reporting``: a Result record per test, and the files CI reads (JUnit, JSON, KTAP,
  report directory with reproducers and summary.html).

Markers: ``guest`` (needs a VM; added automatically to tests using a VM fixture, and by
tests/conftest.py to tests/guest/, whose tests boot QEMU through the CLI) and ``host`` (pure
host test, with a cache of its own: tests/conftest.py). ``-m 'not guest'`` runs only what
needs no QEMU. ``selfcheck``: a check of the harness itself inside the KSM suite (a race
forced off must end as "race not exercised", our ksm_tests fixes apply to the real source);
deselected unless ``--selfchecks`` is given, which ``selftest`` does, so a user's run never
reports them.
"""
from __future__ import annotations

import pytest

from harness import options
from harness.results import writers

pytest_plugins = [
    "harness.pytest_plugin.fixtures",
    "harness.pytest_plugin.watch",
    "harness.pytest_plugin.ksm_scenarios",  # a check the kernel cannot answer skips
    "harness.pytest_plugin.sharding",  # before reporting, which imports it
    "harness.pytest_plugin.reporting",
    "harness.pytest_plugin.faultphases",  # fault points of tests/faults (harness.faultpoints)
]

MARKERS = (
    "guest: needs a booted QEMU guest",
    "host: runs on the host only, no QEMU",
    "fresh_vm: give this test its own VM",
    "slow: long soak (opt-in)",
    "allow_kernel(*categories): kernel reports of these categories (e.g. OOM) do not fail "
    "the test",
    "selfcheck: checks the harness, not the kernel; runs only with --selfchecks (selftest)",
)


def pytest_addoption(parser: pytest.Parser) -> None:
    groups = {"guest": parser.getgroup("ksm-harness", "ksm-harness guest options")}
    groups["selection"] = groups["guest"]
    groups["reports"] = parser.getgroup("ksm-harness-report", "ksm-harness reports")
    groups["cells"] = c = parser.getgroup("ksm-harness-cells", "ksm-harness cells and shards")
    options.add_to_pytest(groups.__getitem__,
                          options.VM_OPTIONS + options.RUN_OPTIONS + writers.OPTIONS)
    # ours, not a user's: `ksm-harness selftest` gives it (tests marked selfcheck)
    groups["guest"].addoption("--selfchecks", action="store_true",
                              help="also run the harness's self-checks among the scenarios "
                                   "(tests marked selfcheck); `ksm-harness selftest` gives it")
    # set by `ksm-harness run` for the child pytest of each cell, not by people
    c.addoption("--cell-position", metavar="c/C", default="0/1",
                help="this cell's place among the C cells a sharded run splits (0-based; "
                     "set by `ksm-harness run`)")
    c.addoption("--cell-plan", metavar="FILE", default=None,
                help="the run's cells (JSON, written by `ksm-harness run`), recorded in the "
                     "results so `ksm-harness merge` sees a missing cell")


def pytest_configure(config: pytest.Config) -> None:
    for line in MARKERS:
        config.addinivalue_line("markers", line)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Self-checks leave a user's run (before --shard slices it: see sharding)."""
    if config.getoption("selfchecks"):
        return
    checks = [item for item in items if item.get_closest_marker("selfcheck")]
    if checks:
        items[:] = [item for item in items if not item.get_closest_marker("selfcheck")]
        config.hook.pytest_deselected(items=checks)
