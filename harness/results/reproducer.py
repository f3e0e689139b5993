"""Per failed test: ``failures/<test>/`` with failure.txt, the console logs and an executable
``reproducer.sh`` that prints the failing run's QEMU command line and re-runs just that test
with the same kernel, topology, accelerator, command line and seed."""
from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path
from typing import Any

from harness import options as opts
from harness.results.model import Result


def slug(nodeid: str) -> str:
    s = re.sub(r"[^\w.=-]+", "_", nodeid.split("/")[-1]).strip("_")
    return s[-100:] or "test"


def rerun_argv(nodeid: str, options: dict[str, Any], seed: str | None,
               program: str = "./ksm-harness") -> list[str]:
    """``ksm-harness run`` arguments that re-run just ``nodeid`` the same way."""
    argv = [program, "run", nodeid, *opts.to_argv(options)]
    if seed is not None:
        argv += ["--ksm-seed", str(seed)]
    return argv


def script(result: Result, options: dict[str, Any], repo: Path, report_dir: Path) -> str:
    p = result.properties
    rootdir = str(options.get("rootdir") or repo)  # node ids are relative to it
    program = "./ksm-harness" if Path(rootdir) == repo else str(repo / "ksm-harness")
    argv = rerun_argv(result.nodeid, options, p.get("seed"), program)
    argv += ["--report-dir", str(report_dir.resolve() / "rerun"), "-p", "no:cacheprovider"]
    qemu = ""
    qfile = p.get("qemu_cmdline")
    if qfile and Path(qfile).is_file():
        qemu = Path(qfile).read_text().strip()
    lines = [
        "#!/bin/sh",
        f"# Re-runs {result.nodeid} on the same kernel, topology and seed.",
        f"# It failed with: {result.title}",
        f"# kernel {p.get('kernel_release', '?')} (config {p.get('kernel_config_hash', '?')}),"
        f" accel {p.get('accelerator', '?')}, topology {p.get('topology', '?')}",
        "set -e",
        f"cd {shlex.quote(rootdir)}",
    ]
    if qemu:
        lines.append("echo " + shlex.quote(
            "ksm-harness: the failing run's QEMU command line (ports and run paths differ "
            "this time):"))
        lines.append("cat <<'QEMU_EOF'\n" + qemu + "\nQEMU_EOF")
    lines.append("echo " + shlex.quote("+ " + shlex.join(argv)))
    lines.append("exec " + shlex.join(argv) + ' "$@"')
    return "\n".join(lines) + "\n"


def write_failures(rdir: Path, results: list[Result], options: dict[str, Any],
                   repo: Path) -> list[Path]:
    """failure.txt, console log copies and reproducer.sh per failed test; the scripts made."""
    made = []
    for r in results:
        if not r.failed:
            continue
        d = rdir / "failures" / slug(r.nodeid)
        d.mkdir(parents=True, exist_ok=True)
        (d / "failure.txt").write_text(f"{r.nodeid}\n{r.title}\n\n{r.text}\n")
        for name, value in r.properties.items():
            if name.startswith("console_log") and Path(value).is_file():
                shutil.copyfile(value, d / f"{name.replace('_log', '')}.log")
        if "kernel_release" in r.properties or r.properties.get("console_log"):
            path = d / "reproducer.sh"
            path.write_text(script(r, options, repo, rdir))
            path.chmod(0o755)
            made.append(path)
    return made
