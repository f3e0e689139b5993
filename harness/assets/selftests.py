"""The kernel's own KSM selftests (``ksm_tests`` and, from 6.2, ``ksm_functional_tests``),
built once per kernel series from Debian's ``linux-source-SERIES`` (the host's suites; a
series they lack, e.g. 7.2, from Debian unstable through :mod:`harness.assets.debsuite`'s
private apt), with the fixes of :data:`FIXES` applied, and cached; the cases are the
invocations of that source's own ``run_vmtests.sh`` (their output: :mod:`harness.assets.ktap`)."""
from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness import paths
from harness.assets.atomic import building

# the selftests' directory: vm/ until 6.2, renamed mm/ in 6.3 (the newer one wins)
SELFTEST_DIRS = ("tools/testing/selftests/mm", "tools/testing/selftests/vm")
PROGRAMS = ("ksm_tests", "ksm_functional_tests")  # the second came with 6.2
# what the build unpacks: the selftest directory, kselftest's headers, and the uapi headers
# newer than the host's libc headers (PR_SET_MEMORY_MERGE, struct pm_scan_arg, ...)
SOURCES = (*SELFTEST_DIRS, "tools/testing/selftests/kselftest.h",
           "tools/testing/selftests/kselftest", "include/vdso", "include/uapi/linux")
UNSTABLE = "unstable"  # where a series the host's suites lack is fetched from


class Unbuildable(Exception):
    pass


@dataclass(frozen=True)
class Fix:
    """A bug of the selftest's own (not of the kernel), fixed in our build: ``old`` must occur
    exactly once in ``program``'s source and becomes ``new``. ``case`` is the run_vmtests.sh
    invocation whose verdict it changes (the test reports the fix with that case's result).
    ``upstream`` is the kernel's own later fix: a source that has it (once) instead of
    ``old`` needs none of ours."""
    name: str
    case: str
    old: str
    new: str
    why: str
    program: str = "ksm_tests"
    upstream: str = ""


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
    Fix(name="fork-exec-child-argv-unterminated", case="ksm_functional_tests",
        program="ksm_functional_tests",
        old="\t\tchar *argv_for_program[] = { prg_name, FORK_EXEC_CHILD_PRG_NAME };\n\n"
            "\t\texecv(prg_name, argv_for_program);\n\t\treturn;\n",
        new="\t\t/* ksm-harness: execv's argv ends with NULL; a failed exec ends the child */\n"
            "\t\tchar *argv_for_program[] = { prg_name, FORK_EXEC_CHILD_PRG_NAME, NULL };\n\n"
            "\t\texecv(prg_name, argv_for_program);\n\t\texit(4);\n",
        upstream="\t\tchar *argv_for_program[] = { prg_name, FORK_EXEC_CHILD_PRG_NAME, NULL };"
                 "\n\n\t\texecv(prg_name, argv_for_program);\n\t\texit(4);\n",
        why="test_prctl_fork_exec()'s child passes execv an argv with no NULL at its end: "
            "execv reads whatever follows on the stack and, in our static build, fails "
            "(EFAULT); the child then 'return's into main() and runs the rest of the parent's "
            "tests itself, so the KTAP stream carries 10 results for a plan of 9, a "
            "duplicated 'ok 8' and 'Planned tests != run tests (9 != 8)' (6.12.118, first "
            "run) while the exec'd child's check never ran. The kernel fixed it later: "
            "7.2's source has this NULL and exit(4) (KSFT_SKIP) after execv."),
    Fix(name="prot-none-written-as-our-tracer", case="ksm_functional_tests",
        program="ksm_functional_tests",
        old="\t/* Store a unique value in each page on one half using ptrace */\n"
            "\tfor (i = 0; i < size / 2; i += pagesize) {\n"
            "\t\tlseek(mem_fd, (uintptr_t) map + i, SEEK_SET);\n"
            "\t\tif (write(mem_fd, &i, sizeof(i)) != sizeof(i)) {\n"
            "\t\t\tksft_test_result_fail(\"ptrace write failed\\n\");\n"
            "\t\t\tgoto unmap;\n"
            "\t\t}\n"
            "\t}\n",
        new="\t/* Store a unique value in each page on one half using ptrace */\n"
            "\t/* ksm-harness: written by a child that is our tracer (PTRACE_SEIZE): a kernel\n"
            "\t * with CONFIG_PROC_MEM_FORCE_PTRACE forces /proc/PID/mem writes (FOLL_FORCE,\n"
            "\t * what PROT_NONE needs) only for the process's active ptracer */\n"
            "\t{\n"
            "\t\tpid_t parent = getpid(), tracer = fork();\n"
            "\t\tint wstatus;\n\n"
            "\t\tif (tracer == 0) {\n"
            "\t\t\tchar path[64];\n"
            "\t\t\tint fd;\n\n"
            "\t\t\tsnprintf(path, sizeof(path), \"/proc/%d/mem\", (int)parent);\n"
            "\t\t\tif (syscall(__NR_ptrace, 0x4206L /* PTRACE_SEIZE */, (long)parent, 0L, 0L))\n"
            "\t\t\t\t_exit(2);\n"
            "\t\t\tfd = open(path, O_RDWR);\n"
            "\t\t\tif (fd < 0)\n"
            "\t\t\t\t_exit(3);\n"
            "\t\t\tfor (i = 0; i < size / 2; i += pagesize)\n"
            "\t\t\t\tif (pwrite(fd, &i, sizeof(i), (uintptr_t) map + i) != sizeof(i))\n"
            "\t\t\t\t\t_exit(1);\n"
            "\t\t\t_exit(0);\n"
            "\t\t}\n"
            "\t\tif (tracer < 0 || waitpid(tracer, &wstatus, 0) != tracer ||\n"
            "\t\t    !WIFEXITED(wstatus) || WEXITSTATUS(wstatus)) {\n"
            "\t\t\tksft_test_result_fail(\"ptrace write failed\\n\");\n"
            "\t\t\tgoto unmap;\n"
            "\t\t}\n"
            "\t}\n",
        why="test_prot_none() fills half of a merged PROT_NONE range through /proc/self/mem, "
            "which needs FOLL_FORCE. Since 6.12 the kernel may grant that only to an active "
            "ptracer of the process (CONFIG_PROC_MEM_FORCE_PTRACE, or proc_mem.force_override"
            "=ptrace): Debian's 7.2.13 is built so (its 6.12.118 with PROC_MEM_ALWAYS_FORCE), "
            "and there the test's own write fails ('not ok 5 ptrace write failed', 5 of 5 "
            "runs) before any KSM behaviour is checked. The child that writes instead is the "
            "test's tracer, as the comment in the test ('using ptrace') intends; what is "
            "written, and the check after it, are unchanged."),
)


def fixes_of(program: str, fixes: tuple[Fix, ...] = FIXES) -> tuple[Fix, ...]:
    return tuple(fix for fix in fixes if fix.program == program)


def apply_fixes(source: str, fixes: tuple[Fix, ...] = FIXES) -> str:
    """``source`` with every fix applied; a fix that does not match exactly once is an
    error (the source changed: the fix must be looked at again, not dropped silently)."""
    for fix in fixes:
        found = source.count(fix.old)
        if found == 0 and fix.upstream and source.count(fix.upstream) == 1:
            continue  # this source has the kernel's own fix
        if found != 1:
            raise Unbuildable(f"selftest fix {fix.name!r} matches {found} places of the "
                              "source instead of 1: review it against this source")
        source = source.replace(fix.old, fix.new)
    return source


def fixes_for(case: str, fixes: tuple[Fix, ...] = FIXES) -> list[Fix]:
    """The fixes that change the verdict of the run_vmtests.sh invocation ``case``."""
    return [fix for fix in fixes if fix.case == case]


RECIPE = "2"  # bump when the build recipe (not a fix) changes what comes out


def _fingerprint(fixes: tuple[Fix, ...]) -> str:
    h = hashlib.sha256(f"recipe {RECIPE}\0".encode())
    for fix in fixes:
        h.update(f"{fix.name}\0{fix.program}\0{fix.old}\0{fix.new}\0".encode())
    return h.hexdigest()[:12]


def _run(cmd: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          check=False)


# --- which tests, from the source itself -------------------------------------------------

@dataclass(frozen=True)
class Invocation:
    """One line of run_vmtests.sh that runs a KSM program: one test case of ours."""
    program: str
    args: str

    @property
    def case(self) -> str:
        """The case's id: ksm_tests' arguments (as before 6.2), another program's name."""
        return self.args if self.program == "ksm_tests" else \
            " ".join(filter(None, (self.program, self.args)))


_INVOCATION = re.compile(r"^[^#\n]*\brun_test\s+\./(" + "|".join(PROGRAMS) + r")\b[ \t]*([^\n#]*)",
                         re.M)


def invocations(run_vmtests: str) -> list[Invocation]:
    """The KSM invocations of a run_vmtests.sh, in its order (``run_test ./ksm_tests -U``,
    with or without a ``CATEGORY="ksm"`` prefix; comments ignored)."""
    found = [Invocation(m.group(1), " ".join(m.group(2).split()))
             for m in _INVOCATION.finditer(run_vmtests)]
    return list(dict.fromkeys(found))


def selftest_dir(tree: Path) -> Path:
    """The directory of ``tree``'s KSM selftests: mm/ since 6.3, vm/ before."""
    for name in SELFTEST_DIRS:
        if (tree / name / "ksm_tests.c").is_file():
            return tree / name
    raise Unbuildable("the source has no ksm_tests.c in " + " or ".join(SELFTEST_DIRS))


def helpers(makefile: str, program: str) -> list[str]:
    """The .c files the selftests' Makefile links into ``program`` besides its own
    (``$(TEST_GEN_FILES): vm_util.c thp_settings.c`` since 6.5; none for 6.1's ksm_tests)."""
    targets = {"$(TEST_GEN_PROGS)", "$(TEST_GEN_FILES)", f"$(OUTPUT)/{program}"}
    out: list[str] = []
    for line in makefile.splitlines():
        target, sep, prereqs = line.partition(":")
        if sep and target.strip() in targets:
            out += [w for w in prereqs.split() if w.endswith(".c") and w not in out]
    return out


# --- the build -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Built:
    """A series' built selftests: ``dir`` holds the programs; ``tree`` the unpacked source."""
    dir: Path
    tree: Path
    series: str

    @property
    def source_dir(self) -> Path:
        return selftest_dir(self.tree)

    def cases(self) -> list[Invocation]:
        return invocations((self.source_dir / "run_vmtests.sh").read_text(errors="replace"))

    def programs(self) -> list[Path]:
        return sorted(p for p in self.dir.iterdir() if p.name in PROGRAMS)

    def fixes_applied(self, case: str) -> list[Fix]:
        """``case``'s fixes this source needed (not those the kernel made itself)."""
        sources = {p.stem: p.read_text(errors="replace")
                   for p in self.source_dir.glob("*.c") if p.stem in PROGRAMS}
        return [fix for fix in fixes_for(case) if sources.get(fix.program, "").count(fix.old) == 1]


def build(series: str, log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)
          ) -> Built:
    """ksm_tests (and ksm_functional_tests where the source has it) from
    linux-source-SERIES with :data:`FIXES`, built once and cached (the directory's name
    carries the fixes' fingerprint: programs built without them are never reused)."""
    root = paths.cache_dir() / "selftests" / series
    out = root / f"bin-{_fingerprint(FIXES)}"
    tree = root / "tree"
    if out.is_dir() and tree.is_dir():
        return Built(out, tree, series)
    with building(out) as tmp:  # two first runs: one builds, the other waits and uses it
        if tmp is not None:
            _build(series, root, tmp, log)
    return Built(out, tree, series)


def _fetch_deb(series: str, root: Path, log: Callable[[str], None]) -> Path:
    """linux-source-SERIES's .deb: from the host's suites (bookworm, bookworm-backports),
    else from Debian unstable through a private apt (nothing of the host's apt touched)."""
    package = f"linux-source-{series}"
    debs = sorted(root.glob(f"{package}_*.deb"))
    if debs:
        return debs[-1]
    r = _run(["apt-get", "download", package], root)
    if r.returncode != 0:
        from harness.assets import debindex, debsuite
        from harness.errors import KernelError
        try:
            index = debindex.Index(debindex.parse_packages(
                debsuite.update(UNSTABLE, log).read_text(errors="replace")))
        except KernelError as e:
            raise Unbuildable(f"the host's apt has no {package} ({r.stderr.strip()[-120:]}) "
                              f"and Debian {UNSTABLE} could not be read: {e}") from None
        stanza = index.candidate(package)
        if stanza is None:
            raise Unbuildable(f"neither the host's apt nor Debian {UNSTABLE} has {package}")
        log(f"ksm-harness: fetching {package} {stanza.version} from {UNSTABLE} "
            f"({stanza.size / 2**20:.0f} MB) for the kernel's KSM selftests")
        r = _run(["apt-get", *debsuite.apt_options(debsuite.apt_root(UNSTABLE)), "download",
                  f"{package}={stanza.version}"], root, timeout=1800)
    debs = sorted(root.glob(f"{package}_*.deb"))
    if r.returncode != 0 or not debs:
        raise Unbuildable(f"apt-get download {package} failed (run 'apt-get update'?): "
                          f"{r.stderr.strip()[-200:]}")
    return debs[-1]


def _unpack(series: str, root: Path, log: Callable[[str], None]) -> Path:
    """The few parts of the source the build needs (:data:`SOURCES`), once, in ``tree``."""
    tree = root / "tree"
    if tree.is_dir():
        return tree
    top = f"linux-source-{series}"
    tarball = root / f"{top}.tar.xz"
    if not tarball.is_file():
        deb = _fetch_deb(series, root, log)
        r = _run(["sh", "-c", 'dpkg-deb --fsys-tarfile "$1" | tar -xO "$2" > "$3"', "sh",
                  str(deb), f"./usr/src/{top}.tar.xz", str(tarball)], root)
        if r.returncode != 0:
            tarball.unlink(missing_ok=True)
            raise Unbuildable(f"no source tarball in {deb.name}: {r.stderr[-200:]}")
    unpacked = root / "unpacked"
    shutil.rmtree(unpacked, ignore_errors=True)
    unpacked.mkdir()
    # tar complains of the members this series lacks (vm/ or mm/): what matters is below
    r = _run(["tar", "-xJf", str(tarball), "-C", str(unpacked),
              *[f"{top}/{name}" for name in SOURCES]], root)
    try:
        selftest_dir(unpacked / top)
    except Unbuildable as e:
        raise Unbuildable(f"linux-source-{series}: {e} (tar: "
                          f"{r.stderr.strip()[-200:]})") from None
    (unpacked / top).rename(tree)
    shutil.rmtree(unpacked, ignore_errors=True)
    return tree


# scripts/headers_install.sh's edits (what `make headers` does to a uapi header)
_HEADER_EDITS = (
    (re.compile(r"([\s(])(__user|__force|__iomem)\s"), r"\1"),
    (re.compile(r"__attribute_const__(\s|$)", re.M), r"\1"),
    (re.compile(r"^#include <linux/compiler(|_types)\.h>", re.M), ""),
    (re.compile(r"(^|[^a-zA-Z0-9])__packed([^a-zA-Z0-9_]|$)", re.M),
     r"\1__attribute__((packed))\2"),
    (re.compile(r"(^|[\s(])(inline|asm|volatile)([\s(]|$)", re.M), r"\1__\2__\3"),
    (re.compile(r"#(ifndef|define|endif\s*/[*])\s*_UAPI", re.M), r"#\1 "),
)


def install_header(text: str) -> str:
    for pattern, repl in _HEADER_EDITS:
        text = pattern.sub(repl, text)
    return text


def _install_headers(tree: Path, dest: Path) -> None:
    """The source's include/uapi/linux as `make headers` installs it, in ``dest``: the
    selftests need definitions newer than the host's libc headers (PR_SET_MEMORY_MERGE
    in 6.4, struct pm_scan_arg in 6.7); asm/ stays the host's (the syscall numbers)."""
    src = tree / "include/uapi/linux"
    for header in src.rglob("*.h"):
        target = dest / "linux" / header.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(install_header(header.read_text(errors="replace")))


def _build(series: str, root: Path, out: Path, log: Callable[[str], None]) -> None:
    """Fetch and unpack the source (once), fix and compile each program into ``out``."""
    for tool in ("apt-get", "dpkg-deb", "gcc", "tar"):
        if shutil.which(tool) is None:
            raise Unbuildable(f"{tool} is missing on the host")
    if not Path("/usr/include/numa.h").exists():
        raise Unbuildable("libnuma-dev is missing on the host: apt-get install libnuma-dev")
    tree = _unpack(series, root, log)
    sdir = selftest_dir(tree)
    headers = root / "headers"
    shutil.rmtree(headers, ignore_errors=True)
    _install_headers(tree, headers)
    makefile = (sdir / "Makefile").read_text(errors="replace") \
        if (sdir / "Makefile").is_file() else ""
    out.mkdir()
    for program in PROGRAMS:
        source = sdir / f"{program}.c"
        if not source.is_file():
            continue  # ksm_functional_tests came with 6.2
        # the fixed copy sits next to the original, so "vm_util.h" resolves; kselftest.h is
        # "../kselftest.h" until 6.x, "kselftest.h" with the parent on the path in 7.x
        fixed = sdir / f"{program}.harness.c"
        fixed.write_text(apply_fixes(source.read_text(), fixes_of(program)))
        extra = [c for c in helpers(makefile, program) if (sdir / c).is_file()]
        r = _run(["gcc", "-static", "-O2", "-D__EXPORTED_HEADERS__", "-isystem", str(headers),
                  "-I", str(tree), "-I", str(sdir.parent), "-o", str(out / program), fixed.name, *extra,
                  "-lnuma", "-lrt", "-lpthread", "-lm"], sdir)
        fixed.unlink()
        if r.returncode != 0:
            raise Unbuildable(f"building {program} failed: {r.stderr.strip()[-300:]}")
    for done in (*root.glob("linux-source-*.deb"), root / f"linux-source-{series}.tar.xz"):
        done.unlink(missing_ok=True)  # ~300 MB no longer needed: tree/ holds what is
