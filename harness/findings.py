"""What makes a test fail, as data: a :class:`Finding` with a :class:`Category`.

The classifier, the hang detector, the leak checks and the KSM assertions all produce
findings; :func:`rank` orders them in the one way every consumer (the failure title, JUnit,
JSON, the matrix, bisect signatures) uses: the cause first, consequences after it.
"""
from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any


class Kind(enum.IntEnum):
    """Rank classes, most telling first: a kernel report names the bug, a hang or a lost VM
    is usually its consequence, an assertion is what a test saw of it, and an infrastructure
    problem says nothing about the kernel."""
    KERNEL = 0
    HANG = 1
    ASSERTION = 2
    INFRA = 3


class Category(enum.Enum):
    # kernel reports (the classifier's categories)
    WARNING = "WARNING"
    BUG = "BUG"
    OOPS = "OOPS"
    PANIC = "PANIC"
    KASAN = "KASAN"
    KFENCE = "KFENCE"
    KMSAN = "KMSAN"
    KCSAN = "KCSAN"
    UBSAN = "UBSAN"
    GPF = "GPF"
    PAGING_REQUEST = "PAGING_REQUEST"
    NULL_DEREF = "NULL_DEREF"
    HUNG_TASK = "HUNG_TASK"
    SOFT_LOCKUP = "SOFT_LOCKUP"
    HARD_LOCKUP = "HARD_LOCKUP"
    RCU_STALL = "RCU_STALL"
    BAD_PAGE_STATE = "BAD_PAGE_STATE"
    BAD_PAGE_MAP = "BAD_PAGE_MAP"
    BAD_RSS_COUNTER = "BAD_RSS_COUNTER"
    LIST_CORRUPTION = "LIST_CORRUPTION"
    REFCOUNT = "REFCOUNT"
    LOCKDEP = "LOCKDEP"
    ATOMIC_SLEEP = "ATOMIC_SLEEP"
    MEMORY_LEAK = "MEMORY_LEAK"
    VM_BUG_ON = "VM_BUG_ON"
    OOM = "OOM"
    NETDEV_WAIT = "NETDEV_WAIT"
    KERNEL = "KERNEL"            # a report kind this enum does not name yet
    TAINT = "TAINT"              # a new taint bit with no report on the console
    # the guest stopped answering, or died
    HANG = "HANG"
    VM_DEAD = "VM_DEAD"
    # what the test itself saw
    ASSERTION = "ASSERTION"      # a counter, an errno, an invariant
    CORRUPTION = "CORRUPTION"    # a workload read back other bytes than it wrote
    LEAK = "LEAK"                # counters or slabs not back at their baseline
    # says nothing about the kernel under test
    BOOT = "BOOT"                # the guest did not come up
    SETUP = "SETUP"              # a fixture failed for a reason of its own
    INFRA = "INFRA"              # the harness or the host failed

    @property
    def kind(self) -> Kind:
        return _KIND.get(self, Kind.KERNEL)

    @property
    def fatal(self) -> bool:
        """After a report of this kind the guest cannot be trusted to finish what it was
        doing (a task died holding locks, a CPU is stuck): waits end, the VM is replaced."""
        return self in _FATAL

    @classmethod
    def of(cls, name: str) -> Category:
        """The category named ``name``; an unknown kernel report kind becomes KERNEL."""
        try:
            return cls(name)
        except ValueError:
            return cls.KERNEL


_FATAL = frozenset({
    Category.PANIC, Category.OOPS, Category.BUG, Category.GPF, Category.NULL_DEREF,
    Category.PAGING_REQUEST, Category.VM_BUG_ON, Category.SOFT_LOCKUP, Category.HARD_LOCKUP,
    Category.RCU_STALL, Category.HUNG_TASK,
})
_KIND = {
    Category.HANG: Kind.HANG, Category.VM_DEAD: Kind.HANG,
    Category.ASSERTION: Kind.ASSERTION, Category.CORRUPTION: Kind.ASSERTION,
    Category.LEAK: Kind.ASSERTION,
    Category.BOOT: Kind.INFRA, Category.SETUP: Kind.INFRA, Category.INFRA: Kind.INFRA,
}


@dataclass(frozen=True)
class Finding:
    """One thing wrong, in a form every exporter reads without parsing text."""
    category: Category
    title: str                  # one line: "WARNING in ksm_scan_thread", "pages_shared 3 != 0"
    text: str = ""              # the report, the evidence, the traceback
    frame: str | None = None    # culprit function, when known
    console: tuple[int, int] | None = None  # console lines [start, end] of a kernel report
    time: float | None = None   # host time.time(): a report's first line arrived, else found
    phase: str = ""             # setup, call, teardown, or "before the test" / "at boot"

    @property
    def kind(self) -> Kind:
        return self.category.kind

    @property
    def is_kernel_report(self) -> bool:
        return self.kind is Kind.KERNEL

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["category"] = self.category.value
        d["console"] = list(self.console) if self.console else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Finding:
        console = d.get("console")
        return cls(Category.of(d["category"]), d["title"], d.get("text", ""), d.get("frame"),
                   (int(console[0]), int(console[1])) if console else None, d.get("time"),
                   d.get("phase", ""))


def rank(findings: Iterable[Finding]) -> list[Finding]:
    """The cause first: by kind (kernel report, hang, assertion, infrastructure), then in
    the order they happened (console line for kernel reports, else as found). A TAINT with
    no report ranks after every real kernel report."""
    items = list(findings)

    def key(pair: tuple[int, Finding]) -> tuple[int, int, int, int]:
        i, f = pair
        console = f.console[0] if f.console else 1 << 62
        return (f.kind, f.category is Category.TAINT, console, i)

    return [f for _, f in sorted(enumerate(items), key=key)]


def top(findings: Iterable[Finding]) -> Finding | None:
    ranked = rank(findings)
    return ranked[0] if ranked else None


def describe(findings: Iterable[Finding]) -> str:
    """A failure's text: the top finding's title, then every finding (ranked) with its
    category and evidence; consequences follow the cause."""
    ranked = rank(findings)
    if not ranked:
        return ""
    parts = [ranked[0].title]
    for i, f in enumerate(ranked):
        head = f"[{f.category.value}] {f.title}"
        if f.phase:
            head += f" ({f.phase})"
        if i == 1:
            parts.append("--- what followed ---")
        parts.append(f"{head}\n{f.text}".rstrip())
    return "\n\n".join(parts)


def normalize(title: str) -> str:
    """A title without what changes from run to run (addresses, offsets, numbers, PIDs):
    two runs failing for the same reason have the same normalized title."""
    t = re.sub(r"\+0x[0-9a-f]+/0x[0-9a-f]+", "", title.strip())
    t = re.sub(r"0x[0-9a-fA-F]+", "ADDR", t)
    t = re.sub(r"\d+", "N", t)
    return re.sub(r"\s+", " ", t)


def signature(f: Finding) -> tuple[str, str]:
    """(category, normalized title): what bisect and the matrix compare. A hang or a lost VM
    is the same event whatever command was waiting when it happened."""
    if f.category is Category.HANG:
        return f.category.value, "guest hung"
    if f.category is Category.VM_DEAD:
        return f.category.value, "guest died"
    return f.category.value, normalize(f.title)
