"""The host's apt sources (one-line ``.list`` and deb822 ``.sources``), and the same mirrors
with another suite: ``--kernel debian:unstable`` fetches from wherever this host's apt
fetches bookworm, so a mirror, proxy or snapshot the host is set up for is used as is."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from harness.errors import KernelError


@dataclass(frozen=True)
class Source:
    uris: tuple[str, ...]
    suites: tuple[str, ...]
    components: tuple[str, ...]
    signed_by: str = ""   # a keyring path, or an inline key block (deb822 only)


def parse_list(text: str) -> list[Source]:
    """``deb [opt=val ...] URI SUITE COMPONENT...`` lines (``deb-src`` and comments skipped)."""
    out = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line.startswith("deb ") and not line.startswith("deb\t"):
            continue
        rest = line[3:].strip()
        opts: dict[str, str] = {}
        if rest.startswith("["):
            inner, _, rest = rest[1:].partition("]")
            for opt in inner.split():
                key, _, value = opt.partition("=")
                opts[key.lower()] = value
        words = rest.split()
        if len(words) < 2:
            continue
        out.append(Source((words[0],), (words[1],), tuple(words[2:]),
                          opts.get("signed-by", "")))
    return out


def parse_deb822(text: str) -> list[Source]:
    """``Types: deb`` paragraphs of a ``.sources`` file (``Enabled: no`` skipped)."""
    out = []
    for para in re.split(r"\n[ \t]*\n", text):
        fields: dict[str, str] = {}
        key = ""
        for line in para.splitlines():
            if line.startswith("#"):
                continue
            if line[:1] in (" ", "\t") and key:  # a continuation (an inline Signed-By key)
                fields[key] += "\n" + line
                continue
            k, sep, value = line.partition(":")
            if sep:
                key = k.strip().lower()
                fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() in ("no", "false", "0"):
            continue
        if not fields.get("uris") or not fields.get("suites"):
            continue
        out.append(Source(tuple(fields["uris"].split()), tuple(fields["suites"].split()),
                          tuple(fields.get("components", "").split()),
                          fields.get("signed-by", "")))
    return out


def host_sources(etc: Path = Path("/etc/apt")) -> list[Source]:
    """What apt reads: sources.list, then sources.list.d/*.list and *.sources (apt ignores
    other names, e.g. ``foo.list.disabled``)."""
    out: list[Source] = []
    main = etc / "sources.list"
    if main.is_file():
        out += parse_list(main.read_text(errors="replace"))
    parts = etc / "sources.list.d"
    if parts.is_dir():
        for f in sorted(parts.iterdir()):
            if f.suffix == ".list" and f.is_file():
                out += parse_list(f.read_text(errors="replace"))
            elif f.suffix == ".sources" and f.is_file():
                out += parse_deb822(f.read_text(errors="replace"))
    return out


def host_codename(os_release: Path = Path("/etc/os-release")) -> str:
    try:
        text = os_release.read_text()
    except OSError:
        return ""
    m = re.search(r'^VERSION_CODENAME="?([a-z]+)"?\s*$', text, re.M)
    return m.group(1) if m else ""


def for_suite(sources: list[Source], codename: str, suite: str) -> list[Source]:
    """The host's entries for its own release (``bookworm``, ``bookworm-updates``,
    ``bookworm-security``) with ``suite`` in its place (``unstable``, ``unstable-updates``,
    ...): the first entry is the suite itself, the rest its pockets (which may not exist:
    unstable has no -security). Third-party repositories (other suite names) are left out."""
    main: list[Source] = []
    pockets: list[Source] = []
    seen: set[tuple[str, ...]] = set()
    for src in sources:
        for s in src.suites:
            if s == codename:
                new = suite
            elif s.startswith(codename + "-"):
                new = suite + s[len(codename):]
            else:
                continue
            entry = Source(src.uris, (new,), src.components or ("main",), src.signed_by)
            if (*src.uris, new) in seen:
                continue
            seen.add((*src.uris, new))
            (main if new == suite else pockets).append(entry)
    if not main:
        named = ", ".join(sorted({s for src in sources for s in src.suites})) or "none"
        raise KernelError(f"the host's apt sources name no mirror for its own release "
                          f"{codename or '(unknown)'} (suites: {named}): cannot tell where "
                          f"to fetch {suite} from")
    return main + pockets


def to_deb822(sources: list[Source]) -> str:
    paras = []
    for src in sources:
        lines = ["Types: deb", f"URIs: {' '.join(src.uris)}", f"Suites: {' '.join(src.suites)}",
                 f"Components: {' '.join(src.components)}"]
        if src.signed_by:
            lines.append(f"Signed-By: {src.signed_by}")
        paras.append("\n".join(lines) + "\n")
    return "\n".join(paras)
