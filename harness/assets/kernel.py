"""Kernels to boot: Debian's packaged default, or a user's bzImage / vmlinux / build tree.

We boot the uncompressed vmlinux through PVH when the kernel supports it: under TCG the
bzImage's XZ decompression alone costs ~3 s per boot, so the vmlinux is extracted once and
cached.
"""
from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness import deps
from harness.assets import aptlog
from harness.assets.atomic import building, record, usable
from harness.assets.kconfig import parse_config
from harness.assets.kimage import (
    ELF_MAGIC,
    banner_compiler,
    bzimage_release,
    elf_has_pvh_note,
    elf_release,
    embedded_config,
    extract_vmlinux,
    incomplete,
)
from harness.errors import KernelError
from harness.paths import cache_dir

DEFAULT_PACKAGE = "linux-image-amd64"
BANNER = re.compile(rb"Linux version \S+ \([^\n\0]{0,400}")


@dataclass
class Kernel:
    path: Path                 # what the user gave (or the packaged vmlinuz)
    boot_image: Path           # what QEMU's -kernel gets: vmlinux (PVH) or the bzImage
    release: str
    config: dict[str, str] = field(default_factory=dict)  # CONFIG_X -> value; empty if unknown
    modules_dir: Path | None = None  # .../lib/modules/<release>
    origin: str = "user"
    tree: Path | None = None   # the build tree the image came from, when there is one
    _banner: str | None = field(default=None, repr=False, compare=False)
    _commit: str | None = field(default=None, repr=False, compare=False)

    @property
    def pvh(self) -> bool:
        return self.boot_image.read_bytes()[:4] == ELF_MAGIC

    def has(self, option: str) -> bool | None:
        """True/False when the config is known, None when it is not."""
        return self.config.get(option) in ("y", "m") if self.config else None

    def builtin(self, option: str) -> bool | None:
        return self.config.get(option) == "y" if self.config else None

    @property
    def config_hash(self) -> str:
        text = "\n".join(f"{k}={v}" for k, v in sorted(self.config.items()))
        return hashlib.sha256(text.encode()).hexdigest()[:12] if text else "unknown"

    @property
    def banner(self) -> str:
        """The /proc/version banner (``Linux version ... (gcc ...) #1 SMP ...``) from the
        uncompressed image, '' when it cannot be read."""
        if self._banner is None:
            try:
                m = BANNER.search(self.boot_image.read_bytes())
            except OSError:
                m = None
            self._banner = m.group(0).decode("utf-8", "replace").strip() if m else ""
        return self._banner

    @property
    def compiler(self) -> str:
        """CONFIG_CC_VERSION_TEXT (5.8+), else the compiler named in the banner."""
        if self.config.get("CONFIG_CC_VERSION_TEXT"):
            return self.config["CONFIG_CC_VERSION_TEXT"]
        return banner_compiler(self.banner)

    @property
    def commit(self) -> str:
        """The build tree's ``git rev-parse HEAD`` (what was built, if the tree is clean)."""
        if self._commit is None:
            self._commit = ""
            if self.tree is not None and (self.tree / ".git").exists():
                r = subprocess.run(["git", "-C", str(self.tree), "rev-parse", "HEAD"],
                                   capture_output=True, text=True)
                self._commit = r.stdout.strip() if r.returncode == 0 else ""
        return self._commit

    def describe(self) -> str:
        kind = "vmlinux (PVH)" if self.pvh else "bzImage"
        return f"{self.release} [{self.origin}, {kind}]"


# --- loading -----------------------------------------------------------------------------

def load(path: Path | str, modules: Path | str | None = None) -> Kernel:
    """A user's kernel: bzImage, vmlinux, or a kernel build tree."""
    path = Path(path).expanduser()
    if not path.exists():
        raise KernelError(f"kernel not found: {path}")
    tree = path if path.is_dir() else None
    if tree is not None:
        for cand in (tree / "vmlinux", tree / "arch/x86/boot/bzImage"):
            if cand.is_file():
                path = cand
                break
        else:
            raise KernelError(f"{tree} holds no vmlinux or arch/x86/boot/bzImage: build it first")
    data = path.read_bytes()
    why = incomplete(data)
    if why:
        raise KernelError(f"{path}: not a complete kernel image ({why}); copy or fetch it again")
    release = bzimage_release(data)
    if release is not None:
        boot = _cached_vmlinux(path, data)
        ikdata = boot.read_bytes() if boot != path else data
    elif data[:4] == ELF_MAGIC:
        release = elf_release(data)
        if not release:
            raise KernelError(f"{path} is an ELF file but not a Linux kernel")
        if not elf_has_pvh_note(data):
            raise KernelError(f"{path} is a vmlinux without PVH support (CONFIG_PVH=y); "
                              "give the bzImage instead")
        boot, ikdata = path, data
    else:
        raise KernelError(f"{path} is not a Linux kernel (no bzImage header, not an ELF vmlinux)")
    config = _find_config(path, tree, ikdata)
    mods = _find_modules(modules, release)
    if tree is None and path.name == "bzImage" and len(path.parents) > 3 \
            and (path.parents[3] / "Makefile").is_file():
        tree = path.parents[3]  # arch/x86/boot/bzImage
    elif tree is None and path.name == "vmlinux" and (path.parent / "Makefile").is_file():
        tree = path.parent
    kernel = Kernel(path=path, boot_image=boot, release=release, config=config,
                    modules_dir=mods, origin="user", tree=tree)
    check_required(kernel)
    return kernel


def _cached_vmlinux(path: Path, data: bytes) -> Path:
    """Extracted PVH vmlinux for a bzImage, cached by content hash; the bzImage if none."""
    digest = hashlib.sha256(data).hexdigest()[:16]
    out = cache_dir() / "vmlinux" / f"{digest}.vmlinux"
    if usable(out, "vmlinux"):
        return out
    elf = extract_vmlinux(data)
    if elf is None or not elf_has_pvh_note(elf):
        return path  # boot the bzImage itself: slower, but works
    with building(out) as tmp:
        if tmp is not None:
            tmp.write_bytes(elf)
    return out


def _find_config(path: Path, tree: Path | None, data: bytes) -> dict[str, str]:
    # .config of a tree, boot/config-R beside boot/vmlinuz-R, or the ``config`` that 7.x's
    # linux-base-R puts beside usr/lib/modules/R/vmlinuz
    cands = [path.parent / ".config", path.parent / f"config-{path.name.split('-', 1)[-1]}",
             path.parent / "config"]
    if tree is not None:
        cands.insert(0, tree / ".config")
    # arch/x86/boot/bzImage lives three levels below the tree's .config
    if path.name == "bzImage" and len(path.parents) > 3:
        cands.append(path.parents[3] / ".config")
    for cand in cands:
        if cand.is_file():
            return parse_config(cand.read_text(errors="replace"))
    text = embedded_config(data)
    return parse_config(text) if text else {}


def _find_modules(modules: Path | str | None, release: str) -> Path | None:
    if modules is None:
        return None
    mods = Path(modules).expanduser()
    for cand in (mods, mods / release, mods / "lib/modules" / release,
                 mods / "usr/lib/modules" / release):
        if (cand / "modules.order").exists() or (cand / "kernel").is_dir():
            if not (cand / "modules.dep").exists():
                _depmod(cand)
            return cand
    raise KernelError(f"--modules {mods}: no module tree for {release} there "
                      "(expected DIR/lib/modules/<release> or DIR itself)")


def _depmod(moddir: Path) -> None:
    """modules.dep for a tree that lacks it (Debian's linux-modules-R of 7.x ships none; a
    ``make modules_install`` tree may not either): the boot modules are found through it.
    ``-b`` is the directory above lib/modules, i.e. usr/ in the merged-/usr layout."""
    deps.ensure(["depmod"])
    base = moddir.resolve().parents[2]
    r = subprocess.run(["depmod", "-b", str(base), moddir.name], capture_output=True, text=True)
    if r.returncode:
        raise KernelError(f"--modules {moddir}: depmod failed: "
                          f"{(r.stderr.strip().splitlines() or ['?'])[-1]}")


def check_required(kernel: Kernel) -> None:
    """Refuse kernels that cannot possibly run the suite, when the config says so."""
    for opt in ("CONFIG_KSM",):
        if kernel.config and kernel.builtin(opt) is False:
            raise KernelError(f"kernel {kernel.release} is built without {opt}=y: nothing to test")


# --- Debian's packaged kernel --------------------------------------------------------------

def _apt_target(package: str) -> str:
    """linux-image-amd64 is a metapackage; find the real image package it depends on."""
    r = subprocess.run(["apt-cache", "depends", "--important", package],
                       capture_output=True, text=True)
    if r.returncode != 0 and os.geteuid() == 0 and not any(
            Path("/var/lib/apt/lists").glob("*_Packages*")):
        # a fresh machine may have no package lists yet (not: a typo in a package name)
        subprocess.run(["apt-get", "update", "-q"], stdout=subprocess.DEVNULL)
        r = subprocess.run(["apt-cache", "depends", "--important", package],
                           capture_output=True, text=True)
    for line in r.stdout.splitlines():
        m = re.match(r"\s*Depends:\s*(linux-image-\S+)", line)
        if m:
            return m.group(1)
    if package.startswith("linux-image-") and r.returncode == 0 and r.stdout:
        return package
    raise KernelError(f"apt knows no kernel package {package!r}: run 'apt-get update' "
                      "(or pass --kernel PATH)")


def _apt_parts(target: str) -> list[str]:
    """``target`` and the parts of the same kernel it depends on, as the host's apt knows
    them: on a host whose suite splits the kernel (7.x: linux-binary-R, linux-modules-R,
    linux-base-R) the image package alone holds no kernel."""
    from harness.assets.debindex import KERNEL_PART
    parts, todo = [target], [target]
    while todo:
        r = subprocess.run(["apt-cache", "depends", "--important", todo.pop()],
                           capture_output=True, text=True)
        for m in re.finditer(r"^\s*\|?Depends:\s*(\S+)", r.stdout, re.M):
            if KERNEL_PART.fullmatch(m.group(1)) and m.group(1) not in parts:
                parts.append(m.group(1))
                todo.append(m.group(1))
    return parts


DEBIAN_PACKAGE = re.compile(r"linux-image-[a-z0-9][a-z0-9.+~-]*")
# suites the Debian mirror carries (codenames from bullseye, their aliases) and their pockets;
# a name outside it is a typo far more often than a release newer than this list
DEBIAN_SUITES = ("unstable", "sid", "testing", "stable", "oldstable", "oldoldstable",
                 "experimental", "bullseye", "bookworm", "trixie", "forky", "duke")
DEBIAN_SUITE = re.compile(rf"(?:{'|'.join(DEBIAN_SUITES)})"
                          r"(?:-(?:updates|security|backports|backports-sloppy|proposed-updates))?")
KERNEL_SYNTAX = ("a bzImage, a vmlinux, a kernel build tree, debian[:PACKAGE] (e.g. "
                 "debian:linux-image-6.12-amd64), debian:SUITE[:PACKAGE] (e.g. debian:unstable)"
                 " or source[:SERIES][+FLAVOUR] (e.g. source:6.1+debug)")


def debian_spec(spec: str) -> tuple[str | None, str]:
    """(suite, package) of ``debian``, ``debian:PACKAGE``, ``debian:SUITE`` or
    ``debian:SUITE:PACKAGE``; suite None is the host's own apt."""
    parts = spec.split(":")[1:]
    if len(parts) == 1 and DEBIAN_PACKAGE.fullmatch(parts[0]):
        return None, parts[0]
    if len(parts) in (1, 2) and DEBIAN_SUITE.fullmatch(parts[0]):
        if len(parts) == 1:
            return parts[0], DEFAULT_PACKAGE
        if DEBIAN_PACKAGE.fullmatch(parts[1]):
            return parts[0], parts[1]
        raise KernelError(f"--kernel {spec}: {parts[1]!r} is not a Debian kernel image "
                          f"package name (linux-image-...); use {KERNEL_SYNTAX}")
    if not parts:
        return None, DEFAULT_PACKAGE
    raise KernelError(f"--kernel {spec}: {':'.join(parts)!r} is not a Debian kernel image "
                      f"package name (linux-image-...) nor a suite ({', '.join(DEBIAN_SUITES)}"
                      f"); use {KERNEL_SYNTAX}")


def check_spec(spec: str | None, modules: str | None = None) -> None:
    """A cheap look at --kernel before anything runs: the path exists and starts like a
    kernel, a Debian package name looks like one. Nothing is downloaded or extracted, so a
    matrix can check every column before its first cell."""
    if spec is None or spec == "debian":
        return
    if spec.startswith("debian:") and not Path(spec).exists():
        debian_spec(spec)
        if modules:
            raise KernelError(f"--modules is for a kernel path, not {spec} (a Debian package "
                              "brings its own modules)")
        return
    from harness.assets import source
    if source.is_spec(spec) and not Path(spec).exists():
        source.parse_spec(spec)  # series and flavour known: the build happens at first use
        return
    path = Path(spec).expanduser()
    if not path.exists():
        raise KernelError(f"--kernel {spec}: no such file or directory; use {KERNEL_SYNTAX}")
    if path.is_dir():
        if not any((path / c).is_file() for c in ("vmlinux", "arch/x86/boot/bzImage")):
            raise KernelError(f"--kernel {spec}: the tree holds no vmlinux or "
                              "arch/x86/boot/bzImage: build it first")
    else:
        try:
            with open(path, "rb") as fh:
                head = fh.read(0x10000)  # the setup sectors hold the version string
                is_elf = head[:4] == ELF_MAGIC
                data = head + fh.read() if is_elf else head
        except OSError as exc:
            raise KernelError(f"--kernel {spec}: {exc.strerror}") from None
        if bzimage_release(head) is None and not (is_elf and elf_release(data)):
            raise KernelError(f"--kernel {spec}: not a Linux kernel (no bzImage header, not "
                              f"an ELF vmlinux); use {KERNEL_SYNTAX}")
        why = incomplete(data, path.stat().st_size)
        if why:
            raise KernelError(f"--kernel {spec}: not a complete kernel image ({why}); copy or "
                              "fetch it again")
    if modules is not None and not Path(modules).expanduser().is_dir():
        raise KernelError(f"--modules {modules}: no such directory")


def choose(spec: str | None, modules: str | None = None,
           log=lambda msg: print(msg, file=sys.stderr)) -> Kernel:
    """--kernel: a path (bzImage, vmlinux, build tree); ``debian`` or ``debian:PACKAGE``
    for a Debian kernel package (so a matrix can put a packaged kernel beside a tree, or
    bookworm's 6.1 beside its 6.12); ``debian:SUITE[:PACKAGE]`` for one from another suite
    of the host's mirror (harness.assets.debsuite); ``source:6.1`` or ``source:6.1+debug`` for Debian's
    linux-source-6.1 built with our built-in config (harness.assets.source, cached); None
    for Debian's default."""
    from harness.assets import source
    if source.is_spec(spec) and spec and not Path(spec).exists():
        if modules:
            raise KernelError(f"--modules is for a kernel path, not {spec} (it is built "
                              "without modules)")
        src = source.parse_spec(spec)
        kernel = load(source.build(src, log=log))
        kernel.origin = str(src)
        return kernel
    if spec and (spec == "debian" or spec.startswith("debian:")) and not Path(spec).exists():
        if modules:
            raise KernelError(f"--modules is for a kernel path, not {spec} (a Debian package "
                              "brings its own modules)")
        suite, package = debian_spec(spec)
        if suite is None:
            return default(package, log=log)
        from harness.assets import debsuite
        tree = debsuite.fetch(suite, package, log=log)
        return from_tree(tree, f"debian:{suite}:{tree.name.partition('_')[0]}")
    return load(spec, modules) if spec else default(log=log)


def _run_or_fail(cmd: list[str]) -> None:
    if (r := subprocess.run(cmd, capture_output=True, text=True)).returncode:
        raise KernelError(f"{shlex.join(cmd)} failed: {r.stderr.strip()[-300:]}")


def default(package: str = DEFAULT_PACKAGE, log=lambda msg: print(msg, file=sys.stderr)) -> Kernel:
    """Debian's kernel, fetched with `apt-get download` (no host install) and cached."""
    deps.ensure(["apt-get", "dpkg-deb", "depmod"])
    target = _apt_target(package)
    root = cache_dir() / "kernels" / target
    if (root / ".complete").exists():
        usable(root, "kernel package tree", log)  # a damaged tree is removed: fetched again
    if not (root / ".complete").exists():
        log(f"ksm-harness: fetching kernel package {target} with apt-get download")
        t0 = time.monotonic()
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
        try:  # a failure leaves nothing behind: no partial .deb, no half-unpacked tree
            parts = _apt_parts(target)
            r = subprocess.run(["apt-get", "download", *parts], cwd=root, capture_output=True,
                               text=True)
            debs = list(root.glob("*.deb"))
            if r.returncode != 0 or not debs:
                raise KernelError(f"apt-get download {' '.join(parts)} failed: "
                                  f"{aptlog.cause(r.stderr, r.stdout, r.returncode)}")
            for deb in debs:
                _run_or_fail(["dpkg-deb", "-x", str(deb), str(root)])
                deb.unlink()
            from harness.assets.debsuite import module_trees
            for mods in module_trees(root):  # -b: the directory above lib/modules
                _run_or_fail(["depmod", "-b", str(mods.parents[2]), mods.name])
            (root / ".complete").write_text(" ".join(parts) + "\n")
            record(root)
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        log(f"ksm-harness: kernel package {target} fetched and unpacked in "
            f"{time.monotonic() - t0:.0f}s")
    return from_tree(root, f"debian:{target}")


def from_tree(root: Path, origin: str) -> Kernel:
    """The kernel in unpacked Debian packages: ``boot/vmlinuz-R`` + ``boot/config-R`` +
    ``lib/modules/R`` (up to 6.x), or everything in ``usr/lib/modules/R`` (``vmlinuz``,
    ``config``, the modules: the split packaging of 7.x)."""
    images = sorted((root / "boot").glob("vmlinuz-*")) + sorted(
        p for base in ("lib/modules", "usr/lib/modules") for p in (root / base).glob("*/vmlinuz"))
    if not images:
        raise KernelError(f"{root}: the packages hold no boot/vmlinuz-* nor "
                          "usr/lib/modules/*/vmlinuz")
    image = images[0]
    release = image.name[len("vmlinuz-"):] if image.name != "vmlinuz" else image.parent.name
    boot = _cached_vmlinux(image, image.read_bytes())
    config: dict[str, str] = {}
    for cand in (root / "boot" / f"config-{release}", root / "lib/modules" / release / "config",
                 root / "usr/lib/modules" / release / "config"):
        if cand.is_file():
            config = parse_config(cand.read_text(errors="replace"))
            break
    else:
        text = embedded_config(boot.read_bytes())
        config = parse_config(text) if text else {}
    mods = next((d for d in (root / "usr/lib/modules" / release, root / "lib/modules" / release)
                 if (d / "modules.dep").is_file() or (d / "kernel").is_dir()), None)
    kernel = Kernel(path=image, boot_image=boot, release=release, config=config,
                    modules_dir=mods, origin=origin)
    check_required(kernel)
    return kernel
