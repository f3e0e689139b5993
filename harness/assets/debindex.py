"""A suite's ``Packages`` index, read without apt's library: stanzas, Debian version order,
and the closure of a kernel package's dependencies on the other parts of the same kernel.

Debian splits a kernel across packages (7.x: ``linux-image-R`` is an empty package depending
on ``linux-binary-R`` (vmlinuz), ``linux-modules-R`` (the .ko files) and ``linux-base-R``
(config, System.map, modules.builtin)), so fetching "the kernel" means fetching the closure.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from harness.errors import KernelError

# the parts of a kernel; other dependencies (kmod, initramfs-tools, linux-base) are the
# installed system's business, not ours
KERNEL_PART = re.compile(r"linux-(?:image|binary|modules|base)-[a-z0-9][a-z0-9.+~-]*")
_RELATION = re.compile(r"^\s*([a-z0-9][a-z0-9.+~-]*)(?::[a-z0-9-]+)?\s*"
                       r"(?:\(\s*(<<|<=|=|>=|>>|<|>)\s*([^)\s]+)\s*\))?\s*(?:\[[^]]*\])?\s*$")


@dataclass(frozen=True)
class Stanza:
    package: str
    version: str
    architecture: str = ""
    depends: str = ""
    filename: str = ""
    size: int = 0


def parse_packages(text: str) -> list[Stanza]:
    """Stanzas of a ``Packages`` file (deb822 paragraphs; continuation lines ignored: no
    field we read spans lines)."""
    out: list[Stanza] = []
    for para in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in para.splitlines():
            if not line or line[0] in " \t#":
                continue
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip().lower()] = value.strip()
        if "package" in fields and "version" in fields:
            size = fields.get("size", "0")
            out.append(Stanza(fields["package"], fields["version"],
                              fields.get("architecture", ""), fields.get("depends", ""),
                              fields.get("filename", ""), int(size) if size.isdigit() else 0))
    return out


_KERNEL_STANZA = re.compile(rb"^Package: linux-[^\n]*\n(?:[^\n]+\n?)*", re.M)


def kernel_stanzas(data: bytes) -> bytes:
    """The ``Package: linux-*`` stanzas of a Packages file (~1 % of unstable's 65 MB): what
    resolving a kernel reads, kept so later runs need not read the whole index again."""
    return b"".join(m.group(0).rstrip(b"\n") + b"\n\n" for m in _KERNEL_STANZA.finditer(data))


# --- Debian version order (dpkg's verrevcmp) ----------------------------------------------

def _order(c: str) -> int:
    if c == "~":
        return -1
    if c.isdigit():
        return 0
    if c.isalpha():
        return ord(c)
    return ord(c) + 256


def _verrevcmp(a: str, b: str) -> int:
    i = j = 0
    while i < len(a) or j < len(b):
        first_diff = 0
        while (i < len(a) and not a[i].isdigit()) or (j < len(b) and not b[j].isdigit()):
            ac = _order(a[i]) if i < len(a) else 0
            bc = _order(b[j]) if j < len(b) else 0
            if ac != bc:
                return ac - bc
            i += 1
            j += 1
        while i < len(a) and a[i] == "0":
            i += 1
        while j < len(b) and b[j] == "0":
            j += 1
        while i < len(a) and a[i].isdigit() and j < len(b) and b[j].isdigit():
            if not first_diff:
                first_diff = ord(a[i]) - ord(b[j])
            i += 1
            j += 1
        if i < len(a) and a[i].isdigit():
            return 1
        if j < len(b) and b[j].isdigit():
            return -1
        if first_diff:
            return first_diff
    return 0


def _split(v: str) -> tuple[int, str, str]:
    epoch, _, rest = v.partition(":") if ":" in v else ("0", "", v)
    upstream, dash, revision = rest.rpartition("-")
    if not dash:
        upstream, revision = rest, ""
    return int(epoch or 0), upstream, revision


def compare_versions(a: str, b: str) -> int:
    """<0, 0, >0 as ``dpkg --compare-versions a lt/eq/gt b``."""
    ea, ua, ra = _split(a)
    eb, ub, rb = _split(b)
    if ea != eb:
        return ea - eb
    return _verrevcmp(ua, ub) or _verrevcmp(ra, rb)


def _satisfies(version: str, op: str | None, want: str | None) -> bool:
    if op is None or want is None:
        return True
    c = compare_versions(version, want)
    return {"=": c == 0, ">=": c >= 0, "<=": c <= 0, ">>": c > 0, "<<": c < 0,
            ">": c >= 0, "<": c <= 0}[op]


# --- the kernel's packages ----------------------------------------------------------------

class Index:
    """Stanzas of one or more pockets (a suite, its -updates, -security) by package name."""

    def __init__(self, stanzas: Iterable[Stanza], arch: str = "amd64") -> None:
        self.by_name: dict[str, list[Stanza]] = {}
        for s in stanzas:
            if s.architecture in (arch, "all", ""):
                self.by_name.setdefault(s.package, []).append(s)

    def candidate(self, name: str, op: str | None = None, want: str | None = None
                  ) -> Stanza | None:
        """The highest version of ``name`` that satisfies ``op want`` (apt's default pick)."""
        best: Stanza | None = None
        for s in self.by_name.get(name, []):
            if _satisfies(s.version, op, want) and (
                    best is None or compare_versions(s.version, best.version) > 0):
                best = s
        return best

    def kernel_closure(self, package: str) -> list[Stanza]:
        """``package`` and, transitively, the kernel parts it depends on (for each
        dependency, the first alternative that is a kernel part this index has), in
        dependency-first order."""
        root = self.candidate(package)
        if root is None:
            raise KernelError(f"no package {package} in this suite")
        order: list[Stanza] = []
        seen: set[str] = set()

        def visit(s: Stanza) -> None:
            if s.package in seen:
                return
            seen.add(s.package)
            for group in filter(None, (g.strip() for g in s.depends.split(","))):
                for alt in group.split("|"):
                    m = _RELATION.match(alt)
                    if m is None or not KERNEL_PART.fullmatch(m.group(1)):
                        continue
                    dep = self.candidate(m.group(1), m.group(2), m.group(3))
                    if dep is None:
                        raise KernelError(f"{s.package} {s.version} depends on {alt.strip()}, "
                                          "which this suite does not have")
                    visit(dep)
                    break
            order.append(s)

        visit(root)
        return order


def image_part(closure: list[Stanza]) -> Stanza:
    """The versioned image package (``linux-image-7.2.13+deb14-amd64``) that names the
    kernel, else the package asked for (the closure's last)."""
    for s in closure:
        if re.match(r"linux-image-\d", s.package) and not s.package.endswith("-dbg"):
            return s
    return closure[-1]
