"""ksm-harness: the command line. Sub-commands only wire options to modules; user errors
end in one line `ksm-harness: ...` and a non-zero exit, never a traceback."""
from __future__ import annotations

import argparse
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NoReturn

from harness import options, paths, reaper
from harness import spec as spec_mod
from harness.access.remote import CommandTimeout
from harness.errors import HarnessError, host_file_line
from harness.version import harness_version

EPILOG = """examples:
  ksm-harness boot -- cat /sys/devices/system/node/online
  ksm-harness boot --kernel ~/linux/arch/x86/boot/bzImage --numa 1G:1,1G:1
  ksm-harness run --junitxml results/junit.xml
  ksm-harness triage --json console.log
"""


GUEST_FAILED = 255  # like ssh: the guest (not the command) failed


def _guest_failed(vm, why: str) -> int:
    """The guest panicked, died or never came up: the kernel report's title (else why) on
    stderr, the console log kept, status 255."""
    from harness import health
    from harness.console.classify import classify_text
    from harness.findings import rank
    vm.wait_exit(5.0)  # a panic ends QEMU (panic=-1, -no-reboot): let the report land
    try:
        text = vm.console_log.read_text(errors="replace")
    except OSError:
        text = ""
    reports = rank(health.report_finding(r) for r in classify_text(text))
    title = reports[0].title if reports else why.splitlines()[0]
    print(f"ksm-harness: guest failed: {title}", file=sys.stderr)
    print(f"ksm-harness: console log kept: {vm.console_log}", file=sys.stderr, flush=True)
    return GUEST_FAILED


def cmd_boot(args: argparse.Namespace) -> int:
    from harness.errors import VMError
    from harness.machine.vm import VM, remove_run_dir
    spec = spec_mod.build(spec_mod.Options.of(args))
    if args.dry_run:
        # outside the runs directory: the reaper frees run directories of dead processes
        keep = paths.cache_dir() / "dry-run" / time.strftime("boot-%Y%m%d-%H%M%S")
        keep.mkdir(parents=True, exist_ok=True)
        print(shlex.join(VM(spec, keep).dry_run()))
        print(f"ksm-harness: the command's files (overlay, initrd) are in {keep}: remove that "
              "directory when done", file=sys.stderr)
        return 0
    run_dir = paths.new_run_dir("boot")
    vm = VM(spec, run_dir)
    print(f"ksm-harness: booting (console log: {vm.console_log})", file=sys.stderr, flush=True)
    keep_dir = args.keep
    try:
        try:
            vm.start()
        except VMError as exc:
            if vm.child is None:  # QEMU never started (e.g. the kernel lacks virtio): exit 2
                raise
            keep_dir = True
            return _guest_failed(vm, str(exc))
        t = vm.timings
        print(f"ksm-harness: guest ready in {t['ssh_ready']:.1f}s "
              f"(console {t['console_ready']:.1f}s)", file=sys.stderr, flush=True)
        if not args.command:
            return _interactive(vm, run_dir)
        cmd = shlex.join(args.command) if len(args.command) > 1 else args.command[0]
        try:
            r = vm.run(cmd, timeout=args.timeout)
        except CommandTimeout as exc:
            keep_dir = True
            if vm.alive() is not None:
                return _guest_failed(vm, str(exc))
            print(f"ksm-harness: {exc}; console log kept: {vm.console_log}", file=sys.stderr)
            return 124
        except Exception as exc:  # noqa: BLE001 -- the connection died with the guest
            keep_dir = True
            return _guest_failed(vm, f"{type(exc).__name__}: {exc}")
        if vm.alive() is not None or r.status < 0:  # the guest died under the command
            keep_dir = True
            return _guest_failed(vm, vm.alive() or "guest died")
        sys.stdout.write(r.stdout)
        sys.stderr.write(r.stderr)
        return r.status
    finally:
        vm.stop()
        if not keep_dir:
            remove_run_dir(run_dir)


def _interactive(vm, run_dir: Path) -> int:
    """An SSH shell when the ssh client exists, else the serial console."""
    import shutil
    if shutil.which("ssh") and vm.ssh is not None:
        key = run_dir / "id_ecdsa"
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


def _add_bisect_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tree", required=True, metavar="PATH", help="kernel git tree")
    p.add_argument("-k", "--scenario", dest="scenario", required=True, metavar="EXPR",
                   help="pytest -k expression selecting the scenario in tests/ksm (the same "
                        "-k as run's), e.g. -k test_lone_page_beyond_the_cap_stays_unshared")
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


def cmd_plan(args: argparse.Namespace) -> int:
    from harness import cells
    from harness.runs import cells as cell_runs
    plan = cells.plan(args.kernel or [], args.numa or [], args.modules)
    argv = [a for k in args.kernel or [] for a in ("--kernel", k)] + \
        [a for n in args.numa or [] for a in ("--numa", n)]
    print(cell_runs.plan_output(plan, args.format, argv, args.runner_tag))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import json

    from harness.results import kcidb
    from harness.results.model import load_results
    from harness.runs import cells as cell_runs
    files = []
    for f in cell_runs.result_files([Path(p) for p in args.results or ["results"]]):
        try:
            doc, results = load_results(f)
        except (OSError, ValueError) as exc:
            raise HarnessError(f"export: {exc}") from None
        files.append((doc, results, f.parent))
    if not files:
        raise HarnessError(f"export: no results.json under {' '.join(args.results or ['results'])}")
    try:
        data = kcidb.export(files, args.origin, args.artifacts_url,
                            Path(args.artifacts_root) if args.artifacts_root else None)
    except ValueError as exc:
        raise HarnessError(str(exc)) from None
    try:
        import kcidb_io  # the dev extra; KCIDB's own schema when it is installed
    except ImportError:
        pass
    else:
        try:
            kcidb_io.schema.V5_0.validate_exactly(data)
        except Exception as exc:  # noqa: BLE001 -- jsonschema's ValidationError
            raise HarnessError(f"export kcidb: invalid against KCIDB's schema: "
                               f"{str(exc).splitlines()[0]}") from None
    text = json.dumps(data, indent=1) + "\n"
    if args.output and args.output != "-":
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text)
        print(f"ksm-harness: {len(data['tests'])} tests, {len(data['builds'])} build(s) in "
              f"{args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    """A user's tree (--tree), or Debian's linux-source (--source) with a flavour."""
    from harness.assets import kbuild

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)
    if args.tree is None:
        from harness.assets import source
        spec = source.parse_spec(f"source:{args.source or source.DEFAULT_SERIES}"
                                 f"+{args.flavour or 'builtin'}")
        out = source.build(spec, jobs=args.jobs, log=log)
        print(f"ksm-harness: {out}; boot it with --kernel {spec}")
        return 0
    if args.flavour and (args.defconfig or args.slim):
        raise HarnessError("--flavour starts from allnoconfig: --defconfig and --slim do not "
                           "apply")
    r = kbuild.build(Path(args.tree), args.jobs, log=log, defconfig=args.defconfig,
                     slim=args.slim, flavour=args.flavour)
    print(f"ksm-harness: built {r.image} in {r.seconds:.0f}s"
          f"{' (ccache)' if r.ccache else ''}; boot it with --kernel {r.tree}")
    return 0


def cmd_junit_check(args: argparse.Namespace) -> int:
    from harness.results.junit import validate as validate_junit
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


class _Parser(argparse.ArgumentParser):
    """Errors in one line that names the verb and where its syntax is, not argparse's usage
    block and exit status."""

    def error(self, message: str) -> NoReturn:
        verb = self.prog.removeprefix("ksm-harness").strip()
        raise HarnessError(f"{verb + ': ' if verb else ''}{message} (see {self.prog} --help)")


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="ksm-harness", epilog=EPILOG, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     description="Test Linux KSM in real QEMU NUMA guests.")
    parser.add_argument("--version", action="version", version=f"ksm-harness {harness_version()}")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="VERB")

    p = sub.add_parser("boot", help="boot a guest, run CMD (or a shell), exit with its status "
                       "(255: the guest panicked or died; the kernel report's title on stderr)",
                       allow_abbrev=False)
    options.add_to_argparse(p)
    p.add_argument("--dry-run", action="store_true",
                   help="print a QEMU command line that runs the guest (its files are kept, and "
                        "where is said) and exit")
    p.add_argument("--keep", action="store_true",
                   help="keep the run directory (console log); a failed boot keeps it anyway")
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

    p = sub.add_parser("plan", help="list the cells (kernel x topology) of a run with their "
                       "ids, or a CI job matrix of them")
    p.add_argument("--kernel", action="append", metavar="KERNEL",
                   help=options.BY_FLAG["--kernel"].help + "; repeat for more columns")
    p.add_argument("--numa", action="append", metavar="SPEC",
                   help=options.BY_FLAG["--numa"].help + "; repeat for more columns")
    p.add_argument("--modules", metavar="DIR", help=options.BY_FLAG["--modules"].help)
    p.add_argument("--format", choices=("text", "json", "github", "gitlab"), default="text",
                   help="text (default), json, github (a strategy.matrix 'include' list), "
                        "gitlab (a child pipeline: a job per cell, then merge)")
    p.add_argument("--runner-tag", metavar="TAG", help="gitlab: the runners' tag (e.g. kvm)")

    p = sub.add_parser("merge", help="combine cells' and shards' results (from `run --cell` "
                       "/ `run --shard`) into the matrix table, matrix.json, JUnit and HTML")
    p.add_argument("dirs", nargs="+", metavar="DIR",
                   help="directories holding results.json files (searched recursively), or "
                        "results files")
    p.add_argument("--baseline", metavar="FILE",
                   help="a results.json or matrix.json: only new failures fail the merge")
    p.add_argument("--out", default="results/matrix", metavar="DIR",
                   help="where matrix.json, matrix-junit.xml, matrix.html go (default "
                        "results/matrix)")

    p = sub.add_parser("export", help="export results in another system's format")
    esub = p.add_subparsers(dest="format", required=True)
    e = esub.add_parser("kcidb", help="KCIDB I/O data (schema v5) for kcidb-submit")
    e.add_argument("--origin", required=True, metavar="NAME",
                   help="your CI system's KCIDB origin (lower-case letters, digits, _)")
    e.add_argument("results", nargs="*", metavar="RESULTS",
                   help="results.json files or directories holding them (default results/)")
    e.add_argument("-o", "--output", metavar="FILE", help="write here (default stdout)")
    e.add_argument("--artifacts-url", metavar="URL",
                   help="where the results directory is published (e.g. the CI job's "
                        "artifacts URL): output files get URLs under it instead of file://")
    e.add_argument("--artifacts-root", metavar="DIR",
                   help="the local directory --artifacts-url corresponds to (default: the "
                        "current directory)")

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
        try:
            args = parser.parse_args(argv)
        except HarnessError as exc:
            msg = str(exc)
            if argv and argv[0] in sub.choices and msg.startswith("unrecognized arguments"):
                msg = msg.replace("(see ksm-harness --help)",
                                  f"(see ksm-harness {argv[0]} --help)")
                msg = f"{argv[0]}: {msg}"
            print(f"ksm-harness: {msg}", file=sys.stderr)
            return exc.exit_code
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
            from harness.pytest_plugin import session
            from harness.runs import cells as cell_runs
            from harness.runs import runargs
            if runargs.check(args.rest) is None:
                return 0  # help printed
            if cell_runs.wanted(args.rest):
                return cell_runs.run(args.rest)
            return session.run(args.rest, ["tests/ksm"])
        if args.cmd == "plan":
            return cmd_plan(args)
        if args.cmd == "merge":
            from harness.runs import cells as cell_runs
            return cell_runs.merge([Path(d) for d in args.dirs], args.baseline, Path(args.out))
        if args.cmd == "build":
            return cmd_build(args)
        if args.cmd in ("bisect-step", "bisect"):
            return cmd_bisect(args)
        if args.cmd == "export":
            return cmd_export(args)
        if args.cmd == "junit-check":
            return cmd_junit_check(args)
        if args.cmd == "selftest":
            # ours: host tests, the harness on real guests, and the KSM suite itself on the
            # default kernel (it must pass there, or the product is broken)
            from harness.pytest_plugin import session
            return session.run(args.rest, ["tests/unit", "tests/guest", "tests/ksm"])
    except HarnessError as exc:
        print(f"ksm-harness: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("ksm-harness: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        # the host's file system failed us (full, read-only, no permission): name the file
        line = host_file_line(exc)
        if line is None:
            raise
        print(f"ksm-harness: {line}", file=sys.stderr)
        return 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
