"""Phase boundaries a fault can be injected at (tests/faults/, the fault matrix).

The harness calls ``reached(phase)`` at each boundary of a guest's life. It does nothing
unless ``KSM_HARNESS_INJECT=phase:fault[:nth]`` names that phase; then, at the nth time the
phase is reached (default 1st), it writes one marker line to stderr and to the file
``KSM_HARNESS_INJECT_MARK`` (pytest captures stderr), so the test knows the fault fired (a
cell whose fault never fires fails), and performs the fault in this process.
Faults the file system must make real (a full disk, a refused directory) are set up by the
test; here ``fill`` only fills the file system of ``KSM_HARNESS_INJECT_PATH`` at the moment.

No harness imports: every layer calls it.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path

ENV, PATH_ENV = "KSM_HARNESS_INJECT", "KSM_HARNESS_INJECT_PATH"
MARK_ENV = "KSM_HARNESS_INJECT_MARK"
MARKER = "ksm-harness: fault injected:"
PHASES = ("artefact-build", "cold-boot", "snapshot-save", "restore", "fixture-setup",
          "test-body", "teardown", "report-writing")
# fault -> what it does (QEMU's: every QEMU this process runs; the harness's: its own
# process group, as Ctrl-C or a CI runner's kill would)
FAULTS = {
    "qemu-stop": "SIGSTOP to QEMU",
    "qemu-kill": "SIGKILL to QEMU",
    "sigint": "SIGINT to the harness's process group",
    "sigterm": "SIGTERM to the harness's process group",
    "sigkill": "SIGKILL to the harness's process group",
    "fill": "fill the file system of $KSM_HARNESS_INJECT_PATH",
    "mark": "nothing but the marker: the test made the fault (a damaged file, a second run)",
}
_qemus: set[int] = set()
_seen: dict[str, int] = {}


def qemu_started(pid: int) -> None:
    _qemus.add(pid)


def qemu_stopped(pid: int) -> None:
    _qemus.discard(pid)


def _wanted() -> tuple[str, str, int] | None:
    spec = os.environ.get(ENV, "")
    if not spec:
        return None
    phase, _, rest = spec.partition(":")
    fault, _, nth = rest.partition(":")
    if phase not in PHASES or fault not in FAULTS or (nth and not nth.isdigit()):
        raise ValueError(f"{ENV}={spec!r}: want PHASE:FAULT[:N], PHASE one of "
                         f"{', '.join(PHASES)}, FAULT one of {', '.join(FAULTS)}")
    return phase, fault, int(nth or 1)


def reached(phase: str, what: str = "") -> None:
    """Called by the harness at the start of ``phase`` (``what``: e.g. the artefact)."""
    assert phase in PHASES, phase
    wanted = _wanted()
    if wanted is None or wanted[0] != phase:
        return
    _seen[phase] = _seen.get(phase, 0) + 1
    if _seen[phase] != wanted[2]:
        return
    fault = wanted[1]
    if fault.startswith("qemu-") and not _qemus:
        print(f"ksm-harness: fault not injected: {fault} at {phase}: no QEMU running",
              file=sys.stderr, flush=True)
        return
    line = f"{MARKER} {fault} at {phase}{f' ({what})' if what else ''}"
    print(line, file=sys.stderr, flush=True)
    if os.environ.get(MARK_ENV):
        with open(os.environ[MARK_ENV], "a") as fh:
            fh.write(line + "\n")
    _inject(fault)


def _inject(fault: str) -> None:
    if fault in ("qemu-stop", "qemu-kill"):
        sig = signal.SIGSTOP if fault == "qemu-stop" else signal.SIGKILL
        for pid in sorted(_qemus):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            # done when the kernel says so: every thread stopped, or the process dead
            # (a killed QEMU frees GBs of guest RAM first: seconds on a loaded host)
            _wait_state(pid, ("T", "t") if fault == "qemu-stop" else ("Z", "X", "gone"),
                        timeout=15.0)
    elif fault == "fill":
        fill(Path(os.environ[PATH_ENV]))
    elif fault != "mark":
        os.killpg(os.getpgrp(), {"sigint": signal.SIGINT, "sigterm": signal.SIGTERM,
                                 "sigkill": signal.SIGKILL}[fault])
        # the handler raises at the next bytecode (SIGKILL ends us at once): poll for it,
        # bounded, so a signal the harness does not handle is not waited on for nothing
        end = time.monotonic() + 0.5
        while time.monotonic() < end:
            time.sleep(0.01)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "gone"


def _wait_state(pid: int, states: tuple[str, ...], timeout: float = 2.0) -> None:
    end = time.monotonic() + timeout
    while _state(pid) not in states and time.monotonic() < end:
        time.sleep(0.005)


def fill(directory: Path) -> None:
    """Write zeros into ``directory`` until its file system is full (ENOSPC)."""
    block = b"\0" * (1 << 16)
    with open(directory / ".ksm-harness-fill", "ab", buffering=0) as fh:
        with contextlib.suppress(OSError):
            while True:
                fh.write(block)
