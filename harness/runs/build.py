"""Build a kernel from a source tree for the harness: a base config (x86_64 defconfig when the
tree has no ``.config`` or ``--defconfig`` is given, else the tree's own ``.config``, as a
kernel developer bisecting with their config expects), optionally ``--slim``
(``guest-images/kernel-slim.config``: no graphics, sound, USB, wireless, ...), then our
fragment (``guest-images/kernel.config``), a check that every option of the fragment really
landed in ``.config`` (as kunit.py does: Kconfig drops an option silently when a dependency
is missing), then ``make -jN bzImage modules``, through ccache when it is installed.

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
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness import deps, paths
from harness.assets.kernel import parse_config
from harness.errors import HarnessError
from harness.machine import reaper

FRAGMENT = paths.REPO / "guest-images" / "kernel.config"
SLIM = paths.REPO / "guest-images" / "kernel-slim.config"
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


def _make_env() -> tuple[list[str], bool]:
    cc = ["CC=ccache gcc"] if shutil.which("ccache") else []
    return cc, bool(cc)


def _run(cmd: list[str], tree: Path, log: Callable[[str], None], what: str,
         logfile: Path) -> None:
    log(f"ksm-harness: {what}: {' '.join(cmd)}")
    with logfile.open("a") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n")
        fh.flush()
        # make in its own process group, killed as a group if we stop: an interrupted
        # build must not leave make's children compiling for half an hour
        proc = subprocess.Popen(cmd, cwd=tree, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=reaper.die_with_parent)

        def kill_group() -> None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        key = reaper.register(kill_group)  # SIGTERM, SIGHUP, exit
        try:
            returncode = proc.wait()
        except BaseException:  # Ctrl-C
            kill_group()
            raise
        finally:
            reaper.unregister(key)
    if returncode != 0:
        tail = logfile.read_text(errors="replace").splitlines()[-15:]
        raise BuildError(f"{what} failed (exit {returncode}; log {logfile}):\n"
                         + "\n".join(tail))


def _merge(tree: Path, fragment: Path, log: Callable[[str], None], logfile: Path) -> None:
    merge = tree / "scripts" / "kconfig" / "merge_config.sh"
    if merge.is_file():
        _run(["sh", str(merge), "-m", ".config", str(fragment)], tree, log,
             f"merge {fragment.name}", logfile)
    else:
        with (tree / ".config").open("a") as fh:
            fh.write("\n" + fragment.read_text())


def configure(tree: Path, fragment: Path = FRAGMENT, log: Callable[[str], None] = print,
              logfile: Path | None = None, defconfig: bool = False,
              slim: bool = False) -> dict[str, str]:
    tree = check_tree(tree)
    if not fragment.is_file():
        raise BuildError(f"config fragment not found: {fragment}")
    logfile = logfile or tree / ".ksm-harness-build.log"
    cc, _ = _make_env()
    if defconfig or not (tree / ".config").is_file():
        _run(["make", *cc, "defconfig"], tree, log, "defconfig", logfile)
    else:
        log(f"ksm-harness: keeping {tree}/.config as the base (--defconfig replaces it)")
    if slim:
        _merge(tree, SLIM, log, logfile)
    _merge(tree, fragment, log, logfile)
    _run(["make", *cc, "olddefconfig"], tree, log, "olddefconfig", logfile)
    config = parse_config((tree / ".config").read_text(errors="replace"))
    missing = missing_options(parse_fragment(fragment.read_text()), config)
    if missing:
        raise ConfigError(f"{len(missing)} option(s) of {fragment.name} are not in "
                          f"{tree}/.config: " + "; ".join(missing))
    return config


def build(tree: Path, jobs: int | None = None, fragment: Path = FRAGMENT,
          log: Callable[[str], None] = print, defconfig: bool = False,
          slim: bool = False) -> BuildResult:
    tree = check_tree(tree)
    deps.ensure(deps.KERNEL_BUILD)
    t0 = time.monotonic()
    logfile = tree / ".ksm-harness-build.log"
    logfile.write_text("")
    configure(tree, fragment, log, logfile, defconfig, slim)
    cc, ccache = _make_env()
    jobs = jobs or os.cpu_count() or 1
    _run(["make", *cc, f"-j{jobs}", "bzImage", "modules"], tree, log, "build", logfile)
    image = tree / "arch" / "x86" / "boot" / "bzImage"
    if not image.is_file():
        raise BuildError(f"build finished without {image}")
    return BuildResult(tree, image, time.monotonic() - t0, ccache)


def main(tree: str, jobs: int | None = None, defconfig: bool = False,
         slim: bool = False) -> int:
    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)
    r = build(Path(tree), jobs, log=log, defconfig=defconfig, slim=slim)
    print(f"ksm-harness: built {r.image} in {r.seconds:.0f}s"
          f"{' (ccache)' if r.ccache else ''}; boot it with --kernel {r.tree}")
    return 0
