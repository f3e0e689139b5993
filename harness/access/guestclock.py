"""Deadlines counted in the time the guest could run, not in wall time.

On a host busier than it has cores (a CI runner with a second job, a kernel build beside
us), QEMU's threads wait on the host's run queue: a guest that needed 20 s of CPU for a
command gets it over minutes, and a wall-clock deadline would call that a hang of the
kernel under test. The kernel tells how long each thread waited for a CPU
(``/proc/PID/task/TID/schedstat``, second field: run_delay in ns), so a :class:`Budget`
subtracts that wait: it ends when the guest had ``seconds`` in which it could run. A stopped
or idle (deadlocked) guest's threads are not runnable and accrue no run_delay, so for them
the budget is wall time, as before. ``cap`` bounds the stretch: past ``cap`` times
``seconds`` of wall time a budget ends whatever the host did, and says the host starved the
guest."""
from __future__ import annotations

import time
from pathlib import Path

STARVED_CAP = 4.0      # a budget lasts at most this many times its seconds of wall time
SAMPLE_EVERY = 0.5     # seconds between two reads of QEMU's schedstat files
WORTH_SAYING = 0.25    # a starved share below this is not mentioned


def run_delays(pid: int) -> dict[int, float]:
    """Seconds each thread of ``pid`` has waited for a host CPU; {} when unreadable (no
    schedstat in the host kernel, or the process is gone)."""
    delays: dict[int, float] = {}
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return delays
    for task in tasks:
        try:
            fields = (task / "schedstat").read_text().split()
            delays[int(task.name)] = int(fields[1]) / 1e9
        except (OSError, IndexError, ValueError):
            continue
    return delays


class Budget:
    """``seconds`` of time in which QEMU ``pid`` could run (wall time without ``pid``)."""

    def __init__(self, seconds: float, pid: int | None = None,
                 cap: float = STARVED_CAP) -> None:
        self.seconds, self.pid, self.cap = seconds, pid, cap
        self.t0 = time.monotonic()
        self._base = run_delays(pid) if pid is not None else {}
        self._starved = 0.0
        self._sampled = self.t0

    def starved(self, fresh: bool = False) -> float:
        """Seconds of this budget's wall time in which the guest waited for a host CPU
        (its most delayed thread's wait: the vCPU running the work); read at most every
        SAMPLE_EVERY unless ``fresh``."""
        now = time.monotonic()
        if self.pid is not None and (fresh or now - self._sampled >= SAMPLE_EVERY):
            self._sampled = now
            delays = run_delays(self.pid)
            if delays:  # a gone QEMU keeps the last figure
                self._starved = max((d - self._base.get(tid, 0.0) for tid, d in delays.items()),
                                    default=0.0)
        return min(max(self._starved, 0.0), now - self.t0)

    def wall(self) -> float:
        return time.monotonic() - self.t0

    def used(self) -> float:
        """Seconds of the budget spent: the wall time the guest could run."""
        return self.wall() - self.starved()

    def over(self) -> bool:
        if self.capped():
            return True
        # a stale reading undercounts the wait: look again before calling the budget spent
        return self.used() >= self.seconds and self.wall() - self.starved(fresh=True) >= self.seconds

    def capped(self) -> bool:
        """Ended by the wall-time cap, not by the guest's own time."""
        return self.wall() >= self.seconds * self.cap

    def left(self) -> float:
        """Wall seconds until the budget could end at the earliest (for a wait's slice)."""
        return max(0.0, min(self.seconds - self.used(), self.seconds * self.cap - self.wall()))

    def note(self) -> str:
        """``'; the host starved the guest: ...'`` when it waited long for a CPU, else ''."""
        wall, starved = self.wall(), self.starved()
        if wall <= 0 or starved / wall < WORTH_SAYING:
            return ""
        return (f"; the host starved the guest: QEMU waited {starved:.0f}s of the "
                f"{wall:.0f}s for a host CPU")
