"""Kernel image parsing on the real Debian kernel (fetched once into the cache)."""
from __future__ import annotations

from harness import kernel


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
