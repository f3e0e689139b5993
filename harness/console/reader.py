"""The serial console: QEMU's stdio on a pexpect pty, drained by one reader thread.

The thread never stops reading (a full pty would stall the guest), writes every byte to the
VM's console log, splits lines and hands each to listeners (the ready marker, the crash
classifier). Waiting code blocks on a condition over the line list, with a deadline.
The console also carries a root shell (harness.access.console_shell): the second channel
when SSH is dead.
"""
from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import pexpect

from harness.paths import open_private

Listener = Callable[[str], None]
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class ConsoleTimeout(Exception):
    def __init__(self, what: str, timeout: float, tail: str) -> None:
        self.what, self.timeout, self.tail = what, timeout, tail
        super().__init__(f"timed out after {timeout:.0f}s waiting for {what}; console tail:\n{tail}")


class Console:
    def __init__(self, child: pexpect.spawn, log_path: Path) -> None:
        self.child = child
        self.log_path = log_path
        self._log: BinaryIO | None = open_private(log_path, append=True)  # 0600: guest text
        self.log_error = ""  # why the console log was cut short ("" while it is whole)
        self.lines: list[str] = []
        self.times: list[float] = []  # host monotonic time each line completed
        self._partial = ""
        self._cond = threading.Condition()
        self._listeners: list[Listener] = []
        self.last_output = time.monotonic()
        self.closed = False
        self._thread = threading.Thread(target=self._reader, name="console-reader", daemon=True)
        self._thread.start()

    # --- reading -------------------------------------------------------------------------
    def add_listener(self, fn: Listener) -> None:
        """Call ``fn`` with every line so far, then with each new line, from the reader
        thread while it holds this console's lock (so a waiter that sees a line knows every
        listener has seen it): ``fn`` must not wait on this console."""
        with self._cond:
            for line in self.lines:
                fn(line)
            self._listeners.append(fn)

    def _reader(self) -> None:
        while True:
            try:
                data = self.child.read_nonblocking(65536, timeout=0.5)
            except pexpect.TIMEOUT:
                continue
            except (pexpect.EOF, pexpect.ExceptionPexpect, OSError, ValueError):
                break  # QEMU is gone (ExceptionPexpect: another thread reaped it first)
            if not data:
                continue
            raw = data if isinstance(data, bytes) else data.encode()
            self._write_log(raw)
            self._feed(raw.decode("utf-8", "replace"))
        with self._cond:
            if self._partial:
                self._emit([self._partial])
                self._partial = ""
            self.closed = True
            self._cond.notify_all()
        if self._log is not None:
            with contextlib.suppress(OSError):
                self._log.close()

    def _write_log(self, raw: bytes) -> None:
        """Append to the console log; a write that fails (a full or vanished run directory)
        ends the log, never the drain: the lines stay in memory for the verdict, and
        ``log_error`` says where the log was cut short and why (the VM says it when it
        stops, from the main thread)."""
        if self._log is None:
            return
        try:
            self._log.write(raw)
        except OSError as e:
            with contextlib.suppress(OSError):
                self._log.close()
            self._log = None
            self.log_error = (f"console log {self.log_path} cut short: "
                              f"{e.strerror or e} (the console is still read)")

    def _feed(self, text: str) -> None:
        text = self._partial + text.replace("\r", "")
        *done, self._partial = text.split("\n")
        with self._cond:
            self.last_output = time.monotonic()
            if done:
                self._emit(done)
            self._cond.notify_all()

    def _emit(self, lines: list[str]) -> None:
        lines = [_ANSI.sub("", line) for line in lines]
        now = time.monotonic()
        self.lines.extend(lines)
        self.times.extend(now for _ in lines)
        for line in lines:
            for fn in list(self._listeners):
                try:
                    fn(line)
                except Exception:  # a listener bug must not stop the console drain
                    pass

    # --- waiting ------------------------------------------------------------------------
    def mark(self) -> int:
        """Index of the next line: pass to wait_for to look only at later output."""
        with self._cond:
            return len(self.lines)

    def wait_for(self, pattern: str | re.Pattern[str], timeout: float, start: int = 0,
                 what: str | None = None,
                 abort: Callable[[], str | None] | None = None) -> re.Match[str]:
        """First line from ``start`` matching ``pattern``. ``abort`` may return a reason to
        stop early (e.g. QEMU died); that and the deadline raise ConsoleTimeout."""
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        pos = start
        with self._cond:
            while True:
                while pos < len(self.lines):
                    m = rx.search(self.lines[pos])
                    pos += 1
                    if m:
                        return m
                if self._partial:
                    m = rx.search(self._partial)
                    if m:
                        return m
                why = abort() if abort else None
                if why or self.closed:
                    raise ConsoleTimeout(f"{what or rx.pattern} ({why or 'console closed'})",
                                         timeout - (deadline - time.monotonic()), self.tail())
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ConsoleTimeout(what or rx.pattern, timeout, self.tail())
                self._cond.wait(min(left, 0.25))

    def wait_for_line(self, text: str, timeout: float, start: int = 0) -> int | None:
        """Index of the first complete line from ``start`` that contains ``text``; None past
        the deadline or when the console closed (the caller decides what that means)."""
        deadline = time.monotonic() + timeout
        pos = start
        with self._cond:
            while True:
                while pos < len(self.lines):
                    if text in self.lines[pos]:
                        return pos
                    pos += 1
                left = deadline - time.monotonic()
                if left <= 0 or self.closed:
                    return None
                self._cond.wait(min(left, 0.25))

    def arrived(self, index: int) -> float | None:
        """Host wall time (time.time()) at which line ``index`` reached us, if it has."""
        with self._cond:
            if not 0 <= index < len(self.times):
                return None
            return time.time() - (time.monotonic() - self.times[index])

    def tail(self, n: int = 40) -> str:
        with self._cond:
            lines = self.lines[-n:] + ([self._partial] if self._partial else [])
        return "\n".join(lines)

    def text(self, start: int = 0, end: int | None = None) -> str:
        with self._cond:
            return "\n".join(self.lines[start:end])

    def silent_for(self) -> float:
        return time.monotonic() - self.last_output

    # --- writing ------------------------------------------------------------------------
    def send(self, text: str) -> None:
        if not self.closed:
            self.child.send(text)

    def close(self) -> None:
        self._thread.join(timeout=2)
