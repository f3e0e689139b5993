"""Choose KVM or TCG. /dev/kvm can exist and still never run a guest (a host whose KVM is
kvm_pvm hangs stock kernels forever), so we boot a 512-byte boot sector that writes to the
serial port and trust KVM only if its words come back before a short deadline."""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from harness.errors import HarnessError
from harness.paths import cache_dir

PROBE_DEADLINE = 4.0
# 16-bit real mode: mov dx,0x3f8; out 'K','V','M','\n'; cli; hlt; jmp $
_BOOT_CODE = bytes.fromhex("baf803" "b04bee" "b056ee" "b04dee" "b00aee" "faf4ebfe")
BOOT_SECTOR = _BOOT_CODE + b"\0" * (510 - len(_BOOT_CODE)) + b"\x55\xaa"


@dataclass(frozen=True)
class Accel:
    name: str    # "kvm" or "tcg"
    reason: str  # why, for the log

    def describe(self) -> str:
        return f"{self.name} ({self.reason})"


def _host_kvm_module() -> str | None:
    try:
        mods = Path("/proc/modules").read_text().split("\n")
    except OSError:
        return None
    names = [line.split()[0] for line in mods if line.startswith("kvm")]
    return ",".join(names) or None


def probe_kvm(qemu: str = "qemu-system-x86_64", deadline: float = PROBE_DEADLINE) -> str | None:
    """None when a KVM guest really runs; else the reason it does not."""
    if not os.path.exists("/dev/kvm"):
        return "no /dev/kvm"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "/dev/kvm not accessible to this user"
    with tempfile.TemporaryDirectory(prefix="ksm-kvm-probe-") as tmp:
        disk = Path(tmp) / "boot.img"
        disk.write_bytes(BOOT_SECTOR)
        out = Path(tmp) / "serial.txt"
        cmd = [qemu, "-accel", "kvm", "-M", "pc", "-cpu", "host", "-m", "16", "-nodefaults",
               "-no-user-config", "-display", "none", "-no-reboot",
               "-drive", f"file={disk},format=raw,if=ide",
               "-chardev", f"file,id=s0,path={out}", "-serial", "chardev:s0"]
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    text=True)
        except OSError as exc:
            return f"cannot run {qemu}: {exc}"
        try:
            import time
            end = time.monotonic() + deadline
            while time.monotonic() < end:
                if out.exists() and b"KVM" in out.read_bytes():
                    return None
                if proc.poll() is not None:
                    err = (proc.stderr.read() if proc.stderr else "").strip().splitlines()
                    return f"KVM guest failed to start: {err[-1] if err else proc.returncode}"
                time.sleep(0.05)
            mod = _host_kvm_module()
            return (f"a KVM guest printed nothing within {deadline:.0f}s"
                    + (f" (host KVM module: {mod})" if mod else ""))
        finally:
            proc.kill()
            proc.wait()


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def _cached_verdict(cache: Path, boot_id: str) -> tuple[str | None] | None:
    """(the probe's failure or None,) as cached for this host boot; None when not probed."""
    try:
        saved = json.loads(cache.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(saved, dict) or saved.get("boot_id") != boot_id:
        return None
    why = saved.get("failure")
    return (None if why is None else str(why),)


def forced_kvm(cached: tuple[str | None] | None, cache: Path) -> Accel:
    """``--accel kvm``: obeyed, unless this host boot's probe already saw KVM fail; then the
    guest would crash or hang on every boot and retry, so refuse in one line."""
    if cached is not None and cached[0] is not None:
        raise HarnessError(f"--accel kvm: KVM does not work on this host ({cached[0]}; probed "
                           f"this host boot, cached in {cache}); use --accel tcg or auto, or "
                           "remove that file once KVM is fixed")
    return Accel("kvm", "requested with --accel kvm")


def choose(requested: str = "auto") -> Accel:
    """``kvm``/``tcg`` are obeyed; ``auto`` probes KVM (result cached per host boot)."""
    if requested == "tcg":
        return Accel("tcg", "requested with --accel tcg")
    cache = cache_dir() / "kvm-probe.json"
    boot_id = _boot_id()
    cached = _cached_verdict(cache, boot_id)
    if requested == "kvm":
        return forced_kvm(cached, cache)
    if cached is not None:
        why = cached[0]
        return (Accel("kvm", "KVM probe passed (cached for this host boot)") if why is None
                else Accel("tcg", f"KVM unusable: {why}; cached for this host boot"))
    why = probe_kvm()
    try:
        cache.write_text(json.dumps({"boot_id": boot_id, "failure": why}))
    except OSError:
        pass
    return Accel("kvm", "KVM probe passed") if why is None else Accel("tcg", f"KVM unusable: {why}")
