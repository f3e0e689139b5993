"""Debian's ``linux-source-SERIES``, unpacked once into the cache and built with one of our
flavours (``harness.assets.kbuild.FLAVOURS``): the kernel behind ``--kernel source:6.1`` and
``--kernel source:6.1+debug``.

Layout under the cache (``KSM_HARNESS_CACHE``)::

    source/linux-source-6.1_6.1.192-3/           the whole tree, pristine (.complete when done)
    builds/linux-6.1.192-3-builtin-<key>/        make O= output: vmlinux, bzImage, .config

``<key>`` hashes the source version and the content of the flavour's fragments, so editing
a fragment builds a new kernel (the old one stays until someone deletes it), and a build that
was interrupted is never mistaken for a finished one (``.complete`` is written last).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from harness import deps
from harness.errors import KernelError
from harness.paths import cache_dir

DEFAULT_SERIES = "6.1"
PREFIX = "source"
_SPEC = re.compile(r"^source(?::(?P<series>\d+\.\d+))?(?:\+(?P<flavour>[a-z]+))?$")
RECIPE = "1"  # bump when the build recipe (not a fragment) changes what comes out


@dataclass(frozen=True)
class SourceSpec:
    series: str = DEFAULT_SERIES
    flavour: str = "builtin"

    @property
    def package(self) -> str:
        return f"linux-source-{self.series}"

    def __str__(self) -> str:
        return f"source:{self.series}" + ("" if self.flavour == "builtin" else f"+{self.flavour}")


def is_spec(spec: str | None) -> bool:
    return spec is not None and (spec == PREFIX or spec.startswith((PREFIX + ":", PREFIX + "+")))


def parse_spec(spec: str) -> SourceSpec:
    """``source``, ``source:6.1``, ``source:6.1+debug``, ``source+debug``."""
    from harness.assets.kbuild import FLAVOURS
    m = _SPEC.match(spec.strip())
    if m is None:
        raise KernelError(f"--kernel {spec}: expected source[:SERIES][+FLAVOUR], e.g. "
                          f"source:{DEFAULT_SERIES} or source:{DEFAULT_SERIES}+debug")
    flavour = m.group("flavour") or "builtin"
    if flavour not in FLAVOURS:
        raise KernelError(f"--kernel {spec}: unknown flavour {flavour!r} (have: "
                          + ", ".join(FLAVOURS) + ")")
    return SourceSpec(m.group("series") or DEFAULT_SERIES, flavour)


def cache_key(version: str, fragments: tuple[Path, ...] | list[Path]) -> str:
    h = hashlib.sha256(f"recipe {RECIPE}\nversion {version}\n".encode())
    for frag in fragments:
        h.update(f"\n--- {frag.name}\n".encode())
        h.update(frag.read_bytes())
    return h.hexdigest()[:12]


def build_dir(spec: SourceSpec, version: str) -> Path:
    from harness.assets.kbuild import flavour_fragments
    key = cache_key(version, flavour_fragments(spec.flavour))
    return cache_dir() / "builds" / f"linux-{version}-{spec.flavour}-{key}"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One fetch or build of a thing at a time, across processes (CI shards, pytest-xdist)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def candidate_version(package: str) -> str | None:
    """apt's candidate version of `package` (no network: the local package lists)."""
    r = subprocess.run(["apt-cache", "policy", package], capture_output=True, text=True)
    m = re.search(r"^\s*Candidate:\s*(\S+)", r.stdout, re.M)
    return m.group(1) if m and m.group(1) != "(none)" else None


def _complete_trees(package: str) -> list[Path]:
    root = cache_dir() / "source"
    return sorted(p for p in root.glob(f"{package}_*") if (p / ".complete").is_file())


def fetch(spec: SourceSpec, log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)
          ) -> tuple[Path, str]:
    """The unpacked tree of linux-source-SERIES and its Debian version, fetched once.

    apt's candidate version picks the tree; without package lists (offline), the newest tree
    already in the cache is used."""
    package = spec.package
    version = candidate_version(package)
    if version is None:
        have = _complete_trees(package)
        if have:
            tree = have[-1]
            return tree, tree.name.split("_", 1)[1]
        raise KernelError(f"apt knows no package {package}: run 'apt-get update' (bookworm "
                          f"has linux-source-6.1)")
    top = cache_dir() / "source" / f"{package}_{version}"
    with _locked(top.with_name(top.name + ".lock")):
        if (top / ".complete").is_file():
            return top, version
        deps.ensure(["apt-get", "dpkg-deb", "tar", "xz"])
        work = top.with_name(top.name + ".partial")
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(top, ignore_errors=True)
        work.mkdir(parents=True)
        log(f"ksm-harness: fetching {package} {version} with apt-get download (~140 MB)")
        r = subprocess.run(["apt-get", "download", f"{package}={version}"], cwd=work,
                           capture_output=True, text=True)
        debs = sorted(work.glob(f"{package}_*.deb"))
        if r.returncode != 0 or not debs:
            raise KernelError(f"apt-get download {package}={version} failed: "
                              f"{r.stderr.strip()[-300:]}")
        log(f"ksm-harness: unpacking {package} {version} (~1.5 GB)")
        inner = f"./usr/src/{package}.tar.xz"
        r = subprocess.run(["sh", "-c", 'dpkg-deb --fsys-tarfile "$1" | tar -xO "$2" '
                            '| tar -xJ -C "$3"', "sh", str(debs[-1]), inner, str(work)],
                           capture_output=True, text=True)
        unpacked = work / package
        if r.returncode != 0 or not (unpacked / "Makefile").is_file():
            raise KernelError(f"unpacking {inner} from {debs[-1].name} failed: "
                              f"{r.stderr.strip()[-300:]}")
        unpacked.rename(top)
        shutil.rmtree(work, ignore_errors=True)
        (top / ".complete").write_text(f"{package} {version}\n")
    return top, version


def build(spec: SourceSpec, jobs: int | None = None,
          log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)) -> Path:
    """The O= build directory of `spec` (vmlinux, bzImage, .config), built once and cached."""
    from harness.assets import kbuild as build_mod
    tree, version = fetch(spec, log)
    out = build_dir(spec, version)
    if (out / ".complete").is_file():
        return out
    with _locked(out.with_name(out.name + ".lock")):
        if (out / ".complete").is_file():
            return out
        log(f"ksm-harness: building {spec} ({spec.package} {version}, flavour "
            f"{spec.flavour}) in {out}: once, ~25 CPU-minutes for builtin (13-15 min on 2 idle cores)")
        shutil.rmtree(out, ignore_errors=True)  # an interrupted build: start clean
        r = build_mod.build(tree, jobs, log=log, flavour=spec.flavour, out=out)
        (out / ".complete").write_text(f"{spec} {version} {r.seconds:.0f}s\n")
        log(f"ksm-harness: built {spec} in {r.seconds / 60:.1f} min"
            f"{' (ccache)' if r.ccache else ''}: {out}")
    return out
