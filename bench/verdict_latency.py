"""How long after the kernel's report does a wait on the guest end? Boots one guest, starts a
long wait on it (a workload-style read on its own channel), has the kernel log a BUG report
(written to /dev/kmsg: it takes the kernel's own path to the serial console), and prints the
time from the report's header on the console to the wait's end, over N tries.

    python bench/verdict_latency.py [--tries 3] [--kernel K]

Goal (issue "verdicts in seconds"): under 5 s. The deadline of the wait is 600 s.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from figures import record  # noqa: E402  (bench/figures.py, beside this file)

from harness import paths  # noqa: E402
from harness import spec as spec_mod  # noqa: E402
from harness.access.remote import GuestBroken  # noqa: E402
from harness.guest_handle import Guest  # noqa: E402
from harness.machine.vm import VM, remove_run_dir  # noqa: E402

BUG = ["kernel BUG at mm/rmap.c:1182!", "invalid opcode: 0000 [#1] PREEMPT SMP NOPTI",
       "RIP: 0010:page_add_anon_rmap+0x1f5/0x200", "Call Trace:", " <TASK>",
       " do_swap_page+0x6a3/0xb50", " </TASK>"]


def one(spec: spec_mod.VMSpec, run_dir: Path, i: int) -> float:
    vms: list[VM] = []

    def boot() -> VM:
        vm = VM(spec, run_dir / f"try-{i}")
        vms.append(vm)
        return vm.start()

    guest = Guest(boot, lambda vm: vm.stop())
    try:
        proc = guest.spawn("sleep 600")
        console = guest.vm.console
        assert console is not None
        start = console.mark()
        try:  # the write itself may already see the report coming
            guest.run("; ".join(f"echo '<4>{line}' > /dev/kmsg" for line in BUG), timeout=60)
        except GuestBroken:
            pass
        try:
            proc.read_line(600)
        except GuestBroken:
            ended = time.monotonic()
        else:
            raise SystemExit("the wait ended without the report")
        line = console.wait_for_line("kernel BUG at", 5, start)
        assert line is not None
        seen = console.times[line]
        return ended - seen
    finally:
        guest.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tries", type=int, default=3)
    p.add_argument("--kernel", default=None)
    args = p.parse_args()
    spec = spec_mod.build(spec_mod.Options.of(kernel=args.kernel))
    run_dir = paths.new_run_dir("bench")
    try:
        took = [one(spec, run_dir, i) for i in range(args.tries)]
    finally:
        remove_run_dir(run_dir)
    line = (f"report on the console -> wait ended: median {statistics.median(took):.2f}s "
            f"(min {min(took):.2f}, max {max(took):.2f}, n={len(took)}); the wait's deadline: "
            f"600 s")
    print(line)
    record("verdict_latency", [line], kernel=spec.kernel.describe(),
           accel=spec.accel.describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
