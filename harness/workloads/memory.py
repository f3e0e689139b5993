"""A workload's memory commands: regions (alloc, madvise, verify, write, ...), locking, and
what backs their pages (smaps, pageflags, kpageflags, PFNs moved)."""
from __future__ import annotations

from harness.workloads.protocol import PageCounts
from harness.workloads.session import Session, pages_verified, range_args


class MemoryCommands(Session):
    """Regions of the workload's memory and what backs them."""

    def alloc(self, name: str, pages: int, pattern: str, node: int | None = None,
              thp: bool | None = None, shared: bool = False,
              timeout: float | None = None) -> int:
        """mmap and fill a region; PATTERN: same:SEED unique:SEED zero lastbyte:SEED
        half:SEED; thp: True MADV_HUGEPAGE, False MADV_NOHUGEPAGE, None the system's THP
        mode. Returns its address (0 from the Python worker, which has no addresses)."""
        parts = ["alloc", name, str(pages), pattern]
        parts += [f"node={node}"] if node is not None else []
        parts += [] if thp is None else ["thp" if thp else "nothp"]
        parts += ["shared"] if shared else []
        reply = self.command(" ".join(parts), timeout or self._timeout(pages))
        self.regions[name] = pages
        return int(reply.fields.get("addr", "0"), 16)

    def free(self, name: str) -> None:
        self.command(f"free {name}")
        self.regions.pop(name, None)

    def madvise(self, name: str, advice: str, first: int | None = None,
                count: int | None = None, timeout: float | None = None) -> None:
        """advice: merge unmerge hugepage nohugepage pageout cold willneed. Unmerge and
        pageout do real work (copies, swap-out), hence the per-page deadline."""
        line = f"madvise {name} {advice}" + range_args(first, count)
        self.command(line, timeout or self._timeout(count or self._pages(name)))

    def verify(self, name: str | None = None, timeout: float | None = None) -> int:
        """Check every byte; return the pages verified or raise DataCorruption."""
        reply = self.command("verify" + (f" {name}" if name else ""),
                             timeout or self._timeout(self._pages(name)))
        return pages_verified(reply)

    def write(self, name: str, page: int, same_seed: int | None = None) -> None:
        """New content for one page (unique, or same:SEED's), expectation updated."""
        self.command(f"write {name} {page}" + (f" same:{same_seed}" if same_seed is not None
                                               else ""))

    def corrupt(self, name: str, page: int, offset: int | None = None) -> None:
        """Flip one byte WITHOUT updating the expectation: proves the check fires."""
        self.command(f"corrupt {name} {page}" + (f" {offset}" if offset is not None else ""))

    def touch(self, name: str, timeout: float | None = None) -> None:
        self.command(f"touch {name}", timeout or self._timeout(self._pages(name)))

    def churn(self, name: str, ms: int, timeout: float | None = None) -> int:
        """Rewrite the region's expected content in a loop for ``ms`` ms (C workload): writes
        break KSM pages while ksmd merges them back. Returns the page writes done."""
        pages = self._pages(name)
        reply = self.command(f"churn {name} {ms}", timeout or self._timeout(pages) + ms / 1000)
        return reply.number("writes")

    def peek(self, name: str, page: int, offset: int = 0, length: int = 16) -> bytes:
        return bytes.fromhex(self.command(f"peek {name} {page} {offset} {length}")
                             .fields["hex"])

    def idle(self, name: str, page: int) -> dict[str, int]:
        """Mark the page's PFN idle (/sys/kernel/mm/page_idle/bitmap, C workload, root) and
        read it back: {pfn, idle, lru, ksm} (pfn 0: not present; lru/ksm -1: unreadable)."""
        f = self.command(f"idle {name} {page}").fields
        return {k: int(f[k]) for k in ("pfn", "idle", "lru", "ksm")}

    def mlock(self, name: str) -> None:
        self.command(f"mlock {name}", self._timeout(self._pages(name)))

    def munlock(self, name: str) -> None:
        self.command(f"munlock {name}", self._timeout(self._pages(name)))

    def mlockall(self, future: bool = False) -> None:
        self.command("mlockall" + (" future" if future else ""), self._timeout(self._pages(None)))

    def munlockall(self) -> None:
        self.command("munlockall", self._timeout(self._pages(None)))

    def smaps(self, name: str) -> dict[str, int]:
        """rss_kb anon_kb anonhuge_kb swap_kb locked_kb, vmas, mergeable (VMAs flagged mg) and
        ksm_kb ("KSM:", 6.6+; -1 before), summed over the VMAs the region overlaps."""
        return {k: int(v) for k, v in self.command(f"smaps {name}").fields.items()}

    def pageflags(self, name: str, first: int | None = None,
                  count: int | None = None) -> PageCounts:
        """What backs the region's pages (C workload, root in the guest): present, swapped,
        ksm (pages mapping a KSM page), ksmpfns (distinct KSM pages), thp, zero (the zero
        page), nopfn (PFN hidden or unreadable); ksm_maps and ksm_smaps (-1: no such field)
        what the other methods found; ``.method`` how ksm was found (ksmwork_ksmpages.c)."""
        line = f"pageflags {name}" + range_args(first, count)
        f = self.command(line, self._timeout(count or self._pages(name))).fields
        return PageCounts(f, ("ksm", "ksmpfns"), self.name, line)

    def trust_kpageflags(self, trust: bool = True) -> None:
        """Read KPF_KSM even on a kernel known to set it on every anonymous page (the test of
        that ABI; otherwise such kernels' KSM pages are found another way), or never
        (``trust=False``: the other methods alone, for their own tests)."""
        self.command("kpftrust" + ("" if trust else " no"))

    def kpf_save(self, name: str) -> int:
        """Remember the PFNs of the region's present pages (and which map a KSM page);
        returns how many."""
        return self.command(f"kpf {name} save", self._timeout(self._pages(name))).number("saved")

    def kpf(self, name: str) -> PageCounts:
        """/proc/kpageflags of the PFNs saved by :meth:`kpf_save`, mapped or not: saved, ksm,
        swapcache, ksm_swapcache (both), mapped, unreadable. Where KPF_KSM lies, ksm is
        "a KSM page when saved and still an anonymous page" (method ``saved``)."""
        f = self.command(f"kpf {name}", self._timeout(self._pages(name))).fields
        # all about KSM pages, and copied whole by its callers: refuse at once if unknown
        return PageCounts(f, ("ksm", "ksm_swapcache"), self.name, f"kpf {name}").known()

    def moved(self, name: str) -> PageCounts:
        """The region's PFNs against :meth:`kpf_save`'s: same, changed, gone, ksm (now a KSM
        page), changed_ksm, unreadable."""
        f = self.command(f"moved {name}", self._timeout(self._pages(name))).fields
        return PageCounts(f, ("ksm", "changed_ksm"), self.name, f"moved {name}")

    def punch(self, name: str, stride: int = 2) -> int:
        """MADV_DONTNEED all but every ``stride``-th page of a zero-filled region (holes that
        compaction can migrate into); returns the pages freed."""
        reply = self.command(f"punch {name} {int(stride)}", self._timeout(self._pages(name)))
        return reply.number("pages")

    def reserve(self, name: str, pages: int, prot: str, merge: bool = False,
                lock: str = "") -> dict[str, str]:
        """An mmap never touched (prot "none" or "rw"), not a region (verify skips it);
        lock: "lock" (mlock) or "lockonfault". The reply says locked=1 when VM_LOCKED."""
        line = f"reserve {name} {pages} {prot}" + (" merge" if merge else "")
        return self.command(line + (f" {lock}" if lock else "")).fields

    def vmop(self, name: str, op: str, first: int | None = None, count: int | None = None,
             pages: int | None = None) -> dict[str, str]:
        """munmap|dontneed|unmergeable|protro|protnone|protrw FIRST COUNT, move, shrink PAGES:
        one syscall with guest timestamps (t0, t1). munmap and dontneed split the region (the
        reply's tail= and zeroed= name the new pieces); region sizes follow."""
        line = f"vmop {name} {op}" + range_args(first, count) + (f" {pages}" if pages else "")
        f = self.command(line, self._timeout(self._pages(name))).fields
        self.regions[name] = int(f["pages"])
        self.regions.update({f[k]: 0 for k in ("tail", "zeroed") if k in f})
        return f
