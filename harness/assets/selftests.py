"""The kernel's own KSM selftest (``ksm_tests``), built once per kernel series from Debian's
``linux-source-SERIES`` (only the few files it needs are unpacked), with the fixes of
:data:`FIXES` applied, and cached; and a reader of its KTAP/TAP result lines."""
from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from harness import paths
from harness.access.remote import quote
from harness.assets.atomic import building

SOURCES = ("tools/testing/selftests/vm/ksm_tests.c", "tools/testing/selftests/vm/util.h",
           "tools/testing/selftests/kselftest.h", "include/vdso/")


class Unbuildable(Exception):
    pass


@dataclass(frozen=True)
class Fix:
    """A bug of the selftest's own (not of the kernel), fixed in our build: ``old`` must occur
    exactly once in the source and becomes ``new``. ``case`` is the run_vmtests.sh invocation
    whose verdict it changes (the test reports the fix with that case's result)."""
    name: str
    case: str
    old: str
    new: str
    why: str


FIXES = (
    Fix(name="unmerge-waits-a-whole-scan", case="-U",
        old="\t/* get at least 1 scan, so KSM can detect that the pages were modified */\n"
            "\tif (ksm_do_scan(1, start_time, timeout))\n",
        new="\t/* get at least 1 scan, so KSM can detect that the pages were modified */\n"
            "\t/* ksm-harness: a whole scan begun after the writes ends at the 2nd increment */\n"
            "\tif (ksm_do_scan(2, start_time, timeout))\n",
        why="check_ksm_unmerge() writes both merged pages, then waits for full_scans to grow "
            "by 1 and requires pages_shared == pages_sharing == 0. The scan under way when it "
            "reads full_scans may already have passed the two pages before the writes; it "
            "ends at that first increment with the counters still 1 and 1 (ksmd updates them "
            "only when it revisits a page). Only the scan after it is a whole scan begun "
            "after the writes. Under TCG (2 vCPUs, a loaded 2-core host) the false 'Not OK' "
            "came in 117 of 800 runs, with the suite's knobs or the boot defaults alike; "
            "fixed, in 0 of 600."),
)


def apply_fixes(source: str, fixes: tuple[Fix, ...] = FIXES) -> str:
    """``source`` with every fix applied; a fix that does not match exactly once is an
    error (the source changed: the fix must be looked at again, not dropped silently)."""
    for fix in fixes:
        found = source.count(fix.old)
        if found != 1:
            raise Unbuildable(f"selftest fix {fix.name!r} matches {found} places of the "
                              "source instead of 1: review it against this source")
        source = source.replace(fix.old, fix.new)
    return source


def fixes_for(case: str, fixes: tuple[Fix, ...] = FIXES) -> list[Fix]:
    """The fixes that change the verdict of the run_vmtests.sh invocation ``case``."""
    return [fix for fix in fixes if fix.case == case]


def _fingerprint(fixes: tuple[Fix, ...]) -> str:
    h = hashlib.sha256()
    for fix in fixes:
        h.update(f"{fix.name}\0{fix.old}\0{fix.new}\0".encode())
    return h.hexdigest()[:12]


def _run(cmd: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          check=False)


def build_ksm_tests(series: str) -> Path:
    """ksm_tests from linux-source-SERIES with :data:`FIXES`, built once and cached (the
    binary's name carries the fixes' fingerprint: one built without them is never reused)."""
    root = paths.cache_dir() / "selftests" / series
    binary = root / f"ksm_tests-{_fingerprint(FIXES)}"
    if binary.is_file():
        return binary
    with building(binary) as tmp:  # two first runs: one builds, the other waits and uses it
        if tmp is not None:
            _build(series, root, tmp)
    return binary


def _build(series: str, root: Path, out: Path) -> None:
    """Download, unpack, fix and compile ksm_tests into ``out``; then drop the sources."""
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
    # the fixed copy sits next to the original, so its "../kselftest.h" and "util.h" resolve
    fixed = Path(SOURCES[0]).with_suffix(".harness.c")
    (src / fixed).write_text(apply_fixes((src / SOURCES[0]).read_text()))
    r = _run(["gcc", "-static", "-O2", "-I.", "-o", str(out), str(fixed), "-lnuma"], src)
    if r.returncode != 0:
        raise Unbuildable(f"building ksm_tests failed: {r.stderr.strip()[-300:]}")
    for done in (*debs, tarball, root / "unpacked"):  # ~280 MB no longer needed
        if done.is_dir():
            shutil.rmtree(done, ignore_errors=True)
        else:
            done.unlink(missing_ok=True)


def parse_ktap(output: str) -> dict[str, str]:
    """{description: pass|fail|skip} from KTAP/TAP result lines."""
    results = {}
    for m in re.finditer(r"^(not ok|ok) \d+ (?:- )?(.*?)(\s+# (SKIP|skip).*)?$", output, re.M):
        verdict = "skip" if m.group(4) else ("pass" if m.group(1) == "ok" else "fail")
        results[m.group(2).strip()] = verdict
    return results
