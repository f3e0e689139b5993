"""Races with evidence: guest-side timestamps (CLOCK_MONOTONIC, microseconds) around the
syscalls that race, the overlap they prove, and :class:`RaceNotExercised` for a scenario
whose precondition was not reached (the pytest layer turns the last one into a skip that says
"race not exercised", never a pass).

The timestamps come from the C workload run once per command (``ksmwork write PATH VALUE``,
``ksmwork swapoff DEV``, ``ksmwork waitexit PID``): each brackets exactly one syscall, so an
interval is the syscall's own, not an SSH round trip's.
"""
from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from harness.access.background import Background
from harness.access.remote import Spawner, quote
from harness.ksm.control import Ksm
from harness.ksm.model import (
    EXACT_COUNTERS,
    POLL_MAX,
    ZERO_COUNTS,
    count_mismatches,
    describe_mismatches,
)
from harness.ksm.sysfs import KSM_DIR, RUN_MERGE, RUN_UNMERGE, KsmError, KsmWriteError
from harness.workloads import DataCorruption, Workload, WorkloadError, WorkloadTimeout

_STAMP = re.compile(r"\b(t0|t1|t|rc|wt0|wt1|wrc)=(-?\w+)")


class RaceNotExercised(Exception):
    """The race's precondition was not reached (the reason says which, with the figures):
    the scenario proves nothing this time and may try again."""


@dataclass(frozen=True)
class Interval:
    """[t0, t1] in guest CLOCK_MONOTONIC microseconds."""

    what: str
    t0: int
    t1: int

    @property
    def seconds(self) -> float:
        return (self.t1 - self.t0) / 1e6

    def overlap(self, other: Interval) -> float:
        """Seconds both intervals cover (<= 0: they did not overlap)."""
        return (min(self.t1, other.t1) - max(self.t0, other.t0)) / 1e6

    def contains(self, t: int) -> bool:
        return self.t0 <= t <= self.t1

    def describe(self, origin: int | None = None) -> str:
        o = self.t0 if origin is None else origin
        return f"{self.what} [{(self.t0 - o) / 1e6:+.3f}s, {(self.t1 - o) / 1e6:+.3f}s]"


def parse_stamps(text: str) -> dict[str, str]:
    """``t0=.. t1=.. rc=..`` (or ``t=..``) from a one-shot ksmwork's output."""
    return {k: v for k, v in _STAMP.findall(text)}


@dataclass
class RaceRecord:
    """What one attempt at a race measured: the intervals, the facts checked before it (the
    precondition) and a one-line overlap summary for the test's output and properties."""

    scenario: str
    intervals: list[Interval] = field(default_factory=list)
    facts: dict[str, object] = field(default_factory=dict)

    def add(self, interval: Interval) -> Interval:
        self.intervals.append(interval)
        return interval

    def overlap(self, a: str, b: str) -> float:
        ia = next(i for i in self.intervals if i.what == a)
        ib = next(i for i in self.intervals if i.what == b)
        return ia.overlap(ib)

    def exercised(self) -> RaceRecord:
        """Say (in the test's output) that the precondition held, before any outcome check
        can fail: a failure's output then shows the overlap it failed under."""
        print(f"race exercised: {self.summary()}")
        return self

    def summary(self) -> str:
        origin = min((i.t0 for i in self.intervals), default=None)
        parts = [i.describe(origin) for i in self.intervals]
        parts += [f"{k}={v}" for k, v in self.facts.items()]
        return f"{self.scenario}: " + "; ".join(parts)


class TimedCommand:
    """A one-shot ksmwork (write, swapoff, waitexit) running in the background in the guest;
    :meth:`wait` gives its timestamps and errno."""

    def __init__(self, spawner: Spawner, binary: str, what: str, *args: str) -> None:
        self.what = what
        self.command = Background(spawner, " ".join(quote(a) for a in (binary, *args)))

    def done(self) -> bool:
        return self.command.done()

    def wait_for_line(self, text: str, timeout: float = 60.0) -> None:
        """Until the command printed ``text`` (e.g. waitexit's "armed"), or it ended."""
        deadline = time.monotonic() + timeout
        while text not in self.command.lines:
            if self.command.done():
                return  # wait() reports how it ended
            if time.monotonic() > deadline:
                raise KsmError(f"{self.what}: no '{text}' within {timeout:.0f}s")

    def wait(self, timeout: float = 300.0) -> tuple[str, dict[str, str]]:
        """(errno name or "0", every stamp); CommandTimeout past ``timeout`` (a hang)."""
        _, output, _ = self.command.wait(timeout)
        stamps = parse_stamps(output)
        if "rc" not in stamps:
            raise KsmError(f"{self.what}: no timestamps in the output of "
                           f"{self.command.cmd!r}: {output[-300:]}")
        return stamps["rc"], stamps

    def interval(self, timeout: float = 300.0, check: bool = True) -> Interval:
        rc, stamps = self.wait(timeout)
        if check and rc != "0":
            raise KsmError(f"{self.what} failed with {rc}: {self.command.output[-200:]}")
        return Interval(self.what, int(stamps["t0"]), int(stamps["t1"]))


def timed_ksm_write(spawner: Spawner, binary: str, name: str, value: int | str,
                    ksm_dir: str = KSM_DIR) -> TimedCommand:
    """Write VALUE to KSM's NAME in the background with guest timestamps around write(2)."""
    if not re.fullmatch(r"[a-z_]+", name) or not re.fullmatch(r"[A-Za-z0-9_-]+", str(value)):
        raise ValueError(f"refusing odd KSM write {name}={value!r}")
    return TimedCommand(spawner, binary, f"{name}={value}", "write", f"{ksm_dir}/{name}",
                        str(value))


def write_interval(cmd: TimedCommand, name: str, value: int | str,
                   timeout: float = 300.0) -> Interval:
    """The write's interval; KsmWriteError (with the errno) when the kernel refused it."""
    rc, stamps = cmd.wait(timeout)
    if rc != "0":
        raise KsmWriteError(name, value, rc, cmd.command.output[-200:])
    return Interval(cmd.what, int(stamps["t0"]), int(stamps["t1"]))


def swapoff_during_write(spawner: Spawner, binary: str, name: str, value: int | str,
                         device: str, ksm_dir: str = KSM_DIR) -> TimedCommand:
    """swapoff(DEVICE) begun in the guest just after a write of VALUE to KSM's NAME began
    (one guest program: the host's latency cannot reorder them); see
    :func:`swapoff_write_intervals`."""
    return TimedCommand(spawner, binary, "swapoff", "swapoff-during", ksm_file(name, ksm_dir),
                        str(value), device)


def swapoff_write_intervals(cmd: TimedCommand, name: str, value: int | str,
                            timeout: float = 300.0) -> tuple[Interval, Interval]:
    """(the write's interval, swapoff's); KsmWriteError when the kernel refused the write,
    KsmError when swapoff failed."""
    rc, stamps = cmd.wait(timeout)
    if stamps.get("wrc", "?") != "0":
        raise KsmWriteError(name, value, stamps.get("wrc", "no result"),
                            cmd.command.output[-200:])
    if rc != "0":
        raise KsmError(f"swapoff failed with {rc}: {cmd.command.output[-200:]}")
    return (Interval(f"{name}={value}", int(stamps["wt0"]), int(stamps["wt1"])),
            Interval("swapoff", int(stamps["t0"]), int(stamps["t1"])))


def ksm_file(name: str, ksm_dir: str = KSM_DIR) -> str:
    """The path of one KSM file (for a workload that writes it itself)."""
    if not re.fullmatch(r"[a-z_]+", name):
        raise ValueError(f"odd KSM file name {name!r}")
    return f"{ksm_dir}/{name}"


class Afresh:
    """Where a race scenario stood before its first attempt, and the way back there before
    each retry: a missed attempt's workloads and merged pages would otherwise count in the
    next attempt's expected counters (a false alarm: "pages_sharing is 10901, expected 5610").

    Taken before the first attempt: the KSM ``run`` value, the exact counters, how many
    workloads the test had started (``workloads`` is the test's own list, which grows).
    :meth:`restore` stops every workload started since and the children forked since by the
    earlier ones, unmerges everything (run=2), puts ``run`` back and waits, by polling the
    counters, for the baseline: with ksmd merging before (run=1) the counters as they were
    then (ksmd merges the earlier workloads again; unless the attempt ended one of them),
    otherwise nothing merged."""

    def __init__(self, ksm: Ksm, workloads: Sequence[Workload], timeout: float = 300.0) -> None:
        self.ksm = ksm
        self.workloads = workloads
        self.timeout = timeout
        self.kept = len(workloads)
        self.had_children = [bool(w.children_pids) for w in workloads]
        snap = ksm.exact_counters()
        self.run = snap["run"]
        self.baseline = ({n: snap[n] for n in EXACT_COUNTERS if n in snap}
                         if self.run == RUN_MERGE else dict(ZERO_COUNTS))

    def restore(self) -> str:
        """Back to the state before the first attempt; one line saying what was undone.
        A workload that hangs or reports corruption on its way out raises (that is a
        finding, not a miss); so does a baseline not reached within the deadline."""
        done = [f"stopped {w.name}" for w in self._stop(list(self.workloads[self.kept:]))]
        for w, had in zip(self.workloads[:self.kept], self.had_children):
            if w.children_pids and not had and w.exit_status is None:
                self._check_exits(w.name + "'s children", w.children_exit(timeout=120))
                done.append(f"{w.name}'s children exited")
        self._unmerge()
        if self.run != RUN_UNMERGE:
            self.ksm.set("run", self.run)
        done.append(f"run=2, then run={self.run}")
        gone = [w.name for w in self.workloads[:self.kept] if w.exit_status is not None]
        if self.run == RUN_MERGE and not gone:
            self.ksm.wait_counts(self.baseline, what="back at the first attempt's baseline")
            done.append("counters at the first attempt's baseline")
        elif self.run == RUN_MERGE:
            # the attempt ended workloads of the test's own, whose pages were part of the
            # baseline: ksmd merges what the others hold, which the next attempt waits for
            done.append(f"no baseline to wait for ({', '.join(gone)} ended by the attempt)")
        else:
            done.append("nothing merged")
        return "; ".join(done)

    def _stop(self, started: list[Workload]) -> list[Workload]:
        """Ask each of a missed attempt's workloads to exit (kill it when it cannot)."""
        stopped = []
        for w in reversed(started):
            if w.exit_status is not None:
                continue
            stopped.append(w)
            if w.busy:  # a command begun by the attempt and never collected
                try:
                    w.finish(timeout=120)
                except DataCorruption:
                    raise
                except WorkloadError:
                    pass
            try:
                status = w.exit(timeout=120, check=False)
            except (DataCorruption, WorkloadTimeout):  # a hang or corruption is a finding
                w.kill()
                raise
            except WorkloadError:  # already dead (e.g. OOM-killed) or unusable
                w.kill()
                continue
            self._check_exits(w.name, [status])
        return stopped

    @staticmethod
    def _check_exits(what: str, statuses: list[int]) -> None:
        if any(s == 1 for s in statuses):
            raise WorkloadError(f"{what} exited with status 1 after a missed race attempt: "
                                "the workload detected data corruption", what, "exit")

    def _unmerge(self) -> None:
        """run=2 until every counter is 0: a new run=2 also drops the stable nodes an
        earlier one had to leave (pages of an mm exiting at that moment)."""
        deadline = time.monotonic() + self.timeout
        interval = 0.05
        while True:
            snap = self.ksm.unmerge_all(self.timeout)
            left = count_mismatches(snap, ZERO_COUNTS)
            if not left:
                return
            if time.monotonic() >= deadline:
                raise KsmError(f"a retried race attempt cannot start from nothing: after "
                               f"run=2 {describe_mismatches(left)} ({snap.summary()})")
            time.sleep(interval)  # a poll interval: the exits' teardown is asynchronous
            interval = min(interval * 1.5, POLL_MAX)
