"""``--kernel debian:SUITE[:PACKAGE]`` without a network: the spec's forms, the private apt
that leaves the host's alone, and the one-line errors for a suite or package the mirror
lacks (a fake apt-get answering from recorded Packages stanzas)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness.assets import aptsources, debindex, debsuite, kernel
from harness.errors import KernelError
from tests.unit.test_debian_index import HOST_SOURCES

pytestmark = pytest.mark.host

DATA = Path(__file__).parent / "data" / "debian"
R = "7.2.13+deb14-amd64"


# --- the spec and the private apt -----------------------------------------------------------

@pytest.mark.parametrize("spec, want", [
    ("debian", (None, "linux-image-amd64")),
    ("debian:linux-image-6.12-amd64", (None, "linux-image-6.12-amd64")),
    ("debian:unstable", ("unstable", "linux-image-amd64")),
    ("debian:trixie", ("trixie", "linux-image-amd64")),
    ("debian:bookworm-backports", ("bookworm-backports", "linux-image-amd64")),
    ("debian:unstable:linux-image-amd64", ("unstable", "linux-image-amd64")),
    ("debian:bookworm:linux-image-6.12-amd64", ("bookworm", "linux-image-6.12-amd64"))])
def test_debian_specs(spec: str, want: tuple[str | None, str]) -> None:
    assert kernel.debian_spec(spec) == want
    kernel.check_spec(spec)  # nothing fetched


@pytest.mark.parametrize("spec, match", [
    ("debian:foo", "'foo' is not a Debian kernel image package name .* nor a suite"),
    ("debian:unstable:bash", "'bash' is not a Debian kernel image package name"),
    ("debian:unstable:linux-image-amd64:x", "nor a suite"),
    ("debian:Unstable", "nor a suite")])
def test_bad_debian_specs_are_one_line(spec: str, match: str) -> None:
    with pytest.raises(KernelError, match=match):
        kernel.check_spec(spec)
    with pytest.raises(KernelError, match="--modules is for a kernel path"):
        kernel.check_spec("debian:unstable", modules="/tmp")


def test_private_apt_touches_nothing_of_the_hosts() -> None:
    opts = debsuite.apt_options(Path("/c/apt/unstable"))
    pairs = dict(o.split("=", 1) for o in opts[1::2])
    for key in ("Dir::State", "Dir::State::lists", "Dir::State::status", "Dir::Cache",
                "Dir::Cache::archives", "Dir::Etc::sourcelist", "Dir::Etc::sourceparts"):
        assert pairs[key].startswith("/c/apt/unstable"), key
    assert "Dir::Etc::trusted" not in pairs  # the host's keyrings check the signatures


def _fake_apt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, indextargets: str,
              update_err: str) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (tmp_path / "targets").write_text(indextargets)
    (tmp_path / "update-err").write_text(update_err + "\n")
    fake = bindir / "apt-get"
    fake.write_text("#!/bin/sh\nfor a; do case $a in\n"
                    f"  indextargets) cat '{tmp_path / 'targets'}'; exit 0;;\n"
                    f"  update) cat '{tmp_path / 'update-err'}' >&2; exit 100;;\n"
                    "esac; done\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.setattr(aptsources, "host_sources", lambda: aptsources.parse_deb822(HOST_SOURCES))
    monkeypatch.setattr(aptsources, "host_codename", lambda: "bookworm")


def test_a_suite_the_mirror_lacks_is_one_line(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_apt(tmp_path, monkeypatch, "",
              "E: The repository 'http://deb.debian.org/debian stable Release' does not have "
              "a Release file.\nE: The repository 'http://deb.debian.org/debian-security "
              "stable-security Release' does not have a Release file.")
    with pytest.raises(KernelError, match="suite stable: the host's mirror has no such suite, "
                                          "or it could not be fetched .E: The repository "
                                          "'http://deb.debian.org/debian stable Release' does "
                                          r"not have a Release file.\)$"):
        debsuite.resolve("stable", "linux-image-amd64", log=lambda m: None)
    written = (debsuite.apt_root("stable") / "etc/sources.list.d/ksm.sources").read_text()
    assert "Suites: stable\n" in written and "Suites: stable-security\n" in written


def test_a_package_the_suite_lacks_is_one_line_and_missing_pockets_are_fine(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_apt(tmp_path, monkeypatch, f"unstable {DATA / 'unstable_Packages'}\n",
              "E: The repository 'http://deb.debian.org/debian-security unstable-security "
              "Release' does not have a Release file.")
    logs: list[str] = []
    closure = debsuite.resolve("unstable", "linux-image-amd64", log=logs.append)
    assert debindex.image_part(closure).package == f"linux-image-{R}"
    assert (debsuite.apt_root("unstable") / ".updated").is_file()  # not retried every run
    assert b"Package: kmod" not in (debsuite.apt_root("unstable") / "kernel-packages").read_bytes()
    assert not any("failed" in m for m in logs), logs
    with pytest.raises(KernelError, match="suite unstable has no package linux-image-nope"):
        debsuite.resolve("unstable", "linux-image-nope", log=logs.append)


# --- the unpacked tree ----------------------------------------------------------------------

def _split_tree(root: Path, with_base: bool = True) -> Path:
    """What linux-binary-R, linux-modules-R (and linux-base-R) unpack to: everything under
    usr/lib/modules/R, no modules.dep."""
    from tests.unit.test_cells import fake_bzimage
    mods = root / "usr/lib/modules" / R
    (mods / "kernel/drivers/virtio").mkdir(parents=True)
    (mods / "kernel/drivers/virtio/virtio_pci.ko.xz").write_bytes(b"")
    fake_bzimage(mods / "vmlinuz", R)
    if with_base:
        (mods / "config").write_text("CONFIG_KSM=y\nCONFIG_VIRTIO_PCI=m\n")
        (mods / "modules.builtin").write_text("kernel/fs/ext4/ext4.ko\n")
    return mods


def test_split_layout_tree_gives_kernel_config_and_modules(tmp_path: Path) -> None:
    mods = _split_tree(tmp_path)
    (mods / "modules.dep").write_text("kernel/drivers/virtio/virtio_pci.ko.xz:\n")
    k = kernel.from_tree(tmp_path, f"debian:unstable:linux-image-{R}")
    assert (k.release, k.path, k.modules_dir) == (R, mods / "vmlinuz", mods)
    assert k.builtin("CONFIG_KSM") and k.has("CONFIG_VIRTIO_PCI")
    assert debsuite.module_trees(tmp_path) == [mods]
    (tmp_path / "empty").mkdir()
    with pytest.raises(KernelError, match="hold no boot/vmlinuz-. nor usr/lib/modules/./vmlinuz"):
        kernel.from_tree(tmp_path / "empty", "debian:x")


def test_a_hand_unpacked_split_kernel_gets_its_modules_dep(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    """boot --kernel usr/lib/modules/R/vmlinuz --modules usr/lib/modules/R: depmod runs on
    the tree (base usr/, as -b wants) before the boot drivers are looked up."""
    mods = _split_tree(tmp_path)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "depmod").write_text('#!/bin/sh\n[ "$1" = -b ] || exit 1\n'
                                   'echo "kernel/drivers/virtio/virtio_pci.ko.xz:" '
                                   '> "$2/lib/modules/$3/modules.dep"\n')
    (bindir / "depmod").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    k = kernel.load(mods / "vmlinuz", modules=mods)
    assert k.modules_dir == mods and (mods / "modules.dep").is_file()
    assert k.release == R and k.builtin("CONFIG_KSM")  # the config beside vmlinuz
    (bindir / "depmod").write_text("#!/bin/sh\necho 'depmod: FATAL: could not search' >&2\n"
                                   "exit 1\n")
    (mods / "modules.dep").unlink()
    with pytest.raises(KernelError, match="depmod failed: depmod: FATAL: could not search"):
        kernel.load(mods / "vmlinuz", modules=tmp_path / "usr")


def test_boot_drivers_known_missing_only_from_config_or_modules_builtin(tmp_path: Path) -> None:
    from harness.assets import initramfs
    mods = _split_tree(tmp_path, with_base=False)
    (mods / "modules.dep").write_text("kernel/drivers/virtio/virtio_pci.ko.xz:\n")
    image = mods / "vmlinuz"

    def missing(config: dict[str, str]) -> list[str]:
        return initramfs.missing_boot_drivers(kernel.Kernel(
            path=image, boot_image=image, release=R, config=config, modules_dir=mods))

    # binary + modules alone: no config, no modules.builtin: nothing known, the boot tells
    assert missing({}) == []
    (mods / "modules.builtin").write_text("kernel/drivers/block/virtio_blk.ko\n"
                                          "kernel/drivers/net/virtio_net.ko\n")
    assert missing({}) == ["CONFIG_EXT4_FS (ext4)"]
    config = {"CONFIG_VIRTIO_BLK": "y", "CONFIG_VIRTIO_NET": "y", "CONFIG_EXT4_FS": "m",
              "CONFIG_VIRTIO_PCI": "m"}
    assert missing(config) == ["CONFIG_EXT4_FS (ext4)"]  # the config wins over the file
    config["CONFIG_EXT4_FS"] = "y"
    assert missing(config) == []


# `apt-cache depends --important PKG` on a host whose suite is unstable (recorded through the
# private apt of debian:unstable)
APT_CACHE_DEPENDS = {
    "linux-image-7.2.13+deb14-amd64": (
        "linux-image-7.2.13+deb14-amd64\n  PreDepends: linux-base\n |Depends: dracut\n"
        " |Depends: initramfs-tools\n  Depends: <linux-initramfs-tool>\n    dracut\n"
        "    initramfs-tools\n    tiny-initramfs\n  Depends: linux-base-7.2.13+deb14-amd64\n"
        "  Depends: linux-binary-7.2.13+deb14-amd64\n"
        "  Depends: linux-modules-7.2.13+deb14-amd64\n"),
    "linux-modules-7.2.13+deb14-amd64": (
        "linux-modules-7.2.13+deb14-amd64\n  Depends: kmod\n"
        "  Depends: linux-base-7.2.13+deb14-amd64\n"),
    "linux-base-7.2.13+deb14-amd64": "linux-base-7.2.13+deb14-amd64\n",
    "linux-binary-7.2.13+deb14-amd64": (
        "linux-binary-7.2.13+deb14-amd64\n  Depends: linux-base-7.2.13+deb14-amd64\n"),
}


def test_host_apt_on_a_split_suite_fetches_every_part(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """debian / debian:PACKAGE on a host that runs unstable: the image package's kernel parts
    are downloaded with it."""
    answers = tmp_path / "answers"
    answers.mkdir()
    for name, text in APT_CACHE_DEPENDS.items():
        (answers / name).write_text(text)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "apt-cache").write_text(f'#!/bin/sh\nfor a; do last=$a; done\n'
                                      f'cat "{answers}/$last" 2>/dev/null || exit 100\n')
    (bindir / "apt-cache").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    assert kernel._apt_parts(f"linux-image-{R}") == [
        f"linux-image-{R}", f"linux-base-{R}", f"linux-binary-{R}", f"linux-modules-{R}"]
    assert kernel._apt_parts("linux-image-6.1.0-57-amd64") == ["linux-image-6.1.0-57-amd64"]


def test_cell_names_of_suite_kernels_hold_no_colon() -> None:
    from harness import cellplan
    assert cellplan.cell_id("debian:unstable", "2").startswith("debian-unstable-2node-")
    assert cellplan.cell_id("debian:bookworm:linux-image-6.12-amd64", "2").startswith(
        "debian-bookworm-6.12-amd64-2node-")
    assert cellplan.cell_id("debian:linux-image-6.12-amd64", "2").startswith(
        "debian-6.12-amd64-2node-")
