"""Boot figures: time from QEMU start to the first successful SSH command (min/median/max
over several boots), and the guest image build time, cold and cached.

    .venv/bin/python bench/boot.py [--boots 5] [--cold] [--numa 2] [--kernel PATH]

--cold builds the image once more in a scratch cache (about a minute). Run it on an
otherwise idle machine: two TCG guests side by side each run ~1.3x slower.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import paths  # noqa: E402
from harness import spec as spec_mod
from harness.assets import image
from harness.machine.vm import VM, remove_run_dir  # noqa: E402


def stats(values: list[float]) -> str:
    return (f"min {min(values):.2f}s  median {statistics.median(values):.2f}s  "
            f"max {max(values):.2f}s  (n={len(values)})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--boots", type=int, default=5)
    ap.add_argument("--cold", action="store_true", help="also time a cold image build")
    ap.add_argument("--numa", default="2")
    ap.add_argument("--kernel")
    ap.add_argument("--append", default="", help="extra kernel command line")
    args = ap.parse_args()

    t0 = time.monotonic()
    image.ensure()
    cached = time.monotonic() - t0
    cold = None
    if args.cold:
        with tempfile.TemporaryDirectory(prefix="ksm-bench-cache-") as tmp:
            os.environ["KSM_HARNESS_CACHE"] = tmp
            t0 = time.monotonic()
            image.ensure(log=lambda _msg: None)
            cold = time.monotonic() - t0
            del os.environ["KSM_HARNESS_CACHE"]

    spec = spec_mod.build(spec_mod.Options.of(kernel=args.kernel, numa=args.numa, append=args.append))
    ssh, console = [], []
    run_dir = paths.new_run_dir("bench")
    try:
        for i in range(args.boots):
            vm = VM(spec, run_dir / f"boot-{i}")
            try:
                vm.start()
                ssh.append(vm.timings["ssh_ready"])
                console.append(vm.timings["console_ready"])
            finally:
                vm.stop()
    finally:
        remove_run_dir(run_dir)

    print(f"accelerator: {spec.accel.describe()}")
    print(f"kernel: {spec.kernel.describe()}; topology: {spec.topology.describe()}")
    print(f"QEMU start -> first SSH command ok: {stats(ssh)}")
    print(f"QEMU start -> guest ready marker:   {stats(console)}")
    print(f"guest image, cached: {cached:.2f}s" + (f"; cold build: {cold:.1f}s" if cold else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
