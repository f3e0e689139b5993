"""The kernel's own KSM selftest (``ksm_tests``), built once per kernel series from Debian's
``linux-source-SERIES`` (only the few files it needs are unpacked) and cached; and a reader of
its KTAP/TAP result lines."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from harness import paths
from harness.access.remote import quote

SOURCES = ("tools/testing/selftests/vm/ksm_tests.c", "tools/testing/selftests/vm/util.h",
           "tools/testing/selftests/kselftest.h", "include/vdso/")


class Unbuildable(Exception):
    pass


def _run(cmd: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          check=False)


def build_ksm_tests(series: str) -> Path:
    """ksm_tests from linux-source-SERIES, built once and cached."""
    root = paths.cache_dir() / "selftests" / series
    binary = root / "ksm_tests"
    if binary.is_file():
        return binary
    root.mkdir(parents=True, exist_ok=True)
    for tool in ("apt-get", "dpkg-deb", "gcc"):
        if shutil.which(tool) is None:
            raise Unbuildable(f"{tool} is missing on the host")
    package = f"linux-source-{series}"
    debs = sorted(root.glob(f"{package}_*.deb"))
    if not debs:
        r = _run(["apt-get", "download", package], root)
        debs = sorted(root.glob(f"{package}_*.deb"))
        if r.returncode != 0 or not debs:
            raise Unbuildable(f"apt-get download {package} failed (run 'apt-get update'?): "
                              f"{r.stderr.strip()[-200:]}")
    tarball = root / f"linux-source-{series}.tar.xz"
    if not tarball.is_file():
        r = _run(["sh", "-c", f"dpkg-deb --fsys-tarfile {quote(debs[-1])} | tar -xO "
                              f"./usr/src/linux-source-{series}.tar.xz > {quote(tarball)}"],
                 root)
        if r.returncode != 0:
            tarball.unlink(missing_ok=True)
            raise Unbuildable(f"no source tarball in {debs[-1].name}: {r.stderr[-200:]}")
    src = root / "src"
    if not (src / SOURCES[0]).is_file():
        top = f"linux-source-{series}"
        unpacked = root / "unpacked"
        shutil.rmtree(unpacked, ignore_errors=True)
        unpacked.mkdir()
        r = _run(["tar", "-xJf", str(tarball), "-C", str(unpacked),
                  *[f"{top}/{name.rstrip('/')}" for name in SOURCES]], root)
        if r.returncode != 0 or not (unpacked / top / SOURCES[0]).is_file():
            raise Unbuildable(f"{package} has no {SOURCES[0]} (or unpacking failed: "
                              f"{r.stderr.strip()[-200:]})")
        shutil.rmtree(src, ignore_errors=True)
        (unpacked / top).rename(src)
    if not Path("/usr/include/numa.h").exists():
        raise Unbuildable("libnuma-dev is missing on the host: apt-get install libnuma-dev")
    tmp = root / "ksm_tests.tmp"
    r = _run(["gcc", "-static", "-O2", "-I.", "-o", str(tmp), SOURCES[0], "-lnuma"], src)
    if r.returncode != 0:
        raise Unbuildable(f"building ksm_tests failed: {r.stderr.strip()[-300:]}")
    tmp.rename(binary)
    for done in (*debs, tarball, root / "unpacked"):  # ~280 MB no longer needed
        if done.is_dir():
            shutil.rmtree(done, ignore_errors=True)
        else:
            done.unlink(missing_ok=True)
    return binary


def parse_ktap(output: str) -> dict[str, str]:
    """{description: pass|fail|skip} from KTAP/TAP result lines."""
    results = {}
    for m in re.finditer(r"^(not ok|ok) \d+ (?:- )?(.*?)(\s+# (SKIP|skip).*)?$", output, re.M):
        verdict = "skip" if m.group(4) else ("pass" if m.group(1) == "ok" else "fail")
        results[m.group(2).strip()] = verdict
    return results
