"""Host tests are hermetic: every test not marked ``guest`` gets a cache and a runs directory
of its own, so it neither reads the user's cache (kernels, images, probe verdicts) nor sees
another harness's runs. Guest tests keep the real cache: they need its kernel and image.

Everything under tests/guest/ runs the harness on real QEMU (in this process or through the
CLI in a child): it is marked ``guest`` here, so ``-m 'not guest'`` boots nothing."""
from __future__ import annotations

from pathlib import Path

import pytest

GUEST_TESTS = Path(__file__).resolve().parent / "guest"


@pytest.hookimpl(tryfirst=True)  # before -m deselects and the plugin marks the rest `host`
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if GUEST_TESTS in item.path.resolve().parents:
            item.add_marker(pytest.mark.guest)


@pytest.fixture(autouse=True)
def own_cache_and_runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                       monkeypatch: pytest.MonkeyPatch) -> None:
    if request.node.get_closest_marker("guest"):
        return
    base = tmp_path_factory.mktemp("harness-home")
    # the environment, not a patched function: children the test starts inherit it
    monkeypatch.setenv("KSM_HARNESS_CACHE", str(base / "cache"))
    monkeypatch.setenv("KSM_HARNESS_RUNS", str(base / "runs"))
