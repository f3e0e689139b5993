"""Host tools we need, mapped to the Debian packages that provide them."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

from harness.errors import MissingPackageError

# tool on PATH (or absolute file) -> Debian package providing it
TOOLS: dict[str, str] = {
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-img": "qemu-utils",
    "mmdebstrap": "mmdebstrap",
    "mkfs.ext4": "e2fsprogs",
    "/bin/busybox": "busybox-static",
    "cpio": "cpio",
    "depmod": "kmod",
    "dpkg-deb": "dpkg",
    "apt-get": "apt",
    "gcc": "gcc",
    "zstd": "zstd",  # zstd-compressed kernels (the PVH fast boot) and modules (.ko.zst)
    "/usr/lib/x86_64-linux-gnu/libc.a": "libc6-dev",
    # building a kernel tree (`ksm-harness build`)
    "make": "make",
    "flex": "flex",
    "bison": "bison",
    "bc": "bc",
    "/usr/include/libelf.h": "libelf-dev",
    "/usr/include/openssl/ssl.h": "libssl-dev",
    "ccache": "ccache",
}

KERNEL_BUILD = ["make", "gcc", "flex", "bison", "bc", "/usr/include/libelf.h",
                "/usr/include/openssl/ssl.h", "ccache"]


def _present(tool: str) -> bool:
    if tool.startswith("/"):
        return os.path.exists(tool)
    return shutil.which(tool) is not None or any(
        os.access(os.path.join(d, tool), os.X_OK) for d in ("/usr/sbin", "/sbin"))


def missing_packages(tools: list[str] | None = None) -> list[str]:
    wanted = tools or list(TOOLS)
    return sorted({TOOLS[t] for t in wanted if not _present(t)})


def ensure(tools: list[str] | None = None, install: bool = True) -> None:
    """Install missing packages when root (and allowed); otherwise say exactly what to run."""
    pkgs = missing_packages(tools)
    if not pkgs:
        return
    line = "apt-get install -y --no-install-recommends " + " ".join(pkgs)
    if os.environ.get("KSM_HARNESS_NO_INSTALL"):
        install = False
    if install and os.geteuid() == 0:
        print(f"ksm-harness: installing Debian packages: {' '.join(pkgs)}", file=sys.stderr)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for cmd in (["apt-get", "update", "-q"], line.split()):
            if subprocess.run(cmd, env=env, stdout=sys.stderr).returncode != 0:
                raise MissingPackageError(f"'{' '.join(cmd)}' failed; run it by hand")
        pkgs = missing_packages(tools)
        if not pkgs:
            return
    raise MissingPackageError(
        f"missing Debian package(s) {', '.join(pkgs)}; as root run: {line}")
