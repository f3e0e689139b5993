"""A kernel from any Debian suite (``--kernel debian:unstable``, ``debian:SUITE:PACKAGE``)
through a private apt of our own in the cache: the host's mirrors with the suite changed,
the host's keyrings and apt.conf (so InRelease signatures are checked as apt checks them),
and our own lists, archives and an empty dpkg status: nothing of the host's apt state is
read or written, nothing is installed.

Layout under the cache::

    apt/<suite>/etc/sources.list.d/ksm.sources   the host's mirrors, suite changed
    apt/<suite>/lists/                            InRelease + Packages (apt-get update)
    kernels/<linux-image-R>_<version>/            every part unpacked, depmod run
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from harness import deps
from harness.assets import aptlog, aptsources, debindex
from harness.assets.atomic import building, locked, usable
from harness.errors import KernelError
from harness.paths import cache_dir

SUITE = re.compile(r"[a-z][a-z0-9-]*")
MAX_AGE_S = 6 * 3600  # unstable changes daily; older lists are refreshed before use


def apt_options(root: Path) -> list[str]:
    """apt-get options that point every piece of apt's state into ``root``."""
    opts = {
        "Dir::State": root, "Dir::State::lists": root / "lists",
        "Dir::State::status": root / "status",
        "Dir::Cache": root, "Dir::Cache::archives": root / "archives",
        "Dir::Cache::pkgcache": "", "Dir::Cache::srcpkgcache": "",
        "Dir::Etc::sourcelist": root / "etc/sources.list",
        "Dir::Etc::sourceparts": root / "etc/sources.list.d",
        "Dir::Etc::preferences": root / "etc/preferences",
        "Dir::Etc::preferencesparts": root / "etc/preferences.d",
        "Acquire::GzipIndexes": "false",   # plain Packages files we can read
        "Acquire::Languages": "none",
        "APT::Sandbox::User": "root",      # _apt cannot enter a cache under a private $HOME
    }
    return [arg for k, v in opts.items() for arg in ("-o", f"{k}={v}")]


def _apt(root: Path, *args: str, cwd: Path | None = None, timeout: float = 600
         ) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(["apt-get", *apt_options(root), *args], cwd=cwd,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise KernelError(f"apt-get {args[0]} in {root} took over {timeout:.0f}s: is the "
                          "mirror reachable?") from None


def _errors(r: subprocess.CompletedProcess[str], suite: str = "") -> str:
    """apt's error lines, those about ``suite`` itself (not its pockets) when there are any."""
    lines = [ln for ln in (r.stderr + r.stdout).splitlines() if ln.startswith(("E:", "Err:"))]
    own = [ln for ln in lines if re.search(rf" {re.escape(suite)}(?: |/|'|$)", ln)] if suite else []
    return "; ".join(aptlog.shorten(ln, 200) for ln in (own or lines)[-2:]) or \
        aptlog.cause(r.stderr, r.stdout, r.returncode)


def apt_root(suite: str) -> Path:
    return cache_dir() / "apt" / suite


def private_apt(suite: str) -> Path:
    """The private apt root for ``suite``, its sources written from the host's (under the
    root's update lock)."""
    root = apt_root(suite)
    sources = aptsources.for_suite(aptsources.host_sources(), aptsources.host_codename(),
                                   suite)
    for d in ("lists/partial", "archives/partial", "etc/sources.list.d", "etc/preferences.d"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "status").touch()
    text = aptsources.to_deb822(sources)
    target = root / "etc/sources.list.d/ksm.sources"
    if not target.is_file() or target.read_text() != text:
        target.write_text(text)
        (root / ".updated").unlink(missing_ok=True)  # other mirrors: fetch their lists
    return root


def _index_files(root: Path) -> dict[str, list[Path]]:
    """suite -> the Packages files apt holds for it (a missing pocket has none)."""
    r = _apt(root, "indextargets", "--format", "$(RELEASE) $(FILENAME)", "Identifier: Packages")
    out: dict[str, list[Path]] = {}
    for line in r.stdout.splitlines():
        suite, _, name = line.partition(" ")
        if name and Path(name).is_file():
            out.setdefault(suite, []).append(Path(name))
    return out


def update(suite: str, log: Callable[[str], None]) -> Path:
    """The kernel stanzas of ``suite`` and its pockets (``kernel-packages`` in the private
    root), after an ``apt-get update`` when the lists are missing or older than MAX_AGE_S.
    Pockets the mirror lacks are dropped, the suite itself must be there; offline, the lists
    fetched before are used."""
    with locked(apt_root(suite) / "update"):
        root = private_apt(suite)
        stamp, kept = root / ".updated", root / "kernel-packages"
        if kept.is_file() and stamp.is_file() and time.time() - stamp.stat().st_mtime < MAX_AGE_S:
            return kept
        log(f"ksm-harness: apt-get update for suite {suite} (private lists in {root})")
        r = _apt(root, "update", "-q", timeout=900)
        have = _index_files(root)
        if suite not in have:
            raise KernelError(f"suite {suite}: the host's mirror has no such suite, or it "
                              f"could not be fetched ({_errors(r, suite)})")
        tmp = kept.with_name(f".{kept.name}.tmp-{os.getpid()}")
        tmp.write_bytes(b"".join(debindex.kernel_stanzas(p.read_bytes())
                                 for paths in have.values() for p in paths))
        os.replace(tmp, kept)
        if r.returncode == 0 or _only_missing_pockets(r, suite):
            stamp.touch()
        else:
            log(f"ksm-harness: apt-get update for {suite} failed, using the lists fetched "
                f"before: {_errors(r)}")
        return kept


def _only_missing_pockets(r: subprocess.CompletedProcess[str], suite: str) -> bool:
    """apt failed only because a pocket (unstable-security, ...) does not exist."""
    errs = [ln for ln in r.stderr.splitlines() if ln.startswith("E:")]
    return bool(errs) and all(re.search(rf" {re.escape(suite)}-[a-z]+ Release' does not have "
                                        "a Release file", e) for e in errs)


def resolve(suite: str, package: str, log: Callable[[str], None]) -> list[debindex.Stanza]:
    """``package``'s kernel closure in ``suite`` (its pockets included)."""
    index = debindex.Index(debindex.parse_packages(
        update(suite, log).read_text(errors="replace")))
    if index.candidate(package) is None:
        raise KernelError(f"suite {suite} has no package {package} on the host's mirror "
                          f"(its pockets included)")
    return index.kernel_closure(package)


def fetch(suite: str, package: str,
          log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> Path:
    """The unpacked kernel of ``package`` from ``suite``, every part in one tree with
    depmod's indexes, fetched once (``kernels/<image>_<version>``)."""
    deps.ensure(["apt-get", "dpkg-deb", "depmod"])
    closure = resolve(suite, package, log)
    image = debindex.image_part(closure)
    out = cache_dir() / "kernels" / f"{image.package}_{image.version}"
    if usable(out, "kernel package tree", log):
        return out
    with building(out) as tmp:
        if tmp is not None:
            t0 = time.monotonic()
            size = sum(s.size for s in closure)
            log(f"ksm-harness: fetching {package} from {suite}: "
                + ", ".join(f"{s.package} {s.version}" for s in closure)
                + f" ({size / 2**20:.0f} MB)")
            _unpack(suite, closure, tmp)
            log(f"ksm-harness: {image.package} fetched and unpacked in "
                f"{time.monotonic() - t0:.0f}s")
    return out


def _unpack(suite: str, closure: list[debindex.Stanza], tree: Path) -> None:
    root = apt_root(suite)
    debs = tree / ".debs"
    debs.mkdir(parents=True)
    r = _apt(root, "download", *(f"{s.package}={s.version}" for s in closure), cwd=debs,
             timeout=1800)
    got = sorted(debs.glob("*.deb"))
    if r.returncode != 0 or len(got) != len(closure):
        raise KernelError(f"apt-get download from {suite} failed: {_errors(r)}")
    for deb in got:
        r2 = subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], capture_output=True,
                            text=True)
        if r2.returncode:
            raise KernelError(f"dpkg-deb -x {deb.name} failed: {r2.stderr.strip()[-300:]}")
    shutil.rmtree(debs)
    for mods in module_trees(tree):
        # -b takes the directory above lib/modules: usr/ for the merged-/usr layout
        r3 = subprocess.run(["depmod", "-b", str(mods.parents[2]), mods.name],
                            capture_output=True, text=True)
        if r3.returncode:
            raise KernelError(f"depmod for {mods.name} failed: {r3.stderr.strip()[-300:]}")


def module_trees(tree: Path) -> list[Path]:
    """``lib/modules/<release>`` directories with modules in them, either layout."""
    return [d for base in ("lib/modules", "usr/lib/modules") if (tree / base).is_dir()
            and not (tree / base).is_symlink() for d in sorted((tree / base).iterdir())
            if (d / "kernel").is_dir()]
