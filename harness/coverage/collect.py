"""The guest side: the kernel's gcov counters (``/sys/kernel/debug/gcov/**.gcda``) dumped over
SSH and reset, into one numbered bucket per checkpoint, labelled with the test (or "(boot)")
that ran since the last one. Reset-after-dump gives per-test attribution at the price of one
round trip per test; the buckets add up to the whole run."""
from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from harness.access.remote import CommandResult

GCOV_ROOT = "/sys/kernel/debug/gcov"
DUMP_TIMEOUT = 120.0  # seconds: ~15 files, a few hundred KiB of base64, under TCG
# one "== PATH" line then the file's base64 on one line, for every .gcda; then reset
DUMP = (f"mountpoint -q /sys/kernel/debug || mount -t debugfs none /sys/kernel/debug; "
        f"test -d {GCOV_ROOT} || {{ echo 'no {GCOV_ROOT}: not a gcov kernel' >&2; exit 3; }}; "
        f"find {GCOV_ROOT} -name '*.gcda' | sort | while read -r f; do "
        f'echo "== $f"; base64 -w0 "$f"; echo; done; echo 1 > {GCOV_ROOT}/reset')
INDEX = "buckets.jsonl"
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


class Runs(Protocol):
    def run(self, cmd: str, timeout: float = ..., check: bool = ...) -> CommandResult: ...


class CollectError(Exception):
    """The guest gave no gcov data (not a gcov kernel, or the dump failed)."""


def parse_dump(text: str) -> dict[str, bytes]:
    """``== /sys/kernel/debug/gcov/<build dir>/mm/ksm.gcda`` + base64 lines -> the path under
    the gcov root (``<build dir>/mm/ksm.gcda``, absolute as the kernel names it) -> bytes."""
    out: dict[str, bytes] = {}
    lines = iter(text.splitlines())
    for line in lines:
        if not line.startswith("== "):
            continue
        path = line[3:].strip()
        try:
            out[path.removeprefix(GCOV_ROOT)] = base64.b64decode(next(lines, ""), validate=True)
        except binascii.Error as exc:
            raise CollectError(f"{path}: bad base64 in the dump ({exc})") from None
    return out


@dataclass
class Collector:
    """Numbered buckets under ``root`` (``NNNN/<build dir>/mm/ksm.gcda``) and an index,
    ``buckets.jsonl``: one ``{"bucket", "label", "vm", "files"}`` line per checkpoint.
    ``prefix`` keeps parallel workers (pytest-xdist's gw0, gw1) out of each other's
    numbers; their index lines are single appends."""
    root: Path
    prefix: str = ""
    count: int = 0

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.count = len(list(self.root.glob(f"{self.prefix}[0-9][0-9][0-9][0-9]")))

    def checkpoint(self, vm: Runs, label: str, vm_name: str = "") -> Path:
        """Dump and reset the counters of `vm` into a new bucket for `label`."""
        r = vm.run(DUMP, timeout=DUMP_TIMEOUT)
        if r.status != 0:
            raise CollectError(f"gcov dump failed (exit {r.status}): {r.stderr.strip()[-200:]}")
        files = parse_dump(r.stdout)
        if not files:
            raise CollectError(f"no .gcda files under {GCOV_ROOT} in the guest")
        self.count += 1
        bucket = self.root / f"{self.prefix}{self.count:04d}"
        for path, data in files.items():
            dest = bucket / path.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
        with (self.root / INDEX).open("a") as fh:
            fh.write(json.dumps({"bucket": bucket.name, "label": label, "vm": vm_name,
                                 "files": len(files)}) + "\n")
        return bucket


def read_index(root: Path) -> list[dict[str, str]]:
    index = root / INDEX
    if not index.is_file():
        return []
    return [json.loads(line) for line in index.read_text().splitlines() if line.strip()]


def safe(label: str) -> str:
    return _SAFE.sub("_", label)[:80]
