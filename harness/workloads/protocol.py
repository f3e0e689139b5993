"""The workloads' line protocol: errors a reply can mean, and replies as values."""
from __future__ import annotations

import re
from dataclasses import dataclass, field


class WorkloadError(Exception):
    """A workload refused a command, died, or hung. Not a HarnessError: inside a test it is a
    test failure (possibly the kernel's fault), not a usage error."""

    def __init__(self, message: str, workload: str = "", command: str = "",
                 reply: str = "") -> None:
        super().__init__(message)
        self.workload = workload
        self.command = command
        self.reply = reply


class CheckUnavailable(WorkloadError):
    """The kernel cannot answer the check truthfully (a known ABI bug, e.g. /proc/kpageflags
    flagging every anonymous page KSM): the scenario is skipped with the reason, not failed
    on a lie and not passed."""


KPF_KSM_LIES = ("this kernel's /proc/kpageflags flags a never-merged anonymous page KPF_KSM "
                "(every anonymous page, from 6.10 until the fix 81401cebfc15 \"fs/proc: fix "
                "KPF_KSM reported for all anonymous pages\")")

# What a reply's ksm_by= names (ksmwork_ksmpages.c): how its KSM counts were found.
KSM_METHODS = {
    "kpageflags": "/proc/kpageflags KPF_KSM",
    "maps": "PFNs mapped where no fork explains them (pagemap, /proc/kpagecount)",
    "smaps": "/proc/PID/smaps' KSM: count of whole VMAs",
    "saved": "PFNs that were KSM pages when saved and are still anonymous pages",
}


class PageCounts(dict[str, int]):
    """A pageflags/kpf/moved answer: its numbers, and ``method`` (the reply's ksm_by=, e.g.
    ``maps+smaps`` or ``kpageflags,checked:maps+smaps``), shown in its repr so every check
    that prints it says how its KSM pages were found. KSM counts that no method could tell
    (the reply's ksm_unknown=, e.g. which distinct KSM pages, where smaps gave only a count)
    are left out, and reading one raises CheckUnavailable: the scenario skips with the
    reason; one that reads only present/swapped/thp/... runs."""

    def __init__(self, fields: dict[str, str], ksm_keys: tuple[str, ...],
                 workload: str = "", command: str = "") -> None:
        unknown = tuple(k for k in fields.get("ksm_unknown", "").split(",") if k)
        self.unknown = tuple(k for k in ksm_keys if k in unknown)
        self.method = fields.get("ksm_by", "")
        self.where = (workload, command)
        super().__init__({k: int(v) for k, v in fields.items()
                          if k not in ("ksm_by", "ksm_unknown") and k not in self.unknown})

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + (f", ksm_by: {self.method}}}" if self.method else "}")

    def known(self) -> PageCounts:
        """This answer, or CheckUnavailable now when its KSM counts cannot be read (for an
        answer that is copied, not read key by key)."""
        for key in self.unknown:
            self[key]
        return self

    def get(self, key: str, default: int | None = None) -> int | None:  # type: ignore[override]
        return self[key] if key in self.unknown else super().get(key, default)

    def __missing__(self, key: str) -> int:
        if key in self.unknown:
            used = set(re.split(r"[,:+]", self.method))
            methods = "; ".join(KSM_METHODS[m] for m in KSM_METHODS if m in used)
            raise CheckUnavailable(f"cannot check on this kernel: {key}: {KPF_KSM_LIES}, and "
                                   f"the other methods ({methods or 'none'}) could not tell "
                                   f"(ksm_by={self.method}, {dict(self)})", *self.where)
        raise KeyError(key)


def refusal(workload: str, line: str, text: str) -> WorkloadError:
    """What an ``err`` reply (other than corruption or a crash) raises."""
    if "kpageflags-ksm-unreliable" in text:  # race's probe, without /proc/kpagecount either
        who = text.removeprefix("err ").split(": kpageflags-ksm-unreliable")[0]
        return CheckUnavailable(f"cannot check on this kernel: {who}: {KPF_KSM_LIES}; "
                                f"{text}", workload, line, text)
    return WorkloadError(f"workload '{workload}' refused '{line}': {text}", workload, line,
                         text)


class DataCorruption(WorkloadError):
    """Memory did not hold what the workload wrote: the bug KSM tests exist to catch."""

    def __init__(self, message: str, workload: str, command: str, reply: str,
                 region: str, page: int, offset: int, expected: int, got: int,
                 pages: int, child: int | None) -> None:
        super().__init__(message, workload, command, reply)
        self.region = region
        self.page = page
        self.offset = offset
        self.expected = expected
        self.got = got
        self.pages = pages
        self.child = child


class WorkloadTimeout(WorkloadError):
    """No reply before the deadline; the workload is unusable afterwards (a late reply would
    answer the wrong command). ``pid``: the guest process that did not answer, when known
    (the hang's evidence asks the guest about it)."""

    def __init__(self, message: str, workload: str = "", command: str = "", reply: str = "",
                 pid: int | None = None, host_starved: bool = False) -> None:
        super().__init__(message, workload, command, reply)
        self.pid = pid
        self.host_starved = host_starved  # the host, not the guest, ran out the deadline


class WorkloadDied(WorkloadError):
    """The workload exited or crashed while a command was outstanding."""

    def __init__(self, message: str, workload: str, command: str, reply: str,
                 status: int | None) -> None:
        super().__init__(message, workload, command, reply)
        self.status = status


_CORRUPT = re.compile(r"corrupt (?P<region>\S+) page (?P<page>\d+) offset (?P<offset>\d+) "
                      r"expected 0x(?P<expected>[0-9a-f]+) got 0x(?P<got>[0-9a-f]+)")
_FIELD = re.compile(r"(?<!\S)([A-Za-z_][A-Za-z0-9_]*)=(\S*)")


# ---- replies ----

@dataclass(frozen=True)
class Reply:
    """One reply line, e.g. ``ok moved=3 already=0 ...``."""

    command: str
    text: str

    @property
    def ok(self) -> bool:
        return self.text == "ok" or self.text.startswith("ok ")

    @property
    def body(self) -> str:
        return self.text.split(" ", 1)[1] if " " in self.text else ""

    @property
    def fields(self) -> dict[str, str]:
        """key=value words; the first wins ("ok bye status=0 children: ok ... status=0,0")."""
        found: dict[str, str] = {}
        for key, value in _FIELD.findall(self.text):
            found.setdefault(key, value)
        return found

    def number(self, key: str) -> int:
        value = self.fields.get(key)
        if value is None:
            raise WorkloadError(f"reply to '{self.command}' lacks {key}=: {self.text}",
                                command=self.command, reply=self.text)
        return int(value, 0)


@dataclass(frozen=True)
class MoveResult:
    """What move_pages(2) did to a region: see ``move`` in ksmwork.c."""

    moved: int
    already: int
    failed: int
    unattempted: int
    notmoved: int
    errors: dict[str, int] = field(default_factory=dict)  # errno name -> pages, e.g. EBUSY

    @property
    def on_target(self) -> int:
        return self.moved + self.already


@dataclass(frozen=True)
class NodeCounts:
    node0: int
    node1: int
    other: int
    errors: dict[str, int] = field(default_factory=dict)  # e.g. ENOENT: pages not present


def _errno_fields(fields: dict[str, str]) -> dict[str, int]:
    return {k: int(v) for k, v in fields.items() if re.fullmatch(r"E[A-Z0-9]+", k)}


def parse_corruption(text: str) -> dict[str, int | str | None] | None:
    """The details of an ``err corrupt ...`` reply, or None if it is not one."""
    if not text.startswith("err corrupt"):
        return None
    m = _CORRUPT.search(text)
    fields = dict(_FIELD.findall(text))
    if m is None:
        return {"region": "?", "page": -1, "offset": -1, "expected": -1, "got": -1,
                "pages": int(fields.get("pages", "0")), "child": None}
    return {"region": m["region"], "page": int(m["page"]), "offset": int(m["offset"]),
            "expected": int(m["expected"], 16), "got": int(m["got"], 16),
            "pages": int(fields.get("pages", "1")),
            "child": int(fields["child"]) if "child" in fields else None}


