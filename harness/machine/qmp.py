"""A small QMP client: status, quit, and keys (sysrq) when the guest's userspace is gone."""
from __future__ import annotations

import hashlib
import json
import socket
import time
from pathlib import Path
from typing import Any


class QMPError(Exception):
    pass


SUN_PATH_MAX = 107  # sockaddr_un.sun_path holds 108 bytes, the last one a NUL


def abstract_name(path: Path) -> str | None:
    """A socket path too long for sockaddr_un (a deep runs dir in a CI workspace) becomes a
    name in the abstract namespace, the same for QEMU and us; None: the path itself fits."""
    if len(str(path).encode()) <= SUN_PATH_MAX:
        return None
    return "ksm-harness-qmp-" + hashlib.sha256(str(path).encode()).hexdigest()[:24]


def qemu_qmp_arg(path: Path) -> str:
    """QEMU's -qmp argument for a server socket at ``path`` (see :func:`abstract_name`)."""
    name = abstract_name(path)
    if name is None:
        return f"unix:{path},server=on,wait=off"
    return f"unix:{name},abstract=on,server=on,wait=off"


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
                name = abstract_name(self.path)
                sock.connect(str(self.path) if name is None else "\0" + name)
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
