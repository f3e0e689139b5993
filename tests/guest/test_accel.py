"""The accelerator choice never hangs and says why it chose."""
from __future__ import annotations

import time

from harness.machine import accel


def test_auto_probe_is_bounded_and_explained() -> None:
    t0 = time.monotonic()
    why = accel.probe_kvm()
    assert time.monotonic() - t0 < accel.PROBE_DEADLINE + 3
    chosen = accel.choose("auto")
    if why is None:
        assert chosen.name == "kvm"
    else:
        assert chosen.name == "tcg" and why.split(";")[0] in chosen.reason


def test_boot_sector_is_a_valid_mbr() -> None:
    assert len(accel.BOOT_SECTOR) == 512 and accel.BOOT_SECTOR.endswith(b"\x55\xaa")
