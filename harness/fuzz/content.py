"""What a ksmwork page holds, computed on the host: the content scheme of
workloads/ksmwork_content.c (a page is the low PAGE_SIZE bytes of key * R), so that bytes read
from the guest (``peek``) are checked against the model, not against the workload's own
bookkeeping."""
from __future__ import annotations

from functools import lru_cache

PAGE_SIZE = 4096
MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
RBASE = 0x4B534D574F524B00
SEEDC = 0x5345454400000000
TAILC = 0x5441494C00000000
WRITEC = 0x5752495445000000
KINDS = ("same", "unique", "zero", "lastbyte", "half")


def mix64(z: int) -> int:
    z &= MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def nonzero(k: int) -> int:
    return k or 1


def seedkey(seed: int) -> int:
    return nonzero(mix64(seed ^ SEEDC))


def unique_key(skey: int, page: int) -> int:
    return nonzero(mix64(skey + GOLDEN * (page + 1)))


def write_key(skey: int, counter: int) -> int:
    """The key of ``write NAME PAGE`` (unique content): the process's counter-th write."""
    return nonzero(mix64((skey ^ WRITEC) + GOLDEN * counter))


def tail(skey: int, page: int) -> bytes:
    return mix64((skey ^ TAILC) + GOLDEN * (page + 1)).to_bytes(8, "little")


@lru_cache(maxsize=1)
def _r() -> int:
    words = [mix64(RBASE + GOLDEN * (i + 1)) for i in range(PAGE_SIZE // 8)]
    words[0] |= 1
    return sum(w << (64 * i) for i, w in enumerate(words))


@lru_cache(maxsize=512)
def key_page(key: int) -> bytes:
    """The page of ``key``; key 0 is the zero page."""
    return ((key * _r()) & ((1 << (8 * PAGE_SIZE)) - 1)).to_bytes(PAGE_SIZE, "little")


def page_bytes(key: int, page_tail: bytes | None = None) -> bytes:
    body = key_page(key)
    return body[:-8] + page_tail if page_tail is not None else body
