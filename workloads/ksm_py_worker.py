#!/usr/bin/env python3
"""ksm_py_worker: the Python twin of ksmwork.c, for the guest's python3 (stdlib only).

Same line protocol, a subset of the commands: one reply line per command, "ok ..." or
"err ...", flushed at once; a detected corruption starts with "err corrupt" and makes the exit
status 1.

    alloc NAME PAGES same:SEED|unique:SEED|zero|lastbyte:SEED|half:SEED
    madvise NAME merge|unmerge|hugepage|nohugepage|pageout|cold
    verify [NAME]        -> ok verified N pages ms=T | err corrupt NAME page P offset O ...
    write NAME PAGE [same:SEED] | corrupt NAME PAGE [OFFSET] | touch NAME
    peek NAME PAGE OFFSET LEN | free NAME | sleep MS | pid | regions | help
    exit                 -> ok bye status=S

Page content is byte-identical to ksmwork.c's (low PAGE bytes of key * R), so pages of the two
workloads with the same pattern and seed can merge with each other.
"""
from __future__ import annotations

import errno
import mmap
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
RBASE = 0x4B534D574F524B00
SEEDC = 0x5345454400000000
TAILC = 0x5441494C00000000
WRITEC = 0x5752495445000000
PAGE = mmap.PAGESIZE
KINDS = ("same", "unique", "zero", "lastbyte", "half")

# Not every Python build exposes every advice; the numbers are the kernel UAPI's.
ADVICE = {
    "merge": getattr(mmap, "MADV_MERGEABLE", 12),
    "unmerge": getattr(mmap, "MADV_UNMERGEABLE", 13),
    "hugepage": getattr(mmap, "MADV_HUGEPAGE", 14),
    "nohugepage": getattr(mmap, "MADV_NOHUGEPAGE", 15),
    "cold": getattr(mmap, "MADV_COLD", 20),
    "pageout": getattr(mmap, "MADV_PAGEOUT", 21),
}


def mix64(z: int) -> int:
    z &= MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def nonzero(k: int) -> int:
    return k or 1


def seedkey(seed: int) -> int:
    return nonzero(mix64(seed ^ SEEDC))


def _multiplier(page: int) -> int:
    words = [mix64(RBASE + GOLDEN * (i + 1)) for i in range(page // 8)]
    words[0] |= 1  # odd: key -> page is injective
    return sum(w << (64 * i) for i, w in enumerate(words))


R = _multiplier(PAGE)
PAGE_MASK = (1 << (8 * PAGE)) - 1
ZERO_PAGE = bytes(PAGE)


def key_page(key: int) -> bytes:
    """The page for ``key``: one big-int multiply, as fast as C for our purpose."""
    return ((key * R) & PAGE_MASK).to_bytes(PAGE, "little")


class ProtocolError(Exception):
    """A bad command: becomes an "err" reply."""


@dataclass
class Region:
    name: str
    pages: int
    kind: str
    seed: int
    mem: mmap.mmap
    override: dict[int, int] = field(default_factory=dict)
    template: bytes | None = None  # the seed's page, computed once

    @property
    def skey(self) -> int:
        return seedkey(self.seed)

    def expected(self, p: int) -> bytes:
        if p in self.override:
            return key_page(self.override[p])
        if self.kind == "zero":
            return ZERO_PAGE
        unique = nonzero(mix64(self.skey + GOLDEN * (p + 1)))
        if self.kind == "unique" or (self.kind == "half" and p >= self.pages // 2):
            return key_page(unique)
        body = self._template()
        if self.kind == "lastbyte":
            tail = mix64((self.skey ^ TAILC) + GOLDEN * (p + 1))
            return body[:-8] + tail.to_bytes(8, "little")
        return body

    def _template(self) -> bytes:
        if self.template is None:
            self.template = key_page(self.skey)
        return self.template

    def fill(self, p: int) -> None:
        self.mem[p * PAGE:(p + 1) * PAGE] = self.expected(p)

    def check(self, p: int) -> tuple[int, int, int] | None:
        """None if page ``p`` is intact, else (offset, expected, got) of its first bad byte."""
        want = self.expected(p)
        got = self.mem[p * PAGE:(p + 1) * PAGE]
        if got == want:
            return None
        off = next(i for i in range(PAGE) if got[i] != want[i])
        return off, want[off], got[off]


class Worker:
    def __init__(self) -> None:
        self.regions: dict[str, Region] = {}
        self.corruption_seen = False
        self.writes = 0
        self.commands: dict[str, Callable[[list[str]], str]] = {
            "alloc": self.alloc, "madvise": self.madvise, "verify": self.verify,
            "write": self.write, "corrupt": self.corrupt, "touch": self.touch,
            "peek": self.peek, "free": self.free, "sleep": self.sleep, "pid": self.pid,
            "regions": self.list_regions, "help": self.help,
        }

    @property
    def status(self) -> int:
        return 1 if self.corruption_seen else 0

    def region(self, cmd: str, name: str) -> Region:
        if name not in self.regions:
            raise ProtocolError(f"{cmd}: no region '{name}'")
        return self.regions[name]

    @staticmethod
    def number(cmd: str, text: str, limit: int | None = None) -> int:
        try:
            value = int(text, 0)
        except ValueError:
            raise ProtocolError(f"{cmd}: bad number '{text}'") from None
        if value < 0 or (limit is not None and value >= limit):
            raise ProtocolError(f"{cmd}: '{text}' out of range")
        return value

    def alloc(self, args: list[str]) -> str:
        if len(args) != 3:
            raise ProtocolError("usage: alloc NAME PAGES PATTERN")
        name, pages_text, pattern = args
        if name in self.regions:
            raise ProtocolError(f"alloc: region '{name}' exists")
        pages = self.number("alloc", pages_text)
        kind, _, seed_text = pattern.partition(":")
        if pages == 0 or kind not in KINDS or (kind == "zero") != (seed_text == ""):
            raise ProtocolError(f"alloc: bad pages or pattern '{pages_text} {pattern}'")
        seed = self.number("alloc", seed_text) if seed_text else 0
        t0 = time.monotonic()
        try:
            # Private, not mmap's default MAP_SHARED: KSM only merges private anonymous memory.
            mem = mmap.mmap(-1, pages * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        except OSError as e:
            raise ProtocolError(f"alloc: mmap: {os_error(e)}") from None
        region = Region(name, pages, kind, seed, mem)
        for p in range(pages):
            region.fill(p)
        self.regions[name] = region
        return f"{name} pages={pages} bytes={pages * PAGE} ms={ms_since(t0)}"

    def madvise(self, args: list[str]) -> str:
        if len(args) != 2 or args[1] not in ADVICE:
            raise ProtocolError(f"usage: madvise NAME {'|'.join(ADVICE)}")
        region = self.region("madvise", args[0])
        try:
            region.mem.madvise(ADVICE[args[1]])
        except OSError as e:
            raise ProtocolError(f"madvise {args[0]} {args[1]}: {os_error(e)}") from None
        return f"madvised {args[0]} {args[1]} pages={region.pages}"

    def verify(self, args: list[str]) -> str:
        if len(args) > 1:
            raise ProtocolError("usage: verify [NAME]")
        t0 = time.monotonic()
        chosen = [self.region("verify", args[0])] if args else list(self.regions.values())
        first: str | None = None
        bad = 0
        for region in chosen:
            region_bad = 0
            for p in range(region.pages):
                found = region.check(p)
                if found is None:
                    continue
                region_bad += 1
                if first is None:
                    off, want, got = found
                    first = (f"corrupt {region.name} page {p} offset {off} "
                             f"expected 0x{want:02x} got 0x{got:02x}")
            if region_bad and first is not None and " pages=" not in first:
                first += f" pages={region_bad}"
            bad += region_bad
        if first is not None:
            self.corruption_seen = True
            raise ProtocolError(first + ("" if args else f" total={bad}"))
        return f"verified {sum(r.pages for r in chosen)} pages ms={ms_since(t0)}"

    def write(self, args: list[str]) -> str:
        if len(args) not in (2, 3):
            raise ProtocolError("usage: write NAME PAGE [same:SEED]")
        region = self.region("write", args[0])
        p = self.number("write", args[1], region.pages)
        if len(args) == 3:
            kind, _, seed_text = args[2].partition(":")
            if kind != "same" or not seed_text:
                raise ProtocolError(f"write: bad content '{args[2]}' (want same:SEED)")
            key = seedkey(self.number("write", seed_text))
        else:
            self.writes += 1
            key = nonzero(mix64((region.skey ^ WRITEC) + GOLDEN * self.writes))
        region.override[p] = key
        region.fill(p)
        return f"wrote {region.name} page {p}"

    def corrupt(self, args: list[str]) -> str:
        if len(args) not in (2, 3):
            raise ProtocolError("usage: corrupt NAME PAGE [OFFSET]")
        region = self.region("corrupt", args[0])
        p = self.number("corrupt", args[1], region.pages)
        off = self.number("corrupt", args[2], PAGE) if len(args) == 3 else 100
        at = p * PAGE + off
        was = region.mem[at]
        region.mem[at] = was ^ 0xFF
        # "corrupted", not "corrupt": only detected corruption starts with "err corrupt".
        return (f"corrupted {region.name} page {p} offset {off} "
                f"was 0x{was:02x} now 0x{region.mem[at]:02x}")

    def touch(self, args: list[str]) -> str:
        if len(args) != 1:
            raise ProtocolError("usage: touch NAME")
        region = self.region("touch", args[0])
        t0 = time.monotonic()
        for p in range(region.pages):
            region.fill(p)
        return f"touched {region.name} pages={region.pages} ms={ms_since(t0)}"

    def peek(self, args: list[str]) -> str:
        if len(args) != 4:
            raise ProtocolError("usage: peek NAME PAGE OFFSET LEN (LEN <= 64)")
        region = self.region("peek", args[0])
        p = self.number("peek", args[1], region.pages)
        off = self.number("peek", args[2], PAGE)
        length = self.number("peek", args[3], 65)
        if length == 0 or off + length > PAGE:
            raise ProtocolError(f"peek: bad OFFSET/LEN '{args[2]} {args[3]}'")
        start = p * PAGE + off
        return "hex=" + region.mem[start:start + length].hex()

    def free(self, args: list[str]) -> str:
        if len(args) != 1:
            raise ProtocolError("usage: free NAME")
        self.region("free", args[0]).mem.close()
        del self.regions[args[0]]
        return f"freed {args[0]}"

    def sleep(self, args: list[str]) -> str:
        if len(args) != 1:
            raise ProtocolError("usage: sleep MS")
        ms = self.number("sleep", args[0], 3_600_001)
        time.sleep(ms / 1000)  # only for chaos tests, on request
        return f"slept {ms} ms"

    def pid(self, args: list[str]) -> str:
        if args:
            raise ProtocolError("usage: pid")
        return f"pid={os.getpid()}"

    def list_regions(self, args: list[str]) -> str:
        return "regions=" + ",".join(f"{r.name}:{r.pages}:{r.kind}" for r in self.regions.values())

    def help(self, args: list[str]) -> str:
        return "commands: " + " ".join(self.commands) + " exit"

    def handle(self, line: str) -> str:
        words = line.split()
        if not words:
            return "err empty command"
        command = self.commands.get(words[0])
        if command is None:
            return f"err unknown command '{words[0]}' (try help)"
        try:
            return "ok " + command(words[1:])
        except ProtocolError as e:
            return f"err {e}"

    def serve(self, stdin: TextIO, stdout: TextIO) -> int:
        for line in stdin:
            if line.split()[:1] == ["exit"]:
                stdout.write(f"ok bye status={self.status}\n")
                stdout.flush()
                break
            stdout.write(self.handle(line) + "\n")
            stdout.flush()
        if self.corruption_seen:
            print("ksm_py_worker: exiting with status 1: data corruption detected", file=sys.stderr)
        return self.status


def os_error(e: OSError) -> str:
    name = errno.errorcode.get(e.errno or 0, f"errno {e.errno}")
    return f"{e.strerror} ({name})"


def ms_since(t0: float) -> int:
    return int((time.monotonic() - t0) * 1000)


if __name__ == "__main__":
    sys.exit(Worker().serve(sys.stdin, sys.stdout))
