"""Kernel image parsing on the real Debian kernel (fetched once into the cache)."""
from __future__ import annotations

import pytest

from harness.assets import kernel


def test_debian_kernel_is_booted_as_pvh_vmlinux() -> None:
    k = kernel.default()
    assert k.release.startswith("6.1.")
    assert k.pvh, "the bzImage should have been turned into a PVH vmlinux"
    assert k.builtin("CONFIG_KSM") and k.builtin("CONFIG_NUMA")
    assert k.modules_dir is not None and (k.modules_dir / "modules.dep").exists()


def test_bzimage_release_matches_package_name() -> None:
    k = kernel.default()
    assert kernel.bzimage_release(k.path.read_bytes()) == k.release
    assert kernel.bzimage_release(b"\0" * 4096) is None


def test_debian_spec_names_a_package() -> None:
    k = kernel.choose("debian")
    assert k.origin.startswith("debian:linux-image-6.1.")
    assert kernel.choose(None).release == k.release
    with pytest.raises(kernel.KernelError, match="--modules is for a kernel path"):
        kernel.choose("debian", modules="/tmp")
    with pytest.raises(kernel.KernelError, match="apt knows no kernel package"):
        kernel.choose("debian:linux-image-no-such-kernel")
