"""``ksm-harness boot``: one guest's life -- boot it, run a command (or a shell) in it, return
the command's status -- and, when the guest (not the command) failed, the kernel report's
title on stderr, the console log kept and status 255."""
from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from harness import paths
from harness import spec as spec_mod
from harness.access.remote import CommandTimeout
from harness.errors import VMError

if TYPE_CHECKING:
    from harness.machine.vm import VM, VMSpec

GUEST_FAILED = 255  # like ssh: the guest (not the command) failed
TIMED_OUT = 124     # like timeout(1): CMD ran past --timeout, the guest still answers


def _say(msg: str) -> None:
    print(f"ksm-harness: {msg}", file=sys.stderr, flush=True)


def guest_failed(vm: VM, why: str) -> int:
    """The guest panicked, died or never came up: the kernel report's title (else why) on
    stderr, the console log kept, status 255."""
    from harness import health
    from harness.console.classify import classify_text
    from harness.findings import rank
    if not vm.frozen():  # a stopped QEMU will not exit: no 5 s for nothing
        vm.wait_exit(5.0)  # a panic ends QEMU (panic=-1, -no-reboot): let the report land
    try:
        text = vm.console_log.read_text(errors="replace")
    except OSError:
        text = ""
    reports = rank(health.report_finding(r) for r in classify_text(text))
    title = reports[0].title if reports else why.splitlines()[0]
    _say(f"guest failed: {title}")
    _say(f"console log kept: {vm.console_log}")
    return GUEST_FAILED


def dry_run(spec: VMSpec) -> int:
    """Print a QEMU command line that runs the guest; its files stay (and where is said)."""
    from harness.machine.vm import VM
    # outside the runs directory: the reaper frees run directories of dead processes
    keep = paths.cache_dir() / "dry-run" / time.strftime("boot-%Y%m%d-%H%M%S")
    keep.mkdir(parents=True, exist_ok=True)
    print(shlex.join(VM(spec, keep).dry_run()))
    _say(f"the command's files (overlay, initrd) are in {keep}: remove that directory when "
         "done")
    return 0


def main(args: argparse.Namespace) -> int:
    from harness.machine.vm import VM, remove_run_dir
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    spec = spec_mod.build(spec_mod.Options.of(args))
    if args.dry_run:
        return dry_run(spec)
    run_dir = paths.new_run_dir("boot")
    vm = VM(spec, run_dir)
    _say(f"booting (console log: {vm.console_log})")
    keep_dir = args.keep
    try:
        try:
            vm.start()
        except VMError as exc:
            if vm.child is None:  # QEMU never started (e.g. the kernel lacks virtio): exit 2
                raise
            keep_dir = True
            return guest_failed(vm, str(exc))
        t = vm.timings
        _say(f"guest ready in {t['ssh_ready']:.1f}s (console {t['console_ready']:.1f}s)")
        if not command:
            return interactive(vm, run_dir)
        status, failed = run_command(vm, command, args.timeout)
        keep_dir = keep_dir or failed
        return status
    finally:
        vm.stop()
        if not keep_dir:
            remove_run_dir(run_dir)


def run_command(vm: VM, command: list[str], timeout: float) -> tuple[int, bool]:
    """(status, whether the run directory must be kept): CMD's own status with its output
    passed on; 124 when it ran past the timeout in a live guest, 255 when the guest died
    under it (both keep the console log)."""
    cmd = shlex.join(command) if len(command) > 1 else command[0]
    try:
        r = vm.run(cmd, timeout=timeout)
    except CommandTimeout as exc:
        if vm.alive() is not None:
            return guest_failed(vm, str(exc)), True
        frozen = vm.frozen()
        if frozen:  # not CMD's slowness: the guest cannot run at all
            return guest_failed(vm, f"{frozen}; no answer to {exc.command!r} for "
                                    f"{exc.timeout:.0f}s"), True
        _say(f"{exc}; console log kept: {vm.console_log}")
        return TIMED_OUT, True
    except Exception as exc:  # noqa: BLE001 -- the connection died with the guest
        return guest_failed(vm, vm.alive() or f"{type(exc).__name__}: {exc}"), True
    if vm.alive() is not None or r.status < 0:  # the guest died under the command
        return guest_failed(vm, vm.alive() or "guest died"), True
    sys.stdout.write(r.stdout)
    sys.stderr.write(r.stderr)
    return r.status, False


def interactive(vm: VM, run_dir: Path) -> int:
    """An SSH shell when the ssh client exists, else the serial console."""
    if shutil.which("ssh") and vm.ssh is not None:
        key, known = _ssh_files(vm, run_dir)
        return subprocess.call(["ssh", "-i", str(key), "-p", str(vm.port),
                                "-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes",
                                "-o", "LogLevel=ERROR", "root@127.0.0.1"])
    print("ksm-harness: no ssh client; attaching to the serial console (Ctrl-] to leave)",
          file=sys.stderr)
    assert vm.child is not None
    vm.child.interact()
    return 0


def _ssh_files(vm: VM, run_dir: Path) -> tuple[Path, Path]:
    """The client key (mode 0600 before it holds anything) and a known_hosts pinning the
    guest's host key, for the host's ssh client."""
    assert vm.ssh is not None
    key = run_dir / "id_ecdsa"
    key.write_text("")
    key.chmod(0o600)
    vm.ssh.client_key.write_private_key_file(str(key))
    known = run_dir / "known_hosts"
    known.write_text(f"[127.0.0.1]:{vm.port} {vm.ssh.host_key.get_name()} "
                     f"{vm.ssh.host_key.get_base64()}\n")
    return key, known
