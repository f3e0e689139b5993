"""The guest's initramfs: a cached per-kernel part (busybox + boot modules) and a small
per-run part (init scripts, SSH keys, sysctls) appended to it.

Keeping the kernel's modules out of the guest image makes one image serve every kernel;
keeping the keys and init scripts out of it means they never go stale in a cached image.
"""
from __future__ import annotations

import gzip
import hashlib
import lzma
import shutil
import subprocess
from pathlib import Path

from harness import deps
from harness.assets.atomic import building, usable
from harness.assets.cpio import Archive
from harness.assets.kernel import Kernel
from harness.errors import KernelError
from harness.paths import REPO, cache_dir, open_private

INIT_DIR = REPO / "guest-images" / "init"
BUSYBOX = Path("/bin/busybox")
# Modules the guest needs before its root is mounted; the rest come from the module disk.
# crc32c_generic is a softdep of ext4 that busybox's insmod would not follow.
BOOT_MODULES = ["virtio_pci", "virtio_blk", "virtio_net", "crc32c_generic", "ext4"]
BOOT_OPTIONS = {"virtio_pci": "CONFIG_VIRTIO_PCI", "virtio_blk": "CONFIG_VIRTIO_BLK",
                "virtio_net": "CONFIG_VIRTIO_NET", "ext4": "CONFIG_EXT4_FS",
                "crc32c_generic": "CONFIG_CRYPTO_CRC32C"}


def _module_index(moddir: Path) -> tuple[dict[str, str], dict[str, list[str]]]:
    """name -> relative path, and relative path -> its dependencies, from modules.dep."""
    paths: dict[str, str] = {}
    depends: dict[str, list[str]] = {}
    dep_file = moddir / "modules.dep"
    if not dep_file.exists():
        return paths, depends
    for line in dep_file.read_text().splitlines():
        if ":" not in line:
            continue
        mod, rest = line.split(":", 1)
        name = Path(mod).name.split(".ko")[0].replace("-", "_")
        paths[name] = mod
        depends[mod] = rest.split()
    return paths, depends


def boot_module_paths(kernel: Kernel) -> list[str]:
    """Boot modules and their dependencies, in load order (dependencies first)."""
    if kernel.modules_dir is None:
        return []
    paths, depends = _module_index(kernel.modules_dir)
    order: list[str] = []

    def visit(mod: str) -> None:
        if mod in order:
            return
        for dep in reversed(depends.get(mod, [])):
            visit(dep)
        order.append(mod)

    for name in BOOT_MODULES:
        if name in paths:
            visit(paths[name])
    return order


def _read_module(path: Path) -> bytes:
    """busybox insmod wants plain .ko files."""
    return decompress_module(path.name, path.read_bytes())


def decompress_module(name: str, data: bytes) -> bytes:
    """A module's plain ELF from ``name``'s suffix (.ko, .ko.xz, .ko.gz, .ko.zst); a broken
    file is one line naming it."""
    try:
        if name.endswith(".ko.xz"):
            return lzma.decompress(data)
        if name.endswith(".ko.gz"):
            return gzip.decompress(data)
    except (lzma.LZMAError, OSError, EOFError) as exc:
        raise KernelError(f"module {name}: cannot decompress: {exc}") from None
    if name.endswith(".ko.zst"):
        deps.ensure(["zstd"])
        r = subprocess.run(["zstd", "-dc"], input=data, capture_output=True)
        if r.returncode:
            err = r.stderr.decode(errors="replace").strip().splitlines()
            raise KernelError(f"module {name}: cannot decompress: zstd: "
                              f"{err[-1] if err else r.returncode}")
        return r.stdout
    return data


def kernel_part(kernel: Kernel) -> Path:
    """busybox + the boot modules + /init, gzipped, cached per kernel and init script."""
    deps.ensure(["/bin/busybox"])
    mods = boot_module_paths(kernel)
    init = (INIT_DIR / "initramfs-init.sh").read_bytes()
    key = hashlib.sha256(init + BUSYBOX.read_bytes()[:4096] + str(kernel.modules_dir).encode()
                         + "\n".join(mods).encode() + kernel.release.encode()).hexdigest()[:16]
    out = cache_dir() / "initramfs" / f"{kernel.release}-{key}.cpio.gz"
    if usable(out, "initramfs"):
        return out
    with building(out) as tmp:
        if tmp is not None:
            tmp.write_bytes(_kernel_archive(kernel, mods, init))
    return out


def _kernel_archive(kernel: Kernel, mods: list[str], init: bytes) -> bytes:
    arc = Archive()
    for d in ("bin", "proc", "sys", "dev", "newroot", "modules", "ksm"):
        arc.dir(d)
    arc.file("bin/busybox", BUSYBOX.read_bytes(), 0o755)
    arc.file("init", init, 0o755)
    names = []
    assert kernel.modules_dir is not None or not mods
    for rel in mods:
        src = kernel.modules_dir / rel  # type: ignore[operator]
        name = Path(rel).name.split(".ko")[0] + ".ko"
        arc.file(f"modules/{name}", _read_module(src))
        names.append(name)
    arc.file("modules.list", "".join(f"{n}\n" for n in names).encode())  # none: empty
    return arc.to_bytes(compress=True)


def builtin_modules(moddir: Path | None) -> set[str] | None:
    """Module names in ``modules.builtin`` (built into the kernel), None without the file."""
    path = moddir / "modules.builtin" if moddir is not None else None
    if path is None or not path.is_file():
        return None
    return {Path(line).name.split(".ko")[0].replace("-", "_")
            for line in path.read_text(errors="replace").split()}


def missing_boot_drivers(kernel: Kernel) -> list[str]:
    """Boot drivers neither built in nor available as modules: the guest cannot boot. Built
    in is read from the config, else from modules.builtin; with neither (Debian 7.x's
    linux-binary-R and linux-modules-R unpacked without linux-base-R) nothing is known to be
    missing, and the guest's boot tells."""
    have = {Path(p).name.split(".ko")[0].replace("-", "_") for p in boot_module_paths(kernel)}
    builtin = builtin_modules(kernel.modules_dir)
    missing = []
    for name, opt in BOOT_OPTIONS.items():
        if name in have or name == "crc32c_generic":
            continue
        if kernel.config:
            known_missing = not kernel.builtin(opt)
        else:
            known_missing = builtin is not None and name not in builtin
        if known_missing:
            missing.append(f"{opt} ({name})")
    return missing


def run_part(files: dict[str, tuple[bytes, int]]) -> bytes:
    """The per-run archive: ``files`` maps a path under /ksm to (content, mode)."""
    arc = Archive()
    for name, (data, mode) in sorted(files.items()):
        arc.file(f"ksm/{name}", data, mode)
    return arc.to_bytes(compress=False)


def compose(kernel: Kernel, files: dict[str, tuple[bytes, int]], out: Path) -> Path:
    """The kernel's part and this run's files in one initrd, mode 0600: it holds keys."""
    part = kernel_part(kernel)
    try:
        with open_private(out) as fh:
            with part.open("rb") as src:
                shutil.copyfileobj(src, fh)
            # the kernel only finds an uncompressed archive that starts 4-byte aligned
            fh.write(b"\0" * (-fh.tell() % 4))
            fh.write(run_part(files))
    except OSError as exc:
        if exc.filename is None:  # a write to the open file (a full run directory): name it
            raise OSError(exc.errno, exc.strerror, str(out)) from None
        raise
    return out


def module_disk(kernel: Kernel) -> Path | None:
    """The kernel's whole module tree as a read-only ext4 disk (no loop mount needed)."""
    if kernel.modules_dir is None:
        return None
    deps.ensure(["mkfs.ext4"])
    moddir = kernel.modules_dir
    stamp = (moddir / "modules.dep").stat().st_mtime if (moddir / "modules.dep").exists() else 0
    key = hashlib.sha256(f"{moddir.resolve()}:{stamp}".encode()).hexdigest()[:12]
    out = cache_dir() / "module-disks" / f"{kernel.release}-{key}.ext4"
    if usable(out, "module disk"):
        return out
    with building(out) as tmp:
        if tmp is not None:
            _make_module_disk(kernel, moddir, tmp)
    return out


def _make_module_disk(kernel: Kernel, moddir: Path, tmp: Path) -> None:
    if not (moddir / "modules.dep").exists() and shutil.which("depmod"):
        # a user's --modules tree straight from `make modules_install` may lack it
        subprocess.run(["depmod", "-b", str(moddir.parents[2]), kernel.release],
                       capture_output=True)
    size_mb = int(sum(f.stat().st_size for f in moddir.rglob("*") if f.is_file())
                  / 2**20 * 1.15) + 64
    r = subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "ksm-modules", "-E", "root_owner=0:0",
                        "-d", str(moddir), str(tmp), f"{size_mb}M"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"mkfs.ext4 for the module disk failed: {r.stderr.strip()}")
