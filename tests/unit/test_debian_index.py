"""What ``--kernel debian:SUITE`` reads, without a network: the host's apt sources turned into
another suite's, and a suite's Packages index (recorded stanzas of Debian's real unstable,
bookworm and bookworm-security indexes) resolved to the packages a split kernel needs."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness.assets import aptsources, debindex
from harness.errors import KernelError

pytestmark = pytest.mark.host

DATA = Path(__file__).parent / "data" / "debian"
# this host's /etc/apt/sources.list.d/debian.sources, as Debian's docker images ship it
HOST_SOURCES = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
# http://snapshot.debian.org/archive/debian-security/20250520T000000Z
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""
R = "7.2.13+deb14-amd64"


def index(*suites: str) -> debindex.Index:
    return debindex.Index(s for suite in suites for s in debindex.parse_packages(
        (DATA / f"{suite}_Packages").read_text()))


# --- the index -----------------------------------------------------------------------------

def test_unstable_meta_package_resolves_to_binary_modules_and_base() -> None:
    closure = index("unstable").kernel_closure("linux-image-amd64")
    assert [(s.package, s.version) for s in closure] == [
        (f"linux-base-{R}", "7.2.13-1"), ("linux-base-amd64", "7.2.13-1"),
        (f"linux-binary-{R}", "7.2.13-1"), (f"linux-modules-{R}", "7.2.13-1"),
        (f"linux-image-{R}", "7.2.13-1"), ("linux-image-amd64", "7.2.13-1")]
    # not kmod, dracut|initramfs-tools, linux-base (the tools), nor the -dbg image
    assert debindex.image_part(closure).package == f"linux-image-{R}"
    assert sum(s.size for s in closure) == 124_821_376  # what a cold fetch downloads
    assert closure[3].filename.endswith(f"linux-modules-{R}_7.2.13-1_amd64.deb")


def test_the_versioned_image_alone_needs_the_same_parts() -> None:
    closure = index("unstable").kernel_closure(f"linux-image-{R}")
    assert [s.package for s in closure] == [f"linux-base-{R}", f"linux-binary-{R}",
                                           f"linux-modules-{R}", f"linux-image-{R}"]


def test_pockets_together_pick_the_newest_and_follow_exact_versions() -> None:
    both = index("bookworm", "bookworm-security")
    closure = both.kernel_closure("linux-image-amd64")
    assert [(s.package, s.version) for s in closure] == [
        ("linux-image-6.1.0-57-amd64", "6.1.192-3"), ("linux-image-amd64", "6.1.192-3")]
    assert [s.package for s in index("bookworm").kernel_closure("linux-image-amd64")] == [
        "linux-image-6.1.0-50-amd64", "linux-image-amd64"]
    six12 = both.kernel_closure("linux-image-6.12-amd64")
    assert debindex.image_part(six12).package == "linux-image-6.12.118+deb12-amd64"
    assert six12[0].version == "6.12.118-1~deb12u1"


def test_an_exact_dependency_takes_the_older_version_when_asked() -> None:
    stanzas = debindex.parse_packages(
        "Package: linux-image-x\nVersion: 2\nArchitecture: amd64\n"
        "Depends: linux-binary-r (= 1:1.0-1), linux-modules-r (>= 1.0) [amd64]\n\n"
        "Package: linux-binary-r\nVersion: 1:1.0-1\nArchitecture: amd64\n\n"
        "Package: linux-binary-r\nVersion: 1:1.1-1\nArchitecture: amd64\n\n"
        "Package: linux-modules-r\nVersion: 1.0\nArchitecture: arm64\n\n"
        "Package: linux-modules-r\nVersion: 1.0~rc1\nArchitecture: amd64\n")
    with pytest.raises(KernelError, match=r"linux-image-x 2 depends on linux-modules-r "
                                          r"\(>= 1.0\) \[amd64\], which this suite does not"):
        debindex.Index(stanzas).kernel_closure("linux-image-x")
    fixed = [s for s in stanzas if s.version != "1.0~rc1"] + [
        debindex.Stanza("linux-modules-r", "1.0+b1", "amd64")]
    closure = debindex.Index(fixed).kernel_closure("linux-image-x")
    assert [(s.package, s.version) for s in closure] == [
        ("linux-binary-r", "1:1.0-1"), ("linux-modules-r", "1.0+b1"), ("linux-image-x", "2")]


def test_a_missing_part_is_named() -> None:
    stanzas = [s for s in debindex.parse_packages((DATA / "unstable_Packages").read_text())
               if not s.package.startswith("linux-binary-")]
    with pytest.raises(KernelError, match=re.escape(
            f"linux-image-{R} 7.2.13-1 depends on linux-binary-{R} (= 7.2.13-1), which")):
        debindex.Index(stanzas).kernel_closure("linux-image-amd64")
    with pytest.raises(KernelError, match="no package linux-image-nope in this suite"):
        index("unstable").kernel_closure("linux-image-nope")


@pytest.mark.parametrize("a, b, sign", [
    ("7.2.13-1", "7.2.13-1", 0), ("6.12.118-1~deb12u1", "6.12.118-1", -1),
    ("1:1.0", "2.0", 1), ("1.0~rc1", "1.0", -1), ("6.1.192-3", "6.1.176-1", 1),
    ("1.0a", "1.0", 1), ("1.0+b1", "1.0", 1), ("7.2.13+1", "7.2.13", 1),
    ("6.1.10-1", "6.1.9-1", 1), ("1.0-1", "1.0-1.1", -1)])
def test_versions_order_as_dpkg_orders_them(a: str, b: str, sign: int) -> None:
    # expectations from `dpkg --compare-versions` (recorded, so the test needs no dpkg)
    c = debindex.compare_versions(a, b)
    assert (c > 0) - (c < 0) == sign
    c = debindex.compare_versions(b, a)
    assert (c > 0) - (c < 0) == -sign


# --- the host's sources ---------------------------------------------------------------------

def test_host_deb822_sources_become_the_suites_and_its_pockets() -> None:
    host = aptsources.parse_deb822(HOST_SOURCES)
    assert [s.suites for s in host] == [("bookworm", "bookworm-updates"), ("bookworm-security",)]
    mapped = aptsources.for_suite(host, "bookworm", "unstable")
    assert [(s.uris[0], s.suites[0]) for s in mapped] == [
        ("http://deb.debian.org/debian", "unstable"),
        ("http://deb.debian.org/debian", "unstable-updates"),
        ("http://deb.debian.org/debian-security", "unstable-security")]
    assert {s.signed_by for s in mapped} == {"/usr/share/keyrings/debian-archive-keyring.gpg"}
    assert aptsources.parse_deb822(aptsources.to_deb822(mapped)) == mapped


def test_one_line_sources_options_comments_and_third_parties() -> None:
    text = ("# deb http://old.example/debian bookworm main\n"
            "deb-src http://deb.debian.org/debian bookworm main\n"
            "deb [arch=amd64 signed-by=/etc/apt/keyrings/mirror.gpg] "
            "http://mirror.example/debian bookworm main contrib  # our mirror\n"
            "deb http://security.example/debian-security bookworm-security main\n"
            "deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main\n")
    host = aptsources.parse_list(text)
    assert host[0] == aptsources.Source(("http://mirror.example/debian",), ("bookworm",),
                                        ("main", "contrib"), "/etc/apt/keyrings/mirror.gpg")
    mapped = aptsources.for_suite(host, "bookworm", "trixie")
    assert [(s.uris[0], s.suites[0]) for s in mapped] == [
        ("http://mirror.example/debian", "trixie"),
        ("http://security.example/debian-security", "trixie-security")]


def test_deb822_disabled_entries_and_inline_keys() -> None:
    text = ("Types: deb deb-src\nURIs: http://a.example/debian\nSuites: trixie\n"
            "Components: main\nSigned-By:\n -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n"
            " mQINBGPL\n -----END PGP PUBLIC KEY BLOCK-----\n\n"
            "Types: deb\nURIs: http://b.example/debian\nSuites: trixie\nEnabled: no\n\n"
            "Types: deb-src\nURIs: http://c.example/debian\nSuites: trixie\n")
    (src,) = aptsources.parse_deb822(text)
    assert src.uris == ("http://a.example/debian",)
    assert src.signed_by.splitlines()[1:] == [" -----BEGIN PGP PUBLIC KEY BLOCK-----", " .",
                                              " mQINBGPL", " -----END PGP PUBLIC KEY BLOCK-----"]
    assert aptsources.parse_deb822(aptsources.to_deb822([src])) == [src]


def test_host_sources_reads_what_apt_reads(tmp_path: Path) -> None:
    etc = tmp_path / "etc-apt"
    (etc / "sources.list.d").mkdir(parents=True)
    (etc / "sources.list").write_text("deb http://one.example/debian bookworm main\n")
    (etc / "sources.list.d" / "debian.sources").write_text(HOST_SOURCES)
    (etc / "sources.list.d" / "node.sources.disabled-by-farm").write_text(
        HOST_SOURCES.replace("deb.debian.org", "ignored.example"))
    (etc / "sources.list.d" / "extra.list").write_text(
        "deb http://two.example/debian bookworm-backports main\n")
    uris = [s.uris[0] for s in aptsources.host_sources(etc)]
    assert uris == ["http://one.example/debian", "http://deb.debian.org/debian",
                    "http://deb.debian.org/debian-security", "http://two.example/debian"]
    osr = tmp_path / "os-release"
    osr.write_text('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nVERSION_CODENAME=bookworm\n')
    assert aptsources.host_codename(osr) == "bookworm"
    assert aptsources.host_codename(tmp_path / "none") == ""


def test_no_mirror_for_the_hosts_release_is_one_line() -> None:
    host = aptsources.parse_list("deb https://packages.cloud.google.com/apt cloud-sdk main\n")
    with pytest.raises(KernelError, match="the host's apt sources name no mirror for its own "
                                          "release bookworm .suites: cloud-sdk.: cannot tell "
                                          "where to fetch unstable from"):
        aptsources.for_suite(host, "bookworm", "unstable")


def test_only_kernel_stanzas_are_kept() -> None:
    data = (DATA / "unstable_Packages").read_bytes()
    kept = debindex.kernel_stanzas(data)
    names = [s.package for s in debindex.parse_packages(kept.decode())]
    assert "kmod" not in names and len(names) == 8
    assert debindex.parse_packages(kept.decode()) == [
        s for s in debindex.parse_packages(data.decode()) if s.package.startswith("linux-")]
