"""SSH to the guest: fabric's Connection for the login, paramiko channels for commands and
files, the guest's host key pinned, every step bounded by a deadline (a frozen guest must
never block us: paramiko's channel requests, exec_command among them, wait for the guest's
answer with no timeout at all).

Every paramiko call that can block runs inside :class:`Deadline` (a host test scans the
source for calls outside it): past its deadline the transport is closed, which wakes every
wait of paramiko's, and the call ends in :class:`SSHDeadline`."""
from __future__ import annotations

import itertools
import logging
import shlex
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import paramiko
from fabric import Connection

from harness.access.guestclock import SAMPLE_EVERY, Budget
from harness.access.remote import (
    Abort,
    CommandFailed,
    CommandResult,
    CommandTimeout,
    GuestBroken,
)

# Before sshd listens, QEMU's hostfwd accepts and resets connections: paramiko's transport
# thread would log a traceback for each retry.
logging.getLogger("paramiko").setLevel(logging.CRITICAL)


class SSHUnavailable(Exception):
    pass


# Past a loop's own deadline (its checks come every 0.2 s), before the watchdog steps in.
GRACE = 2.0
SEND_TIMEOUT = 60.0  # a workload's command line: the guest takes it at once when alive


class SSHDeadline(CommandTimeout):
    """The guest did not answer a paramiko call within its deadline; the SSH connection was
    closed to end the wait (a frozen or stopped guest)."""

    def __init__(self, command: str, step: str, timeout: float, waited: float,
                 console: str = "") -> None:
        super().__init__(command, timeout)
        self.step = step
        last = f"; the console's last line: {console.strip()!r}" if console.strip() else ""
        self.args = (f"no answer from the guest for {waited:.1f}s while {step} ({command}); "
                     f"SSH connection closed to stop waiting{last}",)

    def __str__(self) -> str:
        return str(self.args[0])


class _Watchdog:
    """One thread for every Deadline (a thread per call cost ~0.5 ms on a busy host): it
    sleeps until the earliest armed deadline and runs the expiry of each one past due."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._armed: dict[int, tuple[Budget, Callable[[], None]]] = {}
        self._keys = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, budget: Budget, expire: Callable[[], None]) -> int:
        with self._cond:
            key = next(self._keys)
            self._armed[key] = (budget, expire)
            if self._thread is None or not self._thread.is_alive():  # first use, or forked
                self._thread = threading.Thread(target=self._run, name="ssh-deadlines",
                                                daemon=True)
                self._thread.start()
            self._cond.notify()
            return key

    def disarm(self, key: int) -> None:
        with self._cond:
            self._armed.pop(key, None)

    def _run(self) -> None:
        while True:
            with self._cond:
                due = [k for k, (b, _) in self._armed.items() if b.over()]
                expired = [self._armed.pop(k)[1] for k in due]
                if not expired:
                    # a budget that counts the guest's time moves slower than the clock:
                    # look again within SAMPLE_EVERY
                    first = min((b.left() if b.pid is None else min(b.left(), SAMPLE_EVERY)
                                 for b, _ in self._armed.values()), default=60.0)
                    self._cond.wait(max(first, 0.01))
                    continue
            for expire in expired:  # outside the lock: closing a transport takes a while
                expire()


_WATCHDOG = _Watchdog()


class Deadline:
    """``with Deadline(...) as d:`` around every paramiko call that can block. A watchdog
    timer calls ``give_up`` (closing the transport: every blocked paramiko wait then
    returns or raises) once ``seconds`` have passed; the block then ends in SSHDeadline,
    naming ``d.step``, whatever the interrupted call raised or returned."""

    def __init__(self, command: str, seconds: float, give_up: Callable[[], None],
                 step: str = "waiting", console: Callable[[], str] | None = None,
                 pid: int | None = None) -> None:
        self.command, self.seconds, self.step = command, seconds, step
        self._give_up, self._console, self._pid = give_up, console, pid
        self.budget = Budget(seconds)
        self._lock = threading.Lock()
        self._done = self._fired = False
        self._stuck = step
        self._key = -1

    def _expire(self) -> None:
        with self._lock:
            if self._done:
                return
            self._fired = True
            self._stuck = self.step  # what blocked (the caller's cleanup may change step)
        try:
            self._give_up()
        except Exception:  # noqa: BLE001 -- a half-dead transport: its waits end anyway
            pass

    def __enter__(self) -> Deadline:
        self.budget = Budget(self.seconds, self._pid)
        self._key = _WATCHDOG.arm(self.budget, self._expire)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        _WATCHDOG.disarm(self._key)
        with self._lock:
            self._done = True
            fired = self._fired
        # the kernel's verdict (GuestBroken) says more than "no answer": it stands
        if fired and (exc_type is None or (issubclass(exc_type, Exception)
                                           and not issubclass(exc_type, GuestBroken))):
            console = ""
            if self._console is not None:
                try:
                    console = self._console()
                except Exception:  # noqa: BLE001 -- diagnostics only
                    console = ""
            exc = SSHDeadline(self.command, self._stuck, self.seconds, self.budget.wall(),
                              console)
            _starved(exc, self.budget)
            raise exc from None


def _starved(exc: CommandTimeout, budget: Budget) -> CommandTimeout:
    """Say in ``exc`` how long the host kept the guest waiting for a CPU, if it did; a
    deadline that ended on its wall-time cap is the host's doing (``host_starved``)."""
    note = budget.note()
    if note:
        exc.args = (f"{exc.args[0]}{note}",)
        exc.starved = note
        exc.host_starved = budget.capped() and budget.used() < budget.seconds
    return exc


def _timeout(cmd: str, timeout: float, console: Callable[[], str] | None,
             budget: Budget | None = None) -> CommandTimeout:
    """CommandTimeout for a command past its deadline, with the console's last line (what
    the guest last said: a prompt, a stack trace, nothing since it froze) and the host's
    starving of the guest, if any."""
    exc = CommandTimeout(cmd, timeout)
    try:
        line = console().strip() if console is not None else ""
    except Exception:  # noqa: BLE001 -- diagnostics only
        line = ""
    if line:
        exc.args = (f"{exc.args[0]}; the console's last line: {line!r}",)
    return _starved(exc, budget) if budget is not None else exc


def _closer(channel: paramiko.Channel) -> Callable[[], None]:
    """Give up on a channel's transport (every channel on it ends)."""
    def give_up() -> None:
        transport = channel.get_transport()
        (transport or channel).close()
    return give_up


def _check(abort: Abort | None, cmd: str) -> None:
    why = abort() if abort is not None else None
    if why:
        raise GuestBroken(cmd, why)


class SSHProcess:
    """A guest program on its own channel, driven line by line (see remote.Process)."""

    def __init__(self, channel: paramiko.Channel, cmd: str, abort: Abort | None = None,
                 timeout: float = 30.0, console: Callable[[], str] | None = None,
                 pid: int | None = None) -> None:
        self.channel = channel
        self.cmd = cmd
        self.abort = abort
        self.console = console
        self.pid = pid  # QEMU's: deadlines count the time the guest could run
        self._buf = b""
        with self._deadline(timeout, "sending the exec request"):
            channel.exec_command(cmd)

    def _deadline(self, seconds: float, step: str) -> Deadline:
        return Deadline(self.cmd, seconds, _closer(self.channel), step, self.console, self.pid)

    def send_line(self, line: str) -> None:
        with self._deadline(SEND_TIMEOUT + GRACE, "sending it a line"):
            self.channel.settimeout(SEND_TIMEOUT)
            self.channel.sendall((line + "\n").encode())

    def read_line(self, timeout: float) -> str:
        budget = Budget(timeout, self.pid)
        with self._deadline(timeout + GRACE, "reading its output"):
            while b"\n" not in self._buf:
                left = budget.left()
                if budget.over():
                    raise _starved(CommandTimeout(self.cmd, timeout), budget)
                _check(self.abort, self.cmd)
                self.channel.settimeout(max(0.01, min(left, 0.2)))
                try:
                    chunk = self.channel.recv(65536)
                except TimeoutError:
                    continue
                if not chunk:
                    if self._buf:
                        line, self._buf = self._buf, b""
                        return line.decode(errors="replace")
                    raise EOFError(self.cmd)
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode(errors="replace")

    def stderr(self) -> str:
        out = b""
        with self._deadline(10.0, "reading its stderr"):
            while self.channel.recv_stderr_ready():
                out += self.channel.recv_stderr(65536)
        return out.decode(errors="replace")

    def wait(self, timeout: float) -> int:
        budget = Budget(timeout, self.pid)
        with self._deadline(timeout + GRACE, "waiting for its exit"):
            while not self.channel.exit_status_ready():
                if budget.over():
                    raise _starved(CommandTimeout(self.cmd, timeout), budget)
                _check(self.abort, self.cmd)
                if self.channel.recv_ready():
                    self._buf += self.channel.recv(65536)
                time.sleep(0.01)
            return self.channel.recv_exit_status()

    def kill(self) -> None:
        try:
            with self._deadline(10.0, "closing its channel"):
                self.channel.close()
        except SSHDeadline:
            pass  # the transport was closed instead: the program lost its channel anyway


class SSH:
    def __init__(self, port: int, client_key: paramiko.PKey, host_key: paramiko.PKey,
                 host: str = "127.0.0.1") -> None:
        self.host, self.port = host, port
        self.client_key, self.host_key = client_key, host_key
        self.conn: Connection | None = None
        # set by whoever watches the guest (the health monitor): every wait checks it
        self.abort: Abort | None = None
        # set by the VM: the console's last line, for the message of an SSHDeadline
        self.console: Callable[[], str] | None = None
        # set by the VM: QEMU's pid, so deadlines count only the time the guest could run
        self.qemu_pid: int | None = None

    def _deadline(self, cmd: str, seconds: float, step: str) -> Deadline:
        """A Deadline that gives up on this connection."""
        conn = self.conn

        def give_up() -> None:
            if conn is not None and conn.transport is not None:
                conn.transport.close()
        return Deadline(cmd, seconds, give_up, step, self.console, self.qemu_pid)

    def _new_connection(self, timeout: float) -> Connection:
        conn = Connection(self.host, user="root", port=self.port,
                          connect_timeout=max(1, int(timeout)),
                          connect_kwargs={"pkey": self.client_key, "look_for_keys": False,
                                          "allow_agent": False, "banner_timeout": timeout,
                                          "auth_timeout": timeout})
        # Pin the per-run host key and refuse anything else.
        conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
        conn.client.get_host_keys().add(f"[{self.host}]:{self.port}", self.host_key.get_name(),
                                        self.host_key)
        return conn

    def connect(self, deadline: float, alive: Callable[[], str | None] | None = None) -> None:
        """Retry until sshd answers; ``alive`` returns a reason to give up early."""
        end = time.monotonic() + deadline
        last: Exception | None = None
        while time.monotonic() < end:
            why = alive() if alive else None
            if why:
                raise SSHUnavailable(why)
            timeout = min(5.0, max(1.0, end - time.monotonic()))
            conn = self._new_connection(timeout)
            try:
                # fabric bounds each step of the login; the Deadline bounds their sum
                with Deadline("(SSH login)", 3 * timeout + GRACE, conn.close, "logging in",
                              self.console):
                    conn.open()
                    conn.transport.set_keepalive(5)
                self.conn = conn
                return
            except paramiko.BadHostKeyException as exc:
                raise SSHUnavailable(f"guest host key mismatch: {exc}") from None
            except (OSError, paramiko.SSHException, EOFError, SSHDeadline) as exc:
                last = exc
                _close(conn)
                time.sleep(0.05)
        raise SSHUnavailable(f"no SSH login within {deadline:.0f}s ({last})")

    def _channel(self, timeout: float, cmd: str = "(a new SSH channel)") -> paramiko.Channel:
        if self.conn is None or self.conn.transport is None or not self.conn.transport.is_active():
            raise SSHUnavailable("not connected")
        # open_session has a timeout of its own; the Deadline is there for the rule
        try:
            with self._deadline(cmd, timeout + GRACE, "opening a channel"):
                return self.conn.transport.open_session(timeout=timeout)
        except paramiko.SSHException as exc:
            if "Timeout" in str(exc) or "timeout" in str(exc):
                raise _timeout(cmd, timeout, self.console) from None
            raise SSHUnavailable(f"cannot open an SSH channel: {exc}") from None

    def exec(self, cmd: str, timeout: float = 60.0, stdin: bytes | None = None
             ) -> tuple[int, bytes, bytes, float]:
        """Run ``cmd``; every step (channel open, exec request, input, output, exit) within
        ``timeout`` (SSHDeadline when a paramiko call blocked past it)."""
        t0 = time.monotonic()
        budget = Budget(timeout, self.qemu_pid)
        _check(self.abort, cmd)  # a broken guest may not even open a channel
        chan = self._channel(timeout, cmd)
        with self._deadline(cmd, timeout + GRACE, "sending the exec request") as d:
            try:
                chan.settimeout(0.2)
                chan.exec_command(cmd)
                d.step = "sending its input"
                if stdin is not None:
                    view = memoryview(stdin)
                    while view:
                        if budget.over():
                            exc = _timeout(cmd, timeout, self.console, budget)
                            exc.args = (f"{exc.args[0]}; it took {len(stdin) - len(view)} of "
                                        f"the {len(stdin)} bytes of its input",)
                            raise exc
                        try:
                            sent = chan.send(bytes(view[:32768]))
                        except TimeoutError:
                            continue
                        view = view[sent:]
                chan.shutdown_write()
                d.step = "waiting for its output and exit status"
                out, err = bytearray(), bytearray()
                stdout_eof = False
                while not (stdout_eof and chan.exit_status_ready()):
                    if budget.over():
                        raise _timeout(cmd, timeout, self.console, budget)
                    _check(self.abort, cmd)
                    if (not self.conn or not self.conn.transport
                            or not self.conn.transport.is_active()):
                        raise SSHUnavailable(f"SSH connection lost while running: {cmd}")
                    if stdout_eof:
                        time.sleep(0.01)
                    else:
                        try:
                            chunk = chan.recv(65536)  # waits at most the channel's 0.2 s
                            out += chunk
                            stdout_eof = not chunk
                        except TimeoutError:
                            pass
                    while chan.recv_stderr_ready():
                        err += chan.recv_stderr(65536)
                while chan.recv_stderr_ready():
                    err += chan.recv_stderr(65536)
                status = chan.recv_exit_status()
            finally:
                chan.close()
        return status, bytes(out), bytes(err), time.monotonic() - t0

    def run(self, cmd: str, timeout: float = 60.0, check: bool = False) -> CommandResult:
        status, out, err, took = self.exec(cmd, timeout)
        result = CommandResult(cmd, status, out.decode(errors="replace"),
                               err.decode(errors="replace"), took)
        if check and not result.ok:
            raise CommandFailed(result)
        return result

    def put(self, local: Path, remote: str, mode: int = 0o644, timeout: float = 120.0) -> None:
        q = shlex.quote(remote)
        status, _, err, _ = self.exec(f"cat > {q} && chmod {mode:o} {q}", timeout,
                                      stdin=Path(local).read_bytes())
        if status != 0:
            raise SSHUnavailable(f"put {local} -> {remote} failed: {err.decode(errors='replace')}")

    def get(self, remote: str, local: Path, timeout: float = 120.0) -> None:
        status, out, err, _ = self.exec(f"cat {shlex.quote(remote)}", timeout)
        if status != 0:
            raise SSHUnavailable(f"get {remote} failed: {err.decode(errors='replace')}")
        Path(local).write_bytes(out)

    def spawn(self, cmd: str, timeout: float = 30.0) -> SSHProcess:
        _check(self.abort, cmd)
        return SSHProcess(self._channel(timeout, cmd), cmd, self.abort, timeout, self.console,
                          self.qemu_pid)

    def close(self) -> None:
        if self.conn is not None:
            _close(self.conn)
            self.conn = None


def _close(conn: Connection) -> None:
    """Close a connection; one that cannot say goodbye in time loses its socket instead."""
    def give_up() -> None:
        if conn.transport is not None:
            conn.transport.sock.close()
    try:
        with Deadline("(SSH close)", 10.0, give_up, "closing the connection"):
            conn.close()
    except SSHDeadline:
        pass
