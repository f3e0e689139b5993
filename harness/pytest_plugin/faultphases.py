"""A test's phases as fault points (harness.faultpoints): its fixtures set up (the guest is
up, nothing of the test has run), its body, its teardown (the guest still up)."""
from __future__ import annotations

from collections.abc import Generator

import pytest

from harness import faultpoints


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    yield
    faultpoints.reached("fixture-setup", item.name)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    faultpoints.reached("test-body", item.name)
    yield


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    faultpoints.reached("teardown", item.name)
    yield
