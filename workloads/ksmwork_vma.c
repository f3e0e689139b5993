/* ksmwork: address-space changes:
 *   reserve NAME PAGES none|rw [merge] [lock|lockonfault]
 *        an mmap never touched (PROT_NONE or read-write), outside the regions (verify skips
 *        it), optionally MADV_MERGEABLE and mlock()ed (lockonfault: mlock2 MLOCK_ONFAULT, so a
 *        read-write one stays unpopulated) -> ok NAME addr=0x.. pages=N
 *   vmop NAME munmap|dontneed FIRST COUNT   (FIRST > 0; the region is split: NAME keeps the
 *        head, NAME.t the tail, dontneed's NAME.z the zero-filled middle)
 *   vmop NAME unmergeable|protro|protnone|protrw FIRST COUNT
 *   vmop NAME move          mremap(MREMAP_MAYMOVE|MREMAP_FIXED) of the whole region elsewhere
 *   vmop NAME shrink PAGES  mremap to PAGES pages in place
 *        -> ok vmop NAME OP t0=.. t1=.. addr=0x.. pages=N [tail=NAME.t] [zeroed=NAME.z]
 *           (t0/t1: CLOCK_MONOTONIC microseconds around the syscall)
 */
#include "ksmwork.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_mlock2
#define SYS_mlock2 325
#endif
#ifndef MLOCK_ONFAULT
#define MLOCK_ONFAULT 1
#endif
#ifndef MREMAP_FIXED
#define MREMAP_FIXED 2
#endif
#define MAX_RESERVED 16

static struct {
	char name[32];
	void *addr;
	size_t len;
} reserved[MAX_RESERVED];

/* 1 when the VMA holding addr has FLAG (" lo", " mg") in /proc/self/smaps, 0 if not, -1. */
static int vma_has_flag(uintptr_t addr, const char *flag)
{
	char line[512];
	int in = 0, found = -1;
	FILE *f = fopen("/proc/self/smaps", "r");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		unsigned long s, e;
		if (sscanf(line, "%lx-%lx ", &s, &e) == 2 && strchr(line, '-') < strchr(line, ' '))
			in = s <= addr && addr < e;
		else if (in && strncmp(line, "VmFlags:", 8) == 0)
			found = strstr(line, flag) != NULL;
	}
	fclose(f);
	return found;
}

int cmd_reserve(int argc, char **argv)
{
	uint64_t pages;
	int prot, merge = 0, lock = 0, onfault = 0, slot = -1;
	if (argc < 4 || parse_u64(argv[2], &pages) || pages == 0 ||
	    pages > (1ULL << 40) / page_size || strlen(argv[1]) >= sizeof(reserved[0].name))
		return err("usage: reserve NAME PAGES none|rw [merge] [lock|lockonfault]");
	if (strcmp(argv[3], "none") == 0)
		prot = PROT_NONE;
	else if (strcmp(argv[3], "rw") == 0)
		prot = PROT_READ | PROT_WRITE;
	else
		return err("reserve: bad protection '%s' (none|rw)", argv[3]);
	for (int i = 4; i < argc; i++) {
		if (strcmp(argv[i], "merge") == 0)
			merge = 1;
		else if (strcmp(argv[i], "lock") == 0)
			lock = 1;
		else if (strcmp(argv[i], "lockonfault") == 0)
			onfault = 1;
		else
			return err("reserve: unknown option '%s'", argv[i]);
	}
	for (int i = MAX_RESERVED - 1; i >= 0; i--) {
		if (reserved[i].addr && strcmp(reserved[i].name, argv[1]) == 0)
			return err("reserve: '%s' exists", argv[1]);
		if (!reserved[i].addr)
			slot = i;
	}
	if (slot < 0)
		return err("reserve: too many (max %d)", MAX_RESERVED);
	size_t len = pages * page_size;
	void *a = mmap(NULL, len, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (a == MAP_FAILED)
		return err("reserve: mmap: %s", errstr(errno));
	const char *what = NULL;
	if (merge && madvise(a, len, MADV_MERGEABLE) != 0)
		what = "madvise merge";
	else if (lock && mlock(a, len) != 0 && !(prot == PROT_NONE && errno == ENOMEM))
		what = "mlock"; /* PROT_NONE: VM_LOCKED is set, then populating fails with ENOMEM */
	else if (onfault && syscall(SYS_mlock2, a, len, MLOCK_ONFAULT) != 0)
		what = "mlock2 onfault";
	if (what) {
		int e = errno;
		munmap(a, len);
		return err("reserve: %s: %s", what, errstr(e));
	}
	snprintf(reserved[slot].name, sizeof(reserved[slot].name), "%s", argv[1]);
	reserved[slot].addr = a;
	reserved[slot].len = len;
	return ok("%s addr=%p pages=%llu locked=%d", argv[1], a, (unsigned long long)pages,
		  vma_has_flag((uintptr_t)a, " lo"));
}

/* A new region for pages [first, first+count) of r (same VMA): expectations carried over as
 * per-page keys (a pattern's page index moves), or all-zero content with zero. */
static struct region *split_off(struct region *r, const char *suffix, size_t first,
				size_t count, int zero)
{
	struct region *n = NULL;
	char name[64];
	snprintf(name, sizeof(name), "%s%s", r->name, suffix);
	if (strlen(name) >= sizeof(r->name) || find_region(name))
		return err("vmop: cannot name the piece '%s'", name), NULL;
	for (int i = 0; i < MAX_REGIONS && !n; i++)
		if (!regions[i].used)
			n = &regions[i];
	uint64_t *ov = calloc(count, sizeof(uint64_t));
	if (!n || !ov) {
		free(ov);
		return err("vmop: no region slot or memory for '%s'", name), NULL;
	}
	for (size_t p = 0; p < count && !zero; p++)
		ov[p] = page_expect(r, first + p).key;
	memset(n, 0, sizeof(*n));
	snprintf(n->name, sizeof(n->name), "%s", name);
	n->addr = r->addr + first * page_size;
	n->map = n->addr;
	n->maplen = count * page_size;
	n->pages = count;
	n->kind = zero ? PAT_ZERO : r->kind;
	n->seed = r->seed;
	n->seedkey = r->seedkey;
	n->override = ov;
	n->used = 1;
	return n;
}

int cmd_vmop(int argc, char **argv)
{
	static const struct { const char *name; int range; } ops[] = {
		{"munmap", 1}, {"dontneed", 1}, {"unmergeable", 1}, {"protro", 1},
		{"protnone", 1}, {"protrw", 1}, {"move", 0}, {"shrink", 2},
	};
	size_t first = 0, count = 0, newpages = 0;
	int op = -1, rc = 0;
	if (argc < 3)
		return err("usage: vmop NAME munmap|dontneed|unmergeable|protro|protnone|protrw "
			   "FIRST COUNT | vmop NAME move | vmop NAME shrink PAGES");
	struct region *r = need_region("vmop", argv[1]);
	if (!r)
		return -1;
	for (int i = 0; i < (int)(sizeof(ops) / sizeof(ops[0])); i++)
		if (strcmp(argv[2], ops[i].name) == 0)
			op = i;
	if (op < 0)
		return err("vmop: unknown operation '%s'", argv[2]);
	if (r->kind == PAT_LASTBYTE || r->map != r->addr || r->maplen != r->pages * page_size)
		return err("vmop: region '%s' cannot be reshaped (lastbyte or odd mapping)", r->name);
	if (ops[op].range == 1) {
		if (argc != 5 || parse_range("vmop", r, argc, argv, 3, &first, &count))
			return err("vmop %s: want FIRST COUNT inside '%s'", argv[2], r->name);
		if (first == 0 && op <= 1)
			return err("vmop %s: FIRST must be > 0 (the head keeps the name)", argv[2]);
	} else if (ops[op].range == 2) {
		uint64_t n;
		if (argc != 4 || parse_u64(argv[3], &n) || n == 0 || n >= r->pages)
			return err("vmop shrink: want PAGES below %zu", r->pages);
		newpages = n;
	} else if (argc != 3) {
		return err("usage: vmop NAME move");
	}
	unsigned char *a = r->addr + first * page_size, *dest = NULL;
	size_t len = count * page_size, all = r->pages * page_size;
	if (op == 6) { /* somewhere the region is not: a fresh reservation, replaced by mremap */
		dest = mmap(NULL, all, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (dest == MAP_FAILED)
			return err("vmop move: reserving the destination: %s", errstr(errno));
	}
	long long t0 = now_us();
	void *res = NULL;
	switch (op) {
	case 0: rc = munmap(a, len); break;
	case 1: rc = madvise(a, len, MADV_DONTNEED); break;
	case 2: rc = madvise(a, len, MADV_UNMERGEABLE); break;
	case 3: rc = mprotect(a, len, PROT_READ); break;
	case 4: rc = mprotect(a, len, PROT_NONE); break;
	case 5: rc = mprotect(a, len, PROT_READ | PROT_WRITE); break;
	case 6:
		res = mremap(r->addr, all, all, MREMAP_MAYMOVE | MREMAP_FIXED, dest);
		rc = res == MAP_FAILED ? -1 : 0;
		break;
	case 7:
		res = mremap(r->addr, all, newpages * page_size, 0);
		rc = res == MAP_FAILED ? -1 : 0;
		break;
	}
	long long t1 = now_us();
	if (rc != 0) {
		int e = errno;
		if (dest)
			munmap(dest, all);
		return err("vmop %s %s: %s", r->name, argv[2], errstr(e));
	}
	free(r->saved_pfns); /* the PFNs saved by kpf no longer describe the region */
	r->saved_pfns = NULL;
	struct region *tail = NULL, *mid = NULL;
	size_t end = first + count;
	if ((op == 0 || op == 1) && end < r->pages)
		tail = split_off(r, ".t", end, r->pages - end, 0);
	if (op == 1)
		mid = split_off(r, ".z", first, count, 1);
	if ((op == 0 || op == 1) && ((end < r->pages && !tail) || (op == 1 && !mid)))
		return -1; /* the reply says why; the mapping is changed already */
	if (op == 0 || op == 1) {
		r->pages = first;
		r->maplen = first * page_size;
	} else if (op == 6) {
		r->addr = r->map = res;
	} else if (op == 7) {
		r->pages = newpages;
		r->maplen = newpages * page_size;
	}
	ok("vmop %s %s t0=%lld t1=%lld addr=%p pages=%zu", r->name, argv[2], t0, t1,
	   (void *)r->addr, r->pages);
	if (tail)
		app(" tail=%s", tail->name);
	if (mid)
		app(" zeroed=%s", mid->name);
	return 0;
}
