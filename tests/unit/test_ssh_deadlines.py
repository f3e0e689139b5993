"""Every paramiko call that can block goes through harness.access.ssh.Deadline (issue 19,
finding 1: exec_command waited forever on a frozen guest, its request's answer has no
timeout). An ast scan of harness/ enforces the rule, and a real paramiko server on the host
that never answers exec requests shows a command ending in time with a clear error."""
from __future__ import annotations

import ast
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from harness.access.remote import CommandTimeout
from harness.access.ssh import SSH

pytestmark = pytest.mark.host

HARNESS = Path(__file__).resolve().parents[2] / "harness"
SSH_MODULE = HARNESS / "access" / "ssh.py"

# Methods of paramiko's Channel, Transport, SSHClient, SFTPClient and fabric's Connection
# that wait for the guest (a request's answer, window space, data, the exit status).
BLOCKING = {"exec_command", "invoke_shell", "invoke_subsystem", "get_pty", "open_session",
            "open_channel", "open_sftp", "open_sftp_client", "from_transport",
            "recv_exit_status", "recv", "recv_stderr", "send", "sendall", "send_stderr",
            "sendall_stderr", "shutdown_write", "makefile", "makefile_stderr", "open", "close",
            "connect", "put", "get", "start_client", "auth_publickey", "set_keepalive",
            "request_port_forward", "global_request", "run", "sudo"}
# Of those, names nothing but paramiko uses: called anywhere else they are a violation.
PARAMIKO_ONLY = BLOCKING - {"recv", "send", "sendall", "makefile", "open", "close", "connect",
                            "put", "get", "run", "sudo"}
# Blocking calls of a socket: a module making them sets a timeout on every socket it makes.
SOCKET_BLOCKING = {"recv", "recv_into", "recvfrom", "send", "sendall", "sendto", "connect",
                   "connect_ex", "accept", "makefile"}


def _is_deadline(item: ast.withitem) -> bool:
    call = item.context_expr
    if not isinstance(call, ast.Call):
        return False
    f = call.func
    return (isinstance(f, ast.Name) and f.id == "Deadline") or (
        isinstance(f, ast.Attribute) and f.attr == "_deadline")


def unbounded_calls(source: str) -> list[str]:
    """``line: call`` for every blocking paramiko call of the SSH module's source that is not
    inside a ``with Deadline(...)`` (or ``self._deadline(...)``) block. The give-up actions
    (functions named ``give_up``) run when a Deadline expires: they are its own part."""
    found: list[str] = []

    def visit(node: ast.AST, bounded: bool) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == "give_up":
            return
        if isinstance(node, ast.With | ast.AsyncWith) and any(map(_is_deadline, node.items)):
            for item in node.items:
                visit(item.context_expr, bounded)
            for child in node.body:
                visit(child, True)
            return
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in BLOCKING and not bounded):
            found.append(f"{node.lineno}: {ast.unparse(node.func)}()")
        for sub in ast.iter_child_nodes(node):
            visit(sub, bounded)

    visit(ast.parse(source), False)
    return found


def _imports(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def outside_violations(path: Path, root: Path = HARNESS.parent) -> list[str]:
    """What a module other than the SSH module may not do: import fabric, use paramiko
    beyond its key classes and exceptions, call a paramiko-only method, reach an SSH
    connection's transport, or make blocking calls on a socket it made without a timeout."""
    tree = ast.parse(path.read_text())
    where = path.relative_to(root)
    bad = []
    imported = _imports(tree)
    if "fabric" in imported:
        bad.append(f"{where}: imports fabric")
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id == "paramiko"
                and not node.attr.endswith(("Key", "Exception", "Error"))):
            bad.append(f"{where}:{node.lineno}: paramiko.{node.attr}")
        if isinstance(node, ast.Attribute) and node.attr == "transport":
            bad.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in PARAMIKO_ONLY):
            bad.append(f"{where}:{node.lineno}: {ast.unparse(node.func)}()")
    if "socket" in imported:
        bad += [f"{where}:{v}" for v in _sockets_without_timeout(tree)]
    return bad


def _sockets_without_timeout(tree: ast.AST) -> list[str]:
    """Functions that make a socket, wait on it or hand it on, and set no timeout on it."""
    bad = []
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef):
            continue
        names = set()
        for node in ast.walk(fn):
            made = (isinstance(node, ast.Call) and ast.unparse(node.func) == "socket.socket")
            if not made:
                continue
            for parent in ast.walk(fn):
                if isinstance(parent, ast.Assign) and parent.value is node:
                    names |= {t.id for t in parent.targets if isinstance(t, ast.Name)}
                if isinstance(parent, ast.withitem) and parent.context_expr is node \
                        and isinstance(parent.optional_vars, ast.Name):
                    names.add(parent.optional_vars.id)
        used = set()
        for node in ast.walk(fn):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name) and node.func.value.id in names):
                used.add(node.func.attr)
            if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Name)
                    and node.value.id in names):
                used.add("(handed on)")
        if used & (SOCKET_BLOCKING | {"(handed on)"}) and "settimeout" not in used:
            bad.append(f"{fn.lineno}: {fn.name}() waits on a socket with no timeout")
    return bad


def test_every_blocking_paramiko_call_is_inside_a_deadline() -> None:
    assert unbounded_calls(SSH_MODULE.read_text()) == []


def test_nothing_outside_the_ssh_module_talks_paramiko_or_waits_on_a_bare_socket() -> None:
    bad = [v for path in sorted(HARNESS.rglob("*.py")) if path != SSH_MODULE
           for v in outside_violations(path)]
    assert bad == []


def test_the_scan_finds_an_unbounded_call(tmp_path: Path) -> None:
    source = '''
def exec(self, chan, cmd):
    with self._deadline(cmd, 10, "x"):
        chan.exec_command(cmd)
    chan.recv_exit_status()

def give_up():
    transport.close()
'''
    assert unbounded_calls(source) == ["5: chan.recv_exit_status()"]
    module = tmp_path / "mod.py"
    module.write_text("import socket\nimport paramiko\n\ndef f(ssh):\n"
                      "    s = socket.socket()\n    s.connect(('h', 1))\n"
                      "    ssh.conn.transport.open_session()\n    paramiko.Transport(s)\n")
    assert sorted(v.split(": ", 1)[1] for v in outside_violations(module, tmp_path)) == [
        "f() waits on a socket with no timeout",
        "paramiko.Transport", "ssh.conn.transport", "ssh.conn.transport.open_session()"]


class FrozenAfterLogin(paramiko.ServerInterface):
    """An sshd that logs in and opens channels, then freezes on the exec request (as a
    stopped QEMU does): the request's answer never comes while ``frozen`` is set."""

    def __init__(self, frozen: threading.Event) -> None:
        self.frozen = frozen

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        return paramiko.AUTH_SUCCESSFUL

    def check_channel_request(self, kind: str, chanid: int) -> int:
        return paramiko.OPEN_SUCCEEDED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        deadline = time.monotonic() + 60  # the test's own bound on the freeze
        while self.frozen.is_set() and time.monotonic() < deadline:
            time.sleep(0.05)
        return False


@pytest.fixture
def frozen_sshd() -> Iterator[tuple[int, paramiko.PKey, threading.Event]]:
    host_key = paramiko.ECDSAKey.generate()
    frozen = threading.Event()
    frozen.set()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.settimeout(0.2)
    transports: list[paramiko.Transport] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                sock, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            t = paramiko.Transport(sock)
            t.add_server_key(host_key)
            t.start_server(server=FrozenAfterLogin(frozen))
            transports.append(t)

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    yield listener.getsockname()[1], host_key, frozen
    frozen.clear()
    stop.set()
    server.join(5)
    listener.close()
    for t in transports:
        t.close()


def test_a_command_to_a_guest_frozen_at_its_exec_request_ends_in_time(
        frozen_sshd: tuple[int, paramiko.PKey, threading.Event]) -> None:
    port, host_key, frozen = frozen_sshd
    ssh = SSH(port, paramiko.ECDSAKey.generate(), host_key)
    ssh.connect(10)
    ssh.console = lambda: "[   42.000000] last words"
    outcome: list[BaseException | str] = []

    def command() -> None:
        try:
            ssh.run("echo never", timeout=2)
            outcome.append("returned")
        except BaseException as exc:  # noqa: BLE001 -- reported by the test's thread
            outcome.append(exc)

    t0 = time.monotonic()
    worker = threading.Thread(target=command, daemon=True)
    worker.start()
    worker.join(2 + 5)
    took = time.monotonic() - t0
    hung = worker.is_alive()
    frozen.clear()  # a hung exec_command gets its answer now
    worker.join(10)
    ssh.close()
    assert not hung, "run() on a guest frozen at its exec request gave no verdict in 7s"
    error = outcome[0]
    assert isinstance(error, CommandTimeout), repr(error)
    assert 2 <= took < 7
    assert re.fullmatch(r"no answer from the guest for \d+\.\ds while sending the exec request "
                        r"\(echo never\); SSH connection closed to stop waiting; the "
                        r"console's last line: '\[   42\.000000\] last words'",
                        str(error)), str(error)


def test_a_deadline_gives_up_only_when_it_passes_and_the_kernel_verdict_stands() -> None:
    from harness.access.remote import GuestBroken
    from harness.access.ssh import Deadline, SSHDeadline

    woken = threading.Event()  # stands for paramiko's wait that a closed transport ends
    with Deadline("true", 5, woken.set):
        pass
    time.sleep(0.1)
    assert not woken.is_set()
    t0 = time.monotonic()
    with pytest.raises(SSHDeadline) as info:
        with Deadline("ksmwork", 0.3, woken.set, console=lambda: "login: ") as d:
            d.step = "reading its output"
            assert woken.wait(5)
            raise EOFError("channel closed")  # what the woken wait raises
    assert 0.3 <= time.monotonic() - t0 < 2
    assert re.fullmatch(r"no answer from the guest for \d\.\ds while reading its output "
                        r"\(ksmwork\); SSH connection closed to stop waiting; the "
                        r"console's last line: 'login:'", str(info.value)), str(info.value)
    woken.clear()
    with pytest.raises(GuestBroken, match="kernel BUG"):
        with Deadline("ksmwork", 0.1, woken.set):
            assert woken.wait(5)
            raise GuestBroken("ksmwork", "the kernel reported: kernel BUG at mm/ksm.c:1")
