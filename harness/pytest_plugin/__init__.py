"""The pytest side of ksm-harness, and the only harness package that imports pytest. The
plugin itself is ``harness.pytest_plugin.plugin`` (loaded by the root conftest.py), kept out of
this package's ``__init__`` so that importing ``session`` (how the CLI starts pytest) does not
import the plugin before pytest can register it."""
