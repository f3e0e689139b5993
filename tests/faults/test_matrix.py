"""The fault matrix (matrix.py): every fault at every phase, on the real CLI and real QEMU.

Each cell starts `ksm-harness boot -- true` (artefact, boot and snapshot phases) or `ksm-harness
run -k FAST --report-dir --junitxml` (test and report phases) in a session of its own, with
KSM_HARNESS_INJECT naming the cell (harness/faultpoints.py does the fault when the phase is
reached), and asserts: the fault fired, a verdict within the phase's deadline (+5 s; 2 s after
SIGINT/SIGTERM), one line naming the fault, the documented exit status, no QEMU and no RAM file
of the run left, no temporary file in the cache, the reports written (run phases), and no
file of the cache changed but the one damaged on purpose. Caches are private: the shared
cache's kernels and images are linked (read only here), snapshots are the cell's own, and
~/.cache/ksm-harness is never written."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from harness import faultpoints
from harness.assets import atomic
from tests.faults import cache as caches
from tests.faults.matrix import (
    BOOT_TIMEOUT,
    CELLS,
    CMD_TIMEOUT,
    KILLED,
    PHASE_DEADLINE,
    PHASE_VERB,
    SIGNALLED,
    Cell,
)
from tests.helpers import REPO, harness_cmd

pytestmark = pytest.mark.guest
FAST = "test_invalid_knob_values_are_einval_and_change_nothing"  # ~1 s on a restored guest
GRACE = 5.0  # the "deadline + 5 s"
LIMIT = 300.0  # no cell may take longer, whatever happens


@dataclass
class Outcome:
    status: int
    stderr: str
    stdout: str  # pytest's summary, for run
    fired: float | None  # seconds after the start when the fault fired (None: never)
    ended: float  # seconds after the start


@dataclass
class Setup:
    """Where a cell runs and what it may change: its cache, extra environment, report
    directory, and the cached files it damaged on purpose."""
    cache: Path
    report: Path
    env: dict[str, str] = field(default_factory=dict)
    damaged: tuple[str, ...] = ()  # path prefixes (relative to the cache) the cell damaged
    runs: int = 1  # harnesses started at once


def _args(cell: Cell, report: Path) -> list[str]:
    common = ["--boot-timeout", str(BOOT_TIMEOUT)]
    if PHASE_VERB[cell.phase] == "boot":
        return ["boot", *common, "--timeout", str(CMD_TIMEOUT), "--", "true"]
    return ["run", *common, "-k", FAST, "--report-dir", str(report),
            "--junitxml", str(report / "junit.xml"), "-p", "no:cacheprovider"]


def drive(argvs: list[list[str]], env: dict[str, str], mark: Path, work: Path) -> list[Outcome]:
    """Run the CLI (several at once: one per argument list), each in its own session (its
    process group is what the signals hit), until all end; past LIMIT they are killed and
    the cell fails."""
    t0 = time.monotonic()
    fired: float | None = None
    procs = []
    for i, args in enumerate(argvs):
        err, std = open(work / f"stderr{i}.txt", "w"), open(work / f"stdout{i}.txt", "w")
        procs.append((subprocess.Popen(harness_cmd(*args), cwd=REPO, env=env,
                                       stdin=subprocess.DEVNULL, stdout=std, stderr=err,
                                       start_new_session=True), err, std))
    ended: dict[int, float] = {}
    try:
        while len(ended) < len(procs):
            for i, (proc, _, _) in enumerate(procs):
                if i not in ended and proc.poll() is not None:
                    ended[i] = time.monotonic() - t0
            if fired is None and mark.exists():
                fired = time.monotonic() - t0
            if time.monotonic() - t0 > LIMIT:
                pytest.fail(f"{argvs}: no verdict after {LIMIT:.0f}s")
            time.sleep(0.02)
    finally:
        for proc, err, std in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
            err.close()
            std.close()
    if fired is None and mark.exists():
        fired = min(ended.values())
    return [Outcome(proc.returncode, Path(err.name).read_text(errors="replace"),
                    Path(std.name).read_text(errors="replace"), fired, ended[i])
            for i, (proc, err, std) in enumerate(procs)]


def _warm(cache: Path, *args: str) -> None:
    r = subprocess.run(harness_cmd(*args), cwd=REPO, env=caches.env(cache), capture_output=True,
                       text=True, timeout=LIMIT)
    assert r.returncode == 0, f"warming a private cache: {args}: {r.stderr[-3000:]}"


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    """One private cache for the cells that damage nothing, warmed: a boot and a run have
    saved their snapshots."""
    cache = caches.private()
    _warm(cache, "boot", "--", "true")
    _warm(cache, "run", "-k", FAST, "-p", "no:cacheprovider")
    yield cache
    caches.remove(cache)


@contextmanager
def _tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A real small file system (the tests run as root on our machines; else the cell
    skips): filling it gives the harness a true ENOSPC."""
    if os.geteuid() != 0:
        pytest.skip("a full disk is made with a tmpfs mount, which needs root")
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                    str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _damage(path: Path, fault: str) -> None:
    if fault == "truncated":
        os.truncate(path, path.stat().st_size // 2)
    else:  # garbage over the first 64 KiB past the first block: headers, superblock, tables
        with open(path, "r+b") as fh:
            fh.seek(1024)
            fh.write(os.urandom(65536))


def _own_copy(cache: Path, entry: str, prefix: str) -> Path:
    """Replace the link to the one shared file of ``cache``'s ``entry`` starting with
    ``prefix`` by a copy of it: the cell may damage the copy."""
    links = sorted(p for p in (cache / entry).iterdir() if p.name.startswith(prefix))
    assert links, f"no {prefix}* in {cache / entry}"
    dst = links[-1]
    src = dst.resolve()
    dst.unlink()
    subprocess.run(["cp", "--sparse=always", str(src), str(dst)], check=True)
    return dst


@contextmanager
def setup(cell: Cell, base: Path, work: Path) -> Iterator[Setup]:
    report = work / "report"
    fresh = cell.phase in ("artefact-build", "cold-boot", "snapshot-save")
    if cell.fault in ("two-harnesses",) and cell.phase == "restore":
        fresh = False
    if cell.fault in ("truncated", "corrupted"):
        fresh = True
    if not fresh:
        if cell.fault == "enospc-run":
            with _tmpfs(base / "runs", "64m") as full:
                yield Setup(base, report, {faultpoints.PATH_ENV: str(full)})
            return
        with _report_dir(cell, report) as env:
            yield Setup(base, report, env, runs=2 if cell.fault == "two-harnesses" else 1)
        return
    empty = ("initramfs", "module-disks") if cell.fault == "two-harnesses" else ("initramfs",)
    cache = caches.private(fresh=empty if cell.phase == "artefact-build" else ())
    try:
        yield from _fresh(cell, cache, report)
    finally:
        caches.remove(cache)


def _fresh(cell: Cell, cache: Path, report: Path) -> Iterator[Setup]:
    if cell.fault in ("enospc-cache", "enospc-run"):
        entry = "runs" if cell.fault == "enospc-run" else \
            "initramfs" if cell.phase == "artefact-build" else "snapshots"
        with _tmpfs(cache / entry, "64m") as full:
            yield Setup(cache, report, {faultpoints.PATH_ENV: str(full)})
        return
    if cell.fault in ("truncated", "corrupted"):
        yield _damaged(cell, cache, report)
        return
    yield Setup(cache, report, runs=2 if cell.fault == "two-harnesses" else 1)


def _damaged(cell: Cell, cache: Path, report: Path) -> Setup:
    if cell.artefact == "snapshot RAM":
        _warm(cache, "boot", "--", "true")
        snap = next(p for p in (cache / "snapshots").iterdir() if p.is_dir())
        _damage(snap / ("ram0" if cell.fault == "truncated" else "state"), cell.fault)
        return Setup(cache, report, damaged=(f"snapshots/{snap.name}",))
    if cell.artefact == "module disk":
        path = _own_copy(cache, "module-disks", "6.1.")
    else:
        path = _own_copy(cache, "images", "bookworm-")
    # a boot records the good copy and saves a snapshot over it; the cell's boot must not
    # restore that snapshot onto the artefact rebuilt from the damaged one (a cold boot)
    _warm(cache, "boot", "--", "true")
    assert atomic.recorded(path), f"no record of {path} after a boot"
    _damage(path, cell.fault)
    return Setup(cache, report, damaged=(str(path.relative_to(cache)),
                                         str(atomic.record_path(path).relative_to(cache))))


@contextmanager
def _report_dir(cell: Cell, report: Path) -> Iterator[dict[str, str]]:
    if cell.fault == "enospc-report":
        with _tmpfs(report, "1m"):
            yield {faultpoints.PATH_ENV: str(report)}
    elif cell.fault == "eacces":
        if os.geteuid() == 0:
            pytest.skip("root ignores file modes: EACCES cannot be made here")
        report.mkdir()
        report.chmod(0o500)
        yield {}
    else:
        yield {}


def _params() -> list[object]:
    out: list[object] = []
    for c in CELLS:
        marks = [pytest.mark.skip(reason=c.skip)] if c.skip else []
        if c.xfail:
            marks.append(pytest.mark.xfail(reason=c.xfail, strict=True))
        out.append(pytest.param(c, id=c.id, marks=marks))
    return out


INJECTED = {"enospc-cache": "fill", "enospc-run": "fill", "enospc-report": "fill", "eacces": "mark",
            "truncated": "mark", "corrupted": "mark", "two-harnesses": "mark"}


@pytest.mark.parametrize("cell", _params())
def test_cell(cell: Cell, base: Path, tmp_path: Path) -> None:
    with setup(cell, base, tmp_path) as s:
        phase = "cold-boot" if cell.fault in ("truncated", "corrupted") and \
            cell.phase != "restore" else cell.phase  # a damaged artefact is read by the boot
        fault = INJECTED.get(cell.fault, cell.fault)
        mark = tmp_path / "fired"
        env = caches.env(s.cache) | s.env | {faultpoints.ENV: f"{phase}:{fault}",
                                             faultpoints.MARK_ENV: str(mark)}
        before = caches.fingerprint(s.cache)
        outs = drive([_args(cell, s.report)] * s.runs, env, mark, tmp_path)
        for out in outs:
            _verdict(cell, out)
        if cell.fault == "sigkill":  # nothing could clean up: the next run must
            again = drive([["boot", "--", "true"]], caches.env(s.cache), tmp_path / "never",
                          tmp_path)[0]
            assert again.status == 0, f"the run after a SIGKILL: {again.stderr[-3000:]}"
        left = caches.leftovers(s.cache)
        assert not left, f"{cell.id}: left behind: {left}"
        if PHASE_VERB[cell.phase] == "run" and cell.status != KILLED:
            _reports_written(cell, s)
        changed = [c for c in caches.changed(before, caches.fingerprint(s.cache))
                   if not any(c.startswith(d) for d in s.damaged)]
        assert not changed, f"{cell.id}: cached files changed: {changed}"


def _verdict(cell: Cell, out: Outcome) -> None:
    why = f"{cell.id}: exit {out.status} after {out.ended:.1f}s; stderr:\n{out.stderr[-4000:]}"
    assert out.fired is not None, f"the fault never fired: {why}"
    limit = SIGNALLED if cell.fault in ("sigint", "sigterm") else PHASE_DEADLINE[cell.phase]
    if cell.fault == "sigkill":
        limit = 1.0
    assert out.ended - out.fired <= limit + GRACE, f"no verdict within {limit}+{GRACE}s: {why}"
    assert out.status == cell.status, f"{why}\nstdout:\n{out.stdout[-3000:]}"
    lines = (out.stderr + out.stdout).splitlines()
    assert any(re.search(cell.says, ln) for ln in lines), (
        f"no line matches {cell.says!r}: {why}\nstdout:\n{out.stdout[-3000:]}")
    assert "Traceback" not in out.stderr, why


def _reports_written(cell: Cell, s: Setup) -> None:
    if cell.fault in ("enospc-report", "eacces"):  # refused: the results went to a run dir
        rescued = sorted((s.cache / "runs").glob("results-*/results.json"))
        assert rescued, f"{cell.id}: results neither in the report dir nor rescued"
        assert json.loads(rescued[-1].read_text())["tests"]
        return
    junit = s.report / "junit.xml"
    assert junit.is_file() and junit.stat().st_size > 0, f"{cell.id}: no junit.xml"
    doc = json.loads((s.report / "results.json").read_text())
    assert doc["tests"], f"{cell.id}: results.json has no test"
