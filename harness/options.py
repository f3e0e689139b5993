"""The options, declared once. The guest options feed argparse (``boot``, ``run``), pytest's
options (``run``, ``selftest``, plain pytest), the matrix's split of its argument list and a
reproducer's argument list; the run-level options feed ``run --help`` and pytest; so an
option is added, renamed or documented in one place. (A report file's option is declared with
its writer: harness.results.writers.)
"""
from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class Option:
    dest: str
    help: str
    default: Any = None
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    type: Callable[[str], Any] = str
    env: str | None = None         # environment variable giving the default
    matrix: bool = False           # may repeat: one column of the matrix per value
    reproduce: bool = True         # part of a failing test's re-run command
    switch: bool = False           # takes no value: present or not
    group: str = "guest"           # where ``run --help`` and pytest's help list it

    @property
    def flag(self) -> str:
        return "--" + self.dest.replace("_", "-")

    def default_value(self) -> Any:
        if self.env and os.environ.get(self.env):
            return self.type(os.environ[self.env])
        return self.default

    def kwargs(self) -> dict[str, Any]:
        if self.switch:
            return {"dest": self.dest, "help": self.help, "action": "store_true"}
        kw: dict[str, Any] = {"dest": self.dest, "help": self.help,
                              "default": self.default_value()}
        if self.metavar:
            kw["metavar"] = self.metavar
        if self.choices:
            kw["choices"] = list(self.choices)
        if self.type is not str:
            kw["type"] = self.type
        return kw


def seconds(text: str) -> float:
    """A duration option's value: a number >= 0 (argparse and pytest say which option)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0 or value == float("inf"):  # NaN fails the comparison
        raise argparse.ArgumentTypeError(f"{text} is not a number of seconds >= 0")
    return value


DEFAULT_NUMA = "2"  # two nodes of 1 GiB and 1 CPU: the smallest machine where NUMA matters

def _guest(help: str, default: Any = None, **declared: Any) -> Any:
    """A guest option as a field of GuestOptions: the field is its name and type, ``declared``
    the rest of its Option (typed Any for the field's default, as dataclasses.field is)."""
    return field(default=default, metadata={"option": dict(help=help, default=default,
                                                           **declared)})


@dataclass
class GuestOptions:
    """The guest options, each declared once as a typed field; ``VM_OPTIONS`` is read from
    these fields, and harness.spec.Options (what a VM is built from) extends this class."""
    kernel: str | None = _guest(
        "bzImage, vmlinux or kernel build tree, or debian[:PACKAGE] (default: Debian's "
        "linux-image-amd64, fetched with apt-get download)", metavar="KERNEL",
        env="KSM_HARNESS_KERNEL", matrix=True)  # None: Debian's default
    modules: str | None = _guest(
        "module tree for --kernel (DIR/lib/modules/<release> or that dir)", metavar="DIR")
    numa: str = _guest(
        "NUMA nodes: a count (2 = two nodes of 1 GiB and 1 CPU), or MEM[:CPUS] per node, comma "
        "separated, e.g. 512M:1,1536M:1", DEFAULT_NUMA, metavar="SPEC", matrix=True)
    accel: str = _guest("auto probes KVM with a short deadline and falls back to TCG", "auto",
                        choices=("auto", "kvm", "tcg"))
    append: str = _guest("extra kernel command line, e.g. --append "
                         "'transparent_hugepage=always'", "", metavar="ARGS")
    swap_disk: str | None = _guest("add a swap disk (serial 'swap'), e.g. 512M", metavar="SIZE")
    image: str | None = _guest("use this base qcow2 image instead of the recipe's",
                               metavar="QCOW2")
    boot_timeout: float = _guest(
        "seconds to wait for the guest (default 180 under TCG, 60 under KVM)", 0.0, type=seconds,
        metavar="S", reproduce=False)  # 0: chosen from the accelerator
    snapshot: str = _guest(
        "auto: the first guest of a kernel and topology is saved once ready, later ones start "
        "from it (about 1 s instead of a boot); off: boot every guest", "auto",
        choices=("auto", "off"), reproduce=False)


VM_OPTIONS: tuple[Option, ...] = tuple(Option(f.name, **f.metadata["option"])
                                       for f in fields(GuestOptions))

# Options of a whole run (``ksm-harness run``, pytest), not of a guest.
RUN_OPTIONS: tuple[Option, ...] = (
    Option("ksm_seed", "seed of the KSM knob-chaos scenario (default: $KSM_SEED, else random; "
           "a failure prints the seed to rerun with)", type=int, metavar="N",
           group="selection"),
    Option("fuzz_seed", "seed of the generated operation sequences (test_generated; default: "
           "$KSM_FUZZ_SEED, else today's UTC date as YYYYMMDD: a new seed each night, the same "
           "all day)", type=int, metavar="N", env="KSM_FUZZ_SEED", group="selection"),
    Option("fuzz_minutes", "time budget of test_generated's generation (default 1.25: the "
           "slice of a suite run; ksm-harness fuzz --minutes sets it)", type=float,
           metavar="M", group="selection"),
    Option("fuzz_replay", "run test_generated on a reproducer file's steps instead of "
           "generating (ksm-harness fuzz --replay)", metavar="FILE", group="selection"),
    Option("keep_runs", "keep each VM's run directory (overlay, initrd) after the run",
           switch=True, group="reports"),
    Option("report_dir", "results.json, failures with reproducers and console logs, and "
           "summary.html of a run with guest tests (default: results/)", metavar="DIR",
           group="reports"),
    Option("gcov_dir", "dump the guest kernel's gcov counters (a source:6.1+gcov kernel) into "
           "DIR after every test and before every VM stops, for `ksm-harness coverage`",
           metavar="DIR", group="reports"),
    Option("shard", "run the I-th of N contiguous slices of the selected tests (1-based)",
           metavar="I/N", group="cells"),
)

BY_FLAG = {o.flag: o for o in VM_OPTIONS + RUN_OPTIONS}


def add_to_argparse(parser: argparse.ArgumentParser | Any, title: str = "guest") -> None:
    group = parser.add_argument_group(title)
    for o in VM_OPTIONS:
        group.add_argument(o.flag, **o.kwargs())


def add_to_pytest(groups: Callable[[str], Any], opts: Iterable[Option]) -> None:
    """Each option into its pytest OptionGroup, ``groups(o.group)`` (typed loosely: only the
    plugin imports pytest)."""
    for o in opts:
        groups(o.group).addoption(o.flag, **o.kwargs())


def values(source: Any) -> dict[str, Any]:
    """Every VM option's value from an argparse Namespace or pytest's ``config.option``."""
    return {o.dest: getattr(source, o.dest, o.default_value()) for o in VM_OPTIONS}


def to_argv(vals: Mapping[str, Any]) -> list[str]:
    """The options that differ from their defaults, as arguments (a reproducer's command)."""
    argv: list[str] = []
    for o in VM_OPTIONS:
        value = vals.get(o.dest)
        if not o.reproduce or value in (None, ""):
            continue
        if value == o.default and o.dest != "numa":  # the topology is always spelled out
            continue
        argv += [o.flag, str(value)]
    return argv


def split_repeated(argv: Sequence[str], extra: Iterable[str] = ("--baseline",)
                   ) -> tuple[dict[str, list[str]], list[str]]:
    """The values of every matrix option (and of ``extra`` flags) and the other arguments:
    ``--kernel A --kernel=B -k x`` -> ({"kernel": ["A", "B"], ...}, ["-k", "x"])."""
    flags = {o.flag: o.dest for o in VM_OPTIONS if o.matrix}
    flags.update({f: f.lstrip("-").replace("-", "_") for f in extra})
    found: dict[str, list[str]] = {dest: [] for dest in flags.values()}
    rest: list[str] = []
    it = iter(argv)
    for a in it:
        flag, eq, inline = a.partition("=")
        if flag in flags:
            value = inline if eq else next(it, None)
            if value is None:
                raise ValueError(f"{flag} needs a value")
            found[flags[flag]].append(value)
        else:
            rest.append(a)
    return found, rest
