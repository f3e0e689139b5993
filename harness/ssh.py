"""SSH to the guest: fabric for commands and file transfer, paramiko underneath, the
guest's host key pinned, every call bounded by a deadline."""
from __future__ import annotations

import logging
import socket
import time
from pathlib import Path

import paramiko
from fabric import Connection
from invoke.exceptions import CommandTimedOut, UnexpectedExit

from .remote import CommandFailed, CommandResult, CommandTimeout

# Before sshd listens, QEMU's hostfwd accepts and resets connections: paramiko's transport
# thread would log a traceback for each retry.
logging.getLogger("paramiko").setLevel(logging.CRITICAL)


class SSHUnavailable(Exception):
    pass


class SSHProcess:
    """A guest program on its own channel, driven line by line (see remote.Process)."""

    def __init__(self, channel: paramiko.Channel, cmd: str) -> None:
        self.channel = channel
        self.cmd = cmd
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
            self.channel.settimeout(min(left, 1.0))
            try:
                chunk = self.channel.recv(65536)
            except socket.timeout:
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

    def connect(self, deadline: float, alive: "callable[[], str | None] | None" = None) -> None:
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

    @property
    def connected(self) -> bool:
        return bool(self.conn and self.conn.is_connected)

    def run(self, cmd: str, timeout: float = 60.0, check: bool = False) -> CommandResult:
        if self.conn is None:
            raise SSHUnavailable("not connected")
        t0 = time.monotonic()
        try:
            r = self.conn.run(cmd, hide=True, warn=True, timeout=timeout, in_stream=False)
        except CommandTimedOut:
            raise CommandTimeout(cmd, timeout) from None
        except UnexpectedExit as exc:  # not raised with warn=True, kept for clarity
            r = exc.result
        result = CommandResult(cmd, r.exited if r.exited is not None else -1, r.stdout, r.stderr,
                               time.monotonic() - t0)
        if check and not result.ok:
            raise CommandFailed(result)
        return result

    def put(self, local: Path, remote: str, mode: int = 0o644) -> None:
        assert self.conn is not None
        self.conn.put(str(local), remote)
        self.conn.sftp().chmod(remote, mode)

    def get(self, remote: str, local: Path) -> None:
        assert self.conn is not None
        self.conn.get(remote, str(local))

    def spawn(self, cmd: str) -> SSHProcess:
        assert self.conn is not None and self.conn.transport is not None
        return SSHProcess(self.conn.transport.open_session(), cmd)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
