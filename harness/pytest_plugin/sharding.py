"""``--shard I/N``: keep this shard's contiguous block of the run's (cell, test) pairs, after
-k and -m (see harness.cellplan); the rest is reported as deselected."""
from __future__ import annotations

import pytest

from harness import cellplan
from harness.errors import HarnessError

SELECTED = pytest.StashKey[int]()


@pytest.hookimpl(trylast=True)  # after -k / -m deselection
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    spec = config.getoption("shard", None)
    if spec:
        try:
            shard = cellplan.parse_shard(spec)
            position = cellplan.position_of(config.getoption("cell_position") or "0/1")
        except HarnessError as exc:
            raise pytest.UsageError(str(exc)) from None
        keep = cellplan.shard_items(len(items), shard, position)
        dropped = items[:keep.start] + items[keep.stop:]
        items[:] = items[keep.start:keep.stop]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
    config.stash[SELECTED] = len(items)
