"""Kernel image formats: the x86 boot header (bzImage), 64-bit ELF (vmlinux) and its PVH
note, the compressed payload inside a bzImage, the embedded config, and whether a file is
cut short."""
from __future__ import annotations

import gzip
import lzma
import re
import struct
import subprocess
import zlib

from harness import deps
from harness.errors import KernelError

ELF_MAGIC = b"\x7fELF"
XEN_ELFNOTE_PHYS32_ENTRY = 18  # the PVH entry point note


def bzimage_release(data: bytes) -> str | None:
    """The release string from an x86 boot header, or None when this is not a bzImage."""
    if len(data) < 0x260 or data[0x202:0x206] != b"HdrS":
        return None
    ptr = struct.unpack_from("<H", data, 0x20E)[0]
    if not ptr:
        return None
    start = ptr + 0x200
    text = data[start:start + 256].split(b"\0", 1)[0].decode("ascii", "replace")
    return text.split()[0] if text else None


def banner_compiler(banner: str) -> str:
    """``gcc-12 (Debian 12.2.0-14) 12.2.0`` from ``Linux version R (who@where) (gcc-12
    (Debian 12.2.0-14) 12.2.0, GNU ld ...) #1 ...``; '' when the banner has none."""
    m = re.match(r"Linux version \S+ \([^()]*\) \(", banner)
    if not m:
        return ""
    depth, i = 1, m.end()
    while i < len(banner) and depth:
        depth += {"(": 1, ")": -1}.get(banner[i], 0)
        i += 1
    return re.split(r", (?:GNU ld|LLD|ld)\b", banner[m.end():i - 1])[0].strip()


def elf_release(data: bytes) -> str | None:
    m = re.search(rb"Linux version (\S+) \(", data)
    return m.group(1).decode() if m else None


def incomplete(data: bytes, size: int | None = None) -> str | None:
    """Why a bzImage or 64-bit ELF is cut short, or None (``size``: the file's, if longer)."""
    size = len(data) if size is None else size
    try:
        if len(data) >= 0x260 and data[0x202:0x206] == b"HdrS":
            # setup sectors (0 means 4), the boot sector, then syssize paragraphs
            want = ((data[0x1F1] or 4) + 1) * 512 + struct.unpack_from("<I", data, 0x1F4)[0] * 16
        elif data[:4] == ELF_MAGIC and len(data) > 4 and data[4] == 2:
            phoff, = struct.unpack_from("<Q", data, 0x20)
            shoff, = struct.unpack_from("<Q", data, 0x28)
            phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", data, 0x36)
            want = max(phoff + phentsize * phnum, shoff + shentsize * shnum)
            for i in range(phnum):
                _t, _f, p_offset, _va, _pa, p_filesz = struct.unpack_from(
                    "<IIQQQQ", data, phoff + i * phentsize)
                want = max(want, p_offset + p_filesz)
        else:
            return None
    except (struct.error, IndexError):
        return f"{size} bytes, its header is cut short"
    if size < want:
        return f"{size} bytes where its header promises {want}"
    return None


def elf_has_pvh_note(data: bytes) -> bool:
    if data[:4] != ELF_MAGIC or data[4] != 2:  # 64-bit ELF only
        return False
    try:
        return _pvh_note(data)
    except struct.error:
        raise KernelError("not a complete kernel image: its ELF notes are cut short") from None


def _pvh_note(data: bytes) -> bool:
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for i in range(phnum):
        p_type, _flags, p_offset, _va, _pa, p_filesz = struct.unpack_from(
            "<IIQQQQ", data, phoff + i * phentsize)
        if p_type != 4:  # PT_NOTE
            continue
        pos, end = p_offset, p_offset + p_filesz
        while pos + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", data, pos)
            name = data[pos + 12:pos + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and ntype == XEN_ELFNOTE_PHYS32_ENTRY:
                return True
            pos += 12 + ((namesz + 3) & ~3) + ((descsz + 3) & ~3)
    return False


def extract_vmlinux(data: bytes) -> bytes | None:
    """What scripts/extract-vmlinux does: find the compressed payload, inflate to ELF."""
    for magic, kind in ((b"\xfd7zXZ\x00", "xz"), (b"\x1f\x8b\x08", "gzip"),
                        (b"\x28\xb5\x2f\xfd", "zstd")):
        pos = data.find(magic)
        while pos != -1:
            out = _inflate(data[pos:], kind)
            if out and out[:4] == ELF_MAGIC:
                return out
            pos = data.find(magic, pos + 1)
    return None


def _inflate(blob: bytes, kind: str) -> bytes | None:
    try:
        if kind == "xz":
            return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(blob)
        if kind == "gzip":
            return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(blob)
        if kind == "zstd":  # no Python zstd before 3.14: the tool, installed when missing
            deps.ensure(["zstd"])
            r = subprocess.run(["zstd", "-dc"], input=blob, capture_output=True)
            return r.stdout or None
    except (lzma.LZMAError, zlib.error):
        return None
    return None


def embedded_config(data: bytes) -> str | None:
    """CONFIG_IKCONFIG stores the config gzipped between IKCFG_ST and IKCFG_ED."""
    start = data.find(b"IKCFG_ST")
    end = data.find(b"IKCFG_ED", start)
    if start == -1 or end == -1:
        return None
    try:
        return gzip.decompress(data[start + 8:end]).decode("utf-8", "replace")
    except (OSError, EOFError):
        return None
