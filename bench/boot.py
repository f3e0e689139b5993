"""Boot figures, side by side in one run (absolute times differ a lot between machines):
QEMU start to the first successful SSH command for a cold boot and for a guest restored from
a snapshot (harness/machine/snapshot.py), alternating, with their ratio; the end-to-end
time of `ksm-harness boot -- true`, and of virtme-ng on the same kernel when `vng` is
installed (`pip install virtme-ng`); the guest image build time, cold and cached.

    .venv/bin/python bench/boot.py [--boots 5] [--cold] [--numa 2] [--kernel PATH]

--cold builds the image once more in a scratch cache (about a minute). Run it on an
otherwise idle machine: two TCG guests side by side each run ~1.3x slower.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from figures import record  # noqa: E402  (bench/figures.py, beside this file)

from harness import options, paths  # noqa: E402
from harness import spec as spec_mod  # noqa: E402
from harness.assets import image  # noqa: E402
from harness.machine.vm import VM, remove_run_dir  # noqa: E402

# vm.timings of a restore, in order, and what ends at each
RESTORE_STEPS = {"qmp_connected": "QEMU start", "console_ready": "state load",
                 "ssh_connected": "SSH login",
                 "ssh_ready": "first command (sets the clock)"}


def stats(values: list[float]) -> str:
    return (f"min {min(values):.2f}s  median {statistics.median(values):.2f}s  "
            f"max {max(values):.2f}s  (n={len(values)})")


def end_to_end(cmd: list[str]) -> float:
    t0 = time.monotonic()
    subprocess.run(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=False)
    return time.monotonic() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--boots", type=int, default=5)
    ap.add_argument("--cold", action="store_true", help="also time a cold image build")
    ap.add_argument("--numa", default=options.DEFAULT_NUMA)
    ap.add_argument("--kernel")
    ap.add_argument("--append", default="", help="extra kernel command line")
    args = ap.parse_args()

    t0 = time.monotonic()
    image.ensure()
    cached = time.monotonic() - t0
    build = None
    if args.cold:
        with tempfile.TemporaryDirectory(prefix="ksm-bench-cache-") as tmp:
            os.environ["KSM_HARNESS_CACHE"] = tmp
            t0 = time.monotonic()
            image.ensure(log=lambda _msg: None)
            build = time.monotonic() - t0
            del os.environ["KSM_HARNESS_CACHE"]

    spec = spec_mod.build(spec_mod.Options.of(kernel=args.kernel, numa=args.numa,
                                              append=args.append))
    cold_spec = dataclasses.replace(spec, snapshots=False)
    warm_spec = dataclasses.replace(spec, snapshots=True)
    cold, warm, console = [], [], []
    steps: dict[str, list[float]] = {}  # a restore's steps, cumulative from QEMU start
    run_dir = paths.new_run_dir("bench")
    try:
        VM(warm_spec, run_dir / "save").start().stop()  # makes the snapshot if missing
        for i in range(args.boots):
            for which, s, into in (("cold", cold_spec, cold), ("warm", warm_spec, warm)):
                vm = VM(s, run_dir / f"{which}-{i}")
                try:
                    vm.start()
                    assert (vm.restored is not None) == (which == "warm")
                    into.append(vm.timings["ssh_ready"])
                    if which == "cold":
                        console.append(vm.timings["console_ready"])
                    else:
                        for step in RESTORE_STEPS:
                            steps.setdefault(step, []).append(vm.timings.get(step, 0.0))
                finally:
                    vm.stop()
    finally:
        remove_run_dir(run_dir)
    ours = [end_to_end([sys.executable, "-m", "harness.cli", "boot", "--numa", args.numa,
                        *(["--kernel", args.kernel] if args.kernel else []), "--", "true"])
            for _ in range(args.boots)]
    vng = None
    if shutil.which("vng"):
        vng = [end_to_end(["vng", "--disable-kvm", "--run", str(spec.kernel.boot_image),
                           "--exec", "true"]) for _ in range(args.boots)]

    out: list[str] = []
    out.append(f"accelerator: {spec.accel.describe()}")
    out.append(f"kernel: {spec.kernel.describe()}; topology: {spec.topology.describe()}")
    out.append(f"QEMU start -> first SSH command, cold boot: {stats(cold)}")
    out.append(f"QEMU start -> first SSH command, restored:  {stats(warm)}")
    out.append(f"restored / cold (medians): "
               f"{statistics.median(warm) / statistics.median(cold):.2f}")
    out.append(f"QEMU start -> guest ready marker, cold:     {stats(console)}")
    medians = [statistics.median(steps[s]) for s in RESTORE_STEPS]
    out.append("restored, where it goes (medians): " + ", ".join(
        f"{RESTORE_STEPS[s]} {m - (medians[i - 1] if i else 0.0):.2f}s"
        for i, (s, m) in enumerate(zip(RESTORE_STEPS, medians))))
    out.append(f"`ksm-harness boot -- true`, end to end:     {stats(ours)}")
    if vng:
        out.append(f"`vng --disable-kvm --run VMLINUX --exec true`: {stats(vng)}; ours / vng "
                   f"(medians): {statistics.median(ours) / statistics.median(vng):.2f}")
    else:
        out.append("virtme-ng: not installed (pip install virtme-ng) - not compared")
    out.append(f"guest image, cached: {cached:.2f}s"
               + (f"; cold build: {build:.1f}s" if build else ""))
    print("\n".join(out))
    record("boot", out, kernel=spec.kernel.describe(), accel=spec.accel.describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
