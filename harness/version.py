"""The harness's own version, as installed (``ksm-harness --version``, results files)."""
from __future__ import annotations


def harness_version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("ksm-harness")
    except PackageNotFoundError:
        return "unknown"
