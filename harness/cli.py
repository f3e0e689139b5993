"""ksm-harness: the command line. Sub-commands only wire options to modules; user errors
end in one line `ksm-harness: ...` and a non-zero exit, never a traceback."""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

from harness import paths
from harness import spec as spec_mod
from harness.access.remote import CommandTimeout
from harness.errors import HarnessError
from harness.machine import reaper

EPILOG = """examples:
  ksm-harness boot -- cat /sys/devices/system/node/online
  ksm-harness boot --kernel ~/linux/arch/x86/boot/bzImage --numa 1G:1,1G:1
  ksm-harness run --junitxml results/junit.xml
  ksm-harness triage --json console.log
"""


def add_vm_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("guest")
    g.add_argument("-k", "--kernel", metavar="PATH",
                   help="bzImage, vmlinux or kernel build tree (default: Debian's "
                        "linux-image-amd64, fetched with apt-get download)")
    g.add_argument("--modules", metavar="DIR",
                   help="module tree for --kernel (DIR/lib/modules/<release> or that dir)")
    g.add_argument("--numa", default="2", metavar="SPEC",
                   help="NUMA nodes: a count (2 = two nodes of 1 GiB and 1 CPU), or "
                        "MEM[:CPUS] per node, comma separated, e.g. 512M:1,1536M:1")
    g.add_argument("--accel", default="auto", choices=["auto", "kvm", "tcg"],
                   help="auto probes KVM with a short deadline and falls back to TCG")
    g.add_argument("--append", default="", metavar="ARGS",
                   help="extra kernel command line, e.g. --append 'transparent_hugepage=always'")
    g.add_argument("--swap-disk", metavar="SIZE", help="add a swap disk (serial 'swap'), e.g. 512M")
    g.add_argument("--image", metavar="QCOW2", help="use this base image instead of the recipe's")
    g.add_argument("--boot-timeout", type=float, default=0.0, metavar="S",
                   help="seconds to wait for the guest (default 180 under TCG, 60 under KVM)")


def options_from(args: argparse.Namespace) -> spec_mod.Options:
    return spec_mod.Options(kernel=args.kernel, modules=args.modules, numa=args.numa,
                            accel=args.accel, append=args.append, swap_disk=args.swap_disk,
                            image=args.image, boot_timeout=args.boot_timeout)


def cmd_boot(args: argparse.Namespace) -> int:
    from harness.machine.vm import VM
    spec = spec_mod.build(options_from(args))
    run_dir = paths.new_run_dir("boot")
    vm = VM(spec, run_dir)
    if args.dry_run:
        print(shlex.join(vm.dry_run()))
        vm.stop()
        return 0
    print(f"ksm-harness: booting (console log: {vm.console_log})", file=sys.stderr, flush=True)
    try:
        vm.start()
        t = vm.timings
        print(f"ksm-harness: guest ready in {t['ssh_ready']:.1f}s "
              f"(console {t['console_ready']:.1f}s)", file=sys.stderr, flush=True)
        if args.command:
            cmd = shlex.join(args.command) if len(args.command) > 1 else args.command[0]
            try:
                r = vm.run(cmd, timeout=args.timeout)
            except CommandTimeout as exc:
                print(f"ksm-harness: {exc}; console tail:\n{vm.console.tail(20) if vm.console else ''}",
                      file=sys.stderr)
                return 124
            sys.stdout.write(r.stdout)
            sys.stderr.write(r.stderr)
            return r.status
        return _interactive(vm, run_dir)
    finally:
        vm.stop()
        if not args.keep:
            from harness.machine.vm import remove_run_dir
            remove_run_dir(run_dir)


def _interactive(vm, run_dir: Path) -> int:
    """An SSH shell when the ssh client exists, else the serial console."""
    import shutil
    if shutil.which("ssh") and vm.ssh is not None:
        key = run_dir / "id_ed25519"
        key.write_text("")
        key.chmod(0o600)
        vm.ssh.client_key.write_private_key_file(str(key))
        known = run_dir / "known_hosts"
        known.write_text(f"[127.0.0.1]:{vm.port} {vm.ssh.host_key.get_name()} "
                         f"{vm.ssh.host_key.get_base64()}\n")
        return subprocess.call(["ssh", "-i", str(key), "-p", str(vm.port),
                                "-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes",
                                "-o", "LogLevel=ERROR", "root@127.0.0.1"])
    print("ksm-harness: no ssh client; attaching to the serial console (Ctrl-] to leave)",
          file=sys.stderr)
    assert vm.child is not None
    vm.child.interact()
    return 0


def cmd_triage(args: argparse.Namespace) -> int:
    from harness.console import triage
    return triage.main(args.rest)


def cmd_pytest(args: argparse.Namespace, default_paths: list[str]) -> int:
    """`run` (the KSM suite) and `selftest` (our own tests) both go through pytest."""
    import pytest
    argv = [a for a in args.rest if a != "--"]
    if not any(_is_test_path(a) for a in argv):
        argv += [str(paths.REPO / p) for p in default_paths]
    return int(pytest.main(["-c", str(paths.REPO / "tox.ini"), "--rootdir", str(paths.REPO)]
                           + argv))


def _is_test_path(arg: str) -> bool:
    """A test file, directory or node id, as opposed to an option's value."""
    if arg.startswith("-"):
        return False
    path = arg.split("::")[0]
    if "::" in arg or path.endswith(".py"):
        return True
    # a directory counts only inside our tests/: `--kernel ~/linux` is an option's value
    tests = paths.REPO / "tests"
    return os.path.isdir(path) and (Path(path).resolve() == tests
                                    or tests in Path(path).resolve().parents)


def _add_bisect_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tree", required=True, metavar="PATH", help="kernel git tree")
    p.add_argument("-k", dest="scenario", required=True, metavar="SCENARIO",
                   help="pytest -k expression selecting the scenario in tests/ksm")
    p.add_argument("--runs", type=int, default=1, metavar="N",
                   help="run the scenario N times per commit (bad if any run matches)")
    p.add_argument("--report-dir", default="results", metavar="DIR",
                   help="where verdicts, results and the signature go (default results/)")
    p.add_argument("-j", "--jobs", type=int, default=None, help="make -j (default: all CPUs)")


def cmd_bisect(args: argparse.Namespace) -> int:
    from harness.runs import bisect
    tree = Path(args.tree).expanduser()
    if not tree.is_dir():
        raise HarnessError(f"--tree {tree}: no such directory")
    if args.runs < 1:
        raise HarnessError("--runs must be at least 1")
    if args.cmd == "bisect":
        return bisect.bisect(tree, args.good, args.bad, args.scenario, args.runs,
                             Path(args.report_dir), args.jobs)
    # under `git bisect run` any status 1..127 but 125 means "bad": our own errors must abort
    try:
        sig = bisect.Signature.load(Path(args.signature)) if args.signature else None
        return bisect.step(tree.resolve(), args.scenario, args.runs, sig,
                           Path(args.report_dir), args.jobs).status
    except Exception as exc:  # noqa: BLE001 -- never let a traceback read as "bad"
        print(f"ksm-harness: bisect-step: {exc}", file=sys.stderr)
        return bisect.ABORT


def cmd_junit_check(args: argparse.Namespace) -> int:
    from harness.results.report import validate_junit
    bad = 0
    for f in args.files:
        if not Path(f).is_file():
            raise HarnessError(f"{f}: no such file")
        try:
            errors = validate_junit(Path(f))
        except FileNotFoundError as exc:
            raise HarnessError(str(exc)) from None
        print(f"{f}: {'valid' if not errors else 'INVALID'} (junit-10.xsd)")
        for e in errors:
            print(f"  {e}")
        bad += bool(errors)
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ksm-harness", epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     description="Test Linux KSM in real QEMU NUMA guests.")
    sub = parser.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("boot", help="boot a guest, run CMD (or a shell), exit with its status")
    add_vm_options(p)
    p.add_argument("--dry-run", action="store_true", help="print the QEMU command line and exit")
    p.add_argument("--keep", action="store_true", help="keep the run directory (console log)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds for CMD (default 600)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")

    p = sub.add_parser("triage", help="classify kernel reports in a saved console log",
                       add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)

    for name, helptext in (("run", "run the KSM scenario suite (pytest options pass through)"),
                           ("selftest", "run ksm-harness's own tests (host, guest, and "
                                        "the KSM suite on the default kernel)")):
        p = sub.add_parser(name, help=helptext, add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)

    p = sub.add_parser("build", help="configure (the tree's .config or defconfig, + "
                       "guest-images/kernel.config, checked) and build a kernel tree; or "
                       "build Debian's linux-source into the cache (--source)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--tree", metavar="PATH", help="kernel source tree")
    where.add_argument("--source", nargs="?", const="6.1", metavar="SERIES",
                       help="Debian's linux-source-SERIES (default 6.1), fetched, built "
                       "with --flavour (default builtin) and cached: what --kernel "
                       "source:SERIES[+debug] boots")
    p.add_argument("--flavour", choices=["builtin", "debug"], default=None,
                   help="builtin: allnoconfig + guest-images/kernel-builtin.config + "
                   "kernel.config, no modules; debug: that + "
                   "guest-images/kernel-debug.config (DEBUG_VM, DEBUG_LIST, KFENCE, ...)")
    p.add_argument("-j", "--jobs", type=int, default=None, help="make -j (default: all CPUs)")
    p.add_argument("--defconfig", action="store_true",
                   help="start from x86_64 defconfig even when the tree has a .config")
    p.add_argument("--slim", action="store_true",
                   help="also merge guest-images/kernel-slim.config (no graphics, sound, USB, "
                   "wireless, ...): about half the build time")

    p = sub.add_parser("bisect-step", help="for `git bisect run`: build, run a scenario N "
                       "times; exit 0 good, 1 bad (same failure signature), 125 skip")
    _add_bisect_options(p)
    p.add_argument("--signature", metavar="FILE",
                   help="the bad end's failure signature (from `ksm-harness bisect`); without "
                        "it any kernel report or assertion failure is bad")

    p = sub.add_parser("bisect", help="record the bad end's failure, drive git bisect, print "
                       "the first bad commit with its evidence")
    _add_bisect_options(p)
    p.add_argument("--good", required=True, metavar="REV")
    p.add_argument("--bad", required=True, metavar="REV")

    p = sub.add_parser("junit-check", help="validate JUnit XML against Jenkins' junit-10.xsd")
    p.add_argument("files", nargs="+", metavar="XML")

    argv = sys.argv[1:] if argv is None else argv
    # A shell starts background jobs with SIGINT ignored, and Python then installs no
    # KeyboardInterrupt handler: Ctrl-C (or kill -INT) must always stop us and our QEMUs.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if argv[:1] and argv[0] in ("triage", "run", "selftest"):
        # their options belong to triage / pytest: pass them through untouched
        args = argparse.Namespace(cmd=argv[0], rest=argv[1:])
    else:
        args = parser.parse_args(argv)
    if getattr(args, "command", None) and args.command[:1] == ["--"]:
        args.command = args.command[1:]
    try:
        for msg in reaper.clean_stale():
            print(f"ksm-harness: {msg}", file=sys.stderr)
        if args.cmd == "boot":
            return cmd_boot(args)
        if args.cmd == "triage":
            return cmd_triage(args)
        if args.cmd == "run":
            from harness.runs import matrix
            if matrix.wanted(args.rest):
                return matrix.main(args.rest)
            return cmd_pytest(args, ["tests/ksm"])
        if args.cmd == "build":
            from harness.runs import build
            return build.main(args.tree, args.jobs, args.defconfig, args.slim,
                              args.flavour, args.source)
        if args.cmd in ("bisect-step", "bisect"):
            return cmd_bisect(args)
        if args.cmd == "junit-check":
            return cmd_junit_check(args)
        if args.cmd == "selftest":
            # ours: host tests, the harness on real guests, and the KSM suite itself on the
            # default kernel (it must pass there, or the product is broken)
            return cmd_pytest(args, ["tests/unit", "tests/guest", "tests/ksm"])
    except HarnessError as exc:
        print(f"ksm-harness: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("ksm-harness: interrupted", file=sys.stderr)
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
