"""A minimal cpio "newc" writer: enough for an initramfs, with root ownership and no
fakeroot. Linux accepts several such archives concatenated, which lets a cached per-kernel
part and a small per-run part (keys, init script) be joined for each VM."""
from __future__ import annotations

import gzip
import io
import stat
from dataclasses import dataclass


@dataclass
class Entry:
    name: str
    mode: int             # full st_mode, type bits included
    data: bytes = b""


class Archive:
    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self._dirs: set[str] = set()

    def dir(self, name: str, mode: int = 0o755) -> None:
        name = name.strip("/")
        if not name or name in self._dirs:
            return
        parent = name.rsplit("/", 1)[0] if "/" in name else ""
        if parent:
            self.dir(parent)
        self._dirs.add(name)
        self.entries.append(Entry(name, stat.S_IFDIR | mode))

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        name = name.strip("/")
        if "/" in name:
            self.dir(name.rsplit("/", 1)[0])
        self.entries.append(Entry(name, stat.S_IFREG | mode, data))

    def to_bytes(self, compress: bool = False) -> bytes:
        out = io.BytesIO()
        for ino, entry in enumerate(self.entries + [Entry("TRAILER!!!", 0)], start=1):
            name = entry.name.encode() + b"\0"
            fields = [ino, entry.mode, 0, 0, 1, 0, len(entry.data), 0, 0, 0, 0, len(name), 0]
            out.write(b"070701" + b"".join(b"%08X" % f for f in fields))
            out.write(name)
            out.write(b"\0" * (-(110 + len(name)) % 4))
            out.write(entry.data)
            out.write(b"\0" * (-len(entry.data) % 4))
        raw = out.getvalue()
        return gzip.compress(raw, compresslevel=1) if compress else raw
