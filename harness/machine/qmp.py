"""A small QMP client: status, quit, and keys (sysrq) when the guest's userspace is gone."""
from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any


class QMPError(Exception):
    pass


class QMP:
    def __init__(self, path: Path, timeout: float = 5.0) -> None:
        self.path = path
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buf = b""

    def connect(self, deadline: float = 10.0) -> None:
        end = time.monotonic() + deadline
        while True:
            try:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(self.timeout)
                sock.connect(str(self.path))
                break
            except OSError as exc:
                sock.close()
                if time.monotonic() > end:
                    raise QMPError(f"cannot connect to QMP socket {self.path}: {exc}") from None
                time.sleep(0.02)
        self._sock = sock
        self._read()  # greeting
        self.command("qmp_capabilities")

    def _read(self) -> dict[str, Any]:
        assert self._sock is not None
        while b"\n" not in self._buf:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise QMPError("QMP connection closed")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def command(self, name: str, **args: Any) -> Any:
        if self._sock is None:
            raise QMPError("QMP not connected")
        msg: dict[str, Any] = {"execute": name}
        if args:
            msg["arguments"] = args
        try:
            self._sock.sendall(json.dumps(msg).encode() + b"\n")
            while True:
                reply = self._read()
                if "return" in reply:
                    return reply["return"]
                if "error" in reply:
                    raise QMPError(f"{name}: {reply['error'].get('desc')}")
                # asynchronous events (SHUTDOWN, STOP, ...) are skipped
        except (OSError, ValueError) as exc:
            raise QMPError(f"{name}: {exc}") from None

    def status(self) -> str:
        return str(self.command("query-status").get("status"))

    def sysrq(self, key: str) -> None:
        """Alt+SysRq+key through the emulated keyboard: works with userspace dead."""
        keys = [{"type": "qcode", "data": k} for k in ("alt", "sysrq", key)]
        self.command("send-key", keys=keys, **{"hold-time": 100})

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
