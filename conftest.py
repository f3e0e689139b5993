"""Root conftest: load the harness's pytest plugin (options, markers, VM fixtures, reports)."""
pytest_plugins = ["harness.pytest_plugin.plugin"]
