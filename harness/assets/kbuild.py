"""Build a kernel from a source tree for the harness: a base config (x86_64 defconfig when the
tree has no ``.config`` or ``--defconfig`` is given, else the tree's own ``.config``, as a
kernel developer bisecting with their config expects), optionally ``--slim``
(``guest-images/kernel-slim.config``: no graphics, sound, USB, wireless, ...), then our
fragment (``guest-images/kernel.config``), a check that every option of the fragment really
landed in ``.config`` (as kunit.py does: Kconfig drops an option silently when a dependency
is missing), then ``make -jN bzImage modules``, through ccache when it is installed.

``--flavour builtin`` replaces the base with ``make allnoconfig`` + ``kernel-builtin.config``
(just what our QEMU guest needs, everything built in, no modules: a cold build is a fraction
of a defconfig's); ``--flavour debug`` adds ``kernel-debug.config`` (DEBUG_VM, DEBUG_LIST,
KFENCE, page poisoning, ...: the kernel a developer bisects an mm bug with); ``--flavour gcov``
adds ``kernel-gcov.config`` (gcov for mm/ksm.c and the files that treat KSM pages specially,
by ``harness.assets.gcovpatch``: what ``ksm-harness coverage`` boots). Every option of
every fragment is checked, later fragments overriding earlier ones. A build with ``out`` set
goes out of tree (``make O=``), which is how one unpacked ``linux-source`` serves each
flavour (``harness.assets.source``).

Rebuilding after ``git checkout`` is incremental: the merge rewrites ``.config`` but Kconfig
only touches the headers of options that changed, so a bisect step recompiles what the
commit changed (and ccache serves files seen in earlier steps)."""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness import deps, paths, reaper
from harness.assets import gcovpatch
from harness.assets.kconfig import parse_config
from harness.errors import HarnessError

FRAGMENT = paths.REPO / "guest-images" / "kernel.config"
SLIM = paths.REPO / "guest-images" / "kernel-slim.config"
BUILTIN = paths.REPO / "guest-images" / "kernel-builtin.config"
DEBUG = paths.REPO / "guest-images" / "kernel-debug.config"
GCOV = paths.REPO / "guest-images" / "kernel-gcov.config"
# flavour -> fragments merged over `make allnoconfig`, in order (later ones win)
FLAVOURS: dict[str, tuple[Path, ...]] = {
    "builtin": (BUILTIN, FRAGMENT),
    "debug": (BUILTIN, FRAGMENT, DEBUG),
    "gcov": (BUILTIN, FRAGMENT, GCOV),
}
PROGRESS_EVERY = 20.0  # seconds between "still building" lines
_SET = re.compile(r"^(CONFIG_\w+)=(.*)$")
_UNSET = re.compile(r"^# (CONFIG_\w+) is not set$")


class BuildError(HarnessError):
    """The tree could not be configured or built."""


class ConfigError(BuildError):
    """Options of the fragment did not make it into .config."""


@dataclass
class BuildResult:
    tree: Path
    image: Path
    seconds: float
    ccache: bool


def parse_fragment(text: str) -> dict[str, str | None]:
    """CONFIG_X -> wanted value; None for ``# CONFIG_X is not set``."""
    wanted: dict[str, str | None] = {}
    for line in text.splitlines():
        line = line.strip()
        m = _SET.match(line)
        if m:
            wanted[m.group(1)] = m.group(2).strip('"')
            continue
        m = _UNSET.match(line)
        if m:
            wanted[m.group(1)] = None
    return wanted


def flavour_fragments(flavour: str) -> tuple[Path, ...]:
    try:
        return FLAVOURS[flavour]
    except KeyError:
        raise BuildError(f"unknown flavour {flavour!r}: choose "
                         + " or ".join(FLAVOURS)) from None


def merged_fragments(fragments: tuple[Path, ...] | list[Path]) -> dict[str, tuple[str | None, str]]:
    """CONFIG_X -> (wanted value, fragment that says so); a later fragment wins."""
    wanted: dict[str, tuple[str | None, str]] = {}
    for frag in fragments:
        for opt, value in parse_fragment(frag.read_text()).items():
            wanted[opt] = (value, frag.name)
    return wanted


def missing_options(wanted: dict[str, str | None], config: dict[str, str]) -> list[str]:
    """The fragment's options that .config does not have, each with what it has instead."""
    out = []
    for opt, value in wanted.items():
        have = config.get(opt)
        if value is None:
            if have not in (None, "n"):
                out.append(f"{opt} is not set (have {opt}={have})")
        elif have != value:
            out.append(f"{opt}={value} (have {'not set' if have is None else have})")
    return out


def check_tree(tree: Path) -> Path:
    tree = tree.expanduser().resolve()
    if not tree.is_dir():
        raise BuildError(f"--tree {tree}: no such directory")
    if not (tree / "Makefile").is_file() or not (tree / "Kconfig").is_file():
        raise BuildError(f"--tree {tree}: not a kernel source tree (no Makefile and Kconfig)")
    return tree


CCACHE_LINKS = Path("/usr/lib/ccache")  # Debian's ccache: gcc, cc, ... that run ccache
_CMD = re.compile(r"^(?:saved)?cmd_\S+ := (?P<cc>.*?) -Wp,", re.M)


def tree_compiler(where: Path) -> str | None:
    """The compiler command line an existing build of ``where`` used (from the .cmd file
    Kbuild keeps per object), e.g. "gcc" or "ccache gcc"; None before the first build."""
    for probe in ("init/.main.o.cmd", "init/.version.o.cmd", "kernel/.fork.o.cmd"):
        path = where / probe
        if path.is_file():
            m = _CMD.search(path.read_text(errors="replace"))
            if m:
                return m.group("cc").strip()
    return None


@dataclass(frozen=True)
class Toolchain:
    make_args: list[str]       # CC=... when the tree was built with it
    env: dict[str, str]        # PATH with ccache's compiler links first, when they exist
    ccache: bool
    why: str                   # one line for the progress output


def _executable(path: Path) -> bool:
    """A file we can run, links followed: a compiler link left behind by an uninstalled
    ccache (or pointing at nothing) is no compiler."""
    return path.is_file() and os.access(path, os.X_OK)


def toolchain(where: Path, links: Path = CCACHE_LINKS) -> Toolchain:
    """Use ccache without changing the compiler command line the tree was built with: Kbuild
    rebuilds every object whose command line changed, so CC="ccache gcc" on a tree built with
    plain gcc costs a full rebuild. ccache's compiler links on PATH keep "gcc" as it is."""
    env = dict(os.environ)
    have = shutil.which("ccache", path=env.get("PATH")) is not None
    used = tree_compiler(where)
    if used is not None and used.split()[0] == "ccache":
        if have:
            return Toolchain([f"CC={used}"], env, True,
                             f"the tree was built with CC=\"{used}\": keeping it")
        # make would die on "ccache: not found"; a full rebuild is slow but right
        plain = " ".join(used.split()[1:]) or "gcc"
        return Toolchain([f"CC={plain}"], env, False,
                         f"the tree was built with CC=\"{used}\" but there is no ccache: "
                         f"CC={plain} (every object is rebuilt)")
    if have and _executable(links / "gcc"):
        env["PATH"] = f"{links}:{env.get('PATH', '')}"
        what = f"the tree was built with {used!r}" if used else "no build yet"
        return Toolchain([], env, True, f"{what}: compiler unchanged, ccache through {links} "
                                        "on PATH (nothing rebuilt for the compiler's sake)")
    return Toolchain([], env, False, "no ccache: plain make")


def _last_line(logfile: Path) -> str:
    try:
        with logfile.open("rb") as fh:
            fh.seek(max(0, fh.seek(0, os.SEEK_END) - 4096))
            lines = fh.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1].strip()[:100] if lines else ""


def _progress(what: str, logfile: Path, log: Callable[[str], None], t0: float,
              every: float) -> Callable[[], None]:
    """Log "<what>: 3m20s, at: CC mm/ksm.o" every `every` seconds; returns the stopper."""
    done = threading.Event()

    def loop() -> None:
        while not done.wait(every):
            m, sec = divmod(int(time.monotonic() - t0), 60)
            log(f"ksm-harness: {what}: {m}m{sec:02d}s, at: {_last_line(logfile)}")
    thread = threading.Thread(target=loop, daemon=True)
    thread.start()

    def stop() -> None:
        done.set()
        thread.join()
    return stop


def _run(cmd: list[str], tree: Path, log: Callable[[str], None], what: str,
         logfile: Path, progress: float = 0.0, env: dict[str, str] | None = None) -> None:
    log(f"ksm-harness: {what}: {' '.join(cmd)}")
    with logfile.open("a") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n")
        fh.flush()
        # make in its own process group, killed as a group if we stop: an interrupted
        # build must not leave make's children compiling for half an hour
        proc = subprocess.Popen(cmd, cwd=tree, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, preexec_fn=reaper.die_with_parent)

        def kill_group() -> None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        key = reaper.register(kill_group)  # SIGTERM, SIGHUP, exit
        stop = _progress(what, logfile, log, time.monotonic(), progress) if progress else None
        try:
            returncode = proc.wait()
        except BaseException:  # Ctrl-C
            kill_group()
            raise
        finally:
            if stop:
                stop()
            reaper.unregister(key)
    if returncode != 0:
        tail = logfile.read_text(errors="replace").splitlines()[-15:]
        raise BuildError(f"{what} failed (exit {returncode}; log {logfile}):\n"
                         + "\n".join(tail))


def _merge(tree: Path, fragment: Path, log: Callable[[str], None], logfile: Path,
           out: Path | None = None) -> None:
    """Merge into the .config of `out` (an O= build directory), else of the tree."""
    merge = tree / "scripts" / "kconfig" / "merge_config.sh"
    where = out or tree
    if merge.is_file():
        _run(["sh", str(merge), "-m", ".config", str(fragment)], where, log,
             f"merge {fragment.name}", logfile)
    else:
        with (where / ".config").open("a") as fh:
            fh.write("\n" + fragment.read_text())


def _out(out: Path | None) -> list[str]:
    return [f"O={out}"] if out is not None else []


def configure(tree: Path, fragment: Path = FRAGMENT, log: Callable[[str], None] = print,
              logfile: Path | None = None, defconfig: bool = False,
              slim: bool = False, flavour: str | None = None,
              out: Path | None = None) -> dict[str, str]:
    """Write and check .config (in `out` for an O= build, else in the tree). With a
    flavour the base is allnoconfig and the fragments are the flavour's (`fragment`,
    `defconfig` and `slim` do not apply)."""
    tree = check_tree(tree)
    fragments = flavour_fragments(flavour) if flavour else (*((SLIM,) if slim else ()), fragment)
    for frag in fragments:
        if not frag.is_file():
            raise BuildError(f"config fragment not found: {frag}")
    where = out or tree
    where.mkdir(parents=True, exist_ok=True)
    logfile = logfile or where / ".ksm-harness-build.log"
    tc = toolchain(where)
    cc, env = tc.make_args, tc.env
    if flavour:
        _run(["make", *cc, *_out(out), "allnoconfig"], tree, log, "allnoconfig", logfile,
             env=env)
    elif defconfig or not (where / ".config").is_file():
        _run(["make", *cc, *_out(out), "defconfig"], tree, log, "defconfig", logfile, env=env)
    else:
        log(f"ksm-harness: keeping {where}/.config as the base (--defconfig replaces it)")
    for frag in fragments:
        _merge(tree, frag, log, logfile, out)
    _run(["make", *cc, *_out(out), "olddefconfig"], tree, log, "olddefconfig", logfile,
         env=env)
    config = parse_config((where / ".config").read_text(errors="replace"))
    merged = merged_fragments(fragments)
    missing = missing_options({k: v for k, (v, _) in merged.items()}, config)
    if missing:
        names = ", ".join(dict.fromkeys(merged[m.split("=")[0].split()[0]][1] for m in missing))
        raise ConfigError(f"{len(missing)} option(s) of {names} are not in "
                          f"{where}/.config: " + "; ".join(missing))
    return config


def gcov_step(tree: Path, flavour: str, log: Callable[[str], None]) -> list[str]:
    """The flavour's per-file gcov profiling (its fragments' ``# gcov-profile:`` lines)
    patched into the tree; the make arguments that switch it on (none without any)."""
    files = [f for frag in flavour_fragments(flavour)
             for f in gcovpatch.profiled(frag.read_text())]
    if not files:
        return []
    for mk in gcovpatch.apply(tree, files):
        log(f"ksm-harness: gcov: per-file profiling block written to {mk}")
    return [gcovpatch.MAKE_VAR]


def build(tree: Path, jobs: int | None = None, fragment: Path = FRAGMENT,
          log: Callable[[str], None] = print, defconfig: bool = False,
          slim: bool = False, flavour: str | None = None,
          out: Path | None = None) -> BuildResult:
    """Configure and build; the result (and what to pass to --kernel) is `out` for an
    O= build, else the tree."""
    tree = check_tree(tree)
    deps.ensure(deps.KERNEL_BUILD)
    t0 = time.monotonic()
    where = out or tree
    where.mkdir(parents=True, exist_ok=True)
    logfile = where / ".ksm-harness-build.log"
    logfile.write_text("")
    config = configure(tree, fragment, log, logfile, defconfig, slim, flavour, out)
    extra = gcov_step(tree, flavour, log) if flavour else []
    tc = toolchain(where)
    log(f"ksm-harness: build: {tc.why}")
    jobs = jobs or os.cpu_count() or 1
    targets = ["bzImage"] + (["modules"] if config.get("CONFIG_MODULES") == "y" else [])
    _run(["make", *tc.make_args, *extra, *_out(out), f"-j{jobs}", *targets], tree, log, "build",
         logfile, progress=PROGRESS_EVERY, env=tc.env)
    image = where / "arch" / "x86" / "boot" / "bzImage"
    if not image.is_file():
        raise BuildError(f"build finished without {image}")
    return BuildResult(where, image, time.monotonic() - t0, tc.ccache)
