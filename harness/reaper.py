"""No QEMU outlives the harness.

Three layers: (1) every QEMU gets PR_SET_PDEATHSIG=SIGKILL, so the kernel kills it when we
die, even by SIGKILL; (2) normal exit, exceptions, Ctrl-C and SIGTERM run the registered
teardown; (3) a later run kills QEMUs left in run directories whose owner is dead.
"""
from __future__ import annotations

import atexit
import ctypes
import os
import re
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from harness.paths import cache_dir, runs_root

PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)
_teardowns: dict[int, Callable[[], None]] = {}
_lock = threading.RLock()  # reentrant: SIGTERM may land while the main thread holds it
_installed = False


def die_with_parent() -> None:
    """preexec_fn for QEMU: SIGKILL it when the harness process goes away."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def register(fn: Callable[[], None]) -> int:
    _install()
    with _lock:
        key = id(fn)
        _teardowns[key] = fn
        return key


def unregister(key: int) -> None:
    with _lock:
        _teardowns.pop(key, None)


def teardown_all() -> None:
    with _lock:
        fns = list(_teardowns.values())
        _teardowns.clear()
    for fn in fns:
        try:
            fn()
        except Exception as exc:  # keep tearing the others down
            print(f"ksm-harness: teardown error: {exc}", file=sys.stderr)


def _on_signal(signum: int, _frame: object) -> None:
    teardown_all()
    # re-raise as the default action would, so exit statuses stay conventional
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install() -> None:
    global _installed
    if _installed:
        return
    _installed = True
    atexit.register(teardown_all)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) in (signal.SIG_DFL, None):
                signal.signal(sig, _on_signal)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


BULKY = ("*.qcow2", "initrd.img", "disk-*.raw", "qmp.sock")
KEEP_DAYS = 7


def clean_stale(root: Path | None = None) -> list[str]:
    """Kill QEMUs of dead harness runs and free their disk space. Console logs stay (a
    nightly run's evidence must survive the next run) until they are KEEP_DAYS old."""
    root = root or runs_root()
    done = []
    now = time.time()
    for run in root.iterdir() if root.exists() else []:
        m = re.search(r"-(\d+)$", run.name)
        if not run.is_dir() or not m or _pid_alive(int(m.group(1))):
            continue
        for pidfile in run.rglob("qemu.pid"):
            try:
                pid = int(pidfile.read_text().strip())
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            except (OSError, ValueError):
                continue
            if str(run) in cmdline:  # the pid is still that QEMU, not a recycled pid
                os.kill(pid, signal.SIGKILL)
                done.append(f"killed stale QEMU {pid} of {run.name}")
            pidfile.unlink(missing_ok=True)
        for pattern in BULKY:
            for path in run.rglob(pattern):
                path.unlink(missing_ok=True)
        if now - run.stat().st_mtime > KEEP_DAYS * 86400:
            shutil.rmtree(run, ignore_errors=True)
    if root == runs_root():
        done += _clean_dead_saves()
    return done


SHM = Path("/dev/shm")


def _clean_dead_saves() -> list[str]:
    """What a harness killed while saving a snapshot leaves: the half-saved snapshot
    (snapshots/<key>.tmp-<pid>) and its guest's RAM files (ksm-harness-ram-<pid>-*, in
    /dev/shm or the cache: the guest's whole RAM, until someone frees it)."""
    cache = cache_dir()
    found = [(p, p.name.rsplit("-", 1)[1]) for p in (cache / "snapshots").glob("*.tmp-*")]
    found += [(p, p.name.split("-")[3]) for base in (SHM, cache)
              for p in base.glob("ksm-harness-ram-*-*")]
    done = []
    for path, pid in found:
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            done.append(f"removed {path.name} of a killed run")
    return done
