"""The fault matrix as data: faults x phases, what each cell must end in, and why a cell that
cannot be meaningful is left out. test_matrix.py runs the product; ``python -m
tests.faults.matrix`` prints it as the README's table (tests/unit/test_fault_table.py keeps
the two equal)."""
from __future__ import annotations

import sys
from dataclasses import dataclass

from harness.faultpoints import PHASES

BOOT_TIMEOUT, CMD_TIMEOUT = 30, 20  # boot's --boot-timeout and --timeout in the cells
PHASE_VERB = {"artefact-build": "boot", "cold-boot": "boot", "snapshot-save": "boot",
              "restore": "boot", "fixture-setup": "run", "test-body": "run",
              "teardown": "run", "report-writing": "run"}
# seconds from the fault to a verdict: the phase's deadline (a restore given up boots cold;
# a test's guest command has 30 s, then its teardown)
PHASE_DEADLINE = {"artefact-build": BOOT_TIMEOUT, "cold-boot": BOOT_TIMEOUT,
                  "snapshot-save": CMD_TIMEOUT, "restore": 2 * BOOT_TIMEOUT,
                  "fixture-setup": 60, "test-body": 60, "teardown": 60, "report-writing": 10}
SIGNALLED = 2.0  # seconds a SIGINT/SIGTERM run has to end in (README: "within 2 s")

FAULTS = {  # row -> its label in the table
    "qemu-stop": "QEMU SIGSTOP",
    "qemu-kill": "QEMU SIGKILL",
    "sigint": "SIGINT",
    "sigterm": "SIGTERM",
    "sigkill": "harness SIGKILL",
    "enospc-cache": "ENOSPC cache",
    "enospc-run": "ENOSPC run dir",
    "enospc-report": "ENOSPC report dir",
    "eacces": "EACCES report dir",
    "truncated": "artefact truncated",
    "corrupted": "artefact corrupted",
    "two-harnesses": "two harnesses, empty cache",
    "stdin-unread": "guest cmd ignores stdin",
}
KILLED = -9  # the harness itself was SIGKILLed: no status of its own


@dataclass(frozen=True)
class Cell:
    fault: str
    phase: str
    status: int | None = None    # the documented exit status
    says: str = ""               # a regular expression the one line naming the fault matches
    skip: str = ""               # why the cell cannot be meaningful (or is not automated)
    tag: str = ""                # the skip's reason in the table, short
    xfail: str = ""              # a finding not fixed yet (strict)
    artefact: str = ""           # truncated/corrupted: which cached file

    @property
    def id(self) -> str:
        return f"{self.fault}@{self.phase}"

    def outcome(self) -> str:
        if self.skip:
            return f"skip: {self.tag}"
        text = "killed" if self.status == KILLED else str(self.status)
        return f"{text} (xfail)" if self.xfail else text


def _skip(fault: str, phase: str, tag: str, why: str) -> Cell:
    return Cell(fault, phase, skip=why, tag=tag)


def _signal(fault: str, phase: str) -> Cell:
    if fault == "sigkill":  # the next run cleans up (test_matrix checks it)
        return Cell(fault, phase, KILLED, says="fault injected: sigkill")
    return Cell(fault, phase, 130 if fault == "sigint" else 143,
                says=rf"^ksm-harness: interrupted \(SIG{fault[3:].upper()}\)$")


STOPPED = "is stopped"  # VM.frozen(): what the harness says of a stopped QEMU
KILLED_QEMU = r"QEMU exited|signal 9|died"


def _qemu(fault: str, phase: str) -> Cell:
    if phase == "artefact-build":
        return _skip(fault, phase, "no QEMU", "no QEMU runs while artefacts are built")
    if phase == "report-writing":
        return _skip(fault, phase, "no QEMU", "QEMU has stopped before reports are written")
    if phase == "restore":  # not the snapshot's fault: it is kept, the guest boots cold
        return Cell(fault, phase, 0, says="booting cold .the snapshot is kept")
    status = 255 if PHASE_VERB[phase] == "boot" else 1  # boot: guest failed; run: test failed
    return Cell(fault, phase, status, says=STOPPED if fault == "qemu-stop" else KILLED_QEMU)


NO_SPACE = r"(?i)no space left"
SAME_AS = "the same as at {}: {}"


def _disk(fault: str, phase: str) -> Cell:
    if fault in ("enospc-report", "eacces"):
        if phase != "report-writing":
            return _skip(fault, phase, "no report yet",
                         "nothing is written to the report directory before the reports")
        return Cell(fault, phase, 0, says=r"cannot write \S+ in .*: (No space left|Permission)")
    if fault == "enospc-cache":
        if phase == "artefact-build":  # one line naming the file, no traceback
            return Cell(fault, phase, 2, says=NO_SPACE)
        if phase == "snapshot-save":  # costs only the speed-up
            return Cell(fault, phase, 0, says=r"(?i)no snapshot saved: .*no space left")
        return _skip(fault, phase, "cache not written",
                     "only artefact builds and snapshot saves write the cache (runs: ENOSPC "
                     "run dir)")
    if phase == "report-writing":
        return _skip(fault, phase, "run dir done",
                     "QEMU has stopped: nothing more is written to the run directory")
    # a tmpfs run directory filled while the guest runs (its console log and disk overlay
    # are there): before QEMU starts, its initrd cannot be written (a host file fault: one
    # line naming it, exit 2); at a cold boot the guest cannot mount its root disk (the
    # overlay cannot grow): it did not boot (255), and a line says the run directory is
    # full; later, the guest's command or test goes on to its own verdict (here 0), and a
    # line says the console log was cut short or the run directory is full
    if phase == "artefact-build":
        return Cell(fault, phase, 2, says=NO_SPACE)
    return Cell(fault, phase, 255 if phase == "cold-boot" else 0, says=NO_SPACE)


ARTEFACT_OF = {"artefact-build": "module disk", "cold-boot": "root image",
               "restore": "snapshot RAM"}


def _artefact(fault: str, phase: str) -> Cell:
    if phase == "snapshot-save":
        return _skip(fault, phase, "not cached yet", "a snapshot being saved is not cached yet")
    if phase not in ARTEFACT_OF:
        return _skip(fault, phase, "read at boot",
                     "every cached artefact is read before the guest is up")
    if phase == "restore":  # QEMU refuses it: removed, boot cold, a new one saved
        return Cell(fault, phase, 0, says="removed a snapshot QEMU could not load",
                    artefact=ARTEFACT_OF[phase])
    # checked against the size and checksum recorded when it was built: named, removed,
    # rebuilt; the guest boots cold on it (a snapshot taken over the old one is not restored)
    what = "module disk" if ARTEFACT_OF[phase] == "module disk" else "guest image"
    return Cell(fault, phase, 0, says=rf"^ksm-harness: cached {what} \S+ is damaged "
                rf"\({'truncated' if fault == 'truncated' else 'corrupted'}: .*rebuilding it$",
                artefact=ARTEFACT_OF[phase])


def _other(fault: str, phase: str) -> Cell:
    if fault == "two-harnesses":
        if phase in ("artefact-build", "snapshot-save", "restore"):
            # both guests up (only one of them reaches a save: the other finds it locked)
            return Cell(fault, phase, 0, says=r"^ksm-harness: guest ready in")
        return _skip(fault, phase, "nothing shared",
                     "once guests are up two harnesses share nothing (each its own VM)")
    if phase == "test-body":
        return _skip(fault, phase, "tests/guest",
                     "a guest-side fault the host hook cannot make; it is "
                     "tests/guest/test_stdin_unread.py: a put's `cat > FILE` that never reads "
                     "(the one large stdin write; a workload takes one short line at a time, "
                     "so one that stops reading does not answer: the hang verdict)")
    return _skip(fault, phase, "no stdin",
                 "the harness writes a guest command's stdin only in a test body")


def cell(fault: str, phase: str) -> Cell:
    if fault in ("sigint", "sigterm", "sigkill"):
        return _signal(fault, phase)
    if fault in ("qemu-stop", "qemu-kill"):
        return _qemu(fault, phase)
    if fault.startswith(("enospc", "eacces")):
        return _disk(fault, phase)
    if fault in ("truncated", "corrupted"):
        return _artefact(fault, phase)
    return _other(fault, phase)


CELLS = [cell(f, p) for f in FAULTS for p in PHASES]

# the README's rows: faults of one kind share a row (its cells "a / b" where they differ),
# so the table fits the README's page budget
ROWS = (("qemu-stop", "qemu-kill", "sigint", "sigterm", "sigkill"),
        ("enospc-cache", "enospc-run", "enospc-report", "eacces"),
        ("truncated", "corrupted", "two-harnesses", "stdin-unread"))
HEADER = "fault (`tests/faults/`: exit status)"


def _joined(texts: list[str]) -> str:
    return texts[0] if len(set(texts)) == 1 else " / ".join(texts)


def markdown() -> str:
    """The matrix as a Markdown table: a row per kind of fault, a column per phase."""
    assert sorted(f for row in ROWS for f in row) == sorted(FAULTS), "ROWS must hold every fault"
    lines = [f"| {HEADER} | " + " | ".join(PHASES) + " |",
             "| --- |" + " --- |" * len(PHASES)]
    for row in ROWS:
        label = " / ".join(FAULTS[f] for f in row)
        cells = [_joined([cell(f, p).outcome() for f in row]) for p in PHASES]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown())
