"""Helpers for KSM scenarios that speak pytest: a missing kernel feature becomes a skip that
says what is missing."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from harness import kernel_bugs
from harness.guestsys import Unavailable
from harness.ksm import Ksm, KsmUnavailable
from harness.ksm.guest import KsmGuest


@contextmanager
def skip_unless() -> Iterator[None]:
    """Turn a missing kernel feature into a skip that says what is missing."""
    try:
        yield
    except (Unavailable, KsmUnavailable) as e:
        pytest.skip(str(e))


def require_knob(k: Ksm, name: str) -> None:
    with skip_unless():
        k.require(name)


def require_nodes(ksm_guest: KsmGuest, count: int) -> list[int]:
    if len(ksm_guest.nodes) < count:
        pytest.skip(f"needs {count} NUMA nodes, the guest has {len(ksm_guest.nodes)}: boot "
                    f"with --numa {count}")
    return ksm_guest.nodes


def xfail_mark(bug_id: str, release: str, banner: str = "",
               raises: type[BaseException] | tuple[type[BaseException], ...] = AssertionError,
               ) -> pytest.MarkDecorator | None:
    """A strict xfail for a kernel known to have the bug (harness.kernel_bugs), None for any
    other kernel. Apply it with ``request.node.add_marker(mark)`` before the test checks the
    buggy behaviour."""
    bug = kernel_bugs.affected(bug_id, release, banner)
    if bug is None:
        return None
    version = ".".join(map(str, kernel_bugs.kernel_version(release, banner) or ()))
    return pytest.mark.xfail(strict=True, raises=raises,
                             reason=f"{bug.describe()} (this kernel: {release}, {version})")
