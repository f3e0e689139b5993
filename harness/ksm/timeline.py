"""KSM counters over a scenario's life (plotted by harness.results.plot).

One python3 in the guest reads the counters every ``interval`` and prints a line: one
process for the whole test, because a fork/exec per sample would cost a third of a TCG CPU
and disturb the very scanning we measure. Phases come from the workload commands the
harness sent: a program spawned while a sampler runs is a :class:`PhasedProcess`.
"""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from harness.access.remote import CommandTimeout, GuestBroken, Process
from harness.ksm.sysfs import KSM_DIR

SERIES = ("pages_shared", "pages_sharing", "pages_unshared", "full_scans")
_SAMPLER = ("import os,sys,time\n"
            f"d='{KSM_DIR}'\n"
            "while True:\n"
            " v={}\n"
            " for n in os.listdir(d):\n"
            "  try: v[n]=open(os.path.join(d,n)).read().strip()\n"
            "  except OSError: pass\n"
            " print(' '.join(k+'='+x for k,x in sorted(v.items()) if x.lstrip('-').isdigit()),"
            " flush=True)\n"
            " time.sleep({interval})\n")


@dataclass
class Timeline:
    samples: list[tuple[float, dict[str, int]]] = field(default_factory=list)
    phases: list[tuple[float, str]] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps({"samples": self.samples, "phases": self.phases})


class Sampler:
    def __init__(self, spawn: Callable[[str], Process], interval: float = 0.5) -> None:
        self.timeline = Timeline()
        self.t0 = time.monotonic()
        self._proc: Process = spawn("python3 -u -c " + _shell_quote(
            _SAMPLER.replace("{interval}", str(interval))))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="ksm-sampler", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                line = self._proc.read_line(timeout=5)
            except CommandTimeout as exc:
                if isinstance(exc, GuestBroken) or self._stop.is_set():
                    return  # the guest is gone or broken: nothing more to sample
                continue
            except (EOFError, OSError):
                return
            values = {}
            for part in line.split():
                name, _, value = part.partition("=")
                try:
                    values[name] = int(value)
                except ValueError:
                    pass
            if values:
                self.timeline.samples.append((time.monotonic() - self.t0, values))

    def phase(self, label: str, at: float | None = None) -> None:
        self.timeline.phases.append(((at or time.monotonic()) - self.t0, label))

    def stop(self) -> Timeline:
        self._stop.set()
        try:
            self._proc.kill()
        except Exception:
            pass
        self._thread.join(timeout=6)
        return self.timeline


class PhasedProcess:
    """A guest program (harness.access.remote.Process) whose every line sent, a workload
    command, is first recorded as a phase of the running test's timeline."""

    def __init__(self, proc: Process, sampler: Sampler) -> None:
        self.proc = proc
        self.sampler = sampler

    def send_line(self, line: str) -> None:
        self.sampler.phase(" ".join(line.split()[:2]))
        self.proc.send_line(line)

    def read_line(self, timeout: float) -> str:
        return self.proc.read_line(timeout)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def kill(self) -> None:
        self.proc.kill()

    def stderr(self) -> str:
        return self.proc.stderr()


def _shell_quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"
