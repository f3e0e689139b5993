"""SSH to the guest: fabric's Connection for the login, paramiko channels for commands and
files, the guest's host key pinned, every step bounded by a deadline (a frozen guest must
never block us: paramiko's own channel open and fabric's run wait forever there)."""
from __future__ import annotations

import logging
import shlex
import time
from collections.abc import Callable
from pathlib import Path

import paramiko
from fabric import Connection

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


def _check(abort: Abort | None, cmd: str) -> None:
    why = abort() if abort is not None else None
    if why:
        raise GuestBroken(cmd, why)


class SSHProcess:
    """A guest program on its own channel, driven line by line (see remote.Process)."""

    def __init__(self, channel: paramiko.Channel, cmd: str, abort: Abort | None = None
                 ) -> None:
        self.channel = channel
        self.cmd = cmd
        self.abort = abort
        self._buf = b""
        channel.exec_command(cmd)

    def send_line(self, line: str) -> None:
        self.channel.sendall((line + "\n").encode())

    def read_line(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise CommandTimeout(self.cmd, timeout)
            _check(self.abort, self.cmd)
            self.channel.settimeout(min(left, 0.2))
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
        while self.channel.recv_stderr_ready():
            out += self.channel.recv_stderr(65536)
        return out.decode(errors="replace")

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while not self.channel.exit_status_ready():
            if time.monotonic() > deadline:
                raise CommandTimeout(self.cmd, timeout)
            _check(self.abort, self.cmd)
            if self.channel.recv_ready():
                self._buf += self.channel.recv(65536)
            time.sleep(0.01)
        return self.channel.recv_exit_status()

    def kill(self) -> None:
        self.channel.close()


class SSH:
    def __init__(self, port: int, client_key: paramiko.PKey, host_key: paramiko.PKey,
                 host: str = "127.0.0.1") -> None:
        self.host, self.port = host, port
        self.client_key, self.host_key = client_key, host_key
        self.conn: Connection | None = None
        # set by whoever watches the guest (the health monitor): every wait checks it
        self.abort: Abort | None = None

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
            conn = self._new_connection(min(5.0, max(1.0, end - time.monotonic())))
            try:
                conn.open()
                conn.transport.set_keepalive(5)
                self.conn = conn
                return
            except paramiko.BadHostKeyException as exc:
                raise SSHUnavailable(f"guest host key mismatch: {exc}") from None
            except (OSError, paramiko.SSHException, EOFError) as exc:
                last = exc
                conn.close()
                time.sleep(0.05)
        raise SSHUnavailable(f"no SSH login within {deadline:.0f}s ({last})")

    def _channel(self, timeout: float, cmd: str = "(a new SSH channel)") -> paramiko.Channel:
        if self.conn is None or self.conn.transport is None or not self.conn.transport.is_active():
            raise SSHUnavailable("not connected")
        # open_session waits forever on a frozen guest unless given a deadline
        try:
            return self.conn.transport.open_session(timeout=timeout)
        except paramiko.SSHException as exc:
            if "Timeout" in str(exc) or "timeout" in str(exc):
                raise CommandTimeout(cmd, timeout) from None
            raise SSHUnavailable(f"cannot open an SSH channel: {exc}") from None

    def exec(self, cmd: str, timeout: float = 60.0, stdin: bytes | None = None
             ) -> tuple[int, bytes, bytes, float]:
        """Run ``cmd``; every step (channel open, input, output, exit) within ``timeout``."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        _check(self.abort, cmd)  # a broken guest may not even open a channel
        chan = self._channel(timeout, cmd)
        try:
            chan.settimeout(0.2)
            chan.exec_command(cmd)
            if stdin is not None:
                view = memoryview(stdin)
                while view:
                    if time.monotonic() > deadline:
                        raise CommandTimeout(cmd, timeout)
                    try:
                        sent = chan.send(bytes(view[:32768]))
                    except TimeoutError:
                        continue
                    view = view[sent:]
            chan.shutdown_write()
            out, err = bytearray(), bytearray()
            stdout_eof = False
            while not (stdout_eof and chan.exit_status_ready()):
                if time.monotonic() > deadline:
                    raise CommandTimeout(cmd, timeout)
                _check(self.abort, cmd)
                if not self.conn or not self.conn.transport or not self.conn.transport.is_active():
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
        return SSHProcess(self._channel(timeout, cmd), cmd, self.abort)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
