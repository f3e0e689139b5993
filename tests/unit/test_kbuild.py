"""The built-in kernel without building one: flavours' fragments, the ``source:`` spelling of
--kernel, the build cache key, the flavour configure step on a fake tree."""
from __future__ import annotations

from pathlib import Path

import pytest

from harness.assets import kbuild as build
from harness.assets import kernel as kernel_mod
from harness.assets import source
from harness.errors import KernelError
from tests.helpers import require_tool


@pytest.mark.parametrize("spec,series,flavour", [
    ("source", "6.1", "builtin"),
    ("source:6.1", "6.1", "builtin"),
    ("source:6.1+debug", "6.1", "debug"),
    ("source+debug", "6.1", "debug"),
    ("source:6.12", "6.12", "builtin"),
])
def test_source_spec_parses(spec: str, series: str, flavour: str) -> None:
    assert source.is_spec(spec)
    s = source.parse_spec(spec)
    assert (s.series, s.flavour, s.package) == (series, flavour, f"linux-source-{series}")
    assert source.parse_spec(str(s)) == s  # str() is a spelling --kernel accepts


@pytest.mark.parametrize("spec", ["source:6", "source:6.1+kasan", "source:6.1+", "source:"])
def test_source_spec_refuses_typos(spec: str) -> None:
    with pytest.raises(KernelError, match="--kernel"):
        source.parse_spec(spec)


def test_other_kernel_spellings_are_not_source() -> None:
    for spec in (None, "", "debian", "debian:linux-image-6.1.0-1-amd64", "~/linux",
                 "sources/bzImage"):
        assert not source.is_spec(spec)


def test_choose_refuses_modules_with_source() -> None:
    with pytest.raises(KernelError, match="--modules"):
        kernel_mod.choose("source:6.1", modules="/tmp")


def test_cache_key_follows_version_and_fragment_content(tmp_path: Path) -> None:
    a, b = tmp_path / "a.config", tmp_path / "b.config"
    a.write_text("CONFIG_KSM=y\n")
    b.write_text("CONFIG_DEBUG_VM=y\n")
    key = source.cache_key("6.1.192-3", [a, b])
    assert key == source.cache_key("6.1.192-3", [a, b])
    assert key != source.cache_key("6.1.193-1", [a, b])
    assert key != source.cache_key("6.1.192-3", [a])
    assert key != source.cache_key("6.1.192-3", [b, a])
    b.write_text("CONFIG_DEBUG_VM=y\nCONFIG_DEBUG_LIST=y\n")
    assert key != source.cache_key("6.1.192-3", [a, b])


def test_build_dir_differs_per_flavour(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KSM_HARNESS_CACHE", str(tmp_path))
    plain = source.build_dir(source.parse_spec("source:6.1"), "6.1.192-3")
    debug = source.build_dir(source.parse_spec("source:6.1+debug"), "6.1.192-3")
    assert plain.parent == debug.parent == tmp_path / "builds"
    assert plain != debug and "-builtin-" in plain.name and "-debug-" in debug.name


def test_flavours_fragments_exist_and_agree() -> None:
    for flavour in build.FLAVOURS:
        frags = build.flavour_fragments(flavour)
        assert all(f.is_file() for f in frags)
        assert build.FRAGMENT in frags  # what the suite needs is always in
    with pytest.raises(build.BuildError, match="unknown flavour"):
        build.flavour_fragments("kasan")
    base = build.parse_fragment(build.BUILTIN.read_text())
    suite = build.parse_fragment(build.FRAGMENT.read_text())
    # the minimal base never switches off what the suite needs
    assert not {k for k, v in base.items() if v is None} & set(suite)
    assert base["CONFIG_MODULES"] is None
    debug = build.parse_fragment(build.DEBUG.read_text())
    for opt in ("DEBUG_VM", "DEBUG_LIST", "KFENCE", "PAGE_POISONING"):
        assert debug.get(f"CONFIG_{opt}") == "y", opt


def test_merged_fragments_later_wins() -> None:
    merged = build.merged_fragments(build.FLAVOURS["debug"])
    assert merged["CONFIG_LOCALVERSION"] == ("-ksm-debug", "kernel-debug.config")
    assert merged["CONFIG_KSM"] == ("y", "kernel.config")
    assert build.merged_fragments(build.FLAVOURS["builtin"])["CONFIG_LOCALVERSION"][0] == "-ksm"


def _fake_tree(tmp_path: Path, allnoconfig: str) -> Path:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "Kconfig").write_text("")
    # O= is honoured like kbuild does: the .config goes to the output directory
    (tree / "Makefile").write_text(
        "OUT := $(if $(O),$(O),.)\n"
        f"allnoconfig:\n\tprintf '{allnoconfig}' > $(OUT)/.config\n"
        "defconfig:\n\tprintf 'CONFIG_FROM_DEFCONFIG=y\\n' > $(OUT)/.config\n"
        "olddefconfig:\n")
    return tree


def test_flavour_configure_starts_from_allnoconfig_out_of_tree(tmp_path: Path) -> None:
    require_tool("make")
    tree = _fake_tree(tmp_path, "CONFIG_FROM_ALLNO=y\\n")
    out = tmp_path / "out"
    config = build.configure(tree, log=lambda m: None, flavour="debug", out=out)
    assert config["CONFIG_FROM_ALLNO"] == "y" and "CONFIG_FROM_DEFCONFIG" not in config
    assert config["CONFIG_DEBUG_VM"] == "y" and config["CONFIG_KSM"] == "y"
    assert config["CONFIG_LOCALVERSION"] == "-ksm-debug"
    assert not (tree / ".config").exists()  # the tree stays pristine for other flavours


def test_flavour_configure_names_the_fragment_of_a_lost_option(tmp_path: Path) -> None:
    require_tool("make")
    tree = _fake_tree(tmp_path, "")
    (tree / "Makefile").write_text((tree / "Makefile").read_text().replace(
        "olddefconfig:\n",
        "olddefconfig:\n\tgrep -v KFENCE $(OUT)/.config > $(OUT)/.c; mv $(OUT)/.c $(OUT)/.config\n"))
    with pytest.raises(build.ConfigError, match=r"of kernel-debug.config .*CONFIG_KFENCE=y"):
        build.configure(tree, log=lambda m: None, flavour="debug", out=tmp_path / "out")


def test_progress_lines_carry_elapsed_time_and_the_last_make_line(tmp_path: Path) -> None:
    import time
    logfile = tmp_path / "build.log"
    logfile.write_text("  CC      mm/ksm.o\n")
    lines: list[str] = []
    stop = build._progress("build", logfile, lines.append, time.monotonic() - 125, 0.02)
    time.sleep(0.15)
    stop()
    assert lines and lines[0].startswith("ksm-harness: build: 2m0")
    assert lines[0].endswith("at: CC      mm/ksm.o")
    n = len(lines)
    time.sleep(0.05)
    assert len(lines) == n  # stopped means stopped


def _fake_ccache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A ``ccache`` on a PATH of its own (never the host's: it may have none) and a links
    directory whose ``gcc`` points at it, as Debian's /usr/lib/ccache does."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    ccache = bindir / "ccache"
    ccache.write_text("#!/bin/sh\nexec \"$@\"\n")
    ccache.chmod(0o755)
    monkeypatch.setenv("PATH", str(bindir))
    links = tmp_path / "ccache-links"
    links.mkdir()
    (links / "gcc").symlink_to(ccache)
    return ccache, links


def _built_with(tree: Path, cc: str) -> Path:
    (tree / "init").mkdir(parents=True, exist_ok=True)
    (tree / "init" / ".main.o.cmd").write_text(
        f"savedcmd_init/main.o := {cc} -Wp,-MMD,init/.main.o.d -c -o init/main.o x.c\n")
    return tree


def test_a_tree_built_with_plain_gcc_keeps_its_command_line(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # CC="ccache gcc" on a tree built with gcc would change every object's command line and
    # rebuild everything; ccache's compiler links on PATH keep "gcc" as it is.
    _, links = _fake_ccache(tmp_path, monkeypatch)
    tree = tmp_path / "tree"
    (tree / "init").mkdir(parents=True)
    (tree / "init" / ".main.o.cmd").write_text(
        "cmd_init/main.o := gcc -Wp,-MMD,init/.main.o.d -nostdinc -c -o init/main.o init/main.c\n")
    tc = build.toolchain(tree, links)
    assert tc.make_args == [] and tc.env["PATH"].startswith(f"{links}:") and tc.ccache
    assert "compiler unchanged" in tc.why
    tc = build.toolchain(_built_with(tree, "ccache gcc"), links)
    assert tc.make_args == ["CC=ccache gcc"] and tc.ccache  # built with it: keep it
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    assert build.tree_compiler(fresh) is None
    assert build.toolchain(fresh, links).make_args == []


def test_a_link_to_a_missing_ccache_is_not_used(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # ccache uninstalled, its links left behind: putting them on PATH would make "gcc" fail
    ccache, links = _fake_ccache(tmp_path, monkeypatch)
    (links / "gcc").unlink()
    (links / "gcc").symlink_to(tmp_path / "gone" / "ccache")
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    tc = build.toolchain(fresh, links)
    assert (tc.make_args, tc.ccache, tc.why) == ([], False, "no ccache: plain make")
    assert str(links) not in tc.env["PATH"].split(":")
    # a link that resolves, but no ccache on PATH: not used either
    (links / "gcc").unlink()
    (links / "gcc").symlink_to(ccache)
    ccache.unlink()
    tc = build.toolchain(fresh, links)
    assert not tc.ccache and str(links) not in tc.env["PATH"].split(":")


def test_a_tree_built_with_ccache_builds_without_it_when_it_is_gone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # CC="ccache gcc" without ccache ends make at the first object ("ccache: not found")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    tree = _built_with(tmp_path / "tree", "ccache gcc")
    tc = build.toolchain(tree, tmp_path / "no-links")
    assert tc.make_args == ["CC=gcc"] and not tc.ccache
    assert "no ccache" in tc.why and "rebuilt" in tc.why
